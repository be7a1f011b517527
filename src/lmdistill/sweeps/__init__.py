"""``lmdistill sweep CONFIG``: every variant of a base config trained with every seed, and a leaderboard.

The config is a usual ``finetune`` / ``distill`` config plus a ``sweep:`` section
(:class:`lmdistill.config.sweep.SweepConfig`: a ``grid`` or a list of ``variants``, ``seeds``, the
``reference`` variant). Each (variant, seed) is one run of the run driver (:func:`lmdistill.run.run`, exactly what
``lmdistill distill`` runs) into OUTPUT_DIR/<variant>/seed-<seed>; with ``sweep.processes > 1`` runs go to
separate ``lmdistill`` processes. A run whose folder holds a finished run of the same config is skipped; an
unfinished one continues from its newest checkpoint (or starts again when it has none); a run that fails is
recorded with its one-line error and the sweep goes on. Distill runs of a cacheable task share the teacher's
outputs through one teacher cache per seed (OUTPUT_DIR/teacher_cache/seed-<seed>; the cache rebuilds itself when
a variant changes the teacher, the data or the features read).

Every finished run's model is then scored on its test split (the task's report evaluation: per-example outputs,
kept in OUTPUT_DIR/<variant>/seed-<seed>.scores.json), every variant's model is timed at batch 1 (one process,
interleaved), and the leaderboard is written (:mod:`lmdistill.report.leaderboard`).
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmdistill.config.load import apply_overrides, build_config, infer_verb, raw_config, save_config
from lmdistill.config.schema import Config
from lmdistill.config.sweep import SweepConfig, VariantConfig, check_sweep
from lmdistill.errors import ConfigError, LmdistillError
from lmdistill.fileio import clip, write_text
from lmdistill.tasks import TASKS, get_task, load_config

MARKER = ".lmdistill-sweep.json"
STATE = "sweep.json"


@dataclass
class Job:
    """One run of a sweep: a variant with a seed, its loaded config and its folder."""

    variant: str
    seed: int
    cfg: Config
    folder: Path
    shares_cache: bool = False

    @property
    def key(self) -> str:
        return f"{self.variant}/seed-{self.seed}"

    @property
    def scores(self) -> Path:
        return self.folder.with_name(f"{self.folder.name}.scores.json")


@dataclass
class Plan:
    """What a sweep runs: its folder, verb, settings, variants (in order) and jobs (seed by seed)."""

    folder: Path
    verb: str
    sweep: SweepConfig
    variants: list[VariantConfig]
    seeds: list[int]
    reference: str
    jobs: list[Job]
    task: str


@dataclass
class SweepResult:
    """A finished sweep: its folder, the leaderboard files, its rows, and the runs that failed."""

    folder: Path
    files: dict[str, Path]
    rows: list[dict]
    failed: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------- planning


def override_items(v: VariantConfig) -> list[str]:
    """The variant's overrides in the ``a.b=value`` syntax of the command line (values as JSON, which is YAML)."""
    return [f"{k}={json.dumps(x)}" for k, x in v.overrides.items()]


