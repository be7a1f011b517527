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

import hashlib
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lmdistill.errors import LmdistillError
from lmdistill.signals.live import TeacherSignal
from lmdistill.signals.sparse import TopKSignal, topk_signal

FORMAT = 1
INDEX = "lmdistill-teacher-cache.json"
KEY = "training.teacher_cache"
CACHED = "teacher_cache"  # the batch key that carries looked-up arrays from the loader to the step


class CacheError(LmdistillError):
    """A teacher cache that cannot be used (not a cache, too little disk, data that does not match)."""


# --------------------------------------------------------------------------------------- what is stored


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
    """The :class:`FeatureSet` that serves every objective in ``objectives`` (e.g. the stages of a recipe)."""
    from lmdistill.objective import NEEDS_TEACHER, tap_layers

    logits, top_k, temperature, vocab = False, None, 1.0, None
    modes: dict[int, set[str]] = {}
    features: set[str] = set()
    for obj in objectives:
        if any(k in NEEDS_TEACHER for k in obj.weights):
            k = getattr(obj, "top_k", None)  # CausalLMObjective: the teacher reduced to its top-k
            sched = getattr(obj, "temperature_schedule", None)
            if (
                k
                and sched is not None
                and sched.kind != "constant"
                and sched.end not in (None, obj.temperature)
            ):
                raise CacheError(
                    f"{KEY}: a top-k cache holds log-probabilities at one temperature; remove "
                    "distill.temperature_schedule or lm.top_k, or set training.teacher_cache: null"
                )
            if logits and (k, obj.temperature if k else 1.0) != (top_k, temperature):
                raise CacheError(
                    f"{KEY}: the stages read top-k logits at different k or temperatures; give them "
                    "one distill.temperature, or set training.teacher_cache: null"
                )
            logits, top_k, temperature = True, k or None, float(obj.temperature) if k else 1.0
            vocab = getattr(obj, "vocab_size", None) or vocab
        for m in obj.matches:
            if m.feature in ("embeddings", "hidden"):
                modes.setdefault(0 if m.feature == "embeddings" else m.teacher_layer + 1, set()).add("tokens")
            elif m.feature in ("cls", "mean"):
                modes.setdefault(m.teacher_layer + 1, set()).add(m.feature)
        for layer, kinds in tap_layers(obj.matches, "teacher").items():
            features.update(f"{kind}{layer}" for kind in kinds)
    hidden = tuple(sorted((layer, next(iter(m)) if len(m) == 1 else "tokens") for layer, m in modes.items()))
    return FeatureSet(logits, top_k, temperature, vocab, hidden, tuple(sorted(features)))


# --------------------------------------------------------------------------------------- fingerprints


def _sha(chunks) -> str:
    h = hashlib.sha256()
    for c in chunks:
        h.update(c)
    return h.hexdigest()


def teacher_fingerprint(model: nn.Module) -> str:
    """SHA-256 of the teacher's weights as loaded (every tensor of its state dict) and its config."""
    cfg = model.config.to_dict() if hasattr(model, "config") else {}
    cfg = {
        k: v
        for k, v in cfg.items()
        if not k.startswith("_") and k not in ("transformers_version", "dtype", "torch_dtype", "name_or_path")
    }

    def chunks():
        yield json.dumps(cfg, sort_keys=True, default=str).encode()
        for name, t in model.state_dict().items():
            t = t.detach().to("cpu").contiguous()
            yield f"{name}:{t.dtype}:{tuple(t.shape)}".encode()
            if t.numel():
                yield t.reshape(-1).view(torch.uint8).numpy()  # hashed in place, not copied

    return _sha(chunks())


def _teacher_inputs(item: dict) -> dict:
    """The token blocks the teacher sees for one dataset item (its own, or the student's)."""
    for key in ("teacher", "student"):
        if key in item:
            return item[key]
    return {k: item[k] for k in ("input_ids", "token_type_ids") if k in item}


def data_fingerprint(dataset) -> tuple[str, np.ndarray]:
    """SHA-256 of the tokenised teacher inputs of every example, in order, and their lengths ``(N,)``."""
    lengths = np.empty(len(dataset), dtype=np.int64)

    def chunks():
        for i in range(len(dataset)):
            inputs = _teacher_inputs(dataset[i])
            lengths[i] = len(inputs["input_ids"])
            for k in sorted(inputs):
                yield k.encode() + np.asarray(inputs[k], dtype=np.int64).tobytes()

    return _sha(chunks()), lengths


