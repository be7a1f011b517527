"""The training objective: named loss terms, each a pure loss from :mod:`lmdistill.losses`, weighted.

Two kinds of terms:

- output terms (``TERMS``, a plain name -> function dict): ``kd``, ``ce``, ``kd_mse``, ``mse``;
- intermediate matches (:class:`Match`): a teacher feature of one layer against a student feature of one
  layer (hidden states, embeddings, [CLS], attention, relations), through an optional learned projection.

The objective is an ``nn.Module`` so that projections train and save with the student. Weights and the
temperature may follow schedules; the engine sets :attr:`Objective.progress` (0 -> 1) before each step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from lmdistill.config import FEATURE_LOSSES, SENTENCE_FEATURES, MatchConfig, ScheduleConfig
from lmdistill.errors import ConfigError
from lmdistill.losses import features as F
from lmdistill.losses.logits import cross_entropy, soft_target_kl, squared_error
from lmdistill.losses.reduce import masked_mean
from lmdistill.models.projection import Projection
from lmdistill.signals.live import TeacherSignal


def scheduled(start: float, schedule: ScheduleConfig | None, progress: float) -> float:
    """The value of a schedule at ``progress`` in [0, 1]: constant, linear or cosine from start to end."""
    if schedule is None or schedule.kind == "constant" or schedule.end is None:
        return start
    if schedule.kind == "linear":
        return start + (schedule.end - start) * progress
    return schedule.end + (start - schedule.end) * 0.5 * (1.0 + math.cos(math.pi * progress))


# ---------------------------------------------------------------------------------------- output terms


def _kd(obj: Objective, out, signal: TeacherSignal, batch: dict) -> torch.Tensor:
    t = obj.temperature_now()
    kl = soft_target_kl(out.logits, signal.logits, t)
    return masked_mean(kl if obj.kd_scale_t2 else kl / t**2)


def _ce(obj: Objective, out, signal, batch: dict) -> torch.Tensor:
    return masked_mean(cross_entropy(out.logits, batch["labels"]))


def _kd_mse(obj: Objective, out, signal: TeacherSignal, batch: dict) -> torch.Tensor:
    return masked_mean(squared_error(out.logits, signal.logits))


def _mse(obj: Objective, out, signal, batch: dict) -> torch.Tensor:
    return masked_mean(squared_error(out.logits.squeeze(-1), batch["labels"]))


TERMS: dict[str, Callable[..., torch.Tensor]] = {"kd": _kd, "ce": _ce, "kd_mse": _kd_mse, "mse": _mse}
NEEDS_TEACHER = {"kd", "kd_mse"}


# ---------------------------------------------------------------------------------------- matches


@dataclass
class ModelShape:
    """What matching needs to know about a model."""

    layers: int
    width: int
    heads: int
    kv_heads: int
    head_dim: int

    @classmethod
    def of(cls, model: nn.Module) -> ModelShape:
        from lmdistill.models.student import num_layers
        from lmdistill.models.taps import attention_shape

        heads, kv_heads, head_dim = attention_shape(model.config)
        width = getattr(model.config, "hidden_size", None) or model.config.dim
        return cls(num_layers(model), width, heads, kv_heads, head_dim)


@dataclass
class Match:
    """A resolved match: layers are non-negative indices into the models' blocks."""

    name: str
    feature: str
    loss: str
    weight: float
    teacher_layer: int | None
    student_layer: int | None
    relation_heads: int | None = None
    head_rule: str | None = None
    schedule: ScheduleConfig | None = None
    projected: bool = False

    @property
    def token_level(self) -> bool:
        return self.feature not in SENTENCE_FEATURES


def pair_layers(strategy: str, n_student: int, n_teacher: int) -> list[tuple[int, int]]:
    """(student layer, teacher layer) pairs, 0-based.

    uniform/auto: student layer i <- teacher layer (i+1)*N/n - 1 (TinyBERT's g(m) = m*N/n), last to last;
    skip: the same without the student's last layer (PKD-Skip; the top is left to the output loss);
    last: student layers 0..n-2 <- teacher layers N-n..N-2 (PKD-Last); first: i <- i.
    """
    if strategy == "first":
        return [(i, i) for i in range(min(n_student, n_teacher))]
    if strategy == "last":
        return [(i, n_teacher - n_student + i) for i in range(n_student - 1)]
    pairs = [(i, round((i + 1) * n_teacher / n_student) - 1) for i in range(n_student)]
    return pairs[:-1] if strategy == "skip" else pairs


