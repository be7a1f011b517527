"""Shared fixtures: tiny random models and small data files built in code. No network."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import random  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)

POSITIVE = ["good", "great", "excellent", "lovely", "superb", "fine"]
NEGATIVE = ["bad", "awful", "terrible", "poor", "dull", "weak"]
FILLER = ["the", "movie", "was", "a", "plot", "and", "film", "story", "acting", "really", "quite", "very"]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = POSITIVE + NEGATIVE + FILLER + ["neutral", "so", "so-so"]


@pytest.fixture(autouse=True, scope="session")
def _cpu_without_native_bf16():
    """Every test sees a CPU without native bf16 products, so `mixed_precision: auto` trains in fp32 and reports
    add no bf16 row on any machine; the tests of the bf16 paths patch ``cpu_flags`` themselves. (Runs in
    subprocesses do not see this: their configs set ``training.mixed_precision: "no"``.)"""
    from lmdistill.models import precision

    flags = precision.cpu_flags()
    with pytest.MonkeyPatch.context() as patch:  # session-wide: module fixtures build models before any test
        patch.setattr(precision, "cpu_flags", lambda: flags - precision.BF16_FLAGS)
        yield


def make_sentences(n: int, seed: int = 0) -> list[tuple[str, str, float]]:
    """(text, label, score) rows: the label follows the sentiment words."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        pos = rng.random() < 0.5
        words = [rng.choice(FILLER) for _ in range(rng.randint(2, 8))]
        for _ in range(rng.randint(1, 2)):
            words.insert(rng.randrange(len(words) + 1), rng.choice(POSITIVE if pos else NEGATIVE))
        score = (1 if pos else -1) * rng.uniform(0.5, 3.5)
        rows.append((" ".join(words), "positive" if pos else "negative", round(score, 3)))
    return rows


def write_vocab(path: Path, words=WORDS) -> Path:
    path.write_text("\n".join(SPECIALS + list(words)) + "\n")
    return path


def bert_tokenizer(tmp: Path, words=WORDS):
    """A WordPiece tokenizer over ``words`` (transformers 5 takes ``vocab=``, 4.x ``vocab_file=``)."""
    import inspect

    from transformers import BertTokenizerFast

    path = write_vocab(tmp / "vocab.txt", words)
    if "vocab" in inspect.signature(BertTokenizerFast.__init__).parameters:
        vocab = {w: i for i, w in enumerate(path.read_text().split())}
        return BertTokenizerFast(vocab=vocab, do_lower_case=True)
    return BertTokenizerFast(vocab_file=str(path), do_lower_case=True)


def tiny_bert(
    num_labels: int = 2, layers: int = 4, hidden: int = 32, heads: int = 2, vocab: int = 64, seed: int = 0
):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=2 * hidden,
        max_position_embeddings=64,
        num_labels=num_labels,
    )
    return BertForSequenceClassification(cfg)


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A 'pretrained' tiny BERT encoder with its tokenizer, saved like a hub model."""
    d = tmp_path_factory.mktemp("tiny_bert")
    tok = bert_tokenizer(d)
    model = tiny_bert(vocab=len(tok))
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def sentiment_csv(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("data")
    import pandas as pd

    rows = make_sentences(240)
    pd.DataFrame(rows, columns=["text", "label", "score"]).to_csv(d / "train.csv", index=False)
    return d / "train.csv"


@pytest.fixture(scope="session")
def tiny_mpnet_dir(tmp_path_factory) -> Path:
    """A tiny MPNet encoder whose tokenizer differs from the BERT one (other specials, other ids)."""
    import inspect

    from transformers import MPNetConfig, MPNetForSequenceClassification, MPNetTokenizerFast

    d = tmp_path_factory.mktemp("tiny_mpnet")
    words = ["<s>", "<pad>", "</s>", "[UNK]", "<mask>"] + sorted(WORDS, reverse=True)
    vocab = {w: i for i, w in enumerate(words)}
    if "vocab" in inspect.signature(MPNetTokenizerFast.__init__).parameters:
        tok = MPNetTokenizerFast(vocab=vocab)
    else:
        (d / "vocab.txt").write_text("\n".join(words) + "\n")
        tok = MPNetTokenizerFast(vocab_file=str(d / "vocab.txt"))
    torch.manual_seed(1)
    cfg = MPNetConfig(
        vocab_size=len(words),
        hidden_size=48,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=96,
        max_position_embeddings=70,
        pad_token_id=1,
    )
    MPNetForSequenceClassification(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def save_tiny_bert(cls, tok, folder, seed: int, **config):
    """A tiny 2-layer BERT with head ``cls`` (e.g. BertForMaskedLM), seeded, saved with ``tok`` in ``folder``."""
    from transformers import BertConfig

    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        **config,
    )
    cls(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
