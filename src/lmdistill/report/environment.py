"""The machine and software a measurement ran on: CPU, GPUs, RAM, library versions, the command line."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import torch

LIBRARIES = (
    "torch",
    "transformers",
    "accelerate",
    "datasets",
    "numpy",
    "codecarbon",
    "matplotlib",
    "onnxruntime",
    "lmdistill",
)


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
