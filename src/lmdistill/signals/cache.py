"""The teacher's outputs on disk: run the teacher once, train every later epoch (and other students) from it.

A cache is a folder holding exactly what the configured losses read from the teacher, in 16-bit, as
memory-mapped ``.npy`` files, plus ``lmdistill-teacher-cache.json`` (the index):

- ``logits``: classification / regression heads ``(N, C)``; causal LMs ``(tokens, V)``, or with a top-k
  objective (``lm.top_k``) the :class:`~lmdistill.signals.sparse.TopKSignal` fields ``topk.indices``
  (int32), ``topk.logprobs`` ``(tokens, k)`` and ``topk.tail`` ``(tokens,)``;
- ``hidden{l}``: ``hidden_states[l]`` of the tapped teacher layers, ``(tokens, H)``; a layer read only by a
  ``cls`` (``mean``) match keeps only its first token (its masked mean): ``(N, H)``;
- ``q{l}``, ``k{l}``, ``v{l}``: the tapped query / key / value features ``(tokens, D)``.

Token-level fields are flattened over the real (non-padding) tokens of every example, in the order they
were written; ``starts`` and ``lengths`` (``(N,)`` int64, by example index) say where each example lies.

The index records three fingerprints: the teacher (SHA-256 of its weights as loaded, and its config), the
data (SHA-256 of the tokenised teacher inputs) and the feature set. :func:`open_or_build` reuses a cache
whose three fingerprints match and rebuilds one whose fingerprints differ (saying which changed).

:class:`CachedTeacher` has the call signature of :class:`~lmdistill.signals.live.LiveTeacher`:
``signal = cached(batch)`` looks examples up by ``batch["index"]`` and pads them to the batch's length.
The engine wraps the collator with :meth:`CachedTeacher.wrap_collate`, so the look-up happens in the data
loader on the host and the 16-bit arrays travel to the device with the batch (no host sync in the step).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lmdistill.losses.topk import TopKSignal
from lmdistill.signals.cache_build import (
    FORMAT,
    INDEX,
    build,
    check_location,
    clear,
    fingerprints,
    human,
    stale,
)
from lmdistill.signals.live import TeacherSignal
from lmdistill.signals.needs import KEY, CacheError, FeatureSet, feature_set

__all__ = [
    "CACHED",
    "FORMAT",
    "INDEX",
    "KEY",
    "CacheError",
    "CachedTeacher",
    "CachingCollator",
    "open_or_build",
]

CACHED = "teacher_cache"  # the batch key that carries looked-up arrays from the loader to the step


def open_or_build(
    path: str | Path,
    teacher: nn.Module,
    dataset,
    collate: Callable,
    objectives,
    *,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    autocast: torch.dtype | None = None,
    build_allowed: bool = True,
    log: Callable[[str], None] = print,
) -> CachedTeacher | None:
    """A :class:`CachedTeacher` for ``objectives`` over ``dataset``: the cache at ``path`` when its teacher,
    data and feature fingerprints match, else built (or rebuilt, with a message saying why).

    Returns None when no objective reads the teacher. ``build_allowed=False`` (processes other than the
    first of a distributed run) raises instead of building.
    """
    path = Path(path)
    features = feature_set(objectives)
    if features.empty:
        log("teacher cache: the losses read nothing from the teacher; not used")
        return None
    meta = check_location(path)
    prints, lengths = fingerprints(teacher, dataset, features)
    reason = "none exists yet" if meta is None else stale(meta, prints)
    if reason is None:
        log(
            f"teacher cache: reusing {path} ({meta['examples']} examples, {human(meta['bytes'])}; "
            "no teacher forward pass)"
        )
        return CachedTeacher(path)
    if not build_allowed:
        raise CacheError(
            f"{KEY}: no usable cache at '{path}' ({reason}); build it first with one process "
            "(`lmdistill cache CONFIG`), then start the distributed run"
        )
    if meta is not None:
        log(f"teacher cache at {path}: {reason}; rebuilding")
        clear(path, meta)
    was_training = teacher.training
    where = next(teacher.parameters()).device
    teacher.to(device)
    try:
        build(
            path,
            teacher,
            dataset,
            collate,
            features,
            prints=prints,
            lengths=lengths,
            batch_size=batch_size,
            device=device,
            autocast=autocast,
            log=log,
        )
    finally:
        teacher.to(where)
        teacher.train(was_training)
    return CachedTeacher(path)


# --------------------------------------------------------------------------------------- reading


@dataclass
class _Field:
    file: str
    per_token: bool
    dtype: str
    shape: list[int]
    array: np.ndarray | None = field(default=None, repr=False)


_PAD = {
    "topk.indices": 0,
    "topk.tail": float("-inf"),
}  # topk.logprobs: -log k (a proper distribution as filler)


class CachedTeacher:
    """Serves :class:`TeacherSignal` s from a cache folder, as :class:`LiveTeacher` does from a model."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        meta = check_location(self.path)
        if meta is None or not meta.get("complete"):
            raise CacheError(
                f"{KEY}: '{self.path}' holds no finished teacher cache; build one with "
                "`lmdistill cache CONFIG`"
            )
        self.meta = meta
        self.features = FeatureSet(
            **{
                k: tuple(tuple(x) if isinstance(x, list) else x for x in v) if isinstance(v, list) else v
                for k, v in meta["features"].items()
            }
        )
        self.fields = {name: _Field(**spec) for name, spec in meta["fields"].items()}
        self._open()

    def _open(self) -> None:
        self.starts = np.load(self.path / "starts.npy")
        self.lengths = np.load(self.path / "lengths.npy")
        for f in self.fields.values():
            f.array = np.load(self.path / f.file, mmap_mode="r")

    def __getstate__(self) -> dict:  # data-loader workers reopen the memory maps instead of copying them
        state = dict(self.__dict__)
        state["fields"] = {k: _Field(f.file, f.per_token, f.dtype, f.shape) for k, f in self.fields.items()}
        state.pop("starts", None)
        state.pop("lengths", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._open()

    def __len__(self) -> int:
        return len(self.lengths)

    def lookup(self, index: torch.Tensor, mask: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Host-side 16-bit arrays of examples ``index`` ``(B,)`` padded to ``mask`` ``(B, T)`` (the teacher
        inputs' attention mask): token-level ``(B, T, ...)``, per-example ``(B, ...)``. ``mask`` None: a cache
        of per-example fields only, read by a batch that does not hold this teacher's tokens (an ensemble's
        teacher with its own tokenizer)."""
        idx = index.cpu().numpy()
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise CacheError(
                f"{KEY}: example index {int(idx.max())} is outside the cache of {len(self)} examples; "
                "the cache belongs to other training data"
            )
        rows = None
        if mask is None:
            if any(f.per_token for f in self.fields.values()):
                raise CacheError(
                    f"{KEY}: '{self.path}' holds token-level outputs, which need the batch's tokens of "
                    "this teacher; delete the folder to rebuild it"
                )
        else:
            mask = mask.cpu().bool()
            lens = self.lengths[idx]
            if not np.array_equal(mask.sum(1).numpy(), lens):
                raise CacheError(
                    f"{KEY}: the batch's token counts differ from the cached examples' (the data or "
                    "tokenizer changed without the cache noticing); delete the cache folder to rebuild"
                )
            rows = np.repeat(self.starts[idx] - np.cumsum(lens) + lens, lens) + np.arange(int(lens.sum()))
        out = {}
        for name, f in self.fields.items():
            data = torch.from_numpy(np.ascontiguousarray(f.array[rows if f.per_token else idx]))
            if f.dtype == "bfloat16":
                data = data.view(torch.bfloat16)
            if f.per_token:
                fill = _PAD.get(name, -math.log(f.shape[-1]) if name == "topk.logprobs" else 0)
                padded = torch.full((*mask.shape, *f.shape), fill, dtype=data.dtype)
                padded[mask] = data
                data = padded
            out[name] = data
        return out

    def wrap_collate(self, collate: Callable) -> CachingCollator:
        """``collate`` followed by :meth:`lookup`, so look-ups run in the data loader."""
        return CachingCollator(collate, self)

    def at_step(self, step: int) -> None:
        """A cache of one teacher: the step changes nothing."""

    def __call__(self, batch: dict) -> TeacherSignal:
        stored = batch.get(CACHED)
        inputs = batch.get("teacher") or batch["student"]
        if stored is None:  # a batch from an unwrapped collator: look up here (a host sync on a GPU)
            stored = self.lookup(batch["index"], inputs["attention_mask"])
        device = inputs["attention_mask"].device
        get = {k: v.to(device, non_blocking=True) for k, v in stored.items()}
        f = self.features
        logits = None
        if "topk.indices" in get:
            logits = TopKSignal(
                get["topk.indices"].long(),
                get["topk.logprobs"].float(),
                get["topk.tail"].float(),
                f.temperature,
            )
        elif "logits" in get:
            logits = get["logits"].float()
        hidden = None
        if f.hidden:
            layers: list[torch.Tensor | None] = [None] * (max(layer for layer, _ in f.hidden) + 1)
            t = inputs["attention_mask"].shape[1]
            for layer, mode in f.hidden:
                h = get[f"hidden{layer}" + ("" if mode == "tokens" else f".{mode}")].float()
                # cls / mean: one vector per example, the same at every position (what those matches read)
                layers[layer] = h if mode == "tokens" else h[:, None, :].expand(-1, t, -1)
            hidden = tuple(layers)
        return TeacherSignal(
            logits=logits, hidden_states=hidden, features={name: get[name].float() for name in f.features}
        )


class CachingCollator:
    """A collator that also attaches the cached teacher arrays of the batch (``batch["teacher_cache"]``)."""

    def __init__(self, collate: Callable, cache: CachedTeacher):
        self.collate = collate
        self.cache = cache

    def __call__(self, items: list[dict]) -> dict:
        batch = self.collate(items)
        inputs = batch.get("teacher") or batch["student"]
        batch[CACHED] = self.cache.lookup(batch["index"], inputs["attention_mask"])
        return batch