def plan(config: str | Path | dict, overrides: list[str] | tuple[str, ...] = ()) -> Plan:
    """Read and check the whole sweep before anything runs: the sweep section and every variant's config with
    every seed (strict keys; every problem at once, each line naming its variant)."""
    raw = copy.deepcopy(raw_config(config, overrides))
    if not isinstance(raw.get("sweep"), dict):
        raise ConfigError(
            [
                "sweep: the config has no sweep section; add sweep: {grid: {key: [values]}} or "
                "sweep: {variants: [{name: ..., overrides: {...}}]} (docs/sweep.md)"
            ]
        )
    base, errors = build_config(raw)
    if base is None or errors:
        raise ConfigError(errors)
    s = base.sweep
    variants, errors = check_sweep(s)
    if errors:
        raise ConfigError(errors)
    verb = infer_verb({k: v for k, v in raw.items() if k != "sweep"})
    if verb == "compress":
        raise ConfigError(
            [
                "sweep: runs finetune or distill runs; this config has compress keys (compress, "
                "student.vocabulary, student.width): remove them"
            ]
        )
    folder = Path(base.output_dir)
    seeds = list(s.seeds or [base.seed])
    task = get_task(base.task) if base.task in TASKS else None
    jobs, problems = _jobs(raw, folder, variants, seeds, verb, task, base.seed)
    if s.metric is not None and task is not None:
        from lmdistill.config.load import suggest
        from lmdistill.tasks.metrics import GREATER_IS_BETTER

        known = sorted({*task.metrics, *GREATER_IS_BETTER, task.report_metric or task.primary_metric})
        if s.metric not in known:
            problems.append(
                f"sweep.metric {s.metric!r} is not a metric of task {base.task}{suggest(s.metric, known)}"
            )
    if problems:
        raise ConfigError(problems)
    reference = s.reference or variants[0].name
    return Plan(folder, verb, s, variants, seeds, reference, jobs, base.task)


def _jobs(
    raw: dict, folder: Path, variants: list[VariantConfig], seeds: list[int], verb: str, task, split: int
):
    """Every (variant, seed) job with its loaded config, seed by seed, and every problem of their configs.
    Unless ``data.split_seed`` is given, every run carves validation and test with the config's own seed
    (``split``): every variant and seed is scored on the same test examples, and none of them is a training
    example of a teacher trained with that seed."""
    fixed = (raw.get("data") or {}).get("split_seed") is None
    given = (raw.get("training") or {}).get("teacher_cache", "auto")
    explicit_cache = given != "auto"  # a folder or null is the user's choice; auto becomes the shared cache
    jobs, problems = [], []
    for seed in seeds:
        for v in variants:
            run_dir = folder / v.name / f"seed-{seed}"
            items = [*override_items(v), f"seed={seed}", f"output_dir={json.dumps(str(run_dir))}"]
            if fixed and "data.split_seed" not in v.overrides:
                items.append(f"data.split_seed={split}")
            shares = (
                verb == "distill" and task is not None and task.cacheable and not explicit_cache
                and v.overrides.get("training.teacher_cache", "auto") == "auto"
            )  # fmt: skip
            if shares:
                items.append(
                    f"training.teacher_cache={json.dumps(str(folder / 'teacher_cache' / f'seed-{seed}'))}"
                )
            try:
                cfg = load_config(
                    apply_overrides({k: x for k, x in raw.items() if k != "sweep"}, items), verb=verb
                )
            except ConfigError as e:
                problems += [
                    f"variant {v.name}: {x}" for x in e.errors if f"variant {v.name}: {x}" not in problems
                ]
                continue
            jobs.append(Job(v.name, seed, cfg, run_dir, shares))
    return jobs, problems


def describe(p: Plan) -> str:
    """The dry run's text: every variant with its overrides, and the runs."""

    def n(k: int, what: str) -> str:
        return f"{k} {what}{'s' if k != 1 else ''}"

    lines = [f"sweep into {p.folder}: {n(len(p.variants), 'variant')} x {n(len(p.seeds), 'seed')} = "
             f"{n(len(p.jobs), p.verb + ' run')} (seeds {', '.join(map(str, p.seeds))}; reference {p.reference})"]  # fmt: skip
    for v in p.variants:
        shown = " ".join(override_items(v)) or "(the base config)"
        lines.append(f"  {v.name}{' (reference)' if v.name == p.reference else ''}: {shown}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- running


def _claim(folder: Path) -> None:
    """Refuse a sweep folder holding files no sweep wrote; mark it as a sweep's."""
    if folder.exists() and not folder.is_dir():
        raise LmdistillError(
            f"output_dir '{folder}' is a file; a sweep needs a folder (new, empty, or an earlier sweep's)"
        )
    if folder.is_dir() and any(folder.iterdir()) and not (folder / MARKER).is_file():
        raise LmdistillError(
            f"output_dir '{folder}' holds files that lmdistill sweep did not write; choose a new "
            "or empty folder (or an earlier sweep's, to continue it)"
        )
    folder.mkdir(parents=True, exist_ok=True)
    write_text(
        folder / MARKER,
        json.dumps({"kind": "lmdistill-sweep", "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")}),
    )


