"""The steps of ``compress`` around distillation (``compress.steps``; docs/compression.md).

Before distillation, on the student built from the teacher (layers kept, :func:`lmdistill.tasks.base.make_student`):

* ``trim_vocabulary`` (``student.vocabulary``): keep the tokens of the training texts (and the transfer texts),
  the special tokens and the single-character pieces; slice the embeddings, rewrite the fast tokenizer
  (:func:`lmdistill.models.vocab.trim_vocabulary`; Abdaoui et al. 2020, Ushio et al. 2023);
* ``prune_width`` (``student.width``): rank heads and FFN neurons (and hidden channels) by importance on a few
  hundred training examples and keep the most important (:mod:`lmdistill.models.prune`; Minitron,
  Muralidharan et al. 2024, sec. 2; gradient head importance: Michel et al. 2019, eq. 2).

Each state is saved whole (written into a temporary sibling, then renamed) as a normal transformers folder in
``OUTPUT_DIR/steps/<n>-<step>/model`` and is a row of the report (its quality before any training). The last
one is the student that ``distill`` trains, and that the no-KD baseline trains without a teacher.

After distillation, on the distilled student: ``quantize`` (dynamic int8: PyTorch, applied at load time, and
ONNX Runtime when ``export`` is a step too) and ``export`` (ONNX fp32 in ``OUTPUT_DIR/export/student``). The
teacher is served the same ways (``OUTPUT_DIR/export/teacher``), so a runtime's gain is not counted as
distillation's.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

from lmdistill.config.checks import compress_steps
from lmdistill.config.schema import Config, VocabularyConfig
from lmdistill.errors import LmdistillError
from lmdistill.reporting import ModelSpec

RECORD = "lmdistill-step.json"
BEFORE = ("trim_vocabulary", "prune_width")
LABELS = {
    "keep_layers": ("keep layers", "student, layers kept, before training"),
    "trim_vocabulary": ("trim vocabulary", "student, vocabulary trimmed, before training"),
    "prune_width": ("prune width", "student, width pruned, before training"),
}


def _say(text: str) -> None:
    print(f"   {text}", flush=True)


# --------------------------------------------------------------------------------------------- early checks


def check_chain(cfg: Config) -> None:
    """What can be checked before anything is trained: the width against the teacher's shape, the vocabulary
    against the training texts, the int8 kernels. One-line errors (ModelError, DataError, ExportError)."""
    steps = compress_steps(cfg)
    if "prune_width" in steps:
        _check_width(cfg)
    if "trim_vocabulary" in steps:
        _vocabulary_counts(cfg)
    if "quantize" in steps:
        from lmdistill.export import check_torch_int8
        from lmdistill.export.quantize import onnx_quantizer

        check_torch_int8()
        if "export" in steps:
            onnx_quantizer()


def _check_width(cfg: Config) -> None:
    """The width on a shell of the student's architecture (meta device: no weights)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from lmdistill.models.load import load_config_of

    s = cfg.student
    source, key = (
        (s.name_or_path, "student.name_or_path")
        if s.init == "pretrained"
        else (cfg.teacher.name_or_path or cfg.model.name_or_path, "model.name_or_path")
    )
    config = load_config_of(source, key)
    if s.init == "config":
        for k in ("hidden_size", "num_attention_heads", "intermediate_size"):
            if getattr(s, k) is not None:
                setattr(config, k, getattr(s, k))
    with torch.device("meta"):
        shell = AutoModelForSequenceClassification.from_config(config)
    _width_sizes(shell, cfg)


def _width_sizes(model, cfg: Config):
    from lmdistill.models.prune import resolve_sizes, width_for_parameter_target

    w = cfg.student.width
    if w.target_parameters is not None:
        return width_for_parameter_target(model, w.target_parameters)
    return resolve_sizes(
        model, heads=w.heads, intermediate_size=w.intermediate_size, hidden_size=w.hidden_size
    )