def _layer(index: int, total: int, key: str, side: str) -> int:
    resolved = index + total if index < 0 else index
    if not 0 <= resolved < total:
        raise ConfigError(
            [
                f"{key}.{side}_layer: layer {index} is outside the {side}, which has {total} layers "
                f"(valid indices 0..{total - 1}, or -1..-{total} from the end)"
            ]
        )
    return resolved


def resolve_matches(
    cfgs: list[MatchConfig], student: ModelShape, teacher: ModelShape, key: str = "distill.matches"
) -> list[Match]:
    """Expand strategies, resolve negative layers, check widths, heads and relation heads."""
    out: list[Match] = []
    errors: list[str] = []
    for i, c in enumerate(cfgs):
        where = f"{key}[{i}]"
        loss = c.loss or FEATURE_LOSSES[c.feature][0]
        if c.feature == "embeddings":
            pairs = [(None, None)]
        elif c.teacher_layer is not None:
            pairs = [
                (
                    _layer(c.student_layer, student.layers, where, "student"),
                    _layer(c.teacher_layer, teacher.layers, where, "teacher"),
                )
            ]
        else:
            pairs = pair_layers(c.strategy, student.layers, teacher.layers)
        errors += _check_shapes(c, student, teacher, where)
        projected = c.feature in ("embeddings", "hidden", "cls", "mean") and (
            c.projection if c.projection is not None else student.width != teacher.width
        )
        heads = c.relation_heads or (teacher.heads if c.feature in ("qq", "kk", "vv") else None)
        for s, t in pairs:
            layers = "" if s is None else f"_s{s}_t{t}"
            out.append(
                Match(
                    f"{c.feature}_{loss}{layers}",
                    c.feature,
                    loss,
                    c.weight,
                    t,
                    s,
                    heads,
                    c.head_rule,
                    c.schedule,
                    projected,
                )
            )
    if errors:
        raise ConfigError(errors)
    return out


def _check_shapes(c: MatchConfig, student: ModelShape, teacher: ModelShape, where: str) -> list[str]:
    if c.feature in ("embeddings", "hidden", "cls", "mean"):
        if student.width != teacher.width and c.projection is False:
            return [
                f"{where}: student width {student.width} != teacher width {teacher.width}; "
                "set projection: true (or remove projection: false)"
            ]
        return []
    if c.feature in ("attention", "attention_scores"):
        if student.heads != teacher.heads and c.head_rule is None:
            return [
                f"{where}: the student has {student.heads} attention heads and the teacher {teacher.heads}; "
                "set head_rule: average (teacher heads a multiple of the student's) or select"
            ]
        return []
    r = c.relation_heads or teacher.heads
    widths = {"student": _rel_width(c.feature, student), "teacher": _rel_width(c.feature, teacher)}
    bad = [f"{side} width {w}" for side, w in widths.items() if w % r]
    if bad:
        good = math.gcd(*widths.values())
        return [
            f"{where}: {r} relation heads do not divide the {' and '.join(bad)}; set relation_heads to a "
            f"divisor of both (e.g. {max(d for d in range(1, min(good, 64) + 1) if good % d == 0)})"
        ]
    return []


def _rel_width(feature: str, shape: ModelShape) -> int:
    return (shape.heads if feature == "qq" else shape.kv_heads) * shape.head_dim


def tap_layers(matches: list[Match], side: str) -> dict[int, set[str]]:
    """Which of q, k, v each layer must record for these matches (``side``: student or teacher)."""
    need = {"attention": "qk", "attention_scores": "qk", "qq": "q", "kk": "k", "vv": "v"}
    layers: dict[int, set[str]] = {}
    for m in matches:
        if m.feature in need:
            layer = m.student_layer if side == "student" else m.teacher_layer
            layers.setdefault(layer, set()).update(need[m.feature])
    return layers


