"""Width bookkeeping for :mod:`lmdistill.models.prune`: model families, target sizes, which indices to keep.

See :mod:`lmdistill.models.prune` for what each width means per family.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from lmdistill.errors import ModelError
from lmdistill.models.student import layer_list
from lmdistill.models.taps import attention_shape


@dataclass(frozen=True)
class Family:
    """Where the width axes live inside one transformer block (dotted paths)."""

    q: str
    k: str
    v: str
    o: str  # attention output projection: its input is the per-head context
    ffn_in: tuple[str, ...]  # rows = FFN neurons
    ffn_out: str  # columns = FFN neurons; its input is the activation after the nonlinearity
    coupled: bool  # True: head size = hidden_size / heads (BERT), heads go with the hidden width
    # a (buckets, heads) table every block shares (MPNet's relative position bias)
    shared_bias: str | None = None


_BERT = Family(
    "attention.self.query", "attention.self.key", "attention.self.value",
    "attention.output.dense", ("intermediate.dense",), "output.dense", coupled=True,
)  # fmt: skip
_LLAMA = Family(
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
    "self_attn.o_proj", ("mlp.gate_proj", "mlp.up_proj"), "mlp.down_proj", coupled=False,
)  # fmt: skip
_MPNET = Family(
    "attention.attn.q", "attention.attn.k", "attention.attn.v",
    "attention.attn.o", ("intermediate.dense",), "output.dense", coupled=True,
    shared_bias="encoder.relative_attention_bias",
)  # fmt: skip
FAMILIES = {
    "bert": _BERT, "roberta": _BERT, "xlm-roberta": _BERT, "electra": _BERT, "mpnet": _MPNET,
    "llama": _LLAMA, "mistral": _LLAMA, "qwen2": _LLAMA,
}  # fmt: skip


def _get(module: nn.Module, dotted: str) -> nn.Module | None:
    for name in dotted.split("."):
        module = getattr(module, name, None)
        if module is None:
            return None
    return module


def width_family(model: nn.Module) -> Family:
    """The family spec of ``model``; ModelError for architectures width pruning does not support."""
    model_type = getattr(model.config, "model_type", None)
    fam = FAMILIES.get(model_type)
    if fam is None:
        raise ModelError(
            f"student.width: width pruning supports {', '.join(sorted(FAMILIES))} models; got model type "
            f"'{model_type}' ({type(model).__name__}); use student.num_layers to make it smaller instead"
        )
    if getattr(model.config, "add_cross_attention", False):
        raise ModelError("student.width: models with cross-attention are not supported by width pruning")
    return fam


def shared_bias(model: nn.Module) -> nn.Embedding | None:
    """The per-head table every block shares (MPNet: the relative position bias), or None."""
    fam = width_family(model)
    if fam.shared_bias is None:
        return None
    table = _get(getattr(model, "base_model", model), fam.shared_bias)
    if not isinstance(table, nn.Embedding):
        raise ModelError(
            f"student.width: this {type(model).__name__} has no per-head table '{fam.shared_bias}'"
        )
    return table


def block_module(model: nn.Module, layer: int, path: str) -> nn.Linear:
    """The Linear at ``path`` inside block ``layer``."""
    mod = _get(layer_list(model)[2][layer], path)
    if not isinstance(mod, nn.Linear):
        raise ModelError(
            f"student.width: layer {layer} of this {type(model).__name__} has no Linear '{path}'"
        )
    return mod


class WidthSizes(NamedTuple):
    """Full target sizes: query heads, key/value heads, FFN width, hidden width."""

    heads: int
    kv_heads: int
    intermediate_size: int
    hidden_size: int


@dataclass
class WidthImportance:
    """Importance scores (higher = keep): ``heads`` (layers, heads), ``neurons`` (layers, intermediate),
    ``hidden`` (hidden,). ``None`` where not measured."""

    heads: Tensor | None = None
    neurons: Tensor | None = None
    hidden: Tensor | None = None


@dataclass
class WidthSelection:
    """Indices to keep; ``None`` keeps an axis whole. ``heads`` (layers, n) query heads; ``kv_heads``
    (layers, n_kv) key/value heads (Llama family only; BERT's keys/values follow ``heads``); ``neurons``
    (layers, m) FFN neurons; ``hidden`` (h,) hidden channels."""

    heads: Tensor | None = None
    kv_heads: Tensor | None = None
    neurons: Tensor | None = None
    hidden: Tensor | None = None


def model_sizes(model: nn.Module) -> tuple[int, int, int, int, int, int]:
    """(layers, heads, kv heads, head dim, intermediate, hidden) of ``model``."""
    heads, kv, head_dim = attention_shape(model.config)
    return (
        len(layer_list(model)[2]),
        heads,
        kv,
        head_dim,
        model.config.intermediate_size,
        model.config.hidden_size,
    )


def _check_count(key: str, value, full: int, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ModelError(f"student.width.{key} must be a whole number, got {value!r}")
    if value < 1:
        raise ModelError(f"student.width.{key} must be at least 1, got {value}")
    if value > full:
        raise ModelError(
            f"student.width.{key} ({value}) is larger than the model's {full} {what}; width pruning only shrinks"
        )


def resolve_sizes(
    model: nn.Module,
    *,
    heads: int | None = None,
    kv_heads: int | None = None,
    intermediate_size: int | None = None,
    hidden_size: int | None = None,
) -> WidthSizes:
    """Check a requested width against ``model`` and fill in what is implied: unchanged sizes, BERT's hidden
    width from its heads (or the reverse), Llama's key/value heads as whole groups (see lmdistill.models.prune)."""
    fam = width_family(model)
    _, n_heads, n_kv, head_dim, inter, hidden = model_sizes(model)
    for key, value, full, what in (
        ("heads", heads, n_heads, "attention heads"),
        ("kv_heads", kv_heads, n_kv, "key/value heads"),
        ("intermediate_size", intermediate_size, inter, "FFN neurons per layer"),
        ("hidden_size", hidden_size, hidden, "hidden channels"),
    ):
        if value is not None:
            _check_count(key, value, full, what)
    intermediate_size = intermediate_size or inter
    if fam.coupled:
        if kv_heads is not None and kv_heads != heads:
            raise ModelError(
                "student.width.kv_heads applies to grouped-query attention (Llama family); BERT-family keys "
                "and values follow student.width.heads"
            )
        heads, hidden_size = _coupled_heads(heads, hidden_size, n_heads, hidden, head_dim)
        return WidthSizes(heads, heads, intermediate_size, hidden_size)
    heads = heads or n_heads
    group = n_heads // n_kv
    if kv_heads is None:
        if heads % group:
            raise ModelError(
                f"student.width.heads ({heads}) must be a multiple of {group}, the query heads per key/value "
                "group (whole groups are kept); or set student.width.kv_heads"
            )
        kv_heads = heads // group
    elif heads % kv_heads or heads // kv_heads > group:
        raise ModelError(
            f"student.width.heads ({heads}) must be a multiple of student.width.kv_heads ({kv_heads}) with at "
            f"most {group} query heads per key/value head, as in the model"
        )
    return WidthSizes(heads, kv_heads, intermediate_size, hidden_size or hidden)


def _coupled_heads(heads, hidden_size, n_heads: int, hidden: int, head_dim: int) -> tuple[int, int]:
    """BERT family: heads and hidden width move together, hidden_size = heads x head size."""
    if heads is None and hidden_size is None:
        return n_heads, hidden
    if hidden_size is None:
        return heads, heads * head_dim
    if heads is None:
        if hidden_size % head_dim:
            raise ModelError(
                f"student.width.hidden_size ({hidden_size}) must be a multiple of the head size {head_dim}: "
                "BERT-family heads are pruned together with the hidden width, head size kept"
            )
        return hidden_size // head_dim, hidden_size
    if hidden_size % heads:
        raise ModelError(
            f"student.width.heads ({heads}) does not divide student.width.hidden_size ({hidden_size}); "
            f"BERT-family models need hidden_size = heads x head size ({heads} x {head_dim} = {heads * head_dim})"
        )
    if hidden_size != heads * head_dim:
        raise ModelError(
            f"student.width.hidden_size ({hidden_size}) with {heads} heads would change the head size from "
            f"{head_dim} to {hidden_size // heads}; width pruning keeps it: use hidden_size {heads * head_dim}"
        )
    return heads, hidden_size


def keep_heads(
    scores: Tensor, heads: int, *, group_size: int = 1, groups: int | None = None
) -> tuple[Tensor, Tensor]:
    """Query heads ``(layers, heads)`` and key/value groups ``(layers, groups)`` to keep, sorted, per layer.

    ``scores``: (layers, all query heads). Groups (``group_size`` consecutive query heads sharing one
    key/value head) are ranked by the sum of their heads' scores; in each kept group the top
    ``heads / groups`` heads are kept. ``groups`` defaults to ``heads / group_size`` (whole groups).
    """
    layers, total = scores.shape
    groups = groups or heads // group_size
    per_group = heads // max(groups, 1)
    if total % group_size or groups < 1 or heads != groups * per_group or per_group > group_size:
        raise ModelError(
            f"student.width: cannot keep {heads} of {total} heads as {groups} groups of at most {group_size}"
        )
    s = scores.float().reshape(layers, total // group_size, group_size)
    kept_groups = s.sum(-1).topk(groups, dim=-1).indices.sort(-1).values  # (L, groups)
    in_group = s.gather(1, kept_groups[..., None].expand(-1, -1, group_size))  # (L, groups, group_size)
    within = in_group.topk(per_group, dim=-1).indices.sort(-1).values  # (L, groups, per_group)
    return (kept_groups[..., None] * group_size + within).flatten(1), kept_groups


def keep_neurons(scores: Tensor, size: int) -> Tensor:
    """The ``size`` highest-scoring FFN neurons of every layer: (layers, size), sorted."""
    return scores.float().topk(size, dim=-1).indices.sort(-1).values


def keep_channels(scores: Tensor, size: int) -> Tensor:
    """The ``size`` highest-scoring hidden channels: (size,), sorted."""
    return scores.float().topk(size).indices.sort().values


def select_width(model: nn.Module, importance: WidthImportance, sizes: WidthSizes) -> WidthSelection:
    """Which heads, neurons and channels to keep for ``sizes`` (from :func:`resolve_sizes`)."""
    layers, n_heads, n_kv, _, inter, hidden = model_sizes(model)
    fam = width_family(model)
    sel = WidthSelection()
    if sizes.heads != n_heads or sizes.kv_heads != n_kv:
        scores = _need(importance.heads, "heads", (layers, n_heads))
        if fam.shared_bias:  # one bias column per head for all blocks: the same heads in each
            sel.heads = keep_heads(scores.sum(0, keepdim=True), sizes.heads)[0].expand(layers, -1).clone()
        elif fam.coupled:
            sel.heads = keep_heads(scores, sizes.heads)[0]
        else:
            sel.heads, sel.kv_heads = keep_heads(
                scores, sizes.heads, group_size=n_heads // n_kv, groups=sizes.kv_heads
            )
    if sizes.intermediate_size != inter:
        sel.neurons = keep_neurons(
            _need(importance.neurons, "neurons", (layers, inter)), sizes.intermediate_size
        )
    if sizes.hidden_size != hidden:
        sel.hidden = keep_channels(_need(importance.hidden, "hidden", (hidden,)), sizes.hidden_size)
    return sel


def _need(scores: Tensor | None, axis: str, shape: tuple[int, ...]) -> Tensor:
    if scores is None:
        raise ModelError(
            f"student.width: pruning this axis needs '{axis}' importance; measure it with width_importance("
            f"..., {axis}=True)"
        )
    if tuple(scores.shape) != shape:
        raise ModelError(
            f"student.width: '{axis}' importance has shape {tuple(scores.shape)}, expected {shape}"
        )
    return scores


def _check_indices(key: str, idx: Tensor | None, shape0: int | None, full: int) -> Tensor | None:
    if idx is None:
        return None
    idx = torch.as_tensor(idx, dtype=torch.long)
    if (shape0 is not None and (idx.ndim != 2 or idx.shape[0] != shape0)) or (
        shape0 is None and idx.ndim != 1
    ):
        want = f"({shape0}, n)" if shape0 is not None else "(n,)"
        raise ModelError(f"student.width: selection '{key}' has shape {tuple(idx.shape)}, expected {want}")
    idx = idx.sort(-1).values
    rows = idx.reshape(-1, idx.shape[-1])
    if idx.numel() and (idx.min() < 0 or idx.max() >= full or (rows[:, 1:] == rows[:, :-1]).any()):
        raise ModelError(f"student.width: selection '{key}' must hold distinct indices in 0..{full - 1}")
    return idx


def _check_groups(heads: Tensor, kv_heads: Tensor, group: int) -> None:
    """Llama family: kept query heads must fill the kept key/value groups evenly (query head j of the pruned
    model uses key/value head j // (heads / kv_heads), as in transformers' repeat_kv)."""
    per = heads.shape[1] // kv_heads.shape[1]
    if heads.shape[1] % kv_heads.shape[1] or not torch.equal(
        heads // group, kv_heads.repeat_interleave(per, 1)
    ):
        raise ModelError(
            "student.width: the kept query heads must be the same number of heads from each kept key/value group"
        )


def check_selection(model: nn.Module, sel: WidthSelection) -> tuple[WidthSelection, WidthSizes]:
    """A sorted, validated copy of ``sel`` and the sizes it gives."""
    fam = width_family(model)
    layers, n_heads, n_kv, _, inter, hidden = model_sizes(model)
    out = WidthSelection(
        heads=_check_indices("heads", sel.heads, layers, n_heads),
        kv_heads=_check_indices("kv_heads", sel.kv_heads, layers, n_kv),
        neurons=_check_indices("neurons", sel.neurons, layers, inter),
        hidden=_check_indices("hidden", sel.hidden, None, hidden),
    )
    if fam.coupled and out.kv_heads is not None:
        raise ModelError("student.width: BERT-family keys and values follow 'heads'; leave 'kv_heads' empty")
    if fam.coupled and (out.heads is None) != (out.hidden is None):
        raise ModelError(
            "student.width: BERT-family heads are pruned together with hidden channels; give both"
        )
    if not fam.coupled and out.heads is not None and out.kv_heads is None and n_heads == n_kv:
        out.kv_heads = out.heads.clone()
    if not fam.coupled and (out.heads is None) != (out.kv_heads is None):
        raise ModelError(
            "student.width: Llama-family selections need both 'heads' and 'kv_heads', or neither"
        )
    if fam.shared_bias and out.heads is not None and not bool((out.heads == out.heads[:1]).all()):
        raise ModelError(
            f"student.width: every layer of a {model.config.model_type} model shares one relative position bias "
            f"column per head ({fam.shared_bias}); keep the same heads in every layer"
        )
    if out.heads is not None and out.kv_heads is not None:
        _check_groups(out.heads, out.kv_heads, n_heads // n_kv)
    sizes = resolve_sizes(
        model,
        heads=None if out.heads is None else out.heads.shape[1],
        kv_heads=None if out.kv_heads is None else out.kv_heads.shape[1],
        intermediate_size=None if out.neurons is None else out.neurons.shape[1],
        hidden_size=None if out.hidden is None else out.hidden.shape[0],
    )
    return out, sizes


def pruned_config(model: nn.Module, sizes: WidthSizes):
    """A copy of ``model.config`` with the new widths (head size kept), checked by transformers."""
    fam = width_family(model)
    head_dim = model_sizes(model)[3]
    cfg = copy.deepcopy(model.config)
    if not fam.coupled:
        cfg.head_dim = head_dim  # explicit, so it is not re-derived as hidden_size / heads
        cfg.num_key_value_heads = sizes.kv_heads
    cfg.num_attention_heads = sizes.heads
    cfg.intermediate_size = sizes.intermediate_size
    cfg.hidden_size = sizes.hidden_size
    validate = getattr(cfg, "validate", None)
    if callable(validate):
        try:
            validate()
        except Exception as err:  # transformers wraps its ValueError in a validation error
            reason = [line.strip() for line in str(err).splitlines() if line.strip()][-1]
            raise ModelError(
                f"student.width: transformers rejects the pruned {type(cfg).__name__}: {reason}"
            ) from err
    return cfg
