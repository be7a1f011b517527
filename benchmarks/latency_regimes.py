"""Latency (batch 1 unless --batch-size) of a teacher and its compressed students under three timing regimes, in one process, on the
report's own speed texts (the first ``report.speed_texts`` of the test split), to see how much a speed-up
depends on how it is timed:

- ``report``: what ``lmdistill compress`` / ``report`` does with ``report.latency_repeats: 20``: round-robin
  single calls (A, B, C, A, B, C, ...), 20 rounds, so 20 texts;
- ``cold``: the same round-robin over every speed text (256 rounds): each call still follows another model's;
- ``warm``: each model over every speed text back to back (2 untimed calls first), model after model, the
  whole thing repeated ``--repeats`` times: a served model answering consecutive requests.

The timer is :func:`lmdistill.report.measure.measure_latency_interleaved` for the round-robin regimes (the
report's own) and the same call per model for the warm one; medians over all timed calls.

    python benchmarks/latency_regimes.py configs/demo-chain.yaml --torch teacher=RUN/../teacher/model \\
        --onnx "teacher onnx-int8=RUN/export/teacher/onnx-int8" --onnx "1 layer=L1/export/student/onnx-int8" \\
        --out benchmarks/results/<folder>/latency_regimes.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
from pathlib import Path


def _pairs(values: list[str], flag: str) -> dict[str, str]:
    out = {}
    for v in values:
        name, sep, folder = v.partition("=")
        if not sep or not name or not Path(folder).is_dir():
            raise SystemExit(f"{flag} {v!r}: give NAME=FOLDER with an existing folder")
        out[name] = folder
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", help="the compress config whose test split gives the speed texts")
    ap.add_argument(
        "--torch", action="append", default=[], help="NAME=FOLDER of a PyTorch model (first: the reference)"
    )
    ap.add_argument("--onnx", action="append", default=[], help="NAME=FOLDER of an lmdistill ONNX export")
    ap.add_argument(
        "--repeats", type=int, default=3, help="passes over the texts in the cold and warm regimes"
    )
    ap.add_argument(
        "--batch-size",
        type=int,
        default=1,
        help="texts per call (default 1; the report's throughput uses 32)",
    )
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from lmdistill import run as lmrun
    from lmdistill.export.runtime import OnnxRunner
    from lmdistill.report.inputs import prepare_batches
    from lmdistill.report.measure import measure_latency_interleaved, torch_runner
    from lmdistill.tasks import get_task, load_config

    cfg = load_config(args.config, [])
    inputs = get_task(cfg.task).report_inputs(cfg)
    texts, max_length = inputs.texts, inputs.max_length
    models = {}
    for name, folder in _pairs(args.torch, "--torch").items():
        models[name] = (AutoModelForSequenceClassification.from_pretrained(folder).eval(), folder)
    for name, folder in _pairs(args.onnx, "--onnx").items():
        models[name] = (OnnxRunner(folder), folder)
    if not models:
        raise SystemExit("give at least one --torch or --onnx model")
    batches = {
        k: prepare_batches(
            AutoTokenizer.from_pretrained(f), texts, batch_size=args.batch_size, max_length=max_length
        )
        for k, (_, f) in models.items()
    }

    bs, calls = args.batch_size, -(-len(texts) // args.batch_size)  # calls: batches per pass over the texts

    def runner(key):  # call i runs batch i (mod the number of batches), as the report's runners do
        return torch_runner(models[key][0], batches[key])

    medians: dict[str, dict[str, float]] = {k: {} for k in models}
    with torch.inference_mode():
        rr = measure_latency_interleaved({k: runner(k) for k in models}, batch_size=bs, rounds=20, warmup=3)
        for k, r in rr.items():
            medians[k]["report"] = r["median_s"]
        cold: dict[str, list[float]] = {k: [] for k in models}
        warm: dict[str, list[float]] = {k: [] for k in models}
        for _ in range(args.repeats):
            rr = measure_latency_interleaved(
                {k: runner(k) for k in models}, batch_size=bs, rounds=calls, warmup=3
            )
            for k, r in rr.items():
                cold[k] += r["times_s"]
            for k in models:
                rr = measure_latency_interleaved({k: runner(k)}, batch_size=bs, rounds=calls, warmup=2)
                warm[k] += rr[k]["times_s"]
    for k in models:
        medians[k]["cold"] = statistics.median(cold[k])
        medians[k]["warm"] = statistics.median(warm[k])
    names = list(models)
    ref = names[0]
    same = next((n for n in names if n != ref and "teacher" in n), None)
    table = {}
    for k in names:
        row = {}
        for regime, m in medians[k].items():
            row[regime] = {"median_ms": m * 1e3, f"x_vs_{ref}": medians[ref][regime] / m}
            if same:
                row[regime][f"x_vs_{same}"] = medians[same][regime] / m
        table[k] = row
    out = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "versions": lmrun.versions(),
        "speed_texts": len(texts),
        "batch_size": bs,
        "regimes": {
            "report": "round-robin, 20 rounds",
            "cold": f"round-robin, {calls} rounds x {args.repeats}",
            "warm": f"each model {calls} calls back to back x {args.repeats}",
        },
        "models": {k: models[k][1] for k in names},
        "latency": table,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"{'model':28s}" + "".join(f"{r:>36s}" for r in ("report", "cold", "warm")))
    for k in names:
        cells = []
        for regime in ("report", "cold", "warm"):
            c = table[k][regime]
            extra = f" / {c[f'x_vs_{same}']:.1f}x" if same else ""
            cells.append(f"{c['median_ms']:.3f} ms ({c[f'x_vs_{ref}']:.1f}x{extra})")
        print(f"{k:28s}" + "".join(f"{c:>36s}" for c in cells))


if __name__ == "__main__":
    main()
