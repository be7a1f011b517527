"""Paired comparisons, McNemar, calibration and agreement (lmdistill.report.paired, via report.stats)."""

from __future__ import annotations

import numpy as np
import pytest

from lmdistill.report import stats
from lmdistill.tasks.metrics import classification_metrics


def two_models(n: int = 300, seed: int = 0):
    """Labels of 3 classes and two noisy predictors of them."""
    rng = np.random.default_rng(seed)
    gold = rng.integers(0, 3, n)
    a = np.where(rng.random(n) < 0.8, gold, rng.integers(0, 3, n))
    b = np.where(rng.random(n) < 0.7, gold, rng.integers(0, 3, n))
    return gold, a, b


def naive_summary(diffs: list[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """(low, high, p) from resampled differences, written out."""
    tail = (1 - confidence) / 2
    low, high = np.quantile(np.array(diffs), [tail, 1 - tail])
    at_most = sum(d <= 0 for d in diffs) / len(diffs)
    at_least = sum(d >= 0 for d in diffs) / len(diffs)
    return low, high, min(1.0, 2 * min(at_most, at_least))


def naive_accuracy(gold, pred) -> float:
    return sum(int(g == p) for g, p in zip(gold, pred)) / len(gold)


def naive_macro_f1(gold, pred) -> float:
    return classification_metrics(np.asarray(pred), np.asarray(gold), 3)["macro_f1"]


def naive_pearson(gold, pred) -> float:
    return float(np.corrcoef(gold, pred)[0, 1])


# ----------------------------------------------------------------------------------------- McNemar


@pytest.mark.parametrize(
    ("a_only", "b_only", "expected"),
    [
        (1, 8, 2 * (1 + 9) / 512),  # P(X <= 1), X ~ Bin(9, 1/2) = (C(9,0) + C(9,1)) / 2^9
        (8, 1, 2 * (1 + 9) / 512),
        (0, 5, 2 * 1 / 32),
        (2, 10, 2 * (1 + 12 + 66) / 4096),
        (3, 3, 1.0),  # 2 * 42 / 64 > 1
        (0, 0, 1.0),  # no discordant pairs
    ],
)
def test_mcnemar_exact_matches_hand_computations(a_only, b_only, expected):
    both, neither = 20, 7  # concordant examples do not enter the test
    a = [1] * a_only + [0] * b_only + [1] * both + [0] * neither
    b = [0] * a_only + [1] * b_only + [1] * both + [0] * neither
    result = stats.mcnemar_exact(np.array(a, dtype=bool), b)
    assert result == stats.McNemar(a_only, b_only, pytest.approx(expected, rel=1e-12))


def test_mcnemar_exact_rejects_anything_but_correctness():
    with pytest.raises(ValueError, match="0/1"):
        stats.mcnemar_exact([0, 2], [1, 1])
    with pytest.raises(ValueError, match="one length"):
        stats.mcnemar_exact([0, 1], [1])


# ----------------------------------------------------------------------------------------- calibration


def test_expected_calibration_error_of_a_hand_made_example():
    probs = np.array([[0.9, 0.1], [0.85, 0.15], [0.3, 0.7], [0.55, 0.45]])
    labels = np.array([0, 1, 1, 1])  # right (0.9), wrong (0.85), right (0.7), wrong (0.55)
    # 5 bins: (0.8, 1] holds 0.9 and 0.85: |1/2 - 0.875| * 2/4; (0.6, 0.8]: |1 - 0.7| * 1/4;
    # (0.4, 0.6]: |0 - 0.55| * 1/4
    expected = 0.375 * 2 / 4 + 0.3 / 4 + 0.55 / 4
    assert stats.expected_calibration_error(probs, labels, n_bins=5) == pytest.approx(expected, abs=1e-12)


def test_expected_calibration_error_is_zero_when_confidence_matches_accuracy():
    probs = np.tile([[0.1, 0.7, 0.2]], (10, 1))
    labels = np.array([1] * 7 + [0] * 3)  # 70% right at confidence 0.7
    assert stats.expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-12)


def test_expected_calibration_error_rejects_logits():
    with pytest.raises(ValueError, match="softmax"):
        stats.expected_calibration_error(np.array([[2.0, -1.0]]), np.array([0]))


def test_ece_ci_equals_a_naive_loop_over_the_same_draws():
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(120, 3)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    labels = rng.integers(0, 3, 120)
    ci = stats.ece_ci(probs, labels, n_bins=10, n_resamples=200, seed=2)
    draws = np.random.default_rng(2).integers(0, 120, size=(200, 120))
    naive = [stats.expected_calibration_error(probs[idx], labels[idx], n_bins=10) for idx in draws]
    low, high = np.quantile(naive, [0.025, 0.975])
    assert ci.point == pytest.approx(stats.expected_calibration_error(probs, labels, n_bins=10))
    assert (ci.low, ci.high) == (pytest.approx(low), pytest.approx(high))


# ----------------------------------------------------------------------------------------- agreement


def test_agreement_and_its_interval_equal_a_hand_count_and_a_naive_loop():
    a, b = np.array([1, 2, 3, 4, 0, 0, 1, 2]), np.array([1, 2, 0, 4, 0, 1, 1, 2])
    assert stats.agreement(a, b) == 6 / 8
    ci = stats.agreement_ci(a, b, n_resamples=100, seed=1)
    draws = np.random.default_rng(1).integers(0, 8, size=(100, 8))
    low, high = np.quantile([naive_accuracy(a[idx], b[idx]) for idx in draws], [0.025, 0.975])
    assert (ci.point, ci.low, ci.high) == (6 / 8, pytest.approx(low), pytest.approx(high))


# ----------------------------------------------------------------------------------------- paired bootstrap


@pytest.mark.parametrize(
    ("metric", "naive"),
    [("accuracy", naive_accuracy), ("macro_f1", naive_macro_f1), ("pearson", naive_pearson)],
)
def test_paired_bootstrap_equals_a_naive_loop_over_the_same_draws(metric, naive):
    gold, a, b = two_models(150)
    if metric == "pearson":
        rng = np.random.default_rng(3)
        gold, a, b = rng.normal(size=150), rng.normal(size=150), rng.normal(size=150)
        a, b = gold + a, gold + 2 * b
    result = stats.paired_bootstrap(metric, gold, a, b, n_resamples=200, seed=7)
    draws = np.random.default_rng(7).integers(0, 150, size=(200, 150))  # the function's draws
    diffs = [naive(gold[idx], a[idx]) - naive(gold[idx], b[idx]) for idx in draws]
    low, high, p = naive_summary(diffs)
    assert result.point == pytest.approx(naive(gold, a) - naive(gold, b))
    assert (result.low, result.high, result.p_value) == (pytest.approx(low), pytest.approx(high), p)


def test_paired_bootstrap_of_identical_predictions_is_exactly_zero():
    gold, a, _ = two_models()
    result = stats.paired_bootstrap("macro_f1", gold, a, a.copy())
    assert result == stats.PairedCI(0.0, 0.0, 0.0, 1.0)
    assert stats.verdict(result, greater_is_better=True) == "not distinguishable at 95%"


def test_a_strictly_dominating_model_is_better_and_its_interval_excludes_zero():
    gold, _, b = two_models(400)
    a = b.copy()
    wrong = np.flatnonzero(b != gold)
    a[wrong[: len(wrong) // 2]] = gold[wrong[: len(wrong) // 2]]  # right wherever b is, and more
    result = stats.paired_bootstrap("accuracy", gold, a, b)
    assert result.low > 0 and result.p_value == 0.0
    assert stats.verdict(result, greater_is_better=True) == "better"
    assert stats.verdict(stats.paired_bootstrap("accuracy", gold, b, a), greater_is_better=True) == "worse"


def test_lower_is_better_metric_gives_better_for_a_negative_difference():
    rng = np.random.default_rng(0)
    gold = rng.normal(size=300)
    noise = rng.normal(size=300)
    result = stats.paired_bootstrap("mse", gold, gold + 0.5 * noise, gold + noise)
    assert result.high < 0 and stats.verdict(result, greater_is_better=False) == "better"


def test_paired_test_finds_a_difference_that_overlapping_intervals_miss():
    gold, _, b = two_models(1000, seed=4)
    a = b.copy()
    wrong = np.flatnonzero(b != gold)[:30]
    a[wrong] = gold[wrong]  # 3 points better on exactly the examples b got wrong
    ci_a, ci_b = stats.metric_ci("accuracy", gold, a), stats.metric_ci("accuracy", gold, b)
    assert ci_a.low <= ci_b.high  # the per-model intervals overlap
    assert stats.verdict(stats.paired_bootstrap("accuracy", gold, a, b), True) == "better"
    assert stats.mcnemar_exact(a == gold, b == gold).p_value < 1e-8  # 30 to 0 discordant: 2 / 2^30


def test_paired_bootstrap_is_deterministic_per_seed():
    gold, a, b = two_models()
    first = stats.paired_bootstrap("accuracy", gold, a, b, seed=11)
    assert stats.paired_bootstrap("accuracy", gold, a, b, seed=11) == first
    assert stats.paired_bootstrap("accuracy", gold, a, b, seed=12) != first


def test_paired_bootstrap_takes_a_metric_function_and_rejects_bad_input():
    gold, a, b = two_models(50)
    by_name = stats.paired_bootstrap("accuracy", gold, a, b, n_resamples=50)
    assert stats.paired_bootstrap(stats.accuracy, gold, a, b, n_resamples=50) == by_name
    with pytest.raises(ValueError, match="known: accuracy"):
        stats.paired_bootstrap("bleu", gold, a, b)
    with pytest.raises(ValueError, match="one length"):
        stats.paired_bootstrap("accuracy", gold, a[:-1], b)
    with pytest.raises(ValueError, match="n_resamples"):
        stats.paired_bootstrap("accuracy", gold, a, b, confidence=1.0)


def test_paired_bootstrap_values_equals_a_naive_loop():
    rng = np.random.default_rng(2)
    rr_a, rr_b = 1 / rng.integers(1, 11, 80), 1 / rng.integers(1, 11, 80)  # reciprocal ranks
    result = stats.paired_bootstrap_values(rr_a, rr_b, n_resamples=150, seed=3)
    draws = np.random.default_rng(3).integers(0, 80, size=(150, 80))
    low, high, p = naive_summary([rr_a[idx].mean() - rr_b[idx].mean() for idx in draws])
    assert result.point == pytest.approx(rr_a.mean() - rr_b.mean())
    assert (result.low, result.high, result.p_value) == (pytest.approx(low), pytest.approx(high), p)


def test_paired_perplexity_bootstrap_equals_a_naive_loop_over_whole_sequences():
    rng = np.random.default_rng(4)
    tokens_a = rng.integers(5, 40, 60)
    tokens_b = tokens_a + rng.integers(0, 3, 60)  # another tokenizer: a few more tokens
    nll_a, nll_b = tokens_a * rng.uniform(2, 3, 60), tokens_b * rng.uniform(2.2, 3.2, 60)
    result = stats.paired_perplexity_bootstrap(nll_a, tokens_a, nll_b, tokens_b, n_resamples=120, seed=9)

    def ppl(nll, n):
        return float(np.exp(nll.sum() / n.sum()))

    draws = np.random.default_rng(9).integers(0, 60, size=(120, 60))
    diffs = [ppl(nll_a[i], tokens_a[i]) - ppl(nll_b[i], tokens_b[i]) for i in draws]
    low, high, p = naive_summary(diffs)
    assert result.point == pytest.approx(ppl(nll_a, tokens_a) - ppl(nll_b, tokens_b))
    assert (result.low, result.high, result.p_value) == (pytest.approx(low), pytest.approx(high), p)
    with pytest.raises(ValueError, match="positive token count"):
        stats.paired_perplexity_bootstrap(nll_a, tokens_a * 0, nll_b, tokens_b)


# ----------------------------------------------------------------------------------------- seeds x examples


def test_seed_example_bootstrap_equals_a_naive_loop_over_the_same_draws():
    rng = np.random.default_rng(6)
    seeds, n = 3, 90
    gold = rng.integers(0, 3, n)
    preds_a = np.where(rng.random((seeds, n)) < 0.8, gold, rng.integers(0, 3, (seeds, n)))
    preds_b = np.where(rng.random((seeds, n)) < 0.75, gold, rng.integers(0, 3, (seeds, n)))
    result = stats.seed_example_bootstrap("accuracy", gold, preds_a, preds_b, n_resamples=100, seed=5)
    draw = np.random.default_rng(5)
    drawn_seeds = draw.integers(0, seeds, size=(100, seeds))  # seeds first, then examples
    drawn_examples = draw.integers(0, n, size=(100, n))
    diffs = []
    for picked, idx in zip(drawn_seeds, drawn_examples):
        per_seed = [
            naive_accuracy(gold[idx], preds_a[s][idx]) - naive_accuracy(gold[idx], preds_b[s][idx])
            for s in picked
        ]
        diffs.append(sum(per_seed) / seeds)
    low, high, p = naive_summary(diffs)
    point = np.mean(
        [naive_accuracy(gold, preds_a[s]) - naive_accuracy(gold, preds_b[s]) for s in range(seeds)]
    )
    assert result.point == pytest.approx(point)
    assert (result.low, result.high, result.p_value) == (pytest.approx(low), pytest.approx(high), p)


def test_seed_example_bootstrap_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"shape \(seeds, 4 examples\)"):
        stats.seed_example_bootstrap("accuracy", [0, 1, 0, 1], np.zeros((2, 4)), np.zeros((3, 4)))


# ----------------------------------------------------------------------------------------- words


def test_verdict_reads_the_interval_of_the_difference():
    assert stats.verdict(stats.CI(0.02, 0.01, 0.03), greater_is_better=True) == "better"
    assert stats.verdict(stats.CI(0.02, 0.01, 0.03), greater_is_better=False) == "worse"
    assert stats.verdict({"low": -0.03, "high": -0.01}, greater_is_better=False) == "better"
    assert stats.verdict({"low": -0.01, "high": 0.02}, True) == "not distinguishable at 95%"
    assert stats.verdict({"low": 0.0, "high": 0.02}, True, confidence=0.9) == "not distinguishable at 90%"
    with pytest.raises(ValueError, match="finite interval"):
        stats.verdict({"low": None, "high": 0.1}, True)


def test_comparison_entries_have_the_report_fields():
    from lmdistill.report.paired import comparison

    ci = stats.PairedCI(0.03, 0.01, 0.05, 0.004)
    assert comparison("student", "baseline", "accuracy", ci, greater_is_better=True, n=200) == {
        "a": "student",
        "b": "baseline",
        "metric": "accuracy",
        "difference": {"value": 0.03, "low": 0.01, "high": 0.05},
        "p_value": 0.004,
        "test": "paired bootstrap",
        "verdict": "better",
        "n": 200,
    }
    mc = comparison(
        "student", "baseline", "accuracy", stats.McNemar(1, 8, 20 / 512), greater_is_better=True, n=100
    )
    assert mc["difference"] == {"value": -7 / 100, "low": None, "high": None}
    assert (mc["test"], mc["verdict"], mc["p_value"]) == ("McNemar exact (accuracy)", "worse", 20 / 512)
    even = comparison("a", "b", "accuracy", stats.McNemar(3, 3, 1.0), greater_is_better=True, n=50)
    assert even["verdict"] == "not distinguishable at 95%"
