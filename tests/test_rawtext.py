"""Raw text: sources, fixed-length blocks, streaming, and dynamic MLM masking."""

from __future__ import annotations

import json

import pytest
import torch

from lmdistill.config import DataConfig
from lmdistill.data.rawtext import (
    BlockCollator,
    MLMCollator,
    StreamingBlocks,
    iter_blocks,
    iter_split,
    load_text_splits,
    shuffled,
    special_frame,
)
from lmdistill.errors import DataError

from .conftest import bert_tokenizer, make_sentences

TEXTS = [t for t, _, _ in make_sentences(60, seed=3)]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return bert_tokenizer(tmp_path_factory.mktemp("tok"))


def test_blocks_are_fixed_length_and_keep_every_token(tok):
    head, tail = special_frame(tok)
    assert (head, tail) == ([tok.cls_token_id], [tok.sep_token_id])
    blocks = list(iter_blocks(TEXTS, tok, 16))
    assert all(len(b) == 16 for b in blocks[:-1]) and 3 <= len(blocks[-1]) <= 16
    assert all(b[0] == tok.cls_token_id and b[-1] == tok.sep_token_id for b in blocks)
    # the inner tokens, concatenated, are the documents joined by [SEP]
    inner = [i for b in blocks for i in b[1:-1]]
    expected = []
    for ids in tok(TEXTS, add_special_tokens=False)["input_ids"]:
        expected += ([tok.sep_token_id] if expected else []) + ids
    assert inner == expected
    with pytest.raises(DataError, match="data.block_size 2 leaves no room"):
        list(iter_blocks(TEXTS, tok, 2))


def test_sources_txt_jsonl_csv_and_streaming(tmp_path):
    (tmp_path / "c.txt").write_text("\n".join(TEXTS[:20]) + "\n\n   \n")
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps({"body": t}) for t in TEXTS[:20]) + "\n")
    txt = DataConfig(train=str(tmp_path / "c.txt"), validation_size=0.1, test_size=0.0)
    splits = load_text_splits(txt, seed=0)
    assert len(splits["train"]) == 18 and len(splits["validation"]) == 2 and "test" not in splits
    assert sorted(splits["train"] + splits["validation"]) == sorted(TEXTS[:20])  # blank lines dropped
    stream = iter_split(
        DataConfig(train=str(tmp_path / "c.jsonl"), text_column="body"), "train", streaming=True
    )
    assert next(stream) == TEXTS[0] and list(stream) == TEXTS[1:20]  # lazily, in order
    with pytest.raises(
        DataError, match=r"data.train: '.*c.jsonl' line 1 has no 'text' field; set data.text_column"
    ):
        list(iter_split(DataConfig(train=str(tmp_path / "c.jsonl")), "train", streaming=True))
    with pytest.raises(DataError, match=r"data.train: file '.*nope.txt' not found"):
        load_text_splits(DataConfig(train=str(tmp_path / "nope.txt")), 0)


def _batch(tok, n=64, length=40):
    blocks = list(iter_blocks(TEXTS * 6, tok, length))[:n]
    blocks[0] = blocks[0][:10]  # a short block: padding in the batch
    return [{"index": i, "student": {"input_ids": b}} for i, b in enumerate(blocks)]


def test_masking_is_dynamic_and_never_touches_specials_or_padding(tok):
    items = _batch(tok)
    collate = MLMCollator(tok, mlm_probability=0.15, seed=0)
    plain = BlockCollator(tok)(items)["student"]
    ids, attn = plain["input_ids"], plain["attention_mask"]
    first, second = collate(items), collate(items)
    assert not torch.equal(first["labels"], second["labels"])  # new masks every call (every epoch)
    special = torch.isin(ids, torch.tensor(tok.all_special_ids))
    assert special.any() and (attn == 0).any()
    n_selected, n_real = 0, int((attn.bool() & ~special).sum())
    kinds = {"mask": 0, "random": 0, "kept": 0}
    for batch in (first, second):
        labels, masked = batch["labels"], batch["student"]["input_ids"]
        selected = labels != -100
        assert not (selected & special).any() and not (selected & (attn == 0)).any()
        assert torch.equal(masked[~selected], ids[~selected])  # nothing else changes
        assert torch.equal(labels[selected], ids[selected])
        assert not torch.isin(
            masked[selected & (masked != tok.mask_token_id)], torch.tensor(tok.all_special_ids)
        ).any()
        n_selected += int(selected.sum())
        kinds["mask"] += int((masked[selected] == tok.mask_token_id).sum())
        kinds["kept"] += int((masked[selected] == ids[selected]).sum())
    kinds["random"] = n_selected - kinds["mask"] - kinds["kept"]
    assert 0.11 < n_selected / (2 * n_real) < 0.19
    assert (
        0.7 < kinds["mask"] / n_selected < 0.9 and 0.1 < (kinds["random"] + kinds["kept"]) / n_selected < 0.3
    )
    same = MLMCollator(tok, mlm_probability=0.15, seed=0)(items)
    assert torch.equal(same["labels"], first["labels"])  # seeded: reproducible


def test_collator_refuses_a_tokenizer_without_mask(tok):
    class NoMask:
        mask_token_id = None
        pad_token_id = 0

    with pytest.raises(DataError, match="task mlm: the tokenizer has no mask token"):
        MLMCollator(NoMask())


def test_stream_cycles_skips_and_shuffles():
    passes = []

    def open_blocks(n_pass):
        passes.append(n_pass)
        return iter([[n_pass, i] for i in range(3)])

    ds = StreamingBlocks(open_blocks, length=7, skip=2)
    got = [ds[i]["student"]["input_ids"] for i in range(5)]
    assert got == [[0, 2], [1, 0], [1, 1], [1, 2], [2, 0]] and passes == [0, 1, 2]  # skipped 2, then cycled
    items = [[i] for i in range(50)]
    out = list(shuffled(iter(items), buffer=8, seed=0))
    assert sorted(out) == items and out != items
    with pytest.raises(DataError, match="the stream holds no text"):
        StreamingBlocks(lambda n: iter([]), length=2)[0]