UNCOMPARED = ("output_dir", "report", "compress", "sweep", "training.resume", "training.teacher_cache")
"""Keys that do not decide a run's result (where it is written, how it resumes, where its teacher cache lies)."""


def _comparable(cfg: dict) -> dict:
    cfg = copy.deepcopy(cfg)
    for key in UNCOMPARED:
        section, _, name = key.rpartition(".")
        (cfg.get(section) or {} if section else cfg).pop(name, None)
    return cfg


def status(job: Job) -> str | None:
    """``finished`` (a finished run of this config), ``partial`` (an unfinished run), ``new``, or None when the
    folder holds a finished run of ANOTHER config (the caller refuses)."""
    import dataclasses

    import yaml

    from lmdistill.outputs import holds_run
    from lmdistill.run import stage_runs
    from lmdistill.tasks.base import stages_of

    run = job.folder
    if (run / "results.json").is_file() and (run / "model").is_dir():
        try:
            saved = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            return None
        # the config.yaml a finished run holds is its last stage's (a stage may set epochs, learning rate)
        *_, (written, _, _) = stage_runs(job.cfg, stages_of(job.cfg))
        theirs = _comparable(saved if isinstance(saved, dict) else {})
        same = theirs == _comparable(dataclasses.asdict(written))
        return "finished" if same else None
    return "partial" if run.is_dir() and holds_run(run) else "new"


def _flags(job: Job, state: str, overwrite: bool) -> tuple[bool, bool]:
    """(resume, overwrite) for a run: an unfinished run with a checkpoint continues; else it starts over."""
    from lmdistill import checkpoint

    if overwrite:
        return False, True
    resume = state == "partial" and bool(checkpoint.checkpoints(job.folder))
    return resume, state == "partial" and not resume


def run_in_process(job: Job, verb: str, resume: bool, overwrite: bool) -> None:
    """One run through the run driver, as ``lmdistill distill`` does."""
    from lmdistill.run import run

    cfg = copy.deepcopy(job.cfg)
    cfg.training.resume = "auto" if resume else None
    run(cfg, verb, overwrite=overwrite)


def run_in_subprocess(job: Job, verb: str, resume: bool, overwrite: bool) -> None:
    """One run as its own ``lmdistill`` process (its config written next to its folder, its output in a log)."""
    path = job.folder.with_name(f"{job.folder.name}.config.yaml")
    log = job.folder.with_name(f"{job.folder.name}.log")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_config(job.cfg, path, f"lmdistill sweep: variant {job.variant}, seed {job.seed}")
    cmd = [sys.executable, "-m", "lmdistill.cli", verb, str(path)]
    cmd += ["--resume"] if resume else ["--overwrite"] if overwrite else []
    with open(log, "w", encoding="utf-8") as out:
        rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=False).returncode
    if rc:
        lines = [
            x.strip() for x in log.read_text(encoding="utf-8", errors="replace").splitlines() if x.strip()
        ]
        errors = [x[len("error: ") :] for x in lines if x.startswith("error: ")]
        # its one-line error (exit 2) as the CLI printed it; else a traceback's last line and where the log is
        last = (lines[-1] if lines else f"exit status {rc}") + f" (log: {log})"
        raise LmdistillError(errors[-1] if errors else last)


