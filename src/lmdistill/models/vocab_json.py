"""Rewrite a fast tokenizer's ``tokenizer.json`` to a subset of its tokens (see :mod:`lmdistill.models.vocab`).

Every id in the JSON is remapped (new id = position of the old id in the sorted ``keep`` list): the model
vocabulary (WordPiece, WordLevel and BPE: token -> id; Unigram: a list whose position is the id, and
``unk_id``), BPE merges (a merge stays when both parts and its result are kept), ``added_tokens``, the
post-processor's special-token ids (TemplateProcessing, BertProcessing, RobertaProcessing, Sequence) and
the padding ``pad_id``. Truncation, normalizer, pre-tokenizer and decoder hold no ids.

Why the result is exact on texts made of kept tokens: WordPiece takes the longest vocabulary prefix,
which was kept; BPE applies the lowest-ranked applicable merge, and every merge the original applied
produced an ancestor of a kept token, so it is kept with its rank order; Unigram picks the best-scoring
segmentation, which still exists with the same scores, and the lowest-scored piece is kept so the
unknown-piece score (lowest score - 10 in ``tokenizers``) does not change.

The new tokenizer is built the way ``from_pretrained`` builds one: the original is saved to a temporary
folder, its ``tokenizer.json`` replaced, and the folder loaded with the original class. transformers 5
builds a fast tokenizer from ``tokenizer.json`` + ``tokenizer_config.json`` and needs no ``vocab.txt``
or ``merges.txt``; stale copies of such files are removed before loading.
"""

from __future__ import annotations

import copy
import json
import re
import tempfile
from pathlib import Path
from typing import Any

from lmdistill.errors import ModelError

KEY = "student.vocabulary"
MODEL_TYPES = ("WordPiece", "WordLevel", "BPE", "Unigram")
_BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def require_fast(tokenizer: Any) -> None:
    if not getattr(tokenizer, "is_fast", False) or not hasattr(tokenizer, "backend_tokenizer"):
        raise ModelError(
            f"{KEY}: the tokenizer is a {type(tokenizer).__name__}, not a fast (Rust `tokenizers`) tokenizer; "
            "trimming rewrites tokenizer.json: load it with AutoTokenizer from a folder that has tokenizer.json"
        )


def _guess_type(model: dict) -> str:
    """Old tokenizer.json files have no model ``type``."""
    if "merges" in model:
        return "BPE"
    if isinstance(model.get("vocab"), list):
        return "Unigram"
    return "WordPiece" if "max_input_chars_per_word" in model else "WordLevel"


def _merge_parts(merge: str | list[str]) -> tuple[str, str]:
    """A merge is ``"a b"`` (older files) or ``["a", "b"]``."""
    a, b = merge.split(" ", 1) if isinstance(merge, str) else merge
    return a, b


