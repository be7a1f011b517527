"""Model inputs for the measurements: texts tokenised once into padded batches, and one pass over them."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn


def _pad(encoding: Mapping[str, Sequence[Sequence[int]]], pad_id: int, device: torch.device) -> dict:
    width = max(len(row) for row in encoding["input_ids"])
    batch = {}
    for key, rows in encoding.items():
        fill = pad_id if key == "input_ids" else 0
        padded = [list(row) + [fill] * (width - len(row)) for row in rows]
        batch[key] = torch.tensor(padded, dtype=torch.long, device=device)
    return batch


def prepare_batches(
    tokenizer: Any,
    texts: Sequence[str],
    *,
    batch_size: int,
    max_length: int = 128,
    text_pairs: Sequence[str] | None = None,
    device: str | torch.device = "cpu",
) -> list[dict[str, torch.Tensor]]:
    """Tokenise once into full batches of ``batch_size`` (texts are cycled to fill the last one).

    Each batch is truncated to ``max_length`` tokens and right-padded to its longest row, with the
    tokenizer's pad id (0 where it has none: the attention mask hides those positions anyway), so the
    tokenizer is never modified.
    """
    if batch_size < 1 or not texts:
        raise ValueError("prepare_batches needs batch_size >= 1 and at least one text")
    if text_pairs is not None and len(text_pairs) != len(texts):
        raise ValueError(f"text_pairs has {len(text_pairs)} entries for {len(texts)} texts")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    order = [i % len(texts) for i in range(math.ceil(len(texts) / batch_size) * batch_size)]
    batches = []
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        pairs = [text_pairs[i] for i in rows] if text_pairs is not None else None
        encoding = tokenizer([texts[i] for i in rows], pairs, truncation=True, max_length=max_length)
        batches.append(_pad(encoding, pad_id, torch.device(device)))
    return batches


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """model.eval() and torch.inference_mode() inside; the previous train/eval mode is restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield model
    finally:
        model.train(was_training)


def run_inference(model: nn.Module, batches: Sequence[Mapping[str, torch.Tensor]]) -> int:
    """One forward pass over every batch (eval and inference mode); returns the number of examples."""
    with _eval_mode(model):
        for batch in batches:
            model(**batch)
    return sum(len(batch["input_ids"]) for batch in batches)
