"""The task interface: what a task (classification, causal LM, ...) must say and do for the run driver.

A task is a small class: attributes say what it knows (its loss terms and default weights, its metrics and
which is primary, whether the teacher cache applies, its no-KD baseline, its recipes), methods say how its
data is read and collated, how the teacher and student are loaded or built, the objective of a stage, how a
model is evaluated, reloaded and saved. Everything else (output folder, seeding, the loop, keeping the best,
results.json) is the run driver's (:mod:`lmdistill.run`). Tasks are registered by name in
:mod:`lmdistill.tasks` (``task:`` in a config); nothing else in the package compares a task name with a string.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from torch import nn
from torch.utils.data import Dataset

from lmdistill.config.schema import Config, StageConfig, Verb
from lmdistill.objective import Objective

if TYPE_CHECKING:
    from lmdistill.data.text import OwnInputs


@dataclass
class Parts:
    """Everything a run needs, built by :meth:`Task.parts`.

    student: the model that trains (for finetune: the model itself); tokenizer: saved with it.
    teacher: the frozen teacher that runs live (None for finetune, or when its signal is precomputed).
    train_set, collate: the training examples and how a batch is made.
    objectives: one per stage (``stages``), in order.
    data: whatever the task's evaluate / results need (splits, held-out batches, retrieval sets).
    extra: task-specific fields for results.json, filled before training (e.g. split sizes).
    """

    student: nn.Module
    tokenizer: Any
    train_set: Dataset
    collate: Callable
    objectives: list[Objective]
    stages: list[StageConfig]
    teacher: nn.Module | None = None
    data: Any = None
    extra: dict = field(default_factory=dict)
    mix: Any = None
    """A :class:`lmdistill.data.sampler.Mix` when the training set holds unlabelled examples (batches mix them)."""


class Task(ABC):
    """Base class of every task; subclasses set the attributes and override the methods they need."""

    name: ClassVar[str]
    loss_terms: ClassVar[tuple[str, ...]] = ()
    """The names ``distill.losses`` may use."""
    default_losses: ClassVar[dict[str, float]] = {}
    """``distill.losses`` when not given."""
    metrics: ClassVar[dict[str, bool]] = {"loss": False}
    """Validation / test metrics the task measures -> greater is better."""
    primary_metric: ClassVar[str] = "loss"
    """The default ``training.metric_for_best`` and the report's headline metric."""
    report_metric: ClassVar[str | None] = None
    """The report's headline metric when it is not ``primary_metric`` (embedding: validation by loss, the
    report by retrieval MRR@10)."""
    cacheable: ClassVar[bool] = False
    """``training.teacher_cache`` applies (the teacher sees the same inputs every epoch)."""
    baseline_losses: ClassVar[dict[str, float] | None] = None
    """The no-KD baseline of ``compress``: the same student trained on these terms alone (None: compress does
    not apply)."""
    finetunes: ClassVar[bool] = True
    """``lmdistill finetune`` applies (a model trained on the data alone)."""
    streams: ClassVar[bool] = False
    """``data.streaming`` applies."""
    presets: ClassVar[dict[str, dict]] = {}
    """The recipes ``distill.method`` may name (partial configs laid under the user's keys)."""
    pipeline: ClassVar[str | None] = None
    """The transformers pipeline a saved model works in (for the model card)."""
    labelled: ClassVar[bool] = False
    """Its data has a label column (``data.label_column``)."""
    ensemble_combines: ClassVar[tuple[str, ...]] = ()
    """The ``ensemble.combine`` modes its teacher outputs allow (softmax over the last dimension for
    mean_probs / confidence); empty: no ``teachers:`` (:meth:`ensemble_teacher` loads one)."""

    # ---- configuration
    def measured(self, cfg: Config) -> tuple[str, ...]:
        """The metrics a run with this config measures (what ``training.metric_for_best`` may name)."""
        return tuple(self.metrics)

    def check(self, cfg: Config, verb: Verb | None) -> list[str]:
        """Problems with the task's own keys (one line each); the common keys are checked elsewhere."""
        return []

    def check_data(self, cfg: Config) -> list[str]:
        """Problems of the local data files (found, readable, known format, the columns the task reads), from
        their headers alone: run by ``lmdistill validate`` and before any model is loaded."""
        return []

    def resolve(self, cfg: Config) -> None:  # noqa: B027 - most tasks have nothing to resolve
        """Fill defaults that depend on other keys, so the saved config states exactly what ran."""

    # ---- the run
    @abstractmethod
    def parts(self, cfg: Config, verb: str) -> Parts:
        """Data, models, datasets, collator and the objective of every stage of a ``verb`` run."""

    @abstractmethod
    def evaluate(self, model: nn.Module, parts: Parts, split: str, objective: Objective) -> dict[str, float]:
        """Metrics of ``model`` on ``split`` (validation or test); {} when the split does not exist."""

    def has_split(self, parts: Parts, split: str) -> bool:
        """Whether ``split`` holds examples to evaluate on."""
        return False

    def save(self, model: nn.Module, tokenizer, path: Path, cfg: Config) -> None:
        """Write the model (and its tokenizer) into a new folder ``path`` (transformers format)."""
        model.save_pretrained(path, safe_serialization=True)
        tokenizer.save_pretrained(path)

    @abstractmethod
    def reload(self, path: Path, parts: Parts) -> nn.Module:
        """The saved model of ``path``, on the device of the trained student."""

    def results(self, parts: Parts, best: nn.Module, cfg: Config) -> dict:
        """Task-specific fields of results.json computed after training (e.g. the teacher's test score)."""
        return {}

    def ensemble_teacher(self, cfg: Config, key: str):
        """``(model, tokenizer)`` of ``cfg.teacher`` as this task loads its teacher (another teacher of an
        ensemble; ``key`` names it in messages)."""
        from lmdistill.errors import ConfigError

        raise ConfigError([f"{key}: task {self.name} takes one teacher"])

    def ensemble_inputs(self, parts: Parts, tokenizer, model, cfg: Config) -> OwnInputs | None:
        """For a teacher of an ensemble whose tokenizer differs from the others': its tokenization of the
        training examples (training example indices -> its padded inputs); None when the task's outputs are
        token-aligned (one tokenization only)."""
        return None

    # ---- saved models (evaluate, compress, report)
    @abstractmethod
    def load_saved(self, path: str | Path, key: str = "model"):
        """``(model, tokenizer)`` of a saved model of this task."""

    def owns(self, config: dict) -> bool:
        """Whether a saved model with this ``config.json`` content is a model of this task (for evaluate)."""
        return False

    # ---- the report (compress, report)
    def report_inputs(self, cfg: Config) -> ReportInputs:
        """The test split the report evaluates every model on, and the texts its speed runs use."""
        from lmdistill.errors import LmdistillError

        raise LmdistillError(
            f"report: task {self.name} has no compression report; evaluate its runs on their own"
        )

    def report_quality(self, model, tokenizer, cfg: Config, inputs: ReportInputs) -> Quality:
        """Test metrics of a loaded model with 95% intervals (``{metric: {value, low, high}}``), and the
        per-example scores the paired comparisons use."""
        from lmdistill.errors import LmdistillError

        raise LmdistillError(
            f"report: task {self.name} has no compression report; evaluate its runs on their own"
        )

    def report_compare(self, a: Quality, b: Quality, keys: tuple[str, str], cfg: Config) -> list[dict]:
        """Paired comparisons of two models on the same test examples (one dict per metric)."""
        return []

    def report_extras(self, q: Quality, teacher: Quality | None, cfg: Config) -> dict:
        """Task-specific fields of one model's report entry (e.g. calibration, agreement with the teacher)."""
        return {}

    def evaluate_saved(self, model: str | Path, **kwargs) -> EvalResult:
        """Metrics of a saved model on a split of a config's data or on a whole file (``lmdistill evaluate``)."""
        from lmdistill.errors import ModelError

        raise ModelError(
            f"model '{model}': lmdistill evaluate scores classifiers, regressors and causal LMs; a {self.name} "
            "model is scored when it is distilled (results.json), or a sentence-embedding model with "
            "lmdistill.evaluate_retrieval"
        )

    def usage(self, model_dir: str | Path) -> list[str]:
        """Python lines that load a saved model of this task and use it (the model card's example)."""
        return [
            "from transformers import pipeline",
            f'model = pipeline("{self.pipeline}", model="{model_dir}")',
        ]

    def __repr__(self) -> str:
        return f"<task {self.name}>"


