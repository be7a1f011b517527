"""Task-agnostic ("general") distillation on raw text: ``task: general``.

The teacher and the student are base encoders (``AutoModel``: no head, outputs ``last_hidden_state`` and
``hidden_states``), the data are raw-text blocks (:mod:`lmdistill.data.rawtext`), and the objective has only
intermediate matches (``distill.matches``): no labels, no logits. The result is a pre-trained encoder that
``lmdistill finetune`` takes as its ``model`` (the task head is added there).

Recipes (``distill.method`` with ``task: general``, see :data:`lmdistill.methods.presets.TASK_PRESETS`):

- ``tinybert``: TinyBERT's general distillation (Jiao et al. 2020, sec. 3.2, "general distillation": the
  transformer-layer distillation of sec. 3.1 on a general corpus, without the prediction layer):
  ``L = L_embd + sum_m (L_hidn + L_attn)``, eq. 7 ``L_attn = 1/h sum_i MSE(A^S_i, A^T_i)`` on pre-softmax
  scores, eq. 8 ``L_hidn = MSE(H^S W_h, H^T)``, eq. 9 ``L_embd = MSE(E^S W_e, E^T)``, uniform layer map
  ``g(m) = m N / M`` (eq. 6).
- ``minilmv2``: MiniLMv2 (Wang et al. 2021, sec. 3, eq. 3-4): ``L = sum_{i in {Q,K,V}} L_ii`` with
  ``L_ij = 1/(A_r |x|) sum_a sum_t KL(R^T_{ij,a,t} || R^S_{ij,a,t})`` between the teacher's last (or
  upper-middle) layer and the student's last layer, relations ``R = softmax(X X^T / sqrt(d_r))`` with
  ``A_r`` relation heads shared by both models.

The same raw-text machinery (blocks, stages, saving, evaluation of an objective on held-out blocks) serves
``task: mlm`` (:mod:`lmdistill.tasks.mlm`).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lmdistill.config import Config, StageConfig
from lmdistill.errors import ModelError

# ------------------------------------------------------------------------------------------------ models


def load_auto(auto_cls, path: str, key: str, *, need_head: str | None = None):
    """An encoder of class ``auto_cls`` (AutoModel, AutoModelForMaskedLM) from a folder or hub id.

    ``need_head`` (e.g. ``"masked-LM head"``): refuse a checkpoint whose head weights are missing (they would
    be initialised at random), naming the head.
    """
    from lmdistill.models.load import ENCODERS, load_config_of

    config = load_config_of(path, key)
    if config.model_type not in ENCODERS:
        raise ModelError(
            f"{key}: model type '{config.model_type}' is not an encoder lmdistill supports for raw-text "
            f"distillation (supported: {', '.join(ENCODERS)})"
        )
    try:
        model, info = auto_cls.from_pretrained(path, output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:240]
        raise ModelError(f"{key}: cannot load weights from '{path}' ({first})") from None
    missing = sorted(k for k in info.get("missing_keys", ()) if "pooler" not in k)
    if need_head and missing:
        raise ModelError(
            f"{key}: '{path}' has no {need_head} (missing weights such as '{missing[0]}'), so its predictions "
            "would be random; give a model pre-trained with that head (e.g. bert-base-uncased), or use "
            "task: general, which needs no head"
        )
    return model


def load_teacher(cfg: Config, auto_cls, need_head: str | None = None):
    """``(teacher, tokenizer)`` from ``teacher.name_or_path`` (tokenizer from ``teacher.tokenizer`` if set)."""
    from lmdistill.models.load import load_tokenizer

    t = cfg.teacher
    model = load_auto(auto_cls, t.name_or_path, "teacher.name_or_path", need_head=need_head)
    return model, load_tokenizer(t.tokenizer or t.name_or_path, "teacher.tokenizer")


def make_student(cfg: Config, teacher: nn.Module, t_tok, auto_cls):
    """``(student, tokenizer)``: teacher layers, a fresh smaller model of the teacher's class, or pretrained."""
    from lmdistill.api import _make_student
    from lmdistill.models.load import load_tokenizer

    s = cfg.student
    if s.init == "pretrained":
        model = load_auto(auto_cls, s.name_or_path, "student.name_or_path")
        return model, load_tokenizer(s.tokenizer or s.name_or_path, "student.tokenizer")
    return _make_student(cfg, teacher, t_tok, None)  # from_teacher / config need no labels


