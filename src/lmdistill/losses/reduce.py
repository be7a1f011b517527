"""The one masked reduction every loss goes through.

Loss functions in :mod:`lmdistill.losses` return unreduced values (one per token or per example).
:func:`masked_mean` turns them into a scalar: the mean over valid positions, and ``0`` (not NaN)
when no position is valid, so an all-padding batch contributes nothing and poisons nothing.
"""

from __future__ import annotations

import torch


def masked_mean(values: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of ``values`` over positions where ``mask`` is true.

    Args:
        values: any shape ``(...)``; reduced in float32.
        mask: bool or 0/1 tensor broadcastable to ``values``; ``None`` means all valid.

    Returns:
        A 0-dim float32 tensor; exactly ``0.0`` (with gradient) when the mask selects nothing.
    """
    values = values.float()
    if mask is None:
        if values.numel() == 0:
            return values.sum()  # 0.0, keeps the graph
        return values.mean()
    mask = mask.to(dtype=torch.bool)
    mask = torch.broadcast_to(mask, values.shape)
    count = mask.sum()
    total = torch.where(mask, values, torch.zeros_like(values)).sum()
    return total / count.clamp(min=1)
