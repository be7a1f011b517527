"""Tasks: one module per task, each a :class:`~lmdistill.tasks.base.Task`, found by ``task:`` in this registry.

Adding a task is one new module and one line in :data:`TASKS` (see docs/extending.md). This module also
holds the whole config loader, :func:`load_config`: the generic schema and checks of :mod:`lmdistill.config`
plus each task's own checks, recipes and defaults.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import NamedTuple

from lmdistill.config.assistant import check_assistants
from lmdistill.config.checks import (
    check_common,
    check_compress,
    check_distill,
    check_report,
    check_student,
    check_verb,
)
from lmdistill.config.load import build_config, deep_merge, raw_config, suggest
from lmdistill.config.mutual import check_mutual
from lmdistill.config.schema import Config, Verb
from lmdistill.errors import ConfigError
from lmdistill.tasks.base import Task

TASKS: dict[str, str] = {
    "classification": "lmdistill.tasks.classification:ClassificationTask",
    "regression": "lmdistill.tasks.classification:RegressionTask",
    "causal_lm": "lmdistill.tasks.causal_lm:CausalLMTask",
    "mlm": "lmdistill.tasks.mlm:MLMTask",
    "general": "lmdistill.tasks.general:GeneralTask",
    "embedding": "lmdistill.tasks.embedding:EmbeddingTask",
    "token_classification": "lmdistill.tasks.token_classification:TokenClassificationTask",
    "question_answering": "lmdistill.tasks.question_answering:QuestionAnsweringTask",
}
"""Task name (``task:`` in a config) -> ``module:class``; modules are imported when first used."""

_LOADED: dict[str, Task] = {}


def get_task(name: str) -> Task:
    """The :class:`Task` registered as ``name``."""
    if name not in TASKS:
        raise ConfigError([unknown_task(name)])
    if name not in _LOADED:
        module, cls = TASKS[name].split(":")
        _LOADED[name] = getattr(importlib.import_module(module), cls)()
    return _LOADED[name]


def task_for_saved(model: str | Path) -> Task:
    """The task whose models look like the saved model at ``model`` (by its config.json); classification
    when none does (its loader then says what is wrong with the folder)."""
    import json

    try:
        config = json.loads((Path(model).expanduser() / "config.json").read_text())
    except (OSError, ValueError):
        config = {}
    found = next((get_task(n) for n in TASKS if isinstance(config, dict) and get_task(n).owns(config)), None)
    return found or get_task("classification")


class InferenceModel(NamedTuple):
    """A saved model loaded for inference in ``dtype``, and whether this CPU multiplies bf16 natively."""

    model: object
    tokenizer: object
    dtype: str
    native_bf16: bool
    reason: str


def load_for_inference(model: str | Path, dtype: str = "bf16", task: str | None = None) -> InferenceModel:
    """The saved model at ``model`` (by ``task``'s loader, default the task its config.json names) with its
    weights cast to ``dtype`` (``bf16`` or ``fp32``) in evaluation mode, and what
    :func:`lmdistill.models.precision.cpu_native_bf16` says of this CPU (bf16 is fast only where it is true)."""
    from lmdistill.models.precision import cpu_native_bf16, for_inference

    net, tok = (get_task(task) if task else task_for_saved(model)).load_saved(model)
    native, why = cpu_native_bf16()
    return InferenceModel(for_inference(net, dtype), tok, dtype, native, why)


def unknown_task(name) -> str:
    return f"task must be one of {', '.join(TASKS)}, got {name!r}{suggest(str(name), TASKS)}"


# --------------------------------------------------------------------------------------------- loading


def load_config(
    source: str | Path | dict | Config, overrides: list[str] | tuple[str, ...] = (), verb: Verb | None = None
) -> Config:
    """Load a config from a YAML path, a dict or a Config, apply ``a.b=value`` overrides, lay the recipe of
    ``distill.method`` under the user's keys, check every key (the common sections and the task's own) and
    fill the defaults that depend on the task.

    Raises:
        ConfigError: every problem found, each naming its key.
    """
    raw = raw_config(source, overrides)
    task_name = raw.get("task", "classification") if isinstance(raw, dict) else None
    task = get_task(task_name) if isinstance(task_name, str) and task_name in TASKS else None
    if task is not None:
        raw = _apply_method(raw, task)
    cfg, errors = build_config(raw)
    if cfg is None:
        raise ConfigError(errors)
    if task is None:  # still report every other problem at once
        errors.insert(0, unknown_task(cfg.task))
    _move_deprecated(raw, cfg, errors)
    errors.extend(check(cfg, task, verb))
    if errors:
        raise ConfigError(errors)
    resolve(cfg, task)
    return cfg


def _apply_method(raw: dict, task: Task) -> dict:
    """Lay a preset (``distill.method``) under the user's keys: what the user wrote wins."""
    distill = raw.get("distill")
    method = distill.get("method") if isinstance(distill, dict) else None
    if not isinstance(method, str) or method not in task.presets:
        return raw  # an unknown name is reported by check()
    return deep_merge(task.presets[method], raw)


