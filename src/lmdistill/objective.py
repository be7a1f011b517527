"""The training objective: named loss terms, each a pure loss from :mod:`lmdistill.losses`, weighted.

Two kinds of terms:

- output terms (:class:`Term`, by name in ``Objective.terms``): the class's own (``kd``, ``ce``, ``kd_mse``,
  ``mse`` here; each task's objective adds or replaces them, e.g. ``lm`` for causal LMs);
- intermediate matches (:class:`~lmdistill.knowledge.Match`): a teacher feature of one layer against a student
  feature of one layer, computed by the feature's entry in :data:`lmdistill.knowledge.FEATURES`.

Output-level knowledge distillation is ONE path for every task, :meth:`Objective.kd`: the divergence named by
``distill.divergence`` (:mod:`lmdistill.losses.divergences`: forward KL, reverse KL, JSD, skew KLs, TVD) between
the teacher's and the student's distributions at temperature T, averaged over the valid positions, times T^2
when ``distill.kd_scale_t2`` (Hinton et al. 2015: keeps the soft term's gradient scale independent of T when a
hard-label term is mixed in). T^2 is applied there (:meth:`Objective.scale_kd`) and nowhere else.

The objective is an ``nn.Module`` so that projections train and save with the student. Weights and the
temperature may follow schedules; the engine sets :attr:`Objective.progress` (0 -> 1) before each step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from lmdistill.config.schema import ScheduleConfig
from lmdistill.knowledge import (  # noqa: F401 - re-exported: the objective's public vocabulary
    FEATURES,
    Match,
    ModelShape,
    Side,
    pair_layers,
    resolve_matches,
    tap_layers,
    teacher_hidden,
)
from lmdistill.losses.divergences import DIVERGENCES, chunked_divergence
from lmdistill.losses.logits import cross_entropy, squared_error
from lmdistill.losses.reduce import masked_mean
from lmdistill.losses.topk import TopKSignal
from lmdistill.models.projection import Projection
from lmdistill.signals.live import TeacherSignal
from lmdistill.signals.needs import FeatureSet


def scheduled(start: float, schedule: ScheduleConfig | None, progress: float) -> float:
    """The value of a schedule at ``progress`` in [0, 1]: constant, linear or cosine from start to end."""
    if schedule is None or schedule.kind == "constant" or schedule.end is None:
        return start
    if schedule.kind == "linear":
        return start + (schedule.end - start) * progress
    return schedule.end + (start - schedule.end) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class Term:
    """An output-level loss term: ``fn(objective, student_outputs, teacher_signal, batch) -> scalar``.

    teacher_logits: it reads the teacher's output logits (so a live teacher or a cache must provide them);
    teacher: it reads anything of the teacher; hidden: it reads hidden states of both models.
    """

    fn: Callable[..., torch.Tensor]
    teacher_logits: bool = False
    teacher: bool = False
    hidden: bool = False


# ---------------------------------------------------------------------------------------------- output terms
# for heads that give one vector of logits per example, (B, C): classifiers and regressors


def _kd(obj: Objective, out, signal: TeacherSignal, batch: dict) -> torch.Tensor:
    return obj.kd(out.logits, signal.logits)


def _ce(obj: Objective, out, signal, batch: dict) -> torch.Tensor:
    labels = batch[
        "labels"
    ]  # -100: an unlabelled example (transfer text, augmented copy): no hard-label term
    return masked_mean(cross_entropy(out.logits, labels), labels != -100)


def _kd_mse(obj: Objective, out, signal: TeacherSignal, batch: dict) -> torch.Tensor:
    return masked_mean(squared_error(out.logits, signal.logits))


def _mse(obj: Objective, out, signal, batch: dict) -> torch.Tensor:
    labels = batch["labels"]  # NaN: an unlabelled example (transfer text, augmented copy): no regression term
    known = ~torch.isnan(labels)
    return masked_mean(squared_error(out.logits.squeeze(-1), torch.where(known, labels, 0.0)), known)


OUTPUT_TERMS: dict[str, Term] = {
    "kd": Term(_kd, teacher_logits=True, teacher=True),
    "ce": Term(_ce),
    "kd_mse": Term(_kd_mse, teacher_logits=True, teacher=True),
    "mse": Term(_mse),
}
"""kd: soft targets (the configured divergence, Hinton et al. 2015); ce: hard labels; kd_mse: MSE to the
teacher's logits (Ba & Caruana 2014); mse: MSE to regression targets."""


