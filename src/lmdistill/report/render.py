"""The compression report: ``report.md`` and a self-contained ``report.html`` from one ``data`` dict.

It answers "what did distillation buy me and what did it cost?" for a teacher, a distilled student and
a student trained without distillation (the baseline). Any of the three may be missing: what exists is
shown, what is missing says "n/a" and why. Figures that are missing or not finite are never invented.

``data`` (:class:`ReportData`, plain JSON-like dicts; every key optional except ``models``)::

    title, task, evaluation: str          # e.g. "SST-2", "validation split, 872 examples"
    primary_metric: str                   # e.g. "accuracy"; default: the first metric of the student
    greater_is_better: {metric: bool}     # default: lmdistill.tasks.metrics.GREATER_IS_BETTER, else True
    environment: dict                     # measure.environment_info()
    notes: [str]
    models: {"teacher" | "student" | "baseline": ModelEntry}
      name: str                           # checkpoint id or path
      metrics: {metric: {"value", "low", "high"}}   # stats.metric_ci(...)._asdict() works too ("point")
      parameters: dict                    # measure.count_parameters()
      size: dict                          # measure.size_on_disk()
      latency: [dict]                     # measure.measure_latency(), any devices and batch sizes
      memory: [dict]                      # measure.peak_memory() / inference_peak_memory()
      energy: dict                        # measure.measure_energy(..., predictions=N) of inference
      training: {"wall_time_s": float, "energy": dict (measure.track_energy), "history": [row] | path}

A history row is one line of the engine's metrics.csv: ``{"step": 10, "loss": .., "loss/kd": ..}``;
every column starting with ``loss`` becomes a training curve. Metric values are fractions (0.91), shown
as percentages for bounded scores (:data:`PERCENT_METRICS`).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

ROLES = ("teacher", "student", "baseline")
ROLE_LABELS = {"teacher": "Teacher", "student": "Student (distilled)", "baseline": "Baseline (no KD)"}
ROLE_COLORS = {"teacher": "#4c72b0", "student": "#dd8452", "baseline": "#8c8c8c"}
MISSING_ROLE = {
    "teacher": "no teacher given: the share of its score kept, compression and speed-up cannot be computed",
    "student": "no distilled student given",
    "baseline": "no baseline (a student trained without distillation) given: the gain from distillation "
    "cannot be shown",
}
UNSTABLE_SPREAD = 2.0  # p90 / p10 of a latency above which the timings are flagged as unreliable
PERCENT_METRICS = {
    "accuracy",
    "macro_f1",
    "micro_f1",
    "f1",
    "precision",
    "recall",
    "pearson",
    "spearman",
    "matthews",
    "mcc",
    "exact_match",
}


class Interval(TypedDict):
    """A task metric as a fraction (0.91, not 91) with its 95% bootstrap interval."""

    value: float
    low: float
    high: float


class TrainingRun(TypedDict, total=False):
    """The run that trained a model: wall time, ``measure.track_energy`` result, and the logged history
    (metrics.csv rows, or the path of that file)."""

    wall_time_s: float
    energy: dict[str, Any]
    history: list[dict[str, Any]] | str


class ModelEntry(TypedDict, total=False):
    """One model (teacher, student or baseline); each key holds the result of one measure function."""

    name: str  # checkpoint id or path
    metrics: dict[str, Interval]  # stats.metric_ci(...)._asdict() (key "point") is accepted too
    parameters: dict[str, int]  # measure.count_parameters
    size: dict[str, int]  # measure.size_on_disk
    latency: list[dict[str, Any]]  # measure.measure_latency, one per device and batch size
    memory: list[dict[str, Any]]  # measure.inference_peak_memory (or peak_memory), one per device
    energy: dict[str, Any]  # measure.measure_energy(..., predictions=N) over inference
    training: TrainingRun


class ReportData(TypedDict, total=False):
    """Everything the report shows. Only ``models`` is needed; see the module docstring."""

    title: str
    task: str
    evaluation: str  # what the metrics were computed on, e.g. "validation split, 872 examples"
    primary_metric: str  # default: the first metric of the student
    greater_is_better: dict[str, bool]  # default: lmdistill.tasks.metrics.GREATER_IS_BETTER
    environment: dict[str, Any]  # measure.environment_info
    notes: list[str]
    models: dict[str, ModelEntry]  # "teacher", "student", "baseline"


# --------------------------------------------------------------------------------------------- blocks


NUMERIC = re.compile(r"^[+\-−]?[\d.,]")


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]

    def numeric(self, column: int) -> bool:
        """Right-align a column whose cells (n/a aside) all start with a number."""
        cells = [row[column] for row in self.rows if column < len(row) and not row[column].startswith("n/a")]
        return column > 0 and bool(cells) and all(NUMERIC.match(c) for c in cells)


@dataclass
class Image:
    filename: str
    caption: str
    png: bytes


@dataclass
class Callout:
    text: str
    kind: str = "note"  # "headline" | "summary" | "caveat" | "note"


@dataclass
class Code:
    text: str


@dataclass
class Bullets:
    items: list[str]


Block = str | Table | Image | Callout | Code | Bullets


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)


# --------------------------------------------------------------------------------------------- numbers


def finite(x: Any) -> bool:
    """A real, finite number (not None, not a bool, not NaN/inf)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def na(reason: str) -> str:
    return f"n/a ({reason})" if reason else "n/a"


