"""Transfer sets and augmentation: unlabelled text learned by KD alone, mixed into every batch in a set ratio
(issue "Distillation that pays off")."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from lmdistill import api
from lmdistill.cli import main
from lmdistill.config.schema import UnlabeledConfig
from lmdistill.data.sampler import MixedBatchSampler
from lmdistill.data.transfer import load_transfer
from lmdistill.objective import Objective
from lmdistill.signals.live import TeacherSignal

from .conftest import make_sentences


def test_every_batch_holds_the_set_share_of_unlabelled_examples():
    labelled, unlabelled = list(range(40)), list(range(40, 140))
    lengths = [(i * 7) % 23 + 1 for i in range(140)]
    sampler = MixedBatchSampler(labelled, unlabelled, lengths, batch_size=10, ratio=0.7, seed=3)
    for epoch in (0, 1):
        batches = sampler.batches(epoch)
        assert len(batches) == len(sampler) == 15  # ceil(100 / 7): the unlabelled pool is seen once
        assert all(sum(i >= 40 for i in b) == 7 and sum(i < 40 for i in b) == 3 for b in batches)
        seen = sorted(i for b in batches for i in b if i >= 40)
        assert (
            sorted(set(seen)) == unlabelled and len(seen) == 105
        )  # every transfer text, 5 repeats fill the last batch
    assert sampler.batches(1) == MixedBatchSampler(labelled, unlabelled, lengths, 10, 0.7, seed=3).batches(1)
    assert sampler.batches(0) != sampler.batches(1)
    natural = MixedBatchSampler(labelled, unlabelled, lengths, batch_size=10, ratio=None)
    assert natural.k_u == 7 and natural.k_l == 3  # in proportion: 100 of 140


def test_unlabelled_examples_never_reach_the_hard_label_terms():
    torch.manual_seed(0)
    logits = torch.randn(6, 3, requires_grad=True)
    teacher = torch.randn(6, 3)
    labels = torch.tensor([0, 2, -100, 1, -100, -100])  # rows 2, 4, 5: a transfer text, augmented copies
    obj = Objective({"kd": 0.5, "ce": 0.5})
    terms = obj(type("Out", (), {"logits": logits})(), TeacherSignal(logits=teacher), {"labels": labels})
    want = torch.nn.functional.cross_entropy(logits[[0, 1, 3]], labels[[0, 1, 3]])
    torch.testing.assert_close(terms["ce"], want)
    (grad,) = torch.autograd.grad(terms["ce"], logits)
    assert grad[[2, 4, 5]].abs().sum() == 0 and grad[[0, 1, 3]].abs().sum() > 0
    (kd_grad,) = torch.autograd.grad(
        obj(type("Out", (), {"logits": logits})(), TeacherSignal(logits=teacher), {"labels": labels})["kd"],
        logits,
    )
    assert (kd_grad[[2, 4, 5]].abs().sum(-1) > 0).all()  # every example is taught by the teacher
    values = torch.tensor([[0.5], [1.5], [2.0]], requires_grad=True)
    reg = Objective({"mse": 1.0})(
        type("Out", (), {"logits": values})(), None, {"labels": torch.tensor([1.0, float("nan"), 1.0])}
    )
    torch.testing.assert_close(reg["mse"], torch.tensor((0.25 + 1.0) / 2))


def test_a_transfer_text_equal_to_an_evaluation_text_is_dropped_and_counted(tmp_path):
    (tmp_path / "u.txt").write_text("A fine film\nan  AWFUL film \nthe plot\nthe plot\nnew text\n\n")
    t = load_transfer(
        UnlabeledConfig(source=str(tmp_path / "u.txt")),
        {"validation": ["the plot"], "test": ["An awful film"]},
    )
    assert t.texts == ["A fine film", "new text"]
    assert (t.info["dropped_equal_to_test"], t.info["dropped_equal_to_validation"], t.info["repeats"]) == (
        1,
        1,
        1,
    )


def test_a_transfer_text_sharing_a_sentence_with_an_evaluation_text_is_dropped(tmp_path):
    (tmp_path / "u.txt").write_text("The acting is wooden.\nGreat score. The acting is superb!\nA new day.\n")
    t = load_transfer(
        UnlabeledConfig(source=str(tmp_path / "u.txt")),
        {"test": ["Slow start. The acting is wooden.", "The acting is superb!"]},
    )
    # line 1 is a sentence of a test text; line 2 holds a whole test text as its second sentence
    assert t.texts == ["A new day."] and t.info["dropped_equal_to_test"] == 2


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, tiny_bert_dir, sentiment_csv):
    out = tmp_path_factory.mktemp("transfer") / "teacher"
    cfg = {"seed": 0, "output_dir": str(out), "data": {"train": str(sentiment_csv), "max_length": 32}}
    cfg.update(model={"name_or_path": str(tiny_bert_dir)}, training={"epochs": 2, "learning_rate": 2e-3})
    return api.finetune(cfg).model_dir


def _cfg(tmp_path, teacher, sentiment_csv, name, **data):
    return {
        "seed": 1,
        "output_dir": str(tmp_path / name),
        # the teacher's split (seed 0): another one would put its training rows in this run's test split
        "data": {"train": str(sentiment_csv), "max_length": 32, "split_seed": 0, **data},
        "teacher": {"name_or_path": str(teacher)},
        "student": {"layers": [0, 3]},
        "training": {"epochs": 1, "batch_size": 16, "learning_rate": 2e-3},
    }


def test_augmented_copies_are_seeded_cached_with_the_teachers_scores_and_reused(
    tmp_path, teacher, sentiment_csv
):
    from lmdistill.signals.cache import CachedTeacher
    from lmdistill.tasks import get_task, load_config

    cfg = _cfg(tmp_path, teacher, sentiment_csv, "aug", augment={"method": "mask", "copies": 2})
    res = api.distill(cfg)
    out = tmp_path / "aug"
    results = json.loads((out / "results.json").read_text())
    counts = results["unlabelled"]["augment"]
    n_l, n_u = results["split_sizes"]["train"], results["split_sizes"]["unlabelled"]
    k_u = round(16 * n_u / (n_l + n_u))  # each batch mixes the pools in proportion to their sizes
    steps = max(-(-n_u // k_u), -(-n_l // (16 - k_u)))  # until both pools were seen once
    assert counts["reused"] is False and n_u == counts["kept"] > 0 and res.steps == steps
    cached = CachedTeacher(out / "teacher_cache")
    assert len(cached) == n_l + n_u  # the teacher's scores of every augmented copy are stored
    lines = (out / "augmented" / "copies.jsonl").read_text().splitlines()
    copy = json.loads(lines[1])["text"]
    task, loaded = get_task("classification"), load_config(cfg)
    model, tok = task.load_saved(teacher)
    with torch.no_grad():
        want = model(**tok([copy], return_tensors="pt")).logits[0]
    enc = tok([copy])["input_ids"][0]
    got = cached.lookup(torch.tensor([n_l]), torch.ones(1, len(enc), dtype=torch.long))["logits"][0].float()
    torch.testing.assert_close(got, want, atol=2e-2, rtol=1e-2)  # stored in 16 bits
    data = task.parts(loaded, "distill")  # the same seed: the same copies, read back, labels untouched
    labels = data.train_set.labels
    original = pd.read_csv(sentiment_csv)
    assert (labels[n_l:] == -100).all() and (labels[:n_l] >= 0).all()
    assert data.extra["unlabelled"]["augment"]["reused"] is True and len(original) == 240


def test_the_same_seed_gives_the_same_copies_and_another_seed_others(tmp_path, teacher, sentiment_csv):
    from lmdistill.tasks import get_task, load_config

    task = get_task("classification")
    runs = []
    for seed, name in ((1, "a"), (1, "b"), (2, "c")):
        cfg = load_config(
            {
                **_cfg(tmp_path, teacher, sentiment_csv, name, augment={"method": "mask", "copies": 2}),
                "seed": seed,
            }
        )
        (tmp_path / name).mkdir()
        parts = task.parts(cfg, "distill")
        runs.append([parts.train_set.student["input_ids"][i] for i in parts.mix.unlabelled])
    assert runs[0] == runs[1] and runs[0] != runs[2]


def _error(tmp_path, capsys, cfg) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    capsys.readouterr()
    assert main(["distill", str(path)]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert "Traceback" not in err and len(lines) == 1, err
    return lines[0]


def test_bad_unlabelled_and_augment_settings_are_one_line(tmp_path, teacher, sentiment_csv, capsys):
    (tmp_path / "empty.txt").write_text("\n\n")
    pd.DataFrame({"body": ["x", "y"]}).to_csv(tmp_path / "u.csv", index=False)
    cases = [
        ({"unlabeled": {"source": str(tmp_path / "empty.txt")}}, "holds no text to use"),
        (
            {"unlabeled": {"source": str(tmp_path / "u.csv")}},
            "data.unlabeled.text_column: column 'text' not found",
        ),
        (
            {"augment": {"method": "maks"}},
            "data.augment.method: unknown method 'maks' (did you mean 'mask'?)",
        ),
        (
            {"unlabeled": {"source": str(tmp_path / "u.csv"), "ratio": 1.5}},
            "data.unlabeled.ratio must be in (0, 1]",
        ),
        (
            {"unlabeled": {"source": str(tmp_path / "u.csv"), "ratio": 0}},
            "data.unlabeled.ratio must be in (0, 1]",
        ),
    ]
    for i, (data, needle) in enumerate(cases):
        line = _error(tmp_path, capsys, _cfg(tmp_path, teacher, sentiment_csv, f"bad{i}", **data))
        assert needle in line, line


def test_compress_reports_a_paired_verdict_agreement_and_calibration(tmp_path, teacher, sentiment_csv):
    from lmdistill.pipeline import compress

    (tmp_path / "u.txt").write_text("\n".join(t for t, _, _ in make_sentences(200, seed=11)))
    cfg = _cfg(tmp_path, teacher, sentiment_csv, "c", unlabeled={"source": str(tmp_path / "u.txt")})
    cfg["report"] = {
        "energy": False,
        "latency_repeats": 2,
        "warmup": 0,
        "speed_texts": 16,
        "bootstrap_resamples": 200,
    }
    compress(cfg)
    data = json.loads((tmp_path / "c" / "report.json").read_text())
    tests = {c["test"]: c for c in data["comparisons"]}
    assert set(tests) == {"paired bootstrap", "McNemar exact (accuracy)"}
    boot = tests["paired bootstrap"]
    s, b = (data["models"][k]["metrics"]["accuracy"]["value"] for k in ("student", "baseline"))
    assert boot["difference"]["value"] == pytest.approx(s - b) and boot["verdict"] in boot_verdicts(boot)
    assert "agreement" not in data["models"]["teacher"]  # agreement is with the teacher
    for key in ("student", "baseline"):
        for figure in (data["models"][key]["agreement"], data["models"][key]["calibration"]["ece"]):
            assert figure["low"] <= figure["value"] <= figure["high"]
    baseline = json.loads((tmp_path / "c" / "baseline" / "results.json").read_text())
    student = json.loads((tmp_path / "c" / "student" / "results.json").read_text())
    assert (
        baseline["steps"] == student["steps"] and "unlabelled" not in baseline
    )  # same budget, no transfer set


def boot_verdicts(c: dict) -> list[str]:
    """The one verdict the interval allows."""
    low, high = c["difference"]["low"], c["difference"]["high"]
    return ["better"] if low > 0 else ["worse"] if high < 0 else ["not distinguishable at 95%"]


def test_mcnemar_by_hand_on_report_shaped_inputs():
    from lmdistill.report.paired import mcnemar_exact

    a = np.array([1, 1, 1, 0, 1, 1, 1, 1, 1, 0])
    b = np.array([1, 0, 0, 0, 0, 0, 0, 0, 0, 1])
    test = mcnemar_exact(a == 1, b == 1)  # a alone right 7 times, b alone once: p = 2 * (1 + 8) / 256
    assert (test.a_only, test.b_only) == (7, 1) and test.p_value == pytest.approx(18 / 256)


def test_corpus_sentences_are_cut_at_line_ends_as_well_as_after_capitals():
    from lmdistill.data.transfer import _sentences

    review = (
        "films adapted from comic books have had plenty of success .\n"
        "for starters , it was created by alan moore .\n"
        "too short .\n"
        "The Book is long. It has five hundred pages in all."
    )
    assert _sentences([review]) == [
        "films adapted from comic books have had plenty of success .",
        "for starters , it was created by alan moore .",
        "It has five hundred pages in all.",
    ]


def test_the_baseline_trains_at_the_students_learning_rate_not_the_teachers(tmp_path):
    """compress: `training` trains the teacher; a distill stage's learning rate is the student's, and the no-KD
    baseline, which must differ from the student only by the teacher, takes it too."""
    from lmdistill.pipeline import baseline_config
    from lmdistill.tasks import get_task, load_config

    raw = {
        "data": {"train": "x.csv"},
        "model": {"name_or_path": "m"},
        "student": {"num_layers": 1},
        "training": {"learning_rate": 5e-5},
        "distill": {"stages": [{"name": "kd", "losses": {"kd": 0.5, "ce": 0.5}, "learning_rate": 2e-4}]},
    }
    cfg = load_config(raw, verb="compress")
    b = baseline_config(cfg, get_task("classification"), tmp_path / "b", 600)
    assert b.training.learning_rate == 2e-4 and b.training.max_steps == 600 and b.distill.stages == []
    assert cfg.training.learning_rate == 5e-5  # the student's config is not changed
    raw["distill"]["stages"][0].pop("learning_rate")
    plain = baseline_config(
        load_config(raw, verb="compress"), get_task("classification"), tmp_path / "b", 600
    )
    assert plain.training.learning_rate == 5e-5
