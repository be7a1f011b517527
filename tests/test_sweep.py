"""``lmdistill sweep``: variants x seeds through the run driver, restart, failures, the leaderboard and its
statistics; tiny models and data built in code."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import yaml

from lmdistill import sweeps
from lmdistill.cli import main
from lmdistill.report.paired import seed_example_bootstrap
from lmdistill.report.seeds import seed_example_permutation, seed_example_sets_bootstrap, t_interval
from lmdistill.report.stats import accuracy


def _config(tmp_path, teacher, csv_path, sweep, **extra) -> dict:
    cfg = {
        "seed": 0,
        "output_dir": str(tmp_path / "sweep"),
        "data": {"train": str(csv_path), "max_length": 32, "validation_size": 0.15, "test_size": 0.15},
        "teacher": {"name_or_path": str(teacher)},
        "student": {"num_layers": 2},
        "training": {"epochs": 1, "max_steps": 3, "batch_size": 16, "learning_rate": 1e-3, "log_every": 1},
        "distill": {"losses": {"kd": 0.5, "ce": 0.5}},
        "sweep": {"latency": False, "bootstrap_resamples": 200, **sweep},
    }
    cfg.update(extra)
    return cfg


def _write(tmp_path, cfg: dict) -> str:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


GRID = {"grid": {"distill.temperature": [1.0, 4.0]}, "seeds": [1, 2]}


def test_two_variants_two_seeds_end_to_end(tmp_path, tiny_bert_dir, sentiment_csv, capsys):
    cfg = _config(tmp_path, tiny_bert_dir, sentiment_csv, GRID)
    assert main(["sweep", _write(tmp_path, cfg)]) == 0
    out = tmp_path / "sweep"
    for name in ("leaderboard.md", "leaderboard.html", "leaderboard.csv", "leaderboard.json"):
        assert (out / name).is_file()
    assert (out / "quality_vs_latency.png").stat().st_size > 1000
    data = json.loads((out / "leaderboard.json").read_text())
    rows = {r["variant"]: r for r in data["rows"]}
    assert list(rows) == ["temperature=1.0", "temperature=4.0"] and data["reference"] == "temperature=1.0"
    for name, row in rows.items():
        accs = [
            json.loads((out / name / f"seed-{s}" / "results.json").read_text())["test"]["accuracy"]
            for s in (1, 2)
        ]
        assert row["seeds_ok"] == 2 and row["per_seed"] == pytest.approx(accs)
        assert row["mean"] == pytest.approx(np.mean(accs))
        assert (row["low"], row["high"]) == pytest.approx(tuple(t_interval(accs))[1:])
    table = list(csv.DictReader((out / "leaderboard.csv").open()))
    assert [r["variant"] for r in table] == list(rows) and float(table[1]["mean"]) == pytest.approx(
        rows["temperature=4.0"]["mean"]
    )
    # the runs share one teacher cache per seed, and every run is a distill run with its seed
    assert sorted(p.name for p in (out / "teacher_cache").iterdir()) == ["seed-1", "seed-2"]
    saved = yaml.safe_load((out / "temperature=4.0" / "seed-2" / "config.yaml").read_text())
    assert saved["seed"] == 2 and saved["distill"]["temperature"] == 4.0 and saved["sweep"] is None
    md = (out / "leaderboard.md").read_text()
    assert "| temperature=4.0" in md and "reference" in md
