"""The teachers of ``teachers:`` loaded as the run's task loads its teacher, checked against each other, and made
into one :class:`~lmdistill.signals.ensemble.EnsembleTeacher` (ensembles and SKD: docs/methods.md).

The task has already loaded ``teacher`` (resolved to ``ensemble.layers_from``), built the student from it and
set up its objectives; the other teachers are loaded here, must predict the same labels (outputs of the same
shape, checked on every batch), and read the same inputs unless the task gives a teacher with another tokenizer
its own (:meth:`~lmdistill.tasks.base.Task.ensemble_inputs`: classification and regression)."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from lmdistill.config.multi import layers_index, teacher_names
from lmdistill.config.schema import Config, ModelConfig
from lmdistill.data.text import tokenizers_match
from lmdistill.errors import ConfigError, ModelError
from lmdistill.signals.ensemble import EnsembleTeacher, sampling_probs
from lmdistill.tasks.base import Parts, Task


@dataclass
class Loaded:
    """The teachers of an ensemble: models and tokenizers in ``teachers:`` order, and per teacher whose tokenizer
    differs from the layer teacher's, its inputs (training example indices -> padded inputs)."""

    models: list
    tokenizers: list
    inputs: dict[int, Callable]


def load_teachers(cfg: Config, task: Task, parts: Parts) -> Loaded:
    """Every teacher of ``cfg.teachers`` in order (the layer teacher is ``parts.teacher``), each checked to
    predict the labels of the layer teacher, and to tokenize as it does unless the task can feed each teacher
    its own inputs (sequence tasks: :meth:`~lmdistill.tasks.base.Task.ensemble_inputs`)."""
    from lmdistill.models.load import load_tokenizer

    main = layers_index(cfg.teachers, cfg.ensemble)
    loaded = Loaded([], [], {})
    for i, spec in enumerate(cfg.teachers):
        if i == main:
            model, tok = parts.teacher, load_tokenizer(cfg.teacher, "teacher.tokenizer")
        else:
            one = copy.copy(cfg)
            one.teacher = ModelConfig(
                spec.name_or_path, spec.tokenizer, spec.revision, spec.trust_remote_code
            )
            model, tok = task.ensemble_teacher(one, f"teachers[{i}].name_or_path")
        loaded.models.append(model)
        loaded.tokenizers.append(tok)
    for i in range(len(cfg.teachers)):
        if i != main:
            _check_same(cfg, (i, main), (loaded.models[i], parts.teacher))
            if not tokenizers_match(loaded.tokenizers[i], loaded.tokenizers[main]):
                loaded.inputs[i] = _own_inputs(cfg, task, parts, loaded, (i, main))
    return loaded


def _own_inputs(cfg: Config, task: Task, parts: Parts, loaded: Loaded, index: tuple[int, int]) -> Callable:
    """Teacher ``index[0]``'s own inputs, or a one-line refusal (token-aligned tasks)."""
    names = teacher_names(cfg.teachers)
    i, main = index
    inputs = task.ensemble_inputs(parts, loaded.tokenizers[i], loaded.models[i], cfg)
    if inputs is None:
        raise ConfigError(
            [
                f"teachers[{i}] ({names[i]}): its tokenizer differs from {names[main]}'s; task {cfg.task} "
                "aligns outputs token by token, so give teachers that share one tokenizer"
            ]
        )
    return inputs


def _check_same(cfg: Config, index: tuple[int, int], models: tuple) -> None:
    """Teacher ``index[0]`` predicts the labels of the layer teacher ``index[1]``."""
    names = teacher_names(cfg.teachers)
    i, main = index
    a, b = (getattr(m, "config", None) for m in models)
    if a is not None and b is not None and getattr(a, "num_labels", None) is not None:
        la = [str(a.id2label[k]) for k in sorted(a.id2label)]
        lb = [str(b.id2label[k]) for k in sorted(b.id2label)]
        if la != lb:
            raise ModelError(
                f"teachers[{i}] ({names[i]}): its labels {la[:8]} differ from {names[main]}'s {lb[:8]}; output "
                "KD needs every teacher to predict the same labels in the same order"
            )


