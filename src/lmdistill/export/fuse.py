"""ONNX Runtime's transformer graph fusion of an exported BERT or RoBERTa encoder.

A traced encoder is a few hundred small nodes (each attention is some 20 MatMul/Reshape/Transpose/Softmax
nodes); for a small model at batch 1 running them costs more than their arithmetic. ONNX Runtime's
offline optimizer (``onnxruntime.transformers.optimizer.optimize_model``, what optimum's ``ORTOptimizer``
calls) rewrites the graph into its fused operators: one ``Attention`` per layer, ``EmbedLayerNormalization``,
``SkipLayerNormalization``, ``BiasGelu``; dynamic int8 then quantizes ``Attention`` as ``QAttention``.

Its attention pattern is the one of transformers' eager attention, so a fused export traces the model with
``attn_implementation="eager"`` (the same function as SDPA; the check against PyTorch still decides).
The fused graph is kept only when every layer's attention fused: a partial fusion (layer norms and GELU
only) was no faster than the plain graph on the demo's student (2026-12-04, docs/compression.md). Model types
other than :data:`FUSABLE` are exported plain; the record says why.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

FUSABLE = {"bert": "bert", "roberta": "bert"}  # config.model_type -> the optimizer's model_type
TOOL = "onnxruntime.transformers.optimizer.optimize_model(opt_level=0)"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The optimizer logs a WARNING per pattern it does not find ('Failed to detect num_heads ...')."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def fuse_graph(raw: Path, out: Path, config: Any) -> dict[str, Any]:
    """Fuse ``raw`` (an fp32 graph of a model whose ``config.model_type`` is in :data:`FUSABLE`) into ``out`` when every layer's attention fuses.

    Returns the record's ``fusion`` entry: ``applied`` (``out`` was written), ``tool``, ``fused`` (count per
    fused operator), and ``reason`` when not applied. Heads and width are given from ``config``: the
    optimizer cannot read them from a graph whose width was pruned.
    """
    from onnxruntime.transformers.optimizer import optimize_model

    layers = int(config.num_hidden_layers)
    try:
        with _quiet():
            fused = optimize_model(
                str(raw),
                model_type=FUSABLE[config.model_type],
                num_heads=int(config.num_attention_heads),
                hidden_size=int(config.hidden_size),
                opt_level=0,
            )
            counts = {k: int(v) for k, v in fused.get_fused_operator_statistics().items() if v}
    except Exception as e:  # the optimizer's own assertion and graph errors
        line = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        return {"applied": False, "tool": TOOL, "fused": {}, "reason": f"the optimizer failed ({line})"}
    found = {"applied": False, "tool": TOOL, "fused": counts}
    if counts.get("Attention", 0) != layers:
        reason = f"{counts.get('Attention', 0)} of {layers} attention layers fused; the plain graph is kept"
        return found | {"reason": reason}
    fused.save_model_to_file(str(out))
    return found | {"applied": True}
