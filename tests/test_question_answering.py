"""task: question_answering: windows with a stride, start / end KD and CE against naive loops, the best span
across windows, the no-answer score, SQuAD exact match and F1, the runs (finetune, distill, evaluate, compress)
on a small set built here from real sentences, answers of the saved model, and bad input."""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from lmdistill.cli import main

from .conftest import bert_tokenizer

# Real sentences (encyclopaedic facts); each question's answer is a span of its sentence.
FACTS = [
    ("The Danube flows through Vienna and Budapest before it reaches the Black Sea.", "Which sea does the Danube reach?", "the Black Sea"),
    ("Marie Curie was born in Warsaw in 1867.", "Where was Marie Curie born?", "Warsaw"),
    ("The Eiffel Tower was completed in 1889 for the world fair in Paris.", "When was the Eiffel Tower completed?", "1889"),
    ("Mount Everest stands on the border between Nepal and China.", "Which countries does Mount Everest stand between?", "Nepal and China"),
    ("Penicillin was discovered by Alexander Fleming in London in 1928.", "Who discovered penicillin?", "Alexander Fleming"),
    ("Johannes Gutenberg built a printing press in Mainz around 1440.", "Where did Gutenberg build a printing press?", "Mainz"),
    ("The Pacific is the largest and deepest ocean on Earth.", "Which ocean is the largest?", "The Pacific"),
    ("Ludwig van Beethoven wrote nine symphonies.", "How many symphonies did Beethoven write?", "nine"),
]  # fmt: skip


def vocabulary() -> list[str]:
    words = set()
    for row in FACTS:
        for text in row:
            words.update(text.lower().replace(".", " . ").replace("?", " ? ").split())
    return sorted(words)


