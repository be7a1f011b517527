"""Intermediate-knowledge losses: hidden states, embeddings, attention maps and self-attention relations.

Every function here is pure and returns UNREDUCED values; the caller reduces them with
:func:`lmdistill.losses.reduce.masked_mean` and the mask named in each docstring:

========================  ==================  ===============================================
loss                      returns             reduce with
========================  ==================  ===============================================
``hidden_mse``            ``(B, T)``          ``masked_mean(loss, attention_mask)``
``hidden_cosine``         ``(B, T)``          ``masked_mean(loss, attention_mask)``
``cls_normalized_mse``    ``(B,)``            ``masked_mean(loss)`` (or a per-example mask)
``attention_kl``          ``(B, heads, T)``   ``masked_mean(loss, row_mask(attention_mask))``
``attention_mse``         ``(B, heads, T)``   ``masked_mean(loss, row_mask(attention_mask))``
``relation_kl``           ``(B, R, T)``       ``masked_mean(loss, row_mask(attention_mask))``
========================  ==================  ===============================================

``attention_mask`` is the tokenizer's ``(B, T)`` mask (1 = real token, 0 = padding). The attention and
relation losses also take it as ``key_mask``: padded KEY columns are dropped inside each row, and the
rows of padded QUERY positions are dropped by :func:`row_mask` at reduction time. All arithmetic runs in
float32 whatever the input dtype; no function returns NaN for padded or fully padded inputs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from lmdistill.errors import LmdistillError

# log of the smallest normal float32: student log-probabilities are clamped here so that a zero student
# probability under a non-zero teacher probability gives a large finite KL instead of inf.
_LOG_TINY = math.log(torch.finfo(torch.float32).tiny)
_WIDTH_HINT = "project the student to the teacher width first"
_HEADS_HINT = "call match_heads on the teacher first"
# TinyBERT's official code treats attention scores at or below this value as masked (task_distill.py).
_TINYBERT_MASKED_SCORE = -1e2
HEAD_RULES = ("average", "select")


def row_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """The reduction mask for ``(B, heads, T)`` row losses: ``(B, T) -> (B, 1, T)`` bool.

    Rows of padded query positions are excluded; it broadcasts over any number of heads.
    """
    return attention_mask.to(torch.bool)[:, None, :]


def _check_same_shape(student: torch.Tensor, teacher: torch.Tensor, what: str, hint: str) -> None:
    if student.shape != teacher.shape:
        raise LmdistillError(
            f"{what}: student shape {tuple(student.shape)} != teacher shape {tuple(teacher.shape)}; {hint}"
        )


def _key_valid(key_mask: torch.Tensor | None) -> torch.Tensor | None:
    """``(B, T)`` key mask -> ``(B, 1, 1, T)`` bool, broadcastable over ``(B, heads, T_query, T_key)``."""
    return None if key_mask is None else key_mask.to(torch.bool)[:, None, None, :]


def _row_kl(
    p: torch.Tensor, log_p: torch.Tensor, log_q: torch.Tensor, valid: torch.Tensor | None
) -> torch.Tensor:
    """``sum_j p_j (log p_j - log q_j)`` over valid key columns; ``(..., T, T) -> (..., T)``.

    Padded columns are replaced by 0 BEFORE the arithmetic (not after), so no ``0 * inf`` appears in the
    forward or backward pass.
    """
    if valid is not None:
        p, log_p, log_q = (torch.where(valid, x, torch.zeros_like(x)) for x in (p, log_p, log_q))
    return (p * (log_p - log_q)).sum(-1)


def hidden_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Per-token mean squared error of hidden states or embeddings: ``(B, T, H) x2 -> (B, T)``.

    TinyBERT (Jiao et al., 2020), sec. 3.1, eq. 8 ``L_hidn = MSE(H^S W_h, H^T)`` and eq. 9
    ``L_embd = MSE(E^S W_e, E^T)``: here ``loss[b, t] = (1/H) sum_k (s[b,t,k] - t[b,t,k])^2``.
    ``student`` must already be projected to the teacher's width (``W_h``/``W_e`` is a
    :class:`lmdistill.models.projection.Projection`). ``masked_mean(loss, attention_mask)`` is exactly
    TinyBERT's ``MSELoss`` over the real tokens.
    """
    _check_same_shape(student, teacher, "hidden_mse", _WIDTH_HINT)
    return (student.float() - teacher.float()).pow(2).mean(-1)


