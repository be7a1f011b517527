"""Task-agnostic distillation: DistilBERT's MLM triple loss (task mlm), TinyBERT / MiniLMv2 general
distillation (task general), their configs, and the whole runs through the CLI."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
import yaml

from lmdistill.cli import main
from lmdistill.config import MatchConfig
from lmdistill.errors import ConfigError
from lmdistill.methods.presets import TASK_PRESETS
from lmdistill.objective import ModelShape, Objective, resolve_matches
from lmdistill.signals.live import LiveTeacher
from lmdistill.tasks import load_config

from .conftest import bert_tokenizer, make_sentences

CORPUS = [t for t, _, _ in make_sentences(160, seed=5)]


def _bert(cls, vocab, layers=4, hidden=32, heads=2, seed=0):
    from transformers import BertConfig

    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=2 * hidden,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return cls(cfg)


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return bert_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def mlm_teacher_dir(tmp_path_factory, tok):
    """A tiny BertForMaskedLM 'pre-trained' briefly on the corpus, so its predictions carry knowledge."""
    from transformers import BertForMaskedLM

    from lmdistill.data.rawtext import MLMCollator, iter_blocks

    d = tmp_path_factory.mktemp("mlm_teacher")
    model = _bert(BertForMaskedLM, len(tok))
    blocks = list(iter_blocks(CORPUS, tok, 24))
    collate = MLMCollator(tok, 0.15, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(15):
        batch = collate(
            [{"index": i, "student": {"input_ids": blocks[(step * 8 + i) % len(blocks)]}} for i in range(8)]
        )
        out = model(**batch["student"], labels=batch["labels"])
        out.loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(d)
    tok.save_pretrained(d)
    (d.parent / "corpus.txt").write_text("\n".join(CORPUS) + "\n")
    return d


def _fixed_batches(tok, collate, n=3):
    from lmdistill.data.rawtext import iter_blocks

    blocks = list(iter_blocks(CORPUS, tok, 24))
    return [
        collate([{"index": i, "student": {"input_ids": blocks[b * 8 + i]}} for i in range(8)])
        for b in range(n)
    ]


def _train(student, teacher, objective, batches, steps=15, lr=3e-3):
    """A few optimizer steps on fixed batches; returns the objective on them before and after."""
    from lmdistill.tasks.general import objective_metrics

    objective.attach(student, teacher)
    try:
        params = list(student.parameters()) + list(objective.parameters())
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        signal_of = LiveTeacher(teacher, hidden_states=objective.needs_hidden, tap=objective.teacher_tap)
        before = objective_metrics(student, teacher, objective, batches)
        student.train()
        for step in range(steps):
            batch = batches[step % len(batches)]
            out = student(**batch["student"], output_hidden_states=objective.needs_hidden or None)
            feats = objective.student_tap.pop() if objective.student_tap is not None else None
            terms = objective(out, signal_of(batch), batch, feats)
            objective.total(terms).backward()
            opt.step()
            opt.zero_grad()
        return before, objective_metrics(student, teacher, objective, batches)
    finally:
        objective.detach()


def test_kd_term_equals_a_naive_loop():
    from lmdistill.tasks.mlm import masked_lm_kd

    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 7), torch.randn(2, 5, 7)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]).bool()
    got = masked_lm_kd(s, t, mask, 2.0)
    want = [
        sum(
            torch.softmax(t[b, i] / 2, -1)[v]
            * (torch.log_softmax(t[b, i] / 2, -1)[v] - torch.log_softmax(s[b, i] / 2, -1)[v])
            for v in range(7)
        )
        for b in range(2)
        for i in range(5)
        if mask[b, i]
    ]
    torch.testing.assert_close(got, torch.stack(want), atol=1e-5, rtol=1e-5)


def test_distilbert_triple_loss_decreases(tok, mlm_teacher_dir):
    from transformers import AutoModelForMaskedLM

    from lmdistill.data.rawtext import MLMCollator
    from lmdistill.models.student import fresh_student
    from lmdistill.tasks.mlm import MLMObjective

    teacher = AutoModelForMaskedLM.from_pretrained(mlm_teacher_dir)
    student = fresh_student(teacher, seed=3, num_layers=2)  # random: every term has something to learn
    objective = MLMObjective({"kd": 5.0, "mlm": 2.0, "cos": 1.0}, 2.0)
    batches = _fixed_batches(tok, MLMCollator(tok, 0.15, seed=1))
    before, after = _train(student, teacher, objective, batches)
    assert after["loss"] < 0.9 * before["loss"]
    assert after["kd"] < before["kd"] and after["mlm"] < before["mlm"] and after["cos"] < before["cos"]


@pytest.mark.parametrize("method", ["tinybert", "minilmv2"])
def test_general_objectives_decrease(tok, mlm_teacher_dir, method):
    """TinyBERT general distillation on a narrower fresh student (projections), MiniLMv2 on teacher layers."""
    from transformers import AutoModel, BertModel

    from lmdistill.data.rawtext import BlockCollator
    from lmdistill.models.student import student_from_teacher

    teacher = AutoModel.from_pretrained(mlm_teacher_dir)
    if method == "tinybert":
        student = _bert(BertModel, len(tok), layers=2, hidden=16, heads=2, seed=1)
    else:
        student = student_from_teacher(teacher, [0, 1])
    matches = [MatchConfig(**m) for m in TASK_PRESETS["general"][method]["distill"]["matches"]]
    resolved = resolve_matches(matches, ModelShape.of(student), ModelShape.of(teacher))
    objective = Objective({}, matches=resolved, student_width=student.config.hidden_size, teacher_width=32)
    assert bool(objective.projections) == (method == "tinybert")
    before, after = _train(student, teacher, objective, _fixed_batches(tok, BlockCollator(tok)))
    assert after["loss"] < 0.6 * before["loss"]


def _yaml(tmp_path, name, cfg) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_cli_mlm_end_to_end(tmp_path, mlm_teacher_dir, capsys):
    from transformers import AutoModelForMaskedLM

    corpus = mlm_teacher_dir.parent / "corpus.txt"
    cfg = {
        "task": "mlm",
        "seed": 0,
        "output_dir": str(tmp_path / "out"),
        "data": {"train": str(corpus), "block_size": 24, "validation_size": 0.1, "test_size": 0.1},
        "teacher": {"name_or_path": str(mlm_teacher_dir)},
        "distill": {"method": "distilbert"},
        "training": {"epochs": 1, "batch_size": 8, "learning_rate": 2e-3, "log_every": 2},
    }
    assert main(["distill", _yaml(tmp_path, "mlm", cfg)]) == 0
    out = tmp_path / "out"
    student = AutoModelForMaskedLM.from_pretrained(out / "model")
    assert student.config.num_hidden_layers == 2  # every other layer of 4
    saved = load_config(out / "config.yaml")
    assert saved.distill.losses == {"kd": 5.0, "mlm": 2.0, "cos": 1.0} and saved.distill.temperature == 2.0
    assert saved.student.keep_every == 2 and saved.training.metric_for_best == "perplexity"
    results = json.loads((out / "results.json").read_text())
    assert results["test"]["perplexity"] > 1 and results["teacher"]["test"]["perplexity"] > 1
    assert results["blocks"]["train"] > 0 and results["loss_terms"] == ["cos", "kd", "mlm"]
    metrics = pd.read_csv(out / "metrics.csv")
    assert {"loss/kd", "loss/mlm", "loss/cos", "eval/perplexity", "eval/mlm_accuracy"} <= set(metrics.columns)
    assert "perplexity" in capsys.readouterr().out


def test_cli_general_end_to_end_and_finetune_from_it(tmp_path, mlm_teacher_dir, sentiment_csv):
    """MiniLMv2 general distillation from the MLM teacher's encoder, streamed from a JSONL file, then the
    distilled encoder fine-tuned on a classification task."""
    from transformers import AutoModel

    from lmdistill import api

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": t}) for t in CORPUS) + "\n")
    cfg = {
        "task": "general",
        "seed": 0,
        "output_dir": str(tmp_path / "general"),
        "data": {"train": str(corpus), "block_size": 24, "streaming": True, "max_eval_examples": 16},
        "teacher": {"name_or_path": str(mlm_teacher_dir)},
        "student": {"num_layers": 2},
        "distill": {"method": "minilmv2"},
        "training": {"max_steps": 6, "batch_size": 8, "learning_rate": 2e-3, "log_every": 2, "eval_every": 3},
    }
    assert main(["distill", _yaml(tmp_path, "general", cfg)]) == 0
    out = tmp_path / "general"
    encoder = AutoModel.from_pretrained(out / "model")
    assert type(encoder).__name__ == "BertModel" and encoder.config.num_hidden_layers == 2
    results = json.loads((out / "results.json").read_text())
    assert results["loss_terms"] == ["qq_kl_s1_t3", "kk_kl_s1_t3", "vv_kl_s1_t3"] and results["steps"] == 6
    terms = [results["validation"][k] for k in results["loss_terms"]]  # weight 1 each (minilmv2)
    assert results["validation"]["loss"] == pytest.approx(sum(terms)) and results["blocks"]["train"] == 48
    assert {"loss/qq_kl_s1_t3", "eval/loss"} <= set(pd.read_csv(out / "metrics.csv").columns)
    res = api.finetune(
        {
            "data": {"train": str(sentiment_csv), "max_length": 32},
            "output_dir": str(tmp_path / "ft"),
            "model": {"name_or_path": str(out / "model")},
            "training": {"epochs": 1, "batch_size": 16, "learning_rate": 2e-3},
        }
    )
    again = api.evaluate(res.model_dir, config=tmp_path / "ft" / "config.yaml")
    assert res.test["accuracy"] == again.metrics["accuracy"] and res.model_dir.parent.name == "ft"


def _errors(raw: dict, verb="distill") -> list[str]:
    with pytest.raises(ConfigError) as e:
        load_config(raw, verb=verb)
    return e.value.errors


def test_config_checks_for_raw_text_tasks():
    base = {"data": {"train": "c.txt"}, "teacher": {"name_or_path": "t"}, "student": {"num_layers": 2}}
    assert any(
        e.startswith("distill.matches is required for task general")
        for e in _errors({**base, "task": "general"})
    )
    errs = _errors(
        {
            **base,
            "task": "general",
            "data": {"train": "c.txt", "streaming": True, "mlm_probability": 1.5},
            "distill": {"method": "tinybert"},
        }
    )
    assert "data.streaming needs training.max_steps: a stream has no length to count epochs by" in errs
    assert "data.mlm_probability must be between 0 and 1 (exclusive), got 1.5" in errs
    (err,) = _errors({**base, "task": "mlm", "distill": {"method": "tinybert"}})
    assert (
        err
        == "distill.method 'tinybert' is not a known recipe (did you mean 'distilbert'?) (known: distilbert)"
    )
    (err,) = _errors({**base, "task": "general", "distill": {"method": "minilmv2", "losses": {"kd": 1.0}}})
    assert (
        err
        == "distill.losses.kd is not a loss for task general (task general takes no distill.losses: remove it)"
    )
    (err,) = _errors({**base, "task": "mlm", "training": {"metric_for_best": "accuracy"}})
    assert err.startswith("training.metric_for_best 'accuracy' is not measured for task mlm")
    cfg = load_config({**base, "task": "general", "distill": {"method": "tinybert"}}, verb="distill")
    assert [m.feature for m in cfg.distill.matches] == ["embeddings", "hidden", "attention_scores"]
    assert cfg.distill.losses == {} and cfg.training.metric_for_best == "loss"
    assert load_config({**base, "task": "mlm"}).distill.losses == {"kd": 5.0, "mlm": 2.0, "cos": 1.0}


def test_mlm_teacher_without_head_is_refused(tmp_path, tok, mlm_teacher_dir):
    from transformers import AutoModel

    from lmdistill import api
    from lmdistill.errors import ModelError

    AutoModel.from_pretrained(mlm_teacher_dir).save_pretrained(tmp_path / "encoder")
    tok.save_pretrained(tmp_path / "encoder")
    cfg = {
        "task": "mlm",
        "data": {"train": str(mlm_teacher_dir.parent / "corpus.txt")},
        "teacher": {"name_or_path": str(tmp_path / "encoder")},
        "student": {"num_layers": 2},
        "output_dir": str(tmp_path / "o"),
    }
    with pytest.raises(
        ModelError,
        match="teacher.name_or_path: .* has no masked-LM head .* or use task: general, which needs no head",
    ):
        api.distill(cfg)
