"""Token classification: NER, POS tagging, chunking (``task: token_classification``).

A token classifier (``AutoModelForTokenClassification``, ``id2label`` = the tag set) predicts one tag per word
piece; a word's tag is read at its first piece. Data: :mod:`lmdistill.data.tokens` (CoNLL columns, JSONL
word and tag lists, or a ``datasets`` name; ``tokens.*`` names the columns).

Objective, weighted by ``distill.losses``:

* ``kd``: soft targets per labelled piece (one per word with ``tokens.label_pieces: first``) through the one KD
  path of every task, :meth:`lmdistill.objective.Objective.kd` (``distill.divergence`` at temperature T,
  times T^2): ``kd(student (B, T, C), teacher (B, T, C), mask = labels != -100)``. When the teacher's tokenizer
  differs from the student's, each model reads the words tokenised its own way and KD is at word level: both
  models' first-piece logits per word, ``(B, W, C)``, over the words both still hold after truncation.
* ``ce``: cross-entropy on the labelled pieces.

Intermediate ``distill.matches`` work as for classification; token-level ones are refused across tokenizers.

Metrics: ``accuracy`` (per word) always; for BIO / IOB2 tags also entity-level ``entity_precision``,
``entity_recall`` and ``entity_f1`` (exact span match, micro-averaged, spans read as conlleval / seqeval's
default mode: :func:`lmdistill.tasks.metrics.entities`). ``tokens.metric`` names the headline (the report's
first metric and, unless ``training.metric_for_best`` is set, the one that picks the best student; ``auto``:
entity_f1 for BIO tags, else accuracy, decided from ``data.label_names`` when given, else from the data, when
the best student is then picked by accuracy). A word cut by ``data.max_length`` counts as wrong (tag ``O``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lmdistill.config.schema import Config, StageConfig, Verb
from lmdistill.data.tokens import (
    IGNORE,
    TokenCollator,
    TokenData,
    TokenDataset,
    align,
    is_bio,
    load_token_data,
)
from lmdistill.errors import ConfigError, ModelError
from lmdistill.losses.logits import cross_entropy
from lmdistill.losses.reduce import masked_mean
from lmdistill.methods.presets import PRESETS
from lmdistill.objective import Objective, Term
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
from lmdistill.tasks.metrics import entity_counts, entity_scores

# --------------------------------------------------------------------------------------------- objective


def word_logits(logits: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per word the logits of its first piece: ``(B, T, C), (B, W) -> (B, W, C)``, and which words have one
    (``positions >= 0``, ``(B, W)``)."""
    index = positions.clamp(min=0).unsqueeze(-1).expand(-1, -1, logits.shape[-1])
    return logits.gather(1, index), positions >= 0


def _kd(obj: Objective, out, signal, batch: dict) -> torch.Tensor:
    if "teacher_words" in batch:  # two tokenizers: word level, the words both models still hold
        student, s_ok = word_logits(out.logits, batch["student_words"])
        teacher, t_ok = word_logits(signal.logits, batch["teacher_words"])
        return obj.kd(student, teacher, s_ok & t_ok)
    return obj.kd(out.logits, signal.logits, batch["labels"] != IGNORE)


def _ce(obj: Objective, out, signal, batch: dict) -> torch.Tensor:
    labels = batch["labels"].reshape(-1)
    return masked_mean(cross_entropy(out.logits.reshape(labels.shape[0], -1), labels), labels != IGNORE)


class TokenObjective(Objective):
    """``kd`` and ``ce`` per word piece (and any intermediate matches), weighted."""

    terms = {"kd": Term(_kd, teacher_logits=True, teacher=True), "ce": Term(_ce)}


# --------------------------------------------------------------------------------------------- prediction


@torch.no_grad()
def predict_words(model: nn.Module, dataset: TokenDataset, collate, batch_size: int) -> list[list[int]]:
    """Per sentence the predicted tag id of every word (its first piece's argmax; -1: a word the model did
    not see, cut by max_length)."""
    from torch.utils.data import DataLoader

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate):
        logits = model(**{k: v.to(device) for k, v in batch["student"].items()}).logits  # (B, T, C)
        words, seen = word_logits(logits, batch["student_words"].to(device))
        pred = words.argmax(-1).masked_fill(~seen, -1).tolist()
        for i, row in zip(batch["index"].tolist(), pred):
            out.append(row[: len(dataset.student["words"][i])])
    model.train(was_training)
    return out