def fingerprints(teacher: nn.Module, dataset, features: FeatureSet) -> tuple[dict[str, str], np.ndarray]:
    """``{"teacher", "data", "features"}`` digests, and the teacher-input lengths of the examples."""
    data, lengths = data_fingerprint(dataset)
    feats = _sha([json.dumps({"format": FORMAT, **asdict(features)}, sort_keys=True).encode()])
    return {"teacher": teacher_fingerprint(teacher), "data": data, "features": feats}, lengths


# --------------------------------------------------------------------------------------- one batch of outputs


def _fields(
    signal: TeacherSignal, mask: torch.Tensor, features: FeatureSet
) -> dict[str, tuple[torch.Tensor, bool]]:
    """Per field of one teacher batch: the tensor and whether it is token-level (``(B, T, ...)``, else
    ``(B, ...)``)."""
    fields: dict[str, tuple[torch.Tensor, bool]] = {}
    if features.logits:
        logits = signal.logits
        if logits is None:
            raise CacheError(f"{KEY}: the teacher returns no logits, but a loss reads them (kd / kd_mse)")
        per_token = logits.dim() == 3  # causal LM (B, T, V); heads (B, C)
        if features.vocab_size is not None and per_token:
            logits = logits[..., : features.vocab_size]
        if features.top_k and per_token:
            sig = topk_signal(logits.float(), features.top_k, features.temperature)
            fields.update(
                {
                    "topk.indices": (sig.indices.to(torch.int32), True),
                    "topk.logprobs": (sig.logprobs, True),
                    "topk.tail": (sig.tail_logprob, True),
                }
            )
        else:
            fields["logits"] = (logits, per_token)
    for layer, mode in features.hidden:
        h = signal.hidden_states[layer]
        if mode == "cls":
            h = h[:, 0]
        elif mode == "mean":
            m = mask.to(torch.float32).unsqueeze(-1)
            h = (h.float() * m).sum(1) / m.sum(1).clamp_min(1)
        fields[f"hidden{layer}" + ("" if mode == "tokens" else f".{mode}")] = (h, mode == "tokens")
    for name in features.features:
        fields[name] = (signal.features[name], True)
    return fields


class _Overflow(Exception):
    """A float32 value beyond the float16 range: the cache is rebuilt in bfloat16."""


def _to_16bit(x: torch.Tensor, dtype: torch.dtype, name: str) -> np.ndarray:
    """16-bit numpy copy of ``x`` (bfloat16 as its raw int16 bits; integers as int32)."""
    if not x.is_floating_point():
        return x.to(torch.int32).cpu().numpy()
    y = x.to(dtype)
    if dtype == torch.float16 and bool((torch.isinf(y) & torch.isfinite(x)).any()):
        raise _Overflow(name)
    y = y.cpu()
    return y.view(torch.int16).numpy() if dtype == torch.bfloat16 else y.numpy()


# --------------------------------------------------------------------------------------- building


def _estimate(shapes: dict[str, tuple[tuple[int, ...], bool, str]], n: int, tokens: int) -> int:
    total = 16 * n  # starts + lengths
    for trailing, per_token, dtype in shapes.values():
        size = 4 if dtype == "int32" else 2
        total += (tokens if per_token else n) * math.prod(trailing) * size
    return total


