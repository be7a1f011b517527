"""Text classification and regression (``task: classification`` / ``task: regression``).

A sequence classifier (``AutoModelForSequenceClassification``) reads one text or a text pair and predicts a
label (classification: cross-entropy ``ce``, accuracy and macro-F1) or a number (regression, one output:
``mse``, Pearson and Spearman). Distillation adds the teacher's outputs: ``kd`` (soft targets through the
configured divergence, :meth:`lmdistill.objective.Objective.kd`) and ``kd_mse`` (MSE to the teacher's logits),
and any intermediate ``distill.matches``. When the teacher's tokenizer differs from the student's, each model
reads the text tokenised its own way; token-level matches are then refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from torch import nn

from lmdistill.config.schema import Config, StageConfig
from lmdistill.data.tables import Examples, TaskData, load_task_data
from lmdistill.errors import ModelError
from lmdistill.methods.presets import PRESETS
from lmdistill.objective import Objective
from lmdistill.tasks.base import (
    Parts,
    Quality,
    Task,
    make_student,
    refuse_other_label_names,
    stage_key,
    stage_objective,
    stages_of,
)


@dataclass
class Splits:
    """The evaluation side of a run: the data, per-split datasets and the evaluation collator."""

    data: TaskData
    sets: dict
    collate: object
    batch_size: int


class SequenceTask(Task):
    """What classification and regression share: tables of texts and labels, one output per text."""

    cacheable = True
    presets = PRESETS
    labelled = True
    regression = False

    def ensemble_teacher(self, cfg: Config, key: str):
        from lmdistill.models.load import load_saved_classifier

        return load_saved_classifier(cfg.teacher, key)

    def ensemble_inputs(self, parts: Parts, tokenizer, model, cfg: Config):
        """One output per text: a teacher with its own tokenizer reads the training texts its own way."""
        from lmdistill.data.text import OwnInputs, encode, max_length_for, pad_id

        enc = encode(tokenizer, parts.data.data.splits["train"], max_length_for(cfg.data.max_length, model))
        return OwnInputs(enc, pad_id(tokenizer))

    def check(self, cfg: Config, verb) -> list[str]:
        from lmdistill.config.checks import check_label_columns

        errors = check_label_columns(cfg.data)
        d = cfg.data
        pool = [k for k, v in (("data.unlabeled", d.unlabeled), ("data.augment", d.augment)) if v is not None]
        if pool and d.text_pair_column:
            errors.append(
                f"{pool[0]} applies to single texts, not to text pairs (data.text_pair_column is set)"
            )
        losses = self.default_losses if cfg.distill.losses is None else cfg.distill.losses
        taught = any(w > 0 for k, w in losses.items() if k != self.hard_term) or cfg.distill.stages
        if pool and verb == "distill" and not taught:
            errors.append(
                f"{pool[0]} is learned from the teacher alone: distill.losses needs a teacher term "
                f"({', '.join(t for t in self.loss_terms if t != self.hard_term)})"
            )
        if pool and cfg.training.max_tokens is not None:
            errors.append(
                f"{pool[0]} mixes two pools in every batch: set training.batch_size, not training.max_tokens"
            )
        return errors

    def resolve(self, cfg: Config) -> None:
        if (
            cfg.data.unlabeled is not None or cfg.data.augment is not None
        ) and cfg.training.teacher_cache is None:
            cfg.training.teacher_cache = (
                "auto"  # the teacher scores the unlabelled pool once, not every epoch
            )

    def check_data(self, cfg: Config) -> list[str]:
        from lmdistill.data.tables import check_files

        d = cfg.data
        cols = {"data.text_column": d.text_column, "data.text_pair_column": d.text_pair_column}
        return check_files(d, {**cols, "data.label_column": d.label_column})

    # ---- the run
    def parts(self, cfg: Config, verb: str) -> Parts:
        from lmdistill.models.load import load_classifier, load_saved_classifier

        data = load_task_data(cfg.data, self.name, cfg.seed)
        extra = {"label_names": data.label_names, "split_sizes": {k: len(v) for k, v in data.splits.items()}}
        if verb == "finetune":
            model, tok = load_classifier(
                cfg.model, "model", num_labels=data.num_labels, label_names=data.label_names
            )
            sets, collate, _ = self.datasets(data, tok, None, cfg, model)
            objective = Objective(dict(self.baseline_losses))
            return Parts(
                model,
                tok,
                sets["train"],
                collate,
                [objective],
                [StageConfig(name="finetune")],
                data=self._splits(data, sets, collate, cfg),
                extra=extra,
            )
        teacher, t_tok = load_saved_classifier(cfg.teacher, "teacher.name_or_path")
        self.check_teacher_labels(teacher, data)
        load = partial(load_classifier, num_labels=data.num_labels, label_names=data.label_names)
        student, s_tok = make_student(cfg, teacher, t_tok, load)
        if data.label_names:  # the saved student names the data's classes, whatever the teacher called them
            student.config.id2label = dict(enumerate(data.label_names))
            student.config.label2id = {n: i for i, n in enumerate(data.label_names)}
        mix = None
        if cfg.data.unlabeled is not None or cfg.data.augment is not None:
            data, mix, extra["unlabelled"] = self.with_unlabelled(cfg, data, teacher, t_tok)
            extra["split_sizes"]["unlabelled"] = len(mix.unlabelled)
        sets, collate, separate = self.datasets(data, s_tok, t_tok, cfg, student, teacher)
        stages = stages_of(cfg)
        objectives = [
            self.objective(cfg, st, student, teacher, separate, stage_key(cfg, i))
            for i, st in enumerate(stages)
        ]
        return Parts(
            student,
            s_tok,
            sets["train"],
            collate,
            objectives,
            stages,
            teacher=teacher,
            mix=mix,
            data=self._splits(data, sets, collate, cfg),
            extra=extra,
        )

    def with_unlabelled(self, cfg: Config, data: TaskData, teacher, t_tok):
        """The data with the unlabelled pool (transfer texts, augmented copies) appended to its training split
        (label -100, or NaN for regression: no hard-label term reads them), which examples are which, and where
        the pool came from."""
        from lmdistill.data.sampler import Mix
        from lmdistill.tasks.unlabelled import unlabelled_pool

        train = data.splits["train"]
        exclude = {s: data.splits[s].texts for s in ("validation", "test") if s in data.splits}
        texts, info = unlabelled_pool(cfg, train.texts, exclude, teacher, t_tok)
        fill = float("nan") if self.regression else -100
        labels = list(train.labels) + [fill] * len(texts)
        splits = {**data.splits, "train": Examples(train.texts + texts, None, labels, source="train")}
        ratio = cfg.data.unlabeled.ratio if cfg.data.unlabeled is not None else None
        mix = Mix(list(range(len(train))), list(range(len(train), len(train) + len(texts))), ratio)
        return TaskData(splits, data.label_names), mix, info

    @staticmethod
    def _splits(data: TaskData, sets: dict, collate, cfg: Config) -> Splits:
        return Splits(data, sets, type(collate)(collate.student_pad_id), cfg.training.eval_batch_size)

    def datasets(self, data: TaskData, s_tok, t_tok, cfg: Config, student_model=None, teacher_model=None):
        """Per-split TextDatasets and the collator (teacher inputs only when its tokenizer differs).

        Texts are cut to ``data.max_length`` tokens, or to what the models' position embeddings allow."""
        from lmdistill.data.text import (
            Collator,
            TextDataset,
            encode,
            max_length_for,
            pad_id,
            tokenizers_match,
        )

        separate = t_tok is not None and not tokenizers_match(s_tok, t_tok)
        s_len = max_length_for(cfg.data.max_length, student_model, None if separate else teacher_model)
        t_len = max_length_for(cfg.data.max_length, teacher_model)
        sets = {}
        for split, ex in data.splits.items():
            student = encode(s_tok, ex, s_len)
            teacher = encode(t_tok, ex, t_len) if separate and split == "train" else None
            sets[split] = TextDataset(student, ex.labels, teacher, regression=self.regression)
        collate = Collator(pad_id(s_tok), pad_id(t_tok) if separate else None)
        return sets, collate, separate

    def objective(
        self, cfg: Config, stage: StageConfig, student, teacher, separate: bool, key: str
    ) -> Objective:
        """Output losses + resolved matches; token-level matches are refused across tokenizers."""
        from lmdistill.knowledge import refuse_token_level

        refuse_token_level(stage.matches, separate, key)
        return stage_objective(cfg, stage, student, teacher, key)

    def check_teacher_labels(self, teacher, data: TaskData) -> None:
        want = data.num_labels
        have = teacher.config.num_labels
        if have != want:
            raise ModelError(
                f"teacher.name_or_path: the teacher predicts {have} label(s) but the data has {want}; "
                "fine-tune a teacher on this task first (lmdistill finetune)"
            )
        names = [] if self.regression else [str(teacher.config.id2label[i]) for i in range(have)]
        refuse_other_label_names(names, data.label_names, "labels")

    def has_split(self, parts: Parts, split: str) -> bool:
        return split in parts.data.data.splits

    def evaluate(self, model: nn.Module, parts: Parts, split: str, objective: Objective) -> dict[str, float]:
        s: Splits = parts.data
        return self.metrics_of(
            model, s.sets[split], s.collate, s.data.splits[split], s.data.num_labels, s.batch_size
        )

    def metrics_of(self, model, dataset, collate, ex: Examples, num_labels: int, batch_size: int) -> dict:
        from lmdistill.engine import predict

        return self.scores(predict(model, dataset, collate, batch_size), np.asarray(ex.labels), num_labels)

    def scores(self, logits: np.ndarray, labels: np.ndarray, num_labels: int) -> dict[str, float]:
        """Accuracy and macro-F1 of the argmax (classification), or MSE, RMSE, Pearson, Spearman (regression)."""
        from lmdistill.tasks.metrics import classification_metrics, regression_metrics

        if self.regression:
            return regression_metrics(logits.reshape(-1), labels)
        return classification_metrics(np.argmax(logits, axis=-1), labels, num_labels)

    def reload(self, path: Path, parts: Parts) -> nn.Module:
        return self.load_saved(path)[0]

    def evaluate_saved(self, model, **kwargs):
        return _evaluate_saved(self, model, **kwargs)

    # ---- the report
    report_metrics: tuple[str, ...] = ()

    def report_inputs(self, cfg: Config):
        from lmdistill.errors import LmdistillError
        from lmdistill.tasks.base import ReportInputs

        data = load_task_data(cfg.data, self.name, cfg.seed)
        if "test" not in data.splits:
            raise LmdistillError(
                "report: the data has no test split; set data.test or data.test_size above 0"
            )
        examples = data.splits["test"]
        texts = examples.texts[: cfg.report.speed_texts]
        return ReportInputs(examples, texts, cfg.data.max_length, f"test split, {len(examples)} examples")

    def report_quality(self, model, tokenizer, cfg: Config, inputs) -> Quality:
        """Metrics with 95% bootstrap intervals on the test split, the predictions and (classification) the
        predicted probabilities."""
        import torch

        from lmdistill.data.text import Collator, TextDataset, encode, max_length_for, pad_id
        from lmdistill.engine import predict
        from lmdistill.report.stats import metric_ci

        examples = inputs.examples
        length = max_length_for(cfg.data.max_length, model if hasattr(model, "config") else None)
        ds = TextDataset(encode(tokenizer, examples, length), examples.labels, regression=self.regression)
        logits = predict(model, ds, Collator(pad_id(tokenizer)), cfg.training.eval_batch_size)
        pred = logits.reshape(-1) if self.regression else logits.argmax(-1)
        gold = np.asarray(examples.labels)
        metrics = {}
        for i, name in enumerate(self.report_metrics):
            ci = metric_ci(name, gold, pred, n_resamples=cfg.report.bootstrap_resamples, seed=cfg.seed + i)
            metrics[name] = {"value": ci.point, "low": ci.low, "high": ci.high}
        probs = None if self.regression else torch.softmax(torch.from_numpy(logits).double(), -1).numpy()
        return Quality(metrics, None, pred, gold, probs)

    def report_compare(self, a: Quality, b: Quality, keys: tuple[str, str], cfg: Config) -> list[dict]:
        """The primary metric's paired bootstrap difference (and McNemar's exact test for accuracy)."""
        from lmdistill.report.paired import comparison, mcnemar_exact, paired_bootstrap

        kw = {"n_resamples": cfg.report.bootstrap_resamples, "seed": cfg.seed}
        metric, n = self.primary_metric, len(a.gold)
        up = self.metrics[metric]
        out = [
            comparison(
                *keys,
                metric,
                paired_bootstrap(metric, a.gold, a.pred, b.pred, **kw),
                greater_is_better=up,
                n=n,
            )
        ]
        if metric == "accuracy":
            test = mcnemar_exact(a.pred == a.gold, b.pred == b.gold)
            out.append(comparison(*keys, metric, test, greater_is_better=True, n=n))
        return out

    def report_extras(self, q: Quality, teacher: Quality | None, cfg: Config) -> dict:
        """ECE of the predicted probabilities (classification) and the share of predictions equal to the
        teacher's (classification), with 95% intervals."""
        from lmdistill.report.paired import agreement_ci, ece_ci

        out = {}
        kw = {"n_resamples": cfg.report.bootstrap_resamples, "seed": cfg.seed}
        if q.probs is not None:
            ci = ece_ci(q.probs, q.gold, **kw)
            out["calibration"] = {"ece": {"value": ci.point, "low": ci.low, "high": ci.high}}
        if teacher is not None and not self.regression and teacher is not q:
            ci = agreement_ci(q.pred, teacher.pred, **kw)
            out["agreement"] = {"value": ci.point, "low": ci.low, "high": ci.high}
        return out

    def load_saved(self, path, key: str = "model"):
        """``(model, tokenizer)`` of a saved folder: a transformers model, or an exported ONNX graph folder
        (``lmdistill export``), run by ONNX Runtime."""
        from lmdistill.export import exported_folder, load_exported
        from lmdistill.models.load import load_saved_classifier

        if exported_folder(path) is not None:
            return load_exported(path)
        return load_saved_classifier(str(path), key)


