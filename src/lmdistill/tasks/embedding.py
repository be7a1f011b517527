"""Sentence-embedding distillation for search (``task: embedding``; docs/embedding.md).

Two modes (``embedding.mode``):

``bi`` -- the student learns the teacher's sentence embeddings (Reimers & Gurevych 2020, "Making Monolingual
Sentence Embeddings Multilingual using Knowledge Distillation", sec. 2: the student ``M_hat`` is trained so
that ``M_hat(s) ~ M(s)`` with the mean squared error over a batch,
``1/|B| sum_j ||M(s_j) - M_hat(s_j)||^2``). Here, per text: ``embedding_mse = mean_k (e_S - e_T)_k^2`` (the
mean over the width, as sentence-transformers' ``MSELoss``), or ``embedding_cosine = 1 - cos(e_S, e_T)``
(``embedding.loss: cosine``). The embeddings are the pooled token states, pooled as the teacher pools
(mean or CLS, read from the teacher's sentence-transformers ``1_Pooling/config.json``; else
``embedding.pooling``), through the teacher's own Dense layers if it has any, BEFORE any final L2
normalisation (a Normalize module is a fixed map: matching before it matches after). When the widths differ,
a learned :class:`lmdistill.models.projection.Projection` maps the student's pooled embedding to the
teacher's width and is saved as the student's ``2_Dense`` module, so the saved student embeds into the
teacher's space. The teacher is run ONCE over the training texts (its embeddings are targets); training
then costs only the student.

``cross`` -- margin-MSE (Hofstaetter et al. 2020, "Improving Efficient Neural Ranking Models with
Cross-Architecture Knowledge Distillation", sec. 3, eq. 1): for a query ``q``, a relevant passage ``p+`` and
a non-relevant ``p-``, ``L = MSE(M_s(q, p+) - M_s(q, p-), M_t(q, p+) - M_t(q, p-))``: the bi-encoder student
(score = dot product of the pooled embeddings, or cosine with ``embedding.similarity``) learns the MARGIN of
the cross-encoder teacher's relevance scores (its single logit; or ``logit_1 - logit_0`` for a two-class
head), not the scores, whose scale a dot product cannot reach. The teacher's margins are computed once.

Saved students are ordinary transformers folders (``AutoModel.from_pretrained``) that are ALSO
sentence-transformers folders (``modules.json``, ``1_Pooling/config.json``, ``sentence_bert_config.json``,
``2_Dense/`` when projected, a Normalize module when normalised), loadable with
``SentenceTransformer(path)`` when that library is installed; lmdistill never needs it
(:class:`SentenceEncoder` reads and writes the format itself).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from lmdistill.config import Config
from lmdistill.errors import DataError, ModelError
from lmdistill.losses.reduce import masked_mean
from lmdistill.models.projection import Projection
from lmdistill.objective import Objective

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


# ------------------------------------------------------------------------------------------------ losses


def embedding_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Per-text mean squared error of sentence embeddings: ``(B, D) x2 -> (B,)``, ``mean_k (s_k - t_k)^2``.

    Reimers & Gurevych 2020, sec. 2 (``||M(s) - M_hat(s)||^2``, averaged over the width as
    sentence-transformers' ``MSELoss`` does). Reduce with ``masked_mean``.
    """
    if student.shape != teacher.shape:
        raise ModelError(
            f"embedding_mse: student {tuple(student.shape)} != teacher {tuple(teacher.shape)}; "
            "project the student to the teacher's width (embedding.projection)"
        )
    return (student.float() - teacher.float()).pow(2).mean(-1)


