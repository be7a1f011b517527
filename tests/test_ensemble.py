"""Teacher ensembles and SKD (lmdistill.signals.ensemble, lmdistill.tasks.ensemble): the combined targets against
hand computations, the SKD draws against the configured distribution and across a resume, end-to-end runs with
two tiny teachers, and the config's one-line errors."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from lmdistill.config.multi import EnsembleSection, TeacherSpec
from lmdistill.errors import ConfigError
from lmdistill.signals.ensemble import (
    EnsembleTeacher,
    combine_logits,
    draw,
    draw_counts,
    sampling_probs,
)

from .conftest import bert_tokenizer, save_tiny_bert, tiny_bert

# ------------------------------------------------------------------------------------------ combining, by hand


def _softmax(z: list[float]) -> list[float]:
    e = [math.exp(x) for x in z]
    return [x / sum(e) for x in e]


Z1 = [[1.0, 2.0, 0.0], [0.5, -1.0, 3.0]]  # teacher 1, two examples, three classes
Z2 = [[0.0, 0.0, 4.0], [2.0, 1.0, 0.0]]
W, TAU = [1.0, 3.0], [2.0, 0.5]


def test_mean_probs_is_the_log_of_the_weighted_mean_of_each_teachers_tempered_probabilities():
    got = combine_logits([torch.tensor(Z1), torch.tensor(Z2)], W, TAU, "mean_probs")
    for b in range(2):
        p1 = _softmax([z / TAU[0] for z in Z1[b]])
        p2 = _softmax([z / TAU[1] for z in Z2[b]])
        want = [math.log(0.25 * a + 0.75 * c) for a, c in zip(p1, p2, strict=True)]
        assert got[b].tolist() == pytest.approx(want, abs=1e-6)
    assert torch.softmax(got, -1).sum(-1).tolist() == pytest.approx([1.0, 1.0])  # already normalised


def test_mean_logits_is_the_weighted_mean_of_each_teachers_tempered_logits():
    got = combine_logits([torch.tensor(Z1), torch.tensor(Z2)], W, TAU, "mean_logits")
    for b in range(2):
        want = [0.25 * a / TAU[0] + 0.75 * c / TAU[1] for a, c in zip(Z1[b], Z2[b], strict=True)]
        assert got[b].tolist() == pytest.approx(want, abs=1e-6)


def test_confidence_weights_each_example_by_each_teachers_largest_probability():
    got = combine_logits([torch.tensor(Z1), torch.tensor(Z2)], W, TAU, "confidence")
    for b in range(2):
        p1 = _softmax([z / TAU[0] for z in Z1[b]])
        p2 = _softmax([z / TAU[1] for z in Z2[b]])
        a1, a2 = 0.25 * max(p1), 0.75 * max(p2)
        want = [math.log((a1 * x + a2 * y) / (a1 + a2)) for x, y in zip(p1, p2, strict=True)]
        assert got[b].tolist() == pytest.approx(want, abs=1e-6)


def test_confidence_works_per_position_of_token_level_outputs():
    z1, z2 = torch.randn(2, 5, 4), torch.randn(2, 5, 4)
    got = combine_logits([z1, z2], [1.0, 1.0], [1.0, 1.0], "confidence")
    for b in range(2):
        for t in range(5):
            want = combine_logits([z1[b, t], z2[b, t]], [1.0, 1.0], [1.0, 1.0], "confidence")
            assert torch.allclose(got[b, t], want, atol=1e-6)


def test_a_teacher_of_weight_zero_changes_nothing():
    got = combine_logits([torch.tensor(Z1), torch.tensor(Z2)], [1.0, 0.0], [1.0, 1.0], "mean_probs")
    assert torch.allclose(got, torch.log_softmax(torch.tensor(Z1), -1), atol=1e-6)


# ------------------------------------------------------------------------------------------ SKD sampling


def _chi2(counts: list[int], probs: list[float]) -> float:
    n = sum(counts)
    return sum((c - n * p) ** 2 / (n * p) for c, p in zip(counts, probs, strict=True))


def test_skd_draw_frequencies_over_3000_steps_match_the_configured_distribution():
    probs = [0.2, 0.5, 0.3]
    counts = draw_counts(seed=7, steps=3000, probs=torch.tensor(probs))
    assert sum(counts) == 3000
    assert _chi2(counts, probs) < 13.82  # chi-square, 2 degrees of freedom, p = 0.001
    assert _chi2(counts, [1 / 3] * 3) > 100  # a uniform sampler would fail the same test by far


def test_skd_weights_sampling_follows_the_normalised_teacher_weights():
    probs = sampling_probs("weights", [1.0, 3.0])
    assert probs.tolist() == pytest.approx([0.25, 0.75])
    counts = draw_counts(seed=1, steps=3000, probs=probs)
    assert _chi2(counts, [0.25, 0.75]) < 10.83  # 1 degree of freedom, p = 0.001


def test_validation_sampling_is_a_softmax_of_the_scores_over_the_temperature():
    got = sampling_probs("validation", [1.0, 1.0, 1.0], scores=[0.8, 0.9, 0.7], temperature=0.1)
    e = [math.exp(s / 0.1) for s in (0.8, 0.9, 0.7)]
    assert got.tolist() == pytest.approx([x / sum(e) for x in e])
    assert sampling_probs("uniform", [5.0, 1.0]).tolist() == [0.5, 0.5]


def test_a_draw_is_a_pure_function_of_seed_and_step():
    probs = torch.tensor([0.3, 0.3, 0.4])
    forward = [draw(3, s, probs) for s in range(200)]
    backward = [draw(3, s, probs) for s in reversed(range(200))][::-1]
    assert forward == backward  # no hidden state: the order of the calls does not matter
    assert draw_counts(3, 200, probs, start=120) == [forward[120:].count(i) for i in range(3)]
    assert forward != [draw(4, s, probs) for s in range(200)]  # another seed, other draws


# ------------------------------------------------------------------------------------------ the signal source


class _Counting(torch.nn.Module):
    """A teacher whose logits are a constant row, counting its calls."""

    def __init__(self, row):
        super().__init__()
        self.row = torch.nn.Parameter(torch.tensor(row))
        self.calls = 0

    def forward(self, input_ids, attention_mask=None, output_hidden_states=None):
        self.calls += 1
        logits = self.row.expand(input_ids.shape[0], -1)
        hidden = (
            (torch.full((input_ids.shape[0], 1, 2), float(self.row[0])),) if output_hidden_states else None
        )
        return type("Out", (), {"logits": logits, "hidden_states": hidden})()


def _batch():
    return {"student": {"input_ids": torch.zeros(3, 4, dtype=torch.long)}}


def test_skd_runs_only_the_drawn_teacher_and_returns_its_tempered_logits():
    teachers = [_Counting([1.0, 0.0]), _Counting([0.0, 4.0])]
    probs = torch.tensor([0.5, 0.5])
    source = EnsembleTeacher(teachers, ["a", "b"], [1.0, 1.0], [1.0, 2.0], probs=probs, seed=5)
    for step in range(20):
        source.at_step(step)
        i = draw(5, step, probs)
        got = source(_batch()).logits
        assert torch.equal(got, teachers[i].row.detach().expand(3, -1) / [1.0, 2.0][i])
    assert teachers[0].calls + teachers[1].calls == 20
    assert [teachers[0].calls, teachers[1].calls] == draw_counts(5, 20, probs)


def test_layer_knowledge_comes_from_the_named_teacher_alone():
    teachers = [_Counting([1.0, 0.0]), _Counting([7.0, 4.0])]
    source = EnsembleTeacher(
        teachers, ["a", "b"], [1.0, 1.0], [1.0, 1.0], layers=1, reads=lambda: (True, None)
    )
    signal = source(_batch())
    assert float(signal.hidden_states[0][0, 0, 0]) == 7.0  # teacher b's
    want = combine_logits([t.row.detach().expand(3, -1) for t in teachers], [1, 1], [1, 1], "mean_probs")
    assert torch.allclose(signal.logits, want)


def test_teachers_with_different_outputs_are_refused_in_one_line():
    from lmdistill.errors import ModelError

    source = EnsembleTeacher([_Counting([1.0, 0.0]), _Counting([0.0, 1.0, 2.0])], ["a", "b"], [1, 1], [1, 1])
    with pytest.raises(
        ModelError, match=r"^teachers: b gives outputs of shape \(3, 3\), a \(3, 2\); output KD"
    ):
        source(_batch())


# ------------------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def two_teachers(tmp_path_factory) -> list[Path]:
    """Two tiny classifiers of different depths sharing one tokenizer (their labels named as the data's)."""
    dirs = []
    for seed, layers in ((1, 2), (2, 4)):
        d = tmp_path_factory.mktemp(f"teacher{seed}")
        tok = bert_tokenizer(d)
        model = tiny_bert(layers=layers, vocab=len(tok), seed=seed)
        model.config.id2label, model.config.label2id = (
            {0: "negative", 1: "positive"},
            {"negative": 0, "positive": 1},
        )
        model.save_pretrained(d)
        tok.save_pretrained(d)
        dirs.append(d)
    return dirs


def _cfg(tmp_path: Path, csv: Path, teachers: list[Path], out: str, **ensemble) -> dict:
    return {
        "seed": 3,
        "data": {"train": str(csv), "max_length": 32},
        "teachers": [
            {"name_or_path": str(teachers[0]), "name": "small", "weight": 1.0},
            {"name_or_path": str(teachers[1]), "name": "large", "weight": 3.0, "temperature": 2.0},
        ],
        "ensemble": ensemble,
        "student": {"layers": [0, 1]},
        "output_dir": str(tmp_path / out),
        "training": {
            "max_steps": 12,
            "batch_size": 8,
            "learning_rate": 1e-3,
            "log_every": 4,
            "eval_every": 6,
        },
    }


def test_distill_from_two_teachers_by_mean_probs(tmp_path, sentiment_csv, two_teachers):
    from lmdistill import api

    result = api.distill(_cfg(tmp_path, sentiment_csv, two_teachers, "mean", combine="mean_probs"))
    assert result.steps == 12
    got = json.loads((tmp_path / "mean" / "results.json").read_text())["ensemble"]
    assert got == {
        "teachers": ["small", "large"],
        "weights": [1.0, 3.0],
        "temperatures": [1.0, 2.0],
        "combine": "mean_probs",
        "layers_from": "small",
    }
    saved = yaml.safe_load((tmp_path / "mean" / "config.yaml").read_text())
    assert saved["teacher"]["name_or_path"] == str(two_teachers[0])  # resolved: the layer teacher
    assert [t["name"] for t in saved["teachers"]] == ["small", "large"]


def test_skd_distill_records_how_often_each_teacher_was_drawn(tmp_path, sentiment_csv, two_teachers, capsys):
    from lmdistill import api

    cfg = _cfg(tmp_path, sentiment_csv, two_teachers, "skd", sampling="weights", layers_from="large")
    api.distill(cfg)
    got = json.loads((tmp_path / "skd" / "results.json").read_text())["ensemble"]
    want = draw_counts(3, 12, torch.tensor([0.25, 0.75]))
    assert got["draws"] == {"small": want[0], "large": want[1]}
    assert got["probabilities"] == [0.25, 0.75] and got["layers_from"] == "large"
    assert f"ensemble draws: small {want[0]}, large {want[1]}" in capsys.readouterr().out


def test_validation_sampling_reads_injected_scores(tmp_path, sentiment_csv, two_teachers):
    from lmdistill import api

    cfg = _cfg(
        tmp_path,
        sentiment_csv,
        two_teachers,
        "val",
        sampling="validation",
        sampling_temperature=0.5,
        scores={"small": 0.6, "large": 0.9},
    )
    cfg["training"]["max_steps"] = 4
    api.distill(cfg)
    got = json.loads((tmp_path / "val" / "results.json").read_text())["ensemble"]
    p = sampling_probs("validation", [1, 1], [0.6, 0.9], 0.5)
    assert got["probabilities"] == [round(float(x), 6) for x in p]
    assert sum(got["draws"].values()) == 4


def test_validation_sampling_measures_each_teacher_before_training(
    tmp_path, sentiment_csv, two_teachers, capsys
):
    from lmdistill import api

    cfg = _cfg(tmp_path, sentiment_csv, two_teachers, "valm", sampling="validation")
    cfg["training"]["max_steps"] = 2
    api.distill(cfg)
    line = next(
        x for x in capsys.readouterr().out.splitlines() if x.startswith("ensemble: validation scores")
    )
    scores = [float(x.split()[-1]) for x in line.removeprefix("ensemble: validation scores ").split(", ")]
    got = json.loads((tmp_path / "valm" / "results.json").read_text())["ensemble"]
    p = sampling_probs("validation", [1, 1], scores, 1.0)
    assert got["probabilities"] == pytest.approx([float(x) for x in p], abs=1e-4)


def test_skd_draws_and_weights_are_identical_after_a_resume(
    tmp_path, sentiment_csv, two_teachers, monkeypatch
):
    from lmdistill import api

    seen: dict[str, list[tuple[int, int]]] = {"ref": [], "crash": []}
    real_call = EnsembleTeacher.__call__
    run = {"name": "ref"}

    class Crash(Exception):
        pass

    def recording(self, batch):
        if run["name"] == "crash" and self.step == 9:
            raise Crash  # killed in the middle of step 9; the checkpoint of step 8 survives
        seen[run["name"]].append((self.step, self.chosen()[0]))
        return real_call(self, batch)

    monkeypatch.setattr(EnsembleTeacher, "__call__", recording)
    ref = _cfg(tmp_path, sentiment_csv, two_teachers, "ref", sampling="uniform")
    # evaluated at the end only: a best model saved before a crash does not survive it (the staging folder)
    ref["training"].update(save_every=4, gradient_accumulation_steps=2, batch_size=4, eval_every=12)
    api.distill(ref)
    run["name"] = "crash"
    crash = {**ref, "output_dir": str(tmp_path / "crash")}
    with pytest.raises(Crash):
        api.distill(crash)
    run["name"] = "resumed"
    seen["resumed"] = []
    api.distill(crash, ["training.resume=auto"])

    assert [s for s, _ in seen["resumed"]][:2] == [8, 8]  # two micro-batches per step: one draw serves both
    assert seen["crash"] == seen["ref"][:18]  # steps 0-8, two micro-batches each
    assert seen["resumed"] == seen["ref"][16:]  # from the checkpoint of step 8 on: the same teachers
    a = load_file(tmp_path / "ref" / "model" / "model.safetensors")
    b = load_file(tmp_path / "crash" / "model" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    draws = [
        json.loads((tmp_path / d / "results.json").read_text())["ensemble"]["draws"] for d in ("ref", "crash")
    ]
    assert draws[0] == draws[1]


# ------------------------------------------------------------------------------------------ config


BASE = {"task": "classification", "data": {"dataset": "x"}, "student": {"num_layers": 1}}
TWO = [{"name_or_path": "a"}, {"name_or_path": "b"}]


def _errors(**keys) -> list[str]:
    from lmdistill.tasks import load_config

    with pytest.raises(ConfigError) as e:
        load_config({**BASE, **keys}, verb="distill")
    return e.value.errors


@pytest.mark.parametrize(
    ("keys", "want"),
    [
        (
            {"teachers": [{"name_or_path": "a", "weight": 0}, {"name_or_path": "b", "weight": 0}]},
            "teachers: the weights sum to 0; give at least one teacher a positive weight",
        ),
        (
            {"teachers": TWO, "ensemble": {"layers_from": "big"}},
            "ensemble.layers_from 'big' names no teacher (teachers: teacher0, teacher1)",
        ),
        (
            {"teachers": [{"name_or_path": "a", "weight": -1}, {"name_or_path": "b"}]},
            "teachers[0].weight must be a finite number >= 0, got -1.0",
        ),
        (
            {"teachers": [{"name_or_path": "a", "temperature": 0}, {"name_or_path": "b"}]},
            "teachers[0].temperature must be > 0, got 0.0",
        ),
        (
            {"teachers": TWO, "teacher": {"name_or_path": "c"}},
            "teacher: and teachers: are exclusive; list every teacher under teachers: and remove teacher:",
        ),
        (
            {"teachers": [{"name_or_path": "a"}]},
            "teachers: lists one model; give two or more, or use teacher: for a single teacher",
        ),
        (
            {"teachers": [{"name_or_path": "a", "name": "x"}, {"name_or_path": "b", "name": "x"}]},
            "teachers: the name(s) x appear twice; give every teacher its own name",
        ),
        (
            {"teachers": TWO, "ensemble": {"sampling": "validation", "scores": {"teacher0": 1.0}}},
            "ensemble.scores must give one score per teacher (teacher0, teacher1); check ['teacher1']",
        ),
        (
            {"ensemble": {"sampling": "uniform"}},
            "ensemble: is set but teachers: is empty; list the teachers, or remove ensemble",
        ),
        (
            {"task": "regression", "teachers": TWO},
            "ensemble.combine mean_probs does not apply to task regression; use mean_logits, or ensemble.sampling (SKD)",
        ),
        (
            {"task": "causal_lm", "teachers": TWO, "training": {"teacher_cache": "auto"}, "lm": {"top_k": 4}},
            "training.teacher_cache with teachers: stores dense outputs to combine; remove lm.top_k",
        ),
        (
            {"teachers": TWO, "distill": {"losses": {"kd_mse": 1.0}}},
            "distill.losses kd_mse matches logits, but ensemble.combine mean_probs gives log-probabilities; use "
            "ensemble.combine: mean_logits",
        ),
    ],
)
def test_bad_ensemble_configs_get_one_line_each(keys, want):
    assert want in _errors(**keys)


def test_a_misspelt_ensemble_key_is_refused_with_a_suggestion():
    assert "unknown key 'ensemble.samplng' (did you mean 'ensemble.sampling'?)" in _errors(
        teachers=TWO, ensemble={"samplng": "uniform"}
    )
    assert "unknown key 'teachers[1].weigth' (did you mean 'teachers[1].weight'?)" in _errors(
        teachers=[{"name_or_path": "a"}, {"name_or_path": "b", "weigth": 2}]
    )


def test_teachers_are_refused_by_a_task_without_output_knowledge():
    errors = _errors(task="general", teachers=TWO, distill={"method": "tinybert"})
    assert any(
        e.startswith("teachers: task general has no output-level knowledge to combine") for e in errors
    )


def test_every_ensemble_key_has_a_docstring_and_a_line_in_the_methods_docs():
    import ast
    import inspect

    import lmdistill.config.multi as multi

    docs = (Path(__file__).parents[1] / "docs" / "methods.md").read_text()
    tree = ast.parse(inspect.getsource(multi))
    for cls in (TeacherSpec, EnsembleSection):
        node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls.__name__)
        body = node.body
        documented = {
            body[i].target.id
            for i in range(len(body) - 1)
            if isinstance(body[i], ast.AnnAssign)
            and isinstance(body[i + 1], ast.Expr)
            and isinstance(body[i + 1].value, ast.Constant)
        }
        section = "teachers" if cls is TeacherSpec else "ensemble"
        for f in dataclasses.fields(cls):
            assert f"`{f.name}`" in docs or f"`{section}.{f.name}`" in docs, f"{section}.{f.name} not in docs"
            if f.name not in ("revision", "trust_remote_code"):  # as the `teacher` section has them
                assert f.name in documented, f"{cls.__name__}.{f.name} has no docstring"


# ------------------------------------------------------------------------------------------ other tasks


def test_mlm_distill_from_two_teachers_with_layer_knowledge_from_one(tmp_path):
    """DistilBERT's triple loss (kd + mlm + cosine of hidden states) with two masked-LM teachers: kd from their
    mean (confidence-weighted), the cosine term from the named teacher's layers."""
    from transformers import BertForMaskedLM

    from lmdistill import api

    from .conftest import make_sentences

    tok = bert_tokenizer(tmp_path)
    dirs = [save_tiny_bert(BertForMaskedLM, tok, tmp_path / f"mlm{seed}", seed) for seed in (1, 2)]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(t for t, _, _ in make_sentences(80, seed=5)) + "\n")
    cfg = {
        "task": "mlm",
        "seed": 0,
        "output_dir": str(tmp_path / "out"),
        "data": {"train": str(corpus), "block_size": 24, "validation_size": 0.1, "test_size": 0.1},
        "teachers": [{"name_or_path": str(d)} for d in dirs],
        "ensemble": {"combine": "confidence", "layers_from": "teacher1"},
        "distill": {"method": "distilbert"},
        "training": {"max_steps": 4, "batch_size": 8, "learning_rate": 2e-3, "log_every": 2},
    }
    api.distill(cfg)
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["ensemble"]["combine"] == "confidence" and results["ensemble"]["layers_from"] == "teacher1"
    assert results["loss_terms"] == ["cos", "kd", "mlm"]


