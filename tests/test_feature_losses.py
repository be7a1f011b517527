"""Intermediate-knowledge losses against naive reference loops, their masking properties, head matching
and the learned projection."""

from __future__ import annotations

import math

import pytest
import torch

from lmdistill.losses.features import (
    FEATURE_LOSSES,
    attention_kl,
    attention_mse,
    cls_normalized_mse,
    hidden_cosine,
    hidden_mse,
    match_heads,
    relation_kl,
    relation_matrix,
    row_mask,
)
from lmdistill.losses.reduce import masked_mean
from lmdistill.models.projection import Projection

B, T, HEADS = 2, 5, 3
MASK = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def masked_probs(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Attention probabilities as a model makes them: padded keys get exactly zero probability."""
    return scores.masked_fill(~mask.bool()[:, None, None, :], float("-inf")).softmax(-1)


def naive_softmax(xs: list[float]) -> list[float]:
    m = max(xs)
    es = [math.exp(x - m) for x in xs]
    return [e / sum(es) for e in es]


def naive_kl(p: list[float], q: list[float]) -> float:
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)


def valid_keys(b: int) -> list[int]:
    return [j for j in range(T) if MASK[b, j]]


# ---------------------------------------------------------------- naive references


def test_hidden_mse_and_cosine_match_naive():
    g = gen(1)
    s, t = torch.randn(B, T, 4, generator=g), torch.randn(B, T, 4, generator=g)
    mse, cos = hidden_mse(s, t), hidden_cosine(s, t)
    assert mse.shape == cos.shape == (B, T)
    for b in range(B):
        for i in range(T):
            sv, tv = s[b, i].tolist(), t[b, i].tolist()
            want_mse = sum((x - y) ** 2 for x, y in zip(sv, tv)) / len(sv)
            dot = sum(x * y for x, y in zip(sv, tv))
            want_cos = 1 - dot / (math.sqrt(sum(x * x for x in sv)) * math.sqrt(sum(y * y for y in tv)))
            assert mse[b, i].item() == pytest.approx(want_mse, rel=1e-5)
            assert cos[b, i].item() == pytest.approx(want_cos, rel=1e-5, abs=1e-6)


def test_cls_normalized_mse_matches_pkd_equation():
    g = gen(2)
    s, t = torch.randn(B, 6, generator=g) * 3, torch.randn(B, 6, generator=g)
    got = cls_normalized_mse(s, t)
    assert got.shape == (B,)
    for b in range(B):
        sv, tv = s[b].tolist(), t[b].tolist()
        ns, nt = math.sqrt(sum(x * x for x in sv)), math.sqrt(sum(x * x for x in tv))
        want = sum((x / ns - y / nt) ** 2 for x, y in zip(sv, tv))  # squared L2, summed over H
        assert got[b].item() == pytest.approx(want, rel=1e-5)
    # scale-invariant, and 2 - 2 cos
    torch.testing.assert_close(cls_normalized_mse(5 * s, t), got)
    torch.testing.assert_close(got, 2 - 2 * torch.cosine_similarity(s, t, dim=-1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("student_is_log", [False, True])
def test_attention_kl_matches_naive(student_is_log):
    g = gen(3)
    q = masked_probs(torch.randn(B, HEADS, T, T, generator=g), MASK)
    p = masked_probs(torch.randn(B, HEADS, T, T, generator=g), MASK)
    got = attention_kl(q.log() if student_is_log else q, p, MASK, student_is_log=student_is_log)
    assert got.shape == (B, HEADS, T)
    assert torch.isfinite(got).all()
    for b in range(B):
        keys = valid_keys(b)
        for a in range(HEADS):
            for i in range(T):
                want = naive_kl([p[b, a, i, j].item() for j in keys], [q[b, a, i, j].item() for j in keys])
                assert got[b, a, i].item() == pytest.approx(want, rel=1e-4, abs=1e-6)


def test_attention_kl_zero_student_probability_is_large_but_finite():
    p = torch.tensor([0.5, 0.5, 0.0]).expand(1, 1, 3, 3)
    q = torch.tensor([1.0, 0.0, 0.0]).expand(1, 1, 3, 3)
    got = attention_kl(q, p)
    assert torch.isfinite(got).all() and (got > 40).all()


def test_attention_mse_matches_naive_with_tinybert_padding_rule():
    g = gen(4)
    additive = (1 - MASK.float())[:, None, None, :] * -10000.0  # BERT's extended attention mask
    s = torch.randn(B, HEADS, T, T, generator=g) * 2 + additive
    t = torch.randn(B, HEADS, T, T, generator=g) * 2 + additive
    got = attention_mse(s, t, MASK)
    assert got.shape == (B, HEADS, T)

    def clean(x: float) -> float:
        return 0.0 if x <= -1e2 else x

    for b in range(B):
        keys = valid_keys(b)
        for a in range(HEADS):
            for i in range(T):
                sq = [(clean(s[b, a, i, j].item()) - clean(t[b, a, i, j].item())) ** 2 for j in keys]
                assert got[b, a, i].item() == pytest.approx(sum(sq) / len(keys), rel=1e-5)


def test_attention_mse_equals_official_tinybert_without_padding():
    g = gen(5)
    s, t = torch.randn(B, HEADS, T, T, generator=g), torch.randn(B, HEADS, T, T, generator=g)
    s[0, 0, 0, 0] = -1e4  # e.g. a causal-mask entry on one side only: zeroed, as in task_distill.py
    official = torch.nn.functional.mse_loss(
        torch.where(s <= -1e2, torch.zeros_like(s), s), torch.where(t <= -1e2, torch.zeros_like(t), t)
    )
    torch.testing.assert_close(masked_mean(attention_mse(s, t)), official)
    torch.testing.assert_close(masked_mean(attention_mse(s, t, torch.ones(B, T))), official)


def naive_relation_rows(x: torch.Tensor, r: int, b: int, a: int) -> list[list[float]]:
    """Relation head ``a`` of example ``b`` over valid keys: softmax(x_a x_a^T / sqrt(d_r)) row by row."""
    d = x.shape[-1] // r
    keys = valid_keys(b)
    rows = []
    for i in range(T):
        vi = x[b, i, a * d : (a + 1) * d].tolist()
        scores = []
        for j in keys:
            vj = x[b, j, a * d : (a + 1) * d].tolist()
            scores.append(sum(u * v for u, v in zip(vi, vj)) / math.sqrt(d))
        rows.append(naive_softmax(scores))
    return rows


@pytest.mark.parametrize(("h_student", "h_teacher", "r"), [(24, 48, 4), (12, 12, 3), (8, 48, 2)])
def test_relation_kl_matches_naive_for_any_heads_and_widths(h_student, h_teacher, r):
    # e.g. teacher 4 heads x 12 = 48 wide, student 2 heads x 12 = 24 wide: both split into R relation heads
    g = gen(6)
    sx, tx = torch.randn(B, T, h_student, generator=g), torch.randn(B, T, h_teacher, generator=g)
    got = relation_kl(sx, tx, r, MASK)
    assert got.shape == (B, r, T)
    for b in range(B):
        for a in range(r):
            p_rows, q_rows = naive_relation_rows(tx, r, b, a), naive_relation_rows(sx, r, b, a)
            for i in range(T):
                assert got[b, a, i].item() == pytest.approx(
                    naive_kl(p_rows[i], q_rows[i]), rel=1e-4, abs=1e-6
                )


def test_relation_matrix_shape_masking_and_errors():
    x = torch.randn(B, T, 12, generator=gen(7))
    logp = relation_matrix(x, 4, MASK)
    assert logp.shape == (B, 4, T, T) and logp.dtype == torch.float32
    assert torch.isneginf(logp[1, :, :, 3:]).all()
    assert torch.isfinite(logp[1, :, :, :3]).all() and torch.isfinite(logp[0]).all()
    torch.testing.assert_close(logp.exp().sum(-1), torch.ones(B, 4, T))
    with pytest.raises(ValueError, match=r"num_relation_heads 5 must divide the hidden width 12"):
        relation_matrix(x, 5, MASK)


# ---------------------------------------------------------------- properties, all losses


def make_case(name: str, mask: torch.Tensor, seed: int = 0, same: bool = False):
    """(student, teacher, extra args, reduction mask) for one loss, ``mask`` as the padding mask."""
    g = gen(seed)
    n = mask.shape[0]
    additive = (1 - mask.float())[:, None, None, :] * -10000.0
    makers = {
        "mse": (lambda w: torch.randn(n, T, w, generator=g), (), mask),
        "cosine": (lambda w: torch.randn(n, T, w, generator=g), (), mask),
        "cls_mse": (lambda w: torch.randn(n, w, generator=g), (), None),
        "attention_kl": (
            lambda w: masked_probs(torch.randn(n, HEADS, T, T, generator=g), mask),
            (mask,),
            row_mask(mask),
        ),
        "attention_mse": (
            lambda w: torch.randn(n, HEADS, T, T, generator=g) + additive,
            (mask,),
            row_mask(mask),
        ),
        "relation_kl": (lambda w: torch.randn(n, T, w, generator=g), (4, mask), row_mask(mask)),
    }
    make, extra, red = makers[name]
    s = make(8)
    # relation_kl: the teacher is twice as wide as the student (widths may differ)
    t = s.clone() if same else make(16 if name == "relation_kl" else 8)
    return s, t, extra, red


ALL = sorted(FEATURE_LOSSES)
TOKEN_LEVEL = [name for name in ALL if name != "cls_mse"]


def test_registry_names():
    assert set(FEATURE_LOSSES) == {"mse", "cosine", "cls_mse", "attention_kl", "attention_mse", "relation_kl"}


@pytest.mark.parametrize("name", ALL)
def test_zero_for_identical_inputs_and_non_negative(name):
    fn = FEATURE_LOSSES[name]
    s, t, extra, _ = make_case(name, MASK, same=True)
    assert fn(s, t, *extra).abs().max().item() < 1e-5
    s, t, extra, _ = make_case(name, MASK, seed=1)
    loss = fn(s, t, *extra)
    assert torch.isfinite(loss).all() and (loss >= -1e-6).all()


def add_garbage(x: torch.Tensor, name: str, mask: torch.Tensor) -> torch.Tensor:
    """Big positive junk at every padded position (rows and, for attention, key columns too)."""
    pad = ~mask.bool()
    junk = torch.rand(x.shape, generator=gen(99)) * 50 + 1
    if name in ("attention_kl", "attention_mse"):
        where = pad[:, None, :, None] | pad[:, None, None, :]
    else:
        where = pad[:, :, None]
    return torch.where(where, junk, x)


@pytest.mark.parametrize("name", TOKEN_LEVEL)
def test_garbage_at_padding_does_not_change_the_result(name):
    fn = FEATURE_LOSSES[name]
    s, t, extra, red = make_case(name, MASK, seed=2)
    clean = masked_mean(fn(s, t, *extra), red)
    dirty = masked_mean(fn(add_garbage(s, name, MASK), add_garbage(t, name, MASK), *extra), red)
    torch.testing.assert_close(dirty, clean)
    assert clean.item() > 0


@pytest.mark.parametrize("name", TOKEN_LEVEL)
def test_all_masked_is_exactly_zero_and_padded_examples_give_no_nan(name):
    fn = FEATURE_LOSSES[name]
    none = torch.zeros(B, T, dtype=torch.long)
    s, t, extra, red = make_case(name, none, seed=3)
    s.requires_grad_(True)
    loss = fn(s, t, *extra)
    total = masked_mean(loss, red)
    assert total.item() == 0.0 and not torch.isnan(total)
    total.backward()
    assert torch.isfinite(s.grad).all()
    # one real example next to one fully padded example: finite values and gradients everywhere
    mixed = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0]])
    s, t, extra, red = make_case(name, mixed, seed=4)
    s.requires_grad_(True)
    loss = fn(s, t, *extra)
    assert torch.isfinite(loss).all()
    masked_mean(loss, red).backward()
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ALL)
def test_bf16_inputs_close_to_fp32(name):
    fn = FEATURE_LOSSES[name]
    s, t, extra, red = make_case(name, MASK, seed=5)
    low = masked_mean(fn(s.bfloat16(), t.bfloat16(), *extra), red)
    assert low.dtype == torch.float32
    # the math runs in float32: bf16 inputs give exactly the result of their float32 upcast ...
    torch.testing.assert_close(low, masked_mean(fn(s.bfloat16().float(), t.bfloat16().float(), *extra), red))
    # ... and stay close to the full-precision result
    torch.testing.assert_close(low, masked_mean(fn(s, t, *extra), red), rtol=3e-2, atol=1e-3)


def test_shape_mismatch_is_a_clear_value_error():
    with pytest.raises(ValueError, match=r"student shape \(2, 5, 4\) != teacher shape \(2, 5, 6\)"):
        hidden_mse(torch.zeros(2, 5, 4), torch.zeros(2, 5, 6))
    with pytest.raises(ValueError, match="match_heads"):
        attention_kl(torch.zeros(2, 2, 5, 5), torch.zeros(2, 4, 5, 5))


# ---------------------------------------------------------------- head matching


def test_match_heads_average_groups_contiguous_teacher_heads():
    teacher = masked_probs(torch.randn(B, 6, T, T, generator=gen(8)), MASK)
    student = torch.zeros(B, 3, T, T)
    out = match_heads(student, teacher, "average")
    assert out.shape == (B, 3, T, T)
    for i in range(3):
        torch.testing.assert_close(out[:, i], (teacher[:, 2 * i] + teacher[:, 2 * i + 1]) / 2)
    torch.testing.assert_close(out.sum(-1), torch.ones(B, 3, T))  # still distributions
    assert match_heads(torch.zeros(B, 6, T, T), teacher, "average").equal(teacher)


def test_match_heads_select_first_or_listed():
    teacher = torch.randn(B, 6, T, T, generator=gen(9))
    student = torch.zeros(B, 3, T, T)
    assert match_heads(student, teacher, "select").equal(teacher[:, :3])
    assert match_heads(student, teacher, "select", heads=[5, 0, 2]).equal(teacher[:, [5, 0, 2]])
    with pytest.raises(ValueError, match=r"need 3 teacher head indices in \[0, 6\)"):
        match_heads(student, teacher, "select", heads=[0, 6, 1])
    with pytest.raises(ValueError, match=r"need 3 teacher head indices"):
        match_heads(student, teacher, "select", heads=[0, 1])


@pytest.mark.parametrize(
    ("teacher_heads", "student_heads", "rule"), [(5, 3, "average"), (2, 3, "select"), (2, 3, "average")]
)
def test_match_heads_error_names_both_counts_and_the_option(teacher_heads, student_heads, rule):
    teacher, student = torch.zeros(1, teacher_heads, 4, 4), torch.zeros(1, student_heads, 4, 4)
    with pytest.raises(ValueError) as err:
        match_heads(student, teacher, rule)
    msg = str(err.value)
    assert "\n" not in msg
    assert f"{teacher_heads} teacher attention heads to {student_heads} student heads" in msg
    assert "head_rule: average|select" in msg


def test_match_heads_unknown_rule():
    with pytest.raises(ValueError, match="head_rule must be one of average, select, got 'mean'"):
        match_heads(torch.zeros(1, 2, 3, 3), torch.zeros(1, 4, 3, 3), "mean")


# ---------------------------------------------------------------- projection


def test_projection_receives_gradients_through_hidden_mse():
    proj = Projection(4, 6)
    g = gen(10)
    s = torch.randn(B, T, 4, generator=g, requires_grad=True)
    t = torch.randn(B, T, 6, generator=g)
    loss = masked_mean(hidden_mse(proj(s), t), MASK)
    loss.backward()
    assert proj.linear.weight.grad is not None and proj.linear.weight.grad.abs().sum() > 0
    assert proj.linear.bias.grad.abs().sum() > 0
    assert s.grad.abs().sum() > 0


def test_projection_init_naming_and_dtypes():
    assert set(Projection(4, 6).state_dict()) == {"linear.weight", "linear.bias"}
    same = Projection(5, 5)
    assert same.linear.weight.equal(torch.eye(5)) and same.linear.bias.abs().sum() == 0
    x = torch.randn(3, 4, generator=gen(11))
    wide = Projection(4, 6)  # semi-orthogonal: widening keeps every vector's norm
    torch.testing.assert_close(wide(x).norm(dim=-1), x.norm(dim=-1))
    narrow = Projection(6, 4)
    torch.testing.assert_close(
        narrow.linear.weight @ narrow.linear.weight.T, torch.eye(4), rtol=1e-5, atol=1e-5
    )
    assert wide(x.bfloat16()).dtype == torch.float32
    with pytest.raises(ValueError, match="expects last dim 4"):
        wide(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="positive"):
        Projection(0, 4)