def qa_rows(n: int, seed: int = 0, unanswerable: float = 0.0) -> list[dict]:
    """Contexts of 3-4 real sentences; the question asks about one of them, or (a share ``unanswerable``)
    about a sentence left out of the context: no answer (SQuAD 2.0)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        target, *others = rng.sample(range(len(FACTS)), 4)
        absent = rng.random() < unanswerable
        sentences = others if absent else [target, *others[: rng.randint(2, 3)]]
        rng.shuffle(sentences)
        context = " ".join(FACTS[i][0] for i in sentences)
        sentence, question, text = FACTS[target]
        answers = {"text": [], "answer_start": []}
        if not absent:
            answers = {"text": [text], "answer_start": [context.index(sentence) + sentence.index(text)]}
        rows.append({"question": question, "context": context, "answers": answers})
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
def squad(tmp_path_factory):
    """A base encoder (no head), a word-piece tokenizer over the sentences, data, and a fine-tuned teacher."""
    d = tmp_path_factory.mktemp("qa")
    tok = bert_tokenizer(d, vocabulary())
    (d / "base").mkdir()
    tiny_encoder(tok).save_pretrained(d / "base")
    tok.save_pretrained(d / "base")
    data = write_jsonl(d / "train.jsonl", qa_rows(160, unanswerable=0.2))
    cfg = {
        "task": "question_answering",
        "seed": 0,
        "data": {"train": str(data), "max_length": 40},
        "qa": {"stride": 10},
        "model": {"name_or_path": str(d / "base")},
        "output_dir": str(d / "teacher"),
        "training": {"epochs": 3, "batch_size": 16, "learning_rate": 3e-3, "log_every": 10},
    }
    (d / "teacher.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["finetune", str(d / "teacher.yaml")]) == 0
    return {"dir": d, "tok": tok, "data": data, "teacher": d / "teacher" / "model", "cfg": cfg}


def distill_cfg(squad, out: Path, **extra) -> dict:
    cfg = {k: v for k, v in squad["cfg"].items() if k != "model"}
    cfg.update(
        output_dir=str(out), teacher={"name_or_path": str(squad["teacher"])}, student={"num_layers": 2}
    )
    cfg.update(extra)
    return cfg


# --------------------------------------------------------------------------------------------- windows


def test_windows_overlap_by_the_stride_and_point_at_the_answer_or_cls(squad):
    from lmdistill.config.schema import QAConfig
    from lmdistill.data.qa import QAExamples, make_windows

    tok = squad["tok"]
    context = " ".join(f[0] for f in FACTS[:4])
    sentence, question, text = FACTS[3]
    start = context.index(text)
    ex = QAExamples([question], [context], [[(text, start)]])
    w = make_windows(tok, ex, 32, QAConfig(stride=6), "train")
    assert len(w) >= 3 and w.example == [0] * len(w)
    spans = [[o for o in offs if o is not None] for offs in w.offsets]
    for a, b in zip(spans, spans[1:]):  # consecutive windows share exactly `stride` context tokens
        assert a[-6:] == b[:6]
    assert spans[0][0][0] == 0 and spans[-1][-1][1] == len(context.rstrip())
    holding = [i for i in range(len(w)) if w.starts[i] != w.cls[i]]
    assert holding  # the answer lies whole in some window
    for i in range(len(w)):
        if i in holding:
            s, e = w.offsets[i][w.starts[i]][0], w.offsets[i][w.ends[i]][1]
            assert context[s:e] == text
        else:
            assert w.starts[i] == w.ends[i] == w.cls[i] == 0
            inside = spans[i]
            assert inside[0][0] > start or inside[-1][1] < start + len(text)  # it does not hold all of it


def test_stride_zero_keeps_one_window_per_question(squad):
    from lmdistill.config.schema import QAConfig
    from lmdistill.data.qa import QAExamples, make_windows

    sentence, question, text = FACTS[1]
    ex = QAExamples([question], [sentence], [[(text, sentence.index(text))]])
    w = make_windows(squad["tok"], ex, 40, QAConfig(stride=0), "train")
    assert len(w) == 1
    assert squad["tok"].decode(w.inputs["input_ids"][0][w.starts[0] : w.ends[0] + 1]) == "warsaw"


# --------------------------------------------------------------------------------------------- the loss


def _naive_kl(p_logits, q_logits, t):
    p, q = torch.softmax(p_logits / t, -1), torch.softmax(q_logits / t, -1)
    return float((p * (p.log() - q.log())).sum()) * t * t


def _batch(g):
    allowed = torch.rand(3, 9, generator=g) < 0.6
    allowed[:, 0] = True  # the CLS
    starts = torch.tensor([0, 2, 5])
    ends = torch.tensor([0, 4, 5])
    allowed[1, 2:5] = allowed[2, 5] = True
    return {"context_mask": allowed, "start_positions": starts, "end_positions": ends}


def test_span_kd_is_the_mean_of_start_and_end_kd_over_context_and_cls_positions():
    from lmdistill.signals.live import TeacherSignal
    from lmdistill.tasks.question_answering import SpanObjective

    g = torch.Generator().manual_seed(0)
    batch = _batch(g)
    s_start, s_end, teacher = (
        torch.randn(3, 9, generator=g),
        torch.randn(3, 9, generator=g),
        torch.randn(3, 9, 2, generator=g),
    )
    out = type("Out", (), {"start_logits": s_start, "end_logits": s_end})()
    kd = SpanObjective({"kd": 1.0}, temperature=2.0)(out, TeacherSignal(logits=teacher), batch)["kd"]
    values = []
    for b in range(3):
        keep = batch["context_mask"][b]  # the distributions are over the allowed positions only
        start = _naive_kl(teacher[b, keep, 0], s_start[b, keep], 2.0)
        end = _naive_kl(teacher[b, keep, 1], s_end[b, keep], 2.0)
        values.append((start + end) / 2)
    assert math.isclose(float(kd), sum(values) / 3, rel_tol=1e-5)


def test_span_ce_is_the_mean_of_start_and_end_cross_entropy_over_allowed_positions():
    from lmdistill.tasks.question_answering import SpanObjective

    g = torch.Generator().manual_seed(1)
    batch = _batch(g)
    s_start, s_end = torch.randn(3, 9, generator=g), torch.randn(3, 9, generator=g)
    out = type("Out", (), {"start_logits": s_start, "end_logits": s_end})()
    ce = SpanObjective({"ce": 1.0})(out, None, batch)["ce"]
    values = []
    for b in range(3):
        keep = batch["context_mask"][b].nonzero().squeeze(-1).tolist()
        for logits, gold in (
            (s_start[b], batch["start_positions"][b]),
            (s_end[b], batch["end_positions"][b]),
        ):
            log_p = torch.log_softmax(logits[keep], -1)
            values.append(-float(log_p[keep.index(int(gold))]) / 2)
    assert math.isclose(float(ce), sum(values) / 3, rel_tol=1e-5)


# --------------------------------------------------------------------------------------------- post-processing


CONTEXT = "alpha beta gamma delta epsilon"
OFFSETS = [  # window 1: CLS, a question token, alpha beta gamma; window 2: CLS, a question token, gamma delta epsilon
    [None, None, (0, 5), (6, 10), (11, 16)],
    [None, None, (11, 16), (17, 22), (23, 30)],
]


def _windows(cls1=(0.0, 0.0), cls2=(1.0, 1.0)):
    """Start / end logits: the question tokens score 9 + 9 (not context: skipped); in window 2 epsilon's start
    + delta's end is 11 (end before start: invalid); the best valid span is gamma..delta, 4 + 5 = 9 (window 2);
    window 1's best is gamma alone, 4 + 0.1; the best single token is epsilon, 6 + 2.5 = 8.5."""
    w1 = np.array([cls1, [9.0, 9.0], [1.0, 0.5], [0.2, 3.0], [4.0, 0.1]])
    w2 = np.array([cls2, [9.0, 9.0], [4.0, 0.0], [0.0, 5.0], [6.0, 2.5]])
    return [w1, w2]


