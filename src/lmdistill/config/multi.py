"""Config of several teachers: ``teachers:`` (a teacher ensemble) and ``ensemble:`` (how their outputs make one
target per batch, or which one teaches each step: SKD). Checked by :func:`check_ensemble`; the run resolves
``teacher`` to the teacher that gives the layer knowledge (:func:`resolve_ensemble`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class TeacherSpec:
    """One teacher of an ensemble (``teachers:``): a fine-tuned model of the run's task."""

    name_or_path: str
    """Its folder or hub id."""
    name: str | None = None
    """How logs, results.json and ``ensemble.layers_from`` name it (default ``teacher0``, ``teacher1``, ...)."""
    tokenizer: str | None = None
    """Tokenizer folder or id when it differs from ``name_or_path``. Classification and regression teachers
    may each tokenize their own way (each reads the texts itself); token-level tasks need one tokenization."""
    revision: str | None = None
    trust_remote_code: bool = False
    weight: float = 1.0
    """Its weight in the combined target (normalised to sum 1) and, with ``ensemble.sampling: weights``, its
    share of the SKD draws. Must be >= 0."""
    temperature: float = 1.0
    """Its logits are divided by this before they are combined (or used alone under SKD); ``distill.temperature``
    then applies to the result as for a single teacher."""


@dataclass
class EnsembleSection:
    """How the teachers of ``teachers:`` teach (Hinton et al. 2015 ensembles; SKD: Ding et al. 2023, SKDBERT)."""

    combine: Literal["mean_probs", "mean_logits", "confidence"] = "mean_probs"
    """One target per batch from every teacher: mean_probs = log of the weighted mean of the teachers'
    probabilities; mean_logits = the weighted mean of their logits; confidence = the mean of probabilities with
    per-example weights proportional to weight x each teacher's largest probability. Not used when ``sampling``
    is set."""
    sampling: Literal["uniform", "weights", "validation"] | None = None
    """SKD: each optimizer step draws ONE teacher, which alone gives the output target: uniform, by the teachers'
    ``weight``, or validation = softmax(score / sampling_temperature) of each teacher's validation score. null:
    combine every teacher every step."""
    sampling_temperature: float = 1.0
    """The temperature of ``sampling: validation`` (small: mostly the best teacher; large: near uniform)."""
    scores: dict[str, float] | None = None
    """``sampling: validation``: each teacher's validation score by name (higher is better); null: measured once
    before training with ``training.metric_for_best`` on the validation split (a lower-is-better metric is
    negated)."""
    layers_from: str | None = None
    """The teacher (by name) whose hidden states and attention ``distill.matches`` read; null: the first."""


COMBINES = ("mean_probs", "mean_logits", "confidence")
SAMPLINGS = ("uniform", "weights", "validation")


def teacher_names(teachers: list[TeacherSpec]) -> list[str]:
    """Each teacher's name: ``name`` or ``teacherI``."""
    return [t.name or f"teacher{i}" for i, t in enumerate(teachers)]


def layers_index(teachers: list[TeacherSpec], ens: EnsembleSection) -> int:
    """The index of ``ensemble.layers_from`` (0 when null)."""
    names = teacher_names(teachers)
    return names.index(ens.layers_from) if ens.layers_from in names else 0


def check_ensemble(teachers: list[TeacherSpec], ens: EnsembleSection, teacher) -> list[str]:
    """Problems of ``teachers`` / ``ensemble`` (one line each); ``teacher`` is the ``teacher`` section, which must be
    unset with ``teachers`` (or name the same model as ``ensemble.layers_from``, as the resolved config does)."""
    errors: list[str] = []
    default = EnsembleSection()
    if not teachers:
        if ens != default:
            errors.append("ensemble: is set but teachers: is empty; list the teachers, or remove ensemble")
        return errors
    names = teacher_names(teachers)
    if len(teachers) < 2:
        errors.append("teachers: lists one model; give two or more, or use teacher: for a single teacher")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        errors.append(f"teachers: the name(s) {', '.join(dup)} appear twice; give every teacher its own name")
    for i, t in enumerate(teachers):
        if not t.weight >= 0 or t.weight == float("inf"):
            errors.append(f"teachers[{i}].weight must be a finite number >= 0, got {t.weight}")
        if not 0 < t.temperature < float("inf"):
            errors.append(f"teachers[{i}].temperature must be > 0, got {t.temperature}")
    if not sum(t.weight for t in teachers) > 0:
        errors.append("teachers: the weights sum to 0; give at least one teacher a positive weight")
    if ens.layers_from is not None and ens.layers_from not in names:
        errors.append(
            f"ensemble.layers_from '{ens.layers_from}' names no teacher (teachers: {', '.join(names)})"
        )
    if not 0 < ens.sampling_temperature < float("inf"):
        errors.append(f"ensemble.sampling_temperature must be > 0, got {ens.sampling_temperature}")
    if ens.scores is not None:
        if ens.sampling != "validation":
            errors.append(
                "ensemble.scores is read by sampling: validation only; remove it or set that sampling"
            )
        wrong = sorted(set(ens.scores) ^ set(names))
        if wrong:
            errors.append(
                f"ensemble.scores must give one score per teacher ({', '.join(names)}); check {wrong}"
            )
    if teacher.name_or_path is not None:
        chosen = teachers[layers_index(teachers, ens)]
        if (teacher.name_or_path, teacher.tokenizer) != (chosen.name_or_path, chosen.tokenizer):
            errors.append(
                "teacher: and teachers: are exclusive; list every teacher under teachers: and remove teacher:"
            )
    return errors


def resolve_ensemble(cfg) -> None:
    """``teacher`` := the ``ensemble.layers_from`` teacher (the model the task loads, builds the student from and
    reads layers of); the other teachers are loaded by the run (:mod:`lmdistill.signals.ensemble`)."""
    if not cfg.teachers:
        return
    t = cfg.teachers[layers_index(cfg.teachers, cfg.ensemble)]
    cfg.teacher.name_or_path, cfg.teacher.tokenizer = t.name_or_path, t.tokenizer
    cfg.teacher.revision, cfg.teacher.trust_remote_code = t.revision, t.trust_remote_code
