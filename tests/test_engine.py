"""The loop: early stopping, accumulation, evaluation cadence, and `datasets` sources."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from lmdistill import api


def _cfg(tmp_path, sentiment_csv, tiny_bert_dir, **training):
    return {
        "seed": 1,
        "data": {"train": str(sentiment_csv), "max_length": 32},
        "model": {"name_or_path": str(tiny_bert_dir)},
        "output_dir": str(tmp_path / "run"),
        "training": {"epochs": 1, "batch_size": 16, "learning_rate": 1e-3, "log_every": 1, **training},
    }


def test_eval_every_and_early_stopping(tmp_path, sentiment_csv, tiny_bert_dir):
    # learning rate 0: nothing improves after the first evaluation, so patience 2 stops at the third
    cfg = _cfg(
        tmp_path,
        sentiment_csv,
        tiny_bert_dir,
        epochs=5,
        eval_every=2,
        early_stopping_patience=2,
        learning_rate=1e-12,
        scheduler="constant",
        warmup_ratio=0.0,
    )
    res = api.finetune(cfg)
    evals = [r for r in res.history if "eval/accuracy" in r]
    assert [r["step"] for r in evals] == [2, 4, 6]
    assert res.steps == 6 and res.best_step == 2
    assert json.loads((tmp_path / "run" / "results.json").read_text())["stopped_early"] is True


def test_accumulation_counts_optimizer_steps(tmp_path, sentiment_csv, tiny_bert_dir):
    res = api.finetune(
        _cfg(tmp_path, sentiment_csv, tiny_bert_dir, batch_size=8, gradient_accumulation_steps=2)
    )
    # 240 rows - 10% validation - 10% test = 192 training rows = 24 batches of 8 = 12 optimizer steps
    assert res.steps == 12
    logged = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert logged["step"].dropna().max() == 12


def test_max_steps_and_same_seed_same_result(tmp_path, sentiment_csv, tiny_bert_dir):
    a = api.finetune(_cfg(tmp_path / "a", sentiment_csv, tiny_bert_dir, max_steps=5))
    b = api.finetune(_cfg(tmp_path / "b", sentiment_csv, tiny_bert_dir, max_steps=5))
    assert a.steps == 5
    la = [r["loss"] for r in a.history if "loss" in r]
    lb = [r["loss"] for r in b.history if "loss" in r]
    assert la == lb and a.validation == b.validation


def test_datasets_folder_source(tmp_path, sentiment_csv, tiny_bert_dir):
    """`data.dataset` goes through datasets.load_dataset (here a local folder; hub ids work the same)."""
    folder = tmp_path / "ds"
    folder.mkdir()
    df = pd.read_csv(sentiment_csv)
    df.iloc[:200].to_parquet(folder / "train.parquet")
    df.iloc[200:].to_parquet(folder / "test.parquet")
    cfg = _cfg(tmp_path, sentiment_csv, tiny_bert_dir, max_steps=2)
    cfg["data"] = {"dataset": str(folder), "test": "test", "validation_size": 0.1, "max_length": 32}
    res = api.finetune(cfg)
    sizes = json.loads((tmp_path / "run" / "results.json").read_text())["split_sizes"]
    assert sizes == {"train": 180, "test": 40, "validation": 20}
    assert set(res.test) == {"accuracy", "macro_f1"}


def test_length_grouped_batches_keep_every_example_once():
    from lmdistill.data.sampler import LengthGroupedBatchSampler

    lengths = [int(x) for x in torch.randint(3, 60, (203,), generator=torch.Generator().manual_seed(0))]
    sampler = LengthGroupedBatchSampler(lengths, batch_size=8, seed=5, group=4)
    for epoch in range(2):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        flat = [i for b in batches for i in b]
        assert sorted(flat) == list(range(203))  # membership of the epoch unchanged
        spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
        assert spread < 20  # random batches of 8 from lengths 3..59 spread ~40
    assert list(LengthGroupedBatchSampler(lengths, 8, seed=5, group=4)) != batches  # epoch 0 differs from 1


def test_token_budget_batches_keep_every_example_once_within_the_budget():
    from lmdistill.data.sampler import TokenBudgetBatchSampler
    from lmdistill.errors import LmdistillError

    lengths = [int(x) for x in torch.randint(3, 60, (203,), generator=torch.Generator().manual_seed(0))]
    for processes in (1, 2):
        sampler = TokenBudgetBatchSampler(lengths, max_tokens=256, seed=5, processes=processes)
        seen = []
        for epoch in range(2):
            sampler.set_epoch(epoch)
            batches = list(sampler)
            seen.append(batches)
            assert len(batches) == len(sampler)
            assert sorted(i for b in batches for i in b) == list(range(203))
            for b in batches:
                padded = -(-max(lengths[i] for i in b) // 8) * 8
                assert -(-len(b) // processes) * padded <= 256  # per process, padded to a multiple of 8
            assert sum(len(b) % processes != 0 for b in batches) <= 1  # only the last cut may be uneven
        short = min(seen[0], key=lambda b: max(lengths[i] for i in b))
        long = max(seen[0], key=lambda b: max(lengths[i] for i in b))
        assert len(short) > len(long)  # short sentences travel in larger batches
        assert seen[0] != seen[1] and sorted(map(sorted, seen[0])) == sorted(map(sorted, seen[1]))
    with pytest.raises(LmdistillError, match=r"training.max_tokens=32 is smaller than the longest example"):
        TokenBudgetBatchSampler(lengths, max_tokens=32)


def test_process_shards_cover_every_batch_of_any_size():
    from lmdistill.data.sampler import ProcessShard

    class Fixed:  # global batches of uneven sizes, one shorter than the number of processes
        def __init__(self):
            self.epoch = None

        def __iter__(self):
            return iter([[0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10], [11]])

        def __len__(self):
            return 3

        def set_epoch(self, epoch):
            self.epoch = epoch

    base = Fixed()
    shards = [list(ProcessShard(base, i, 2)) for i in range(2)]
    assert shards[0] == [[0, 1, 2], [6, 7, 8], [11]]
    assert shards[1] == [[3, 4, 5], [9, 10], [0]]  # the short batch is filled from the epoch's first
    assert list(ProcessShard(base, 0, 1)) == list(base)  # one process: the batches as they are
    ProcessShard(base, 1, 2).set_epoch(3)
    assert base.epoch == 3 and len(ProcessShard(base, 0, 2)) == 3


def test_token_budget_training_run(tmp_path, sentiment_csv, tiny_bert_dir, monkeypatch):
    from lmdistill import engine

    made, shapes = [], []
    real_sampler, real_forward = engine.TokenBudgetBatchSampler, engine.StudentStep.forward

    def sampler(*a, **k):
        made.append(real_sampler(*a, **k))
        return made[-1]

    def forward(self, batch, signal):
        shapes.append(tuple(batch["student"]["input_ids"].shape))
        return real_forward(self, batch, signal)

    monkeypatch.setattr(engine, "TokenBudgetBatchSampler", sampler)
    monkeypatch.setattr(engine.StudentStep, "forward", forward)
    res = api.finetune(_cfg(tmp_path, sentiment_csv, tiny_bert_dir, max_tokens=96, epochs=2))
    assert res.steps == 2 * len(made[0])
    assert len(shapes) == res.steps and all(n * length <= 96 for n, length in shapes)
    assert sum(n for n, _ in shapes) == 2 * 192  # every training row once per epoch
    assert len({n for n, _ in shapes}) > 1  # the batch size follows the lengths


def test_nonfinite_loss_stops_with_term_and_step(tmp_path, sentiment_csv, tiny_bert_dir, monkeypatch):
    from lmdistill import objective
    from lmdistill.engine import NonFiniteLoss

    calls = {"n": 0}
    ce = objective.OUTPUT_TERMS["ce"].fn

    def poisoned(obj, out, signal, batch):  # the 12th and every 9th batch after it give NaN
        calls["n"] += 1
        value = ce(obj, out, signal, batch)
        return value * float("nan") if calls["n"] >= 12 and calls["n"] % 9 == 3 else value

    monkeypatch.setitem(objective.OUTPUT_TERMS, "ce", objective.Term(poisoned))
    cfg = _cfg(tmp_path, sentiment_csv, tiny_bert_dir, max_steps=30, log_every=5, warmup_ratio=0.0)
    with pytest.raises(
        NonFiniteLoss, match=r"loss term 'ce' became nan between steps 11 and 15 \(weight 1\)"
    ):
        api.finetune(cfg)
    calls["n"] = 0
    cfg["training"]["on_nonfinite"] = "skip"
    cfg["output_dir"] = str(tmp_path / "skip")
    res = api.finetune(cfg)
    summary = json.loads((tmp_path / "skip" / "results.json").read_text())
    assert summary["skipped_batches"] > 0 and res.steps == 30


def test_out_of_memory_becomes_advice(tmp_path, sentiment_csv, tiny_bert_dir, monkeypatch):
    from lmdistill import objective
    from lmdistill.engine import OutOfMemory

    def explode(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setitem(objective.OUTPUT_TERMS, "ce", objective.Term(explode))
    with pytest.raises(
        OutOfMemory,
        match=r"out of GPU memory at step 0 with training.batch_size=16: lower "
        r"training.batch_size \(e.g. 8\) and raise training.gradient_accumulation",
    ):
        api.finetune(_cfg(tmp_path, sentiment_csv, tiny_bert_dir, max_steps=2))


def test_fp16_on_a_cpu_is_refused_not_silently_fp32(tmp_path, sentiment_csv, tiny_bert_dir):
    from lmdistill.errors import LmdistillError

    cfg = _cfg(tmp_path, sentiment_csv, tiny_bert_dir, mixed_precision="fp16", cpu=True, max_steps=1)
    with pytest.raises(LmdistillError, match="training.mixed_precision=fp16 needs a GPU"):
        api.finetune(cfg)
    assert not (tmp_path / "run" / "model").exists()


@pytest.mark.parametrize("cache", [None, "auto"])
def test_bf16_autocast_run_on_the_cpu(tmp_path, sentiment_csv, tiny_bert_dir, monkeypatch, cache):
    """training.mixed_precision=bf16 goes through accelerate's autocast (here the CPU's): the student's matmuls
    run in bf16, the loss terms stay float32 and finite, and the losses track a float32 run closely."""
    from lmdistill import engine

    dtypes = set()
    real_forward = engine.StudentStep.forward

    def forward(self, batch, signal):
        terms = real_forward(self, batch, signal)
        dtypes.add(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else torch.float32)
        dtypes.update(v.dtype for v in terms.values())
        return terms

    monkeypatch.setattr(engine.StudentStep, "forward", forward)

    def run(precision):
        cfg = {
            "seed": 3,
            "data": {"train": str(sentiment_csv), "max_length": 32},
            "teacher": {"name_or_path": str(tiny_bert_dir)},
            "student": {"layers": [0, 3]},
            "distill": {
                "losses": {"kd": 0.5, "ce": 0.5},
                "matches": [{"feature": "hidden", "strategy": "uniform"}],
            },
            "output_dir": str(tmp_path / precision),
            "training": {
                "max_steps": 6,
                "batch_size": 16,
                "log_every": 1,
                "cpu": True,
                "mixed_precision": precision,
                "teacher_cache": cache,
            },
        }
        return [r["loss"] for r in api.distill(cfg).history if "loss" in r]

    half = run("bf16")
    assert dtypes == {torch.bfloat16, torch.float32}  # autocast on, terms in float32
    full = run("no")
    assert all(torch.isfinite(torch.tensor(half)))
    torch.testing.assert_close(torch.tensor(half), torch.tensor(full), rtol=0.05, atol=0.02)


def test_same_config_same_weights_in_two_processes(tmp_path, sentiment_csv, tiny_bert_dir):
    """A new classification head (and any fresh student or projection) is drawn before training: the seed is
    set first, so two separate processes (torch's own seed differs in each) end with identical weights."""
    import os
    import subprocess
    import sys

    import yaml
    from safetensors.torch import load_file
    from transformers import AutoModel

    base = tmp_path / "encoder"  # no classification head: finetune draws a new one
    AutoModel.from_pretrained(tiny_bert_dir).save_pretrained(base)
    for f in tiny_bert_dir.iterdir():
        if "token" in f.name or f.name.startswith("vocab") or f.name == "special_tokens_map.json":
            (base / f.name).write_bytes(f.read_bytes())
    cfg = {
        "seed": 11,
        "data": {"train": str(sentiment_csv), "max_length": 32},
        "model": {"name_or_path": str(base)},
        "training": {"max_steps": 2, "batch_size": 16, "cpu": True},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    for name in ("a", "b"):
        done = subprocess.run(
            [sys.executable, "-m", "lmdistill.cli", "finetune", "c.yaml", f"output_dir={name}"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr[-2000:]
    a, b = (load_file(tmp_path / n / "model" / "model.safetensors") for n in ("a", "b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_torch_compile_really_compiles_and_trains_like_eager(tmp_path, sentiment_csv, tiny_bert_dir):
    """training.compile with the real torch.compile (inductor, on the CPU): the compiled student trains to the
    same losses as the eager one (a few steps of a tiny model without dropout: the compiled run's batches are
    padded to fixed lengths, which the attention mask hides), and a graph was in fact compiled."""
    import shutil

    import torch._dynamo
    from transformers import AutoConfig

    model = tmp_path / "no-dropout"
    shutil.copytree(tiny_bert_dir, model)
    config = AutoConfig.from_pretrained(model)
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0
    config.save_pretrained(model)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    eager = api.finetune(_cfg(tmp_path / "eager", sentiment_csv, model, max_steps=3))
    compiled = api.finetune(_cfg(tmp_path / "compiled", sentiment_csv, model, max_steps=3, compile=True))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # dynamo produced a graph
    e = [r["loss"] for r in eager.history if "loss" in r]
    c = [r["loss"] for r in compiled.history if "loss" in r]
    assert len(e) == len(c) == 3 and c == pytest.approx(e, rel=1e-4)
