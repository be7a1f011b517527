"""Vocabulary trimming: keep only the tokens a task's texts use, in the tokenizer and in the model.

Small encoders are mostly embeddings: all-MiniLM-L6-v2 has 22.7M parameters, 11.7M of them in its
30,522 x 384 word embeddings, and a task's texts use a fraction of those rows. Trimming keeps the tokens
the texts use plus the special tokens (and, by default, every single-character piece so unseen words are
spelled out instead of becoming [UNK]), slices the embedding matrix and the LM head, and rewrites the
fast tokenizer so it maps text to the new ids. On texts made of kept tokens the trimmed model gives the
same outputs as the original (for LM heads: the kept columns of the original logits).
Abdaoui et al., 2020, "Load What You Need: Smaller Versions of Multilingual BERT" (SustaiNLP) trim
mBERT's vocabulary by the tokens of a corpus; Ushio et al., 2023, "An Efficient Multilingual Language
Model Compression through Vocabulary Trimming" (Findings of EMNLP) do the same before or after
fine-tuning. Here the choice is by token counts on the task's own texts.

Flow: ``token_counts`` -> ``choose_tokens`` -> ``trim_tokenizer`` + ``trim_model``, or all at once with
``trim_vocabulary``. Both results save with ``save_pretrained`` and load with the Auto classes alone.
The tokenizer rewrite is in :mod:`lmdistill.models.vocab_json`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from lmdistill.errors import DataError, ModelError
from lmdistill.models.vocab_json import TokenizerJson, require_fast, trim_tokenizer

__all__ = [
    "VocabularyInfo",
    "choose_tokens",
    "config_token_ids",
    "fixed_ids",
    "token_counts",
    "trim_model",
    "trim_tokenizer",
    "trim_vocabulary",
]

KEY = "student.vocabulary"


# ------------------------------------------------------------------------------------------ counting


def _batches(texts: Iterable[Any], size: int) -> Iterable[list[Any]]:
    it = iter(texts)
    while batch := list(itertools.islice(it, size)):
        yield batch


def _check_texts(batch: list[Any], start: int) -> bool:
    """True for a batch of (text, text_pair) pairs, False for plain strings; DataError for anything else."""
    pairs = isinstance(batch[0], (tuple, list))
    for i, item in enumerate(batch):
        ok = (
            isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(s, str) for s in item)
            if pairs
            else isinstance(item, str)
        )
        if not ok:
            raise DataError(
                f"{KEY}: text {start + i} is {type(item).__name__} {str(item)[:40]!r}; every text must be a "
                "string (or every one a (text, text_pair) pair): drop missing values first"
            )
    return pairs


def token_counts(tokenizer: Any, texts: Iterable[Any], *, batch_size: int = 1000) -> np.ndarray:
    """How often each token id occurs in ``texts`` tokenised as a task does it: special tokens added, no
    truncation (a superset of what a truncating task sees). ``texts``: strings, or (text, text_pair)
    pairs. Returns an int64 array of shape (len(tokenizer),)."""
    require_fast(tokenizer)
    if batch_size < 1:
        raise DataError(f"{KEY}: batch_size must be at least 1, got {batch_size}")
    counts = np.zeros(len(tokenizer), dtype=np.int64)
    for n, batch in enumerate(_batches(texts, batch_size)):
        if _check_texts(batch, n * batch_size):
            enc = tokenizer([a for a, _ in batch], [b for _, b in batch], truncation=False, verbose=False)
        else:
            enc = tokenizer(batch, truncation=False, verbose=False)
        ids = np.fromiter(itertools.chain.from_iterable(enc["input_ids"]), dtype=np.int64)
        counts += np.bincount(ids, minlength=len(counts))[: len(counts)]
    return counts


# ------------------------------------------------------------------------------------------ choosing


def choose_tokens(
    counts: np.ndarray,
    tokenizer: Any,
    *,
    min_count: int = 1,
    top_n: int | None = None,
    keep_characters: bool = True,
    also_keep: Iterable[int] = (),
) -> list[int]:
    """Old ids to keep, sorted (position in the list = new id).

    Always kept: every special and added token, the ids the post-processor, padding and unknown token
    use, ``also_keep`` (e.g. :func:`config_token_ids`), and with ``keep_characters`` every single-
    character piece (WordPiece: ``c`` and ``##c``; BPE: the byte tokens / single characters and
    ``<0xNN>`` byte-fallback pieces; Unigram: single-character pieces). Then tokens counted at least
    ``min_count`` times, most frequent first. ``top_n`` caps the TOTAL kept vocabulary (always-kept
    tokens included). For BPE the set is closed under merges (each kept token's merge ancestors are
    kept too); for Unigram the lowest-scored piece is kept so the unknown-piece penalty is unchanged.
    """
    tj = TokenizerJson(tokenizer)
    counts = np.asarray(counts)
    if counts.shape != (len(tokenizer),):
        raise DataError(
            f"{KEY}: counts has shape {counts.shape}, the tokenizer has {len(tokenizer)} tokens; "
            "compute them with token_counts(tokenizer, texts)"
        )
    if min_count < 1:
        raise ModelError(f"{KEY}.min_count must be at least 1, got {min_count}")
    specials = tj.special_ids(tokenizer)
    if counts.sum() - counts[sorted(specials)].sum() <= 0:
        raise DataError(
            f"{KEY}: the texts contain no token beyond the special tokens (no texts, or empty ones); "
            "trimming needs the task's training texts"
        )
    required = specials | tj.model_ids() | {i for i in also_keep if 0 <= i < len(tokenizer)}
    if keep_characters:
        required |= tj.character_ids()
    required = tj.close(required)
    order = np.argsort(-counts, kind="stable")
    seen = [int(i) for i in order if counts[i] >= min_count and int(i) not in required]
    if top_n is None:
        return sorted(tj.close(required | set(seen)))
    if top_n < len(required):
        raise ModelError(
            f"{KEY}.top_n={top_n} is smaller than the {len(required)} tokens always kept (special tokens"
            + (", single-character pieces" if keep_characters else "")
            + "); raise top_n"
            + (" or set keep_characters false" if keep_characters else "")
        )
    keep = set(required)
    for i in seen:
        new = tj.close({i}) - keep
        if len(keep) + len(new) <= top_n:
            keep |= new
        if len(keep) == top_n:
            break
    return sorted(keep)


def config_token_ids(model: nn.Module) -> set[int]:
    """Every token id the model's config and generation config name (pad/bos/eos/decoder-start, ...)."""
    ids: set[int] = set()
    for cfg in _configs(model):
        for key in _id_keys(cfg):
            value = getattr(cfg, key, None)
            values = value if isinstance(value, (list, tuple)) else [value]
            ids.update(v for v in values if isinstance(v, int) and not isinstance(v, bool))
    return ids


