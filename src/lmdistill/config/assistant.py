"""``compress.assistants``: teacher assistants between the teacher and the student (Mirzadeh et al. 2020,
"Improved Knowledge Distillation via Teacher Assistant", AAAI): when the capacity gap is large, distil the
teacher into a model of intermediate size first, then that model into the student. ``compress`` runs each
assistant as a normal distill run whose saved model is the next run's teacher (:mod:`lmdistill.chain`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class AssistantConfig:
    """One teacher assistant: the layers it keeps of the model before it in the chain (the teacher, or the
    previous assistant), from which it is distilled with the run's ``distill`` and ``training`` sections."""

    num_layers: int | None = None
    """How many layers of the previous model to keep (chosen by ``strategy``), e.g. half the teacher's."""
    layers: list[int] | None = None
    """Or the previous model's layers to keep, 0-based."""
    strategy: Literal["uniform", "first", "last"] = "uniform"


def depth(a: AssistantConfig) -> int | None:
    """The assistant's number of layers as configured (None when neither key is given)."""
    return len(a.layers) if a.layers is not None else a.num_layers


def check_assistants(assistants: list[AssistantConfig], student, verb: str | None) -> list[str]:
    """Each assistant names its layers once; depths fall along the chain; a student built from teacher
    layers keeps fewer, and existing, layers of the last assistant."""
    if verb != "compress" or not assistants:
        return []
    errors = []
    for i, a in enumerate(assistants):
        key = f"compress.assistants[{i}]"
        if (a.layers is None) == (a.num_layers is None):
            errors.append(f"{key}: give layers or num_layers (one of them): the layers it keeps")
        elif a.num_layers is not None and a.num_layers < 1:
            errors.append(f"{key}.num_layers must be at least 1, got {a.num_layers}")
        elif a.layers is not None and (
            not a.layers or min(a.layers) < 0 or len(set(a.layers)) != len(a.layers)
        ):
            errors.append(f"{key}.layers must name distinct 0-based layers, got {a.layers}")
        elif i and depth(assistants[i - 1]) is not None and depth(a) >= depth(assistants[i - 1]):
            errors.append(
                f"{key} keeps {depth(a)} layers, not fewer than compress.assistants[{i - 1}] "
                f"({depth(assistants[i - 1])}): each assistant is smaller than the model before it"
            )
    last = depth(assistants[-1])
    if errors or last is None or student.init != "from_teacher":
        return errors
    keep = len(student.layers) if student.layers is not None else student.num_layers
    if keep is not None and keep >= last:
        errors.append(
            f"the student keeps {keep} layers of the last assistant, which has {last}: give the student fewer "
            "(student.num_layers / student.layers count the assistant's layers)"
        )
    elif student.layers is not None and max(student.layers) >= last:
        errors.append(f"student.layers {student.layers}: the last assistant has layers 0 to {last - 1}")
    return errors
