"""The compression report: ``report.md`` and a self-contained ``report.html`` from one ``data`` dict.

It answers "what did distillation buy me and what did it cost?" for a teacher, a distilled student, a
student trained without distillation (the baseline), and any further models: compression steps
(vocabulary trimming, pruning, ...) and runtimes (ONNX Runtime fp32 / int8, bf16). Any model may be
missing: what exists is shown, what is missing says "n/a" and why. Figures that are missing or not
finite are never invented.

``data`` (:class:`ReportData`, plain JSON-like dicts; every key optional except ``models``)::

    title, task, evaluation: str          # e.g. "SST-2", "validation split, 872 examples"
    primary_metric: str                   # e.g. "accuracy"; default: the first metric of the student
    greater_is_better: {metric: bool}     # default: LOWER_IS_BETTER are lower-is-better, the rest higher
    environment: dict                     # measure.environment_info()
    notes: [str]
    models: {key: ModelEntry}             # ordered: the row order of every table
      role: str                           # teacher | student | baseline | step; default: the key if it
                                          #   is one of the three, else step
      label: str                          # display name; default from the role (+ the runtime)
      runtime: str                        # default "PyTorch fp32"; "ONNX Runtime int8", "PyTorch bf16"..
      step: str                           # the step that produced it: "trim vocabulary", "quantize int8"
      name: str                           # checkpoint id or path
      metrics: {metric: {"value", "low", "high"}}   # stats.metric_ci(...)._asdict() works too ("point")
      calibration: {"ece": {"value", "low", "high"}}  # paired.ece_ci(...), a fraction
      agreement: {"value", "low", "high"} # paired.agreement_ci(predictions, teacher's predictions)
      parameters: dict                    # measure.count_parameters()
      size: dict                          # measure.size_on_disk()
      latency: [dict]                     # measure.measure_latency(_interleaved)(), devices x batches
      memory: [dict]                      # measure.peak_memory() / inference_peak_memory()
      energy: dict                        # measure.measure_energy(..., predictions=N) of inference
      training: {"wall_time_s": float, "energy": dict (measure.track_energy), "history": [row] | path}
    comparisons: [Comparison]             # paired.comparison(...): a, b (keys of models), metric,
                                          #   difference {"value","low","high"} of a - b, p_value,
                                          #   test, verdict (for a), n

The teacher "as trained" is the teacher entry in runtime "PyTorch fp32" (else the first teacher); the
student and the baseline of the summary are chosen the same way. Speed-ups and compression are shown
against it and, with several runtimes, against the teacher served in the same runtime. The summary's
verdict on distillation comes from the student-vs-baseline comparison (paired bootstrap interval,
McNemar p-value); without one it falls back to whether the per-model intervals overlap.

A history row is one line of the engine's metrics.csv: ``{"step": 10, "loss": .., "loss/kd": ..}``;
every column starting with ``loss`` becomes a training curve. Metric values are fractions (0.91), shown
as percentages for bounded scores (:data:`PERCENT_METRICS`).
"""

from lmdistill.report.render.blocks import Bullets, Callout, Code, Image, Section, Table
from lmdistill.report.render.context import (
    DEFAULT_RUNTIME,
    LOWER_IS_BETTER,
    PERCENT_METRICS,
    ROLE_LABELS,
    ROLES,
    Comparison,
    Context,
    Interval,
    ModelEntry,
    ReportData,
    TrainingRun,
)
from lmdistill.report.render.output import build_sections, render_report, to_html, to_markdown
from lmdistill.report.render.plots import pareto_front, read_history

__all__ = [
    "DEFAULT_RUNTIME",
    "LOWER_IS_BETTER",
    "PERCENT_METRICS",
    "ROLES",
    "ROLE_LABELS",
    "Bullets",
    "Callout",
    "Code",
    "Comparison",
    "Context",
    "Image",
    "Interval",
    "ModelEntry",
    "ReportData",
    "Section",
    "Table",
    "TrainingRun",
    "build_sections",
    "pareto_front",
    "read_history",
    "render_report",
    "to_html",
    "to_markdown",
]