def embedding_cosine(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Per-text cosine distance ``1 - cos(s, t)``: ``(B, D) x2 -> (B,)``, in ``[0, 2]``; a zero vector gives 1."""
    if student.shape != teacher.shape:
        raise ModelError(
            f"embedding_cosine: student {tuple(student.shape)} != teacher {tuple(teacher.shape)}"
        )
    return 1.0 - F.cosine_similarity(student.float(), teacher.float(), dim=-1, eps=1e-8)


def similarity(a: torch.Tensor, b: torch.Tensor, kind: str = "dot") -> torch.Tensor:
    """Row-wise score of two embedding batches: ``(B, D) x2 -> (B,)``, dot product or cosine."""
    if kind == "cosine":
        return F.cosine_similarity(a.float(), b.float(), dim=-1, eps=1e-8)
    return (a.float() * b.float()).sum(-1)


def margin_mse(
    query: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor,
    teacher_margin: torch.Tensor,
    kind: str = "dot",
) -> torch.Tensor:
    """Margin-MSE per triple (Hofstaetter et al. 2020, eq. 1): ``(B, D) x3, (B,) -> (B,)``.

    ``(s(q, p+) - s(q, p-) - (M_t(q, p+) - M_t(q, p-)))^2`` with the student score ``s`` a dot product (the
    paper's BERT_DOT) or cosine; ``teacher_margin`` is the cross-encoder's score difference.
    """
    student_margin = similarity(query, positive, kind) - similarity(query, negative, kind)
    return (student_margin - teacher_margin.float()).pow(2)


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
        cls, folder: str | Path, key: str = "model", pooling: str | None = None, normalize: bool | None = None
    ):
        """``(encoder, tokenizer)`` from a sentence-transformers folder or a plain transformers folder.

        The folder's own pooling / Normalize apply unless ``pooling`` / ``normalize`` are given; a plain
        folder pools with ``pooling`` (default mean) and does not normalise.
        """
        from transformers import AutoModel

        from lmdistill.models.load import ENCODERS, load_config_of, load_tokenizer

        folder = Path(folder)
        fmt = read_sentence_format(folder, key) if folder.is_dir() else None
        root = folder / fmt["transformer"] if fmt else folder
        config = load_config_of(str(root), key)
        if config.model_type not in ENCODERS:
            raise ModelError(
                f"{key}: model type '{config.model_type}' is not an encoder lmdistill supports for "
                f"sentence embeddings (supported: {', '.join(ENCODERS)})"
            )
        try:
            model = AutoModel.from_pretrained(str(root))
        except (OSError, ValueError, RuntimeError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:240]
            raise ModelError(f"{key}: cannot load weights from '{root}' ({first})") from None
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
        return enc, load_tokenizer(str(root), key)

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


# ------------------------------------------------------------------------------------------------ objective


TERM = {"mse": "embedding_mse", "cosine": "embedding_cosine", "margin_mse": "margin_mse"}


class EmbeddingObjective(Objective):
    """One term: ``embedding_mse`` / ``embedding_cosine`` against ``batch["target"]`` (the teacher's
    embeddings), or ``margin_mse`` against ``batch["teacher_margin"]`` with the batch's embeddings stacked as
    ``[queries; positives; negatives]``. The teacher's signal is precomputed: no live teacher."""

    def __init__(self, loss: str = "mse", similarity_fn: str = "dot"):
        super().__init__({TERM[loss]: 1.0})
        self.loss = loss
        self.similarity_fn = similarity_fn

    @property
    def needs_teacher(self) -> bool:
        return False

    @property
    def needs_hidden(self) -> bool:
        return False

    def forward(self, out, signal, batch: dict, feats: dict | None = None) -> dict:
        e = out.embedding
        if self.loss == "margin_mse":
            q, p, n = e.chunk(3)  # (B, D) each
            return {
                "margin_mse": masked_mean(margin_mse(q, p, n, batch["teacher_margin"], self.similarity_fn))
            }
        fn = embedding_mse if self.loss == "mse" else embedding_cosine
        return {TERM[self.loss]: masked_mean(fn(e, batch["target"]))}


# ------------------------------------------------------------------------------------------------ data


class EmbeddingDataset(Dataset):
    """Student token ids of each text and a target: the teacher's embedding ``(D,)`` or margin ``()``.

    ``inputs``: ``{"input_ids": [[...]], ...}`` for single texts, or ``{"query": {...}, "positive": {...},
    "negative": {...}}`` for triples.
    """

    def __init__(self, inputs: dict, targets: torch.Tensor, target_key: str):
        self.inputs = inputs
        self.targets = targets
        self.target_key = target_key
        self.triples = "query" in inputs

    def __len__(self) -> int:
        return len(self.targets)

    def _item(self, block: dict, i: int) -> dict:
        return {k: v[i] for k, v in block.items()}

    def __getitem__(self, i: int) -> dict:
        if self.triples:
            student = {part: self._item(self.inputs[part], i) for part in ("query", "positive", "negative")}
        else:
            student = self._item(self.inputs, i)
        return {"index": i, "student": student, self.target_key: self.targets[i]}

    def lengths(self) -> list[int]:
        if self.triples:
            return [
                max(len(self.inputs[p]["input_ids"][i]) for p in ("query", "positive", "negative"))
                for i in range(len(self))
            ]
        return [len(x) for x in self.inputs["input_ids"]]


class EmbeddingCollator:
    """Pads texts (triples: queries, then positives, then negatives, in ONE block) and stacks the targets."""

    def __init__(self, pad_token_id: int, target_key: str, multiple: int = 8):
        self.pad_token_id = pad_token_id
        self.target_key = target_key
        self.multiple = multiple

    def __call__(self, items: list[dict]) -> dict:
        from lmdistill.data.text import pad_block

        if "query" in items[0]["student"]:
            texts = [it["student"][p] for p in ("query", "positive", "negative") for it in items]
        else:
            texts = [it["student"] for it in items]
        return {
            "index": torch.tensor([it["index"] for it in items], dtype=torch.long),
            "student": pad_block(texts, self.pad_token_id, self.multiple),
            self.target_key: torch.stack([it[self.target_key] for it in items]),
        }


def tokenize(tokenizer, texts: list[str], max_length: int) -> dict[str, list[list[int]]]:
    enc = tokenizer(texts, truncation=True, max_length=max_length, padding=False)
    return {k: list(enc[k]) for k in ("input_ids", "token_type_ids") if k in enc}


@torch.no_grad()
def cross_scores(
    model: nn.Module,
    tokenizer,
    queries: list[str],
    passages: list[str],
    *,
    batch_size: int = 64,
    max_length: int = 256,
) -> torch.Tensor:
    """A cross-encoder's relevance score per (query, passage): its logit (one label) or
    ``logit_1 - logit_0`` (two labels). ``(N,)`` float32 on the CPU."""
    n_labels = model.config.num_labels
    if n_labels > 2:
        raise ModelError(
            f"teacher.name_or_path: a cross-encoder scores relevance with 1 or 2 labels, this one "
            f"has {n_labels}"
        )
    device = next(model.parameters()).device
    model.eval()
    out = []
    for s in range(0, len(queries), batch_size):
        enc = tokenizer(
            queries[s : s + batch_size],
            passages[s : s + batch_size],
            truncation=True,
            max_length=max_length,
            padding=True,
            return_tensors="pt",
        )
        logits = model(**{k: v.to(device) for k, v in enc.items()}).logits.float()
        out.append((logits[:, 0] if n_labels == 1 else logits[:, 1] - logits[:, 0]).cpu())
    return torch.cat(out) if out else torch.zeros(0)


def triples(
    frame, cfg: Config, split: str, limit: int | None, seed: int
) -> tuple[list[str], list[str], list[str]]:
    """(queries, positives, negatives) of one split; without ``embedding.negative_column`` the negative of a
    row is the positive of another row (a different text), drawn with ``seed``."""
    e = cfg.embedding
    frame = frame.iloc[:limit] if limit is not None else frame
    cols = [(e.query_column, "query_column"), (e.positive_column, "positive_column")]
    if e.negative_column:
        cols.append((e.negative_column, "negative_column"))
    for col, key in cols:
        if col not in frame.columns:
            raise DataError(
                f"embedding.{key}: column '{col}' not found in the {split} data "
                f"(columns: {', '.join(map(str, frame.columns[:20]))}); set embedding.{key}"
            )
    q = [str(x) for x in frame[e.query_column]]
    p = [str(x) for x in frame[e.positive_column]]
    if e.negative_column:
        return q, p, [str(x) for x in frame[e.negative_column]]
    if len(set(p)) < 2:
        raise DataError(
            f"data.{split}: random negatives need at least two different positives; "
            "set embedding.negative_column"
        )
    rng = np.random.default_rng(seed)
    negatives = []
    for i in range(len(p)):
        j = int(rng.integers(len(p)))
        while p[j] == p[i]:
            j = int(rng.integers(len(p)))
        negatives.append(p[j])
    return q, p, negatives


# ------------------------------------------------------------------------------------------------ evaluation


def bi_metrics(
    encoder: SentenceEncoder,
    tokenizer,
    texts: list[str],
    targets: torch.Tensor,
    loss: str,
    batch_size: int,
    max_length: int,
) -> dict[str, float]:
    """``loss``, ``teacher_cosine`` (mean cosine with the teacher's embedding) and ``embedding_mse``."""
    s = encoder.encode(texts, tokenizer, batch_size=batch_size, max_length=max_length, normalize=False)
    mse = float(embedding_mse(s, targets).mean())
    cos = float(F.cosine_similarity(s, targets.float(), dim=-1).mean())
    return {"loss": mse if loss == "mse" else 1.0 - cos, "teacher_cosine": cos, "embedding_mse": mse}


def cross_metrics(
    encoder: SentenceEncoder,
    tokenizer,
    q: list[str],
    p: list[str],
    n: list[str],
    margins: torch.Tensor,
    kind: str,
    batch_size: int,
    max_length: int,
) -> dict[str, float]:
    """``loss`` = ``margin_mse``, and ``pairwise_accuracy`` (share of triples the student orders right)."""
    enc = [
        encoder.encode(x, tokenizer, batch_size=batch_size, max_length=max_length, normalize=False)
        for x in (q, p, n)
    ]
    m = similarity(enc[0], enc[1], kind) - similarity(enc[0], enc[2], kind)
    mse = float((m - margins).pow(2).mean())
    return {"loss": mse, "margin_mse": mse, "pairwise_accuracy": float((m > 0).float().mean())}


def retrieval_set(cfg: Config, frames: dict):
    """The :class:`RetrievalSet` named by ``embedding.retrieval`` (its test split when it is ``data.dataset``)."""
    from lmdistill.data.builtin import BUILTIN_DATASETS, load_builtin
    from lmdistill.data.tables import read_table
    from lmdistill.tasks.retrieval import make_retrieval_set

    e = cfg.embedding
    if e.retrieval == cfg.data.dataset:
        if "test" not in frames:
            raise DataError(
                "embedding.retrieval: it names data.dataset, so only the test split is searched (the rest "
                "trains the student), and there is none: set data.test_size above 0"
            )
        frame = frames["test"]
    elif e.retrieval in BUILTIN_DATASETS:
        frame = load_builtin(e.retrieval)
    else:
        frame = read_table(e.retrieval, "embedding.retrieval")
    return make_retrieval_set(
        frame,
        e.retrieval_query_column,
        e.retrieval_document_column,
        max_queries=e.retrieval_max_queries,
        seed=cfg.seed,
        name=str(e.retrieval),
    )


# ------------------------------------------------------------------------------------------------ the run


def _say(message: str) -> None:
    """Progress of the steps before and after training (the engine shows its own bar)."""
    import sys

    print(message, file=sys.stderr, flush=True)


def _device(cfg: Config) -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() and not cfg.training.cpu else "cpu")


def _student_base(cfg: Config, teacher_model: nn.Module, t_tok):
    from lmdistill.api import _make_student

    model, tok = _make_student(cfg, teacher_model, t_tok, None)
    return getattr(model, "base_model", model), tok


def load_bi_teacher(cfg: Config) -> tuple[SentenceEncoder, object]:
    """The teacher as a :class:`SentenceEncoder`; ``embedding.pooling`` may not contradict its folder."""
    e = cfg.embedding
    teacher, tok = SentenceEncoder.load(
        cfg.teacher.name_or_path, "teacher.name_or_path", normalize=e.normalize
    )
    own = teacher.own_pooling
    if e.pooling != "auto":
        if own is not None and own != e.pooling:
            raise ModelError(
                f"embedding.pooling: {e.pooling} differs from the teacher's {own} pooling (its "
                "1_Pooling/config.json); remove embedding.pooling (auto) to pool as the teacher"
            )
        teacher.pooling = e.pooling
    return teacher, tok


def make_bi_student(cfg: Config, teacher: SentenceEncoder, t_tok) -> tuple[SentenceEncoder, object]:
    """The student pools and normalises as the teacher; from teacher layers it also copies the teacher's
    Dense layers; a projection to the teacher's width is added when the widths differ (or asked for)."""
    import copy

    e, s = cfg.embedding, cfg.student
    if s.init == "pretrained":
        student, tok = SentenceEncoder.load(s.name_or_path, "student.name_or_path")
        student.pooling, student.normalize, student.dense = (
            teacher.pooling,
            teacher.normalize,
            nn.ModuleList(),
        )
    else:
        base, tok = _student_base(cfg, teacher.model, t_tok)
        dense = copy.deepcopy(list(teacher.dense)) if s.init == "from_teacher" else []
        student = SentenceEncoder(base, teacher.pooling, teacher.normalize, dense)
    if student.width != teacher.width and e.projection is False:
        raise ModelError(
            f"embedding.projection: the student embeds into {student.width} dimensions and the teacher "
            f"into {teacher.width}; set projection: true (or remove projection: false)"
        )
    if e.projection or student.width != teacher.width:
        student.dense.append(Projection(student.width, teacher.width))
    return student, tok


@dataclass
class Prepared:
    """What a mode prepares for the run: models, the training set with the teacher's signal, evaluation."""

    teacher: nn.Module
    t_tok: object
    student: SentenceEncoder
    s_tok: object
    frames: dict
    train: Dataset
    target_key: str
    metrics: Callable | None
    counts: dict
    teacher_seconds: float


def distill(cfg: Config):
    """Distill a sentence-embedding teacher (bi) or a cross-encoder (cross) into a bi-encoder student."""
    import lmdistill.engine  # noqa: F401 - fail before the teacher's pass over the data, not after

    e = cfg.embedding
    e.loss = e.loss or ("mse" if e.mode == "bi" else "margin_mse")  # resolved: the saved config states it
    return _run(cfg, _bi(cfg) if e.mode == "bi" else _cross(cfg))


def _check_lengths(cfg: Config, *models: nn.Module) -> None:
    from lmdistill.tasks.general import check_length

    for m in models:
        check_length(getattr(m, "model", m), cfg.data.max_length, "data.max_length")


def _bi(cfg: Config):
    from lmdistill.data.rawtext import load_text_frames, split_texts

    e, d = cfg.embedding, cfg.data
    teacher, t_tok = load_bi_teacher(cfg)
    student, s_tok = make_bi_student(cfg, teacher, t_tok)
    _check_lengths(cfg, teacher, student)
    teacher.to(_device(cfg))
    frames = load_text_frames(d, cfg.seed)
    cols = [d.text_column, *e.extra_text_columns]
    keys = ["data.text_column"] + ["embedding.extra_text_columns"] * len(e.extra_text_columns)
    texts = {
        s: split_texts(f, cols, s, d.max_train_examples if s == "train" else d.max_eval_examples, keys)
        for s, f in frames.items()
        if s in ("train", "validation")
    }
    eb, L = cfg.training.eval_batch_size, d.max_length
    _say(
        f"embedding: the teacher encodes {sum(map(len, texts.values()))} texts once (its embeddings are the targets)"
    )
    started = time.perf_counter()
    targets = {
        s: teacher.encode(t, t_tok, batch_size=eb, max_length=L, normalize=False) for s, t in texts.items()
    }
    teacher_seconds = time.perf_counter() - started
    train = EmbeddingDataset(tokenize(s_tok, texts["train"], L), targets["train"], "target")

    def metrics(model):
        return bi_metrics(model, s_tok, texts["validation"], targets["validation"], e.loss, eb, L)

    valid = "validation" in texts
    counts = {s: len(t) for s, t in texts.items()}
    return Prepared(
        teacher,
        t_tok,
        student,
        s_tok,
        frames,
        train,
        "target",
        metrics if valid else None,
        counts,
        teacher_seconds,
    )


def _cross(cfg: Config):
    from lmdistill.data.rawtext import load_text_frames
    from lmdistill.models.load import load_saved_classifier

    e, d = cfg.embedding, cfg.data
    teacher, t_tok = load_saved_classifier(cfg.teacher.name_or_path, "teacher.name_or_path")
    if cfg.student.init == "pretrained":
        student, s_tok = SentenceEncoder.load(
            cfg.student.name_or_path,
            "student.name_or_path",
            pooling=None if e.pooling == "auto" else e.pooling,
            normalize=e.normalize,
        )
    else:
        base, s_tok = _student_base(cfg, teacher, t_tok)
        student = SentenceEncoder(base, "mean" if e.pooling == "auto" else e.pooling, bool(e.normalize))
    _check_lengths(cfg, teacher, student)
    teacher.to(_device(cfg))
    frames = load_text_frames(d, cfg.seed)
    eb, L = cfg.training.eval_batch_size, d.max_length
    parts, margins = {}, {}
    _say(
        "embedding: the cross-encoder teacher scores every (query, positive) and (query, negative) pair once"
    )
    started = time.perf_counter()
    for s, f in frames.items():
        if s not in ("train", "validation"):
            continue
        q, p, n = triples(f, cfg, s, d.max_train_examples if s == "train" else d.max_eval_examples, cfg.seed)
        parts[s] = (q, p, n)
        margins[s] = cross_scores(teacher, t_tok, q, p, batch_size=eb, max_length=L) - cross_scores(
            teacher, t_tok, q, n, batch_size=eb, max_length=L
        )
    teacher_seconds = time.perf_counter() - started
    q, p, n = parts["train"]
    inputs = {
        "query": tokenize(s_tok, q, L),
        "positive": tokenize(s_tok, p, L),
        "negative": tokenize(s_tok, n, L),
    }
    train = EmbeddingDataset(inputs, margins["train"], "teacher_margin")

    def metrics(model):
        return cross_metrics(model, s_tok, *parts["validation"], margins["validation"], e.similarity, eb, L)

    valid = "validation" in parts
    counts = {s: len(x[0]) for s, x in parts.items()}
    return Prepared(
        teacher,
        t_tok,
        student,
        s_tok,
        frames,
        train,
        "teacher_margin",
        metrics if valid else None,
        counts,
        teacher_seconds,
    )


def _run(cfg: Config, prep: Prepared):
    """Retrieval of teacher and undistilled student, training, retrieval of the best student, results.json."""
    from lmdistill.api import RunResult, _prepare_output, is_main_process
    from lmdistill.data.text import pad_id
    from lmdistill.engine import train
    from lmdistill.tasks.retrieval import agreement, evaluate_encoder

    e, L, eb = cfg.embedding, cfg.data.max_length, cfg.training.eval_batch_size
    teacher, t_tok, student, s_tok, metrics = prep.teacher, prep.t_tok, prep.student, prep.s_tok, prep.metrics
    out = _prepare_output(cfg, "distill")
    model_dir = out / "model"
    sim_fn = e.similarity if e.mode == "cross" else "cosine"
    rs = retrieval_set(cfg, prep.frames) if e.retrieval else None
    retrieval: dict = {}
    t_emb = None
    if rs is not None:
        _say(
            f"retrieval on {rs.name}: {len(rs)} queries, {len(rs.documents)} documents; teacher and undistilled "
            "student first"
        )
        if e.mode == "bi":
            retrieval["teacher"], *t_emb = evaluate_encoder(teacher, t_tok, rs, batch_size=eb, max_length=L)
        student.to(_device(cfg))
        retrieval["undistilled_student"], *b_emb = evaluate_encoder(
            student, s_tok, rs, batch_size=eb, max_length=L
        )
        if t_emb is not None:
            retrieval["undistilled_student"]["teacher_cosine"] = agreement(torch.cat(b_emb), torch.cat(t_emb))
    teacher_parameters = sum(p.numel() for p in teacher.parameters())
    prep.teacher = teacher = None  # its signal is computed: free it before training
    objective = EmbeddingObjective(e.loss, e.similarity)
    outcome = train(
        student=student,
        objective=objective,
        train_set=prep.train,
        collate=EmbeddingCollator(pad_id(s_tok), prep.target_key),
        cfg=cfg.training,
        seed=cfg.seed,
        out_dir=out,
        teacher=None,
        evaluate=metrics,
        on_best=lambda m: m.save(model_dir, s_tok, max_seq_length=L, similarity_fn=sim_fn),
        desc="distill",
    )
    best, _ = SentenceEncoder.load(model_dir, "model")
    best.to(_device(cfg))
    validation = metrics(best) if metrics is not None else {}
    if rs is not None:
        _say(f"retrieval on {rs.name}: the distilled student")
        retrieval["student"], *s_emb = evaluate_encoder(best, s_tok, rs, batch_size=eb, max_length=L)
        if t_emb is not None:
            retrieval["student"]["teacher_cosine"] = agreement(torch.cat(s_emb), torch.cat(t_emb))
        retrieval = {
            "set": rs.name,
            "queries": len(rs),
            "documents": len(rs.documents),
            "max_length": L,
            **retrieval,
        }
    result = RunResult(
        output_dir=out,
        model_dir=model_dir,
        validation=validation,
        test=retrieval.get("student", {}),
        steps=outcome.steps,
        train_seconds=round(outcome.train_seconds, 2),
        best_step=outcome.best_step,
        parameters=sum(p.numel() for p in best.parameters()),
        teacher_parameters=teacher_parameters,
        history=outcome.history,
    )
    summary = {k: v for k, v in asdict(result).items() if k != "history"}
    summary.update(
        output_dir=str(out),
        model_dir=str(model_dir),
        task="embedding",
        mode=e.mode,
        loss=e.loss,
        pooling=best.pooling,
        normalize=best.normalize,
        embedding_width=best.width,
        stopped_early=outcome.stopped_early,
        resumed_from=outcome.resumed_from,
        split_sizes=prep.counts,
        teacher_signal_seconds=round(prep.teacher_seconds, 2),
        retrieval=retrieval,
    )
    if is_main_process():
        (out / "results.json").write_text(json.dumps(summary, indent=2))
    return result