# ---------------------------------------------------------------------------------------------- the objective


class Objective(nn.Module):
    """Weighted sum of named terms. ``forward`` returns the unweighted terms; :meth:`total` weighs them.

    Args:
        weights: term or match name -> weight (terms with weight 0 are dropped).
        temperature: softens teacher and student alike in ``kd``.
        matches: resolved intermediate matches.
        student_width, teacher_width: for the learned projections of projected matches.
        temperature_schedule, loss_schedules: how the temperature and the weights move over training.
        kd_scale_t2: multiply ``kd`` by T^2.
        divergence, beta, alpha: the divergence of ``kd`` and its parameter (jsd: beta; skew_*: alpha).
        chunk_size: positions per chunk for token-level ``kd`` over large vocabularies (None: not chunked).
        vocab_size: logits kept on both sides (a shared, unpadded vocabulary); None: all.
        top_k: the teacher is reduced to its k most likely tokens plus the tail (None: dense).
    """

    terms: dict[str, Term] = OUTPUT_TERMS

    def __init__(
        self,
        weights: dict[str, float],
        temperature: float = 1.0,
        *,
        matches: list[Match] = (),
        student_width: int | None = None,
        teacher_width: int | None = None,
        temperature_schedule: ScheduleConfig | None = None,
        loss_schedules: dict[str, ScheduleConfig] | None = None,
        kd_scale_t2: bool = True,
        divergence: str = "forward_kl",
        beta: float = 0.5,
        alpha: float = 0.1,
        chunk_size: int | None = None,
        vocab_size: int | None = None,
        top_k: int | None = None,
    ):
        super().__init__()
        self.weights = {k: float(w) for k, w in weights.items() if w > 0}
        self.matches = [m for m in matches if m.weight > 0]
        self.temperature = temperature
        self.temperature_schedule = temperature_schedule
        self.schedules = dict(loss_schedules or {})
        self.kd_scale_t2 = kd_scale_t2
        if divergence not in DIVERGENCES:
            raise ValueError(
                f"distill.divergence '{divergence}' is unknown; choose one of {', '.join(DIVERGENCES)}"
            )
        self.divergence = divergence
        self.params = {
            "jsd": {"beta": beta},
            "skew_forward_kl": {"alpha": alpha},
            "skew_reverse_kl": {"alpha": alpha},
        }
        self.params = self.params.get(divergence, {})
        self.chunk_size = chunk_size
        self.vocab_size = vocab_size
        self.top_k = top_k
        self.progress = 0.0
        self.projections = nn.ModuleDict(
            {m.name: Projection(student_width, teacher_width) for m in self.matches if m.projected}
        )
        self.student_tap = None
        self.teacher_tap = None

    # what the models must produce
    @property
    def needs_teacher(self) -> bool:
        return bool(self.matches) or any(self.terms[k].teacher for k in self.weights)

    @property
    def needs_hidden(self) -> bool:
        return any(m.spec.reads_hidden for m in self.matches) or any(
            self.terms[k].hidden for k in self.weights
        )

    @property
    def token_level(self) -> list[str]:
        return [m.name for m in self.matches if m.token_level]

    @property
    def rewrites_batches(self) -> bool:
        """True when :meth:`prepare_batch` may replace a batch (e.g. by the student's own samples), which then
        needs the live teacher even when a cache serves the other batches: by default, when a subclass
        overrides :meth:`prepare_batch`."""
        return type(self).prepare_batch is not Objective.prepare_batch

    def prepare_batch(self, batch: dict, student: nn.Module) -> dict:
        """The batch to train on (the engine calls this before the teacher runs); here: the batch itself."""
        return batch

    def teacher_reads(self) -> FeatureSet:
        """What these terms and matches read from the teacher (for a teacher cache)."""
        logits = any(self.terms[k].teacher_logits for k in self.weights)
        hidden = tuple(
            sorted((layer, mode) for layer, modes in teacher_hidden(self.matches).items() for mode in modes)
        )
        taps = tap_layers(self.matches, "teacher")
        features = tuple(sorted(f"{kind}{layer}" for layer, kinds in taps.items() for kind in kinds))
        return FeatureSet(logits, self.top_k, float(self.temperature), self.vocab_size, hidden, features)

    def attach(self, student: nn.Module, teacher: nn.Module | None) -> None:
        """Hook the q/k/v projections that the matches read (only the tapped layers)."""
        from lmdistill.models.taps import FeatureTap

        s_layers, t_layers = tap_layers(self.matches, "student"), tap_layers(self.matches, "teacher")
        self.student_tap = FeatureTap(student, s_layers) if s_layers else None
        self.teacher_tap = FeatureTap(teacher, t_layers) if t_layers and teacher is not None else None

    def detach(self) -> None:
        """Remove every hook :meth:`attach` added."""
        for tap in (self.student_tap, self.teacher_tap):
            if tap is not None:
                tap.remove()
        self.student_tap = self.teacher_tap = None

    def temperature_now(self) -> float:
        return scheduled(self.temperature, self.temperature_schedule, self.progress)

    def weight_now(self, name: str) -> float:
        match = next((m for m in self.matches if m.name == name), None)
        if match is not None:
            return scheduled(match.weight, match.schedule, self.progress)
        return scheduled(self.weights[name], self.schedules.get(name), self.progress)

    # the terms
    def kd(
        self,
        student_logits: torch.Tensor,
        teacher: torch.Tensor | TopKSignal,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Output-level KD, the one path of every task: ``masked_mean`` over the valid positions of the
        configured divergence between the teacher's and the student's distributions at the current
        temperature, times ``T**2`` when ``kd_scale_t2``.

        ``student_logits``: ``(B, C)`` (one distribution per example) or ``(B, T, V)`` (per token);
        ``teacher``: logits of the same shape, or a :class:`TopKSignal` ``(B, T, k)``; ``mask``: ``(B,)`` or
        ``(B, T)`` bool of the positions that count (None: all). Token-level terms with ``chunk_size`` are
        computed chunk by chunk (no float32 copy of the whole ``(B, T, V)``).
        """
        t = self.temperature_now()
        if self.chunk_size is not None:
            value = chunked_divergence(
                self.divergence,
                student_logits,
                teacher,
                mask,
                chunk_size=self.chunk_size,
                temperature=t,
                **self.params,
            )
        else:
            if mask is not None:  # select the rows first: no divergence is computed on padding
                mask = mask.bool()
                student_logits = student_logits[mask]
                teacher = (
                    teacher.take_rows(mask.reshape(-1).nonzero().squeeze(-1))
                    if isinstance(teacher, TopKSignal)
                    else teacher[mask]
                )
            value = masked_mean(DIVERGENCES[self.divergence](student_logits, teacher, t, **self.params))
        return self.scale_kd(value, t)

    def scale_kd(self, value: torch.Tensor, temperature: float) -> torch.Tensor:
        """A KD value computed at ``temperature``, times ``T**2`` when ``kd_scale_t2``: the one place of that
        factor (:meth:`kd`, and KD terms that cannot take its path, e.g. across tokenizers or fused with the
        LM head)."""
        return value * temperature**2 if self.kd_scale_t2 else value

    def forward(self, out, signal: TeacherSignal | None, batch: dict, feats: dict | None = None) -> dict:
        terms = {name: self.terms[name].fn(self, out, signal, batch) for name in self.weights}
        for m in self.matches:
            terms[m.name] = self._match(m, out, feats or {}, signal, batch)
        return terms

    def total(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(self.weight_now(k) * v for k, v in terms.items())

    def _match(self, m: Match, out, feats: dict, signal: TeacherSignal, batch: dict) -> torch.Tensor:
        s_mask = batch["student"]["attention_mask"]
        t_mask = batch["teacher"]["attention_mask"] if "teacher" in batch else s_mask
        student = Side(getattr(out, "hidden_states", None), feats, self.student_tap, s_mask)
        teacher = Side(signal.hidden_states, signal.features, self.teacher_tap, t_mask)
        return m.spec.compute(m, student, teacher, self.projections[m.name] if m.projected else None)
