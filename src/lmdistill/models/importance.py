"""Importance of attention heads, FFN neurons and hidden channels, measured on a few hundred examples.

Activation importance (Minitron: Muralidharan et al., 2024, sec. 2, "activation-based importance"): for
each channel, the mean |activation| over an example's real tokens (padding excluded), then the root mean
square of that over the examples. This is the (batch = L2, sequence = mean) aggregation of NVIDIA ModelOpt's
Minitron code (``modelopt/torch/nas/plugins/megatron.py``: ``input.abs().mean(seq)``, squared, summed over
the batch, square root), divided by sqrt(examples) so the scale does not grow with the calibration set.
  * heads: channels of the attention context (the input of the attention output projection), a head's
    score is the L2 norm of its channels' scores (as in ModelOpt);
  * neurons: the FFN activation after the nonlinearity (BERT: input of ``output.dense``; Llama:
    ``act(gate) * up``, the input of ``down_proj``);
  * hidden channels: the outputs of every LayerNorm / RMSNorm of the base model on the hidden axis,
    scores summed over those norms. ModelOpt hooks the two norms in front of attention and MLP of each
    layer; here the final norm (Llama) or the embedding norm (BERT) count too. BERT is post-norm, so its
    norms emit the residual stream itself.

Gradient importance of heads (Michel et al., 2019, "Are Sixteen Heads Really Better than One?", eq. 2):
I_h = E_x |dL(x)/d xi_h| with a head mask xi multiplying each head's context, xi = 1. The mask here is
per example (shape (batch, heads)), so |dL(x)/d xi_h| is taken per example as in eq. 2, not per batch as in
the usual bertology script; no layer normalisation is applied (Michel et al. normalise per layer for a
global ranking; pruning here keeps the same count in every layer, which the normalisation does not change).
The loss: ``loss_fn(outputs, batch)`` if given (per-example losses (batch,) or their sum); causal LMs: the
next-token cross-entropy of each example (mean over its tokens, padding excluded); other models: the
model's own ``outputs.loss`` (from ``labels``) times the batch size, i.e. the sum of per-example losses for
sequence classification and regression. Gradients go to the mask only (``torch.autograd.grad``); the
model's ``.grad`` fields are not touched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmdistill.errors import ModelError
from lmdistill.models.student import layer_list
from lmdistill.models.taps import attention_shape, is_causal
from lmdistill.models.width import WidthImportance, block_module, width_family

Batch = Mapping[str, Tensor]
LossFn = Callable[[object, Batch], Tensor]
METHODS = ("activation", "gradient")


class _Stats:
    """Sum over examples of (mean |x| over the example's real tokens)^2, per channel, per key."""

    def __init__(self) -> None:
        self.sq: dict[str, Tensor] = {}
        self.examples = 0
        self.mask: Tensor | None = None  # (B, T) of the batch being run

    def add(self, key: str, x: Tensor) -> None:
        m = self.mask.to(x.device, torch.float32)[..., None]  # (B, T, 1)
        per_example = (x.detach().float().abs() * m).sum(1) / m.sum(1).clamp(min=1)  # (B, C)
        self.sq[key] = self.sq.get(key, 0) + per_example.pow(2).sum(0)

    def score(self, key: str) -> Tensor:
        """Root mean square over examples: (C,)."""
        return (self.sq[key] / max(self.examples, 1)).sqrt().cpu()


def _prepare(model: nn.Module, batch: Batch, keep_labels: bool) -> dict[str, Tensor]:
    device = next(model.parameters()).device
    return {k: v.to(device) for k, v in batch.items() if keep_labels or k != "labels"}


def _token_mask(batch: Batch) -> Tensor:
    mask = batch.get("attention_mask")
    return mask if mask is not None else torch.ones(batch["input_ids"].shape[:2], dtype=torch.long)


def _hidden_norms(model: nn.Module) -> list[nn.Module]:
    """LayerNorm / RMSNorm modules of the base model that act on the hidden axis."""
    width = model.config.hidden_size
    base = getattr(model, "base_model", model)
    return [
        m
        for m in base.modules()
        if "norm" in type(m).__name__.lower()
        and isinstance(getattr(m, "weight", None), Tensor)
        and tuple(m.weight.shape) == (width,)
    ]


def _activation_stats(
    model: nn.Module, batches: Iterable[Batch], heads: bool, neurons: bool, hidden: bool
) -> _Stats:
    """One pass over ``batches`` with forward hooks on what is asked for."""
    fam, stats, handles = width_family(model), _Stats(), []

    def pre(key):
        return lambda module, args: stats.add(key, args[0])

    def post(key):
        return lambda module, args, output: stats.add(key, output)

    for i in range(len(layer_list(model)[2])):
        if heads:
            handles.append(block_module(model, i, fam.o).register_forward_pre_hook(pre(f"heads{i}")))
        if neurons:
            handles.append(block_module(model, i, fam.ffn_out).register_forward_pre_hook(pre(f"neurons{i}")))
    if hidden:
        handles += [m.register_forward_hook(post(f"hidden{j}")) for j, m in enumerate(_hidden_norms(model))]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                stats.mask = _token_mask(batch)
                model(**_prepare(model, batch, keep_labels=False))
                stats.examples += stats.mask.shape[0]
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    if stats.examples == 0:
        raise ModelError("student.width: importance needs at least one calibration batch, got none")
    return stats


def _head_scores(model: nn.Module, stats: _Stats) -> Tensor:
    heads, _, head_dim = attention_shape(model.config)
    rows = [
        stats.score(f"heads{i}").view(heads, head_dim).norm(dim=-1) for i in range(len(layer_list(model)[2]))
    ]
    return torch.stack(rows)  # (layers, heads)


def neuron_importance(model: nn.Module, batches: Iterable[Batch]) -> Tensor:
    """Activation importance of every FFN neuron: (layers, intermediate_size)."""
    stats = _activation_stats(model, batches, heads=False, neurons=True, hidden=False)
    return torch.stack([stats.score(f"neurons{i}") for i in range(len(layer_list(model)[2]))])


def _check_norms(model: nn.Module) -> list[nn.Module]:
    norms = _hidden_norms(model)
    if not norms:
        raise ModelError(
            f"student.width.hidden_size: found no LayerNorm/RMSNorm on the hidden axis of a {type(model).__name__}"
        )
    return norms


def hidden_importance(model: nn.Module, batches: Iterable[Batch]) -> Tensor:
    """Activation importance of every hidden channel, summed over the hidden-axis norms: (hidden_size,)."""
    norms = _check_norms(model)
    stats = _activation_stats(model, batches, heads=False, neurons=False, hidden=True)
    return torch.stack([stats.score(f"hidden{j}") for j in range(len(norms))]).sum(0)


def head_importance(
    model: nn.Module, batches: Iterable[Batch], *, method: str = "activation", loss_fn: LossFn | None = None
) -> Tensor:
    """Importance of every attention (query) head: (layers, heads). ``method``: activation or gradient."""
    if method not in METHODS:
        raise ModelError(f"student.width.importance must be one of {', '.join(METHODS)}, got '{method}'")
    if method == "gradient":
        return _gradient_heads(model, batches, loss_fn)
    return _head_scores(model, _activation_stats(model, batches, heads=True, neurons=False, hidden=False))


def width_importance(
    model: nn.Module,
    batches: Iterable[Batch],
    *,
    heads: bool = True,
    neurons: bool = True,
    hidden: bool = False,
    head_method: str = "activation",
    loss_fn: LossFn | None = None,
) -> WidthImportance:
    """All asked-for scores; activation ones in one pass (a second pass for gradient head importance)."""
    if head_method not in METHODS:
        raise ModelError(f"student.width.importance must be one of {', '.join(METHODS)}, got '{head_method}'")
    batches = list(batches)
    if hidden:
        _check_norms(model)
    act_heads = heads and head_method == "activation"
    stats = _activation_stats(model, batches, heads=act_heads, neurons=neurons, hidden=hidden)
    layers = len(layer_list(model)[2])
    out = WidthImportance()
    if heads:
        out.heads = _head_scores(model, stats) if act_heads else _gradient_heads(model, batches, loss_fn)
    if neurons:
        out.neurons = torch.stack([stats.score(f"neurons{i}") for i in range(layers)])
    if hidden:
        out.hidden = torch.stack([stats.score(k) for k in stats.sq if k.startswith("hidden")]).sum(0)
    return out


def next_token_losses(logits: Tensor, batch: Batch) -> Tensor:
    """Per-example next-token cross-entropy, mean over the example's target tokens: (B,).

    Targets: ``labels`` if given (-100 ignored), else ``input_ids`` with padding (attention_mask 0) ignored."""
    labels = batch.get("labels")
    if labels is None:
        labels = batch["input_ids"].masked_fill(_token_mask(batch).to(batch["input_ids"].device) == 0, -100)
    labels = labels[:, 1:].to(logits.device)
    ce = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), labels, ignore_index=-100, reduction="none")
    valid = (labels != -100).float()
    return (ce * valid).sum(1) / valid.sum(1).clamp(min=1)


