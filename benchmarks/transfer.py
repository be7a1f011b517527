"""What a teacher adds beyond the labelled data: no KD, KD, KD + transfer set, KD + augmentation, at one budget.

Usage (after `make demo`, whose teacher is reused):
    python benchmarks/transfer.py --teacher runs/demo/teacher/model --out runs/transfer --seeds 1 2 3
    python benchmarks/transfer.py --teacher T --config configs/bbc-topics.yaml --out runs/transfer-bbc

Every variant trains the same 3-layer student (the config's) from the same teacher for the same number of
optimizer steps (``--steps``, default: one pass over the labelled sentences plus the largest transfer set), with
the same seeds; only what the student learns from changes. Each saved student is scored on the whole test split
and compared with no KD on the same examples and seeds: the two-level (seed x example) paired bootstrap of
:func:`lmdistill.report.paired.seed_example_bootstrap`, 95%. Results: OUT/transfer.json (per seed: accuracy,
steps, wall time; per variant: mean and the paired interval against no KD) and OUT/transfer.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

from seedgrid import paired_summary, score, slug

from lmdistill import api
from lmdistill.tasks import get_task, load_config

KD = {"kd": 0.5, "ce": 0.5}
NO_TRANSFER = ["data.unlabeled=null", "data.augment=null"]


def transfer(n: int, source: str) -> list[str]:
    return [f'data.unlabeled={{"source": "{source}", "max_examples": {n}}}']


def augment(method: str, copies: int) -> list[str]:
    return [f'data.augment={{"method": "{method}", "copies": {copies}}}']


def variants(source: str, small: int, large: int, copies: int) -> dict[str, list[str]]:
    """name -> overrides. ``losses`` apply to labelled examples; unlabelled ones always get KD alone."""
    kd = [f"distill.losses={json.dumps(KD)}"]
    return {
        "no KD": ['distill.losses={"ce": 1.0}', "training.teacher_cache=null", *NO_TRANSFER],
        "KD (labelled only)": [*kd, *NO_TRANSFER],
        f"KD + transfer {small:,}": [*kd, *transfer(small, source), "data.augment=null"],
        f"KD + transfer {large:,}": [*kd, *transfer(large, source), "data.augment=null"],
        "KD + augment tang": [*kd, "data.unlabeled=null", *augment("tang", copies)],
        "KD + augment embedding": [*kd, "data.unlabeled=null", *augment("embedding", copies)],
        f"KD + transfer {large:,} + augment tang": [*kd, *transfer(large, source), *augment("tang", copies)],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", required=True)
    p.add_argument("--config", default="configs/demo.yaml")
    p.add_argument("--out", default="runs/transfer")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--source", default="movie-review-sentences", help="the transfer corpus")
    p.add_argument("--small", type=int, default=5000, help="the smaller transfer set")
    p.add_argument("--large", type=int, default=15000, help="the larger transfer set")
    p.add_argument("--copies", type=int, default=4, help="augmented copies per labelled text")
    p.add_argument("--steps", type=int, help="optimizer steps of every run (default: see the docstring)")
    p.add_argument("--only", nargs="*", help="run only these variants (no KD always runs)")
    p.add_argument(
        "--low-label", type=int, help="also run no KD and KD + the large transfer set with this many labels"
    )
    p.add_argument(
        "--reuse",
        nargs="*",
        default=[],
        metavar="VARIANT=MODEL_DIR",
        help="score an already trained model as this variant (one seed only), e.g. the students of `make demo`",
    )
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    reuse = dict(r.split("=", 1) for r in args.reuse)
    if reuse and len(args.seeds) != 1:
        p.error("--reuse needs exactly one --seeds value (the seed the reused model was trained with)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "transfer.json"
    record = json.loads(path.read_text()) if path.is_file() else {"runs": {}}
    cfg = load_config(args.config, [f"teacher.name_or_path={args.teacher}", *args.overrides], verb="distill")
    labelled = cfg.data.max_train_examples or 0
    steps = args.steps or -(-(labelled + args.large) // cfg.training.batch_size)
    record["setup"] = {
        "command": "python benchmarks/transfer.py " + " ".join(_argv()),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {platform.system()}",
        "config": args.config,
        "steps_per_run": steps,
        "batch_size": cfg.training.batch_size,
        "teacher": args.teacher,
    }
    task = get_task(cfg.task)
    inputs = task.report_inputs(cfg)
    grid = variants(args.source, args.small, args.large, args.copies)
    chosen = {k: v for k, v in grid.items() if not args.only or k in args.only or k == "no KD"}
    unknown = set(reuse) - set(grid)
    if unknown:
        p.error(f"--reuse: unknown variants {sorted(unknown)}; variants: {list(grid)}")
    if args.low_label:
        low = [f"data.max_train_examples={args.low_label}"]
        chosen[f"no KD, {args.low_label} labels"] = [*grid["no KD"], *low]
        chosen[f"KD + transfer {args.large:,}, {args.low_label} labels"] = [
            *grid[f"KD + transfer {args.large:,}"],
            *low,
        ]
    gold = None
    for name, extra in chosen.items():
        for seed in args.seeds:
            key = f"{name} | seed {seed}"
            run_dir = out / slug(name) / f"seed{seed}"
            if key in record["runs"]:
                continue
            overrides = [
                f"teacher.name_or_path={args.teacher}",
                f"output_dir={run_dir}",
                f"seed={seed}",
                f"data.split_seed={cfg.data.split_seed if cfg.data.split_seed is not None else cfg.seed}",
                "distill.stages=[]",
                f"training.max_steps={steps}",
                "training.eval_every=100000",
                *args.overrides,
                *extra,
            ]
            if name in reuse:
                model_dir, steps_done, wall = Path(reuse[name]), _steps_of(Path(reuse[name])), 0.0
            else:
                start = time.perf_counter()
                res = api.distill(args.config, overrides, overwrite=True)
                model_dir, steps_done, wall = res.model_dir, res.steps, time.perf_counter() - start
            pred, gold = score(model_dir, cfg, task, inputs)
            record["runs"][key] = {
                "variant": name,
                "seed": seed,
                "accuracy": float((pred == gold).mean()),
                "steps": steps_done,
                "wall_s": round(wall, 1),
                "model": str(model_dir),
                "reused": name in reuse,
                "pred": pred.tolist(),
            }
            record["gold"] = gold.tolist()
            path.write_text(json.dumps(record))
            print(f"{key}: accuracy {record['runs'][key]['accuracy']:.4f} ({wall:.0f} s)", flush=True)
    summarise(record, chosen, args.seeds, out)


def _base_of(name: str) -> str:
    """No KD at the same number of labels."""
    return f"no KD, {name.rsplit(', ', 1)[1]}" if name.endswith(" labels") else "no KD"


def summarise(record: dict, chosen: list[str], seeds: list[int], out: Path) -> None:
    rows, record["summary"] = paired_summary(record, list(chosen), seeds, _base_of)
    (out / "transfer.json").write_text(json.dumps(record))
    table = "\n".join(rows) + "\n"
    (out / "transfer.md").write_text(table)
    print(table)


def _steps_of(model_dir: Path) -> int | None:
    """The optimizer steps of the run that saved ``model_dir`` (its results.json, one folder up)."""
    results = model_dir.parent / "results.json"
    return json.loads(results.read_text()).get("steps") if results.is_file() else None


def _argv() -> list[str]:
    import sys

    return sys.argv[1:]


if __name__ == "__main__":
    main()
