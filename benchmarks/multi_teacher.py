"""Several teachers and several students on one real task: one teacher, each teacher alone, their averaged
ensemble, SKD, and deep mutual learning against no KD, same student, same budget, paired over test examples.

Usage (two fine-tuned teachers of the demo's task, e.g. the demo's MiniLM teacher and all-mpnet-base-v2
fine-tuned with `lmdistill finetune configs/demo.yaml model.name_or_path=... data.unlabeled=null`):
    python benchmarks/multi_teacher.py --teachers minilm=runs/demo/teacher/model mpnet=runs/mpnet-teacher/model \
        --out runs/multi-teacher --seeds 1 2 3

The FIRST teacher is the one the student is built from (``ensemble.layers_from``: its layers 0, 2, 5 are
copied, as in the demo); every variant trains that same 3-layer student on the 3,000 labelled sentences (no
transfer set) for the same optimizer steps (``--steps``, default: the config's epochs), with the same seeds and
data split (``data.split_seed`` = the config's seed). Only what teaches the student changes:

- no KD: hard labels alone;
- each teacher alone: ``teachers`` weights one-hot (the student is still built from the first);
- ensemble: the weighted mean of the teachers' probabilities (``ensemble.combine: mean_probs``, equal weights);
- SKD (Ding et al. 2023): every optimizer step draws one teacher, uniformly (``ensemble.sampling: uniform``);
- mutual learning (Zhang et al. 2018): two students, no teacher term, each taught by the hard labels and the
  other (layers 0, 2, 5 and 1, 3, 5 of the first teacher); both are scored, each against no KD.

KD variants use the config's ``distill.losses`` weights and temperature (demo: kd 0.5 + ce 0.5, T = 2); each
teacher is scored once from its own cache in OUT/cache (built by the first variant that needs it; a teacher
whose tokenizer differs, e.g. MPNet's, is cached from its own tokens). Every student is scored on the whole test
split; the teachers too. Results: OUT/multi_teacher.json (setup, per-run predictions, steps, wall time, SKD
draws) and OUT/multi_teacher.md.
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
from seedgrid import paired_summary, score, slug

from lmdistill import api
from lmdistill.tasks import get_task, load_config

BASE = "no KD (hard labels)"
MUTUAL = "mutual learning (2 students, no teacher)"


def variants(names: list[str]) -> dict[str, dict]:
    """name -> ``{"weights": [...], "ensemble": {...}, "kd": bool}`` or the mutual run."""
    one_hot = {
        f"{n} teacher alone": {"weights": [float(i == j) for j in range(len(names))], "ensemble": {}}
        for i, n in enumerate(names)
    }
    equal = [1.0] * len(names)
    return {
        BASE: {"weights": equal, "ensemble": {}, "kd": False},
        **one_hot,
        "ensemble (mean of probabilities)": {"weights": equal, "ensemble": {"combine": "mean_probs"}},
        "SKD (uniform draw per step)": {"weights": equal, "ensemble": {"sampling": "uniform"}},
        MUTUAL: {"mutual": True},
    }


def overrides_of(spec: dict, teachers: list[tuple[str, str]], losses: dict, cache: Path) -> list[str]:
    if spec.get("mutual"):
        return [
            "teachers=[]",
            f"teacher.name_or_path={teachers[0][1]}",
            "student.layers=null",
            "student.num_layers=3",
            'mutual={"students": 2, "weight": 1.0, "layers": [[0, 2, 5], [1, 3, 5]]}',
            'distill.losses={"ce": 1.0}',
            "distill.temperature=1.0",  # the paper's: KL between the students' plain softmax outputs
            "training.teacher_cache=null",
        ]
    listed = [
        {"name_or_path": path, "name": name, "weight": w}
        for (name, path), w in zip(teachers, spec["weights"], strict=True)
    ]
    return [
        f"teachers={json.dumps(listed)}",
        f"ensemble={json.dumps({'layers_from': teachers[0][0], **spec['ensemble']})}",
        "student.num_layers=null",
        "student.layers=[0,2,5]",
        f"distill.losses={json.dumps(losses if spec.get('kd', True) else {'ce': 1.0})}",
        f"training.teacher_cache={cache if spec.get('kd', True) else 'null'}",
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teachers", nargs="+", required=True, help="NAME=FOLDER, the student's teacher first")
    p.add_argument("--out", default="runs/multi-teacher")
    p.add_argument("--config", default="configs/demo.yaml")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--steps", type=int, help="optimizer steps of every variant (default: epochs x batches)")
    p.add_argument("--only", nargs="*", help="run only these variants (no KD always runs)")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    teachers = [tuple(t.split("=", 1)) for t in args.teachers]
    base = [
        "data.unlabeled=null",
        "data.augment=null",
        "data.max_eval_examples=null",
        "distill.stages=[]",
        "training.eval_every=100000",
        *args.overrides,
    ]
    cfg = load_config(args.config, [*base, f"teacher.name_or_path={teachers[0][1]}"], verb="distill")
    split_seed = cfg.data.split_seed if cfg.data.split_seed is not None else cfg.seed
    steps = args.steps or math.ceil(
        cfg.training.epochs * math.ceil(cfg.data.max_train_examples / cfg.training.batch_size)
    )
    losses = cfg.distill.losses or {"kd": 0.5, "ce": 0.5}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "multi_teacher.json"
    record = json.loads(path.read_text()) if path.is_file() else {"runs": {}, "teachers": {}}
    record["setup"] = {
        "command": "python benchmarks/multi_teacher.py " + " ".join(sys.argv[1:]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {platform.system()}",
        "config": args.config,
        "steps_per_variant": steps,
        "split_seed": split_seed,
        "teachers": dict(teachers),
        "kd_losses": losses,
        "temperature": cfg.distill.temperature,
    }
    task = get_task(cfg.task)
    inputs = task.report_inputs(cfg)
    for name, folder in teachers:
        if name not in record["teachers"]:
            pred, gold = score(Path(folder), cfg, task, inputs)
            record["teachers"][name] = {"accuracy": float((pred == gold).mean()), "pred": pred.tolist()}
            record["gold"] = gold.tolist()
            print(f"teacher {name}: test accuracy {record['teachers'][name]['accuracy']:.4f}", flush=True)
    table = variants([n for n, _ in teachers])
    chosen = [n for n in table if not args.only or n in args.only or n == BASE]
    for seed in args.seeds:
        for name in chosen:
            spec = table[name]
            keys = (
                [f"{name} | seed {seed}"]
                if not spec.get("mutual")
                else [f"{name}: student {i} | seed {seed}" for i in (0, 1)]
            )
            if all(k in record["runs"] for k in keys):
                continue
            run_dir = out / slug(name) / f"seed{seed}"
            run = [
                *base,
                *overrides_of(spec, teachers, losses, out / "cache"),
                f"output_dir={run_dir}",
                f"seed={seed}",
                f"data.split_seed={split_seed}",
                f"training.max_steps={steps}",
            ]
            start = time.perf_counter()
            res = api.distill(args.config, run, overwrite=True)
            wall = time.perf_counter() - start
            results = json.loads((run_dir / "results.json").read_text())
            dirs = (
                [Path(res.model_dir) / f"student_{i}" for i in (0, 1)]
                if spec.get("mutual")
                else [res.model_dir]
            )
            for key, model_dir in zip(keys, dirs, strict=True):
                pred, gold = score(Path(model_dir), cfg, task, inputs)
                record["runs"][key] = {
                    "variant": key.split(" | ")[0],
                    "seed": seed,
                    "accuracy": float((pred == gold).mean()),
                    "steps": results.get("steps"),
                    "wall_s": round(wall, 1),
                    "draws": (results.get("ensemble") or {}).get("draws"),
                    "pred": pred.tolist(),
                }
                record["gold"] = gold.tolist()
                print(f"{key}: accuracy {record['runs'][key]['accuracy']:.4f} ({wall:.0f} s)", flush=True)
            path.write_text(json.dumps(record))
    names = [
        k
        for n in chosen
        for k in ([n] if not table[n].get("mutual") else [f"{n}: student {i}" for i in (0, 1)])
    ]
    done = [s for s in args.seeds if all(f"{n} | seed {s}" in record["runs"] for n in names)]
    rows, record["summary"] = paired_summary(record, names, done, lambda name: BASE)
    teacher_rows = [
        f"| teacher: {n} | | {100 * t['accuracy']:.1f} | | | |" for n, t in record["teachers"].items()
    ]
    record["seeds_summarised"] = done
    extra = head_to_head(record, [f"{n} teacher alone" for n, _ in teachers], done) if done else []
    path.write_text(json.dumps(record))
    text = "\n".join([*rows[:2], *teacher_rows, *rows[2:], "", *extra]) + "\n"
    (out / "multi_teacher.md").write_text(text)
    print(text)


def head_to_head(record: dict, singles: list[str], seeds: list[int]) -> list[str]:
    """SKDBERT's comparison: SKD against the single best teacher (best mean accuracy of the one-teacher runs)
    and against the averaged ensemble, and the ensemble against the best teacher, paired by seed and example."""
    from lmdistill.report.paired import seed_example_bootstrap

    gold, runs = np.asarray(record["gold"]), record["runs"]

    def preds(name: str) -> np.ndarray:
        return np.stack([np.asarray(runs[f"{name} | seed {s}"]["pred"]) for s in seeds])

    best = max(singles, key=lambda n: float((preds(n) == gold).mean()))
    skd, ens = "SKD (uniform draw per step)", "ensemble (mean of probabilities)"
    rows = ["| comparison | difference (paired 95% interval) | verdict |", "|---|---|---|"]
    record["head_to_head"] = {}
    for a, b in ((skd, best), (skd, ens), (ens, best)):
        ci = seed_example_bootstrap("accuracy", gold, preds(a), preds(b), n_resamples=2000, seed=0)
        verdict = "better" if ci.low > 0 else "worse" if ci.high < 0 else "not distinguishable"
        record["head_to_head"][f"{a} - {b}"] = {"difference": ci.point, "low": ci.low, "high": ci.high}
        rows.append(
            f"| {a} - {b} | {100 * ci.point:+.1f} [{100 * ci.low:+.1f}, {100 * ci.high:+.1f}] | {verdict} |"
        )
    return rows


if __name__ == "__main__":
    main()
