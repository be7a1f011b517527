"""lmdistill: knowledge distillation for transformer language models.

Public API (imported lazily, so `import lmdistill` is cheap)::

    from lmdistill import finetune, distill, evaluate, load_config, Config
"""

from __future__ import annotations

__version__ = "0.1.0"

_API = {
    "finetune": "lmdistill.api",
    "distill": "lmdistill.api",
    "evaluate": "lmdistill.api",
    "RunResult": "lmdistill.api",
    "EvalResult": "lmdistill.api",
    "Config": "lmdistill.config",
    "load_config": "lmdistill.tasks",
    "ConfigError": "lmdistill.errors",
    "LmdistillError": "lmdistill.errors",
}

__all__ = sorted(_API)


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'lmdistill' has no attribute '{name}'")
