"""The one export entry the CLI calls: ``lmdistill export MODEL [--merge] [--onnx [--int8]] --output DIR``.

Layout of ``DIR`` (written into a temporary sibling and renamed at the end)::

    DIR/lmdistill-export.json   summary: source, kind, each format's folder, size and check
    DIR/merged/                 a LoRA student merged into its base (W0 + alpha/r B A): a plain transformers
                                folder (only with merge=True; the ONNX graphs are then made from it)
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
from lmdistill.models.lora import ADAPTER, merge_and_save

FOLDERS = {"onnx": "onnx", "int8": "onnx-int8", "merged": "merged"}


def export_model(
    model_dir: str | Path,
    out_dir: str | Path,
    *,
    onnx: bool = True,
    int8: bool = False,
    merge: bool = False,
    overwrite: bool = False,
    kind: str = "auto",
    max_length: int | None = None,
    exporter: str = "torchscript",
    fuse: bool = False,
) -> dict[str, Any]:
    """Export ``model_dir`` to ``out_dir/onnx`` (fp32, checked against PyTorch) and, with ``int8``, to
    ``out_dir/onnx-int8`` (ONNX Runtime dynamic int8, compared with fp32). ``out_dir`` must be new, empty,
    or an earlier export replaced with ``overwrite=True``; on any error nothing is left there. ``merge``: the
    LoRA adapter folder ``model_dir`` merged into its base as ``out_dir/merged`` (PEFT's merge_and_unload),
    which the ONNX graphs are then made from. ``fuse``: ONNX Runtime's transformer fusion of BERT and RoBERTa
    graphs (:mod:`lmdistill.export.fuse`); each format's ``fused`` says whether it was applied.

    Returns the summary written to ``out_dir/lmdistill-export.json`` plus ``output`` (the folder).
    """
    model_dir = Path(model_dir)
    _check_request(model_dir, onnx, int8, merge)
    if int8:
        onnx_quantizer()  # fail before any work when the quantizer is missing
    out_dir = Path(out_dir)
    with atomic_folder(out_dir, overwrite) as tmp:
        source = merge_and_save(model_dir, tmp / FOLDERS["merged"]) if merge else model_dir
        if onnx:
            export_onnx(
                source, tmp / FOLDERS["onnx"], kind=kind, max_length=max_length, exporter=exporter, fuse=fuse
            )
        if int8:
            quantize_int8(tmp / FOLDERS["onnx"], tmp / FOLDERS["int8"])
        summary = _summary(model_dir, tmp, onnx, int8, merge, fuse)
        write_record(tmp, summary)
    return summary | {"output": str(out_dir)}


def _check_request(model_dir: Path, onnx: bool, int8: bool, merge: bool) -> None:
    """One line for a request that cannot be met, before anything is written."""
    lora = (model_dir / ADAPTER).is_file()
    if merge and not lora:
        raise ExportError(
            f"export --merge: '{model_dir}' is not a LoRA adapter folder (no {ADAPTER}); export it without --merge"
        )
    if lora and not merge:
        raise ExportError(
            f"export: '{model_dir}' is a LoRA adapter folder; add --merge to write the merged model "
            "(with --onnx, its ONNX graph)"
        )
    if not onnx and not merge:
        raise ExportError(
            "export: nothing to write without onnx=True (--onnx) or merge=True (--merge); torch int8 is applied "
            "at load time (lmdistill.export.torch_dynamic_int8), not saved"
        )
    if int8 and not onnx:
        raise ExportError("export: --int8 quantizes the ONNX graph; add --onnx")


def _summary(model_dir: Path, tmp: Path, onnx: bool, int8: bool, merge: bool, fuse: bool) -> dict[str, Any]:
    formats: dict[str, dict[str, Any]] = {}
    if merge:
        merged = tmp / FOLDERS["merged"]
        formats["merged"] = {
            "folder": FOLDERS["merged"],
            "precision": "fp32",
            "weights_bytes": sum(p.stat().st_size for p in merged.glob("*.safetensors")),
        }
    fp32 = read_record(tmp / FOLDERS["onnx"]) if onnx else {}
    if onnx:
        formats["onnx"] = {
            "folder": FOLDERS["onnx"],
            "precision": "fp32",
            "weights_bytes": fp32["weights_bytes"],
            "max_abs_diff_vs_pytorch": fp32["check"]["max_abs_diff"],
            "fused": fp32["fusion"]["applied"],
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
            "fused": fp32["fusion"]["applied"],
        }
    return {
        "format": "lmdistill-export",
        "source": str(model_dir.resolve()),
        "kind": fp32.get("kind"),
        "architecture": fp32.get("architecture") or _architecture(tmp / FOLDERS["merged"]),
        "formats": formats,
        "fuse": fuse,
        "versions": versions(),
    }


def _architecture(folder: Path) -> str | None:
    import json

    config = folder / "config.json"
    archs = json.loads(config.read_text()).get("architectures") if config.is_file() else None
    return archs[0] if archs else None
