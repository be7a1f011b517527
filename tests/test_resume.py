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


# ------------------------------------------------------------------------------------ resume checks what it resumes


@pytest.fixture
def interrupted(tmp_path, sentiment_csv, tiny_bert_dir):
    """A distill run that stopped after writing checkpoints at steps 4 and 8 (of 12), as a crash would leave it."""
    from lmdistill import api

    cfg = yaml.safe_load(_config(tmp_path, sentiment_csv, tiny_bert_dir, "run").read_text())
    cfg["training"].update(max_steps=8, save_every=4, epochs=1)
    api.distill(cfg)
    out = tmp_path / "run"
    (out / "results.json").unlink()  # as if it had been killed before publishing
    cfg["training"].update(max_steps=12, resume="auto")
    return cfg, out


def _resume_error(cfg, capsys, *extra) -> str:
    from lmdistill.cli import main

    path = Path(cfg["output_dir"]).with_suffix(".yaml")
    path.write_text(yaml.safe_dump(cfg))
    assert main(["distill", str(path), *extra]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1
    return lines[0]


def _same_but(cfg: dict, section: str, **changes) -> dict:
    return {**cfg, section: {**cfg.get(section, {}), **changes}}


def test_resume_refuses_a_checkpoint_of_another_trajectory(interrupted, capsys):
    cfg, _ = interrupted
    cfg = {**cfg, "training": {**cfg["training"], "max_steps": 8}}  # the schedule of the interrupted run
    err = _resume_error(_same_but(cfg, "training", learning_rate=5e-4), capsys)
    assert "belongs to a run with training.learning_rate=0.001, this run has 0.0005" in err
    assert "batch_size=4, this run has 8" in _resume_error(_same_but(cfg, "training", batch_size=8), capsys)
    assert "data.max_length=32, this run has 24" in _resume_error(
        _same_but(cfg, "data", max_length=24), capsys
    )
    err = _resume_error(_same_but(cfg, "student", layers=[0, 1, 2]), capsys)
    assert (
        "belongs to a run with student.class" in err
        or "student.config.num_hidden_layers=2, this run has 3" in err
    )
    err = _resume_error(_same_but(cfg, "distill", losses={"kd": 1.0}), capsys)
    assert "belongs to a run with distill.losses.ce=0.5, this run has None" in err


@pytest.mark.parametrize(
    "damage", ["loop_state.json", "optimizer.bin", "random_states_0.pkl", "model.safetensors"]
)
def test_resume_refuses_a_damaged_checkpoint_in_one_line(interrupted, capsys, damage):
    cfg, out = interrupted
    cfg = {**cfg, "training": {**cfg["training"], "max_steps": 8}}
    newest = checkpoint.checkpoints(out)[-1]
    if damage == "random_states_0.pkl":
        (newest / damage).unlink()
        want = "is incomplete (random_states_0.pkl missing)"
    else:
        data = (newest / damage).read_bytes()
        (newest / damage).write_bytes(data[: len(data) // 3])  # truncated, as a full disk leaves it
        want = "cannot be read" if damage == "loop_state.json" else "cannot be restored"
    err = _resume_error(cfg, capsys)
    assert want in err and str(newest) in err and "delete it to resume from the one before" in err


def test_resume_without_a_checkpoint_says_so_and_starts_at_step_0(
    tmp_path, sentiment_csv, tiny_bert_dir, capsys
):
    from lmdistill.cli import main

    path = _config(tmp_path, sentiment_csv, tiny_bert_dir, "fresh")
    assert main(["distill", str(path), "--resume", "training.max_steps=3"]) == 0  # an override after --resume
    out = capsys.readouterr().out
    assert f"resume: no checkpoint in {tmp_path / 'fresh' / 'checkpoints'}; training starts at step 0" in out
    assert "3 steps in" in out  # training.max_steps=3 was read as an override, not as a checkpoint folder


def test_a_resumed_run_that_never_improves_keeps_the_best_model_of_before(tmp_path):
    """The best model saved before a crash is kept in the checkpoints and put back on resume: a resumed run
    whose validation never improves again still ends with it (its staging folder was removed meanwhile)."""
    import shutil

    import torch

    from lmdistill.config import TrainingConfig
    from lmdistill.engine import train
    from lmdistill.objective import Objective

    from .conftest import tiny_bert
    from .test_cache import _tiny_set

    data, collate = _tiny_set(40)
    out, best_dir = tmp_path / "run", tmp_path / "run" / "staged"
    out.mkdir()
    scores = {2: 0.9, 4: 0.5, 6: 0.4, 8: 0.3, 10: 0.2}  # the best is step 2's
    saved: list[dict] = []

    def on_best(model) -> None:
        shutil.rmtree(best_dir, ignore_errors=True)
        model.save_pretrained(best_dir)
        saved.append({k: v.clone() for k, v in model.state_dict().items()})

    def evaluate(crash_at: int | None):
        step = {"n": 0}

        def run(model) -> dict[str, float]:
            step["n"] += 2
            if step["n"] == crash_at:
                raise RuntimeError("crash")
            return {"accuracy": scores[step["n"]]}

        return run

    def cfg(**kw):
        base = dict(max_steps=10, batch_size=4, cpu=True, log_every=100, eval_every=2, save_every=4)
        return TrainingConfig(**{**base, **kw}, group_by_length=False, metric_for_best="accuracy")

    common = dict(objective=Objective({"ce": 1.0}), train_set=data, collate=collate, seed=0, out_dir=out)
    with pytest.raises(RuntimeError, match="crash"):
        train(student=tiny_bert(layers=2, seed=1), cfg=cfg(), evaluate=evaluate(6), on_best=on_best,
              best_dir=best_dir, **common)  # fmt: skip
    assert len(saved) == 1 and (out / "checkpoints" / "step-00000004" / "best-model").is_dir()
    shutil.rmtree(best_dir)  # what RunFolder does with a failed run's staging folder
    # resumed at step 4 with the same scores from there on: no improvement, on_best is never called again
    ev = evaluate(None)
    ev(None)  # the resumed run's first evaluation is step 6
    ev(None)
    outcome = train(student=tiny_bert(layers=2, seed=1), cfg=cfg(resume="auto"), evaluate=ev,
                    on_best=on_best, best_dir=best_dir, **common)  # fmt: skip
    assert outcome.best_step == 2 and len(saved) == 1
    kept = load_file(best_dir / "model.safetensors")
    assert kept.keys() and all(torch.equal(kept[k], saved[0][k]) for k in kept)
