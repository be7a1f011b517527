"""The teacher cache: same losses as a live teacher, invalidation, top-k, bad paths; compile buckets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from lmdistill import api, cli
from lmdistill.errors import LmdistillError
from lmdistill.signals import cache as tc
from lmdistill.signals.live import LiveTeacher

from .conftest import tiny_bert


@pytest.fixture(autouse=True)
def one_thread():
    """Width-32 models gain nothing from a second thread, and on a shared 2-core machine two threads that
    spin-wait on each other make these runs 10-30x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def count_teacher(monkeypatch):
    """Counts live teacher forward passes (cache builds and live training alike)."""
    calls = {"n": 0}
    original = LiveTeacher.__call__

    def counted(self, batch):
        calls["n"] += 1
        return original(self, batch)

    monkeypatch.setattr(LiveTeacher, "__call__", counted)
    return calls


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, tiny_bert_dir):
    """The tiny BERT with a sharpened head: its class probabilities are far from uniform, so the soft-target
    loss is large enough for 16-bit differences to show."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    d = tmp_path_factory.mktemp("sharp_teacher")
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir)
    with torch.no_grad():
        model.classifier.weight.mul_(40.0)
    model.save_pretrained(d)
    AutoTokenizer.from_pretrained(tiny_bert_dir).save_pretrained(d)
    return d


def _cfg(tmp_path, csv, teacher_dir, name, distill=None, **training):
    return {
        "seed": 3,
        "data": {"train": str(csv), "max_length": 32},
        "teacher": {"name_or_path": str(teacher_dir)},
        "student": {"init": "config", "num_layers": 2},  # fresh weights: far from the teacher
        "output_dir": str(tmp_path / name),
        "training": {
            "epochs": 1,
            "max_steps": 8,
            "batch_size": 16,
            "learning_rate": 1e-3,
            "log_every": 1,
            "eval_batch_size": 64,
            **training,
        },
        "distill": distill or {"losses": {"kd": 0.5, "ce": 0.5}},
    }


def _losses(result) -> dict[str, np.ndarray]:
    rows = [r for r in result.history if "loss" in r]
    return {k: np.array([r[k] for r in rows]) for k in rows[0] if k == "loss" or k.startswith("loss/")}


def _same_losses(live, cached) -> None:
    a, b = _losses(live), _losses(cached)
    assert a.keys() == b.keys() and len(a["loss"]) == 8
    for k in a:  # 16-bit teacher outputs: relative differences of ~1e-3 at most
        np.testing.assert_allclose(b[k], a[k], rtol=2e-3, atol=1e-6, err_msg=k)


def test_logits_cache_matches_live_and_cli_builds_it_once(
    tmp_path, sentiment_csv, teacher_dir, count_teacher, capsys
):
    live = api.distill(_cfg(tmp_path, sentiment_csv, teacher_dir, "live"))
    path = tmp_path / "shared-cache"
    cfg = _cfg(tmp_path, sentiment_csv, teacher_dir, "cached", teacher_cache=str(path))
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert cli.main(["cache", str(tmp_path / "c.yaml")]) == 0
    out = capsys.readouterr().out
    assert "about" in out and "float16" in out  # the disk estimate, printed before writing
    meta = json.loads((path / tc.INDEX).read_text())
    assert (
        meta["complete"]
        and set(meta["fields"]) == {"logits"}
        and meta["fields"]["logits"]["dtype"] == "float16"
    )
    count_teacher["n"] = 0
    cached = api.distill(cfg)
    assert count_teacher["n"] == 0  # every epoch from the cache: no teacher forward pass
    assert "reusing" in capsys.readouterr().out
    _same_losses(live, cached)


def test_hidden_relation_cls_mean_cache_matches_live(tmp_path, sentiment_csv, teacher_dir):
    distill = {
        "losses": {"kd": 0.5, "ce": 0.5},
        "matches": [
            {"feature": "hidden"},  # student layers 0, 1 <- teacher layers 1, 3 (tokens)
            {"feature": "vv", "teacher_layer": 3, "student_layer": 1},
            {"feature": "qq", "teacher_layer": 1, "student_layer": 0},
            {"feature": "cls", "teacher_layer": 0, "student_layer": 0},  # first token only
            {"feature": "mean", "teacher_layer": 2, "student_layer": 1},  # masked mean only
        ],
    }
    live = api.distill(_cfg(tmp_path, sentiment_csv, teacher_dir, "live", distill))
    cached = api.distill(_cfg(tmp_path, sentiment_csv, teacher_dir, "cached", distill, teacher_cache="auto"))
    meta = json.loads((tmp_path / "cached" / "teacher_cache" / tc.INDEX).read_text())
    assert set(meta["fields"]) == {"logits", "hidden2", "hidden4", "hidden1.cls", "hidden3.mean", "q1", "v3"}
    assert not meta["fields"]["hidden1.cls"]["per_token"] and meta["fields"]["v3"]["per_token"]
    _same_losses(live, cached)


def _tiny_set(n: int = 40, seed: int = 0):
    from lmdistill.data.text import Collator, TextDataset

    g = torch.Generator().manual_seed(seed)
    ids = [
        [2] + torch.randint(5, 60, (int(k),), generator=g).tolist() + [3]
        for k in torch.randint(1, 20, (n,), generator=g)
    ]
    return TextDataset({"input_ids": ids}, [i % 2 for i in range(n)]), Collator(0)


def test_cache_reused_unchanged_and_rebuilt_when_teacher_data_or_features_change(tmp_path, count_teacher):
    from lmdistill.objective import Match, Objective

    teacher, (data, collate), kd = tiny_bert(), _tiny_set(), [Objective({"kd": 1.0})]
    messages: list[str] = []

    def build(ds=data, objectives=kd):
        count_teacher["n"] = 0
        messages.clear()
        return tc.open_or_build(
            tmp_path / "c", teacher, ds, collate, objectives, batch_size=16, log=messages.append
        )

    first = build()
    assert count_teacher["n"] > 0
    assert build().meta == first.meta and count_teacher["n"] == 0 and "reusing" in messages[0]
    with torch.no_grad():
        teacher.classifier.weight.add_(0.5)
    changed = build()
    assert count_teacher["n"] > 0 and "teacher changed" in messages[0] and "rebuilding" in messages[0]
    batch = collate([data[i] for i in range(8)])
    teacher.eval()
    np.testing.assert_allclose(changed(batch).logits, teacher(**batch["student"]).logits.detach(), atol=2e-3)
    build(objectives=[Objective({"kd_mse": 1.0})])  # other losses, same features (logits): reused
    assert count_teacher["n"] == 0
    build(objectives=[Objective({"kd": 1.0}, matches=[Match("h", "hidden", "mse", 1.0, 1, 0)])])
    assert count_teacher["n"] > 0 and "other teacher features" in messages[0]
    build(
        ds=_tiny_set(seed=1)[0],
        objectives=[Objective({"kd": 1.0}, matches=[Match("h", "hidden", "mse", 1.0, 1, 0)])],
    )
    assert "training data changed" in messages[0]


def test_topk_cache_equals_topk_live(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from lmdistill.signals.sparse import TopKSignal, topk_signal
    from lmdistill.tasks.causal_lm import CausalLMObjective, LMCollator, LMDataset

    torch.manual_seed(0)
    teacher = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=97,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=64,
        )
    )
    g = torch.Generator().manual_seed(0)
    items = [
        {"input_ids": (x := torch.randint(3, 97, (int(k),), generator=g).tolist()), "labels": x}
        for k in torch.randint(2, 30, (24,), generator=g)
    ]
    data, collate = LMDataset(items), LMCollator(0)
    objective = CausalLMObjective({"kd": 1.0}, 2.0, top_k=5)  # what it reads: top-5 logits at T = 2
    cached = tc.open_or_build(tmp_path / "topk", teacher, data, collate, [objective], batch_size=8, log=print)
    batch = collate([data[i] for i in (3, 0, 17, 9)])
    got = cached(batch).logits
    assert isinstance(got, TopKSignal) and got.k == 5 and got.temperature == 2.0
    teacher.eval()
    with torch.no_grad():
        want = topk_signal(teacher(**batch["student"]).logits, 5, 2.0)
    real = batch["student"]["attention_mask"].bool()
    assert torch.equal(got.indices[real], want.indices[real])
    torch.testing.assert_close(got.logprobs[real], want.logprobs[real], atol=4e-3, rtol=2e-3)
    torch.testing.assert_close(got.tail_logprob[real], want.tail_logprob[real], atol=4e-3, rtol=2e-3)


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_a_path_that_is_not_a_cache_is_one_line_error(tmp_path, sentiment_csv, tiny_bert_dir, capsys, kind):
    target = tmp_path / "not-a-cache"
    if kind == "file":
        target.write_text("hello")
    else:
        target.mkdir()
        (target / "notes.txt").write_text("mine")
    with pytest.raises(LmdistillError, match="training.teacher_cache") as err:
        tc.CachedTeacher(target)
    assert "\n" not in str(err.value)
    cfg = _cfg(tmp_path, sentiment_csv, tiny_bert_dir, "run", teacher_cache=str(target))
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert cli.main(["distill", str(tmp_path / "c.yaml")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "training.teacher_cache" in lines[0] and "not a teacher cache" in lines[0]
    assert kind == "folder" or target.read_text() == "hello"  # nothing of the user's was touched


def test_compile_pads_to_buckets_and_compiles_once_per_shape(
    tmp_path, sentiment_csv, tiny_bert_dir, monkeypatch
):
    from lmdistill.data.text import BUCKETS

    seen, flags = [], []

    def fake_compile(model, dynamic=None, **kw):  # the real one takes minutes on a 2-core CPU
        flags.append(dynamic)

        def run(**inputs):
            seen.append(tuple(inputs["input_ids"].shape))
            return model(**inputs)

        return run

    monkeypatch.setattr(torch, "compile", fake_compile)
    res = api.distill(_cfg(tmp_path, sentiment_csv, tiny_bert_dir, "c", compile=True, max_steps=3))
    assert res.steps == 3 and flags == [False]
    assert seen and all(t in BUCKETS for _, t in seen)


def test_batches_rewritten_by_prepare_batch_bypass_the_cache(tmp_path, count_teacher, monkeypatch):
    from lmdistill.config import TrainingConfig
    from lmdistill.engine import train
    from lmdistill.objective import Objective

    class Augmenting(Objective):  # every other batch is a new one (as on-policy samples are)
        calls = 0

        def prepare_batch(self, batch, student):
            self.calls += 1
            return dict(batch) if self.calls % 2 else batch

    teacher, student = tiny_bert(), tiny_bert(layers=2, seed=1)
    data, collate = _tiny_set()
    objective = Augmenting({"kd": 1.0})
    cached = tc.open_or_build(tmp_path / "c", teacher, data, collate, [objective], log=lambda m: None)
    served = {"n": 0}
    original = tc.CachedTeacher.__call__

    def counted(self, batch):
        served["n"] += 1
        return original(self, batch)

    monkeypatch.setattr(tc.CachedTeacher, "__call__", counted)
    count_teacher["n"] = 0
    cfg = TrainingConfig(epochs=1, batch_size=8, cpu=True, log_every=100, group_by_length=False)
    (tmp_path / "run").mkdir()
    train(
        student=student,
        objective=objective,
        train_set=data,
        collate=collate,
        cfg=cfg,
        seed=0,
        out_dir=tmp_path / "run",
        teacher=teacher,
        teacher_signal=cached,
    )
    assert (count_teacher["n"], served["n"]) == (
        3,
        2,
    )  # 5 batches: 1, 3, 5 new (live), 2 and 4 from the cache
