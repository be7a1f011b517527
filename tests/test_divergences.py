"""Token-level divergences and the top-k signal, against naive per-element references and their properties."""

from __future__ import annotations

import math

import pytest
import torch

from lmdistill.losses.divergences import (
    DIVERGENCES,
    check_vocab_compatible,
    chunked_divergence,
    forward_kl,
    generalized_jsd,
    reverse_kl,
    shared_vocab,
    skew_forward_kl,
    skew_reverse_kl,
    total_variation,
)
from lmdistill.losses.reduce import masked_mean
from lmdistill.signals.sparse import TopKSignal, topk_signal

# (DIVERGENCES name, extra params): every divergence, with interior and endpoint parameters.
CASES = [
    ("forward_kl", {}),
    ("reverse_kl", {}),
    ("jsd", {"beta": 0.5}),
    ("jsd", {"beta": 0.1}),
    ("jsd", {"beta": 0.9}),
    ("jsd", {"beta": 0.0}),
    ("jsd", {"beta": 1.0}),
    ("skew_forward_kl", {"alpha": 0.1}),
    ("skew_reverse_kl", {"alpha": 0.1}),
    ("skew_forward_kl", {"alpha": 0.7}),
    ("tvd", {}),
]
IDS = [f"{name}-{','.join(f'{k}={v}' for k, v in kw.items())}" for name, kw in CASES]


def logits(
    *shape: int, seed: int = 0, scale: float = 2.0, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def pair(b: int = 2, t: int = 4, v: int = 11, seed: int = 0, scale: float = 2.0):
    return logits(b, t, v, seed=seed, scale=scale), logits(b, t, v, seed=seed + 100, scale=scale)


# ---------------------------------------------------------------- naive references (math module, loops)


def naive_softmax(row: list[float], temp: float) -> list[float]:
    finite = [x / temp for x in row if x != -math.inf]
    top = max(finite)
    ex = [0.0 if x == -math.inf else math.exp(x / temp - top) for x in row]
    total = sum(ex)
    return [e / total for e in ex]


def naive_kl(a: list[float], b: list[float]) -> float:
    return sum(ai * (math.log(ai) - math.log(bi)) for ai, bi in zip(a, b) if ai > 0)


def naive_mix(a: list[float], b: list[float], w: float) -> list[float]:
    return [w * ai + (1 - w) * bi for ai, bi in zip(a, b)]


def naive_divergence(
    name: str, p: list[float], q: list[float], beta: float = 0.5, alpha: float = 0.1
) -> float:
    if name == "forward_kl":
        return naive_kl(p, q)
    if name == "reverse_kl":
        return naive_kl(q, p)
    if name == "jsd":
        if beta == 0:
            return naive_kl(p, q)
        if beta == 1:
            return naive_kl(q, p)
        m = naive_mix(p, q, beta)
        return (beta * naive_kl(p, m) + (1 - beta) * naive_kl(q, m)) / (beta * (1 - beta))
    if name == "skew_forward_kl":
        return naive_kl(p, naive_mix(p, q, alpha))
    if name == "skew_reverse_kl":
        return naive_kl(q, naive_mix(p, q, 1 - alpha))
    if name == "tvd":
        return 0.5 * sum(abs(pi - qi) for pi, qi in zip(p, q))
    raise KeyError(name)


def naive_values(name: str, student: torch.Tensor, teacher: torch.Tensor, temp: float, **kw) -> torch.Tensor:
    """Per-position loop over ``(B, T)``, per-element loops over the vocabulary."""
    out = torch.zeros(student.shape[:-1], dtype=torch.float64)
    for b in range(student.shape[0]):
        for t in range(student.shape[1]):
            q = naive_softmax(student[b, t].tolist(), temp)
            p = naive_softmax(teacher[b, t].tolist(), temp)
            out[b, t] = naive_divergence(name, p, q, **kw)
    return out


# ---------------------------------------------------------------- against the naive references


@pytest.mark.parametrize("temp", [1.0, 2.5])
@pytest.mark.parametrize(("name", "kw"), CASES, ids=IDS)
def test_matches_naive_reference(name, kw, temp):
    s, t = pair(2, 4, 11, seed=1)
    got = DIVERGENCES[name](s, t, temperature=temp, **kw)
    assert got.shape == (2, 4) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), naive_values(name, s, t, temp, **kw), rtol=2e-4, atol=2e-6)