def sig(x: float, digits: int = 3) -> str:
    """``digits`` significant digits, thousands separators, never scientific notation."""
    if x == 0:
        return "0"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(x))))
    return f"{x:,.{decimals}f}"


def si(x: Any, unit: str, reason: str = "not measured") -> str:
    """A quantity with an SI prefix chosen so that 1 <= mantissa < 1000: 0.0123 s -> '12.3 ms'."""
    if not finite(x):
        return na(reason)
    if x == 0:
        return f"0 {unit}"
    x = float(f"{x:.3g}")  # round first, so that 999.96 ms becomes 1.00 s, not 1,000 ms
    prefixes = [(1e9, "G"), (1e6, "M"), (1e3, "k"), (1, ""), (1e-3, "m"), (1e-6, "µ"), (1e-9, "n")]
    scale, prefix = next(((s, p) for s, p in prefixes if abs(x) >= s), prefixes[-1])
    return f"{sig(x / scale)} {prefix}{unit}"


def count(x: Any, reason: str = "not measured") -> str:
    """A parameter count: 4,386,563 -> '4.39 M'."""
    if not finite(x):
        return na(reason)
    scale, suffix = next(((s, p) for s, p in [(1e9, " B"), (1e6, " M"), (1e3, " k")] if x >= s), (1, ""))
    return f"{sig(x / scale)}{suffix}" if scale > 1 else f"{x:,.0f}"


def duration(x: Any, reason: str = "not recorded") -> str:
    """Wall time: '48.2 s', '12.5 min', '3 h 05 min'."""
    if not finite(x):
        return na(reason)
    if x < 60:
        return si(x, "s")
    if x < 3600:
        return f"{x / 60:.1f} min"
    hours, minutes = divmod(round(x / 60), 60)
    return f"{hours} h {minutes:02d} min"


def size(x: Any, reason: str = "not measured") -> str:
    """Bytes in decimal units: 17,612,345 -> '17.6 MB'."""
    return si(x, "B", reason)


def ratio(x: Any, reason: str) -> str:
    """A factor: 3.21 -> '3.2×'."""
    return f"{x:.1f}×" if finite(x) and x < 10 else f"{x:.0f}×" if finite(x) else na(reason)


def divide(a: Any, b: Any) -> float | None:
    return a / b if finite(a) and finite(b) and b != 0 else None


def get(mapping: Any, *keys: str) -> Any:
    """mapping[k1][k2]..., or None where any level is missing."""
    for key in keys:
        if not isinstance(mapping, dict):
            return None
        mapping = mapping.get(key)
    return mapping


# --------------------------------------------------------------------------------------------- context


@dataclass
class Context:
    """The data with its defaults resolved."""

    data: dict
    models: dict[str, dict]
    roles: list[str]
    primary: str | None
    greater: dict[str, bool]

    @classmethod
    def build(cls, data: dict) -> Context:
        models = {k: v for k, v in (data.get("models") or {}).items() if isinstance(v, dict)}
        roles = list(ROLES) + [r for r in models if r not in ROLES]
        return cls(data, models, roles, _primary_metric(data, models), _greater_is_better(data))

    def present(self, role: str) -> bool:
        return role in self.models

    def label(self, role: str) -> str:
        return ROLE_LABELS.get(role, role)

    def is_percent(self, metric: str) -> bool:
        return metric in PERCENT_METRICS

    def metric_names(self) -> list[str]:
        names = [self.primary] if self.primary else []
        for role in self.roles:
            names += [m for m in get(self.models.get(role), "metrics") or {} if m not in names]
        return names


def _primary_metric(data: dict, models: dict) -> str | None:
    if data.get("primary_metric"):
        return data["primary_metric"]
    for role in ("student", *models):
        metrics = get(models.get(role), "metrics")
        if metrics:
            return next(iter(metrics))
    return None


def _greater_is_better(data: dict) -> dict[str, bool]:
    try:
        from lmdistill.tasks.metrics import GREATER_IS_BETTER
    except ImportError:
        GREATER_IS_BETTER = {}  # noqa: N806
    return {**GREATER_IS_BETTER, **(data.get("greater_is_better") or {})}


def interval(entry: dict | None, metric: str) -> tuple[float | None, float | None, float | None]:
    """(value, low, high) of a metric; accepts {"value"|"point", "low", "high"}, [p, lo, hi] or a float."""
    raw = get(entry, "metrics", metric)
    if isinstance(raw, dict):
        raw = (raw.get("value", raw.get("point")), raw.get("low"), raw.get("high"))
    elif finite(raw):
        raw = (raw, None, None)
    if not isinstance(raw, (list, tuple)) or len(raw) != 3:
        return None, None, None
    return tuple(float(v) if finite(v) else None for v in raw)  # type: ignore[return-value]


