"""Sentence encoders: a transformers encoder + pooling (+ Dense layers) (+ L2 normalisation), read from and
written to the sentence-transformers folder format without that library (``modules.json``,
``1_Pooling/config.json``, ``2_Dense/``, ``sentence_bert_config.json``); a saved folder is also an ordinary
transformers folder (``AutoModel.from_pretrained``)."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lmdistill.errors import ModelError

POOLINGS = ("mean", "cls")
_ST = "sentence_transformers.models."
_IDENTITY = "torch.nn.modules.linear.Identity"
_ACTIVATIONS = {_IDENTITY: nn.Identity, "torch.nn.modules.activation.Tanh": nn.Tanh}
_POOLING_KEYS = (
    ("pooling_mode_cls_token", "cls"),
    ("pooling_mode_mean_tokens", "mean"),
    ("pooling_mode_max_tokens", "max"),
    ("pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len_tokens"),
    ("pooling_mode_weightedmean_tokens", "weightedmean"),
    ("pooling_mode_lasttoken", "lasttoken"),
)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Sentence embedding from token states: ``(B, T, H), (B, T) -> (B, H)``.

    mean: the mean over real tokens (count clamped at 1e-9, as sentence-transformers); cls: the first token.
    """
    if mode == "cls":
        return hidden[:, 0]
    m = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)


# ------------------------------------------------------------------------------------------------ the encoder


class DenseLayer(nn.Module):
    """sentence-transformers' ``Dense`` module: ``activation(linear(x))`` on the sentence embedding."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, activation: str = _IDENTITY):
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ModelError(
                f"Dense activation '{activation}' is not supported (known: {', '.join(_ACTIVATIONS)})"
            )
        self.linear = nn.Linear(in_features, out_features, bias=bias)
        self.activation_name = activation
        self.activation = _ACTIVATIONS[activation]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.linear(x.to(self.linear.weight.dtype)))

    @classmethod
    def load(cls, folder: Path) -> DenseLayer:
        cfg = json.loads((folder / "config.json").read_text())
        layer = cls(
            cfg["in_features"],
            cfg["out_features"],
            cfg.get("bias", True),
            cfg.get("activation_function", _IDENTITY),
        )
        if (folder / "model.safetensors").is_file():
            from safetensors.torch import load_file

            state = load_file(str(folder / "model.safetensors"))
        elif (folder / "pytorch_model.bin").is_file():
            state = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
        else:
            raise ModelError(
                f"'{folder}' holds no model.safetensors or pytorch_model.bin for its Dense layer"
            )
        layer.load_state_dict(state)
        return layer


def _dense_spec(layer: nn.Module) -> tuple[nn.Linear, str]:
    """The linear map and activation name of a Dense layer or a (linear, identity) Projection."""
    return layer.linear, getattr(layer, "activation_name", _IDENTITY)


@dataclass
class SentenceOutput:
    """The student's output in training: pooled (and projected) embeddings, before normalisation."""

    embedding: torch.Tensor


