"""The summary: what the distilled student keeps and gains, and the paired comparisons behind it.

Whether distillation beat the baseline is read from a paired comparison on the same test examples
(``data["comparisons"]``, see :func:`lmdistill.report.paired.comparison`). Only when none is given
does the text fall back to whether the two per-model intervals overlap, and then it never says
"better" (overlapping intervals do not show that two scores are equal, nor disjoint ones by how much).
"""

from __future__ import annotations

from typing import Any

from lmdistill.report.render.blocks import Block, Bullets, Callout, Table, finite, na, ratio
from lmdistill.report.render.context import (
    Context,
    as_interval,
    interval,
    metric_cell,
    retention,
    smaller,
    speedup,
    summary_device,
)

VERDICT_WORDS = {
    "better": "the distilled student is better",
    "worse": "the distilled student is worse",
}


# --------------------------------------------------------------------------------------------- headline


def retention_text(ctx: Context, metric: str) -> str:
    """'keeps 97.1% of the teacher's accuracy' (or the ratio for lower-is-better metrics)."""
    kept = retention(ctx, ctx.main("student"), metric)
    if ctx.greater_is_better(metric) or kept.startswith("n/a"):
        return f"keeps {kept} of the teacher's {metric}"
    return f"has {kept} {metric} (lower is better)"


def speed_phrase(ctx: Context) -> str:
    """'at 3.2× the speed (CPU latency, batch 1)', or why not."""
    device = summary_device(ctx)
    speed = speedup(ctx, ctx.main("student"), ctx.teacher, device, 1) if device else None
    if speed is None:
        return "speed-up n/a (no batch-1 latency for both teacher and student)"
    return f"at {ratio(speed, '')} the speed ({device.upper()} latency, batch 1)"


def size_phrase(ctx: Context) -> str:
    """'4.0× smaller (weights on disk)', or why not."""
    factor, basis = smaller(ctx, ctx.main("student"))
    if factor is None:
        return "compression n/a (no size or parameter count for both teacher and student)"
    return f"{ratio(factor, '')} smaller ({basis})"


def summary_lines(ctx: Context) -> list[Block]:
    missing = [r for r in ("teacher", "student") if ctx.main(r) is None]
    if missing or not ctx.primary:
        why = f"missing: {', '.join(missing)}" if missing else "no task metric given"
        text = f"Summary n/a: the report needs a teacher and a student with a task metric ({why})."
        return [Callout(text, "headline")]
    text = f"The student {retention_text(ctx, ctx.primary)} {speed_phrase(ctx)}, {size_phrase(ctx)}."
    return [Callout(text, "headline"), Callout(gain_text(ctx, ctx.primary), "summary")]


# --------------------------------------------------------------------------------------------- gain


def pair(ctx: Context, metric: str) -> tuple[tuple, tuple] | None:
    """(student, baseline) intervals of a metric, or None where either score is missing."""
    student = interval(ctx.entry(ctx.main("student")), metric)
    baseline = interval(ctx.entry(ctx.main("baseline")), metric)
    return None if student[0] is None or baseline[0] is None else (student, baseline)


def gain(ctx: Context, metric: str) -> str:
    """The student's gain over the baseline: '+1.8 points' (or the raw difference, better side first)."""
    if ctx.main("baseline") is None:
        return na("no baseline given")
    scores = pair(ctx, metric)
    if scores is None:
        return na(f"no {metric} for both student and baseline")
    greater = ctx.greater_is_better(metric)
    better = scores[0][0] - scores[1][0] if greater else scores[1][0] - scores[0][0]
    if ctx.is_percent(metric):
        return f"{100 * better:+.1f} points"
    direction = "higher" if greater else "lower"
    if better == 0:
        return f"no change ({direction} is better)"
    return f"{abs(better):.4g} {'better' if better > 0 else 'worse'} ({direction} is better)"


def overlaps(ctx: Context, metric: str) -> bool | None:
    """Whether the student's and the baseline's 95% intervals overlap; None without both intervals."""
    scores = pair(ctx, metric)
    if scores is None or None in (*scores[0], *scores[1]):
        return None
    (_, s_low, s_high), (_, b_low, b_high) = scores
    return s_low <= b_high and b_low <= s_high


def overlap(ctx: Context, metric: str) -> str:
    """The fallback when no paired comparison is given."""
    verdict = overlaps(ctx, metric)
    if verdict is None:
        return na("no intervals for both")
    return "overlap: the gain may be noise" if verdict else "no overlap"


