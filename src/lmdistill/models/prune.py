"""Width pruning: keep the most important attention heads, FFN neurons and hidden channels of a model.

Minitron (Muralidharan et al., 2024, "Compact Language Models via Pruning and Knowledge Distillation",
sec. 2) ranks heads, FFN neurons and embedding (hidden) channels by their importance on a small calibration
set, cuts the model to a chosen width and recovers accuracy by distillation. This module does the cutting;
:mod:`lmdistill.models.importance` measures the importance.

The pruned model is a NORMAL transformers model of the same class, built from a config that holds the new
sizes, so ``from_pretrained`` loads it with no lmdistill code (transformers 5 has no ``prune_heads``). What
a standard config can express decides what is offered; every layer keeps the same counts (a standard config
holds one head count and one intermediate size), chosen per layer:

* ``intermediate_size`` (all families): the top-M FFN neurons of every layer. BERT family:
  ``intermediate.dense`` rows and ``output.dense`` columns; Llama family: ``gate_proj``/``up_proj`` rows
  and ``down_proj`` columns.
* ``heads``, Llama family (the config has an explicit ``head_dim``): N query heads of every layer
  (``q_proj`` rows, ``o_proj`` columns) and their key/value heads (``k_proj``/``v_proj`` rows). By default
  whole grouped-query groups are kept (N must be a multiple of the group size); ``kv_heads`` keeps that many
  groups and N / kv_heads query heads of each. The hidden width is unchanged.
* ``heads`` / ``hidden_size``, BERT family (BERT, RoBERTa, XLM-R, ELECTRA, MPNet): the head size is derived as
  hidden_size / num_attention_heads, so heads cannot be removed on their own. Heads and hidden channels are
  pruned together with the head size kept: hidden_size = heads x head size (MiniLM: 12 x 32 -> 8 x 32 =
  256). Give either one or both. Head rows/columns follow head importance; hidden channels (embedding
  columns, every LayerNorm, every Linear's input/output on the hidden axis, pooler, task head) follow
  hidden-channel importance (Minitron's embedding-channel importance). MPNet's relative position bias is
  one table (buckets x heads) shared by every block, so MPNet keeps the same heads in every layer: the heads
  whose importance summed over the layers is highest, and the table's columns of those heads.
* ``hidden_size``, Llama family: hidden channels alone (embeddings, every RMSNorm, every projection's
  hidden side, lm_head); heads unchanged. transformers' LlamaConfig requires hidden_size to be a multiple
  of num_attention_heads, which is checked when the config is built.

Removing FFN neurons or heads whose contribution is zero leaves the outputs unchanged; removing hidden
channels also changes every LayerNorm/RMSNorm's statistics (computed over fewer channels), so it always
moves the outputs. Different counts per layer are not offered (no standard config holds them); other
architectures (DistilBERT, GPT-2, ...) are refused with one line.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from lmdistill.errors import ModelError
from lmdistill.models.student import layer_list
from lmdistill.models.width import (
    FAMILIES,
    WidthImportance,
    WidthSelection,
    WidthSizes,
    block_module,
    check_selection,
    keep_channels,
    keep_heads,
    keep_neurons,
    model_sizes,
    pruned_config,
    resolve_sizes,
    select_width,
    shared_bias,
    width_family,
)

__all__ = [
    "FAMILIES",
    "WidthImportance",
    "WidthSelection",
    "WidthSizes",
    "apply_width",
    "keep_channels",
    "keep_heads",
    "keep_neurons",
    "parameters_for",
    "prune_width",
    "resolve_sizes",
    "select_width",
    "width_family",
    "width_for_parameter_target",
]


def _channels(heads: Tensor, head_dim: int) -> Tensor:
    """Head indices (n,) -> their channels (n * head_dim,) in a projection of all heads."""
    return (heads[:, None] * head_dim + torch.arange(head_dim)).flatten()


def _plan(model: nn.Module, sel: WidthSelection) -> dict[int, tuple[Tensor | None, Tensor | None]]:
    """id(Linear) -> (rows, columns) to keep, for the projections of every block."""
    fam = width_family(model)
    head_dim = model_sizes(model)[3]
    hid, plan = sel.hidden, {}
    for i in range(len(layer_list(model)[2])):
        q = kv = ffn = None
        if sel.heads is not None:
            q = _channels(sel.heads[i], head_dim)
            kv = q if fam.coupled else _channels(sel.kv_heads[i], head_dim)
        if sel.neurons is not None:
            ffn = sel.neurons[i]
        plan[id(block_module(model, i, fam.q))] = (q, hid)
        plan[id(block_module(model, i, fam.k))] = (kv, hid)
        plan[id(block_module(model, i, fam.v))] = (kv, hid)
        plan[id(block_module(model, i, fam.o))] = (hid, q)
        for path in fam.ffn_in:
            plan[id(block_module(model, i, path))] = (ffn, hid)
        plan[id(block_module(model, i, fam.ffn_out))] = (hid, ffn)
    table = shared_bias(model)
    if table is not None and sel.heads is not None:  # (buckets, heads): the kept heads' columns
        plan[id(table)] = (None, sel.heads[0])
    return plan


def _take(t: Tensor, dim: int, idx: Tensor | None) -> Tensor:
    return t if idx is None else t.index_select(dim, idx.to(t.device))


def _slice(
    name: str, module: nn.Module, attr: str, p: Tensor, plan, hidden: Tensor | None, width: int
) -> Tensor:
    """The kept part of parameter ``attr`` of ``module``: planned projections by plan; any other Linear,
    Embedding or 1-D parameter (LayerNorm, RMSNorm) on its hidden-sized axes when hidden channels are pruned."""
    t = p.detach()
    if isinstance(module, nn.Linear):
        default = (
            hidden if module.out_features == width else None,
            hidden if module.in_features == width else None,
        )
        rows, cols = plan.get(id(module), default)
        out = _take(_take(t, 0, rows), 1, cols) if attr == "weight" else _take(t, 0, rows)
    elif isinstance(module, nn.Embedding):
        rows, cols = plan.get(id(module), (None, hidden if t.shape[1] == width else None))
        out = _take(_take(t, 0, rows), 1, cols)
    elif hidden is not None and width in t.shape:
        if t.ndim != 1:
            raise ModelError(
                f"student.width.hidden_size: cannot prune the hidden axis of '{name}' {tuple(t.shape)}"
            )
        out = _take(t, 0, hidden)
    else:
        out = t
    return out.clone() if out is t else out


def _rebuild(model: nn.Module, cfg, params: dict[str, Tensor]) -> nn.Module:
    """A model of ``type(model)`` built from ``cfg`` holding ``params`` (tied weights stay tied) and the
    buffers of ``model``; built on the meta device so nothing is initialised twice."""
    with torch.device("meta"):
        new = type(model)(cfg)
    grads = {n: p.requires_grad for n, p in model.named_parameters(remove_duplicate=False)}
    shared: dict[int, nn.Parameter] = {}
    for name, p in list(new.named_parameters(remove_duplicate=False)):
        if id(p) not in shared:
            if name not in params or params[name].shape != p.shape:
                got = tuple(params[name].shape) if name in params else "nothing"
                raise ModelError(
                    f"student.width: this {type(model).__name__} variant is not supported: '{name}' would be {got}, "
                    f"the pruned config builds {tuple(p.shape)}"
                )
            shared[id(p)] = nn.Parameter(params[name], requires_grad=grads.get(name, True))
        owner, _, attr = name.rpartition(".")
        new.get_submodule(owner)._parameters[attr] = shared[id(p)]
    old_buffers = dict(model.named_buffers())
    for name, b in list(new.named_buffers()):
        src = old_buffers.get(name)
        if src is None or src.shape != b.shape:
            raise ModelError(
                f"student.width: this {type(model).__name__} variant is not supported (buffer '{name}')"
            )
        owner, _, attr = name.rpartition(".")
        new.get_submodule(owner)._buffers[attr] = src.clone()
    if getattr(model, "generation_config", None) is not None:
        new.generation_config = copy.deepcopy(model.generation_config)
    return new.train(model.training)


def apply_width(model: nn.Module, selection: WidthSelection) -> nn.Module:
    """A new model keeping exactly the selected heads, neurons and channels (``model`` is not changed)."""
    sel, sizes = check_selection(model, selection)
    cfg = pruned_config(model, sizes)
    plan, width = _plan(model, sel), model.config.hidden_size
    params = {}
    for mod_name, module in model.named_modules():
        for attr, p in module.named_parameters(recurse=False):
            name = f"{mod_name}.{attr}" if mod_name else attr
            params[name] = _slice(name, module, attr, p, plan, sel.hidden, width)
    return _rebuild(model, cfg, params)


def prune_width(
    model: nn.Module,
    importance: WidthImportance,
    *,
    heads: int | None = None,
    kv_heads: int | None = None,
    intermediate_size: int | None = None,
    hidden_size: int | None = None,
) -> nn.Module:
    """A new model cut to the given width, keeping the most important parts (see the module docstring for
    what ``heads`` and ``hidden_size`` mean per family); sizes left ``None`` are kept or implied."""
    sizes = resolve_sizes(
        model, heads=heads, kv_heads=kv_heads, intermediate_size=intermediate_size, hidden_size=hidden_size
    )
    return apply_width(model, select_width(model, importance, sizes))


def _count(model: nn.Module, sizes: WidthSizes) -> int:
    cfg = pruned_config(model, sizes)
    with torch.device("meta"):
        shell = type(model)(cfg)
    return sum(p.numel() for p in shell.parameters())


def parameters_for(
    model: nn.Module,
    *,
    heads: int | None = None,
    kv_heads: int | None = None,
    intermediate_size: int | None = None,
    hidden_size: int | None = None,
) -> int:
    """Parameters (tied weights counted once) of ``model`` pruned to this width; nothing is pruned."""
    sizes = resolve_sizes(
        model, heads=heads, kv_heads=kv_heads, intermediate_size=intermediate_size, hidden_size=hidden_size
    )
    return _count(model, sizes)


def width_for_parameter_target(
    model: nn.Module, target_parameters: int, *, multiple_of: int = 64, prune_heads: bool = True
) -> WidthSizes:
    """The width with the most heads, then the widest FFN, whose parameters fit ``target_parameters``.

    Rule (FFN first): for each head count, from the model's own downwards (Llama family: by whole key/value
    groups, hidden width kept; BERT family: hidden width = heads x head size), take the widest
    intermediate_size that fits, rounded down to a multiple of ``multiple_of`` (unchanged if the model
    already fits); accept the first one whose FFN is still at least as wide as the hidden width.
    ``prune_heads=False`` only shrinks the FFN. Parameters are linear in intermediate_size, so two exact
    counts per head count give the fit.
    """
    for key, value in (("target_parameters", target_parameters), ("multiple_of", multiple_of)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ModelError(f"student.width.{key} must be a positive whole number, got {value!r}")
    fam = width_family(model)
    _, n_heads, n_kv, _, inter, _ = model_sizes(model)
    step = 1 if fam.coupled else n_heads // n_kv
    smallest = ""
    for heads in range(n_heads, 0, -step) if prune_heads else [n_heads]:
        try:
            sizes = resolve_sizes(model, heads=heads)
            full, one = _count(model, sizes), _count(model, sizes._replace(intermediate_size=1))
        except ModelError:  # e.g. LlamaConfig wants hidden_size divisible by the head count
            continue
        if full <= target_parameters:
            return sizes
        per_neuron = (full - one) // max(inter - 1, 1)
        floor = min(sizes.hidden_size, inter)
        size = (1 + (target_parameters - one) // per_neuron) // multiple_of * multiple_of
        if target_parameters >= one and size >= floor:
            return sizes._replace(intermediate_size=size)
        smallest = f"; {heads} heads with intermediate_size {floor} have {one + per_neuron * (floor - 1)}"
    raise ModelError(
        f"student.width.target_parameters ({target_parameters}) is below what width pruning reaches with the FFN "
        f"at least as wide as the hidden width{smallest}; prune layers too (student.num_layers)"
    )