def read_sentence_format(folder: Path, key: str = "model") -> dict | None:
    """The sentence-transformers modules of a folder (None when it has no ``modules.json``).

    Returns ``{"transformer": subfolder, "pooling": mean|cls|None, "dense": [subfolders], "normalize": bool,
    "max_seq_length": int | None}``. Pooling modes other than mean and CLS, and other module types, are
    refused with a :class:`ModelError` naming them.
    """
    folder = Path(folder)
    if not (folder / "modules.json").is_file():
        return None
    try:
        modules = json.loads((folder / "modules.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelError(f"{key}: '{folder / 'modules.json'}' is not readable JSON ({e})") from None
    fmt = {"transformer": "", "pooling": None, "dense": [], "normalize": False, "max_seq_length": None}
    for m in sorted(modules, key=lambda m: int(m.get("idx", 0))):
        kind, path = str(m.get("type", "")).rsplit(".", 1)[-1], m.get("path", "")
        if kind == "Transformer":
            fmt["transformer"] = path
        elif kind == "Pooling":
            fmt["pooling"] = pooling_mode(folder / path / "config.json", key)
        elif kind == "Dense":
            fmt["dense"].append(path)
        elif kind == "Normalize":
            fmt["normalize"] = True
        else:
            raise ModelError(
                f"{key}: sentence-transformers module '{m.get('type')}' in '{folder}' is not supported "
                "(lmdistill reads Transformer, Pooling, Dense and Normalize)"
            )
    for where in (folder / fmt["transformer"], folder):
        sbc = where / "sentence_bert_config.json"
        if sbc.is_file():
            fmt["max_seq_length"] = json.loads(sbc.read_text()).get("max_seq_length")
            break
    return fmt


def pooling_mode(config_path: Path, key: str = "model") -> str:
    """mean or cls from a sentence-transformers ``1_Pooling/config.json``."""
    try:
        cfg = json.loads(Path(config_path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelError(f"{key}: cannot read the pooling config '{config_path}' ({e})") from None
    modes = [name for k, name in _POOLING_KEYS if cfg.get(k)]
    if len(modes) != 1 or modes[0] not in POOLINGS:
        raise ModelError(
            f"{key}: pooling '{'+'.join(modes) or 'none'}' in '{config_path}' is not supported "
            f"(lmdistill pools with {' or '.join(POOLINGS)})"
        )
    return modes[0]


class SentenceEncoder(nn.Module):
    """A transformers encoder + pooling (+ Dense layers) (+ L2 normalisation): a sentence-transformers model
    without the library. ``forward`` returns :class:`SentenceOutput` (pre-normalisation, for losses);
    :meth:`encode` returns final embeddings."""

    def __init__(
        self,
        model: nn.Module,
        pooling: str = "mean",
        normalize: bool = False,
        dense: list[nn.Module] | tuple = (),
        max_seq_length: int | None = None,
    ):
        super().__init__()
        if pooling not in POOLINGS:
            raise ModelError(f"embedding.pooling must be one of {', '.join(POOLINGS)}, got '{pooling}'")
        self.model = model
        self.pooling = pooling
        self.normalize = normalize
        self.dense = nn.ModuleList(list(dense))
        self.max_seq_length = max_seq_length
        self.own_pooling: str | None = None  # the pooling its folder names (set by load)

    @property
    def config(self):
        return self.model.config

    @property
    def width(self) -> int:
        """The width of the sentence embedding."""
        return (
            _dense_spec(self.dense[-1])[0].out_features if len(self.dense) else self.model.config.hidden_size
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids=None,
        output_hidden_states=None,
    ) -> SentenceOutput:
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        e = pool(self.model(**inputs).last_hidden_state, attention_mask, self.pooling)  # (B, H)
        for layer in self.dense:
            e = layer(e)
        return SentenceOutput(e)

    @torch.no_grad()
    def encode(
        self,
        texts: list[str],
        tokenizer,
        *,
        batch_size: int = 64,
        max_length: int = 128,
        normalize: bool | None = None,
    ) -> torch.Tensor:
        """Embeddings ``(N, D)`` float32 on the CPU, in the order of ``texts`` (batched longest first).

        ``normalize`` (default: the encoder's own setting) L2-normalises them.
        """
        normalize = self.normalize if normalize is None else normalize
        device = next(self.parameters()).device
        was = self.training
        self.eval()
        order = np.argsort([-len(t) for t in texts], kind="stable")
        out = torch.empty(len(texts), self.width)
        for s in range(0, len(texts), batch_size):
            idx = order[s : s + batch_size]
            enc = tokenizer(
                [texts[i] for i in idx],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            )
            keep = {
                k: v.to(device)
                for k, v in enc.items()
                if k in ("input_ids", "attention_mask", "token_type_ids")
            }
            e = self(**keep).embedding.float()
            out[torch.as_tensor(idx)] = (F.normalize(e, dim=-1) if normalize else e).cpu()
        self.train(was)
        return out

    @classmethod
    def load(
        cls,
        folder,
        key: str = "model",
        pooling: str | None = None,
        normalize: bool | None = None,
    ):
        """``(encoder, tokenizer)`` from a sentence-transformers folder or a plain transformers folder.

        ``folder``: a path or a :class:`~lmdistill.config.ModelConfig` (its tokenizer, revision and remote-code
        settings honoured). The folder's own pooling / Normalize apply unless ``pooling`` / ``normalize`` are
        given; a plain folder pools with ``pooling`` (default mean) and does not normalise.
        """
        from transformers import AutoModel

        from lmdistill.config.schema import ModelConfig
        from lmdistill.models.load import (
            ENCODERS,
            HEADS,
            check_tokenizer_files,
            load_config_of,
            load_tokenizer,
            load_weights,
        )

        spec = folder if isinstance(folder, ModelConfig) else ModelConfig(name_or_path=str(folder))
        folder = Path(spec.name_or_path).expanduser()
        fmt = read_sentence_format(folder, key) if folder.is_dir() else None
        root = folder / fmt["transformer"] if fmt else folder
        inner = ModelConfig(str(root), spec.tokenizer, spec.revision, spec.trust_remote_code)
        config = load_config_of(str(root), key, spec.revision, spec.trust_remote_code)
        if config.model_type not in ENCODERS:
            raise ModelError(
                f"{key}: model type '{config.model_type}' is not an encoder lmdistill supports for "
                f"sentence embeddings (supported: {', '.join(ENCODERS)})"
            )
        section = key.removesuffix(".name_or_path")
        check_tokenizer_files(inner, section)
        model = load_weights(AutoModel, inner, section, allow_missing=("pooler.",), allow_unexpected=HEADS)
        dense = [DenseLayer.load(folder / p) for p in fmt["dense"]] if fmt else []
        own_pool = fmt["pooling"] if fmt else None
        enc = cls(
            model,
            pooling or own_pool or "mean",
            (fmt["normalize"] if fmt else False) if normalize is None else normalize,
            dense,
            fmt["max_seq_length"] if fmt else None,
        )
        enc.own_pooling = own_pool
        tok_key = f"{section}.tokenizer" if key.endswith(".name_or_path") else key
        return enc, load_tokenizer(inner, tok_key)

    def save(
        self,
        folder: str | Path,
        tokenizer,
        *,
        max_seq_length: int | None = None,
        similarity_fn: str = "cosine",
    ) -> None:
        """Write a transformers folder that is also a sentence-transformers folder, atomically.

        Files: ``config.json`` + ``model.safetensors`` + tokenizer (the transformer, at the root, as
        sentence-transformers' own models), ``modules.json``, ``1_Pooling/config.json``,
        ``sentence_bert_config.json``, ``config_sentence_transformers.json`` and ``2_Dense/{config.json,
        model.safetensors}`` per Dense layer; a Normalize module has no folder.
        """
        from safetensors.torch import save_file

        folder = Path(folder)
        tmp, old = folder.with_name(folder.name + ".tmp"), folder.with_name(folder.name + ".old")
        for p in (tmp, old):
            shutil.rmtree(p, ignore_errors=True)
        self.model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        modules = [
            {"idx": 0, "name": "0", "path": "", "type": _ST + "Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": _ST + "Pooling"},
        ]
        (tmp / "1_Pooling").mkdir()
        hidden = self.model.config.hidden_size
        _write_json(
            tmp / "1_Pooling" / "config.json",
            {
                "word_embedding_dimension": hidden,
                "pooling_mode_cls_token": self.pooling == "cls",
                "pooling_mode_mean_tokens": self.pooling == "mean",
                "pooling_mode_max_tokens": False,
                "pooling_mode_mean_sqrt_len_tokens": False,
            },
        )
        for layer in self.dense:
            i = len(modules)
            linear, activation = _dense_spec(layer)
            sub = tmp / f"{i}_Dense"
            sub.mkdir()
            _write_json(
                sub / "config.json",
                {
                    "in_features": linear.in_features,
                    "out_features": linear.out_features,
                    "bias": linear.bias is not None,
                    "activation_function": activation,
                },
            )
            state = {
                f"linear.{k}": v.detach().float().cpu().contiguous() for k, v in linear.state_dict().items()
            }
            save_file(state, str(sub / "model.safetensors"))
            modules.append({"idx": i, "name": str(i), "path": sub.name, "type": _ST + "Dense"})
        if self.normalize:
            i = len(modules)
            modules.append({"idx": i, "name": str(i), "path": f"{i}_Normalize", "type": _ST + "Normalize"})
        _write_json(tmp / "modules.json", modules)
        _write_json(
            tmp / "sentence_bert_config.json",
            {"max_seq_length": max_seq_length or self.max_seq_length or 128, "do_lower_case": False},
        )
        _write_json(
            tmp / "config_sentence_transformers.json",
            {"prompts": {}, "default_prompt_name": None, "similarity_fn_name": similarity_fn},
        )
        if folder.exists():
            folder.rename(old)
        tmp.rename(folder)
        shutil.rmtree(old, ignore_errors=True)


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")
