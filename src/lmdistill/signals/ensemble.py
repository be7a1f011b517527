"""Several teachers as ONE teacher signal, so every loss and the engine stay as they are for one teacher.

Each teacher's output logits ``z_i`` are first divided by its own temperature ``tau_i``; then

- ``mean_probs``: the target is ``log sum_i w_i softmax(z_i / tau_i)``, the log of the weighted mean of the
  teachers' probabilities (Hinton et al. 2015, "Distilling the Knowledge in a Neural Network", sec. 1: the
  arithmetic mean of the ensemble's predictions). Downstream ``softmax(target / T)`` with the KD temperature
  ``T = distill.temperature``: at ``T = 1`` exactly the mean of probabilities; at ``T != 1`` that mixture
  raised to ``1/T`` and renormalised (the same softening a single teacher's probabilities get);
- ``mean_logits``: ``sum_i w_i z_i / tau_i`` (the geometric mean of the probabilities, renormalised; also the
  mean of a regression ensemble's outputs and the mean of span logits);
- ``confidence``: the mean of probabilities with per-example weights ``a_i(x) = w_i c_i(x) / sum_j w_j c_j(x)``,
  ``c_i(x) = max_y softmax(z_i / tau_i)_y`` (each position separately for token-level outputs), which favours
  the teacher that is surest on that example.

Weights ``w_i`` are the configured ``teachers[i].weight`` normalised to sum 1.

SKD (Ding et al. 2023, "SKDBERT: Compressing BERT via Stochastic Knowledge Distillation", AAAI 37(6):7414-7422,
arXiv:2211.14466): each optimizer step draws ONE teacher ``i ~ p`` whose ``z_i / tau_i`` alone is the target.
The draw is a pure function of ``(seed, step)`` (:func:`draw`), so a resumed run draws exactly what an
uninterrupted one would, with no state in the checkpoint, and the counts are recomputed from the steps run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lmdistill.errors import ModelError
from lmdistill.signals.cache import CACHED, CachedTeacher
from lmdistill.signals.live import TeacherSignal, output_logits


def combine_logits(
    logits: Sequence[torch.Tensor], weights: Sequence[float], temperatures: Sequence[float], mode: str
) -> torch.Tensor:
    """One target from N teachers' logits (each ``(..., C)``, the same shape), in fp32; see the module docstring.

    mean_probs / confidence return log-probabilities over the last axis (a valid logit vector: its softmax is
    the combined distribution); mean_logits returns logits.
    """
    w = torch.tensor(weights, dtype=torch.float32, device=logits[0].device)
    w = w / w.sum()
    scaled = [z.float() / t for z, t in zip(logits, temperatures, strict=True)]
    if mode == "mean_logits":
        return sum(wi * z for wi, z in zip(w, scaled, strict=True))
    logp = torch.stack([F.log_softmax(z, dim=-1) for z in scaled])  # (N, ..., C)
    w = w.view(-1, *[1] * (logp.ndim - 1))  # (N, 1, ..., 1)
    if mode == "confidence":
        conf = logp.amax(dim=-1, keepdim=True).exp()  # (N, ..., 1): each teacher's top probability
        w = w * conf
        w = w / w.sum(dim=0, keepdim=True)
    elif mode != "mean_probs":
        raise ValueError(f"ensemble.combine must be mean_probs, mean_logits or confidence, got {mode!r}")
    return torch.logsumexp(logp + w.log(), dim=0)  # log sum_i w_i p_i, stable; w_i = 0 drops teacher i


def sampling_probs(
    mode: str, weights: Sequence[float], scores: Sequence[float] | None = None, temperature: float = 1.0
) -> torch.Tensor:
    """SKD's distribution over the teachers ``(N,)``: uniform, proportional to ``weights``, or
    ``softmax(scores / temperature)`` (validation; higher score = more draws)."""
    n = len(weights)
    if mode == "uniform":
        return torch.full((n,), 1.0 / n, dtype=torch.float64)
    if mode == "weights":
        w = torch.tensor(weights, dtype=torch.float64)
        return w / w.sum()
    if mode == "validation":
        if scores is None or len(scores) != n:
            raise ValueError("ensemble.sampling validation needs one score per teacher")
        return torch.softmax(torch.tensor(scores, dtype=torch.float64) / temperature, dim=0)
    raise ValueError(f"ensemble.sampling must be uniform, weights or validation, got {mode!r}")


def draw(seed: int, step: int, probs: torch.Tensor) -> int:
    """The teacher of optimizer step ``step``: one sample of ``probs`` from a generator seeded with
    ``seed * 1_000_003 + step`` (a pure function: the same on every process and after any resume)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return int(torch.multinomial(probs.double(), 1, generator=g))


def draw_counts(seed: int, steps: int, probs: torch.Tensor, start: int = 0) -> list[int]:
    """How often each teacher is drawn over optimizer steps ``start .. steps - 1``."""
    counts = [0] * len(probs)
    for step in range(start, steps):
        counts[draw(seed, step, probs)] += 1
    return counts