class TokenizerJson:
    """The parsed ``tokenizer.json`` of a fast tokenizer: model type, token -> id, merges, special ids."""

    def __init__(self, tokenizer: Any):
        require_fast(tokenizer)
        self.data = json.loads(tokenizer.backend_tokenizer.to_str())
        self.model = self.data["model"]
        self.type = self.model.get("type") or _guess_type(self.model)
        if self.type not in MODEL_TYPES:
            raise ModelError(
                f"{KEY}: tokenizer model type {self.type!r} is not one of {', '.join(MODEL_TYPES)}"
            )
        if self.type == "Unigram":
            self.vocab = {piece: i for i, (piece, _score) in enumerate(self.model["vocab"])}
        else:
            self.vocab = dict(self.model["vocab"])
        self.merges = [_merge_parts(m) for m in self.model.get("merges") or []] if self.type == "BPE" else []
        self._producers: dict[int, list[tuple[int, int]]] | None = None

    def merge_result(self, a: str, b: str) -> str:
        """The token a BPE merge makes (a continuing-subword prefix on ``b`` is dropped, as in tokenizers)."""
        prefix = self.model.get("continuing_subword_prefix") or ""
        return a + (b[len(prefix) :] if prefix and b.startswith(prefix) else b)

    def special_ids(self, tokenizer: Any) -> set[int]:
        """Special and added tokens, and every id the post-processor, padding and unknown token use."""
        ids = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
        ids |= {t["id"] for t in self.data.get("added_tokens") or []}
        ids |= set(processor_ids(self.data.get("post_processor")))
        if self.data.get("padding"):
            ids.add(self.data["padding"]["pad_id"])
        if self.type == "Unigram":
            ids.add(self.model.get("unk_id"))
        else:
            ids.add(self.vocab.get(self.model.get("unk_token")))
        return {i for i in ids if isinstance(i, int) and 0 <= i < len(tokenizer)}

    def model_ids(self) -> set[int]:
        """Tokens the tokenizer model needs to behave the same: for Unigram the lowest-scored piece, whose
        score sets the unknown-piece penalty."""
        if self.type != "Unigram" or not self.model["vocab"]:
            return set()
        scores = [score for _piece, score in self.model["vocab"]]
        return {min(range(len(scores)), key=scores.__getitem__)}

    def character_ids(self) -> set[int]:
        """Single-character pieces: ``c`` and ``##c`` (WordPiece), byte tokens or single characters (BPE),
        single-character pieces (Unigram), and ``<0xNN>`` byte-fallback pieces. None for WordLevel."""
        if self.type == "WordLevel":
            return set()
        prefix = self.model.get("continuing_subword_prefix") or ""
        suffix = self.model.get("end_of_word_suffix") or ""
        byte_fallback = bool(self.model.get("byte_fallback"))
        out = set()
        for token, i in self.vocab.items():
            core = token[len(prefix) :] if prefix and token.startswith(prefix) else token
            core = core[: -len(suffix)] if suffix and core.endswith(suffix) else core
            if len(core) == 1 or (byte_fallback and _BYTE_PIECE.fullmatch(token)):
                out.add(i)
        return out

    def producers(self) -> dict[int, list[tuple[int, int]]]:
        """BPE: token id -> the (left, right) id pairs of every merge that makes it."""
        if self._producers is None:
            self._producers = {}
            for a, b in self.merges:
                made = self.vocab.get(self.merge_result(a, b))
                if made is not None and a in self.vocab and b in self.vocab:
                    self._producers.setdefault(made, []).append((self.vocab[a], self.vocab[b]))
        return self._producers

    def close(self, ids: set[int]) -> set[int]:
        """``ids`` plus (BPE) the parts of every merge that makes a token in the set, recursively."""
        out = set(ids)
        if self.type != "BPE":
            return out
        producers = self.producers()
        stack = list(out)
        while stack:
            for pair in producers.get(stack.pop(), ()):
                for part in pair:
                    if part not in out:
                        out.add(part)
                        stack.append(part)
        return out

    def trimmed(self, keep: list[int]) -> dict:
        """A new tokenizer.json (as a dict) holding only ``keep``, every id remapped."""
        new_id = {old: new for new, old in enumerate(keep)}
        data = copy.deepcopy(self.data)
        model = data["model"]
        if self.type == "Unigram":
            kept = [i for i in range(len(model["vocab"])) if i in new_id]
            if any(new_id[i] != pos for pos, i in enumerate(kept)):
                raise ModelError(
                    f"{KEY}: this Unigram tokenizer has added tokens between its pieces; cannot trim"
                )
            model["vocab"] = [model["vocab"][i] for i in kept]
            if model.get("unk_id") is not None:
                model["unk_id"] = new_id[model["unk_id"]]
        else:
            model["vocab"] = {t: new_id[i] for t, i in self.vocab.items() if i in new_id}
        if self.type == "BPE":
            tokens = model["vocab"]
            model["merges"] = [
                merge
                for merge, (a, b) in zip(model.get("merges") or [], self.merges)
                if a in tokens and b in tokens and self.merge_result(a, b) in tokens
            ]
        data["added_tokens"] = [dict(t, id=new_id[t["id"]]) for t in data.get("added_tokens") or []]
        data["post_processor"] = remap_processor(data.get("post_processor"), new_id)
        if data.get("padding"):
            data["padding"]["pad_id"] = new_id[data["padding"]["pad_id"]]
        return data


def processor_ids(proc: dict | None) -> list[int]:
    """The special-token ids a post-processor inserts."""
    if not proc:
        return []
    kind = proc.get("type")
    if kind == "Sequence":
        return [i for p in proc["processors"] for i in processor_ids(p)]
    if kind == "TemplateProcessing":
        return [i for spec in proc["special_tokens"].values() for i in spec["ids"]]
    if kind in ("BertProcessing", "RobertaProcessing"):
        return [proc["sep"][1], proc["cls"][1]]
    return []  # ByteLevel: no ids


