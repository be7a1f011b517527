"""Teacher- and student-generated training data for causal LMs: on-policy samples and sequence-level KD.

Sequence-level KD (Kim & Rush 2016, ``lm.seq_kd``) replaces each training example's targets by the teacher's
greedy continuation of its prompt, generated once and cached in ``output_dir/seq_kd``; on-policy distillation
(GKD, Agarwal et al. 2024, ``lm.on_policy``) makes a batch of the student's own samples, which the teacher then
scores.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from lmdistill.data.lm import IGNORE, LMDataset


@dataclass
class Generation:
    """How prompts are continued (on-policy samples, sequence-level KD targets)."""

    max_new_tokens: int = 64
    temperature: float = 1.0
    """0: greedy."""
    pad_id: int = 0
    eos_id: int | None = None


def prompt_of(ids: list[int], labels: list[int], max_new_tokens: int) -> list[int]:
    """The prompt to continue: the tokens before the first target (prompt/response data), or for raw text
    (the first token is already a target) every token but the last ``max_new_tokens`` (at least one)."""
    first = next((i for i, t in enumerate(labels) if t != IGNORE), len(labels))
    if first == 0:
        return ids[: max(1, len(ids) - max_new_tokens)]
    return ids[:first]


def item_prompts(item: dict, max_new_tokens: int) -> list[list[int]]:
    """The prompts of one training item: the conversation up to each target assistant turn of a chat item
    (``turns``), else :func:`prompt_of`."""
    turns = [t for t in item.get("turns", ()) if t > 0]
    if turns:
        return [item["input_ids"][:t] for t in turns]
    return [prompt_of(item["input_ids"], item["labels"], max_new_tokens)]


@torch.no_grad()
def generate(model: nn.Module, prompts: list[list[int]], gen: Generation) -> list[list[int]]:
    """Continue each prompt (left-padded into one batch): up to ``max_new_tokens`` tokens, cut after the
    first EOS. Sampling at ``gen.temperature`` without top-k/top-p filtering (greedy at 0)."""
    from transformers import GenerationConfig

    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), gen.pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    sample = gen.temperature > 0
    config = GenerationConfig(
        max_new_tokens=gen.max_new_tokens,
        do_sample=sample,
        temperature=gen.temperature if sample else None,
        top_k=0 if sample else None,
        top_p=1.0 if sample else None,
        pad_token_id=gen.pad_id,
        eos_token_id=gen.eos_id,
    )
    was_training = model.training
    model.eval()
    try:
        out = model.generate(
            input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config
        )
    finally:
        model.train(was_training)
    conts = []
    for row in out[:, width:].tolist():
        if gen.eos_id is not None and gen.eos_id in row:
            row = row[: row.index(gen.eos_id) + 1]
        conts.append(row)
    return conts


def continued(prompts: list[list[int]], conts: list[list[int]]) -> list[dict[str, list[int]]]:
    """Items ``prompt + continuation`` with the loss on the continuation only."""
    return [{"input_ids": p + c, "labels": [IGNORE] * len(p) + c} for p, c in zip(prompts, conts)]


# --------------------------------------------------------------------------------------------- sequence-level KD


def sequence_kd(
    teacher: nn.Module, train: LMDataset, gen: Generation, cache_dir: Path, identity: dict, batch_size: int
) -> LMDataset:
    """Kim & Rush (2016) sequence-level KD data: each training prompt continued greedily by the teacher (a chat
    item gives one prompt per target assistant turn: the conversation up to it, :func:`item_prompts`).

    Generated once: the continuations are stored in ``cache_dir/targets.json`` with a key over the
    teacher, the training tokens and the generation settings; a re-run with the same key reads them back.
    """
    from tqdm.auto import tqdm

    prompts = [p for it in train.items for p in item_prompts(it, gen.max_new_tokens)]
    digest = hashlib.sha256(json.dumps([identity, asdict(gen), prompts]).encode()).hexdigest()[:16]
    path = Path(cache_dir) / "targets.json"
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
            if saved.get("key") == digest and len(saved["continuations"]) == len(prompts):
                return LMDataset(continued(prompts, saved["continuations"]))
        except (OSError, ValueError, KeyError):
            pass  # unreadable: generate again
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # less padding per batch
    conts: list[list[int]] = [[] for _ in prompts]
    for start in tqdm(range(0, len(order), batch_size), desc="seq-kd: teacher generates", dynamic_ncols=True):
        chunk = order[start : start + batch_size]
        for i, c in zip(chunk, generate(teacher, [prompts[i] for i in chunk], gen)):
            conts[i] = c
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(
        json.dumps({"key": digest, "identity": identity, "generation": asdict(gen), "continuations": conts})
    )
    tmp.replace(path)
    return LMDataset(continued(prompts, conts))
