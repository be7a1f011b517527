"""Measurements of models for the compression report: size and speed; memory, energy and the machine
re-exported from their modules.

Every function returns a plain dict (JSON-serialisable) that says how its figures were obtained, so the
report can show the method next to the number. Nothing is invented: where a figure cannot be measured
the dict says ``measured: False`` and gives the ``reason``.

* :func:`count_parameters`, :func:`size_on_disk`: how big a model is.
* :func:`prepare_batches`, :func:`run_inference` (:mod:`.inputs`): inputs tokenised once, one pass.
* :func:`measure_latency`: seconds per batch of one model over repeated timed runs (batch 1 for
  latency, a larger batch for throughput: two calls).
* :func:`measure_latency_interleaved`, :func:`measure_models_interleaved`: several models (PyTorch, or
  any callable such as an ONNX Runtime session) timed round-robin in one process: use these to compare.
* :func:`peak_memory`, :func:`inference_peak_memory` (:mod:`.memory`): memory high-water mark.
* :func:`track_energy`, :func:`measure_energy` (:mod:`.energy`): energy and CO2 through codecarbon.
* :func:`environment_info` (:mod:`.environment`): hardware, library versions and the command line.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lmdistill.errors import ModelError
from lmdistill.report.energy import INSTALL_HINT, measure_energy, track_energy
from lmdistill.report.environment import LIBRARIES, cpu_model, environment_info
from lmdistill.report.inputs import _eval_mode, prepare_batches, run_inference
from lmdistill.report.memory import inference_peak_memory, peak_memory, tensor_bytes

__all__ = [
    "INSTALL_HINT",
    "LIBRARIES",
    "NOT_WEIGHTS",
    "WEIGHT_SUFFIXES",
    "count_parameters",
    "cpu_model",
    "device_name",
    "environment_info",
    "inference_peak_memory",
    "measure_energy",
    "measure_latency",
    "measure_latency_interleaved",
    "measure_models_interleaved",
    "peak_memory",
    "prepare_batches",
    "run_inference",
    "size_on_disk",
    "tensor_bytes",
    "torch_runner",
    "track_energy",
]

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".onnx", ".onnx_data")
NOT_WEIGHTS = ("training_args", "optimizer", "scheduler", "rng_state")  # Trainer files with those suffixes


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
    weights = path.suffix in WEIGHT_SUFFIXES or path.name.endswith(".onnx.data")  # ONNX external data
    return weights and not path.name.startswith(NOT_WEIGHTS)


def size_on_disk(path: str | Path) -> dict[str, int]:
    """Bytes of a saved model folder: ``weights_bytes`` (``*.safetensors``, ``*.bin``, ``*.pt``,
    ``*.pth``, ``*.onnx`` with its external data ``*.onnx_data`` / ``*.onnx.data``; not
    optimizer/scheduler/training-args files), ``total_bytes`` (every file), and the
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


# --------------------------------------------------------------------------------------------- speed


def device_name(device: str | torch.device) -> str:
    """GPU name for a CUDA device, the CPU model otherwise."""
    device = torch.device(device)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _setting(device: torch.device, batch_size: int, max_length: int | None, warmup: int) -> dict[str, Any]:
    """How a latency was measured: device, its name, torch threads, batch size, input length, warm-up."""
    return {
        "device": device.type,
        "device_name": device_name(device),
        "threads": torch.get_num_threads(),
        "batch_size": batch_size,
        "max_length": max_length,
        "warmup": warmup,
    }


def _latency_figures(times: np.ndarray, batch_size: int) -> dict[str, Any]:
    """Median, p10, p90, mean, std seconds per batch of timed runs (n,), the count and examples/s."""
    return {
        "n": len(times),
        "median_s": float(np.median(times)),
        "p10_s": float(np.percentile(times, 10)),
        "p90_s": float(np.percentile(times, 90)),
        "mean_s": float(times.mean()),
        "std_s": float(times.std(ddof=1)) if len(times) > 1 else 0.0,
        "examples_per_s": float(batch_size * len(times) / times.sum()),
    }


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
        **_setting(dev, batch_size, max_length, warmup),
        **_latency_figures(times, batch_size),
        "padded_tokens_per_batch": float(np.mean(tokens)),
    }


