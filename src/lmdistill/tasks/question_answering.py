"""Extractive question answering, SQuAD-style (``task: question_answering``).

A span model (``AutoModelForQuestionAnswering``) gives every token of a window a start and an end logit; the
answer is the best-scoring valid span. Data and windows: :mod:`lmdistill.data.qa` (``qa.*`` names the columns;
``qa.stride`` the overlap of the windows of a long context).

Objective, weighted by ``distill.losses``:

* ``kd``: the teacher's start and end position distributions over each window, through the one KD path of
  every task (:meth:`lmdistill.objective.Objective.kd`: ``distill.divergence`` at temperature T, times T^2),
  averaged over start and end. Both models' logits are restricted to the window's context tokens and its CLS
  token (the CLS is where a window without the answer points, so its probability is part of what the teacher
  knows); the other positions get a logit of -10,000 on both sides (probability 0, finite log).
* ``ce``: cross-entropy of the gold start and end (CLS for a window without the answer), on the same
  restricted logits, averaged over start and end as in ``BertForQuestionAnswering``.

Post-processing (:func:`best_answer`): per window the ``qa.n_best`` highest start and end logits of context
tokens, pairs with ``start <= end`` and at most ``qa.max_answer_length`` tokens, scored start + end; the best
over all windows of a question, mapped back to its characters in the context. With ``qa.allow_no_answer``
(default: when the data has unanswerable questions, SQuAD 2.0) the answer is empty when the no-answer score
(CLS start + end, the lowest over the windows) exceeds the best span score by more than ``qa.null_threshold``.
Metrics: ``exact_match`` and ``f1`` as the SQuAD evaluation script (:func:`lmdistill.tasks.metrics.squad_scores`).

Teacher and student must share one tokenizer (positions are tokens of one tokenization).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lmdistill.config.schema import Config, QAConfig, StageConfig, Verb
from lmdistill.data.qa import (
    QAExamples,
    WindowCollator,
    WindowDataset,
    Windows,
    allows_no_answer,
    load_qa_data,
    make_windows,
)
from lmdistill.errors import ModelError
from lmdistill.losses.logits import cross_entropy
from lmdistill.losses.reduce import masked_mean
from lmdistill.methods.presets import PRESETS
from lmdistill.objective import Objective, Term
from lmdistill.tasks.base import Parts, Quality, Task, make_student, stage_key, stage_objective, stages_of
from lmdistill.tasks.metrics import squad_scores

OUTSIDE = -1e4
"""The logit of a position outside the window's context (and not its CLS) in both terms."""

# --------------------------------------------------------------------------------------------- objective


def restricted(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """``(B, T)`` logits in float32 with :data:`OUTSIDE` where ``allowed`` ``(B, T')`` is false (``allowed``
    is padded with False or cut to ``T``: batches padded further for ``training.compile``)."""
    t = logits.shape[1]
    allowed = F.pad(allowed, (0, max(t - allowed.shape[1], 0)))[:, :t]
    return logits.float().masked_fill(~allowed, OUTSIDE)


def _kd(obj: Objective, out, signal, batch: dict) -> torch.Tensor:
    allowed = batch["context_mask"]
    total = 0.0
    for i, student in enumerate((out.start_logits, out.end_logits)):
        total = total + obj.kd(restricted(student, allowed), restricted(signal.logits[..., i], allowed))
    return total / 2


def _ce(obj: Objective, out, signal, batch: dict) -> torch.Tensor:
    allowed = batch["context_mask"]
    start = masked_mean(cross_entropy(restricted(out.start_logits, allowed), batch["start_positions"]))
    end = masked_mean(cross_entropy(restricted(out.end_logits, allowed), batch["end_positions"]))
    return (start + end) / 2


class SpanObjective(Objective):
    """``kd`` and ``ce`` on start and end positions (and any intermediate matches), weighted."""

    terms = {"kd": Term(_kd, teacher_logits=True, teacher=True), "ce": Term(_ce)}


# --------------------------------------------------------------------------------------------- answers


@torch.no_grad()
def predict_windows(model: nn.Module, dataset: WindowDataset, collate, batch_size: int) -> list[np.ndarray]:
    """Per window its start and end logits, ``(length, 2)`` float32 numpy (no padding)."""
    from torch.utils.data import DataLoader

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    lengths = dataset.lengths()
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate):
        o = model(**{k: v.to(device) for k, v in batch["student"].items()})
        both = torch.stack([o.start_logits, o.end_logits], dim=-1).float().cpu().numpy()  # (B, T, 2)
        out += [both[j, : lengths[i]] for j, i in enumerate(batch["index"].tolist())]
    model.train(was_training)
    return out