# ---------------------------------------------------------------------------------------- the objective


class Objective(nn.Module):
    """Weighted sum of named terms. ``forward`` returns the unweighted terms; :meth:`total` weighs them."""

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
    ):
        super().__init__()
        self.weights = {k: float(w) for k, w in weights.items() if w > 0}
        self.matches = [m for m in matches if m.weight > 0]
        self.temperature = temperature
        self.temperature_schedule = temperature_schedule
        self.schedules = dict(loss_schedules or {})
        self.kd_scale_t2 = kd_scale_t2
        self.progress = 0.0
        self.projections = nn.ModuleDict(
            {m.name: Projection(student_width, teacher_width) for m in self.matches if m.projected}
        )
        self.student_tap = None
        self.teacher_tap = None

    # what the models must produce
    @property
    def needs_teacher(self) -> bool:
        return bool(self.matches) or any(k in NEEDS_TEACHER for k in self.weights)

    @property
    def needs_hidden(self) -> bool:
        return any(m.feature in ("embeddings", "hidden", "cls", "mean") for m in self.matches)

    @property
    def token_level(self) -> list[str]:
        return [m.name for m in self.matches if m.token_level]

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

    def forward(self, out, signal: TeacherSignal | None, batch: dict, feats: dict | None = None) -> dict:
        terms = {name: TERMS[name](self, out, signal, batch) for name in self.weights}
        for m in self.matches:
            terms[m.name] = self._match(m, out, feats or {}, signal, batch)
        return terms

    def total(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(self.weight_now(k) * v for k, v in terms.items())

    # one match
    def _match(self, m: Match, out, feats: dict, signal: TeacherSignal, batch: dict) -> torch.Tensor:
        s_mask = batch["student"]["attention_mask"]
        t_mask = batch["teacher"]["attention_mask"] if "teacher" in batch else s_mask
        if m.feature in ("embeddings", "hidden", "cls", "mean"):
            idx = 0 if m.feature == "embeddings" else None
            s = out.hidden_states[idx if idx is not None else m.student_layer + 1]
            t = signal.hidden_states[idx if idx is not None else m.teacher_layer + 1]
            if m.feature == "cls":
                s, t = s[:, 0], t[:, 0]
            elif m.feature == "mean":
                s, t = _mean_pool(s, s_mask), _mean_pool(t, t_mask)
            if m.projected:
                s = self.projections[m.name](s)
            if m.loss == "cls_mse":
                return masked_mean(F.cls_normalized_mse(s, t))
            loss = F.hidden_mse(s, t) if m.loss == "mse" else F.hidden_cosine(s, t)
            return masked_mean(loss, s_mask if m.feature in ("embeddings", "hidden") else None)
        rows = F.row_mask(s_mask)
        if m.feature in ("qq", "kk", "vv"):
            kind = m.feature[0]
            s_x, t_x = feats[f"{kind}{m.student_layer}"], signal.features[f"{kind}{m.teacher_layer}"]
            return masked_mean(F.relation_kl(s_x, t_x, m.relation_heads, s_mask), rows)
        if m.feature == "attention_scores" or m.loss == "mse":
            s_a = self.student_tap.attention_scores(feats, m.student_layer)
            t_a = self.teacher_tap.attention_scores(signal.features, m.teacher_layer)
            t_a = F.match_heads(s_a, t_a, m.head_rule or "select")
            return masked_mean(F.attention_mse(s_a, t_a, s_mask), rows)
        s_a = self.student_tap.attention_probs(feats, m.student_layer, s_mask)
        t_a = self.teacher_tap.attention_probs(signal.features, m.teacher_layer, s_mask)
        t_a = F.match_heads(s_a, t_a, m.head_rule or "select")
        return masked_mean(F.attention_kl(s_a, t_a, s_mask), rows)


def _mean_pool(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens: ``(B, T, H), (B, T) -> (B, H)``."""
    m = mask.to(h.dtype).unsqueeze(-1)
    return (h * m).sum(1) / m.sum(1).clamp_min(1)
