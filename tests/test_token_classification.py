"""task: token_classification: word-piece alignment, token-level KD, entity F1, the runs, the saved model in
transformers' token-classification pipeline, word-level KD across tokenizers, compress, and bad input."""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path

import pytest
import torch
import yaml

from lmdistill.cli import main
from lmdistill.errors import DataError

from .conftest import bert_tokenizer

FILL = ["went", "to", "the", "city", "with", "and", "today"]
PIECES = ["john", "##son", "mar", "##ia", "smith", "lon", "##don", "paris", "ber", "##lin"]
PEOPLE = [["johnson"], ["maria"], ["maria", "smith"]]
CITIES = [["london"], ["paris"], ["berlin"]]


def ner_rows(n: int, seed: int = 0) -> list[dict]:
    """Sentences 'PERSON went to CITY [today]' with BIO tags; johnson, maria, london, berlin are two pieces."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        per, loc, tail = rng.choice(PEOPLE), rng.choice(CITIES), rng.choice([[], ["today"]])
        words = per + ["went", "to"] + loc + tail
        tags = ["B-PER"] + ["I-PER"] * (len(per) - 1) + ["O", "O", "B-LOC"] + ["O"] * len(tail)
        rows.append({"tokens": words, "tags": tags})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def tiny_encoder(tok, seed: int = 0, layers: int = 4):
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    return BertModel(cfg)


@pytest.fixture(scope="module")
def ner(tmp_path_factory):
    """A base encoder (no head) with a word-piece tokenizer, NER data, and a teacher fine-tuned on it."""
    d = tmp_path_factory.mktemp("ner")
    tok = bert_tokenizer(d, FILL + PIECES)
    (d / "base").mkdir()
    tiny_encoder(tok).save_pretrained(d / "base")
    tok.save_pretrained(d / "base")
    data = write_jsonl(d / "train.jsonl", ner_rows(200))
    cfg = {
        "task": "token_classification",
        "seed": 0,
        "data": {"train": str(data), "max_length": 32},
        "model": {"name_or_path": str(d / "base")},
        "output_dir": str(d / "teacher"),
        "training": {"epochs": 3, "batch_size": 16, "learning_rate": 3e-3, "log_every": 5},
    }
    (d / "teacher.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["finetune", str(d / "teacher.yaml")]) == 0
    return {"dir": d, "tok": tok, "data": data, "teacher": d / "teacher" / "model", "cfg": cfg}


def distill_cfg(ner, out: Path, **extra) -> dict:
    cfg = {k: v for k, v in ner["cfg"].items() if k != "model"}
    cfg.update(output_dir=str(out), teacher={"name_or_path": str(ner["teacher"])}, student={"num_layers": 2})
    cfg.update(extra)
    return cfg


# --------------------------------------------------------------------------------------------- alignment


def _sentences(words, tags, names):
    from lmdistill.data.tokens import TaggedSentences

    return TaggedSentences([words], [[names.index(t) for t in tags]])


NAMES = ["B-LOC", "B-PER", "I-LOC", "I-PER", "O"]


def test_first_piece_carries_the_tag_and_the_others_are_ignored(ner):
    from lmdistill.data.tokens import align

    tok = ner["tok"]
    words, tags = ["johnson", "went", "to", "london"], ["B-PER", "O", "O", "B-LOC"]
    out = align(tok, _sentences(words, tags, NAMES), 32, "first", NAMES)
    pieces = tok.convert_ids_to_tokens(out["input_ids"][0])
    assert pieces == ["[CLS]", "john", "##son", "went", "to", "lon", "##don", "[SEP]"]
    b_per, b_loc, o = NAMES.index("B-PER"), NAMES.index("B-LOC"), NAMES.index("O")
    assert out["labels"][0] == [-100, b_per, -100, o, o, b_loc, -100, -100]
    assert out["words"][0] == [1, 3, 4, 5]


def test_all_pieces_carry_the_tag_and_b_continues_as_i(ner):
    from lmdistill.data.tokens import align

    out = align(ner["tok"], _sentences(["johnson", "london"], ["B-PER", "B-LOC"], NAMES), 32, "all", NAMES)
    i = NAMES.index
    assert out["labels"][0] == [-100, i("B-PER"), i("I-PER"), i("B-LOC"), i("I-LOC"), -100]
    pos = ["NN", "VB"]  # no I- tags: later pieces keep the word's tag
    out = align(ner["tok"], _sentences(["johnson", "went"], ["NN", "VB"], pos), 32, "all", pos)
    assert out["labels"][0] == [-100, 0, 0, 1, -100]


def test_words_cut_by_max_length_have_no_position(ner):
    from lmdistill.data.tokens import align

    words, tags = ["johnson", "went", "to", "london"], ["B-PER", "O", "O", "B-LOC"]
    out = align(ner["tok"], _sentences(words, tags, NAMES), 5, "first", NAMES)  # [CLS] john ##son went [SEP]
    assert out["words"][0] == [1, 3, -1, -1]


# --------------------------------------------------------------------------------------------- the loss


def _naive_kd(student, teacher, keep, t):
    """T^2 * KL(softmax(teacher/T) || softmax(student/T)) averaged over the kept positions, one at a time."""
    values = []
    for b in range(student.shape[0]):
        for j in range(student.shape[1]):
            if keep[b][j]:
                p = torch.softmax(teacher[b, j] / t, -1)
                q = torch.softmax(student[b, j] / t, -1)
                values.append(float((p * (p.log() - q.log())).sum()) * t * t)
    return sum(values) / len(values)


def test_token_kd_is_the_mean_over_labelled_pieces_of_a_naive_loop():
    from lmdistill.signals.live import TeacherSignal
    from lmdistill.tasks.token_classification import TokenObjective

    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(3, 7, 5, generator=g), torch.randn(3, 7, 5, generator=g)
    labels = torch.randint(0, 5, (3, 7), generator=g).masked_fill(torch.rand(3, 7, generator=g) < 0.5, -100)
    obj = TokenObjective({"kd": 1.0}, temperature=2.0)
    out = type("Out", (), {"logits": student})()
    kd = obj(out, TeacherSignal(logits=teacher), {"labels": labels})["kd"]
    assert math.isclose(float(kd), _naive_kd(student, teacher, (labels != -100).tolist(), 2.0), rel_tol=1e-5)


def test_cross_tokenizer_kd_compares_each_words_first_pieces():
    from lmdistill.signals.live import TeacherSignal
    from lmdistill.tasks.token_classification import TokenObjective

    g = torch.Generator().manual_seed(1)
    student, teacher = torch.randn(2, 6, 4, generator=g), torch.randn(2, 9, 4, generator=g)
    s_words = torch.tensor([[1, 2, 4, -1], [1, 3, -1, -1]])
    t_words = torch.tensor([[1, 3, 5, -1], [2, 4, 7, -1]])  # word 2 of sentence 2: cut on the student's side
    batch = {
        "student_words": s_words,
        "teacher_words": t_words,
        "labels": torch.zeros(2, 6, dtype=torch.long),
    }
    out = type("Out", (), {"logits": student})()
    kd = TokenObjective({"kd": 1.0}, temperature=1.0)(out, TeacherSignal(logits=teacher), batch)["kd"]
    pairs = [(0, 1, 1), (0, 2, 3), (0, 4, 5), (1, 1, 2), (1, 3, 4)]  # (sentence, student pos, teacher pos)
    s = torch.stack([student[b, i] for b, i, _ in pairs])[None]
    t = torch.stack([teacher[b, j] for b, _, j in pairs])[None]
    assert math.isclose(float(kd), _naive_kd(s, t, [[True] * len(pairs)], 1.0), rel_tol=1e-5)


# --------------------------------------------------------------------------------------------- metrics


def test_entity_spans_and_micro_f1_against_a_hand_count():
    from lmdistill.tasks.metrics import entities, entity_counts, entity_scores

    assert entities(["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-ORG", "I-ORG", "O"]) == {
        ("PER", 0, 1),
        ("LOC", 3, 3),
        ("LOC", 4, 4),
        ("ORG", 5, 6),  # an I- after another type starts a span (conlleval, seqeval's default mode)
    }
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O", "B-PER"], ["O", "O"]]
    pred = [["B-PER", "I-PER", "O", "O"], ["B-ORG", "O", "B-LOC"], ["B-LOC", "O"]]
    # gold spans: PER(0-1), LOC(3), ORG(0), PER(2) = 4; predicted: PER(0-1), ORG(0), LOC(2), LOC(0) = 4;
    # exact matches: PER(0-1), ORG(0) = 2 -> precision 2/4, recall 2/4, F1 0.5
    counts = entity_counts(gold, pred)
    assert counts.tolist() == [[1, 1, 2], [1, 2, 2], [0, 1, 0]]
    assert entity_scores(counts) == {"entity_precision": 0.5, "entity_recall": 0.5, "entity_f1": 0.5}
    wrong_end = entity_counts([["B-PER", "I-PER"]], [["B-PER", "O"]])  # a span must match exactly
    assert entity_scores(wrong_end)["entity_f1"] == 0.0


def test_tags_decide_the_headline_metric(tmp_path):
    from lmdistill.data.tokens import is_bio
    from lmdistill.errors import ConfigError
    from lmdistill.tasks import get_task, load_config

    assert is_bio(["O", "B-PER", "I-PER"]) and not is_bio(["NN", "VB"]) and not is_bio(["O", "I-PER"])
    base = {"task": "token_classification", "data": {"train": "x.jsonl"}}
    cfg = load_config({**base, "data": {"train": "x.jsonl", "label_names": ["O", "B-PER", "I-PER"]}})
    assert (cfg.tokens.metric, cfg.training.metric_for_best) == ("entity_f1", "entity_f1")
    cfg = load_config({**base, "data": {"train": "x.jsonl", "label_names": ["NN", "VB"]}})
    assert (cfg.tokens.metric, cfg.training.metric_for_best) == ("accuracy", "accuracy")
    cfg = load_config({**base, "tokens": {"metric": "entity_f1"}})
    with pytest.raises(ConfigError, match="tokens.metric: entity metrics need BIO / IOB2 tags"):
        get_task("token_classification").headline(cfg, entity=False)


# --------------------------------------------------------------------------------------------- data files


def test_conll_files_are_read_word_and_last_column(tmp_path):
    from lmdistill.config.schema import DataConfig, TokensConfig
    from lmdistill.data.tokens import load_token_data

    (tmp_path / "train.conll").write_text(
        "-DOCSTART- -X- O O\n\nJohn NNP B-NP B-PER\nwent VBD B-VP O\n\nParis NNP B-NP B-LOC\n.  . O O\n"
    )
    d = DataConfig(train=str(tmp_path / "train.conll"), validation_size=0.0, test_size=0.0)
    data = load_token_data(d, TokensConfig(), 0)
    train = data.splits["train"]
    assert train.words == [["John", "went"], ["Paris", "."]]
    assert data.label_names == ["B-LOC", "B-PER", "O"]
    assert train.tags == [[1, 2], [0, 2]]


def cli_error(tmp_path, capsys, verb: str, cfg: dict) -> str:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    capsys.readouterr()
    assert main([verb, str(path)]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert "Traceback" not in err and len(lines) == 1, err
    return lines[0]


def test_a_tag_line_without_a_tag_is_one_line_exit_2(tmp_path, capsys, ner):
    (tmp_path / "bad.conll").write_text("John B-PER\nwent O\nParis\n")
    cfg = {**ner["cfg"], "data": {"train": str(tmp_path / "bad.conll")}, "output_dir": str(tmp_path / "o")}
    line = cli_error(tmp_path, capsys, "finetune", cfg)
    assert "data.train: line 3 of" in line and "has a word but no tag ('Paris')" in line


def test_a_tag_outside_the_label_names_is_one_line_exit_2(tmp_path, capsys, ner):
    data = {"train": str(ner["data"]), "label_names": ["O", "B-PER", "I-PER"]}
    cfg = {**ner["cfg"], "data": data, "output_dir": str(tmp_path / "o")}
    line = cli_error(tmp_path, capsys, "finetune", cfg)
    assert re.search(
        r"data.label_names: tag 'B-LOC' of row \d+ of the train data \(word 3\) is not among", line
    )
    assert "data.label_names (O, B-PER, I-PER)" in line


def test_tag_names_are_the_tags_of_every_split_and_rows_are_named_by_their_file_row():
    import pandas as pd

    from lmdistill.config.schema import DataConfig, TokensConfig
    from lmdistill.data.tables import numbered
    from lmdistill.data.tokens import build_tagged

    train = pd.DataFrame({"tokens": [["a", "b"], ["c"]], "tags": [["NN", "VB"], ["NN"]]})
    test = pd.DataFrame({"tokens": [["d"]], "tags": [["SYM"]]})  # a tag only the test split has
    data = build_tagged({"train": train, "test": test}, DataConfig(), TokensConfig())
    assert data.label_names == ["NN", "SYM", "VB"] and data.splits["test"].tags == [[1]]
    bad = numbered({"train": pd.DataFrame({"tokens": [["a"], ["b", "c"]], "tags": [["NN"], ["NN"]]})})
    carved = {"train": bad["train"].iloc[[1, 0]].reset_index(drop=True)}  # as a shuffle leaves it
    with pytest.raises(DataError, match=r"tokens: row 1 of the train data has 2 words and 1 tags"):
        build_tagged(carved, DataConfig(), TokensConfig())


# --------------------------------------------------------------------------------------------- runs


def test_distilled_student_tags_in_the_pipeline_and_evaluates_again(ner, tmp_path, capsys):
    from transformers import pipeline

    from lmdistill.tasks.token_classification import TokenClassificationTask

    cfg = distill_cfg(ner, tmp_path / "student")
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["distill", str(tmp_path / "s.yaml")]) == 0
    res = json.loads((tmp_path / "student" / "results.json").read_text())
    assert res["headline_metric"] == "entity_f1" and list(res["test"])[0] == "entity_f1"
    assert set(res["loss_terms"]) == {"kd", "ce"}
    model_dir = tmp_path / "student" / "model"
    net, tok = TokenClassificationTask().load_saved(model_dir)
    assert net.config.id2label == dict(enumerate(res["label_names"]))
    text = "maria smith went to berlin today"
    enc = tok(text, return_tensors="pt")
    with torch.no_grad():
        ids = net(**enc).logits.argmax(-1)[0].tolist()
    expected = {i: net.config.id2label[t] for i, t in enumerate(ids) if net.config.id2label[t] != "O"}
    expected = {i: t for i, t in expected.items() if enc.word_ids()[i] is not None}
    found = {e["index"]: e["entity"] for e in pipeline("token-classification", model=str(model_dir))(text)}
    assert found == expected and found  # the pipeline's tags are the model's own
    # word level, as trained (first piece): each word's tag is its first piece's, words come back whole
    words = pipeline("token-classification", model=str(model_dir), aggregation_strategy="first")(text)
    assert words
    for g in words:
        s, e = g["start"], g["end"]
        assert text[s:e] == g["word"] and text[s - 1 : s] in ("", " ") and text[e : e + 1] in ("", " ")
    capsys.readouterr()
    assert main(["evaluate", str(model_dir), "--config", str(tmp_path / "s.yaml")]) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again == pytest.approx(res["test"])


def test_word_level_distillation_across_tokenizers(ner, tmp_path, monkeypatch):
    """A student whose tokenizer has other ids (all beyond the teacher's vocabulary) and another segmentation
    (johnson and london whole): each model reads its own pieces, KD pairs their words' first pieces."""
    from lmdistill.errors import ModelError
    from lmdistill.signals.live import LiveTeacher

    student_dir = tmp_path / "bert"
    student_dir.mkdir()
    words = (
        [f"unused{i}" for i in range(40)] + FILL + ["johnson", "maria", "smith", "london", "paris", "berlin"]
    )
    tok = bert_tokenizer(student_dir, words)
    tiny_encoder(tok, seed=3, layers=2).save_pretrained(student_dir)
    tok.save_pretrained(student_dir)
    teacher_vocab = len(ner["tok"])
    assert min(tok.convert_tokens_to_ids(FILL)) >= teacher_vocab
    seen = []
    real = LiveTeacher.__call__

    def spy(self, batch):
        seen.append(batch)
        return real(self, batch)

    monkeypatch.setattr(LiveTeacher, "__call__", spy)
    cfg = distill_cfg(
        ner, tmp_path / "student", student={"init": "pretrained", "name_or_path": str(student_dir)}
    )
    cfg["training"] = {**cfg["training"], "epochs": 2}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["distill", str(tmp_path / "s.yaml")]) == 0
    batch = seen[0]
    assert (
        int(batch["teacher"]["input_ids"].max())
        < teacher_vocab
        <= int(batch["student"]["input_ids"][batch["student"]["input_ids"] > 4].min())
    )
    first = tok.convert_ids_to_tokens(batch["student"]["input_ids"][0][batch["student_words"][0][0]].item())
    t_first = ner["tok"].convert_ids_to_tokens(
        batch["teacher"]["input_ids"][0][batch["teacher_words"][0][0]].item()
    )
    assert first in ("johnson", "maria") and t_first in ("john", "mar")  # word 0: one piece vs two
    res = json.loads((tmp_path / "student" / "results.json").read_text())
    assert res["test"]["accuracy"] > 0.5
    from lmdistill.api import distill

    with pytest.raises(
        ModelError, match=r"distill.matches: feature 'hidden' is token-level and needs teacher"
    ):
        distill({**cfg, "distill": {"matches": [{"feature": "hidden"}]}}, overwrite=True)


