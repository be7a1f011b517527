"""Tokenisation, datasets and batching for text tasks.

Each model gets the text tokenised its own way: when the teacher's tokenizer differs from the
student's (an MPNet teacher, a BERT student), every batch carries one input block per model.
Class logits do not depend on the vocabulary, so output-level knowledge still transfers.
Batches are padded to the longest example (rounded up to a multiple of 8), never to max_length.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from lmdistill.data.tables import Examples


def tokenizers_match(a, b) -> bool:
    """True when two tokenizers turn every text into the same ids (same class, vocabulary, specials)."""
    if a is b:
        return True
    if type(a).__name__ != type(b).__name__:
        return False
    return a.get_vocab() == b.get_vocab() and a.all_special_ids == b.all_special_ids


# model types whose position ids start after the padding index (usable positions = table size - pad - 1)
_OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert", "mpnet")


def position_limit(model) -> int | None:
    """How many tokens a model's position embeddings can take (None when unbounded or unknown)."""
    cfg = getattr(model, "config", None)
    n = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
    if not isinstance(n, int):
        return None
    if cfg.model_type in _OFFSET_POSITIONS:
        n -= (getattr(cfg, "pad_token_id", None) or 0) + 1
    return n


def max_length_for(wanted: int, *models) -> int:
    """``wanted`` (data.max_length), cut to the smallest position limit of ``models``; says when it cuts."""
    limits = [n for n in (position_limit(m) for m in models if m is not None) if n]
    if limits and min(limits) < wanted:
        print(
            f"note: data.max_length={wanted} is more than the model's {min(limits)} positions; "
            f"texts are cut to {min(limits)} tokens"
        )
        return min(limits)
    return wanted


def encode(tokenizer, examples: Examples, max_length: int) -> dict[str, list[list[int]]]:
    """Tokenise a split without padding: ``{"input_ids": [[...], ...], "token_type_ids": ...}``."""
    args = (examples.texts, examples.pairs) if examples.pairs is not None else (examples.texts,)
    enc = tokenizer(*args, truncation=True, max_length=max_length, padding=False)
    keep = ("input_ids", "token_type_ids")
    return {k: list(enc[k]) for k in keep if k in enc}


class TextDataset(Dataset):
    """Pre-tokenised examples for the student (and the teacher when its tokenizer differs)."""

    def __init__(
        self,
        student: dict[str, list[list[int]]],
        labels: list,
        teacher: dict[str, list[list[int]]] | None = None,
        regression: bool = False,
    ):
        self.student = student
        self.teacher = teacher
        self.labels = torch.tensor(labels, dtype=torch.float32 if regression else torch.long)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        item = {"index": i, "labels": self.labels[i], "student": {k: v[i] for k, v in self.student.items()}}
        if self.teacher is not None:
            item["teacher"] = {k: v[i] for k, v in self.teacher.items()}
        return item

    def lengths(self) -> list[int]:
        """Student token counts per example (for length-grouped batching)."""
        return [len(ids) for ids in self.student["input_ids"]]


def pad_block(items: list[dict[str, list[int]]], pad_id: int, multiple: int = 8) -> dict[str, torch.Tensor]:
    """Pad one model's inputs to the batch's longest (rounded up to ``multiple``); adds attention_mask."""
    longest = max(len(it["input_ids"]) for it in items)
    length = -(-longest // multiple) * multiple
    out = {}
    for key in items[0]:
        fill = pad_id if key == "input_ids" else 0
        out[key] = torch.tensor(
            [it[key] + [fill] * (length - len(it[key])) for it in items], dtype=torch.long
        )
    out["attention_mask"] = torch.tensor(
        [[1] * len(it["input_ids"]) + [0] * (length - len(it["input_ids"])) for it in items], dtype=torch.long
    )
    return out


class Collator:
    """Collate :class:`TextDataset` items into ``{"student": {...}, "teacher": {...}?, "labels", "index"}``."""

    def __init__(self, student_pad_id: int, teacher_pad_id: int | None = None, multiple: int = 8):
        self.student_pad_id = student_pad_id
        self.teacher_pad_id = teacher_pad_id
        self.multiple = multiple

    def __call__(self, items: list[dict]) -> dict:
        batch = {
            "index": torch.tensor([it["index"] for it in items], dtype=torch.long),
            "labels": torch.stack([it["labels"] for it in items]),
            "student": pad_block([it["student"] for it in items], self.student_pad_id, self.multiple),
        }
        if "teacher" in items[0]:
            batch["teacher"] = pad_block([it["teacher"] for it in items], self.teacher_pad_id, self.multiple)
        return batch


class OwnInputs(Dataset):
    """One model's own tokenization of the training examples (a teacher whose tokenizer differs from the
    student's): ``own(index)`` pads the inputs of examples ``index``; as a dataset its items are
    ``{"index", "teacher"}``, which ``own.collate`` pads (a teacher cache is built from them)."""

    def __init__(self, encoded: dict[str, list[list[int]]], pad_id: int):
        self.encoded, self.pad_id = encoded, pad_id

    def item(self, i: int) -> dict[str, list[int]]:
        return {k: v[i] for k, v in self.encoded.items()}

    def __len__(self) -> int:
        return len(self.encoded["input_ids"])

    def __getitem__(self, i: int) -> dict:
        return {"index": i, "teacher": self.item(i)}

    def __call__(self, index: list[int]) -> dict[str, torch.Tensor]:
        return pad_block([self.item(i) for i in index], self.pad_id)

    def collate(self, items: list[dict]) -> dict:
        return {
            "index": torch.tensor([it["index"] for it in items], dtype=torch.long),
            "teacher": pad_block([it["teacher"] for it in items], self.pad_id),
        }


def pad_id(tokenizer) -> int:
    """The tokenizer's pad id; falls back to eos for decoder tokenizers that have no pad token."""
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    if tokenizer.eos_token_id is not None:
        return tokenizer.eos_token_id
    return 0


# a few fixed sequence lengths for torch.compile (training.compile): 32, 48, 64, 96, 128, 192, 256, ...
BUCKETS = tuple(sorted(b * 2**i for b in (32, 48) for i in range(9)))


def bucket_length(longest: int, cap: int | None = None) -> int:
    """The smallest bucket >= ``longest`` (beyond the last: a multiple of it), at most ``cap`` (the models'
    position limit) unless ``longest`` itself is longer."""
    last = BUCKETS[-1]
    length = next((b for b in BUCKETS if b >= longest), -(-longest // last) * last)
    return max(longest, min(length, cap)) if cap is not None else length


class BucketPad:
    """Wraps a collator: pads every ``(B, T)`` tensor of the model inputs (and token-level labels, with
    -100) on the right to :func:`bucket_length`, so a compiled model sees a bounded number of shapes."""

    def __init__(self, collate, cap: int | None = None):
        self.collate = collate
        self.cap = cap

    def __call__(self, items: list[dict]) -> dict:
        batch = self.collate(items)
        for side in ("student", "teacher"):
            block = batch.get(side)
            if block is None:
                continue
            t = block["attention_mask"].shape[1]
            extra = bucket_length(t, self.cap) - t
            if extra <= 0:
                continue
            for key, x in block.items():
                if x.dim() == 2 and x.shape[1] == t:
                    block[key] = torch.nn.functional.pad(x, (0, extra), value=0)  # masked: any id will do
            labels = batch.get("labels")
            if (
                side == "student"
                and isinstance(labels, torch.Tensor)
                and labels.dim() == 2
                and labels.shape[1] == t
            ):
                batch["labels"] = torch.nn.functional.pad(labels, (0, extra), value=-100)
        return batch