class ClassificationTask(SequenceTask):
    name = "classification"
    loss_terms = ("kd", "ce", "kd_mse")
    default_losses = {"kd": 0.5, "ce": 0.5}
    baseline_losses = {"ce": 1.0}
    metrics = {"accuracy": True, "macro_f1": True}
    primary_metric = "accuracy"
    pipeline = "text-classification"
    ensemble_combines = ("mean_probs", "mean_logits", "confidence")
    report_metrics = ("accuracy", "macro_f1")
    hard_term = "ce"

    def owns(self, config: dict) -> bool:
        return _outputs(config) not in (None, 1)


class RegressionTask(SequenceTask):
    name = "regression"
    loss_terms = ("kd_mse", "mse")
    default_losses = {"kd_mse": 0.5, "mse": 0.5}
    baseline_losses = {"mse": 1.0}
    metrics = {"pearson": True, "spearman": True, "mse": False, "rmse": False}
    primary_metric = "pearson"
    regression = True
    pipeline = "text-classification"
    ensemble_combines = ("mean_logits",)  # one number per text: no probabilities to average
    report_metrics = ("pearson", "spearman", "mse")
    hard_term = "mse"

    def owns(self, config: dict) -> bool:
        return _outputs(config) == 1


def _evaluate_saved(
    task: SequenceTask,
    model,
    *,
    config=None,
    data=None,
    split: str = "test",
    text_column=None,
    text_pair_column=None,
    label_column=None,
    batch_size: int = 64,
    overrides=(),
    dtype: str = "fp32",
    **_,
):
    """A saved classifier / regressor on ``split`` of a config's data or on a whole file, its weights in
    ``dtype`` (fp32 or bf16): metrics and predictions (label names for classification)."""
    from lmdistill.config.schema import DataConfig
    from lmdistill.data.tables import build_task_data, load_frames
    from lmdistill.data.text import Collator, TextDataset, encode, max_length_for, pad_id
    from lmdistill.engine import predict
    from lmdistill.errors import DataError
    from lmdistill.models.precision import for_inference
    from lmdistill.tasks import load_config
    from lmdistill.tasks.base import EvalResult

    net, tok = task.load_saved(model)
    net = for_inference(net, dtype)
    if config is None and data is None:
        raise DataError("evaluate needs data: give --data FILE or --config CONFIG")
    regression = net.config.num_labels == 1
    name = "regression" if regression else "classification"
    names = None if regression else [str(net.config.id2label[i]) for i in range(net.config.num_labels)]
    if data is not None:
        dcfg = DataConfig(train=str(data), validation_size=0.0, test_size=0.0)
        split_name, key, seed = "train", "data", 0
    else:
        cfg = load_config(config, overrides)
        dcfg, seed, key = cfg.data, cfg.seed, split
        split_name = split
    for attr, value in (
        ("text_column", text_column),
        ("text_pair_column", text_pair_column),
        ("label_column", label_column),
    ):
        if value is not None:
            setattr(dcfg, attr, value)
    dcfg.label_names = names
    frames = load_frames(dcfg, seed)
    if split_name not in frames:
        raise DataError(f"split '{split}' is not in the data (available: {', '.join(frames)})")
    ex = build_task_data({split_name: frames[split_name]}, dcfg, name).splits[split_name]
    dataset = TextDataset(
        encode(tok, ex, max_length_for(dcfg.max_length, net)), ex.labels, regression=regression
    )
    logits = predict(net, dataset, Collator(pad_id(tok)), batch_size)
    metrics = task.scores(logits, np.asarray(ex.labels), net.config.num_labels)
    if regression:
        preds, gold = logits.reshape(-1).tolist(), list(ex.labels)
    else:
        preds, gold = [names[i] for i in logits.argmax(-1)], [names[i] for i in ex.labels]
    return EvalResult(
        model=str(model),
        split=key if data is None else str(data),
        n=len(ex),
        metrics=metrics,
        predictions=preds,
        labels=gold,
        dtype=dtype,
    )


def _outputs(config: dict) -> int | None:
    """The number of outputs of a saved sequence classifier's config.json (None: not such a model)."""
    if not any(str(a).endswith("ForSequenceClassification") for a in config.get("architectures") or []):
        return None
    return len(config.get("id2label") or {}) or config.get("num_labels") or 2
