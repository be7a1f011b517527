"""Sentence-embedding losses (per text or per triple, unreduced; reduce with ``masked_mean``).

Reimers & Gurevych 2020 (bi-encoder MSE / cosine to the teacher's embedding) and Hofstaetter et al. 2020
(margin-MSE of a cross-encoder teacher's relevance margins); see :mod:`lmdistill.tasks.embedding`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmdistill.errors import ModelError


def embedding_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Per-text mean squared error of sentence embeddings: ``(B, D) x2 -> (B,)``, ``mean_k (s_k - t_k)^2``.

    Reimers & Gurevych 2020, sec. 2 (``||M(s) - M_hat(s)||^2``, averaged over the width as
    sentence-transformers' ``MSELoss`` does). Reduce with ``masked_mean``.
    """
    if student.shape != teacher.shape:
        raise ModelError(
            f"embedding_mse: student {tuple(student.shape)} != teacher {tuple(teacher.shape)}; "
            "project the student to the teacher's width (embedding.projection)"
        )
    return (student.float() - teacher.float()).pow(2).mean(-1)


def embedding_cosine(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Per-text cosine distance ``1 - cos(s, t)``: ``(B, D) x2 -> (B,)``, in ``[0, 2]``; a zero vector gives 1."""
    if student.shape != teacher.shape:
        raise ModelError(
            f"embedding_cosine: student {tuple(student.shape)} != teacher {tuple(teacher.shape)}"
        )
    return 1.0 - F.cosine_similarity(student.float(), teacher.float(), dim=-1, eps=1e-8)


def similarity(a: torch.Tensor, b: torch.Tensor, kind: str = "dot") -> torch.Tensor:
    """Row-wise score of two embedding batches: ``(B, D) x2 -> (B,)``, dot product or cosine."""
    if kind == "cosine":
        return F.cosine_similarity(a.float(), b.float(), dim=-1, eps=1e-8)
    return (a.float() * b.float()).sum(-1)


def margin_mse(
    query: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor,
    teacher_margin: torch.Tensor,
    kind: str = "dot",
) -> torch.Tensor:
    """Margin-MSE per triple (Hofstaetter et al. 2020, eq. 1): ``(B, D) x3, (B,) -> (B,)``.

    ``(s(q, p+) - s(q, p-) - (M_t(q, p+) - M_t(q, p-)))^2`` with the student score ``s`` a dot product (the
    paper's BERT_DOT) or cosine; ``teacher_margin`` is the cross-encoder's score difference.
    """
    student_margin = similarity(query, positive, kind) - similarity(query, negative, kind)
    return (student_margin - teacher_margin.float()).pow(2)


MNRL_SCALE = 20.0
"""sentence-transformers' default ``scale`` of MultipleNegativesRankingLoss (an inverse temperature of 0.05)."""


def mnrl(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor | None = None,
    scale: float = MNRL_SCALE,
) -> torch.Tensor:
    """In-batch-negatives contrastive loss per anchor (Henderson et al. 2017, "Efficient Natural Language
    Response Suggestion for Smart Reply", sec. 4.4; sentence-transformers' ``MultipleNegativesRankingLoss``):
    ``(B, D) x2 [, (B, D)] -> (B,)``.

    ``L_i = -log softmax_j(scale * cos(a_i, c_j))_i`` over the candidates ``c = [positives; negatives]``: the
    i-th positive is anchor i's answer, every other positive (and every given hard negative) of the batch a
    wrong one. The mean over the batch is sentence-transformers' loss (its ``compute_loss_from_embeddings``
    with the default cosine similarity, scale 20 and one direction). No teacher: the no-KD baseline of
    ``compress`` for sentence-embedding students. Reduce with ``masked_mean``.
    """
    if anchor.shape != positive.shape or (negative is not None and negative.shape != anchor.shape):
        raise ModelError(
            f"mnrl: anchors {tuple(anchor.shape)}, positives {tuple(positive.shape)} and negatives "
            f"{None if negative is None else tuple(negative.shape)} must have one shape (B, D)"
        )
    candidates = positive if negative is None else torch.cat([positive, negative])  # (C, D)
    a = F.normalize(anchor.float(), dim=-1, eps=1e-8)
    c = F.normalize(candidates.float(), dim=-1, eps=1e-8)
    scores = scale * a @ c.T  # (B, C)
    target = torch.arange(len(anchor), device=anchor.device)
    return F.cross_entropy(scores, target, reduction="none")