def check_length(model: nn.Module, length: int, key: str) -> None:
    """Refuse a block / text length beyond the model's position embeddings (a crash deep inside otherwise)."""
    cfg = model.config
    limit = getattr(cfg, "max_position_embeddings", None)
    if limit is None:
        return
    if cfg.model_type in ("roberta", "xlm-roberta", "camembert", "mpnet"):
        limit -= (cfg.pad_token_id or 0) + 1  # positions start after the padding index
    if length > limit:
        raise ModelError(
            f"{key}: {length} tokens exceed the {limit} positions the model has; set {key} to {limit} or less"
        )


def require_same_tokenizer(t_tok, s_tok, task: str) -> None:
    from lmdistill.data.text import tokenizers_match

    if not tokenizers_match(t_tok, s_tok):
        raise ModelError(
            f"student.tokenizer: task {task} feeds the same token ids to teacher and student, but their "
            "tokenizers differ; use a student with the teacher's tokenizer (student.init: from_teacher "
            "or config)"
        )


# ------------------------------------------------------------------------------------------------ data


@dataclass
class RawTextData:
    """Training blocks (a Dataset) and held-out blocks collated once (fixed masks, comparable across evals)."""

    train: torch.utils.data.Dataset
    validation: list[dict]
    test: list[dict]
    counts: dict[str, int]
    collate: Callable | None = None


def _collated(blocks: list[list[int]], collate: Callable, batch_size: int) -> list[dict]:
    from lmdistill.data.rawtext import BlockDataset

    ds = BlockDataset(blocks)
    return [
        collate([ds[i] for i in range(s, min(s + batch_size, len(ds)))])
        for s in range(0, len(ds), batch_size)
    ]


def _consumed_blocks(cfg: Config, out_dir: Path) -> int:
    """Blocks a resumed streaming run has already drawn (from the checkpoint it resumes)."""
    from lmdistill import checkpoint

    found = checkpoint.find(cfg.training.resume, out_dir)
    if found is None:
        return 0
    state = json.loads((found / checkpoint.STATE_FILE).read_text())
    return int(state.get("batches_in_epoch", 0)) * cfg.training.batch_size


def raw_text_data(cfg: Config, tokenizer, train_collate: Callable, eval_collate: Callable) -> RawTextData:
    """Blocks of ``data.block_size`` tokens per split; streamed when ``data.streaming``."""
    from lmdistill.data import rawtext

    d, bs = cfg.data, cfg.data.block_size or cfg.data.max_length
    eb = cfg.training.eval_batch_size
    if not d.streaming:
        splits = rawtext.load_text_splits(d, cfg.seed)
        blocks = {s: list(rawtext.iter_blocks(texts, tokenizer, bs)) for s, texts in splits.items()}
        held = {s: _collated(blocks[s], eval_collate, eb) for s in ("validation", "test") if s in blocks}
        return RawTextData(
            rawtext.BlockDataset(blocks["train"]),
            held.get("validation", []),
            held.get("test", []),
            {s: len(b) for s, b in blocks.items()},
            train_collate,
        )
    n_eval = d.max_eval_examples or rawtext.DEFAULT_STREAM_EVAL_TEXTS
    held, skip_texts = {}, 0
    for split in ("validation", "test"):
        stream = rawtext.iter_split(d, split, streaming=True)
        if stream is None and split == "validation":  # hold out the head of the training stream
            stream, skip_texts = rawtext.iter_split(d, "train", streaming=True), n_eval
        if stream is not None:
            held[split] = list(rawtext.iter_blocks(itertools.islice(stream, n_eval), tokenizer, bs))

    def open_blocks(n_pass: int):
        texts = itertools.islice(
            rawtext.iter_split(d, "train", streaming=True),
            skip_texts,
            None if d.max_train_examples is None else skip_texts + d.max_train_examples,
        )
        return rawtext.shuffled(
            rawtext.iter_blocks(texts, tokenizer, bs), rawtext.SHUFFLE_BUFFER, cfg.seed + n_pass
        )

    t = cfg.training
    length = t.max_steps * t.batch_size * t.gradient_accumulation_steps
    train = rawtext.StreamingBlocks(open_blocks, length, skip=_consumed_blocks(cfg, Path(cfg.output_dir)))
    return RawTextData(
        train,
        _collated(held.get("validation", []), eval_collate, eb),
        _collated(held.get("test", []), eval_collate, eb),
        {"train": length, **{s: len(b) for s, b in held.items()}},
        train_collate,
    )


