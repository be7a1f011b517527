"""Measurements of one model for the compression report: size, speed, memory, energy, and the machine.

Every function returns a plain dict (JSON-serialisable) that says how its figures were obtained, so the
report can show the method next to the number. Nothing is invented: where a figure cannot be measured
the dict says ``measured: False`` and gives the ``reason``.

* :func:`count_parameters`, :func:`size_on_disk`: how big a model is.
* :func:`prepare_batches`, :func:`run_inference`: inputs tokenised once, one forward pass over them.
* :func:`measure_latency`: seconds per batch over repeated timed runs (batch 1 for latency, a larger
  batch for throughput: two calls).
* :func:`peak_memory`, :func:`inference_peak_memory`: memory high-water mark while a function runs.
* :func:`track_energy`, :func:`measure_energy`: energy and CO2 through codecarbon's offline tracker.
* :func:`environment_info`: hardware, library versions and the command line.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import importlib.metadata
import logging
import math
import os
import platform
import re
import shlex
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lmdistill.errors import ModelError

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".onnx")
NOT_WEIGHTS = ("training_args", "optimizer", "scheduler", "rng_state")  # Trainer files with those suffixes
LIBRARIES = (
    "torch",
    "transformers",
    "accelerate",
    "datasets",
    "numpy",
    "codecarbon",
    "matplotlib",
    "lmdistill",
)


# --------------------------------------------------------------------------------------------- size


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Parameter counts: ``total``, ``embeddings``, ``without_embeddings`` and ``trainable``.

    Embeddings are all parameters of ``nn.Embedding`` modules (word, position, token-type). A parameter
    shared between modules (tied input/output embeddings) is counted once, as an embedding.
    """
    params = {id(p): p for p in model.parameters()}
    embedding = {
        id(p): p for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters(recurse=False)
    }
    total = sum(p.numel() for p in params.values())
    emb = sum(p.numel() for p in embedding.values())
    trainable = sum(p.numel() for p in params.values() if p.requires_grad)
    return {"total": total, "embeddings": emb, "without_embeddings": total - emb, "trainable": trainable}


def _is_weight_file(path: Path) -> bool:
    return path.suffix in WEIGHT_SUFFIXES and not path.name.startswith(NOT_WEIGHTS)


def size_on_disk(path: str | Path) -> dict[str, int]:
    """Bytes of a saved model folder: ``weights_bytes`` (``*.safetensors``, ``*.bin``, ``*.pt``,
    ``*.pth``, ``*.onnx``, not optimizer/scheduler/training-args files), ``total_bytes`` (every file), and the
    number of ``weight_files``. Sub-folders are included; symlinks (Hub cache) count their target."""
    root = Path(path)
    if not root.is_dir():
        raise ModelError(f"{root}: not a folder; size_on_disk needs the folder of a saved model")
    files = [f for f in root.rglob("*") if f.is_file()]
    weights = [f for f in files if _is_weight_file(f)]
    if not weights:
        raise ModelError(f"{root}: no weight files ({', '.join('*' + s for s in WEIGHT_SUFFIXES)})")
    return {
        "weights_bytes": sum(f.stat().st_size for f in weights),
        "total_bytes": sum(f.stat().st_size for f in files),
        "weight_files": len(weights),
    }


# --------------------------------------------------------------------------------------------- inputs


def _pad(encoding: Mapping[str, Sequence[Sequence[int]]], pad_id: int, device: torch.device) -> dict:
    width = max(len(row) for row in encoding["input_ids"])
    batch = {}
    for key, rows in encoding.items():
        fill = pad_id if key == "input_ids" else 0
        padded = [list(row) + [fill] * (width - len(row)) for row in rows]
        batch[key] = torch.tensor(padded, dtype=torch.long, device=device)
    return batch


