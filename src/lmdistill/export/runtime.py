"""Run an exported ONNX folder where code expects a transformers model: ``runner(**batch).logits``.

:class:`OnnxRunner` takes the tokenizer's torch tensors, feeds the graph the inputs it declares (others,
such as ``labels``, are dropped; a missing ``attention_mask`` is all ones and a missing ``token_type_ids``
all zeros, as transformers does), and returns an :class:`OnnxOutput` whose fields are float32 CPU tensors.
It also answers ``eval()``, ``train(False)``, ``to("cpu")`` and ``training``, so measurement code written for
``nn.Module`` (``lmdistill.report.measure.measure_latency``) runs it unchanged. Code that asks for
``next(model.parameters()).device`` should ask for ``model.device`` instead (transformers models have it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers.utils import ModelOutput

from lmdistill.errors import ExportError
from lmdistill.export.files import read_record

_DEFAULTS = {"attention_mask": np.ones, "token_type_ids": np.zeros}  # what transformers uses when absent


@dataclass
class OnnxOutput(ModelOutput):
    """Outputs of an exported graph, by name (None where the graph has no such output).

    logits: (B, C) for sequence classification, (B, T, C) for token classification and LMs;
    last_hidden_state: (B, T, H) for a base encoder; start_logits, end_logits: (B, T) for QA.
    """

    logits: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    start_logits: torch.Tensor | None = None
    end_logits: torch.Tensor | None = None


class OnnxRunner:
    """An ``onnxruntime.InferenceSession`` (CPU) over ``folder/model.onnx`` with a transformers-like call.

    Attributes: ``config`` (transformers config from config.json), ``device`` (cpu), ``record`` (the
    folder's lmdistill-export.json, {} if absent), ``input_names``, ``output_names``, ``threads``.
    """

    training = False

    def __init__(self, folder: str | Path, *, threads: int | None = None):
        import onnxruntime as ort
        from transformers import AutoConfig

        self.folder = Path(folder)
        if not (self.folder / "model.onnx").is_file():
            raise ExportError(f"{self.folder}: no model.onnx; give a folder written by lmdistill export")
        self.threads = threads or torch.get_num_threads()
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        # no spin-waiting after a run: timed interleaved with other models, it would take their CPU
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(
                str(self.folder / "model.onnx"), options, providers=["CPUExecutionProvider"]
            )
        except Exception as e:  # onnxruntime's own error types (InvalidGraph, NotImplemented, ...)
            raise ExportError(
                f"{self.folder / 'model.onnx'}: onnxruntime cannot load it ({str(e)[:200]})"
            ) from None
        self.config = AutoConfig.from_pretrained(self.folder)
        self.record = read_record(self.folder)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        unknown = set(self.output_names) - set(OnnxOutput.__dataclass_fields__)
        if unknown:
            raise ExportError(
                f"{self.folder}: graph outputs {sorted(unknown)} are not logits/hidden-state outputs"
            )
        self.device = torch.device("cpu")

    def __call__(self, **inputs: Any) -> OnnxOutput:
        """``inputs``: (B, T) integer tensors by name, as the tokenizer returns them. Returns float32 tensors."""
        if "input_ids" not in inputs:
            raise ExportError("OnnxRunner: input_ids is required")
        ids = _numpy(inputs["input_ids"])
        feed = {}
        for name in self.input_names:
            value = inputs.get(name)
            if value is None and name not in _DEFAULTS:
                raise ExportError(f"OnnxRunner: the graph needs input {name!r}; pass it")
            feed[name] = _numpy(value) if value is not None else _DEFAULTS[name](ids.shape, dtype=np.int64)
        values = self.session.run(self.output_names, feed)
        return OnnxOutput(**{n: torch.from_numpy(v).float() for n, v in zip(self.output_names, values)})

    forward = __call__

    def eval(self) -> OnnxRunner:
        return self

    def train(self, mode: bool = True) -> OnnxRunner:
        if mode:
            raise ExportError("OnnxRunner: an ONNX graph runs inference only; it cannot be trained")
        return self

    def to(self, device: str | torch.device | torch.dtype) -> OnnxRunner:
        if isinstance(device, torch.dtype):  # the graph's precision is fixed when it is exported
            if device != torch.float32:
                raise ExportError(
                    f"OnnxRunner: the graph's precision is fixed at export ({device} asked); "
                    "evaluate it without --dtype, or export an int8 graph (--int8)"
                )
            return self
        if torch.device(device).type != "cpu":
            raise ExportError(f"OnnxRunner runs on the CPU only (asked for {device})")
        return self

    def __repr__(self) -> str:
        kind = self.record.get("kind", "?")
        precision = self.record.get("precision", "?")
        return f"OnnxRunner({str(self.folder)!r}, kind={kind}, precision={precision}, threads={self.threads})"


def _numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=np.int64)


def exported_folder(path: str | Path) -> Path | None:
    """``path`` when it is an exported graph folder (``model.onnx``), None for anything else. The top folder of
    ``lmdistill export`` (holding ``onnx/`` and ``onnx-int8/``) is an ExportError naming the sub-folders."""
    from lmdistill.export.files import MARKER

    folder = Path(path).expanduser()
    if (folder / "model.onnx").is_file():
        return folder
    if (folder / MARKER).is_file() and not (folder / "config.json").is_file():
        subs = sorted(p.name for p in folder.iterdir() if (p / "model.onnx").is_file())
        raise ExportError(
            f"{folder}: is the top folder of an export; give one of its graphs: "
            + (", ".join(str(folder / s) for s in subs) or "(none found: export the model again)")
        )
    return None


def load_exported(folder: str | Path):
    """``(OnnxRunner, tokenizer)`` of an exported graph folder."""
    from transformers import AutoTokenizer

    return OnnxRunner(folder), AutoTokenizer.from_pretrained(Path(folder))
