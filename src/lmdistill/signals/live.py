"""The teacher's output as a signal. A live teacher runs under no_grad in eval mode; a cache on disk
(:class:`~lmdistill.signals.cache.CachedTeacher`) produces the same :class:`TeacherSignal`, and every loss
consumes it the same way. Both are a :class:`SignalSource`: the engine calls that interface and nothing else."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn


@dataclass
class TeacherSignal:
    """What the losses may read from the teacher for one batch.

    logits: ``(B, C)`` for classification / regression heads; ``(B, T, V)`` (or a top-k signal) for LMs;
    ``(B, T, C)`` for token classifiers; ``(B, T, 2)`` start and end logits for span heads (question answering).
    hidden_states: per layer ``(B, T, H)`` (embedding output first), when a loss asked for them.
    features: tapped inside the model, e.g. ``{"q11": (B, T, H), "v11": ...}`` for attention and relations.
    """

    logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    features: dict[str, torch.Tensor] = field(default_factory=dict)


def output_logits(out) -> torch.Tensor | None:
    """A model output's logits: ``out.logits``, or for span heads (question answering, which return
    ``start_logits`` and ``end_logits``, ``(B, T)`` each) both stacked as ``(B, T, 2)``; None for base encoders
    (task general), which have no head."""
    logits = getattr(out, "logits", None)
    if logits is None and getattr(out, "start_logits", None) is not None:
        logits = torch.stack([out.start_logits, out.end_logits], dim=-1)
    return logits


class SignalSource(Protocol):
    """Where a batch's teacher signal comes from: a live teacher or a cache.

    ``wrap_collate(collate)`` returns the collator the data loader uses (a cache attaches its stored arrays
    there, on the host); ``source(batch)`` returns the batch's :class:`TeacherSignal` on the batch's device.
    """

    def wrap_collate(self, collate: Callable) -> Callable: ...

    def at_step(self, step: int) -> None:
        """The optimizer step the next batches belong to (a source that samples by step reads it)."""

    def __call__(self, batch: dict) -> TeacherSignal: ...


class LiveTeacher:
    """Runs a frozen teacher on each batch (its own inputs when its tokenizer differs)."""

    def __init__(self, model: nn.Module, hidden_states: bool = False, tap=None):
        self.model = model
        self.hidden_states = hidden_states
        self.tap = tap
        model.eval()
        model.requires_grad_(False)

    def wrap_collate(self, collate: Callable) -> Callable:
        """A live teacher reads nothing in the loader: the collator is used as it is."""
        return collate

    def at_step(self, step: int) -> None:
        """One teacher: the step changes nothing."""

    @torch.no_grad()  # not inference_mode: its tensors could not be saved for the student's backward
    def __call__(self, batch: dict) -> TeacherSignal:
        inputs = batch.get("teacher") or batch["student"]
        out = self.model(**inputs, output_hidden_states=self.hidden_states or None)
        return TeacherSignal(
            logits=output_logits(out),
            hidden_states=tuple(out.hidden_states) if self.hidden_states else None,
            features=self.tap.pop() if self.tap is not None else {},
        )
