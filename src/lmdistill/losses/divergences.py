"""Token-level divergences between a teacher's and a student's next-token distributions.

Notation: ``p = softmax(teacher_logits / T)`` (teacher), ``q = softmax(student_logits / T)``
(student), both over the vocabulary (last dim). Every function here:

* takes ``student_logits`` ``(..., V)`` and a teacher that is either dense logits ``(..., V)`` or a
  :class:`~lmdistill.signals.sparse.TopKSignal` ``(..., k)`` (see :func:`collapse_to_topk`);
* computes in log space (``log_softmax``) in float32 whatever the input dtype (bf16/fp16 are upcast,
  float64 stays float64);
* returns UNREDUCED values ``(...)``, e.g. ``(B, T)`` or ``(N,)``; reduce them with
  :func:`lmdistill.losses.reduce.masked_mean` (or use :func:`chunked_divergence`, which does);
* does NOT multiply by ``T**2``. Callers that want Hinton et al.'s (2015) temperature-independent
  gradient scale multiply the reduced loss by ``T**2`` themselves.

Zero probabilities: a teacher logit of ``-inf`` (masked vocabulary entry) gives ``p = 0``. Terms
``0 * log 0`` are exactly 0 (no NaN, in value or gradient). Where a *positive* probability is divided
by a zero one (e.g. the student's mass on a teacher-masked token in the reverse KL), the exact value is
``+inf``; the log of the zero probability is floored at ``log(float32 tiny) ~= -87.3`` so the loss stays
finite and large and the gradient pushes that mass away.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from lmdistill.losses.reduce import masked_mean
from lmdistill.losses.topk import TopKSignal, check_temperature

Teacher = torch.Tensor | TopKSignal
Divergence = Callable[..., torch.Tensor]

_LOG_FLOOR = math.log(torch.finfo(torch.float32).tiny)  # about -87.34


# ---------------------------------------------------------------- log-space primitives


def _kl(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """``KL(a || b) = sum a (log a - log b)`` over the last dim; ``0 log 0 = 0``; ``log b`` floored."""
    a = log_a.exp()
    safe_log_a = torch.where(a > 0, log_a, 0.0)  # keeps -inf out of both the value and the gradient
    return (a * (safe_log_a - log_b.clamp(min=_LOG_FLOOR))).sum(-1)


def _log_mix(log_a: torch.Tensor, log_b: torch.Tensor, weight: float) -> torch.Tensor:
    """``log(weight * a + (1 - weight) * b)`` elementwise, ``0 <= weight <= 1``."""
    if weight == 1.0:
        return log_a
    if weight == 0.0:
        return log_b
    return torch.logaddexp(
        log_a.clamp(min=_LOG_FLOOR) + math.log(weight), log_b.clamp(min=_LOG_FLOOR) + math.log1p(-weight)
    )


def _check_unit(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")


# ---------------------------------------------------------------- inputs to log-probabilities


def collapse_to_topk(
    student_logits: torch.Tensor, signal: TopKSignal, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Student and teacher log-probabilities on the ``k + 1`` bins of a top-k signal.

    Bins: the teacher's ``k`` tokens (``signal.indices``) plus one tail bin for all other tokens. The
    student's tail is ``logsumexp`` of its non-top-k logits minus its normaliser (stable; exactly
    ``-inf`` when ``k = V``). The teacher's ``k + 1`` log-probabilities are renormalised with
    ``log_softmax`` so fp16/bf16 storage rounding still yields a distribution.

    Bias: merging tokens into one bin is the same deterministic map applied to both distributions, so
    by the data-processing inequality every divergence here (all are f-divergences, including the JSD
    and skew KLs) evaluated on the bins is <= its value on the full vocabulary, with equality when the
    teacher's and student's conditional distributions inside the tail agree (always when ``k = V``).

    Args:
        student_logits: ``(..., V)``.
        signal: ``(..., k)`` built at ``temperature``.

    Returns:
        ``(log_q, log_p)``, each ``(..., k + 1)`` in float32 (float64 for float64 logits).
    """
    if not math.isclose(signal.temperature, temperature, rel_tol=1e-6):
        raise ValueError(
            f"the top-k signal was computed at temperature {signal.temperature}, but the divergence was "
            f"called with temperature {temperature}; pass temperature={signal.temperature}"
        )
    if signal.shape != student_logits.shape[:-1]:
        raise ValueError(
            f"top-k signal positions {tuple(signal.shape)} do not match student logits "
            f"{tuple(student_logits.shape)} (expected leading shape {tuple(student_logits.shape[:-1])})"
        )
    z = student_logits.to(torch.promote_types(student_logits.dtype, torch.float32)) / temperature
    log_norm = torch.logsumexp(z, dim=-1, keepdim=True)
    head = z.gather(-1, signal.indices.long()) - log_norm
    tail = (
        torch.logsumexp(z.scatter(-1, signal.indices.long(), float("-inf")), dim=-1, keepdim=True) - log_norm
    )
    log_q = torch.cat([head, tail], dim=-1)
    teacher = torch.cat([signal.logprobs, signal.tail_logprob.unsqueeze(-1)], dim=-1)
    log_p = F.log_softmax(teacher.to(log_q.dtype), dim=-1)
    return log_q, log_p


