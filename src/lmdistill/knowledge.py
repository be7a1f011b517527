"""Intermediate knowledge: one registry entry per feature says what it reads, how it is extracted and compared.

A *match* (``distill.matches``) compares one teacher feature with one student feature. Every feature is one
:class:`Feature` in :data:`FEATURES`:

- what it reads from each model: hidden states (``outputs.hidden_states``, read by attribute) or the
  query / key / value projections of a layer (recorded by forward hooks, :class:`lmdistill.models.taps.FeatureTap`);
- how the teacher's side is kept in a teacher cache (every token, the first token, or the masked mean);
- which losses apply (the first is the default) and how the shapes must agree (widths through a learned
  projection, attention heads through a head rule, relation heads dividing both widths);
- the function that computes the per-match loss from both sides.

The objective (:mod:`lmdistill.objective`), the taps and the teacher cache (:mod:`lmdistill.signals`) all read
this table; adding a feature is one entry here (plus its loss in :mod:`lmdistill.losses.features`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from lmdistill.config.load import suggest
from lmdistill.config.schema import MatchConfig, ScheduleConfig
from lmdistill.errors import ConfigError, ModelError
from lmdistill.losses import features as F
from lmdistill.losses.reduce import masked_mean

# ---------------------------------------------------------------------------------------------- shapes


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
    def spec(self) -> Feature:
        return FEATURES[self.feature]

    @property
    def token_level(self) -> bool:
        return not self.spec.sentence


@dataclass
class Side:
    """One model's view of a batch for matching: its hidden states, tapped q/k/v, its tap (to turn q/k into
    attention with the model's head layout) and the attention mask of its inputs ``(B, T)``."""

    hidden_states: tuple[torch.Tensor, ...] | None
    features: dict[str, torch.Tensor]
    tap: object | None
    mask: torch.Tensor


# ---------------------------------------------------------------------------------------------- computing


def _hidden_state(m: Match, side: Side, layer: int | None) -> torch.Tensor:
    return side.hidden_states[0 if m.spec.embedding else layer + 1]


def _hidden_loss(m: Match, s: Side, t: Side, projection: nn.Module | None) -> torch.Tensor:
    """Hidden states, embeddings, [CLS] or mean-pooled states: MSE, cosine or Patient KD's normalised MSE."""
    hs, ht = _hidden_state(m, s, m.student_layer), _hidden_state(m, t, m.teacher_layer)
    if m.spec.pooled == "cls":
        hs, ht = hs[:, 0], ht[:, 0]
    elif m.spec.pooled == "mean":
        hs, ht = mean_pool(hs, s.mask), mean_pool(ht, t.mask)
    if projection is not None:
        hs = projection(hs)
    if m.loss == "cls_mse":
        return masked_mean(F.cls_normalized_mse(hs, ht))
    loss = F.hidden_mse(hs, ht) if m.loss == "mse" else F.hidden_cosine(hs, ht)
    return masked_mean(loss, s.mask if m.spec.pooled == "tokens" else None)


def _attention_loss(m: Match, s: Side, t: Side, projection: nn.Module | None) -> torch.Tensor:
    """Attention maps: KL between probabilities (MiniLM) or MSE between pre-softmax scores (TinyBERT)."""
    rows = F.row_mask(s.mask)
    if m.feature == "attention_scores" or m.loss == "mse":
        s_a = s.tap.attention_scores(s.features, m.student_layer)
        t_a = t.tap.attention_scores(t.features, m.teacher_layer)
        t_a = F.match_heads(s_a, t_a, m.head_rule or "select")
        return masked_mean(F.attention_mse(s_a, t_a, s.mask), rows)
    s_a = s.tap.attention_probs(s.features, m.student_layer, s.mask)
    t_a = t.tap.attention_probs(t.features, m.teacher_layer, s.mask)
    t_a = F.match_heads(s_a, t_a, m.head_rule or "select")
    return masked_mean(F.attention_kl(s_a, t_a, s.mask), rows)