def test_teacher_cache_serves_token_logits(ner, tmp_path):
    from lmdistill.api import distill

    live = distill(distill_cfg(ner, tmp_path / "live", training={**ner["cfg"]["training"], "max_steps": 4}))
    cached = distill(
        distill_cfg(
            ner,
            tmp_path / "cached",
            training={**ner["cfg"]["training"], "max_steps": 4, "teacher_cache": "auto"},
        )
    )
    assert (tmp_path / "cached" / "teacher_cache").is_dir()
    first = [r for r in live.history if "loss/kd" in r][0]["loss/kd"]
    first_cached = [r for r in cached.history if "loss/kd" in r][0]["loss/kd"]
    assert first_cached == pytest.approx(first, rel=2e-2)  # the same targets, stored in 16 bits


def test_compress_token_classification_end_to_end(ner, tmp_path):
    cfg = distill_cfg(ner, tmp_path / "run")
    cfg.pop("teacher")
    cfg["model"] = {"name_or_path": str(ner["dir"] / "base")}
    cfg["training"] = {**cfg["training"], "epochs": 2}
    cfg["report"] = {
        "latency_repeats": 2,
        "warmup": 1,
        "speed_texts": 16,
        "bootstrap_resamples": 100,
        "energy": False,
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["compress", str(tmp_path / "c.yaml")]) == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert set(report["models"]) == {"teacher", "student", "baseline"}
    assert report["primary_metric"] == "entity_f1"  # the data's headline (BIO tags), not the class default
    for entry in report["models"].values():
        assert list(entry["metrics"])[0] == "entity_f1"
        for m in entry["metrics"].values():
            assert m["low"] <= m["value"] <= m["high"]
    compared = [(c["a"], c["b"], c["metric"]) for c in report["comparisons"]]
    assert compared == [
        ("student", "baseline", m) for m in ["entity_f1", "accuracy"]
    ]  # paired over the same test examples
    for c in report["comparisons"]:
        assert c["difference"]["low"] <= c["difference"]["value"] <= c["difference"]["high"]
    assert json.loads((tmp_path / "run" / "baseline" / "results.json").read_text())["loss_terms"] == ["ce"]
    card = (tmp_path / "run" / "student" / "model" / "README.md").read_text()
    assert 'pipeline("token-classification"' in card


