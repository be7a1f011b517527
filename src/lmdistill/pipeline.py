"""The whole pipeline a user runs to answer "what did distillation buy me and what did it cost?".

``compress(config)``: fine-tune the teacher (unless it is already trained for the task), distill the
student, train the same student without distillation (hard labels only, same budget: the baseline),
evaluate all three on the test split and write the report. ``report(run_dirs)``: the report alone, from
finished runs. Both are what ``lmdistill compress`` and ``lmdistill report`` call.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from lmdistill.config.schema import Config
from lmdistill.errors import ConfigError, LmdistillError
from lmdistill.fileio import write_text
from lmdistill.tasks import TASKS, get_task, load_config

ROLES = ("teacher", "student", "baseline")


@dataclass
class CompressResult:
    """Where everything went, and the headline figures."""

    output_dir: Path
    report_md: Path
    report_html: Path
    runs: dict[str, Path]
    test: dict[str, dict[str, float]] = field(default_factory=dict)


def _say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def _comparable(cfg: dict) -> dict:
    """A config as far as it decides a run's result (not where it is written, how it resumes, or the report)."""
    cfg = copy.deepcopy(cfg)
    for key in ("output_dir", "report"):
        cfg.pop(key, None)
    cfg.get("training", {}).pop("resume", None)
    return cfg