def show_metric(ctx: Context, metric: str, x: float | None) -> str:
    if x is None:
        return "n/a"
    return f"{100 * x:.1f}" if ctx.is_percent(metric) else sig(x, 4)


def metric_cell(ctx: Context, role: str, metric: str) -> str:
    if not ctx.present(role):
        return "n/a"
    value, low, high = interval(ctx.models[role], metric)
    if value is None:
        return na("not evaluated")
    if low is None or high is None:
        return f"{show_metric(ctx, metric, value)} (no interval)"
    return f"{show_metric(ctx, metric, value)} [{show_metric(ctx, metric, low)}, {show_metric(ctx, metric, high)}]"


def role_row(ctx: Context, role: str, cells: list[str]) -> list[str]:
    """A table row: the role's label, then its cells; a missing role gets one n/a with the reason."""
    if not ctx.present(role):
        return [ctx.label(role), na("model not given")] + ["n/a"] * (len(cells) - 1)
    return [ctx.label(role), *cells]


def model_name(ctx: Context, role: str) -> str:
    return str(get(ctx.models.get(role), "name") or ("n/a" if ctx.present(role) else na("model not given")))


# --------------------------------------------------------------------------------------------- summary


def retention(ctx: Context, metric: str) -> str:
    """The share of the teacher's score the student keeps ('97.1%'); for lower-is-better metrics the
    ratio of the student's figure to the teacher's ('1.12× the teacher's')."""
    student, _, _ = interval(ctx.models.get("student"), metric)
    teacher, _, _ = interval(ctx.models.get("teacher"), metric)
    share = divide(student, teacher)
    if share is None:
        missing = [r for r in ("teacher", "student") if interval(ctx.models.get(r), metric)[0] is None]
        return na(f"no {metric} for the {' and '.join(missing)}" if missing else "teacher score is 0")
    return f"{100 * share:.1f}%" if ctx.greater.get(metric, True) else f"{share:.2f}× the teacher's"


def retention_text(ctx: Context, metric: str) -> str:
    """'keeps 97.1% of the teacher's accuracy' (or the ratio for lower-is-better metrics)."""
    kept = retention(ctx, metric)
    if ctx.greater.get(metric, True) or kept.startswith("n/a"):
        return f"keeps {kept} of the teacher's {metric}"
    return f"has {kept} {metric} (lower is better)"


def latency(entry: dict | None, device: str, batch: int) -> dict | None:
    """The latency measurement of a model on a device type at a batch size, if any."""
    for item in get(entry, "latency") or []:
        if item.get("device") == device and item.get("batch_size") == batch:
            return item
    return None


def speedup(ctx: Context, role: str, device: str, batch: int) -> float | None:
    """Teacher's time over this model's: median latency at batch 1, throughput at larger batches."""
    mine, ref = (
        latency(ctx.models.get(role), device, batch),
        latency(ctx.models.get("teacher"), device, batch),
    )
    if batch == 1:
        return divide(get(ref, "median_s"), get(mine, "median_s"))
    return divide(get(mine, "examples_per_s"), get(ref, "examples_per_s"))


def summary_device(ctx: Context) -> str | None:
    devices = {
        i.get("device")
        for e in ctx.models.values()
        for i in e.get("latency") or []
        if i.get("batch_size") == 1
    }
    return "cpu" if "cpu" in devices else next(iter(sorted(d for d in devices if d)), None)


def smaller(ctx: Context, role: str) -> tuple[float | None, str]:
    """Compression vs the teacher: weights on disk when both were measured, else parameter count."""
    mine, ref = ctx.models.get(role), ctx.models.get("teacher")
    on_disk = divide(get(ref, "size", "weights_bytes"), get(mine, "size", "weights_bytes"))
    if on_disk is not None:
        return on_disk, "weights on disk"
    return divide(get(ref, "parameters", "total"), get(mine, "parameters", "total")), "parameters"


def speed_phrase(ctx: Context) -> str:
    """'at 3.2× the speed (CPU latency, batch 1)', or why not."""
    device = summary_device(ctx)
    speed = speedup(ctx, "student", device, 1) if device else None
    if speed is None:
        return "speed-up n/a (no batch-1 latency for both teacher and student)"
    return f"at {ratio(speed, '')} the speed ({device.upper()} latency, batch 1)"


def size_phrase(ctx: Context) -> str:
    """'4.0× smaller (weights on disk)', or why not."""
    factor, basis = smaller(ctx, "student")
    if factor is None:
        return "compression n/a (no size or parameter count for both teacher and student)"
    return f"{ratio(factor, '')} smaller ({basis})"


def summary_lines(ctx: Context) -> list[Block]:
    missing = [r for r in ("teacher", "student") if not ctx.present(r)]
    if missing or not ctx.primary:
        why = f"missing: {', '.join(missing)}" if missing else "no task metric given"
        text = f"Summary n/a: the report needs a teacher and a student with a task metric ({why})."
        return [Callout(text, "headline")]
    text = f"The student {retention_text(ctx, ctx.primary)} {speed_phrase(ctx)}, {size_phrase(ctx)}."
    return [Callout(text, "headline"), Callout(gain_text(ctx, ctx.primary), "summary")]


