"""The leaderboard of a sweep (``lmdistill sweep``): from its data (leaderboard.json) to leaderboard.md,
leaderboard.html, leaderboard.csv and quality_vs_latency.png (the Pareto front marked).

One row per variant: its metric as the mean over seeds with a 95% interval, its paired difference to the
reference variant with a 95% interval and p-value, parameters, weights on disk, batch-1 latency, and the
one-line error of each failed run; then the other comparisons the sweep names (``sweep.comparisons``: variant -
against, each with its interval, p-value and verdict; also in comparisons.csv). The data is built by
:mod:`lmdistill.sweeps`.
"""

from __future__ import annotations

import csv
import html
import io
import math
from pathlib import Path
from typing import Any

from lmdistill.fileio import write_text

COLUMNS = (
    "variant", "overrides", "seeds_ok", "seeds", "mean", "low", "high", "interval", "diff", "diff_low",
    "diff_high", "p_value", "verdict", "parameters", "weights_mb", "latency_ms", "train_s", "pareto", "errors",
)  # fmt: skip


def _num(x: Any, digits: int = 4) -> str:
    return f"{x:.{digits}f}" if isinstance(x, (int, float)) and math.isfinite(x) else "n/a"


def _signed(x: Any, digits: int = 4) -> str:
    return f"{x:+.{digits}f}" if isinstance(x, (int, float)) and math.isfinite(x) else "n/a"


def pareto_front(points: list[tuple[float, float]], greater_is_better: bool) -> list[bool]:
    """Which (cost, quality) points no other point dominates (no more cost and no worse quality, and better in
    one of the two)."""
    sign = 1 if greater_is_better else -1
    out = []
    for i, (c, q) in enumerate(points):
        dominated = any(
            c2 <= c and sign * q2 >= sign * q and (c2 < c or sign * q2 > sign * q)
            for j, (c2, q2) in enumerate(points)
            if j != i
        )
        out.append(not dominated)
    return out


def _cells(row: dict, data: dict) -> list[str]:
    """One markdown / HTML row: variant, seeds, metric mean [interval], difference [interval], p, size, latency."""
    ref = row["variant"] == data["reference"]
    diff = (
        "reference"
        if ref
        else (
            f"{_signed(row['diff'])} [{_signed(row['diff_low'])}, {_signed(row['diff_high'])}]"
            if row.get("diff") is not None
            else row.get("diff_note") or "n/a"
        )
    )
    mean = (
        f"{_num(row['mean'])} [{_num(row['low'])}, {_num(row['high'])}]"
        if row.get("mean") is not None
        else "n/a"
    )
    p = "" if ref or row.get("p_value") is None else _num(row["p_value"], 3)
    params = f"{row['parameters'] / 1e6:.2f}M" if row.get("parameters") else "n/a"
    mb = _num(row.get("weights_mb"), 1)
    lat = _num(row.get("latency_ms"), 2)
    return [
        row["variant"] + (" *" if row.get("pareto") else ""),
        f"{row['seeds_ok']}/{row['seeds']}",
        mean,
        diff,
        p,
        "" if ref else row.get("verdict") or "",
        params,
        mb,
        lat,
        _num(row.get("train_s"), 1),
    ]


HEADER = ("variant", "seeds", "{metric} mean [95% CI]", "diff vs {reference} [95% CI]", "p", "verdict",
          "parameters", "weights MB", "latency ms (batch 1)", "train s (mean)")  # fmt: skip


def _header(data: dict) -> list[str]:
    return [h.format(metric=data["metric"], reference=data["reference"]) for h in HEADER]


COMPARISON_COLUMNS = ("variant", "against", "diff", "diff_low", "diff_high", "p_value", "verdict", "paired_seeds",
                      "diff_note")  # fmt: skip
COMPARISON_HEADER = ("variant", "against", "diff [95% CI]", "p", "verdict", "seeds paired")


def _comparison_cells(c: dict) -> list[str]:
    """One row of the other comparisons: variant, against, difference [interval] (or why none), p, verdict."""
    diff = (
        f"{_signed(c['diff'])} [{_signed(c['diff_low'])}, {_signed(c['diff_high'])}]"
        if c.get("diff") is not None
        else c.get("diff_note") or "n/a"
    )
    p = "" if c.get("p_value") is None else _num(c["p_value"], 3)
    return [c["variant"], c["against"], diff, p, c.get("verdict") or "", str(c.get("paired_seeds") or "")]


def _notes(data: dict) -> list[str]:
    return list(data.get("notes", []))


def _errors(data: dict) -> list[str]:
    """Each failed run's one-line error, and why a finished run was not scored."""
    return [
        f"{row['variant']}, seed {s}: {e}"
        for row in data["rows"]
        for s, e in [*row.get("errors", {}).items(), *row.get("notes", {}).items()]
    ]


def render_markdown(data: dict) -> str:
    lines = [f"# Sweep leaderboard: {data['title']}", "", f"Task {data['task']}; metric **{data['metric']}** "
             f"({'higher' if data['greater_is_better'] else 'lower'} is better); reference variant "
             f"**{data['reference']}**; seeds {', '.join(map(str, data['seeds']))}.", ""]  # fmt: skip
    head = _header(data)
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in _cells(r, data)) + " |" for r in data["rows"]]
    lines += [
        "",
        "`*`: on the Pareto front of quality and latency (no variant is both faster and better).",
        "",
    ]
    if data.get("comparisons"):
        lines += ["## Other comparisons", "", "| " + " | ".join(COMPARISON_HEADER) + " |",
                  "|" + "---|" * len(COMPARISON_HEADER)]  # fmt: skip
        lines += ["| " + " | ".join(_comparison_cells(c)) + " |" for c in data["comparisons"]] + [""]
    lines += [f"- {n}" for n in _notes(data)]
    errors = _errors(data)
    if errors:
        lines += ["", "## Failed runs (and runs not scored)", ""] + [f"- {e}" for e in errors]
    lines += ["", "## Variants", ""] + [f"- **{r['variant']}**: `{r['overrides']}`" for r in data["rows"]]
    if data.get("plot"):
        lines += ["", f"![quality vs latency]({data['plot']})"]
    return "\n".join(lines) + "\n"