def _human(nbytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if nbytes < 1000 or unit == "TB":
            return f"{nbytes:.1f} {unit}" if unit != "B" else f"{int(nbytes)} B"
        nbytes /= 1000
    return ""


def _check_location(path: Path) -> dict | None:
    """The index of the cache at ``path`` (None when there is none yet); raises when ``path`` is no cache."""
    if path.exists() and not path.is_dir():
        raise CacheError(
            f"{KEY}: '{path}' is a file, not a teacher cache folder; give a new or empty folder, "
            "or auto (OUTPUT_DIR/teacher_cache)"
        )
    index = path / INDEX
    if not index.exists():
        if path.is_dir() and any(path.iterdir()):
            raise CacheError(
                f"{KEY}: '{path}' is a non-empty folder that is not a teacher cache (no {INDEX}); "
                "give a new or empty folder, or auto (OUTPUT_DIR/teacher_cache)"
            )
        return None
    try:
        meta = json.loads(index.read_text())
        if not isinstance(meta, dict) or meta.get("kind") != "lmdistill-teacher-cache":
            raise ValueError("not an lmdistill index")
    except (OSError, ValueError) as e:
        raise CacheError(
            f"{KEY}: '{index}' is not a readable teacher-cache index ({e}); delete the folder "
            "or choose another"
        ) from None
    return meta


def _clear(path: Path, meta: dict) -> None:
    """Remove the files a previous cache wrote (only those)."""
    for spec in meta.get("fields", {}).values():
        (path / spec["file"]).unlink(missing_ok=True)
    for name in ("starts.npy", "lengths.npy", INDEX):
        (path / name).unlink(missing_ok=True)


def build(
    path: Path,
    teacher: nn.Module,
    dataset,
    collate: Callable,
    features: FeatureSet,
    *,
    prints: dict[str, str],
    lengths: np.ndarray,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    autocast: torch.dtype | None = None,
    log: Callable[[str], None] = print,
) -> None:
    """Run ``teacher`` once over ``dataset`` (longest examples first) and write the cache at ``path``.

    Floats are stored in bfloat16 for a bfloat16 teacher and in float16 otherwise; a value beyond the
    float16 range starts the pass again in bfloat16.
    """
    from lmdistill.models.taps import FeatureTap
    from lmdistill.signals.live import LiveTeacher

    path.mkdir(parents=True, exist_ok=True)
    bf16 = next(teacher.parameters()).dtype == torch.bfloat16
    for dtype in (torch.bfloat16,) if bf16 else (torch.float16, torch.bfloat16):
        taps = features.tap_layers()
        tap = FeatureTap(teacher, taps) if taps else None
        live = LiveTeacher(teacher, hidden_states=bool(features.hidden), tap=tap)
        specs: dict[str, dict] = {}
        try:
            started = time.perf_counter()
            starts = _write(
                path,
                live,
                dataset,
                collate,
                features,
                lengths,
                specs,
                batch_size,
                device,
                autocast,
                dtype,
                log,
            )
            break
        except _Overflow as e:
            _clear(path, {"fields": specs})
            log(f"teacher cache: {e} exceeds the float16 range; writing bfloat16 instead")
        finally:
            if tap is not None:
                tap.remove()
    np.save(path / "starts.npy", starts)
    np.save(path / "lengths.npy", lengths)
    meta = {
        "kind": "lmdistill-teacher-cache",
        "format": FORMAT,
        "complete": True,
        "fingerprints": prints,
        "features": asdict(features),
        "examples": len(dataset),
        "tokens": int(lengths.sum()),
        "fields": specs,
        "bytes": sum((path / s["file"]).stat().st_size for s in specs.values()),
        "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "build_seconds": round(time.perf_counter() - started, 2),
        "device": str(device),
        "autocast": str(autocast) if autocast else None,
        "torch": torch.__version__,
    }
    tmp = path / (INDEX + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2))
    tmp.replace(path / INDEX)  # written last: a cache without a complete index is rebuilt


