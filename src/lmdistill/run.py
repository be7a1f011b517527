"""THE run driver: one ``finetune`` / ``distill`` run of any task, stage by stage.

``run(cfg, verb)`` seeds every generator, asks the task for its parts (data, teacher, student, datasets,
collator, one objective per stage), builds or reuses the teacher cache, and for each stage prepares the
output folder, trains through :func:`lmdistill.engine.train` (keeping the best student by the validation
metric), saves the student (model, tokenizer, learned projections), evaluates the best one on validation and
test, and writes ``results.json``. The task decides what its data, models and metrics are
(:class:`lmdistill.tasks.base.Task`); this module does everything else, the same way for every task.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lmdistill.config.schema import Config, StageConfig
from lmdistill.data.splits import teacher_split_problems
from lmdistill.errors import ConfigError, LmdistillError
from lmdistill.fileio import guard
from lmdistill.tasks import get_task
from lmdistill.tasks.base import Parts, Task, stage_key, stages_of  # noqa: F401 - re-exported


@dataclass
class RunResult:
    """A finished ``finetune`` or ``distill`` run."""

    output_dir: Path
    model_dir: Path
    validation: dict[str, float]
    test: dict[str, float]
    steps: int
    train_seconds: float
    best_step: int | None
    parameters: int
    teacher_parameters: int | None = None
    history: list[dict] = field(default_factory=list, repr=False)


# --------------------------------------------------------------------------------------------- helpers


def versions() -> dict[str, str]:
    """Versions of the libraries a result depends on."""
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("lmdistill", "torch", "transformers", "accelerate", "datasets", "safetensors", "tokenizers"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "not installed"
    return out


def is_main_process() -> bool:
    """True on the process that writes files (rank 0 under torchrun / accelerate launch; always alone)."""
    return int(os.environ.get("RANK", "0")) == 0


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (every device) before any model is built: a new classification head,
    a fresh student, projections and relation heads are drawn from these generators, and torch's own seed
    differs in every process until it is set."""
    from accelerate.utils import set_seed

    set_seed(seed)


def run_record(cfg: Config, verb: str) -> tuple[str, dict]:
    """The resolved config as YAML text (headed by the seed and library versions) and run_info.json (with the
    mixed precision the run uses and why)."""
    import yaml

    from lmdistill.config.load import to_dict
    from lmdistill.engine import choose_mixed_precision

    v = versions()
    used, why = choose_mixed_precision(cfg.training.mixed_precision, cfg.training.cpu)
    header = f"lmdistill {verb}: resolved config (seed {cfg.seed}); " + ", ".join(
        f"{k} {x}" for k, x in v.items()
    )
    text = "".join(f"# {line}\n" for line in header.splitlines())
    text += yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True)
    info = {
        "verb": verb,
        "seed": cfg.seed,
        "versions": v,
        "command": sys.argv,
        "platform": platform.platform(),
        "mixed_precision": {"configured": cfg.training.mixed_precision, "used": used, "reason": why},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return text, info


def input_paths(cfg: Config) -> dict[str, str | None]:
    """Config key -> every local path a run reads (models, tokenizers, data), for the output-folder checks."""
    d = cfg.data
    paths = {
        "teacher.name_or_path": cfg.teacher.name_or_path,
        "teacher.tokenizer": cfg.teacher.tokenizer,
        "model.name_or_path": cfg.model.name_or_path,
        "model.tokenizer": cfg.model.tokenizer,
        "student.name_or_path": cfg.student.name_or_path,
        "student.tokenizer": cfg.student.tokenizer,
        "data.dataset": d.dataset,
        "data.train": d.train,
        "data.validation": d.validation,
        "data.test": d.test,
        "embedding.retrieval": cfg.embedding.retrieval,
    }
    return {k: v for k, v in paths.items() if isinstance(v, str) and v}


def save_model(task: Task, model, tokenizer, path: Path, cfg: Config) -> None:
    """The task's save into ``path`` atomically: a crash leaves the previous folder intact."""
    tmp = path.with_name(path.name + ".tmp")
    old = path.with_name(path.name + ".old")
    for p in (tmp, old):
        shutil.rmtree(p, ignore_errors=True)
    task.save(model, tokenizer, tmp, cfg)
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)


