"""Paired comparisons of two models on the same test examples, calibration and agreement.

Two models scored on the same examples are compared by resampling the examples ONCE per bootstrap
resample and computing both scores on that resample (a paired bootstrap, Efron & Tibshirani 1993,
ch. 16; for NLP, Koehn 2004 "Statistical Significance Tests for Machine Translation Evaluation",
Berg-Kirkpatrick et al. 2012). Whether two per-model 95% intervals overlap is not a test: the two
scores share their examples, so most of their noise cancels in the difference, and overlapping
intervals are common for a difference that a paired test finds clearly.

* :func:`paired_bootstrap`: difference of a metric of paired arrays (accuracy, macro-F1, Pearson, ...).
* :func:`paired_bootstrap_values`: difference of means of per-example values (reciprocal rank, hit@k).
* :func:`paired_perplexity_bootstrap`: difference of perplexities, resampling whole sequences.
* :func:`seed_example_bootstrap`: two variants trained with several seeds, resampling seeds and examples.
* :func:`mcnemar_exact`: McNemar's exact test on per-example correctness.
* :func:`expected_calibration_error`, :func:`ece_ci`: calibration (Guo et al. 2017, eq. 3).
* :func:`agreement`, :func:`agreement_ci`: share of identical predictions (student vs teacher).
* :func:`verdict`, :func:`comparison`: the words and the report entry for a comparison.

Every p-value of the bootstraps here is the two-sided percentile-bootstrap p-value
``min(1, 2 * min(share of resampled differences <= 0, share >= 0))``: how far the bootstrap
distribution of the difference reaches across 0 (it is below ``1 - confidence`` exactly when the
percentile interval lies on one side of 0, up to the quantile interpolation). 0 means that no
resample crossed 0: read it as ``p < 1 / n_resamples``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from lmdistill.report.stats import CI, MAX_ELEMENTS, PAIRED_METRICS, MetricFn, _index_chunks, bootstrap_ci

NOT_DISTINGUISHABLE = "not distinguishable at {}"


class PairedCI(NamedTuple):
    """A difference ``a - b`` with its percentile-bootstrap interval and two-sided bootstrap p-value."""

    point: float
    low: float
    high: float
    p_value: float


class McNemar(NamedTuple):
    """McNemar's exact test: examples only ``a`` got right, only ``b`` got right, two-sided p-value."""

    a_only: int
    b_only: int
    p_value: float


# --------------------------------------------------------------------------------------------- checks


def _metric_fn(metric: str | MetricFn) -> MetricFn:
    if callable(metric):
        return metric
    if metric not in PAIRED_METRICS:
        raise ValueError(f"no paired bootstrap for metric {metric!r}; known: {', '.join(PAIRED_METRICS)}")
    return PAIRED_METRICS[metric]


def _vectors(who: str, *arrays: Sequence | np.ndarray, dtype: Any = None) -> list[np.ndarray]:
    """1-D arrays of one non-zero length with finite values, or a ValueError naming ``who``."""
    out = [np.asarray(a, dtype=dtype) for a in arrays]
    shapes = [a.shape for a in out]
    if any(a.ndim != 1 for a in out) or len(set(shapes)) != 1 or out[0].size == 0:
        raise ValueError(
            f"{who} needs non-empty 1-D arrays of one length (one entry per example); got {shapes}"
        )
    if any(a.dtype.kind == "f" and not np.isfinite(a).all() for a in out):
        raise ValueError(f"{who} got NaN or infinite values")
    return out


def _check_resampling(who: str, n_resamples: int, confidence: float) -> None:
    if n_resamples < 1 or not 0 < confidence < 1:
        raise ValueError(f"{who} needs n_resamples >= 1 and 0 < confidence < 1")


def _summarise(point: float, diffs: np.ndarray, confidence: float) -> PairedCI:
    """Percentile interval and two-sided bootstrap p-value of resampled differences ``diffs`` (R,)."""
    tail = (1 - confidence) / 2
    low, high = np.quantile(diffs, [tail, 1 - tail])
    p_value = min(1.0, 2 * min(float((diffs <= 0).mean()), float((diffs >= 0).mean())))
    return PairedCI(float(point), float(low), float(high), p_value)


def _paired(
    diff_of: Callable[[np.ndarray], np.ndarray], n: int, n_resamples: int, confidence: float, seed: int
) -> PairedCI:
    """``diff_of(idx)`` maps example indices (B, n) to the difference a - b per row (B,); rows of
    indices drawn as in :func:`~lmdistill.report.stats.bootstrap_ci` (same ``seed``, same draws)."""
    point = float(diff_of(np.arange(n)[None, :])[0])
    rng = np.random.default_rng(seed)
    diffs = np.concatenate([diff_of(idx) for idx in _index_chunks(rng, n, n_resamples)])
    return _summarise(point, diffs, confidence)