# ------------------------------------------------------------------------------------------ the model

_ID_KEYS = (
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
    "unk_token_id",
    "sep_token_id",
    "cls_token_id",
    "mask_token_id",
    "decoder_start_token_id",
    "forced_bos_token_id",
    "forced_eos_token_id",
)
_ID_LIST_KEYS = ("suppress_tokens", "begin_suppress_tokens")  # generation: dropped ids are simply left out


def _configs(model: nn.Module) -> list[Any]:
    config = getattr(model, "config", None)
    out = [c for c in (config, getattr(model, "generation_config", None)) if c is not None]
    text = config.get_text_config() if hasattr(config, "get_text_config") else None
    return out + ([text] if text is not None and text is not config else [])


def _id_keys(cfg: Any) -> list[str]:
    named = [k for k in vars(cfg) if k.endswith(("_token_id", "_token_ids"))]
    return sorted(set(_ID_KEYS) | set(named))


def input_embeddings(model: nn.Module) -> nn.Embedding:
    """The token embedding matrix, (vocab, hidden); ModelError when the model has none."""
    get = getattr(model, "get_input_embeddings", None)
    try:
        emb = get() if get is not None else None
    except NotImplementedError:
        emb = None
    if not isinstance(emb, nn.Embedding):
        raise ModelError(
            f"{KEY}: a {type(model).__name__} has no token embedding matrix (get_input_embeddings gives "
            f"{type(emb).__name__}); vocabulary trimming needs a text model with an nn.Embedding"
        )
    return emb


