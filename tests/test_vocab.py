"""Vocabulary trimming: counts, the kept set, exact outputs on kept texts (classifier, masked LM with tied
decoder, causal LM tied and untied), WordPiece / BPE / Unigram / WordLevel tokenizers, save + Auto load,
remapped special ids, and one-line errors."""

from __future__ import annotations

import json
import random
from collections import Counter

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForMaskedLM,
    BertTokenizerFast,
    DistilBertConfig,
    DistilBertForMaskedLM,
    GPT2Config,
    GPT2LMHeadModel,
    GPT2TokenizerFast,
    LlamaConfig,
    LlamaForCausalLM,
    MPNetConfig,
    MPNetForMaskedLM,
    PreTrainedTokenizerFast,
    RobertaConfig,
    RobertaForMaskedLM,
)

from lmdistill.errors import DataError, ModelError
from lmdistill.models.vocab import (
    VocabularyInfo,
    choose_tokens,
    token_counts,
    trim_model,
    trim_tokenizer,
    trim_vocabulary,
)
from lmdistill.models.vocab_json import TokenizerJson

from .conftest import FILLER, NEGATIVE, POSITIVE, tiny_bert

LETTERS = "abcdefghijklmnopqrstuvwxyz"
KEPT_WORDS = POSITIVE + FILLER  # the task's texts use only these
DROPPED_WORDS = NEGATIVE


def sentences(words: list[str], n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(words) for _ in range(rng.randint(2, 9))) for _ in range(n)]


TEXTS = sentences(KEPT_WORDS, 60)
CORPUS = sentences(KEPT_WORDS + DROPPED_WORDS + ["question", "answer", "yes", "no"], 400, seed=1)


def wordpiece_tokenizer() -> BertTokenizerFast:
    """BERT-like: words, letters and ##letters; [UNK]..[MASK] after some words (as BERT's 100-103)."""
    words = ["[PAD]"] + NEGATIVE + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"] + POSITIVE + FILLER
    words += list(LETTERS) + ["##" + c for c in LETTERS]
    words = list(dict.fromkeys(words))  # "a" is a word and a letter
    return BertTokenizerFast(vocab={w: i for i, w in enumerate(words)}, do_lower_case=True)


def bpe_backend() -> Tokenizer:
    """Byte-level BPE (GPT-2 / Llama 3 style) trained on CORPUS; the specials added last (ids at the end)."""
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=330, initial_alphabet=alphabet, show_progress=False)
    tk.train_from_iterator(CORPUS, trainer)
    tk.add_special_tokens(["<pad>", "<s>", "</s>"])
    ids = {t: tk.token_to_id(t) for t in ("<pad>", "<s>", "</s>")}
    template = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> $B:1 </s>:1",
        special_tokens=[("<s>", ids["<s>"]), ("</s>", ids["</s>"])],
    )
    tk.post_processor = processors.Sequence([processors.ByteLevel(trim_offsets=False), template])
    tk.enable_padding(pad_id=ids["<pad>"], pad_token="<pad>")
    return tk


def bpe_tokenizer() -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe_backend(), bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


def unigram_tokenizer() -> PreTrainedTokenizerFast:
    """Sentencepiece-style Unigram (XLM-R / T5 style): "▁word" pieces, a few sub-words, letters, and a
    rare lowest-scored piece; scores are log-probabilities."""
    words = sorted(set(KEPT_WORDS + DROPPED_WORDS))
    pieces = [("<pad>", 0.0), ("<unk>", 0.0), ("<s>", 0.0), ("</s>", 0.0), ("▁", -3.0)]
    pieces += [("▁" + w, -5.0 - 0.1 * i) for i, w in enumerate(words)]
    pieces += [("er", -7.0), ("ble", -7.5), ("ri", -7.5), ("▁qu", -7.0), ("zzq", -30.0)]
    pieces += [(c, -9.0 - 0.01 * i) for i, c in enumerate(LETTERS)]
    tk = Tokenizer(models.Unigram(pieces, unk_id=1))
    tk.pre_tokenizer = pre_tokenizers.Metaspace()
    tk.decoder = decoders.Metaspace()
    tk.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 2), ("</s>", 3)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


