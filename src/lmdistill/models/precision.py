"""Whether this CPU multiplies bf16 matrices natively, and models cast to bf16 for inference.

bf16 pays on a CPU only where the instruction set multiplies bf16 matrices itself: x86 AVX512-BF16
(``VDPBF16PS``: Intel Cooper Lake, Sapphire Rapids and later; AMD Zen 4 and later) or AMX-BF16 (tile matrix
products: Sapphire Rapids and later), ARM BF16 (``BFMMLA``, Armv8.6: Graviton 3, Neoverse V1/V2) or SVE-BF16.
Elsewhere bf16 products are emulated and run far slower than fp32 (docs/performance.md, "bf16 on CPUs", has
measured rates of both). ``torch.backends.cpu.get_cpu_capability()`` cannot tell: its levels are vector widths
(``AVX2``, ``AVX512``), the same for AVX-512 CPUs with and without bf16; the feature flags are read instead.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from lmdistill.errors import LmdistillError

BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16", "sve_bf16", "svebf16"})
"""Feature flags (as in /proc/cpuinfo and ``torch.cpu.get_capabilities()``) that give native bf16 products."""

INFERENCE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def native_bf16(flags: Iterable[str]) -> tuple[bool, str]:
    """Whether a CPU with these feature flags multiplies bf16 matrices natively, and the reason in words.
    Flags are compared in lower case with ``-`` read as ``_`` (``avx512-bf16`` = ``avx512_bf16``)."""
    found = sorted(BF16_FLAGS & {f.lower().replace("-", "_") for f in flags})
    if found:
        return True, f"the CPU multiplies bf16 natively ({', '.join(found)})"
    return False, (
        "the CPU has no native bf16 products (no avx512_bf16, amx_bf16, or ARM bf16/sve_bf16 flag): "
        "bf16 would be emulated, slower than fp32"
    )


def flags_of_cpuinfo(text: str) -> frozenset[str]:
    """The feature flags of a /proc/cpuinfo text: its ``flags`` (x86) and ``Features`` (ARM) lines."""
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags |= set(value.split())
    return frozenset(flags)


@functools.cache
def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags: those torch detects (``torch.cpu.get_capabilities()``, where torch has it)
    and those of /proc/cpuinfo (Linux)."""
    capabilities = getattr(torch.cpu, "get_capabilities", None)
    found = {k for k, v in capabilities().items() if v is True} if capabilities is not None else set()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: torch's detection alone
        text = ""
    return frozenset(found | flags_of_cpuinfo(text))


def cpu_native_bf16() -> tuple[bool, str]:
    """:func:`native_bf16` of this CPU."""
    return native_bf16(cpu_flags())


def for_inference(model: nn.Module, dtype: str) -> nn.Module:
    """``model`` in evaluation mode with its weights cast to ``dtype`` (``fp32`` or ``bf16``), in place. A bf16
    model computes in bf16 throughout (half the weight memory); callers upcast its logits before any metric."""
    if dtype not in INFERENCE_DTYPES:
        raise LmdistillError(f"dtype must be one of {', '.join(INFERENCE_DTYPES)}, got {dtype!r}")
    return model.to(INFERENCE_DTYPES[dtype]).eval()


def _has_accelerator() -> bool:
    xpu = getattr(torch, "xpu", None)
    return (
        torch.cuda.is_available()
        or torch.backends.mps.is_available()
        or bool(xpu is not None and xpu.is_available())
    )


def choose_mixed_precision(choice: str, cpu: bool, flags: Iterable[str] | None = None) -> tuple[str, str]:
    """``training.mixed_precision`` for this machine (``no``, ``bf16`` or ``fp16``) and the reason in words.
    ``auto`` -> bf16 on a CUDA GPU that supports it, or on a CPU that multiplies bf16 natively (AVX512-BF16,
    AMX-BF16, ARM BF16: :func:`native_bf16` of ``flags``, default this CPU's), else
    no (fp32; emulated bf16 is slower than fp32). Autocast only: weights, optimizer states and loss math stay
    fp32."""
    on_cpu = cpu or not _has_accelerator()
    if choice == "fp16" and on_cpu:
        # accelerate would silently train in fp32 (no fp16 autocast or loss scaling on a CPU)
        raise LmdistillError(
            "training.mixed_precision=fp16 needs a GPU (fp16 autocast and loss scaling run on "
            "CUDA, XPU or MPS devices); on a CPU use bf16 or no"
        )
    native, why = native_bf16(cpu_flags() if flags is None else flags)
    if choice != "auto":
        late = f", although {why}" if choice == "bf16" and on_cpu and not native else ""
        return choice, f"training.mixed_precision={choice} as set{late}"
    if on_cpu:
        return ("bf16" if native else "no"), f"auto: {why}"
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16", f"auto: the GPU ({torch.cuda.get_device_name()}) supports bf16"
    return "no", "auto: bf16 is chosen on CUDA GPUs that support it and CPUs that multiply bf16 natively"


def resolve_mixed_precision(choice: str, cpu: bool) -> str:
    """The mode of :func:`choose_mixed_precision` alone."""
    return choose_mixed_precision(choice, cpu)[0]
