"""Models and training data of ``task: embedding`` (:mod:`lmdistill.tasks.embedding`): the teacher as a sentence
encoder, the student, and what each mode trains on -- the teacher's embeddings of single texts (``bi``, with an
optional transfer set), its margins of triples (``cross``), or (the no-KD baseline of ``compress``) the
(query, positive) pairs alone."""

from __future__ import annotations

import copy
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import Dataset

from lmdistill.config.schema import Config
from lmdistill.errors import ModelError
from lmdistill.models.projection import Projection
from lmdistill.models.sentence import SentenceEncoder
from lmdistill.tasks.base import make_student
from lmdistill.tasks.embedding_data import (
    EmbeddingDataset,
    bi_metrics,
    cross_metrics,
    cross_scores,
    pair_metrics,
    pairs,
    retrieval_set,
    tokenize,
    triples,
)


def no_kd(cfg: Config) -> bool:
    """Whether a run is the no-KD baseline: ``distill.losses: {mnrl: w}`` (the student learns the pairs by in-batch
    negatives, no teacher signal), as ``compress`` trains it."""
    return (cfg.distill.losses or {}).get("mnrl", 0) > 0


# ------------------------------------------------------------------------------------------------ models


def progress(message: str) -> None:
    """Progress of the steps before and after training (the engine shows its own bar)."""
    print(message, file=sys.stderr, flush=True)


def run_device(cfg: Config) -> torch.device:
    """Where the teacher and the student run: the GPU unless training.cpu (or none is present)."""
    return torch.device("cuda" if torch.cuda.is_available() and not cfg.training.cpu else "cpu")


def _student_base(cfg: Config, teacher_model: nn.Module, t_tok):
    """The transformer of a student from teacher layers or a fresh config (pretrained sentence students are
    read by :meth:`SentenceEncoder.load`)."""
    model, tok = make_student(cfg, teacher_model, t_tok, load_pretrained=None)
    return getattr(model, "base_model", model), tok


def load_bi_teacher(cfg: Config) -> tuple[SentenceEncoder, object]:
    """The teacher as a :class:`SentenceEncoder`; ``embedding.pooling`` may not contradict its folder."""
    e = cfg.embedding
    teacher, tok = SentenceEncoder.load(cfg.teacher, "teacher.name_or_path", normalize=e.normalize)
    own = teacher.own_pooling
    if e.pooling != "auto":
        if own is not None and own != e.pooling:
            raise ModelError(
                f"embedding.pooling: {e.pooling} differs from the teacher's {own} pooling (its "
                "1_Pooling/config.json); remove embedding.pooling (auto) to pool as the teacher"
            )
        teacher.pooling = e.pooling
    return teacher, tok


def make_bi_student(cfg: Config, teacher: SentenceEncoder, t_tok) -> tuple[SentenceEncoder, object]:
    """The student pools and normalises as the teacher; from teacher layers it also copies the teacher's
    Dense layers; a projection to the teacher's width is added when the widths differ (or asked for)."""

    e, s = cfg.embedding, cfg.student
    if s.init == "pretrained":
        student, tok = SentenceEncoder.load(s.name_or_path, "student.name_or_path")
        student.pooling, student.normalize, student.dense = (
            teacher.pooling,
            teacher.normalize,
            nn.ModuleList(),
        )
    else:
        base, tok = _student_base(cfg, teacher.model, t_tok)
        dense = copy.deepcopy(list(teacher.dense)) if s.init == "from_teacher" else []
        student = SentenceEncoder(base, teacher.pooling, teacher.normalize, dense)
    if student.width != teacher.width and e.projection is False:
        raise ModelError(
            f"embedding.projection: the student embeds into {student.width} dimensions and the teacher "
            f"into {teacher.width}; set projection: true (or remove projection: false)"
        )
    if e.projection or student.width != teacher.width:
        student.dense.append(Projection(student.width, teacher.width))
    return student, tok