def test_forward_kl_is_kl_div_with_log_target():
    s, t = pair(3, 5, 17, seed=2)
    log_q, log_p = torch.log_softmax(s, -1), torch.log_softmax(t, -1)
    want = torch.nn.functional.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1)
    torch.testing.assert_close(forward_kl(s, t), want)
    torch.testing.assert_close(reverse_kl(s, t), forward_kl(t, s))


def test_registry_names():
    assert set(DIVERGENCES) == {
        "forward_kl",
        "reverse_kl",
        "jsd",
        "skew_forward_kl",
        "skew_reverse_kl",
        "tvd",
    }
    assert DIVERGENCES["jsd"] is generalized_jsd and DIVERGENCES["tvd"] is total_variation


def test_flat_input_gives_flat_output():
    s, t = pair(1, 6, 13)
    assert forward_kl(s[0], t[0]).shape == (6,)


# ---------------------------------------------------------------- properties


@pytest.mark.parametrize(("name", "kw"), CASES, ids=IDS)
def test_zero_for_identical_and_non_negative(name, kw):
    s, t = pair(3, 5, 23, seed=3)
    fn = DIVERGENCES[name]
    torch.testing.assert_close(fn(s, s.clone(), **kw), torch.zeros(3, 5), atol=1e-6, rtol=0)
    assert (fn(s, t, **kw) >= -1e-6).all()
    assert (fn(s, t, temperature=3.0, **kw) >= -1e-6).all()


def test_tvd_is_in_unit_interval():
    s, t = pair(3, 5, 23, seed=4, scale=20.0)  # nearly one-hot: TVD close to 1 where argmaxes differ
    tvd = total_variation(s, t)
    assert (tvd >= 0).all() and (tvd <= 1 + 1e-6).all() and tvd.max() > 0.99


def test_jsd_is_symmetric_at_half():
    s, t = pair(3, 5, 29, seed=5)
    torch.testing.assert_close(generalized_jsd(s, t, beta=0.5), generalized_jsd(t, s, beta=0.5))
    assert not torch.allclose(generalized_jsd(s, t, beta=0.2), generalized_jsd(t, s, beta=0.2))


def test_jsd_at_half_is_four_times_the_plain_jsd():
    s, t = pair(2, 3, 11, seed=6)
    p, q = torch.softmax(t.double(), -1), torch.softmax(s.double(), -1)
    m = 0.5 * (p + q)
    plain = 0.5 * (p * (p / m).log()).sum(-1) + 0.5 * (q * (q / m).log()).sum(-1)
    torch.testing.assert_close(generalized_jsd(s, t).double(), 4 * plain, rtol=1e-5, atol=1e-7)


def test_jsd_endpoints_are_the_kls_exactly():
    s, t = pair(2, 4, 19, seed=7)
    assert torch.equal(generalized_jsd(s, t, beta=0.0), forward_kl(s, t))
    assert torch.equal(generalized_jsd(s, t, beta=1.0), reverse_kl(s, t))


@pytest.mark.parametrize("eps", [1e-4, 1e-5])
def test_jsd_is_continuous_at_both_endpoints(eps):
    # |JSD_norm(beta) - KL(p||q)| ~ beta * chi2(p||q): moderate logits keep the ratio p/q bounded.
    s, t = pair(2, 4, 19, seed=8, scale=1.0)
    torch.testing.assert_close(generalized_jsd(s, t, beta=eps), forward_kl(s, t), rtol=2e-2, atol=1e-6)
    torch.testing.assert_close(generalized_jsd(s, t, beta=1 - eps), reverse_kl(s, t), rtol=2e-2, atol=1e-6)
    near = (generalized_jsd(s, t, beta=eps) - forward_kl(s, t)).abs().max()
    far = (generalized_jsd(s, t, beta=100 * eps) - forward_kl(s, t)).abs().max()
    assert near < far  # converges as beta -> 0


def test_skew_kl_endpoints_and_continuity():
    s, t = pair(2, 4, 19, seed=9, scale=1.0)
    assert torch.equal(skew_forward_kl(s, t, alpha=0.0), forward_kl(s, t))
    assert torch.equal(skew_reverse_kl(s, t, alpha=0.0), reverse_kl(s, t))
    torch.testing.assert_close(skew_forward_kl(s, t, alpha=1e-4), forward_kl(s, t), rtol=2e-2, atol=1e-6)
    torch.testing.assert_close(skew_reverse_kl(s, t, alpha=1e-4), reverse_kl(s, t), rtol=2e-2, atol=1e-6)
    assert torch.equal(skew_forward_kl(s, t, alpha=1.0), torch.zeros(2, 4))
    assert torch.equal(skew_reverse_kl(s, t, alpha=1.0), torch.zeros(2, 4))