def _loss_sum(model: nn.Module, batch: Batch, loss_fn: LossFn | None) -> Tensor:
    """Sum over the batch of per-example losses (see the module docstring)."""
    if loss_fn is not None:
        return loss_fn(model(**_prepare(model, batch, keep_labels=True)), batch).sum()
    if is_causal(model):
        return next_token_losses(model(**_prepare(model, batch, keep_labels=False)).logits, batch).sum()
    outputs = model(**_prepare(model, batch, keep_labels=True))
    if outputs.loss is None:
        raise ModelError(
            "student.width.importance: the gradient method needs labelled batches (a 'labels' key) or a loss_fn"
        )
    return outputs.loss * batch["input_ids"].shape[0]


def _abs_sum(grad: Tensor | None, heads: int) -> Tensor:
    """sum_b |dL/d xi_{b,h}|: (heads,); a mask the loss does not reach scores 0."""
    return torch.zeros(heads) if grad is None else grad.abs().sum(0).cpu()


def _gradient_heads(model: nn.Module, batches: Iterable[Batch], loss_fn: LossFn | None) -> Tensor:
    """Michel et al. (2019) eq. 2 with a per-example head mask on the attention context: (layers, heads)."""
    fam = width_family(model)
    heads, _, head_dim = attention_shape(model.config)
    layers = len(layer_list(model)[2])
    masks: list[Tensor] = []

    def gate(i):
        def pre(module, args):
            x = args[0]  # (B, T, heads * head_dim)
            b, t, c = x.shape
            return (
                (x.view(b, t, heads, head_dim) * masks[i][:, None, :, None].to(x.dtype)).view(b, t, c),
                *args[1:],
            )

        return pre

    handles = [block_module(model, i, fam.o).register_forward_pre_hook(gate(i)) for i in range(layers)]
    total, examples, was_training = torch.zeros(layers, heads), 0, model.training
    model.eval()
    try:
        with torch.enable_grad():
            for batch in batches:
                size = batch["input_ids"].shape[0]
                device = next(model.parameters()).device
                masks[:] = [torch.ones(size, heads, device=device, requires_grad=True) for _ in range(layers)]
                grads = torch.autograd.grad(_loss_sum(model, batch, loss_fn), masks, allow_unused=True)
                total += torch.stack([_abs_sum(g, heads) for g in grads]).cpu()
                examples += size
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    if examples == 0:
        raise ModelError("student.width: importance needs at least one calibration batch, got none")
    return total / examples
