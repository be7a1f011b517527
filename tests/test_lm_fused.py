"""lm.fused: the LM head and the losses computed together chunk by chunk equal the unfused losses, in value
and in gradient (hidden states, head weight and bias), with a dense, top-k or head teacher, and through the
objective on tiny Llama models with a live teacher."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lmdistill.errors import ModelError
from lmdistill.losses.divergences import DIVERGENCES
from lmdistill.losses.fused import FusedSpec, HeadRows, fused_kd_lm
from lmdistill.losses.topk import topk_signal
from lmdistill.signals.live import LiveTeacher
from lmdistill.tasks.lm_objective import CausalLMObjective

from .test_causal_lm import PARAMS, _cfg, tiny_llama, word_tokenizer


def _unfused(h, w, b, targets, teacher_logits, name, temperature, size, top_k=None):
    z = F.linear(h, w, b)
    t = teacher_logits[:, :size]
    t = topk_signal(t, top_k, temperature) if top_k else t
    kd = DIVERGENCES[name](z[:, :size], t, temperature, **PARAMS.get(name, {})).mean()
    return kd, F.cross_entropy(z, targets)


@pytest.mark.parametrize("name", sorted(DIVERGENCES))
@pytest.mark.parametrize("bias", [False, True])
def test_fused_values_and_gradients_equal_unfused(name, bias):
    torch.manual_seed(0)
    n, hdim, v = 13, 6, 19
    h = torch.randn(n, hdim, dtype=torch.float64, requires_grad=True)
    w = torch.randn(v, hdim, dtype=torch.float64, requires_grad=True)
    b = torch.randn(v, dtype=torch.float64, requires_grad=True) if bias else None
    targets = torch.randint(0, v, (n,))
    t = torch.randn(n, v + 3, dtype=torch.float64) * 2  # a padded teacher vocabulary: 3 rows more
    spec = FusedSpec(name, PARAMS.get(name, {}), temperature=1.7, chunk_size=4)
    fused = fused_kd_lm(h, w, b, targets, t, spec)
    kd, lm = _unfused(h, w, b, targets, t, name, 1.7, v)
    torch.testing.assert_close(fused, torch.stack([kd, lm]), atol=1e-12, rtol=1e-10)
    inputs = [h, w] + ([b] if bias else [])
    weights = torch.tensor([0.3, 0.7], dtype=torch.float64)
    got = torch.autograd.grad((fused * weights).sum(), inputs)
    want = torch.autograd.grad(0.3 * kd + 0.7 * lm, inputs)
    for g, e in zip(got, want):
        torch.testing.assert_close(g, e, atol=1e-10, rtol=1e-8)


def test_fused_teacher_from_its_head_and_top_k_equals_unfused():
    torch.manual_seed(1)
    n, hs, ht, v = 10, 5, 7, 23
    h = torch.randn(n, hs, requires_grad=True)
    w = torch.randn(v, hs, requires_grad=True)
    th, tw = torch.randn(n, ht), torch.randn(v, ht)
    targets = torch.randint(0, v, (n,))
    t = F.linear(th, tw)
    for top_k in (None, 4):
        spec = FusedSpec("forward_kl", {}, temperature=2.0, chunk_size=3, top_k=top_k)
        fused = fused_kd_lm(h, w, None, targets, HeadRows(th, tw), spec)
        kd, lm = _unfused(h, w, None, targets, t, "forward_kl", 2.0, v, top_k)
        torch.testing.assert_close(fused, torch.stack([kd, lm]), atol=1e-5, rtol=1e-5)
        got = torch.autograd.grad(fused.sum(), [h, w])
        want = torch.autograd.grad(kd + lm, [h, w])
        for g, e in zip(got, want):
            torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-4)
    cached = topk_signal(t, 4, 2.0)  # a top-k cache serves the teacher
    spec = FusedSpec("forward_kl", {}, temperature=2.0, chunk_size=3)
    torch.testing.assert_close(
        fused_kd_lm(h, w, None, targets, cached, spec),
        torch.stack(_unfused(h, w, None, targets, t, "forward_kl", 2.0, v, 4)),
        atol=1e-5,
        rtol=1e-5,
    )


def test_no_rows_gives_zero_not_nan():
    h, w = torch.zeros(0, 4, requires_grad=True), torch.randn(9, 4, requires_grad=True)
    out = fused_kd_lm(
        h, w, None, torch.zeros(0, dtype=torch.long), torch.zeros(0, 9), FusedSpec("forward_kl", {})
    )
    assert out.tolist() == [0.0, 0.0]
    out.sum().backward()
    assert w.grad.abs().sum() == 0


@pytest.mark.parametrize("top_k", [None, 5])
def test_fused_objective_on_llama_equals_unfused_and_makes_no_logits(top_k):
    tok = word_tokenizer()
    student, teacher = tiny_llama(len(tok), layers=2, seed=1), tiny_llama(len(tok) + 8, seed=2)
    torch.manual_seed(0)
    ids = torch.randint(4, len(tok), (3, 12))
    mask = torch.ones_like(ids)
    mask[2, 9:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    labels[0, :4] = -100  # a prompt
    batch = {"student": {"input_ids": ids, "attention_mask": mask}, "labels": labels}
    kw = {"divergence": "jsd", "beta": 0.4, "top_k": top_k, "vocab_size": len(tok), "chunk_size": 7}
    results = {}
    for fused in (False, True):
        obj = CausalLMObjective({"kd": 0.5, "lm": 0.5}, 2.0, fused=fused, **kw)
        obj.attach(student, teacher)
        signal = LiveTeacher(teacher)(batch)
        student.zero_grad()
        out = student(**batch["student"])
        terms = obj(out, signal, batch)
        obj.total(terms).backward()
        obj.detach()
        assert out.logits.shape[1] == (0 if fused else 12) and signal.logits.shape[1] == (0 if fused else 12)
        results[fused] = (
            {k: v.detach() for k, v in terms.items()},
            {n: p.grad.clone() for n, p in student.named_parameters()},
        )
    for k in ("kd", "lm"):
        torch.testing.assert_close(results[True][0][k], results[False][0][k], atol=1e-5, rtol=1e-5)
    for name, g in results[False][1].items():
        torch.testing.assert_close(results[True][1][name], g, atol=1e-6, rtol=1e-4, msg=name)
    assert student(**batch["student"]).logits.shape[1] == 12  # detached: ordinary logits again


def test_fused_student_in_eval_mode_gets_ordinary_logits():
    tok = word_tokenizer()
    student = tiny_llama(len(tok), layers=1)
    obj = CausalLMObjective({"lm": 1.0}, 1.0, fused=True)
    obj.attach(student, None)
    ids = torch.randint(4, len(tok), (2, 6))
    student.eval()
    assert student(input_ids=ids).logits.shape == (2, 6, len(tok))  # evaluation, generation
    student.train()
    assert student(input_ids=ids).logits.shape == (2, 0, len(tok))
    obj.detach()


def test_a_model_with_rescaled_logits_cannot_be_fused():
    tok = word_tokenizer()
    student = tiny_llama(len(tok), layers=1)
    student.config.final_logit_softcapping = 30.0
    with pytest.raises(
        ModelError,
        match=r"lm.fused: the student \(LlamaForCausalLM\) cannot be fused: its logits are rescaled \(final_logit_softcapping\)",
    ):
        CausalLMObjective({"lm": 1.0}, 1.0, fused=True).attach(student, None)


@pytest.fixture(scope="module")
def teacher_and_text(tmp_path_factory):
    """A tiny Llama teacher folder and a CSV of 60 sentences."""
    import pandas as pd

    from .conftest import make_sentences

    d = tmp_path_factory.mktemp("fused_run")
    tok = word_tokenizer()
    tiny_llama(len(tok)).save_pretrained(d / "teacher")
    tok.save_pretrained(d / "teacher")
    pd.DataFrame({"text": [r[0] + " ." for r in make_sentences(60, seed=3)]}).to_csv(
        d / "text.csv", index=False
    )
    return d


def test_fused_run_with_a_hidden_state_match_logs_the_unfused_losses(tmp_path, teacher_and_text, monkeypatch):
    """Through api.distill: lm.fused with distill.matches (hidden states) logs the same kd, lm and match
    losses, step by step, as the unfused run."""
    import lmdistill.tasks.lm_objective as lo
    from lmdistill import api

    calls = []
    real = lo.fused_kd_lm
    monkeypatch.setattr(lo, "fused_kd_lm", lambda *a, **k: calls.append(1) or real(*a, **k))
    histories, fused_calls = {}, {}
    for fused in (False, True):
        cfg = _cfg(
            tmp_path,
            f"fused_{fused}",
            data={
                "train": str(teacher_and_text / "text.csv"),
                "max_train_examples": 40,
                "max_eval_examples": 8,
            },
            teacher={"name_or_path": str(teacher_and_text / "teacher")},
            student={"layers": [0, 3]},
            lm={"block_size": 16, "fused": fused, "chunk_size": 5},
            distill={"matches": [{"feature": "hidden", "strategy": "uniform"}]},
            training={"max_steps": 3, "log_every": 1, "batch_size": 4},
        )
        histories[fused] = [r for r in api.distill(cfg).history if "loss" in r]
        fused_calls[fused], calls[:] = len(calls), []
    assert fused_calls == {False: 0, True: 3}  # one fused loss per training step, only when asked
    keys = [k for k in histories[False][0] if k.startswith("loss")]
    assert set(keys) == {"loss", "loss/kd", "loss/lm", "loss/hidden_mse_s0_t1", "loss/hidden_mse_s1_t3"}
    assert len(histories[True]) == len(histories[False]) == 3
    for plain, fused in zip(histories[False], histories[True]):
        for k in keys:
            assert fused[k] == pytest.approx(plain[k], rel=1e-4), k