def _texts(cfg: Config, task_name: str, vocab: VocabularyConfig) -> list:
    """The training texts (pairs as tuples), and the transfer set's texts without validation / test texts."""
    from lmdistill.data.tables import load_task_data
    from lmdistill.data.transfer import load_transfer

    data = load_task_data(cfg.data, task_name, cfg.seed)
    train = data.splits["train"]
    texts = list(zip(train.texts, train.pairs)) if train.pairs is not None else list(train.texts)
    if vocab.transfer_texts and cfg.data.unlabeled is not None:
        held_out = {k: v.texts for k, v in data.splits.items() if k != "train"}
        texts += load_transfer(cfg.data.unlabeled, held_out).texts
    return texts


def _vocabulary_counts(cfg: Config) -> None:
    """Count and choose once on the student's tokenizer: a vocabulary the texts do not cover fails here."""
    from lmdistill.models.load import load_tokenizer
    from lmdistill.models.vocab import choose_tokens, token_counts
    from lmdistill.models.vocab_json import require_fast

    s = cfg.student
    spec = s.tokenizer or (s.name_or_path if s.init == "pretrained" else None)
    spec = (
        spec
        or cfg.teacher.tokenizer
        or cfg.teacher.name_or_path
        or cfg.model.tokenizer
        or cfg.model.name_or_path
    )
    tok = load_tokenizer(spec, "student.tokenizer")
    require_fast(tok)
    v = s.vocabulary or VocabularyConfig()
    counts = token_counts(tok, _texts(cfg, cfg.task, v))
    choose_tokens(counts, tok, min_count=v.min_count, top_n=v.top_n, keep_characters=v.keep_characters)


# --------------------------------------------------------------------------------------------- before distill


def _save_step(folder: Path, model, tokenizer, record: dict) -> None:
    """``folder/model`` + ``folder/RECORD``, whole or not at all."""
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp / "model")
        tokenizer.save_pretrained(tmp / "model")
        (tmp / RECORD).write_text(json.dumps(record, indent=2, default=str) + "\n")
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _settings(cfg: Config, teacher: str) -> dict:
    """What decides the students of the steps before distillation (a saved step is reused only for the same)."""
    return {
        "teacher": str(teacher),
        "student": asdict(cfg.student),
        "data": asdict(cfg.data),
        "seed": cfg.seed,
        "steps": compress_steps(cfg),
    }


def _reusable(out: Path, names: list[str], settings: dict) -> bool:
    folders = [out / "steps" / f"{i}-{n}" for i, n in enumerate(names)]
    for f in folders:
        try:
            if json.loads((f / RECORD).read_text()).get("settings") != json.loads(
                json.dumps(settings, default=str)
            ):
                return False
        except (OSError, ValueError):
            return False
    return True


def prepare_student(
    cfg: Config, teacher: str, out: Path, *, resume: bool, overwrite: bool
) -> tuple[Path, list[ModelSpec]]:
    """Build the student, apply the steps before distillation, save every state. Returns the folder of the
    last (the student to distill) and a report row per state. With ``resume`` the saved states are reused when
    they were made with the same settings; changed ones under a finished student need ``overwrite``."""
    steps = [s for s in compress_steps(cfg) if s in BEFORE]
    names = ["keep_layers", *steps]
    settings = _settings(cfg, teacher)
    folders = [out / "steps" / f"{i}-{n}" for i, n in enumerate(names)]
    labels = dict(LABELS)
    if cfg.student.init != "from_teacher":
        labels["keep_layers"] = (
            "build student",
            f"student as built (init: {cfg.student.init}), before training",
        )
    specs = [
        ModelSpec(n.replace("_", " "), "step", f / "model", step=labels[n][0], label=labels[n][1])
        for n, f in zip(names, folders)
    ]
    if resume and not overwrite and _reusable(out, names, settings):
        _say(f"steps before distillation: reusing {', '.join(str(f) for f in folders)}")
        return folders[-1] / "model", specs
    if not overwrite and (out / "student" / "results.json").is_file():
        raise LmdistillError(
            f"compress --resume: the steps before distillation changed since '{out / 'student'}' was trained; "
            "pass --overwrite to retrain it, or choose another output_dir"
        )
    model, tok = _build(cfg, teacher)
    _save_step(folders[0], model, tok, {"step": "keep_layers", "settings": settings, "info": _shape(model)})
    for name, folder in zip(names[1:], folders[1:]):
        model, tok, info = (_trim if name == "trim_vocabulary" else _prune)(cfg, model, tok)
        _say(f"{name}: {json.dumps(info, default=str)}")
        _save_step(folder, model, tok, {"step": name, "settings": settings, "info": info | _shape(model)})
    return folders[-1] / "model", specs


