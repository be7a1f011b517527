"""Sentence-embedding distillation for search (``task: embedding``; docs/embedding.md).

Two modes (``embedding.mode``):

``bi`` -- the student learns the teacher's sentence embeddings (Reimers & Gurevych 2020, "Making Monolingual
Sentence Embeddings Multilingual using Knowledge Distillation", sec. 2: the student ``M_hat`` is trained so
that ``M_hat(s) ~ M(s)`` with the mean squared error over a batch,
``1/|B| sum_j ||M(s_j) - M_hat(s_j)||^2``). Here, per text: ``embedding_mse = mean_k (e_S - e_T)_k^2`` (the
mean over the width, as sentence-transformers' ``MSELoss``), or ``embedding_cosine = 1 - cos(e_S, e_T)``
(``embedding.loss: cosine``). The embeddings are the pooled token states, pooled as the teacher pools
(mean or CLS, read from the teacher's sentence-transformers ``1_Pooling/config.json``; else
``embedding.pooling``), through the teacher's own Dense layers if it has any, BEFORE any final L2
normalisation (a Normalize module is a fixed map: matching before it matches after). When the widths differ,
a learned :class:`lmdistill.models.projection.Projection` maps the student's pooled embedding to the
teacher's width and is saved as the student's ``2_Dense`` module, so the saved student embeds into the
teacher's space. The teacher is run ONCE over the training texts (its embeddings are targets); training
then costs only the student.

``cross`` -- margin-MSE (Hofstaetter et al. 2020, "Improving Efficient Neural Ranking Models with
Cross-Architecture Knowledge Distillation", sec. 3, eq. 1): for a query ``q``, a relevant passage ``p+`` and
a non-relevant ``p-``, ``L = MSE(M_s(q, p+) - M_s(q, p-), M_t(q, p+) - M_t(q, p-))``: the bi-encoder student
(score = dot product of the pooled embeddings, or cosine with ``embedding.similarity``) learns the MARGIN of
the cross-encoder teacher's relevance scores (its single logit; or ``logit_1 - logit_0`` for a two-class
head), not the scores, whose scale a dot product cannot reach. The teacher's margins are computed once.

Saved students are ordinary transformers folders (``AutoModel.from_pretrained``) that are ALSO
sentence-transformers folders (``modules.json``, ``1_Pooling/config.json``, ``sentence_bert_config.json``,
``2_Dense/`` when projected, a Normalize module when normalised), loadable with
``SentenceTransformer(path)`` when that library is installed; lmdistill never needs it
(:class:`SentenceEncoder` reads and writes the format itself).
"""

from __future__ import annotations

import copy
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from lmdistill.config.schema import Config, StageConfig, Verb
from lmdistill.errors import ModelError
from lmdistill.losses.embedding import embedding_cosine, embedding_mse, margin_mse, similarity  # noqa: F401
from lmdistill.losses.reduce import masked_mean
from lmdistill.methods.presets import PRESETS
from lmdistill.models.projection import Projection
from lmdistill.models.sentence import (  # noqa: F401 - re-exported
    POOLINGS,
    DenseLayer,
    SentenceEncoder,
    SentenceOutput,
    pool,
    pooling_mode,
    read_sentence_format,
)
from lmdistill.objective import Objective, Term
from lmdistill.tasks.base import Parts, Task, make_student
from lmdistill.tasks.embedding_data import (  # noqa: F401 - re-exported
    EmbeddingCollator,
    EmbeddingDataset,
    bi_metrics,
    cross_metrics,
    cross_scores,
    retrieval_set,
    tokenize,
    triples,
)

# ------------------------------------------------------------------------------------------------ objective

TERM = {"mse": "embedding_mse", "cosine": "embedding_cosine", "margin_mse": "margin_mse"}


def _pair_term(obj: EmbeddingObjective, out, signal, batch: dict) -> torch.Tensor:
    e = out.embedding
    if obj.loss == "margin_mse":
        q, p, n = e.chunk(3)  # (B, D) each
        return masked_mean(margin_mse(q, p, n, batch["teacher_margin"], obj.similarity_fn))
    fn = embedding_mse if obj.loss == "mse" else embedding_cosine
    return masked_mean(fn(e, batch["target"]))


class EmbeddingObjective(Objective):
    """One term: ``embedding_mse`` / ``embedding_cosine`` against ``batch["target"]`` (the teacher's
    embeddings), or ``margin_mse`` against ``batch["teacher_margin"]`` with the batch's embeddings stacked as
    ``[queries; positives; negatives]``. The teacher's signal is precomputed: no live teacher."""

    terms = {name: Term(_pair_term) for name in TERM.values()}

    def __init__(self, loss: str = "mse", similarity_fn: str = "dot"):
        super().__init__({TERM[loss]: 1.0})
        self.loss = loss
        self.similarity_fn = similarity_fn


# ------------------------------------------------------------------------------------------------ models