def word_level_tokenizer() -> PreTrainedTokenizerFast:
    specials = ["<pad>", "<unk>", "<s>", "</s>"]
    vocab = {w: i for i, w in enumerate(specials + sorted(set(KEPT_WORDS + DROPPED_WORDS)))}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 2)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )


def llama(tok, tie: bool) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=tie,
    )
    return LlamaForCausalLM(cfg).eval()


def gpt2(tok) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=len(tok),
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=128,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return GPT2LMHeadModel(cfg).eval()


def pad_at_2_tokenizer() -> BertTokenizerFast:
    """WordPiece whose [PAD] is id 2 after two words (RoBERTa counts positions from the pad id)."""
    words = ["good", "bad", "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + POSITIVE + NEGATIVE + FILLER
    words = list(dict.fromkeys(words + list(LETTERS) + ["##" + c for c in LETTERS]))
    return BertTokenizerFast(vocab={w: i for i, w in enumerate(words)}, do_lower_case=True)


def masked_lm(family: str, tok):
    torch.manual_seed(0)
    small = dict(num_attention_heads=2, vocab_size=len(tok), max_position_embeddings=64)
    if family == "distilbert":
        cfg = DistilBertConfig(
            dim=32, n_layers=2, hidden_dim=64, n_heads=2, vocab_size=len(tok), pad_token_id=0
        )
        return DistilBertForMaskedLM(cfg).eval()
    config_cls, model_cls = {
        "bert": (BertConfig, BertForMaskedLM),
        "roberta": (RobertaConfig, RobertaForMaskedLM),
        "mpnet": (MPNetConfig, MPNetForMaskedLM),
    }[family]
    cfg = config_cls(
        hidden_size=32, num_hidden_layers=2, intermediate_size=64, pad_token_id=tok.pad_token_id, **small
    )
    return model_cls(cfg).eval()


def encode(tok, texts):
    return tok(texts, padding=True, return_tensors="pt")


def mapped(ids, keep):
    """New ids -> old ids."""
    return np.asarray(keep)[np.asarray(ids)].tolist()


# ------------------------------------------------------------------------------------------ counts, choice


def test_token_counts_equal_a_python_count_with_special_tokens():
    tok = wordpiece_tokenizer()
    texts = TEXTS[:7] + [("good film", "the plot")]
    naive = Counter()
    for t in texts:
        naive.update(tok(*t)["input_ids"] if isinstance(t, tuple) else tok(t)["input_ids"])
    with pytest.raises(DataError, match="text 7 is tuple"):
        token_counts(tok, texts, batch_size=3)
    counts = token_counts(tok, texts[:7], batch_size=3)
    counts += token_counts(tok, texts[7:])
    assert counts.dtype == np.int64 and counts.shape == (len(tok),)
    assert {i: int(c) for i, c in enumerate(counts) if c} == dict(naive)


def test_choose_tokens_keeps_specials_seen_words_and_character_pieces():
    tok = wordpiece_tokenizer()
    counts = token_counts(tok, ["good film", "good acting", "the [MASK]"])
    vocab = tok.get_vocab()
    specials = {vocab[t] for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")}
    seen = {vocab[w] for w in ("good", "film", "acting", "the")}
    chars = {vocab[c] for c in LETTERS} | {vocab["##" + c] for c in LETTERS}
    assert choose_tokens(counts, tok) == sorted(specials | seen | chars)
    assert choose_tokens(counts, tok, keep_characters=False) == sorted(specials | seen)
    assert choose_tokens(counts, tok, keep_characters=False, min_count=2) == sorted(
        specials | {vocab["good"]}
    )
    # top_n caps the total: 5 specials + the most frequent seen token ("good": 2) + the first of the ties
    top = choose_tokens(counts, tok, keep_characters=False, top_n=7)
    ties = sorted(seen - {vocab["good"]})
    assert top == sorted(specials | {vocab["good"], ties[0]})


def test_choose_tokens_bpe_set_is_closed_under_merges_and_respects_top_n():
    tok = bpe_tokenizer()
    tj = TokenizerJson(tok)
    counts = token_counts(tok, TEXTS)
    keep = choose_tokens(counts, tok)
    assert tj.close(set(keep)) == set(keep)
    assert {i for i in tj.character_ids()} <= set(keep)
    assert len(tj.character_ids()) == 256
    capped = choose_tokens(counts, tok, top_n=280)
    assert len(capped) <= 280 and tj.close(set(capped)) == set(capped)
    assert set(capped) < set(keep)


# ------------------------------------------------------------------------------------------ exact outputs


def test_classifier_gives_identical_logits_and_tokens_on_kept_texts():
    tok = wordpiece_tokenizer()
    model = tiny_bert(vocab=len(tok), layers=2).eval()
    with torch.no_grad():
        before = model(**encode(tok, TEXTS)).logits
    model, new_tok, info = trim_vocabulary(model, tok, TEXTS)
    assert type(new_tok) is type(tok)
    enc_old, enc_new = encode(tok, TEXTS), encode(new_tok, TEXTS)
    assert mapped(enc_new["input_ids"], info.keep) == enc_old["input_ids"].tolist()
    assert torch.equal(enc_new["attention_mask"], enc_old["attention_mask"])
    with torch.no_grad():
        after = model(**enc_new).logits
    assert torch.equal(after, before)
    assert model.config.vocab_size == len(new_tok) == info.kept_size == len(info.keep)
    assert info.parameters_before - info.parameters_after == (len(tok) - info.kept_size) * 32
    assert info.coverage == 1.0 and info.seen_dropped == 0


@pytest.mark.parametrize("family", ["bert", "roberta", "mpnet", "distilbert"])
def test_masked_lm_keeps_tied_decoder_and_gives_the_kept_columns_of_the_logits(family):
    tok = pad_at_2_tokenizer() if family == "roberta" else wordpiece_tokenizer()
    model = masked_lm(family, tok)
    masked = [t.replace("film", "[MASK]") for t in TEXTS]
    with torch.no_grad():
        before = model(**encode(tok, masked)).logits
    model, new_tok, info = trim_vocabulary(model, tok, TEXTS)
    emb, out = model.get_input_embeddings(), model.get_output_embeddings()
    assert out.weight is emb.weight and out.weight.shape == (info.kept_size, 32)
    assert out.bias.shape == (info.kept_size,)
    if family in ("bert", "roberta", "mpnet"):  # the head's own bias is the decoder's bias
        head = model.cls.predictions if family == "bert" else model.lm_head
        assert head.bias is out.bias
    with torch.no_grad():
        after = model(**encode(new_tok, masked)).logits
    assert torch.equal(after, before[..., info.keep])
    if family in ("roberta", "mpnet"):  # positions count from the pad id: ids up to it stay put
        pad = 2 if family == "roberta" else 1
        assert info.keep[: pad + 1] == list(range(pad + 1))


def test_roberta_keep_that_moves_the_pad_id_is_rejected():
    tok = pad_at_2_tokenizer()
    model = masked_lm("roberta", tok)
    keep = choose_tokens(token_counts(tok, TEXTS), tok)  # without the model's fixed ids: "bad" (1) dropped
    assert 1 not in keep
    with pytest.raises(
        ModelError, match="RobertaForMaskedLM computes positions from its pad id, so ids 0..2"
    ):
        trim_model(model, keep)


@pytest.mark.parametrize("arch", ["llama_untied", "llama_tied", "gpt2"])
def test_causal_lm_gives_the_kept_columns_of_the_logits(arch):
    tok = bpe_tokenizer()
    model = gpt2(tok) if arch == "gpt2" else llama(tok, tie=arch == "llama_tied")
    with torch.no_grad():
        before = model(**encode(tok, TEXTS)).logits
    head_before = model.get_output_embeddings().weight.detach().clone()
    model, new_tok, info = trim_vocabulary(model, tok, TEXTS)
    enc_old, enc_new = encode(tok, TEXTS), encode(new_tok, TEXTS)
    assert mapped(enc_new["input_ids"], info.keep) == enc_old["input_ids"].tolist()
    with torch.no_grad():
        after = model(**enc_new).logits
    assert torch.equal(after, before[..., info.keep])
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert tied == (arch != "llama_untied")
    assert torch.equal(model.get_output_embeddings().weight, head_before[info.keep])
    # config and generation config name the new ids of the same special tokens
    for cfg in (model.config, model.generation_config):
        assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (
            new_tok.bos_token_id,
            new_tok.eos_token_id,
            new_tok.pad_token_id,
        )
    assert new_tok.bos_token_id == info.keep.index(tok.bos_token_id)


def test_word_level_tokenizer_and_untied_llama_trim_exactly():
    tok = word_level_tokenizer()
    model = llama(tok, tie=False)
    with torch.no_grad():
        before = model(**encode(tok, TEXTS)).logits
    model, new_tok, info = trim_vocabulary(model, tok, TEXTS)
    assert info.kept_size == 4 + len(set(KEPT_WORDS))
    with torch.no_grad():
        after = model(**encode(new_tok, TEXTS)).logits
    assert torch.equal(after, before[..., info.keep])
    assert new_tok.tokenize("the terrible film") == ["the", "<unk>", "film"]


# ------------------------------------------------------------------------------------------ dropped tokens


def test_wordpiece_dropped_word_is_spelled_with_character_pieces_and_unknown_stays_unk():
    tok = wordpiece_tokenizer()
    keep = choose_tokens(token_counts(tok, TEXTS), tok)
    new_tok = trim_tokenizer(tok, keep)
    assert tok.tokenize("a terrible film") == ["a", "terrible", "film"]
    assert new_tok.tokenize("a terrible film") == [
        "a",
        "t",
        "##e",
        "##r",
        "##r",
        "##i",
        "##b",
        "##l",
        "##e",
        "film",
    ]
    assert tok.tokenize("good x7 film") == new_tok.tokenize("good x7 film") == ["good", "[UNK]", "film"]
    without = trim_tokenizer(tok, choose_tokens(token_counts(tok, TEXTS), tok, keep_characters=False))
    assert without.tokenize("a terrible film") == ["a", "[UNK]", "film"]


def test_bpe_dropped_word_splits_into_kept_pieces_that_decode_to_the_same_text():
    tok = bpe_tokenizer()
    keep = choose_tokens(token_counts(tok, TEXTS), tok)
    new_tok = trim_tokenizer(tok, keep)
    text = "the awful, terrible plot ünïcødé"
    old_ids = tok(text, add_special_tokens=False)["input_ids"]
    new_ids = new_tok(text, add_special_tokens=False)["input_ids"]
    assert len(new_ids) > len(old_ids)  # the dropped words need more, shorter pieces
    assert new_tok.decode(new_ids) == tok.decode(old_ids) == text


def test_bpe_kept_tokens_stay_reachable_and_merges_only_use_kept_tokens():
    tok = bpe_tokenizer()
    tj = TokenizerJson(tok)
    keep = choose_tokens(token_counts(tok, TEXTS), tok)
    new_tok = trim_tokenizer(tok, keep)
    new = json.loads(new_tok.backend_tokenizer.to_str())["model"]
    vocab, merges = new["vocab"], [tuple(m) for m in new["merges"]]
    assert all(a in vocab and b in vocab and a + b in vocab for a, b in merges)
    made = {a + b for a, b in merges}
    old_made = {a + b for a, b in tj.merges}
    kept_strings = set(vocab)
    assert made == old_made & kept_strings  # every kept merge-made token still has its merge
    # order of the kept merges is the original rank order
    rank = {m: r for r, m in enumerate(tj.merges)}
    assert [rank[m] for m in merges] == sorted(rank[m] for m in merges)


def test_bpe_pairs_batches_padding_and_post_processor_use_the_new_ids():
    tok = bpe_tokenizer()
    keep = choose_tokens(token_counts(tok, TEXTS), tok)
    new_tok = trim_tokenizer(tok, keep)
    first, second = TEXTS[:4], TEXTS[4:8]
    old = tok(first, second, padding=True, return_token_type_ids=True)
    new = new_tok(first, second, padding=True, return_token_type_ids=True)
    assert [mapped(row, keep) for row in new["input_ids"]] == old["input_ids"]
    assert new["attention_mask"] == old["attention_mask"]
    assert new["token_type_ids"] == old["token_type_ids"]
    data = json.loads(new_tok.backend_tokenizer.to_str())
    assert data["padding"]["pad_id"] == new_tok.pad_token_id == keep.index(tok.pad_token_id)
    template = data["post_processor"]["processors"][1]["special_tokens"]
    assert template["<s>"]["ids"] == [new_tok.bos_token_id] and template["</s>"]["ids"] == [
        new_tok.eos_token_id
    ]
    assert new_tok.pad_token_id < tok.pad_token_id  # the specials sat after the dropped tokens: they moved
    backend_old = tok.backend_tokenizer.encode_batch(list(zip(first, second)))
    backend_new = new_tok.backend_tokenizer.encode_batch(list(zip(first, second)))
    assert [mapped(e.ids, keep) for e in backend_new] == [e.ids for e in backend_old]


def test_gpt2_tokenizer_class_is_kept_and_reloads_identically(tmp_path):
    tok = GPT2TokenizerFast(
        tokenizer_object=bpe_backend(), bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    tok.save_pretrained(tmp_path / "orig")
    tok = AutoTokenizer.from_pretrained(tmp_path / "orig")
    keep = choose_tokens(token_counts(tok, TEXTS), tok)
    new_tok = trim_tokenizer(tok, keep)
    assert type(new_tok) is type(tok) and type(tok).__name__ == "GPT2Tokenizer"
    assert (new_tok.bos_token, new_tok.eos_token, new_tok.pad_token) == ("<s>", "</s>", "<pad>")
    assert [mapped(new_tok(t)["input_ids"], keep) for t in TEXTS] == [tok(t)["input_ids"] for t in TEXTS]


def test_unigram_tokens_are_identical_and_dropped_words_split_into_pieces():
    tok = unigram_tokenizer()
    tj = TokenizerJson(tok)
    keep = choose_tokens(token_counts(tok, TEXTS), tok)
    assert tj.model_ids() == {tok.convert_tokens_to_ids("zzq")} and tj.model_ids() < set(keep)
    new_tok = trim_tokenizer(tok, keep)
    assert type(new_tok) is type(tok)
    assert [mapped(new_tok(t)["input_ids"], keep) for t in TEXTS] == [tok(t)["input_ids"] for t in TEXTS]
    assert tok.tokenize("the terrible film") == ["▁the", "▁terrible", "▁film"]
    # the sub-words er/ri/ble never occur in TEXTS, so they are dropped too: the word is spelled out
    assert new_tok.tokenize("the terrible film") == ["▁the", "▁", *"terrible", "▁film"]
    unknown = "good 7 film"  # no piece for "7": <unk> in both, with the same (unchanged) penalty
    assert mapped(new_tok(unknown)["input_ids"], keep) == tok(unknown)["input_ids"]
    assert new_tok.unk_token_id in new_tok(unknown)["input_ids"]
    assert new_tok.unk_token_id == keep.index(tok.unk_token_id)


# ------------------------------------------------------------------------------------------ save and load


def test_saved_classifier_and_tokenizer_load_with_auto_classes_alone(tmp_path):
    tok = wordpiece_tokenizer()
    model = tiny_bert(vocab=len(tok), layers=2).eval()
    model, new_tok, info = trim_vocabulary(model, tok, TEXTS)
    model.save_pretrained(tmp_path)
    new_tok.save_pretrained(tmp_path)
    loaded_tok = AutoTokenizer.from_pretrained(tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert type(loaded_tok) is type(tok) and len(loaded_tok) == info.kept_size
    assert (loaded_tok.cls_token, loaded_tok.mask_token, loaded_tok.do_lower_case) == (
        "[CLS]",
        "[MASK]",
        True,
    )
    assert encode(loaded_tok, TEXTS)["input_ids"].tolist() == encode(new_tok, TEXTS)["input_ids"].tolist()
    with torch.no_grad():
        assert torch.equal(loaded(**encode(loaded_tok, TEXTS)).logits, model(**encode(new_tok, TEXTS)).logits)


@pytest.mark.parametrize("arch", ["llama_untied", "gpt2"])
def test_saved_causal_lm_and_tokenizer_load_with_auto_classes_alone(tmp_path, arch):
    tok = bpe_tokenizer()
    model = gpt2(tok) if arch == "gpt2" else llama(tok, tie=False)
    model, new_tok, info = trim_vocabulary(model, tok, TEXTS)
    model.save_pretrained(tmp_path)
    new_tok.save_pretrained(tmp_path)
    loaded_tok = AutoTokenizer.from_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.config.vocab_size == info.kept_size
    assert loaded.generation_config.eos_token_id == loaded_tok.eos_token_id == new_tok.eos_token_id
    enc = encode(loaded_tok, TEXTS)
    assert enc["input_ids"].tolist() == encode(new_tok, TEXTS)["input_ids"].tolist()
    with torch.no_grad():
        assert torch.equal(loaded(**enc).logits, model(**enc).logits)


# ------------------------------------------------------------------------------------------ info, errors


def test_info_counts_coverage_and_dropped_tokens_by_hand():
    tok = wordpiece_tokenizer()
    texts = ["good good good film", "good acting"]
    counts = token_counts(tok, texts)
    model = tiny_bert(vocab=len(tok), layers=1)
    _, _, info = trim_vocabulary(model, tok, texts, top_n=6, keep_characters=False)
    # seen: [CLS] [SEP] good film acting; kept: 5 specials + good; dropped: film, acting (1 of 10 each)
    assert info.kept_size == 6 and info.seen_tokens == 5 and info.seen_dropped == 2
    assert counts.sum() == 10 and info.coverage == pytest.approx(0.8)
    assert info.to_dict()["dropped"] == len(tok) - 6 and "keep" not in info.to_dict()
    assert isinstance(info, VocabularyInfo)


def test_texts_without_real_tokens_are_rejected():
    tok = wordpiece_tokenizer()
    model = tiny_bert(vocab=len(tok), layers=1)
    for texts in ([], ["", " "]):
        with pytest.raises(DataError, match="no token beyond the special tokens"):
            trim_vocabulary(model, tok, texts)
    with pytest.raises(DataError, match="text 1 is float"):
        token_counts(tok, ["good", float("nan")])


def test_top_n_below_the_always_kept_tokens_is_rejected():
    tok = wordpiece_tokenizer()
    counts = token_counts(tok, TEXTS)
    with pytest.raises(ModelError, match=r"student.vocabulary.top_n=4 is smaller than the 5 tokens"):
        choose_tokens(counts, tok, top_n=4, keep_characters=False)
    with pytest.raises(ModelError, match=r"top_n=20 is smaller than the 57 tokens.*keep_characters false"):
        choose_tokens(counts, tok, top_n=20)


def test_slow_tokenizer_is_rejected(tmp_path):
    from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

    (tmp_path / "vocab.txt").write_text(
        "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good"]) + "\n"
    )
    slow = BertTokenizerLegacy(vocab_file=str(tmp_path / "vocab.txt"))
    with pytest.raises(ModelError, match="BertTokenizerLegacy, not a fast"):
        token_counts(slow, TEXTS)
    with pytest.raises(ModelError, match="not a fast"):
        trim_tokenizer(slow, [0, 1, 2])


def test_model_without_token_embeddings_is_rejected():
    from transformers import ViTConfig, ViTModel

    vit = ViTModel(
        ViTConfig(
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            image_size=8,
            patch_size=4,
        )
    )
    with pytest.raises(ModelError, match="ViTModel has no token embedding matrix"):
        trim_model(vit, [0, 1])
    with pytest.raises(ModelError, match="keep must be sorted"):
        trim_model(tiny_bert(vocab=40, layers=1), [3, 1])


def test_keep_that_drops_a_special_or_breaks_bpe_merges_is_rejected():
    tok = wordpiece_tokenizer()
    with pytest.raises(ModelError, match="drops the special token ids"):
        trim_tokenizer(tok, [0, 5, 6, 7, 8])
    bpe = bpe_tokenizer()
    tj = TokenizerJson(bpe)
    made = next(iter(tj.producers()))
    keep = sorted(tj.special_ids(bpe) | {made})
    with pytest.raises(ModelError, match="not closed under the BPE merges"):
        trim_tokenizer(bpe, keep)
