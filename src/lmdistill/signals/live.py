"""The teacher's output as a signal. A live teacher runs under inference mode in eval mode; later a
cache on disk produces the same :class:`TeacherSignal`, and every loss consumes it the same way."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class TeacherSignal:
    """What the losses may read from the teacher for one batch.

    logits: ``(B, C)`` for classification / regression heads.
    hidden_states: per layer ``(B, T, H)`` (embedding output first), when a loss asked for them.
    features: tapped inside the model, e.g. ``{"q11": (B, T, H), "v11": ...}`` for attention and relations.
    """

    logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    features: dict[str, torch.Tensor] = field(default_factory=dict)


class LiveTeacher:
    """Runs a frozen teacher on each batch (its own inputs when its tokenizer differs)."""

    def __init__(self, model: nn.Module, hidden_states: bool = False, tap=None):
        self.model = model
        self.hidden_states = hidden_states
        self.tap = tap
        model.eval()
        model.requires_grad_(False)

    @torch.no_grad()  # not inference_mode: its tensors could not be saved for the student's backward
    def __call__(self, batch: dict) -> TeacherSignal:
        inputs = batch.get("teacher") or batch["student"]
        out = self.model(**inputs, output_hidden_states=self.hidden_states or None)
        return TeacherSignal(
            logits=getattr(out, "logits", None),  # base encoders (task general) have no head
            hidden_states=tuple(out.hidden_states) if self.hidden_states else None,
            features=self.tap.pop() if self.tap is not None else {},
        )