def _relation_loss(m: Match, s: Side, t: Side, projection: nn.Module | None) -> torch.Tensor:
    """Self-attention relations (MiniLMv2): KL between softmax(X X^T / sqrt(d_r)) of q, k or v."""
    kind = m.feature[0]
    s_x, t_x = s.features[f"{kind}{m.student_layer}"], t.features[f"{kind}{m.teacher_layer}"]
    return masked_mean(F.relation_kl(s_x, t_x, m.relation_heads, s.mask), F.row_mask(s.mask))


def mean_pool(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens: ``(B, T, H), (B, T) -> (B, H)``."""
    w = mask.to(h.dtype).unsqueeze(-1)
    return (h * w).sum(1) / w.sum(1).clamp_min(1)


# ---------------------------------------------------------------------------------------------- shape rules


def _check_widths(c: MatchConfig, student: ModelShape, teacher: ModelShape, where: str) -> list[str]:
    if student.width != teacher.width and c.projection is False:
        return [
            f"{where}: student width {student.width} != teacher width {teacher.width}; "
            "set projection: true (or remove projection: false)"
        ]
    return []


def _check_heads(c: MatchConfig, student: ModelShape, teacher: ModelShape, where: str) -> list[str]:
    if student.heads != teacher.heads and c.head_rule is None:
        return [
            f"{where}: the student has {student.heads} attention heads and the teacher {teacher.heads}; "
            "set head_rule: average (teacher heads a multiple of the student's) or select"
        ]
    return []


def _relation_width(feature: str, shape: ModelShape) -> int:
    return (shape.heads if feature == "qq" else shape.kv_heads) * shape.head_dim


def _check_relation_heads(c: MatchConfig, student: ModelShape, teacher: ModelShape, where: str) -> list[str]:
    r = c.relation_heads or teacher.heads
    widths = {"student": _relation_width(c.feature, student), "teacher": _relation_width(c.feature, teacher)}
    bad = [f"{side} width {w}" for side, w in widths.items() if w % r]
    if bad:
        good = math.gcd(*widths.values())
        return [
            f"{where}: {r} relation heads do not divide the {' and '.join(bad)}; set relation_heads to a "
            f"divisor of both (e.g. {max(d for d in range(1, min(good, 64) + 1) if good % d == 0)})"
        ]
    return []


# ---------------------------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class Feature:
    """One kind of intermediate knowledge.

    losses: the loss names that apply (the first is the default).
    qkv: which projections of a tapped layer it reads ("" = it reads hidden states).
    pooled: ``tokens`` (every token), ``cls`` (first token) or ``mean`` (masked mean): also how the teacher's
        side is stored in a teacher cache.
    embedding: it reads the embedding output (``hidden_states[0]``), not a layer.
    sentence: one vector per text, so it works when teacher and student tokenize differently.
    projectable: a learned projection maps the student's width to the teacher's when they differ.
    relation: it has relation heads (``relation_heads``).
    compute: ``(match, student Side, teacher Side, projection or None) -> scalar loss``.
    check: ``(MatchConfig, student ModelShape, teacher ModelShape, where) -> problems``.
    """

    losses: tuple[str, ...]
    compute: Callable[[Match, Side, Side, nn.Module | None], torch.Tensor]
    check: Callable[[MatchConfig, ModelShape, ModelShape, str], list[str]]
    qkv: str = ""
    pooled: str = "tokens"
    embedding: bool = False
    sentence: bool = False
    projectable: bool = False
    relation: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def reads_hidden(self) -> bool:
        return not self.qkv


_HIDDEN = {"compute": _hidden_loss, "check": _check_widths, "projectable": True}
_ATTENTION = {"compute": _attention_loss, "check": _check_heads, "qkv": "qk"}
_RELATION = {"compute": _relation_loss, "check": _check_relation_heads, "relation": True}

FEATURES: dict[str, Feature] = {
    "embeddings": Feature(("mse", "cosine"), embedding=True, **_HIDDEN),
    "hidden": Feature(("mse", "cosine"), **_HIDDEN),
    "cls": Feature(("cls_mse", "mse", "cosine"), pooled="cls", sentence=True, **_HIDDEN),
    "mean": Feature(("mse", "cosine"), pooled="mean", sentence=True, **_HIDDEN),
    "attention": Feature(("kl", "mse"), **_ATTENTION),
    "attention_scores": Feature(("mse",), **_ATTENTION),
    "qq": Feature(("kl",), **{**_RELATION, "qkv": "q"}),
    "kk": Feature(("kl",), **{**_RELATION, "qkv": "k"}),
    "vv": Feature(("kl",), **{**_RELATION, "qkv": "v"}),
}
"""Every knowledge feature by config name (``distill.matches[].feature``)."""


# ---------------------------------------------------------------------------------------------- checks


def check_matches(matches: list[MatchConfig], key: str) -> list[str]:
    """Config-level problems of ``matches`` (feature names, losses, weights, layers), one line each."""
    from lmdistill.config.checks import check_schedule

    errors = []
    for i, m in enumerate(matches):
        where = f"{key}[{i}]"
        spec = FEATURES.get(m.feature)
        if spec is None:
            errors.append(
                f"{where}.feature '{m.feature}' is not a knowledge feature{suggest(m.feature, FEATURES)} "
                f"(known: {', '.join(FEATURES)})"
            )
            continue
        if m.loss is not None and m.loss not in spec.losses:
            errors.append(
                f"{where}.loss '{m.loss}' does not apply to feature {m.feature} "
                f"(use one of: {', '.join(spec.losses)})"
            )
        if not m.weight >= 0:
            errors.append(f"{where}.weight must be 0 or more, got {m.weight}")
        if (m.teacher_layer is None) != (m.student_layer is None):
            errors.append(
                f"{where}: give both teacher_layer and student_layer, or neither (then strategy pairs "
                "every student layer)"
            )
        if m.relation_heads is not None and m.relation_heads < 1:
            errors.append(f"{where}.relation_heads must be at least 1, got {m.relation_heads}")
        if m.relation_heads is not None and not spec.relation:
            errors.append(f"{where}.relation_heads applies only to qq, kk and vv, not {m.feature}")
        errors += check_schedule(m.schedule, f"{where}.schedule")
    return errors


# ---------------------------------------------------------------------------------------------- resolving


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
        spec = FEATURES[c.feature]
        loss = c.loss or spec.losses[0]
        if spec.embedding:
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
        errors += spec.check(c, student, teacher, where)
        projected = spec.projectable and (
            c.projection if c.projection is not None else student.width != teacher.width
        )
        heads = c.relation_heads or (teacher.heads if spec.relation else None)
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


# ---------------------------------------------------------------------------------------------- what to read


def tap_layers(matches: list[Match], side: str) -> dict[int, set[str]]:
    """Which of q, k, v each layer must record for these matches (``side``: student or teacher)."""
    layers: dict[int, set[str]] = {}
    for m in matches:
        if m.spec.qkv:
            layer = m.student_layer if side == "student" else m.teacher_layer
            layers.setdefault(layer, set()).update(m.spec.qkv)
    return layers


def teacher_hidden(matches: list[Match]) -> dict[int, set[str]]:
    """``hidden_states`` index (0 = embeddings) -> how the teacher's states are read there
    (``tokens``, ``cls``, ``mean``), for the matches that read hidden states."""
    modes: dict[int, set[str]] = {}
    for m in matches:
        if m.spec.reads_hidden:
            layer = 0 if m.spec.embedding else m.teacher_layer + 1
            modes.setdefault(layer, set()).add(m.spec.pooled)
    return modes


def refuse_token_level(matches: list[MatchConfig], separate: bool, key: str) -> None:
    """One line (:class:`ModelError`) when a token-level feature is matched across two tokenizers
    (``separate``): only sentence-level features (cls, mean) and output losses compare across tokenizations."""
    token_level = [m.feature for m in matches if not FEATURES[m.feature].sentence]
    if separate and token_level:
        raise ModelError(
            f"{key}.matches: feature '{token_level[0]}' is token-level and needs teacher and student to "
            "share one tokenizer, but their tokenizers differ; use sentence-level features (cls, mean), "
            "output losses (kd), or a student with the teacher's tokenizer"
        )
