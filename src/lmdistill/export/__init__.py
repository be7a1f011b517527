"""ONNX export, int8 quantization and an ONNX Runtime runner for saved model folders.

* :func:`export_model`: the CLI's entry (``lmdistill export MODEL --onnx [--int8] --output DIR``).
* :func:`export_onnx`: one fp32 ONNX folder, checked against PyTorch.
* :func:`quantize_int8`: ONNX Runtime dynamic int8 of an exported folder, compared with fp32.
* :class:`OnnxRunner`: run an exported folder as ``runner(**batch).logits``; :func:`load_exported` gives it with
  its tokenizer (what ``lmdistill evaluate`` and the report load for an exported folder).
* :func:`torch_dynamic_int8`: PyTorch dynamic int8 of every ``nn.Linear``, in memory.
"""

from lmdistill.errors import ExportError
from lmdistill.export.entry import export_model
from lmdistill.export.files import MARKER, read_record
from lmdistill.export.onnx import KINDS, detect_kind, export_onnx
from lmdistill.export.quantize import check_torch_int8, quantize_int8, torch_dynamic_int8
from lmdistill.export.runtime import OnnxOutput, OnnxRunner, exported_folder, load_exported

__all__ = [
    "KINDS",
    "MARKER",
    "ExportError",
    "OnnxOutput",
    "OnnxRunner",
    "check_torch_int8",
    "detect_kind",
    "export_model",
    "export_onnx",
    "exported_folder",
    "load_exported",
    "quantize_int8",
    "read_record",
    "torch_dynamic_int8",
]