def test_token_classification_skd_from_two_taggers(tmp_path):
    from transformers import BertForTokenClassification

    from lmdistill import api

    from .test_token_classification import FILL, PIECES, ner_rows, write_jsonl

    tok = bert_tokenizer(tmp_path, FILL + PIECES)
    names = ["B-LOC", "B-PER", "I-PER", "O"]  # the tags of ner_rows, sorted
    dirs = [
        save_tiny_bert(
            BertForTokenClassification,
            tok,
            tmp_path / f"tagger{seed}",
            seed,
            num_labels=len(names),
            id2label=dict(enumerate(names)),
            label2id={n: i for i, n in enumerate(names)},
        )
        for seed in (1, 2)
    ]
    cfg = {
        "task": "token_classification",
        "seed": 0,
        "data": {"train": str(write_jsonl(tmp_path / "train.jsonl", ner_rows(80))), "max_length": 32},
        "output_dir": str(tmp_path / "out"),
        "teachers": [{"name_or_path": str(d)} for d in dirs],
        "ensemble": {"sampling": "uniform"},
        "student": {"num_layers": 1},
        "training": {"max_steps": 6, "batch_size": 8, "learning_rate": 3e-3, "log_every": 3},
    }
    api.distill(cfg)
    draws = json.loads((tmp_path / "out" / "results.json").read_text())["ensemble"]["draws"]
    want = draw_counts(0, 6, torch.tensor([0.5, 0.5]))
    assert draws == {"teacher0": want[0], "teacher1": want[1]}


