"""Task metrics from predictions (numpy in, plain floats out)."""

from __future__ import annotations

import re
import string
from collections import Counter

import numpy as np

GREATER_IS_BETTER = {
    "accuracy": True,
    "macro_f1": True,
    "pearson": True,
    "spearman": True,
    "mse": False,
    "rmse": False,
    "loss": False,
}
GREATER_IS_BETTER["perplexity"] = False
# tasks mlm, general, embedding (tasks/mlm.py, tasks/embedding.py, tasks/retrieval.py)
GREATER_IS_BETTER.update(
    {
        "mlm_loss": False,
        "mlm_accuracy": True,
        "teacher_cosine": True,
        "embedding_mse": False,
        "margin_mse": False,
        "pairwise_accuracy": True,
        "recall@1": True,
        "recall@5": True,
        "recall@10": True,
        "mrr@10": True,
        # token_classification, question_answering
        "entity_f1": True,
        "entity_precision": True,
        "entity_recall": True,
        "exact_match": True,
        "f1": True,
    }
)


def classification_metrics(pred: np.ndarray, labels: np.ndarray, num_labels: int) -> dict[str, float]:
    """Accuracy and macro-F1 (F1 averaged over classes that occur in labels or predictions)."""
    pred = np.asarray(pred)
    labels = np.asarray(labels)
    f1s = []
    for c in range(num_labels):
        tp = np.sum((pred == c) & (labels == c))
        fp = np.sum((pred == c) & (labels != c))
        fn = np.sum((pred != c) & (labels == c))
        if tp + fp + fn == 0:
            continue
        f1s.append(2 * tp / (2 * tp + fp + fn))
    return {"accuracy": float(np.mean(pred == labels)), "macro_f1": float(np.mean(f1s)) if f1s else 0.0}


def _rank(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=float)
    ranks[order] = np.arange(len(x), dtype=float)
    # average ranks of ties
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return sums[inverse] / counts[inverse]


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else 0.0


def regression_metrics(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """MSE, RMSE, Pearson and Spearman correlation."""
    pred = np.asarray(pred, dtype=float).reshape(-1)
    target = np.asarray(target, dtype=float).reshape(-1)
    mse = float(np.mean((pred - target) ** 2))
    return {
        "mse": mse,
        "rmse": float(np.sqrt(mse)),
        "pearson": _pearson(pred, target),
        "spearman": _pearson(_rank(pred), _rank(target)),
    }


def is_better(metric: str, new: float, old: float | None) -> bool:
    if old is None:
        return True
    return new > old if GREATER_IS_BETTER.get(metric, True) else new < old


# --------------------------------------------------------------------------------------------- entities


def entities(tags: list[str]) -> set[tuple[str, int, int]]:
    """The entity spans ``(type, first word, last word)`` of a BIO / IOB2 tag sequence, read as conlleval
    and seqeval's default mode do: a span starts at ``B-X``, or at ``I-X`` after ``O`` or another type, and
    ends before ``O``, ``B-``, or an ``I-`` of another type."""
    found, start, kind = set(), None, None
    for i, tag in enumerate([*tags, "O"]):
        prefix, typ = (tag[0], tag[2:]) if tag[:2] in ("B-", "I-") else ("O", "")
        if start is not None and (prefix != "I" or typ != kind):
            found.add((kind, start, i - 1))
            start = None
        if prefix == "B" or (prefix == "I" and start is None):
            start, kind = i, typ
    return found


def entity_counts(gold: list[list[str]], pred: list[list[str]]) -> np.ndarray:
    """Per sentence ``(exact span matches, predicted spans, gold spans)``: ``(N, 3)`` int."""
    rows = []
    for g, p in zip(gold, pred):
        eg, ep = entities(g), entities(p)
        rows.append((len(eg & ep), len(ep), len(eg)))
    return np.asarray(rows, dtype=np.int64).reshape(-1, 3)


def entity_scores(counts: np.ndarray) -> dict[str, float]:
    """Micro-averaged entity precision, recall and F1 from :func:`entity_counts` (0 where undefined)."""
    tp, n_pred, n_gold = (float(x) for x in counts.sum(axis=0))
    return {
        "entity_precision": tp / n_pred if n_pred else 0.0,
        "entity_recall": tp / n_gold if n_gold else 0.0,
        "entity_f1": 2 * tp / (n_pred + n_gold) if n_pred + n_gold else 0.0,
    }


# --------------------------------------------------------------------------------------------- SQuAD

_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD v1.1 evaluation's normalisation: lower-case, drop punctuation, drop the articles a / an / the,
    collapse whitespace (in that order)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def answer_f1(prediction: str, gold: str) -> float:
    """Token F1 of two normalised answers (SQuAD v1.1); when either is empty (no answer, SQuAD 2.0), 1 if both
    are and 0 otherwise."""
    p, g = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not p or not g:
        return float(p == g)
    same = sum((Counter(p) & Counter(g)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def squad_scores(prediction: str, golds: list[str]) -> tuple[float, float]:
    """``(exact match, F1)`` of one prediction: the best over the gold answers (``[""]``: no answer)."""
    golds = golds or [""]
    em = max(float(normalize_answer(prediction) == normalize_answer(g)) for g in golds)
    return em, max(answer_f1(prediction, g) for g in golds)
