"""Tokenisation per model and batching with dynamic padding."""

from __future__ import annotations

from transformers import AutoTokenizer

from lmdistill.data.tables import Examples
from lmdistill.data.text import Collator, TextDataset, encode, pad_id, tokenizers_match


def test_each_model_gets_its_own_tokenisation(tiny_bert_dir, tiny_mpnet_dir):
    bert = AutoTokenizer.from_pretrained(tiny_bert_dir)
    mpnet = AutoTokenizer.from_pretrained(tiny_mpnet_dir)
    assert tokenizers_match(bert, AutoTokenizer.from_pretrained(tiny_bert_dir))
    assert not tokenizers_match(bert, mpnet)
    ex = Examples(["the movie was great", "bad"], None, [1, 0])
    s, t = encode(bert, ex, 16), encode(mpnet, ex, 16)
    assert s["input_ids"][0] != t["input_ids"][0]
    ds = TextDataset(s, ex.labels, t)
    batch = Collator(pad_id(bert), pad_id(mpnet))([ds[0], ds[1]])
    assert batch["student"]["input_ids"].shape == (2, 8)  # longest is 6 tokens, padded to a multiple of 8
    assert batch["teacher"]["attention_mask"][1].tolist() == [1, 1, 1] + [0] * 5
    assert batch["teacher"]["input_ids"][1, 3].item() == mpnet.pad_token_id
    assert batch["labels"].tolist() == [1, 0] and batch["index"].tolist() == [0, 1]
