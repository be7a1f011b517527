"""Plots: quality against latency and against size with the Pareto front, and the training curves.
matplotlib's object API (no pyplot, no global backend switch), imported only when drawing."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lmdistill.report.render.blocks import Image, Section, finite, get, na
from lmdistill.report.render.context import Context, interval, latency, summary_device

AXES = {
    "latency": ("Latency, batch 1, {device} (ms, median; bars: p10 – p90)", 1000.0),
    "size": ("Weights on disk (MB)", 1e-6),
}


def pareto_front(
    costs: Sequence[float], qualities: Sequence[float], greater_is_better: bool = True
) -> list[int]:
    """Indices of the points no other point dominates, by increasing cost. Point j dominates i when it
    costs no more and is no worse, and is strictly cheaper or strictly better (lower cost is better;
    quality higher when ``greater_is_better``). Equal points do not dominate each other."""
    sign = 1.0 if greater_is_better else -1.0

    def dominates(j: int, i: int) -> bool:
        no_worse = costs[j] <= costs[i] and sign * qualities[j] >= sign * qualities[i]
        return no_worse and (costs[j] < costs[i] or sign * qualities[j] > sign * qualities[i])

    front = [i for i in range(len(costs)) if not any(dominates(j, i) for j in range(len(costs)) if j != i)]
    return sorted(front, key=lambda i: (costs[i], -sign * qualities[i]))


def cost_points(ctx: Context, axis: str) -> list[tuple[str, float, float, Any, Any, Any, Any]]:
    """(key, cost, quality, quality low, quality high, cost low, cost high) of every entry with both
    figures: ``axis`` "latency" (batch-1 median seconds, p10 – p90, on the summary device) or "size"
    (weights on disk, bytes)."""
    device = summary_device(ctx)
    points = []
    for key in ctx.keys:
        value, low, high = interval(ctx.entry(key), ctx.primary) if ctx.primary else (None, None, None)
        if axis == "latency":
            item = latency(ctx.entry(key), device, 1) if device else None
            cost, spread = get(item, "median_s"), (get(item, "p10_s"), get(item, "p90_s"))
        else:
            cost, spread = get(ctx.entry(key), "size", "weights_bytes"), (None, None)
        if value is not None and finite(cost) and cost > 0:
            points.append((key, float(cost), value, low, high, *spread))
    return points


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", facecolor="white")
    return buffer.getvalue()


def _errors(centre: float, low: Any, high: Any, scale: float) -> list[list[float]] | None:
    if not (finite(low) and finite(high)):
        return None
    return [[max(0.0, centre - low * scale)], [max(0.0, high * scale - centre)]]


def _marker(runtime: str) -> str:
    name = runtime.lower()
    return "s" if "onnx" in name else "D" if "int8" in name else "^" if "bf16" in name else "o"


def _panel(ax, ctx: Context, axis: str, points: list) -> None:
    """One scatter: every entry a labelled point, the Pareto front as a dashed step line."""
    label, scale = AXES[axis]
    yscale = 100 if ctx.is_percent(ctx.primary) else 1
    for key, cost, value, low, high, c_low, c_high in points:
        x, y = cost * scale, value * yscale
        ax.errorbar(
            x,
            y,
            xerr=_errors(x, c_low, c_high, scale),
            yerr=_errors(y, low, high, yscale),
            fmt=_marker(ctx.runtime(key)),
            ms=7,
            capsize=3,
            lw=1.2,
            color=ctx.color(key),
        )
        ax.annotate(
            ctx.label(key),
            (x, y),
            xytext=(6, 5),
            textcoords="offset points",
            fontsize=8,
            bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.75},
        )
    front = pareto_front([p[1] for p in points], [p[2] for p in points], ctx.greater_is_better(ctx.primary))
    xs, ys = [points[i][1] * scale for i in front], [points[i][2] * yscale for i in front]
    ax.plot(xs, ys, "--", color="#555", lw=1, drawstyle="steps-post", label="Pareto front", zorder=0)
    ax.scatter(xs, ys, s=190, facecolors="none", edgecolors="#555", lw=1, zorder=0)
    costs = [p[1] for p in points]
    ax.margins(x=0.2, y=0.15)
    if max(costs) / min(costs) > 20:
        ax.set_xscale("log")
    else:
        ax.set_xlim(left=0)
    ax.set_xlabel(label.format(device=(summary_device(ctx) or "").upper()))
    ax.set_ylabel(f"{ctx.primary}{' (%)' if yscale == 100 else ''} (bars: 95% CI)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")


def quality_cost_plot(ctx: Context) -> Image | str:
    """Quality against batch-1 latency and against weights on disk, side by side."""
    panels = {axis: cost_points(ctx, axis) for axis in AXES} if ctx.primary else {}
    panels = {axis: points for axis, points in panels.items() if points}
    if not panels:
        return na("quality vs latency and size: needs a primary metric and batch-1 latency or size on disk")
    fig = _figure(5.2 * len(panels), 4.2)
    for i, (axis, points) in enumerate(panels.items()):
        _panel(fig.add_subplot(1, len(panels), i + 1), ctx, axis, points)
    better = "up and to the left" if ctx.greater_is_better(ctx.primary) else "down and to the left"
    against = " and ".join({"latency": "latency", "size": "size on disk"}[a] for a in panels)
    caption = (
        f"{ctx.primary} against {against}: {better} is better. Circled points on the dashed line form the "
        "Pareto front: no other model is both better and cheaper."
    )
    return Image("quality_vs_cost.png", caption, _png(fig))


# --------------------------------------------------------------------------------------------- training


def read_history(path: str | Path) -> list[dict[str, float]]:
    """Rows of a metrics.csv as {column: float}; empty and non-numeric cells are left out."""
    rows = []
    with Path(path).open(newline="") as f:
        for raw in csv.DictReader(f):
            row = {}
            for key, text in raw.items():
                try:
                    row[key] = float(text)
                except (TypeError, ValueError):
                    continue
            rows.append(row)
    return rows


def history(entry: dict | None) -> list[dict]:
    rows = get(entry, "training", "history")
    if isinstance(rows, (str, Path)):
        return read_history(rows) if Path(rows).is_file() else []
    return [r for r in rows or [] if isinstance(r, dict)]


def loss_terms(runs: dict[str, list[dict]]) -> list[str]:
    terms = sorted({k for rows in runs.values() for r in rows for k in r if k.startswith("loss")})
    return sorted(terms, key=lambda t: (t != "loss", t))


def training_plot(ctx: Context) -> Image | str:
    runs = {key: history(ctx.entry(key)) for key in ctx.keys}
    runs = {key: rows for key, rows in runs.items() if rows}
    terms = loss_terms(runs)
    if not terms:
        return na("training curves: no training history with loss columns given")
    cols = min(3, len(terms))
    nrows = math.ceil(len(terms) / cols)
    fig = _figure(4.0 * cols, 3.0 * nrows)
    for i, term in enumerate(terms):
        ax = fig.add_subplot(nrows, cols, i + 1)
        for key, rows in runs.items():
            pts = [(r["step"], r[term]) for r in rows if finite(r.get("step")) and finite(r.get(term))]
            if pts:
                ax.plot(*zip(*pts), label=ctx.label(key), color=ctx.color(key), lw=1.5)
        ax.set_title(term, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return Image(
        "training_curves.png", "Training loss per term and run (unweighted terms as logged).", _png(fig)
    )


def plots_section(ctx: Context) -> Section:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return Section("Plots", [na("matplotlib is not installed: pip install 'lmdistill[report]'")])
    return Section("Plots", [quality_cost_plot(ctx), training_plot(ctx)])
