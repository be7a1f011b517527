"""Building a teacher cache: one teacher pass over the training data, written as 16-bit memory-mapped arrays.

The format is described in :mod:`lmdistill.signals.cache` (which also reads it and decides when to build).
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lmdistill.losses.topk import topk_signal
from lmdistill.signals.live import TeacherSignal
from lmdistill.signals.needs import KEY, CacheError, FeatureSet

FORMAT = 1
INDEX = "lmdistill-teacher-cache.json"

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


def human(nbytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if nbytes < 1000 or unit == "TB":
            return f"{nbytes:.1f} {unit}" if unit != "B" else f"{int(nbytes)} B"
        nbytes /= 1000
    return ""


def check_location(path: Path) -> dict | None:
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


def clear(path: Path, meta: dict) -> None:
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
            clear(path, {"fields": specs})
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
        f"{human(need)} at {path} ({human(free)} free)"
    )
    if need > 0.95 * free:
        dense = "logits" in shapes and shapes["logits"][1]
        raise CacheError(
            f"{KEY}: the cache needs about {human(need)} but '{path}' has {human(free)} free; "
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


def stale(meta: dict, prints: dict[str, str]) -> str | None:
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
