"""The report's data with its defaults resolved: which entry is the teacher, labels, runtimes, metrics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypedDict

from lmdistill.report.render.blocks import divide, finite, get, na, sig

ROLES = ("teacher", "student", "baseline")
ROLE_LABELS = {"teacher": "Teacher", "student": "Student (distilled)", "baseline": "Baseline (no KD)"}
ROLE_COLORS = {"teacher": "#4c72b0", "student": "#dd8452", "baseline": "#8c8c8c"}
STEP_COLORS = ("#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#64b5cd", "#ccb974")
MISSING_ROLE = {
    "teacher": "no teacher given: the share of its score kept, compression and speed-up cannot be computed",
    "student": "no distilled student given",
    "baseline": "no baseline (a student trained without distillation) given: the gain from distillation "
    "cannot be shown",
}
DEFAULT_RUNTIME = "PyTorch fp32"
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
# Lower-is-better metrics known without being told; data["greater_is_better"] overrides and adds (the
# pipeline should pass lmdistill.tasks.metrics.GREATER_IS_BETTER, which this low layer must not import).
LOWER_IS_BETTER = ("mse", "rmse", "loss", "perplexity", "mlm_loss", "embedding_mse", "margin_mse", "ece")


class Interval(TypedDict):
    """A figure as a fraction (0.91, not 91) with its 95% bootstrap interval."""

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
    """One model of the report; each measurement key holds the result of one measure function."""

    role: str  # "teacher" | "student" | "baseline" | "step"; default: the key when it is one of the three
    label: str  # display name; default from the role (and the runtime when not PyTorch fp32)
    runtime: str  # "PyTorch fp32" (default), "ONNX Runtime int8", "PyTorch bf16", ...
    step: str  # the compression step that produced it: "trim vocabulary", "quantize int8", ...
    name: str  # checkpoint id or path
    metrics: dict[str, Interval]  # stats.metric_ci(...)._asdict() (key "point") is accepted too
    calibration: dict[str, Interval]  # {"ece": paired.ece_ci(...)}, as a fraction
    agreement: Interval  # paired.agreement_ci(predictions, teacher's predictions)
    parameters: dict[str, int]  # measure.count_parameters
    size: dict[str, int]  # measure.size_on_disk
    latency: list[dict[str, Any]]  # measure.measure_latency(_interleaved), one per device and batch size
    memory: list[dict[str, Any]]  # measure.inference_peak_memory (or peak_memory), one per device
    energy: dict[str, Any]  # measure.measure_energy(..., predictions=N) over inference
    training: TrainingRun


class Comparison(TypedDict, total=False):
    """A paired comparison of two entries on the same test examples: ``paired.comparison(...)``."""

    a: str  # key of data["models"]
    b: str
    metric: str
    difference: dict[str, float | None]  # a - b: {"value", "low", "high"}
    p_value: float | None
    test: str  # "paired bootstrap", "McNemar exact (accuracy)", ...
    verdict: str  # "better" | "worse" | "not distinguishable at 95%" (a compared with b)
    n: int  # test examples


class ReportData(TypedDict, total=False):
    """Everything the report shows. Only ``models`` is needed; see the package docstring."""

    title: str
    task: str
    evaluation: str  # what the metrics were computed on, e.g. "validation split, 872 examples"
    primary_metric: str  # default: the first metric of the student
    greater_is_better: dict[str, bool]  # default: LOWER_IS_BETTER are lower, the rest higher
    environment: dict[str, Any]  # measure.environment_info
    notes: list[str]
    models: dict[str, ModelEntry]  # ordered: the order of every table's rows
    comparisons: list[Comparison]


def as_interval(raw: Any) -> tuple[float | None, float | None, float | None]:
    """(value, low, high) of {"value"|"point", "low", "high"}, [p, lo, hi] or a bare number."""
    if isinstance(raw, dict):
        raw = (raw.get("value", raw.get("point")), raw.get("low"), raw.get("high"))
    elif finite(raw):
        raw = (raw, None, None)
    if not isinstance(raw, (list, tuple)) or len(raw) != 3:
        return None, None, None
    return tuple(float(v) if finite(v) else None for v in raw)  # type: ignore[return-value]


def interval(entry: dict | None, metric: str) -> tuple[float | None, float | None, float | None]:
    """(value, low, high) of a task metric of an entry."""
    return as_interval(get(entry, "metrics", metric))


@dataclass
class Context:
    """The data with its defaults resolved. ``keys``: the entries in order; a role without any entry
    gets a placeholder row (``missing_roles``) in each table."""

    data: dict
    models: dict[str, dict]
    primary: str | None
    greater: dict[str, bool]
    labels: dict[str, str]

    @classmethod
    def build(cls, data: dict) -> Context:
        models = {str(k): v for k, v in (data.get("models") or {}).items() if isinstance(v, dict)}
        greater = {**dict.fromkeys(LOWER_IS_BETTER, False), **(data.get("greater_is_better") or {})}
        return cls(data, models, _primary_metric(data, models), greater, _labels(models))

    @property
    def keys(self) -> list[str]:
        return list(self.models)

    def entry(self, key: str | None) -> dict | None:
        return self.models.get(key) if key is not None else None

    def role(self, key: str) -> str:
        return role_of(key, self.models.get(key) or {})

    def runtime(self, key: str | None) -> str:
        return str(get(self.entry(key), "runtime") or DEFAULT_RUNTIME)

    def label(self, key: str | None) -> str:
        return self.labels.get(key, ROLE_LABELS.get(key, str(key))) if key is not None else "n/a"

    def of_role(self, role: str) -> list[str]:
        return [k for k in self.models if self.role(k) == role]

    def main(self, role: str) -> str | None:
        """The entry of a role as trained: the one in the default runtime, else the first."""
        keys = self.of_role(role)
        return next((k for k in keys if self.runtime(k) == DEFAULT_RUNTIME), keys[0] if keys else None)

    @property
    def teacher(self) -> str | None:
        """The reference teacher: the teacher as trained (PyTorch fp32), else the first teacher."""
        return self.main("teacher")

    def same_runtime_teacher(self, key: str) -> str | None:
        """The first teacher served in the same runtime as ``key``."""
        return next((k for k in self.of_role("teacher") if self.runtime(k) == self.runtime(key)), None)

    @property
    def missing_roles(self) -> list[str]:
        return [r for r in ROLES if self.main(r) is None]

    def several_runtimes(self) -> bool:
        return len({self.runtime(k) for k in self.models}) > 1

    def explicit_runtimes(self) -> bool:
        return any("runtime" in e for e in self.models.values())

    def is_percent(self, metric: str) -> bool:
        return metric in PERCENT_METRICS

    def greater_is_better(self, metric: str) -> bool:
        return bool(self.greater.get(metric, True))

    def metric_names(self) -> list[str]:
        names = [self.primary] if self.primary else []
        for entry in self.models.values():
            names += [m for m in get(entry, "metrics") or {} if m not in names]
        return names

    def color(self, key: str) -> str:
        role = self.role(key)
        if role in ROLE_COLORS and self.main(role) == key:
            return ROLE_COLORS[role]
        others = [
            k for k in self.models if not (self.role(k) in ROLE_COLORS and self.main(self.role(k)) == k)
        ]
        return STEP_COLORS[others.index(key) % len(STEP_COLORS)]


def role_of(key: str, entry: dict) -> str:
    return str(entry.get("role") or (key if key in ROLES else "step"))


def _labels(models: dict[str, dict]) -> dict[str, str]:
    """Display names: ``label``, else the role's name (the key for steps), with the runtime when it is
    not the default; a name that would still repeat gets its key in brackets."""
    labels = {}
    for key, entry in models.items():
        if entry.get("label"):
            labels[key] = str(entry["label"])
            continue
        role = role_of(key, entry)
        base = ROLE_LABELS.get(role, key)
        runtime = entry.get("runtime")
        labels[key] = f"{base}, {runtime}" if runtime and runtime != DEFAULT_RUNTIME else base
    repeated = {v for v in labels.values() if list(labels.values()).count(v) > 1}
    return {k: f"{v} [{k}]" if v in repeated else v for k, v in labels.items()}


def _primary_metric(data: dict, models: dict) -> str | None:
    if data.get("primary_metric"):
        return data["primary_metric"]
    students = [k for k, e in models.items() if role_of(k, e) == "student"]
    for key in (*students, *models):
        metrics = get(models.get(key), "metrics")
        if metrics:
            return next(iter(metrics))
    return None


# --------------------------------------------------------------------------------------------- cells


def show_metric(ctx: Context, metric: str, x: float | None) -> str:
    if x is None:
        return "n/a"
    return f"{100 * x:.1f}" if ctx.is_percent(metric) else sig(x, 4)


def interval_cell(ctx: Context, metric: str, raw: Any, missing: str = "not evaluated") -> str:
    """'90.0 [88.0, 92.0]', '0.5000 (no interval)' or n/a with the reason."""
    value, low, high = as_interval(raw)
    if value is None:
        return na(missing)
    if low is None or high is None:
        return f"{show_metric(ctx, metric, value)} (no interval)"
    return f"{show_metric(ctx, metric, value)} [{show_metric(ctx, metric, low)}, {show_metric(ctx, metric, high)}]"


def metric_cell(ctx: Context, key: str | None, metric: str) -> str:
    if ctx.entry(key) is None:
        return "n/a"
    return interval_cell(ctx, metric, get(ctx.entry(key), "metrics", metric))


def model_name(ctx: Context, key: str) -> str:
    return str(get(ctx.entry(key), "name") or "n/a")


def retention(ctx: Context, key: str | None, metric: str) -> str:
    """The share of the reference teacher's score an entry keeps ('97.1%'); for lower-is-better
    metrics the ratio of its figure to the teacher's ('1.12× the teacher's')."""
    mine, _, _ = interval(ctx.entry(key), metric)
    teacher, _, _ = interval(ctx.entry(ctx.teacher), metric)
    share = divide(mine, teacher)
    if share is None:
        who = {"the teacher": teacher, ctx.label(key): mine}
        missing = [name for name, value in who.items() if value is None]
        return na(f"no {metric} for {' and '.join(missing)}" if missing else "teacher score is 0")
    return f"{100 * share:.1f}%" if ctx.greater_is_better(metric) else f"{share:.2f}× the teacher's"


# --------------------------------------------------------------------------------------------- speed and size


def latency(entry: dict | None, device: str, batch: int) -> dict | None:
    """The latency measurement of a model on a device type at a batch size, if any."""
    for item in get(entry, "latency") or []:
        if item.get("device") == device and item.get("batch_size") == batch:
            return item
    return None


def speedup(ctx: Context, key: str | None, ref: str | None, device: str, batch: int) -> float | None:
    """``ref``'s time over this model's: median latency at batch 1, throughput at larger batches."""
    mine, theirs = latency(ctx.entry(key), device, batch), latency(ctx.entry(ref), device, batch)
    if batch == 1:
        return divide(get(theirs, "median_s"), get(mine, "median_s"))
    return divide(get(mine, "examples_per_s"), get(theirs, "examples_per_s"))


def summary_device(ctx: Context) -> str | None:
    devices = {
        i.get("device")
        for e in ctx.models.values()
        for i in e.get("latency") or []
        if i.get("batch_size") == 1
    }
    return "cpu" if "cpu" in devices else next(iter(sorted(d for d in devices if d)), None)


def smaller(ctx: Context, key: str | None, ref: str | None = None) -> tuple[float | None, str]:
    """Compression vs ``ref`` (default: the reference teacher): weights on disk when both were measured,
    else parameter count."""
    mine, theirs = ctx.entry(key), ctx.entry(ref if ref is not None else ctx.teacher)
    on_disk = divide(get(theirs, "size", "weights_bytes"), get(mine, "size", "weights_bytes"))
    if on_disk is not None:
        return on_disk, "weights on disk"
    return divide(get(theirs, "parameters", "total"), get(mine, "parameters", "total")), "parameters"
