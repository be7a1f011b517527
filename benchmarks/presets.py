"""Every preset against logits-only KD and no KD, on one real task, with one teacher.

Usage (after fine-tuning a teacher, e.g. with configs/minilm-vader-teacher.yaml):
    python benchmarks/presets.py --teacher runs/minilm-vader/teacher/model --out runs/presets

Each variant distills the same 3-layer student (teacher layers 0, 2, 5) with the same data, seed and budget
(the same total number of optimizer steps: the two-stage presets run half the epochs in each stage) and reports
its test accuracy; results go to OUT/presets.md (a Markdown table) and OUT/presets.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from lmdistill import api
from lmdistill.tasks import load_config

TWO_STAGES = {"tinybert", "minilm", "minilmv2"}
"""Presets whose recipe runs two stages: each gets half the epochs, so every variant takes the same steps."""

VARIANTS = {
    "no KD (hard labels)": {"losses": {"ce": 1.0}},
    "logits-only KD": {"losses": {"kd": 0.5, "ce": 0.5}},
    "distilbert": {"method": "distilbert"},
    "pkd-skip": {"method": "pkd-skip"},
    "pkd-last": {"method": "pkd-last"},
    "tinybert": {"method": "tinybert"},
    "minilm": {"method": "minilm"},
    "minilmv2": {"method": "minilmv2"},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", required=True)
    p.add_argument("--out", default="runs/presets")
    p.add_argument("--config", default="configs/minilm-vader-student.yaml")
    p.add_argument("--only", nargs="*", help="run only these variants")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    epochs = load_config(
        args.config, [f"teacher.name_or_path={args.teacher}", *args.overrides], verb="distill"
    )
    epochs = epochs.training.epochs
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = json.loads((out / "presets.json").read_text()) if (out / "presets.json").is_file() else {}
    for name, distill in VARIANTS.items():
        if args.only and name not in args.only:
            continue
        overrides = [
            f"teacher.name_or_path={args.teacher}",
            f"output_dir={out / name.split()[0]}",
            "student.num_layers=null",
            "student.layers=[0,2,5]",
            "student.keep_every=null",
            f"distill={json.dumps(distill)}",
            *args.overrides,
        ]
        if distill.get("method") in TWO_STAGES:
            overrides.append(f"training.epochs={epochs / 2}")  # two stages of half the epochs: equal steps
        start = time.perf_counter()
        res = api.distill(args.config, overrides)
        rows[name] = {
            "test": res.test,
            "validation": res.validation,
            "steps": res.steps,
            "wall_s": round(time.perf_counter() - start, 1),
        }
        (out / "presets.json").write_text(json.dumps(rows, indent=2))
    lines = ["| variant | test accuracy | test macro-F1 | steps | wall time (s) |", "|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['test']['accuracy']:.4f} | {r['test']['macro_f1']:.4f} | {r['steps']} | "
            f"{r['wall_s']} |"
        )
    (out / "presets.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