def _say(message: str) -> None:
    """Progress of the steps before and after training (the engine shows its own bar)."""
    print(message, file=sys.stderr, flush=True)


def _device(cfg: Config) -> torch.device:
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


def _check_lengths(cfg: Config, *models: nn.Module) -> None:
    from lmdistill.tasks.general import check_length

    for m in models:
        check_length(getattr(m, "model", m), cfg.data.max_length, "data.max_length")


def _bi(cfg: Config):
    from lmdistill.data.rawtext import load_text_frames, split_texts

    e, d = cfg.embedding, cfg.data
    teacher, t_tok = load_bi_teacher(cfg)
    student, s_tok = make_bi_student(cfg, teacher, t_tok)
    _check_lengths(cfg, teacher, student)
    teacher.to(_device(cfg))
    frames = load_text_frames(d, cfg.seed)
    cols = [d.text_column, *e.extra_text_columns]
    keys = ["data.text_column"] + ["embedding.extra_text_columns"] * len(e.extra_text_columns)
    texts = {
        s: split_texts(f, cols, s, d.max_train_examples if s == "train" else d.max_eval_examples, keys)
        for s, f in frames.items()
        if s in ("train", "validation")
    }
    eb, L = cfg.training.eval_batch_size, d.max_length
    _say(
        f"embedding: the teacher encodes {sum(map(len, texts.values()))} texts once (its embeddings are the targets)"
    )
    started = time.perf_counter()
    targets = {
        s: teacher.encode(t, t_tok, batch_size=eb, max_length=L, normalize=False) for s, t in texts.items()
    }
    teacher_seconds = time.perf_counter() - started
    train = EmbeddingDataset(tokenize(s_tok, texts["train"], L), targets["train"], "target")

    def metrics(model):
        return bi_metrics(model, s_tok, texts["validation"], targets["validation"], e.loss, eb, L)

    valid = "validation" in texts
    counts = {s: len(t) for s, t in texts.items()}
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
    )


