"""Task metrics from predictions (numpy in, plain floats out)."""

from __future__ import annotations

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
        "recall@10": True,
        "mrr@10": True,
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
