"""Data and evaluation of ``task: embedding``: tokenised texts with the teacher's embeddings or margins as
targets, (query, positive, negative) triples, the cross-encoder's scores, and the validation metrics."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from lmdistill.config.schema import Config
from lmdistill.errors import DataError, ModelError
from lmdistill.losses.embedding import embedding_mse, mnrl, similarity
from lmdistill.models.sentence import SentenceEncoder

PARTS = ("query", "positive", "negative")
"""The texts of one example of pairs or triples, in the order a batch stacks them."""


class EmbeddingDataset(Dataset):
    """Student token ids of each text and a target: the teacher's embedding ``(D,)`` or margin ``()``, or none
    (pairs for the no-KD baseline, ``target_key`` None).

    ``inputs``: ``{"input_ids": [[...]], ...}`` for single texts, or ``{"query": {...}, "positive": {...}
    [, "negative": {...}]}`` for pairs and triples.
    """

    def __init__(self, inputs: dict, targets: torch.Tensor | None, target_key: str | None):
        self.inputs = inputs
        self.targets = targets
        self.target_key = target_key
        self.parts = [p for p in PARTS if p in inputs]
        self.triples = bool(self.parts)  # pairs or triples: several texts per example

    def __len__(self) -> int:
        if self.targets is not None:
            return len(self.targets)
        return len(self.inputs[self.parts[0]]["input_ids"] if self.parts else self.inputs["input_ids"])

    def _item(self, block: dict, i: int) -> dict:
        return {k: v[i] for k, v in block.items()}

    def __getitem__(self, i: int) -> dict:
        if self.parts:
            student = {part: self._item(self.inputs[part], i) for part in self.parts}
        else:
            student = self._item(self.inputs, i)
        item = {"index": i, "student": student}
        if self.target_key is not None:
            item[self.target_key] = self.targets[i]
        return item

    def lengths(self) -> list[int]:
        if self.parts:
            return [max(len(self.inputs[p]["input_ids"][i]) for p in self.parts) for i in range(len(self))]
        return [len(x) for x in self.inputs["input_ids"]]


class EmbeddingCollator:
    """Pads texts (pairs / triples: queries, then positives, then negatives, in ONE block) and stacks the
    targets (when there are any)."""

    def __init__(self, pad_token_id: int, target_key: str | None, multiple: int = 8):
        self.pad_token_id = pad_token_id
        self.target_key = target_key
        self.multiple = multiple

    def __call__(self, items: list[dict]) -> dict:
        from lmdistill.data.text import pad_block

        parts = [p for p in PARTS if p in items[0]["student"]]
        if parts:
            texts = [it["student"][p] for p in parts for it in items]
        else:
            texts = [it["student"] for it in items]
        batch = {
            "index": torch.tensor([it["index"] for it in items], dtype=torch.long),
            "student": pad_block(texts, self.pad_token_id, self.multiple),
        }
        if self.target_key is not None:
            batch[self.target_key] = torch.stack([it[self.target_key] for it in items])
        return batch


def tokenize(tokenizer, texts: list[str], max_length: int) -> dict[str, list[list[int]]]:
    enc = tokenizer(texts, truncation=True, max_length=max_length, padding=False)
    return {k: list(enc[k]) for k in ("input_ids", "token_type_ids") if k in enc}


@torch.no_grad()
def cross_scores(
    model: nn.Module,
    tokenizer,
    queries: list[str],
    passages: list[str],
    *,
    batch_size: int = 64,
    max_length: int = 256,
) -> torch.Tensor:
    """A cross-encoder's relevance score per (query, passage): its logit (one label) or
    ``logit_1 - logit_0`` (two labels). ``(N,)`` float32 on the CPU."""
    n_labels = model.config.num_labels
    if n_labels > 2:
        raise ModelError(
            f"teacher.name_or_path: a cross-encoder scores relevance with 1 or 2 labels, this one "
            f"has {n_labels}"
        )
    device = next(model.parameters()).device
    model.eval()
    out = []
    for s in range(0, len(queries), batch_size):
        enc = tokenizer(
            queries[s : s + batch_size],
            passages[s : s + batch_size],
            truncation=True,
            max_length=max_length,
            padding=True,
            return_tensors="pt",
        )
        logits = model(**{k: v.to(device) for k, v in enc.items()}).logits.float()
        out.append((logits[:, 0] if n_labels == 1 else logits[:, 1] - logits[:, 0]).cpu())
    return torch.cat(out) if out else torch.zeros(0)


def triples(
    frame, cfg: Config, split: str, limit: int | None, seed: int
) -> tuple[list[str], list[str], list[str]]:
    """(queries, positives, negatives) of one split; without ``embedding.negative_column`` the negative of a
    row is the positive of another row (a different text), drawn with ``seed``."""
    e = cfg.embedding
    frame = frame.iloc[:limit] if limit is not None else frame
    cols = [(e.query_column, "query_column"), (e.positive_column, "positive_column")]
    if e.negative_column:
        cols.append((e.negative_column, "negative_column"))
    for col, key in cols:
        if col not in frame.columns:
            raise DataError(
                f"embedding.{key}: column '{col}' not found in the {split} data "
                f"(columns: {', '.join(map(str, frame.columns[:20]))}); set embedding.{key}"
            )
    q = [str(x) for x in frame[e.query_column]]
    p = [str(x) for x in frame[e.positive_column]]
    if e.negative_column:
        return q, p, [str(x) for x in frame[e.negative_column]]
    if len(set(p)) < 2:
        raise DataError(
            f"data.{split}: random negatives need at least two different positives; "
            "set embedding.negative_column"
        )
    rng = np.random.default_rng(seed)
    negatives = []
    for i in range(len(p)):
        j = int(rng.integers(len(p)))
        while p[j] == p[i]:
            j = int(rng.integers(len(p)))
        negatives.append(p[j])
    return q, p, negatives


def pairs(frame, cfg: Config, split: str, limit: int | None) -> tuple[list[str], list[str]]:
    """(anchors, positives) of one split for the no-KD baseline (``distill.losses: {mnrl: 1}``): the columns
    ``embedding.query_column`` and ``embedding.positive_column`` of each row with both texts non-empty."""
    e = cfg.embedding
    frame = frame.iloc[:limit] if limit is not None else frame
    for col, key in ((e.query_column, "query_column"), (e.positive_column, "positive_column")):
        if col not in frame.columns:
            raise DataError(
                f"embedding.{key}: column '{col}' not found in the {split} data "
                f"(columns: {', '.join(map(str, frame.columns[:20]))}); set embedding.{key} (the pairs the "
                "no-KD baseline trains on)"
            )
    rows = [
        (str(a).strip(), str(p).strip())
        for a, p in zip(frame[e.query_column], frame[e.positive_column])
        if a is not None and p is not None and a == a and p == p and str(a).strip() and str(p).strip()
    ]
    if split == "train" and len(rows) < 2:
        raise DataError(
            f"data.{split}: in-batch negatives need at least 2 rows with both embedding.query_column "
            f"'{e.query_column}' and embedding.positive_column '{e.positive_column}', found {len(rows)}"
        )
    return [a for a, _ in rows], [p for _, p in rows]


# ------------------------------------------------------------------------------------------------ evaluation


def bi_metrics(
    encoder: SentenceEncoder,
    tokenizer,
    texts: list[str],
    targets: torch.Tensor,
    loss: str,
    batch_size: int,
    max_length: int,
) -> dict[str, float]:
    """``loss``, ``teacher_cosine`` (mean cosine with the teacher's embedding) and ``embedding_mse``."""
    s = encoder.encode(texts, tokenizer, batch_size=batch_size, max_length=max_length, normalize=False)
    mse = float(embedding_mse(s, targets).mean())
    cos = float(F.cosine_similarity(s, targets.float(), dim=-1).mean())
    return {"loss": mse if loss == "mse" else 1.0 - cos, "teacher_cosine": cos, "embedding_mse": mse}


def cross_metrics(
    encoder: SentenceEncoder,
    tokenizer,
    q: list[str],
    p: list[str],
    n: list[str],
    margins: torch.Tensor,
    kind: str,
    batch_size: int,
    max_length: int,
) -> dict[str, float]:
    """``loss`` = ``margin_mse``, and ``pairwise_accuracy`` (share of triples the student orders right)."""
    enc = [
        encoder.encode(x, tokenizer, batch_size=batch_size, max_length=max_length, normalize=False)
        for x in (q, p, n)
    ]
    m = similarity(enc[0], enc[1], kind) - similarity(enc[0], enc[2], kind)
    mse = float((m - margins).pow(2).mean())
    return {"loss": mse, "margin_mse": mse, "pairwise_accuracy": float((m > 0).float().mean())}


def retrieval_set(cfg: Config, frames: dict):
    """The :class:`RetrievalSet` named by ``embedding.retrieval`` (its test split when it is ``data.dataset``)."""
    from lmdistill.data.builtin import BUILTIN_DATASETS, load_builtin
    from lmdistill.data.tables import read_table
    from lmdistill.tasks.retrieval import make_retrieval_set

    e = cfg.embedding
    if e.retrieval == cfg.data.dataset:
        if "test" not in frames:
            raise DataError(
                "embedding.retrieval: it names data.dataset, so only the test split is searched (the rest "
                "trains the student), and there is none: set data.test_size above 0"
            )
        frame = frames["test"]
    elif e.retrieval in BUILTIN_DATASETS:
        frame = load_builtin(e.retrieval)
    else:
        frame = read_table(e.retrieval, "embedding.retrieval")
    return make_retrieval_set(
        frame,
        e.retrieval_query_column,
        e.retrieval_document_column,
        max_queries=e.retrieval_max_queries,
        seed=cfg.seed,
        name=str(e.retrieval),
    )


def pair_metrics(
    encoder: SentenceEncoder,
    tokenizer,
    anchors: list[str],
    positives: list[str],
    group: int,
    batch_size: int,
    max_length: int,
) -> dict[str, float]:
    """``loss`` = :func:`~lmdistill.losses.embedding.mnrl` of the validation pairs, in consecutive groups of
    ``group`` pairs (the training batch size: each pair's negatives are the other positives of its group)."""
    a = encoder.encode(anchors, tokenizer, batch_size=batch_size, max_length=max_length, normalize=False)
    p = encoder.encode(positives, tokenizer, batch_size=batch_size, max_length=max_length, normalize=False)
    losses = [mnrl(a[s : s + group], p[s : s + group]) for s in range(0, len(a), group)]
    return {"loss": float(torch.cat(losses).mean()) if losses else float("nan")}
