"""The whole pipeline a user runs to answer "what did distillation buy me and what did it cost?".

``compress(config)``: fine-tune the teacher (unless it is already trained for the task), build the student
and run the steps of ``compress.steps`` before distillation (vocabulary trimming, width pruning:
:mod:`lmdistill.chain`), distill the student, train the same student without distillation (hard labels only,
same budget: the baseline), serve the distilled student and the teacher in int8 / ONNX Runtime when asked,
evaluate every model on the test split and write the report (one row per step). ``report(run_dirs)``: the report alone, from
finished runs. Both are what ``lmdistill compress`` and ``lmdistill report`` call.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from lmdistill.chain import (
    BEFORE,
    assistant_config,
    assistant_rows,
    check_chain,
    prepare_student,
    runtime_rows,
    write_chain,
)
from lmdistill.config.checks import compress_steps
from lmdistill.config.schema import Config, StudentConfig
from lmdistill.errors import ConfigError, LmdistillError
from lmdistill.fileio import write_text
from lmdistill.reporting import ROLES, model_dir
from lmdistill.tasks import TASKS, get_task, load_config


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
    for key in (
        "output_dir",
        "report",
        "compress",
    ):  # compress.steps: the steps before distill are checked apart
        cfg.pop(key, None)
    cfg.get("training", {}).pop("resume", None)
    return cfg


def _finished(run: Path, cfg: Config, verb: str = "finetune") -> str | None:
    """None when ``run`` holds a finished run of exactly this config; else why not ("" when there is no
    finished run at all). A distill run saves the config of its last stage (the stage's epochs and learning
    rate in ``training``), so that is what a distill run is compared with."""
    from dataclasses import asdict

    from lmdistill.run import stage_runs, stages_of

    if not (run / "results.json").is_file() or not (run / "model" / "config.json").is_file():
        return ""
    try:
        saved = yaml.safe_load((run / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return "its config.yaml cannot be read"
    if verb == "distill":
        *_, (cfg, _, _) = stage_runs(cfg, stages_of(cfg))
    mine = _comparable(asdict(cfg))
    theirs = _comparable(saved if isinstance(saved, dict) else {})
    differ = [k for k in mine if mine.get(k) != theirs.get(k)]
    return f"it was trained with another {differ[0]} section" if differ else None


def _role_run(role: str, run_cfg: Config, verb: str, *, resume: bool, overwrite: bool, energy: dict) -> bool:
    """Train one of compress's runs into its folder, or reuse it; True when it was trained now."""
    from lmdistill.report.measure import track_energy
    from lmdistill.run import run

    folder = Path(run_cfg.output_dir)
    why = _finished(folder, run_cfg, verb)
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


def baseline_config(s_cfg: Config, task, folder: Path, steps: int | None) -> Config:
    """The no-KD baseline's config: the student's, trained on the task's ``baseline_losses`` alone, with no teacher
    signal (no matches, stages, recipe, sequence KD, teacher cache, transfer set or augmentation), for ``steps``
    optimizer steps (the student's over all its stages), at the student's learning rate (its last stage's when
    that stage sets one: ``training.learning_rate`` may be the teacher's)."""
    b_cfg = copy.deepcopy(s_cfg)
    stages = s_cfg.distill.stages
    if stages and stages[-1].learning_rate is not None:
        b_cfg.training.learning_rate = stages[-1].learning_rate
    b_cfg.output_dir = str(folder)
    b_cfg.distill.losses = dict(task.baseline_losses)
    b_cfg.distill.matches, b_cfg.distill.stages, b_cfg.distill.method = [], [], None
    b_cfg.lm.seq_kd, b_cfg.lm.on_policy, b_cfg.training.teacher_cache = False, 0.0, None  # no teacher at all
    b_cfg.data.unlabeled = b_cfg.data.augment = None  # unlabelled text needs a teacher to score it
    b_cfg.training.max_steps = steps  # the same optimizer steps as the student took over all its stages
    return b_cfg


