"""Two CPU processes (torchrun, gloo) match one process with the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file

from .conftest import bert_tokenizer, tiny_bert


@pytest.fixture(scope="module")
def no_dropout_teacher(tmp_path_factory):
    d = tmp_path_factory.mktemp("nodrop")
    tok = bert_tokenizer(d)
    model = tiny_bert(vocab=len(tok))
    model.config.hidden_dropout_prob = model.config.attention_probs_dropout_prob = 0.0
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


def _run(cmd: list[str], cwd) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


TORCHRUN = os.path.join(os.path.dirname(sys.executable), "torchrun")


@pytest.mark.skipif(not os.path.exists(TORCHRUN), reason="torchrun not installed next to this Python")
def test_two_processes_match_one(tmp_path, no_dropout_teacher, sentiment_csv):
    cfg = {
        "seed": 5,
        "data": {"train": str(sentiment_csv), "max_length": 32},
        "teacher": {"name_or_path": str(no_dropout_teacher)},
        "student": {"layers": [0, 3]},
        # per-example terms: a token-level mean would be taken per process and then averaged (docs/distributed.md)
        "distill": {"losses": {"kd": 0.5, "ce": 0.5}, "matches": [{"feature": "cls", "strategy": "uniform"}]},
        # fp32 on every CPU: `auto` would pick bf16 autocast on a bf16-native CPU, whose rounding the comparison
        # below is not about
        "training": {
            "epochs": 2,
            "log_every": 3,
            "learning_rate": 1e-3,
            "cpu": True,
            "mixed_precision": "no",
        },
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    # 192 training rows in global batches of 10: 19 full batches and one of 2 (shuffled in among them), which
    # each process shares too (accelerate's split_batches alone would skip a short batch mid-epoch)
    _run(
        [
            sys.executable,
            "-m",
            "lmdistill.cli",
            "distill",
            "c.yaml",
            "training.batch_size=10",
            "output_dir=one",
        ],
        tmp_path,
    )
    _run(
        [
            TORCHRUN,
            "--nproc_per_node",
            "2",
            "--master_port",
            "29517",
            "-m",
            "lmdistill.cli",
            "distill",
            "c.yaml",
            "training.batch_size=5",
            "output_dir=two",
        ],
        tmp_path,
    )
    one = load_file(tmp_path / "one" / "model" / "model.safetensors")
    two = load_file(tmp_path / "two" / "model" / "model.safetensors")
    for k in one:
        torch.testing.assert_close(one[k], two[k], atol=2e-5, rtol=1e-4, msg=k)
    a, b = pd.read_csv(tmp_path / "one" / "metrics.csv"), pd.read_csv(tmp_path / "two" / "metrics.csv")
    assert list(a.columns) == list(b.columns) and len(a) == len(b)
    pd.testing.assert_frame_equal(a, b, rtol=1e-4, atol=1e-5)