@pytest.mark.parametrize(("name", "kw"), CASES, ids=IDS)
def test_gradient_matches_finite_differences(name, kw):
    s, t = pair(1, 2, 5, seed=10)
    s = s.double().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x: DIVERGENCES[name](x, t.double(), temperature=1.5, **kw), (s,), fast_mode=True
    )


# ---------------------------------------------------------------- masking, -inf, dtypes


def test_padding_positions_do_not_change_the_masked_mean():
    s, t = pair(3, 5, 13, seed=11)
    mask = torch.rand(3, 5, generator=torch.Generator().manual_seed(0)) > 0.4
    s2, t2 = s.clone(), t.clone()
    s2[~mask] = logits(int((~mask).sum()), 13, seed=50, scale=1e4)
    t2[~mask] = -logits(int((~mask).sum()), 13, seed=51, scale=1e4)
    for name, kw in CASES:
        fn = DIVERGENCES[name]
        a, b = s.clone().requires_grad_(True), s2.clone().requires_grad_(True)
        va, vb = masked_mean(fn(a, t, **kw), mask), masked_mean(fn(b, t2, **kw), mask)
        torch.testing.assert_close(va, vb)
        va.backward()
        vb.backward()
        torch.testing.assert_close(a.grad[mask], b.grad[mask])
        assert torch.equal(b.grad[~mask], torch.zeros_like(b.grad[~mask]))


@pytest.mark.parametrize(("name", "kw"), CASES, ids=IDS)
def test_all_masked_is_exactly_zero(name, kw):
    s, t = pair(2, 3, 11, seed=12)
    s.requires_grad_(True)
    mask = torch.zeros(2, 3, dtype=torch.bool)
    for value in (
        masked_mean(DIVERGENCES[name](s, t, **kw), mask),
        chunked_divergence(name, s, t, mask, **kw),
    ):
        assert value.item() == 0.0
        (grad,) = torch.autograd.grad(value, s)
        assert torch.equal(grad, torch.zeros_like(grad))


@pytest.mark.parametrize(("name", "kw"), CASES, ids=IDS)
def test_minus_inf_teacher_logits_stay_finite(name, kw):
    s, t = pair(2, 4, 11, seed=13)
    t[..., 7:] = -math.inf  # masked vocabulary entries
    t[0, 0, :6] = -math.inf  # a one-hot teacher at one position
    s.requires_grad_(True)
    fn = DIVERGENCES[name]
    value = fn(s, t, **kw)
    assert torch.isfinite(value).all() and (value >= -1e-6).all()
    (grad,) = torch.autograd.grad(value.sum(), s)
    assert torch.isfinite(grad).all()
    assert torch.isfinite(fn(s, topk_signal(t, 9), **kw)).all()
    assert torch.isfinite(chunked_divergence(name, s, t, None, chunk_size=3, **kw))
    try:
        want = naive_values(name, s.detach(), t, 1.0, **kw)
    except ValueError:  # math.log(0): the exact value is +inf (student mass where the teacher has none)
        return
    torch.testing.assert_close(value.detach().double(), want, rtol=2e-4, atol=2e-6)


@pytest.mark.parametrize(("name", "kw"), CASES, ids=IDS)
def test_bf16_inputs_are_close_to_fp32(name, kw):
    s, t = pair(2, 4, 50, seed=14)
    s16, t16 = s.bfloat16(), t.bfloat16()
    got = DIVERGENCES[name](s16, t16, **kw)
    assert got.dtype == torch.float32
    want = DIVERGENCES[name](s16.float(), t16.float(), **kw)  # same rounded inputs: upcast is exact
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got, DIVERGENCES[name](s, t, **kw), rtol=5e-2, atol=2e-2)


# ---------------------------------------------------------------- chunking