def pair(ctx: Context, metric: str) -> tuple[tuple, tuple] | None:
    """(student, baseline) intervals of a metric, or None where either score is missing."""
    student = interval(ctx.models.get("student"), metric)
    baseline = interval(ctx.models.get("baseline"), metric)
    return None if student[0] is None or baseline[0] is None else (student, baseline)


def gain(ctx: Context, metric: str) -> str:
    """The student's gain over the baseline: '+1.8 points' (or the raw difference, better side first)."""
    if not ctx.present("baseline"):
        return na("no baseline given")
    scores = pair(ctx, metric)
    if scores is None:
        return na(f"no {metric} for both student and baseline")
    better = scores[0][0] - scores[1][0] if ctx.greater.get(metric, True) else scores[1][0] - scores[0][0]
    if ctx.is_percent(metric):
        return f"{100 * better:+.1f} points"
    direction = "higher" if ctx.greater.get(metric, True) else "lower"
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
    verdict = overlaps(ctx, metric)
    if verdict is None:
        return na("no intervals for both")
    return "overlap: the gain may be noise" if verdict else "no overlap"


def gain_text(ctx: Context, metric: str) -> str:
    """The summary sentence on the gain over the baseline, with both intervals."""
    if not ctx.present("baseline"):
        return "Gain over the no-KD baseline: n/a (no baseline given)."
    text = f"Gain over the no-KD baseline in {metric}: {gain(ctx, metric)}."
    if pair(ctx, metric) is None:
        return text
    verdict = {
        None: "",
        True: ": the 95% intervals overlap, so the gain may be noise",
        False: ": the 95% intervals do not overlap",
    }[overlaps(ctx, metric)]
    return (
        f"{text} Student {metric_cell(ctx, 'student', metric)} vs baseline "
        f"{metric_cell(ctx, 'baseline', metric)}{verdict}."
    )


# --------------------------------------------------------------------------------------------- sections


def quality_section(ctx: Context) -> Section:
    section = Section("Quality")
    metrics = ctx.metric_names()
    if not metrics:
        section.blocks.append(na("no task metrics given"))
        return section
    scale = "scores ×100 for bounded metrics" if any(ctx.is_percent(m) for m in metrics) else "raw scores"
    where = f" on {ctx.data['evaluation']}" if ctx.data.get("evaluation") else ""
    section.blocks.append(f"Task metrics{where}, {scale}, with 95% bootstrap intervals [low, high].")
    header = ["Model", "Checkpoint"] + [f"{m} (primary)" if m == ctx.primary else m for m in metrics]
    rows = [
        role_row(ctx, r, [model_name(ctx, r)] + [metric_cell(ctx, r, m) for m in metrics]) for r in ctx.roles
    ]
    section.blocks.append(Table(header, rows))
    header = [
        "Metric",
        "Share of the teacher's score kept",
        "Student gain over baseline",
        "Student",
        "Baseline",
        "95% intervals",
    ]
    compare = [
        [
            m,
            retention(ctx, m),
            gain(ctx, m),
            metric_cell(ctx, "student", m),
            metric_cell(ctx, "baseline", m),
            overlap(ctx, m),
        ]
        for m in metrics
    ]
    section.blocks.append(Table(header, compare))
    return section


def vs_teacher(ctx: Context, entry: dict | None, *keys: str) -> str:
    """How many times smaller than the teacher by one measure ('3.8×')."""
    factor = divide(get(ctx.models.get("teacher"), *keys), get(entry, *keys))
    return ratio(factor, "not measured" if ctx.present("teacher") else "no teacher")


def size_section(ctx: Context) -> Section:
    header = [
        "Model",
        "Parameters",
        "Without embeddings",
        "Weights on disk",
        "Folder on disk",
        "Compression vs teacher (parameters)",
        "Compression vs teacher (disk)",
    ]
    rows = []
    for role in ctx.roles:
        entry = ctx.models.get(role)
        cells = [
            count(get(entry, "parameters", "total")),
            count(get(entry, "parameters", "without_embeddings")),
            size(get(entry, "size", "weights_bytes")),
            size(get(entry, "size", "total_bytes")),
            vs_teacher(ctx, entry, "parameters", "total"),
            vs_teacher(ctx, entry, "size", "weights_bytes"),
        ]
        rows.append(role_row(ctx, role, cells))
    note = "Embeddings: all nn.Embedding parameters (word, position, token type), tied weights counted once."
    return Section("Size", [Table(header, rows), note])


def devices_and_batches(ctx: Context) -> dict[str, list[int]]:
    found: dict[str, set[int]] = {}
    for entry in ctx.models.values():
        for item in entry.get("latency") or []:
            if item.get("device") and finite(item.get("batch_size")):
                found.setdefault(item["device"], set()).add(int(item["batch_size"]))
    return {d: sorted(b) for d, b in sorted(found.items(), key=lambda kv: kv[0] != "cpu")}