def _finished(run: Path, cfg: Config) -> str | None:
    """None when ``run`` holds a finished run of exactly this config; else why not ("" when there is no
    finished run at all)."""
    from dataclasses import asdict

    if not (run / "results.json").is_file() or not (run / "model" / "config.json").is_file():
        return ""
    try:
        saved = yaml.safe_load((run / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return "its config.yaml cannot be read"
    mine = _comparable(asdict(cfg))
    theirs = _comparable(saved if isinstance(saved, dict) else {})
    differ = [k for k in mine if mine.get(k) != theirs.get(k)]
    return f"it was trained with another {differ[0]} section" if differ else None


def _role_run(role: str, run_cfg: Config, verb: str, *, resume: bool, overwrite: bool, energy: dict) -> bool:
    """Train one of compress's runs into its folder, or reuse it; True when it was trained now."""
    from lmdistill.report.measure import track_energy
    from lmdistill.run import run

    folder = Path(run_cfg.output_dir)
    why = _finished(folder, run_cfg)
    if why is None and not overwrite:
        _say(f"   {role}: already trained with this config in {folder} (--overwrite retrains it)")
        return False
    if why and not overwrite:
        raise LmdistillError(
            f"compress --resume: '{folder}' holds a finished {role} run, but {why}; pass --overwrite to retrain it "
            "or choose another output_dir"
        )
    if resume and why == "":
        run_cfg.training.resume = "auto"  # an unfinished run continues from its newest checkpoint, if any
    with track_energy(role, country_iso_code=run_cfg.report.country_iso_code) as energy[role]:
        run(load_config(run_cfg, verb=verb), verb, role=role, overwrite=overwrite or folder.exists())
    return True


def _stage_steps(run: Path) -> int:
    """Optimizer steps of a (multi-stage) distill run: its own and those of its earlier stages."""
    steps = json.loads((run / "results.json").read_text()).get("steps", 0)
    for stage in sorted(run.glob("stage-*/results.json")):
        steps += json.loads(stage.read_text()).get("steps", 0)
    return steps


def compress(
    config: str | Path | dict | Config,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    resume: bool = False,
    overwrite: bool = False,
) -> CompressResult:
    """Teacher (fine-tuned if needed) -> distilled student + no-KD baseline -> evaluation -> report.

    ``output_dir`` must be new or empty, unless ``resume`` (finished runs of the same config are reused,
    unfinished ones continue from their checkpoints) or ``overwrite`` (every run is trained again). The no-KD
    baseline trains for exactly as many optimizer steps as the student took over all its stages.
    """
    from lmdistill.outputs import RunFolder
    from lmdistill.run import input_paths

    cfg = load_config(config, overrides, verb="compress")
    task = get_task(cfg.task)
    if task.baseline_losses is None:
        supported = [n for n in TASKS if get_task(n).baseline_losses is not None]
        raise LmdistillError(
            f"task: compress supports {', '.join(supported)}, not {cfg.task} (run finetune / distill and "
            "evaluate it on its own)"
        )
    problems = task.check_data(cfg)  # the data files and columns, before any model is loaded
    if problems:
        raise ConfigError(problems)
    out = Path(cfg.output_dir)
    runs = {role: out / role for role in ROLES}
    energy: dict[str, dict] = {}
    flags = {"resume": resume, "overwrite": overwrite, "energy": energy}
    with RunFolder(out, "compress", inputs=input_paths(cfg), resume=resume, overwrite=overwrite):
        teacher_model = cfg.teacher.name_or_path
        if teacher_model:
            _say(f"1/4 teacher: using the trained teacher {teacher_model}")
            runs.pop("teacher")
        else:
            _say(f"1/4 teacher: fine-tuning {cfg.model.name_or_path}")
            t_cfg = copy.deepcopy(cfg)
            t_cfg.output_dir = str(runs["teacher"])
            _role_run("teacher", t_cfg, "finetune", **flags)
            teacher_model = str(runs["teacher"] / "model")

        _say("2/4 student: distilling")
        s_cfg = copy.deepcopy(cfg)
        s_cfg.output_dir, s_cfg.teacher.name_or_path = str(runs["student"]), teacher_model
        _role_run("student", copy.deepcopy(s_cfg), "distill", **flags)

        what = " + ".join(task.baseline_losses)
        steps = _stage_steps(runs["student"])
        _say(
            f"3/4 baseline: the same student trained on {what} only (no distillation), {steps} steps as the student"
        )
        b_cfg = copy.deepcopy(s_cfg)
        b_cfg.output_dir = str(runs["baseline"])
        b_cfg.distill.losses = dict(task.baseline_losses)
        b_cfg.distill.matches, b_cfg.distill.stages, b_cfg.distill.method = [], [], None
        b_cfg.lm.seq_kd, b_cfg.lm.on_policy, b_cfg.training.teacher_cache = (
            False,
            0.0,
            None,
        )  # no teacher at all
        b_cfg.training.max_steps = steps  # the same optimizer steps as the student took over all its stages
        _role_run("baseline", b_cfg, "distill", **flags)

        for role, result in energy.items():
            write_text(runs[role] / "energy.json", json.dumps(result, indent=2, default=str))
        _say("4/4 report: evaluating and measuring the three models")
        report_data, md, html = report(
            [runs[r] for r in ROLES if r in runs],
            teacher=teacher_model if "teacher" not in runs else None,
            out_dir=out,
            config=s_cfg,
        )
    tests = {
        role: {k: v["value"] for k, v in entry.get("metrics", {}).items()}
        for role, entry in report_data["models"].items()
    }
    print(f"\nreport: {html}\n        {md}")
    return CompressResult(out, md, html, runs, tests)


# --------------------------------------------------------------------------------------------- report


def _role_of(run: Path) -> str:
    """teacher (a finetune run), student (a distill run that learns from the teacher) or baseline."""
    results = json.loads((run / "results.json").read_text())
    role = results.get("role")
    if role in ROLES:
        return role
    info = json.loads((run / "run_info.json").read_text()) if (run / "run_info.json").is_file() else {}
    if role == "finetune" or info.get("verb") == "finetune":
        return "teacher"
    terms = set(results.get("loss_terms", []))  # a run written before roles were recorded
    return "baseline" if terms and terms <= {"ce", "mse", "lm"} else "student"


def _model_dir(path: str | Path) -> Path:
    p = Path(path).expanduser()
    if (p / "model" / "config.json").is_file():
        return p / "model"
    if (p / "config.json").is_file():
        return p
    raise LmdistillError(
        f"report: '{p}' is neither a run folder (with model/) nor a model folder (config.json)"
    )


def _measure(model_dir: Path, texts: list[str], max_length: int, cfg: Config) -> dict:
    """Size, latency at batch 1 and 32 (CPU, and GPU when present), peak memory, inference energy."""
    import torch

    from lmdistill.report import measure

    net, tok = get_task(cfg.task).load_saved(model_dir)
    r = cfg.report
    entry = {
        "name": str(model_dir),
        "parameters": measure.count_parameters(net),
        "size": measure.size_on_disk(model_dir),
        "latency": [],
        "memory": [],
    }
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        for batch in (1, 32):
            entry["latency"].append(
                measure.measure_latency(
                    net,
                    tok,
                    texts,
                    batch_size=batch,
                    device=device,
                    repeats=r.latency_repeats,
                    warmup=r.warmup,
                    max_length=max_length,
                )
            )
        entry["memory"].append(
            measure.inference_peak_memory(
                net, tok, texts, batch_size=32, device=device, max_length=max_length
            )
        )
    if r.energy:
        batches = measure.prepare_batches(
            tok, texts, batch_size=32, max_length=max_length, device=devices[-1]
        )
        entry["energy"] = measure.measure_energy(
            lambda: measure.run_inference(net, batches),
            label="inference",
            country_iso_code=r.country_iso_code,
            predictions=32 * len(batches),
        )
    return entry


def _training(run: Path | None) -> dict:
    if run is None or not (run / "results.json").is_file():
        return {}
    results = json.loads((run / "results.json").read_text())
    out = {"wall_time_s": results.get("train_seconds"), "history": str(run / "metrics.csv")}
    if (run / "energy.json").is_file():
        out["energy"] = json.loads((run / "energy.json").read_text())
        out["wall_time_s"] = out["energy"].get("wall_time_s", out["wall_time_s"])
    return out


def report(
    runs: list[str | Path] = (),
    *,
    teacher: str | Path | None = None,
    student: str | Path | None = None,
    baseline: str | Path | None = None,
    out_dir: str | Path | None = None,
    config: str | Path | dict | Config | None = None,
) -> tuple[dict, Path, Path]:
    """Evaluate and measure teacher / student / baseline, write ``report.md`` and ``report.html``.

    ``runs`` are run folders (of finetune, distill or compress; a compress folder holds all three);
    their role is read from their results. ``teacher``/``student``/``baseline`` name folders explicitly.
    The test split comes from ``config``, or the student's (else any run's) saved config.yaml.
    """
    from lmdistill.report.measure import environment_info
    from lmdistill.report.render import render_report

    roles: dict[str, Path | None] = {}
    for run in runs:
        run = Path(run).expanduser()
        subs = [run / r for r in ROLES if (run / r / "results.json").is_file()]
        for r in subs or [run]:
            if not (r / "results.json").is_file():
                raise LmdistillError(f"report: '{r}' is not a finished lmdistill run (no results.json)")
            roles[_role_of(r)] = r
    explicit = {"teacher": teacher, "student": student, "baseline": baseline}
    models = {role: _model_dir(p) for role, p in explicit.items() if p is not None}
    models.update({role: _model_dir(p) for role, p in roles.items() if role not in models})
    if not models:
        raise LmdistillError("report: give at least one run folder (or --teacher/--student/--baseline)")
    if config is None:
        source = roles.get("student") or next(iter(roles.values()), None)
        if source is None or not (source / "config.yaml").is_file():
            raise LmdistillError(
                "report: no config.yaml found in the runs; give --config to name the test data"
            )
        config = source / "config.yaml"
    cfg = load_config(config) if not isinstance(config, Config) else config
    _same_task(roles, cfg.task)
    out = _report_folder(Path(out_dir or cfg.output_dir))  # checked before anything is measured
    task = get_task(cfg.task)
    inputs = task.report_inputs(cfg)
    texts = inputs.texts
    notes = [f"Latency and energy are measured on {len(texts)} test texts, max_length {inputs.max_length}."]
    notes += inputs.notes
    data = {
        "title": f"Distillation report: {Path(out_dir or cfg.output_dir).name}",
        "task": cfg.task,
        "evaluation": inputs.evaluation,
        "environment": environment_info(),
        "notes": notes,
        "models": {},
    }
    for role in ROLES:
        if role not in models:
            continue
        print(f"   {role}: evaluating and measuring {models[role]}", flush=True)
        metrics, evaluation = task.report_quality(models[role], cfg, inputs)
        data["evaluation"] = evaluation or data["evaluation"]
        entry = _measure(models[role], texts, inputs.max_length, cfg)
        entry.update(metrics=metrics, training=_training(roles.get(role)))
        data["models"][role] = entry
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "report.json", json.dumps(data, indent=2, default=str), "--output")
    md, html = render_report(data, out)
    if "student" in models:
        write_model_card(models["student"], data, cfg)
    return data, md, html


def _same_task(roles: dict[str, Path], task: str) -> None:
    """Refuse runs of different tasks in one report (their metrics cannot be compared)."""
    found = {}
    for role, run in roles.items():
        results = json.loads((run / "results.json").read_text())
        saved = results.get("task")
        if saved is None and (run / "config.yaml").is_file():
            saved = (yaml.safe_load((run / "config.yaml").read_text()) or {}).get("task", "classification")
        found[role] = saved or task
    tasks = {t for t in found.values()} | {task}
    if len(tasks) > 1:
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


# --------------------------------------------------------------------------------------------- card


def _fmt(entry: dict | None, metric: str) -> str:
    m = (entry or {}).get("metrics", {}).get(metric)
    if not m:
        return "n/a"
    return f"{m['value']:.4f} (95% CI {m['low']:.4f} to {m['high']:.4f})"


def write_model_card(model_dir: Path, data: dict, cfg: Config) -> Path:
    """README.md in the student's folder (the Hugging Face convention): teacher, method, data, scores,
    and the report's key figures."""
    models = data["models"]
    student, teacher, baseline = models.get("student"), models.get("teacher"), models.get("baseline")
    task = get_task(cfg.task)
    metric = task.primary_metric
    method = cfg.distill.method or ", ".join(f"{k} x{w}" for k, w in (cfg.distill.losses or {}).items())
    data_src = cfg.data.dataset or cfg.data.train
    lines = [
        "---",
        "library_name: transformers",
        "tags: [distillation, lmdistill]",
        "---",
        "",
        f"# {model_dir.parent.name}: a distilled student",
        "",
        f"Distilled with [lmdistill](https://pypi.org/project/lmdistill/) from the teacher "
        f"`{cfg.teacher.name_or_path}` by {method} (temperature {cfg.distill.temperature}).",
        "",
        f"- **Task:** {cfg.task} on `{data_src}` (text column `{cfg.data.text_column}`"
        + (f", label `{cfg.data.label_column}`)" if task.labelled else ")"),
        f"- **Student:** {cfg.student.init} "
        f"({'layers ' + str(cfg.student.layers) if cfg.student.layers else ''}"
        f"{f'{cfg.student.num_layers} layers' if cfg.student.num_layers else ''}"
        f"{f'every {cfg.student.keep_every}th layer' if cfg.student.keep_every else ''})",
        f"- **Evaluation:** {data['evaluation']}",
        "",
        f"| model | {metric} | parameters | size on disk | latency, batch 1, CPU |",
        "|---|---|---|---|---|",
    ]
    for role, entry in (("teacher", teacher), ("student", student), ("baseline (no KD)", baseline)):
        if entry is None:
            continue
        lat = next(
            (x for x in entry.get("latency", []) if x.get("batch_size") == 1 and x.get("device") == "cpu"),
            None,
        )
        latency = f"{lat['median_s'] * 1000:.1f} ms" if lat else "n/a"
        lines.append(
            f"| {role} | {_fmt(entry, metric)} | {entry['parameters']['total'] / 1e6:.1f}M | "
            f"{entry['size']['weights_bytes'] / 1e6:.1f} MB | {latency} |"
        )
    lines += [
        "",
        "Measured by `lmdistill report` (see report.html next to the run). Load it with:",
        "",
        "```python",
        "from transformers import pipeline",
        f'model = pipeline("{task.pipeline}", model="{model_dir}")',
        "```",
        "",
    ]
    return write_text(model_dir / "README.md", "\n".join(lines))
