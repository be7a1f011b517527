"""Same results before and after a change: one small run per task, every figure it reports, compared.

Builds tiny models and data in code (the tests' builders; no network, about a minute on 2 cores), runs
finetune / distill (and compress) through the public API for every task: classification (soft targets,
a two-stage recipe, the teacher cache), regression, mlm, general, embedding (bi and cross) and causal_lm
(dense and top-k cache), and writes each run's validation / test figures, steps and logged losses.

    python benchmarks/same_results.py --out /tmp/before.json
    ... change the code ...
    python benchmarks/same_results.py --out /tmp/after.json --compare /tmp/before.json

``--compare`` prints every figure that differs (exit 1 when any does).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402
import torch  # noqa: E402
from tests.conftest import bert_tokenizer, make_sentences, tiny_bert  # noqa: E402


def _figures(out: Path) -> dict:
    """What a finished run reports: results.json (without paths and times) and the logged losses."""
    res = json.loads((out / "results.json").read_text())
    drop = {"output_dir", "model_dir", "train_seconds", "teacher_signal_seconds", "resumed_from"}
    keep = {k: v for k, v in res.items() if k not in drop}
    for part in (keep.get("retrieval", {}), keep):  # retrieval speed is a timing, its set a temporary path
        part.pop("set", None)
        for who in ("teacher", "student", "undistilled_student", "test"):
            part.get(who, {}).pop("texts_per_second", None)
    history = pd.read_csv(out / "metrics.csv")
    keep["history"] = {c: history[c].dropna().round(10).tolist() for c in history.columns if "loss" in c}
    return keep


def _base(tmp: Path, name: str, task: str, data: dict, **sections) -> dict:
    cfg = {
        "task": task,
        "seed": 0,
        "output_dir": str(tmp / name),
        "data": {"validation_size": 0.15, "test_size": 0.15, "max_length": 32, **data},
        "training": {"epochs": 2, "batch_size": 16, "learning_rate": 3e-3, "log_every": 2},
    }
    for k, v in sections.items():
        cfg[k] = {**cfg.get(k, {}), **v} if isinstance(v, dict) else v
    return cfg


def run_all(tmp: Path) -> dict:
    import lmdistill
    from lmdistill import api

    torch.set_num_threads(2)
    out: dict[str, dict] = {}
    tok = bert_tokenizer(tmp)
    base = tmp / "bert"
    tiny_bert(vocab=len(tok)).save_pretrained(base)
    tok.save_pretrained(base)
    csv = tmp / "train.csv"
    pd.DataFrame(make_sentences(240), columns=["text", "label", "score"]).to_csv(csv, index=False)

    # classification: teacher, soft targets + a hidden match, a two-stage recipe, the teacher cache
    cls = {"train": str(csv)}
    lmdistill.finetune(_base(tmp, "cls-teacher", "classification", cls, model={"name_or_path": str(base)}))
    out["classification/finetune"] = _figures(tmp / "cls-teacher")
    teacher = {"name_or_path": str(tmp / "cls-teacher" / "model")}
    runs = {
        "kd": {"distill": {"losses": {"kd": 0.5, "ce": 0.5}, "matches": [{"feature": "hidden"}]}},
        "tinybert": {"distill": {"method": "tinybert"}},
        "cached": {"training": {"teacher_cache": "auto"}},
        "reverse-kl-free": {
            "distill": {"losses": {"kd": 1.0}},
            "student": {"init": "config", "num_layers": 2},
        },
    }
    for name, extra in runs.items():
        student = extra.pop("student", {"layers": [0, 3]})
        cfg = _base(tmp, f"cls-{name}", "classification", cls, teacher=teacher, student=student, **extra)
        lmdistill.distill(cfg)
        out[f"classification/distill-{name}"] = _figures(tmp / f"cls-{name}")

    # regression
    reg = {"train": str(csv), "label_column": "score"}
    lmdistill.finetune(_base(tmp, "reg-teacher", "regression", reg, model={"name_or_path": str(base)}))
    lmdistill.distill(
        _base(
            tmp,
            "reg-student",
            "regression",
            reg,
            teacher={"name_or_path": str(tmp / "reg-teacher" / "model")},
            student={"layers": [1, 2]},
        )
    )
    out["regression/finetune"] = _figures(tmp / "reg-teacher")
    out["regression/distill"] = _figures(tmp / "reg-student")

    # mlm and general on raw text
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    mlm = tmp / "mlm"
    BertForMaskedLM(
        BertConfig(
            vocab_size=len(tok),
            hidden_size=32,
            num_hidden_layers=4,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
        )
    ).save_pretrained(mlm)
    tok.save_pretrained(mlm)
    corpus = tmp / "corpus.txt"
    corpus.write_text("\n".join(t for t, _, _ in make_sentences(200, seed=5)) + "\n")
    raw = {"train": str(corpus), "block_size": 24}
    lmdistill.finetune(_base(tmp, "mlm-finetune", "mlm", raw, model={"name_or_path": str(mlm)}))
    lmdistill.distill(
        _base(
            tmp,
            "mlm-distill",
            "mlm",
            raw,
            teacher={"name_or_path": str(tmp / "mlm-finetune" / "model")},
            distill={"method": "distilbert"},
        )
    )
    lmdistill.distill(
        _base(
            tmp,
            "general",
            "general",
            raw,
            teacher={"name_or_path": str(tmp / "mlm-finetune" / "model")},
            student={"num_layers": 2},
            distill={"method": "minilmv2"},
        )
    )
    for name in ("mlm-finetune", "mlm-distill", "general"):
        out[name] = _figures(tmp / name)

    # embedding: bi (sentence-transformers teacher) and cross (cross-encoder margins)
    from transformers import BertModel

    from lmdistill.tasks.embedding import SentenceEncoder

    torch.manual_seed(0)
    st = tmp / "st"
    enc = BertModel(
        BertConfig(
            vocab_size=len(tok),
            hidden_size=32,
            num_hidden_layers=4,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
        )
    )
    SentenceEncoder(enc, "mean", normalize=True).save(st, tok, max_seq_length=32)
    texts = [t for t, _, _ in make_sentences(120, seed=7)]
    news = tmp / "news.csv"
    pd.DataFrame({"text": texts, "title": [" ".join(t.split()[:3]) for t in texts]}).to_csv(news, index=False)
    lmdistill.distill(
        _base(
            tmp,
            "emb-bi",
            "embedding",
            {"train": str(news)},
            teacher={"name_or_path": str(st)},
            student={"num_layers": 2},
            embedding={"extra_text_columns": ["title"], "retrieval": str(news), "retrieval_max_queries": 30},
        )
    )
    cross = tmp / "cross"
    tiny_bert(num_labels=1, vocab=len(tok)).save_pretrained(cross)
    tok.save_pretrained(cross)
    pairs = tmp / "pairs.jsonl"
    pd.DataFrame({"query": [" ".join(t.split()[:2]) for t in texts], "positive": texts}).to_json(
        pairs, orient="records", lines=True
    )
    lmdistill.distill(
        _base(
            tmp,
            "emb-cross",
            "embedding",
            {"train": str(pairs), "test_size": 0.0},
            teacher={"name_or_path": str(cross)},
            student={"layers": [0, 3]},
            embedding={"mode": "cross"},
        )
    )
    out["embedding/bi"] = _figures(tmp / "emb-bi")
    out["embedding/cross"] = _figures(tmp / "emb-cross")

    # causal LM: teacher, then a dense and a top-k cached student
    from tests.test_causal_lm import tiny_llama, word_tokenizer

    wtok = word_tokenizer()
    llama = tmp / "llama"
    tiny_llama(len(wtok)).save_pretrained(llama)
    wtok.save_pretrained(llama)
    lm_data = {"train": str(csv), "max_length": 24}
    lm = {"block_size": 16}
    lmdistill.finetune(
        _base(tmp, "lm-teacher", "causal_lm", lm_data, model={"name_or_path": str(llama)}, lm=lm)
    )
    lm_teacher = {"name_or_path": str(tmp / "lm-teacher" / "model")}
    lmdistill.distill(
        _base(
            tmp,
            "lm-jsd",
            "causal_lm",
            lm_data,
            teacher=lm_teacher,
            student={"layers": [0, 3]},
            lm={**lm, "divergence": "jsd"},
        )
    )
    lmdistill.distill(
        _base(
            tmp,
            "lm-topk",
            "causal_lm",
            lm_data,
            teacher=lm_teacher,
            student={"layers": [0, 3]},
            lm={**lm, "top_k": 8},
            training={"teacher_cache": "auto"},
        )
    )
    for name in ("lm-teacher", "lm-jsd", "lm-topk"):
        out[f"causal_lm/{name}"] = _figures(tmp / name)

    # compress: teacher, student, baseline, report (quality figures only)
    from lmdistill.pipeline import compress

    res = compress(
        _base(
            tmp,
            "compress",
            "classification",
            cls,
            model={"name_or_path": str(base)},
            student={"layers": [0, 3]},
            report={"energy": False, "latency_repeats": 1, "speed_texts": 8, "bootstrap_resamples": 50},
        )
    )
    out["compress"] = res.test
    del api
    return out


def _diff(a, b, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        lines = []
        for k in sorted(set(a) | set(b), key=str):
            if k not in a or k not in b:
                lines.append(f"{path}/{k}: only in {'after' if k not in a else 'before'}")
            else:
                lines += _diff(a[k], b[k], f"{path}/{k}")
        return lines
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [line for i, (x, y) in enumerate(zip(a, b)) for line in _diff(x, y, f"{path}[{i}]")]
    if isinstance(a, float) and isinstance(b, float) and (a == b or (math.isnan(a) and math.isnan(b))):
        return []
    return [] if a == b else [f"{path}: {a!r} -> {b!r}"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="JSON file for this run's figures")
    p.add_argument("--compare", help="a JSON file of an earlier run: print every figure that differs")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        figures = run_all(Path(tmp))
    Path(args.out).write_text(json.dumps(figures, indent=1, sort_keys=True))
    print(f"wrote {args.out}: {len(figures)} runs")
    if args.compare:
        before = json.loads(Path(args.compare).read_text())
        lines = _diff(before, json.loads(json.dumps(figures)))
        print("\n".join(lines) or "same results: every figure equal")
        return 1 if lines else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
