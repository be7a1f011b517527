"""Shared by the variant x seed benchmarks (presets.py, transfer.py, multi_teacher.py): scoring a saved model on
the test split, and the summary table of saved predictions, each variant against its reference on the same test
examples and seeds (two-level seed x example paired bootstrap,
:func:`lmdistill.report.paired.seed_example_bootstrap`, 95%)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from lmdistill.report.paired import seed_example_bootstrap


def paired_summary(
    record: dict, chosen: list[str], seeds: list[int], base_of: Callable[[str], str]
) -> tuple[list[str], dict]:
    """Markdown rows and a per-variant summary of ``record["runs"]`` (keys ``"NAME | seed S"``, each with
    ``pred``, ``steps``, ``wall_s``) against ``record["gold"]``; ``base_of(name)`` names the reference."""
    gold = np.asarray(record["gold"])
    runs = record["runs"]

    def preds(name: str) -> np.ndarray:  # (seeds, examples)
        return np.stack([np.asarray(runs[f"{name} | seed {s}"]["pred"]) for s in seeds])

    rows = [
        "| variant | steps | accuracy, mean over seeds | vs reference (paired 95% interval) | verdict | wall (s) |",
        "|---|---|---|---|---|---|",
    ]
    summary = {}
    for name in chosen:
        base, a = base_of(name), preds(name)
        acc = float((a == gold).mean())
        wall = sum(runs[f"{name} | seed {s}"]["wall_s"] for s in seeds) / len(seeds)
        steps = runs[f"{name} | seed {seeds[0]}"].get("steps")
        entry = {"accuracy": acc, "wall_s": round(wall, 1), "steps": steps, "against": base}
        cell, verdict = "", ""
        if name != base:
            ci = seed_example_bootstrap("accuracy", gold, a, preds(base), n_resamples=2000, seed=0)
            entry |= {"difference": ci.point, "low": ci.low, "high": ci.high}
            cell = f"{100 * ci.point:+.1f} [{100 * ci.low:+.1f}, {100 * ci.high:+.1f}] vs {base}"
            verdict = "better" if ci.low > 0 else "worse" if ci.high < 0 else "not distinguishable"
        summary[name] = entry | {"verdict": verdict}
        rows.append(f"| {name} | {steps} | {100 * acc:.1f} | {cell} | {verdict} | {wall:.0f} |")
    return rows, summary


def slug(name: str) -> str:
    """A folder name for a variant name."""
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def score(model_dir: Path, cfg, task, inputs) -> tuple[np.ndarray, np.ndarray]:
    """A saved model's predictions and the gold labels on the report's test split (the task's report evaluation)."""
    model, tok = task.load_saved(model_dir)
    q = task.report_quality(model, tok, cfg, inputs)
    return np.asarray(q.pred), np.asarray(q.gold)
