"""The teachers of ``teachers:`` loaded as the run's task loads its teacher, checked against each other, and made
into one :class:`~lmdistill.signals.ensemble.EnsembleTeacher` (ensembles and SKD: docs/methods.md).

The task has already loaded ``teacher`` (resolved to ``ensemble.layers_from``), built the student from it and
set up its objectives; the other teachers are loaded here and must read the same inputs (same tokenizer) and
give outputs of the same shape (checked on every batch)."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable

from lmdistill.config.multi import layers_index, teacher_names
from lmdistill.config.schema import Config, ModelConfig
from lmdistill.data.text import tokenizers_match
from lmdistill.errors import ConfigError, ModelError
from lmdistill.signals.ensemble import EnsembleTeacher, sampling_probs
from lmdistill.tasks.base import Parts, Task


def load_teachers(cfg: Config, task: Task, parts: Parts) -> tuple[list, object]:
    """Every teacher of ``cfg.teachers`` in order (the layer teacher is ``parts.teacher``), each checked to
    tokenize as the layer teacher does and to predict the same labels; and the layer teacher's tokenizer."""
    from lmdistill.models.load import load_tokenizer

    main = layers_index(cfg.teachers, cfg.ensemble)
    main_tok = load_tokenizer(cfg.teacher, "teacher.tokenizer")
    models = []
    for i, spec in enumerate(cfg.teachers):
        if i == main:
            models.append(parts.teacher)
            continue
        one = copy.copy(cfg)
        one.teacher = ModelConfig(spec.name_or_path, spec.tokenizer, spec.revision, spec.trust_remote_code)
        model, tok = task.ensemble_teacher(one, f"teachers[{i}].name_or_path")
        _check_same(cfg, (i, main), (model, parts.teacher), (tok, main_tok))
        models.append(model)
    return models, main_tok


def _check_same(cfg: Config, index: tuple[int, int], models: tuple, toks: tuple) -> None:
    """Teacher ``index[0]`` reads the inputs of the layer teacher ``index[1]`` and predicts its labels."""
    names = teacher_names(cfg.teachers)
    i, main = index
    if not tokenizers_match(*toks):
        raise ConfigError(
            [
                f"teachers[{i}] ({names[i]}): its tokenizer differs from {names[main]}'s; every teacher of an "
                "ensemble reads the same inputs, so give teachers that share one tokenizer"
            ]
        )
    a, b = (getattr(m, "config", None) for m in models)
    if a is not None and b is not None and getattr(a, "num_labels", None) is not None:
        la = [str(a.id2label[k]) for k in sorted(a.id2label)]
        lb = [str(b.id2label[k]) for k in sorted(b.id2label)]
        if la != lb:
            raise ModelError(
                f"teachers[{i}] ({names[i]}): its labels {la[:8]} differ from {names[main]}'s {lb[:8]}; output "
                "KD needs every teacher to predict the same labels in the same order"
            )


def validation_scores(cfg: Config, task: Task, parts: Parts, models: list, teacher_tok) -> list[float]:
    """Each teacher's ``training.metric_for_best`` on the validation split (negated when lower is better), or
    ``ensemble.scores`` when given. The teachers are scored on the student's inputs (same tokenizer needed)."""
    names = teacher_names(cfg.teachers)
    if cfg.ensemble.scores is not None:
        return [float(cfg.ensemble.scores[n]) for n in names]
    if not task.has_split(parts, "validation"):
        raise ConfigError(
            ["ensemble.sampling validation: the data has no validation split; give ensemble.scores instead"]
        )
    if not tokenizers_match(parts.tokenizer, teacher_tok):
        raise ConfigError(
            [
                "ensemble.sampling validation scores the teachers on the student's inputs, but the student's "
                "tokenizer differs from the teachers'; give ensemble.scores instead"
            ]
        )
    metric = cfg.training.metric_for_best
    sign = 1.0 if task.metrics.get(metric, True) else -1.0
    device = next(parts.student.parameters()).device
    scores = []
    for model in models:
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
    ``training.teacher_cache``) returns a teacher's cache, or None; each teacher then has its own, of what the
    objectives read from it: outputs, plus the layers of the layer teacher."""
    e = cfg.ensemble
    models, teacher_tok = load_teachers(cfg, task, parts)
    names = teacher_names(cfg.teachers)
    layers = layers_index(cfg.teachers, e)
    caches = {}
    for i, (model, name) in enumerate(zip(models, names, strict=True)):
        objectives = parts.objectives if i == layers else [_OutputsOnly(o) for o in parts.objectives]
        found = cache(model, objectives, name) if cache is not None else None
        if found is not None:
            caches[i] = found
    weights = [t.weight for t in cfg.teachers]
    probs = None
    if e.sampling is not None:
        scores = (
            validation_scores(cfg, task, parts, models, teacher_tok) if e.sampling == "validation" else None
        )
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
    )
