"""Any task's run with several students learning from each other (``mutual:``; Zhang et al. 2018, "Deep
Mutual Learning", CVPR).

:class:`MutualTask` wraps the task of ``task:`` and is handed to the run driver in its place: it asks the task
for each student's parts (student i built with its own seed, or its own teacher layers, ``mutual.layers``),
joins the students into one :class:`~lmdistill.mutual.MutualStudents` and their objectives into one
:class:`~lmdistill.mutual.MutualObjective` per stage, so the engine's loop, checkpoints, exact resume and
multi-process training are the ordinary ones. It evaluates every student (metrics ``student_i/NAME``, and
``NAME``: the mean over the students, which picks the best step for all of them) and saves student i in
``OUTPUT_DIR/model/student_i`` (a normal model folder of the task).
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

from torch import nn

from lmdistill.config.mutual import MutualConfig, member_seed
from lmdistill.config.schema import Config
from lmdistill.errors import LmdistillError
from lmdistill.mutual import MutualObjective, MutualStudents
from lmdistill.objective import Objective
from lmdistill.tasks.base import Parts, Task


def mutual_term(task: Task) -> str:
    """The output-level term that compares two students' predictions: ``kd``, or ``kd_mse`` (regression)."""
    return "kd" if "kd" in task.loss_terms else "kd_mse"


def member_config(cfg: Config, index: int) -> Config:
    """Student ``index``'s config: its own ``student.seed`` and, with ``mutual.layers``, its own layers (student
    0 without mutual.layers: ``cfg`` itself, as a single-student run would build it)."""
    m = cfg.mutual
    if index == 0 and m.layers is None:
        return cfg
    member = copy.deepcopy(cfg)
    s = member.student
    s.seed = member_seed(cfg.seed if s.seed is None else s.seed, index)
    if m.layers is not None:
        s.layers, s.num_layers, s.keep_every = list(m.layers[index]), None, None
    return member


class MutualTask(Task):
    """The task of ``task:`` with ``mutual.students`` students (see the module docstring)."""

    def __init__(self, task: Task, mutual: MutualConfig):
        self.task = task
        self.mutual = mutual
        self.name = task.name
        self.metrics = task.metrics
        self.primary_metric = task.primary_metric
        self.loss_terms = task.loss_terms

    # ---- the run
    def check_data(self, cfg: Config) -> list[str]:
        return self.task.check_data(cfg)

    def parts(self, cfg: Config, verb: str) -> Parts:
        """Each student's parts from the task (data and teacher of student 0's), joined."""
        from accelerate.utils import set_seed

        m = self.mutual
        first = self.task.parts(member_config(cfg, 0), verb)
        students, objectives = [first.student], [first.objectives]
        for i in range(1, m.students):
            if m.init == "same":
                students.append(copy.deepcopy(first.student))
                objectives.append([copy.deepcopy(o) for o in first.objectives])
                continue
            member = member_config(cfg, i)
            set_seed(member.student.seed)  # new heads and projections drawn from the student's own seed
            p = self.task.parts(member, verb)
            students.append(p.student)
            objectives.append(p.objectives)
        set_seed(cfg.seed)
        if m.init == "seeds" and _same_weights(students[0], students[1]):
            raise LmdistillError(
                "mutual: students 0 and 1 start with the same weights (every weight loaded from the same "
                "model, head included); give mutual.layers, a model without this task's head, or mutual.init "
                "same to train identical copies on purpose"
            )
        term = mutual_term(self.task)
        joined = [
            MutualObjective([objs[s] for objs in objectives], m.weight, term)
            for s in range(len(first.stages))
        ]
        extra = dict(first.extra)
        extra["mutual"] = {
            "students": m.students,
            "weight": m.weight,
            "init": m.init,
            "term": term,
            "models": [f"model/student_{i}" for i in range(m.students)],
            "parameters": [sum(p.numel() for p in s.parameters()) for s in students],
        }
        return Parts(
            MutualStudents(students),
            first.tokenizer,
            first.train_set,
            first.collate,
            joined,
            first.stages,
            teacher=first.teacher,
            data=first.data,
            extra=extra,
            mix=first.mix,
        )

    def evaluate(self, model: nn.Module, parts: Parts, split: str, objective: Objective) -> dict[str, float]:
        """Every student's metrics (``student_i/NAME``) and their mean over the students (``NAME``)."""
        per = [
            self.task.evaluate(s, parts, split, o)
            for s, o in zip(model.members, getattr(objective, "members", [objective] * len(model.members)))
        ]
        out = {f"student_{i}/{k}": v for i, metrics in enumerate(per) for k, v in metrics.items()}
        for k in per[0]:
            if all(isinstance(metrics.get(k), (int, float)) for metrics in per):  # numbers: their mean
                out[k] = sum(metrics[k] for metrics in per) / len(per)
        return out

    def has_split(self, parts: Parts, split: str) -> bool:
        return self.task.has_split(parts, split)

    def save(self, model: nn.Module, tokenizer, path: Path, cfg: Config) -> None:
        """Student i into ``path/student_i``, each a model folder of the task."""
        path.mkdir(parents=True, exist_ok=True)
        for i, student in enumerate(model.members):
            self.task.save(student, tokenizer, path / f"student_{i}", cfg)

    def reload(self, path: Path, parts: Parts) -> nn.Module:
        return MutualStudents(
            [self.task.reload(path / f"student_{i}", parts) for i in range(self.mutual.students)]
        )

    def results(self, parts: Parts, best: nn.Module, cfg: Config) -> dict:
        """The task's fields of student 0 (e.g. the teacher's scores, the same for all), with student 0's own
        objectives (the task reads its settings, e.g. a causal LM's ``chunk_size``, not the joined one's)."""
        own = [o.members[0] if isinstance(o, MutualObjective) else o for o in parts.objectives]
        return self.task.results(dataclasses.replace(parts, objectives=own), best.members[0], cfg)

    def load_saved(self, path: str | Path, key: str = "model"):
        return self.task.load_saved(path, key)


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    """Whether two students have the same parameters, bit for bit."""
    import torch

    pa, pb = list(a.parameters()), list(b.parameters())
    return len(pa) == len(pb) and all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(pa, pb))
