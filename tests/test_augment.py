"""Data augmentation (Tang et al. 2019 sec. 3.3; TinyBERT Algorithm 1); the lexicon is in test_lexicon.py.

Small hand-written lexicons, tokenizers and embedding matrices built here; a tiny BertForMaskedLM whose
predictions are set through its decoder bias. No network.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmdistill.data.augment import AugmentConfig, AugmentError, augment_texts, split_words
from lmdistill.data.augment_candidates import WordVocab, embedding_neighbours, mlm_candidates
from lmdistill.data.lexicon import PosLexicon
from lmdistill.errors import LmdistillError

from .conftest import bert_tokenizer

# ---------------------------------------------------------------------------------------------------
# fixtures

LEXICON = PosLexicon(
    {
        "NN": {"movie": 6, "film": 3, "plot": 1},
        "JJ": {"good": 2, "bad": 2},
        "VBD": {"was": 5, "seemed": 1},
        ",": {",": 4},
        "DT": {"the": 9},
    }
)
SOURCE = "the movie was good , the film was bad , the plot seemed good"


def _texts(n: int, seed: int = 0, length: int = 10) -> list[str]:
    rng = np.random.default_rng(seed)
    vocab = ["movie", "film", "plot", "good", "bad", "was", "seemed", "the"]
    return [" ".join(rng.choice(vocab, size=length)) for _ in range(n)]


@pytest.fixture
def tok(tmp_path):
    words = ["good", "great", "fine", "bad", "awful", "movie", "film", "play", "##ing", "##s", ",", ".", "so"]
    return bert_tokenizer(tmp_path, words=words)


def _mlm(tok, bias: dict[str, float]):
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=len(tok),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    model = BertForMaskedLM(cfg)
    with torch.no_grad():
        model.cls.predictions.bias.zero_()
        for token, value in bias.items():
            model.cls.predictions.bias[tok.convert_tokens_to_ids(token)] = value
    return model.train()


# ---------------------------------------------------------------------------------------------------
# determinism and bookkeeping


def test_same_seed_same_output_different_seed_different():
    texts = _texts(30)
    a = augment_texts(texts, copies=5, seed=3, lexicon=LEXICON)
    b = augment_texts(texts, copies=5, seed=3, lexicon=LEXICON)
    c = augment_texts(texts, copies=5, seed=4, lexicon=LEXICON)
    assert list(a) == list(b) and a.counts == b.counts
    assert list(a) != list(c)


def test_copies_of_a_text_depend_neither_on_other_texts_nor_on_the_copy_count():
    texts = _texts(6)

    def copies_of(i, out):
        return [t for j, t in out if j == i]

    first = augment_texts(texts[:1], copies=4, seed=1, lexicon=LEXICON, dedupe=False)
    three = augment_texts(texts[:3], copies=4, seed=1, lexicon=LEXICON, dedupe=False)
    other = augment_texts([texts[0], "a b c", "d e"], copies=4, seed=1, lexicon=LEXICON, dedupe=False)
    assert copies_of(0, first) == copies_of(0, three) == copies_of(0, other)
    more = augment_texts(texts[:3], copies=8, seed=1, lexicon=LEXICON, dedupe=False)
    for i in range(3):  # copies=4 are the first four of copies=8
        assert copies_of(i, three) == copies_of(i, more)[:4]


def test_dedupe_drops_unchanged_and_repeated_copies_and_counts_them():
    texts = _texts(20, length=3)
    out = augment_texts(texts, copies=10, seed=0, lexicon=LEXICON)
    assert out.counts["requested"] == 200 and out.counts["sources"] == 20
    assert out.counts["kept"] + out.counts["unchanged"] + out.counts["duplicate"] == 200
    assert out.counts["kept"] == len(out) and out.counts["unchanged"] > 0 and out.counts["duplicate"] > 0
    for i in range(20):
        copies = [t for j, t in out if j == i]
        assert texts[i] not in copies and len(set(copies)) == len(copies)
    everything = augment_texts(texts, copies=10, seed=0, lexicon=LEXICON, dedupe=False)
    assert len(everything) == 200 and [i for i, _ in everything] == [i for i in range(20) for _ in range(10)]


def test_empty_texts_pass_through():
    assert (
        augment_texts([], lexicon=LEXICON) == []
        and augment_texts([], lexicon=LEXICON).counts["requested"] == 0
    )
    out = augment_texts(["", "   ", "the movie"], copies=3, seed=0, lexicon=LEXICON, p_mask=0.5)
    assert {i for i, _ in out} <= {2} and out.counts["unchanged"] >= 6
    kept = augment_texts(["", "   "], copies=3, seed=0, lexicon=LEXICON, dedupe=False)
    assert list(kept) == [(0, ""), (0, ""), (0, ""), (1, ""), (1, ""), (1, "")]


# ---------------------------------------------------------------------------------------------------
# Tang et al. 2019 sec. 3.3


@pytest.mark.parametrize("p_mask", [0.1, 0.3])
def test_masking_rate_is_p_mask(p_mask):
    texts = _texts(400)  # 400 texts x 10 words x 5 copies = 20,000 words
    out = augment_texts(texts, method="mask", copies=5, seed=0, p_mask=p_mask, dedupe=False)
    words = [w for _, t in out for w in t.split()]
    assert len(words) == 20_000
    rate = words.count("[MASK]") / len(words)
    sd = (p_mask * (1 - p_mask) / len(words)) ** 0.5
    assert abs(rate - p_mask) < 5 * sd  # 0.0106 at p=0.1: a rate off by 0.02 fails


def test_tang_rules_exclude_each_other_at_their_rates():
    texts = _texts(300)
    out = augment_texts(
        texts, method="tang", copies=5, seed=2, lexicon=LEXICON, p_mask=0.2, p_pos=0.3, p_ng=0.0, dedupe=False
    )
    masked = replaced = total = 0
    for i, text in out:
        for src, new in zip(texts[i].split(), text.split(), strict=True):
            total += 1
            masked += new == "[MASK]"
            replaced += new not in (src, "[MASK]")
            if new not in (src, "[MASK]"):
                assert LEXICON.tag(new) == LEXICON.tag(src)
    # every word here has another word of its tag, except "the" (DT has one word): it is never replaced
    share_the = sum(t.split().count("the") for t in texts) / (len(texts) * 10)
    sd = (0.25 / total) ** 0.5
    assert abs(masked / total - 0.2) < 5 * sd
    assert abs(replaced / total - 0.3 * (1 - share_the)) < 5 * sd


def test_pos_replacement_keeps_the_tag_and_follows_the_unigram_counts():
    out = augment_texts([SOURCE], method="pos", copies=3000, seed=0, lexicon=LEXICON, p_pos=1.0, dedupe=False)
    src = SOURCE.split()
    plot = src.index("plot")
    for _, text in out:
        new = text.split()
        assert len(new) == len(src)
        for a, b in zip(src, new):
            if a in (",", "the"):  # punctuation tag; the only DT word
                assert b == a
            else:
                assert b != a and LEXICON.tag(b) == LEXICON.tag(a)
    picks = [text.split()[plot] for _, text in out]
    # P(w | NN, w != plot) = 6/9 movie, 3/9 film
    assert abs(picks.count("movie") / 3000 - 2 / 3) < 5 * (2 / 9 / 3000) ** 0.5
    assert picks.count("movie") + picks.count("film") == 3000


def test_pos_replacement_keeps_case_and_attached_punctuation_and_skips_unknown_words():
    out = augment_texts(
        ["(Plot), PLOT. xyzzy!"], method="pos", copies=50, seed=0, lexicon=LEXICON, p_pos=1.0, dedupe=False
    )
    for _, text in out:
        first, second, third = text.split()
        assert first in ("(Movie),", "(Film),") and second in ("MOVIE.", "FILM.") and third == "xyzzy!"


def test_ngram_sampling_returns_contiguous_pieces_of_length_1_to_5():
    src = [f"w{i}" for i in range(12)]
    out = augment_texts([" ".join(src)], method="ngram", copies=5000, seed=0, p_ng=1.0, dedupe=False)
    lengths, spans = [], set()
    for _, text in out:
        piece = text.split()
        start = src.index(piece[0])
        assert piece == src[start : start + len(piece)]
        lengths.append(len(piece))
        spans.add((start, len(piece)))
    assert set(lengths) == {1, 2, 3, 4, 5}
    assert spans == {(s, n) for n in range(1, 6) for s in range(12 - n + 1)}  # every start, the last included
    for n in range(1, 6):  # n uniform in {1..5}
        assert abs(lengths.count(n) / 5000 - 0.2) < 5 * (0.16 / 5000) ** 0.5
    short = augment_texts(["a b c"], method="ngram", copies=200, seed=0, p_ng=1.0, dedupe=False)
    assert {len(t.split()) for _, t in short} == {1, 2, 3}


def test_ngram_probability_zero_and_one():
    texts = _texts(50)
    none = augment_texts(texts, method="ngram", copies=3, seed=0, p_ng=0.0, dedupe=False)
    assert [t for _, t in none] == [t for t in texts for _ in range(3)]


def test_split_words_keeps_punctuation_attached():
    assert split_words("(Movie), it's  so-so!\n") == [
        ("(", "Movie", "),"),
        ("", "it's", ""),
        ("", "so-so", "!"),
    ]
    assert split_words("-- ...") == [("--", "", ""), ("...", "", "")]


def test_mask_token_comes_from_the_tokenizer(tok, tmp_path):
    out = augment_texts(
        ["good movie"], method="mask", copies=5, seed=0, tokenizer=tok, p_mask=1.0, dedupe=False
    )
    assert {t for _, t in out} == {"[MASK] [MASK]"}
    own = augment_texts(["good movie"], method="mask", copies=1, seed=0, p_mask=1.0, mask_token="<mask>")
    assert list(own) == [(0, "<mask> <mask>")]


# ---------------------------------------------------------------------------------------------------
# TinyBERT Algorithm 1: embedding neighbours


def _naive_neighbours(tok, emb: np.ndarray, word: str, k: int) -> list[str]:
    ids = tok(word, add_special_tokens=False)["input_ids"]
    q = emb[ids[0]]
    rows = []
    for i in range(len(tok)):
        t = tok.convert_ids_to_tokens(i)
        if i in tok.all_special_ids or t.startswith("##") or not t.isalpha() or t == word:
            continue
        cos = float(emb[i] @ q / (np.linalg.norm(emb[i]) * np.linalg.norm(q)))
        rows.append((-cos, i, t))
    return [t for _, _, t in sorted(rows)[:k]]


def test_embedding_neighbours_are_the_nearest_rows_by_cosine(tok):
    emb = np.zeros((len(tok), 3), dtype=np.float32)
    emb[:, 2] = 1.0
    row = {
        t: tok.convert_tokens_to_ids(t)
        for t in ["good", "great", "fine", "awful", "bad", "##ing", "[MASK]", ","]
    }
    emb[row["good"]] = [1, 0, 0]
    emb[row["great"]] = [0.9, 0.1, 0]  # cosine 0.994
    emb[row["awful"]] = [10, 8, 0]  # cosine 0.781, the largest dot product
    emb[row["fine"]] = [0.5, 0.5, 0]  # cosine 0.707
    emb[row["bad"]] = [-1, 0, 0]
    for other in ("##ing", "[MASK]", ","):  # identical to "good", never candidates
        emb[row[other]] = [1, 0, 0]
    table = embedding_neighbours(["good"], WordVocab(tok), torch.tensor(emb), 3)
    assert table == {"good": ["great", "awful", "fine"]}


def test_embedding_neighbours_match_a_naive_reference(tok):
    emb = np.random.default_rng(0).normal(size=(len(tok) + 3, 8)).astype(np.float32)  # 3 padding rows
    words = ["good", "great", "bad", "movie", "film", "so"]
    table = embedding_neighbours(words, WordVocab(tok), emb, 4, chunk=2)
    assert table == {w: _naive_neighbours(tok, emb, w, 4) for w in words}


def test_embedding_method_replaces_single_piece_words_by_their_neighbours(tok):
    emb = np.random.default_rng(1).normal(size=(len(tok), 8)).astype(np.float32)
    out = augment_texts(
        ["Good playing movie, xyzzy so"],
        method="embedding",
        copies=20,
        seed=0,
        tokenizer=tok,
        embeddings=torch.nn.Embedding.from_pretrained(torch.tensor(emb)),
        p_replace=1.0,
        top_k=2,
        dedupe=False,
    )
    near = {w: _naive_neighbours(tok, emb, w, 2) for w in ("good", "movie", "so")}
    seen = set()
    for _, text in out:
        a, b, c, d, e = text.split()
        assert a.lower() in near["good"] and a[0].isupper()
        assert (b, d) == ("playing", "xyzzy")  # multi-piece and unknown words are kept
        assert c[:-1] in near["movie"] and c.endswith(",") and e in near["so"]
        seen.add(c[:-1])
    assert seen == set(near["movie"])  # a uniform pick among the K


# ---------------------------------------------------------------------------------------------------
# TinyBERT Algorithm 1: masked-LM candidates


def test_mlm_candidates_are_the_masked_lms_top_k_whole_words(tok):
    bias = {"great": 100.0, "good": 95.0, "film": 90.0, "##ing": 200.0, "[SEP]": 200.0, ",": 200.0}
    model = _mlm(tok, bias)
    texts = [split_words("good movie , great"), split_words("so playing")]
    cands, _ = mlm_candidates(texts, model, tok, 2, batch_size=1)
    assert cands == [
        {0: ["great", "film"], 1: ["great", "good"], 3: ["good", "film"]},
        {0: ["great", "good"]},
    ]
    assert model.training  # mode restored
    batched, _ = mlm_candidates(texts, model, tok, 2, batch_size=64)
    assert batched == cands


def test_mlm_method_replaces_words_with_the_candidates(tok):
    model = _mlm(tok, {"great": 100.0, "good": 95.0, "film": 90.0})
    out = augment_texts(
        ["Good movie, so"],
        method="mlm",
        copies=40,
        seed=0,
        mlm=model,
        tokenizer=tok,
        p_replace=1.0,
        top_k=2,
        dedupe=False,
    )
    firsts = set()
    for _, text in out:
        a, b, c = text.split()
        assert a in ("Great", "Film") and b in ("great,", "good,") and c in ("great", "good")
        firsts.add(a)
    assert firsts == {"Great", "Film"}
    half = augment_texts(
        ["good movie so"] * 100,
        method="mlm",
        copies=2,
        seed=0,
        mlm=model,
        tokenizer=tok,
        p_replace=0.4,
        top_k=2,
        dedupe=False,
    )
    changed = sum(a != b for _, t in half for a, b in zip(["good", "movie", "so"], t.split()))
    assert abs(changed / 600 - 0.4) < 5 * (0.24 / 600) ** 0.5


def test_mlm_multi_piece_words_use_embedding_neighbours_when_given(tok):
    model = _mlm(tok, {"great": 100.0, "good": 95.0})
    emb = np.zeros((len(tok), 2), dtype=np.float32)
    emb[:, 1] = 1.0
    emb[tok.convert_tokens_to_ids("play")] = [1, 0]
    emb[tok.convert_tokens_to_ids("##ing")] = [1, 2]  # mean (1, 1): nearest is "fine"
    emb[tok.convert_tokens_to_ids("fine")] = [1, 1]
    emb[tok.convert_tokens_to_ids("movie")] = [1, 0.8]
    kept = augment_texts(
        ["playing good"],
        method="mlm",
        copies=5,
        seed=0,
        mlm=model,
        tokenizer=tok,
        p_replace=1.0,
        top_k=1,
        dedupe=False,
    )
    assert {t for _, t in kept} == {"playing great"}
    out = augment_texts(
        ["playing good"],
        method="mlm",
        copies=5,
        seed=0,
        mlm=model,
        tokenizer=tok,
        embeddings=emb,
        p_replace=1.0,
        top_k=1,
        dedupe=False,
    )
    assert {t for _, t in out} == {"fine great"}


def test_word_vocab_reads_byte_level_bpe_words():
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        ["the movie was good and the film was good"] * 20,
        vocab_size=300,
        min_frequency=1,
        special_tokens=["<s>", "</s>", "<pad>", "<mask>"],
    )
    tk = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        mask_token="<mask>",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
    )
    vocab = WordVocab(tk)
    assert vocab.style == "Ġ"
    movie = vocab.single_piece(vocab.encode([vocab.form("movie")])[0])
    assert movie is not None and vocab.surface[movie] == "movie"
    assert vocab.single_piece(vocab.encode([vocab.form("moviegood")])[0]) is None


# ---------------------------------------------------------------------------------------------------
# errors: one line, naming data.augment.<key>


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "tangg"}, r"data\.augment\.method: unknown method 'tangg' \(did you mean 'tang'\?\)"),
        ({"p_mask": 1.5}, r"data\.augment\.p_mask must be a probability in \[0, 1\], got 1\.5"),
        ({"p_ng": -0.1}, r"data\.augment\.p_ng must be a probability"),
        ({"p_replace": "0.4"}, r"data\.augment\.p_replace must be a probability"),
        (
            {"method": "tang", "p_mask": 0.6, "p_pos": 0.5},
            r"data\.augment\.p_mask \+ data\.augment\.p_pos must be <= 1",
        ),
        ({"copies": 0}, r"data\.augment\.copies must be an integer >= 1, got 0"),
        ({"top_k": 2.5}, r"data\.augment\.top_k must be an integer >= 1"),
        ({"seed": -1}, r"data\.augment\.seed must be a non-negative integer"),
        ({"p_masks": 0.1}, r"data\.augment: unknown key 'p_masks' \(did you mean 'p_mask'\?\)"),
    ],
)
def test_bad_settings_fail_in_one_line(kwargs, match):
    with pytest.raises(AugmentError, match=match) as err:
        augment_texts(["good movie"], lexicon=LEXICON, **kwargs)
    assert "\n" not in str(err.value) and isinstance(err.value, LmdistillError)


def test_missing_inputs_fail_in_one_line(tok):
    from .test_causal_lm import word_tokenizer

    cases = [
        (dict(method="pos"), r"method 'pos' needs a POS lexicon"),
        (
            dict(method="mask", tokenizer=word_tokenizer()),
            r"has no mask token; set data\.augment\.mask_token",
        ),
        (
            dict(method="embedding", tokenizer=tok),
            r"method 'embedding' needs the teacher's tokenizer= and embeddings=",
        ),
        (dict(method="mlm", tokenizer=tok), r"method 'mlm' needs mlm="),
        (
            dict(method="embedding", tokenizer=tok, embeddings=np.zeros(5)),
            r"embeddings must be a \(vocab, dim\) matrix",
        ),
    ]
    for kwargs, match in cases:
        with pytest.raises(AugmentError, match=match) as err:
            augment_texts(["good movie"], **kwargs)
        assert "\n" not in str(err.value)
    with pytest.raises(AugmentError, match=r"text 1 is a int, not a string"):
        augment_texts(["good", 3], method="mask")


def test_config_defaults_are_the_papers():
    cfg = AugmentConfig()
    assert (cfg.method, cfg.copies, cfg.p_mask, cfg.p_pos, cfg.p_ng, cfg.ngram_max) == (
        "tang",
        20,
        0.1,
        0.1,
        0.25,
        5,
    )
    assert (cfg.p_replace, cfg.top_k) == (0.4, 15)
    assert AugmentConfig.from_dict({"method": "mlm", "top_k": 3}).top_k == 3
