"""The final hidden states of a causal LM without its logits (``lm.fused``).

:class:`HeadCapture` puts a forward pre-hook on the model's output layer (``get_output_embeddings()``): while
it is active, the hook keeps the layer's input (the final, normalised hidden states ``(B, T, H)``) and hands
the layer a slice of zero positions, so the model returns logits ``(B, 0, V)`` and no ``(B, T, V)`` tensor is
made; the loss then applies the head itself, chunk by chunk (:mod:`lmdistill.losses.fused`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from lmdistill.errors import ModelError

_SCALED = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def output_layer(model: nn.Module, key: str) -> nn.Linear:
    """The model's LM head, a plain ``nn.Linear`` applied to the final hidden states; one line otherwise."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    config = getattr(model, "config", None)
    scaled = [k for k in _SCALED if getattr(config, k, None) not in (None, 1, 1.0)]
    if not isinstance(head, nn.Linear) or scaled:
        why = f"its logits are rescaled ({scaled[0]})" if scaled else "it has no plain linear output layer"
        raise ModelError(
            f"lm.fused: the {key} ({type(model).__name__}) cannot be fused: {why}; set lm.fused: false"
        )
    return head


class HeadCapture:
    """Keeps the input of ``model``'s LM head and skips the head, while ``active(head)`` is true."""

    def __init__(self, model: nn.Module, key: str, active: Callable[[nn.Module], bool] = lambda m: True):
        self.head = output_layer(model, key)
        self.active = active
        self.hidden: torch.Tensor | None = None
        self.handle = self.head.register_forward_pre_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple):
        if not self.active(module):
            return None
        self.hidden = args[0]
        return (args[0][..., :0, :], *args[1:])

    def pop(self) -> torch.Tensor | None:
        """The captured hidden states ``(B, T, H)`` (None when the model has not run since)."""
        h, self.hidden = self.hidden, None
        return h

    def remove(self) -> None:
        self.handle.remove()
        self.hidden = None
