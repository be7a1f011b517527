"""The quality section: one row per model, the student against the baseline, the paired comparisons."""

from __future__ import annotations

from collections.abc import Callable

from lmdistill.report.render.blocks import Section, Table, get, na
from lmdistill.report.render.context import (
    ROLE_LABELS,
    Context,
    interval_cell,
    metric_cell,
    model_name,
    retention,
)
from lmdistill.report.render.summary import comparisons, comparisons_table, gain, overlap, paired_cell


def table_rows(ctx: Context, cells_of: Callable[[str], list[str]], width: int) -> list[list[str]]:
    """One row per entry (its label, then ``cells_of(key)``), then one per role that has no entry:
    n/a with the reason; ``width`` cells after the label."""
    rows = [[ctx.label(key), *cells_of(key)] for key in ctx.keys]
    missing = [[ROLE_LABELS[r], na("model not given")] + ["n/a"] * (width - 1) for r in ctx.missing_roles]
    return rows + missing


def _percent_cell(ctx: Context, raw: object) -> str:
    """An interval shown ×100 ('3.2 [2.5, 4.0]'), or n/a."""
    return interval_cell(ctx, "accuracy", raw, "not given")  # "accuracy": any metric shown ×100


def model_table(ctx: Context, metrics: list[str]) -> Table:
    """Label, [runtime], [compression step], checkpoint, every metric, share of the teacher's primary score kept, [ECE],
    [agreement with the teacher]: the optional columns only where some entry has them."""
    runtime = ctx.explicit_runtimes()
    step = any(e.get("step") for e in ctx.models.values())
    ece = any(get(e, "calibration", "ece") is not None for e in ctx.models.values())
    agree = any(e.get("agreement") is not None for e in ctx.models.values())
    header = ["Model"] + (["Runtime"] if runtime else []) + (["Step"] if step else []) + ["Checkpoint"]
    header += [f"{m} (primary)" if m == ctx.primary else m for m in metrics]
    header.append(f"Share of the teacher's {ctx.primary} kept")
    header += (["ECE (%, lower is better)"] if ece else []) + (
        ["Agreement with the teacher (%)"] if agree else []
    )

    def cells(key: str) -> list[str]:
        entry = ctx.entry(key)
        row = ([ctx.runtime(key)] if runtime else []) + ([str(entry.get("step") or "—")] if step else [])
        row += [model_name(ctx, key)]
        row += [metric_cell(ctx, key, m) for m in metrics] + [retention(ctx, key, ctx.primary)]
        row += [_percent_cell(ctx, get(entry, "calibration", "ece"))] if ece else []
        return row + ([_percent_cell(ctx, get(entry, "agreement"))] if agree else [])

    return Table(header, table_rows(ctx, cells, len(header) - 1))


def student_baseline_table(ctx: Context, metrics: list[str]) -> Table:
    """Per metric: share kept, gain over the baseline, both scores and the paired test (or, without
    one, whether the per-model intervals overlap)."""
    student, baseline = ctx.main("student"), ctx.main("baseline")
    paired = any({c.get("a"), c.get("b")} == {student, baseline} for c in comparisons(ctx))
    last = "Paired test, student − baseline" if paired else "95% intervals"
    header = [
        "Metric",
        "Share of the teacher's score kept",
        "Student gain over baseline",
        "Student",
        "Baseline",
        last,
    ]
    rows = [
        [
            m,
            retention(ctx, student, m) if student is not None else na("no student given"),
            gain(ctx, m),
            metric_cell(ctx, student, m),
            metric_cell(ctx, baseline, m),
            paired_cell(ctx, m) if paired else overlap(ctx, m),
        ]
        for m in metrics
    ]
    return Table(header, rows)


def quality_section(ctx: Context) -> Section:
    section = Section("Quality")
    metrics = ctx.metric_names()
    if not metrics:
        section.blocks.append(na("no task metrics given"))
        return section
    scale = "scores ×100 for bounded metrics" if any(ctx.is_percent(m) for m in metrics) else "raw scores"
    where = f" on {ctx.data['evaluation']}" if ctx.data.get("evaluation") else ""
    section.blocks.append(f"Task metrics{where}, {scale}, with 95% bootstrap intervals [low, high].")
    section.blocks += [model_table(ctx, metrics), student_baseline_table(ctx, metrics)]
    section.blocks += comparisons_table(ctx)
    return section
