"""Cross-tokenizer KD on real weights: SmolLM2-135M-Instruct teacher -> a fresh student with its own 8k BPE.

Two students, identical except for the loss (same tokenizer, architecture, initial weights, data blocks and
order, steps, schedule, seed):

* ``kd``: ``lm.cross_tokenizer: aligned`` with ``distill.losses {kd: 0.5, lm: 0.5}`` (forward KL at T = 1 on
  spans that are one shared token on both sides, ULD on the rest), the teacher reduced to its top --top-k
  tokens + tail (``lm.top_k``; keeps a CPU step short: no sort over 49,152 teacher probabilities per pair);
* ``lm``: the same run with ``distill.losses {lm: 1.0}`` (the teacher never runs).

The student's tokenizer is a byte-level BPE of --vocab tokens trained here with ``tokenizers`` on the training
split's documents only; the student is the teacher's architecture at --layers x --hidden with embeddings for
that vocabulary. Held-out quality is **perplexity per byte**, comparable across tokenizers: per test document,
the model's own tokens of the document plus its EOS, each predicted from the EOS before the document and the
tokens before it; ``exp(sum NLL / sum bytes)`` with bytes = UTF-8 bytes of the document + 1 (the EOS). The
difference of two students is a paired bootstrap over test documents
(:func:`lmdistill.report.paired.paired_perplexity_bootstrap`, byte counts in place of token counts).

    PYTHONPATH=src python benchmarks/cross_tokenizer_smollm2.py --out benchmarks/results/cross_tokenizer_smollm2.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]


def train_bpe(texts: list[str], vocab: int, folder: Path):
    """A byte-level BPE of ``vocab`` tokens (EOS ``<|endoftext|>``, pad ``<pad>``) saved as a fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=["<|endoftext|>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tk.train_from_iterator(texts, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>", pad_token="<pad>")
    tok.save_pretrained(folder)
    return tok