def _move_deprecated(raw: dict, cfg: Config, errors: list[str]) -> None:
    """``lm.divergence`` / ``lm.beta`` / ``lm.alpha`` are the causal-LM names of ``distill.*``: when given, they
    set those (:func:`resolve` then mirrors ``distill.*`` back into ``lm.*``)."""
    given = raw.get("distill") if isinstance(raw.get("distill"), dict) else {}
    for key in ("divergence", "beta", "alpha"):
        value = getattr(cfg.lm, key)
        if value is None:
            continue
        if key != "divergence" and not 0.0 <= value <= 1.0:
            errors.append(f"lm.{key} must be between 0 and 1, got {value}")
            continue
        if key in given and given[key] != value:
            errors.append(f"lm.{key} ({value}) and distill.{key} ({given[key]}) differ: give one of them")
        setattr(cfg.distill, key, value)


def check(cfg: Config, task: Task | None, verb: Verb | None = None) -> list[str]:
    """Every problem of a built config: the common sections, the task's keys, what the verb needs (only the
    common ones when ``task`` is None: an unknown task name)."""
    if task is None:
        errors = check_common(cfg) + check_verb(cfg, verb)
        if verb in ("distill", "compress"):
            errors += check_student(cfg.student) + check_distill(cfg)
        return errors + check_report(cfg.report)
    errors = check_common(cfg) + task.check(cfg, verb)
    if cfg.training.teacher_cache is not None and not task.cacheable:
        cacheable = [n for n in TASKS if get_task(n).cacheable]
        errors.append(
            f"training.teacher_cache is not supported for task {cfg.task} (its loop feeds the teacher "
            f"inputs that change every epoch or its own signal); use it with tasks {', '.join(cacheable)}, "
            "or set it to null"
        )
    errors += _check_streaming(cfg, task) + _check_ensemble(cfg, task, verb)
    errors += _check_metric(cfg, task) + check_verb(cfg, verb) + check_compress(cfg, verb)
    errors += check_mutual(cfg.mutual, verb, task=cfg.task, terms=task.loss_terms, cfg=cfg)
    errors += check_assistants(cfg.compress.assistants, cfg.student, verb)
    if verb in ("distill", "compress"):
        errors += check_student(cfg.student) + _check_distill(cfg, task)
    return errors + check_report(cfg.report)


def _check_ensemble(cfg: Config, task: Task, verb: Verb | None) -> list[str]:
    """``teachers`` / ``ensemble``: their own keys, and whether this task and verb can use an ensemble."""
    from lmdistill.config.multi import check_ensemble

    errors = check_ensemble(cfg.teachers, cfg.ensemble, cfg.teacher)
    if not cfg.teachers:
        return errors
    able = [n for n in TASKS if get_task(n).ensemble_combines]
    if not task.ensemble_combines:
        errors.append(
            f"teachers: task {cfg.task} has no output-level knowledge to combine; use one teacher: "
            f"(ensembles apply to tasks {', '.join(able)})"
        )
    elif cfg.ensemble.sampling is None and cfg.ensemble.combine not in task.ensemble_combines:
        errors.append(
            f"ensemble.combine {cfg.ensemble.combine} does not apply to task {cfg.task}; use "
            f"{' or '.join(task.ensemble_combines)}, or ensemble.sampling (SKD)"
        )
    if verb not in (None, "distill"):
        errors.append(f"teachers: applies to lmdistill distill, not {verb}; run distill with the ensemble")
    if cfg.training.teacher_cache is not None and cfg.lm.top_k:
        errors.append(
            "training.teacher_cache with teachers: stores dense outputs to combine; remove lm.top_k"
        )
    if cfg.lm.cross_tokenizer or cfg.lm.fused or cfg.lm.on_policy or cfg.lm.seq_kd:
        errors.append(
            "teachers: not with lm.cross_tokenizer, lm.fused, lm.on_policy or lm.seq_kd (they use one teacher's "
            "own head or batches); set them off"
        )
    losses = [cfg.distill.losses or {}] + [s.losses for s in cfg.distill.stages]
    if (
        cfg.ensemble.sampling is None
        and cfg.ensemble.combine != "mean_logits"
        and any("kd_mse" in x for x in losses)
    ):
        errors.append(
            f"distill.losses kd_mse matches logits, but ensemble.combine {cfg.ensemble.combine} gives "
            "log-probabilities; use ensemble.combine: mean_logits"
        )
    return errors


