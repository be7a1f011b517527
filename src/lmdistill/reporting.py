"""The compression report from saved models: ``report.json``, ``report.md`` and a self-contained ``report.html``.

Every model of the report (the teacher, the distilled student, the no-KD baseline, and any compression step such
as a trimmed, pruned or quantized student, or a model served through ONNX Runtime) is a :class:`ModelSpec`. Each is
evaluated on the same test examples (the task's :meth:`~lmdistill.tasks.base.Task.report_quality`: metrics with
95% bootstrap intervals and per-example outputs), and

- the student is compared with the baseline on those same examples: a paired bootstrap interval of the
  difference (and McNemar's exact test for accuracy); the summary says better, worse or not distinguishable from
  that, never from overlapping per-model intervals;
- each model gets its agreement with the teacher's predictions and its expected calibration error;
- every model is timed in ONE process, interleaved (A, B, C, A, B, C, ... over ``report.latency_repeats``
  rounds, the same inputs and threads), at batch 1 and 32, reported as median with spread; then size on disk,
  parameters, peak memory and inference energy.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from lmdistill.config.schema import Config
from lmdistill.errors import LmdistillError
from lmdistill.fileio import write_text
from lmdistill.tasks import get_task, load_config

ROLES = ("teacher", "student", "baseline")
RUNTIMES = ("PyTorch fp32", "PyTorch bf16", "PyTorch int8", "ONNX Runtime fp32", "ONNX Runtime int8")


@dataclass
class ModelSpec:
    """One model of a report: its key in report.json, its role (teacher, student, baseline, or ``step`` for a
    compression step), its folder, how it is served (``runtime``: one of :data:`RUNTIMES`), a label, the
    compression step that produced it, and the run that trained it (for training time and energy)."""

    key: str
    role: str
    path: Path
    runtime: str = "PyTorch fp32"
    label: str | None = None
    step: str | None = None
    run: Path | None = None


def load_model(spec: ModelSpec, task):
    """``(model, tokenizer)`` of a spec, served as its runtime says."""
    if spec.runtime.startswith("ONNX Runtime"):
        from transformers import AutoTokenizer

        from lmdistill.export import OnnxRunner

        return OnnxRunner(spec.path), AutoTokenizer.from_pretrained(spec.path)
    model, tok = task.load_saved(spec.path)
    if spec.runtime == "PyTorch int8":
        from lmdistill.export import torch_dynamic_int8

        model = torch_dynamic_int8(model)
    elif spec.runtime == "PyTorch bf16":
        from lmdistill.models.precision import for_inference

        model = for_inference(model, "bf16")
    return model, tok


def role_of(run: Path) -> str:
    """teacher (a finetune run), student (a distill run that learns from the teacher) or baseline."""
    results = json.loads((run / "results.json").read_text())
    role = results.get("role")
    if role in ROLES:
        return role
    info = json.loads((run / "run_info.json").read_text()) if (run / "run_info.json").is_file() else {}
    if role == "finetune" or info.get("verb") == "finetune":
        return "teacher"
    terms = set(results.get("loss_terms", []))  # a run written before roles were recorded
    return "baseline" if terms and terms <= {"ce", "mse", "lm", "mnrl"} else "student"


def model_dir(path: str | Path) -> Path:
    p = Path(path).expanduser()
    if (p / "model" / "config.json").is_file():
        return p / "model"
    if (p / "config.json").is_file():
        return p
    raise LmdistillError(
        f"report: '{p}' is neither a run folder (with model/) nor a model folder (config.json)"
    )


def _specs(runs, explicit: dict) -> tuple[list[ModelSpec], dict[str, Path]]:
    roles: dict[str, Path] = {}
    for run in runs:
        run = Path(run).expanduser()
        subs = [run / r for r in ROLES if (run / r / "results.json").is_file()]
        for r in subs or [run]:
            if not (r / "results.json").is_file():
                raise LmdistillError(f"report: '{r}' is not a finished lmdistill run (no results.json)")
            roles[role_of(r)] = r
    specs = [ModelSpec(role, role, model_dir(p)) for role, p in explicit.items() if p is not None]
    named = {s.role for s in specs}
    specs += [ModelSpec(role, role, model_dir(p), run=p) for role, p in roles.items() if role not in named]
    order = {role: i for i, role in enumerate(ROLES)}
    return sorted(specs, key=lambda s: order.get(s.role, 9)), roles


def _same_task(roles: dict[str, Path], task: str) -> None:
    """Refuse runs of different tasks in one report (their metrics cannot be compared)."""
    found = {}
    for role, run in roles.items():
        saved = json.loads((run / "results.json").read_text()).get("task")
        if saved is None and (run / "config.yaml").is_file():
            saved = (yaml.safe_load((run / "config.yaml").read_text()) or {}).get("task", "classification")
        found[role] = saved or task
    if len(set(found.values()) | {task}) > 1:
        which = ", ".join(f"{role}: {t}" for role, t in found.items())
        raise LmdistillError(
            f"report: the runs are of different tasks ({which}; the config's: {task}); a report compares models "
            "of one task: give runs of the same task"
        )


def _report_folder(out: Path) -> Path:
    """The report's folder, checked before any model is measured: creatable, writable, and not holding a
    report.md that lmdistill did not write."""
    from lmdistill.fileio import readable_folder, writable_file

    if out.exists():
        readable_folder(out, "--output", "report folder")
        if (out / "report.md").exists() and not (out / "report.json").exists():
            raise LmdistillError(
                f"--output: '{out}' holds a report.md that lmdistill did not write; choose another folder"
            )
    else:
        writable_file(out, "--output")  # its parent exists and is writable
    for name in ("report.md", "report.html", "report.json"):
        if (out / name).exists():
            writable_file(out / name, "--output", overwrite=True)
    return out


def _training(run: Path | None) -> dict:
    if run is None or not (run / "results.json").is_file():
        return {}
    results = json.loads((run / "results.json").read_text())
    out = {"wall_time_s": results.get("train_seconds"), "history": str(run / "metrics.csv")}
    if (run / "energy.json").is_file():
        out["energy"] = json.loads((run / "energy.json").read_text())
        out["wall_time_s"] = out["energy"].get("wall_time_s", out["wall_time_s"])
    return out


# --------------------------------------------------------------------------------------------- measuring


def _runner(model, batches) -> Callable | tuple:
    """A (model, batches) pair for PyTorch models; a callable for exported runners (no parameters)."""
    import itertools

    from torch import nn

    if isinstance(model, nn.Module):
        return model, batches
    calls = itertools.count()
    return lambda: model(**batches[next(calls) % len(batches)])


def _timings(loaded: dict, texts: list[str], max_length: int, cfg: Config) -> dict[str, list[dict]]:
    """Latency of every model at batch 1 and 32, on every device, timed interleaved in this process."""
    import torch

    from lmdistill.report import measure

    r = cfg.report
    out: dict[str, list[dict]] = {key: [] for key in loaded}
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        movable = {k: v for k, v in loaded.items() if device == "cpu" or isinstance(v[0], torch.nn.Module)}
        for batch in (1, 32):
            runners = {
                key: _runner(
                    m,
                    measure.prepare_batches(
                        tok, texts, batch_size=batch, max_length=max_length, device=device
                    ),
                )
                for key, (m, tok) in movable.items()
            }
            found = measure.measure_latency_interleaved(
                runners,
                batch_size=batch,
                rounds=r.latency_repeats,
                warmup=r.warmup,
                device=device,
                max_length=max_length,
                calls_per_turn=r.latency_calls_per_turn,
            )
            for key, result in found.items():
                out[key].append(result)
    return out


def _measure(spec: ModelSpec, model, tok, texts: list[str], max_length: int, cfg: Config) -> dict:
    """Size, parameters, peak memory and inference energy of one model (latency is timed for all at once)."""
    import torch

    from lmdistill.report import measure

    r = cfg.report
    torch_model = isinstance(model, torch.nn.Module)
    entry = {
        "name": str(spec.path),
        "role": spec.role,
        "runtime": spec.runtime,
        "size": measure.size_on_disk(spec.path),
        "memory": [],
    }
    entry.update({k: v for k, v in (("label", spec.label), ("step", spec.step)) if v})
    if torch_model:
        entry["parameters"] = measure.count_parameters(model)
        entry["memory"].append(
            measure.inference_peak_memory(
                model, tok, texts, batch_size=32, device="cpu", max_length=max_length
            )
        )
    if r.energy:
        batches = measure.prepare_batches(tok, texts, batch_size=32, max_length=max_length, device="cpu")
        run = _runner(model, batches)
        work = (
            (lambda: measure.run_inference(model, batches))
            if torch_model
            else (lambda: [run() for _ in batches])
        )
        entry["energy"] = measure.measure_energy(
            work, label="inference", country_iso_code=r.country_iso_code, predictions=32 * len(batches)
        )
    return entry


# --------------------------------------------------------------------------------------------- the report


def bf16_point(choice: bool | None) -> bool:
    """Whether the report adds the student in bf16: as set, else where bf16 is native (CPU) or supported (GPU)."""
    import torch

    from lmdistill.models.precision import cpu_native_bf16

    if choice is not None:
        return choice
    return cpu_native_bf16()[0] or (torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def report(
    runs: list[str | Path] = (),
    *,
    teacher: str | Path | None = None,
    student: str | Path | None = None,
    baseline: str | Path | None = None,
    out_dir: str | Path | None = None,
    config: str | Path | dict | Config | None = None,
    extra: list[ModelSpec] = (),
    bf16: bool | None = None,
) -> tuple[dict, Path, Path]:
    """Evaluate and measure teacher / student / baseline (and ``extra`` models), write the report.

    ``runs`` are run folders (of finetune, distill or compress; a compress folder holds all three); their role
    is read from their results. ``teacher`` / ``student`` / ``baseline`` name folders explicitly. The test split
    comes from ``config``, or the student's (else any run's) saved config.yaml. ``bf16`` (default: the config's
    ``report.bf16``) adds the student with its weights cast to bf16 as the entry ``student_bf16`` (runtime
    "PyTorch bf16"): its quality and speed, one more point on the plots.
    """
    from lmdistill.report.measure import environment_info
    from lmdistill.report.render import render_report
    from lmdistill.tasks.metrics import GREATER_IS_BETTER

    specs, roles = _specs(runs, {"teacher": teacher, "student": student, "baseline": baseline})
    specs += list(extra)
    if not specs:
        raise LmdistillError("report: give at least one run folder (or --teacher/--student/--baseline)")
    if config is None:
        source = roles.get("student") or next(iter(roles.values()), None)
        if source is None or not (source / "config.yaml").is_file():
            raise LmdistillError(
                "report: no config.yaml found in the runs; give --config to name the test data"
            )
        config = source / "config.yaml"
    cfg = load_config(config) if not isinstance(config, Config) else config
    student_spec = next((s for s in specs if s.key == "student"), None)
    if student_spec is not None and bf16_point(cfg.report.bf16 if bf16 is None else bf16):
        specs.append(
            ModelSpec("student_bf16", "student", student_spec.path, "PyTorch bf16", step="bf16 weights")
        )
    _same_task(roles, cfg.task)
    out = _report_folder(Path(out_dir or cfg.output_dir))  # checked before anything is measured
    task = get_task(cfg.task)
    inputs = task.report_inputs(cfg)
    texts = inputs.texts
    notes = [
        f"Latency and energy are measured on {len(texts)} test texts, max_length {inputs.max_length}; all models "
        f"are timed in one process, interleaved round by round ({cfg.report.latency_repeats} timed calls each"
        + (
            f", in turns of {cfg.report.latency_calls_per_turn} consecutive calls, the first untimed)."
            if cfg.report.latency_calls_per_turn > 1
            else ")."
        )
    ]
    data = {
        "title": f"Distillation report: {Path(out_dir or cfg.output_dir).name}",
        "task": cfg.task,
        "evaluation": inputs.evaluation,
        "primary_metric": inputs.headline or task.report_metric or task.primary_metric,
        "greater_is_better": dict(GREATER_IS_BETTER),
        "environment": environment_info(),
        "notes": notes + inputs.notes,
        "models": {},
        "comparisons": [],
    }
    loaded, quality = {}, {}
    for spec in specs:
        print(f"   {spec.key}: evaluating {spec.path} ({spec.runtime})", flush=True)
        loaded[spec.key] = load_model(spec, task)
        quality[spec.key] = task.report_quality(*loaded[spec.key], cfg, inputs)
        data["evaluation"] = quality[spec.key].evaluation or data["evaluation"]
    print("   timing every model, interleaved", flush=True)
    latency = _timings(loaded, texts, inputs.max_length, cfg)
    teacher_q = next((quality[s.key] for s in specs if s.role == "teacher"), None)
    for spec in specs:
        entry = _measure(spec, *loaded[spec.key], texts, inputs.max_length, cfg)
        entry.update(
            latency=latency[spec.key],
            metrics=quality[spec.key].metrics,
            training=_training(spec.run),
            **task.report_extras(quality[spec.key], teacher_q, cfg),
        )
        data["models"][spec.key] = entry
    if "student" in quality and "baseline" in quality:
        data["comparisons"] += task.report_compare(
            quality["student"], quality["baseline"], ("student", "baseline"), cfg
        )
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "report.json", json.dumps(data, indent=2, default=str), "--output")
    md, html = render_report(data, out)
    return data, md, html
