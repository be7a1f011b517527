"""Output-level losses for classification and regression heads (per example, unreduced).

Reduce with :func:`lmdistill.losses.reduce.masked_mean`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_target_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Soft-target loss of Hinton et al. (2015, sec. 2): ``T^2 * KL(p_T || p_S)`` at temperature T.

    ``p = softmax(teacher / T)``, ``q = softmax(student / T)``; forward KL, i.e.
    ``F.kl_div(input=log q, target=log p, log_target=True)`` summed over classes. The ``T^2`` factor keeps
    the gradient scale independent of T when this term is mixed with the hard-label cross-entropy.

    Args:
        student_logits, teacher_logits: ``(N, C)``, any float dtype (computed in float32).

    Returns:
        ``(N,)`` per-example loss.
    """
    log_q = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    kl = F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1)
    return kl * temperature**2


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Hard-label cross-entropy ``-log softmax(logits)[label]``; ``(N, C), (N,) -> (N,)``, 0 where ignored."""
    return F.cross_entropy(logits.float(), labels, ignore_index=ignore_index, reduction="none")


def squared_error(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error per example over the last dim: ``(N, D) or (N,) -> (N,)``.

    Used against the teacher's outputs (``kd_mse``; logit matching, Ba & Caruana 2014) and against gold
    regression targets (``mse``).
    """
    diff = prediction.float() - target.float()
    if diff.dim() == 1:
        return diff.pow(2)
    return diff.pow(2).mean(-1)
