"""The Python API: ``finetune``, ``distill``, ``cache``, ``evaluate``, ``evaluate_retrieval``, ``sweep``. The CLI calls
exactly these. Each parses its arguments into a config and calls the run driver (:mod:`lmdistill.run`) or the
task (:mod:`lmdistill.tasks`); there is no task logic here.
"""

from __future__ import annotations

import json
from pathlib import Path

from lmdistill.config.schema import Config
from lmdistill.errors import LmdistillError
from lmdistill.run import RunResult, is_main_process, run, seed_everything, teacher_cache, versions  # noqa: F401
from lmdistill.tasks import get_task, load_config, task_for_saved  # noqa: F401 - load_config re-exported
from lmdistill.tasks.base import EvalResult

ConfigSource = str | Path | dict | Config


def finetune(
    config: ConfigSource, overrides: list[str] | tuple[str, ...] = (), *, overwrite: bool = False
) -> RunResult:
    """Fine-tune ``model`` on the task (e.g. to make a teacher); returns metrics and where it was saved.

    An ``output_dir`` that holds an earlier run is refused unless ``training.resume`` is set (continue it) or
    ``overwrite`` is True (replace it); a folder holding other files is always refused.
    """
    return run(load_config(config, overrides, verb="finetune"), "finetune", overwrite=overwrite)


def distill(
    config: ConfigSource, overrides: list[str] | tuple[str, ...] = (), *, overwrite: bool = False
) -> RunResult:
    """Distill the fine-tuned ``teacher`` into the configured ``student``; returns metrics and paths.

    With ``distill.stages`` (TinyBERT, MiniLM recipes) the stages run one after another on the same student;
    earlier stages write into ``OUTPUT_DIR/stage-N-NAME``, the last into ``OUTPUT_DIR``. ``overwrite``: as
    :func:`finetune`.
    """
    return run(load_config(config, overrides, verb="distill"), "distill", overwrite=overwrite)


def cache(config: ConfigSource, overrides: list[str] | tuple[str, ...] = ()):
    """Run the teacher once over the training data and store what the configured losses read from it, at
    ``training.teacher_cache`` (auto when null: OUTPUT_DIR/teacher_cache). Reuses a cache that is still valid.

    Returns:
        The :class:`~lmdistill.signals.cache.CachedTeacher`, or None when the losses read nothing from the
        teacher; with ``teachers:`` a list, one per teacher.
    """
    from lmdistill.tasks import TASKS

    cfg = load_config(config, overrides, verb="distill")
    task = get_task(cfg.task)
    if not task.cacheable:
        cacheable = [n for n in TASKS if get_task(n).cacheable]
        raise LmdistillError(f"lmdistill cache supports tasks {', '.join(cacheable)}, not task {cfg.task}")
    seed_everything(cfg.seed)
    cfg.training.teacher_cache = cfg.training.teacher_cache or "auto"
    parts = task.parts(cfg, "distill")
    if cfg.teachers:  # one cache per teacher of the ensemble, in sub-folders named by the teachers
        from lmdistill.run import ensemble

        return list(ensemble(cfg, task, parts).caches.values())
    return teacher_cache(cfg, parts.teacher, parts.train_set, parts.collate, parts.objectives)


def evaluate(
    model: str | Path,
    *,
    config: ConfigSource | None = None,
    data: str | Path | None = None,
    split: str = "test",
    text_column: str | None = None,
    text_pair_column: str | None = None,
    label_column: str | None = None,
    batch_size: int = 64,
    overrides: list[str] | tuple[str, ...] = (),
    dtype: str = "fp32",
) -> EvalResult:
    """Evaluate a saved model on ``split`` of the config's data, or on a whole file given as ``data``:
    classifiers and regressors get their task metrics and predictions, causal LMs their perplexity.
    ``dtype="bf16"`` casts the model's weights to bf16 first (fast on CPUs that multiply bf16 natively,
    :func:`lmdistill.models.precision.cpu_native_bf16`)."""
    return task_for_saved(model).evaluate_saved(
        model,
        config=config,
        data=data,
        split=split,
        text_column=text_column,
        text_pair_column=text_pair_column,
        label_column=label_column,
        batch_size=batch_size,
        overrides=overrides,
        dtype=dtype,
    )


def _is_causal_lm(model: str | Path) -> bool:
    """A saved model whose config names a causal-LM architecture (``...ForCausalLM``, ``...LMHeadModel``)."""
    path = Path(model).expanduser() / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return False  # the classifier loader says what is wrong with the folder
    return isinstance(config, dict) and get_task("causal_lm").owns(config)


def evaluate_retrieval(
    model: str | Path,
    *,
    teacher: str | Path | None = None,
    data: str = "bbc-news",
    query_column: str = "title",
    document_column: str = "text",
    max_queries: int | None = None,
    batch_size: int = 64,
    max_length: int = 128,
    seed: int = 0,
) -> dict:
    """Search quality of a saved sentence-embedding model: recall@1, recall@10, MRR@10 and texts/s on
    ``data`` (``bbc-news``: title -> body, or a CSV/JSONL/Parquet file), and its agreement with ``teacher``."""
    from lmdistill.tasks.retrieval import evaluate_retrieval as run_retrieval

    return run_retrieval(
        str(model),
        teacher=None if teacher is None else str(teacher),
        data=data,
        query_column=query_column,
        document_column=document_column,
        max_queries=max_queries,
        batch_size=batch_size,
        max_length=max_length,
        seed=seed,
    )


def sweep(config: ConfigSource, overrides: list[str] | tuple[str, ...] = (), *, overwrite: bool = False):
    """Train every variant of the config's ``sweep`` section with every seed (finished runs are skipped) and write
    the leaderboard into ``output_dir`` (:mod:`lmdistill.sweeps`, docs/sweep.md); returns a
    :class:`~lmdistill.sweeps.SweepResult` (its ``failed``: each failed run's one-line error)."""
    from lmdistill.sweeps import sweep as run_sweep

    return run_sweep(config, overrides, overwrite=overwrite)