def test_a_teacher_whose_label_names_differ_from_the_data_is_one_line():
    """Shared by classification and token classification: other names or another order is refused; generic
    LABEL_i names and no names (regression) pass."""
    from lmdistill.errors import ModelError
    from lmdistill.tasks.base import refuse_other_label_names

    refuse_other_label_names(["LABEL_0", "LABEL_1"], ["neg", "pos"], "labels")
    refuse_other_label_names([], ["x"], "labels")
    refuse_other_label_names(["neg", "pos"], ["neg", "pos"], "labels")
    with pytest.raises(ModelError) as err:
        refuse_other_label_names(["pos", "neg"], ["neg", "pos"], "labels")
    assert str(err.value) == (
        "teacher.name_or_path: the teacher's labels ['pos', 'neg'] differ from the data's ['neg', 'pos']; "
        "set data.label_names to the teacher's order"
    )
    with pytest.raises(ModelError, match=r"tags \['B-1'\] differ from the data's \['O'\]"):
        refuse_other_label_names([f"B-{i}" for i in range(1, 9)], ["O"] * 8, "tags", shown=1)


def test_a_sweep_compares_entity_f1_paired_over_seeds_and_sentences(ner, tmp_path):
    """The leaderboard's paired difference for entity F1 (a ratio of sums, not a mean over sentences): each
    seed's per-sentence 2 TP and predicted + gold entities of both variants, resampled together."""
    import numpy as np

    from lmdistill.report.seeds import seed_example_sets_bootstrap

    cfg = distill_cfg(ner, tmp_path / "sweep")
    cfg["training"] = {**cfg["training"], "epochs": 1, "max_steps": 3}
    cfg["sweep"] = {"grid": {"distill.temperature": [1.0, 4.0]}, "seeds": [1, 2], "latency": False,
                    "bootstrap_resamples": 200}  # fmt: skip
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["sweep", str(tmp_path / "s.yaml")]) == 0
    out = tmp_path / "sweep"
    board = json.loads((out / "leaderboard.json").read_text())
    row = next(r for r in board["rows"] if r.get("diff") is not None)
    cols = {
        v: [json.loads((out / v / f"seed-{s}.scores.json").read_text()) for s in (1, 2)]
        for v in ("temperature=1.0", "temperature=4.0")
    }
    assert {x["kind"] for xs in cols.values() for x in xs} == {"ratio"}
    a, b = ([{k: np.asarray(c) for k, c in x["columns"].items()} for x in cols[v]]
            for v in (row["variant"], board["reference"]))  # fmt: skip
    f1 = lambda c: c["num"].sum(-1) / c["den"].sum(-1)  # noqa: E731
    for x, v in zip(a, [x["value"] for x in cols[row["variant"]]]):
        assert f1({k: c[None] for k, c in x.items()})[0] == pytest.approx(v)  # the run's entity F1
    ci = seed_example_sets_bootstrap(f1, a, b, same_examples=True, n_resamples=200)
    assert (row["diff"], row["diff_low"], row["diff_high"]) == pytest.approx((ci.point, ci.low, ci.high))


