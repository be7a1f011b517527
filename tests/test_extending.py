"""Adding a task is one module and one registry line: a task defined here, registered by name, runs finetune
and distill (with the teacher cache and another divergence) through the public API, and its config is checked
from its attributes by the loader and `lmdistill validate`, with no other change to the package
(docs/extending.md)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from lmdistill import api
from lmdistill.config.schema import StageConfig
from lmdistill.objective import Objective
from lmdistill.tasks import _LOADED, TASKS
from lmdistill.tasks.base import Parts, Task, make_student, stage_key, stage_objective, stages_of


class LengthTask(Task):
    """A toy task: is a sentence longer than five words? Labels come from the text itself."""

    name = "toy_length"
    loss_terms = ("kd", "ce")
    default_losses = {"kd": 0.5, "ce": 0.5}
    baseline_losses = {"ce": 1.0}
    metrics = {"accuracy": True}
    primary_metric = "accuracy"
    cacheable = True
    labelled = True

    def parts(self, cfg, verb):
        from lmdistill.data.text import Collator, TextDataset, pad_id
        from lmdistill.models.load import load_classifier, load_saved_classifier

        texts = pd.read_csv(cfg.data.train)["text"].tolist()
        labels = [int(len(t.split()) > 5) for t in texts]
        if verb == "finetune":
            student, tok = load_classifier(cfg.model, "model", num_labels=2)
            teacher, objectives, stages = None, [Objective({"ce": 1.0})], [StageConfig(name="finetune")]
        else:
            teacher, tok = load_saved_classifier(cfg.teacher.name_or_path, "teacher.name_or_path")
            student, tok = make_student(cfg, teacher, tok, None)
            stages = stages_of(cfg)
            objectives = [
                stage_objective(cfg, st, student, teacher, stage_key(cfg, i)) for i, st in enumerate(stages)
            ]
        cut = int(0.8 * len(texts))
        enc = tok(texts, truncation=True, max_length=cfg.data.max_length)
        sets = {
            split: TextDataset({"input_ids": enc["input_ids"][a:b]}, labels[a:b])
            for split, (a, b) in {"train": (0, cut), "validation": (cut, len(texts))}.items()
        }
        collate = Collator(pad_id(tok))
        return Parts(student, tok, sets["train"], collate, objectives, stages, teacher=teacher, data=sets)

    def has_split(self, parts, split):
        return split in parts.data

    def evaluate(self, model, parts, split, objective):
        from lmdistill.engine import predict

        logits = predict(model, parts.data[split], parts.collate, 64)
        return {"accuracy": float((logits.argmax(-1) == parts.data[split].labels.numpy()).mean())}

    def reload(self, path, parts):
        return self.load_saved(path)[0]

    def load_saved(self, path, key="model"):
        from lmdistill.models.load import load_saved_classifier

        return load_saved_classifier(str(path), key)


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(TASKS, "toy_length", "tests.test_extending:LengthTask")
    yield
    _LOADED.pop("toy_length", None)


def _cfg(tmp_path, name, data, **sections):
    cfg = {
        "task": "toy_length",
        "seed": 0,
        "output_dir": str(tmp_path / name),
        "data": {"train": str(data), "max_length": 32},
        "training": {"epochs": 2, "batch_size": 16, "learning_rate": 3e-3, "log_every": 5},
    }
    cfg.update(sections)
    return cfg


def test_a_task_defined_outside_the_package_runs_end_to_end(
    registered, tmp_path, tiny_bert_dir, sentiment_csv
):
    teacher = api.finetune(
        _cfg(tmp_path, "teacher", sentiment_csv, model={"name_or_path": str(tiny_bert_dir)})
    )
    assert (
        set(teacher.validation) == {"accuracy"} and teacher.steps == 24
    )  # 192 training rows / 16 x 2 epochs
    student = api.distill(
        _cfg(
            tmp_path,
            "student",
            sentiment_csv,
            teacher={"name_or_path": str(teacher.model_dir)},
            student={"layers": [0, 3]},
            distill={"divergence": "reverse_kl", "losses": {"kd": 1.0, "ce": 0.5}},
            training={"epochs": 1, "batch_size": 16, "learning_rate": 3e-3, "teacher_cache": "auto"},
        )
    )
    results = json.loads((tmp_path / "student" / "results.json").read_text())
    assert (results["task"], results["role"], results["loss_terms"]) == (
        "toy_length",
        "student",
        ["ce", "kd"],
    )
    assert (tmp_path / "student" / "teacher_cache" / "lmdistill-teacher-cache.json").is_file()
    assert student.teacher_parameters == teacher.parameters and student.parameters < teacher.parameters


def test_its_config_is_checked_by_its_attributes(registered, tmp_path, sentiment_csv):
    from lmdistill.cli import main
    from lmdistill.errors import ConfigError
    from lmdistill.tasks import load_config

    with pytest.raises(ConfigError) as e:
        load_config(_cfg(tmp_path, "x", sentiment_csv, training={"metric_for_best": "accuracyy"}))
    assert e.value.errors == [
        "training.metric_for_best 'accuracyy' is not measured for task toy_length (did you mean 'accuracy'?) "
        "(use one of: accuracy)"
    ]
    with pytest.raises(ConfigError) as e:
        load_config(_cfg(tmp_path, "x", sentiment_csv, distill={"losses": {"mse": 1.0}}), verb="distill")
    assert (
        "distill.losses.mse is not a loss for task toy_length (for task toy_length use: kd, ce)"
        in e.value.errors
    )
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(_cfg(tmp_path, "x", sentiment_csv, model={"name_or_path": "m"})))
    assert main(["validate", str(path)]) == 0
