"""Intermediate knowledge: layer pairing, taps, projections, presets end to end, tokenizer rules."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from lmdistill import api
from lmdistill.config import MatchConfig, ScheduleConfig
from lmdistill.errors import ConfigError, ModelError
from lmdistill.methods.presets import PRESETS
from lmdistill.models.taps import FeatureTap
from lmdistill.objective import ModelShape, Objective, pair_layers, resolve_matches, scheduled
from lmdistill.tasks import load_config

from .conftest import tiny_bert


def _hooks(model) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def test_pair_layers_strategies():
    assert pair_layers("uniform", 6, 12) == [(0, 1), (1, 3), (2, 5), (3, 7), (4, 9), (5, 11)]
    assert pair_layers("auto", 6, 12) == pair_layers("uniform", 6, 12)
    assert pair_layers("skip", 6, 12) == [
        (0, 1),
        (1, 3),
        (2, 5),
        (3, 7),
        (4, 9),
    ]  # PKD-Skip: 2,4,..,10 (1-based)
    assert pair_layers("last", 6, 12) == [
        (0, 6),
        (1, 7),
        (2, 8),
        (3, 9),
        (4, 10),
    ]  # PKD-Last: 7..11 (1-based)
    assert pair_layers("first", 3, 12) == [(0, 0), (1, 1), (2, 2)]
    assert pair_layers("uniform", 3, 4) == [(0, 0), (1, 2), (2, 3)]


def _shape(layers=4, width=32, heads=2):
    return ModelShape(layers=layers, width=width, heads=heads, kv_heads=heads, head_dim=width // heads)


def test_resolve_matches_layers_and_errors():
    ms = resolve_matches([MatchConfig("hidden", teacher_layer=-1, student_layer=0)], _shape(2), _shape(4))
    assert [(m.name, m.student_layer, m.teacher_layer, m.projected) for m in ms] == [
        ("hidden_mse_s0_t3", 0, 3, False)
    ]
    with pytest.raises(
        ConfigError,
        match=r"distill.matches\[0\].teacher_layer: layer 7 is outside the teacher, which "
        r"has 4 layers \(valid indices 0..3, or -1..-4 from the end\)",
    ):
        resolve_matches([MatchConfig("hidden", teacher_layer=7, student_layer=0)], _shape(2), _shape(4))
    assert resolve_matches([MatchConfig("hidden")], _shape(2, 16), _shape(4, 32))[0].projected
    with pytest.raises(ConfigError, match="student width 16 != teacher width 32; set projection: true"):
        resolve_matches([MatchConfig("hidden", projection=False)], _shape(2, 16), _shape(4, 32))
    with pytest.raises(
        ConfigError, match="the student has 1 attention heads and the teacher 2; set head_rule"
    ):
        resolve_matches([MatchConfig("attention")], _shape(2, 16, 1), _shape(4, 32, 2))
    with pytest.raises(
        ConfigError, match="3 relation heads do not divide the student width 16 and teacher width 32"
    ):
        resolve_matches([MatchConfig("vv", relation_heads=3)], _shape(2, 16), _shape(4, 32))


def test_schedules():
    assert scheduled(2.0, None, 0.7) == 2.0
    assert scheduled(2.0, ScheduleConfig("linear", 0.0), 0.25) == pytest.approx(1.5)
    assert scheduled(4.0, ScheduleConfig("cosine", 1.0), 0.0) == pytest.approx(4.0)
    assert scheduled(4.0, ScheduleConfig("cosine", 1.0), 1.0) == pytest.approx(1.0)
    assert scheduled(4.0, ScheduleConfig("cosine", 1.0), 0.5) == pytest.approx(2.5)


def test_tapped_attention_equals_the_models_own_and_hooks_are_removed():
    model = tiny_bert(layers=3, hidden=32, heads=4)
    model.set_attn_implementation("eager")
    model.eval()
    x = torch.randint(5, 60, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 6:] = 0
    model(input_ids=x, output_attentions=True)  # transformers adds hooks of its own then: count only ours
    before = _hooks(model)
    tap = FeatureTap(model, {1: {"q", "k"}, 2: {"q", "k", "v"}})
    assert _hooks(model) == before + 5
    with torch.no_grad():
        out = model(input_ids=x, attention_mask=mask, output_attentions=True)
    feats = tap.pop()
    assert set(feats) == {"q1", "k1", "q2", "k2", "v2"}
    for layer in (1, 2):
        probs = tap.attention_probs(feats, layer, mask)
        torch.testing.assert_close(probs[0], out.attentions[layer][0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(
            probs[1, :, :6, :6], out.attentions[layer][1, :, :6, :6], atol=1e-5, rtol=1e-4
        )
    tap.remove()
    assert _hooks(model) == before


def test_relations_on_llama_layers():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=40,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    model = LlamaForCausalLM(cfg)
    shape = ModelShape.of(model)
    assert (shape.heads, shape.kv_heads, shape.head_dim) == (4, 2, 8)
    matches = resolve_matches(
        [MatchConfig(f, teacher_layer=-1, student_layer=-1) for f in ("qq", "kk", "vv")], shape, shape
    )
    obj = Objective({}, matches=matches)
    before = _hooks(model)
    obj.attach(model, model)
    x = torch.randint(0, 40, (2, 7))
    batch = {"student": {"input_ids": x, "attention_mask": torch.ones_like(x)}}
    out = model(**batch["student"])
    feats = obj.student_tap.pop()
    from lmdistill.signals.live import TeacherSignal

    terms = obj(out, TeacherSignal(features=feats), batch, feats)
    assert set(terms) == {"qq_kl_s2_t2", "kk_kl_s2_t2", "vv_kl_s2_t2"}
    assert all(abs(v.item()) < 1e-5 for v in terms.values())  # the same model: zero divergence
    probs = obj.student_tap.attention_probs(feats, 2, batch["student"]["attention_mask"])
    assert torch.allclose(probs.triu(1), torch.zeros_like(probs))  # causal
    obj.detach()
    assert _hooks(model) == before


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, tiny_bert_dir, sentiment_csv):
    out = tmp_path_factory.mktemp("teacher")
    api.finetune(
        {
            "data": {"train": str(sentiment_csv), "max_length": 32},
            "model": {"name_or_path": str(tiny_bert_dir)},
            "output_dir": str(out),
            "training": {"epochs": 5, "batch_size": 16, "learning_rate": 2e-3},
        }
    )
    return out / "model"


def _distill(tmp_path, teacher_dir, sentiment_csv, student, distill, overwrite=False, **training):
    cfg = {
        "data": {"train": str(sentiment_csv), "max_length": 32},
        "teacher": {"name_or_path": str(teacher_dir)},
        "student": student,
        "distill": distill,
        "output_dir": str(tmp_path / "student"),
        "training": {"epochs": 2, "batch_size": 16, "learning_rate": 2e-3, "log_every": 2, **training},
    }
    return api.distill(cfg, overwrite=overwrite)


@pytest.mark.parametrize("method", sorted(PRESETS))
def test_every_preset_runs_end_to_end(tmp_path, teacher_dir, sentiment_csv, method):
    student = {"num_layers": 2} if method != "distilbert" else {}
    res = _distill(tmp_path, teacher_dir, sentiment_csv, student, {"method": method})
    summary = json.loads((tmp_path / "student" / "results.json").read_text())
    again = api.evaluate(tmp_path / "student" / "model", config=tmp_path / "student" / "config.yaml")
    assert res.test["accuracy"] == again.metrics["accuracy"]  # the reported score is the saved model's
    assert summary["steps"] == 24 and summary["role"] == "student"  # 192 training rows / 16 x 2 epochs
    header = (tmp_path / "student" / "metrics.csv").read_text().splitlines()[0].split(",")
    stages = PRESETS[method]["distill"].get("stages")
    if stages:  # every stage wrote its own folder and log, each term logged separately
        first = tmp_path / "student" / f"stage-1-{stages[0]['name']}"
        terms = json.loads((first / "results.json").read_text())["loss_terms"]
        logged = (first / "metrics.csv").read_text().splitlines()[0].split(",")
        assert terms and all(f"loss/{t}" in logged for t in terms)
    else:
        assert all(f"loss/{t}" in header for t in summary["loss_terms"])
    saved = load_config(tmp_path / "student" / "config.yaml")
    assert saved.distill.method == method


def test_narrow_student_projection_trains_and_is_saved(tmp_path, teacher_dir, sentiment_csv):
    student = {"init": "config", "num_layers": 2, "hidden_size": 16, "num_attention_heads": 2}
    distill = {
        "losses": {"kd": 1.0},
        "matches": [
            {"feature": "hidden", "loss": "mse", "strategy": "uniform"},
            {"feature": "vv", "relation_heads": 2, "teacher_layer": -1, "student_layer": -1},
        ],
    }
    _distill(tmp_path, teacher_dir, sentiment_csv, student, distill)
    proj = load_file(tmp_path / "student" / "projections.safetensors")
    assert set(proj) == {
        "hidden_mse_s0_t1.linear.weight",
        "hidden_mse_s0_t1.linear.bias",
        "hidden_mse_s1_t3.linear.weight",
        "hidden_mse_s1_t3.linear.bias",
    }
    assert proj["hidden_mse_s0_t1.linear.weight"].shape == (32, 16)
    assert proj["hidden_mse_s0_t1.linear.bias"].abs().sum() > 0  # trained: it starts at zero
    from transformers import AutoModelForSequenceClassification

    saved = AutoModelForSequenceClassification.from_pretrained(tmp_path / "student" / "model")
    assert not any("projection" in k for k in saved.state_dict())  # not part of the exported student


def test_projection_gets_gradients():
    from lmdistill.signals.live import TeacherSignal

    matches = resolve_matches(
        [MatchConfig("hidden", teacher_layer=-1, student_layer=-1)], _shape(2, 16), _shape(4, 32)
    )
    obj = Objective({}, matches=matches, student_width=16, teacher_width=32)
    s_h = torch.randn(2, 5, 16, requires_grad=True)
    out = type("Out", (), {"hidden_states": (None, None, s_h)})()
    batch = {"student": {"attention_mask": torch.ones(2, 5)}}
    terms = obj(out, TeacherSignal(hidden_states=tuple(torch.randn(2, 5, 32) for _ in range(5))), batch)
    obj.total(terms).backward()
    assert obj.projections["hidden_mse_s1_t3"].linear.weight.grad.abs().sum() > 0 and s_h.grad is not None


def test_mixed_pair_sentence_level_works_token_level_refused(
    tmp_path, sentiment_csv, tiny_mpnet_dir, tiny_bert_dir
):
    """A tiny MPNet teacher (width 48, own tokenizer) and a tiny BERT student (width 32, another tokenizer)."""
    teacher = tmp_path / "mpnet"
    api.finetune(
        {
            "data": {"train": str(sentiment_csv), "max_length": 32},
            "output_dir": str(teacher),
            "model": {"name_or_path": str(tiny_mpnet_dir)},
            "training": {"epochs": 2, "batch_size": 16, "learning_rate": 2e-3},
        }
    )
    student = {"init": "pretrained", "name_or_path": str(tiny_bert_dir)}
    sentence = {
        "losses": {"kd": 0.5, "ce": 0.5},
        "matches": [
            {"feature": "cls", "loss": "cls_mse", "teacher_layer": -1, "student_layer": -1},
            {"feature": "mean", "loss": "cosine", "teacher_layer": -1, "student_layer": -1},
        ],
    }
    res = _distill(tmp_path, teacher / "model", sentiment_csv, student, sentence)
    assert res.steps > 0
    assert load_file(tmp_path / "student" / "projections.safetensors")[
        "cls_cls_mse_s3_t2.linear.weight"
    ].shape == (48, 32)
    token = {
        "losses": {"kd": 1.0},
        "matches": [{"feature": "hidden", "teacher_layer": -1, "student_layer": -1}],
    }
    with pytest.raises(
        ModelError,
        match="feature 'hidden' is token-level and needs teacher and student to share one "
        "tokenizer, but their tokenizers differ",
    ):
        _distill(tmp_path, teacher / "model", sentiment_csv, student, token, overwrite=True)


def test_cli_refuses_token_level_across_tokenizers(
    tmp_path, sentiment_csv, tiny_mpnet_dir, tiny_bert_dir, capsys
):
    from lmdistill.cli import main

    cfg = {
        "data": {"train": str(sentiment_csv)},
        "teacher": {"name_or_path": str(tiny_mpnet_dir)},
        "student": {"init": "pretrained", "name_or_path": str(tiny_bert_dir)},
        "distill": {"matches": [{"feature": "attention", "teacher_layer": 0, "student_layer": 0}]},
        "output_dir": str(tmp_path / "o"),
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    capsys.readouterr()
    assert main(["distill", str(tmp_path / "c.yaml")]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("error: distill.matches: feature 'attention' is token-level")
        and "Traceback" not in err
    )
