"""KD and next-token loss computed together with the student's LM head, chunk by chunk (``lm.fused``).

An unfused step makes the student's logits ``(B, T, V)`` in the forward pass, keeps them for backward, and a
gradient buffer of the same size; at a 49k-152k vocabulary these dominate the memory of a small student.
:func:`fused_kd_lm` takes the student's final hidden states ``(n, H)`` at the target positions and the head's
weight ``(V, H)``: in forward each chunk of ``chunk_size`` rows is projected (``logits = h W^T + b`` in
float32), its divergence and cross-entropy are summed and the logits are freed; only the hidden states are
kept. Backward recomputes each chunk's logits, differentiates that chunk's share of the loss, writes the
gradient of its hidden states and adds to the weight's (and bias's) gradient. So neither the full logits nor
their float32 copies ever exist; the price is one more ``(chunk, H) x (H, V)`` matmul per chunk.

The teacher side is dense logits rows, a :class:`~lmdistill.losses.topk.TopKSignal` (a top-k cache), or
:class:`HeadRows` (its own final hidden states and head, projected chunk by chunk the same way, optionally
reduced to its top-k there). The values and gradients equal the unfused
``kd = mean D(p, q)`` and ``lm = mean -log q[target]`` (both float32; tested at small sizes).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lmdistill.losses.divergences import DIVERGENCES, Divergence
from lmdistill.losses.topk import TopKSignal, topk_signal


@dataclass
class HeadRows:
    """A teacher given by its final hidden states ``(n, H_t)`` and LM head (``weight`` ``(V_t, H_t)``, ``bias``)."""

    hidden: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor | None = None

    def logits(self, rows: torch.Tensor) -> torch.Tensor:
        """Float32 (or wider) logits of ``rows`` ``(c,) -> (c, V_t)``."""
        return _linear(self.hidden[rows], self.weight, self.bias)


def _linear(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``h W^T + b`` in float32, or float64 for float64 inputs."""
    dtype = torch.promote_types(h.dtype, torch.float32)
    return F.linear(h.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype))


@dataclass
class FusedSpec:
    """What :func:`fused_kd_lm` computes: which terms, the divergence and its settings."""

    divergence: Divergence
    params: dict
    temperature: float = 1.0
    chunk_size: int = 512
    vocab_size: int | None = None
    """Logits kept on both sides for kd (a padded vocabulary); None: the smaller of the two."""
    top_k: int | None = None
    """Reduce dense / head teachers to their top-k + tail, per chunk, at ``temperature``."""
    kd: bool = True
    lm: bool = True


def _teacher_chunk(teacher, rows: torch.Tensor, size: int, spec: FusedSpec):
    if isinstance(teacher, TopKSignal):
        return teacher.take_rows(rows)
    t = teacher.logits(rows) if isinstance(teacher, HeadRows) else teacher[rows]
    t = t[..., :size]
    return topk_signal(t, spec.top_k, spec.temperature) if spec.top_k else t


def _chunk_loss(h, weight, bias, targets, teacher, rows, spec: FusedSpec, size: int, scale: torch.Tensor):
    """``scale[0] * sum(kd) + scale[1] * sum(lm)`` of one chunk, and the two sums."""
    z = _linear(h, weight, bias)  # (c, V) float32
    kd = lm = z.new_zeros(())
    if spec.kd:
        kd = spec.divergence(
            z[..., :size], _teacher_chunk(teacher, rows, size, spec), spec.temperature, **spec.params
        ).sum()
    if spec.lm:
        lm = F.cross_entropy(z, targets[rows], reduction="sum")
    return scale[0] * kd + scale[1] * lm, kd, lm


class _FusedHeadLoss(torch.autograd.Function):
    """``(kd_mean, lm_mean)`` of hidden rows through the head; saves only its inputs, recomputes in backward."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, teacher, spec, size):  # type: ignore[override]
        n = hidden.shape[0]
        dtype = torch.promote_types(hidden.dtype, torch.float32)
        sums = torch.zeros(2, dtype=dtype, device=hidden.device)
        ones = torch.ones(2, dtype=dtype, device=hidden.device)
        for rows in torch.arange(n, device=hidden.device).split(spec.chunk_size):
            _, kd, lm = _chunk_loss(hidden[rows], weight, bias, targets, teacher, rows, spec, size, ones)
            sums += torch.stack([kd, lm]).to(dtype)
        ctx.save_for_backward(hidden, weight, bias, targets)
        ctx.teacher, ctx.spec, ctx.size = teacher, spec, size
        return sums / max(n, 1)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        hidden, weight, bias, targets = ctx.saved_tensors
        n = hidden.shape[0]
        scale = grad_out / max(n, 1)
        acc = torch.promote_types(weight.dtype, torch.float32)
        grad_h = torch.zeros_like(hidden)
        grad_w = torch.zeros_like(weight, dtype=acc)
        grad_b = None if bias is None else torch.zeros_like(bias, dtype=acc)
        w = weight.detach().requires_grad_(True)
        b = None if bias is None else bias.detach().requires_grad_(True)
        for rows in torch.arange(n, device=hidden.device).split(ctx.spec.chunk_size):
            with torch.enable_grad():
                h = hidden[rows].detach().requires_grad_(True)
                loss, _, _ = _chunk_loss(h, w, b, targets, ctx.teacher, rows, ctx.spec, ctx.size, scale)
                grads = torch.autograd.grad(loss, [h, w] + ([b] if b is not None else []))
            grad_h[rows] = grads[0].to(grad_h.dtype)
            grad_w += grads[1]
            if grad_b is not None:
                grad_b += grads[2]
        grad_b = None if grad_b is None else grad_b.to(bias.dtype)
        return grad_h, grad_w.to(weight.dtype), grad_b, None, None, None, None


def fused_kd_lm(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    teacher,
    spec: FusedSpec,
) -> torch.Tensor:
    """``(kd, lm)``: the mean divergence between teacher and student and the mean next-token cross-entropy
    over ``n`` target rows, the student's logits made chunk by chunk from ``hidden`` ``(n, H)``, ``weight``
    ``(V, H)``, ``bias`` ``(V,)`` or None; ``targets`` ``(n,)`` (the next tokens); ``teacher`` rows
    ``(n, V_t)``, a :class:`TopKSignal` ``(n, k)`` or :class:`HeadRows` (ignored when ``spec.kd`` is false).
    Returns a ``(2,)`` float32 (float64 for float64 inputs) tensor (0 for a term that is off, and for no
    rows); no ``T**2``."""
    if isinstance(spec.divergence, str):
        spec = FusedSpec(**{**spec.__dict__, "divergence": DIVERGENCES[spec.divergence]})
    t_size = (
        None
        if teacher is None or isinstance(teacher, TopKSignal)
        else (teacher.weight.shape[0] if isinstance(teacher, HeadRows) else teacher.shape[-1])
    )
    size = spec.vocab_size or (weight.shape[0] if t_size is None else min(weight.shape[0], t_size))
    return _FusedHeadLoss.apply(hidden, weight, bias, targets, teacher, spec, size)
