"""Resumable checkpoints: the whole distillation state, written atomically, pruned to the last N + best.

A checkpoint folder ``OUTPUT_DIR/checkpoints/step-00000100`` holds what ``accelerator.save_state`` writes
(student and projections as safetensors, optimizer, scheduler, grad scaler, RNG states of every process)
plus ``loop_state.json`` (step, epoch, batches consumed in the epoch, best metric, early-stopping counter,
un-logged loss sums, the log so far, and the run's *signature*: its task, the student's shape and every config
key that changes the trajectory). It is written as ``step-….tmp`` and renamed when complete, so a crash
mid-write leaves the previous checkpoint as the newest valid one.

Resuming checks before it restores anything: the signature must equal the new run's (else one line naming the
first key that differs), every file of the checkpoint must be there (one random-state file per process), and a
file that cannot be read is reported in one line: never a silent partial restore.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from lmdistill.errors import LmdistillError

STATE_FILE = "loop_state.json"
_NAME = re.compile(r"^step-(\d+)$")


def checkpoints(out_dir: Path) -> list[Path]:
    """Complete checkpoints in ``out_dir/checkpoints``, oldest first."""
    root = Path(out_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _NAME.match(p.name) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))


def find(resume: str | None, out_dir: Path) -> Path | None:
    """The checkpoint to resume from: None, the newest (``auto``), or a given folder."""
    if not resume:
        return None
    if resume == "auto":
        found = checkpoints(out_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise LmdistillError(
            f"training.resume: '{path}' is not a complete lmdistill checkpoint (no {STATE_FILE}); "
            f"use training.resume=auto or a folder under {Path(out_dir) / 'checkpoints'}"
        )
    return path


BEST = "best-model"
"""The folder in a checkpoint holding the best model saved so far (the one of ``best_step``)."""


def save(accelerator, out_dir: Path, state: dict, keep: int, best: Path | None = None) -> Path:
    """Write a checkpoint for ``state['step']`` atomically and prune old ones. ``best``: the folder the best
    model so far was saved to; it is kept in the checkpoint (hard links where the file system allows), so a
    resumed run that never improves on it still has it."""
    root = Path(out_dir) / "checkpoints"
    final = root / f"step-{state['step']:08d}"
    tmp = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    if accelerator.is_main_process:
        if best is not None and state.get("best_step") is not None and Path(best).is_dir():
            copy_tree(Path(best), tmp / BEST)
        (tmp / STATE_FILE).write_text(json.dumps(state))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        _prune(root, keep, state.get("best_step"))
    accelerator.wait_for_everyone()
    return final


def _prune(root: Path, keep: int, best_step: int | None) -> None:
    found = checkpoints(root.parent)
    for p in found[:-keep] if keep else found:
        if best_step is not None and p.name == f"step-{best_step:08d}":
            continue
        shutil.rmtree(p, ignore_errors=True)


def read_state(path: Path) -> dict:
    """The loop state of a checkpoint folder (one line when it cannot be read)."""
    try:
        state = json.loads((Path(path) / STATE_FILE).read_text())
        if not isinstance(state, dict) or "step" not in state:
            raise ValueError("no step in it")
        return state
    except (OSError, ValueError) as e:
        raise LmdistillError(
            f"training.resume: '{path}' cannot be read ({STATE_FILE}: {' '.join(str(e).split())[:60]}); it is "
            "damaged: delete it to resume from the one before, or start anew with --overwrite"
        ) from None


def _differ(saved, now, key: str = "") -> tuple[str, object, object] | None:
    """The first key path at which two signatures differ (None: equal)."""
    if isinstance(saved, dict) and isinstance(now, dict):
        for k in sorted(set(saved) | set(now), key=str):
            found = _differ(saved.get(k), now.get(k), f"{key}.{k}" if key else str(k))
            if found is not None:
                return found
        return None
    return None if saved == now else (key, saved, now)


def check(path: Path, signature: dict | None, processes: int = 1) -> dict:
    """The loop state of checkpoint ``path`` after checking that it belongs to this run (``signature``: the
    same task, student shape and trajectory keys) and that none of its files is missing."""
    state = read_state(path)
    saved = state.get("signature")
    if signature is not None and saved is not None:
        found = _differ(saved, json.loads(json.dumps(signature, default=str)))
        if found is not None:
            key, before, now = found
            raise LmdistillError(
                f"training.resume: checkpoint '{path}' belongs to a run with {key}={before!r}, this run has "
                f"{now!r}; resume with the same settings, or start anew with --overwrite"
            )
    names = {p.name for p in Path(path).iterdir()}
    need = ["optimizer.bin", "scheduler.bin", *(f"random_states_{i}.pkl" for i in range(processes))]
    missing = [n for n in need if n not in names]
    if not any(n.startswith(("model", "pytorch_model")) for n in names):
        missing.insert(0, "model.safetensors")
    if missing:
        raise LmdistillError(
            f"training.resume: checkpoint '{path}' is incomplete ({', '.join(missing)} missing); delete it to "
            "resume from the one before, or start anew with --overwrite"
        )
    return state


def load(accelerator, path: Path) -> dict:
    """Restore model, optimizer, scheduler and RNG states into ``accelerator``; return the loop state."""
    state = read_state(path)
    try:
        accelerator.load_state(str(path))
    except Exception as e:  # torch / safetensors / pickle raise many types for a damaged file
        first = " ".join(str(e).split())[:60] or type(e).__name__
        raise LmdistillError(
            f"training.resume: checkpoint '{path}' cannot be restored ({first}); it is damaged: delete it to "
            "resume from the one before, or start anew with --overwrite"
        ) from None
    return state


def copy_tree(src: Path, dest: Path) -> None:
    """Copy a model folder, hard-linking files where the file system allows (checkpoints hold many copies)."""

    def link_or_copy(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, dest, copy_function=link_or_copy)


def restore_best(path: Path, dest: Path) -> bool:
    """Put the best model kept in checkpoint ``path`` back into ``dest`` (replacing it); False if it has none."""
    kept = Path(path) / BEST
    if not kept.is_dir():
        return False
    shutil.rmtree(dest, ignore_errors=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(kept, dest)  # real copies: the run may write into its model folder later
    return True