def test_best_span_is_found_across_windows_skipping_invalid_spans():
    from lmdistill.config.schema import QAConfig
    from lmdistill.tasks.question_answering import best_answer

    q = QAConfig(n_best=5, max_answer_length=30)
    assert best_answer(_windows(), OFFSETS, [0, 0], CONTEXT, q, allow_null=False) == ("gamma delta", 9.0, 0.0)
    swapped = best_answer(_windows()[::-1], OFFSETS[::-1], [0, 0], CONTEXT, q, allow_null=False)
    assert swapped == ("gamma delta", 9.0, 0.0)  # the order of the windows does not matter
    short = QAConfig(n_best=5, max_answer_length=1)
    assert best_answer(_windows(), OFFSETS, [0, 0], CONTEXT, short, allow_null=False)[0] == "epsilon"


def test_no_answer_when_the_lowest_cls_score_beats_the_best_span_by_the_threshold():
    from lmdistill.config.schema import QAConfig
    from lmdistill.tasks.question_answering import best_answer

    logits = _windows(cls1=(6.0, 6.0), cls2=(7.0, 7.0))  # no-answer score: min(12, 14) = 12 > 9
    q = QAConfig(n_best=5)
    assert best_answer(logits, OFFSETS, [0, 0], CONTEXT, q, allow_null=True) == ("", 9.0, 12.0)
    assert best_answer(logits, OFFSETS, [0, 0], CONTEXT, q, allow_null=False)[0] == "gamma delta"
    lenient = QAConfig(n_best=5, null_threshold=5.0)  # 12 - 9 = 3 is not above 5
    assert best_answer(logits, OFFSETS, [0, 0], CONTEXT, lenient, allow_null=True)[0] == "gamma delta"


# --------------------------------------------------------------------------------------------- metrics


def test_exact_match_and_f1_follow_the_squad_script():
    from lmdistill.tasks.metrics import answer_f1, normalize_answer, squad_scores

    assert normalize_answer("The  Black-Sea, an   Ocean!") == "blacksea ocean"
    assert squad_scores("the Black Sea", ["Black Sea", "the Danube"]) == (1.0, 1.0)
    # "the cat sat" vs "a cat sat down": tokens [cat, sat] vs [cat, sat, down]; precision 1, recall 2/3
    assert answer_f1("the cat sat", "a cat sat down") == pytest.approx(0.8)
    assert answer_f1("sat sat cat", "sat cat cat") == pytest.approx(2 / 3)  # counts are clipped per token
    assert squad_scores("Nepal", ["Nepal and China", "China"]) == (0.0, pytest.approx(0.5))  # max over golds
    assert squad_scores("", [""]) == (1.0, 1.0) and squad_scores("Warsaw", []) == (0.0, 0.0)  # no answer
    assert squad_scores("", ["Warsaw"]) == (0.0, 0.0)


# --------------------------------------------------------------------------------------------- runs


def _naive_answer(net, tok, question, context, max_length, stride):
    """Every window's logits, every valid pair (context tokens, start <= end, at most 30 tokens): the best."""
    enc = tok(
        question, context, truncation="only_second", max_length=max_length, stride=stride,
        return_overflowing_tokens=True, return_offsets_mapping=True,
    )  # fmt: skip
    best, text = -math.inf, ""
    for w, ids in enumerate(enc["input_ids"]):
        inputs = {
            "input_ids": torch.tensor([ids]),
            "token_type_ids": torch.tensor([enc["token_type_ids"][w]]),
        }
        with torch.no_grad():
            out = net(**inputs, attention_mask=torch.ones(1, len(ids), dtype=torch.long))
        seq, off = enc.sequence_ids(w), enc["offset_mapping"][w]
        for s in range(len(ids)):
            for e in range(s, min(s + 30, len(ids))):
                if seq[s] == 1 and seq[e] == 1:
                    score = float(out.start_logits[0, s] + out.end_logits[0, e])
                    if score > best:
                        best, text = score, context[off[s][0] : off[e][1]]
    return text