def _check_streaming(cfg: Config, task: Task) -> list[str]:
    d, t = cfg.data, cfg.training
    if not d.streaming:
        return []
    errors = []
    if not task.streams:
        streaming = [n for n in TASKS if get_task(n).streams]
        errors.append(f"data.streaming applies to tasks {' and '.join(streaming)}, not {cfg.task}")
    if t.max_steps is None:
        errors.append("data.streaming needs training.max_steps: a stream has no length to count epochs by")
    if t.num_workers:
        errors.append(
            f"data.streaming needs training.num_workers 0 (one reader of the stream), got {t.num_workers}"
        )
    return errors


def _check_metric(cfg: Config, task: Task) -> list[str]:
    m, known = cfg.training.metric_for_best, task.measured(cfg)
    if m is None or m in known:
        return []
    return [
        f"training.metric_for_best '{m}' is not measured for task {cfg.task}{suggest(m, known)} "
        f"(use one of: {', '.join(known)})"
    ]


def _check_distill(cfg: Config, task: Task) -> list[str]:
    from lmdistill.knowledge import check_matches

    d = cfg.distill
    errors = []
    if d.method is not None and d.method not in task.presets:
        errors.append(
            f"distill.method '{d.method}' is not a known recipe{suggest(d.method, task.presets)} "
            f"(known: {', '.join(task.presets)})"
        )
    errors += check_distill(cfg)
    if d.losses is not None:
        # a task without default terms (embedding) trains its own objective when distill.losses is empty
        need_one = not d.matches and not d.stages and bool(task.default_losses)
        errors += check_losses(d.losses, task, "distill.losses", need_one=need_one)
    errors += check_matches(d.matches, "distill.matches")
    for i, st in enumerate(d.stages):
        key = f"distill.stages[{i}]"
        errors += check_losses(st.losses, task, f"{key}.losses", need_one=not st.matches)
        errors += check_matches(st.matches, f"{key}.matches")
    return errors


def check_losses(losses: dict[str, float], task: Task, key: str, need_one: bool) -> list[str]:
    """Loss names the task knows, weights of 0 or more, at least one above 0 when nothing else trains."""
    errors = []
    known = task.loss_terms
    for name, w in losses.items():
        if name not in known:
            hint = suggest(name, known) or (
                f" (for task {task.name} use: {', '.join(known)})"
                if known
                else f" (task {task.name} takes no distill.losses: remove it)"
            )
            errors.append(f"{key}.{name} is not a loss for task {task.name}{hint}")
        elif not w >= 0:
            errors.append(f"{key}.{name} must be 0 or more, got {w}")
    if need_one and sum(w for w in losses.values() if w > 0) <= 0:
        errors.append(
            f"{key} needs at least one loss with a weight above 0 (e.g. {{kd: 0.5, ce: 0.5}}), or add matches"
        )
    return errors


def resolve(cfg: Config, task: Task) -> None:
    """Fill defaults that depend on other keys, so the saved config states exactly what ran."""
    from lmdistill.config.multi import resolve_ensemble

    resolve_ensemble(cfg)  # teacher := the ensemble's layer teacher, which the task loads
    if cfg.distill.losses is None:
        cfg.distill.losses = dict(task.default_losses)
    for key in ("divergence", "beta", "alpha"):  # lm.* names the same keys as distill.*
        setattr(cfg.lm, key, getattr(cfg.distill, key))
    task.resolve(cfg)  # first: a task may choose the metric_for_best that its own keys imply
    if cfg.training.metric_for_best is None:
        cfg.training.metric_for_best = task.primary_metric
