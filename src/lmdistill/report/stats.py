"""Percentile-bootstrap confidence intervals for task metrics, vectorised with numpy.

Intervals of one model's score, two forms:

* ``bootstrap_ci(values)``: the mean of per-example values (accuracy from 0/1 correctness, a loss).
* ``bootstrap_ci((y_true, y_pred), metric_fn)``: any metric of paired arrays (macro-F1, Pearson). The
  same resampled indices are applied to every array, so pairs stay together. ``metric_fn`` receives
  arrays of shape ``(resamples, n)`` and returns one value per row; the functions below do, and
  :func:`metric_ci` picks one by name.

The same ``seed`` gives the same interval. Metric definitions match :mod:`lmdistill.tasks.metrics`
(macro-F1 over the classes present in labels or predictions; a correlation of a constant is 0).

Comparisons of two models on the same test examples (paired tests), calibration and agreement live in
:mod:`lmdistill.report.paired` and are importable from here too: :func:`paired_bootstrap`,
:func:`paired_bootstrap_values`, :func:`paired_perplexity_bootstrap`, :func:`seed_example_bootstrap`,
:func:`mcnemar_exact`, :func:`expected_calibration_error`, :func:`ece_ci`, :func:`agreement`,
:func:`agreement_ci`, :func:`verdict`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import numpy as np

MetricFn = Callable[..., np.ndarray]
MAX_ELEMENTS = 4_000_000  # resampled indices held at once (32 MB of int64)


class CI(NamedTuple):
    """A point estimate and its confidence interval."""

    point: float
    low: float
    high: float


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Share of rows' entries where prediction equals label; shape (B, n) -> (B,)."""
    return (y_true == y_pred).mean(axis=-1)


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """F1 averaged over the classes occurring in each row's labels or predictions; (B, n) -> (B,)."""
    f1_sum = np.zeros(y_true.shape[0])
    present = np.zeros(y_true.shape[0])
    for c in np.unique(np.concatenate([np.unique(y_true), np.unique(y_pred)])):
        is_true, is_pred = y_true == c, y_pred == c
        tp = (is_true & is_pred).sum(axis=-1)
        errors = (is_true ^ is_pred).sum(axis=-1)  # false positives + false negatives
        denom = 2 * tp + errors
        f1_sum += np.divide(2 * tp, denom, out=np.zeros(len(denom)), where=denom > 0)
        present += denom > 0
    return np.divide(f1_sum, present, out=np.zeros(len(present)), where=present > 0)