# --------------------------------------------------------------------------------------------- comparisons


def comparisons(ctx: Context) -> list[dict]:
    return [c for c in ctx.data.get("comparisons") or [] if isinstance(c, dict)]


def is_mcnemar(comparison: dict) -> bool:
    return str(comparison.get("test", "")).lower().startswith("mcnemar")


def find(ctx: Context, a: str | None, b: str | None, metric: str) -> list[tuple[dict, bool]]:
    """Comparisons of ``a`` with ``b`` on ``metric`` as (comparison, flipped): flipped when it was
    given as b - a."""
    found = []
    for c in comparisons(ctx):
        if c.get("metric") == metric and {c.get("a"), c.get("b")} == {a, b} and a != b:
            found.append((c, c.get("a") != a))
    return found


def student_vs_baseline(ctx: Context, metric: str) -> tuple[tuple | None, tuple | None]:
    """(interval comparison, McNemar) of the student against the baseline on ``metric``, each
    (comparison, flipped) or None. A McNemar test of another metric (accuracy for macro-F1) only joins
    a comparison on ``metric``: alone it says nothing about ``metric``."""
    student, baseline = ctx.main("student"), ctx.main("baseline")
    given = find(ctx, student, baseline, metric)
    with_interval = [g for g in given if None not in as_interval(g[0].get("difference"))]
    main = with_interval[0] if with_interval else next((g for g in given if not is_mcnemar(g[0])), None)
    mcnemar = [g for g in given if is_mcnemar(g[0])]
    if not mcnemar and main is not None:
        pairs = [(c, c.get("a") != student) for c in comparisons(ctx) if is_mcnemar(c)]
        mcnemar = [(c, f) for c, f in pairs if {c.get("a"), c.get("b")} == {student, baseline}]
    return main, (mcnemar[0] if mcnemar else None)


def signed(ctx: Context, metric: str, x: float) -> str:
    return f"{100 * x:+.1f}" if ctx.is_percent(metric) else f"{x:+.4g}"


def difference_text(ctx: Context, metric: str, comparison: dict, flipped: bool) -> str | None:
    """'+3.0 [+1.1, +4.9] points' (a - b, or b - a when flipped); None without a difference."""
    value, low, high = as_interval(comparison.get("difference"))
    if value is None:
        return None
    if flipped:
        value, low, high = -value, (-high if high is not None else None), (-low if low is not None else None)
    unit = " points" if ctx.is_percent(metric) else ""
    if low is None or high is None:
        return f"{signed(ctx, metric, value)}{unit} (no interval)"
    return f"{signed(ctx, metric, value)} [{signed(ctx, metric, low)}, {signed(ctx, metric, high)}]{unit}"


def verdict_of(ctx: Context, comparison: dict, flipped: bool) -> str:
    """The comparison's verdict for its ``a`` (or ``b`` when flipped); computed from the interval of
    the difference when not given."""
    words = comparison.get("verdict")
    if not isinstance(words, str):
        from lmdistill.report.paired import verdict

        difference = comparison.get("difference")
        if None in as_interval(difference)[1:]:
            return na("no verdict given")
        words = verdict(difference, ctx.greater_is_better(str(comparison.get("metric"))))
    swap = {"better": "worse", "worse": "better"}
    return swap.get(words, words) if flipped else words


def p_text(comparison: dict, mcnemar: dict | None) -> str:
    """'McNemar exact p = 0.004', else the bootstrap p-value, else ''."""
    source = mcnemar if mcnemar is not None else comparison
    p = source.get("p_value")
    if not finite(p):
        return ""
    name = f"{source.get('test') or 'test'} p"
    if p == 0 and not is_mcnemar(source):
        return f"{name} ≈ 0 (no resample crossed 0)"
    return f"{name} {'< 0.001' if p < 0.001 else '= ' + format(p, '.2g')}"


def paired_text(ctx: Context, metric: str, main: tuple | None, mcnemar: tuple | None) -> str:
    """The sentence on a paired student-vs-baseline comparison: difference, interval, p, verdict."""
    comparison, flipped = main or mcnemar
    n = comparison.get("n")
    where = f"the same {n:,} test examples" if finite(n) else "the same test examples"
    diff = difference_text(ctx, metric, comparison, flipped) if main else None
    head = f"Paired comparison on {where} by {comparison.get('test') or 'a paired test'}"
    head += f": student − baseline {diff}" if diff else ""
    p = p_text(comparison, mcnemar[0] if mcnemar else None)
    words = verdict_of(ctx, comparison, flipped)
    noise = words.startswith("not distinguishable")
    words = VERDICT_WORDS.get(words, f"{words}, the gain may be noise" if noise else words)
    return f"{head}{'; ' + p if p else ''}. Verdict: {words}."