def render_html(data: dict) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in _header(data))
    body = "".join(
        "<tr>" + "".join(f"<td>{e(c)}</td>" for c in _cells(r, data)) + "</tr>" for r in data["rows"]
    )
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>Sweep leaderboard: {e(data['title'])}</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child{text-align:left}</style>",
        f"</head><body><h1>Sweep leaderboard: {e(data['title'])}</h1>",
        f"<p>Task {e(data['task'])}; metric <b>{e(data['metric'])}</b>; reference <b>{e(data['reference'])}</b>; "
        f"seeds {e(', '.join(map(str, data['seeds'])))}. *: on the Pareto front.</p>",
        f"<table><tr>{head}</tr>{body}</table>",
        "<ul>" + "".join(f"<li>{e(n)}</li>" for n in _notes(data)) + "</ul>",
    ]
    if data.get("comparisons"):
        rows = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in _comparison_cells(x)) + "</tr>"
                       for x in data["comparisons"])  # fmt: skip
        parts.append(
            "<h2>Other comparisons</h2><table><tr>"
            + "".join(f"<th>{e(h)}</th>" for h in COMPARISON_HEADER)
            + f"</tr>{rows}</table>"
        )
    errors = _errors(data)
    if errors:
        parts.append(
            "<h2>Failed runs (and runs not scored)</h2><ul>"
            + "".join(f"<li>{e(x)}</li>" for x in errors)
            + "</ul>"
        )
    parts.append(
        "<h2>Variants</h2><ul>"
        + "".join(
            f"<li><b>{e(r['variant'])}</b>: <code>{e(r['overrides'])}</code></li>" for r in data["rows"]
        )
        + "</ul>"
    )
    if data.get("plot"):
        parts.append(f"<img src='{e(data['plot'])}' alt='quality vs latency'>")
    return "".join(parts) + "</body></html>\n"


def render_csv(data: dict) -> str:
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(COLUMNS)
    for row in data["rows"]:
        values = {**row, "errors": " | ".join(f"seed {s}: {x}" for s, x in row.get("errors", {}).items())}
        w.writerow(["" if values.get(c) is None else values.get(c) for c in COLUMNS])
    return out.getvalue()


def render_comparisons_csv(data: dict) -> str:
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(COMPARISON_COLUMNS)
    for c in data.get("comparisons", []):
        w.writerow(["" if c.get(k) is None else c.get(k) for k in COMPARISON_COLUMNS])
    return out.getvalue()


def plot(data: dict, path: Path) -> Path | None:
    """Quality (mean with its interval) against batch-1 latency, or against weights on disk when latency was not
    measured; the Pareto front joined and marked. None when no variant has both numbers."""
    rows = [r for r in data["rows"] if r.get("mean") is not None]
    cost = "latency_ms" if any(r.get("latency_ms") for r in rows) else "weights_mb"
    rows = [r for r in rows if r.get(cost) is not None]
    if not rows:
        return None
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    for r in rows:
        has = r.get("low") is not None and r.get("high") is not None
        err = [[max(0.0, r["mean"] - r["low"])], [max(0.0, r["high"] - r["mean"])]] if has else None
        ax.errorbar(r[cost], r["mean"], yerr=err, fmt="o", color="C1" if r["pareto"] else "C0", capsize=3)
        ax.annotate(r["variant"], (r[cost], r["mean"]), fontsize=7, xytext=(4, 4), textcoords="offset points")
    front = sorted((r[cost], r["mean"]) for r in rows if r["pareto"])
    if len(front) > 1:
        ax.plot(*zip(*front), color="C1", linestyle="--", linewidth=1, label="Pareto front")
        ax.legend(loc="best", fontsize=8)
    ax.set_xlabel("latency, batch 1 (ms)" if cost == "latency_ms" else "weights on disk (MB)")
    ax.set_ylabel(f"{data['metric']} (mean over seeds, 95% CI)")
    ax.set_title(f"Sweep {data['title']}: quality vs {'latency' if cost == 'latency_ms' else 'size'}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def write_leaderboard(data: dict, out: Path) -> dict[str, Path]:
    """Write leaderboard.json / .md / .html / .csv and the plot into ``out``; returns their paths by kind."""
    import json

    paths = {}
    png = plot(data, out / "quality_vs_latency.png") if data["rows"] else None
    data["plot"] = png.name if png else None
    if png:
        paths["png"] = png
    for kind, text in (("json", json.dumps(data, indent=2, default=str)), ("md", render_markdown(data)),
                       ("html", render_html(data)), ("csv", render_csv(data))):  # fmt: skip
        paths[kind] = write_text(out / f"leaderboard.{kind}", text, "output_dir")
    pairs = out / "comparisons.csv"
    if data.get("comparisons"):
        paths["comparisons_csv"] = write_text(pairs, render_comparisons_csv(data), "output_dir")
    elif pairs.is_file():  # an earlier leaderboard of this sweep had comparisons; this one has none
        pairs.unlink()
    return paths