def pearson(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Pearson correlation per row (0 where a row is constant); (B, n) -> (B,)."""
    a = y_true - y_true.mean(axis=-1, keepdims=True)
    b = y_pred - y_pred.mean(axis=-1, keepdims=True)
    denom = np.sqrt((a * a).sum(axis=-1) * (b * b).sum(axis=-1))
    return np.divide((a * b).sum(axis=-1), denom, out=np.zeros(len(denom)), where=denom > 0)


def _rank_rows(x: np.ndarray) -> np.ndarray:
    """Ranks within each row, ties sharing their average rank."""
    rows, n = x.shape
    order = np.argsort(x, axis=-1, kind="mergesort")
    sorted_x = np.take_along_axis(x, order, axis=-1)
    starts = np.ones((rows, n), dtype=bool)
    starts[:, 1:] = sorted_x[:, 1:] != sorted_x[:, :-1]
    group = np.cumsum(starts, axis=-1) - 1 + (np.arange(rows) * n)[:, None]  # tie group, unique per row
    position = np.broadcast_to(np.arange(n, dtype=float), (rows, n))
    sums = np.bincount(group.ravel(), weights=position.ravel(), minlength=rows * n)
    counts = np.maximum(np.bincount(group.ravel(), minlength=rows * n), 1)
    ranks = np.empty((rows, n))
    np.put_along_axis(ranks, order, (sums / counts)[group], axis=-1)
    return ranks


def spearman(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Spearman rank correlation per row (Pearson of average ranks); (B, n) -> (B,)."""
    return pearson(_rank_rows(y_true), _rank_rows(y_pred))


def mse(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Mean squared error per row; (B, n) -> (B,)."""
    return ((y_pred - y_true) ** 2).mean(axis=-1)


def rmse(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Root mean squared error per row; (B, n) -> (B,)."""
    return np.sqrt(mse(y_true, y_pred))


PAIRED_METRICS: dict[str, MetricFn] = {
    "accuracy": accuracy,
    "macro_f1": macro_f1,
    "pearson": pearson,
    "spearman": spearman,
    "mse": mse,
    "rmse": rmse,
}


def _mean(values: np.ndarray) -> np.ndarray:
    return values.mean(axis=-1)


def _as_arrays(data: Sequence | np.ndarray, metric_fn: MetricFn | None) -> list[np.ndarray]:
    arrays = [np.asarray(a) for a in data] if metric_fn is not None else [np.asarray(data, dtype=float)]
    if any(a.ndim != 1 for a in arrays) or len({len(a) for a in arrays}) != 1 or len(arrays[0]) == 0:
        raise ValueError(
            "bootstrap_ci needs one non-empty 1-D array, or 1-D arrays of one length with metric_fn"
        )
    if any(a.dtype.kind == "f" and not np.isfinite(a).all() for a in arrays):
        raise ValueError("bootstrap_ci got NaN or infinite values")
    return arrays


def _index_chunks(rng: np.random.Generator, n: int, n_resamples: int) -> Iterator[np.ndarray]:
    rows = max(1, MAX_ELEMENTS // n)
    for start in range(0, n_resamples, rows):
        yield rng.integers(0, n, size=(min(rows, n_resamples - start), n))


def bootstrap_ci(
    data: Sequence | np.ndarray,
    metric_fn: MetricFn | None = None,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> CI:
    """Percentile-bootstrap interval: ``CI(point, low, high)``.

    ``data`` is per-example values (the statistic is their mean) or, with ``metric_fn``, a sequence of
    paired arrays such as ``(y_true, y_pred)``. ``n_resamples`` resamples of n examples drawn with
    replacement (deterministic per ``seed``); low/high are the (1 - confidence)/2 and (1 + confidence)/2
    quantiles of the resampled statistic; point is the statistic on the data itself.
    """
    if n_resamples < 1 or not 0 < confidence < 1:
        raise ValueError("bootstrap_ci needs n_resamples >= 1 and 0 < confidence < 1")
    arrays = _as_arrays(data, metric_fn)
    statistic = metric_fn or _mean
    point = float(statistic(*[a[None, :] for a in arrays])[0])
    rng = np.random.default_rng(seed)
    chunks = [statistic(*[a[idx] for a in arrays]) for idx in _index_chunks(rng, len(arrays[0]), n_resamples)]
    tail = (1 - confidence) / 2
    low, high = np.quantile(np.concatenate(chunks), [tail, 1 - tail])
    return CI(point, float(low), float(high))


def metric_ci(name: str, y_true: Sequence | np.ndarray, y_pred: Sequence | np.ndarray, **kwargs) -> CI:
    """:func:`bootstrap_ci` of a named metric (``PAIRED_METRICS``: accuracy, macro_f1, pearson,
    spearman, mse, rmse) on paired labels and predictions (class ids, or floats for regression)."""
    if name not in PAIRED_METRICS:
        raise ValueError(f"no bootstrap for metric {name!r}; known: {', '.join(PAIRED_METRICS)}")
    return bootstrap_ci((y_true, y_pred), PAIRED_METRICS[name], **kwargs)


def perplexity_ci(nll_sums: Sequence | np.ndarray, token_counts: Sequence | np.ndarray, **kwargs) -> CI:
    """:func:`bootstrap_ci` of a perplexity, ``exp(sum of NLL / number of tokens)``, resampling whole
    sequences (the tokens of one text are not independent): per-sequence NLL sums and token counts."""
    counts = np.asarray(token_counts, dtype=float)
    if counts.ndim != 1 or not (counts > 0).all():
        raise ValueError("perplexity_ci needs a positive token count for every sequence")
    return bootstrap_ci(
        (np.asarray(nll_sums, dtype=float), counts),
        lambda nll, n: np.exp(nll.sum(axis=-1) / n.sum(axis=-1)),
        **kwargs,
    )


_PAIRED = (
    "McNemar",
    "PairedCI",
    "agreement",
    "agreement_ci",
    "ece_ci",
    "expected_calibration_error",
    "mcnemar_exact",
    "paired_bootstrap",
    "paired_bootstrap_values",
    "paired_perplexity_bootstrap",
    "seed_example_bootstrap",
    "verdict",
)


def __getattr__(name: str):
    """``from lmdistill.report.stats import paired_bootstrap`` etc.: the paired tests live in
    :mod:`lmdistill.report.paired`, which builds on this module (so it is imported on first use)."""
    if name in _PAIRED:
        from lmdistill.report import paired

        return getattr(paired, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