# --------------------------------------------------------------------------------------------- interleaved

Runner = Callable[[], Any]
Batches = Sequence[Mapping[str, torch.Tensor]]


def torch_runner(model: nn.Module, batches: Batches) -> Runner:
    """A runner for :func:`measure_latency_interleaved`: call i is one forward pass of ``model`` over
    ``batches[i % len(batches)]``. Put the model in eval mode and on its device first, and call it
    inside ``torch.inference_mode()`` (passing ``(model, batches)`` does all that)."""
    if not batches:
        raise ValueError("torch_runner needs at least one batch")
    calls = itertools.count()
    return lambda: model(**batches[next(calls) % len(batches)])


def _runners(
    runners: Mapping[str, Runner | tuple[nn.Module, Batches]],
    device: torch.device,
    stack: contextlib.ExitStack,
) -> tuple[dict[str, Runner], dict[str, list[int]]]:
    """Plain callables; each (model, batches) pair moved to ``device``, put in eval and inference mode
    for the duration of ``stack``. Also the padded tokens of each pair's batches, in call order."""
    calls, tokens = {}, {}
    for key, runner in runners.items():
        if callable(runner):
            calls[key] = runner
            continue
        if not (isinstance(runner, tuple) and len(runner) == 2 and isinstance(runner[0], nn.Module)):
            raise ValueError(
                f"measure_latency_interleaved: runners[{key!r}] must be a callable or a (model, batches) pair"
            )
        model, batches = runner
        model.to(device)
        stack.enter_context(_eval_mode(model))
        calls[key] = torch_runner(model, batches)
        tokens[key] = [b["input_ids"].numel() for b in batches]
    return calls, tokens


def _round_robin(
    runners: Mapping[str, Runner], rounds: int, warmup: int, device: torch.device, per_turn: int = 1
) -> tuple[dict[str, list[float]], dict[str, list[int]]]:
    """Seconds of each timed call and its call index (0-based, counting every call of that runner).
    ``warmup`` untimed rounds, then turns in the mapping's order until every runner has ``rounds`` timed calls:
    with ``per_turn`` 1 a turn is one timed call (A, B, C, A, B, C, ...); with ``per_turn`` n > 1 it is n
    consecutive calls of one runner, the first untimed and the other n - 1 timed (A A A, B B B, C C C, ...)."""
    for _ in range(warmup):
        for run in runners.values():
            run()
    _sync(device)
    times: dict[str, list[float]] = {key: [] for key in runners}
    index: dict[str, list[int]] = {key: [] for key in runners}
    calls = dict.fromkeys(runners, warmup)
    timed_per_turn = max(1, per_turn - 1)
    while len(times[next(iter(runners))]) < rounds:
        for key, run in runners.items():
            if per_turn > 1:
                run()  # untimed: it pays for what the other runners' calls evicted
                calls[key] += 1
                _sync(device)
            for _ in range(min(timed_per_turn, rounds - len(times[key]))):
                start = time.perf_counter()
                run()
                _sync(device)
                times[key].append(time.perf_counter() - start)
                index[key].append(calls[key])
                calls[key] += 1
    return times, index