class EnsembleTeacher:
    """A :class:`~lmdistill.signals.live.SignalSource` over several frozen teachers (a teacher with its own
    tokenizer reads ``batch["teacher.<i>"]``, attached by the collator from ``inputs``; a cached one its cache).

    Every step either all teachers with a positive weight run and their logits are combined
    (:func:`combine_logits`), or (``probs`` given: SKD) only the drawn one runs. Hidden states and tapped
    features come from ``teachers[layers]`` alone (which then also runs every step); ``reads()`` returns
    ``(hidden_states wanted, feature tap)`` as the objective set them up (called per batch: the objective
    attaches its taps when training starts).
    """

    def __init__(
        self,
        teachers: Sequence[nn.Module],
        names: Sequence[str],
        weights: Sequence[float],
        temperatures: Sequence[float],
        *,
        combine: str = "mean_probs",
        probs: torch.Tensor | None = None,
        seed: int = 0,
        layers: int = 0,
        reads: Callable[[], tuple[bool, object]] = lambda: (False, None),
        caches: dict[int, CachedTeacher] | None = None,
        inputs: dict[int, Callable[[list[int]], dict]] | None = None,
    ):
        self.teachers, self.names = list(teachers), list(names)
        self.weights, self.temperatures = list(weights), list(temperatures)
        self.combine, self.probs, self.seed, self.layers = combine, probs, seed, layers
        self.reads = reads
        self.caches = caches or {}  # teacher index -> its cache (then its model never runs)
        self.inputs = inputs or {}  # teacher index -> its own inputs of examples (its tokenizer differs)
        self.step = 0
        for m in self.teachers:
            m.eval()
            m.requires_grad_(False)

    def wrap_collate(self, collate: Callable) -> Callable:
        """Live teachers read nothing in the loader; each cache looks its arrays up there."""
        return _Lookups(collate, self.caches, self.inputs) if self.caches or self.inputs else collate

    def at_step(self, step: int) -> None:
        """The engine's optimizer step of the next batches (SKD draws by it)."""
        self.step = step

    def chosen(self) -> list[int]:
        """The teachers whose outputs make this step's target."""
        if self.probs is not None:
            return [draw(self.seed, self.step, self.probs)]
        return [i for i, w in enumerate(self.weights) if w > 0]

    @torch.no_grad()
    def __call__(self, batch: dict) -> TeacherSignal:
        inputs = batch.get("teacher") or batch["student"]
        device = next(iter(inputs.values())).device
        hidden, tap = self.reads()
        chosen = self.chosen()
        logits, signal = {}, TeacherSignal()
        for i in sorted(set(chosen) | ({self.layers} if hidden or tap is not None else set())):
            mine = i == self.layers
            if i in self.caches:
                cached = self.caches[i]({**batch, CACHED: batch.get(f"{CACHED}.{i}")})
                logits[i] = cached.logits
                if mine:
                    signal.hidden_states, signal.features = cached.hidden_states, cached.features
                continue
            model = self.teachers[i]
            if next(model.parameters()).device != device:
                model.to(device)
            own = batch.get(f"teacher.{i}") or inputs  # its own tokenization, else the shared one
            out = model(**own, output_hidden_states=(hidden and mine) or None)
            logits[i] = output_logits(out)
            if mine:
                signal.hidden_states = tuple(out.hidden_states) if hidden else None
                signal.features = tap.pop() if tap is not None else {}
        signal.logits = self._target([logits[i] for i in chosen], chosen)
        return signal

    def _target(self, logits: list[torch.Tensor], chosen: list[int]) -> torch.Tensor:
        first = logits[0]
        for z, i in zip(logits, chosen, strict=True):
            if z.shape != first.shape:
                raise ModelError(
                    f"teachers: {self.names[i]} gives outputs of shape {tuple(z.shape)}, "
                    f"{self.names[chosen[0]]} {tuple(first.shape)}; output KD needs every teacher to have the "
                    "same labels (or vocabulary)"
                )
        temps = [self.temperatures[i] for i in chosen]
        if len(chosen) == 1:
            return first.float() / temps[0]
        return combine_logits(logits, [self.weights[i] for i in chosen], temps, self.combine)

    def summary(self, steps: int) -> dict:
        """What results.json records: the teachers, how they were combined or sampled, and (SKD) how often each
        was drawn over ``steps`` optimizer steps."""
        out: dict = {"teachers": self.names, "weights": self.weights, "temperatures": self.temperatures}
        if self.probs is None:
            out["combine"] = self.combine
        else:
            out["probabilities"] = [round(float(p), 6) for p in self.probs]
            out["draws"] = dict(zip(self.names, draw_counts(self.seed, steps, self.probs), strict=True))
        out["layers_from"] = self.names[self.layers]
        return out


class _Lookups:
    """A collator that attaches every teacher cache's arrays of the batch (``batch["teacher_cache.<i>"]``) and the
    inputs of every live teacher with its own tokenizer (``batch["teacher.<i>"]``)."""

    def __init__(self, collate: Callable, caches: dict[int, CachedTeacher], inputs: dict[int, Callable]):
        self.collate, self.caches, self.inputs = collate, caches, inputs

    def __call__(self, items: list[dict]) -> dict:
        batch = self.collate(items)
        mask = (batch.get("teacher") or batch["student"])["attention_mask"]
        for i, cache in self.caches.items():
            # a teacher with its own tokenizer has one cached output per example: looked up by index alone
            batch[f"{CACHED}.{i}"] = cache.lookup(batch["index"], None if i in self.inputs else mask)
        for i, inputs in self.inputs.items():
            if i not in self.caches:
                batch[f"teacher.{i}"] = inputs(batch["index"].tolist())
        return batch