# --------------------------------------------------------------------------------------------- bootstraps


def paired_bootstrap(
    metric: str | MetricFn,
    gold: Sequence | np.ndarray,
    pred_a: Sequence | np.ndarray,
    pred_b: Sequence | np.ndarray,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> PairedCI:
    """``metric(gold, a) - metric(gold, b)`` with a paired percentile-bootstrap interval and p-value.

    Each resample draws n example indices with replacement and scores BOTH models on those same
    examples. ``metric``: a name of :data:`~lmdistill.report.stats.PAIRED_METRICS` or a function
    ``(gold (B, n), pred (B, n)) -> (B,)``. ``gold``, ``pred_a``, ``pred_b``: (n,) labels and
    predictions (class ids, or floats for regression). Same ``seed``, same interval.
    """
    _check_resampling("paired_bootstrap", n_resamples, confidence)
    fn = _metric_fn(metric)
    gold, a, b = _vectors("paired_bootstrap", gold, pred_a, pred_b)
    return _paired(
        lambda idx: fn(gold[idx], a[idx]) - fn(gold[idx], b[idx]), len(gold), n_resamples, confidence, seed
    )


def paired_bootstrap_values(
    values_a: Sequence | np.ndarray,
    values_b: Sequence | np.ndarray,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> PairedCI:
    """``mean(values_a) - mean(values_b)`` for a metric that is a mean of per-example values (per-query
    reciprocal rank, recall hit, 0/1 correctness), with a paired bootstrap: (n,) values per model, the
    i-th of each from the same example."""
    _check_resampling("paired_bootstrap_values", n_resamples, confidence)
    a, b = _vectors("paired_bootstrap_values", values_a, values_b, dtype=float)
    diff = a - b  # the mean of differences is the difference of means, resample by resample
    return _paired(lambda idx: diff[idx].mean(axis=-1), len(diff), n_resamples, confidence, seed)


def paired_perplexity_bootstrap(
    nll_sums_a: Sequence | np.ndarray,
    token_counts_a: Sequence | np.ndarray,
    nll_sums_b: Sequence | np.ndarray,
    token_counts_b: Sequence | np.ndarray,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> PairedCI:
    """``ppl(a) - ppl(b)`` with ``ppl = exp(sum of NLL / number of tokens)``, resampling whole sequences
    (the same sequences for both models). Inputs: (n,) per-sequence NLL sums (nats) and predicted-token
    counts of each model (the counts differ between models only when their tokenizers do; the
    perplexities are then per a different token and not directly comparable)."""
    _check_resampling("paired_perplexity_bootstrap", n_resamples, confidence)
    nll_a, n_a, nll_b, n_b = _vectors(
        "paired_perplexity_bootstrap", nll_sums_a, token_counts_a, nll_sums_b, token_counts_b, dtype=float
    )
    if not ((n_a > 0).all() and (n_b > 0).all()):
        raise ValueError("paired_perplexity_bootstrap needs a positive token count for every sequence")

    def diff_of(idx: np.ndarray) -> np.ndarray:
        ppl_a = np.exp(nll_a[idx].sum(axis=-1) / n_a[idx].sum(axis=-1))
        return ppl_a - np.exp(nll_b[idx].sum(axis=-1) / n_b[idx].sum(axis=-1))

    return _paired(diff_of, len(nll_a), n_resamples, confidence, seed)


def _seed_example_chunks(
    rng: np.random.Generator, seeds: int, n: int, n_resamples: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Per chunk of B resamples: drawn seeds (B, S), then drawn examples (B, n), in that order."""
    rows = max(1, MAX_ELEMENTS // (n + seeds))
    for start in range(0, n_resamples, rows):
        size = min(rows, n_resamples - start)
        yield rng.integers(0, seeds, size=(size, seeds)), rng.integers(0, n, size=(size, n))


def seed_example_bootstrap(
    metric: str | MetricFn,
    gold: Sequence | np.ndarray,
    preds_a: np.ndarray,
    preds_b: np.ndarray,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> PairedCI:
    """Two variants each trained with S seeds, paired by seed and by example: ``preds_a``, ``preds_b``
    (S, n), ``gold`` (n,). A resample draws S seeds and n examples with replacement (the same examples
    for every drawn seed); its statistic is the mean over drawn seeds s of
    ``metric(gold[idx], a_s[idx]) - metric(gold[idx], b_s[idx])``. The interval thus covers both the
    seed-to-seed and the test-set variation (a two-level bootstrap; Bouthillier et al. 2021,
    "Accounting for Variance in Machine Learning Benchmarks")."""
    _check_resampling("seed_example_bootstrap", n_resamples, confidence)
    fn = _metric_fn(metric)
    a, b = np.asarray(preds_a), np.asarray(preds_b)
    (gold,) = _vectors("seed_example_bootstrap", gold)
    if a.ndim != 2 or a.shape != b.shape or a.shape[1] != len(gold) or a.shape[0] == 0:
        raise ValueError(
            f"seed_example_bootstrap needs preds_a and preds_b of shape (seeds, {len(gold)} examples); "
            f"got {a.shape} and {b.shape}"
        )
    S, n = a.shape  # noqa: N806
    point = float((fn(np.broadcast_to(gold, a.shape), a) - fn(np.broadcast_to(gold, b.shape), b)).mean())
    rng = np.random.default_rng(seed)
    diffs = []
    for drawn, idx in _seed_example_chunks(rng, S, n, n_resamples):
        g = gold[idx]  # (B, n)
        total = np.zeros(len(idx))
        for j in range(S):
            s = drawn[:, j, None]  # (B, 1): the j-th drawn seed of each resample
            total += fn(g, a[s, idx]) - fn(g, b[s, idx])
        diffs.append(total / S)
    return _summarise(point, np.concatenate(diffs), confidence)


# --------------------------------------------------------------------------------------------- McNemar


def mcnemar_exact(correct_a: Sequence | np.ndarray, correct_b: Sequence | np.ndarray) -> McNemar:
    """McNemar's exact test (McNemar 1947; exact binomial form) on per-example correctness (n,) of two
    models: of the b + c discordant examples (only a right: b, only b right: c), under "equally good"
    each is a's with probability 1/2, so ``p = min(1, 2 * P(X <= min(b, c)))``, X ~ Binomial(b + c, 1/2);
    p = 1 without discordant examples. Exact integer arithmetic (no scipy)."""
    a, b = _vectors("mcnemar_exact", correct_a, correct_b)
    if not (np.isin(a, (0, 1)).all() and np.isin(b, (0, 1)).all()):
        raise ValueError("mcnemar_exact needs per-example correctness: booleans or 0/1 values")
    a, b = a.astype(bool), b.astype(bool)
    a_only, b_only = int((a & ~b).sum()), int((~a & b).sum())
    m, k = a_only + b_only, min(a_only, b_only)
    if m == 0:
        return McNemar(a_only, b_only, 1.0)
    term, tail = 1, 1  # C(m, 0); then C(m, i) = C(m, i - 1) * (m - i + 1) / i
    for i in range(1, k + 1):
        term = term * (m - i + 1) // i
        tail += term
    return McNemar(a_only, b_only, min(1.0, 2 * tail / 2**m))


# --------------------------------------------------------------------------------------------- calibration


def _confidence_gap(
    probs: Sequence | np.ndarray, labels: Sequence | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(confidence, correct - confidence), both (n,), from class probabilities (n, C) and labels (n,)."""
    p = np.asarray(probs, dtype=float)
    y = np.asarray(labels)
    if p.ndim != 2 or y.shape != (len(p),) or len(p) == 0:
        raise ValueError(f"calibration needs probs (n, classes) and labels (n,); got {p.shape} and {y.shape}")
    if not np.isfinite(p).all() or (p < 0).any() or (p > 1).any() or not np.allclose(p.sum(-1), 1, atol=1e-3):
        raise ValueError(
            "calibration needs probabilities in [0, 1] summing to 1 per row (softmax of the logits)"
        )
    if y.dtype.kind not in "iub" or (y < 0).any() or (y >= p.shape[1]).any():
        raise ValueError(f"calibration needs integer labels in [0, {p.shape[1]})")
    confidence = p.max(axis=-1)
    correct = (p.argmax(axis=-1) == y).astype(float)
    return confidence, correct - confidence


def _bins(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin m (0-based) holds confidences in ((m)/M, (m+1)/M]; a confidence of 0 goes to the first."""
    if n_bins < 1:
        raise ValueError("n_bins must be at least 1")
    return np.digitize(confidence, np.linspace(0, 1, n_bins + 1)[1:-1], right=True)


def _ece_rows(n_bins: int) -> MetricFn:
    """ECE per row from bin ids and correct - confidence, both (B, n) -> (B,)."""

    def ece(bins: np.ndarray, gap: np.ndarray) -> np.ndarray:
        rows, n = bins.shape
        flat = (bins + n_bins * np.arange(rows)[:, None]).ravel()
        sums = np.bincount(flat, weights=gap.ravel(), minlength=rows * n_bins).reshape(rows, n_bins)
        return np.abs(sums).sum(axis=-1) / n

    return ece


def expected_calibration_error(
    probs: Sequence | np.ndarray, labels: Sequence | np.ndarray, n_bins: int = 15
) -> float:
    """Expected calibration error (Guo et al. 2017, "On Calibration of Modern Neural Networks", eq. 3):
    ``sum_m |B_m| / n * |acc(B_m) - conf(B_m)|`` over ``n_bins`` equal-width bins of the confidence
    (the top class probability), bin m = ((m-1)/M, m/M]. ``probs``: (n, classes); ``labels``: (n,).
    A fraction (0.032), not a percentage."""
    confidence, gap = _confidence_gap(probs, labels)
    bins = _bins(confidence, n_bins)
    return float(_ece_rows(n_bins)(bins[None, :], gap[None, :])[0])


def ece_ci(
    probs: Sequence | np.ndarray, labels: Sequence | np.ndarray, n_bins: int = 15, **kwargs: Any
) -> CI:
    """:func:`expected_calibration_error` with a percentile-bootstrap interval over the examples
    (``kwargs``: ``n_resamples``, ``confidence``, ``seed`` of :func:`~lmdistill.report.stats.bootstrap_ci`).
    The bin edges are fixed; each resample re-bins its own examples."""
    confidence, gap = _confidence_gap(probs, labels)
    return bootstrap_ci((_bins(confidence, n_bins), gap), _ece_rows(n_bins), **kwargs)


# --------------------------------------------------------------------------------------------- agreement


def agreement(pred_a: Sequence | np.ndarray, pred_b: Sequence | np.ndarray) -> float:
    """Share of examples on which two models predict the same (class ids (n,) each)."""
    a, b = _vectors("agreement", pred_a, pred_b)
    return float((a == b).mean())


def agreement_ci(pred_a: Sequence | np.ndarray, pred_b: Sequence | np.ndarray, **kwargs: Any) -> CI:
    """:func:`agreement` with a percentile-bootstrap interval (``kwargs`` of ``bootstrap_ci``)."""
    a, b = _vectors("agreement_ci", pred_a, pred_b)
    return bootstrap_ci((a, b), lambda x, y: (x == y).mean(axis=-1), **kwargs)


# --------------------------------------------------------------------------------------------- words


def _bounds(ci: Any) -> tuple[float, float]:
    low, high = (ci.get("low"), ci.get("high")) if isinstance(ci, Mapping) else (ci.low, ci.high)
    if not all(isinstance(x, (int, float)) and math.isfinite(x) for x in (low, high)):
        raise ValueError(f"verdict needs a finite interval (low, high); got ({low}, {high})")
    return float(low), float(high)


def verdict(ci: Any, greater_is_better: bool, confidence: float = 0.95) -> str:
    """ "better" when the interval of the difference a - b (a :class:`PairedCI`, ``CI`` or a dict with
    ``low``/``high``) lies entirely on the better side of 0, "worse" when entirely on the worse side,
    else "not distinguishable at 95%" (the ``confidence`` in the text)."""
    low, high = _bounds(ci)
    if low > 0 or high < 0:
        return "better" if (low > 0) == greater_is_better else "worse"
    return NOT_DISTINGUISHABLE.format(f"{100 * confidence:g}%")


def comparison(
    a: str,
    b: str,
    metric: str,
    result: PairedCI | McNemar,
    *,
    greater_is_better: bool,
    n: int,
    test: str | None = None,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """One entry of the report's ``comparisons``: models ``a`` and ``b`` (keys of ``data["models"]``).

    A :class:`PairedCI` gives ``difference`` (a - b) with its interval and the verdict from it; a
    :class:`McNemar` gives the accuracy difference ``(a_only - b_only) / n`` without an interval and a
    verdict from its p-value (below ``1 - confidence``: better or worse by the sign).
    """
    if isinstance(result, McNemar):
        value = (result.a_only - result.b_only) / n if n else None
        if result.p_value < 1 - confidence and result.a_only != result.b_only:
            words = "better" if (result.a_only > result.b_only) == greater_is_better else "worse"
        else:
            words = NOT_DISTINGUISHABLE.format(f"{100 * confidence:g}%")
        difference = {"value": value, "low": None, "high": None}
        return {
            "a": a,
            "b": b,
            "metric": metric,
            "difference": difference,
            "p_value": result.p_value,
            "test": test or f"McNemar exact ({metric})",
            "verdict": words,
            "n": n,
        }
    return {
        "a": a,
        "b": b,
        "metric": metric,
        "difference": {"value": result.point, "low": result.low, "high": result.high},
        "p_value": result.p_value,
        "test": test or "paired bootstrap",
        "verdict": verdict(result, greater_is_better, confidence),
        "n": n,
    }