def _write(
    path: Path,
    live,
    dataset,
    collate: Callable,
    features: FeatureSet,
    lengths: np.ndarray,
    specs: dict[str, dict],
    batch_size: int,
    device,
    autocast,
    dtype: torch.dtype,
    log: Callable[[str], None],
) -> np.ndarray:
    """One teacher pass writing every field (``specs`` is filled as files are made); returns ``starts``."""
    from tqdm.auto import tqdm

    n, tokens = len(dataset), int(lengths.sum())
    starts = np.zeros(n, dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")  # longest first: an out-of-memory error comes at once
    arrays: dict[str, np.ndarray] = {}
    cursor = 0
    (path / INDEX).write_text(
        json.dumps({"kind": "lmdistill-teacher-cache", "format": FORMAT, "complete": False, "fields": specs})
    )
    dev_type = torch.device(device).type
    with tqdm(total=n, desc="teacher cache", dynamic_ncols=True) as bar:
        for chunk in np.array_split(order, max(1, math.ceil(n / batch_size))):
            batch = collate([dataset[int(i)] for i in chunk])
            side = "teacher" if "teacher" in batch else "student"
            batch = {**batch, side: {k: v.to(device, non_blocking=True) for k, v in batch[side].items()}}
            mask = batch[side]["attention_mask"].bool()
            with torch.autocast(dev_type, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
                fields = _fields(live(batch), mask, features)
            real = int(mask.sum())
            if real != int(lengths[chunk].sum()):
                raise CacheError(
                    f"{KEY}: a collated batch has {real} real tokens but its examples have "
                    f"{int(lengths[chunk].sum())}; this collator adds or drops tokens, so the teacher "
                    "cannot be cached: set training.teacher_cache: null"
                )
            if not arrays:  # the first batch fixes the shapes: estimate, check the disk, allocate
                _allocate(path, fields, n, tokens, dtype, features, arrays, specs, log)
            for name, (x, per_token) in fields.items():
                if per_token:
                    arrays[name][cursor : cursor + real] = _to_16bit(x[mask], dtype, name)
                else:
                    arrays[name][chunk] = _to_16bit(x, dtype, name)
            lens = lengths[chunk]
            starts[chunk] = cursor + np.cumsum(lens) - lens  # mask order: example by example, position order
            cursor += real
            bar.update(len(chunk))
    for a in arrays.values():
        a.flush()
    return starts


def _allocate(
    path: Path,
    fields: dict[str, tuple[torch.Tensor, bool]],
    n: int,
    tokens: int,
    dtype: torch.dtype,
    features: FeatureSet,
    arrays: dict,
    specs: dict,
    log: Callable[[str], None],
) -> None:
    kind = str(dtype).removeprefix("torch.")
    shapes = {
        name: (
            tuple(x.shape[2:] if per_token else x.shape[1:]),
            per_token,
            kind if x.is_floating_point() else "int32",
        )
        for name, (x, per_token) in fields.items()
    }
    need = _estimate(shapes, n, tokens)
    free = shutil.disk_usage(path).free
    log(
        f"teacher cache: {n} examples, {tokens} tokens; storing {features.describe()} in {kind}: about "
        f"{_human(need)} at {path} ({_human(free)} free)"
    )
    if need > 0.95 * free:
        dense = "logits" in shapes and shapes["logits"][1]
        raise CacheError(
            f"{KEY}: the cache needs about {_human(need)} but '{path}' has {_human(free)} free; "
            "choose a folder on a larger disk"
            + (", or set lm.top_k (e.g. 64) to store only the top-k logits" if dense else "")
        )
    for name, (trailing, per_token, k) in shapes.items():
        np_dtype = {"int32": np.int32, "bfloat16": np.int16, "float16": np.float16}[k]
        specs[name] = {"file": f"{name}.npy", "per_token": per_token, "dtype": k, "shape": list(trailing)}
        arrays[name] = np.lib.format.open_memmap(
            path / specs[name]["file"],
            mode="w+",
            dtype=np_dtype,
            shape=((tokens if per_token else n), *trailing),
        )


def _stale(meta: dict, prints: dict[str, str]) -> str | None:
    """Why a cache cannot be reused (None: it can)."""
    if not meta.get("complete"):
        return "it was not finished"
    if meta.get("format") != FORMAT:
        return f"it has format {meta.get('format')}, this lmdistill writes {FORMAT}"
    old = meta.get("fingerprints", {})
    changed = [what for what in ("teacher", "data", "features") if old.get(what) != prints[what]]
    if not changed:
        return None
    why = {
        "teacher": "the teacher changed (weights or config)",
        "data": "the training data changed",
        "features": "the losses read other teacher features",
    }
    return ", ".join(why[c] for c in changed)


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
    meta = _check_location(path)
    prints, lengths = fingerprints(teacher, dataset, features)
    reason = "none exists yet" if meta is None else _stale(meta, prints)
    if reason is None:
        log(
            f"teacher cache: reusing {path} ({meta['examples']} examples, {_human(meta['bytes'])}; "
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
        _clear(path, meta)
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
        meta = _check_location(self.path)
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

    def lookup(self, index: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Host-side 16-bit arrays of examples ``index`` ``(B,)`` padded to ``mask`` ``(B, T)`` (the teacher
        inputs' attention mask): token-level ``(B, T, ...)``, per-example ``(B, ...)``."""
        idx = index.cpu().numpy()
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise CacheError(
                f"{KEY}: example index {int(idx.max())} is outside the cache of {len(self)} examples; "
                "the cache belongs to other training data"
            )
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