def measure_latency_interleaved(
    runners: Mapping[str, Runner | tuple[nn.Module, Batches]],
    *,
    batch_size: int,
    rounds: int = 20,
    warmup: int = 3,
    device: str | torch.device = "cpu",
    max_length: int | None = None,
    extra: Mapping[str, Mapping[str, Any]] | None = None,
    calls_per_turn: int = 1,
) -> dict[str, dict[str, Any]]:
    """Seconds per batch of several models timed round-robin in one process: ``{key: result}``.

    Timing each model in its own block lets drift (CPU frequency scaling and throttling, caches, other
    load on the machine) land on one model and not the next: two identical architectures were once
    timed 9.8 ms and 6.1 ms that way. Interleaving (A, B, C, A, B, C, ...: ``warmup`` untimed rounds,
    then ``rounds`` timed ones) spreads any drift over every model alike, with the same inputs and
    thread count. A runner is a callable doing one batch (an ONNX Runtime ``session.run`` with its
    feeds bound, or :func:`torch_runner`) and must return when its work is done; a ``(model, batches)``
    pair is run in eval and inference mode on ``device`` over its batches in turn. On CUDA every call
    ends with a synchronize.

    ``calls_per_turn`` n > 1: each model's turn is n consecutive calls, the first untimed (A A A, B B B, ...).
    A single call right after other models' calls pays for the caches they evicted, and that cost is a larger
    share of a small model's time (the demo's 2-layer int8 student: 0.71 ms against 0.44 ms when it answered
    consecutive requests, the PyTorch teacher 5.9 against 5.2 ms; benchmarks/results/student-final-2026-12-04/
    latency_regimes-positions.json):
    n > 1 times every model as a served model answering consecutive requests, still interleaved over the turns.

    Each result has the keys of :func:`measure_latency` (``median_s``, ``p10_s``, ``p90_s``, ...,
    ``n`` = ``rounds``; ``padded_tokens_per_batch`` for pairs), plus ``times_s`` (every timed call, in
    order), ``timing: "interleaved"`` and ``interleaved_with`` (all keys, in calling order);
    ``extra[key]`` is merged in last (e.g. ``{"threads": 4}`` for an ONNX Runtime session, whose
    threads torch does not know). ONNX Runtime's thread pool spin-waits after each run by default and
    would take CPU from the next model: create sessions timed this way with the session config entry
    ``"session.intra_op.allow_spinning": "0"``.
    """
    if rounds < 1 or warmup < 0 or batch_size < 1 or calls_per_turn < 1 or not runners:
        raise ValueError(
            "measure_latency_interleaved needs runners, rounds >= 1, warmup >= 0, batch_size >= 1, "
            "calls_per_turn >= 1"
        )
    unknown = sorted(set(extra or {}) - set(runners))
    if unknown:
        raise ValueError(f"measure_latency_interleaved: extra names {unknown}, which are not runners")
    dev = torch.device(device)
    with contextlib.ExitStack() as stack:
        calls, tokens = _runners(runners, dev, stack)
        times, index = _round_robin(calls, rounds, warmup, dev, calls_per_turn)
    setting = {**_setting(dev, batch_size, max_length, warmup), "timing": "interleaved"}
    setting["calls_per_turn"] = calls_per_turn
    results = {}
    for key, timed in times.items():
        result = {**setting, **_latency_figures(np.asarray(timed), batch_size)}
        if key in tokens:
            used = [tokens[key][i % len(tokens[key])] for i in index[key]]
            result["padded_tokens_per_batch"] = float(np.mean(used))
        result.update(times_s=timed, interleaved_with=list(runners), **(extra or {}).get(key, {}))
        results[key] = result
    return results


def measure_models_interleaved(
    models: Mapping[str, tuple[nn.Module, Any]],
    texts: Sequence[str],
    *,
    batch_size: int,
    rounds: int = 20,
    warmup: int = 3,
    device: str | torch.device = "cpu",
    max_length: int = 128,
    text_pairs: Sequence[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """:func:`measure_latency_interleaved` of PyTorch models, each given with its own tokenizer
    (``{key: (model, tokenizer)}``: a student with a trimmed vocabulary tokenises differently): the
    same texts, tokenised once per model with :func:`prepare_batches`."""
    runners = {
        key: (
            model,
            prepare_batches(
                tokenizer,
                texts,
                batch_size=batch_size,
                max_length=max_length,
                text_pairs=text_pairs,
                device=device,
            ),
        )
        for key, (model, tokenizer) in models.items()
    }
    return measure_latency_interleaved(
        runners, batch_size=batch_size, rounds=rounds, warmup=warmup, device=device, max_length=max_length
    )
