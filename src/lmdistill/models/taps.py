"""Feature taps: what a loss needs from inside a model.

Hidden states are read by attribute (``outputs.hidden_states``). Queries, keys and values, which no model
returns, come from forward hooks on the projection modules of the tapped layers only; attention
probabilities and pre-softmax scores are computed from them, so attention losses never force eager
attention on the whole model (the model keeps SDPA / flash attention). Hooks are removed by
:meth:`FeatureTap.remove` (the engine does it when the run ends, also on error).

Computed attention equals the model's own for BERT, RoBERTa, ELECTRA, DistilBERT and Llama-family layers
(Llama: from the queries and keys before rotary embedding, so position is not included). MPNet adds a
relative position bias inside attention that is not part of the recomputed scores.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lmdistill.errors import ModelError
from lmdistill.models.student import layer_list

# per model family: (query, key, value) module paths inside one transformer block
_QKV_PATHS = (
    ("attention.self.query", "attention.self.key", "attention.self.value"),  # BERT, RoBERTa, ELECTRA, XLM-R
    ("attention.q_lin", "attention.k_lin", "attention.v_lin"),  # DistilBERT
    ("attention.attn.q", "attention.attn.k", "attention.attn.v"),  # MPNet
    ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),  # Llama, Mistral, Qwen2, Gemma
)
DECODER_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "smollm3", "olmo", "olmo2")


def _get(module: nn.Module, dotted: str) -> nn.Module | None:
    for name in dotted.split("."):
        module = getattr(module, name, None)
        if module is None:
            return None
    return module


def qkv_modules(model: nn.Module, layer: int) -> tuple[nn.Module, nn.Module, nn.Module]:
    """The query, key and value projections of block ``layer``."""
    block = layer_list(model)[2][layer]
    for paths in _QKV_PATHS:
        mods = [_get(block, p) for p in paths]
        if all(isinstance(m, nn.Linear) for m in mods):
            return mods[0], mods[1], mods[2]
    raise ModelError(
        f"cannot find the query/key/value projections of a {type(model).__name__} layer; attention and "
        "relation features are supported for BERT, RoBERTa, ELECTRA, DistilBERT, MPNet and Llama-family models"
    )


def attention_shape(config) -> tuple[int, int, int]:
    """(query heads, key/value heads, head dim) of a model config."""
    heads = getattr(config, "num_attention_heads", None) or config.n_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    hidden = getattr(config, "hidden_size", None) or config.dim
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    return heads, kv_heads, head_dim


def is_causal(model: nn.Module) -> bool:
    cfg = model.config
    return bool(getattr(cfg, "is_decoder", False)) or cfg.model_type in DECODER_TYPES


class FeatureTap:
    """Collects ``q``, ``k``, ``v`` outputs of chosen layers during a forward pass."""

    def __init__(self, model: nn.Module, layers: dict[int, set[str]]):
        """``layers``: layer index -> subset of {"q", "k", "v"} to record."""
        self.model = model
        self.store: dict[str, torch.Tensor] = {}
        self.handles = []
        self.heads, self.kv_heads, self.head_dim = attention_shape(model.config)
        self.causal = is_causal(model)
        for layer, kinds in sorted(layers.items()):
            mods = dict(zip("qkv", qkv_modules(model, layer)))
            for kind in sorted(kinds):
                self.handles.append(mods[kind].register_forward_hook(self._hook(f"{kind}{layer}")))

    def _hook(self, key: str):
        def record(module, inputs, output):
            self.store[key] = output

        return record

    def pop(self) -> dict[str, torch.Tensor]:
        """The features of the last forward pass (and forget them)."""
        out, self.store = self.store, {}
        return out

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []
        self.store = {}

    def attention_scores(self, features: dict[str, torch.Tensor], layer: int) -> torch.Tensor:
        """Pre-softmax scores ``Q K^T / sqrt(d)`` of ``layer``: ``(B, heads, T, T)`` float32, no mask added."""
        q = features[f"q{layer}"].float()
        k = features[f"k{layer}"].float()
        b, t, _ = q.shape
        q = q.view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = k.view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        if self.kv_heads != self.heads:  # grouped-query attention: each key head serves a group of queries
            k = k.repeat_interleave(self.heads // self.kv_heads, dim=1)
        return q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)

    def attention_probs(
        self, features: dict[str, torch.Tensor], layer: int, mask: torch.Tensor
    ) -> torch.Tensor:
        """Attention probabilities of ``layer`` with padding (and causal) masking: ``(B, heads, T, T)``."""
        scores = self.attention_scores(features, layer)
        allowed = mask.bool()[:, None, None, :]
        if self.causal:
            t = scores.shape[-1]
            allowed = allowed & torch.ones(t, t, dtype=torch.bool, device=scores.device).tril()
        scores = scores.masked_fill(~allowed, torch.finfo(torch.float32).min)
        return scores.softmax(-1)