def _one(job: Job, verb: str, state: str, overwrite: bool, runner) -> dict:
    """Run one job; its record: ok or the one-line error, and the wall time."""
    resume, replace = _flags(job, state, overwrite)
    start = time.perf_counter()
    try:
        runner(job, verb, resume, replace)
    except KeyboardInterrupt:
        raise
    except Exception as e:  # noqa: BLE001 - any failure of one run is recorded and the sweep goes on
        message = clip(e.errors[0] if isinstance(e, ConfigError) and e.errors else str(e) or type(e).__name__)
        if not isinstance(e, LmdistillError):
            message = clip(f"{type(e).__name__}: {message}")
        print(f"== {job.key}: failed: {message}", flush=True)
        return {"status": "failed", "error": message, "wall_s": round(time.perf_counter() - start, 1)}
    return {"status": "ok", "wall_s": round(time.perf_counter() - start, 1)}


def run_jobs(p: Plan, *, overwrite: bool = False, runner=None) -> dict[str, dict]:
    """Every job not finished yet (seed by seed); the state of every job (also written to OUTPUT_DIR/sweep.json).
    ``sweep.processes > 1``: runs in that many processes at once; the runs sharing one seed's teacher cache
    run one after another."""
    states = {j.key: status(j) for j in p.jobs}
    other = [k for k, s in states.items() if s is None]
    if other and not overwrite:
        raise LmdistillError(
            f"sweep: '{p.folder / other[0]}' holds a finished run of another config (the sweep "
            "changed); pass --overwrite to train such runs again, or choose another output_dir"
        )
    path = p.folder / STATE
    record = json.loads(path.read_text()) if path.is_file() else {}
    record = {k: v for k, v in record.get("runs", {}).items() if k in states}
    todo = [j for j in p.jobs if overwrite or states[j.key] != "finished"]
    for j in p.jobs:
        if j not in todo:
            record[j.key] = {**record.get(j.key, {}), "status": "ok", "skipped": True}
            print(f"== {j.key}: finished earlier, skipped", flush=True)
    parallel = p.sweep.processes > 1 and runner is None
    runner = runner or (run_in_subprocess if parallel else run_in_process)

    lock = threading.Lock()  # the record is shared by the threads that wait for the processes

    def group(jobs: list[Job]) -> None:
        for j in jobs:
            print(
                f"== {j.key}: {p.verb} ({'continuing' if states[j.key] == 'partial' else 'starting'})",
                flush=True,
            )
            done = _one(j, p.verb, states[j.key] or "partial", overwrite, runner)
            with lock:
                record[j.key] = done
                write_text(path, json.dumps({"runs": record}, indent=2))

    if parallel:
        from concurrent.futures import ThreadPoolExecutor

        groups: dict[Any, list[Job]] = {}
        for j in todo:
            groups.setdefault(("cache", j.seed) if j.shares_cache else j.key, []).append(j)
        with ThreadPoolExecutor(max_workers=p.sweep.processes) as pool:
            list(pool.map(group, groups.values()))
    else:
        group(todo)
    write_text(path, json.dumps({"runs": record}, indent=2))
    return record


# --------------------------------------------------------------------------------------------- the sweep


def sweep(
    config: str | Path | dict,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    overwrite: bool = False,
    runner=None,
) -> SweepResult:
    """Run every variant with every seed (skipping finished runs) and write the leaderboard into output_dir.

    ``overwrite``: train every run again (also those finished with another config). ``runner(job, verb, resume,
    overwrite)`` replaces how one run is run (default: in this process, or in its own process with
    ``sweep.processes > 1``). A run that fails is in ``failed`` (``variant/seed-S`` -> its one-line error).
    """
    p = plan(config, overrides)
    _claim(p.folder)
    print(describe(p), flush=True)
    record = run_jobs(p, overwrite=overwrite, runner=runner)
    from lmdistill.sweeps.board import leaderboard

    data = leaderboard(p, record)
    from lmdistill.report.leaderboard import write_leaderboard

    files = write_leaderboard(data, p.folder)
    failed = {k: v["error"] for k, v in record.items() if v.get("status") == "failed"}
    return SweepResult(p.folder, files, data["rows"], failed)
