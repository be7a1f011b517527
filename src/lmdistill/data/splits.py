"""Is a run's evaluation held out from its teacher's training? A check before anything is trained.

When validation and test are carved out of the training rows (``data.validation_size`` / ``data.test_size``),
which rows land where is decided by the split seed (``data.split_seed``, else the run's ``seed``) and the two
sizes. A teacher fine-tuned by lmdistill on the same data with another seed may have trained on rows that this
run carves into its test split: the student then learns those rows' labels from the teacher, and its test
score is inflated (on the demo task a 1-layer student given only ``seed=1`` scored 80.4 on such a split,
against 77.7-78.8 for four seeds on the teacher's own split: benchmarks/results/student-variants-2026-12-04).

A teacher folder written by lmdistill (``RUN/model``, the resolved ``RUN/config.yaml`` beside it) says how it
was split; :func:`teacher_split_problems` compares that with the run's own split and names what to set.
Teachers from elsewhere (a hub id, a folder without an lmdistill config) cannot be checked and are not.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from lmdistill.config.load import read_yaml
from lmdistill.config.schema import Config, DataConfig
from lmdistill.errors import ConfigError

SOURCE_KEYS = ("dataset", "dataset_config", "options", "train", "validation", "test")
"""What names the rows: equal in both configs means the same table is split."""

HEADER = "# lmdistill "
"""The first line of every resolved config lmdistill saves with a run."""


def carving(data: dict[str, Any], seed: Any) -> dict[str, Any] | None:
    """What decides which training rows are carved into validation and test (None when nothing is carved:
    both come from their own files or splits, or their sizes are 0)."""
    carved = [s for s in ("validation", "test") if not data.get(s) and data.get(f"{s}_size")]
    if not carved:
        return None
    split_seed = data.get("split_seed")  # the sizes of splits given as files do not move any row
    return {"split_seed": seed if split_seed is None else split_seed} | {
        f"{s}_size": data[f"{s}_size"] for s in carved
    }


def teacher_run_config(name_or_path: str | None) -> tuple[Path, dict[str, Any]] | None:
    """The resolved config of the lmdistill run that wrote the model folder ``name_or_path`` (its parent's
    config.yaml, when that file starts with lmdistill's header), or None."""
    if not name_or_path:
        return None
    folder = Path(name_or_path)
    path = folder.parent / "config.yaml"
    if not folder.is_dir() or not path.is_file():
        return None
    try:
        with path.open(encoding="utf-8") as f:
            if not f.readline().startswith(HEADER):
                return None
        raw = read_yaml(path)  # the project's safe reader: size limit, no code, no alias bombs
    except (OSError, UnicodeDecodeError, ConfigError):
        return None
    return (path, raw) if isinstance(raw, dict) and isinstance(raw.get("data"), dict) else None


def teacher_split_problems(cfg: Config) -> list[str]:
    """One line for each teacher (``teacher``, ``teachers``) fine-tuned by lmdistill on the same data as
    ``cfg`` but carved into validation / test differently: this run's evaluation rows could be rows it
    trained on."""
    named = [("teacher.name_or_path", cfg.teacher.name_or_path)]
    named += [(f"teachers[{i}].name_or_path", t.name_or_path) for i, t in enumerate(cfg.teachers)]
    ours_data = asdict(cfg.data)
    ours = carving(ours_data, cfg.seed)
    problems = []
    for key, name in named:
        found = teacher_run_config(name)
        if found is None or ours is None:
            continue
        path, raw = found
        theirs_data = asdict(DataConfig()) | raw["data"]  # a key it leaves out has its default
        same = all((theirs_data.get(k) or None) == (ours_data.get(k) or None) for k in SOURCE_KEYS)
        if raw.get("task", "classification") != cfg.task or not same:
            continue  # another task or another table: nothing to compare
        theirs = carving(theirs_data, raw.get("seed", Config.seed))
        if theirs is None or theirs == ours:
            continue
        differ = [k for k in ("split_seed", "validation_size", "test_size") if theirs.get(k) != ours.get(k)]
        was = ", ".join(f"{k} {theirs[k]}" for k in differ)
        now = ", ".join(f"{k} {ours[k]}" for k in differ)
        fix = " ".join(f"data.{k}={theirs[k]}" for k in differ)
        problems.append(
            f"{key}: the teacher's run ({path.name} beside it) split the same data with {was}; this run splits "
            f"it with {now}, so its test rows may be rows the teacher trained on (inflated scores): set {fix}"
        )
    return problems