def _vocab_params(model: nn.Module, emb: nn.Embedding) -> list[nn.Parameter]:
    """Parameters with one row per token: input embeddings, LM head weight and bias (tied ones once)."""
    vocab = emb.num_embeddings
    params = [emb.weight]
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if out is not None:
        weight = getattr(out, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.shape[0] != vocab:
            raise ModelError(
                f"{KEY}: the output embeddings of a {type(model).__name__} have shape "
                f"{tuple(getattr(weight, 'shape', ()))}, not ({vocab}, hidden); this head cannot be trimmed"
            )
        params += [weight, getattr(out, "bias", None)]
        name = next(n for n, m in model.named_modules() if m is out)
        parent = model.get_submodule(name.rpartition(".")[0])
        params += [p for p in parent.parameters(recurse=False) if p.ndim == 1 and p.shape[0] == vocab]
    unique: dict[int, nn.Parameter] = {}
    for p in params:
        if p is not None:
            unique.setdefault(id(p), p)
    return list(unique.values())


def fixed_ids(model: nn.Module) -> set[int]:
    """Ids that must not move. RoBERTa, XLM-R and MPNet compute positions from the pad id (position =
    pad id + running count of non-pad tokens), read from a ``padding_idx`` attribute of their embeddings
    module (MPNet hard-codes 1) and from ``config.pad_token_id`` on loading; keeping every id up to it
    keeps the pad id where it is."""
    out: set[int] = set()
    for module in model.modules():
        idx = getattr(module, "padding_idx", None)
        if not isinstance(module, nn.Embedding) and isinstance(idx, int) and idx >= 0:
            out |= set(range(idx + 1))
    return out


def _check_keep(keep: Sequence[int], vocab: int) -> list[int]:
    keep = [int(i) for i in keep]
    if not keep or keep != sorted(set(keep)) or keep[0] < 0 or keep[-1] >= vocab:
        raise ModelError(
            f"{KEY}: keep must be sorted, distinct token ids in [0, {vocab}) and not empty "
            f"(got {len(keep)} ids from {min(keep, default=None)} to {max(keep, default=None)})"
        )
    return keep


def trim_model(model: nn.Module, keep: Sequence[int]) -> nn.Module:
    """Keep the token rows ``keep`` (old ids, sorted; new id = position) in place and return the model.

    Slices the input embeddings (vocab, hidden), the LM head weight (vocab, hidden) and bias (vocab,)
    (tied weights stay one shared parameter), and any ``*logits_bias`` buffer (..., vocab); sets
    ``config.vocab_size``; remaps pad/bos/eos/decoder-start/... ids in the config and generation config.
    """
    emb = input_embeddings(model)
    vocab = emb.num_embeddings
    keep = _check_keep(keep, vocab)
    new_id = {old: new for new, old in enumerate(keep)}
    fixed = fixed_ids(model)
    moved = sorted(i for i in fixed if new_id.get(i) != i)
    if moved:
        raise ModelError(
            f"{KEY}: a {type(model).__name__} computes positions from its pad id, so ids 0..{max(fixed)} "
            f"must all be kept (id {moved[0]} is not); add them to keep (trim_vocabulary does)"
        )
    index = torch.tensor(keep, dtype=torch.long, device=emb.weight.device)
    fresh = {
        id(p): nn.Parameter(p.detach().index_select(0, index.to(p.device)).clone(), p.requires_grad)
        for p in _vocab_params(model, emb)
    }
    replaced = {id(p) for p in fresh.values()}
    for module in model.modules():
        for name, p in list(module._parameters.items()):
            if p is not None and id(p) in fresh:
                module._parameters[name] = fresh[id(p)]
        if isinstance(module, nn.Embedding) and id(module.weight) in replaced:
            module.num_embeddings = len(keep)
            module.padding_idx = _remap_padding_idx(module.padding_idx, new_id)
        if isinstance(module, nn.Linear) and id(module.weight) in replaced:
            module.out_features = len(keep)
        for name, buf in list(module._buffers.items()):
            if buf is not None and name.endswith("logits_bias") and buf.shape[-1] == vocab:
                module._buffers[name] = buf.index_select(-1, index.to(buf.device)).clone()
    _remap_configs(model, new_id, vocab)
    return model


def _remap_padding_idx(idx: int | None, new_id: dict[int, int]) -> int | None:
    if idx is None:
        return None
    if idx not in new_id:
        raise ModelError(f"{KEY}: the embeddings' padding index {idx} is not among the kept tokens; keep it")
    return new_id[idx]


def _remap_configs(model: nn.Module, new_id: dict[int, int], vocab: int) -> None:
    for cfg in _configs(model):
        if hasattr(cfg, "vocab_size"):
            cfg.vocab_size = len(new_id)
        for key in _id_keys(cfg):
            value = getattr(cfg, key, None)
            if value is not None:
                setattr(cfg, key, _remap_value(value, new_id, vocab, key))
        for key in _ID_LIST_KEYS:
            value = getattr(cfg, key, None)
            if isinstance(value, (list, tuple)):
                setattr(cfg, key, [new_id[v] for v in value if v in new_id])


def _remap_value(value: Any, new_id: dict[int, int], vocab: int, key: str) -> Any:
    """An id (or list of ids) in the config: kept ids are mapped; ids outside [0, vocab) were never valid
    rows and stay as they are; a dropped valid id is an error."""
    if isinstance(value, (list, tuple)):
        return [_remap_value(v, new_id, vocab, key) for v in value]
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < vocab:
        return value
    if value not in new_id:
        raise ModelError(
            f"{KEY}: config {key}={value} is not among the kept tokens; keep it (trim_vocabulary keeps "
            "every id the config names)"
        )
    return new_id[value]


# ------------------------------------------------------------------------------------------ all at once


@dataclass
class VocabularyInfo:
    """What trimming did. ``keep``: the kept old ids (position = new id)."""

    original_size: int
    kept_size: int
    parameters_before: int
    parameters_after: int
    coverage: float  # share of the texts' token occurrences whose token is kept (1.0 when min_count=1)
    seen_tokens: int  # distinct tokens that occur in the texts
    seen_dropped: int  # of those, dropped by min_count / top_n (such words are re-split into pieces)
    keep: list[int] = field(default_factory=list, repr=False)

    @property
    def dropped(self) -> int:
        return self.original_size - self.kept_size

    def to_dict(self) -> dict[str, Any]:
        """For reports: every field but ``keep``, plus ``dropped``."""
        out = {k: v for k, v in asdict(self).items() if k != "keep"}
        return out | {"dropped": self.dropped}


def _num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def trim_vocabulary(
    model: nn.Module,
    tokenizer: Any,
    texts: Iterable[Any],
    *,
    min_count: int = 1,
    top_n: int | None = None,
    keep_characters: bool = True,
    batch_size: int = 1000,
) -> tuple[nn.Module, Any, VocabularyInfo]:
    """Count tokens in ``texts``, choose, trim the tokenizer and the model (in place); see
    :func:`choose_tokens` for the options. Returns (model, new tokenizer, info)."""
    require_fast(tokenizer)
    original = input_embeddings(model).num_embeddings
    if len(tokenizer) > original:
        raise ModelError(
            f"{KEY}: the tokenizer has {len(tokenizer)} tokens but the model only {original} "
            "embedding rows; they do not belong together"
        )
    counts = token_counts(tokenizer, texts, batch_size=batch_size)
    keep = choose_tokens(
        counts,
        tokenizer,
        min_count=min_count,
        top_n=top_n,
        keep_characters=keep_characters,
        also_keep=config_token_ids(model) | fixed_ids(model),
    )
    before = _num_parameters(model)
    new_tokenizer = trim_tokenizer(tokenizer, keep)
    trim_model(model, keep)
    kept = np.zeros(len(counts), dtype=bool)
    kept[keep] = True
    info = VocabularyInfo(
        original_size=original,
        kept_size=len(keep),
        parameters_before=before,
        parameters_after=_num_parameters(model),
        coverage=float(counts[kept].sum() / counts.sum()),
        seen_tokens=int((counts > 0).sum()),
        seen_dropped=int(((counts > 0) & ~kept).sum()),
        keep=keep,
    )
    return model, new_tokenizer, info
