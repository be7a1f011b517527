"""Distillation losses between distributions over two different vocabularies (``lm.cross_tokenizer``).

* :func:`uld`: the Universal Logit Distillation loss (Boizard et al. 2024, "Towards Cross-Tokenizer
  Distillation: the Universal Logit Distillation Loss for LLMs", arXiv:2402.12030, Sec. 3, Eq. 6-7): the
  Wasserstein-1 distance between the two next-token distributions with every token at unit cost from every
  other, which in closed form is the L1 distance between the probability vectors each sorted in decreasing
  order, the shorter padded with zeros: ``sum_i |p_(i) - q_(i)|``. It compares the shapes of the
  distributions (how peaked, how spread), not which tokens they favour.
* :func:`shared_divergence`: any divergence of :data:`lmdistill.losses.divergences.DIVERGENCES` over the tokens
  both vocabularies hold (matched by their vocabulary strings) plus one *other* bin holding each side's mass
  on the rest; equal to the ordinary divergence when the vocabularies are the same.

Both take the student's logits ``(n, V_s)`` and the teacher's ``(n, V_t)`` or a
:class:`~lmdistill.losses.topk.TopKSignal` ``(n, k)``, compute in float32 at temperature ``T`` (both sides),
return per-row values ``(n,)`` and apply no ``T**2``.

With a top-k teacher both are computed on bins and are lower bounds of the dense values: ULD on the k
largest probabilities plus one tail entry per side (by the triangle inequality
``sum_{i>k} |p_(i) - q_(i)| >= |sum_{i>k} p_(i) - sum_{i>k} q_(i)|``), the shared divergence on the teacher's
top-k tokens that the student's vocabulary holds plus the rest (merging bins never raises an f-divergence).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmdistill.losses.divergences import DIVERGENCES, Divergence
from lmdistill.losses.topk import TopKSignal, check_temperature

Teacher = torch.Tensor | TopKSignal


def _float(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def uld(student_logits: torch.Tensor, teacher: Teacher, temperature: float = 1.0) -> torch.Tensor:
    """ULD: ``sum_i |p_(i) - q_(i)|`` over the probabilities of each side sorted in decreasing order, the
    shorter vector padded with zeros. ``(n, V_s), (n, V_t) or TopKSignal (n, k) -> (n,)``, in ``[0, 2]``."""
    check_temperature(temperature)
    q = F.softmax(_float(student_logits) / temperature, dim=-1).sort(dim=-1, descending=True).values
    if isinstance(teacher, TopKSignal):
        k = teacher.indices.shape[-1]
        head = teacher.logprobs.float().exp().sort(dim=-1, descending=True).values
        p = torch.cat([head, teacher.tail_logprob.float().exp().unsqueeze(-1)], dim=-1)
        q_head = F.pad(q[..., :k], (0, max(0, k - q.shape[-1])))
        q = torch.cat([q_head, q[..., k:].sum(-1, keepdim=True)], dim=-1)
    else:
        p = F.softmax(_float(teacher) / temperature, dim=-1).sort(dim=-1, descending=True).values
    width = max(p.shape[-1], q.shape[-1])
    p, q = F.pad(p, (0, width - p.shape[-1])), F.pad(q, (0, width - q.shape[-1]))
    return (p - q).abs().sum(-1)


def _tail(log_probs: torch.Tensor, taken: torch.Tensor) -> torch.Tensor:
    """``log`` of the mass not at the ``taken`` columns ``(n, m)`` of ``log_probs`` ``(n, V + 1)`` (column V is a
    dummy at -inf), -inf where nothing is left; no NaN in the gradient."""
    rest = log_probs.scatter(-1, taken, float("-inf"))
    empty = torch.isinf(rest).all(-1, keepdim=True)
    return torch.logsumexp(rest.masked_fill(empty, 0.0), -1, keepdim=True).masked_fill(empty, float("-inf"))


def shared_log_probs(
    student_logits: torch.Tensor,
    teacher: Teacher,
    s_ids: torch.Tensor,
    t_to_s: torch.Tensor,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log_q, log_p)`` on the bins *shared tokens* + *other*, each ``(n, m + 1)``.

    ``s_ids`` ``(S,)``: the student ids of the shared tokens, ``t_to_s`` ``(V_t,)``: each teacher id's student
    id (-1: not shared). A dense teacher uses every shared token; a top-k one its top-k tokens that are shared
    (the others fall into *other*)."""
    check_temperature(temperature)
    n, vs = student_logits.shape
    log_q = F.log_softmax(_float(student_logits) / temperature, dim=-1)
    log_q = torch.cat([log_q, log_q.new_full((n, 1), float("-inf"))], dim=-1)  # column vs: a dummy
    if isinstance(teacher, TopKSignal):
        mapped = t_to_s[teacher.indices.long()]  # (n, k) student ids, -1 where not shared
        kept = mapped >= 0
        log_p_all = torch.cat([teacher.logprobs.float(), teacher.tail_logprob.float().unsqueeze(-1)], -1)
        log_p_all = F.log_softmax(log_p_all, dim=-1)  # 16-bit storage rounding: renormalise
        head_p = log_p_all[..., :-1].masked_fill(~kept, float("-inf"))
        rest_p = torch.cat([log_p_all[..., :-1].masked_fill(kept, float("-inf")), log_p_all[..., -1:]], -1)
        tail_p = torch.logsumexp(rest_p, -1, keepdim=True)
        taken = torch.where(kept, mapped, vs)
    else:
        t_ids = torch.nonzero(t_to_s >= 0).squeeze(-1)
        order = t_to_s[t_ids].argsort()  # the teacher's shared ids in the order of s_ids
        t_ids = t_ids[order]
        log_p = F.log_softmax(_float(teacher) / temperature, dim=-1)
        log_p = torch.cat([log_p, log_p.new_full((n, 1), float("-inf"))], dim=-1)
        head_p = log_p[:, t_ids]
        tail_p = _tail(log_p, t_ids.expand(n, -1))
        taken = s_ids.expand(n, -1)
    head_q = log_q.gather(-1, taken)
    return torch.cat([head_q, _tail(log_q, taken)], -1), torch.cat([head_p, tail_p.to(head_p.dtype)], -1)