def speed_cells(ctx: Context, role: str, device: str, batch: int) -> list[str]:
    item = latency(ctx.models.get(role), device, batch)
    teacher_reason = "no teacher" if not ctx.present("teacher") else "not measured"
    up = ratio(speedup(ctx, role, device, batch), teacher_reason)
    if batch == 1:
        median, p10, p90 = (get(item, k) for k in ("median_s", "p10_s", "p90_s"))
        spread = f" ({si(p10, 's')} – {si(p90, 's')})" if finite(p10) and finite(p90) else ""
        return [si(median, "s") + (spread if finite(median) else ""), up]
    rate = get(item, "examples_per_s")
    return [f"{sig(rate)} ex/s" if finite(rate) else na("not measured"), up]


def memory_cells(entry: dict | None, device: str) -> list[str]:
    """[peak, 'weights + inference'] from inference_peak_memory; [increase, n/a] from a bare peak_memory."""
    item = next((m for m in get(entry, "memory") or [] if m.get("device") == device), None)
    if item is None or not item.get("measured", True):
        return [na(get(item, "reason") or "not measured"), "n/a"]
    increase = size(item.get("increase_bytes"))
    if finite(item.get("peak_bytes")) and finite(item.get("weights_bytes")):
        return [size(item["peak_bytes"]), f"{size(item['weights_bytes'])} + {increase}"]
    return [f"+{increase}", na("weights not given")]


def memory_header(ctx: Context, device: str) -> str:
    batches = sorted(
        {
            m.get("batch_size")
            for e in ctx.models.values()
            for m in e.get("memory") or []
            if m.get("device") == device and finite(m.get("batch_size"))
        }
    )
    return f"Peak memory{', batch ' + ', '.join(map(str, batches)) if batches else ''}"


def speed_table(ctx: Context, device: str, batches: list[int]) -> Table:
    header = ["Model"]
    for batch in batches:
        kind = "Latency (median, p10 – p90)" if batch == 1 else "Throughput"
        header += [f"{kind}, batch {batch}", f"Speed-up vs teacher, batch {batch}"]
    header += [memory_header(ctx, device), "Memory: weights + inference"]
    rows = []
    for role in ctx.roles:
        cells = [c for b in batches for c in speed_cells(ctx, role, device, b)]
        rows.append(role_row(ctx, role, cells + memory_cells(ctx.models.get(role), device)))
    return Table(header, rows)


def speed_notes(ctx: Context, device: str) -> list[Block]:
    items = [i for e in ctx.models.values() for i in e.get("latency") or [] if i.get("device") == device]
    names = sorted({str(i.get("device_name")) for i in items})
    threads = sorted({i.get("threads") for i in items if finite(i.get("threads"))})
    runs = sorted({(i.get("batch_size"), i.get("n"), i.get("warmup")) for i in items}, key=str)
    how = "; ".join(f"Batch {b}: {n} timed runs after {w} warm-up runs" for b, n, w in runs)
    lengths = ", ".join(sorted({str(i.get("max_length")) for i in items}))
    blocks: list[Block] = [
        f"{device.upper()}: {', '.join(names)}, {'/'.join(map(str, threads))} torch threads. {how}. "
        f"Inputs truncated to {lengths} tokens and padded to the longest of each batch; speed-ups are "
        "the teacher's median latency over the model's (batch 1) and the model's throughput over the "
        "teacher's (larger batches)."
    ]
    blocks += unstable_timings(ctx, device)
    if len(threads) > 1:
        blocks.append(
            Callout(
                "The models were timed with different thread counts: speed-ups mix hardware settings.",
                "caveat",
            )
        )
    methods = {
        m.get("method")
        for e in ctx.models.values()
        for m in e.get("memory") or []
        if m.get("device") == device and m.get("method")
    }
    blocks += [f"Peak memory: {m}." for m in sorted(methods)]
    return blocks


def unstable_timings(ctx: Context, device: str) -> list[Block]:
    """A caveat when p90 is more than UNSTABLE_SPREAD times p10: a busy or throttling machine."""
    noisy = []
    for role in ctx.roles:
        for item in get(ctx.models.get(role), "latency") or []:
            spread = divide(item.get("p90_s"), item.get("p10_s"))
            if item.get("device") == device and spread is not None and spread > UNSTABLE_SPREAD:
                noisy.append(f"{ctx.label(role)} at batch {item.get('batch_size')} ({spread:.1f}×)")
    if not noisy:
        return []
    text = (
        f"Timings vary widely (p90 over p10): {', '.join(noisy)}. The machine was probably busy or "
        "throttling; treat these latencies and speed-ups with caution and rerun on an idle machine."
    )
    return [Callout(text, "caveat")]


def speed_section(ctx: Context) -> Section:
    section = Section("Speed and memory")
    grouped = devices_and_batches(ctx)
    if not grouped:
        section.blocks.append(na("no latency measured"))
    for device, batches in grouped.items():
        section.blocks += [speed_table(ctx, device, batches), *speed_notes(ctx, device)]
    return section


