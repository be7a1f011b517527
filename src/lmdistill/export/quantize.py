"""Dynamic int8 quantization: of an exported ONNX graph (a file), or of a PyTorch model (in memory).

Dynamic quantization (Jacob et al., 2018, "Quantization and Training of Neural Networks for Efficient
Integer-Arithmetic-Only Inference", eq. 1: r = S (q - Z)) stores weights as 8-bit integers with a scale and
zero point, and quantizes activations on the fly per batch from their observed range, so it needs no
calibration data.

* :func:`quantize_int8`: ONNX Runtime's ``quantize_dynamic`` on MatMul and Gather (the embedding tables),
  and on a fused graph's Attention and EmbedLayerNormalization, so an embedding-heavy model shrinks about 4x; the result is run against the fp32 graph and the
  difference and argmax agreement are recorded (measured, not assumed).
* :func:`torch_dynamic_int8`: ``torch.ao.quantization.quantize_dynamic`` on every ``nn.Linear`` (qint8
  weights; embeddings stay fp32). Applied at load time only: the quantized modules hold packed
  parameters that ``save_pretrained`` / ``from_pretrained`` cannot round-trip, and a pickled module would
  need ``torch.load(weights_only=False)`` (arbitrary code) and the same torch version to read back.
  Quantizing takes well under a second for a small model, so no file is offered.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lmdistill.errors import ExportError
from lmdistill.export.files import atomic_folder, copy_side_files, read_record, versions, write_record
from lmdistill.export.onnx import KINDS, check_shapes, make_inputs, real_positions

# Gather: the embedding tables; Gemm nodes are quantized as MatMul; Attention and EmbedLayerNormalization:
# the fused operators of lmdistill.export.fuse (QAttention, QEmbedLayerNormalization)
INT8_OPS = ("MatMul", "Gather", "Attention", "EmbedLayerNormalization")
QUANTIZATION = {  # recorded in lmdistill-export.json
    "method": "onnxruntime.quantization.quantize_dynamic",
    "op_types": list(INT8_OPS),
    "weight_type": "QInt8 (Gather tables: UInt8)",
    "per_channel": False,
    "activations": "uint8, quantized per batch at run time",
}


def onnx_quantizer():
    """ONNX Runtime's ``quantize_dynamic`` and ``QuantType``, or a one-line ExportError."""
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as e:
        raise ExportError(
            f"int8: onnxruntime.quantization is not importable ({e}); install onnxruntime (CPU) >= 1.16"
        ) from None
    return quantize_dynamic, QuantType