def test_distilled_student_answers_as_its_logits_say_and_evaluates_again(squad, tmp_path, capsys):
    from lmdistill.config.schema import QAConfig
    from lmdistill.tasks.question_answering import QuestionAnsweringTask, answer

    cfg = distill_cfg(squad, tmp_path / "student")
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["distill", str(tmp_path / "s.yaml")]) == 0
    res = json.loads((tmp_path / "student" / "results.json").read_text())
    assert list(res["test"]) == ["f1", "exact_match"] and set(res["loss_terms"]) == {"kd", "ce"}
    assert res["no_answer"] is True  # some training questions have no answer
    assert res["split_windows"]["test"] > res["split_sizes"]["test"]  # long contexts: several windows
    model_dir = tmp_path / "student" / "model"
    net, tok = QuestionAnsweringTask().load_saved(model_dir)
    rows = qa_rows(6, seed=5)
    got = answer(model_dir, [r["question"] for r in rows], [r["context"] for r in rows], max_length=40,
                 qa=QAConfig(stride=10, n_best=64))  # fmt: skip
    want = [_naive_answer(net, tok, r["question"], r["context"], 40, 10) for r in rows]
    assert got == want and all(got)
    capsys.readouterr()
    assert main(["evaluate", str(model_dir), "--config", str(tmp_path / "s.yaml")]) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again == pytest.approx(res["test"])


def test_teacher_cache_serves_start_and_end_logits(squad, tmp_path):
    from lmdistill.api import distill

    train = {**squad["cfg"]["training"], "max_steps": 3}
    live = distill(distill_cfg(squad, tmp_path / "live", training=train))
    cached = distill(distill_cfg(squad, tmp_path / "cached", training={**train, "teacher_cache": "auto"}))
    assert (tmp_path / "cached" / "teacher_cache").is_dir()
    first = [r for r in live.history if "loss/kd" in r][0]["loss/kd"]
    first_cached = [r for r in cached.history if "loss/kd" in r][0]["loss/kd"]
    assert first_cached == pytest.approx(first, rel=2e-2)  # the same targets, stored in 16 bits


def test_compress_question_answering_end_to_end(squad, tmp_path):
    cfg = distill_cfg(squad, tmp_path / "run")
    cfg.pop("teacher")
    cfg["model"] = {"name_or_path": str(squad["dir"] / "base")}
    cfg["training"] = {**cfg["training"], "epochs": 1}
    cfg["report"] = {
        "latency_repeats": 2,
        "warmup": 1,
        "speed_texts": 8,
        "bootstrap_resamples": 100,
        "energy": False,
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["compress", str(tmp_path / "c.yaml")]) == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert set(report["models"]) == {"teacher", "student", "baseline"}
    for entry in report["models"].values():
        assert list(entry["metrics"]) == ["f1", "exact_match"]
        for m in entry["metrics"].values():
            assert m["low"] <= m["value"] <= m["high"]
    compared = [(c["a"], c["b"], c["metric"]) for c in report["comparisons"]]
    assert compared == [
        ("student", "baseline", m) for m in ["f1", "exact_match"]
    ]  # paired over the same test examples
    for c in report["comparisons"]:
        assert c["difference"]["low"] <= c["difference"]["value"] <= c["difference"]["high"]
    assert json.loads((tmp_path / "run" / "baseline" / "results.json").read_text())["loss_terms"] == ["ce"]
    card = (tmp_path / "run" / "student" / "model" / "README.md").read_text()
    assert (
        "from lmdistill.tasks.question_answering import answer" in card
    )  # no transformers QA pipeline in v5


# --------------------------------------------------------------------------------------------- bad input


