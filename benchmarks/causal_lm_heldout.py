"""Held-out perplexity per corpus of a causal-LM teacher, its untrained layer-dropped student, and trained students.

Uses the test documents of a config's data (the same seeded carve as `lmdistill distill`, so none was trained
on), split by corpus (the `source` column of a `+`-joined built-in corpus), packed into the config's blocks.

    python benchmarks/causal_lm_heldout.py configs/causal-lm-smollm2.yaml \
        runs/smollm2/distilled/model runs/smollm2/lm-only/model --reviews 6 --fortunes 80
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    import torch

    from lmdistill.config import load_config
    from lmdistill.tasks import causal_lm as clm

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config")
    p.add_argument("models", nargs="*", help="saved student folders")
    p.add_argument("--reviews", type=int, default=6, help="movie-review test documents")
    p.add_argument("--fortunes", type=int, default=80, help="fortune test documents")
    p.add_argument("--output", default="runs/smollm2/heldout.json")
    args = p.parse_args()
    torch.manual_seed(0)
    cfg = load_config(args.config, verb="distill")
    test = clm.load_documents(cfg)["test"]
    teacher, tok = clm.load_causal_lm(cfg.teacher, "teacher")
    per_corpus = {"movie-reviews": args.reviews, "fortunes": args.fortunes}
    block = cfg.lm.block_size or cfg.data.block_size or cfg.data.max_length
    sets = {
        name: clm.LMDataset(clm.text_blocks(tok, test[test["source"] == name]["text"].tolist()[:n], block))
        for name, n in per_corpus.items()
    }
    collate = clm.LMCollator(clm.pad_id_of(tok))
    models = [("teacher", teacher), ("student, untrained", clm.make_student(cfg, teacher, tok)[0])]
    models += [(path, clm.load_causal_lm(path, "model")[0]) for path in args.models]
    rows = []
    for name, model in models:
        row = {"model": name, "parameters": sum(p.numel() for p in model.parameters())}
        for corpus, ds in sets.items():
            start = time.perf_counter()
            res = clm.perplexity(model, ds, collate, cfg.training.eval_batch_size, cfg.lm.chunk_size)
            row[corpus] = {
                **res,
                "seconds": round(time.perf_counter() - start, 1),
                "documents": per_corpus[corpus],
            }
        rows.append(row)
        print(name, {c: round(row[c]["perplexity"], 2) for c in sets}, flush=True)
    print(
        "\n| model | parameters | "
        + " | ".join(f"{c} ppl ({int(rows[0][c]['tokens'])} tokens)" for c in sets)
        + " |"
    )
    print("|---|---|" + "---|" * len(sets))
    for row in rows:
        cells = " | ".join(f"{row[c]['perplexity']:.1f}" for c in sets)
        print(f"| {row['model']} | {row['parameters'] / 1e6:.1f}M | {cells} |")
    with open(args.output, "w") as f:
        json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
