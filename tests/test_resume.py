"""Crash and resume: a run SIGKILLed mid-epoch and resumed ends with the same weights and loss log."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from safetensors.torch import load_file

from lmdistill import checkpoint


def _config(tmp_path: Path, sentiment_csv, tiny_bert_dir, out: str) -> Path:
    cfg = {
        "seed": 3,
        "data": {"train": str(sentiment_csv), "max_length": 32},
        "teacher": {"name_or_path": str(tiny_bert_dir)},
        "student": {"layers": [0, 2]},
        "output_dir": str(tmp_path / out),
        "training": {
            "epochs": 2,
            "batch_size": 4,
            "learning_rate": 1e-3,
            "log_every": 3,
            "save_every": 10,
            "save_total_limit": 2,
            "gradient_accumulation_steps": 1,
        },
    }
    path = tmp_path / f"{out}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _run(args: list[str], **kw) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "lmdistill.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        **kw,
    )


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path, sentiment_csv, tiny_bert_dir):
    # the uninterrupted reference
    ref_cfg = _config(tmp_path, sentiment_csv, tiny_bert_dir, "ref")
    assert _run(["distill", str(ref_cfg)]).wait(timeout=300) == 0

    # the same run, killed once its second checkpoint exists (mid-epoch: 48 batches per epoch, saves every 10)
    cfg = _config(tmp_path, sentiment_csv, tiny_bert_dir, "crash")
    proc = _run(["distill", str(cfg)])
    deadline = time.time() + 240
    while (
        len(checkpoint.checkpoints(tmp_path / "crash")) < 2 and proc.poll() is None and time.time() < deadline
    ):
        time.sleep(0.005)
    if proc.poll() is not None:
        pytest.fail("the run ended before it could be killed:\n" + proc.stdout.read().decode()[-2000:])
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    kept = checkpoint.checkpoints(tmp_path / "crash")
    assert 2 <= len(kept) <= 3 and all(p.name.startswith("step-") for p in kept)

    out = _run(["distill", str(cfg), "--resume"])
    log = out.communicate(timeout=300)[0].decode()
    assert out.returncode == 0, log[-3000:]
    assert "resumed from" in log

    ref = load_file(tmp_path / "ref" / "model" / "model.safetensors")
    got = load_file(tmp_path / "crash" / "model" / "model.safetensors")
    assert ref.keys() == got.keys()
    for k in ref:
        assert (ref[k] == got[k]).all(), k  # bitwise on CPU
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "ref" / "metrics.csv"), pd.read_csv(tmp_path / "crash" / "metrics.csv")
    )
    assert len(checkpoint.checkpoints(tmp_path / "crash")) <= 3  # pruned to the last 2 (+ best)


def test_resume_from_a_folder_that_is_not_a_checkpoint(tmp_path, sentiment_csv, tiny_bert_dir):
    from lmdistill import api
    from lmdistill.errors import LmdistillError

    cfg = yaml.safe_load(_config(tmp_path, sentiment_csv, tiny_bert_dir, "x").read_text())
    with pytest.raises(LmdistillError, match="training.resume: '.*' is not a complete lmdistill checkpoint"):
        api.distill(cfg, [f"training.resume={tmp_path}"])