@pytest.mark.parametrize(("name", "kw"), CASES, ids=IDS)
def test_chunked_equals_unchunked(name, kw):
    s, t = pair(3, 5, 17, seed=15)
    mask = torch.zeros(3, 5, dtype=torch.bool)
    mask.view(-1)[[0, 2, 3, 6, 7, 11, 14]] = True  # 7 valid positions, chunks of 3
    a, b = s.clone().requires_grad_(True), s.clone().requires_grad_(True)
    want = masked_mean(DIVERGENCES[name](a, t, temperature=2.0, **kw), mask)
    got = chunked_divergence(name, b, t, mask, chunk_size=3, temperature=2.0, **kw)
    torch.testing.assert_close(got, want)
    (2.0 * want).backward()
    (2.0 * got).backward()
    torch.testing.assert_close(b.grad, a.grad)


def test_chunked_never_reads_padding_and_accepts_callables_and_topk():
    s, t = pair(2, 5, 13, seed=16)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]])
    s2, t2 = s.clone(), t.clone()
    s2[mask == 0], t2[mask == 0] = math.nan, math.nan
    b = s2.clone().requires_grad_(True)
    got = chunked_divergence(forward_kl, b, t2, mask, chunk_size=4)
    torch.testing.assert_close(got, masked_mean(forward_kl(s, t), mask))
    got.backward()
    assert torch.isfinite(b.grad).all() and torch.equal(b.grad[mask == 0], torch.zeros(3, 13))
    signal = topk_signal(t, 4)
    torch.testing.assert_close(
        chunked_divergence("reverse_kl", s, signal, mask, chunk_size=2),
        masked_mean(reverse_kl(s, signal), mask),
    )


def test_chunked_bf16_gradient_and_no_grad_path():
    s, t = pair(2, 5, 40, seed=17)
    s16 = s.bfloat16().requires_grad_(True)
    ref = s.bfloat16().requires_grad_(True)
    got = chunked_divergence("jsd", s16, t.bfloat16(), None, chunk_size=3, beta=0.3)
    want = masked_mean(generalized_jsd(ref, t.bfloat16(), beta=0.3))
    torch.testing.assert_close(got, want)
    got.backward()
    want.backward()
    assert s16.grad.dtype == torch.bfloat16
    torch.testing.assert_close(s16.grad, ref.grad)
    with torch.no_grad():
        torch.testing.assert_close(
            chunked_divergence("tvd", s16, t, None, chunk_size=4), masked_mean(total_variation(s16, t))
        )


def test_chunked_argument_errors():
    s, t = pair(2, 3, 11)
    with pytest.raises(ValueError, match="unknown divergence 'kl'"):
        chunked_divergence("kl", s, t, None)
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_divergence("tvd", s, t, None, chunk_size=0)
    with pytest.raises(ValueError, match="mask"):
        chunked_divergence("tvd", s, t, torch.ones(3, 2))
    with pytest.raises(ValueError, match="teacher positions"):
        chunked_divergence("tvd", s, t[:1], None)


# ---------------------------------------------------------------- top-k signal


def test_topk_signal_fields():
    t = logits(2, 4, 20, seed=18)
    sig = topk_signal(t, 5, temperature=2.0)
    assert sig.indices.shape == (2, 4, 5) and sig.indices.dtype == torch.int64
    assert sig.k == 5 and sig.shape == (2, 4) and sig.temperature == 2.0
    full = torch.log_softmax(t / 2.0, -1)
    torch.testing.assert_close(sig.logprobs, full.topk(5, -1).values)
    torch.testing.assert_close(
        torch.logsumexp(torch.cat([sig.logprobs, sig.tail_logprob[..., None]], -1), -1),
        torch.zeros(2, 4),
        atol=1e-6,
        rtol=0,
    )
    assert torch.isneginf(topk_signal(t, 20).tail_logprob).all()
    half = sig.half()
    assert half.logprobs.dtype == torch.float16 and half.tail_logprob.dtype == torch.float16
    assert sig.half(torch.bfloat16).logprobs.dtype == torch.bfloat16
    assert sig.to("cpu").indices.device.type == "cpu"
    torch.testing.assert_close(
        forward_kl(logits(2, 4, 20), half, 2.0), forward_kl(logits(2, 4, 20), sig, 2.0), rtol=1e-2, atol=1e-3
    )


def test_topk_tail_is_accurate_when_tiny():
    t = torch.tensor([[30.0, 0.0, 0.0]])  # tail mass ~ 2 e^-30 ~ 1.9e-13, below float32 epsilon
    sig = topk_signal(t, 1)
    torch.testing.assert_close(sig.tail_logprob, torch.tensor([math.log(2) - 30.0]), rtol=1e-5, atol=0)


