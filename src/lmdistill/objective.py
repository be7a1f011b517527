"""The training objective: named loss terms, each a pure loss from :mod:`lmdistill.losses`, weighted.

``TERMS`` is the plain name -> term dict; a term reads the student's outputs, the teacher's signal and
the batch, and returns a scalar through the one masked reduction. The objective is an ``nn.Module`` so
that learned pieces (projections, added with intermediate matches) train and save with the student.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from lmdistill.losses.logits import cross_entropy, soft_target_kl, squared_error
from lmdistill.losses.reduce import masked_mean
from lmdistill.signals.live import TeacherSignal


def _kd(out, signal: TeacherSignal, batch: dict, temperature: float) -> torch.Tensor:
    return masked_mean(soft_target_kl(out.logits, signal.logits, temperature))


def _ce(out, signal, batch: dict, temperature: float) -> torch.Tensor:
    return masked_mean(cross_entropy(out.logits, batch["labels"]))


def _kd_mse(out, signal: TeacherSignal, batch: dict, temperature: float) -> torch.Tensor:
    return masked_mean(squared_error(out.logits, signal.logits))


def _mse(out, signal, batch: dict, temperature: float) -> torch.Tensor:
    return masked_mean(squared_error(out.logits.squeeze(-1), batch["labels"]))


TERMS: dict[str, Callable[..., torch.Tensor]] = {"kd": _kd, "ce": _ce, "kd_mse": _kd_mse, "mse": _mse}
NEEDS_TEACHER = {"kd", "kd_mse"}


class Objective(nn.Module):
    """Weighted sum of named terms. ``forward`` returns the unweighted terms; :meth:`total` weighs them."""

    def __init__(self, weights: dict[str, float], temperature: float = 1.0):
        super().__init__()
        self.weights = {k: float(w) for k, w in weights.items() if w > 0}
        self.temperature = temperature

    @property
    def needs_teacher(self) -> bool:
        return any(k in NEEDS_TEACHER for k in self.weights)

    def forward(self, out, signal: TeacherSignal | None, batch: dict) -> dict[str, torch.Tensor]:
        return {name: TERMS[name](out, signal, batch, self.temperature) for name in self.weights}

    def total(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(self.weights[k] * v for k, v in terms.items())