def _build(cfg: Config, teacher: str):
    """The student of the config, as the distill run would build it (labels named as the data's)."""
    from functools import partial

    from lmdistill.data.tables import load_task_data
    from lmdistill.models.load import load_classifier, load_saved_classifier
    from lmdistill.tasks.base import make_student

    data = load_task_data(cfg.data, cfg.task, cfg.seed)
    t_model, t_tok = load_saved_classifier(teacher, "teacher.name_or_path")
    load = partial(load_classifier, num_labels=data.num_labels, label_names=data.label_names)
    student, tok = make_student(cfg, t_model, t_tok, load)
    if data.label_names:
        student.config.id2label = dict(enumerate(data.label_names))
        student.config.label2id = {n: i for i, n in enumerate(data.label_names)}
    return student, tok


def _shape(model) -> dict:
    c = model.config
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "layers": c.num_hidden_layers,
        "hidden_size": c.hidden_size,
        "heads": c.num_attention_heads,
        "intermediate_size": c.intermediate_size,
        "vocab_size": c.vocab_size,
    }


def _trim(cfg: Config, model, tok):
    from lmdistill.models.vocab import trim_vocabulary

    v = cfg.student.vocabulary or VocabularyConfig()
    model, tok, info = trim_vocabulary(
        model,
        tok,
        _texts(cfg, cfg.task, v),
        min_count=v.min_count,
        top_n=v.top_n,
        keep_characters=v.keep_characters,
    )
    return model, tok, info.to_dict()


def _prune(cfg: Config, model, tok):
    """Importance on the first ``calibration_examples`` training examples, then the cut."""
    import torch

    from lmdistill.data.tables import load_task_data
    from lmdistill.models.importance import width_importance
    from lmdistill.models.prune import apply_width, model_sizes, select_width

    w = cfg.student.width
    sizes = _width_sizes(model, cfg)
    _, heads, _, _, inter, hidden = model_sizes(model)
    train = load_task_data(cfg.data, cfg.task, cfg.seed).splits["train"]
    n = min(w.calibration_examples, len(train))
    batches = []
    for i in range(0, n, 32):
        args = (train.texts[i : i + 32],) + ((train.pairs[i : i + 32],) if train.pairs is not None else ())
        enc = tok(*args, truncation=True, max_length=cfg.data.max_length, padding=True, return_tensors="pt")
        labels = torch.tensor(train.labels[i : i + 32])
        batches.append(dict(enc) | {"labels": labels.float() if cfg.task == "regression" else labels})
    model.eval()
    importance = width_importance(
        model,
        batches,
        heads=sizes.heads != heads,
        neurons=sizes.intermediate_size != inter,
        hidden=sizes.hidden_size != hidden,
        head_method=w.importance,
    )
    pruned = apply_width(model, select_width(model, importance, sizes))
    info = {"calibration_examples": n, "importance": w.importance, **sizes._asdict()}
    return pruned.train(), tok, info


# --------------------------------------------------------------------------------------------- after distill


def runtime_rows(cfg: Config, teacher: str, student: Path, out: Path, *, overwrite: bool) -> list[ModelSpec]:
    """The quantize / export steps: exported folders written (or reused) and a report row per model served,
    the teacher in every runtime the final student gets."""
    steps = compress_steps(cfg)
    rows: list[ModelSpec] = []
    runtimes = []
    if "quantize" in steps:
        rows.append(ModelSpec("student int8", "student", student, "PyTorch int8", step="quantize int8"))
        rows.append(ModelSpec("teacher int8", "teacher", Path(teacher), "PyTorch int8", step="quantize int8"))
    if "export" in steps:
        runtimes = [("onnx", "ONNX Runtime fp32", "export onnx")]
        if "quantize" in steps:
            runtimes.append(("onnx-int8", "ONNX Runtime int8", "export onnx + quantize int8"))
        for role, source in (("student", student), ("teacher", Path(teacher))):
            folder = out / "export" / role
            _export(source, folder, "quantize" in steps, overwrite, cfg.compress.fuse)
            rows += [
                ModelSpec(f"{role} {sub}", role, folder / sub, rt, step=step) for sub, rt, step in runtimes
            ]
    order = {"student": 0, "teacher": 1}
    return sorted(rows, key=lambda r: order[r.role])