def compress(
    config: str | Path | dict | Config,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    resume: bool = False,
    overwrite: bool = False,
) -> CompressResult:
    """Teacher (fine-tuned if needed) -> [student shaped by trim_vocabulary / prune_width] -> distilled student +
    no-KD baseline -> [quantize / export of student and teacher] -> evaluation -> report (a row per step).

    ``output_dir`` must be new or empty, unless ``resume`` (finished runs of the same config are reused,
    unfinished ones continue from their checkpoints) or ``overwrite`` (every run is trained again). The no-KD
    baseline trains for exactly as many optimizer steps as the student took over all its stages.
    """
    from lmdistill.outputs import RunFolder
    from lmdistill.run import input_paths, preflight_problems

    cfg = load_config(config, overrides, verb="compress")
    task = get_task(cfg.task)
    if task.baseline_losses is None:
        supported = [n for n in TASKS if get_task(n).baseline_losses is not None]
        raise LmdistillError(
            f"task: compress supports {', '.join(supported)}, not {cfg.task} (run finetune / distill and "
            "evaluate it on its own)"
        )
    # the data files and columns of the student's and the baseline's runs, before any model is loaded
    b_check = baseline_config(cfg, task, Path(cfg.output_dir) / "baseline", None)
    load_config(copy.deepcopy(b_check))  # the baseline's own keys (e.g. the pairs it trains on)
    problems = list(dict.fromkeys(preflight_problems(task, cfg, "compress") + task.check_data(b_check)))
    if problems:
        raise ConfigError(problems)
    steps = compress_steps(cfg)
    check_chain(cfg)  # widths, vocabulary coverage and int8 kernels, before anything is trained
    out = Path(cfg.output_dir)
    runs = {role: out / role for role in ROLES}
    energy: dict[str, dict] = {}
    flags = {"resume": resume, "overwrite": overwrite, "energy": energy}
    before = [x for x in steps if x in BEFORE]
    after = [x for x in steps if x in ("quantize", "export")]
    assistants = [out / f"assistant-{i + 1}" for i in range(len(cfg.compress.assistants))]
    total = 4 + bool(before) + bool(after) + len(assistants)
    stage = iter(range(1, total + 1))
    extra = []
    with RunFolder(out, "compress", inputs=input_paths(cfg), resume=resume, overwrite=overwrite):
        teacher_model = cfg.teacher.name_or_path
        if teacher_model:
            _say(f"{next(stage)}/{total} teacher: using the trained teacher {teacher_model}")
            runs.pop("teacher")
        else:
            _say(f"{next(stage)}/{total} teacher: fine-tuning {cfg.model.name_or_path}")
            t_cfg = copy.deepcopy(cfg)
            t_cfg.output_dir = str(runs["teacher"])
            # the teacher is fine-tuned whole: the steps that shape the student are not its settings
            t_cfg.student.vocabulary = t_cfg.student.width = None
            _role_run("teacher", t_cfg, "finetune", **flags)
            teacher_model = str(runs["teacher"] / "model")
        first_teacher = teacher_model

        for i, folder in enumerate(
            assistants
        ):  # teacher -> assistant 1 -> ... -> student (Mirzadeh et al. 2020)
            _say(f"{next(stage)}/{total} teacher assistant {i + 1}: distilling {teacher_model} into {folder}")
            runs[folder.name] = folder
            _role_run(folder.name, assistant_config(cfg, i, teacher_model, folder), "distill", **flags)
            teacher_model = str(folder / "model")
        extra += assistant_rows(cfg, assistants)

        s_cfg = copy.deepcopy(cfg)
        s_cfg.output_dir, s_cfg.teacher.name_or_path = str(runs["student"]), teacher_model
        if before:
            _say(
                f"{next(stage)}/{total} student: layers kept, then {', '.join(before)} (in OUTPUT_DIR/steps)"
            )
            prepared, steps_rows = prepare_student(
                cfg, teacher_model, out, resume=resume, overwrite=overwrite
            )
            extra += steps_rows
            s_cfg.student = StudentConfig(init="pretrained", name_or_path=str(prepared))

        _say(f"{next(stage)}/{total} student: distilling")
        _role_run("student", copy.deepcopy(s_cfg), "distill", **flags)

        what = " + ".join(task.baseline_losses)
        steps_taken = _stage_steps(runs["student"])
        _say(
            f"{next(stage)}/{total} baseline: the same student trained on {what} only (no distillation), "
            f"{steps_taken} steps as the student"
        )
        b_cfg = baseline_config(s_cfg, task, runs["baseline"], steps_taken)
        _role_run("baseline", b_cfg, "distill", **flags)

        if after:
            _say(f"{next(stage)}/{total} {' + '.join(after)}: the distilled student and the teacher")
            extra += runtime_rows(cfg, first_teacher, runs["student"] / "model", out, overwrite=overwrite)
        for role, result in energy.items():
            write_text(runs[role] / "energy.json", json.dumps(result, indent=2, default=str))
        _say(f"{next(stage)}/{total} report: evaluating and measuring {3 + len(extra)} models")
        report_data, md, html = report(
            [runs[r] for r in ROLES if r in runs],
            teacher=first_teacher if "teacher" not in runs else None,
            out_dir=out,
            config=s_cfg,
            extra=extra,
        )
        if assistants:  # the chain, model by model: its folder, teacher, layers, size and test metrics
            write_chain(out, first_teacher, assistants, runs["student"], report_data)
    tests = {
        role: {k: v["value"] for k, v in entry.get("metrics", {}).items()}
        for role, entry in report_data["models"].items()
    }
    print(f"\nreport: {html}\n        {md}")
    return CompressResult(out, md, html, runs, tests)


# --------------------------------------------------------------------------------------------- report


def report(runs=(), **kwargs) -> tuple[dict, Path, Path]:
    """:func:`lmdistill.reporting.report`, and the model card of the student (README.md in its folder)."""
    from lmdistill.reporting import report as build

    data, md, html = build(runs, **kwargs)
    student = next((e for e in data["models"].values() if e.get("role") == "student"), None)
    if student is not None:
        config = kwargs.get("config")
        cfg = load_config(config) if config is not None and not isinstance(config, Config) else config
        if cfg is None:
            cfg = load_config(Path(student["name"]).parent / "config.yaml")
        write_model_card(Path(student["name"]), data, cfg)
    return data, md, html


_model_dir = model_dir  # the report's name for it, kept for callers of the earlier module


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
    metric = data.get("primary_metric") or task.report_metric or task.primary_metric
    method = cfg.distill.method or ", ".join(f"{k} x{w}" for k, w in (cfg.distill.losses or {}).items())
    data_src = cfg.data.dataset or cfg.data.train
    lines = [
        "---",
        f"library_name: {'transformers' if task.pipeline else 'sentence-transformers'}",
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
        f"{f'every {cfg.student.keep_every}th layer' if cfg.student.keep_every else ''}"
        f"{f'`{cfg.student.name_or_path}`' if cfg.student.init == 'pretrained' else ''})",
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
        *task.usage(model_dir),
        "```",
        "",
    ]
    return write_text(model_dir / "README.md", "\n".join(lines))
