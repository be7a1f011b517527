"""Deep mutual learning as one student and one objective, so the engine's loop trains it unchanged.

:class:`MutualStudents` holds the N students (``nn.ModuleList``) and returns each one's outputs for a batch;
:class:`MutualObjective` holds one task objective per student and returns, per student ``i``, its own terms
(``student_i/ce``, ``student_i/kd``, ...) and its mutual term ``student_i/mutual``:

    mutual_i = 1/(N-1) sum_{j != i} D(p_j.detach() || p_i)

(Zhang et al. 2018, "Deep Mutual Learning", CVPR, sec. 3: the K-network form of L_Θ1 = L_C1 + D_KL(p2 || p1);
each network learns from the others' predictions, a target that does not move with its own gradient).
``D`` is the task's own output-level term named ``term`` (``kd``: :meth:`lmdistill.objective.Objective.kd`,
the configured divergence at the temperature, times T^2 where configured; ``kd_mse`` for regression), called
with the other student's logits in the place of a teacher's:
every task's masking (padding, unlabelled positions, answer contexts) applies as it does to a teacher.

One optimizer over all parameters equals one optimizer per student (AdamW's states are per parameter);
gradient clipping by global norm would couple them, so :meth:`MutualStudents.groups` lets the engine clip each
student (and its objective's projections) on its own.
"""

from __future__ import annotations

import torch
from torch import nn

from lmdistill.errors import LmdistillError
from lmdistill.objective import Objective
from lmdistill.signals.live import TeacherSignal, output_logits
from lmdistill.signals.needs import FeatureSet

TEACHER_KEYS = ("teacher", "teacher_words", "align")
"""Batch entries that pair the student's inputs with a teacher's of another tokenizer: a peer student reads
the student's own inputs, so the mutual term sees the batch without them."""


class MutualStudents(nn.Module):
    """N students called on the same inputs: ``forward(**inputs) -> [output of student 0, ..., N-1]``."""

    def __init__(self, students: list[nn.Module]):
        super().__init__()
        if len(students) < 2:
            raise LmdistillError(f"mutual.students must be at least 2, got {len(students)}")
        self.members = nn.ModuleList(students)

    def forward(self, **inputs) -> list:
        return [m(**inputs) for m in self.members]


class MutualObjective(Objective):
    """One objective per student plus the mutual term of each (``weight``, on the task's term ``term``).

    Args:
        members: the task's objective of each student (same config, own projections).
        weight: the mutual term's weight (``mutual.weight``).
        term: the output-level term that compares two predictions: ``kd`` or ``kd_mse``.
    """

    def __init__(self, members: list[Objective], weight: float, term: str = "kd"):
        super().__init__({})
        if any(m.rewrites_batches for m in members):
            raise LmdistillError("mutual needs every student on the same batch: not with lm.on_policy")
        if term not in members[0].terms:
            raise LmdistillError(
                f"mutual: the task's objective has no '{term}' term to compare students with"
            )
        self.members = nn.ModuleList(members)
        self.mutual_weight = float(weight)
        self.term = term
        # the engine reads .weights for the names of the terms (results.json) and .matches: the members' own
        self.weights = {f"student_{i}/{k}": w for i, m in enumerate(members) for k, w in m.weights.items()}
        self.weights.update({f"student_{i}/mutual": self.mutual_weight for i in range(len(members))})
        self.matches = []

    # ---- what the models must produce: as each student's own objective says
    @property
    def needs_teacher(self) -> bool:
        return any(m.needs_teacher for m in self.members)

    @property
    def needs_hidden(self) -> bool:
        return any(m.needs_hidden for m in self.members)

    @property
    def token_level(self) -> list[str]:
        return self.members[0].token_level

    @property
    def rewrites_batches(self) -> bool:
        return False

    def teacher_reads(self) -> FeatureSet:
        return self.members[0].teacher_reads()  # one config: every student reads the same of the teacher

    def attach(self, student: MutualStudents, teacher: nn.Module | None) -> None:
        """Each student's taps on its own objective; the teacher's once (student 0's objective), since one
        teacher signal serves all."""
        for i, (m, s) in enumerate(zip(self.members, student.members)):
            m.attach(s, teacher if i == 0 else None)
        self.teacher_tap = self.members[0].teacher_tap

    def detach(self) -> None:
        for m in self.members:
            m.detach()
        self.teacher_tap = None

    def weight_now(self, name: str) -> float:
        index, base = _split(name)
        if base == "mutual":
            return self.mutual_weight
        member = self.members[index]
        member.progress = self.progress
        return member.weight_now(base)

    # ---- the terms
    def forward(
        self, outs: list, signal: TeacherSignal | None, batch: dict, feats: dict | None = None
    ) -> dict:
        """``outs``: each student's output for ``batch``; returns every student's terms (unweighted)."""
        terms: dict[str, torch.Tensor] = {}
        for i, (m, out) in enumerate(zip(self.members, outs)):
            m.progress = self.progress
            own_feats = m.student_tap.pop() if m.student_tap is not None else None
            for k, v in m(out, signal, batch, own_feats).items():
                terms[f"student_{i}/{k}"] = v
        peers = self.peer_signals(outs)
        peer_batch = {k: v for k, v in batch.items() if k not in TEACHER_KEYS}
        for i, (m, out) in enumerate(zip(self.members, outs)):
            fn = m.terms[self.term].fn
            others = [fn(m, out, p, peer_batch) for j, p in enumerate(peers) if j != i]
            terms[f"student_{i}/mutual"] = sum(others) / len(others)
        return terms

    @staticmethod
    def peer_signals(outs: list) -> list[TeacherSignal]:
        """Each student's prediction as a target for the others: its logits, detached."""
        signals = []
        for i, out in enumerate(outs):
            logits = output_logits(out)
            if logits is None:
                raise LmdistillError(
                    f"mutual: student {i} returns no logits to learn from (a model without an output head)"
                )
            signals.append(TeacherSignal(logits=logits.detach()))
        return signals


def _split(name: str) -> tuple[int, str]:
    """``student_3/kd`` -> ``(3, "kd")``."""
    head, _, base = name.partition("/")
    return int(head.removeprefix("student_")), base


def clip_groups(student: nn.Module, objective: Objective) -> list[list[nn.Parameter]] | None:
    """The parameters to clip apart, one list per student (its weights and its objective's projections);
    None when ``student`` is a single model (clip all together)."""
    if not isinstance(student, MutualStudents) or not isinstance(objective, MutualObjective):
        return None
    return [
        [p for p in (*s.parameters(), *o.parameters()) if p.requires_grad]
        for s, o in zip(student.members, objective.members)
    ]
