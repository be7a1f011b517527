"""The Python API: ``finetune``, ``distill`` and ``evaluate``. The CLI calls exactly these."""

from __future__ import annotations

import copy
import json
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from lmdistill.config import SENTENCE_FEATURES, Config, DataConfig, StageConfig, load_config, save_config
from lmdistill.data.tables import Examples, TaskData, build_task_data, load_frames, load_task_data
from lmdistill.errors import DataError, ModelError


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


@dataclass
class EvalResult:
    """Metrics of a saved model on one split, and its predictions (label names, or numbers)."""

    model: str
    split: str
    n: int
    metrics: dict[str, float]
    predictions: list = field(default_factory=list, repr=False)
    labels: list = field(default_factory=list, repr=False)

    def table(self) -> str:
        """A small text table of the metrics."""
        width = max(len(k) for k in self.metrics) if self.metrics else 6
        lines = [f"{self.model} on {self.split} ({self.n} examples)", f"{'metric':<{width}}  value"]
        lines += [f"{k:<{width}}  {v:.4f}" for k, v in self.metrics.items()]
        return "\n".join(lines)


# --------------------------------------------------------------------------- helpers


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
    import os

    return int(os.environ.get("RANK", "0")) == 0


def _prepare_output(cfg: Config, verb: str, out: Path | None = None) -> Path:
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


def save_model(model, tokenizer, path: Path) -> None:
    """``save_pretrained`` into ``path`` atomically: a crash leaves the previous folder intact."""
    tmp = path.with_name(path.name + ".tmp")
    old = path.with_name(path.name + ".old")
    for p in (tmp, old):
        shutil.rmtree(p, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)


def _datasets(
    data: TaskData, s_tok, t_tok, cfg: Config, regression: bool, student_model=None, teacher_model=None
):
    """Per-split TextDatasets and the collator (teacher inputs only when its tokenizer differs).

    Texts are cut to ``data.max_length`` tokens, or to what the models' position embeddings allow."""
    from lmdistill.data.text import Collator, TextDataset, encode, max_length_for, pad_id, tokenizers_match

    separate = t_tok is not None and not tokenizers_match(s_tok, t_tok)
    s_len = max_length_for(cfg.data.max_length, student_model, None if separate else teacher_model)
    t_len = max_length_for(cfg.data.max_length, teacher_model)
    sets = {}
    for split, ex in data.splits.items():
        student = encode(s_tok, ex, s_len)
        teacher = encode(t_tok, ex, t_len) if separate and split == "train" else None
        sets[split] = TextDataset(student, ex.labels, teacher, regression=regression)
    collate = Collator(pad_id(s_tok), pad_id(t_tok) if separate else None)
    return sets, collate, separate


def _metrics(model, dataset, collate, ex: Examples, task: str, num_labels: int, batch_size: int) -> dict:
    from lmdistill.engine import predict
    from lmdistill.tasks.metrics import compute_metrics

    logits = predict(model, dataset, collate, batch_size)
    return compute_metrics(logits, np.asarray(ex.labels), task, num_labels)


def _check_teacher_labels(teacher, data: TaskData, task: str) -> None:
    want = data.num_labels
    have = teacher.config.num_labels
    if have != want:
        raise ModelError(
            f"teacher.name_or_path: the teacher predicts {have} label(s) but the data has {want}; "
            "fine-tune a teacher on this task first (lmdistill finetune)"
        )
    names = [str(teacher.config.id2label[i]) for i in range(have)] if task == "classification" else []
    generic = all(n == f"LABEL_{i}" for i, n in enumerate(names))
    if names and not generic and names != data.label_names:
        raise ModelError(
            f"teacher.name_or_path: the teacher's labels {names} differ from the data's {data.label_names}; "
            "set data.label_names to the teacher's order"
        )


def _make_student(cfg: Config, teacher, t_tok, data: TaskData):
    """(student, tokenizer) as configured in ``student``."""
    from lmdistill.models.load import load_classifier, load_tokenizer
    from lmdistill.models.student import fresh_student, num_layers, select_layers, student_from_teacher

    s = cfg.student
    if s.init == "pretrained":
        from lmdistill.config import ModelConfig

        spec = ModelConfig(s.name_or_path, s.tokenizer, None, s.trust_remote_code)
        return load_classifier(spec, "student", num_labels=data.num_labels, label_names=data.label_names)
    total = num_layers(teacher)
    tokenizer = load_tokenizer(s.tokenizer, "student.tokenizer") if s.tokenizer else t_tok
    if s.init == "config":
        shape = {
            "num_layers": s.num_layers,
            "hidden_size": s.hidden_size,
            "num_attention_heads": s.num_attention_heads,
            "intermediate_size": s.intermediate_size,
        }
        return fresh_student(teacher, cfg.seed, **shape), tokenizer
    if s.keep_every is not None:
        layers = list(range(0, total, s.keep_every))
    else:
        layers = s.layers if s.layers is not None else select_layers(total, s.num_layers, s.strategy)
    return student_from_teacher(teacher, layers), tokenizer