def sentence_arrays(
    gold: list[list[str]], pred: list[list[str | None]], entity: bool
) -> dict[str, np.ndarray]:
    """Per sentence: correct words and words (``correct``, ``words``), and with ``entity`` the
    :func:`~lmdistill.tasks.metrics.entity_counts` (``entities``); an unseen word (None) is wrong / ``O``."""
    arrays = {
        "correct": np.asarray(
            [sum(p == g for p, g in zip(ps, gs)) for ps, gs in zip(pred, gold)], dtype=float
        ),
        "words": np.asarray([len(gs) for gs in gold], dtype=float),
    }
    if entity:
        arrays["entities"] = entity_counts(gold, [[p or "O" for p in ps] for ps in pred])
    return arrays


def scores_of(arrays: dict[str, np.ndarray]) -> dict[str, float]:
    """Word accuracy (and entity precision / recall / F1) of :func:`sentence_arrays`."""
    out = {"accuracy": float(arrays["correct"].sum() / max(arrays["words"].sum(), 1.0))}
    if "entities" in arrays:
        out.update(entity_scores(arrays["entities"]))
    return out


def _names(ids: list[list[int]], names: list[str]) -> list[list[str | None]]:
    return [[names[i] if i >= 0 else None for i in row] for row in ids]


@dataclass
class TokenSplits:
    """The evaluation side of a run: data, per-split datasets, the evaluation collator, what is scored."""

    data: TokenData
    sets: dict
    collate: TokenCollator
    batch_size: int
    entity: bool
    headline: str


# --------------------------------------------------------------------------------------------- the task


def _owns(config: dict) -> bool:
    return any(str(a).endswith("ForTokenClassification") for a in config.get("architectures") or [])


