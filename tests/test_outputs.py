"""No run destroys what it did not create: output folders that overlap the inputs, hold another run or other
files, are in use, or fail mid-way (issue "Correctness and safety", item 1)."""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
import subprocess
import sys

import pytest
import yaml

from lmdistill import api
from lmdistill.cli import main
from lmdistill.errors import LmdistillError
from lmdistill.outputs import LOCK, MARKER, STAGING


def _digest(folder) -> dict[str, str]:
    """Every file under ``folder`` and the SHA-256 of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _cfg(tmp_path, data, out, **sections):
    cfg = {
        "seed": 0,
        "output_dir": str(out),
        "data": {"train": str(data), "max_length": 32},
        "training": {"max_steps": 3, "batch_size": 16, "learning_rate": 2e-3, "log_every": 1},
    }
    cfg.update(sections)
    return cfg


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, tiny_bert_dir, sentiment_csv):
    out = tmp_path_factory.mktemp("outputs") / "t2"
    api.finetune(_cfg(None, sentiment_csv, out, model={"name_or_path": str(tiny_bert_dir)}))
    return out


@pytest.mark.parametrize("where", ["teacher folder", "run folder holding it", "inside it"])
def test_an_output_dir_overlapping_the_teacher_is_refused_and_the_teacher_is_untouched(
    teacher, sentiment_csv, capsys, where
):
    out = {
        "teacher folder": teacher / "model",
        "run folder holding it": teacher,
        "inside it": teacher / "model" / "x",
    }
    before = _digest(teacher)
    cfg = _cfg(
        None,
        sentiment_csv,
        out[where],
        teacher={"name_or_path": str(teacher / "model")},
        student={"layers": [0, 3]},
    )
    path = teacher.parent / f"overlap-{where.replace(' ', '-')}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["distill", str(path), "--overwrite"]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("error: output_dir") and "teacher.name_or_path" in err and "nothing was written" in err
    )
    assert _digest(teacher) == before


def test_compress_refuses_a_teacher_inside_its_output_folder(teacher, sentiment_csv, capsys):
    before = _digest(teacher)
    cfg = _cfg(
        None,
        sentiment_csv,
        teacher.parent,
        teacher={"name_or_path": str(teacher / "model")},
        student={"layers": [0, 3]},
    )
    path = teacher.parent.parent / "compress-over-teacher.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["compress", str(path), "--overwrite"]) == 2
    assert "contains teacher.name_or_path" in capsys.readouterr().err
    assert _digest(teacher) == before


def test_a_data_file_inside_the_output_dir_is_refused(tmp_path, sentiment_csv, tiny_bert_dir):
    data = tmp_path / "run" / "train.csv"
    data.parent.mkdir()
    data.write_bytes(sentiment_csv.read_bytes())
    with pytest.raises(LmdistillError, match="output_dir .* contains data.train"):
        api.finetune(_cfg(tmp_path, data, tmp_path / "run", model={"name_or_path": str(tiny_bert_dir)}))
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["train.csv"]


def test_a_folder_with_other_files_is_never_written_into(tmp_path, sentiment_csv, tiny_bert_dir):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.yaml").write_text("my own notes\n")
    for overwrite in (False, True):
        with pytest.raises(LmdistillError, match="holds files lmdistill did not write \\(config.yaml\\)"):
            api.finetune(
                _cfg(tmp_path, sentiment_csv, out, model={"name_or_path": str(tiny_bert_dir)}),
                overwrite=overwrite,
            )
    assert (out / "config.yaml").read_text() == "my own notes\n" and len(list(out.iterdir())) == 1


def test_an_earlier_run_needs_resume_or_overwrite_and_overwrite_drops_its_checkpoints(
    tmp_path, sentiment_csv, tiny_bert_dir
):
    out = tmp_path / "run"
    cfg = _cfg(tmp_path, sentiment_csv, out, model={"name_or_path": str(tiny_bert_dir)})
    cfg["training"] = {**cfg["training"], "save_every": 1, "save_total_limit": 5}
    api.finetune(cfg)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [f"step-0000000{i}" for i in (1, 2)]
    before = _digest(out)
    with pytest.raises(
        LmdistillError, match="holds an earlier run; pass --resume to continue it or --overwrite"
    ):
        api.finetune(cfg)
    assert _digest(out) == before
    again = {**cfg, "training": {**cfg["training"], "learning_rate": 1e-3}}
    res = api.finetune(again, overwrite=True)
    # the old run's checkpoints went: only the new run's (step 1; step 2 is kept only as the newest)
    assert res.steps == 3 and sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "step-00000001",
        "step-00000002",
    ]
    state = json.loads((out / "checkpoints" / "step-00000002" / "loop_state.json").read_text())
    assert state["signature"]["training"]["learning_rate"] == 1e-3  # not a stale checkpoint of the first run
    resumed = api.finetune({**again, "training": {**again["training"], "resume": "auto"}})
    assert resumed.steps == 3  # resumes the new run's newest checkpoint without a state-dict error
    assert json.loads((out / MARKER).read_text())["status"] == "complete" and not (out / STAGING).exists()
    shutil.rmtree(out / "checkpoints")
    with pytest.raises(LmdistillError, match="holds a finished run and no checkpoint to continue from"):
        api.finetune({**again, "training": {**again["training"], "resume": "auto"}})


def test_a_second_process_on_the_same_output_dir_is_refused(tmp_path, sentiment_csv, tiny_bert_dir):
    out = tmp_path / "run"
    out.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        import socket

        (out / LOCK).write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname(), "since": 0}))
        cfg = _cfg(tmp_path, sentiment_csv, out, model={"name_or_path": str(tiny_bert_dir)})
        with pytest.raises(
            LmdistillError, match=f"is in use by another lmdistill run \\(process {sleeper.pid}\\)"
        ):
            api.finetune(cfg)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert api.finetune(cfg).steps == 3  # the holder is gone: its lock is taken over
    assert not (out / LOCK).exists()


def test_a_full_disk_mid_run_leaves_the_previous_run_whole(
    tmp_path, sentiment_csv, tiny_bert_dir, monkeypatch, capsys
):
    out = tmp_path / "run"
    cfg = _cfg(tmp_path, sentiment_csv, out, model={"name_or_path": str(tiny_bert_dir)})
    api.finetune(cfg)
    before = _digest(out)

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    from transformers import PreTrainedModel

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", full)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({**cfg, "training": {**cfg["training"], "learning_rate": 1e-3}}))
    assert main(["finetune", str(path), "--overwrite"]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert "Traceback" not in err and len(lines) == 1
    assert "no space left on the device" in lines[0] and "free space" in lines[0]
    assert _digest(out) == before  # the earlier complete run as it was
    assert not list(out.rglob("*.tmp")) and not (out / STAGING).exists() and not (out / LOCK).exists()