def save_projections(objective, out: Path) -> None:
    """The learned projections of the matches, beside the student (not part of it), into the folder ``out``."""
    if len(objective.projections) and is_main_process():
        from safetensors.torch import save_file

        state = {k: v.detach().cpu().contiguous() for k, v in objective.projections.state_dict().items()}
        save_file(state, str(out / "projections.safetensors"))


def finish_run(
    out: Path, model_dir: Path, outcome, objective, best, teacher_parameters, results: dict, /, **extra
) -> tuple[RunResult, dict]:
    """The :class:`RunResult` of a finished run and its ``results.json`` content: scores, steps and sizes, how
    the run ended, its loss terms, and ``extra`` (task-specific fields)."""
    result = RunResult(
        output_dir=out,
        model_dir=model_dir,
        validation=results.get("validation", {}),
        test=results.get("test", {}),
        steps=outcome.steps,
        train_seconds=round(outcome.train_seconds, 2),
        best_step=outcome.best_step,
        parameters=sum(p.numel() for p in best.parameters()),
        teacher_parameters=teacher_parameters,
        history=outcome.history,
    )
    summary = {k: v for k, v in asdict(result).items() if k != "history"}
    summary.update(
        output_dir=str(out),
        model_dir=str(model_dir),
        stopped_early=outcome.stopped_early,
        skipped_batches=outcome.skipped_batches,
        resumed_from=outcome.resumed_from,
        loss_terms=sorted(objective.weights) + [m.name for m in objective.matches],
        **extra,
    )
    return result, summary


def stage_runs(cfg: Config, stages: list[StageConfig]):
    """Per stage: ``(its config, final?, its output folder)``: a stage's epochs and learning rate replace the
    training ones, only the last stage resumes, and earlier stages write to ``OUTPUT_DIR/stage-N-NAME``
    (the last: None, i.e. ``output_dir`` itself)."""
    for i, stage in enumerate(stages):
        final = i == len(stages) - 1
        stage_cfg = copy.deepcopy(cfg)
        for k in ("epochs", "learning_rate"):
            if getattr(stage, k) is not None:
                setattr(stage_cfg.training, k, getattr(stage, k))
        if not final:
            stage_cfg.training.resume = None
        yield stage_cfg, final, None if final else Path(cfg.output_dir) / f"stage-{i + 1}-{stage.name}"


def teacher_cache(cfg: Config, teacher, train_set, collate, objectives, sub: str | None = None):
    """The :class:`~lmdistill.signals.cache.CachedTeacher` of ``training.teacher_cache`` for these objectives
    (reused, or built with one teacher pass on the training device); None when the key is null. ``sub``: a
    sub-folder (one per teacher of an ensemble, by its name)."""
    import torch

    from lmdistill.engine import resolve_mixed_precision
    from lmdistill.signals.cache import open_or_build

    t = cfg.training
    if t.teacher_cache is None or teacher is None:
        return None
    path = Path(cfg.output_dir) / "teacher_cache" if t.teacher_cache == "auto" else Path(t.teacher_cache)
    path = path / sub if sub else path
    cuda = torch.cuda.is_available() and not t.cpu
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if cuda else torch.device("cpu")
    precision = resolve_mixed_precision(t.mixed_precision, t.cpu)
    # as the live teacher runs (bf16 also on a CPU: auto picks it where the CPU multiplies bf16 natively)
    autocast = {"bf16": torch.bfloat16, "fp16": torch.float16 if cuda else None}.get(precision)
    alone = int(os.environ.get("WORLD_SIZE", "1")) == 1  # distributed runs read a cache built beforehand
    return open_or_build(
        path,
        teacher,
        train_set,
        collate,
        objectives,
        batch_size=t.eval_batch_size,
        device=device,
        autocast=autocast,
        build_allowed=alone,
    )