def _train_and_test(
    cfg: Config,
    verb: str,
    student,
    s_tok,
    teacher,
    data: TaskData,
    objective,
    sets,
    collate,
    out: Path | None = None,
    final: bool = True,
    teacher_signal=None,
) -> RunResult:
    """Train, save the best (or, for a non-final stage, the last) student, test it, write results.json."""
    from lmdistill.engine import train
    from lmdistill.models.load import load_saved_classifier

    out = _prepare_output(cfg, verb, out)
    eval_collate = type(collate)(collate.student_pad_id)
    model_dir = out / "model"
    val = data.splits.get("validation") if final else None

    def evaluate(model):
        return _metrics(
            model,
            sets["validation"],
            eval_collate,
            val,
            cfg.task,
            data.num_labels,
            cfg.training.eval_batch_size,
        )

    outcome = train(
        student=student,
        objective=objective,
        train_set=sets["train"],
        collate=collate,
        cfg=cfg.training,
        seed=cfg.seed,
        out_dir=out,
        teacher=teacher,
        evaluate=evaluate if val is not None else None,
        on_best=lambda m: save_model(m, s_tok, model_dir),
        desc=f"{verb} ({out.name})" if not final else verb,
        teacher_signal=teacher_signal,
    )
    if len(objective.projections) and is_main_process():
        from safetensors.torch import save_file

        state = {k: v.detach().cpu().contiguous() for k, v in objective.projections.state_dict().items()}
        save_file(state, str(out / "projections.safetensors"))  # beside the student, not part of it
    results = {"validation": {}, "test": {}}
    best, _ = load_saved_classifier(str(model_dir), "model")
    for split in ("validation", "test") if final else ():
        if split in sets:
            results[split] = _metrics(
                best,
                sets[split],
                eval_collate,
                data.splits[split],
                cfg.task,
                data.num_labels,
                cfg.training.eval_batch_size,
            )
    return finish_run(
        out,
        model_dir,
        outcome,
        objective,
        best,
        teacher,
        results,
        label_names=data.label_names,
        split_sizes={k: len(v) for k, v in data.splits.items()},
    )


