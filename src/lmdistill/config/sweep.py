"""The ``sweep:`` section: a study of several variants of one base config, each trained with several seeds
(``lmdistill sweep CONFIG``, :mod:`lmdistill.sweeps`). Checked here: its own keys and values; each variant's
config is then checked as a whole by the usual loader."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+-]{0,79}$")
"""A variant name is also its folder's name: letters, digits and . _ = + - (not first), at most 80 characters."""
RESERVED = ("teacher_cache",)
"""Folder names of the sweep folder that no variant may take."""
OWNED = ("seed", "output_dir", "sweep")
"""Top-level keys the sweep sets for every run: a variant may not override them."""


@dataclass
class VariantConfig:
    """One variant: a name (its folder and its row in the leaderboard) and the overrides it lays over the base
    config, as ``{key.sub: value}`` (the keys of ``a.b=value`` on the command line)."""

    name: str | None = None
    """Default: made from the overrides (``temperature=4``)."""
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class SweepConfig:
    """What ``lmdistill sweep`` runs: every variant (``grid`` or ``variants``) with every seed, into
    OUTPUT_DIR/<variant>/seed-<seed>, and the leaderboard comparing them with ``reference``."""

    grid: dict[str, list[Any]] | None = None
    """``{key.sub: [values]}``: one variant per combination of values (the cartesian product, in order)."""
    variants: list[VariantConfig] | None = None
    """An explicit list of variants (instead of ``grid``)."""
    seeds: list[int] | None = None
    """Every variant is trained once per seed (the run's ``seed``); default: the config's seed alone."""
    reference: str | None = None
    """The variant every other is compared with (paired over seeds and test examples); default: the first."""
    comparisons: list[list[str]] = field(default_factory=list)
    """More paired differences, besides every variant against ``reference``: ``[[variant, against], ...]``
    (e.g. the same change at each student size: ``[[hidden-2L, kd-2L], [hidden-1L, kd-1L]]``)."""
    metric: str | None = None
    """The leaderboard's metric; default: the task's headline (accuracy, pearson, perplexity, ...)."""
    processes: int = 1
    """Runs at a time, each in its own process (1: one after another in this process)."""
    latency: bool = True
    """Time every variant's model at batch 1 (interleaved, in this process) for the leaderboard and its plot."""
    bootstrap_resamples: int = 1000
    """Resamples of the two-level bootstrap and of the permutation test."""


def variant_name(overrides: dict[str, Any], full: bool = False) -> str:
    """A folder-safe name for ``overrides``: ``temperature=4_num_layers=3`` (``full``: whole key paths)."""
    parts = []
    for key, value in overrides.items():
        shown = key if full else key.split(".")[-1]
        text = value if isinstance(value, str) else _compact(value)
        parts.append(f"{shown}={text}")
    name = re.sub(r"[^A-Za-z0-9._=+-]+", "-", "_".join(parts) or "base").strip("-.") or "base"
    return name[:80]


def _compact(value: Any) -> str:
    import json

    return json.dumps(value, separators=(",", ":"), default=str)


def expand(s: SweepConfig) -> tuple[list[VariantConfig], list[str]]:
    """The variants of ``s`` (named; the grid's cartesian product in order), and every problem found."""
    import itertools

    errors = []
    if (s.grid is None) == (s.variants is None):
        return [], [
            "sweep: give exactly one of sweep.grid (a key -> list of values) or sweep.variants (a list)"
        ]
    if s.grid is not None:
        if not s.grid:
            return [], ["sweep.grid is empty: give at least one key with a list of values"]
        empty = [k for k, v in s.grid.items() if not v]
        if empty:
            return [], [f"sweep.grid.{empty[0]} has no values: give a list of one or more values"]
        keys = list(s.grid)
        combos = [dict(zip(keys, values)) for values in itertools.product(*s.grid.values())]
        varying = [k for k in keys if len(s.grid[k]) > 1] or keys  # a key with one value names no variant
        shown = [{k: c[k] for k in varying} for c in combos]
        names = [variant_name(c) for c in shown]
        if len(set(names)) < len(names):
            names = [variant_name(c, full=True) for c in shown]
        variants = [VariantConfig(n, c) for n, c in zip(names, combos)]
    else:
        if not s.variants:
            return [], ["sweep.variants is empty: give at least one variant"]
        variants = [VariantConfig(v.name or variant_name(v.overrides), dict(v.overrides)) for v in s.variants]
    seen: dict[str, int] = {}
    for i, v in enumerate(variants):
        where = f"sweep.variants[{i}]" if s.variants is not None else "sweep.grid"
        if not NAME.match(v.name) or v.name in RESERVED:
            errors.append(
                f"{where}.name {v.name!r} cannot name a folder: use letters, digits and . _ = + - "
                f"(not first), at most 80 characters, not {', '.join(RESERVED)}"
            )
        if v.name in seen:
            errors.append(
                f"{where}: variant name {v.name!r} is used twice (also by variant {seen[v.name]}); rename one"
            )
        seen.setdefault(v.name, i)
        owned = [k for k in v.overrides if k.split(".")[0] in OWNED]
        if owned:
            errors.append(
                f"{where}: variant {v.name!r} overrides {owned[0]}, which the sweep sets for every run "
                "(seeds: sweep.seeds; folders: OUTPUT_DIR/<variant>/seed-<seed>)"
            )
    return variants, errors


def check_sweep(s: SweepConfig) -> tuple[list[VariantConfig], list[str]]:
    """The variants and every problem of the sweep section (its own keys; each variant's config is checked
    by the loader)."""
    from lmdistill.config.load import suggest

    variants, errors = expand(s)
    names = [v.name for v in variants]
    if s.reference is not None and variants and s.reference not in names:
        errors.append(
            f"sweep.reference {s.reference!r} is not a variant{suggest(s.reference, names)}; variants: "
            + ", ".join(names[:8])
            + (" ..." if len(names) > 8 else "")
        )
    errors += _check_comparisons(s.comparisons, names)
    if s.seeds is not None:
        if not s.seeds:
            errors.append("sweep.seeds is empty: give at least one seed, or leave it out (the config's seed)")
        elif len(set(s.seeds)) < len(s.seeds):
            errors.append(f"sweep.seeds {s.seeds} lists a seed twice; give each once")
        elif any(x < 0 for x in s.seeds):
            errors.append(f"sweep.seeds must be non-negative integers, got {s.seeds}")
    if s.processes < 1:
        errors.append(f"sweep.processes must be at least 1, got {s.processes}")
    if s.bootstrap_resamples < 1:
        errors.append(f"sweep.bootstrap_resamples must be at least 1, got {s.bootstrap_resamples}")
    return variants, errors


def _check_comparisons(comparisons: list[list[str]], names: list[str]) -> list[str]:
    """Each comparison: two different variants, by name."""
    from lmdistill.config.load import suggest

    errors = []
    for i, pair in enumerate(comparisons):
        where = f"sweep.comparisons[{i}]"
        if len(pair) != 2 or pair[0] == pair[1]:
            errors.append(f"{where} must be two different variants, [variant, against], got {pair}")
            continue
        errors += [
            f"{where}: {name!r} is not a variant{suggest(name, names)}"
            for name in pair
            if names and name not in names
        ]
    return errors