# --------------------------------------------------------------------------------------------- shared helpers


def stages_of(cfg: Config) -> list[StageConfig]:
    """The stages to run: ``distill.stages``, or one stage made of ``distill.losses`` and ``matches``."""
    d = cfg.distill
    if d.stages:
        return d.stages
    return [StageConfig(name="distill", losses=d.losses, matches=d.matches, temperature=d.temperature)]


def stage_key(cfg: Config, index: int) -> str:
    """How a stage's keys are named in messages: ``distill`` or ``distill.stages[i]``."""
    return "distill" if not cfg.distill.stages else f"distill.stages[{index}]"


def stage_objective(
    cfg: Config,
    stage: StageConfig,
    student: nn.Module,
    teacher: nn.Module | None,
    key: str,
    objective_cls=None,
    **extra,
) -> Objective:
    """The objective of one stage: the stage's output terms (of ``objective_cls``) and its resolved matches,
    with the run's temperature, schedules and divergence."""
    from lmdistill.knowledge import ModelShape, resolve_matches

    objective_cls = objective_cls or Objective
    s_shape = ModelShape.of(student)
    t_shape = ModelShape.of(teacher) if teacher is not None else s_shape
    d = cfg.distill
    return objective_cls(
        stage.losses,
        stage.temperature or d.temperature,
        matches=resolve_matches(stage.matches, s_shape, t_shape, f"{key}.matches"),
        student_width=s_shape.width,
        teacher_width=t_shape.width,
        temperature_schedule=d.temperature_schedule,
        loss_schedules=d.loss_schedules,
        kd_scale_t2=d.kd_scale_t2,
        divergence=d.divergence,
        beta=d.beta,
        alpha=d.alpha,
        **extra,
    )