def energy_cells(result: dict | None, per_thousand: bool) -> list[str]:
    """Energy, CO2 and power source of a measure_energy/track_energy result (per 1,000 predictions or
    in total)."""
    if not result or not result.get("measured"):
        return [na(get(result, "reason") or "not measured"), "n/a", "n/a"]
    suffix = "_per_1000" if per_thousand else ""
    energy, co2 = result.get(f"energy_kwh{suffix}"), result.get(f"emissions_kg_co2{suffix}")
    missing = "no prediction count" if per_thousand else "not measured"
    source = "estimated" if result.get("estimated", True) else "measured (power sensor)"
    return [
        si(energy * 1000 if finite(energy) else None, "Wh", missing),
        si(co2 * 1000 if finite(co2) else None, "g CO2e", result.get("emissions_reason") or missing),
        source,
    ]


def measured_over(result: dict | None) -> str:
    """'6,144 predictions in 1.20 s': how much inference an energy figure rests on."""
    if not result or not result.get("measured"):
        return "n/a"
    predictions = result.get("predictions")
    amount = f"{predictions:,} predictions" if finite(predictions) else "n/a predictions"
    return f"{amount} in {duration(result.get('duration_s'))}"


def training_cells(training: dict | None) -> list[str]:
    """Wall time, energy, CO2 and power source of a recorded training run."""
    if not training:
        return [na("no training run recorded"), "n/a", "n/a", "n/a"]
    wall = training.get("wall_time_s", get(training, "energy", "wall_time_s"))
    return [duration(wall), *energy_cells(training.get("energy"), False)]


def energy_section(ctx: Context) -> Section:
    section = Section("Energy and CO2")
    inference = []
    for role in ctx.roles:
        result = get(ctx.models.get(role), "energy")
        inference.append(role_row(ctx, role, [*energy_cells(result, True), measured_over(result)]))
    section.blocks += [
        "Inference, per 1,000 predictions:",
        Table(["Model", "Energy", "CO2", "Power source", "Measured over"], inference),
    ]
    runs = [role_row(ctx, role, training_cells(get(ctx.models.get(role), "training"))) for role in ctx.roles]
    section.blocks += [
        "Training run (distillation for the student, fine-tuning without KD for the baseline):",
        Table(["Run", "Wall time", "Energy", "CO2", "Power source"], runs),
    ]
    section.blocks += energy_caveats(ctx)
    return section


def energy_results(ctx: Context) -> list[dict]:
    found = [get(e, "energy") for e in ctx.models.values()] + [
        get(e, "training", "energy") for e in ctx.models.values()
    ]
    return [r for r in found if isinstance(r, dict) and r.get("measured")]


def energy_caveats(ctx: Context) -> list[Block]:
    results = energy_results(ctx)
    if not results:
        return []
    blocks: list[Block] = []
    for method in sorted({r.get("method", "unknown") for r in results if r.get("estimated", True)}):
        blocks.append(Callout(f"Estimated, not measured by a power sensor: {method}.", "caveat"))
    sensed = sorted({r.get("method", "") for r in results if not r.get("estimated", True)})
    blocks += [f"Measured: {m}." for m in sensed]
    countries = sorted({str(r.get("country_iso_code")) for r in results})
    blocks.append(
        f"CO2 from the average carbon intensity of the electricity grid of {', '.join(countries)} "
        "(codecarbon offline data); energy and CO2 figures from codecarbon."
    )
    return blocks


def environment_section(ctx: Context) -> Section:
    env = ctx.data.get("environment")
    if not isinstance(env, dict):
        return Section("Environment", [na("no environment recorded")])
    cores = [
        f"{env.get(k)} {w}"
        for k, w in (
            ("cpu_physical_cores", "physical"),
            ("cpu_logical_cores", "logical"),
            ("cpu_usable_cores", "usable by this process"),
        )
        if env.get(k)
    ]
    rows = [
        ["CPU", f"{env.get('cpu', 'n/a')} ({', '.join(cores) or 'cores n/a'})"],
        ["Torch threads", str(env.get("torch_threads", "n/a"))],
        ["GPU", ", ".join(env.get("gpus") or []) or "none"],
        ["CUDA", str(env.get("cuda") or "n/a")],
        ["RAM", size(env.get("ram_bytes"))],
        ["OS", str(env.get("os", "n/a"))],
        ["Python", str(env.get("python", "n/a"))],
    ]
    rows += [[name, str(version)] for name, version in (env.get("libraries") or {}).items()]
    blocks: list[Block] = [Table(["", ""], rows)]
    if env.get("command"):
        blocks += ["Command:", Code(str(env["command"]))]
    return Section("Environment", blocks)


# --------------------------------------------------------------------------------------------- plots


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


def _figure(width: float, height: float):
    from matplotlib.figure import Figure  # object API: no pyplot, no global backend switch

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", facecolor="white")
    return buffer.getvalue()


