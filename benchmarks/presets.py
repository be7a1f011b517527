"""Every preset against logits-only KD and no KD, on one real task, with one teacher, paired over test examples.

Usage (after `make demo`, whose teacher is reused):
    python benchmarks/presets.py --teacher runs/demo/teacher/model --out runs/presets --seeds 42

Each variant distills the same 3-layer student (teacher layers 0, 2, 5) with the same data, seeds and budget:
the same total number of optimizer steps (``--steps``, default: the config's epochs over the labelled
sentences); the two-stage presets (TinyBERT, MiniLM, MiniLMv2) run half of them in each stage. The data
split is the config's (``data.split_seed`` fixed to the config's seed, so every training seed is scored on the
same test examples the teacher never saw). Each saved student is scored on the whole test split and compared
with no KD on the same examples and seeds (two-level seed x example paired bootstrap,
:func:`lmdistill.report.paired.seed_example_bootstrap`, 95%). Results: OUT/presets.json (setup, per-run
predictions, steps and wall time, per-variant summary) and OUT/presets.md.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from seedgrid import paired_summary, slug

from lmdistill import api
from lmdistill.tasks import get_task, load_config

TWO_STAGES = {"tinybert", "minilm", "minilmv2"}
"""Presets whose recipe runs two stages: each stage gets half the steps, so every variant takes the same steps."""

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
BASE = "no KD (hard labels)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", required=True)
    p.add_argument("--out", default="runs/presets")
    p.add_argument("--config", default="configs/demo.yaml")
    p.add_argument("--seeds", type=int, nargs="+", default=[42])
    p.add_argument("--steps", type=int, help="optimizer steps of every variant (default: epochs x batches)")
    p.add_argument("--only", nargs="*", help="run only these variants (no KD always runs)")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    base = [
        f"teacher.name_or_path={args.teacher}",
        "data.unlabeled=null",
        "data.augment=null",
        "data.max_eval_examples=null",
        "distill.stages=[]",
        "training.teacher_cache=null",
        "training.eval_every=100000",
        *args.overrides,
    ]
    cfg = load_config(args.config, base, verb="distill")
    split_seed = cfg.data.split_seed if cfg.data.split_seed is not None else cfg.seed
    labelled = cfg.data.max_train_examples
    steps = args.steps or math.ceil(cfg.training.epochs * math.ceil(labelled / cfg.training.batch_size))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "presets.json"
    record = json.loads(path.read_text()) if path.is_file() else {"runs": {}}
    record["setup"] = {
        "command": "python benchmarks/presets.py " + " ".join(sys.argv[1:]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {platform.system()}",
        "config": args.config,
        "steps_per_variant": steps,
        "split_seed": split_seed,
        "teacher": args.teacher,
    }
    task = get_task(cfg.task)
    inputs = task.report_inputs(cfg)
    chosen = [n for n in VARIANTS if not args.only or n in args.only or n == BASE]
    for name in chosen:
        distill = VARIANTS[name]
        two = distill.get("method") in TWO_STAGES
        for seed in args.seeds:
            key = f"{name} | seed {seed}"
            if key in record["runs"]:
                continue
            run_dir = out / slug(name) / f"seed{seed}"
            overrides = [
                *base,
                f"output_dir={run_dir}",
                f"seed={seed}",
                f"data.split_seed={split_seed}",
                "student.num_layers=null",
                "student.layers=[0,2,5]",
                "student.keep_every=null",
                f"distill={json.dumps(distill)}",
                f"training.max_steps={steps // 2 if two else steps}",
            ]
            start = time.perf_counter()
            res = api.distill(args.config, overrides, overwrite=True)
            wall = time.perf_counter() - start
            model, tok = task.load_saved(res.model_dir)
            q = task.report_quality(model, tok, cfg, inputs)
            pred, gold = np.asarray(q.pred), np.asarray(q.gold)
            record["runs"][key] = {
                "variant": name,
                "seed": seed,
                "accuracy": float((pred == gold).mean()),
                "steps": _all_steps(run_dir),
                "wall_s": round(wall, 1),
                "pred": pred.tolist(),
            }
            record["gold"] = gold.tolist()
            path.write_text(json.dumps(record))
            r = record["runs"][key]
            print(f"{key}: accuracy {r['accuracy']:.4f}, {r['steps']} steps ({wall:.0f} s)", flush=True)
    summarise(record, chosen, args.seeds, out)


def summarise(record: dict, chosen: list[str], seeds: list[int], out: Path) -> None:
    rows, record["summary"] = paired_summary(record, list(chosen), seeds, lambda name: BASE)
    (out / "presets.json").write_text(json.dumps(record))
    table = "\n".join(rows) + "\n"
    (out / "presets.md").write_text(table)
    print(table)


def _all_steps(run_dir: Path) -> int:
    """Optimizer steps of a run over all its stages (its results.json and its stage-*/results.json)."""
    files = [run_dir / "results.json", *sorted(run_dir.glob("stage-*/results.json"))]
    return sum(json.loads(f.read_text()).get("steps", 0) for f in files)


if __name__ == "__main__":
    main()