# ------------------------------------------------------------------------------------------------ objective


def build_objective(cfg: Config, stage: StageConfig, student, teacher, key: str, objective_cls=None, **extra):
    """The objective of one stage (output terms of ``objective_cls`` + resolved matches)."""
    from lmdistill.objective import ModelShape, Objective, resolve_matches

    objective_cls = objective_cls or Objective
    s_shape = ModelShape.of(student)
    t_shape = ModelShape.of(teacher) if teacher is not None else s_shape
    matches = resolve_matches(stage.matches, s_shape, t_shape, f"{key}.matches")
    d = cfg.distill
    return objective_cls(
        stage.losses,
        stage.temperature or d.temperature,
        matches=matches,
        student_width=s_shape.width,
        teacher_width=t_shape.width,
        temperature_schedule=d.temperature_schedule,
        loss_schedules=d.loss_schedules,
        kd_scale_t2=d.kd_scale_t2,
        **extra,
    )


def to_device(batch, device):
    """Move every tensor of a (nested) batch to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


def _base_weight(objective, name: str) -> float:
    match = next((m for m in objective.matches if m.name == name), None)
    return match.weight if match is not None else objective.weights[name]


@torch.no_grad()
def objective_metrics(student: nn.Module, teacher: nn.Module | None, objective, batches: list[dict]) -> dict:
    """The objective on held-out batches: ``loss`` (terms weighted by their configured, unscheduled weights,
    so evaluations stay comparable) and every term, each averaged over examples. Taps must be attached."""
    from lmdistill.signals.live import LiveTeacher

    device = next(student.parameters()).device
    was = student.training
    student.eval()
    signal_of = None
    if teacher is not None and objective.needs_teacher:
        signal_of = LiveTeacher(teacher, hidden_states=objective.needs_hidden, tap=objective.teacher_tap)
    sums: dict[str, float] = {}
    n = 0
    for batch in batches:
        batch = to_device(batch, device)
        out = student(**batch["student"], output_hidden_states=objective.needs_hidden or None)
        feats = objective.student_tap.pop() if objective.student_tap is not None else None
        signal = signal_of(batch) if signal_of is not None else None
        terms = objective(out, signal, batch, feats)
        b = batch["student"]["input_ids"].shape[0]
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + float(v) * b
        n += b
    student.train(was)
    terms = {k: v / max(n, 1) for k, v in sums.items()}
    return {"loss": sum(_base_weight(objective, k) * v for k, v in terms.items()), **terms}


# ------------------------------------------------------------------------------------------------ the run


def stages_with_keys(cfg: Config) -> list[tuple[StageConfig, str]]:
    from lmdistill.api import stages_of

    key = "distill" if not cfg.distill.stages else "distill.stages[{}]"
    return [(st, key.format(i)) for i, st in enumerate(stages_of(cfg))]


def run_stages(
    cfg: Config,
    verb: str,
    *,
    student,
    s_tok,
    teacher,
    data: RawTextData,
    objectives: list,
    stages: list[StageConfig],
    metrics: Callable,
    reload: Callable,
    extra: dict | None = None,
):
    """Train each stage on the same student, keep the best of the last, evaluate it on the test blocks.

    ``metrics(model, objective, batches) -> dict`` evaluates a model; ``reload(model_dir)`` loads the saved
    student. Writes ``model/``, ``metrics.csv``, ``results.json`` (and ``projections.safetensors`` when
    projections were learned) in ``output_dir``; earlier stages in ``output_dir/stage-N-NAME``.
    """
    from lmdistill.api import _prepare_output, finish_run, is_main_process, save_model, stage_runs
    from lmdistill.engine import train

    result = None
    for (stage_cfg, final, stage_dir), objective in zip(stage_runs(cfg, stages), objectives):
        out = _prepare_output(stage_cfg, verb, stage_dir)
        model_dir = out / "model"
        val = data.validation if final else []

        def evaluate(model, objective=objective):
            return metrics(model, objective, data.validation)

        def on_best(model, model_dir=model_dir):
            save_model(model, s_tok, model_dir)

        outcome = train(
            student=student,
            objective=objective,
            train_set=data.train,
            collate=data.collate,
            cfg=stage_cfg.training,
            seed=cfg.seed,
            out_dir=out,
            teacher=teacher,
            evaluate=evaluate if val else None,
            on_best=on_best,
            desc=verb if final else f"{verb} ({out.name})",
        )
        if len(objective.projections) and is_main_process():
            from safetensors.torch import save_file

            state = {k: v.detach().cpu().contiguous() for k, v in objective.projections.state_dict().items()}
            save_file(state, str(out / "projections.safetensors"))
        best = reload(model_dir)
        results = {"validation": {}, "test": {}}
        if final:
            objective.attach(best, teacher)
            try:
                if teacher is not None:
                    best.to(next(teacher.parameters()).device)
                results = {
                    s: metrics(best, objective, getattr(data, s)) if getattr(data, s) else {}
                    for s in ("validation", "test")
                }
            finally:
                objective.detach()
        result = finish_run(
            out,
            model_dir,
            outcome,
            objective,
            best,
            teacher,
            results,
            task=cfg.task,
            blocks=data.counts,
            block_size=cfg.data.block_size or cfg.data.max_length,
            **(extra or {}),
        )
    return result


def distill(cfg: Config):
    """General distillation: base-encoder teacher -> base-encoder student on raw-text blocks."""
    from transformers import AutoModel

    from lmdistill.data.rawtext import BlockCollator

    teacher, t_tok = load_teacher(cfg, AutoModel)
    student, s_tok = make_student(cfg, teacher, t_tok, AutoModel)
    require_same_tokenizer(t_tok, s_tok, "general")
    for m in (teacher, student):
        check_length(m, cfg.data.block_size or cfg.data.max_length, "data.block_size")
    collate = BlockCollator(s_tok)
    data = raw_text_data(cfg, s_tok, collate, collate)
    pairs = stages_with_keys(cfg)
    objectives = [build_objective(cfg, st, student, teacher, key) for st, key in pairs]
    for (_, key), obj in zip(pairs, objectives):
        if not obj.matches:
            raise ModelError(
                f"{key}.matches: task general learns from intermediate matches only, and this stage has "
                "none with a weight above 0; add matches or set distill.method: tinybert | minilmv2"
            )

    def metrics(model, objective, batches):
        return objective_metrics(model, teacher, objective, batches)

    def reload(model_dir):
        return load_auto(AutoModel, str(model_dir), "model")

    return run_stages(
        cfg,
        "distill",
        student=student,
        s_tok=s_tok,
        teacher=teacher,
        data=data,
        objectives=objectives,
        stages=[st for st, _ in pairs],
        metrics=metrics,
        reload=reload,
    )