def plot_points(ctx: Context, device: str) -> list[tuple[str, float, float | None, float | None, dict]]:
    """(role, score, low, high, batch-1 latency) of every model with both figures."""
    points = []
    for role in ctx.roles:
        value, low, high = interval(ctx.models.get(role), ctx.primary) if ctx.primary else (None, None, None)
        item = latency(ctx.models.get(role), device, 1)
        if value is not None and finite(get(item, "median_s")):
            points.append((role, value, low, high, item))
    return points


def _errors(centre: float, low: Any, high: Any, scale: float) -> list[list[float]] | None:
    if not (finite(low) and finite(high)):
        return None
    return [[max(0.0, centre - low * scale)], [max(0.0, high * scale - centre)]]


def quality_latency_plot(ctx: Context) -> Image | str:
    device = summary_device(ctx)
    points = plot_points(ctx, device) if device else []
    if not points:
        return na("quality vs latency: needs a primary metric and batch-1 latency for at least one model")
    fig = _figure(6.4, 4.0)
    ax = fig.add_subplot()
    scale = 100 if ctx.is_percent(ctx.primary) else 1
    for role, value, low, high, item in points:
        x, y = item["median_s"] * 1000, value * scale
        ax.errorbar(
            x,
            y,
            xerr=_errors(x, item.get("p10_s"), item.get("p90_s"), 1000),
            yerr=_errors(y, low, high, scale),
            fmt="o",
            ms=8,
            capsize=4,
            lw=1.5,
            color=ROLE_COLORS.get(role, "#333"),
            label=ctx.label(role),
        )
    xs = [p[4]["median_s"] for p in points]
    if max(xs) / min(xs) > 20:
        ax.set_xscale("log")
    ax.margins(x=0.15, y=0.15)
    ax.set_xlabel(f"Latency, batch 1, {device.upper()} (ms, median; bars: p10 – p90)")
    ax.set_ylabel(f"{ctx.primary}{' (%)' if scale == 100 else ''} (bars: 95% CI)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    better = "up and to the left" if ctx.greater.get(ctx.primary, True) else "down and to the left"
    return Image("quality_vs_latency.png", f"{ctx.primary} against latency: {better} is better.", _png(fig))


def loss_terms(runs: dict[str, list[dict]]) -> list[str]:
    terms = sorted({k for rows in runs.values() for r in rows for k in r if k.startswith("loss")})
    return sorted(terms, key=lambda t: (t != "loss", t))


def training_plot(ctx: Context) -> Image | str:
    runs = {r: history(ctx.models.get(r)) for r in ctx.roles}
    runs = {r: rows for r, rows in runs.items() if rows}
    terms = loss_terms(runs)
    if not terms:
        return na("training curves: no training history with loss columns given")
    cols = min(3, len(terms))
    nrows = math.ceil(len(terms) / cols)
    fig = _figure(4.0 * cols, 3.0 * nrows)
    for i, term in enumerate(terms):
        ax = fig.add_subplot(nrows, cols, i + 1)
        for role, rows in runs.items():
            pts = [(r["step"], r[term]) for r in rows if finite(r.get("step")) and finite(r.get(term))]
            if pts:
                ax.plot(*zip(*pts), label=ctx.label(role), color=ROLE_COLORS.get(role, "#333"), lw=1.5)
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
    return Section("Plots", [quality_latency_plot(ctx), training_plot(ctx)])


# --------------------------------------------------------------------------------------------- output


def build_sections(ctx: Context) -> list[Section]:
    intro = Section("Summary", summary_lines(ctx))
    missing = [f"{ctx.label(r)}: {MISSING_ROLE[r]}." for r in ROLES if not ctx.present(r)]
    if missing:
        intro.blocks.append(Bullets(missing))
    sections = [
        intro,
        quality_section(ctx),
        size_section(ctx),
        speed_section(ctx),
        energy_section(ctx),
        plots_section(ctx),
        environment_section(ctx),
    ]
    if ctx.data.get("notes"):
        sections.append(Section("Notes", [Bullets([str(n) for n in ctx.data["notes"]])]))
    return sections


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(title: str, subtitle: str, sections: list[Section]) -> str:
    lines = [f"# {title}", ""] + ([subtitle, ""] if subtitle else [])
    for section in sections:
        lines += [f"## {section.title}", ""]
        for block in section.blocks:
            if isinstance(block, Table):
                rules = ["---:" if block.numeric(j) else ":---" for j in range(len(block.header))]
                lines += ["| " + " | ".join(map(_md_cell, block.header)) + " |", "|" + "|".join(rules) + "|"]
                lines += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in block.rows]
            elif isinstance(block, Image):
                lines.append(f"![{block.caption}]({block.filename})")
            elif isinstance(block, Callout):
                lines.append(f"> {'**' + block.text + '**' if block.kind == 'headline' else block.text}")
            elif isinstance(block, Code):
                lines += ["```", block.text, "```"]
            elif isinstance(block, Bullets):
                lines += [f"- {item}" for item in block.items]
            else:
                lines.append(block)
            lines.append("")
    return "\n".join(lines)