@pytest.mark.parametrize(("name", "kw"), CASES, ids=IDS)
def test_topk_with_full_k_equals_dense(name, kw):
    s, t = pair(2, 4, 11, seed=19)
    fn = DIVERGENCES[name]
    s = s.clone().requires_grad_(True)
    got = fn(s, topk_signal(t, 11, temperature=1.5), temperature=1.5, **kw)
    want = fn(s, t, temperature=1.5, **kw)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    (g_got,) = torch.autograd.grad(got.sum(), s)
    (g_want,) = torch.autograd.grad(want.sum(), s)
    assert torch.isfinite(g_got).all()
    torch.testing.assert_close(g_got, g_want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(("name", "kw"), CASES, ids=IDS)
def test_topk_lower_bounds_the_dense_divergence(name, kw):
    s, t = pair(3, 5, 31, seed=20)
    fn = DIVERGENCES[name]
    dense = fn(s, t, **kw)
    for k in (1, 4, 16, 30):
        sparse = fn(s, topk_signal(t, k), **kw)
        assert (sparse >= -1e-6).all()
        assert (sparse <= dense + 1e-5).all()


def test_topk_errors():
    t = logits(2, 3, 11)
    for k in (0, 12, 2.5):
        with pytest.raises(ValueError, match=r"k must be an integer in \[1, 11\]"):
            topk_signal(t, k)
    sig = topk_signal(t, 3, temperature=2.0)
    with pytest.raises(ValueError, match="pass temperature=2.0"):
        forward_kl(t, sig)
    with pytest.raises(ValueError, match="do not match student logits"):
        forward_kl(t[:1], sig, 2.0)
    with pytest.raises(ValueError, match="same shape"):
        TopKSignal(sig.indices, sig.logprobs[..., :2], sig.tail_logprob)
    with pytest.raises(ValueError, match="tail_logprob"):
        TopKSignal(sig.indices, sig.logprobs, sig.tail_logprob[:1])
    with pytest.raises(ValueError, match="fp16 or bf16"):
        sig.half(torch.float64)


# ---------------------------------------------------------------- arguments and vocabularies


def test_bad_arguments_raise_value_error():
    s, t = pair(1, 2, 7)
    for beta in (-0.1, 1.1, math.nan):
        with pytest.raises(ValueError, match="beta must be a number in"):
            generalized_jsd(s, t, beta=beta)
    for alpha in (-1e-3, 2.0):
        with pytest.raises(ValueError, match="alpha must be a number in"):
            skew_forward_kl(s, t, alpha=alpha)
        with pytest.raises(ValueError, match="alpha must be a number in"):
            skew_reverse_kl(s, t, alpha=alpha)
    for temp in (0.0, -1.0, math.inf):
        with pytest.raises(ValueError, match="temperature must be"):
            forward_kl(s, t, temperature=temp)
        with pytest.raises(ValueError, match="temperature must be"):
            topk_signal(t, 2, temperature=temp)
    with pytest.raises(ValueError, match="shared_vocab"):
        forward_kl(s, logits(1, 2, 9))


def test_shared_vocab_slices_to_the_smaller_size():
    s, t = logits(2, 3, 11), logits(2, 3, 14)
    s2, t2 = shared_vocab(s, t)
    assert s2.shape == t2.shape == (2, 3, 11)
    assert torch.equal(t2, t[..., :11]) and s2.data_ptr() == s.data_ptr()
    assert shared_vocab(t, s)[0].shape == (2, 3, 11)
    assert torch.isfinite(forward_kl(*shared_vocab(s, t))).all()


def test_check_vocab_compatible():
    assert check_vocab_compatible(49152, 49280, 49152) == 49152
    assert check_vocab_compatible(151936, 151665, 151665) == 151665
    with pytest.raises(ValueError) as err:
        check_vocab_compatible(32000, 128256, 32000)
    msg = str(err.value)
    assert "32000" in msg and "128256" in msg and "tokenizer" in msg and "\n" not in msg
    with pytest.raises(ValueError, match="below the tokenizer's 50000 tokens"):
        check_vocab_compatible(49152, 49280, 50000)
    with pytest.raises(ValueError, match="more than padding"):
        check_vocab_compatible(49152, 49280, 49152, max_pad=64)