def remap_processor(proc: dict | None, new_id: dict[int, int]) -> dict | None:
    """The post-processor with its special-token ids mapped to the new ids (``proc`` is changed)."""
    if not proc:
        return proc
    kind = proc.get("type")
    if kind == "Sequence":
        proc["processors"] = [remap_processor(p, new_id) for p in proc["processors"]]
    elif kind == "TemplateProcessing":
        for spec in proc["special_tokens"].values():
            spec["ids"] = [new_id[i] for i in spec["ids"]]
    elif kind in ("BertProcessing", "RobertaProcessing"):
        for key in ("sep", "cls"):
            proc[key] = [proc[key][0], new_id[proc[key][1]]]
    return proc


# ------------------------------------------------------------------------------------------ trim


def _check_keep(tokenizer: Any, tj: TokenizerJson, keep: list[int]) -> list[int]:
    keep = [int(i) for i in keep]
    if not keep or keep != sorted(set(keep)) or keep[0] < 0 or keep[-1] >= len(tokenizer):
        raise ModelError(f"{KEY}: keep must be sorted, distinct ids in [0, {len(tokenizer)}) and not empty")
    missing = tj.special_ids(tokenizer) - set(keep)
    if missing:
        raise ModelError(f"{KEY}: keep drops the special token ids {sorted(missing)[:10]}; keep them")
    unreachable = tj.close(set(keep)) - set(keep)
    if unreachable:
        raise ModelError(
            f"{KEY}: keep is not closed under the BPE merges ({len(unreachable)} merge parts missing, e.g. "
            f"id {min(unreachable)}); choose the ids with choose_tokens"
        )
    return keep


def _reload(tokenizer: Any, data: dict, new_id: dict[int, int]) -> Any:
    """Save ``tokenizer``, swap in the new tokenizer.json, and load the folder with the same class."""
    with tempfile.TemporaryDirectory(prefix="lmdistill-vocab-") as tmp:
        folder = Path(tmp)
        tokenizer.save_pretrained(folder)
        stale = set(getattr(type(tokenizer), "vocab_files_names", {}).values()) | {"added_tokens.json"}
        for name in stale - {"tokenizer.json"}:
            (folder / name).unlink(missing_ok=True)
        (folder / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
        config_file = folder / "tokenizer_config.json"
        config = json.loads(config_file.read_text(encoding="utf-8"))
        if "added_tokens_decoder" in config:  # ids; transformers 5 writes it only for slow tokenizers
            decoder = config["added_tokens_decoder"]
            config["added_tokens_decoder"] = {
                str(new_id[int(k)]): v for k, v in decoder.items() if int(k) in new_id
            }
            config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")
        new = type(tokenizer).from_pretrained(folder, local_files_only=True)
    new.name_or_path = tokenizer.name_or_path
    return new


def trim_tokenizer(tokenizer: Any, keep: list[int]) -> Any:
    """A new tokenizer of the same class that knows only ``keep`` (sorted old ids; new id = position).

    ``keep`` must hold every special token and, for BPE, be closed under merges (as
    :func:`lmdistill.models.vocab.choose_tokens` returns it). The special-token attributes, padding and
    post-processor carry over; ``save_pretrained`` of the result loads with ``AutoTokenizer`` alone.
    """
    tj = TokenizerJson(tokenizer)
    keep = _check_keep(tokenizer, tj, keep)
    new_id = {old: new for new, old in enumerate(keep)}
    new = _reload(tokenizer, tj.trimmed(keep), new_id)
    expected = {t: new_id[i] for t, i in tokenizer.get_vocab().items() if i in new_id}
    got = new.get_vocab()
    if got != expected:
        token = next(t for t in sorted(set(got) | set(expected)) if got.get(t) != expected.get(t))
        raise ModelError(
            f"{KEY}: transformers rebuilt the {type(tokenizer).__name__} with other ids than written "
            f"({token!r}: {got.get(token)} instead of {expected.get(token)}); this tokenizer cannot be trimmed"
        )
    return new