def prepare_batches(
    tokenizer: Any,
    texts: Sequence[str],
    *,
    batch_size: int,
    max_length: int = 128,
    text_pairs: Sequence[str] | None = None,
    device: str | torch.device = "cpu",
) -> list[dict[str, torch.Tensor]]:
    """Tokenise once into full batches of ``batch_size`` (texts are cycled to fill the last one).

    Each batch is truncated to ``max_length`` tokens and right-padded to its longest row, with the
    tokenizer's pad id (0 where it has none: the attention mask hides those positions anyway), so the
    tokenizer is never modified.
    """
    if batch_size < 1 or not texts:
        raise ValueError("prepare_batches needs batch_size >= 1 and at least one text")
    if text_pairs is not None and len(text_pairs) != len(texts):
        raise ValueError(f"text_pairs has {len(text_pairs)} entries for {len(texts)} texts")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    order = [i % len(texts) for i in range(math.ceil(len(texts) / batch_size) * batch_size)]
    batches = []
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        pairs = [text_pairs[i] for i in rows] if text_pairs is not None else None
        encoding = tokenizer([texts[i] for i in rows], pairs, truncation=True, max_length=max_length)
        batches.append(_pad(encoding, pad_id, torch.device(device)))
    return batches


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """model.eval() and torch.inference_mode() inside; the previous train/eval mode is restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield model
    finally:
        model.train(was_training)


def run_inference(model: nn.Module, batches: Sequence[Mapping[str, torch.Tensor]]) -> int:
    """One forward pass over every batch (eval and inference mode); returns the number of examples."""
    with _eval_mode(model):
        for batch in batches:
            model(**batch)
    return sum(len(batch["input_ids"]) for batch in batches)


# --------------------------------------------------------------------------------------------- speed


def cpu_model() -> str:
    """The CPU's marketing name (Linux /proc/cpuinfo), else what ``platform`` knows."""
    with contextlib.suppress(OSError):
        found = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
        if found:
            return found.group(1).strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def device_name(device: str | torch.device) -> str:
    """GPU name for a CUDA device, the CPU model otherwise."""
    device = torch.device(device)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_runs(
    model: nn.Module, batches: list[dict], device: torch.device, repeats: int, warmup: int
) -> list:
    """Seconds of each timed forward pass; ``warmup`` untimed passes first. Batches are used in turn."""
    times = []
    with _eval_mode(model):
        for i in range(warmup):
            model(**batches[i % len(batches)])
        _sync(device)
        for i in range(repeats):
            batch = batches[(warmup + i) % len(batches)]
            start = time.perf_counter()
            model(**batch)
            _sync(device)
            times.append(time.perf_counter() - start)
    return times


def measure_latency(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    batch_size: int,
    device: str | torch.device = "cpu",
    repeats: int = 20,
    warmup: int = 3,
    max_length: int = 128,
    text_pairs: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Seconds per forward pass of one batch, over ``repeats`` timed runs after ``warmup`` untimed ones.

    Inputs are tokenised once before timing (:func:`prepare_batches`); the model is moved to ``device``
    in place (``nn.Module.to``) and run in eval and inference mode; on CUDA each run ends with a
    synchronize. Returns median/p10/p90/mean/std seconds per batch, ``n`` timed runs, ``examples_per_s``
    (all timed examples over all timed seconds), ``threads`` (torch intra-op threads) and the device name.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError("measure_latency needs repeats >= 1 and warmup >= 0")
    dev = torch.device(device)
    batches = prepare_batches(
        tokenizer, texts, batch_size=batch_size, max_length=max_length, text_pairs=text_pairs, device=dev
    )
    model.to(dev)
    times = np.asarray(_time_runs(model, batches, dev, repeats, warmup))
    tokens = [batches[(warmup + i) % len(batches)]["input_ids"].numel() for i in range(repeats)]
    return {
        "device": dev.type,
        "device_name": device_name(dev),
        "threads": torch.get_num_threads(),
        "batch_size": batch_size,
        "max_length": max_length,
        "warmup": warmup,
        "n": repeats,
        "median_s": float(np.median(times)),
        "p10_s": float(np.percentile(times, 10)),
        "p90_s": float(np.percentile(times, 90)),
        "mean_s": float(times.mean()),
        "std_s": float(times.std(ddof=1)) if repeats > 1 else 0.0,
        "examples_per_s": float(batch_size * repeats / times.sum()),
        "padded_tokens_per_batch": float(np.mean(tokens)),
    }


# --------------------------------------------------------------------------------------------- memory

_PROC_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_bytes(field: str) -> int:
    found = re.search(rf"^{field}:\s+(\d+) kB", _PROC_STATUS.read_text(), re.MULTILINE)
    if not found:
        raise OSError(f"{field} not in {_PROC_STATUS}")
    return int(found.group(1)) * 1024


def _release_free_heap() -> bool:
    """glibc's malloc_trim(0): give freed heap pages back to the OS, so that memory a call allocates
    shows up in the RSS again instead of reusing pages an earlier call left resident."""
    try:
        return bool(ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0) >= 0)
    except (OSError, AttributeError, TypeError):
        return False


