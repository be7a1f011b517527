"""The teacher's top-k next-token distribution: a compact teacher signal for live use and for caches.

A full teacher distribution costs ``V`` floats per token (``V`` up to ~256k for modern LMs); the top-k
signal keeps the ``k`` largest log-probabilities, their token ids and the log of the remaining mass
(the *tail*), so that ``k + 1`` bins still describe a proper distribution. The divergences in
:mod:`lmdistill.losses.divergences` accept a :class:`TopKSignal` wherever they accept dense teacher
logits; there both distributions are collapsed onto those ``k + 1`` bins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def check_temperature(temperature: float) -> None:
    """Raise ``ValueError`` unless ``temperature`` is a finite number > 0."""
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")


@dataclass(frozen=True, eq=False)  # eq on tensors would be ambiguous
class TopKSignal:
    """The teacher's ``k`` most likely next tokens at one temperature, plus the mass of all others.

    Attributes:
        indices: ``(..., k)`` int64 token ids, most likely first.
        logprobs: ``(..., k)`` log-probabilities of those tokens, ``log_softmax(teacher_logits / T)``
            gathered at ``indices``. Float32 when built, fp16/bf16 after :meth:`half`.
        tail_logprob: ``(...)`` ``log(1 - sum(exp(logprobs)))``, the log-mass of the ``V - k`` other
            tokens; ``-inf`` when ``k`` covers every token with non-zero probability.
        temperature: the ``T`` the log-probabilities were computed at. A divergence called with a
            different temperature raises: a truncated distribution cannot be re-tempered exactly.
    """

    indices: torch.Tensor
    logprobs: torch.Tensor
    tail_logprob: torch.Tensor
    temperature: float = 1.0

    def __post_init__(self) -> None:
        if self.indices.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"TopKSignal.indices must be an integer tensor, got {self.indices.dtype}")
        if self.indices.shape != self.logprobs.shape or self.indices.dim() < 1:
            raise ValueError(
                f"TopKSignal.indices {tuple(self.indices.shape)} and logprobs {tuple(self.logprobs.shape)} "
                "must have the same shape (..., k)"
            )
        if self.tail_logprob.shape != self.logprobs.shape[:-1]:
            raise ValueError(
                f"TopKSignal.tail_logprob has shape {tuple(self.tail_logprob.shape)}, expected "
                f"{tuple(self.logprobs.shape[:-1])} (the logprobs shape without k)"
            )
        check_temperature(self.temperature)

    @property
    def k(self) -> int:
        """Number of kept tokens per position."""
        return self.indices.shape[-1]

    @property
    def shape(self) -> torch.Size:
        """The leading shape ``(...)`` shared by every position, e.g. ``(B, T)``."""
        return self.tail_logprob.shape

    def to(self, device: torch.device | str) -> TopKSignal:
        """The same signal on ``device`` (dtypes unchanged)."""
        return TopKSignal(
            self.indices.to(device), self.logprobs.to(device), self.tail_logprob.to(device), self.temperature
        )

    def half(self, dtype: torch.dtype = torch.float16) -> TopKSignal:
        """A storage copy with ``logprobs`` and ``tail_logprob`` in ``dtype`` (fp16 or bf16).

        Meant for caches: the divergences upcast to float32 and renormalise the ``k + 1`` bins before
        use. Rounding a log-probability ``l`` costs a relative error of about ``|l| * 2**-11`` in its
        probability for fp16 and ``|l| * 2**-8`` for bf16 (e.g. 0.5% / 4% at ``l = -10``).
        """
        if dtype not in (torch.float16, torch.bfloat16):
            raise ValueError(f"TopKSignal.half stores fp16 or bf16, got {dtype}")
        return TopKSignal(
            self.indices, self.logprobs.to(dtype), self.tail_logprob.to(dtype), self.temperature
        )

    def take_rows(self, rows: torch.Tensor) -> TopKSignal:
        """Flatten the leading dims to ``(N,)`` and keep ``rows`` (int64 ``(n,)``): ``(n, k)`` fields."""
        k = self.k
        return TopKSignal(
            self.indices.reshape(-1, k).index_select(0, rows),
            self.logprobs.reshape(-1, k).index_select(0, rows),
            self.tail_logprob.reshape(-1).index_select(0, rows),
            self.temperature,
        )


@torch.no_grad()
def topk_signal(teacher_logits: torch.Tensor, k: int, temperature: float = 1.0) -> TopKSignal:
    """The top-``k`` signal of ``teacher_logits`` at ``temperature`` (a constant: no gradient).

    The log-probabilities are ``log_softmax(teacher_logits / T)`` in float32 (float64 stays float64);
    the tail is ``logsumexp`` over the non-top-``k`` logits minus the normaliser, which is accurate
    even when the tail mass is far below float32 epsilon (``log1p(-sum p)`` would cancel to 0 there).
    ``-inf`` logits (masked vocabulary entries) are fine; each row needs one finite logit.

    Args:
        teacher_logits: ``(..., V)`` any float dtype.
        k: number of tokens to keep, ``1 <= k <= V``.
        temperature: ``T > 0``; recorded in the signal.

    Returns:
        A :class:`TopKSignal` with ``(..., k)`` indices/logprobs and ``(...)`` tail.
    """
    vocab = teacher_logits.shape[-1]
    if not isinstance(k, int) or not 1 <= k <= vocab:
        raise ValueError(f"k must be an integer in [1, {vocab}] (the vocabulary size), got {k!r}")
    check_temperature(temperature)
    dtype = torch.promote_types(teacher_logits.dtype, torch.float32)
    z = teacher_logits.to(dtype) / temperature
    log_norm = torch.logsumexp(z, dim=-1, keepdim=True)
    top, indices = z.topk(k, dim=-1)
    rest = z.scatter_(-1, indices, float("-inf"))  # z is a fresh tensor: overwrite in place
    tail = torch.logsumexp(rest, dim=-1) - log_norm.squeeze(-1)
    return TopKSignal(indices, top - log_norm, tail, float(temperature))