class TokenClassificationTask(Task):
    name = "token_classification"
    loss_terms = ("kd", "ce")
    default_losses = {"kd": 0.5, "ce": 0.5}
    baseline_losses = {"ce": 1.0}
    metrics = {"accuracy": True, "entity_f1": True, "entity_precision": True, "entity_recall": True}
    primary_metric = "accuracy"
    cacheable = True
    presets = PRESETS
    pipeline = "token-classification"
    ensemble_combines = ("mean_probs", "mean_logits", "confidence")

    def ensemble_teacher(self, cfg: Config, key: str):
        from lmdistill.models.heads import load_saved_head

        return load_saved_head(cfg.teacher, key, self.name)

    def usage(self, model_dir) -> list[str]:
        # aggregation "first": a word's tag is its first piece's, as the model was trained (tokens.label_pieces)
        return [
            "from transformers import pipeline",
            f'tagger = pipeline("token-classification", model="{model_dir}", aggregation_strategy="first")',
            'tagger("A sentence to tag.")',
        ]

    def check(self, cfg: Config, verb: Verb | None) -> list[str]:
        t = cfg.tokens
        if t.tokens_column == t.tags_column:
            return [
                f"tokens.tokens_column and tokens.tags_column are both '{t.tags_column}'; name two columns"
            ]
        return []

    def check_data(self, cfg: Config) -> list[str]:
        from lmdistill.data.tokens import check_tagged_files

        return check_tagged_files(cfg.data, cfg.tokens)

    def resolve(self, cfg: Config) -> None:
        if cfg.tokens.metric == "auto" and cfg.data.label_names:
            cfg.tokens.metric = "entity_f1" if is_bio([str(n) for n in cfg.data.label_names]) else "accuracy"
        if cfg.training.metric_for_best is None and cfg.tokens.metric != "auto":
            cfg.training.metric_for_best = cfg.tokens.metric

    def headline(self, cfg: Config, entity: bool) -> str:
        """The headline metric for data whose tags are (``entity``) or are not BIO tags; entity metrics
        asked of other tags are refused."""
        asked = [
            k
            for k, v in (
                ("tokens.metric", cfg.tokens.metric),
                ("training.metric_for_best", cfg.training.metric_for_best),
            )
            if v and v.startswith("entity")
        ]
        if asked and not entity:
            raise ConfigError(
                [
                    f"{asked[0]}: entity metrics need BIO / IOB2 tags (O, B-X, I-X), but these tags are not; "
                    "use accuracy"
                ]
            )
        if cfg.tokens.metric != "auto":
            return cfg.tokens.metric
        return "entity_f1" if entity else "accuracy"

    # ---- the run
    def parts(self, cfg: Config, verb: str) -> Parts:
        from lmdistill.models.heads import load_new_head, load_saved_head

        data = load_token_data(cfg.data, cfg.tokens, cfg.seed)
        entity = is_bio(data.label_names)
        headline = self.headline(cfg, entity)
        labels = {
            "num_labels": data.num_labels,
            "id2label": dict(enumerate(data.label_names)),
            "label2id": {n: i for i, n in enumerate(data.label_names)},
        }
        extra = {
            "label_names": data.label_names,
            "headline_metric": headline,
            "split_sizes": {k: len(v) for k, v in data.splits.items()},
        }
        if verb == "finetune":
            model, tok = load_new_head(cfg.model, "model", self.name, **labels)
            sets, collate, _ = self.datasets(data, tok, None, cfg, model)
            splits = TokenSplits(data, sets, collate, cfg.training.eval_batch_size, entity, headline)
            objective = TokenObjective(dict(self.baseline_losses))
            return Parts(
                model,
                tok,
                sets["train"],
                collate,
                [objective],
                [StageConfig("finetune")],
                data=splits,
                extra=extra,
            )
        teacher, t_tok = load_saved_head(cfg.teacher, "teacher.name_or_path", self.name)
        self.check_teacher_labels(teacher, data)
        student, s_tok = make_student(cfg, teacher, t_tok, partial(load_new_head, task=self.name, **labels))
        for k, v in labels.items():  # the saved student names the data's tags
            setattr(student.config, k, v)
        sets, collate, separate = self.datasets(data, s_tok, t_tok, cfg, student, teacher)
        stages = stages_of(cfg)
        objectives = [
            self.objective(cfg, st, student, teacher, separate, stage_key(cfg, i))
            for i, st in enumerate(stages)
        ]
        splits = TokenSplits(
            data, sets, TokenCollator(collate.student_pad_id), cfg.training.eval_batch_size, entity, headline
        )
        return Parts(
            student,
            s_tok,
            sets["train"],
            collate,
            objectives,
            stages,
            teacher=teacher,
            data=splits,
            extra=extra,
        )

    def datasets(self, data: TokenData, s_tok, t_tok, cfg: Config, student=None, teacher=None):
        """Per-split aligned datasets and the collator (the teacher's own inputs when its tokenizer differs)."""
        from lmdistill.data.text import max_length_for, pad_id, tokenizers_match
        from lmdistill.models.heads import fast_tokenizer

        fast_tokenizer(s_tok, "student.tokenizer" if t_tok is not None else "model.tokenizer", self.name)
        separate = t_tok is not None and not tokenizers_match(s_tok, t_tok)
        s_len = max_length_for(cfg.data.max_length, student, None if separate else teacher)
        t_len = max_length_for(cfg.data.max_length, teacher)
        pieces, names = cfg.tokens.label_pieces, data.label_names
        sets = {}
        for split, sentences in data.splits.items():
            s = align(s_tok, sentences, s_len, pieces, names)
            t = align(t_tok, sentences, t_len, pieces, names) if separate and split == "train" else None
            sets[split] = TokenDataset(s, t)
        return sets, TokenCollator(pad_id(s_tok), pad_id(t_tok) if separate else None), separate

    def objective(
        self, cfg: Config, stage: StageConfig, student, teacher, separate: bool, key: str
    ) -> Objective:
        """Output terms + resolved matches; token-level matches are refused across tokenizers."""
        from lmdistill.knowledge import refuse_token_level

        refuse_token_level(stage.matches, separate, key)
        return stage_objective(cfg, stage, student, teacher, key, TokenObjective)

    def check_teacher_labels(self, teacher, data: TokenData) -> None:
        have = [str(teacher.config.id2label[i]) for i in range(teacher.config.num_labels)]
        if len(have) != data.num_labels:
            raise ModelError(
                f"teacher.name_or_path: the teacher predicts {len(have)} tags but the data has {data.num_labels}; "
                "fine-tune a teacher on this data first (lmdistill finetune)"
            )
        refuse_other_label_names(have, data.label_names, "tags", shown=8)

    def has_split(self, parts: Parts, split: str) -> bool:
        return split in parts.data.data.splits

    def evaluate(self, model: nn.Module, parts: Parts, split: str, objective: Objective) -> dict[str, float]:
        s: TokenSplits = parts.data
        names = s.data.label_names
        pred = _names(predict_words(model, s.sets[split], s.collate, s.batch_size), names)
        gold = _names(s.data.splits[split].tags, names)
        scores = scores_of(sentence_arrays(gold, pred, s.entity))
        return {s.headline: scores.pop(s.headline), **scores}

    def reload(self, path: Path, parts: Parts) -> nn.Module:
        return self.load_saved(path)[0].to(next(parts.student.parameters()).device)

    def load_saved(self, path, key: str = "model"):
        from lmdistill.models.heads import load_saved_head

        return load_saved_head(str(path), key, self.name)

    def owns(self, config: dict) -> bool:
        return _owns(config)

    # ---- saved models: evaluate, the report
    def score_saved(self, net, tok, data: TokenData, split: str, cfg: Config, batch_size: int):
        """``(sentence arrays, predicted tag names, gold tag names, headline)`` of a saved model on ``split``,
        its predictions named by its own ``id2label``."""
        from lmdistill.data.text import max_length_for, pad_id

        names = [str(net.config.id2label[i]) for i in range(net.config.num_labels)]
        sentences = data.splits[split]
        dataset = TokenDataset(
            align(tok, sentences, max_length_for(cfg.data.max_length, net), "first", data.label_names)
        )
        pred = _names(predict_words(net, dataset, TokenCollator(pad_id(tok)), batch_size), names)
        gold = _names(sentences.tags, data.label_names)
        entity = is_bio(data.label_names)
        return sentence_arrays(gold, pred, entity), pred, gold, self.headline(cfg, entity)

    def evaluate_saved(
        self, model, *, config=None, data=None, split="test", batch_size=64, overrides=(), **_
    ):
        """Word accuracy (and entity scores for BIO tags) of a saved token classifier on ``split`` of a
        config's data or on a whole file (``--data``)."""
        from lmdistill.errors import DataError
        from lmdistill.tasks import load_config
        from lmdistill.tasks.base import EvalResult

        if config is None and data is None:
            raise DataError("evaluate needs data: give --data FILE or --config CONFIG")
        net, tok = self.load_saved(model)
        names = [str(net.config.id2label[i]) for i in range(net.config.num_labels)]
        if data is not None:
            section = {"train": str(data), "validation_size": 0.0, "test_size": 0.0, "label_names": names}
            cfg = load_config({"task": self.name, "data": section})
            split_name = "train"
        else:
            cfg = load_config(config, overrides)
            if cfg.task != self.name:
                raise DataError(
                    f"model '{model}' is a token classifier but the config's task is {cfg.task}: give a config with task: {self.name}"
                )
            cfg.data.label_names, split_name = names, split
        tagged = load_token_data(cfg.data, cfg.tokens, cfg.seed)
        if split_name not in tagged.splits:
            raise DataError(f"split '{split}' is not in the data (available: {', '.join(tagged.splits)})")
        arrays, pred, gold, headline = self.score_saved(net, tok, tagged, split_name, cfg, batch_size)
        scores = scores_of(arrays)
        metrics = {headline: scores.pop(headline), **scores}
        key = split if data is None else str(data)
        return EvalResult(
            str(model),
            key,
            len(gold),
            metrics,
            [" ".join(p or "-" for p in ps) for ps in pred],
            [" ".join(g) for g in gold],
        )

    def report_inputs(self, cfg: Config):
        from lmdistill.errors import LmdistillError
        from lmdistill.tasks.base import ReportInputs

        data = load_token_data(cfg.data, cfg.tokens, cfg.seed)
        if "test" not in data.splits:
            raise LmdistillError(
                "report: the data has no test split; set data.test or data.test_size above 0"
            )
        test = data.splits["test"]
        texts = [" ".join(w) for w in test.words[: cfg.report.speed_texts]]
        words = sum(len(w) for w in test.words)
        note = "Token classification: a prediction is one sentence tagged (its words joined by spaces for the speed runs)."
        evaluation = f"test split, {len(test)} sentences, {words:,} words"
        headline = self.headline(cfg, is_bio(data.label_names))
        return ReportInputs(data, texts, cfg.data.max_length, evaluation, [note], headline)

    def report_quality(self, model, tokenizer, cfg: Config, inputs) -> Quality:
        """Word accuracy (and entity precision / recall / F1) with 95% bootstrap intervals over sentences; the
        per-sentence numerators and denominators of each metric (``pred``) for the paired comparisons."""
        from lmdistill.report.stats import bootstrap_ci

        arrays, _, _, headline = self.score_saved(
            model, tokenizer, inputs.examples, "test", cfg, cfg.training.eval_batch_size
        )
        kw = {"n_resamples": cfg.report.bootstrap_resamples, "seed": cfg.seed}
        parts = ratio_parts(arrays)
        cis = {name: bootstrap_ci(pair, _ratio, **kw) for name, pair in parts.items()}
        order = [headline] + [k for k in cis if k != headline]
        metrics = {k: {"value": cis[k].point, "low": cis[k].low, "high": cis[k].high} for k in order}
        return Quality(metrics, None, pred=parts, ratios=parts)

    def report_compare(self, a: Quality, b: Quality, keys: tuple[str, str], cfg: Config) -> list[dict]:
        """The headline metric's difference (and word accuracy's, when the headline is entity F1) with a paired
        bootstrap over sentences: each resample scores both models on the same sentences."""
        from lmdistill.report.paired import comparison

        kw = {"n_resamples": cfg.report.bootstrap_resamples, "seed": cfg.seed}
        names = dict.fromkeys([next(iter(a.metrics)), "accuracy"])
        n = len(a.pred["accuracy"][0])
        return [
            comparison(*keys, m, paired_ratio(a.pred[m], b.pred[m], **kw), greater_is_better=True, n=n)
            for m in names
        ]