def test_a_teacher_with_other_labels_is_refused_in_one_line(tmp_path, sentiment_csv, two_teachers):
    from transformers import AutoModelForSequenceClassification

    from lmdistill import api
    from lmdistill.errors import ModelError

    other = tmp_path / "other"
    model = AutoModelForSequenceClassification.from_pretrained(two_teachers[1])
    model.config.id2label, model.config.label2id = (
        {0: "positive", 1: "negative"},
        {"positive": 0, "negative": 1},
    )
    model.save_pretrained(other)
    (other / "tokenizer.json").write_bytes((two_teachers[1] / "tokenizer.json").read_bytes())
    for name in ("tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        if (two_teachers[1] / name).exists():
            (other / name).write_bytes((two_teachers[1] / name).read_bytes())
    cfg = _cfg(tmp_path, sentiment_csv, [two_teachers[0], other], "labels")
    with pytest.raises(
        ModelError, match=r"^teachers\[1\] \(large\): its labels \['positive', 'negative'\] differ"
    ):
        api.distill(cfg)


def test_causal_lm_skd_by_validation_perplexity_negates_the_lower_is_better_metric(tmp_path, capsys):
    import pandas as pd

    from lmdistill import api

    from .conftest import make_sentences
    from .test_causal_lm import tiny_llama, word_tokenizer

    tok = word_tokenizer()
    dirs = []
    for seed, layers in ((1, 2), (2, 3)):
        d = tmp_path / f"llama{seed}"
        tiny_llama(len(tok), layers=layers, seed=seed).save_pretrained(d)
        tok.save_pretrained(d)
        dirs.append(d)
    csv = tmp_path / "text.csv"
    pd.DataFrame({"text": [r[0] + " ." for r in make_sentences(120, seed=3)]}).to_csv(csv, index=False)
    cfg = {
        "task": "causal_lm",
        "seed": 0,
        "output_dir": str(tmp_path / "out"),
        "data": {"train": str(csv), "validation_size": 0.1, "test_size": 0.1, "max_length": 24},
        "teachers": [{"name_or_path": str(d)} for d in dirs],
        "ensemble": {"sampling": "validation", "sampling_temperature": 10.0},
        "student": {"num_layers": 1},
        "training": {"max_steps": 3, "batch_size": 16, "learning_rate": 3e-3, "log_every": 1},
    }
    api.distill(cfg)
    line = next(
        x for x in capsys.readouterr().out.splitlines() if x.startswith("ensemble: validation scores")
    )
    scores = [float(x.split()[-1]) for x in line.removeprefix("ensemble: validation scores ").split(", ")]
    assert all(s < -1 for s in scores)  # minus each teacher's perplexity (which is above 1)
    got = json.loads((tmp_path / "out" / "results.json").read_text())["ensemble"]
    want = torch.softmax(torch.tensor(scores, dtype=torch.float64) / 10.0, 0)
    assert got["probabilities"] == pytest.approx(want.tolist(), abs=1e-4)
    assert sum(got["draws"].values()) == 3


def test_regression_distill_from_the_mean_of_two_regressors(tmp_path, sentiment_csv):
    from lmdistill import api

    dirs = []
    for seed in (1, 2):
        d = tmp_path / f"reg{seed}"
        tok = bert_tokenizer(tmp_path)
        tiny_bert(num_labels=1, layers=2, vocab=len(tok), seed=seed).save_pretrained(d)
        tok.save_pretrained(d)
        dirs.append(d)
    cfg = _cfg(tmp_path, sentiment_csv, dirs, "reg", combine="mean_logits")
    cfg.update(task="regression", data={**cfg["data"], "label_column": "score"})
    cfg["training"]["max_steps"] = 4
    api.distill(cfg)
    got = json.loads((tmp_path / "reg" / "results.json").read_text())
    assert got["ensemble"]["combine"] == "mean_logits" and got["loss_terms"] == ["kd_mse", "mse"]


def test_each_teacher_has_its_own_cache_and_the_cached_run_equals_the_live_one(
    tmp_path, sentiment_csv, two_teachers, capsys
):
    """`lmdistill cache` builds one cache per teacher (outputs only, plus the layers of the layer teacher); a run
    from them trains exactly as the live ensemble does."""
    from lmdistill import api
    from lmdistill.cli import main
    from lmdistill.signals.cache import CachedTeacher

    matches = [{"student_layer": 1, "teacher_layer": 2, "feature": "hidden", "loss": "mse"}]
    live = _cfg(tmp_path, sentiment_csv, two_teachers, "live", combine="confidence", layers_from="large")
    live["distill"] = {"losses": {"kd": 1.0, "ce": 1.0}, "matches": matches}
    live["training"].update(eval_every=12)
    cached = {**live, "output_dir": str(tmp_path / "cached")}
    cached["training"] = {**live["training"], "teacher_cache": str(tmp_path / "caches")}
    path = tmp_path / "cached.yaml"
    path.write_text(yaml.safe_dump(cached))
    assert main(["cache", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.count(f"train from it with training.teacher_cache={tmp_path / 'caches'}\n") == 2
    small, large = CachedTeacher(tmp_path / "caches" / "small"), CachedTeacher(tmp_path / "caches" / "large")
    assert set(small.fields) == {"logits"}  # outputs only
    assert set(large.fields) == {"logits", "hidden3"}  # and the layer the match reads (0 = embeddings)

    api.distill(live)
    capsys.readouterr()
    api.distill(cached)
    assert capsys.readouterr().out.count("teacher cache: reusing") == 2  # no teacher forward pass
    a = load_file(tmp_path / "live" / "model" / "model.safetensors")
    b = load_file(tmp_path / "cached" / "model" / "model.safetensors")
    # the cache holds 16-bit outputs: the runs agree closely, not bit for bit
    assert all(torch.allclose(a[k], b[k], atol=2e-3) for k in a)


def test_question_answering_distill_from_the_mean_of_two_span_heads(tmp_path):
    from transformers import BertForQuestionAnswering

    from lmdistill import api

    from .test_question_answering import qa_rows, vocabulary
    from .test_question_answering import write_jsonl as write_qa

    tok = bert_tokenizer(tmp_path, vocabulary())
    dirs = [save_tiny_bert(BertForQuestionAnswering, tok, tmp_path / f"qa{seed}", seed) for seed in (1, 2)]
    cfg = {
        "task": "question_answering",
        "seed": 0,
        "data": {"train": str(write_qa(tmp_path / "train.jsonl", qa_rows(60))), "max_length": 40},
        "qa": {"stride": 10},
        "output_dir": str(tmp_path / "out"),
        "teachers": [{"name_or_path": str(d), "weight": w} for d, w in zip(dirs, (1.0, 2.0), strict=True)],
        "ensemble": {"combine": "mean_logits"},
        "student": {"num_layers": 1},
        "training": {"max_steps": 3, "batch_size": 8, "learning_rate": 3e-3, "log_every": 3},
    }
    api.distill(cfg)
    got = json.loads((tmp_path / "out" / "results.json").read_text())["ensemble"]
    assert got["combine"] == "mean_logits" and got["weights"] == [1.0, 2.0]


@pytest.fixture(scope="module")
def mpnet_teacher(tiny_mpnet_dir, tmp_path_factory) -> Path:
    """The tiny MPNet classifier (another tokenizer) with the data's label names."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    d = tmp_path_factory.mktemp("mpnet_teacher")
    model = AutoModelForSequenceClassification.from_pretrained(tiny_mpnet_dir)
    model.config.id2label, model.config.label2id = (
        {0: "negative", 1: "positive"},
        {"negative": 0, "positive": 1},
    )
    model.save_pretrained(d)
    AutoTokenizer.from_pretrained(tiny_mpnet_dir).save_pretrained(d)
    return d


def test_a_teacher_with_its_own_tokenizer_reads_the_texts_its_own_way(
    tmp_path, sentiment_csv, two_teachers, mpnet_teacher, monkeypatch
):
    from transformers import AutoTokenizer

    from lmdistill import api

    seen = []
    real_call = EnsembleTeacher.__call__

    def recording(self, batch):
        seen.append((batch["student"], batch.get("teacher.1")))
        return real_call(self, batch)

    monkeypatch.setattr(EnsembleTeacher, "__call__", recording)
    cfg = _cfg(tmp_path, sentiment_csv, [two_teachers[0], mpnet_teacher], "mixed", combine="mean_probs")
    cfg["training"]["max_steps"] = 3
    api.distill(cfg)
    bert, mpnet = AutoTokenizer.from_pretrained(two_teachers[0]), AutoTokenizer.from_pretrained(mpnet_teacher)
    assert len(seen) == 3
    for student, own in seen:
        assert own is not None and not torch.equal(own["input_ids"][:, :4], student["input_ids"][:, :4])
        for row in range(student["input_ids"].shape[0]):
            s_ids = student["input_ids"][row][student["attention_mask"][row].bool()].tolist()
            t_ids = own["input_ids"][row][own["attention_mask"][row].bool()].tolist()
            assert t_ids[0] == mpnet.bos_token_id or t_ids[0] == mpnet.cls_token_id
            assert mpnet.decode(t_ids, skip_special_tokens=True) == bert.decode(
                s_ids, skip_special_tokens=True
            )


def test_a_teacher_with_its_own_tokenizer_is_cached_from_its_own_inputs_and_trains_as_live(
    tmp_path, sentiment_csv, two_teachers, mpnet_teacher, capsys
):
    """MPNet's cache is built from MPNet's tokens (its lengths are its own), read by example index while the
    batch holds the student's tokens, and the run from the caches trains as the live mixed ensemble does."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from lmdistill import api
    from lmdistill.data.tables import load_task_data
    from lmdistill.signals.cache import CachedTeacher
    from lmdistill.tasks import load_config

    live = _cfg(tmp_path, sentiment_csv, [two_teachers[0], mpnet_teacher], "live", combine="mean_probs")
    live["training"].update(max_steps=6, eval_every=6)
    cached = {**live, "output_dir": str(tmp_path / "cached")}
    cached["training"] = {**live["training"], "teacher_cache": str(tmp_path / "caches")}
    api.distill(live)
    api.distill(cached)
    big = CachedTeacher(tmp_path / "caches" / "large")
    assert set(big.fields) == {"logits"}
    cfg = load_config(cached, verb="distill")
    train = load_task_data(cfg.data, "classification", cfg.seed).splits["train"].texts
    mpnet, bert = AutoTokenizer.from_pretrained(mpnet_teacher), AutoTokenizer.from_pretrained(two_teachers[0])
    model = AutoModelForSequenceClassification.from_pretrained(mpnet_teacher).eval()
    with torch.no_grad():
        own = torch.cat(
            [model(**mpnet(t, truncation=True, max_length=32, return_tensors="pt")).logits for t in train]
        )
        misread = (
            torch.cat(  # MPNet fed the student's (BERT) ids: what a cache of the wrong inputs would hold
                [model(**bert(t, truncation=True, max_length=32, return_tensors="pt")).logits for t in train]
            )
        )
    stored = torch.from_numpy(big.fields["logits"].array.astype("float32"))
    assert torch.allclose(stored, own, atol=2e-3)  # example by example, MPNet's outputs on its own tokens
    assert not torch.allclose(stored, misread, atol=2e-3)
    capsys.readouterr()
    api.distill({**cached, "output_dir": str(tmp_path / "again")})
    assert capsys.readouterr().out.count("teacher cache: reusing") == 2  # no teacher forward pass
    a = load_file(tmp_path / "live" / "model" / "model.safetensors")
    b = load_file(tmp_path / "cached" / "model" / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=2e-3) for k in a)


def test_validation_sampling_needs_given_scores_when_a_teacher_tokenizes_otherwise(
    tmp_path, sentiment_csv, two_teachers, mpnet_teacher
):
    from lmdistill import api

    cfg = _cfg(tmp_path, sentiment_csv, [two_teachers[0], mpnet_teacher], "v", sampling="validation")
    with pytest.raises(
        ConfigError, match="the tokenizer of large differs from the student's; give ensemble.scores"
    ):
        api.distill(cfg)


# ------------------------------------------------------------------------------------------ several processes

TORCHRUN = Path(sys.executable).parent / "torchrun"


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed next to this Python")
def test_skd_in_two_processes_draws_the_same_teachers_and_trains_the_student_one_process_does(
    tmp_path, sentiment_csv, two_teachers
):
    """SKD under torchrun: every process draws the same teacher at each step (a pure function of seed and step),
    so 2 processes x batch 4 train the student that 1 process x batch 8 trains, with the same draw counts."""
    teachers = []
    for i, d in enumerate(two_teachers):  # dropout off: 2 half batches draw other masks than 1 whole batch
        teachers.append(shutil.copytree(d, tmp_path / f"t{i}"))
        config = json.loads((teachers[-1] / "config.json").read_text())
        config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout=0.0)
        (teachers[-1] / "config.json").write_text(json.dumps(config))
    cfg = _cfg(tmp_path, sentiment_csv, teachers, "unused", sampling="weights")
    # fp32 on any CPU (a subprocess does not see conftest's CPU without native bf16)
    cfg["training"].update(max_steps=6, cpu=True, eval_every=None, save_every=None, mixed_precision="no")
    cfg["data"].update(validation_size=0.0, test_size=0.0)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    import lmdistill

    src = str(Path(lmdistill.__file__).parents[1])  # this checkout's package, also in the subprocesses
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    runs = {
        "one": [sys.executable, "-m", "lmdistill.cli", "distill", "c.yaml", "training.batch_size=8"],
        "two": [str(TORCHRUN), "--nproc_per_node", "2", "--master_port", "29537", "-m", "lmdistill.cli"]
        + ["distill", "c.yaml", "training.batch_size=4"],
    }
    for name, cmd in runs.items():
        proc = subprocess.run(
            [*cmd, f"output_dir={name}"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    draws = [json.loads((tmp_path / n / "results.json").read_text())["ensemble"]["draws"] for n in runs]
    want = draw_counts(3, 6, torch.tensor([0.25, 0.75]))
    assert draws == [{"small": want[0], "large": want[1]}] * 2
    one, two = (load_file(tmp_path / n / "model" / "model.safetensors") for n in runs)
    for k in one:
        torch.testing.assert_close(one[k], two[k], atol=2e-5, rtol=1e-4, msg=k)