def ensemble(cfg: Config, task: Task, parts: Parts):
    """The :class:`~lmdistill.signals.ensemble.EnsembleTeacher` of ``teachers:``; with ``training.teacher_cache``
    each teacher is served from its own cache, ``<cache folder>/<teacher name>``."""
    from lmdistill.tasks.ensemble import ensemble_signal

    def cache(model, objectives, name, data=None):
        dataset, collate = data or (parts.train_set, parts.collate)
        return teacher_cache(cfg, model, dataset, collate, objectives, sub=name)

    return ensemble_signal(cfg, task, parts, cache)


TRAJECTORY = (
    "learning_rate",
    "weight_decay",
    "warmup_ratio",
    "scheduler",
    "epochs",
    "max_steps",
    "batch_size",
    "max_tokens",
    "gradient_accumulation_steps",
    "group_by_length",
    "max_grad_norm",
    "mixed_precision",
)
"""The training keys that change what a resumed run would compute (the rest, e.g. logging, may change)."""


def signature(cfg: Config, task: Task, student) -> dict:
    """What a checkpoint must share with the run that resumes it: the task, the student's shape, the seed, the
    data, the distillation and task sections, and the training keys of :data:`TRAJECTORY`."""
    from dataclasses import asdict

    c = asdict(cfg)
    shape = {
        "class": type(student).__name__,
        "parameters": sum(p.numel() for p in student.parameters()),
        "config": {
            k: v for k, v in student.config.to_dict().items() if k.endswith(("layers", "size", "heads"))
        }
        if hasattr(student, "config")
        else {},
    }
    sig = {
        "task": task.name,
        "student": shape,
        "seed": cfg.seed,
        "data": c["data"],
        "teacher": c["teacher"],
        "distill": c["distill"],
        "lm": c["lm"],
        "embedding": c["embedding"],
        "tokens": c["tokens"],
        "qa": c["qa"],
        "training": {k: c["training"][k] for k in TRAJECTORY},
    }
    if cfg.mutual is not None:
        sig["mutual"] = c["mutual"]
    if cfg.teachers:  # another ensemble or sampling would change every target
        sig.update(teachers=c["teachers"], ensemble=c["ensemble"])
    return json.loads(json.dumps(sig, default=str))


def preflight_problems(task: Task, cfg: Config, verb: str) -> list[str]:
    """What ``verb`` would fail on in ``cfg``'s inputs, before any model is loaded or anything written: the
    data files and columns (``task.check_data``) and, for a run with a teacher, a teacher trained on rows this
    run evaluates on (:func:`lmdistill.data.splits.teacher_split_problems`)."""
    problems = task.check_data(cfg)
    if verb in ("distill", "compress"):  # evaluation rows the teacher trained on would inflate every score
        problems += teacher_split_problems(cfg)
    return problems


def _check_resume(cfg: Config) -> None:
    """``training.resume: auto`` with no checkpoint over a finished run has nothing to continue: say so."""
    from lmdistill import checkpoint

    out = Path(cfg.output_dir)
    if cfg.training.resume == "auto" and not checkpoint.checkpoints(out) and (out / "results.json").is_file():
        raise LmdistillError(
            f"training.resume: '{out}' holds a finished run and no checkpoint to continue from "
            "(training.save_every writes them); pass --overwrite to train again, or choose another output_dir"
        )


def _logged_validation(outcome) -> dict[str, float]:
    """The validation metrics logged at the best step (the saved model's), or {}."""
    rows = [
        r for r in outcome.history if r["step"] == outcome.best_step and any(k.startswith("eval/") for k in r)
    ]
    return {k[5:]: v for k, v in rows[-1].items() if k.startswith("eval/")} if rows else {}


# --------------------------------------------------------------------------------------------- the run


