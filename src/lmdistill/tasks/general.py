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

The same raw-text machinery (blocks, evaluation of an objective on held-out blocks: :class:`RawTextTask`)
serves ``task: mlm`` (:mod:`lmdistill.tasks.mlm`).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lmdistill.config.schema import Config, StageConfig, Verb
from lmdistill.errors import ModelError
from lmdistill.methods.presets import TASK_PRESETS
from lmdistill.tasks.base import Parts, Task, stage_key, stage_objective, stages_of
from lmdistill.tasks.base import make_student as _make_student

# ------------------------------------------------------------------------------------------------ models


def load_auto(auto_cls, spec, key: str, *, need_head: str | None = None):
    """An encoder of class ``auto_cls`` (AutoModel, AutoModelForMaskedLM) from a folder or hub id (``spec``: a
    ModelConfig or a path; ``key``: the config key of its path, e.g. ``teacher.name_or_path``).

    ``need_head`` (e.g. ``"masked-LM head"``): refuse a checkpoint whose head weights are missing (they would
    be initialised at random), naming the head.
    """
    from lmdistill.config.schema import ModelConfig
    from lmdistill.models.load import ENCODERS, HEADS, check_loaded, load_config_of, load_weights

    spec = spec if isinstance(spec, ModelConfig) else ModelConfig(name_or_path=str(spec))
    path = spec.name_or_path
    config = load_config_of(path, key, spec.revision, spec.trust_remote_code)
    if config.model_type not in ENCODERS:
        raise ModelError(
            f"{key}: model type '{config.model_type}' is not an encoder lmdistill supports for raw-text "
            f"distillation (supported: {', '.join(ENCODERS)})"
        )
    model, info = load_weights(auto_cls, spec, key.removesuffix(".name_or_path"), check=False)
    missing = sorted(k for k in info.get("missing_keys", ()) if "pooler" not in k)
    if need_head and missing:
        raise ModelError(
            f"{key}: '{path}' has no {need_head} (missing weights such as '{missing[0]}'), so its predictions "
            "would be random; give a model pre-trained with that head (e.g. bert-base-uncased), or use "
            "task: general, which needs no head"
        )
    check_loaded(model, info, path, key, allow_missing=("pooler.",), allow_unexpected=HEADS)
    return model


def load_teacher(cfg: Config, auto_cls, need_head: str | None = None):
    """``(teacher, tokenizer)`` from ``teacher`` (its tokenizer, revision and remote-code settings honoured)."""
    from lmdistill.models.load import check_tokenizer_files, load_tokenizer

    check_tokenizer_files(cfg.teacher, "teacher")
    model = load_auto(auto_cls, cfg.teacher, "teacher.name_or_path", need_head=need_head)
    return model, load_tokenizer(cfg.teacher, "teacher.tokenizer")


def make_student(cfg: Config, teacher: nn.Module, t_tok, auto_cls):
    """``(student, tokenizer)``: teacher layers, a fresh smaller model of the teacher's class, or pretrained."""
    from lmdistill.models.load import check_tokenizer_files, load_tokenizer

    def pretrained(spec, key):
        check_tokenizer_files(spec, key)
        return load_auto(auto_cls, spec, f"{key}.name_or_path"), load_tokenizer(spec, f"{key}.tokenizer")

    return _make_student(cfg, teacher, t_tok, pretrained)


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


# ------------------------------------------------------------------------------------------------ the tasks