def shared_divergence(
    student_logits: torch.Tensor,
    teacher: Teacher,
    temperature: float = 1.0,
    *,
    divergence: str | Divergence = "forward_kl",
    s_ids: torch.Tensor,
    t_to_s: torch.Tensor,
    **params: float,
) -> torch.Tensor:
    """``divergence`` between the teacher's and the student's distributions on the shared tokens + *other*
    (:func:`shared_log_probs`), e.g. ``KL(p || q)`` for ``forward_kl``. ``(n, V_s), (n, V_t) -> (n,)``."""
    fn = DIVERGENCES[divergence] if isinstance(divergence, str) else divergence
    log_q, log_p = shared_log_probs(student_logits, teacher, s_ids, t_to_s, temperature)
    return fn(log_q, log_p, 1.0, **params)  # log-probabilities are their own logits at T = 1


def vocab_map(
    s_ids: list[int], t_ids: list[int], s_size: int, t_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(s_ids, t_to_s)`` tensors of the shared tokens whose ids fit both models' outputs (``s_size``,
    ``t_size``): the inputs of :func:`shared_divergence`."""
    keep = [(s, t) for s, t in zip(s_ids, t_ids) if s < s_size and t < t_size]
    t_to_s = torch.full((t_size,), -1, dtype=torch.long)
    if keep:
        t_to_s[torch.tensor([t for _, t in keep])] = torch.tensor([s for s, _ in keep])
    s_sorted = torch.tensor(sorted(s for s, _ in keep), dtype=torch.long)
    return s_sorted, t_to_s
