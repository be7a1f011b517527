"""Masked-LM distillation on raw text (``task: mlm``): DistilBERT's pre-training triple loss.

DistilBERT (Sanh et al. 2019, sec. 3, "Knowledge distillation" / "Training loss") trains the student on
``L = alpha_ce L_ce + alpha_mlm L_mlm + alpha_cos L_cos``, here ``distill.losses: {kd, mlm, cos}``:

- ``kd`` (``L_ce``): the soft-target loss on the masked-LM logits,
  ``T^2 KL(p_T || p_S)`` with ``p = softmax(z / T)`` over the vocabulary, per token (forward KL:
  ``F.kl_div(input=log q, target=log p)``; ``distill.divergence`` may name another); averaged over every real token of the batch, as the authors'
  ``distiller.py`` does by default (``restrict_ce_to_mask=False``): the teacher's predictions at unmasked
  positions carry knowledge too. ``T^2`` (Hinton et al. 2015) because a hard-label term is mixed in
  (``distill.kd_scale_t2``).
- ``mlm`` (``L_mlm``): cross-entropy of the student's prediction at the masked positions (labels from
  :class:`lmdistill.data.rawtext.MLMCollator`, dynamic masking).
- ``cos`` (``L_cos``): ``1 - cos(h_S, h_T)`` between the last hidden states, per real token (a cosine
  embedding loss with target 1), which "tends to align the directions of the student and teacher hidden
  states vectors".

Defaults are those of the DistilBERT training code (``train.py``): ``alpha_ce 5.0``, ``alpha_mlm 2.0``,
``alpha_cos 1.0``, ``temperature 2.0``, ``mlm_mask_prop 0.15`` with 80/10/10 replacement; the student
keeps every other teacher layer (``student.keep_every: 2``; ``distill.method: distilbert`` with ``task: mlm``
sets all of this). ``distill.matches`` may be added (e.g. TinyBERT-style hidden states).

Evaluation: ``mlm_loss`` (cross-entropy per masked token), ``perplexity = exp(mlm_loss)`` and
``mlm_accuracy`` on held-out blocks masked once with a fixed seed, and ``loss`` (the weighted objective).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from lmdistill.config.schema import Config
from lmdistill.errors import LmdistillError, ModelError
from lmdistill.losses.divergences import forward_kl
from lmdistill.losses.features import hidden_cosine
from lmdistill.losses.logits import cross_entropy
from lmdistill.losses.reduce import masked_mean
from lmdistill.methods.presets import TASK_PRESETS
from lmdistill.objective import Objective, Term
from lmdistill.signals.live import TeacherSignal
from lmdistill.tasks.base import Parts
from lmdistill.tasks.general import (
    RawTextTask,
    _base_weight,
    load_auto,
    load_teacher,
    make_student,
    require_same_tokenizer,
    to_device,
)

MLM_LOSSES = ("kd", "mlm", "cos")


def masked_lm_kd(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Per-token forward KL of the softened vocabulary distributions at the selected positions.

    ``(B, T, V), (B, T, V), (B, T) bool -> (N,)`` with ``N = mask.sum()``: ``KL(p_T || p_S)`` at temperature
    ``T``, no ``T^2`` factor. Positions are selected BEFORE the softmax, so padding costs nothing
    (DistilBERT's ``masked_select``); :meth:`lmdistill.objective.Objective.kd` does the same with the configured
    divergence.
    """
    return forward_kl(student_logits[mask], teacher_logits[mask], temperature)


def masked_lm_ce(student_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy at the masked positions: ``(B, T, V), (B, T) -> (N,)``, ``N`` = labels other than -100."""
    selected = labels != -100
    return cross_entropy(student_logits[selected], labels[selected])


def _kd(obj: MLMObjective, out, signal: TeacherSignal, batch: dict) -> torch.Tensor:
    return obj.kd(out.logits, signal.logits, batch["student"]["attention_mask"])


def _mlm(obj: MLMObjective, out, signal, batch: dict) -> torch.Tensor:
    return masked_mean(masked_lm_ce(out.logits, batch["labels"]))


def _cos(obj: MLMObjective, out, signal: TeacherSignal, batch: dict) -> torch.Tensor:
    loss = hidden_cosine(out.hidden_states[-1], signal.hidden_states[-1])
    return masked_mean(loss, batch["student"]["attention_mask"])


class MLMObjective(Objective):
    """DistilBERT's triple loss (``kd``, ``mlm``, ``cos``) plus any ``distill.matches``."""

    terms = {
        "kd": Term(_kd, teacher_logits=True, teacher=True),
        "mlm": Term(_mlm),
        "cos": Term(_cos, teacher=True, hidden=True),
    }


@torch.no_grad()
def mlm_metrics(model, batches: list[dict], objective: MLMObjective | None = None, teacher=None) -> dict:
    """``mlm_loss``, ``perplexity``, ``mlm_accuracy`` over every masked token of ``batches``; with an
    objective (and its taps attached) also ``loss`` and each term, averaged over examples."""
    from lmdistill.signals.live import LiveTeacher

    device = next(model.parameters()).device
    was = model.training
    model.eval()
    signal_of = None
    if objective is not None and teacher is not None and objective.needs_teacher:
        signal_of = LiveTeacher(teacher, hidden_states=objective.needs_hidden, tap=objective.teacher_tap)
    ce_sum, correct, count, n = 0.0, 0, 0, 0
    sums: dict[str, float] = {}
    hidden = objective.needs_hidden if objective is not None else False
    for batch in batches:
        batch = to_device(batch, device)
        out = model(**batch["student"], output_hidden_states=hidden or None)
        labels = batch["labels"]
        selected = labels != -100
        logits = out.logits[selected]
        ce_sum += float(cross_entropy(logits, labels[selected]).sum())
        correct += int((logits.argmax(-1) == labels[selected]).sum())
        count += int(selected.sum())
        if objective is not None:
            feats = objective.student_tap.pop() if objective.student_tap is not None else None
            terms = objective(out, signal_of(batch) if signal_of is not None else None, batch, feats)
            b = labels.shape[0]
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v) * b
            n += b
    model.train(was)
    ce = ce_sum / max(count, 1)
    out = {"mlm_loss": ce, "perplexity": math.exp(min(ce, 50.0)), "mlm_accuracy": correct / max(count, 1)}
    if objective is not None:
        terms = {k: v / max(n, 1) for k, v in sums.items()}
        out.update(loss=sum(_base_weight(objective, k) * v for k, v in terms.items()), **terms)
    return out


