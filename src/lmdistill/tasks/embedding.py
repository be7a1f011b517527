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

``compress`` (bi mode): the teacher is the given sentence encoder, used as it is; the student learns it as
above; the no-KD baseline (``distill.losses: {mnrl: 1.0}``) is the same student trained on the same rows'
(``embedding.query_column``, ``embedding.positive_column``) pairs with no teacher signal, by in-batch negatives
(:func:`~lmdistill.losses.embedding.mnrl`, sentence-transformers' MultipleNegativesRankingLoss) for as many
optimizer steps. A transfer set (``data.unlabeled``) adds unpaired texts whose teacher embeddings the student
learns like those of the training texts. The report (:mod:`lmdistill.tasks.embedding_report`) searches
``embedding.retrieval`` with every model and compares student and baseline over the same queries.

Saved students are ordinary transformers folders (``AutoModel.from_pretrained``) that are ALSO
sentence-transformers folders (``modules.json``, ``1_Pooling/config.json``, ``sentence_bert_config.json``,
``2_Dense/`` when projected, a Normalize module when normalised), loadable with
``SentenceTransformer(path)`` when that library is installed; lmdistill never needs it
(:class:`SentenceEncoder` reads and writes the format itself).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lmdistill.config.schema import Config, StageConfig, Verb
from lmdistill.losses.embedding import (  # noqa: F401 - re-exported
    embedding_cosine,
    embedding_mse,
    margin_mse,
    mnrl,
    similarity,
)
from lmdistill.losses.reduce import masked_mean
from lmdistill.methods.presets import PRESETS
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
from lmdistill.tasks.base import Parts, Task
from lmdistill.tasks.embedding_data import (  # noqa: F401 - re-exported
    EmbeddingCollator,
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
from lmdistill.tasks.embedding_prepare import (  # noqa: F401 - re-exported
    Prepared,
    load_bi_teacher,
    make_bi_student,
    no_kd,
    prepare_bi,
    prepare_cross,
    progress,
    run_device,
)

# ------------------------------------------------------------------------------------------------ objective

TERM = {"mse": "embedding_mse", "cosine": "embedding_cosine", "margin_mse": "margin_mse", "mnrl": "mnrl"}


def _pair_term(obj: EmbeddingObjective, out, signal, batch: dict) -> torch.Tensor:
    e = out.embedding
    if obj.loss == "mnrl":
        anchors, positives = e.chunk(2)  # (B, D) each: the batch stacks anchors, then positives
        return masked_mean(mnrl(anchors, positives))
    if obj.loss == "margin_mse":
        q, p, n = e.chunk(3)  # (B, D) each
        return masked_mean(margin_mse(q, p, n, batch["teacher_margin"], obj.similarity_fn))
    fn = embedding_mse if obj.loss == "mse" else embedding_cosine
    return masked_mean(fn(e, batch["target"]))


class EmbeddingObjective(Objective):
    """One term: ``embedding_mse`` / ``embedding_cosine`` against ``batch["target"]`` (the teacher's
    embeddings), ``margin_mse`` against ``batch["teacher_margin"]`` with the batch's embeddings stacked as
    ``[queries; positives; negatives]``, or (the no-KD baseline) ``mnrl`` of ``[anchors; positives]``. The
    teacher's signal is precomputed: no live teacher."""

    terms = {name: Term(_pair_term) for name in TERM.values()}

    def __init__(self, loss: str = "mse", similarity_fn: str = "dot", weight: float = 1.0):
        super().__init__({TERM[loss]: weight})
        self.loss = loss
        self.similarity_fn = similarity_fn


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
    report_metric = "mrr@10"
    loss_terms = ("mnrl",)
    baseline_losses = {"mnrl": 1.0}
    finetunes = False
    presets = PRESETS

    def measured(self, cfg: Config) -> tuple[str, ...]:
        return ("loss",) if no_kd(cfg) else self.mode_metrics[cfg.embedding.mode]

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
        return errors + self._check_compress(cfg, verb)

    def _check_compress(self, cfg: Config, verb: Verb | None) -> list[str]:
        """The no-KD baseline, the transfer set and compress: what each needs."""
        e, d, errors = cfg.embedding, cfg.data, []
        if d.augment is not None:
            errors.append(
                "data.augment applies to tasks classification and regression, not to task embedding"
            )
        if d.unlabeled is not None and e.mode == "cross":
            errors.append(
                "data.unlabeled applies to embedding.mode bi (single texts the teacher embeds); mode cross "
                "learns (query, positive, negative) triples"
            )
        if no_kd(cfg) and e.mode == "cross":
            errors.append("distill.losses.mnrl (the no-KD baseline) applies to embedding.mode bi")
        if no_kd(cfg) and d.unlabeled is not None:
            errors.append(
                "data.unlabeled needs a teacher to embed its texts, and distill.losses {mnrl} trains without "
                "one: remove data.unlabeled"
            )
        if verb == "compress" and e.mode == "cross":
            errors.append(
                "compress supports task embedding with embedding.mode bi (a sentence-encoder teacher); "
                "distill a cross-encoder with lmdistill distill"
            )
        if verb == "compress" and not cfg.teacher.name_or_path:
            errors.append(
                "compress for task embedding needs teacher.name_or_path (the sentence encoder to distil; "
                "it is used as it is, not fine-tuned)"
            )
        if verb == "compress" and not e.retrieval:
            errors.append(
                "compress for task embedding needs embedding.retrieval (the queries and documents the report "
                "searches), e.g. bbc-news"
            )
        return errors

    def check_data(self, cfg: Config) -> list[str]:
        from lmdistill.data.tables import check_files

        e = cfg.embedding
        if e.mode == "cross":
            cols = {"embedding.query_column": e.query_column, "embedding.positive_column": e.positive_column}
            return check_files(cfg.data, {**cols, "embedding.negative_column": e.negative_column})
        if no_kd(cfg):
            cols = {"embedding.query_column": e.query_column, "embedding.positive_column": e.positive_column}
            return check_files(cfg.data, cols)
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
        prep = prepare_bi(cfg) if e.mode == "bi" else prepare_cross(cfg)
        evaluation = self._before_training(cfg, prep)
        baseline = no_kd(cfg)
        loss = "mnrl" if baseline else e.loss
        extra = {
            "task": self.name,
            "mode": e.mode,
            "loss": loss,
            "split_sizes": prep.counts,
            "teacher_signal_seconds": round(prep.teacher_seconds, 2),
            "teacher_parameters": sum(p.numel() for p in prep.teacher.parameters()),
        }
        if prep.unlabelled:
            extra["unlabelled"] = prep.unlabelled
        weight = cfg.distill.losses["mnrl"] if baseline else 1.0
        collate = EmbeddingCollator(pad_id(prep.s_tok), prep.target_key)
        # the teacher's signal is computed: it is freed before training (no live teacher)
        return Parts(
            prep.student,
            prep.s_tok,
            prep.train,
            collate,
            [EmbeddingObjective(loss, e.similarity, weight)],
            [StageConfig(name="distill")],
            teacher=None,
            data=evaluation,
            extra=extra,
            mix=prep.mix,
        )

    def _before_training(self, cfg: Config, prep: Prepared) -> Evaluation:
        """Retrieval of the teacher and of the undistilled student (the same student before training); the no-KD
        baseline measures neither (its teacher gave only layers)."""
        from lmdistill.tasks.retrieval import agreement, evaluate_encoder

        e, L, eb = cfg.embedding, cfg.data.max_length, cfg.training.eval_batch_size
        rs = prep.retrieval or (retrieval_set(cfg, prep.frames) if e.retrieval else None)
        retrieval: dict = {}
        t_emb = None
        if rs is not None and not no_kd(cfg):
            progress(
                f"retrieval on {rs.name}: {len(rs)} queries, {len(rs.documents)} documents; teacher and "
                "undistilled student first"
            )
            if e.mode == "bi":
                retrieval["teacher"], *t_emb = evaluate_encoder(
                    prep.teacher, prep.t_tok, rs, batch_size=eb, max_length=L
                )
            prep.student.to(run_device(cfg))
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
        progress(f"retrieval on {ev.retrieval_set.name}: the trained student")
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

    def usage(self, model_dir) -> list[str]:
        return [
            "from sentence_transformers import SentenceTransformer",
            f'model = SentenceTransformer("{model_dir}")',
        ]

    # ---- the report (tasks/embedding_report.py): retrieval with per-query intervals, paired over queries
    def report_inputs(self, cfg: Config):
        from lmdistill.tasks.embedding_report import report_inputs

        return report_inputs(cfg)

    def report_quality(self, model, tokenizer, cfg: Config, inputs):
        from lmdistill.tasks.embedding_report import report_quality

        return report_quality(model, tokenizer, cfg, inputs)

    def report_compare(self, a, b, keys: tuple[str, str], cfg: Config) -> list[dict]:
        from lmdistill.tasks.embedding_report import report_compare

        return report_compare(a, b, keys, cfg)

    def report_extras(self, q, teacher, cfg: Config) -> dict:
        from lmdistill.tasks.embedding_report import report_extras

        return report_extras(q, teacher, cfg)
