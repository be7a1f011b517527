"""Make a student: keep chosen teacher layers (DistilBERT-style), or build a fresh smaller model.

DistilBERT (Sanh et al., 2019, sec. 3) initialises the student "from the teacher by taking one layer out
of two". :func:`student_from_teacher` generalises that: embeddings, the kept layers (renumbered 0..n-1)
and the task head are copied exactly; nothing else is changed.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from lmdistill.errors import ModelError

# Where the stack of transformer blocks lives, relative to ``model.base_model``.
_LAYER_PATHS = ("encoder.layer", "transformer.layer", "layers", "h", "decoder.layers")


def layer_list(model: nn.Module) -> tuple[nn.Module, str, nn.ModuleList]:
    """The ModuleList of transformer blocks: ``(parent, attribute, list)`` (inside a PEFT wrapper too)."""
    if hasattr(model, "peft_config") and hasattr(model, "get_base_model"):  # a LoRA student
        model = model.get_base_model()
    base = getattr(model, "base_model", model)
    for dotted in _LAYER_PATHS:
        *parents, last = dotted.split(".")
        node = base
        for name in parents:
            node = getattr(node, name, None)
        layers = getattr(node, last, None) if node is not None else None
        if isinstance(layers, nn.ModuleList):
            return node, last, layers
    raise ModelError(
        f"cannot find the transformer layers of a {type(model).__name__} "
        f"(model type '{getattr(model.config, 'model_type', '?')}'); this architecture is not supported"
    )


def num_layers(model: nn.Module) -> int:
    return len(layer_list(model)[2])


def select_layers(total: int, keep: int, strategy: str = "uniform") -> list[int]:
    """Teacher layer indices to keep.

    uniform: evenly spaced, first and last included (12 -> 6 gives [0, 2, 4, 7, 9, 11], DistilBERT's choice);
    first: the bottom ``keep`` layers; last: the top ``keep`` layers.
    """
    if not 1 <= keep <= total:
        raise ModelError(f"student.num_layers must be between 1 and the teacher's {total} layers, got {keep}")
    if strategy == "first":
        return list(range(keep))
    if strategy == "last":
        return list(range(total - keep, total))
    if strategy != "uniform":
        raise ModelError(f"student.strategy must be uniform, first or last, got '{strategy}'")
    if keep == 1:
        return [0]
    return [round(i * (total - 1) / (keep - 1)) for i in range(keep)]


def check_layers(layers: list[int], total: int, key: str = "student.layers") -> None:
    bad = [i for i in layers if not 0 <= i < total]
    if bad:
        raise ModelError(
            f"{key}: layer {bad[0]} is outside the teacher, which has {total} layers (valid indices 0..{total - 1})"
        )


def _renumber(layers: nn.ModuleList) -> None:
    """Blocks that know their index (KV caches of decoders) get their new position."""
    for new_idx, block in enumerate(layers):
        for module in block.modules():
            if hasattr(module, "layer_idx") and isinstance(module.layer_idx, int):
                module.layer_idx = new_idx


def _trim_config(config, layers: list[int]) -> None:
    config.num_hidden_layers = len(layers)
    per_layer = getattr(config, "layer_types", None)
    if isinstance(per_layer, list) and len(per_layer) > max(layers):
        config.layer_types = [per_layer[i] for i in layers]


def student_from_teacher(teacher: nn.Module, layers: list[int]) -> nn.Module:
    """A copy of ``teacher`` that keeps only ``layers`` (0-based, in the given order)."""
    parent, attr, teacher_layers = layer_list(teacher)
    check_layers(layers, len(teacher_layers))
    student = copy.deepcopy(teacher)
    s_parent, s_attr, s_layers = layer_list(student)
    kept = nn.ModuleList([s_layers[i] for i in layers])
    setattr(s_parent, s_attr, kept)
    _renumber(kept)
    _trim_config(student.config, layers)
    student.train()
    for p in student.parameters():
        p.requires_grad_(True)
    return student


def student_config(
    teacher_config, *, num_layers: int, hidden_size=None, num_attention_heads=None, intermediate_size=None
):
    """A smaller config of the teacher's family: depth and (optionally) width changed."""
    cfg = copy.deepcopy(teacher_config)
    cfg.num_hidden_layers = num_layers
    if hidden_size is not None:
        cfg.hidden_size = hidden_size
        if num_attention_heads is None:
            heads = teacher_config.num_attention_heads
            while hidden_size % heads:
                heads -= 1
            num_attention_heads = heads
    if num_attention_heads is not None:
        cfg.num_attention_heads = num_attention_heads
    if hidden_size is not None and intermediate_size is None:
        intermediate_size = 4 * hidden_size
    if intermediate_size is not None:
        cfg.intermediate_size = intermediate_size
    if cfg.hidden_size % cfg.num_attention_heads:
        raise ModelError(
            f"student.hidden_size ({cfg.hidden_size}) is not divisible by student.num_attention_heads "
            f"({cfg.num_attention_heads}); set student.num_attention_heads"
        )
    per_layer = getattr(cfg, "layer_types", None)
    if isinstance(per_layer, list):
        cfg.layer_types = per_layer[:num_layers]
    return cfg


def fresh_student(teacher: nn.Module, seed: int, **shape) -> nn.Module:
    """A randomly initialised model of the teacher's class with the given depth/width."""
    cfg = student_config(teacher.config, **shape)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return type(teacher)(cfg)
