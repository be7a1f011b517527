"""The ``mutual`` section: deep mutual learning (Zhang et al. 2018), several students trained together.

Each student's loss is its task loss (and, under ``distill``, the teacher terms of ``distill.losses``) plus
``weight`` times the mean, over the other students, of the divergence from the other student's prediction
(detached: a target) to its own (Zhang et al. 2018, "Deep Mutual Learning", CVPR, sec. 3, K networks:
``L_k = L_C_k + 1/(K-1) sum_{l != k} D_KL(p_l || p_k)``). The loop, checkpoints and exact resume are the
engine's own: the students are one module (:mod:`lmdistill.mutual`), the task one adapter
(:mod:`lmdistill.tasks.mutual`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

SEED_STRIDE = 7919
"""Student i (i > 0) is built with the seed ``(seed + i * SEED_STRIDE) mod 2**32``; student 0 with the run's seed."""


@dataclass
class MutualConfig:
    """Deep mutual learning: ``students`` students trained together, each also learning from the others
    (``lmdistill finetune``: no teacher; ``lmdistill distill``: plus the teacher terms of ``distill.losses``)."""

    students: int = 2
    """How many students train together (at least 2)."""
    weight: float = 1.0
    """The weight of each student's mutual term (the mean over the other students of the divergence from
    their prediction to its own: ``kd`` at ``distill.temperature`` and ``distill.divergence`` for a distill run,
    forward KL at T=1 for a finetune run; ``kd_mse`` for regression)."""
    init: Literal["seeds", "same"] = "seeds"
    """seeds: student i is built with its own seed (new heads, fresh students: different starting weights);
    same: every student a copy of student 0 (the degenerate case: with dropout off they stay identical)."""
    layers: list[list[int]] | None = None
    """distill with student.init from_teacher: the teacher layers of each student (one list per student), so
    students copied from the teacher start different (e.g. [[0, 2], [1, 3]])."""


def member_seed(seed: int, index: int) -> int:
    """The seed student ``index`` is built with: the run's for student 0, a different one for every other."""
    return (seed + index * SEED_STRIDE) % 2**32


def check_mutual(
    m: MutualConfig | None, verb: str | None, *, task: str, terms: tuple[str, ...], cfg
) -> list[str]:
    """One-line problems of ``mutual`` for ``verb`` on a task whose loss terms are ``terms``."""
    if m is None or verb is None:
        return []
    errors = []
    if m.students < 2:
        errors.append(
            f"mutual.students must be at least 2 (students learning from each other), got {m.students}"
        )
    if m.weight <= 0:
        errors.append(f"mutual.weight must be above 0, got {m.weight} (without it, drop the mutual section)")
    if not {"kd", "kd_mse"} & set(terms):
        errors.append(
            f"mutual applies to tasks with output-level knowledge (a kd or kd_mse term), not {task}"
        )
    if verb == "compress":
        errors.append("mutual is for lmdistill finetune or distill runs, not compress")
    if m.layers is not None:
        if verb != "distill" or cfg.student.init != "from_teacher":
            errors.append("mutual.layers applies to distill runs with student.init from_teacher")
        elif len(m.layers) != m.students:
            errors.append(
                f"mutual.layers needs one list per student: {m.students} lists, got {len(m.layers)}"
            )
        elif any(not ls or min(ls) < 0 or len(set(ls)) != len(ls) for ls in m.layers):
            errors.append(f"mutual.layers: each list names distinct 0-based teacher layers, got {m.layers}")
    elif verb == "distill" and cfg.student.init == "from_teacher" and m.init == "seeds":
        errors.append(
            "mutual: students copied from the same teacher layers start identical; give mutual.layers (one "
            "list per student, e.g. [[0, 2], [1, 3]]), or student.init config / pretrained"
        )
    if cfg.distill.stages or cfg.distill.matches:
        key = "stages" if cfg.distill.stages else "matches"
        errors.append(
            f"mutual does not combine with distill.{key} (output-level terms only); drop one of them"
        )
    if cfg.training.compile:
        errors.append("mutual does not combine with training.compile; set training.compile false")
    if getattr(cfg, "teachers", None):
        errors.append("mutual does not combine with teachers: (an ensemble) yet; give one teacher")
    if cfg.lm.fused or cfg.lm.on_policy > 0:
        errors.append(
            "mutual needs every student's logits on the same batch: not with lm.fused or lm.on_policy"
        )
    return errors
