"""Search quality and encoding speed of an embedding-distillation run (docs/embedding.md).

Evaluates, on the run's own retrieval set (``embedding.retrieval`` of its saved config.yaml), the teacher, the
distilled student (``OUTPUT_DIR/model``) and the undistilled student (the same initialisation, rebuilt from the
teacher: e.g. its layers 0, 2, 5, before any training). Quality: recall@1, recall@10, MRR@10 and the mean
cosine with the teacher's embeddings of every query and document. Speed: documents encoded per second
(tokenisation included, batch ``training.eval_batch_size``, ``data.max_length``), the median of ``--repeats``
passes taken in turn (teacher, student, undistilled, teacher, ...) in one process, so a busy machine slows
all three alike; compare the ratios, not the absolute numbers, across machines.

    python benchmarks/embedding_retrieval.py runs/embedding-minilm-bbc --repeats 3 \
        teacher.name_or_path=$(lmdistill fetch all-MiniLM-L6-v2)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="output_dir of a `task: embedding` run")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. teacher.name_or_path=PATH")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_intermixed_args()

    import torch

    from lmdistill.config import load_config
    from lmdistill.data.rawtext import load_text_frames
    from lmdistill.tasks.embedding import SentenceEncoder, load_bi_teacher, make_bi_student, retrieval_set
    from lmdistill.tasks.retrieval import agreement, evaluate_encoder

    run = Path(args.run)
    cfg = load_config(run / "config.yaml", args.overrides)
    rs = retrieval_set(cfg, load_text_frames(cfg.data, cfg.seed))
    teacher, t_tok = load_bi_teacher(cfg)
    undistilled, u_tok = make_bi_student(cfg, teacher, t_tok)
    student, s_tok = SentenceEncoder.load(run / "model")
    models = {
        "teacher": (teacher, t_tok),
        "student": (student, s_tok),
        "undistilled_student": (undistilled, u_tok),
    }
    eb, length = cfg.training.eval_batch_size, cfg.data.max_length
    out: dict = {
        "set": rs.name,
        "queries": len(rs),
        "documents": len(rs.documents),
        "max_length": length,
        "batch_size": eb,
        "torch_threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "models": {},
    }
    embeddings = {}
    for name, (enc, tok) in models.items():
        metrics, q, d = evaluate_encoder(enc, tok, rs, batch_size=eb, max_length=length)
        metrics.pop("texts_per_second")
        metrics["parameters"] = sum(p.numel() for p in enc.parameters())
        metrics["layers"] = enc.model.config.num_hidden_layers
        out["models"][name] = metrics
        embeddings[name] = torch.cat([q, d])
    for name in ("student", "undistilled_student"):
        out["models"][name]["teacher_cosine"] = agreement(embeddings[name], embeddings["teacher"])
    speeds: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.repeats):
        for name, (enc, tok) in models.items():
            start = time.perf_counter()
            enc.encode(rs.documents, tok, batch_size=eb, max_length=length)
            speeds[name].append(len(rs.documents) / (time.perf_counter() - start))
    for name, values in speeds.items():
        out["models"][name]["texts_per_second"] = statistics.median(values)
        out["models"][name]["texts_per_second_all"] = [round(v, 1) for v in values]
    (run / "benchmark.json").write_text(json.dumps(out, indent=2))
    print(
        f"{rs.name}: {len(rs)} queries, {len(rs.documents)} documents, max_length {length}, "
        f"{torch.get_num_threads()} threads"
    )
    print("| model | layers | params | recall@1 | recall@10 | MRR@10 | cos with teacher | texts/s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, m in out["models"].items():
        cos = f"{m['teacher_cosine']:.4f}" if "teacher_cosine" in m else "1"
        print(
            f"| {name} | {m['layers']} | {m['parameters'] / 1e6:.1f}M | {m['recall@1']:.4f} | {m['recall@10']:.4f} "
            f"| {m['mrr@10']:.4f} | {cos} | {m['texts_per_second']:.1f} |"
        )


if __name__ == "__main__":
    main()