def ratio_parts(arrays: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each metric as per-sentence ``(numerator, denominator)`` (n,) arrays: the metric is sum / sum."""
    parts = {"accuracy": (arrays["correct"], arrays["words"])}
    if "entities" in arrays:
        tp, n_pred, n_gold = (arrays["entities"][:, i].astype(float) for i in range(3))
        parts.update(
            entity_f1=(2 * tp, n_pred + n_gold), entity_precision=(tp, n_pred), entity_recall=(tp, n_gold)
        )
    return parts


def paired_ratio(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray], **kw):
    """``sum(num_a) / sum(den_a) - sum(num_b) / sum(den_b)`` with a paired bootstrap over sentences (both models
    resampled on the same sentences): :func:`lmdistill.report.paired.paired_bootstrap` on sentence indices."""
    from lmdistill.report.paired import paired_bootstrap

    num, den = np.concatenate([a[0], b[0]]), np.concatenate([a[1], b[1]])
    n = len(a[0])
    index = np.arange(n)
    return paired_bootstrap(lambda _, rows: _ratio(num[rows], den[rows]), index, index, index + n, **kw)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Per resample ``sum(num) / sum(den)`` (0 where den sums to 0): ``(R, n), (R, n) -> (R,)``."""
    d = den.sum(-1)
    return np.divide(num.sum(-1), d, out=np.zeros(len(d)), where=d > 0)