class _DropPreprocessHint(logging.Filter):
    """quantize_dynamic logs 'Please consider to run pre-processing' on the root logger for every call."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


@contextlib.contextmanager
def _quiet_root() -> Iterator[None]:
    hint = _DropPreprocessHint()
    logging.getLogger().addFilter(hint)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(hint)


def _session(path: Path):
    """A CPU session for the int8 graph: an ExportError when this onnxruntime lacks the int8 kernels."""
    import onnxruntime as ort

    try:
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own NotImplemented / Fail types, not subclasses of ours
        raise ExportError(
            f"int8: this onnxruntime {ort.__version__} cannot run the quantized graph "
            f"({str(e).splitlines()[0][:160]}); use the fp32 export or a CPU build of onnxruntime"
        ) from None


def compare_int8(fp32_path: Path, int8_session, record: dict[str, Any], config) -> dict[str, Any]:
    """Run the fp32 and int8 graphs on the export check's shapes: max |diff| per output and, for logits,
    the fraction of argmax predictions (per row, or per real token) that agree."""
    import onnxruntime as ort

    fp32 = ort.InferenceSession(str(fp32_path), providers=["CPUExecutionProvider"])
    names, outputs = list(record["inputs"]), list(record["outputs"])
    per_token = KINDS[record["kind"]][2]
    worst, agree, total = 0.0, 0, 0
    for i, (batch, length) in enumerate(check_shapes(config, None)):
        x = {k: v.numpy() for k, v in make_inputs(names, config, batch, length, 200 + i).items()}
        keep = x.get("attention_mask", np.ones((batch, length))).astype(bool)
        for a, b in zip(fp32.run(outputs, x), int8_session.run(outputs, x)):
            worst = max(worst, float(real_positions(np.abs(a - b), keep, per_token).max()))
            same = real_positions(a.argmax(-1) == b.argmax(-1), keep, per_token)
            agree, total = agree + int(same.sum()), total + same.size
    found = {"against": "onnx fp32", "max_abs_diff": worst}
    if record["kind"] != "base":
        found["argmax_agreement"] = agree / total
    return found


def quantize_int8(onnx_dir: str | Path, out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Dynamic int8 (weights int8/uint8, activations quantized per batch) of the ``model.onnx`` in an
    :func:`~lmdistill.export.onnx.export_onnx` folder, into ``out_dir`` with the same side files.

    ``lmdistill-export.json`` records the method, the fp32/int8 ``size_ratio`` of the graph files and the
    measured difference from fp32 (:func:`compare_int8`). Returns ``out_dir``.
    """
    from transformers import AutoConfig

    onnx_dir, out_dir = Path(onnx_dir), Path(out_dir)
    record = read_record(onnx_dir)
    if not (onnx_dir / "model.onnx").is_file() or record.get("precision") != "fp32":
        raise ExportError(
            f"{onnx_dir}: not an fp32 ONNX export (model.onnx + lmdistill-export.json); run export_onnx first"
        )
    quantize_dynamic, QuantType = onnx_quantizer()
    config = AutoConfig.from_pretrained(onnx_dir)
    fp32 = onnx_dir / "model.onnx"
    with atomic_folder(out_dir, overwrite) as tmp:
        try:
            with _quiet_root():
                quantize_dynamic(
                    fp32,
                    tmp / "model.onnx",
                    op_types_to_quantize=list(INT8_OPS),
                    weight_type=QuantType.QInt8,
                    # ONNX shape inference gives no type to the outputs of fused (com.microsoft) operators
                    extra_options={"DefaultTensorType": 1},  # onnx.TensorProto.FLOAT
                )
        except Exception as e:  # onnxruntime's quantizer raises plain Exception/RuntimeError types
            raise ExportError(
                f"{fp32}: onnxruntime quantize_dynamic failed ({str(e).splitlines()[0][:200]})"
            ) from None
        _drop_value_info(tmp / "model.onnx")
        check = compare_int8(fp32, _session(tmp / "model.onnx"), record, config)
        found = {
            "precision": "int8",
            "source": str(onnx_dir.resolve()),
            "quantization": QUANTIZATION,
            "weights_bytes": (tmp / "model.onnx").stat().st_size,
            "size_ratio": fp32.stat().st_size / (tmp / "model.onnx").stat().st_size,
            "versions": versions(),
            "check": check,
            "fp32_check": record.get("check"),
            "copied": copy_side_files(onnx_dir, tmp),
        }
        write_record(tmp, record | found)
    return out_dir


def _drop_value_info(path: Path) -> None:
    """Remove the intermediate shape annotations quantize_dynamic adds (optional in ONNX; onnxruntime
    infers shapes itself); for a small model they are a tenth of the file."""
    import onnx

    model = onnx.load(str(path))
    del model.graph.value_info[:]
    onnx.save(model, str(path))


# --------------------------------------------------------------------------------------------- torch


def check_torch_int8() -> str:
    """The quantized engine torch will use for int8 Linear kernels, or a one-line ExportError."""
    engines = [e for e in torch.backends.quantized.supported_engines if e != "none"]
    engine = torch.backends.quantized.engine
    if not engines or engine in (None, "none"):
        raise ExportError(
            f"int8: this torch {torch.__version__} has no quantized engine (supported: "
            f"{torch.backends.quantized.supported_engines}); use fp32 or the ONNX int8 export"
        )
    return engine


def torch_dynamic_int8(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (in eval mode) with every ``nn.Linear`` replaced by a dynamic int8 Linear
    (qint8 weights per tensor, fp32 in and out, activations quantized per batch); embeddings and norms stay
    fp32. CPU only. torch 2.13 marks ``torch.ao.quantization`` deprecated (its successor is torchao)."""
    check_torch_int8()
    if any(p.device.type != "cpu" for p in model.parameters()):
        raise ExportError("int8: torch dynamic int8 runs on CPU only; move the model with .cpu() first")
    try:
        from torch.ao.quantization import quantize_dynamic
    except ImportError as e:
        raise ExportError(
            f"int8: torch {torch.__version__} has no torch.ao.quantization ({e}); use the ONNX int8 export"
        ) from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.ao.quantization -> torchao
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
        return quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8, inplace=False)