def validation_scores(cfg: Config, task: Task, parts: Parts, loaded: Loaded) -> list[float]:
    """Each teacher's ``training.metric_for_best`` on the validation split (negated when lower is better), or
    ``ensemble.scores`` when given. The teachers are scored on the student's inputs (same tokenizer needed)."""
    names = teacher_names(cfg.teachers)
    if cfg.ensemble.scores is not None:
        return [float(cfg.ensemble.scores[n]) for n in names]
    if not task.has_split(parts, "validation"):
        raise ConfigError(
            ["ensemble.sampling validation: the data has no validation split; give ensemble.scores instead"]
        )
    other = [
        n
        for n, tok in zip(names, loaded.tokenizers, strict=True)
        if not tokenizers_match(parts.tokenizer, tok)
    ]
    if other:
        raise ConfigError(
            [
                "ensemble.sampling validation scores the teachers on the student's inputs, but the tokenizer of "
                f"{', '.join(other)} differs from the student's; give ensemble.scores instead"
            ]
        )
    metric = cfg.training.metric_for_best
    sign = 1.0 if task.metrics.get(metric, True) else -1.0
    device = next(parts.student.parameters()).device
    scores = []
    for model in loaded.models:
        was = next(model.parameters()).device
        scores.append(
            sign * float(task.evaluate(model.to(device), parts, "validation", parts.objectives[0])[metric])
        )
        model.to(was)
    return scores


class _OutputsOnly:
    """An objective seen by a cache build as reading the teacher's outputs alone (the teachers other than
    ``ensemble.layers_from`` give no layer knowledge, and may have other depths)."""

    def __init__(self, objective):
        self.objective = objective
        self.temperature_schedule = objective.temperature_schedule

    def teacher_reads(self):
        return dataclasses.replace(self.objective.teacher_reads(), hidden=(), features=())


def ensemble_signal(cfg: Config, task: Task, parts: Parts, cache: Callable | None = None) -> EnsembleTeacher:
    """The run's :class:`EnsembleTeacher`: every teacher loaded, the SKD distribution (if any) fixed before
    training, the layer knowledge from ``ensemble.layers_from``. ``cache(model, objectives, name)`` (the run's
    ``training.teacher_cache``; ``data``: ``(dataset, collate)`` to build it from instead of the run's, for a
    teacher with its own tokenizer) returns a teacher's cache, or None; each teacher then has its own, of what
    the objectives read from it: outputs, plus the layers of the layer teacher."""
    e = cfg.ensemble
    loaded = load_teachers(cfg, task, parts)
    models = loaded.models
    names = teacher_names(cfg.teachers)
    layers = layers_index(cfg.teachers, e)
    caches = {}
    for i, (model, name) in enumerate(zip(models, names, strict=True)):
        objectives = parts.objectives if i == layers else [_OutputsOnly(o) for o in parts.objectives]
        own = loaded.inputs.get(i)  # a teacher with its own tokenizer: its cache is built from its own inputs
        data = (own, own.collate) if own is not None else None
        found = cache(model, objectives, name, data) if cache is not None else None
        if found is not None:
            caches[i] = found
    weights = [t.weight for t in cfg.teachers]
    probs = None
    if e.sampling is not None:
        scores = validation_scores(cfg, task, parts, loaded) if e.sampling == "validation" else None
        probs = sampling_probs(e.sampling, weights, scores, e.sampling_temperature)
        if scores is not None:
            print("ensemble: validation scores " + ", ".join(f"{n} {s:.4f}" for n, s in zip(names, scores)))
    objectives = parts.objectives

    def reads() -> tuple[bool, object]:
        # the stage in training is the one whose taps are attached; hidden states when any stage reads them
        taps = [o.teacher_tap for o in objectives if o.teacher_tap is not None]
        return any(o.needs_hidden for o in objectives), taps[0] if taps else None

    return EnsembleTeacher(
        models,
        names,
        weights,
        [t.temperature for t in cfg.teachers],
        combine=e.combine,
        probs=probs,
        seed=cfg.seed,
        layers=layers,
        reads=reads,
        caches=caches,
        inputs=loaded.inputs,
    )