def run(cfg: Config, verb: str, *, role: str | None = None, overwrite: bool = False) -> RunResult:
    """Run ``verb`` (finetune or distill) for ``cfg``'s task; every stage; returns the last stage's result.

    The output folder is claimed first (:class:`lmdistill.outputs.RunFolder`: nothing is written into a folder
    the run reads from, into another's files, or over an earlier run without ``training.resume`` or
    ``overwrite``). ``role`` (teacher, student, baseline: how ``compress`` uses the run) is recorded in
    results.json; by default a finetune run is a ``finetune`` and a distill run a ``student``.
    """
    from lmdistill.outputs import RunFolder

    task = get_task(cfg.task)
    if cfg.mutual is not None:  # several students, one loop (lmdistill.tasks.mutual)
        from lmdistill.tasks.mutual import MutualTask

        task = MutualTask(task, cfg.mutual)
    problems = preflight_problems(task, cfg, verb)
    if problems:
        raise ConfigError(problems)
    resume = cfg.training.resume is not None
    folder = RunFolder(cfg.output_dir, verb, inputs=input_paths(cfg), resume=resume, overwrite=overwrite)
    _check_resume(cfg)
    with folder, guard(cfg.output_dir):  # an OSError (a full disk, permissions) becomes one line
        seed_everything(cfg.seed)
        parts = task.parts(cfg, verb)
        if cfg.teachers:  # a teacher ensemble (combined, or SKD) is the signal of every stage
            signal = ensemble(cfg, task, parts)
        else:
            signal = teacher_cache(cfg, parts.teacher, parts.train_set, parts.collate, parts.objectives)
        role = role or ("finetune" if verb == "finetune" else "student")
        result = None
        for (stage_cfg, final, stage_dir), objective in zip(stage_runs(cfg, parts.stages), parts.objectives):
            if final:
                result = _run_stage(task, parts, stage_cfg, verb, folder, objective, final, signal, role)
            else:
                with folder.sub(stage_dir) as sub:
                    _run_stage(task, parts, stage_cfg, verb, sub, objective, final, signal, role)
    return result


def _run_stage(task: Task, parts: Parts, cfg: Config, verb: str, folder, objective, final, signal, role):
    """Train one stage into ``folder`` (a RunFolder); save, evaluate (the final stage) and publish the run."""
    from lmdistill.engine import train

    staged = folder.staging / "model"
    model_dir = folder.path / "model"
    validate = final and task.has_split(parts, "validation")
    metric = cfg.training.metric_for_best
    config_text, run_info = run_record(cfg, verb)

    def evaluate(model):
        return task.evaluate(model, parts, "validation", objective)

    outcome = train(
        student=parts.student,
        objective=objective,
        train_set=parts.train_set,
        collate=parts.collate,
        cfg=cfg.training,
        seed=cfg.seed,
        out_dir=folder.path,
        log_dir=folder.staging,
        teacher=parts.teacher,
        evaluate=evaluate if validate else None,
        greater_is_better=task.metrics.get(metric, True),
        on_best=lambda m: save_model(task, m, parts.tokenizer, staged, cfg),
        best_dir=staged,
        desc=verb if final else f"{verb} ({folder.path.name})",
        teacher_signal=signal,
        signature=signature(cfg, task, parts.student),
        mix=parts.mix,
    )
    save_projections(objective, folder.staging)
    extra = dict(parts.extra)
    if cfg.teachers:  # which teachers taught; under SKD how often each was drawn (a pure function of steps)
        extra["ensemble"] = signal.summary(outcome.steps)
        if "draws" in extra["ensemble"]:
            print("ensemble draws: " + ", ".join(f"{k} {v}" for k, v in extra["ensemble"]["draws"].items()))
    best = task.reload(staged, parts)
    results = {"validation": {}, "test": {}}
    if final:
        logged = _logged_validation(outcome) if validate else {}
        for split in ("validation", "test"):
            if task.has_split(parts, split):
                have = logged if split == "validation" and logged else None
                results[split] = have if have is not None else task.evaluate(best, parts, split, objective)
        extra.update(task.results(parts, best, cfg))
    extra.setdefault("task", task.name)
    teacher_parameters = extra.pop("teacher_parameters", None)
    if teacher_parameters is None and parts.teacher is not None:
        teacher_parameters = sum(p.numel() for p in parts.teacher.parameters())
    result, summary = finish_run(
        folder.path, model_dir, outcome, objective, best, teacher_parameters, results, role=role, **extra
    )
    _barrier()  # every process has read the staged model before the main one moves it into place
    folder.publish(summary, config_text, run_info)
    return result


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