@dataclass
class Prepared:
    """What a mode prepares for the run: models, the training set with the teacher's signal, evaluation."""

    teacher: nn.Module
    t_tok: object
    student: SentenceEncoder
    s_tok: object
    frames: dict
    train: Dataset
    target_key: str
    metrics: Callable | None
    counts: dict
    teacher_seconds: float
    mix: object = None
    unlabelled: dict | None = None
    retrieval: object = None


def _check_lengths(cfg: Config, *models: nn.Module) -> None:
    from lmdistill.tasks.general import check_length

    for m in models:
        check_length(getattr(m, "model", m), cfg.data.max_length, "data.max_length")


def prepare_bi(cfg: Config) -> Prepared:
    """The bi mode: the teacher's embeddings of the training texts (and of a transfer set), or the pairs alone
    for the no-KD baseline."""
    from lmdistill.data.rawtext import load_text_frames, split_texts

    e, d = cfg.embedding, cfg.data
    teacher, t_tok = load_bi_teacher(cfg)
    student, s_tok = make_bi_student(cfg, teacher, t_tok)
    _check_lengths(cfg, teacher, student)
    frames = load_text_frames(d, cfg.seed)
    rs = retrieval_set(cfg, frames) if e.retrieval else None
    if no_kd(cfg):
        return _bi_pairs(cfg, teacher, t_tok, student, s_tok, frames, rs)
    teacher.to(run_device(cfg))
    cols = [d.text_column, *e.extra_text_columns]
    keys = ["data.text_column"] + ["embedding.extra_text_columns"] * len(e.extra_text_columns)
    texts = {
        s: split_texts(f, cols, s, d.max_train_examples if s == "train" else d.max_eval_examples, keys)
        for s, f in frames.items()
        if s in ("train", "validation")
    }
    transfer, mix, info = _transfer(cfg, texts, frames, rs)
    eb, L = cfg.training.eval_batch_size, d.max_length
    n_texts = sum(map(len, texts.values())) + len(transfer)
    progress(f"embedding: the teacher encodes {n_texts} texts once (its embeddings are the targets)")
    started = time.perf_counter()
    targets = {
        s: teacher.encode(
            t + (transfer if s == "train" else []), t_tok, batch_size=eb, max_length=L, normalize=False
        )
        for s, t in texts.items()
    }
    teacher_seconds = time.perf_counter() - started
    train = EmbeddingDataset(tokenize(s_tok, texts["train"] + transfer, L), targets["train"], "target")

    def metrics(model):
        return bi_metrics(model, s_tok, texts["validation"], targets["validation"], e.loss, eb, L)

    valid = "validation" in texts
    counts = {s: len(t) for s, t in texts.items()}
    if transfer:
        counts["unlabelled"] = len(transfer)
    return Prepared(
        teacher,
        t_tok,
        student,
        s_tok,
        frames,
        train,
        "target",
        metrics if valid else None,
        counts,
        teacher_seconds,
        mix,
        info,
        rs,
    )


def _transfer(cfg: Config, texts: dict, frames: dict, rs):
    """The transfer set of a bi run (``data.unlabeled``): texts the student learns the teacher's embeddings of,
    as it does for the training texts (embedding-level KD on single texts, Reimers & Gurevych 2020), without
    those equal to a validation, test or searched text. ``(texts, Mix or None, info or None)``."""
    from lmdistill.data.sampler import Mix
    from lmdistill.data.transfer import load_transfer

    u = cfg.data.unlabeled
    if u is None:
        return [], None, None
    e = cfg.embedding
    cols = [
        cfg.data.text_column,
        *e.extra_text_columns,
        e.retrieval_query_column,
        e.retrieval_document_column,
    ]
    exclude = {"validation": list(texts.get("validation", []))}
    if "test" in frames:
        f = frames["test"]
        exclude["test"] = [str(t) for c in dict.fromkeys(cols) if c in f.columns for t in f[c] if t == t]
    if rs is not None:
        exclude["retrieval"] = rs.queries + rs.documents
    found = load_transfer(u, exclude)
    n = len(texts["train"])
    mix = Mix(list(range(n)), list(range(n, n + len(found.texts))), u.ratio)
    return found.texts, mix, {"transfer": found.info}