def best_answer(
    logits: list[np.ndarray],
    offsets: list[list[tuple[int, int] | None]],
    cls: list[int],
    context: str,
    q: QAConfig,
    allow_null: bool,
) -> tuple[str, float, float]:
    """The answer to one question from its windows: ``(text, best span score, no-answer score)``.

    ``logits``: per window ``(T, 2)`` start / end logits; ``offsets``: per window each token's character span
    in ``context`` (None outside it); ``cls``: per window the CLS position. Text "" means no answer (no valid
    span, or ``allow_null`` and no-answer score - span score > ``q.null_threshold``)."""
    best, best_text, null = -np.inf, "", np.inf
    for lg, off, c in zip(logits, offsets, cls):
        start, end = lg[:, 0], lg[:, 1]
        null = min(null, float(start[c] + end[c]))
        top_s = np.argsort(start)[::-1][: q.n_best]
        top_e = np.argsort(end)[::-1][: q.n_best]
        for s in top_s:
            for e in top_e:
                if off[s] is None or off[e] is None or e < s or e - s + 1 > q.max_answer_length:
                    continue
                score = float(start[s] + end[e])
                if score > best:
                    best, best_text = score, context[off[s][0] : off[e][1]]
    if allow_null and (best == -np.inf or null - best > q.null_threshold):
        return "", best, null
    return best_text, best, null


def answers_of(
    examples: QAExamples, windows: Windows, logits: list[np.ndarray], q: QAConfig, allow_null: bool
) -> list[str]:
    """The predicted answer text of every question (its windows gathered by ``windows.example``)."""
    by_example: dict[int, list[int]] = {}
    for w, e in enumerate(windows.example):
        by_example.setdefault(e, []).append(w)
    out = []
    for i, context in enumerate(examples.contexts):
        ws = by_example.get(i, [])
        text, _, _ = best_answer(
            [logits[w] for w in ws],
            [windows.offsets[w] for w in ws],
            [windows.cls[w] for w in ws],
            context,
            q,
            allow_null,
        )
        out.append(text)
    return out


