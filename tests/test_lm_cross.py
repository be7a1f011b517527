"""Cross-tokenizer distillation of causal LMs (lm.cross_tokenizer): span alignment by character offsets, ULD
against a naive loop, the shared-vocabulary divergence, and the objective and a run end to end."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from lmdistill.data import alignment as al
from lmdistill.data.lm import LMCollator, cross_text_blocks, render_prompt_response, render_text, text_blocks
from lmdistill.losses.cross_vocab import shared_divergence, uld, vocab_map
from lmdistill.losses.divergences import DIVERGENCES
from lmdistill.losses.topk import topk_signal
from lmdistill.signals.live import TeacherSignal
from lmdistill.tasks.lm_objective import CausalLMObjective

from .conftest import make_sentences
from .test_causal_lm import WORDS, _cfg, tiny_llama, word_tokenizer

# ------------------------------------------------------------------------------------------ alignment


def test_spans_of_multibyte_characters_split_differently():
    """Text 'naïve 日本 ok' (ï, 日, 本: multi-byte). Student: 'na' 'ïve' ' 日本' ' ok'; teacher splits 日 into
    byte tokens that each cover the whole character (as byte-level BPE offsets do), keeps 'naïve' whole,
    and attaches the spaces to the previous token."""
    text = "naïve 日本 ok"
    student = [(0, 2), (2, 5), (5, 8), (8, 11)]
    teacher = [(0, 6), (6, 7), (6, 7), (7, 8), (8, 9), (9, 11)]  # 'naïve ' '日'(b1) '日'(b2) '本' ' ' 'ok'
    assert al.cuts(teacher, text) == {0: 0, 6: 1, 7: 3, 9: 5, 11: 6}  # none between the bytes of 日
    # with whitespace skipped both cut at 'n' (0), '日' (6), 'o' (9), the end (11): spans
    assert al.align_spans(student, teacher, text) == [(0, 2, 0, 1), (2, 3, 1, 5), (3, 4, 5, 6)]


def test_align_spans_on_real_tokenizers_cover_the_same_characters():
    """A WordLevel teacher and a character-level student on the same sentence: every span's two sides
    decode to the same words, every token is in exactly one span, single shared tokens are exact."""
    teacher, student = word_tokenizer(), char_tokenizer()
    text = "the movie was good ."
    rs, rt = render_text(student, text), render_text(teacher, text)
    spans = al.spans_of(rs, rt, al.vocab_strings(student), al.vocab_strings(teacher))
    assert [sp[:4] for sp in spans] == [
        (0, 3, 0, 1),
        (3, 8, 1, 2),
        (8, 11, 2, 3),
        (11, 15, 3, 4),
        (15, 16, 4, 5),
        (16, 17, 5, 6),
    ]
    for s0, s1, t0, t1, _ in spans[:-1]:
        assert student.decode(rs.ids[s0:s1]).replace(" ", "") == teacher.decode(rt.ids[t0:t1]).replace(
            " ", ""
        )
    # '.' is one token in both vocabularies; the EOS spans ('</s>' in both) too
    assert [sp[4] for sp in spans] == [False, False, False, False, True, True]


def test_cross_blocks_with_identical_tokenizers_are_the_ordinary_blocks():
    tok = word_tokenizer()
    texts = [r[0] + " ." for r in make_sentences(12, seed=1)]
    cross = cross_text_blocks(tok, tok, texts, 8, "aligned")
    plain = text_blocks(tok, texts, 8)
    assert [b["input_ids"] for b in cross] == [b["input_ids"] for b in plain]
    assert all(b["teacher"]["input_ids"] == b["input_ids"] for b in cross)
    # one pair per predicted token, each exact, student and teacher at the same position
    assert all(b["pairs"] == [(p, p, True) for p in range(len(b["input_ids"]) - 1)] for b in cross)


def test_uld_pairs_index_pair_the_targets_and_truncate():
    s_labels = [-100, -100, 5, 6, 7, -100]  # targets at 2, 3, 4: predicted from 1, 2, 3
    t_labels = [-100, 8, 9, -100]  # targets at 1, 2: predicted from 0, 1
    assert al.uld_pairs(s_labels, t_labels) == [(1, 0, False), (2, 1, False)]


def test_prompt_response_pairs_start_at_the_last_prompt_token():
    teacher, student = word_tokenizer(), char_tokenizer()
    rs = render_prompt_response(student, "is it good ?", "yes", 64)
    rt = render_prompt_response(teacher, "is it good ?", "yes", 64)
    item = al.cross_item(rs, rt, "aligned", al.vocab_strings(student), al.vocab_strings(teacher))
    p_s = len(student("is it good ?")["input_ids"])
    p_t = len(teacher("is it good ?")["input_ids"])
    # 'yes' (3 chars vs 1 word), then EOS: positions before each span's first token
    assert item["pairs"] == [(p_s - 1, p_t - 1, False), (p_s + 2, p_t, True)]
    assert item["teacher_labels"][:p_t] == [-100] * p_t


# ------------------------------------------------------------------------------------------ losses


def test_uld_equals_a_naive_sort_and_compare_loop():
    torch.manual_seed(0)
    s, t = torch.randn(4, 7), torch.randn(4, 11) * 2
    got = uld(s, t, temperature=1.5)
    for r in range(4):
        p = sorted(F.softmax(t[r] / 1.5, -1).tolist(), reverse=True)
        q = sorted(F.softmax(s[r] / 1.5, -1).tolist(), reverse=True) + [0.0] * 4
        assert got[r].item() == pytest.approx(sum(abs(a - b) for a, b in zip(p, q)), abs=1e-6)
    assert uld(t, t).abs().max() < 1e-6  # identical distributions
    perm = t[:, torch.randperm(11)]
    assert uld(perm, t).abs().max() < 1e-6  # ULD sees only the sorted probabilities


def test_uld_and_shared_divergence_with_topk_at_full_vocab_equal_dense():
    torch.manual_seed(1)
    s, t = torch.randn(3, 9, requires_grad=True), torch.randn(3, 9)
    sig = topk_signal(t, 9, 2.0)
    torch.testing.assert_close(uld(s, sig, 2.0), uld(s, t, 2.0), atol=1e-5, rtol=1e-5)
    assert (uld(s, topk_signal(t, 3, 2.0), 2.0) <= uld(s, t, 2.0) + 1e-6).all()  # bins: a lower bound
    s_ids, t_to_s = vocab_map(list(range(9)), list(range(9)), 9, 9)
    for name in ("forward_kl", "reverse_kl"):
        dense = shared_divergence(s, t, 2.0, divergence=name, s_ids=s_ids, t_to_s=t_to_s)
        topk = shared_divergence(s, sig, 2.0, divergence=name, s_ids=s_ids, t_to_s=t_to_s)
        torch.testing.assert_close(topk, dense, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(dense, DIVERGENCES[name](s, t, 2.0), atol=1e-6, rtol=1e-6)


def test_shared_divergence_is_the_divergence_on_shared_tokens_plus_the_rest():
    """Student ids 0..4, teacher ids 0..5; shared: student 1 = teacher 4, student 3 = teacher 0."""
    torch.manual_seed(2)
    s, t = torch.randn(2, 5, requires_grad=True), torch.randn(2, 6)
    s_ids, t_to_s = vocab_map([1, 3], [4, 0], 5, 6)
    got = shared_divergence(s, t, 1.0, divergence="forward_kl", s_ids=s_ids, t_to_s=t_to_s)
    q, p = F.softmax(s, -1), F.softmax(t, -1)
    for r in range(2):
        pb = [p[r, 4], p[r, 0], 1 - p[r, 4] - p[r, 0]]
        qb = [q[r, 1], q[r, 3], 1 - q[r, 1] - q[r, 3]]
        want = sum(a * (torch.log(a) - torch.log(b)) for a, b in zip(pb, qb))
        assert got[r].item() == pytest.approx(want.item(), rel=1e-5)
    got.sum().backward()
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------ objective


@pytest.mark.parametrize("name", ["forward_kl", "jsd"])
def test_aligned_loss_with_identical_tokenizers_equals_the_ordinary_one(name):
    tok = word_tokenizer()
    texts = [r[0] + " ." for r in make_sentences(8, seed=4)]
    items = [{"index": i, **b} for i, b in enumerate(cross_text_blocks(tok, tok, texts, 8, "aligned"))]
    cross_batch = al.CrossCollator(0, 0)(items)
    plain_batch = LMCollator(0)(items)
    torch.manual_seed(3)
    v = len(tok)
    s = torch.randn(*plain_batch["labels"].shape, v, requires_grad=True)
    t = torch.randn(*plain_batch["labels"].shape, v)
    kw = {"divergence": name, "beta": 0.3, "chunk_size": 5}
    s_ids, t_to_s = vocab_map(list(range(v)), list(range(v)), v, v)
    cross = CausalLMObjective({"kd": 1.0}, 2.0, cross=("aligned", s_ids, t_to_s), **kw)
    plain = CausalLMObjective({"kd": 1.0}, 2.0, **kw)
    a = cross(SimpleNamespace(logits=s), TeacherSignal(logits=t), cross_batch)["kd"]
    b = plain(SimpleNamespace(logits=s), TeacherSignal(logits=t), plain_batch)["kd"]
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    (ga,) = torch.autograd.grad(a, s)
    (gb,) = torch.autograd.grad(b, s)
    torch.testing.assert_close(ga, gb, atol=1e-6, rtol=1e-4)


def test_cross_kd_is_the_mean_of_exact_and_uld_pairs():
    torch.manual_seed(5)
    s, t = torch.randn(1, 4, 6), torch.randn(1, 3, 8)
    align = {
        "student": torch.tensor([0, 2, 3]),
        "teacher": torch.tensor([0, 1, 2]),
        "exact": torch.tensor([True, False, True]),
    }
    s_ids, t_to_s = vocab_map([0, 1, 2], [5, 6, 7], 6, 8)
    obj = CausalLMObjective({"kd": 1.0}, 1.0, cross=("aligned", s_ids, t_to_s), kd_scale_t2=False)
    got = obj.cross_kd(s, t, align)
    rows = [
        shared_divergence(s[:, 0], t[:, 0], divergence="forward_kl", s_ids=s_ids, t_to_s=t_to_s),
        uld(s[:, 2], t[:, 1]),
        shared_divergence(s[:, 3], t[:, 2], divergence="forward_kl", s_ids=s_ids, t_to_s=t_to_s),
    ]
    torch.testing.assert_close(got, torch.cat(rows).mean())
    uld_only = CausalLMObjective({"kd": 1.0}, 1.0, cross=("uld", s_ids, t_to_s), kd_scale_t2=False)
    want = torch.cat([uld(s[:, 0], t[:, 0]), uld(s[:, 2], t[:, 1]), uld(s[:, 3], t[:, 2])]).mean()
    torch.testing.assert_close(uld_only.cross_kd(s, t, align), want)


# ------------------------------------------------------------------------------------------ end to end


def char_tokenizer(words=WORDS):
    """A character-level tokenizer (BPE with no merges) over the letters of ``words`` plus '.' and '?'."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    chars = sorted({c for w in words for c in w})
    specials = ["<pad>", "<unk>", "<s>", "</s>"]
    vocab = {w: i for i, w in enumerate(specials + chars)}
    tk = Tokenizer(models.BPE(vocab, [], unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )


@pytest.fixture(scope="module")
def char_tok_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("char_tok")
    char_tokenizer().save_pretrained(d)
    return d


@pytest.mark.parametrize("mode", ["aligned", "uld"])
def test_distill_across_tokenizers_with_the_teacher_cache(
    tmp_path, llama_dir, text_csv, char_tok_dir, mode, monkeypatch
):
    """A fresh student with its own (character) tokenizer learns from a word-level teacher; the teacher cache,
    keyed by the teacher's tokens, serves the same losses as the live teacher."""
    import numpy as np

    from lmdistill import api
    from lmdistill.signals.live import LiveTeacher

    calls = {"n": 0}
    original = LiveTeacher.__call__

    def counted(self, batch):
        calls["n"] += 1
        return original(self, batch)

    monkeypatch.setattr(LiveTeacher, "__call__", counted)

    def cfg(name, **training):
        return _cfg(
            tmp_path,
            name,
            data={"train": str(text_csv / "text.csv"), "max_train_examples": 60, "max_eval_examples": 10},
            teacher={"name_or_path": str(llama_dir)},
            student={"init": "config", "num_layers": 1, "hidden_size": 16, "tokenizer": str(char_tok_dir)},
            lm={"block_size": 32, "cross_tokenizer": mode},
            training={"max_steps": 3, "log_every": 1, "batch_size": 8, **training},
        )

    live = api.distill(cfg("live"))
    assert calls["n"] == 3
    res = json.loads((tmp_path / "live" / "results.json").read_text())
    assert res["cross_tokenizer"]["mode"] == mode and res["teacher_test"]["perplexity"] > 1
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "live" / "model")
    assert model.config.vocab_size == len(char_tokenizer()) and model.config.eos_token_id == 3
    cached_cfg = cfg("cached", teacher_cache=str(tmp_path / "cache"))
    api.cache(cached_cfg)
    calls["n"] = 0
    cached = api.distill(cached_cfg)
    assert calls["n"] == 0  # the teacher never ran while training
    a = [r["loss/kd"] for r in live.history if "loss/kd" in r]
    b = [r["loss/kd"] for r in cached.history if "loss/kd" in r]
    assert len(a) == 3 and all(v > 0 for v in a)
    np.testing.assert_allclose(b, a, rtol=5e-3)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_llama_x")
    tok = word_tokenizer()
    tiny_llama(len(tok)).save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def text_csv(tmp_path_factory):
    import pandas as pd

    d = tmp_path_factory.mktemp("lm_data_x")
    rows = make_sentences(200, seed=3)
    pd.DataFrame({"text": [r[0] + " ." for r in rows]}).to_csv(d / "text.csv", index=False)
    return d
