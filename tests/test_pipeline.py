"""compress -> report on a tiny run: every artifact present, figures finite, the HTML self-contained."""

from __future__ import annotations

import json
import math
import re

import pytest
import yaml

from lmdistill.cli import main


@pytest.fixture(scope="module")
def compressed(tmp_path_factory, tiny_bert_dir, sentiment_csv):
    out = tmp_path_factory.mktemp("compress")
    cfg = {
        "seed": 0,
        "output_dir": str(out / "run"),
        "data": {"train": str(sentiment_csv), "max_length": 32},
        "model": {"name_or_path": str(tiny_bert_dir)},
        "student": {"num_layers": 2},
        "training": {"epochs": 3, "batch_size": 16, "learning_rate": 2e-3, "log_every": 2},
        "report": {"latency_repeats": 3, "warmup": 1, "speed_texts": 64, "bootstrap_resamples": 200},
    }
    path = out / "compress.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["compress", str(path)]) == 0
    return out / "run", path


def test_compress_writes_three_runs_report_and_card(compressed):
    run, _ = compressed
    for role in ("teacher", "student", "baseline"):
        assert (run / role / "model" / "config.json").is_file()
        assert (run / role / "energy.json").is_file()
    baseline_terms = json.loads((run / "baseline" / "results.json").read_text())["loss_terms"]
    assert baseline_terms == ["ce"]
    assert set(json.loads((run / "student" / "results.json").read_text())["loss_terms"]) == {"kd", "ce"}
    md = (run / "report.md").read_text()
    for section in ("Quality", "Size", "Speed", "Energy", "Environment"):
        assert section.lower() in md.lower(), section
    html = (run / "report.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?https?:|url\(\s*["']?https?:|@import""", html)
    assert "data:image/png;base64," in html
    data = json.loads((run / "report.json").read_text())
    for role in ("teacher", "student", "baseline"):
        entry = data["models"][role]
        m = entry["metrics"]["accuracy"]
        assert m["low"] <= m["value"] <= m["high"]
        assert entry["parameters"]["total"] > 0 and entry["size"]["weights_bytes"] > 0
        lat = {x["batch_size"]: x for x in entry["latency"]}
        assert set(lat) == {1, 32} and all(
            math.isfinite(x["median_s"]) and x["median_s"] > 0 for x in lat.values()
        )
        energy = entry["energy"]  # measured with a positive figure, or not measured with the reason said
        assert energy["energy_kwh_per_1000"] > 0 if energy["measured"] else bool(energy["reason"])
    assert data["models"]["student"]["parameters"]["total"] < data["models"]["teacher"]["parameters"]["total"]
    card = (run / "student" / "model" / "README.md").read_text()
    assert "distilled" in card.lower() and "| teacher |" in card and "| baseline (no KD) |" in card


def test_compress_reuses_a_trained_teacher(compressed, capsys):
    run, path = compressed
    before = (run / "teacher" / "model" / "model.safetensors").stat().st_mtime
    capsys.readouterr()
    assert main(["compress", str(path), "report.energy=false", "training.max_steps=2"]) == 2
    assert "holds an earlier run; pass --resume to continue it or --overwrite" in capsys.readouterr().err
    assert main(["compress", str(path), "--resume", "report.energy=false"]) == 0
    assert "teacher: already trained with this config" in capsys.readouterr().out
    assert (run / "teacher" / "model" / "model.safetensors").stat().st_mtime == before


def test_report_verb_from_run_folders(compressed, tmp_path):
    run, _ = compressed
    assert main(["report", str(run / "teacher"), str(run / "student"), "--output", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "report.json").read_text())
    assert set(data["models"]) == {"teacher", "student"}
    assert "n/a" in (tmp_path / "report.md").read_text()  # the missing baseline is said, not invented


def test_report_errors(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "is not a finished lmdistill run" in capsys.readouterr().err


def test_model_folders_given_with_a_home_tilde(tmp_path, monkeypatch):
    """`~/...` (as in configs: teacher.name_or_path: ~/.cache/...) names the same folder in the report."""
    from lmdistill.errors import LmdistillError
    from lmdistill.pipeline import _model_dir

    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "teacher").mkdir()
    (tmp_path / "teacher" / "config.json").write_text("{}")
    assert _model_dir("~/teacher") == tmp_path / "teacher"
    with pytest.raises(LmdistillError, match="neither a run folder"):
        _model_dir("~/missing")


def test_a_finished_staged_distill_run_is_recognised_by_its_last_stage_config(tmp_path, sentiment_csv):
    """A distill run saves its last stage's config (the stage's learning rate in ``training``): compress
    --resume compares with that, so a finished student with ``distill.stages`` is reused, not refused."""
    import copy
    from dataclasses import asdict

    from lmdistill.config.schema import Config, StageConfig
    from lmdistill.pipeline import _finished
    from lmdistill.run import stage_runs

    cfg = Config(task="classification", output_dir=str(tmp_path / "student"))
    cfg.data.train = str(sentiment_csv)
    cfg.training.learning_rate = 5e-5
    cfg.distill.stages = [StageConfig(name="kd", losses={"kd": 0.5, "ce": 0.5}, epochs=2, learning_rate=2e-4)]
    run = tmp_path / "student"
    (run / "model").mkdir(parents=True)
    (run / "model" / "config.json").write_text("{}")
    (run / "results.json").write_text("{}")
    (saved,) = [c for c, _, _ in stage_runs(cfg, cfg.distill.stages)]
    assert saved.training.learning_rate == 2e-4
    (run / "config.yaml").write_text(yaml.safe_dump(asdict(saved)))
    assert _finished(run, cfg, "distill") is None
    assert _finished(run, cfg, "finetune") == "it was trained with another training section"
    other = copy.deepcopy(cfg)
    other.distill.stages[0].learning_rate = 1e-4
    assert _finished(run, other, "distill") == "it was trained with another training section"