def answer(
    model: str | Path,
    questions: list[str],
    contexts: list[str],
    *,
    max_length: int = 384,
    qa: QAConfig | None = None,
    allow_no_answer: bool = False,
    batch_size: int = 32,
) -> list[str]:
    """Answers of a saved QA model (a folder) to ``questions`` about ``contexts``: what transformers' removed
    ``question-answering`` pipeline did (gone since transformers 5.3): windows of ``max_length`` tokens
    overlapping by ``qa.stride`` (default a quarter of ``max_length``), n-best start / end pairs, the best span
    mapped back to the context; "" for no answer (only with ``allow_no_answer``)."""
    from lmdistill.data.text import pad_id
    from lmdistill.models.heads import load_saved_head

    net, tok = load_saved_head(str(model), "model", "question_answering")
    q = qa or QAConfig(stride=max_length // 4)
    examples = QAExamples(list(questions), list(contexts), [[] for _ in questions])
    windows = make_windows(tok, examples, max_length, q, "given")
    logits = predict_windows(net, WindowDataset(windows), WindowCollator(pad_id(tok)), batch_size)
    return answers_of(examples, windows, logits, q, allow_no_answer)


def question_scores(examples: QAExamples, predictions: list[str]) -> np.ndarray:
    """Per question ``(exact match, F1)``, ``(N, 2)``."""
    return np.asarray([squad_scores(p, examples.gold_texts(i)) for i, p in enumerate(predictions)]).reshape(
        -1, 2
    )


def metrics_of(scores: np.ndarray) -> dict[str, float]:
    return {"f1": float(scores[:, 1].mean()), "exact_match": float(scores[:, 0].mean())}


@dataclass
class QASplits:
    """The evaluation side of a run: examples, their windows and datasets, what post-processing needs."""

    examples: dict[str, QAExamples]
    windows: dict[str, Windows]
    sets: dict[str, WindowDataset]
    collate: WindowCollator
    batch_size: int
    qa: QAConfig
    allow_null: bool


# --------------------------------------------------------------------------------------------- the task


class QuestionAnsweringTask(Task):
    name = "question_answering"
    loss_terms = ("kd", "ce")
    default_losses = {"kd": 0.5, "ce": 0.5}
    baseline_losses = {"ce": 1.0}
    metrics = {"f1": True, "exact_match": True}
    primary_metric = "f1"
    cacheable = True
    presets = PRESETS
    pipeline = None  # transformers' question-answering pipeline was removed in 5.3: see answer()
    ensemble_combines = ("mean_logits",)  # start / end distributions run over positions, not the last axis

    def ensemble_teacher(self, cfg: Config, key: str):
        from lmdistill.models.heads import load_saved_head

        return load_saved_head(cfg.teacher, key, self.name)

    def check(self, cfg: Config, verb: Verb | None) -> list[str]:
        q, max_length = cfg.qa, cfg.data.max_length
        errors = []
        if q.stride is not None and not 0 <= q.stride < max_length:
            errors.append(
                f"qa.stride must be 0 (no windows) or more, and less than data.max_length ({max_length}), got {q.stride}"
            )
        for key in ("max_question_length", "max_answer_length", "n_best"):
            if getattr(q, key) < 1:
                errors.append(f"qa.{key} must be at least 1, got {getattr(q, key)}")
        if (q.answer_text_column is None) != (q.answer_start_column is None):
            errors.append(
                "qa.answer_text_column and qa.answer_start_column go together: set both (one answer per row) or "
                "neither (SQuAD answers in qa.answers_column)"
            )
        if q.question_column == q.context_column:
            errors.append(
                f"qa.question_column and qa.context_column are both '{q.context_column}'; name two columns"
            )
        return errors

    def check_data(self, cfg: Config) -> list[str]:
        from lmdistill.data.tables import check_files

        q = cfg.qa
        cols = {"qa.question_column": q.question_column, "qa.context_column": q.context_column}
        if q.answer_text_column:
            cols.update(
                {
                    "qa.answer_text_column": q.answer_text_column,
                    "qa.answer_start_column": q.answer_start_column,
                }
            )
        else:
            cols["qa.answers_column"] = q.answers_column
        return check_files(cfg.data, cols)

    def resolve(self, cfg: Config) -> None:
        if cfg.qa.stride is None:
            cfg.qa.stride = cfg.data.max_length // 4

    # ---- the run
    def parts(self, cfg: Config, verb: str) -> Parts:
        from lmdistill.data.text import tokenizers_match
        from lmdistill.models.heads import load_new_head, load_saved_head

        examples = load_qa_data(cfg.data, cfg.qa, cfg.seed)
        allow_null = allows_no_answer(cfg.qa, examples)
        teacher = None
        if verb == "finetune":
            model, tok = load_new_head(cfg.model, "model", self.name)
        else:
            teacher, t_tok = load_saved_head(cfg.teacher, "teacher.name_or_path", self.name)
            model, tok = make_student(
                cfg, teacher, t_tok, lambda spec, key: load_new_head(spec, key, self.name)
            )
            if not tokenizers_match(tok, t_tok):
                raise ModelError(
                    "student.tokenizer: question_answering distils start and end positions, which are tokens of one "
                    "tokenization, but the student's tokenizer differs from the teacher's; give the student the "
                    "teacher's tokenizer (student.init from_teacher or config, without student.tokenizer)"
                )
        splits = self.splits(examples, tok, cfg, allow_null, model, teacher)
        extra = {
            "no_answer": allow_null,
            "split_sizes": {k: len(v) for k, v in examples.items()},
            "split_windows": {k: len(v) for k, v in splits.windows.items()},
        }
        if teacher is None:
            objectives, stages = [SpanObjective(dict(self.baseline_losses))], [StageConfig("finetune")]
        else:
            stages = stages_of(cfg)
            objectives = [
                stage_objective(cfg, st, model, teacher, stage_key(cfg, i), SpanObjective)
                for i, st in enumerate(stages)
            ]
        return Parts(
            model,
            tok,
            splits.sets["train"],
            splits.collate,
            objectives,
            stages,
            teacher=teacher,
            data=splits,
            extra=extra,
        )

    def splits(
        self, examples: dict[str, QAExamples], tok, cfg: Config, allow_null: bool, *models
    ) -> QASplits:
        from lmdistill.data.text import max_length_for, pad_id
        from lmdistill.models.heads import fast_tokenizer

        fast_tokenizer(tok, "model.tokenizer", self.name)
        length = max_length_for(cfg.data.max_length, *models)
        windows = {s: make_windows(tok, ex, length, cfg.qa, s) for s, ex in examples.items()}
        sets = {s: WindowDataset(w) for s, w in windows.items()}
        return QASplits(
            examples,
            windows,
            sets,
            WindowCollator(pad_id(tok)),
            cfg.training.eval_batch_size,
            cfg.qa,
            allow_null,
        )

    def has_split(self, parts: Parts, split: str) -> bool:
        return split in parts.data.sets

    def evaluate(self, model: nn.Module, parts: Parts, split: str, objective: Objective) -> dict[str, float]:
        s: QASplits = parts.data
        return metrics_of(self.scores(model, s, split))

    def scores(self, model: nn.Module, s: QASplits, split: str) -> np.ndarray:
        """Per question ``(exact match, F1)`` of ``model`` on ``split``."""
        logits = predict_windows(model, s.sets[split], s.collate, s.batch_size)
        predictions = answers_of(s.examples[split], s.windows[split], logits, s.qa, s.allow_null)
        return question_scores(s.examples[split], predictions)

    def reload(self, path: Path, parts: Parts) -> nn.Module:
        return self.load_saved(path)[0].to(next(parts.student.parameters()).device)

    def load_saved(self, path, key: str = "model"):
        from lmdistill.models.heads import load_saved_head

        return load_saved_head(str(path), key, self.name)

    def usage(self, model_dir) -> list[str]:
        # transformers removed its question-answering pipeline in 5.3: lmdistill's answer() does its work
        return [
            "from lmdistill.tasks.question_answering import answer",
            f'answer("{model_dir}", ["QUESTION"], ["CONTEXT"])',
        ]

    def owns(self, config: dict) -> bool:
        return any(str(a).endswith("ForQuestionAnswering") for a in config.get("architectures") or [])

    # ---- saved models: evaluate, the report
    def saved_splits(self, model, cfg: Config, examples: dict[str, QAExamples], allow_null: bool):
        """The saved model at ``model`` and the windows of ``examples`` in its tokenizer."""
        net, tok = self.load_saved(model)
        return net, self.splits(examples, tok, cfg, allow_null, net)

    def evaluate_saved(
        self, model, *, config=None, data=None, split="test", batch_size=64, overrides=(), **_
    ):
        """Exact match and F1 of a saved QA model on ``split`` of a config's data or a whole file, with its
        predicted answers."""
        from lmdistill.errors import DataError
        from lmdistill.tasks import load_config
        from lmdistill.tasks.base import EvalResult

        if config is None and data is None:
            raise DataError("evaluate needs data: give --data FILE or --config CONFIG")
        if data is not None:
            section = {"train": str(data), "validation_size": 0.0, "test_size": 0.0}
            cfg, split_name = load_config({"task": self.name, "data": section}), "train"
        else:
            cfg, split_name = load_config(config, overrides), split
            if cfg.task != self.name:
                raise DataError(
                    f"model '{model}' answers questions but the config's task is {cfg.task}: give a config with task: {self.name}"
                )
        examples = load_qa_data(cfg.data, cfg.qa, cfg.seed)
        if split_name not in examples:
            raise DataError(f"split '{split}' is not in the data (available: {', '.join(examples)})")
        cfg.training.eval_batch_size = batch_size
        allow_null = allows_no_answer(cfg.qa, examples)  # decided on every split, as in training
        net, s = self.saved_splits(model, cfg, {split_name: examples[split_name]}, allow_null)
        logits = predict_windows(net, s.sets[split_name], s.collate, batch_size)
        predictions = answers_of(s.examples[split_name], s.windows[split_name], logits, s.qa, s.allow_null)
        scores = question_scores(s.examples[split_name], predictions)
        golds = [" | ".join(s.examples[split_name].gold_texts(i)) for i in range(len(predictions))]
        return EvalResult(
            str(model),
            split if data is None else str(data),
            len(predictions),
            metrics_of(scores),
            predictions,
            golds,
        )

    def report_inputs(self, cfg: Config):
        from lmdistill.errors import LmdistillError
        from lmdistill.tasks.base import ReportInputs

        examples = load_qa_data(cfg.data, cfg.qa, cfg.seed)
        if "test" not in examples:
            raise LmdistillError(
                "report: the data has no test split; set data.test or data.test_size above 0"
            )
        test = examples["test"]
        texts = [f"{q} {c}" for q, c in list(zip(test.questions, test.contexts))[: cfg.report.speed_texts]]
        note = (
            "Question answering: the speed runs read each test question and its context as one text cut to "
            "max_length (one window); quality post-processes every window of each question."
        )
        return ReportInputs(
            examples, texts, cfg.data.max_length, f"test split, {len(test)} questions", [note]
        )

    def report_quality(self, model, tokenizer, cfg: Config, inputs) -> Quality:
        """F1 and exact match with 95% bootstrap intervals over the test questions; per question
        ``(exact match, F1)`` (``pred``, (n, 2)) for the paired comparisons."""
        from lmdistill.report.stats import bootstrap_ci

        examples = inputs.examples
        allow_null = allows_no_answer(cfg.qa, examples)  # decided on every split, as in training
        s = self.splits({"test": examples["test"]}, tokenizer, cfg, allow_null, model)
        scores = self.scores(model, s, "test")
        kw = {"n_resamples": cfg.report.bootstrap_resamples, "seed": cfg.seed}
        out = {}
        for name, col in (("f1", 1), ("exact_match", 0)):
            ci = bootstrap_ci(scores[:, col], **kw)
            out[name] = {"value": ci.point, "low": ci.low, "high": ci.high}
        ones = np.ones(len(scores))
        return Quality(
            out, None, pred=scores, ratios={"f1": (scores[:, 1], ones), "exact_match": (scores[:, 0], ones)}
        )

    def report_compare(self, a: Quality, b: Quality, keys: tuple[str, str], cfg: Config) -> list[dict]:
        """F1 and exact match differences with a paired bootstrap over questions."""
        from lmdistill.report.paired import comparison, paired_bootstrap_values

        kw = {"n_resamples": cfg.report.bootstrap_resamples, "seed": cfg.seed}
        n = len(a.pred)
        return [
            comparison(
                *keys,
                name,
                paired_bootstrap_values(a.pred[:, col], b.pred[:, col], **kw),
                greater_is_better=True,
                n=n,
            )
            for name, col in (("f1", 1), ("exact_match", 0))
        ]
