"""The objective of causal-LM distillation: ``kd`` and ``lm`` (and any intermediate matches), weighted.

* ``kd``: the configured divergence between the teacher's and the student's next-token distributions at
  temperature T, averaged over the positions whose next token is a target, through
  :meth:`lmdistill.objective.Objective.kd` (chunked; ``lm.top_k`` reduces the teacher to its top-k + tail).
  With ``lm.cross_tokenizer`` the positions are the KD pairs of the batch (``batch["align"]``) and the loss is
  ULD or, on one-token spans of a shared token, the divergence over the shared vocabulary
  (:mod:`lmdistill.losses.cross_vocab`); ``T**2`` is applied by :meth:`~lmdistill.objective.Objective.scale_kd`,
  the same place as for every other KD term.
* ``lm``: next-token cross-entropy on the same positions (0 on on-policy batches).

With ``lm.fused`` the student's logits are never made: both terms come from its final hidden states and LM
head chunk by chunk (:func:`lmdistill.losses.fused.fused_kd_lm`), the live teacher's likewise.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from lmdistill.data.lm import IGNORE, LMCollator
from lmdistill.errors import LmdistillError
from lmdistill.losses.cross_vocab import shared_divergence, uld
from lmdistill.losses.divergences import DIVERGENCES, chunked_divergence
from lmdistill.losses.fused import FusedSpec, HeadRows, fused_kd_lm
from lmdistill.losses.topk import TopKSignal, topk_signal
from lmdistill.objective import Objective, Term
from lmdistill.tasks import lm_generation
from lmdistill.tasks.lm_generation import Generation, continued, prompt_of


def next_targets(labels: torch.Tensor) -> torch.Tensor:
    """The token each position must predict: ``labels`` shifted left by one, ``-100`` at the end. ``(B, T)``."""
    return torch.cat([labels[:, 1:], labels.new_full((labels.shape[0], 1), IGNORE)], dim=1)


def _nll(student_rows: torch.Tensor, target_rows: torch.Tensor, **_) -> torch.Tensor:
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
    if "align" in batch:
        return obj.cross_kd(out.logits, signal.logits, batch["align"])
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
        cross: ``(mode, s_ids, t_to_s)`` for teacher and student with different tokenizers (``uld`` or
            ``aligned``, :func:`lmdistill.losses.cross_vocab.vocab_map`); None: one tokenizer.
        fused: compute the LM head with the losses, chunk by chunk (:meth:`attach` hooks the heads).
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
        cross: tuple[str, torch.Tensor, torch.Tensor] | None = None,
        fused: bool = False,
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
        self.cross_mode = cross[0] if cross is not None else None
        if cross is not None:  # moved with the objective to the training device, never saved
            self.register_buffer("shared_ids", cross[1], persistent=False)
            self.register_buffer("teacher_to_student", cross[2], persistent=False)
        self.fused = fused
        self.student_head = self.teacher_head = None

    @property
    def rewrites_batches(self) -> bool:
        return self.on_policy > 0

    # ---- kd over one vocabulary
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

    # ---- kd across tokenizers
    def cross_kd(
        self, student_logits: torch.Tensor, teacher: torch.Tensor | TopKSignal, align: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """Mean over the batch's KD pairs (``align``: flat student and teacher positions ``(P,)``, ``exact``
        ``(P,)``) of :func:`shared_divergence` on exact pairs (``aligned`` mode) and :func:`uld` on the rest,
        times ``T**2`` when ``kd_scale_t2``. ``student_logits`` ``(B, T_s, V_s)``; ``teacher`` ``(B, T_t, V_t)``
        logits or a top-k signal ``(B, T_t, k)``."""
        s_idx, t_idx, exact = align["student"], align["teacher"], align["exact"]
        temp = self.temperature_now()
        if s_idx.numel() == 0:
            return student_logits.new_zeros((), dtype=torch.float32)
        s_rows = student_logits.reshape(-1, student_logits.shape[-1])[s_idx]  # (P, V_s)
        if isinstance(teacher, TopKSignal):
            t_rows = teacher.take_rows(t_idx)
        else:
            t_rows = teacher.reshape(-1, teacher.shape[-1])[t_idx]  # (P, V_t)
            if self.top_k:
                t_rows = chunked_topk(
                    t_rows, torch.ones_like(t_idx, dtype=torch.bool), self.top_k, temp, self.chunk_size
                )
        shared = functools.partial(
            shared_divergence,
            divergence=DIVERGENCES[self.divergence],
            s_ids=self.shared_ids,
            t_to_s=self.teacher_to_student,
            **self.params,
        )
        exact = exact if self.cross_mode == "aligned" else torch.zeros_like(exact)
        total = s_rows.new_zeros((), dtype=torch.float32)
        for subset, fn in ((exact, shared), (~exact, uld)):
            n = int(subset.sum())
            if n:
                mean = chunked_divergence(
                    fn, s_rows, t_rows, subset, chunk_size=self.chunk_size, temperature=temp
                )
                total = total + mean * (n / s_idx.numel())
        return self.scale_kd(total, temp)

    # ---- fused head
    def attach(self, student: nn.Module, teacher: nn.Module | None) -> None:
        """As :meth:`Objective.attach`; with ``fused`` also capture the models' final hidden states (the
        student's only while it trains: evaluation and generation get ordinary logits)."""
        super().attach(student, teacher)
        if self.fused:
            from lmdistill.models.head import HeadCapture

            self.student_head = HeadCapture(student, "student", lambda head: head.training)
            if teacher is not None and "kd" in self.weights:
                self.teacher_head = HeadCapture(teacher, "teacher")

    def detach(self) -> None:
        super().detach()
        for capture in (self.student_head, self.teacher_head):
            if capture is not None:
                capture.remove()
        self.student_head = self.teacher_head = None

    def forward(self, out, signal, batch: dict, feats: dict | None = None) -> dict:
        if not self.fused or self.student_head is None:
            return super().forward(out, signal, batch, feats)
        terms = self._fused_terms(signal, batch)
        for m in self.matches:
            terms[m.name] = self._match(m, out, feats or {}, signal, batch)
        return terms

    def _fused_terms(self, signal, batch: dict) -> dict[str, torch.Tensor]:
        """``kd`` and ``lm`` from the captured hidden states through :func:`fused_kd_lm`."""
        hidden = self.student_head.pop()  # (B, T, H)
        targets = next_targets(batch["labels"])
        mask = targets != IGNORE
        rows = mask.reshape(-1).nonzero().squeeze(-1)
        kd_on, lm_on = "kd" in self.weights, "lm" in self.weights and not batch.get("on_policy", False)
        teacher = None
        if kd_on:
            captured = self.teacher_head.pop() if self.teacher_head is not None else None
            if captured is not None:
                head = self.teacher_head.head
                teacher = HeadRows(captured.reshape(-1, captured.shape[-1])[rows], head.weight, head.bias)
            elif isinstance(signal.logits, TopKSignal):
                teacher = signal.logits.take_rows(rows)
            else:
                teacher = signal.logits.reshape(-1, signal.logits.shape[-1])[rows]
        head = self.student_head.head
        spec = FusedSpec(
            DIVERGENCES[self.divergence],
            self.params,
            self.temperature_now(),
            self.chunk_size or 512,
            self.vocab_size,
            self.top_k if not isinstance(teacher, TopKSignal) else None,
            kd_on,
            lm_on,
        )
        h = hidden.reshape(-1, hidden.shape[-1])[rows]
        values = fused_kd_lm(h, head.weight, head.bias, targets.reshape(-1)[rows], teacher, spec)
        terms = {}
        if kd_on:
            terms["kd"] = self.scale_kd(values[0], spec.temperature)
        if "lm" in self.weights:
            terms["lm"] = values[1]
        return terms

    # ---- on-policy batches
    def prepare_batch(self, batch: dict, student: nn.Module) -> dict:
        """GKD: with probability ``on_policy`` replace the batch by the student's continuations of its prompts
        (loss only on the generated tokens); otherwise return it unchanged. The engine calls this before
        the teacher runs, so the teacher scores whatever this returns. A chat row's prompt is the
        conversation up to one of its target assistant turns, drawn uniformly."""
        if self.on_policy <= 0 or torch.rand(()).item() >= self.on_policy:
            return batch
        gen = self.generation
        ids, labels = batch["student"]["input_ids"].tolist(), batch["labels"].tolist()
        lengths = batch["student"]["attention_mask"].sum(1).tolist()
        prompts = [prompt_of(i[:n], lab[:n], gen.max_new_tokens) for i, lab, n in zip(ids, labels, lengths)]
        if "turns" in batch:
            for row, turns in enumerate(batch["turns"].tolist()):
                starts = [t for t in turns if t > 0]
                if starts:
                    pick = starts[int(torch.randint(len(starts), ()).item())]
                    prompts[row] = ids[row][:pick]
        items = continued(prompts, lm_generation.generate(student, prompts, gen))
        new = LMCollator(gen.pad_id)(items)
        device = batch["labels"].device
        return {
            "student": {k: v.to(device) for k, v in new["student"].items()},
            "labels": new["labels"].to(device),
            "index": batch.get("index"),
            "on_policy": True,
        }