def _bi_pairs(cfg: Config, teacher, t_tok, student, s_tok, frames, rs):
    """The no-KD baseline (``distill.losses: {mnrl: w}``): the same student learns the (query, positive) pairs
    by in-batch negatives; the teacher only gave its layers (no signal, never run)."""
    d, L = cfg.data, cfg.data.max_length
    found = {
        s: pairs(f, cfg, s, d.max_train_examples if s == "train" else d.max_eval_examples)
        for s, f in frames.items()
        if s in ("train", "validation")
    }
    a, p = found["train"]
    train = EmbeddingDataset({"query": tokenize(s_tok, a, L), "positive": tokenize(s_tok, p, L)}, None, None)
    eb, group = cfg.training.eval_batch_size, cfg.training.batch_size

    def metrics(model):
        return pair_metrics(model, s_tok, *found["validation"], group, eb, L)

    valid = "validation" in found and len(found["validation"][0]) > 0
    counts = {f"{s}_pairs": len(x[0]) for s, x in found.items()}
    return Prepared(
        teacher,
        t_tok,
        student,
        s_tok,
        frames,
        train,
        None,
        metrics if valid else None,
        counts,
        0.0,
        retrieval=rs,
    )


def prepare_cross(cfg: Config) -> Prepared:
    """The cross mode: (query, positive, negative) triples and the cross-encoder's margins."""
    from lmdistill.data.rawtext import load_text_frames
    from lmdistill.models.load import load_saved_classifier

    e, d = cfg.embedding, cfg.data
    teacher, t_tok = load_saved_classifier(cfg.teacher, "teacher.name_or_path")
    if cfg.student.init == "pretrained":
        student, s_tok = SentenceEncoder.load(
            cfg.student.name_or_path,
            "student.name_or_path",
            pooling=None if e.pooling == "auto" else e.pooling,
            normalize=e.normalize,
        )
    else:
        base, s_tok = _student_base(cfg, teacher, t_tok)
        student = SentenceEncoder(base, "mean" if e.pooling == "auto" else e.pooling, bool(e.normalize))
    _check_lengths(cfg, teacher, student)
    teacher.to(run_device(cfg))
    frames = load_text_frames(d, cfg.seed)
    eb, L = cfg.training.eval_batch_size, d.max_length
    parts, margins = {}, {}
    progress(
        "embedding: the cross-encoder teacher scores every (query, positive) and (query, negative) pair once"
    )
    started = time.perf_counter()
    for s, f in frames.items():
        if s not in ("train", "validation"):
            continue
        q, p, n = triples(f, cfg, s, d.max_train_examples if s == "train" else d.max_eval_examples, cfg.seed)
        parts[s] = (q, p, n)
        margins[s] = cross_scores(teacher, t_tok, q, p, batch_size=eb, max_length=L) - cross_scores(
            teacher, t_tok, q, n, batch_size=eb, max_length=L
        )
    teacher_seconds = time.perf_counter() - started
    q, p, n = parts["train"]
    inputs = {
        "query": tokenize(s_tok, q, L),
        "positive": tokenize(s_tok, p, L),
        "negative": tokenize(s_tok, n, L),
    }
    train = EmbeddingDataset(inputs, margins["train"], "teacher_margin")

    def metrics(model):
        return cross_metrics(model, s_tok, *parts["validation"], margins["validation"], e.similarity, eb, L)

    valid = "validation" in parts
    counts = {s: len(x[0]) for s, x in parts.items()}
    return Prepared(
        teacher,
        t_tok,
        student,
        s_tok,
        frames,
        train,
        "teacher_margin",
        metrics if valid else None,
        counts,
        teacher_seconds,
    )
