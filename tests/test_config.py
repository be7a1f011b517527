"""Strict config loading: unknown keys, types, ranges, overrides, and every shipped config."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lmdistill.cli import main
from lmdistill.config import Config, save_config
from lmdistill.errors import ConfigError
from lmdistill.tasks import load_config

ROOT = Path(__file__).resolve().parents[1]


def errors_of(raw: dict, overrides=(), verb=None) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load_config(raw, overrides, verb=verb)
    return e.value.errors


def test_unknown_key_names_full_path_and_suggests():
    errs = errors_of({"data": {"train": "x.csv", "validaton": "v.csv"}})
    assert errs == ["unknown key 'data.validaton' (did you mean 'data.validation'?)"]


def test_unknown_top_level_key_lists_valid_keys():
    (err,) = errors_of({"data": {"train": "x.csv"}, "zzz": 1})
    assert err.startswith("unknown key 'zzz' (valid keys: task, seed")


def test_all_errors_reported_at_once():
    errs = errors_of(
        {
            "data": {"train": "x.csv"},
            "training": {"lerning_rate": 1, "batch_size": 0},
            "task": "clasification",
        },
        ["distill.temperature=-1"],
        verb="distill",
    )
    assert "unknown key 'training.lerning_rate' (did you mean 'training.learning_rate'?)" in errs
    assert "training.batch_size must be at least 1, got 0" in errs
    assert any(
        e.startswith("task must be one of classification, regression") and "did you mean" in e for e in errs
    )
    assert "distill.temperature must be greater than 0, got -1.0" in errs
    assert any(e.startswith("teacher.name_or_path is required") for e in errs)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"training": {"epochs": "three"}}, "training.epochs must be a number, got 'three'"),
        ({"training": {"warmup_ratio": 1.5}}, "training.warmup_ratio must be between 0 and 1, got 1.5"),
        (
            {"data": {"train": "x", "validation_size": 0.6, "test_size": 0.5}},
            "data.validation_size + data.test_size must be below 1, got 1.1",
        ),
        ({"training": {"cpu": "yes"}}, "training.cpu must be true or false, got 'yes'"),
        ({"student": {"layers": [0, "a"]}}, "student.layers[1] must be an integer, got 'a'"),
        ({"data": "x.csv"}, "data must be a mapping of keys, got str 'x.csv'"),
    ],
)
def test_type_and_range_errors_name_the_key(raw, expected):
    raw = {"data": {"train": "x.csv"}, **raw} if "data" not in raw else raw
    assert expected in errors_of(raw)


def test_distill_checks():
    base = {"data": {"train": "x"}, "teacher": {"name_or_path": "t"}}
    assert "student.layers and student.num_layers are both set: keep one" in errors_of(
        {**base, "student": {"layers": [0], "num_layers": 1}}, verb="distill"
    )
    (err,) = errors_of(
        {**base, "student": {"num_layers": 2}, "distill": {"losses": {"kdd": 1.0}}}, verb="distill"
    )
    assert err == "distill.losses.kdd is not a loss for task classification (did you mean 'kd'?)"
    (err,) = errors_of(
        {**base, "task": "regression", "student": {"num_layers": 2}, "distill": {"losses": {"ce": 1}}},
        verb="distill",
    )
    assert "for task regression use: kd_mse, mse" in err


def test_overrides_and_yaml_float_strings():
    cfg = load_config(
        {"data": {"train": "x.csv"}, "training": {"learning_rate": "1e-5"}},
        ["training.batch_size=8", "distill.losses={kd: 1.0}", "student.layers=[0,2]"],
    )
    assert cfg.training.learning_rate == 1e-5 and cfg.training.batch_size == 8
    assert cfg.distill.losses == {"kd": 1.0} and cfg.student.layers == [0, 2]
    with pytest.raises(ConfigError, match="override 'training.batch_size' must look like key.sub=value"):
        load_config({"data": {"train": "x"}}, ["training.batch_size"])
    assert "unknown key 'training.batchsize' (did you mean 'training.batch_size'?)" in errors_of(
        {"data": {"train": "x"}}, ["training.batchsize=3"]
    )


def test_defaults_resolved_and_roundtrip(tmp_path):
    cfg = load_config({"task": "regression", "data": {"train": "x.csv"}})
    assert cfg.distill.losses == {"kd_mse": 0.5, "mse": 0.5} and cfg.training.metric_for_best == "pearson"
    save_config(cfg, tmp_path / "c.yaml", header="versions")
    assert load_config(tmp_path / "c.yaml") == cfg
    assert isinstance(cfg, Config)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="config file '.*missing.yaml' not found"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("data: [1, 2\n")
    with pytest.raises(ConfigError, match="is not valid YAML at line"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(ConfigError, match="is empty"):
        load_config(tmp_path / "empty.yaml")
    (tmp_path / "code.yaml").write_text("data: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "code.yaml")


def test_validate_cli(tmp_path, capsys):
    good = tmp_path / "good.yaml"
    (tmp_path / "x.csv").write_text("text,label\ngood,pos\nbad,neg\n")
    good.write_text(
        yaml.safe_dump({"data": {"train": str(tmp_path / "x.csv")}, "model": {"name_or_path": "m"}})
    )
    assert main(["validate", str(good)]) == 0
    assert capsys.readouterr().out.strip() == "ok"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"data": {"tran": "x.csv"}, "training": {"epochs": -1}}))
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == "error: unknown key 'data.tran' (did you mean 'data.train'?)"
    assert "error: training.epochs must be greater than 0, got -1.0" in err
    assert len(err) >= 3  # and data.train is required: every problem at once


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("**/*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_validates(path, capsys):
    """Every key and value of each shipped config is valid (its data files are the user's: --no-data)."""
    assert main(["validate", "--no-data", str(path)]) == 0, capsys.readouterr().err