def gain_text(ctx: Context, metric: str) -> str:
    """The summary sentence on the gain over the baseline: from a paired comparison when given, else
    with both per-model intervals (never "better" from them)."""
    if ctx.main("baseline") is None:
        return "Gain over the no-KD baseline: n/a (no baseline given)."
    text = f"Gain over the no-KD baseline in {metric}: {gain(ctx, metric)}."
    main, mcnemar = student_vs_baseline(ctx, metric)
    if main or mcnemar:
        return f"{text} {paired_text(ctx, metric, main, mcnemar)}"
    if pair(ctx, metric) is None:
        return text
    verdict = {
        None: "",
        True: ": the 95% intervals overlap, so the gain may be noise",
        False: ": the 95% intervals do not overlap",
    }[overlaps(ctx, metric)]
    student, baseline = ctx.main("student"), ctx.main("baseline")
    return (
        f"{text} Student {metric_cell(ctx, student, metric)} vs baseline "
        f"{metric_cell(ctx, baseline, metric)}{verdict}."
    )


def paired_cell(ctx: Context, metric: str) -> str:
    """Quality table cell: the paired student-vs-baseline result on a metric, or n/a."""
    main, mcnemar = student_vs_baseline(ctx, metric)
    if not (main or mcnemar):
        return na(f"no paired test of {metric} given")
    comparison, flipped = main or mcnemar
    diff = difference_text(ctx, metric, comparison, flipped) if main else None
    p = p_text(comparison, mcnemar[0] if mcnemar else None)
    facts = "; ".join(x for x in (diff, p) if x)
    return (
        f"{verdict_of(ctx, comparison, flipped)} ({facts})" if facts else verdict_of(ctx, comparison, flipped)
    )


def show_p(p: Any) -> str:
    if not finite(p):
        return "n/a"
    return "< 0.001" if p < 0.001 else format(p, ".2g")


def comparisons_table(ctx: Context) -> list[Block]:
    """Every given comparison: a − b, metric, difference with interval, test, p, verdict, examples."""
    rows = []
    for c in comparisons(ctx):
        metric = str(c.get("metric", "n/a"))
        diff = difference_text(ctx, metric, c, False) or na("not given")
        n = c.get("n")
        rows.append(
            [
                f"{ctx.label(c.get('a'))} − {ctx.label(c.get('b'))}",
                metric,
                diff,
                str(c.get("test") or "n/a"),
                show_p(c.get("p_value")),
                verdict_of(ctx, c, False),
                f"{n:,}" if finite(n) else "n/a",
            ]
        )
    if not rows:
        return []
    header = [
        "Comparison (a − b)",
        "Metric",
        "Difference [95% CI]",
        "Test",
        "p-value",
        "Verdict for a",
        "Examples",
    ]
    intro = (
        "Paired comparisons: both models scored on the same resampled test examples; the verdict is "
        "read from the interval of the difference (or the test's p-value), never from whether the "
        "per-model intervals overlap."
    )
    return [intro, Table(header, rows)]


def pareto_lines(ctx: Context) -> list[Block]:
    """Which entries no other entry beats on both quality and cost (only for more than three models)."""
    from lmdistill.report.render.plots import cost_points, pareto_front

    if len(ctx.models) <= 3 or not ctx.primary:
        return []
    what = {"latency": f"{(summary_device(ctx) or '').upper()} latency (batch 1)", "size": "weights on disk"}
    parts = []
    for axis in ("latency", "size"):
        points = cost_points(ctx, axis)
        if len(points) > 1:
            greater = ctx.greater_is_better(ctx.primary)
            front = pareto_front([p[1] for p in points], [p[2] for p in points], greater)
            names = " → ".join(ctx.label(points[i][0]) for i in front)
            parts.append(f"{ctx.primary} vs {what[axis]}: {names}")
    if not parts:
        return []
    return ["Pareto front (no other model is both better and cheaper), from the cheapest:", Bullets(parts)]
