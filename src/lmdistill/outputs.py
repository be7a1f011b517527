"""Run folders: a run claims its ``output_dir`` before it writes anything, and publishes what it made at once.

Claiming (:class:`RunFolder`, a context manager) refuses, in one line and before any file is written:

- an ``output_dir`` that is, contains or lies inside a model folder the run reads (teacher, model, student,
  tokenizers, a local data set folder), or that is or contains a data file it reads;
- a folder holding files lmdistill did not write (never touched, whatever the flags);
- a folder holding an earlier run, unless the run resumes it (``--resume``) or replaces it (``--overwrite``: its
  checkpoints are removed at once, its model and results stay until the new ones are published);
- a folder another lmdistill process is writing (a lock file; a lock left by a dead process is taken over).

While it runs, the model and the logs go to ``OUTPUT_DIR/.lmdistill-staging`` and the checkpoints to
``OUTPUT_DIR/checkpoints``. :meth:`RunFolder.publish` writes the resolved config, run_info.json and results.json
into the staging folder and then moves everything into place, results.json last, so a run that fails (a full
disk, an error, Ctrl-C) leaves the previous complete run as it was and no temporary folders behind.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path

from lmdistill.errors import LmdistillError
from lmdistill.fileio import guard, short_list, write_text

MARKER = ".lmdistill-run.json"
LOCK = ".lmdistill.lock"
STAGING = ".lmdistill-staging"
PUBLISHED = ("model", "projections.safetensors", "metrics.csv", "tensorboard", "config.yaml", "run_info.json")
"""What a run publishes, in this order; results.json comes last."""
REUSABLE = ("teacher_cache", "seq_kd", "augmented")
"""Caches a run may find from an earlier one: checked by their own fingerprints, kept by --overwrite."""
KNOWN = (*PUBLISHED, "results.json", "checkpoints", "energy.json", MARKER, LOCK, STAGING, *REUSABLE)
COMPRESS = (
    "teacher",
    "student",
    "baseline",
    "report.md",
    "report.html",
    "report.json",
    "quality_vs_cost.png",
    "training_curves.png",
    "steps",
    "export",
)
"""What compress writes besides its three runs' folders (the report and its plots, the students of the steps
before distillation, the exported models)."""


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _resolved(p: str | Path) -> Path:
    return Path(p).expanduser().resolve()


def check_inputs(out: Path, inputs: dict[str, str | None]) -> None:
    """Refuse an output folder that would write over what the run reads. ``inputs``: config key -> path (only
    local paths that exist are checked; hub ids are not paths)."""
    o = _resolved(out)
    for key, value in inputs.items():
        if not value or not Path(value).expanduser().exists():
            continue
        p = _resolved(value)
        if p.is_dir():
            clash = o == p or p in o.parents or o in p.parents
            how = "is" if o == p else ("lies inside" if p in o.parents else "contains")
        else:
            clash = o == p or o in p.parents
            how = "is" if o == p else "contains"
        if clash:
            raise LmdistillError(
                f"output_dir '{out}' {how} {key} '{value}', which this run reads; nothing was written: choose an "
                "output_dir outside it"
            )


def holds_run(path: Path) -> bool:
    """An lmdistill run (or compress) folder: it has the run marker or the files a finished run writes."""
    return (
        (path / MARKER).is_file() or (path / "results.json").is_file() or (path / "run_info.json").is_file()
    )


def _foreign(path: Path, verb: str) -> list[str]:
    """Entries of ``path`` that no lmdistill run wrote: outside a run folder, everything but the caches a run
    may share (teacher_cache, seq_kd) and lmdistill's own hidden files; inside one, what no run writes."""
    ours = {*REUSABLE, MARKER, LOCK, STAGING}
    if holds_run(path):
        ours |= set(KNOWN) | (set(COMPRESS) if verb == "compress" else set())
    return sorted(
        e.name
        for e in path.iterdir()
        if e.name not in ours and not (holds_run(path) and e.name.startswith("stage-"))
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunFolder:
    """The output folder of one run, claimed on enter and released on exit (see the module docstring).

    Args:
        path: ``output_dir``.
        verb: finetune, distill or compress (what the marker records).
        inputs: config key -> path the run reads (checked against ``path``).
        resume: the run continues an earlier one (``training.resume``).
        overwrite: the run replaces an earlier one.
        parent: claimed as a part of this run (a stage folder inside ``output_dir``): no lock, no ownership check.
    """

    def __init__(
        self,
        path: str | Path,
        verb: str,
        *,
        inputs: dict[str, str | None] | None = None,
        resume: bool = False,
        overwrite: bool = False,
        parent: RunFolder | None = None,
    ):
        self.path = Path(path)
        self.verb = verb
        self.inputs = inputs or {}
        self.resume = resume
        self.overwrite = overwrite
        self.parent = parent
        self.locked = False
        self.main = _is_main()
        self.fresh = False
        self.created = False

    @property
    def staging(self) -> Path:
        return self.path / STAGING

    # ---- claiming
    def __enter__(self) -> RunFolder:
        if self.parent is None:
            check_inputs(self.path, self.inputs)
        if not self.main:
            return self
        with guard(self.path, "output_dir"):
            if self.parent is None:
                self._check_contents()
            self.created = not self.path.exists()
            self.path.mkdir(parents=True, exist_ok=True)
            if self.parent is None:
                self._lock()
            try:
                shutil.rmtree(self.staging, ignore_errors=True)  # left by a killed run: it was ours
                if self.overwrite or self.parent is not None and not self.resume:
                    shutil.rmtree(self.path / "checkpoints", ignore_errors=True)
                self.staging.mkdir()
                self.fresh = not (
                    self.path / MARKER
                ).exists()  # an earlier run's marker stays until we publish
                if self.fresh:
                    self._mark("running")
            except BaseException:
                self._unlock()
                raise
        return self

    def __exit__(self, kind, *exc) -> None:
        if self.main:
            shutil.rmtree(self.staging, ignore_errors=True)
            failed_before_anything = (
                kind is not None and self.fresh and not (self.path / "checkpoints").exists()
            )
            if (
                failed_before_anything
                and json.loads((self.path / MARKER).read_text()).get("status") == "running"
            ):
                (self.path / MARKER).unlink(missing_ok=True)  # nothing of this run is left to resume or keep
            self._unlock()
            if failed_before_anything and self.created and not any(self.path.iterdir()):
                self.path.rmdir()

    def sub(self, path: str | Path) -> RunFolder:
        """A folder inside this run's (an earlier stage of a multi-stage recipe)."""
        return RunFolder(path, self.verb, resume=self.resume, overwrite=self.overwrite, parent=self)

    def _check_contents(self) -> None:
        p = self.path
        if p.exists() and not p.is_dir():
            raise LmdistillError(f"output_dir '{p}' is a file; give a folder (new or empty)")
        if not p.is_dir() or not any(p.iterdir()):
            return
        foreign = _foreign(p, self.verb)
        if foreign:
            raise LmdistillError(
                f"output_dir '{p}' holds files lmdistill did not write ({short_list(foreign, 5)}); it never "
                "writes into such a folder: choose a new or empty output_dir"
            )
        if not holds_run(p) or self.resume or self.overwrite:
            return
        raise LmdistillError(
            f"output_dir '{p}' holds an earlier run; pass --resume to continue it or --overwrite to replace it "
            "(Python: training.resume=auto, or overwrite=True), or choose another output_dir"
        )

    def _lock(self) -> None:
        lock = self.path / LOCK
        mine = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()})
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder(lock)
                if holder is not None:
                    raise LmdistillError(
                        f"output_dir '{self.path}' is in use by another lmdistill run ({holder}); wait for it to "
                        "finish or choose another output_dir"
                    ) from None
                lock.unlink(missing_ok=True)  # left by a process that is gone: take it over
                continue
            with os.fdopen(fd, "w") as f:
                f.write(mine)
            self.locked = True
            return
        raise LmdistillError(f"output_dir '{self.path}': could not take the lock file {LOCK}; try again")

    @staticmethod
    def _holder(lock: Path) -> str | None:
        """Who holds a lock file (None: nobody alive on this machine)."""
        try:
            info = json.loads(lock.read_text())
            pid, host = int(info["pid"]), str(info["host"])
        except (OSError, ValueError, KeyError, TypeError):
            return None  # half-written or damaged: its writer is gone
        if host != socket.gethostname():
            return f"process {pid} on {host}"
        return f"process {pid}" if pid != os.getpid() and _pid_alive(pid) else None

    def _unlock(self) -> None:
        if self.locked:
            (self.path / LOCK).unlink(missing_ok=True)
            self.locked = False

    def _mark(self, status: str, files: list[str] | None = None) -> None:
        info = {
            "kind": "lmdistill-run",
            "verb": self.verb,
            "status": status,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        if files is not None:
            info["files"] = files
        write_text(self.path / MARKER, json.dumps(info, indent=2), "output_dir")

    # ---- publishing
    def publish(self, results: dict, config_text: str, run_info: dict) -> None:
        """Write config.yaml, run_info.json and results.json into the staging folder, then move everything
        staged into ``output_dir`` (replacing the earlier run's files), results.json last."""
        if not self.main:
            return
        s = self.staging
        with guard(s, "output_dir"):
            write_text(s / "config.yaml", config_text)
            write_text(s / "run_info.json", json.dumps(run_info, indent=2))
            write_text(s / "results.json", json.dumps(results, indent=2))
            moved = []
            for name in (
                *PUBLISHED,
                *(n for n in os.listdir(s) if n not in PUBLISHED and n != "results.json"),
            ):
                if (s / name).exists() and not name.startswith("."):
                    self._replace(s / name, self.path / name)
                    moved.append(name)
            self._replace(s / "results.json", self.path / "results.json")
            self._mark("complete", [*moved, "results.json"])

    @staticmethod
    def _replace(new: Path, final: Path) -> None:
        if final.is_dir() and not final.is_symlink():
            old = new.with_name(f".old-{new.name}")
            final.rename(old)
            new.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(new, final)