class RawTextTask(Task):
    """What tasks on raw text share (``general``, ``mlm``): blocks of ``data.block_size`` tokens (streamed with
    ``data.streaming``), held-out blocks collated once, the objective itself as the validation metric."""

    streams = True
    auto_cls_name = "AutoModel"

    @property
    def auto_cls(self):
        import transformers

        return getattr(transformers, self.auto_cls_name)

    def check_data(self, cfg: Config) -> list[str]:
        from lmdistill.data.tables import check_files

        return check_files(cfg.data, {"data.text_column": cfg.data.text_column}, lines_ok=True)

    def blocks(self, cfg: Config, student, s_tok, teacher, train_collate, eval_collate) -> RawTextData:
        """Check the block length against both models, then read the blocks."""
        for m in (student, teacher) if teacher is not None else (student,):
            check_length(m, cfg.data.block_size or cfg.data.max_length, "data.block_size")
        return raw_text_data(cfg, s_tok, train_collate, eval_collate)

    def raw_parts(
        self, cfg: Config, student, s_tok, teacher, data: RawTextData, objectives, stages, more=None
    ):
        """The run's parts; results.json gets the block counts and size (and the fields in ``more``)."""
        extra = {
            "task": self.name,
            "blocks": data.counts,
            "block_size": cfg.data.block_size or cfg.data.max_length,
        }
        extra.update(more or {})
        return Parts(
            student,
            s_tok,
            data.train,
            data.collate,
            objectives,
            stages,
            teacher=teacher,
            data=data,
            extra=extra,
        )

    def objectives(self, cfg: Config, student, teacher, objective_cls=None) -> tuple[list, list[StageConfig]]:
        stages = stages_of(cfg)
        objectives = [
            stage_objective(cfg, st, student, teacher, stage_key(cfg, i), objective_cls)
            for i, st in enumerate(stages)
        ]
        return objectives, stages

    def has_split(self, parts: Parts, split: str) -> bool:
        return bool(getattr(parts.data, split))

    def evaluate(self, model: nn.Module, parts: Parts, split: str, objective) -> dict[str, float]:
        """The objective on the held-out blocks (its taps attached to ``model`` for the call when they are not)."""
        teacher = parts.teacher
        attached = objective.student_tap is not None and objective.student_tap.model is model
        if attached:
            return self.metrics_of(model, teacher, objective, getattr(parts.data, split))
        objective.attach(model, teacher)
        try:
            if teacher is not None:
                model.to(next(teacher.parameters()).device)
            return self.metrics_of(model, teacher, objective, getattr(parts.data, split))
        finally:
            objective.detach()

    def metrics_of(self, model, teacher, objective, batches: list[dict]) -> dict:
        return objective_metrics(model, teacher, objective, batches)

    def reload(self, path: Path, parts: Parts) -> nn.Module:
        return load_auto(self.auto_cls, str(path), "model")

    def load_saved(self, path, key: str = "model"):
        from lmdistill.models.load import load_tokenizer

        return load_auto(self.auto_cls, str(path), key), load_tokenizer(str(path), key)


class GeneralTask(RawTextTask):
    """Task-agnostic distillation of base encoders on raw text (TinyBERT / MiniLMv2 general distillation)."""

    name = "general"
    metrics = {"loss": False}
    primary_metric = "loss"
    finetunes = False
    presets = TASK_PRESETS["general"]

    def check(self, cfg: Config, verb: Verb | None) -> list[str]:
        if verb == "finetune":
            return [
                "task general distils a teacher: run `lmdistill distill`, then finetune its model/ "
                "with a task such as classification"
            ]
        if verb == "distill" and not cfg.distill.matches and not cfg.distill.stages:
            return [
                "distill.matches is required for task general (it learns from hidden states, attention and "
                "relations only): add matches, or set distill.method: tinybert | minilmv2"
            ]
        return []

    def parts(self, cfg: Config, verb: str) -> Parts:
        from lmdistill.data.rawtext import BlockCollator

        teacher, t_tok = load_teacher(cfg, self.auto_cls)
        student, s_tok = make_student(cfg, teacher, t_tok, self.auto_cls)
        require_same_tokenizer(t_tok, s_tok, "general")
        collate = BlockCollator(s_tok)
        data = self.blocks(cfg, student, s_tok, teacher, collate, collate)
        objectives, stages = self.objectives(cfg, student, teacher)
        for i, obj in enumerate(objectives):
            if not obj.matches:
                raise ModelError(
                    f"{stage_key(cfg, i)}.matches: task general learns from intermediate matches only, and this "
                    "stage has none with a weight above 0; add matches or set distill.method: tinybert | minilmv2"
                )
        return self.raw_parts(cfg, student, s_tok, teacher, data, objectives, stages)
