"""Variants trained with several seeds and scored on test examples: the statistics of ``lmdistill sweep``.

A variant's score with S seeds is a mean over seeds with a t-interval (:func:`t_interval`). Two variants are
compared per seed on the same test examples (the same seed gives the same data split), and the comparison
pools the seeds:

* :func:`seed_example_sets_bootstrap`: the difference ``a - b`` of a statistic, averaged over seeds, with a
  two-level percentile bootstrap (seeds drawn with replacement, then each drawn seed's test examples), as
  :func:`lmdistill.report.paired.seed_example_bootstrap` (Bouthillier et al. 2021, "Accounting for Variance in
  Machine Learning Benchmarks"), but for any statistic of per-example columns and for seeds whose test sets
  differ (a split carved from the training data by the seed).
* :func:`seed_example_permutation`: its two-sided p-value by a paired permutation test (approximate
  randomisation, Noreen 1989; for NLP Riezler & Maxwell 2005): under "a and b are equally good" the two
  models' outputs on one example are exchangeable, so each resample swaps them on a random half of the
  examples of every seed.

A model's outputs on the examples of one seed are a mapping of named (n,) columns (``gold`` and ``pred``, or
``num`` and ``den``); a statistic maps those columns, resampled to (B, n), to (B,).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from lmdistill.report.paired import PairedCI, _summarise
from lmdistill.report.stats import CI, MAX_ELEMENTS

Columns = Mapping[str, np.ndarray]
Statistic = Callable[[Columns], np.ndarray]

# Student's t quantile t_{0.975, df} for df = 1..30 (Abramowitz & Stegun, table 26.10)
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)  # fmt: skip


def t975(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom (beyond 30: a series in 1/df)."""
    if df < 1:
        raise ValueError("t975 needs df >= 1")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964  # Cornish-Fisher expansion of t around the normal quantile
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def t_interval(values: Sequence[float]) -> CI:
    """Mean of per-seed scores with a 95% Student-t interval, ``mean +- t_{0.975, S-1} * sd / sqrt(S)`` (sd with
    S - 1 in the denominator); needs at least two values."""
    x = np.asarray(values, dtype=float)
    if x.ndim != 1 or len(x) < 2 or not np.isfinite(x).all():
        raise ValueError(f"t_interval needs two or more finite values, got {list(values)}")
    half = t975(len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return CI(float(x.mean()), float(x.mean() - half), float(x.mean() + half))


def _check(a: Sequence[Columns], b: Sequence[Columns]) -> list[int]:
    """Examples per seed; a ValueError unless a and b hold one entry per seed with (n,) columns alike."""
    if not a or len(a) != len(b):
        raise ValueError(f"need one entry per seed for both models, got {len(a)} and {len(b)}")
    sizes = []
    for s, (x, y) in enumerate(zip(a, b)):
        shapes = {np.asarray(v).shape for v in [*x.values(), *y.values()]}
        if set(x) != set(y) or len(shapes) != 1 or len(next(iter(shapes))) != 1 or not next(iter(shapes))[0]:
            raise ValueError(
                f"seed {s}: both models need the same non-empty (n,) columns, got {sorted(shapes)}"
            )
        sizes.append(next(iter(shapes))[0])
    return sizes


def _diff(stat: Statistic, a: Columns, b: Columns, idx: np.ndarray) -> np.ndarray:
    """``stat(a) - stat(b)`` on the examples ``idx`` (B, n) -> (B,)."""
    return stat({k: np.asarray(v)[idx] for k, v in a.items()}) - stat(
        {k: np.asarray(v)[idx] for k, v in b.items()}
    )


def point_difference(stat: Statistic, a: Sequence[Columns], b: Sequence[Columns]) -> float:
    """The mean over seeds of ``stat(a_s) - stat(b_s)`` on all examples."""
    sizes = _check(a, b)
    return float(np.mean([_diff(stat, x, y, np.arange(n)[None, :])[0] for x, y, n in zip(a, b, sizes)]))


def seed_example_sets_bootstrap(
    stat: Statistic,
    a: Sequence[Columns],
    b: Sequence[Columns],
    *,
    same_examples: bool,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> PairedCI:
    """The mean over seeds of ``stat(a_s) - stat(b_s)``, with a two-level percentile-bootstrap interval and
    p-value (:func:`lmdistill.report.paired._summarise`).

    ``a``, ``b``: per seed, each model's columns on that seed's test examples. Resample r draws S seeds with
    replacement (``rng.integers(0, S, (R, S))``), then example indices: with ``same_examples`` (every seed has
    the same test set) one draw ``(R, n)`` shared by all seeds, exactly as
    :func:`~lmdistill.report.paired.seed_example_bootstrap`; else one draw ``(R, n_s)`` per seed in turn. Its
    statistic is the mean over the drawn seeds of their differences on their drawn examples.
    """
    sizes = _check(a, b)
    if same_examples and len(set(sizes)) != 1:
        raise ValueError(f"same_examples needs one test-set size for every seed, got {sizes}")
    if n_resamples < 1 or not 0 < confidence < 1:
        raise ValueError("seed_example_sets_bootstrap needs n_resamples >= 1 and 0 < confidence < 1")
    point = point_difference(stat, a, b)
    rng = np.random.default_rng(seed)
    S = len(a)  # noqa: N806
    rows = max(1, MAX_ELEMENTS // (sum(sizes) + S))
    diffs = []
    for start in range(0, n_resamples, rows):
        size = min(rows, n_resamples - start)
        drawn = rng.integers(0, S, size=(size, S))  # (B, S)
        shared = rng.integers(0, sizes[0], size=(size, sizes[0])) if same_examples else None
        per_seed = np.stack(  # (S, B): seed s's difference on its drawn examples
            [
                _diff(stat, x, y, shared if same_examples else rng.integers(0, n, size=(size, n)))
                for x, y, n in zip(a, b, sizes)
            ]
        )
        diffs.append(np.take_along_axis(per_seed.T, drawn, axis=1).mean(axis=1))
    return _summarise(point, np.concatenate(diffs), confidence)


def seed_example_permutation(
    stat: Statistic, a: Sequence[Columns], b: Sequence[Columns], *, n_resamples: int = 1000, seed: int = 0
) -> float:
    """Two-sided p-value of "a and b are equally good" on these seeds' test examples: the share of resamples
    whose mean-over-seeds difference is at least as far from 0 as the observed one, counting the observed,
    ``(1 + #{|T_r| >= |T|}) / (R + 1)``. Resample r swaps a's and b's columns on each example of each seed with
    probability 1/2 (``rng.random((R, n_s)) < 0.5``, seed by seed; in chunks of resamples when R * n_s is large). The trained models are held fixed: the
    test measures the test-set noise; seed-to-seed variation is in the bootstrap interval."""
    sizes = _check(a, b)
    if n_resamples < 1:
        raise ValueError("seed_example_permutation needs n_resamples >= 1")
    observed = abs(point_difference(stat, a, b))
    rng = np.random.default_rng(seed)
    rows = max(1, MAX_ELEMENTS // max(sizes))  # resamples per chunk (all of them for small test sets)
    total = np.zeros(n_resamples)
    for start in range(0, n_resamples, rows):
        size = min(rows, n_resamples - start)
        for x, y, n in zip(a, b, sizes):
            swap = rng.random((size, n)) < 0.5  # (B, n)
            xa = {k: np.where(swap, np.asarray(y[k])[None], np.asarray(v)[None]) for k, v in x.items()}
            ya = {k: np.where(swap, np.asarray(v)[None], np.asarray(y[k])[None]) for k, v in x.items()}
            total[start : start + size] += stat(xa) - stat(ya)
    far = np.abs(total / len(a)) >= observed - 1e-12 * max(1.0, observed)
    return float((1 + far.sum()) / (n_resamples + 1))
