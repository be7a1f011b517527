"""POS tagging on the OANC sentences: a fine-tuned MiniLM teacher, a distilled 3-layer student, its no-KD baseline.

Usage (about 10 minutes on 2 CPU cores):
    lmdistill fetch all-MiniLM-L6-v2          # prints the folder given as --model
    python benchmarks/pos_oanc.py --model FOLDER --out runs/pos-oanc \\
        --json benchmarks/results/pos_oanc_minilm.json

``lmdistill compress`` does the three runs (teacher fine-tuned on the train sentences, student = teacher layers
0, 2, 5 distilled with kd + ce, baseline = the same student trained on ce alone for as many optimizer steps);
this script then scores the three saved models on the same test sentences and compares them pairwise with a
paired bootstrap over sentences (word accuracy = correct words / words of the resampled sentences).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np


def config(model: str, out: str, train: int, evaluation: int, epochs: int) -> dict:
    return {
        "task": "token_classification",
        "seed": 42,
        "output_dir": out,
        "data": {
            "dataset": "oanc-pos",
            "max_train_examples": train,
            "max_eval_examples": evaluation,
            "max_length": 64,
        },
        "model": {"name_or_path": model},
        "student": {"num_layers": 3},
        "distill": {"losses": {"kd": 0.5, "ce": 0.5}, "temperature": 2.0},
        "training": {"epochs": epochs, "batch_size": 32, "learning_rate": 1e-4, "log_every": 25},
        "report": {"latency_repeats": 5, "warmup": 2, "speed_texts": 64, "energy": False},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="the all-MiniLM-L6-v2 folder (lmdistill fetch)")
    p.add_argument("--out", default="runs/pos-oanc")
    p.add_argument("--json", default="benchmarks/results/pos_oanc_minilm.json")
    p.add_argument("--train", type=int, default=4000)
    p.add_argument("--eval", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=2)
    args = p.parse_args()

    import torch
    import transformers

    from lmdistill import pipeline
    from lmdistill.data.tokens import load_token_data
    from lmdistill.report.paired import paired_bootstrap
    from lmdistill.tasks import get_task, load_config

    raw = config(args.model, args.out, args.train, args.eval, args.epochs)
    start = time.perf_counter()
    result = pipeline.compress(raw, overwrite=True)
    wall = time.perf_counter() - start

    cfg = load_config(raw)
    task = get_task(cfg.task)
    data = load_token_data(cfg.data, cfg.tokens, cfg.seed)
    per_model = {}
    for role in ("teacher", "student", "baseline"):
        net, tok = task.load_saved(Path(args.out) / role / "model")
        arrays, _, _, _ = task.score_saved(net, tok, data, "test", cfg, 64)
        per_model[role] = arrays
    words = per_model["teacher"]["words"]

    def accuracy(gold: np.ndarray, pred: np.ndarray) -> np.ndarray:  # (B, n) words, (B, n) correct -> (B,)
        return pred.sum(-1) / gold.sum(-1)

    pairs = {}
    for a, b in (("student", "baseline"), ("teacher", "student"), ("teacher", "baseline")):
        ci = paired_bootstrap(
            accuracy, words, per_model[a]["correct"], per_model[b]["correct"], n_resamples=1000, seed=cfg.seed
        )
        pairs[f"{a} - {b}"] = ci._asdict()
    report = json.loads((Path(args.out) / "report.json").read_text())
    runs = {}
    for role in ("teacher", "student", "baseline"):
        res = json.loads((Path(args.out) / role / "results.json").read_text())
        runs[role] = {k: res.get(k) for k in ("test", "validation", "steps", "train_seconds", "parameters")}
    record = {
        "command": " ".join([sys.executable.rsplit("/", 1)[-1], *sys.argv]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads "
        f"{torch.get_num_threads()}",
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
        "config": raw,
        "wall_s_compress": round(wall, 1),
        "test_sentences": len(words),
        "test_words": int(words.sum()),
        "report_models": report.get("models"),
        "report_comparisons": report.get("comparisons"),
        "runs": runs,
        "paired_accuracy_difference": pairs,
        "headline": result.test,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(record, indent=2, default=str) + "\n")
    print(json.dumps({"paired": pairs, "wall_s": round(wall, 1)}, indent=2))


if __name__ == "__main__":
    main()
