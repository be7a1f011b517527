"""The one export entry the CLI calls: ``lmdistill export MODEL --onnx [--int8] --output DIR``.

Layout of ``DIR`` (written into a temporary sibling and renamed at the end)::

    DIR/lmdistill-export.json   summary: source, kind, each format's folder, size and check
    DIR/onnx/                   fp32 graph  (model.onnx + config + tokenizer + lmdistill-export.json)
    DIR/onnx-int8/              int8 graph  (same layout; only with int8=True)

Each sub-folder is complete on its own: ``OnnxRunner(DIR / "onnx-int8")`` runs it, and
``lmdistill.report.measure.size_on_disk`` measures it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmdistill.errors import ExportError
from lmdistill.export.files import atomic_folder, read_record, versions, write_record
from lmdistill.export.onnx import export_onnx
from lmdistill.export.quantize import onnx_quantizer, quantize_int8

FOLDERS = {"onnx": "onnx", "int8": "onnx-int8"}


def export_model(
    model_dir: str | Path,
    out_dir: str | Path,
    *,
    onnx: bool = True,
    int8: bool = False,
    overwrite: bool = False,
    kind: str = "auto",
    max_length: int | None = None,
    exporter: str = "torchscript",
) -> dict[str, Any]:
    """Export ``model_dir`` to ``out_dir/onnx`` (fp32, checked against PyTorch) and, with ``int8``, to
    ``out_dir/onnx-int8`` (ONNX Runtime dynamic int8, compared with fp32). ``out_dir`` must be new, empty,
    or an earlier export replaced with ``overwrite=True``; on any error nothing is left there.

    Returns the summary written to ``out_dir/lmdistill-export.json`` plus ``output`` (the folder).
    """
    if not onnx:
        raise ExportError(
            "export: nothing to write without onnx=True (--onnx); torch int8 is applied at load time "
            "(lmdistill.export.torch_dynamic_int8), not saved"
        )
    if int8:
        onnx_quantizer()  # fail before any work when the quantizer is missing
    out_dir = Path(out_dir)
    with atomic_folder(out_dir, overwrite) as tmp:
        export_onnx(model_dir, tmp / FOLDERS["onnx"], kind=kind, max_length=max_length, exporter=exporter)
        if int8:
            quantize_int8(tmp / FOLDERS["onnx"], tmp / FOLDERS["int8"])
        summary = _summary(Path(model_dir), tmp, int8)
        write_record(tmp, summary)
    return summary | {"output": str(out_dir)}


def _summary(model_dir: Path, tmp: Path, int8: bool) -> dict[str, Any]:
    fp32 = read_record(tmp / FOLDERS["onnx"])
    formats = {
        "onnx": {
            "folder": FOLDERS["onnx"],
            "precision": "fp32",
            "weights_bytes": fp32["weights_bytes"],
            "max_abs_diff_vs_pytorch": fp32["check"]["max_abs_diff"],
        }
    }
    if int8:
        q = read_record(tmp / FOLDERS["int8"])
        formats["onnx-int8"] = {
            "folder": FOLDERS["int8"],
            "precision": "int8",
            "weights_bytes": q["weights_bytes"],
            "size_ratio_vs_fp32": q["size_ratio"],
            "max_abs_diff_vs_fp32": q["check"]["max_abs_diff"],
            "argmax_agreement_vs_fp32": q["check"].get("argmax_agreement"),
        }
    return {
        "format": "lmdistill-export",
        "source": str(model_dir.resolve()),
        "kind": fp32["kind"],
        "architecture": fp32["architecture"],
        "formats": formats,
        "versions": versions(),
    }