def hidden_cosine(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Per-token cosine embedding loss: ``(B, T, H) x2 -> (B, T)``, ``1 - cos(h_s, h_t)`` in ``[0, 2]``.

    DistilBERT (Sanh et al., 2019), sec. 3, ``L_cos``: a cosine embedding loss "which will tend to align
    the directions of the student and teacher hidden states vectors", i.e. ``CosineEmbeddingLoss`` with
    target 1: ``1 - <h_s, h_t> / (||h_s||_2 ||h_t||_2)`` (the paper gives it in words, unnumbered).
    Reduce with ``masked_mean(loss, attention_mask)``. A zero vector has cosine 0 (eps 1e-8), loss 1.
    """
    _check_same_shape(student, teacher, "hidden_cosine", _WIDTH_HINT)
    return 1.0 - F.cosine_similarity(student.float(), teacher.float(), dim=-1, eps=1e-8)


def cls_normalized_mse(student_cls: torch.Tensor, teacher_cls: torch.Tensor) -> torch.Tensor:
    """Patient-KD loss on normalised [CLS] states: ``(B, H) x2 -> (B,)``.

    Patient KD (Sun et al., 2019), sec. 3.2, eq. 4 ``L_PT = sum_i sum_j || h^s_ij / ||h^s_ij||_2 -
    h^t_ij / ||h^t_ij||_2 ||_2^2``: for one example and one layer pair this is the SQUARED L2 distance of
    the unit vectors, SUMMED over H (equal to ``2 - 2 cos``, range ``[0, 4]``), exactly as the equation
    reads (the authors' code divides by H instead). Reduce with ``masked_mean(loss)``.
    """
    _check_same_shape(student_cls, teacher_cls, "cls_normalized_mse", _WIDTH_HINT)
    s = F.normalize(student_cls.float(), dim=-1, eps=1e-12)
    t = F.normalize(teacher_cls.float(), dim=-1, eps=1e-12)
    return (s - t).pow(2).sum(-1)


def attention_kl(
    student: torch.Tensor,
    teacher_probs: torch.Tensor,
    key_mask: torch.Tensor | None = None,
    *,
    student_is_log: bool = False,
) -> torch.Tensor:
    """KL of attention distributions per query row: ``(B, heads, T, T) x2 -> (B, heads, T)``.

    MiniLM (Wang et al., 2020), sec. 3.1, self-attention distribution transfer
    ``L_AT = 1/(A_h |x|) sum_a sum_t D_KL(A^T_{a,t} || A^S_{a,t})``: this returns
    ``loss[b, a, t] = sum_j A^T[b,a,t,j] (log A^T[b,a,t,j] - log A^S[b,a,t,j])`` over valid keys ``j``;
    ``masked_mean(loss, row_mask(attention_mask))`` is ``L_AT``.

    Args:
        student: attention probabilities, or log-probabilities when ``student_is_log``.
        teacher_probs: attention probabilities (what ``output_attentions=True`` returns).
        key_mask: ``(B, T)`` attention mask; padded key columns are ignored (they carry zero probability).
        student_is_log: ``student`` holds log-probabilities.

    Zero probabilities are safe: a zero teacher entry contributes 0; a student log-probability is clamped at
    ``log(float32 tiny)`` so a zero student entry under a non-zero teacher entry gives a finite (large) KL.
    """
    _check_same_shape(student, teacher_probs, "attention_kl", _HEADS_HINT)
    p = teacher_probs.float()
    log_p = p.clamp_min(torch.finfo(torch.float32).tiny).log()
    if student_is_log:
        log_q = student.float().clamp_min(_LOG_TINY)
    else:
        log_q = student.float().clamp_min(torch.finfo(torch.float32).tiny).log()
    return _row_kl(p, log_p, log_q, _key_valid(key_mask))


def attention_mse(
    student_scores: torch.Tensor, teacher_scores: torch.Tensor, key_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """MSE of unnormalised attention scores per query row: ``(B, heads, T, T) x2 -> (B, heads, T)``.

    TinyBERT (Jiao et al., 2020), sec. 3.1, eq. 7 ``L_attn = (1/h) sum_i MSE(A^S_i, A^T_i)`` with eq. 1
    ``A = Q K^T / sqrt(d_k)`` (the scores BEFORE softmax). As in the official code (task_distill.py),
    every score ``<= -1e2`` (i.e. one that received the additive padding or causal mask) is replaced by 0 on
    both sides before the difference; key columns that ``key_mask`` marks as padding are also set to 0, so
    scores given without the additive mask work too. Each row is then averaged over its VALID keys:
    ``loss[b,a,t] = (1/n_b) sum_{j valid} (s'[b,a,t,j] - t'[b,a,t,j])^2``. Without padding,
    ``masked_mean(loss)`` equals the official ``MSELoss()(s', t')``; with padding the official code also
    averages over padded rows and columns, so its value depends on the padded length, this one does not.
    Reduce with ``masked_mean(loss, row_mask(attention_mask))``.
    """
    _check_same_shape(student_scores, teacher_scores, "attention_mse", _HEADS_HINT)
    valid = _key_valid(key_mask)
    s, t = student_scores.float(), teacher_scores.float()
    s = torch.where(s <= _TINYBERT_MASKED_SCORE, torch.zeros_like(s), s)
    t = torch.where(t <= _TINYBERT_MASKED_SCORE, torch.zeros_like(t), t)
    sq = (s - t).pow(2)
    if valid is None:
        return sq.mean(-1)
    sq = torch.where(valid, sq, torch.zeros_like(sq))
    return sq.sum(-1) / valid.sum(-1).clamp_min(1)


def match_heads(
    student_attn: torch.Tensor,
    teacher_attn: torch.Tensor,
    rule: str,
    heads: Sequence[int] | None = None,
) -> torch.Tensor:
    """Reduce the teacher's attention heads to the student's count: ``(B, H_t, T, T) -> (B, H_s, T, T)``.

    Rules (config option ``head_rule``):

    - ``"average"``: needs ``H_t % H_s == 0``; student head ``i`` is matched with the mean of the
      contiguous teacher heads ``[i*g, (i+1)*g)``, ``g = H_t / H_s``. Average PROBABILITIES (rows still sum
      to 1) or scores, never log-probabilities.
    - ``"select"``: needs ``H_t >= H_s``; takes teacher heads ``heads`` (``H_s`` indices) or, by default,
      the first ``H_s``.

    Equal head counts return the teacher unchanged (or reordered by ``heads``). The student tensor is only
    read for its head count. Raises a one-line ``ValueError`` naming both head counts when the rule cannot
    apply.
    """
    hs, ht = student_attn.shape[1], teacher_attn.shape[1]
    if rule not in HEAD_RULES:
        raise LmdistillError(f"head_rule must be one of {', '.join(HEAD_RULES)}, got '{rule}'")
    fits = ht % hs == 0 if rule == "average" else ht >= hs
    if not fits:
        raise LmdistillError(
            f"cannot match {ht} teacher attention heads to {hs} student heads with head_rule '{rule}': "
            f"set head_rule: average|select (average needs teacher heads a multiple of student heads, "
            f"select needs teacher heads >= student heads)"
        )
    if rule == "average":
        b, _, *rest = teacher_attn.shape
        return teacher_attn.reshape(b, hs, ht // hs, *rest).mean(2)
    if heads is None:
        return teacher_attn[:, :hs]
    index = list(heads)
    if len(index) != hs or not all(0 <= i < ht for i in index):
        raise LmdistillError(
            f"head_rule select: need {hs} teacher head indices in [0, {ht}) for {hs} student heads, got {index}"
        )
    return teacher_attn[:, index]


def relation_matrix(
    x: torch.Tensor, num_relation_heads: int, key_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Self-attention relation log-probabilities: ``(B, T, H) -> (B, R, T, T)``.

    MiniLMv2 (Wang et al., 2021), sec. 3: the query (or key, value) vectors of all attention heads are
    concatenated (``H = heads * head_dim``) and re-split into ``R = num_relation_heads`` relation heads of
    width ``d_r = H / R``; relation head ``a`` is ``R_a = softmax(x_a x_a^T / sqrt(d_r))``. MiniLM's
    value relation (Wang et al., 2020, sec. 3.1, ``VR = softmax(V V^T / sqrt(d_k))``) is the case
    ``x = V`` and ``R`` = the model's head count. Returns log-probabilities (float32): padded key columns
    are ``-inf``; the row of an example with no valid key at all is ``-inf`` everywhere (no NaN).
    """
    b, t, h = x.shape
    if num_relation_heads < 1 or h % num_relation_heads:
        raise LmdistillError(
            f"num_relation_heads {num_relation_heads} must divide the hidden width {h} "
            f"(of the query/key/value vectors concatenated over heads)"
        )
    d = h // num_relation_heads
    xa = x.float().reshape(b, t, num_relation_heads, d).transpose(1, 2)
    scores = xa @ xa.transpose(-1, -2) / math.sqrt(d)
    valid = _key_valid(key_mask)
    if valid is None:
        return scores.log_softmax(-1)
    # fill with the float32 minimum (not -inf) so an all-padding row stays finite through log_softmax
    scores = scores.masked_fill(~valid, torch.finfo(torch.float32).min)
    return scores.log_softmax(-1).masked_fill(~valid, float("-inf"))


def relation_kl(
    student_x: torch.Tensor,
    teacher_x: torch.Tensor,
    num_relation_heads: int,
    key_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """KL of self-attention relations per row: ``(B, T, H_s), (B, T, H_t) -> (B, R, T)``.

    MiniLMv2 (Wang et al., 2021), sec. 3: ``L_ij = 1/(A_r |x|) sum_a sum_t D_KL(R^T_{ij,a,t} ||
    R^S_{ij,a,t})`` for ``i = j`` in {Q, K, V}; MiniLM (Wang et al., 2020), sec. 3.1, ``L_VR`` is the
    value-value case with ``R`` = the model's heads. Both sides use the same ``R``, each with its own
    ``d_r``, so teacher and student may differ in head count AND width (relations are ``T x T``).
    ``masked_mean(loss, row_mask(attention_mask))`` is ``L_ij``; padded key columns are ignored.
    """
    if student_x.shape[:2] != teacher_x.shape[:2]:
        raise LmdistillError(
            f"relation_kl: student (B, T) {tuple(student_x.shape[:2])} != teacher {tuple(teacher_x.shape[:2])}"
        )
    log_p = relation_matrix(teacher_x, num_relation_heads, key_mask)
    log_q = relation_matrix(student_x, num_relation_heads, key_mask)
    return _row_kl(log_p.exp(), log_p, log_q, _key_valid(key_mask))


FEATURE_LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "mse": hidden_mse,
    "cosine": hidden_cosine,
    "cls_mse": cls_normalized_mse,
    "attention_kl": attention_kl,
    "attention_mse": attention_mse,
    "relation_kl": relation_kl,
}