def finish_run(
    out: Path, model_dir: Path, outcome, objective, best, teacher, results: dict, /, **extra
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
        teacher_parameters=sum(p.numel() for p in teacher.parameters()) if teacher is not None else None,
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


def build_objective(cfg: Config, stage: StageConfig, student, teacher, separate_tokenizers: bool, key: str):
    """The objective of one stage: output losses + resolved matches (refused across tokenizers when
    token-level)."""
    from lmdistill.tasks.general import build_objective as objective_of

    token_level = [m.feature for m in stage.matches if m.feature not in SENTENCE_FEATURES]
    if separate_tokenizers and token_level:
        raise ModelError(
            f"{key}.matches: feature '{token_level[0]}' is token-level and needs teacher and student to "
            "share one tokenizer, but their tokenizers differ; use sentence-level features (cls, mean), "
            "output losses (kd), or a student with the teacher's tokenizer"
        )
    return objective_of(cfg, stage, student, teacher, key)


def _distill_parts(cfg: Config):
    """Data, teacher, student, datasets, collator, stages and their objectives of a distill run."""
    from lmdistill.models.load import load_saved_classifier

    data = load_task_data(cfg.data, cfg.task, cfg.seed)
    teacher, t_tok = load_saved_classifier(cfg.teacher.name_or_path, "teacher.name_or_path")
    _check_teacher_labels(teacher, data, cfg.task)
    student, s_tok = _make_student(cfg, teacher, t_tok, data)
    sets, collate, separate = _datasets(data, s_tok, t_tok, cfg, cfg.task == "regression", student, teacher)
    stages = stages_of(cfg)
    key = "distill" if not cfg.distill.stages else "distill.stages[{}]"
    objectives = [
        build_objective(cfg, st, student, teacher, separate, key.format(i)) for i, st in enumerate(stages)
    ]
    return data, teacher, student, s_tok, sets, collate, stages, objectives


def teacher_cache(cfg: Config, teacher, train_set, collate, objectives):
    """The :class:`~lmdistill.signals.cache.CachedTeacher` of ``training.teacher_cache`` for these objectives
    (reused, or built with one teacher pass on the training device); None when the key is null."""
    import os

    import torch

    from lmdistill.engine import resolve_mixed_precision
    from lmdistill.signals.cache import open_or_build

    t = cfg.training
    if t.teacher_cache is None:
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


def stages_of(cfg: Config) -> list[StageConfig]:
    """The stages to run: ``distill.stages``, or one stage made of ``distill.losses`` and ``matches``."""
    d = cfg.distill
    if d.stages:
        return d.stages
    return [StageConfig(name="distill", losses=d.losses, matches=d.matches, temperature=d.temperature)]


# --------------------------------------------------------------------------- public API


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (every device) before any model is built: a new classification head,
    a fresh student, projections and relation heads are drawn from these generators, and torch's own seed
    differs in every process until it is set."""
    from accelerate.utils import set_seed

    set_seed(seed)


def finetune(config: str | Path | dict | Config, overrides: list[str] | tuple[str, ...] = ()) -> RunResult:
    """Fine-tune ``model`` on the task (e.g. to make a teacher); returns metrics and where it was saved."""
    from lmdistill.models.load import load_classifier
    from lmdistill.objective import Objective

    cfg = load_config(config, overrides, verb="finetune")
    seed_everything(cfg.seed)
    if cfg.task == "causal_lm":
        from lmdistill.tasks import causal_lm

        return causal_lm.finetune(cfg)
    if cfg.task == "mlm":  # continued masked-LM pre-training on raw text
        from lmdistill.tasks import mlm

        return mlm.finetune(cfg)
    data = load_task_data(cfg.data, cfg.task, cfg.seed)
    model, tok = load_classifier(cfg.model, "model", num_labels=data.num_labels, label_names=data.label_names)
    objective = Objective({"mse": 1.0} if cfg.task == "regression" else {"ce": 1.0})
    sets, collate, _ = _datasets(data, tok, None, cfg, cfg.task == "regression", model)
    return _train_and_test(cfg, "finetune", model, tok, None, data, objective, sets, collate)


def distill(config: str | Path | dict | Config, overrides: list[str] | tuple[str, ...] = ()) -> RunResult:
    """Distill the fine-tuned ``teacher`` into the configured ``student``; returns metrics and paths.

    With ``distill.stages`` (TinyBERT, MiniLM recipes) the stages run one after another on the same student;
    earlier stages write into ``OUTPUT_DIR/stage-N-NAME``, the last into ``OUTPUT_DIR``.
    """
    cfg = load_config(config, overrides, verb="distill")
    seed_everything(cfg.seed)
    if cfg.task == "causal_lm":
        from lmdistill.tasks import causal_lm

        return causal_lm.distill(cfg)
    if cfg.task in ("mlm", "general", "embedding"):  # raw-text and sentence-embedding distillation
        import importlib

        return importlib.import_module(f"lmdistill.tasks.{cfg.task}").distill(cfg)
    data, teacher, student, s_tok, sets, collate, stages, objectives = _distill_parts(cfg)
    signal = teacher_cache(cfg, teacher, sets["train"], collate, objectives)
    result = None
    for (stage_cfg, final, out), objective in zip(stage_runs(cfg, stages), objectives):
        result = _train_and_test(
            stage_cfg,
            "distill",
            student,
            s_tok,
            teacher,
            data,
            objective,
            sets,
            collate,
            out=out,
            final=final,
            teacher_signal=signal,
        )
    return result


def cache(config: str | Path | dict | Config, overrides: list[str] | tuple[str, ...] = ()):
    """Run the teacher once over the training data and store what the configured losses read from it, at
    ``training.teacher_cache`` (auto when null: OUTPUT_DIR/teacher_cache). Reuses a cache that is still valid.

    Returns:
        The :class:`~lmdistill.signals.cache.CachedTeacher`, or None when the losses read nothing from the
        teacher.
    """
    from lmdistill.config import CACHE_TASKS
    from lmdistill.errors import LmdistillError

    cfg = load_config(config, overrides, verb="distill")
    seed_everything(cfg.seed)
    if cfg.task not in CACHE_TASKS:
        raise LmdistillError(f"lmdistill cache supports tasks {', '.join(CACHE_TASKS)}, not task {cfg.task}")
    cfg.training.teacher_cache = cfg.training.teacher_cache or "auto"
    if cfg.task == "causal_lm":
        from lmdistill.tasks.causal_lm import LMCollator, distill_parts, pad_id_of

        teacher, _, s_tok, objective, sets = distill_parts(cfg)
        return teacher_cache(cfg, teacher, sets["train"], LMCollator(pad_id_of(s_tok)), [objective])
    _, teacher, _, _, sets, collate, _, objectives = _distill_parts(cfg)
    return teacher_cache(cfg, teacher, sets["train"], collate, objectives)


def evaluate(
    model: str | Path,
    *,
    config: str | Path | dict | Config | None = None,
    data: str | Path | None = None,
    split: str = "test",
    text_column: str | None = None,
    text_pair_column: str | None = None,
    label_column: str | None = None,
    batch_size: int = 64,
    overrides: list[str] | tuple[str, ...] = (),
) -> EvalResult:
    """Evaluate a saved model on ``split`` of the config's data, or on a whole file given as ``data``:
    classifiers and regressors get their task metrics and predictions, causal LMs their perplexity."""
    from lmdistill.data.text import Collator, TextDataset, encode, max_length_for, pad_id
    from lmdistill.engine import predict
    from lmdistill.models.load import load_saved_classifier
    from lmdistill.tasks.metrics import compute_metrics

    if _is_causal_lm(model):
        return _evaluate_causal_lm(model, config, data, split, text_column, batch_size, overrides)
    net, tok = load_saved_classifier(str(model), "model")
    if config is None and data is None:
        raise DataError("evaluate needs data: give --data FILE or --config CONFIG")
    regression = net.config.num_labels == 1
    task = "regression" if regression else "classification"
    names = None if regression else [str(net.config.id2label[i]) for i in range(net.config.num_labels)]
    if data is not None:
        dcfg = DataConfig(train=str(data), validation_size=0.0, test_size=0.0)
        split_name, key = "train", "data"
        seed = 0
    else:
        cfg = load_config(config, overrides)
        dcfg, seed, key = cfg.data, cfg.seed, split
        split_name = split
    for attr, value in (
        ("text_column", text_column),
        ("text_pair_column", text_pair_column),
        ("label_column", label_column),
    ):
        if value is not None:
            setattr(dcfg, attr, value)
    dcfg.label_names = names
    frames = load_frames(dcfg, seed)
    if split_name not in frames:
        raise DataError(f"split '{split}' is not in the data (available: {', '.join(frames)})")
    ex = build_task_data({split_name: frames[split_name]}, dcfg, task).splits[split_name]
    dataset = TextDataset(
        encode(tok, ex, max_length_for(dcfg.max_length, net)), ex.labels, regression=regression
    )
    logits = predict(net, dataset, Collator(pad_id(tok)), batch_size)
    metrics = compute_metrics(logits, np.asarray(ex.labels), task, net.config.num_labels)
    if regression:
        preds = logits.reshape(-1).tolist()
        gold = list(ex.labels)
    else:
        preds = [names[i] for i in logits.argmax(-1)]
        gold = [names[i] for i in ex.labels]
    return EvalResult(
        model=str(model),
        split=key if data is None else str(data),
        n=len(ex),
        metrics=metrics,
        predictions=preds,
        labels=gold,
    )


def _is_causal_lm(model: str | Path) -> bool:
    """A saved model whose config names a causal-LM architecture (``...ForCausalLM``, ``...LMHeadModel``)."""
    path = Path(model).expanduser() / "config.json"
    try:
        archs = json.loads(path.read_text()).get("architectures") or []
    except (OSError, ValueError):
        return False  # the classifier loader says what is wrong with the folder
    return any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)


def _evaluate_causal_lm(model, config, data, split, text_column, batch_size, overrides) -> EvalResult:
    """Perplexity (mean next-token NLL over the targets, and its exp) of a saved causal LM."""
    from lmdistill.tasks.causal_lm import LMCollator, build_datasets, load_causal_lm, pad_id_of, perplexity

    if config is None and data is None:
        raise DataError("evaluate needs data: give --data FILE or --config CONFIG")
    if data is not None:
        section = {"train": str(data), "validation_size": 0.0, "test_size": 0.0}
        if text_column is not None:
            section["text_column"] = text_column
        cfg = load_config({"task": "causal_lm", "data": section, "model": {"name_or_path": str(model)}})
        split_name = "train"
    else:
        cfg = load_config(config, overrides)
        if cfg.task != "causal_lm":
            raise DataError(
                f"model '{model}' is a causal LM but the config's task is {cfg.task}: give a "
                "config with task: causal_lm, or --data FILE"
            )
        split_name = split
        if text_column is not None:
            cfg.data.text_column = text_column
    net, tok = load_causal_lm(str(model), "model")
    sets = build_datasets(cfg, tok)
    if split_name not in sets:
        raise DataError(f"split '{split}' is not in the data (available: {', '.join(sets)})")
    metrics = perplexity(net, sets[split_name], LMCollator(pad_id_of(tok)), batch_size, cfg.lm.chunk_size)
    return EvalResult(
        model=str(model), split=split if data is None else str(data), n=len(sets[split_name]), metrics=metrics
    )


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
    from lmdistill.tasks.retrieval import evaluate_retrieval as run

    return run(
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