def _check_shapes(objective: MLMObjective, student, teacher) -> None:
    if teacher is None:
        return
    s_v, t_v = student.get_output_embeddings().out_features, teacher.get_output_embeddings().out_features
    if "kd" in objective.weights and s_v != t_v:
        raise ModelError(
            f"distill.losses.kd: the student predicts {s_v} tokens and the teacher {t_v}; the soft-target "
            "loss needs one vocabulary (build the student from the teacher)"
        )
    s_w, t_w = student.config.hidden_size, teacher.config.hidden_size
    if "cos" in objective.weights and s_w != t_w:
        raise ModelError(
            f"distill.losses.cos: student width {s_w} != teacher width {t_w}; the cosine loss compares "
            "hidden states directly: drop it, or use a match {feature: hidden, loss: cosine} (projected)"
        )


class MLMTask(RawTextTask):
    """DistilBERT-style masked-LM distillation on raw text (and continued MLM pre-training with finetune)."""

    name = "mlm"
    loss_terms = MLM_LOSSES
    default_losses = {"kd": 5.0, "mlm": 2.0, "cos": 1.0}  # DistilBERT's alpha_ce, alpha_mlm, alpha_cos
    metrics = {"perplexity": False, "mlm_loss": False, "mlm_accuracy": True, "loss": False}
    primary_metric = "perplexity"
    presets = TASK_PRESETS["mlm"]
    auto_cls_name = "AutoModelForMaskedLM"
    pipeline = "fill-mask"
    ensemble_combines = ("mean_probs", "mean_logits", "confidence")

    def ensemble_teacher(self, cfg: Config, key: str):
        from lmdistill.models.load import load_tokenizer

        model = load_auto(self.auto_cls, cfg.teacher, key, need_head="masked-LM head")
        return model, load_tokenizer(cfg.teacher, key.replace("name_or_path", "tokenizer"))

    def parts(self, cfg: Config, verb: str) -> Parts:
        from lmdistill.data.rawtext import MLMCollator
        from lmdistill.models.load import load_tokenizer

        if verb == "finetune":  # continued masked-LM pre-training of ``model`` on raw text: mlm only
            student, teacher = load_auto(self.auto_cls, cfg.model, "model.name_or_path"), None
            s_tok = load_tokenizer(cfg.model, "model.tokenizer")
            cfg.distill.losses = {"mlm": 1.0}
            cfg.distill.matches, cfg.distill.stages = [], []
        else:
            teacher, t_tok = load_teacher(cfg, self.auto_cls, need_head="masked-LM head")
            student, s_tok = make_student(cfg, teacher, t_tok, self.auto_cls)
            require_same_tokenizer(t_tok, s_tok, "mlm")
        p = cfg.data.mlm_probability
        data = self.blocks(
            cfg, student, s_tok, teacher, MLMCollator(s_tok, p, cfg.seed), MLMCollator(s_tok, p, cfg.seed + 1)
        )
        objectives, stages = self.objectives(cfg, student, teacher, MLMObjective)
        for obj in objectives:
            if obj.needs_teacher and teacher is None:
                raise LmdistillError(
                    "distill.losses: kd and cos need a teacher; finetune trains with mlm only"
                )
            _check_shapes(obj, student, teacher)
        more = {}
        if teacher is not None and (data.validation or data.test):
            more["teacher"] = {
                s: mlm_metrics(teacher, getattr(data, s)) for s in ("validation", "test") if getattr(data, s)
            }
        return self.raw_parts(cfg, student, s_tok, teacher, data, objectives, stages, more)

    def metrics_of(self, model, teacher, objective, batches: list[dict]) -> dict:
        return mlm_metrics(model, batches, objective, teacher)

    def reload(self, path: Path, parts: Parts):
        return load_auto(self.auto_cls, str(path), "model")
