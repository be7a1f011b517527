"""Resumable checkpoints: the whole distillation state, written atomically, pruned to the last N + best.

A checkpoint folder ``OUTPUT_DIR/checkpoints/step-00000100`` holds what ``accelerator.save_state`` writes
(student and projections as safetensors, optimizer, scheduler, grad scaler, RNG states of every process)
plus ``loop_state.json`` (step, epoch, batches consumed in the epoch, best metric, early-stopping counter,
un-logged loss sums, the log so far). It is written as ``step-….tmp`` and renamed when complete, so a crash
mid-write leaves the previous checkpoint as the newest valid one.
"""

from __future__ import annotations

import json
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


def save(accelerator, out_dir: Path, state: dict, keep: int) -> Path:
    """Write a checkpoint for ``state['step']`` atomically and prune old ones."""
    root = Path(out_dir) / "checkpoints"
    final = root / f"step-{state['step']:08d}"
    tmp = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    if accelerator.is_main_process:
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


def load(accelerator, path: Path) -> dict:
    """Restore model, optimizer, scheduler and RNG states into ``accelerator``; return the loop state."""
    accelerator.load_state(str(path))
    return json.loads((Path(path) / STATE_FILE).read_text())