def _log_probs(
    student_logits: torch.Tensor, teacher_logits: Teacher, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log_q, log_p)`` over the vocabulary (or the top-k bins), float32 or wider."""
    check_temperature(temperature)
    if isinstance(teacher_logits, TopKSignal):
        return collapse_to_topk(student_logits, teacher_logits, temperature)
    if student_logits.shape != teacher_logits.shape:
        same_positions = student_logits.shape[:-1] == teacher_logits.shape[:-1]
        hint = " (padded vocabularies: slice both with shared_vocab first)" if same_positions else ""
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ in shape{hint}"
        )
    dtype = torch.promote_types(
        torch.promote_types(student_logits.dtype, teacher_logits.dtype), torch.float32
    )
    log_q = F.log_softmax(student_logits.to(dtype) / temperature, dim=-1)
    log_p = F.log_softmax(teacher_logits.to(dtype) / temperature, dim=-1)
    return log_q, log_p


# ---------------------------------------------------------------- divergences


def forward_kl(
    student_logits: torch.Tensor, teacher_logits: Teacher, temperature: float = 1.0
) -> torch.Tensor:
    """Forward KL ``KL(p || q) = sum_v p (log p - log q)`` (teacher || student; mode-covering).

    The standard KD loss (Hinton et al., 2015). In torch terms it is
    ``F.kl_div(input=log q, target=log p, reduction="none", log_target=True).sum(-1)``: ``F.kl_div``
    takes the model's log-probabilities first and computes ``KL(target || input)``.

    Args:
        student_logits: ``(..., V)``.
        teacher_logits: ``(..., V)`` logits or a :class:`TopKSignal` ``(..., k)``.
        temperature: ``T > 0``; no ``T**2`` factor is applied.

    Returns:
        ``(...)`` per-token values >= 0.
    """
    log_q, log_p = _log_probs(student_logits, teacher_logits, temperature)
    return _kl(log_p, log_q)


def reverse_kl(
    student_logits: torch.Tensor, teacher_logits: Teacher, temperature: float = 1.0
) -> torch.Tensor:
    """Reverse KL ``KL(q || p) = sum_v q (log q - log p)`` (student || teacher; mode-seeking).

    As used by MiniLLM (Gu et al., ICLR 2024). Torch equivalent:
    ``F.kl_div(input=log p, target=log q, log_target=True).sum(-1)``. Student mass on tokens the
    teacher masks to ``-inf`` is charged with ``log p`` floored at about ``-87.3`` (see module doc).
    Shapes and arguments as :func:`forward_kl`.
    """
    log_q, log_p = _log_probs(student_logits, teacher_logits, temperature)
    return _kl(log_q, log_p)


def generalized_jsd(
    student_logits: torch.Tensor, teacher_logits: Teacher, temperature: float = 1.0, *, beta: float = 0.5
) -> torch.Tensor:
    """Generalized Jensen-Shannon divergence, normalised to run from forward KL (beta=0) to reverse KL (beta=1).

    GKD (Agarwal et al., "On-Policy Distillation of Language Models: Learning from Self-Generated
    Mistakes", ICLR 2024, arXiv:2306.13649, Sec. 2, Eq. 1) defines, with teacher ``p`` and student ``q``::

        m = beta * p + (1 - beta) * q
        JSD(beta) = beta * KL(p || m) + (1 - beta) * KL(q || m)

    That form tends to 0 at both ends: ``JSD(beta) = beta * KL(p || q) + O(beta**2)`` as beta -> 0 and
    ``(1 - beta) * KL(q || p) + O((1 - beta)**2)`` as beta -> 1 (Huszar, 2015, arXiv:1511.05101). This
    function returns the normalised value::

        JSD(beta) / (beta * (1 - beta))      for 0 < beta < 1
        KL(p || q) = forward_kl              at beta = 0 (returned directly, no 0/0)
        KL(q || p) = reverse_kl              at beta = 1

    which is continuous on [0, 1] and equals the endpoint KLs in the limits. The semantics of ``beta``
    match TRL's ``generalized_jsd_loss`` endpoints (0 = forward, 1 = reverse) and the GKD mixture; only
    the interior is rescaled by ``1 / (beta (1 - beta))`` (TRL returns the unscaled interior, which is
    discontinuous at both ends). At ``beta = 0.5`` it is symmetric in ``p, q`` and equals
    ``4 * JSD``, in ``[0, 4 ln 2]``. Gradient directions equal GKD's for every beta; only the scale
    (effectively the learning rate) differs.

    Args:
        student_logits, teacher_logits, temperature: as :func:`forward_kl`.
        beta: mixture weight of the teacher in ``m``, in ``[0, 1]``.

    Returns:
        ``(...)`` per-token values >= 0.
    """
    _check_unit("beta", beta)
    if beta == 0.0:
        return forward_kl(student_logits, teacher_logits, temperature)
    if beta == 1.0:
        return reverse_kl(student_logits, teacher_logits, temperature)
    log_q, log_p = _log_probs(student_logits, teacher_logits, temperature)
    log_m = _log_mix(log_p, log_q, beta)
    jsd = beta * _kl(log_p, log_m) + (1.0 - beta) * _kl(log_q, log_m)
    return jsd / (beta * (1.0 - beta))


def skew_forward_kl(
    student_logits: torch.Tensor, teacher_logits: Teacher, temperature: float = 1.0, *, alpha: float = 0.1
) -> torch.Tensor:
    """Skew forward KL ``SKL_alpha(p, q) = KL(p || alpha * p + (1 - alpha) * q)``.

    DistiLLM (Ko et al., "DistiLLM: Towards Streamlined Distillation for Large Language Models",
    ICML 2024, arXiv:2402.03898, Sec. 3.1, definition of alpha-SKL). Mixing ``alpha * p`` into the
    student side bounds the ratio ``p / mix <= 1 / alpha``, which keeps gradients bounded where the
    student puts ~0 mass. ``alpha = 0`` gives :func:`forward_kl` exactly; ``alpha = 1`` gives 0.

    Args:
        student_logits, teacher_logits, temperature: as :func:`forward_kl`.
        alpha: skew, in ``[0, 1]`` (paper default 0.1).

    Returns:
        ``(...)`` per-token values >= 0.
    """
    _check_unit("alpha", alpha)
    log_q, log_p = _log_probs(student_logits, teacher_logits, temperature)
    return _kl(log_p, _log_mix(log_p, log_q, alpha))


def skew_reverse_kl(
    student_logits: torch.Tensor, teacher_logits: Teacher, temperature: float = 1.0, *, alpha: float = 0.1
) -> torch.Tensor:
    """Skew reverse KL ``SRKL_alpha(p, q) = KL(q || (1 - alpha) * p + alpha * q)``.

    DistiLLM (Ko et al., ICML 2024, arXiv:2402.03898, Sec. 3.1, definition of alpha-SRKL). ``alpha = 0``
    gives :func:`reverse_kl` exactly; ``alpha = 1`` gives 0. Arguments as :func:`skew_forward_kl`.
    """
    _check_unit("alpha", alpha)
    log_q, log_p = _log_probs(student_logits, teacher_logits, temperature)
    return _kl(log_q, _log_mix(log_p, log_q, 1.0 - alpha))


def total_variation(
    student_logits: torch.Tensor, teacher_logits: Teacher, temperature: float = 1.0
) -> torch.Tensor:
    """Total variation distance ``TVD(p, q) = 0.5 * sum_v |p - q|``, in ``[0, 1]``.

    One of the f-divergences of f-DISTILL (Wen et al., "f-Divergence Minimization for Sequence-Level
    Knowledge Distillation", ACL 2023); bounded, so never dominated by rare tokens. Arguments as
    :func:`forward_kl`.
    """
    log_q, log_p = _log_probs(student_logits, teacher_logits, temperature)
    return 0.5 * (log_p.exp() - log_q.exp()).abs().sum(-1)


DIVERGENCES: dict[str, Divergence] = {
    "forward_kl": forward_kl,
    "reverse_kl": reverse_kl,
    "jsd": generalized_jsd,
    "skew_forward_kl": skew_forward_kl,
    "skew_reverse_kl": skew_reverse_kl,
    "tvd": total_variation,
}
"""Divergences by config name. Each is ``fn(student_logits, teacher, temperature=1.0, **params) -> (...)``
with params ``beta`` (``jsd``) or ``alpha`` (``skew_*``)."""


# ---------------------------------------------------------------- vocabulary sizes


def shared_vocab(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Slice both ``(..., V)`` tensors to the smaller last dimension (views, no copy).

    For one tokenizer with embedding matrices padded to different sizes (e.g. 49152 vs 49280): the
    rows past the tokenizer's length are never real tokens. Checking that both models share the
    tokenizer is the caller's job (see :func:`check_vocab_compatible`).
    """
    size = min(student_logits.shape[-1], teacher_logits.shape[-1])
    return student_logits[..., :size], teacher_logits[..., :size]


def check_vocab_compatible(
    student_vocab_size: int, teacher_vocab_size: int, shared_tokens: int, *, max_pad: int = 1024
) -> int:
    """Check that two output sizes differ only by padding; return the size to slice both to.

    Args:
        student_vocab_size, teacher_vocab_size: the models' logit dimensions.
        shared_tokens: the number of real tokens of the (identical) tokenizer, e.g. ``len(tokenizer)``.
        max_pad: the largest size difference accepted as padding.

    Returns:
        ``min(student_vocab_size, teacher_vocab_size)``.

    Raises:
        ValueError: a one-line message when a model has fewer outputs than the tokenizer has tokens, or
            the sizes differ by more than ``max_pad``.
    """
    small = min(student_vocab_size, teacher_vocab_size)
    if shared_tokens > small:
        raise ValueError(
            f"student vocab {student_vocab_size} / teacher vocab {teacher_vocab_size}: the smaller is below "
            f"the tokenizer's {shared_tokens} tokens; check that both models really use this tokenizer"
        )
    if abs(student_vocab_size - teacher_vocab_size) > max_pad:
        raise ValueError(
            f"student vocab {student_vocab_size} and teacher vocab {teacher_vocab_size} differ by "
            f"{abs(student_vocab_size - teacher_vocab_size)} > {max_pad} (more than padding): use a student "
            "with the teacher's tokenizer, or a cross-tokenizer method"
        )
    return small


# ---------------------------------------------------------------- chunked masked mean


def _resolve(name_or_fn: str | Divergence) -> Divergence:
    if callable(name_or_fn):
        return name_or_fn
    if name_or_fn not in DIVERGENCES:
        raise ValueError(f"unknown divergence {name_or_fn!r}; choose one of {sorted(DIVERGENCES)}")
    return DIVERGENCES[name_or_fn]


def _teacher_rows(teacher: Teacher, rows: torch.Tensor) -> Teacher:
    """Rows of the flattened teacher: ``(N, V)`` logits or a top-k signal -> ``(n, ...)``."""
    if isinstance(teacher, TopKSignal):
        return teacher.take_rows(rows)
    return teacher[rows]  # advanced indexing: index_select is 3-30x slower on CPU for (n, V) rows


def _chunk_values(
    fn: Divergence,
    student: torch.Tensor,
    teacher: Teacher,
    mask: torch.Tensor,
    chunk_size: int,
    kw: dict[str, float],
    grad: torch.Tensor | None,
) -> torch.Tensor:
    """Per-row values ``(N,)`` (0 at masked rows) of ``fn`` over the valid rows of ``(N, V)``, chunk by chunk.

    With ``grad`` (an ``(N, V)`` zero buffer), also writes the gradient of ``sum(values) / count`` with
    respect to each valid student row into it.
    """
    rows = mask.nonzero().squeeze(-1)
    count = max(rows.numel(), 1)
    values = torch.zeros(
        mask.shape[0], dtype=torch.promote_types(student.dtype, torch.float32), device=student.device
    )
    for start in range(0, rows.numel(), chunk_size):
        chunk = rows[start : start + chunk_size]
        if grad is None:
            value = fn(student[chunk], _teacher_rows(teacher, chunk), **kw)
        else:
            with torch.enable_grad():
                part = student[chunk].detach().requires_grad_(True)
                value = fn(part, _teacher_rows(teacher, chunk), **kw)
                (part_grad,) = torch.autograd.grad(value.sum() / count, part)
            grad.index_copy_(0, chunk, part_grad)
        values.index_copy_(0, chunk, value.detach().to(values.dtype))
    return values


class _ChunkedMean(torch.autograd.Function):
    """Masked mean of per-row divergences of ``(N, V)`` rows. The student's gradient is computed chunk by
    chunk during forward into one ``(N, V)`` buffer in its dtype; backward only scales that buffer."""

    @staticmethod
    def forward(ctx, student, teacher, mask, fn, chunk_size, kw):  # type: ignore[override]
        grad = torch.zeros_like(student)
        values = _chunk_values(fn, student, teacher, mask, chunk_size, kw, grad)
        ctx.save_for_backward(grad)
        return masked_mean(values, mask)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        return (grad * grad_out).to(grad.dtype), None, None, None, None, None


def chunked_divergence(
    name_or_fn: str | Divergence,
    student_logits: torch.Tensor,
    teacher_logits: Teacher,
    mask: torch.Tensor | None,
    *,
    chunk_size: int = 512,
    **kw: float,
) -> torch.Tensor:
    """``masked_mean(fn(student_logits, teacher_logits, **kw), mask)`` without a full float32 ``(B, T, V)``.

    Only the valid positions (``mask`` true) are read, ``chunk_size`` rows at a time; each chunk is
    upcast to float32, its per-token divergence and the gradient of its share of the mean with respect
    to the student's logits are computed at once (plain autograd per chunk), and the float32
    intermediates are freed before the next chunk. The value equals the unchunked masked mean
    (0.0, not NaN, when nothing is valid); the gradient flows to ``student_logits`` only (the teacher
    is a constant).

    Memory: one ``(B*T, V)`` gradient buffer in the student's dtype (the same size autograd would
    allocate for ``student_logits.grad``; allocated only when a gradient is needed), a second one
    transiently in backward, and about six ``(chunk_size, V)`` float32 temporaries. The gradient is
    computed inside this call: backward only scales the buffer (no double backward).

    Args:
        name_or_fn: a key of :data:`DIVERGENCES` or a callable with the same signature.
        student_logits: ``(B, T, V)`` (any leading shape), any float dtype.
        teacher_logits: same shape, or a :class:`TopKSignal` with leading shape ``(B, T)``.
        mask: bool or 0/1 ``(B, T)``; ``None`` means all positions are valid.
        chunk_size: rows per chunk, >= 1.
        **kw: passed to the divergence (``temperature``, ``beta``, ``alpha``).

    Returns:
        A 0-dim float32 tensor.
    """
    fn = _resolve(name_or_fn)
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
    lead, vocab = student_logits.shape[:-1], student_logits.shape[-1]
    if mask is None:
        mask = torch.ones(lead, dtype=torch.bool, device=student_logits.device)
    if mask.shape != lead:
        raise ValueError(f"mask {tuple(mask.shape)} must match the student logits' positions {tuple(lead)}")
    teacher_shape = (
        teacher_logits.shape if isinstance(teacher_logits, TopKSignal) else teacher_logits.shape[:-1]
    )
    if teacher_shape != lead:
        raise ValueError(f"teacher positions {tuple(teacher_shape)} do not match the student's {tuple(lead)}")
    student = student_logits.reshape(-1, vocab)
    teacher = (
        teacher_logits
        if isinstance(teacher_logits, TopKSignal)
        else teacher_logits.detach().reshape(-1, teacher_logits.shape[-1])
    )
    flat_mask = mask.reshape(-1).to(torch.bool)
    if torch.is_grad_enabled() and student_logits.requires_grad:
        return _ChunkedMean.apply(student, teacher, flat_mask, fn, chunk_size, kw)
    return masked_mean(_chunk_values(fn, student, teacher, flat_mask, chunk_size, kw, None), flat_mask)
