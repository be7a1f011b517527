"""Export a saved transformers model folder to ONNX, and check the graph against PyTorch.

The graph takes the tokenizer's inputs (``input_ids``, ``attention_mask``, ``token_type_ids`` where the
model uses them), each (batch, sequence) int64 with both axes dynamic, and returns the outputs of its kind
(:data:`KINDS`). After export, PyTorch and ONNX Runtime run the same padded inputs at batch sizes and
lengths other than the traced ones; a max |difference| above ``atol`` is an :class:`ExportError`.

Exporter: ``torch.onnx.export(..., dynamo=False)`` (TorchScript tracing) by default. With torch 2.13 both
exporters give correct dynamic batch and sequence axes for BERT, RoBERTa, MPNet and Llama (max |diff|
<= 1e-6 in our tests), but the dynamo exporter (``exporter="dynamo"``: ``torch.export`` + onnxscript) takes
about 10x longer (8-19 s against 0.5-2 s for a 2-layer model on 2 CPU cores). Tracing records Python
branches on tensor values as constants (transformers skips the attention mask when it is all ones), so
the traced example has padded rows, and the check runs other shapes to catch a graph that did not
generalise. The TorchScript exporter is deprecated in torch >= 2.9: ``exporter="dynamo"`` is the way on.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmdistill.errors import ExportError
from lmdistill.export.files import atomic_folder, copy_side_files, versions, write_record
from lmdistill.export.fuse import FUSABLE, fuse_graph

# kind -> (transformers auto class, output names, one output row per token?)
KINDS: dict[str, tuple[str, tuple[str, ...], bool]] = {
    "sequence-classification": ("AutoModelForSequenceClassification", ("logits",), False),
    "token-classification": ("AutoModelForTokenClassification", ("logits",), True),
    "question-answering": ("AutoModelForQuestionAnswering", ("start_logits", "end_logits"), True),
    "masked-lm": ("AutoModelForMaskedLM", ("logits",), True),
    "causal-lm": ("AutoModelForCausalLM", ("logits",), True),
    "base": ("AutoModel", ("last_hidden_state",), True),
}
_SUFFIXES = (
    ("ForSequenceClassification", "sequence-classification"),
    ("ForTokenClassification", "token-classification"),
    ("ForQuestionAnswering", "question-answering"),
    ("ForMaskedLM", "masked-lm"),
    ("ForCausalLM", "causal-lm"),
    ("LMHeadModel", "causal-lm"),
)
INPUTS = ("input_ids", "attention_mask", "token_type_ids")  # the graph's input order
EXPORTERS = ("torchscript", "dynamo")
ATOL = 1e-4  # fp32 max |PyTorch - ONNX Runtime| allowed by the check
TRACE_SHAPE = (2, 8)  # (batch, sequence) of the traced example; the check uses other shapes


def _short(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return (lines[0] if lines else type(e).__name__)[:200]


def read_config(model_dir: Path) -> dict[str, Any]:
    """config.json of a model folder, or a one-line ExportError."""
    path = model_dir / "config.json"
    if not model_dir.is_dir() or not path.is_file():
        raise ExportError(
            f"{model_dir}: not a model folder (no config.json); give a folder saved with save_pretrained"
        )
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise ExportError(f"{path}: not readable JSON ({e})") from None


def detect_kind(config: dict[str, Any], where: str = "model") -> str:
    """The export kind from config.json ``architectures``: a head we know, or ``base`` for ``*Model``."""
    archs = config.get("architectures") or []
    if not archs:
        raise ExportError(
            f"{where}: config.json names no architectures; pass kind= one of {', '.join(KINDS)}"
        )
    for suffix, kind in _SUFFIXES:
        if archs[0].endswith(suffix):
            return kind
    if archs[0].endswith("Model"):
        return "base"
    raise ExportError(
        f"{where}: {archs[0]} is a head lmdistill export does not know; pass kind= one of "
        f"{', '.join(KINDS)} (base drops the head)"
    )


def load_for_export(model_dir: Path, kind: str, *, eager: bool = False) -> nn.Module:
    """The model of ``kind`` in fp32 eval mode, without a KV cache; ``eager``: transformers' eager attention
    (the pattern ONNX Runtime's fusion recognises, :mod:`lmdistill.export.fuse`)."""
    import transformers

    auto = getattr(transformers, KINDS[kind][0])
    extra = {"attn_implementation": "eager"} if eager else {}
    try:
        model = auto.from_pretrained(model_dir, dtype=torch.float32, **extra)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise ExportError(f"{model_dir}: cannot load as {KINDS[kind][0]} ({_short(e)})") from None
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = False
    return model.eval()


def input_names(model_dir: Path, model: nn.Module) -> list[str]:
    """The tokenizer's inputs that the model's forward takes, in :data:`INPUTS` order.

    Without a loadable tokenizer: ``input_ids`` and ``attention_mask``, plus ``token_type_ids`` when the
    config has more than one token type."""
    import inspect

    from transformers import AutoTokenizer

    takes = set(inspect.signature(model.forward).parameters)
    try:
        wanted = set(AutoTokenizer.from_pretrained(model_dir).model_input_names)
    except (OSError, ValueError, KeyError, TypeError):
        wanted = {"input_ids", "attention_mask"}
        if getattr(model.config, "type_vocab_size", 1) > 1:
            wanted.add("token_type_ids")
    names = [n for n in INPUTS if n in wanted and n in takes]
    if "input_ids" not in names:
        raise ExportError(
            f"{model_dir}: the model's forward takes no input_ids; only text models are exported"
        )
    return names


class _Graph(nn.Module):
    """The traced function: named inputs in, the kind's outputs out as a tuple (read by attribute)."""

    def __init__(self, model: nn.Module, outputs: tuple[str, ...]):
        super().__init__()
        self.model, self.outputs = model, outputs

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        out = self.model(**{k: v for k, v in kwargs.items() if v is not None}, return_dict=True)
        return tuple(getattr(out, name) for name in self.outputs)


def make_inputs(names: list[str], config, batch: int, length: int, seed: int) -> dict[str, torch.Tensor]:
    """Random (batch, length) int64 inputs; row i > 0 is right-padded by ``2i`` positions (at least one
    real token stays), so every batch of two or more rows has padding. Token types are 0, then 1 for the
    second half where the model has two types (a sentence pair)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, config.vocab_size, (batch, length), generator=gen)
    mask = torch.ones(batch, length, dtype=torch.long)
    for i in range(1, batch):
        mask[i, max(1, length - 2 * i) :] = 0
    types = torch.zeros(batch, length, dtype=torch.long)
    if (getattr(config, "type_vocab_size", 1) or 1) > 1:
        types[:, length // 2 :] = 1
    every = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    return {n: every[n] for n in names}


def real_positions(values, keep, per_token: bool):
    """``values`` at the positions where ``keep`` (the (B, T) attention mask) is true when they are per
    token ((B, T, ...)), else all of them. Works for torch tensors and numpy arrays alike."""
    if per_token and values.ndim >= 2 and tuple(values.shape[:2]) == tuple(keep.shape):
        return values[keep]
    return values


def _export(model: nn.Module, names: list[str], kind: str, path: Path, opset: int | None, exporter: str):
    """Trace ``model`` on a padded (2, 8) example into ``path`` with dynamic batch and sequence axes."""
    _, outputs, per_token = KINDS[kind]
    sample = make_inputs(names, model.config, *TRACE_SHAPE, seed=0)
    if exporter == "dynamo":
        batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
        shapes = {n: {0: batch, 1: seq} for n in names}
        kw = {"dynamo": True, "dynamic_shapes": shapes, "external_data": False, "verbose": False}
    else:
        axes = {n: {0: "batch", 1: "sequence"} for n in names}
        axes |= {o: ({0: "batch", 1: "sequence"} if per_token else {0: "batch"}) for o in outputs}
        kw = {"dynamo": False, "dynamic_axes": axes}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript deprecation and tracer warnings: the check decides
        graph, out_names = _Graph(model, outputs), list(outputs)
        torch.onnx.export(
            graph,
            (),
            str(path),
            kwargs=sample,
            input_names=names,
            output_names=out_names,
            opset_version=opset,
            **kw,
        )


def max_difference(model: nn.Module, session, names: list[str], kind: str, shapes) -> float:
    """Max |PyTorch - ONNX Runtime| over every output at each (batch, length) in ``shapes``; per-token
    outputs are compared where ``attention_mask`` is 1 (padded positions are not defined)."""
    _, outputs, per_token = KINDS[kind]
    worst = 0.0
    model.eval()  # torch.onnx.export may leave the module in training mode
    for i, (batch, length) in enumerate(shapes):
        x = make_inputs(names, model.config, batch, length, seed=100 + i)
        with torch.inference_mode():
            ref = model(**x, return_dict=True)
        got = session.run(list(outputs), {k: v.numpy() for k, v in x.items()})
        keep = x.get("attention_mask", torch.ones(batch, length)).bool()
        for name, value in zip(outputs, got):
            diff = (torch.from_numpy(value).float() - getattr(ref, name).float()).abs()
            diff = real_positions(diff, keep, per_token)
            worst = max(worst, float("inf") if diff.isnan().any() else float(diff.max()))
    return worst


def check_shapes(config, max_length: int | None) -> list[tuple[int, int]]:
    """(batch, length) pairs for the check: none equal to the traced shape; the last is ``max_length``."""
    positions = getattr(config, "max_position_embeddings", None) or 512
    longest = max_length or min(32, positions // 2)
    if longest < 3 or longest > positions:
        raise ExportError(f"max_length={max_length}: must be between 3 and the model's {positions} positions")
    return [(1, min(5, longest)), (3, max(3, longest // 2 + 1)), (4, longest)]


def export_onnx(
    model_dir: str | Path,
    out_dir: str | Path,
    *,
    kind: str = "auto",
    opset: int | None = None,
    max_length: int | None = None,
    exporter: str = "torchscript",
    atol: float = ATOL,
    overwrite: bool = False,
    fuse: bool = False,
) -> Path:
    """Export ``model_dir`` to ``out_dir/model.onnx`` (fp32), copy config and tokenizer files, check the
    graph against PyTorch (max |diff| <= ``atol``) and record it all in ``out_dir/lmdistill-export.json``.

    ``kind``: ``auto`` (from config.json architectures) or one of :data:`KINDS`. ``max_length``: the
    longest sequence the check runs (default min(32, positions / 2)); the graph takes any length.
    ``fuse``: for BERT and RoBERTa, ONNX Runtime's transformer fusion (:mod:`lmdistill.export.fuse`), kept
    when every attention layer fused and the fused graph passes the check; the record's ``fusion`` says
    what was done and why. Returns ``out_dir``. Nothing is left in ``out_dir`` when any step fails.
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    config = read_config(model_dir)
    kind = detect_kind(config, str(model_dir)) if kind == "auto" else kind
    if kind not in KINDS or exporter not in EXPORTERS:
        raise ExportError(
            f"kind={kind!r}, exporter={exporter!r}: kind must be auto or one of {', '.join(KINDS)}; "
            f"exporter one of {', '.join(EXPORTERS)}"
        )
    fusing = fuse and config.get("model_type") in FUSABLE
    model = load_for_export(model_dir, kind, eager=fusing)
    names, shapes = input_names(model_dir, model), check_shapes(model.config, max_length)
    arch = (config.get("architectures") or [type(model).__name__])[0]
    with atomic_folder(out_dir, overwrite) as tmp:
        try:
            _export(model, names, kind, tmp / "model.onnx", opset, exporter)
        except Exception as e:  # UnsupportedOperatorError, TorchExportError, RuntimeError, ...
            raise ExportError(
                f"{model_dir}: {arch} cannot be exported to ONNX by the {exporter} exporter ({_short(e)})"
            ) from None
        fusion, diff = (
            _fuse(model, tmp, names, kind, shapes, atol) if fusing else (_not_fused(fuse, config), None)
        )
        if diff is None:  # the plain graph's check (a kept fused graph was checked by _fuse)
            diff = max_difference(model, _session(tmp / "model.onnx"), names, kind, shapes)
        if not diff <= atol:  # also catches NaN
            raise ExportError(
                f"{model_dir}: ONNX output differs from PyTorch by max |diff| {diff:.3g} > {atol:g} "
                f"({kind}, {exporter} exporter)"
            )
        copied = copy_side_files(model_dir, tmp)
        record = _record(model_dir, kind, arch, names, tmp, exporter, shapes, diff, atol)
        write_record(tmp, record | {"fusion": fusion, "copied": copied})
    return out_dir


def _fuse(
    model: nn.Module, tmp: Path, names, kind: str, shapes, atol: float
) -> tuple[dict[str, Any], float | None]:
    """Replace ``tmp/model.onnx`` by its fused graph when the fusion is complete and matches PyTorch.
    Returns the record's ``fusion`` entry and the kept fused graph's max |diff| (None: the plain graph is kept
    and still to be checked)."""
    fused = tmp / "fused.onnx"
    try:
        fusion = fuse_graph(tmp / "model.onnx", fused, model.config)
        if fusion["applied"]:
            diff = max_difference(model, _session(fused), names, kind, shapes)
            if diff <= atol:
                fused.replace(tmp / "model.onnx")
                return fusion, diff
            # also NaN: keep the plain graph
            fusion |= {"applied": False, "reason": f"the fused graph differs from PyTorch by {diff:.3g}"}
    finally:
        fused.unlink(missing_ok=True)
    return fusion, None


def _not_fused(asked: bool, config: dict[str, Any]) -> dict[str, Any]:
    if not asked:
        return {"applied": False, "reason": "not asked (fuse=False)"}
    kinds = ", ".join(FUSABLE)
    return {"applied": False, "reason": f"model_type {config.get('model_type')!r}: fused for {kinds} only"}


def _session(path: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def graph_opset(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _record(model_dir, kind, arch, names, folder, exporter, shapes, diff, atol) -> dict[str, Any]:
    _, outputs, per_token = KINDS[kind]
    token_axes = {0: "batch", 1: "sequence"}
    return {
        "format": "onnx",
        "precision": "fp32",
        "source": str(model_dir.resolve()),
        "kind": kind,
        "architecture": arch,
        "inputs": {n: {"dtype": "int64", "axes": token_axes} for n in names},
        "outputs": {
            o: {"dtype": "float32", "axes": token_axes if per_token else {0: "batch"}} for o in outputs
        },
        "weights": "model.onnx",
        "weights_bytes": (folder / "model.onnx").stat().st_size,
        "opset": graph_opset(folder / "model.onnx"),
        "exporter": f"torch.onnx.export(dynamo={exporter == 'dynamo'})",
        "versions": versions(),
        "check": {
            "against": "pytorch fp32",
            "shapes": [list(s) for s in shapes],
            "max_abs_diff": diff,
            "atol": atol,
        },
    }