def _export(source: Path, folder: Path, int8: bool, overwrite: bool, fuse: bool) -> None:
    from lmdistill.export import export_model, read_record

    record = read_record(folder) if folder.is_dir() else {}
    same = (
        record.get("source") == str(source.resolve())
        and (not int8 or "onnx-int8" in record.get("formats", {}))
        and record.get("fuse", False) == fuse
    )
    if same and not overwrite and _newer(folder, source):
        _say(f"export: reusing {folder}")
        return
    _say(f"export: {source} -> {folder}")
    export_model(source, folder, onnx=True, int8=int8, overwrite=True, fuse=fuse)


def _newer(folder: Path, source: Path) -> bool:
    """The export was written after the model it holds (a retrained model is exported again)."""
    weights = [p.stat().st_mtime for p in source.glob("*.safetensors")] or [0.0]
    try:
        return (folder / "lmdistill-export.json").stat().st_mtime >= max(weights)
    except OSError:
        return False


# --------------------------------------------------------------------------------------------- teacher assistants


def assistant_config(cfg: Config, index: int, teacher: str, folder: Path) -> Config:
    """The distill run of ``compress.assistants[index]``: the run's config, distilled from ``teacher`` (the
    teacher or the previous assistant) into a student made of the layers the assistant keeps of it, written to
    ``folder`` (Mirzadeh et al. 2020: each step of the chain is an ordinary distillation)."""
    import copy

    from lmdistill.config.schema import StudentConfig

    a = cfg.compress.assistants[index]
    a_cfg = copy.deepcopy(cfg)
    a_cfg.output_dir, a_cfg.teacher.name_or_path = str(folder), teacher
    a_cfg.student = StudentConfig(
        init="from_teacher", layers=a.layers, num_layers=a.num_layers, strategy=a.strategy
    )
    return a_cfg


def assistant_rows(cfg: Config, folders: list[Path]) -> list[ModelSpec]:
    """A report row per trained assistant (role ``step``: a model of the chain, not the student)."""
    rows = []
    for i, folder in enumerate(folders):
        before = "the teacher" if i == 0 else f"assistant {i}"
        label = f"teacher assistant {i + 1}, distilled from {before}"
        rows.append(
            ModelSpec(
                f"assistant {i + 1}",
                "step",
                folder / "model",
                label=label,
                step="teacher assistant",
                run=folder,
            )
        )
    return rows


def write_chain(out: Path, teacher: str, assistants: list[Path], student: Path, report: dict) -> Path:
    """``OUTPUT_DIR/chain.json``: teacher -> assistants -> student, each model's folder, its teacher, layers,
    parameters and test metrics (from the report)."""
    from lmdistill.fileio import write_text

    models = report.get("models", {})
    names = ["teacher"] + [f"assistant {i + 1}" for i in range(len(assistants))] + ["student"]
    folders = [Path(teacher)] + [a / "model" for a in assistants] + [student / "model"]
    chain = []
    for i, (name, folder) in enumerate(zip(names, folders)):
        entry = models.get(name, {})
        config = (
            json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
        )
        chain.append(
            {
                "model": name,
                "folder": str(folder),
                "teacher": str(folders[i - 1]) if i else None,
                "layers": config.get("num_hidden_layers"),
                "parameters": entry.get("parameters", {}).get("total"),
                "metrics": {k: v.get("value") for k, v in entry.get("metrics", {}).items()},
            }
        )
    return write_text(out / "chain.json", json.dumps({"chain": chain}, indent=2) + "\n")