@torch.no_grad()
def doc_nll(model, tok, texts: list[str], window: int) -> tuple[np.ndarray, np.ndarray]:
    """Per document: the summed NLL (nats) of its tokens and its EOS, each predicted from the EOS before the
    document and the tokens before it (a document longer than ``window`` tokens in windows of ``window``
    that move by ``window // 2``, each scoring only its new tokens), and its bytes (UTF-8, + 1 for the EOS)."""
    model.eval()
    eos = tok.eos_token_id
    sums, nbytes = [], []
    for text in texts:
        ids = [eos] + tok(text, add_special_tokens=False)["input_ids"] + [eos]
        total, pos = 0.0, 1  # pos: the next token to score (ids[0] is context only)
        while pos < len(ids):
            end = min(len(ids), window if pos == 1 else pos + window // 2)
            lo = max(0, end - window)
            x = torch.tensor([ids[lo:end]])
            logits = model(input_ids=x).logits[0].float()
            total += float(
                F.cross_entropy(logits[pos - 1 - lo : end - 1 - lo], x[0, pos - lo :], reduction="sum")
            )
            pos = end
        sums.append(total)
        nbytes.append(len(text.encode("utf-8")) + 1)
    return np.asarray(sums), np.asarray(nbytes, dtype=float)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--teacher", default=str(Path("~/.cache/lmdistill/models/SmolLM2-135M-Instruct").expanduser())
    )
    p.add_argument("--dataset", default="movie-reviews")
    p.add_argument("--train-docs", type=int, default=300)
    p.add_argument("--test-docs", type=int, default=60)
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=288)
    p.add_argument("--block", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--top-k", type=int, default=64, help="lm.top_k of the kd arm (0: the dense teacher)")
    p.add_argument("--window", type=int, default=512)
    p.add_argument("--work", default="runs/cross_tokenizer_smollm2")
    p.add_argument("--out")
    args = p.parse_args()
    torch.set_num_threads(2)

    from lmdistill import api
    from lmdistill.data.lm import load_documents
    from lmdistill.models.causal import load_causal_lm
    from lmdistill.report.paired import paired_perplexity_bootstrap
    from lmdistill.tasks import load_config

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    base = {
        "task": "causal_lm",
        "seed": 0,
        "data": {
            "dataset": args.dataset,
            "validation_size": 0.05,
            "test_size": 0.1,
            "max_train_examples": args.train_docs,
            "max_eval_examples": 10,
        },
        "teacher": {"name_or_path": args.teacher},
        "student": {
            "init": "config",
            "num_layers": args.layers,
            "hidden_size": args.hidden,
            "tokenizer": str(work / "tokenizer"),
        },
        "lm": {"block_size": args.block, "cross_tokenizer": "aligned", "divergence": "forward_kl"},
        "distill": {"temperature": 1.0},
        "training": {
            "max_steps": args.steps,
            "batch_size": args.batch,
            "eval_batch_size": 8,
            "learning_rate": args.lr,
            "warmup_ratio": 0.05,
            "log_every": 20,
        },
    }
    docs = load_documents(load_config(base))
    text_col = load_config(base).data.text_column
    train_texts = [str(t) for t in docs["train"][text_col].tolist()[: args.train_docs]]
    test_texts = [str(t) for t in docs["test"][text_col].tolist()[: args.test_docs]]
    t0 = time.perf_counter()
    s_tok = train_bpe(train_texts, args.vocab, work / "tokenizer")
    record = {"bpe_seconds": time.perf_counter() - t0, "runs": {}}
    for arm, losses in (("lm", {"lm": 1.0}), ("kd", {"kd": 0.5, "lm": 0.5})):
        cfg = json.loads(json.dumps(base))
        cfg["output_dir"] = str(work / arm)
        cfg["distill"]["losses"] = losses
        if "kd" in losses and args.top_k:
            cfg["lm"]["top_k"] = args.top_k
        t0 = time.perf_counter()
        res = api.distill(cfg)
        results = json.loads((work / arm / "results.json").read_text())
        record["runs"][arm] = {
            "losses": losses,
            "wall_seconds": time.perf_counter() - t0,
            "train_seconds": res.train_seconds,
            "steps": res.steps,
            "student_parameters": res.parameters,
            "cross_tokenizer": results.get("cross_tokenizer"),
            "split_targets": results.get("split_targets"),
            "last_logged": [r for r in res.history if "loss" in r][-1:],
        }
        print(arm, json.dumps(record["runs"][arm]), flush=True)
    scores = {}
    teacher, t_tok = load_causal_lm(args.teacher, "teacher")
    t0 = time.perf_counter()
    scores["teacher"] = doc_nll(teacher, t_tok, test_texts, args.window)
    record["teacher_eval_seconds"] = time.perf_counter() - t0
    del teacher
    for arm in ("lm", "kd"):
        model, _ = load_causal_lm(str(work / arm / "model"), arm)
        scores[arm] = doc_nll(model, s_tok, test_texts, args.window)
    per_byte = {
        k: {
            "perplexity_per_byte": math.exp(s.sum() / b.sum()),
            "bits_per_byte": s.sum() / b.sum() / math.log(2),
            "documents": len(s),
            "bytes": int(b.sum()),
        }
        for k, (s, b) in scores.items()
    }
    ci = paired_perplexity_bootstrap(*scores["kd"], *scores["lm"], n_resamples=2000, seed=0)
    record.update(
        {
            "command": "python benchmarks/cross_tokenizer_smollm2.py " + " ".join(os.sys.argv[1:]),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": {
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
                "load_average_at_end": list(os.getloadavg()),
            },
            "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__},
            "settings": vars(args),
            "test_per_byte": per_byte,
            "kd_minus_lm_perplexity_per_byte": ci._asdict(),
        }
    )
    print(json.dumps({"test_per_byte": per_byte, "kd_minus_lm": ci._asdict()}, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