# --------------------------------------------------------------------------------------------- mutual learning


def test_mutual_term_of_token_students_counts_only_the_labelled_pieces():
    """Deep mutual learning between two token classifiers: each student's mutual term is the KD term with the
    other student's logits as the target, over the labelled pieces only (the same naive loop as KD)."""
    from types import SimpleNamespace

    from lmdistill.mutual import MutualObjective
    from lmdistill.tasks.token_classification import TokenObjective

    g = torch.Generator().manual_seed(4)
    a, b = torch.randn(3, 7, 5, generator=g), torch.randn(3, 7, 5, generator=g)
    labels = torch.randint(0, 5, (3, 7), generator=g).masked_fill(torch.rand(3, 7, generator=g) < 0.5, -100)
    obj = MutualObjective([TokenObjective({"ce": 1.0}, temperature=2.0) for _ in range(2)], 1.0)
    terms = obj([SimpleNamespace(logits=a), SimpleNamespace(logits=b)], None, {"labels": labels})
    keep = (labels != -100).tolist()
    assert math.isclose(float(terms["student_0/mutual"]), _naive_kd(a, b, keep, 2.0), rel_tol=1e-5)
    assert math.isclose(float(terms["student_1/mutual"]), _naive_kd(b, a, keep, 2.0), rel_tol=1e-5)