def _reset_linux_peak() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process; False where that is not possible."""
    try:
        _CLEAR_REFS.write_text("5")
        return _status_bytes("VmHWM") > 0
    except OSError:
        return False


def _cuda_peak(fn: Callable[[], Any], device: torch.device) -> dict[str, Any]:
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    method = (
        "torch.cuda.max_memory_allocated, reset before the call: tensors PyTorch allocated on the GPU, "
        "without the CUDA context and the caching allocator's reserve"
    )
    return {
        "high_water_bytes": torch.cuda.max_memory_allocated(device),
        "before_bytes": before,
        "method": method,
    }


def _linux_peak(fn: Callable[[], Any]) -> dict[str, Any]:
    trimmed = _release_free_heap()
    if not _reset_linux_peak():
        raise OSError("cannot reset VmHWM")
    before = _status_bytes("VmRSS")
    fn()
    method = (
        "Linux VmHWM (the kernel's peak resident set size of this process) reset just before the call"
        + (
            "; freed heap pages released first (malloc_trim)"
            if trimmed
            else "; pages freed by earlier work "
            "were not released first (no glibc malloc_trim), so the increase can be underestimated"
        )
    )
    return {"high_water_bytes": _status_bytes("VmHWM"), "before_bytes": before, "method": method}


def _sampled_peak(fn: Callable[[], Any], interval_s: float = 0.001) -> dict[str, Any]:
    import psutil  # only where the Linux counter is missing (macOS, Windows)

    process = psutil.Process()
    before = process.memory_info().rss
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(interval_s):
            peak[0] = max(peak[0], process.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        fn()
    finally:
        done.set()
        sampler.join()
    method = (
        f"process resident set size sampled every {interval_s * 1000:g} ms by psutil (a peak shorter "
        "than that, or memory reused from earlier work, can be missed)"
    )
    return {
        "high_water_bytes": max(peak[0], process.memory_info().rss),
        "before_bytes": before,
        "method": method,
    }


def peak_memory(fn: Callable[[], Any], *, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Memory high-water mark while ``fn()`` runs, and ``increase_bytes``: how far it rose above the
    usage just before the call (what running ``fn`` needed on top of what was already loaded).

    CUDA: ``torch.cuda.max_memory_allocated`` (tensors on that GPU). CPU on Linux: the kernel's peak
    resident set size of the whole process (VmHWM), reset through /proc/self/clear_refs after glibc's
    ``malloc_trim`` returned freed pages, so neither an earlier peak nor memory cached from earlier runs
    hides this call's. Elsewhere: the RSS sampled by a psutil thread. ``high_water_bytes`` on CPU
    includes Python, the libraries and every loaded model: compare ``increase_bytes`` across models.
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        result = _cuda_peak(fn, dev)
    elif _reset_linux_peak():
        result = _linux_peak(fn)
    else:
        try:
            result = _sampled_peak(fn)
        except ImportError:
            fn()
            reason = "no peak-RSS counter on this OS and psutil is not installed"
            return {"measured": False, "device": dev.type, "reason": reason}
    increase = max(0, result["high_water_bytes"] - result["before_bytes"])
    return {"measured": True, "device": dev.type, **result, "increase_bytes": increase}


def tensor_bytes(model: nn.Module) -> int:
    """Bytes of a model's parameters and buffers (shared tensors once)."""
    tensors = {t.data_ptr(): t for t in [*model.parameters(), *model.buffers()] if t.numel()}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def inference_peak_memory(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    batch_size: int,
    device: str | torch.device = "cpu",
    max_length: int = 128,
    text_pairs: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Memory one forward pass over one batch needs: ``peak_bytes`` = ``weights_bytes`` (parameters and
    buffers) + ``increase_bytes`` (:func:`peak_memory` of the pass, after one untimed warm-up pass).
    Inputs are tokenised before; the model is moved to ``device``. Comparable across models measured
    in one process."""
    dev = torch.device(device)
    pairs = text_pairs[:batch_size] if text_pairs is not None else None
    batch = prepare_batches(
        tokenizer,
        texts[:batch_size],
        batch_size=batch_size,
        max_length=max_length,
        text_pairs=pairs,
        device=dev,
    )
    model.to(dev)
    run_inference(model, batch)  # warm-up: one-off allocations (thread pools, caches) are not the model's
    result = peak_memory(lambda: run_inference(model, batch), device=dev)
    weights = tensor_bytes(model)
    if result["measured"]:
        method = f"weights (parameters and buffers) + the increase during one batch: {result['method']}"
        result.update(peak_bytes=weights + result["increase_bytes"], method=method)
    return {**result, "batch_size": batch_size, "weights_bytes": weights}


# --------------------------------------------------------------------------------------------- energy

_CPU_SENSORS = {
    "intel_rapl": "RAPL energy counters",
    "windows_emi": "Windows Energy Meter Interface (RAPL)",
    "intel_power_gadget": "Intel Power Gadget",
}
_OTHER_SENSORS = {
    "GPU": "power readings of the GPU driver (NVML / AMD SMI)",
    "AppleSiliconChip": "Apple powermetrics",
    "Raspberry": "the Raspberry Pi power monitor",
}
INSTALL_HINT = "pip install 'lmdistill[report]'"


@contextlib.contextmanager
def _quiet_codecarbon() -> Iterator[None]:
    """codecarbon logs every measurement at INFO: keep only its errors while we track. Importing it
    sets its log level, so it is imported first."""
    with contextlib.suppress(ImportError):
        import codecarbon  # noqa: F401
    codecarbon_logger = logging.getLogger("codecarbon")
    level = codecarbon_logger.level
    codecarbon_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        codecarbon_logger.setLevel(level)


def _cpu_source(hardware: Any) -> tuple[str, bool]:
    mode = getattr(hardware, "_mode", "unknown")
    if mode in _CPU_SENSORS:
        return f"CPU measured by {_CPU_SENSORS[mode]}", True
    tdp = f"{getattr(hardware, '_tdp', '?')} W{' generic' if getattr(hardware, '_is_generic_tdp', False) else ''}"
    if mode == "cpu_load":
        return f"CPU estimated from CPU load x TDP ({tdp}) by codecarbon's model, no power sensor", False
    return f"CPU estimated as a constant share of the TDP ({tdp}) by codecarbon, no power sensor", False


def _power_sources(tracker: Any) -> dict[str, Any]:
    """How codecarbon got each power figure: a hardware sensor, or one of its estimation models."""
    sources, measured = [], []
    for hardware in getattr(tracker, "_hardware", []):
        kind = type(hardware).__name__
        if kind == "CPU":
            text, sensor = _cpu_source(hardware)
        elif kind in _OTHER_SENSORS:
            text, sensor = f"{kind} measured by {_OTHER_SENSORS[kind]}", True
        elif kind == "RAM":
            sources.append("RAM estimated by codecarbon's RAM power model (always an estimate)")
            continue
        else:
            text, sensor = f"{kind}: unknown source", False
        sources.append(text)
        measured.append(sensor)
    return {"estimated": not (measured and all(measured)), "method": "; ".join(sources) or "unknown"}


def _start_tracker(label: str, country: str, measure_power_secs: float, tracking_mode: str) -> tuple:
    """(tracker, "") or (None, why not). Offline: no network, no geo lookup; nothing written to disk."""
    try:
        from codecarbon import OfflineEmissionsTracker
    except ImportError:
        return None, f"codecarbon is not installed ({INSTALL_HINT})"
    try:
        tracker = OfflineEmissionsTracker(
            project_name=label,
            country_iso_code=country,
            output_methods=[],
            log_level="error",
            measure_power_secs=measure_power_secs,
            tracking_mode=tracking_mode,
            allow_multiple_runs=True,
        )
        tracker.start()
    except Exception as exc:  # codecarbon probes hardware; any failure means "not measured"
        return None, f"codecarbon failed to start: {exc}"
    return tracker, ""


def _stop_tracker(tracker: Any, country: str) -> dict[str, Any]:
    try:
        tracker.stop()
        data = tracker.final_emissions_data
        energy = {
            "energy_kwh": data.energy_consumed,
            "cpu_energy_kwh": data.cpu_energy,
            "gpu_energy_kwh": data.gpu_energy,
            "ram_energy_kwh": data.ram_energy,
        }
        emissions, duration, country_name = data.emissions, data.duration, data.country_name
    except Exception as exc:
        return {"measured": False, "reason": f"codecarbon failed to stop: {exc}"}
    if not all(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0 for v in energy.values()):
        return {"measured": False, "reason": f"codecarbon returned unusable energy figures {energy}"}
    result = {"measured": True, **energy, "emissions_kg_co2": float(emissions), "duration_s": float(duration)}
    if country_name is None:  # codecarbon falls back silently on an unknown country
        result.update(emissions_kg_co2=None, emissions_reason=f"unknown country ISO code {country!r}")
    return {**result, **_power_sources(tracker)}


def _per_thousand(result: dict[str, Any], predictions: int) -> dict[str, Any]:
    per = {"predictions": predictions}
    for key in ("energy_kwh", "emissions_kg_co2"):
        value = result.get(key)
        per[f"{key}_per_1000"] = value * 1000 / predictions if value is not None and predictions > 0 else None
    return per


@contextlib.contextmanager
def track_energy(
    label: str,
    *,
    country_iso_code: str = "USA",
    predictions: int | None = None,
    measure_power_secs: float = 0.5,
    tracking_mode: str = "process",
) -> Iterator[dict[str, Any]]:
    """Energy and CO2 of the ``with`` body; the yielded dict is filled when the body ends (even on error).

    codecarbon's ``OfflineEmissionsTracker``: the carbon intensity is the ``country_iso_code`` grid
    average from its bundled data (no network), nothing is written to disk, its logging is kept to
    errors. ``tracking_mode="process"`` attributes CPU load to this process (and children) only.
    Keys: ``measured``, ``energy_kwh`` (with ``cpu_/gpu_/ram_energy_kwh``), ``emissions_kg_co2``,
    ``duration_s``, ``estimated`` (False only when CPU and any GPU power came from a hardware sensor:
    RAPL, NVML, ...), ``method`` (where each power figure came from), and with ``predictions`` the
    ``energy_kwh_per_1000`` and ``emissions_kg_co2_per_1000`` predictions. When codecarbon is missing
    or fails: ``measured: False`` and the ``reason``; ``wall_time_s`` is always our own clock.
    """
    result: dict[str, Any] = {
        "label": label,
        "country_iso_code": country_iso_code,
        "tracking_mode": tracking_mode,
    }
    with _quiet_codecarbon():
        tracker, reason = _start_tracker(label, country_iso_code, measure_power_secs, tracking_mode)
        start = time.perf_counter()
        try:
            yield result
        finally:
            result["wall_time_s"] = time.perf_counter() - start
            stopped = (
                _stop_tracker(tracker, country_iso_code) if tracker else {"measured": False, "reason": reason}
            )
            result.update(stopped)
            if predictions is not None:
                result.update(_per_thousand(result, predictions))


def measure_energy(
    fn: Callable[[], Any],
    *,
    label: str,
    country_iso_code: str = "USA",
    predictions: int | None = None,
    measure_power_secs: float = 0.5,
) -> dict[str, Any]:
    """:func:`track_energy` around ``fn()``. Pass ``predictions`` (examples ``fn`` predicts) to get the
    energy and CO2 per 1,000 predictions; run ``fn`` long enough (seconds) for a meaningful figure."""
    with track_energy(
        label,
        country_iso_code=country_iso_code,
        predictions=predictions,
        measure_power_secs=measure_power_secs,
    ) as result:
        fn()
    return result


# --------------------------------------------------------------------------------------------- machine


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _total_ram_bytes() -> int | None:
    with contextlib.suppress(ValueError, OSError, AttributeError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    with contextlib.suppress(ImportError):
        import psutil

        return int(psutil.virtual_memory().total)
    return None


def _physical_cores() -> int | None:
    with contextlib.suppress(ImportError):
        import psutil

        return psutil.cpu_count(logical=False)
    return None


def _usable_cores() -> int | None:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count()


def environment_info() -> dict[str, Any]:
    """The machine and software a measurement ran on, and the command line that ran it."""
    gpus = (
        [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if torch.cuda.is_available()
        else []
    )
    return {
        "cpu": cpu_model(),
        "cpu_logical_cores": os.cpu_count(),
        "cpu_physical_cores": _physical_cores(),
        "cpu_usable_cores": _usable_cores(),
        "torch_threads": torch.get_num_threads(),
        "gpus": gpus,
        "cuda": torch.version.cuda if gpus else None,
        "ram_bytes": _total_ram_bytes(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "libraries": {name: _version(name) for name in LIBRARIES},
        "command": shlex.join(sys.argv),
    }
