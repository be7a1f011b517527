"""What the losses read from the teacher: the description a live teacher, a cache build and a cache read share."""

from __future__ import annotations

from dataclasses import dataclass

from lmdistill.errors import LmdistillError

KEY = "training.teacher_cache"


class CacheError(LmdistillError):
    """A teacher cache that cannot be used (not a cache, too little disk, data that does not match)."""


@dataclass(frozen=True)
class FeatureSet:
    """What the losses read from the teacher (the union over a run's objectives).

    logits: the teacher's output logits are read (``kd``, ``kd_mse``).
    top_k: store the top-k signal instead of dense per-token logits (causal LMs with ``lm.top_k``).
    temperature: the temperature of the top-k log-probabilities.
    vocab_size: keep only the first ``vocab_size`` logits (the vocabulary shared with the student).
    hidden: ``(layer, mode)`` pairs, ``layer`` indexing ``hidden_states`` (0 = embeddings), mode ``tokens``,
        ``cls`` (first token only) or ``mean`` (masked mean only).
    features: tapped features such as ``("q3", "v3")``.
    """

    logits: bool = False
    top_k: int | None = None
    temperature: float = 1.0
    vocab_size: int | None = None
    hidden: tuple[tuple[int, str], ...] = ()
    features: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.logits or self.hidden or self.features)

    def tap_layers(self) -> dict[int, set[str]]:
        """Layer -> which of q, k, v to hook (the :class:`~lmdistill.models.taps.FeatureTap` argument)."""
        out: dict[int, set[str]] = {}
        for name in self.features:
            out.setdefault(int(name[1:]), set()).add(name[0])
        return out

    def describe(self) -> str:
        parts = []
        if self.logits:
            parts.append(f"top-{self.top_k} logits (T={self.temperature:g})" if self.top_k else "logits")
        for mode in ("tokens", "cls", "mean"):
            layers = [str(layer) for layer, m in self.hidden if m == mode]
            if layers:
                suffix = "" if mode == "tokens" else f" ({mode} only)"
                parts.append(f"hidden_states[{','.join(layers)}]{suffix}")
        if self.features:
            parts.append("features " + ",".join(self.features))
        return "; ".join(parts) or "nothing"


def feature_set(objectives) -> FeatureSet:
    """The :class:`FeatureSet` that serves every objective in ``objectives`` (e.g. the stages of a recipe).

    Each objective describes its own reads (``objective.teacher_reads()``: logits, top-k, temperature, the
    hidden states and tapped q/k/v of its matches); this merges them.
    """
    logits, top_k, temperature, vocab = False, None, 1.0, None
    modes: dict[int, set[str]] = {}
    features: set[str] = set()
    for obj in objectives:
        reads = obj.teacher_reads()
        if reads.logits:
            k = reads.top_k
            sched = obj.temperature_schedule
            if (
                k
                and sched is not None
                and sched.kind != "constant"
                and sched.end not in (None, reads.temperature)
            ):
                raise CacheError(
                    f"{KEY}: a top-k cache holds log-probabilities at one temperature; remove "
                    "distill.temperature_schedule or lm.top_k, or set training.teacher_cache: null"
                )
            if logits and (k, reads.temperature if k else 1.0) != (top_k, temperature):
                raise CacheError(
                    f"{KEY}: the stages read top-k logits at different k or temperatures; give them "
                    "one distill.temperature, or set training.teacher_cache: null"
                )
            logits, top_k, temperature = True, k or None, float(reads.temperature) if k else 1.0
            vocab = reads.vocab_size or vocab
        for layer, mode in reads.hidden:
            modes.setdefault(layer, set()).add(mode)
        features.update(reads.features)
    hidden = tuple(sorted((layer, next(iter(m)) if len(m) == 1 else "tokens") for layer, m in modes.items()))
    return FeatureSet(logits, top_k, temperature, vocab, hidden, tuple(sorted(features)))