CSS = """
body{margin:0;background:#f6f7f9;color:#1f2328;font:15px/1.55 -apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1120px;margin:24px auto;padding:28px 36px 48px;background:#fff;border:1px solid #e3e6ea;border-radius:10px}
h1{font-size:26px;margin:0 0 2px}
.subtitle{color:#59636e;margin:0 0 18px}
h2{font-size:19px;margin:34px 0 10px;padding-bottom:6px;border-bottom:1px solid #e3e6ea}
p{margin:8px 0}
.callout{padding:10px 14px;border-radius:6px;margin:10px 0;border-left:4px solid}
.summary{background:#eef5ff;border-color:#0969da}
.headline{background:#eef5ff;border-color:#0969da;font-size:17px;font-weight:600}
.caveat{background:#fff8e1;border-color:#d4a72c}
.note{background:#f6f8fa;border-color:#8c959f}
table{border-collapse:collapse;width:100%;margin:10px 0 14px;font-size:14px;font-variant-numeric:tabular-nums}
th,td{padding:7px 10px;border-bottom:1px solid #e3e6ea;text-align:left;vertical-align:top}
th.num,td.num{text-align:right}
th:first-child,td:first-child{white-space:nowrap}
th{background:#f6f8fa;font-weight:600;font-size:13px;color:#424a53}
tbody tr:hover{background:#fafbfc}
td.na{color:#8c959f}
td .why{font-size:12px}
figure{margin:14px 0;text-align:center}
figure img{max-width:100%;border:1px solid #e3e6ea;border-radius:6px}
figcaption{color:#59636e;font-size:13px;margin-top:4px}
pre{background:#f6f8fa;padding:10px 12px;border-radius:6px;white-space:pre-wrap;word-break:break-all;font-size:13px}
code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
ul{margin:8px 0;padding-left:22px}
"""


def _html_cell(text: str, tag: str, numeric: bool) -> str:
    classes = ["num"] if numeric else []
    content = html.escape(text)
    if text.startswith("n/a"):
        classes.append("na")
        reason = text[3:].strip()
        content = "n/a" + (f' <span class="why">{html.escape(reason)}</span>' if reason else "")
    attribute = f' class="{" ".join(classes)}"' if classes else ""
    return f"<{tag}{attribute}>{content}</{tag}>"


def _html_table(table: Table) -> str:
    """A table; a header of empty cells (a key/value table) is left out."""
    numeric = [table.numeric(j) for j in range(len(table.header))]
    head = "".join(_html_cell(h, "th", n) for h, n in zip(table.header, numeric)) if any(table.header) else ""
    body = "".join(
        "<tr>" + "".join(_html_cell(c, "td", n) for c, n in zip(row, numeric)) + "</tr>" for row in table.rows
    )
    thead = f"<thead><tr>{head}</tr></thead>" if head else ""
    return f"<table>{thead}<tbody>{body}</tbody></table>"


def _html_block(block: Block) -> str:
    if isinstance(block, Table):
        return _html_table(block)
    if isinstance(block, Image):
        data = base64.b64encode(block.png).decode("ascii")
        caption = html.escape(block.caption)
        return f'<figure><img alt="{caption}" src="data:image/png;base64,{data}"><figcaption>{caption}</figcaption></figure>'
    if isinstance(block, Callout):
        return f'<div class="callout {block.kind}">{html.escape(block.text)}</div>'
    if isinstance(block, Code):
        return f"<pre><code>{html.escape(block.text)}</code></pre>"
    if isinstance(block, Bullets):
        return "<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in block.items) + "</ul>"
    return (
        f'<p class="na">{html.escape(block)}</p>'
        if block.startswith("n/a")
        else f"<p>{html.escape(block)}</p>"
    )


def to_html(title: str, subtitle: str, sections: list[Section]) -> str:
    parts = [f"<h1>{html.escape(title)}</h1>"]
    if subtitle:
        parts.append(f'<p class="subtitle">{html.escape(subtitle)}</p>')
    for section in sections:
        parts.append(f"<section><h2>{html.escape(section.title)}</h2>")
        parts += [_html_block(b) for b in section.blocks]
        parts.append("</section>")
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head>"
        f"<body><main>{''.join(parts)}</main></body></html>\n"
    )


def render_report(data: ReportData | dict, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``report.md`` (with its PNG plots beside it) and a self-contained ``report.html`` into
    ``out_dir``; returns their paths. See the module docstring for the ``data`` format."""
    ctx = Context.build(dict(data))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    title = str(ctx.data.get("title") or "Compression report")
    subtitle = " · ".join(str(ctx.data[k]) for k in ("task", "evaluation") if ctx.data.get(k))
    sections = build_sections(ctx)
    for block in (b for s in sections for b in s.blocks if isinstance(b, Image)):
        (out / block.filename).write_bytes(block.png)
    md_path, html_path = out / "report.md", out / "report.html"
    md_path.write_text(to_markdown(title, subtitle, sections), encoding="utf-8")
    html_path.write_text(to_html(title, subtitle, sections), encoding="utf-8")
    return md_path, html_path