def make_student(cfg: Config, teacher: nn.Module, t_tok, load_pretrained: Callable):
    """``(student, tokenizer)`` as configured in ``student``: teacher layers (DistilBERT-style), a fresh smaller
    model of the teacher's class, or a pretrained model loaded by ``load_pretrained(spec, key)``."""
    from lmdistill.config.schema import ModelConfig
    from lmdistill.models.load import load_tokenizer
    from lmdistill.models.student import fresh_student, num_layers, select_layers, student_from_teacher

    s = cfg.student
    if s.init == "pretrained":
        return load_pretrained(ModelConfig(s.name_or_path, s.tokenizer, None, s.trust_remote_code), "student")
    tokenizer = load_tokenizer(s.tokenizer, "student.tokenizer") if s.tokenizer else t_tok
    if s.init == "config":
        shape = {
            "num_layers": s.num_layers,
            "hidden_size": s.hidden_size,
            "num_attention_heads": s.num_attention_heads,
            "intermediate_size": s.intermediate_size,
        }
        seed = cfg.seed if s.seed is None else s.seed
        return fresh_student(teacher, seed, **shape), tokenizer
    total = num_layers(teacher)
    if s.keep_every is not None:
        layers = list(range(0, total, s.keep_every))
    else:
        layers = s.layers if s.layers is not None else select_layers(total, s.num_layers, s.strategy)
    return student_from_teacher(teacher, layers), tokenizer


@dataclass
class ReportInputs:
    """What a report evaluates on: the test examples (task-specific), the texts its speed runs use, their
    token length, and a description of the evaluation set (None: it depends on each model's tokenizer)."""

    examples: Any
    texts: list[str]
    max_length: int
    evaluation: str | None
    notes: list[str] = field(default_factory=list)
    headline: str | None = None
    """The report's headline metric when the data decides it (token classification: entity F1 for BIO tags);
    None: the task's ``report_metric`` or ``primary_metric``."""


@dataclass
class Quality:
    """A model's test quality for the report: metrics with 95% intervals (``{metric: {value, low, high}}``), what
    they were computed on when that depends on the model (else None), and the per-example outputs that paired
    comparisons, agreement and calibration need: ``pred`` / ``gold`` (n,), ``probs`` (n, classes), ``nll``
    (per-sequence NLL sums and token counts), ``ratios`` (metric -> per-example ``(numerator, denominator)``
    (n,) arrays, the metric being sum(numerator) / sum(denominator); a mean has denominator 1: entity F1 as
    2 TP / (predicted + gold entities), a QA F1 or MRR per question) for metrics the other fields do not give
    per example."""

    metrics: dict
    evaluation: str | None = None
    pred: Any = None
    gold: Any = None
    probs: Any = None
    nll: Any = None
    ratios: Any = None


@dataclass
class EvalResult:
    """Metrics of a saved model on one split, and its predictions (label names, or numbers)."""

    model: str
    split: str
    n: int
    metrics: dict[str, float]
    predictions: list = field(default_factory=list, repr=False)
    labels: list = field(default_factory=list, repr=False)
    dtype: str = "fp32"

    def table(self) -> str:
        """A small text table of the metrics."""
        width = max(len(k) for k in self.metrics) if self.metrics else 6
        cast = "" if self.dtype == "fp32" else f" ({self.dtype})"
        lines = [f"{self.model}{cast} on {self.split} ({self.n} examples)", f"{'metric':<{width}}  value"]
        lines += [f"{k:<{width}}  {v:.4f}" for k, v in self.metrics.items()]
        return "\n".join(lines)


def refuse_other_label_names(
    teacher: list[str], data: list[str], noun: str, shown: int | None = None
) -> None:
    """One line when a teacher's label names (its ``id2label``) are not the data's, in order; generic names
    (``LABEL_0``, ``LABEL_1``, ...) and no names (regression) pass. ``shown``: how many names the line lists."""
    from lmdistill.errors import ModelError

    generic = all(n == f"LABEL_{i}" for i, n in enumerate(teacher))
    if teacher and not generic and teacher != data:
        raise ModelError(
            f"teacher.name_or_path: the teacher's {noun} {teacher[:shown]} differ from the data's {data[:shown]}; "
            "set data.label_names to the teacher's order"
        )
