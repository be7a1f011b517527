"""Deep mutual learning (``mutual:``): the mutual term against a hand computation, identical students staying
identical, different students starting different, each student saved as its own model, exact resume, and
one-line errors for bad configs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file

from lmdistill.objective import Objective
from tests.conftest import bert_tokenizer, make_sentences, save_tiny_bert


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory) -> Path:
    """A tiny 'pretrained' BERT encoder without a classification head (students get new heads), dropout off."""
    from transformers import BertModel

    d = tmp_path_factory.mktemp("encoder")
    dropout_off = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "classifier_dropout": 0.0}
    return save_tiny_bert(BertModel, bert_tokenizer(d), d, 0, **dropout_off)


def _config(tmp_path, data, model, name="run", **mutual) -> dict:
    return {
        "seed": 5,
        "output_dir": str(tmp_path / name),
        "data": {"train": str(data), "max_length": 24},
        "model": {"name_or_path": str(model)},
        "training": {
            "max_steps": 12,
            "batch_size": 8,
            "learning_rate": 1e-3,
            "log_every": 4,
            "save_every": 4,
            "save_total_limit": 5,
        },
        "mutual": {"students": 2, **mutual},
    }


def _weights(run: Path, i: int) -> dict[str, torch.Tensor]:
    return load_file(run / "model" / f"student_{i}" / "model.safetensors")


# ---------------------------------------------------------------------------------------- the mutual term


def _objective(n: int, weight: float = 0.5, temperature: float = 2.0, term: str = "kd"):
    from lmdistill.mutual import MutualObjective

    losses = {"ce": 1.0} if term == "kd" else {"mse": 1.0}
    return MutualObjective([Objective(losses, temperature) for _ in range(n)], weight, term)


def _kl(p_logits: torch.Tensor, q_logits: torch.Tensor, t: float) -> torch.Tensor:
    """Naive KL(p || q) per row at temperature t, averaged over rows."""
    rows = []
    for a, b in zip(p_logits.tolist(), q_logits.tolist()):
        p = torch.softmax(torch.tensor(a) / t, -1)
        q = torch.softmax(torch.tensor(b) / t, -1)
        rows.append(sum(float(pi) * (float(pi.log()) - float(qi.log())) for pi, qi in zip(p, q)))
    return torch.tensor(sum(rows) / len(rows))


def test_mutual_term_is_the_mean_kl_from_each_other_student_times_t_squared():
    torch.manual_seed(0)
    logits = [torch.randn(5, 3, requires_grad=True) for _ in range(3)]
    batch = {"labels": torch.tensor([0, 1, 2, 1, 0]), "student": {}}
    obj = _objective(3, temperature=2.0)
    terms = obj([SimpleNamespace(logits=x) for x in logits], None, batch)
    for i in range(3):
        others = [_kl(logits[j].detach(), logits[i].detach(), 2.0) for j in range(3) if j != i]
        expected = 4.0 * sum(others) / 2  # T^2 = 4, mean over the 2 other students
        assert torch.allclose(terms[f"student_{i}/mutual"], expected, atol=1e-5)
        ce = torch.nn.functional.cross_entropy(logits[i], batch["labels"])
        assert torch.allclose(terms[f"student_{i}/ce"], ce)


def test_mutual_term_sends_no_gradient_to_the_other_students():
    torch.manual_seed(1)
    a, b = torch.randn(4, 3, requires_grad=True), torch.randn(4, 3, requires_grad=True)
    terms = _objective(2)(
        [SimpleNamespace(logits=a), SimpleNamespace(logits=b)], None, {"labels": torch.tensor([0, 1, 2, 0])}
    )
    terms["student_0/mutual"].backward()
    assert a.grad is not None and a.grad.abs().sum() > 0
    assert b.grad is None


def test_total_weighs_each_students_terms_and_mutual_term():
    torch.manual_seed(2)
    logits = [torch.randn(6, 2) for _ in range(2)]
    batch = {"labels": torch.tensor([0, 1, 1, 0, 1, 0])}
    obj = _objective(2, weight=0.25, temperature=1.0)
    terms = obj([SimpleNamespace(logits=x) for x in logits], None, batch)
    expected = sum(terms[f"student_{i}/ce"] + 0.25 * terms[f"student_{i}/mutual"] for i in range(2))
    assert torch.allclose(obj.total(terms), expected)
    assert set(terms) == {"student_0/ce", "student_0/mutual", "student_1/ce", "student_1/mutual"}


def test_regression_mutual_term_is_the_squared_error_to_the_other_student():
    a, b = torch.tensor([[1.0], [2.0], [0.0]]), torch.tensor([[0.0], [4.0], [1.0]])
    batch = {"labels": torch.tensor([0.5, 1.0, float("nan")])}
    terms = _objective(2, term="kd_mse")([SimpleNamespace(logits=a), SimpleNamespace(logits=b)], None, batch)
    assert torch.allclose(terms["student_0/mutual"], torch.tensor((1 + 4 + 1) / 3))
    assert torch.allclose(terms["student_1/mutual"], torch.tensor((1 + 4 + 1) / 3))


def test_each_student_is_clipped_on_its_own():
    from accelerate import Accelerator

    from lmdistill.engine import _clip
    from lmdistill.mutual import MutualStudents, clip_groups

    students = MutualStudents([torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)])
    obj = _objective(2)
    for p in students.members[0].parameters():
        p.grad = torch.full_like(p, 100.0)  # a norm far above 1
    for p in students.members[1].parameters():
        p.grad = torch.full_like(p, 0.01)  # a norm far below 1
    small = [p.grad.clone() for p in students.members[1].parameters()]
    _clip(Accelerator(cpu=True), clip_groups(students, obj), 1.0)
    norm0 = torch.cat([p.grad.flatten() for p in students.members[0].parameters()]).norm()
    assert torch.allclose(norm0, torch.tensor(1.0), atol=1e-4)
    assert all(torch.equal(p.grad, s) for p, s in zip(students.members[1].parameters(), small))


# ---------------------------------------------------------------------------------------- whole runs


def test_two_identical_students_without_a_teacher_stay_identical(tmp_path, sentiment_csv, encoder_dir):
    from lmdistill import api

    result = api.finetune(_config(tmp_path, sentiment_csv, encoder_dir, init="same"))
    a, b = _weights(result.output_dir, 0), _weights(result.output_dir, 1)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit for bit, after 12 steps
    before = load_file(encoder_dir / "model.safetensors")
    key = next(k for k in a if k.endswith("encoder.layer.0.attention.self.query.weight"))
    assert not torch.equal(a[key], before[key.removeprefix("bert.")])  # they did train


def test_students_start_different_and_each_is_saved_as_a_model(tmp_path, sentiment_csv, encoder_dir):
    from transformers import AutoModelForSequenceClassification

    from lmdistill import api

    result = api.finetune(_config(tmp_path, sentiment_csv, encoder_dir))
    out = result.output_dir
    a, b = _weights(out, 0), _weights(out, 1)
    assert not torch.equal(a["classifier.weight"], b["classifier.weight"])
    for i in range(2):
        model = AutoModelForSequenceClassification.from_pretrained(out / "model" / f"student_{i}")
        assert model.config.num_labels == 2
    res = json.loads((out / "results.json").read_text())
    for split in ("validation", "test"):
        mean = (res[split]["student_0/accuracy"] + res[split]["student_1/accuracy"]) / 2
        assert res[split]["accuracy"] == pytest.approx(mean)
    assert res["mutual"]["models"] == ["model/student_0", "model/student_1"]
    assert {"student_0/ce", "student_0/mutual", "student_1/ce", "student_1/mutual"} == set(res["loss_terms"])
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["mutual"] == {"students": 2, "weight": 1.0, "init": "seeds", "layers": None}


def test_resume_continues_both_students_and_their_optimizer_states_exactly(
    tmp_path, sentiment_csv, encoder_dir
):
    from lmdistill import api, checkpoint

    cfg = _config(tmp_path, sentiment_csv, encoder_dir)
    out = api.finetune(cfg).output_dir
    reference = [_weights(out, i) for i in range(2)]
    history = (out / "metrics.csv").read_text()
    (out / "results.json").unlink()  # as if it had been killed after the checkpoint of step 8
    assert [p.name for p in checkpoint.checkpoints(out)] == ["step-00000004", "step-00000008"]
    cfg["training"]["resume"] = "auto"
    again = api.finetune(cfg)
    assert json.loads((out / "results.json").read_text())["resumed_from"].endswith("step-00000008")
    assert again.steps == 12
    for i in range(2):
        got = _weights(out, i)
        assert all(torch.equal(got[k], reference[i][k]) for k in got), f"student {i}"
    assert (out / "metrics.csv").read_text() == history


def test_distill_with_a_teacher_cache_and_students_of_other_layers(tmp_path, sentiment_csv, tiny_bert_dir):
    from lmdistill import api

    cfg = _config(tmp_path, sentiment_csv, tiny_bert_dir, layers=[[0, 2], [1, 3]])
    cfg.pop("model")
    cfg["teacher"] = {"name_or_path": str(tiny_bert_dir)}
    cfg["student"] = {"num_layers": 2}
    cfg["training"].update(max_steps=4, save_every=None, teacher_cache="auto")
    out = api.distill(cfg).output_dir
    assert (out / "teacher_cache").is_dir()  # one teacher pass serves both students
    res = json.loads((out / "results.json").read_text())
    assert set(res["loss_terms"]) == {f"student_{i}/{t}" for i in range(2) for t in ("kd", "ce", "mutual")}
    teacher = load_file(tiny_bert_dir / "model.safetensors")
    layer = "encoder.layer.0.attention.self.query.weight"
    # trained a few steps from the teacher's layers 0 and 1: each still nearest its own starting layer
    for i, start in enumerate((0, 1)):
        got = _weights(out, i)[f"bert.{layer}"]
        dist = [(got - teacher[f"bert.encoder.layer.{j}.attention.self.query.weight"]).norm() for j in (0, 1)]
        assert min(range(2), key=dist.__getitem__) == start


# ---------------------------------------------------------------------------------------- bad configs


@pytest.mark.parametrize(
    ("change", "verb", "message"),
    [
        ({"mutual": {"students": 1}}, "finetune", "mutual.students must be at least 2"),
        ({"mutual": {"weight": 0}}, "finetune", "mutual.weight must be above 0"),
        ({"mutual": {"studnets": 3}}, "finetune", "did you mean"),
        ({"mutual": {"layers": [[0, 1]]}}, "finetune", "mutual.layers applies to distill runs"),
        ({"mutual": {}, "task": "embedding"}, "distill", "mutual applies to tasks with output-level"),
        ({"mutual": {}}, "distill", "students copied from the same teacher layers start identical"),
        ({"mutual": {"layers": [[0, 1]]}}, "distill", "one list per student: 2 lists, got 1"),
        ({"mutual": {"layers": [[0, 0], [1]]}}, "distill", "distinct 0-based teacher layers"),
        ({"mutual": {"init": "same"}, "training": {"compile": True}}, "distill", "training.compile"),
        ({"student": {"num_layers": 2, "seed": -1}}, "distill", "student.seed must be between 0 and"),
        (
            {"mutual": {"init": "same"}, "teachers": [{"name_or_path": "a"}, {"name_or_path": "b"}]},
            "distill",
            "mutual does not combine with teachers",
        ),
    ],
)
def test_bad_mutual_configs_fail_in_one_line(tmp_path, change, verb, message):
    from lmdistill import load_config
    from lmdistill.errors import ConfigError

    cfg = {
        "data": {"train": str(tmp_path / "x.csv")},
        "model": {"name_or_path": "m"},
        "teacher": {"name_or_path": "t"},
        "student": {"num_layers": 2},
    }
    for k, v in change.items():
        cfg[k] = {**cfg.get(k, {}), **v} if isinstance(v, dict) else v
    with pytest.raises(ConfigError) as err:
        load_config(cfg, verb=verb)
    line = next(e for e in err.value.errors if message in e)
    assert "\n" not in line and len(line) <= 300


def test_students_loaded_with_the_same_weights_are_refused(tmp_path, sentiment_csv, tiny_bert_dir):
    from lmdistill import api
    from lmdistill.errors import LmdistillError

    # tiny_bert_dir has a 2-label head already: every student would load the same weights
    with pytest.raises(LmdistillError, match="students 0 and 1 start with the same weights"):
        api.finetune(_config(tmp_path, sentiment_csv, tiny_bert_dir))


# ---------------------------------------------------------------------------------------- several processes

TORCHRUN = os.path.join(os.path.dirname(sys.executable), "torchrun")


@pytest.mark.skipif(not os.path.exists(TORCHRUN), reason="torchrun not installed next to this Python")
def test_two_processes_train_both_students_as_one_process_does(tmp_path, sentiment_csv, encoder_dir):
    cfg = _config(tmp_path, sentiment_csv, encoder_dir)
    # fp32 on any CPU (a subprocess does not see conftest's CPU without native bf16)
    cfg["training"].update(max_steps=4, save_every=None, cpu=True, log_every=2, mixed_precision="no")
    cfg["data"].update(validation_size=0.0, test_size=0.0)  # no evaluation: the final students are saved
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    import lmdistill

    src = str(Path(lmdistill.__file__).parents[1])  # this checkout's package, also in the subprocesses
    path = os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": path,
    }
    runs = {
        "one": [sys.executable, "-m", "lmdistill.cli", "finetune", "c.yaml", "training.batch_size=10"],
        "two": [TORCHRUN, "--nproc_per_node", "2", "--master_port", "29533", "-m", "lmdistill.cli"]
        + ["finetune", "c.yaml", "training.batch_size=5"],
    }
    for name, cmd in runs.items():
        proc = subprocess.run(
            [*cmd, f"output_dir={name}"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for i in range(2):
        one, two = _weights(tmp_path / "one", i), _weights(tmp_path / "two", i)
        for k in one:
            torch.testing.assert_close(one[k], two[k], atol=2e-5, rtol=1e-4, msg=f"student {i}: {k}")


# ---------------------------------------------------------------------------------------- token-level tasks


def test_causal_lm_mutual_term_counts_only_the_predicted_tokens():
    from lmdistill.losses.divergences import DIVERGENCES
    from lmdistill.mutual import MutualObjective
    from lmdistill.tasks.lm_objective import CausalLMObjective

    torch.manual_seed(3)
    a, b = torch.randn(2, 6, 11), torch.randn(2, 6, 11)
    labels = [[-100, -100, 4, 5, 6, -100], [-100, 7, 8, -100, -100, -100]]  # prompt, response, padding
    batch = {
        "labels": torch.tensor(labels),
        "student": {"attention_mask": torch.ones(2, 6, dtype=torch.long)},
    }
    obj = MutualObjective([CausalLMObjective({"lm": 1.0}, 2.0, chunk_size=4) for _ in range(2)], 1.0)
    terms = obj([SimpleNamespace(logits=a), SimpleNamespace(logits=b)], None, batch)
    rows = [(i, p) for i in range(2) for p in range(5) if labels[i][p + 1] != -100]  # p predicts p + 1
    expected = torch.stack([DIVERGENCES["forward_kl"](a[i, p], b[i, p], 2.0) for i, p in rows]).mean() * 4.0
    torch.testing.assert_close(terms["student_0/mutual"], expected)


def test_causal_lm_students_learn_from_each_other(tmp_path):
    import pandas as pd
    from transformers import AutoModelForCausalLM

    from lmdistill import api
    from tests.test_causal_lm import tiny_llama, word_tokenizer

    llama_dir, text_csv = tmp_path / "llama", tmp_path / "text"
    tok = word_tokenizer()
    tiny_llama(len(tok)).save_pretrained(llama_dir)
    tok.save_pretrained(llama_dir)
    text_csv.mkdir()
    pd.DataFrame({"text": [r[0] + " ." for r in make_sentences(300, seed=3)]}).to_csv(
        text_csv / "text.csv", index=False
    )

    cfg = {
        "task": "causal_lm",
        "seed": 0,
        "output_dir": str(tmp_path / "lm"),
        "data": {
            "train": str(text_csv / "text.csv"),
            "validation_size": 0.1,
            "test_size": 0.1,
            "max_length": 24,
        },
        "teacher": {"name_or_path": str(llama_dir)},
        "student": {"num_layers": 2},
        "distill": {"losses": {"lm": 1.0}, "temperature": 1.0},  # taught by each other only
        "lm": {"block_size": 16},
        "training": {"max_steps": 4, "batch_size": 8, "learning_rate": 3e-3},
        "mutual": {"layers": [[0, 3], [1, 2]], "weight": 0.5},
    }
    out = api.distill(cfg).output_dir
    res = json.loads((out / "results.json").read_text())
    assert set(res["loss_terms"]) == {"student_0/lm", "student_0/mutual", "student_1/lm", "student_1/mutual"}
    assert res["validation"]["perplexity"] == pytest.approx(
        (res["validation"]["student_0/perplexity"] + res["validation"]["student_1/perplexity"]) / 2
    )
    for i in range(2):
        model = AutoModelForCausalLM.from_pretrained(out / "model" / f"student_{i}")
        assert model.config.num_hidden_layers == 2


def test_fresh_students_get_their_own_seeds_derived_from_the_run_seed():
    from lmdistill import load_config
    from lmdistill.tasks.base import make_student
    from lmdistill.tasks.mutual import member_config
    from tests.conftest import tiny_bert

    cfg = load_config(
        {
            "seed": 5,
            "data": {"train": "x.csv"},
            "teacher": {"name_or_path": "t"},
            "student": {"init": "config", "num_layers": 1},
            "mutual": {"students": 3},
        },
        verb="distill",
    )
    members = [member_config(cfg, i) for i in range(3)]
    assert members[0] is cfg  # student 0: what a single run builds
    assert [m.student.seed for m in members[1:]] == [5 + 7919, 5 + 2 * 7919]
    teacher = tiny_bert(layers=2)
    built = [make_student(m, teacher, None, None)[0] for m in members]
    w = [s.bert.encoder.layer[0].attention.self.query.weight for s in built]
    assert not torch.equal(w[0], w[1]) and not torch.equal(w[1], w[2]) and not torch.equal(w[0], w[2])
    again = make_student(member_config(cfg, 1), teacher, None, None)[0]  # reproducible
    assert torch.equal(again.bert.encoder.layer[0].attention.self.query.weight, w[1])


def test_mlm_students_learn_from_each_other_and_the_teacher(tmp_path):
    """Masked-LM students: each gets its MLM loss, the teacher's KD and the other student's predictions at the
    masked positions; each is saved as a masked LM of its own layers."""
    from transformers import AutoModelForMaskedLM, BertForMaskedLM

    from lmdistill import api
    from tests.test_mlm_general import CORPUS, _bert

    tok = bert_tokenizer(tmp_path)

    teacher_dir = tmp_path / "mlm_teacher"
    _bert(BertForMaskedLM, len(tok)).save_pretrained(teacher_dir)
    tok.save_pretrained(teacher_dir)
    (tmp_path / "corpus.txt").write_text("\n".join(CORPUS) + "\n")
    cfg = {
        "task": "mlm",
        "seed": 0,
        "output_dir": str(tmp_path / "mlm"),
        "data": {
            "train": str(tmp_path / "corpus.txt"),
            "block_size": 24,
            "validation_size": 0.1,
            "test_size": 0.1,
        },
        "teacher": {"name_or_path": str(teacher_dir)},
        "student": {"num_layers": 2},
        "distill": {"losses": {"kd": 1.0, "mlm": 1.0}, "temperature": 1.0},
        "training": {"max_steps": 4, "batch_size": 8, "learning_rate": 2e-3, "log_every": 2},
        "mutual": {"layers": [[0, 2], [1, 3]]},
    }
    out = api.distill(cfg).output_dir
    res = json.loads((out / "results.json").read_text())
    assert set(res["loss_terms"]) == {f"student_{i}/{t}" for i in (0, 1) for t in ("kd", "mlm", "mutual")}
    assert res["validation"]["perplexity"] == pytest.approx(
        (res["validation"]["student_0/perplexity"] + res["validation"]["student_1/perplexity"]) / 2
    )
    teacher = AutoModelForMaskedLM.from_pretrained(teacher_dir)
    for i, layers in enumerate([[0, 2], [1, 3]]):
        model = AutoModelForMaskedLM.from_pretrained(out / "model" / f"student_{i}")
        assert model.config.num_hidden_layers == 2
        # built from its own teacher layers (then trained): closer to those than to the other student's
        mine = [teacher.bert.encoder.layer[k].output.dense.weight for k in layers]
        other = [teacher.bert.encoder.layer[k].output.dense.weight for k in [[1, 3], [0, 2]][i]]
        got = [model.bert.encoder.layer[j].output.dense.weight for j in range(2)]
        assert sum((g - m).norm() for g, m in zip(got, mine)) < sum(
            (g - o).norm() for g, o in zip(got, other)
        )
    metrics = pd.read_csv(out / "metrics.csv")
    assert (metrics["loss/student_1/mutual"].dropna() > 0).all()


def test_lora_students_learn_from_each_other_and_save_only_their_adapters(tmp_path):
    """Two causal-LM students made of teacher layers with LoRA adapters: only the adapters train (each
    student's own), each is saved as its adapters plus its base, and PEFT loads each."""
    from lmdistill import api
    from lmdistill.models.lora import load_lora
    from tests.test_lm_lora import _lora_cfg

    from .test_causal_lm import tiny_llama, word_tokenizer

    root = tmp_path / "lm"
    tok = word_tokenizer()
    tiny_llama(len(tok), layers=4, seed=0).save_pretrained(root / "teacher")
    tok.save_pretrained(root / "teacher")
    pd.DataFrame({"text": [r[0] + " ." for r in make_sentences(120, seed=2)]}).to_csv(
        root / "text.csv", index=False
    )
    cfg = _lora_cfg(tmp_path, root, "run")
    cfg["student"] = {"num_layers": 2, "lora": {"r": 2, "alpha": 4, "target_modules": ["q_proj", "v_proj"]}}
    cfg["mutual"] = {"layers": [[0, 3], [1, 2]], "weight": 0.5}
    out = api.distill(cfg).output_dir
    res = json.loads((out / "results.json").read_text())
    assert {"student_0/mutual", "student_1/mutual"} <= set(res["loss_terms"])
    adapters = []
    for i in range(2):
        folder = out / "model" / f"student_{i}"
        saved = load_file(folder / "adapter_model.safetensors")
        assert saved and all("lora_" in k for k in saved)
        assert any("lora_B" in k and v.abs().max() > 0 for k, v in saved.items())  # B starts at 0: it trained
        peft_model, _ = load_lora(folder)
        assert peft_model.base_model.model.config.num_hidden_layers == 2
        adapters.append(saved)
    assert any(not torch.equal(adapters[0][k], adapters[1][k]) for k in adapters[0])  # two students, not one


def test_regression_students_learn_from_each_other_and_a_teacher(tmp_path, sentiment_csv):
    """Regression: each student's MSE to the labels, the teacher's kd_mse and the mutual squared error to the
    other student; each is saved as a one-output regressor."""
    from transformers import AutoModelForSequenceClassification

    from lmdistill import api
    from tests.conftest import tiny_bert

    tok = bert_tokenizer(tmp_path)
    teacher = tmp_path / "regressor"
    tiny_bert(num_labels=1, layers=4, vocab=len(tok), seed=1).save_pretrained(teacher)
    tok.save_pretrained(teacher)
    cfg = {
        "task": "regression",
        "seed": 0,
        "output_dir": str(tmp_path / "reg"),
        "data": {"train": str(sentiment_csv), "label_column": "score", "max_length": 24},
        "teacher": {"name_or_path": str(teacher)},
        "student": {"num_layers": 2},
        "distill": {"losses": {"kd_mse": 1.0, "mse": 1.0}},
        "training": {"max_steps": 6, "batch_size": 8, "learning_rate": 1e-3, "log_every": 2},
        "mutual": {"layers": [[0, 2], [1, 3]]},
    }
    out = api.distill(cfg).output_dir
    res = json.loads((out / "results.json").read_text())
    assert set(res["loss_terms"]) == {f"student_{i}/{t}" for i in (0, 1) for t in ("kd_mse", "mse", "mutual")}
    assert res["mutual"]["term"] == "kd_mse"
    for i in range(2):
        model = AutoModelForSequenceClassification.from_pretrained(out / "model" / f"student_{i}")
        assert model.config.num_labels == 1 and model.config.num_hidden_layers == 2
    metrics = pd.read_csv(out / "metrics.csv")
    assert (metrics["loss/student_0/mutual"].dropna() > 0).all()
