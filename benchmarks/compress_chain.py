"""Summarise a `lmdistill compress` run of the whole chain (configs/demo-chain.yaml): every step's row and the
issue-15 targets for the final student, from the run's report.json and step records (no model is run here).

    flock /tmp/lmdistill-train.lock /usr/bin/time -v lmdistill compress configs/demo-chain.yaml \\
        model.name_or_path=$(lmdistill fetch all-MiniLM-L6-v2) output_dir=runs/demo-chain report.energy=false \\
        > runs/demo-chain.log 2>&1
    python benchmarks/compress_chain.py runs/demo-chain --log runs/demo-chain.log \\
        --out benchmarks/results/compress_chain_minilm.json

Targets (issue 15, item 6), for the final student (ONNX Runtime int8): at least 10x smaller on disk than the
teacher (PyTorch fp32 weights), at least 8x faster at batch 1 than the PyTorch teacher, at least 3x faster than
the teacher in the same runtime and precision, keeping at least 97% of the teacher's accuracy.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
from pathlib import Path

TARGETS = {"size_x": 10.0, "speed_b1_x_vs_pytorch_teacher": 8.0, "speed_b1_x_vs_same_runtime_teacher": 3.0}
KEPT = 0.97


def _lat(entry: dict, batch: int) -> dict:
    return next(x for x in entry["latency"] if x["batch_size"] == batch and x.get("device", "cpu") == "cpu")


def _teacher_in(models: dict, runtime: str) -> dict | None:
    return next((m for m in models.values() if m["role"] == "teacher" and m["runtime"] == runtime), None)


def rows(report: dict) -> list[dict]:
    models = report["models"]
    teacher = _teacher_in(models, "PyTorch fp32")
    t_acc = teacher["metrics"]["accuracy"]["value"]
    t_b1 = _lat(teacher, 1)["median_s"]
    out = []
    for key, m in models.items():
        same = _teacher_in(models, m["runtime"])
        b1, b32 = _lat(m, 1), _lat(m, 32)
        acc = m["metrics"]["accuracy"]
        out.append(
            {
                "model": key,
                "runtime": m["runtime"],
                "step": m.get("step"),
                "accuracy": acc,
                "kept_of_teacher": acc["value"] / t_acc,
                "parameters": (m.get("parameters") or {}).get("total"),
                "weights_bytes": m["size"]["weights_bytes"],
                "size_x_vs_pytorch_teacher": teacher["size"]["weights_bytes"] / m["size"]["weights_bytes"],
                "b1_median_ms": b1["median_s"] * 1e3,
                "b1_p10_ms": b1["p10_s"] * 1e3,
                "b1_p90_ms": b1["p90_s"] * 1e3,
                "speed_b1_x_vs_pytorch_teacher": t_b1 / b1["median_s"],
                "speed_b1_x_vs_same_runtime_teacher": (_lat(same, 1)["median_s"] / b1["median_s"])
                if same
                else None,
                "b32_examples_per_s": b32["examples_per_s"],
            }
        )
    return out


def targets(table: list[dict], final: str) -> dict:
    row = next(r for r in table if r["model"] == final)
    got = {
        "size_x": row["size_x_vs_pytorch_teacher"],
        "speed_b1_x_vs_pytorch_teacher": row["speed_b1_x_vs_pytorch_teacher"],
        "speed_b1_x_vs_same_runtime_teacher": row["speed_b1_x_vs_same_runtime_teacher"],
    }
    out = {k: {"target": t, "measured": got[k], "met": got[k] >= t} for k, t in TARGETS.items()}
    out["kept_of_teacher_accuracy"] = {
        "target": KEPT,
        "measured": row["kept_of_teacher"],
        "met": row["kept_of_teacher"] >= KEPT,
    }
    return {"final_student": final, **out}


def markdown(table: list[dict]) -> str:
    head = (
        "| model | runtime | accuracy [95% CI] | kept | parameters | weights on disk | batch 1 median (p10-p90) "
        "| vs PyTorch teacher, b1 | vs teacher in same runtime, b1 | batch 32 throughput |\n"
        "|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in table:
        a = r["accuracy"]
        same = r["speed_b1_x_vs_same_runtime_teacher"]
        lines.append(
            f"| {r['model']} | {r['runtime']} | {100 * a['value']:.1f} [{100 * a['low']:.1f}, {100 * a['high']:.1f}] "
            f"| {100 * r['kept_of_teacher']:.1f}% | {r['parameters'] / 1e6:.2f}M | "
            if r["parameters"]
            else f"| {r['model']} | {r['runtime']} | {100 * a['value']:.1f} [{100 * a['low']:.1f}, "
            f"{100 * a['high']:.1f}] | {100 * r['kept_of_teacher']:.1f}% | n/a | "
        )
        lines[-1] += (
            f"{r['weights_bytes'] / 1e6:.1f} MB ({r['size_x_vs_pytorch_teacher']:.1f}x smaller) | "
            f"{r['b1_median_ms']:.1f} ms ({r['b1_p10_ms']:.1f}-{r['b1_p90_ms']:.1f}) | "
            f"{r['speed_b1_x_vs_pytorch_teacher']:.1f}x | {f'{same:.1f}x' if same else 'n/a'} | "
            f"{r['b32_examples_per_s']:.0f} ex/s |"
        )
    return "\n".join(lines)


def wall_time(log: Path) -> float | None:
    found = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", log.read_text())
    if not found:
        return None
    parts = [float(p) for p in found.group(1).split(":")]
    return sum(p * 60**i for i, p in enumerate(reversed(parts)))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("run", type=Path)
    p.add_argument("--log", type=Path)
    p.add_argument("--final", default="student onnx-int8")
    p.add_argument("--command", default="", help="the compress command line, recorded as is")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    report = json.loads((args.run / "report.json").read_text())
    table = rows(report)
    steps = {
        f.parent.name: json.loads(f.read_text())["info"]
        for f in sorted(args.run.glob("steps/*/lmdistill-step.json"))
    }
    runs = {}
    for role in ("teacher", "student", "baseline"):
        res = args.run / role / "results.json"
        if res.is_file():
            r = json.loads(res.read_text())
            runs[role] = {k: r.get(k) for k in ("steps", "train_seconds", "test")}
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": args.command,
        "environment": report["environment"],
        "evaluation": report["evaluation"],
        "notes": report["notes"],
        "wall_time_s": wall_time(args.log) if args.log else None,
        "runs": runs,
        "steps": steps,
        "rows": table,
        "targets": targets(table, args.final),
        "comparisons": report["comparisons"],
    }
    print(markdown(table))
    print(json.dumps(result["targets"], indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