def test_two_token_classifiers_learn_from_each_other_end_to_end(ner, tmp_path):
    from transformers import AutoModelForTokenClassification

    from lmdistill import api

    cfg = {k: v for k, v in ner["cfg"].items()}
    cfg.update(output_dir=str(tmp_path / "mutual"), mutual={"students": 2, "weight": 0.5})
    cfg["training"] = {**cfg["training"], "epochs": 1, "max_steps": 6}
    out = api.finetune(cfg).output_dir
    res = json.loads((out / "results.json").read_text())
    assert set(res["loss_terms"]) == {"student_0/ce", "student_0/mutual", "student_1/ce", "student_1/mutual"}
    for split in ("validation", "test"):
        mean = (res[split]["student_0/entity_f1"] + res[split]["student_1/entity_f1"]) / 2
        assert res[split]["entity_f1"] == pytest.approx(mean)
    heads = [
        AutoModelForTokenClassification.from_pretrained(out / "model" / f"student_{i}") for i in range(2)
    ]
    assert [m.config.id2label for m in heads] == [heads[0].config.id2label] * 2
    assert set(heads[0].config.id2label.values()) == {"B-LOC", "B-PER", "I-PER", "O"}  # the data's tags
    assert not torch.equal(heads[0].classifier.weight, heads[1].classifier.weight)  # seeded apart
