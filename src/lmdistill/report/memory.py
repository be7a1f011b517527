"""Memory high-water mark while a function runs, and the memory one forward pass of a model needs."""

from __future__ import annotations

import ctypes
import ctypes.util
import re
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmdistill.report.inputs import prepare_batches, run_inference

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
