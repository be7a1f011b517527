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

from lmdistill.config.load import save_config
from lmdistill.config.schema import Config, StageConfig
from lmdistill.errors import DataError
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


def prepare_output(cfg: Config, verb: str, out: Path | None = None) -> Path:
    """Create the run folder and write the resolved config and run_info.json into it."""
    out = Path(out or cfg.output_dir)
    if not is_main_process():
        return out
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(
            f"output_dir: cannot create '{out}' ({e.strerror}); choose a writable folder"
        ) from None
    v = versions()
    header = f"lmdistill {verb}: resolved config (seed {cfg.seed}); " + ", ".join(
        f"{k} {x}" for k, x in v.items()
    )
    save_config(cfg, out / "config.yaml", header=header)
    info = {
        "verb": verb,
        "seed": cfg.seed,
        "versions": v,
        "command": sys.argv,
        "platform": platform.platform(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (out / "run_info.json").write_text(json.dumps(info, indent=2))
    return out


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
    """The learned projections of the matches, beside the student (not part of it)."""
    if len(objective.projections) and is_main_process():
        from safetensors.torch import save_file

        state = {k: v.detach().cpu().contiguous() for k, v in objective.projections.state_dict().items()}
        save_file(state, str(out / "projections.safetensors"))


def finish_run(
    out: Path, model_dir: Path, outcome, objective, best, teacher_parameters, results: dict, /, **extra
) -> RunResult:
    """The :class:`RunResult` of a finished run, and its ``results.json`` (written by the main process):
    scores, steps and sizes, how the run ended, its loss terms, and ``extra`` (task-specific fields)."""
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
    if is_main_process():
        (out / "results.json").write_text(json.dumps(summary, indent=2))
    return result


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


def teacher_cache(cfg: Config, teacher, train_set, collate, objectives):
    """The :class:`~lmdistill.signals.cache.CachedTeacher` of ``training.teacher_cache`` for these objectives
    (reused, or built with one teacher pass on the training device); None when the key is null."""
    import torch

    from lmdistill.engine import resolve_mixed_precision
    from lmdistill.signals.cache import open_or_build

    t = cfg.training
    if t.teacher_cache is None or teacher is None:
        return None
    path = Path(cfg.output_dir) / "teacher_cache" if t.teacher_cache == "auto" else Path(t.teacher_cache)
    cuda = torch.cuda.is_available() and not t.cpu
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if cuda else torch.device("cpu")
    precision = resolve_mixed_precision(t.mixed_precision, t.cpu)
    autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision) if cuda else None
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


def _logged_validation(outcome) -> dict[str, float]:
    """The validation metrics logged at the best step (the saved model's), or {}."""
    rows = [
        r for r in outcome.history if r["step"] == outcome.best_step and any(k.startswith("eval/") for k in r)
    ]
    return {k[5:]: v for k, v in rows[-1].items() if k.startswith("eval/")} if rows else {}


# --------------------------------------------------------------------------------------------- the run


def run(cfg: Config, verb: str, *, role: str | None = None) -> RunResult:
    """Run ``verb`` (finetune or distill) for ``cfg``'s task; every stage; returns the last stage's result.

    ``role`` (teacher, student, baseline: how ``compress`` uses the run) is recorded in results.json; by
    default a finetune run is a ``finetune`` and a distill run a ``student``.
    """
    from lmdistill.engine import train

    task = get_task(cfg.task)
    seed_everything(cfg.seed)
    parts = task.parts(cfg, verb)
    signal = teacher_cache(cfg, parts.teacher, parts.train_set, parts.collate, parts.objectives)
    role = role or ("finetune" if verb == "finetune" else "student")
    result = None
    for (stage_cfg, final, stage_dir), objective in zip(stage_runs(cfg, parts.stages), parts.objectives):
        out = prepare_output(stage_cfg, verb, stage_dir)
        result = _run_stage(task, parts, stage_cfg, verb, out, objective, final, signal, role, train)
    return result


def _run_stage(
    task: Task, parts: Parts, cfg: Config, verb: str, out: Path, objective, final, signal, role, train
):
    """Train one stage; save, evaluate (the final stage) and write results.json."""
    model_dir = out / "model"
    validate = final and task.has_split(parts, "validation")
    metric = cfg.training.metric_for_best

    def evaluate(model):
        return task.evaluate(model, parts, "validation", objective)

    outcome = train(
        student=parts.student,
        objective=objective,
        train_set=parts.train_set,
        collate=parts.collate,
        cfg=cfg.training,
        seed=cfg.seed,
        out_dir=out,
        teacher=parts.teacher,
        evaluate=evaluate if validate else None,
        greater_is_better=task.metrics.get(metric, True),
        on_best=lambda m: save_model(task, m, parts.tokenizer, model_dir, cfg),
        desc=verb if final else f"{verb} ({out.name})",
        teacher_signal=signal,
    )
    save_projections(objective, out)
    best = task.reload(model_dir, parts)
    results = {"validation": {}, "test": {}}
    extra = dict(parts.extra)
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
    return finish_run(
        out, model_dir, outcome, objective, best, teacher_parameters, results, role=role, **extra
    )
