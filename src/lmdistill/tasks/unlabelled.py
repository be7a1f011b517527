"""The unlabelled pool of a distill run: a transfer set (``data.unlabeled``) and augmented copies of the labelled
training texts (``data.augment``). Both are learned by KD alone: the teacher scores them (once, through the
teacher cache) and the student matches its outputs; no hard-label term ever reads them.

Augmented copies are generated once per configuration, seeded by the run's seed, and saved in
``OUTPUT_DIR/augmented/copies.jsonl`` with a key over everything they depend on; a later run with the same key
reads them back instead of generating them again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

from lmdistill.config.schema import AugmentConfig, Config
from lmdistill.errors import DataError
from lmdistill.fileio import write_text

AUGMENTED = "augmented"


def unlabelled_pool(cfg: Config, train_texts: list[str], exclude: dict[str, list[str]], teacher, t_tok):
    """``(texts, info)``: the transfer texts, then the augmented copies, without texts equal to a validation or
    test text; ``info`` says where they came from and what was dropped (for results.json)."""
    from lmdistill.data.transfer import load_transfer, normal

    texts: list[str] = []
    info: dict = {}
    if cfg.data.unlabeled is not None:
        transfer = load_transfer(cfg.data.unlabeled, exclude)
        texts += transfer.texts
        info["transfer"] = transfer.info
    if cfg.data.augment is not None:
        copies, counts = augmented(cfg, train_texts, teacher, t_tok)
        banned = {normal(t) for ts in exclude.values() for t in ts}
        kept = [c for c in copies if normal(c) not in banned]
        counts["dropped_equal_to_validation_or_test"] = len(copies) - len(kept)
        texts += kept
        info["augment"] = counts
    return texts, info


def _key(cfg: Config, texts: list[str], teacher) -> str:
    """What the copies depend on: the method and its parameters, the seed, the texts, and (for the methods that
    read it) the teacher's input embeddings or the masked LM."""
    h = hashlib.sha256()
    h.update(json.dumps({"augment": asdict(cfg.data.augment), "seed": cfg.seed}, sort_keys=True).encode())
    for t in texts:
        h.update(t.encode() + b"\0")
    if cfg.data.augment.method in ("embedding", "mlm") and teacher is not None:
        weights = teacher.get_input_embeddings().weight.detach().float().contiguous()
        h.update(weights.numpy().tobytes())
    return h.hexdigest()[:20]


def augmented(cfg: Config, texts: list[str], teacher, t_tok) -> tuple[list[str], dict]:
    """The augmented copies of ``texts`` and their counts: read from OUTPUT_DIR/augmented when the key matches,
    else generated (:func:`lmdistill.data.augment.augment_texts`) and saved there."""
    a = cfg.data.augment
    folder = Path(cfg.output_dir) / AUGMENTED
    key = _key(cfg, texts, teacher)
    saved = folder / "copies.jsonl"
    if saved.is_file():
        try:
            lines = saved.read_text(encoding="utf-8").splitlines()
            head = json.loads(lines[0])
            if head.get("key") == key:
                return [json.loads(line)["text"] for line in lines[1:]], {**head["counts"], "reused": True}
        except (OSError, ValueError, KeyError, IndexError):
            pass  # unreadable: generated again
    copies = _generate(a, texts, cfg.seed, teacher, t_tok)
    counts = {**copies.counts, "method": a.method}
    chosen = (
        [text for _, text in copies][: a.max_examples] if a.max_examples else [text for _, text in copies]
    )
    counts["kept"] = len(chosen)
    folder.mkdir(parents=True, exist_ok=True)
    body = [json.dumps({"key": key, "counts": counts})] + [json.dumps({"text": t}) for t in chosen]
    write_text(saved, "\n".join(body) + "\n", "data.augment")
    return chosen, {**counts, "reused": False}


def _generate(a: AugmentConfig, texts: list[str], seed: int, teacher, t_tok):
    from lmdistill.data.augment import AugmentConfig as Settings
    from lmdistill.data.augment import augment_texts

    params = {k: v for k, v in asdict(a).items() if k not in ("mlm", "max_examples")}
    settings = Settings.from_dict({**params, "seed": seed})  # checks every value (one line each)
    extra: dict = {}
    if a.method in ("tang", "pos"):
        from lmdistill.data.lexicon import load_pos_lexicon

        extra["lexicon"] = load_pos_lexicon()
    if a.method in ("embedding", "mlm") and teacher is not None:
        extra["embeddings"] = teacher
    if a.method == "mlm":
        if not a.mlm:
            raise DataError(
                "data.augment.mlm: method mlm needs a masked LM (a folder or hub id) to predict words"
            )
        from transformers import AutoModelForMaskedLM

        from lmdistill.models.load import load_tokenizer
        from lmdistill.tasks.general import load_auto

        extra["mlm"] = load_auto(AutoModelForMaskedLM, a.mlm, "data.augment.mlm", need_head="masked-LM head")
        extra["mlm_tokenizer"] = load_tokenizer(a.mlm, "data.augment.mlm")
    return augment_texts(texts, tokenizer=t_tok, **{**asdict(settings), **extra})