def _cross(cfg: Config):
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
    teacher.to(_device(cfg))
    frames = load_text_frames(d, cfg.seed)
    eb, L = cfg.training.eval_batch_size, d.max_length
    parts, margins = {}, {}
    _say(
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


# ------------------------------------------------------------------------------------------------ the task


@dataclass
class Evaluation:
    """What the embedding task evaluates with: validation metrics, the retrieval set, the teacher's
    embeddings of its documents and queries (for the student's agreement with them), the results so far."""

    metrics: Callable | None
    retrieval_set: object | None
    teacher_embeddings: list | None
    retrieval: dict
    batch_size: int
    max_length: int


class EmbeddingTask(Task):
    """Sentence-embedding students for search (docs/embedding.md)."""

    name = "embedding"
    metrics = {
        "loss": False,
        "teacher_cosine": True,
        "embedding_mse": False,
        "margin_mse": False,
        "pairwise_accuracy": True,
    }
    mode_metrics = {
        "bi": ("loss", "teacher_cosine", "embedding_mse"),
        "cross": ("loss", "margin_mse", "pairwise_accuracy"),
    }
    primary_metric = "loss"
    finetunes = False
    presets = PRESETS

    def measured(self, cfg: Config) -> tuple[str, ...]:
        return self.mode_metrics[cfg.embedding.mode]

    def check(self, cfg: Config, verb: Verb | None) -> list[str]:
        e, errors = cfg.embedding, []
        if verb == "finetune":
            errors.append(
                "task embedding distils a teacher: run `lmdistill distill` with teacher.name_or_path"
            )
        if e.mode == "bi" and e.loss == "margin_mse":
            errors.append(
                "embedding.loss margin_mse needs embedding.mode cross (a cross-encoder teacher); "
                "mode bi uses mse or cosine"
            )
        if e.mode == "cross" and e.loss in ("mse", "cosine"):
            errors.append(f"embedding.loss {e.loss} applies to embedding.mode bi; mode cross uses margin_mse")
        if e.mode == "cross" and e.projection:
            errors.append("embedding.projection applies to embedding.mode bi (the teacher's embedding width)")
        if e.retrieval_max_queries is not None and e.retrieval_max_queries < 1:
            errors.append(
                f"embedding.retrieval_max_queries must be at least 1, got {e.retrieval_max_queries}"
            )
        if cfg.distill.matches or cfg.distill.stages:
            errors.append(
                "distill.matches and distill.stages do not apply to task embedding (the student learns "
                "pooled sentence embeddings or relevance margins): remove them"
            )
        return errors

    def check_data(self, cfg: Config) -> list[str]:
        from lmdistill.data.tables import check_files

        e = cfg.embedding
        if e.mode == "cross":
            cols = {"embedding.query_column": e.query_column, "embedding.positive_column": e.positive_column}
            return check_files(cfg.data, {**cols, "embedding.negative_column": e.negative_column})
        cols = {"data.text_column": cfg.data.text_column}
        cols.update({f"embedding.extra_text_columns[{i}]": c for i, c in enumerate(e.extra_text_columns)})
        return check_files(cfg.data, cols, lines_ok=not e.extra_text_columns)

    def resolve(self, cfg: Config) -> None:
        e = cfg.embedding
        e.loss = e.loss or ("mse" if e.mode == "bi" else "margin_mse")  # resolved: the saved config states it

    def parts(self, cfg: Config, verb: str) -> Parts:
        import lmdistill.engine  # noqa: F401 - fail before the teacher's pass over the data, not after
        from lmdistill.data.text import pad_id

        e = cfg.embedding
        prep = _bi(cfg) if e.mode == "bi" else _cross(cfg)
        evaluation = self._before_training(cfg, prep)
        extra = {
            "task": self.name,
            "mode": e.mode,
            "loss": e.loss,
            "split_sizes": prep.counts,
            "teacher_signal_seconds": round(prep.teacher_seconds, 2),
            "teacher_parameters": sum(p.numel() for p in prep.teacher.parameters()),
        }
        collate = EmbeddingCollator(pad_id(prep.s_tok), prep.target_key)
        # the teacher's signal is computed: it is freed before training (no live teacher)
        return Parts(
            prep.student,
            prep.s_tok,
            prep.train,
            collate,
            [EmbeddingObjective(e.loss, e.similarity)],
            [StageConfig(name="distill")],
            teacher=None,
            data=evaluation,
            extra=extra,
        )

    def _before_training(self, cfg: Config, prep: Prepared) -> Evaluation:
        """Retrieval of the teacher and of the undistilled student (the same student before training)."""
        from lmdistill.tasks.retrieval import agreement, evaluate_encoder

        e, L, eb = cfg.embedding, cfg.data.max_length, cfg.training.eval_batch_size
        rs = retrieval_set(cfg, prep.frames) if e.retrieval else None
        retrieval: dict = {}
        t_emb = None
        if rs is not None:
            _say(
                f"retrieval on {rs.name}: {len(rs)} queries, {len(rs.documents)} documents; teacher and "
                "undistilled student first"
            )
            if e.mode == "bi":
                retrieval["teacher"], *t_emb = evaluate_encoder(
                    prep.teacher, prep.t_tok, rs, batch_size=eb, max_length=L
                )
            prep.student.to(_device(cfg))
            retrieval["undistilled_student"], *b_emb = evaluate_encoder(
                prep.student, prep.s_tok, rs, batch_size=eb, max_length=L
            )
            if t_emb is not None:
                retrieval["undistilled_student"]["teacher_cosine"] = agreement(
                    torch.cat(b_emb), torch.cat(t_emb)
                )
        return Evaluation(prep.metrics, rs, t_emb, retrieval, eb, L)

    def has_split(self, parts: Parts, split: str) -> bool:
        ev: Evaluation = parts.data
        return ev.metrics is not None if split == "validation" else ev.retrieval_set is not None

    def evaluate(self, model: nn.Module, parts: Parts, split: str, objective) -> dict[str, float]:
        """validation: the loss and agreement with the teacher's targets; test: retrieval on the retrieval set."""
        from lmdistill.tasks.retrieval import agreement, evaluate_encoder

        ev: Evaluation = parts.data
        if split == "validation":
            return ev.metrics(model)
        _say(f"retrieval on {ev.retrieval_set.name}: the distilled student")
        scores, *s_emb = evaluate_encoder(
            model, parts.tokenizer, ev.retrieval_set, batch_size=ev.batch_size, max_length=ev.max_length
        )
        if ev.teacher_embeddings is not None:
            scores["teacher_cosine"] = agreement(torch.cat(s_emb), torch.cat(ev.teacher_embeddings))
        ev.retrieval["student"] = scores
        return scores

    def save(self, model, tokenizer, path: Path, cfg: Config) -> None:
        e = cfg.embedding
        sim_fn = e.similarity if e.mode == "cross" else "cosine"
        model.save(path, tokenizer, max_seq_length=cfg.data.max_length, similarity_fn=sim_fn)

    def reload(self, path: Path, parts: Parts) -> nn.Module:
        return SentenceEncoder.load(path, "model")[0].to(next(parts.student.parameters()).device)

    def results(self, parts: Parts, best: nn.Module, cfg: Config) -> dict:
        ev: Evaluation = parts.data
        retrieval = {}
        if ev.retrieval_set is not None:
            rs = ev.retrieval_set
            retrieval = {
                "set": rs.name,
                "queries": len(rs),
                "documents": len(rs.documents),
                "max_length": ev.max_length,
                **ev.retrieval,
            }
        return {
            "pooling": best.pooling,
            "normalize": best.normalize,
            "embedding_width": best.width,
            "retrieval": retrieval,
        }

    def load_saved(self, path, key: str = "model"):
        return SentenceEncoder.load(path, key)
