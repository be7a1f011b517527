"""lmdistill: knowledge distillation for transformer language models.

Public API (imported lazily, so `import lmdistill` is cheap)::

    from lmdistill import finetune, distill, evaluate, sweep, load_config, Config

How the package is layered. Data flows one way: config -> data / models -> signals -> losses -> objective ->
engine -> tasks -> run driver -> api / pipeline -> cli, and a module imports only from its own layer or the
layers below it (``tests/test_layering.py`` walks every import with ``ast`` and fails on one that runs back up):

0. ``errors``, ``fileio`` (the guarded path of every file read or written), ``outputs`` (run folders: claim,
   lock, publish), ``config`` (schema, loading, common checks), ``resources`` (registry downloads), ``methods``
   (paper recipes as plain config dicts);
1. ``data``, ``models``, ``losses`` (pure functions on tensors: they import no signal, the top-k signal is a
   tensor bundle defined in ``losses.topk``), ``export``, ``report`` (measure, statistics, rendering);
2. ``knowledge``: the registry of intermediate features (what to tap, how to extract, which loss);
3. ``signals``: the teacher's output as one interface, live or cached;
4. ``objective``: named, weighted loss terms and matches; ``mutual``: several students as one (deep mutual
   learning);
5. ``engine`` (THE loop), ``checkpoint``;
6. ``tasks``: one module per task behind :class:`lmdistill.tasks.base.Task`, found by name, and the whole
   config loader;
7. ``run``: THE run driver (output folder, seed, parts from the task, train, save, evaluate, results);
8. ``api``, ``pipeline`` (compress and report), ``chain`` (compress's steps around distillation),
   ``reporting``, ``sweeps`` (variants x seeds and their leaderboard);
9. ``cli``.
"""

from __future__ import annotations

__version__ = "0.1.0"

_API = {
    "finetune": "lmdistill.api",
    "distill": "lmdistill.api",
    "evaluate": "lmdistill.api",
    "sweep": "lmdistill.api",
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