def cli_error(tmp_path, capsys, verb: str, cfg: dict) -> str:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    capsys.readouterr()
    assert main([verb, str(path)]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert "Traceback" not in err and len(lines) == 1, err
    return lines[0]


def test_an_answer_not_in_its_context_is_one_line_exit_2(squad, tmp_path, capsys):
    rows = qa_rows(20)
    rows[3]["answers"] = {"text": ["Lisbon"], "answer_start": [5]}
    data = write_jsonl(tmp_path / "bad.jsonl", rows)
    cfg = {**squad["cfg"], "data": {"train": str(data), "max_length": 40}, "output_dir": str(tmp_path / "o")}
    line = cli_error(tmp_path, capsys, "finetune", cfg)
    # row 3 of the file, wherever the carving of validation / test rows put it
    assert (
        "qa.answers_column: the answer 'Lisbon' of row 3 of the train data is not at answer_start 5" in line
    )


def test_a_context_longer_than_one_window_with_stride_0_is_one_line_exit_2(squad, tmp_path, capsys):
    cfg = {**squad["cfg"], "qa": {"stride": 0}, "output_dir": str(tmp_path / "o")}
    line = cli_error(tmp_path, capsys, "finetune", cfg)
    assert re.search(
        r"qa.stride is 0 \(no windows\) but the context of row \d+ of the train data has \d+ tokens", line
    )
    assert "set qa.stride above 0" in line


def test_a_student_with_another_tokenizer_is_refused_in_one_line(squad, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    tok = bert_tokenizer(other, ["unused"] + vocabulary())
    tiny_encoder(tok, layers=2).save_pretrained(other)
    tok.save_pretrained(other)
    cfg = distill_cfg(squad, tmp_path / "o", student={"init": "pretrained", "name_or_path": str(other)})
    line = cli_error(tmp_path, capsys, "distill", cfg)
    assert "student.tokenizer: question_answering distils start and end positions" in line


# --------------------------------------------------------------------------------------------- mutual learning


def test_mutual_term_of_span_students_is_span_kd_from_the_other_student():
    """Deep mutual learning between two QA students: student 0's mutual term is the span KD term (start and
    end, over the context and CLS positions) with student 1's start/end logits as the target."""
    from types import SimpleNamespace

    from lmdistill.mutual import MutualObjective
    from lmdistill.signals.live import TeacherSignal
    from lmdistill.tasks.question_answering import SpanObjective

    g = torch.Generator().manual_seed(2)
    batch = _batch(g)
    outs = [SimpleNamespace(start_logits=torch.randn(3, 9, generator=g), end_logits=torch.randn(3, 9, generator=g))
            for _ in range(2)]  # fmt: skip
    obj = MutualObjective([SpanObjective({"ce": 1.0}, temperature=2.0) for _ in range(2)], 1.0)
    terms = obj(outs, None, batch)
    as_teacher = torch.stack([outs[1].start_logits, outs[1].end_logits], -1)
    kd = SpanObjective({"kd": 1.0}, temperature=2.0)(outs[0], TeacherSignal(logits=as_teacher), batch)["kd"]
    assert math.isclose(float(terms["student_0/mutual"]), float(kd), rel_tol=1e-6)
    values = []
    for b in range(3):
        keep = batch["context_mask"][b]
        start = _naive_kl(outs[1].start_logits[b, keep], outs[0].start_logits[b, keep], 2.0)
        end = _naive_kl(outs[1].end_logits[b, keep], outs[0].end_logits[b, keep], 2.0)
        values.append((start + end) / 2)
    assert math.isclose(float(terms["student_0/mutual"]), sum(values) / 3, rel_tol=1e-5)


def test_two_qa_students_learn_from_each_other_end_to_end(squad, tmp_path):
    from transformers import AutoModelForQuestionAnswering

    from lmdistill import api

    cfg = dict(squad["cfg"], output_dir=str(tmp_path / "mutual"), mutual={"students": 2, "weight": 0.5})
    cfg["training"] = {**cfg["training"], "epochs": 1, "max_steps": 6}
    out = api.finetune(cfg).output_dir
    res = json.loads((out / "results.json").read_text())
    assert set(res["loss_terms"]) == {"student_0/ce", "student_0/mutual", "student_1/ce", "student_1/mutual"}
    for split in ("validation", "test"):
        assert res[split]["f1"] == pytest.approx(
            (res[split]["student_0/f1"] + res[split]["student_1/f1"]) / 2
        )
    heads = [AutoModelForQuestionAnswering.from_pretrained(out / "model" / f"student_{i}") for i in range(2)]
    assert not torch.equal(heads[0].qa_outputs.weight, heads[1].qa_outputs.weight)  # seeded apart
