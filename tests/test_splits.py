"""A teacher fine-tuned by lmdistill on a split carved another way is refused: the run's test rows could be rows
the teacher trained on (lmdistill.data.splits)."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

from lmdistill.cli import main
from lmdistill.data.splits import teacher_split_problems
from lmdistill.tasks import load_config


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory, sentiment_csv, tiny_bert_dir):
    """A teacher fine-tuned by `lmdistill finetune` (seed 42, validation/test carved from train)."""
    out = tmp_path_factory.mktemp("teacher") / "run"
    cfg = {
        "data": {"train": str(sentiment_csv), "max_length": 32},
        "model": {"name_or_path": str(tiny_bert_dir)},
        "output_dir": str(out),
        "training": {"max_steps": 1},
    }
    path = out.parent / "teacher.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["finetune", str(path)]) == 0
    return out


def student_cfg(tmp_path, sentiment_csv, tiny_bert_dir, teacher_run) -> dict:
    return {
        "data": {"train": str(sentiment_csv), "max_length": 32},
        "model": {"name_or_path": str(tiny_bert_dir)},
        "teacher": {"name_or_path": str(teacher_run / "model")},
        "student": {"num_layers": 1},
        "output_dir": str(tmp_path / "out"),
        "training": {"max_steps": 1},
    }


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("verb", ["distill", "compress"])
def test_another_seed_is_refused_before_anything_is_written(
    tmp_path, capsys, sentiment_csv, tiny_bert_dir, teacher_run, verb
):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(student_cfg(tmp_path, sentiment_csv, tiny_bert_dir, teacher_run)))
    capsys.readouterr()
    assert main([verb, str(path), "seed=1"]) == 2
    line = one_error_line(capsys)
    assert line.startswith(
        "error: teacher.name_or_path: the teacher's run (config.yaml beside it) split the same"
    )
    assert "split_seed 42" in line and "split_seed 1" in line
    assert line.endswith("set data.split_seed=42")
    assert not (tmp_path / "out").exists()


def test_validate_names_it_too(tmp_path, capsys, sentiment_csv, tiny_bert_dir, teacher_run):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(student_cfg(tmp_path, sentiment_csv, tiny_bert_dir, teacher_run)))
    capsys.readouterr()
    assert main(["validate", str(path), "seed=1"]) == 2
    assert one_error_line(capsys).endswith("set data.split_seed=42")
    assert main(["validate", str(path), "seed=1", "data.split_seed=42"]) == 0
    assert main(["validate", "--no-data", str(path), "seed=1"]) == 0  # no data read: nothing to compare


def test_the_teachers_split_seed_is_accepted(tmp_path, sentiment_csv, tiny_bert_dir, teacher_run):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(student_cfg(tmp_path, sentiment_csv, tiny_bert_dir, teacher_run)))
    assert main(["distill", str(path), "seed=1", "data.split_seed=42"]) == 0
    assert (tmp_path / "out" / "model").is_dir()


def problems(tmp_path, sentiment_csv, tiny_bert_dir, teacher_run, *overrides: str) -> list[str]:
    raw = student_cfg(tmp_path, sentiment_csv, tiny_bert_dir, teacher_run)
    return teacher_split_problems(load_config(raw, list(overrides), verb="distill"))


def test_same_split_passes(tmp_path, sentiment_csv, tiny_bert_dir, teacher_run):
    assert problems(tmp_path, sentiment_csv, tiny_bert_dir, teacher_run) == []
    # another seed for training, the teacher's split seed for the split: the same rows are held out
    assert problems(tmp_path, sentiment_csv, tiny_bert_dir, teacher_run, "seed=7", "data.split_seed=42") == []


def test_a_different_test_size_is_named(tmp_path, sentiment_csv, tiny_bert_dir, teacher_run):
    (line,) = problems(tmp_path, sentiment_csv, tiny_bert_dir, teacher_run, "data.test_size=0.2")
    assert "test_size 0.1" in line and "test_size 0.2" in line and "set data.test_size=0.1" in line
    assert "split_seed" not in line


def test_ensemble_teachers_are_checked(tmp_path, sentiment_csv, tiny_bert_dir, teacher_run):
    raw = student_cfg(tmp_path, sentiment_csv, tiny_bert_dir, teacher_run)
    raw.pop("teacher")
    raw["teachers"] = [{"name_or_path": str(tiny_bert_dir)}, {"name_or_path": str(teacher_run / "model")}]
    (line,) = teacher_split_problems(load_config(raw, ["seed=3"], verb="distill"))
    assert line.startswith(
        "teachers[1].name_or_path: the teacher's run (config.yaml beside it) split the same"
    )


def test_other_data_or_unknown_teachers_are_not_compared(tmp_path, sentiment_csv, tiny_bert_dir, teacher_run):
    other = tmp_path / "other.csv"
    pd.read_csv(sentiment_csv).to_csv(other, index=False)
    # another table: its rows are not the teacher's, whatever the seed
    assert (
        problems(tmp_path, sentiment_csv, tiny_bert_dir, teacher_run, f"data.train={other}", "seed=1") == []
    )
    # given test and validation files: nothing is carved
    files = [f"data.test={other}", f"data.validation={other}", "seed=1"]
    assert problems(tmp_path, sentiment_csv, tiny_bert_dir, teacher_run, *files) == []
    # a folder not written by lmdistill (no resolved config beside it): nothing to compare with
    hub_like = f"teacher.name_or_path={tiny_bert_dir}"
    assert problems(tmp_path, sentiment_csv, tiny_bert_dir, teacher_run, hub_like, "seed=1") == []


def test_a_config_without_lmdistills_header_is_not_read(tmp_path, sentiment_csv, tiny_bert_dir):
    run = tmp_path / "someone"
    (run / "model").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"data": {"train": str(sentiment_csv)}, "seed": 42}))
    raw = student_cfg(tmp_path, sentiment_csv, tiny_bert_dir, run)
    assert teacher_split_problems(load_config(raw, ["seed=1"], verb="distill")) == []
    (run / "config.yaml").write_text(
        "# lmdistill finetune: resolved config (seed 42)\n"
        + yaml.safe_dump({"task": "classification", "seed": 42, "data": {"train": str(sentiment_csv)}})
    )
    (line,) = teacher_split_problems(load_config(raw, ["seed=1"], verb="distill"))
    assert "split_seed 42" in line


def test_only_the_carved_splits_sizes_count(tmp_path, sentiment_csv, tiny_bert_dir):
    """Both runs read validation from a file: validation_size moves no row; test_size does."""
    other = tmp_path / "val.csv"
    pd.read_csv(sentiment_csv).head(20).to_csv(other, index=False)
    run = tmp_path / "teacher-run"
    (run / "model").mkdir(parents=True)
    data = {"train": str(sentiment_csv), "validation": str(other), "validation_size": 0.1, "test_size": 0.1}
    (run / "config.yaml").write_text(
        "# lmdistill finetune: resolved config (seed 42)\n"
        + yaml.safe_dump({"task": "classification", "seed": 42, "data": data})
    )
    raw = student_cfg(tmp_path, sentiment_csv, tiny_bert_dir, run)
    raw["data"]["validation"] = str(other)
    assert teacher_split_problems(load_config(raw, ["data.validation_size=0.3"], verb="distill")) == []
    (line,) = teacher_split_problems(load_config(raw, ["data.test_size=0.2"], verb="distill"))
    assert line.endswith("set data.test_size=0.1") and "validation_size" not in line
