"""Distillation of causal (GPT / Llama-style) language models: ``task: causal_lm``.

Data (:mod:`lmdistill.data.lm`): raw text packed into blocks of ``lm.block_size`` tokens, or prompt/response
rows with no loss on the prompt.

Objective (:class:`CausalLMObjective`), two terms, weighted by ``distill.losses``:

* ``kd``: a token-level divergence (``distill.divergence``, also named ``lm.divergence``;
  :mod:`lmdistill.losses.divergences`) between the teacher's and the student's next-token distributions at
  temperature ``distill.temperature``, averaged over the positions whose next token is a target, through the
  one output-level KD path of every task (:meth:`lmdistill.objective.Objective.kd`, times ``T**2`` when
  ``distill.kd_scale_t2``; at the usual T = 1 it changes nothing). Computed chunk by chunk over positions, so
  no full float32 ``(B, T, V)`` tensor is made; with ``lm.top_k`` the teacher is reduced to its k most likely
  tokens plus the tail mass, also chunk by chunk.
* ``lm``: next-token cross-entropy on the same positions (chunked the same way).

Teacher-generated data (:mod:`lmdistill.tasks.lm_generation`): sequence-level KD (``lm.seq_kd``) and on-policy
distillation (``lm.on_policy``). See docs/causal_lm.md for formulas, directions and defaults.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from lmdistill.config.schema import Config, StageConfig, Verb
from lmdistill.data.lm import (  # noqa: F401 - the task's data, re-exported
    IGNORE,
    LMCollator,
    LMDataset,
    build_datasets,
    load_documents,
    pad_id_of,
    prompt_response,
    text_blocks,
)
from lmdistill.errors import LmdistillError
from lmdistill.losses.divergences import chunked_divergence
from lmdistill.losses.topk import TopKSignal, topk_signal
from lmdistill.methods.presets import PRESETS
from lmdistill.models.causal import (  # noqa: F401 - re-exported
    check_vocabularies,
    convert_gguf,
    load_causal_lm,
    same_tokenization,
    smollm2_folder,
)
from lmdistill.objective import Objective, Term
from lmdistill.tasks import lm_generation
from lmdistill.tasks.base import Parts, Task, stage_objective
from lmdistill.tasks.base import make_student as _make_student
from lmdistill.tasks.lm_generation import Generation, continued, generate, prompt_of  # noqa: F401

# --------------------------------------------------------------------------------------------- objective


def next_targets(labels: torch.Tensor) -> torch.Tensor:
    """The token each position must predict: ``labels`` shifted left by one, ``-100`` at the end. ``(B, T)``."""
    return torch.cat([labels[:, 1:], labels.new_full((labels.shape[0], 1), IGNORE)], dim=1)


def _nll(student_rows: torch.Tensor, target_rows: torch.Tensor) -> torch.Tensor:
    """``-log softmax(logits)[target]`` per row in float32: ``(n, V), (n, 1) -> (n,)``."""
    return F.cross_entropy(student_rows.float(), target_rows[:, 0], reduction="none")


def next_token_ce(logits: torch.Tensor, targets: torch.Tensor, chunk_size: int = 512) -> torch.Tensor:
    """Mean next-token cross-entropy over ``targets != -100`` (``(B, T, V), (B, T)``), chunked like the
    divergences: no float32 copy of the whole ``(B, T, V)``; 0 when there is no target."""
    mask = targets != IGNORE
    return chunked_divergence(_nll, logits, targets.clamp_min(0).unsqueeze(-1), mask, chunk_size=chunk_size)


def chunked_topk(
    teacher_logits: torch.Tensor, mask: torch.Tensor, k: int, temperature: float, chunk_size: int = 512
) -> TopKSignal:
    """:func:`topk_signal` of the positions where ``mask`` is true, ``chunk_size`` rows at a time (other
    positions hold filler values that no divergence reads). ``(B, T, V) -> (B, T, k)``."""
    lead, vocab = teacher_logits.shape[:-1], teacher_logits.shape[-1]
    flat = teacher_logits.reshape(-1, vocab)
    rows = mask.reshape(-1).nonzero().squeeze(-1)
    n = flat.shape[0]
    indices = torch.zeros((n, k), dtype=torch.long, device=flat.device)
    logprobs = torch.full(
        (n, k), -math.log(k), dtype=torch.promote_types(flat.dtype, torch.float32), device=flat.device
    )
    tail = torch.full((n,), float("-inf"), dtype=logprobs.dtype, device=flat.device)
    for chunk in rows.split(chunk_size):
        sig = topk_signal(flat[chunk], k, temperature)  # not index_select: slow on CPU for wide rows
        indices[chunk] = sig.indices
        logprobs[chunk] = sig.logprobs.to(logprobs.dtype)
        tail[chunk] = sig.tail_logprob.to(tail.dtype)
    return TopKSignal(indices.view(*lead, k), logprobs.view(*lead, k), tail.view(lead), float(temperature))


def _kd(obj: CausalLMObjective, out, signal, batch: dict) -> torch.Tensor:
    mask = next_targets(batch["labels"]) != IGNORE
    return obj.lm_kd(out.logits, signal.logits, mask)


def _lm(obj: CausalLMObjective, out, signal, batch: dict) -> torch.Tensor:
    if batch.get("on_policy", False):  # the student's own samples are not targets
        return out.logits.new_zeros((), dtype=torch.float32)
    return next_token_ce(out.logits, next_targets(batch["labels"]), obj.chunk_size)


class CausalLMObjective(Objective):
    """The ``kd`` and ``lm`` terms of a causal LM (and any intermediate ``matches``), weighted.

    Everything :class:`lmdistill.objective.Objective` offers keeps working (weights and their schedules,
    temperature schedule, matches with projections, the divergences, ``total``); the output terms differ.

    Args:
        weights: ``{"kd": w, "lm": w}`` (either may be absent).
        temperature: softens teacher and student alike in ``kd`` (not in ``lm``).
        chunk_size: positions per chunk (default 512).
        on_policy: GKD's lambda; needs ``generation``.
        generation: how :meth:`prepare_batch` samples from the student.
        **kwargs: as :class:`~lmdistill.objective.Objective` (divergence, beta, alpha, top_k, vocab_size, ...).
    """

    terms = {"kd": Term(_kd, teacher_logits=True, teacher=True), "lm": Term(_lm)}

    def __init__(
        self,
        weights: dict[str, float],
        temperature: float = 1.0,
        *,
        chunk_size: int = 512,
        on_policy: float = 0.0,
        generation: Generation | None = None,
        **kwargs,
    ):
        unknown = [k for k, w in weights.items() if w > 0 and k not in self.terms]
        if unknown:
            raise LmdistillError(
                f"distill.losses.{unknown[0]} is not a loss for task causal_lm (use: kd, lm)"
            )
        super().__init__(weights, temperature, chunk_size=chunk_size, **kwargs)
        if on_policy > 0 and ("kd" not in self.weights or generation is None):
            raise LmdistillError(
                "lm.on_policy needs distill.losses.kd above 0: the teacher scores the student's "
                "samples, and the lm term is 0 on them"
            )
        self.on_policy = on_policy
        self.generation = generation

    @property
    def rewrites_batches(self) -> bool:
        return self.on_policy > 0

    def lm_kd(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor | TopKSignal, mask: torch.Tensor
    ) -> torch.Tensor:
        """:meth:`kd` over the shared vocabulary at the ``mask`` positions: ``(B, T, V), (B, T, V'), (B, T)
        -> ()``; the teacher may also come as a :class:`TopKSignal` (``(B, T, k)``, from a teacher cache), or
        is reduced to one here with ``top_k``."""
        if isinstance(teacher_logits, TopKSignal):  # from a teacher cache: reduced already, same vocabulary
            size = self.vocab_size or student_logits.shape[-1]
            teacher = teacher_logits
        else:
            size = self.vocab_size or min(student_logits.shape[-1], teacher_logits.shape[-1])
            t = teacher_logits if teacher_logits.shape[-1] == size else teacher_logits[..., :size]
            temp = self.temperature_now()
            teacher = chunked_topk(t, mask, self.top_k, temp, self.chunk_size) if self.top_k else t
        s = student_logits if student_logits.shape[-1] == size else student_logits[..., :size]
        return self.kd(s, teacher, mask)

        value = chunked_divergence(
            self.divergence, s, teacher, mask, chunk_size=self.chunk_size, temperature=temp, **self.params
        )
        return value * temp**2 if self.kd_scale_t2 else value

    def prepare_batch(self, batch: dict, student: nn.Module) -> dict:
        """GKD: with probability ``on_policy`` replace the batch by the student's continuations of its prompts
        (loss only on the generated tokens); otherwise return it unchanged. The engine calls this before
        the teacher runs, so the teacher scores whatever this returns."""
        if self.on_policy <= 0 or torch.rand(()).item() >= self.on_policy:
            return batch
        gen = self.generation
        ids, labels = batch["student"]["input_ids"].tolist(), batch["labels"].tolist()
        lengths = batch["student"]["attention_mask"].sum(1).tolist()
        prompts = [prompt_of(i[:n], lab[:n], gen.max_new_tokens) for i, lab, n in zip(ids, labels, lengths)]
        items = continued(prompts, lm_generation.generate(student, prompts, gen))
        new = LMCollator(gen.pad_id)(items)
        device = batch["labels"].device
        return {
            "student": {k: v.to(device) for k, v in new["student"].items()},
            "labels": new["labels"].to(device),
            "index": batch.get("index"),
            "on_policy": True,
        }


@torch.no_grad()
def perplexity(
    model: nn.Module, dataset: LMDataset, collate: LMCollator, batch_size: int, chunk_size: int = 512
) -> dict[str, float]:
    """``{"loss": mean next-token NLL (nats), "perplexity": exp(loss), "tokens": count}`` over the targets."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate):
        logits = model(**{k: v.to(device) for k, v in batch["student"].items()}).logits
        targets = next_targets(batch["labels"].to(device))
        n = int((targets != IGNORE).sum())
        total += float(next_token_ce(logits, targets, chunk_size)) * n
        count += n
    model.train(was_training)
    loss = total / max(count, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "tokens": float(count)}


def sequence_nll(
    model: nn.Module, dataset: LMDataset, collate: LMCollator, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per item of ``dataset``: the summed next-token NLL (nats) over its targets, and their number; the
    inputs of :func:`~lmdistill.report.stats.perplexity_ci`. Exactly :func:`perplexity` when aggregated."""
    from lmdistill.engine import model_device

    device = model_device(model)
    was_training = model.training
    model.eval()
    sums, counts = [], []
    with torch.no_grad():
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate):
            logits = model(**{k: v.to(device) for k, v in batch["student"].items()}).logits
            targets = next_targets(batch["labels"].to(device))
            for row, tgt in zip(logits, targets):  # one sequence at a time: (T, V) in float32 at most
                keep = tgt != IGNORE
                nll = F.cross_entropy(row[keep].float(), tgt[keep], reduction="sum")
                sums.append(float(nll))
                counts.append(int(keep.sum()))
    model.train(was_training)
    return np.asarray(sums), np.asarray(counts)


# --------------------------------------------------------------------------------------------- the task


def make_student(cfg: Config, teacher, t_tok):
    """``(student, tokenizer)`` as configured in ``student`` (from teacher layers, a config, or pretrained)."""
    return _make_student(cfg, teacher, t_tok, load_causal_lm)


class CausalLMTask(Task):
    """Next-token prediction: a causal LM teacher into a causal LM student (docs/causal_lm.md)."""

    name = "causal_lm"
    loss_terms = ("kd", "lm")
    default_losses = {"kd": 0.5, "lm": 0.5}
    baseline_losses = {"lm": 1.0}
    metrics = {"perplexity": False, "loss": False}
    primary_metric = "perplexity"
    cacheable = True
    presets = PRESETS
    pipeline = "text-generation"

    def check(self, cfg: Config, verb: Verb | None) -> list[str]:
        lm = cfg.lm
        errors = []
        if not 0.0 <= lm.on_policy <= 1.0:
            errors.append(f"lm.on_policy must be between 0 and 1, got {lm.on_policy}")
        for key in ("top_k", "chunk_size", "max_new_tokens"):
            v = getattr(lm, key)
            if v is not None and v < 1:
                errors.append(f"lm.{key} must be at least 1, got {v}")
        if lm.block_size is not None and lm.block_size < 4:
            errors.append(f"lm.block_size must be at least 4 tokens, got {lm.block_size}")
        if lm.generation_temperature < 0:
            errors.append(
                f"lm.generation_temperature must be 0 (greedy) or more, got {lm.generation_temperature}"
            )
        if (lm.prompt_column is None) != (lm.response_column is None):
            errors.append(
                "lm.prompt_column and lm.response_column go together: set both (prompt/response data) "
                "or neither (raw text in data.text_column)"
            )
        if verb == "finetune" and (lm.seq_kd or lm.on_policy > 0):
            key = "lm.seq_kd" if lm.seq_kd else "lm.on_policy"
            errors.append(
                f"{key} needs a teacher: use `lmdistill distill` (finetune trains on the data alone)"
            )
        if cfg.distill.stages:
            errors.append(
                "distill.stages is not supported for task causal_lm: use distill.losses and matches"
            )
        return errors

    def check_data(self, cfg: Config) -> list[str]:
        from lmdistill.data.tables import check_files

        lm = cfg.lm
        if lm.prompt_column:
            return check_files(
                cfg.data, {"lm.prompt_column": lm.prompt_column, "lm.response_column": lm.response_column}
            )
        return check_files(cfg.data, {"data.text_column": cfg.data.text_column}, lines_ok=True)

    def objective(self, cfg: Config, weights: dict[str, float], student, teacher, vocab_size, tokenizer):
        lm = cfg.lm
        gen = Generation(
            lm.max_new_tokens, lm.generation_temperature, pad_id_of(tokenizer), tokenizer.eos_token_id
        )
        stage = StageConfig(
            name="distill", losses=weights, matches=cfg.distill.matches if teacher is not None else []
        )
        return stage_objective(
            cfg,
            stage,
            student,
            teacher,
            "distill",
            CausalLMObjective,
            top_k=lm.top_k,
            chunk_size=lm.chunk_size,
            vocab_size=vocab_size,
            on_policy=lm.on_policy if teacher is not None else 0.0,
            generation=gen,
        )

    def parts(self, cfg: Config, verb: str) -> Parts:
        if verb == "finetune":
            model, tok = load_causal_lm(cfg.model, "model")
            sets = build_datasets(cfg, tok)
            objective = self.objective(cfg, {"lm": 1.0}, model, None, None, tok)
            return self._parts(cfg, model, tok, None, objective, sets)
        teacher, t_tok = load_causal_lm(cfg.teacher, "teacher")
        student, s_tok = make_student(cfg, teacher, t_tok)
        s_name = cfg.student.tokenizer or cfg.student.name_or_path or cfg.teacher.name_or_path
        vocab = check_vocabularies(
            student, s_tok, teacher, t_tok, s_name, cfg.teacher.tokenizer or cfg.teacher.name_or_path
        )
        sets = build_datasets(cfg, s_tok)
        objective = self.objective(cfg, cfg.distill.losses, student, teacher, vocab, s_tok)
        if cfg.lm.seq_kd:
            gen = Generation(cfg.lm.max_new_tokens, 0.0, pad_id_of(s_tok), s_tok.eos_token_id)
            identity = {
                "teacher": cfg.teacher.name_or_path,
                "teacher_config": teacher.config.to_json_string(),
            }
            teacher.to("cuda" if torch.cuda.is_available() and not cfg.training.cpu else "cpu")
            sets["train"] = lm_generation.sequence_kd(
                teacher,
                sets["train"],
                gen,
                Path(cfg.output_dir) / "seq_kd",
                identity,
                cfg.training.eval_batch_size,
            )
        return self._parts(cfg, student, s_tok, teacher, objective, sets)

    def _parts(self, cfg: Config, model, tok, teacher, objective, sets: dict) -> Parts:
        extra = {
            "task": self.name,
            "split_sizes": {k: len(v) for k, v in sets.items()},
            "split_targets": {k: v.num_targets() for k, v in sets.items()},
        }
        collate = LMCollator(pad_id_of(tok))
        data = {"sets": sets, "collate": collate, "batch_size": cfg.training.eval_batch_size}
        stage = StageConfig(name="distill" if teacher is not None else "finetune")
        return Parts(
            model, tok, sets["train"], collate, [objective], [stage], teacher=teacher, data=data, extra=extra
        )

    def has_split(self, parts: Parts, split: str) -> bool:
        return split in parts.data["sets"]

    def evaluate(self, model: nn.Module, parts: Parts, split: str, objective) -> dict[str, float]:
        d = parts.data
        return perplexity(model, d["sets"][split], d["collate"], d["batch_size"], objective.chunk_size)

    def reload(self, path: Path, parts: Parts) -> nn.Module:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(path).to(next(parts.student.parameters()).device)

    def results(self, parts: Parts, best: nn.Module, cfg: Config) -> dict:
        teacher, objective = parts.teacher, parts.objectives[-1]
        used = teacher is not None and (objective.needs_teacher or cfg.lm.seq_kd)
        test = used and self.has_split(parts, "test")
        return {"teacher_test": self.evaluate(teacher, parts, "test", objective) if test else None}

    def load_saved(self, path, key: str = "model"):
        return load_causal_lm(str(path), key)

    def owns(self, config: dict) -> bool:
        return any(str(a).endswith(("ForCausalLM", "LMHeadModel")) for a in config.get("architectures") or [])

    # ---- the report
    def report_inputs(self, cfg: Config):
        """The test documents as texts (for the speed runs); the split itself is tokenised per model."""
        from lmdistill.tasks.base import ReportInputs

        docs = load_documents(cfg)
        if "test" not in docs:
            raise LmdistillError(
                "report: the data has no test split; set data.test or data.test_size above 0"
            )
        df = docs["test"]
        if cfg.lm.prompt_column:
            texts = [f"{p} {r}" for p, r in zip(df[cfg.lm.prompt_column], df[cfg.lm.response_column])]
            length = cfg.data.max_length
        else:
            texts = [str(t) for t in df[cfg.data.text_column]]
            length = cfg.lm.block_size or cfg.data.block_size or cfg.data.max_length
        note = (
            "Causal LM: a prediction is one forward pass over a text (its next-token distributions at every "
            "position, as in scoring or the prefill of generation); quality is the perplexity on the test "
            "split, lower is better."
        )
        return ReportInputs(None, texts[: cfg.report.speed_texts], length, None, [note])

    def report_quality(self, model, tokenizer, cfg: Config, inputs):
        """Perplexity and mean next-token loss on the test split, 95% intervals resampling whole sequences."""
        from lmdistill.report.stats import bootstrap_ci, perplexity_ci
        from lmdistill.tasks.base import Quality

        test = build_datasets(cfg, tokenizer, splits=("test",))["test"]
        sums, counts = sequence_nll(
            model, test, LMCollator(pad_id_of(tokenizer)), cfg.training.eval_batch_size
        )
        kw = {"n_resamples": cfg.report.bootstrap_resamples, "seed": cfg.seed}
        ppl = perplexity_ci(sums, counts, **kw)
        loss = bootstrap_ci((sums, counts.astype(float)), lambda s, n: s.sum(-1) / n.sum(-1), **kw)
        metrics = {
            "perplexity": {"value": ppl.point, "low": ppl.low, "high": ppl.high},
            "loss": {"value": loss.point, "low": loss.low, "high": loss.high},
        }
        evaluation = f"test split, {len(test)} sequences, {int(counts.sum()):,} predicted tokens"
        return Quality(metrics, evaluation, nll=(sums, counts))

    def report_compare(self, a, b, keys: tuple[str, str], cfg: Config) -> list[dict]:
        """The perplexity difference with a paired bootstrap over whole test sequences."""
        from lmdistill.report.paired import comparison, paired_perplexity_bootstrap

        kw = {"n_resamples": cfg.report.bootstrap_resamples, "seed": cfg.seed}
        diff = paired_perplexity_bootstrap(*a.nll, *b.nll, **kw)
        return [comparison(*keys, "perplexity", diff, greater_is_better=False, n=len(a.nll[0]))]

    def evaluate_saved(
        self,
        model,
        *,
        config=None,
        data=None,
        split="test",
        text_column=None,
        batch_size=64,
        overrides=(),
        dtype="fp32",
        **_,
    ):
        """Perplexity (mean next-token NLL over the targets, and its exp) of a saved causal LM, its weights in
        ``dtype`` (fp32 or bf16; the NLL is computed in fp32)."""
        from lmdistill.errors import DataError
        from lmdistill.models.precision import for_inference
        from lmdistill.tasks import load_config
        from lmdistill.tasks.base import EvalResult

        if config is None and data is None:
            raise DataError("evaluate needs data: give --data FILE or --config CONFIG")
        if data is not None:
            section = {"train": str(data), "validation_size": 0.0, "test_size": 0.0}
            if text_column is not None:
                section["text_column"] = text_column
            cfg = load_config({"task": self.name, "data": section, "model": {"name_or_path": str(model)}})
            split_name = "train"
        else:
            cfg = load_config(config, overrides)
            if cfg.task != self.name:
                raise DataError(
                    f"model '{model}' is a causal LM but the config's task is {cfg.task}: give a "
                    "config with task: causal_lm, or --data FILE"
                )
            split_name = split
            if text_column is not None:
                cfg.data.text_column = text_column
        net, tok = load_causal_lm(str(model), "model")
        net = for_inference(net, dtype)
        sets = build_datasets(cfg, tok)
        if split_name not in sets:
            raise DataError(f"split '{split}' is not in the data (available: {', '.join(sets)})")
        metrics = perplexity(net, sets[split_name], LMCollator(pad_id_of(tok)), batch_size, cfg.lm.chunk_size)
        return EvalResult(
            model=str(model),
            split=split if data is None else str(data),
            n=len(sets[split_name]),
            metrics=metrics,
            dtype=dtype,
        )
