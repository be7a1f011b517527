"""Configuration: dataclasses loaded strictly from YAML, with `a.b=value` overrides.

Every key a user types is checked: an unknown key fails with its full path and a "did you mean",
types and ranges are checked with the key named as typed, and all errors are reported at once
(:class:`ConfigError` carries the list). The Python API and the CLI both go through :func:`load_config`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from lmdistill.errors import ConfigError

Task = Literal["classification", "regression", "causal_lm", "mlm", "general", "embedding"]
Verb = Literal["finetune", "distill", "compress"]


@dataclass
class DataConfig:
    """Where the examples come from and which columns hold what."""

    dataset: str | None = None
    """A `datasets` name (hub id or local dataset folder) or a built-in name (`vader`, `bbc-news`)."""
    dataset_config: str | None = None
    """The `datasets` configuration name (e.g. `sst2` for `glue`)."""
    options: dict[str, Any] = field(default_factory=dict)
    """Options for a built-in data set (e.g. `{domains: [movie]}` for `vader`)."""
    train: str | None = None
    """A local CSV / TSV / JSONL / Parquet file, or with `dataset`: a split name (default `train`)."""
    validation: str | None = None
    """File or split name; when absent, carved from train with `validation_size`."""
    test: str | None = None
    """File or split name; when absent, carved from train with `test_size`."""
    validation_size: float = 0.1
    test_size: float = 0.1
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str = "label"
    label_names: list[str] | None = None
    """Fixed label order for classification; default: the sorted labels of the training split."""
    max_length: int = 128
    max_train_examples: int | None = None
    max_eval_examples: int | None = None
    block_size: int | None = None
    """mlm / general raw text: tokens per block, special tokens included (default: data.max_length)."""
    mlm_probability: float = 0.15
    """mlm: the share of real tokens selected for prediction in each batch (dynamic masking, 80/10/10)."""
    streaming: bool = False
    """mlm / general: read the corpus as a stream (.txt / .jsonl line by line, `datasets` streaming);
    needs training.max_steps."""


@dataclass
class ModelConfig:
    """A model given by local folder or hub id."""

    name_or_path: str | None = None
    tokenizer: str | None = None
    """Tokenizer folder or id when it differs from `name_or_path`."""
    revision: str | None = None
    trust_remote_code: bool = False


@dataclass
class StudentConfig:
    """How the student is made: from teacher layers, a pretrained model, or a fresh config."""

    init: Literal["from_teacher", "pretrained", "config"] = "from_teacher"
    layers: list[int] | None = None
    """from_teacher: the teacher layers to keep, 0-based (e.g. [0, 2, 4])."""
    num_layers: int | None = None
    """from_teacher: how many layers to keep (chosen by `strategy`); config: the depth."""
    strategy: Literal["uniform", "first", "last"] = "uniform"
    keep_every: int | None = None
    """from_teacher: keep every k-th teacher layer, from layer 0 (DistilBERT: 2)."""
    name_or_path: str | None = None
    """pretrained: a local folder or hub id."""
    tokenizer: str | None = None
    hidden_size: int | None = None
    """config: the width (default: the teacher's)."""
    num_attention_heads: int | None = None
    intermediate_size: int | None = None
    trust_remote_code: bool = False


@dataclass
class TrainingConfig:
    """The optimisation loop."""

    epochs: float = 3.0
    max_steps: int | None = None
    """Stop after this many optimizer steps (overrides epochs)."""
    batch_size: int = 32
    eval_batch_size: int = 64
    learning_rate: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    scheduler: Literal["linear", "cosine", "constant"] = "linear"
    gradient_accumulation_steps: int = 1
    max_grad_norm: float | None = 1.0
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    """auto: bf16 on GPUs that support it, otherwise full precision."""
    eval_every: int | None = None
    """Evaluate every N optimizer steps; default: at the end of every epoch."""
    early_stopping_patience: int | None = None
    """Stop after this many evaluations without improvement."""
    metric_for_best: str | None = None
    """Validation metric that picks the best checkpoint (default: accuracy, or pearson for regression)."""
    log_every: int = 10
    save_every: int | None = None
    """Write a resumable checkpoint (model, optimizer, scheduler, RNG, data position) every N steps."""
    save_total_limit: int = 2
    """Keep the last N checkpoints (plus the one at the best step, when there is one)."""
    resume: str | None = None
    """auto: continue from the newest checkpoint in output_dir/checkpoints (if any); or a checkpoint folder."""
    group_by_length: bool = True
    """Batch examples of similar length together (less padding; every example still seen once per epoch)."""
    max_tokens: int | None = None
    """Token-budget batches: as many examples as fit in this many padded tokens per process (batch_size is
    then not used for training batches); batches of similar length, formed once, shuffled every epoch."""
    on_nonfinite: Literal["stop", "skip"] = "stop"
    """A NaN/inf loss: stop (checked at each log, no per-step sync) or skip that batch (checked every step)."""
    cpu: bool = False
    """Force the CPU even when a GPU is present."""
    teacher_placement: Literal["replicate", "shard"] = "replicate"
    """Under FSDP / DeepSpeed ZeRO-3: keep a full teacher on every process, or shard it like the student."""
    num_workers: int = 0
    teacher_cache: str | None = None
    """Run the teacher once over the training data and train from its stored outputs (16-bit, memory-mapped):
    auto (OUTPUT_DIR/teacher_cache), a folder (share it between students), or null (the teacher runs live).
    A changed teacher, data or loss set rebuilds it; on-policy batches still use the live teacher."""
    compile: bool = False
    """torch.compile the student; batches are padded to a few fixed lengths (32, 48, 64, 96, 128, ...)."""


@dataclass
class ScheduleConfig:
    """How a value moves from its start (the configured value) to ``end`` over training."""

    kind: Literal["constant", "linear", "cosine"] = "constant"
    end: float | None = None
    """The value at the last step (required for linear and cosine)."""


# feature -> the losses that apply to it (the first is the default)
FEATURE_LOSSES = {
    "embeddings": ("mse", "cosine"),
    "hidden": ("mse", "cosine"),
    "cls": ("cls_mse", "mse", "cosine"),
    "mean": ("mse", "cosine"),
    "attention": ("kl", "mse"),
    "attention_scores": ("mse",),
    "qq": ("kl",),
    "kk": ("kl",),
    "vv": ("kl",),
}
SENTENCE_FEATURES = ("cls", "mean")


@dataclass
class MatchConfig:
    """One piece of intermediate knowledge: a teacher feature matched to a student feature.

    Give ``teacher_layer`` and ``student_layer`` (0-based; negative counts from the end: -1 is the last),
    or leave them out and let ``strategy`` pair every student layer with a teacher layer.
    """

    feature: Literal["embeddings", "hidden", "cls", "mean", "attention", "attention_scores", "qq", "kk", "vv"]
    loss: str | None = None
    """mse | cosine | cls_mse | kl (default: the first that applies to the feature)."""
    weight: float = 1.0
    teacher_layer: int | None = None
    student_layer: int | None = None
    strategy: Literal["auto", "uniform", "skip", "last", "first"] = "auto"
    projection: bool | None = None
    """Learn a linear map student width -> teacher width (default: only when the widths differ)."""
    relation_heads: int | None = None
    """Relation heads for qq/kk/vv (default: the teacher's attention heads)."""
    head_rule: Literal["average", "select"] | None = None
    """attention with different head counts: average teacher head groups, or select the first heads."""
    schedule: ScheduleConfig | None = None


@dataclass
class StageConfig:
    """One stage of a multi-stage recipe (TinyBERT: intermediate layers first, then predictions)."""

    name: str = "stage"
    losses: dict[str, float] = field(default_factory=dict)
    matches: list[MatchConfig] = field(default_factory=list)
    temperature: float | None = None
    epochs: float | None = None
    learning_rate: float | None = None


@dataclass
class DistillSection:
    """What the student learns from the teacher."""

    method: str | None = None
    """A published recipe: distilbert, pkd-skip, pkd-last, tinybert, minilm, minilmv2 (see docs/methods.md)."""
    temperature: float = 2.0
    temperature_schedule: ScheduleConfig | None = None
    kd_scale_t2: bool = True
    """Multiply the soft-target loss by T^2 (Hinton et al.); Patient KD's recipe does not."""
    losses: dict[str, float] | None = None
    """Loss term -> weight. Default: {kd: 0.5, ce: 0.5} (classification), {kd_mse: 0.5, mse: 0.5} (regression)."""
    loss_schedules: dict[str, ScheduleConfig] = field(default_factory=dict)
    matches: list[MatchConfig] = field(default_factory=list)
    stages: list[StageConfig] = field(default_factory=list)
    """Run these stages one after another on the same student (each overrides losses/matches)."""


@dataclass
class CausalLMConfig:
    """Causal LM distillation (``task: causal_lm``): the token-level divergence, the teacher signal, the data
    layout and generation (see docs/causal_lm.md)."""

    divergence: Literal["forward_kl", "reverse_kl", "jsd", "skew_forward_kl", "skew_reverse_kl", "tvd"] = (
        "forward_kl"
    )
    """forward_kl = KL(teacher || student); reverse_kl = KL(student || teacher) (MiniLLM); jsd (GKD, ``beta``);
    skew_forward_kl / skew_reverse_kl (DistiLLM, ``alpha``); tvd (total variation)."""
    beta: float = 0.5
    """jsd: the teacher's weight in the mixture; 0 = forward_kl, 1 = reverse_kl (continuous at both ends)."""
    alpha: float = 0.1
    """skew_*: the skew (DistiLLM's default 0.1); 0 = the plain KL."""
    top_k: int | None = None
    """Use only the teacher's k most likely tokens plus their tail mass (null: the full distribution)."""
    chunk_size: int = 512
    """Token positions per chunk of the divergence (bounds the float32 (chunk, vocab) temporaries)."""
    seq_kd: bool = False
    """Sequence-level KD (Kim & Rush 2016): train on the teacher's greedy continuations, generated once and
    cached in output_dir/seq_kd."""
    on_policy: float = 0.0
    """GKD's lambda: the probability that a batch is made of the student's own samples (scored by the teacher)."""
    max_new_tokens: int = 64
    """Tokens generated per example (seq_kd, on_policy); raw-text prompts are the tokens before the last
    max_new_tokens."""
    generation_temperature: float = 1.0
    """Sampling temperature of the student's on-policy samples (0: greedy)."""
    block_size: int | None = None
    """Raw text: tokens per training block after packing documents (default: data.block_size, else
    data.max_length)."""
    prompt_column: str | None = None
    """Prompt/response data: the prompt column (no loss on its tokens); set with response_column."""
    response_column: str | None = None


@dataclass
class EmbeddingConfig:
    """Sentence-embedding distillation for search (`task: embedding`; docs/embedding.md)."""

    mode: Literal["bi", "cross"] = "bi"
    """bi: the student learns the teacher's sentence embeddings; cross: a cross-encoder teacher's relevance
    scores are distilled into a bi-encoder student with margin-MSE (Hofstaetter et al. 2020)."""
    loss: Literal["mse", "cosine", "margin_mse"] | None = None
    """bi: mse (default; Reimers & Gurevych 2020) or cosine on the pooled embeddings; cross: margin_mse."""
    pooling: Literal["auto", "mean", "cls"] = "auto"
    """auto: the teacher's (sentence-transformers 1_Pooling/config.json in its folder), else mean."""
    normalize: bool | None = None
    """L2-normalise the saved student's embeddings (default: as the teacher's Normalize module)."""
    projection: bool | None = None
    """bi: a learned linear map student width -> teacher width after pooling (default: when widths differ)."""
    similarity: Literal["dot", "cosine"] = "dot"
    """cross: how the student scores a query and a passage."""
    extra_text_columns: list[str] = field(default_factory=list)
    """bi: more text columns to learn from besides data.text_column (e.g. [title])."""
    query_column: str = "query"
    positive_column: str = "positive"
    negative_column: str | None = None
    """cross: the negative passage column (default: another row's positive, drawn with the seed)."""
    retrieval: str | None = None
    """Evaluate retrieval at the end: bbc-news (or another built-in) or a CSV/JSONL/Parquet file; when it is
    data.dataset, only its test split is used."""
    retrieval_query_column: str = "title"
    retrieval_document_column: str = "text"
    retrieval_max_queries: int | None = None


@dataclass
class ReportConfig:
    """How `compress` and `report` measure the models."""

    country_iso_code: str = "USA"
    """Country whose electricity mix converts energy to CO2 (codecarbon, offline)."""
    latency_repeats: int = 20
    warmup: int = 3
    speed_texts: int = 256
    """How many test texts are used for the speed, memory and energy measurements."""
    energy: bool = True
    bootstrap_resamples: int = 1000


@dataclass
class Config:
    """The whole run. `finetune` uses `model`; `distill` uses `teacher` and `student`."""

    task: Task = "classification"
    seed: int = 42
    output_dir: str = "runs/lmdistill"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    teacher: ModelConfig = field(default_factory=ModelConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    distill: DistillSection = field(default_factory=DistillSection)
    report: ReportConfig = field(default_factory=ReportConfig)
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    lm: CausalLMConfig = field(default_factory=CausalLMConfig)


MAX_INT = 2**32 - 1  # no count, size or step in a config is larger; bigger values overflow the libraries

# --------------------------------------------------------------------------- loading


def load_config(
    source: str | Path | dict | Config, overrides: list[str] | tuple[str, ...] = (), verb: Verb | None = None
) -> Config:
    """Load a config from a YAML path, a dict or a Config, apply `a.b=value` overrides, check it.

    Raises:
        ConfigError: every problem found, each naming its key.
    """
    if isinstance(source, Config):
        raw = dataclasses.asdict(source)
    elif isinstance(source, dict):
        raw = source
    else:
        raw = read_yaml(Path(source))
    raw = apply_overrides(raw, overrides)
    raw = apply_method(raw)
    errors: list[str] = []
    cfg = _build(Config, raw, "", errors)
    errors.extend(check(cfg, verb))
    if errors:
        raise ConfigError(errors)
    resolve_defaults(cfg)
    return cfg


def apply_method(raw: dict) -> dict:
    """Lay a preset (``distill.method``) under the user's keys: what the user wrote wins."""
    from lmdistill.methods.presets import presets_for

    distill = raw.get("distill") if isinstance(raw, dict) else None
    method = distill.get("method") if isinstance(distill, dict) else None
    presets = presets_for(raw.get("task") if isinstance(raw, dict) else None)
    if not isinstance(method, str) or method not in presets:
        return raw  # an unknown name is reported by check()
    return _deep_merge(presets[method], raw)


def _deep_merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        out[k] = _deep_merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def _one_line(e: BaseException, limit: int = 200) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text[:limit]


def _show(value: Any, limit: int = 80) -> str:
    """A value as it appears in a message: repr, one line, cut short."""
    try:
        text = repr(value)
    except RecursionError:
        text = f"<a deeply nested {type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML would keep the last silently)."""


def _no_duplicates(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)  # resolve `<<: *anchor` merges first: a merged key may be overridden
    seen: dict = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            duplicate = key in seen
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, "a key must be a plain value", key_node.start_mark
            ) from None
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"key {_show(key)} appears twice (also on line {seen[key] + 1}); keep one",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark.line
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def read_yaml(path: Path) -> dict:
    """Read a YAML mapping safely (no code is ever executed)."""
    if not path.is_file():
        raise ConfigError([f"config file '{path}' not found"])
    try:
        data = path.read_bytes()
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(
            [f"config file '{path}' cannot be read as UTF-8 text ({_one_line(e)}); save it as UTF-8"]
        ) from None
    if "\x00" in text:
        raise ConfigError([f"config file '{path}' contains NUL bytes (saved as UTF-16?); save it as UTF-8"])
    try:
        raw = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader: no tag can run code
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = getattr(e, "problem", None) or _one_line(e)
        raise ConfigError([f"config file '{path}' is not valid YAML{where}: {what}"]) from None
    except RecursionError:
        raise ConfigError([f"config file '{path}' is nested too deeply to be a config"]) from None
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError) as e:
        # a tag such as `!!int 1.5` or `!!timestamp nope` that cannot be built
        raise ConfigError(
            [f"config file '{path}' is not valid YAML: a tagged value cannot be read ({_one_line(e)})"]
        ) from None
    if raw is None:
        raise ConfigError([f"config file '{path}' is empty: it needs at least `data:` and a model"])
    if not isinstance(raw, dict):
        raise ConfigError(
            [f"config file '{path}' must be a mapping of keys to values, not {type(raw).__name__}"]
        )
    return raw


def apply_overrides(raw: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    """Apply `key.sub=value` overrides (value parsed as YAML) to a copy of ``raw``."""
    raw = json.loads(json.dumps(raw, default=str)) if overrides else raw
    for item in overrides:
        if "=" not in item:
            raise ConfigError(
                [f"override {_show(item)} must look like key.sub=value (e.g. training.learning_rate=3e-5)"]
            )
        key, _, text = item.partition("=")
        if any(not c.isprintable() for c in key):
            raise ConfigError([f"override {_show(item)} has a key with unprintable characters"])
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise ConfigError([f"override {_show(item)} has an empty key"])
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except RecursionError:
            raise ConfigError([f"override '{key}' has a value nested too deeply"]) from None
        except (yaml.YAMLError, ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError):
            value = text
        node = raw
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        node[parts[-1]] = value
    return raw


def _suggest(name: str, choices: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _build(cls: type, raw: Any, path: str, errors: list[str]) -> Any:
    """Build dataclass ``cls`` from ``raw``, appending one message per problem to ``errors``."""
    where = path or "the config"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        errors.append(f"{where} must be a mapping of keys, got {type(raw).__name__} {_show(raw)}")
        return None if _required(cls) else cls()
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    required = _required(cls)
    missing = [n for n in required if n not in raw]
    for n in missing:
        errors.append(f"{_join(path, n)} is required")
    if missing:
        return None
    kwargs = {}
    for key, value in raw.items():
        key_path = _join(path, str(key) if str(key).isprintable() else _show(str(key)))
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.6)
            hint = (
                f" (did you mean '{_join(path, close[0])}'?)"
                if close
                else f" (valid keys: {', '.join(names)})"
            )
            errors.append(f"unknown key '{key_path}'{hint}")
            continue
        n_before = len(errors)
        converted = _convert(hints[key], value, key_path, errors)
        if len(errors) == n_before or dataclasses.is_dataclass(converted):
            kwargs[key] = converted  # a section with a bad key inside is still checked
    if any(n not in kwargs for n in required):
        return None  # a required value was wrong: reported above
    return cls(**kwargs)


def _required(cls: type) -> list[str]:
    return [
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(str(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict or dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def _convert(tp: Any, value: Any, path: str, errors: list[str]) -> Any:  # noqa: C901
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _convert(inner[0], value, path, errors)
        trial: list[str] = []
        for a in inner:
            trial.clear()
            out = _convert(a, value, path, trial)
            if not trial:
                return out
        errors.append(f"{path} must be {_type_name(tp)}, got {_show(value)}")
        return None
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path, errors)
    if origin is Literal:
        if isinstance(value, bool) and "no" in args and value is False:
            return "no"  # YAML 1.1 reads an unquoted `no` as false
        if not isinstance(value, bool) and value in args:
            return value
        errors.append(
            f"{path} must be one of {', '.join(map(str, args))}, got {_show(value)}{_suggest(str(value), map(str, args))}"
        )
        return None
    if origin is list:
        if not isinstance(value, list):
            errors.append(f"{path} must be {_type_name(tp)}, got {_show(value)}")
            return None
        n_before = len(errors)
        out = [_convert(args[0], v, f"{path}[{i}]", errors) for i, v in enumerate(value)]
        return out if len(errors) == n_before else None
    if origin is dict:
        if not isinstance(value, dict):
            errors.append(f"{path} must be a mapping of keys to values, got {_show(value)}")
            return None
        n_before = len(errors)
        out = {
            str(k): _convert(
                args[1], v, _join(path, str(k) if str(k).isprintable() else _show(str(k))), errors
            )
            for k, v in value.items()
        }
        return out if len(errors) == n_before else None
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if abs(value) > MAX_INT:
                errors.append(f"{path} is too large ({_show(value, 30)}); use a value below {MAX_INT:,}")
                return None
            return value
    elif tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value) if abs(value) < 1e308 else math.inf
        elif isinstance(value, str):  # YAML 1.1 reads `1e-5` as a string
            with contextlib.suppress(ValueError):
                number = float(value)
        if number is not None:
            if not math.isfinite(number):
                errors.append(f"{path} must be a finite number, got {_show(value)}")
                return None
            return number
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    errors.append(f"{path} must be {_type_name(tp)}, got {_show(value)}")
    return None


# --------------------------------------------------------------------------- checks


# per task: the output-level loss terms it knows, its default weights, and the metric that picks the best model
TASK_LOSSES: dict[str, tuple[str, ...]] = {
    "classification": ("kd", "ce", "kd_mse"),
    "regression": ("kd_mse", "mse"),
}
TASK_LOSSES["causal_lm"] = ("kd", "lm")
DEFAULT_LOSSES: dict[str, dict[str, float]] = {
    "classification": {"kd": 0.5, "ce": 0.5},
    "regression": {"kd_mse": 0.5, "mse": 0.5},
}
DEFAULT_LOSSES["causal_lm"] = {"kd": 0.5, "lm": 0.5}
DEFAULT_METRIC: dict[str, str] = {"classification": "accuracy", "regression": "pearson"}
DEFAULT_METRIC["causal_lm"] = "perplexity"
# raw-text and embedding tasks (tasks/mlm.py, tasks/general.py, tasks/embedding.py)
TASK_LOSSES.update(mlm=("kd", "mlm", "cos"), general=(), embedding=())
DEFAULT_LOSSES["mlm"] = {"kd": 5.0, "mlm": 2.0, "cos": 1.0}  # DistilBERT's alpha_ce, alpha_mlm, alpha_cos
DEFAULT_METRIC.update(mlm="perplexity", general="loss", embedding="loss")
CACHE_TASKS = (
    "classification",
    "regression",
    "causal_lm",
)  # training.teacher_cache: tasks whose teacher can be cached
EVAL_METRICS = {
    "mlm": ("perplexity", "mlm_loss", "mlm_accuracy", "loss"),
    "general": ("loss",),
    "bi": ("loss", "teacher_cosine", "embedding_mse"),
    "cross": ("loss", "margin_mse", "pairwise_accuracy"),
}


def check(cfg: Config, verb: Verb | None = None) -> list[str]:
    """Range and consistency checks; returns every problem found (empty when the config is fine)."""
    errors: list[str] = []
    if not 0 <= cfg.seed < 2**32:
        errors.append(f"seed must be between 0 and 4294967295, got {cfg.seed}")
    errors += _check_data(cfg.data)
    errors += _check_training(cfg.training)
    errors += _check_lm(cfg, verb)
    errors += _check_rawtext(cfg, verb) + _check_embedding(cfg, verb)
    if cfg.training.teacher_cache is not None and cfg.task not in CACHE_TASKS:
        errors.append(
            f"training.teacher_cache is not supported for task {cfg.task} (its loop feeds the teacher "
            f"inputs that change every epoch or its own signal); use it with tasks {', '.join(CACHE_TASKS)}, "
            "or set it to null"
        )
    if verb == "finetune" and not cfg.model.name_or_path:
        errors.append("model.name_or_path is required for finetune: the pretrained model to fine-tune")
    if verb == "distill" and not cfg.teacher.name_or_path:
        errors.append("teacher.name_or_path is required for distill: a fine-tuned teacher folder or hub id")
    if verb == "compress" and not cfg.teacher.name_or_path and not cfg.model.name_or_path:
        errors.append(
            "compress needs model.name_or_path (the model to fine-tune as teacher) or "
            "teacher.name_or_path (a teacher already fine-tuned for the task)"
        )
    if verb in ("distill", "compress"):
        errors += _check_student(cfg.student)
        errors += _check_distill(cfg)
    errors += _check_report(cfg.report)
    return errors


def _check_metric(cfg: Config, kind: str) -> list[str]:
    m, known = cfg.training.metric_for_best, EVAL_METRICS[kind]
    if m is None or m in known:
        return []
    return [
        f"training.metric_for_best '{m}' is not measured for task {cfg.task}{_suggest(m, known)} "
        f"(use one of: {', '.join(known)})"
    ]


def _check_rawtext(cfg: Config, verb: Verb | None) -> list[str]:
    """Raw-text keys (block_size, mlm_probability, streaming) and what tasks mlm and general need."""
    d, t = cfg.data, cfg.training
    errors = []
    if d.block_size is not None and d.block_size < 8:
        errors.append(f"data.block_size must be at least 8 tokens, got {d.block_size}")
    if not 0.0 < d.mlm_probability < 1.0:
        errors.append(f"data.mlm_probability must be between 0 and 1 (exclusive), got {d.mlm_probability}")
    if d.streaming:
        if cfg.task not in ("mlm", "general"):
            errors.append(f"data.streaming applies to tasks mlm and general, not {cfg.task}")
        if t.max_steps is None:
            errors.append(
                "data.streaming needs training.max_steps: a stream has no length to count epochs by"
            )
        if t.num_workers:
            errors.append(
                f"data.streaming needs training.num_workers 0 (one reader of the stream), got {t.num_workers}"
            )
    if cfg.task not in ("mlm", "general"):
        return errors
    errors += _check_metric(cfg, cfg.task)
    if cfg.task == "general" and verb == "finetune":
        errors.append(
            "task general distils a teacher: run `lmdistill distill`, then finetune its model/ "
            "with a task such as classification"
        )
    if cfg.task == "general" and verb == "distill" and not cfg.distill.matches and not cfg.distill.stages:
        errors.append(
            "distill.matches is required for task general (it learns from hidden states, attention and "
            "relations only): add matches, or set distill.method: tinybert | minilmv2"
        )
    return errors


def _check_embedding(cfg: Config, verb: Verb | None) -> list[str]:
    e = cfg.embedding
    if cfg.task != "embedding":
        return []
    errors = _check_metric(cfg, e.mode)
    if verb == "finetune":
        errors.append("task embedding distils a teacher: run `lmdistill distill` with teacher.name_or_path")
    if e.mode == "bi" and e.loss == "margin_mse":
        errors.append(
            "embedding.loss margin_mse needs embedding.mode cross (a cross-encoder teacher); "
            "mode bi uses mse or cosine"
        )
    if e.mode == "cross" and e.loss in ("mse", "cosine"):
        errors.append(f"embedding.loss {e.loss} applies to embedding.mode bi; mode cross uses margin_mse")
    if e.mode == "cross" and e.projection:
        errors.append("embedding.projection applies to embedding.mode bi (the teacher's embedding width)")
    if e.retrieval_max_queries is not None and e.retrieval_max_queries < 1:
        errors.append(f"embedding.retrieval_max_queries must be at least 1, got {e.retrieval_max_queries}")
    if cfg.distill.matches or cfg.distill.stages:
        errors.append(
            "distill.matches and distill.stages do not apply to task embedding (the student learns "
            "pooled sentence embeddings or relevance margins): remove them"
        )
    return errors


def _check_report(r: ReportConfig) -> list[str]:
    errors = []
    for key in ("latency_repeats", "speed_texts", "bootstrap_resamples"):
        if getattr(r, key) < 1:
            errors.append(f"report.{key} must be at least 1, got {getattr(r, key)}")
    if r.warmup < 0:
        errors.append(f"report.warmup must be 0 or more, got {r.warmup}")
    if len(r.country_iso_code) != 3 or not r.country_iso_code.isalpha():
        errors.append(
            f"report.country_iso_code must be a 3-letter ISO code such as USA, FRA or DEU, "
            f"got '{r.country_iso_code}'"
        )
    return errors


def _check_data(d: DataConfig) -> list[str]:
    errors = []
    if not d.dataset and not d.train:
        errors.append(
            "data.train is required: a CSV/JSONL/Parquet file (or set data.dataset to a datasets name)"
        )
    for key in ("validation_size", "test_size"):
        v = getattr(d, key)
        if not 0.0 <= v < 1.0:
            errors.append(f"data.{key} must be between 0 and 1 (a fraction of the training rows), got {v}")
    carve = (0 if d.validation else d.validation_size) + (0 if d.test else d.test_size)
    if carve >= 1.0:
        errors.append(f"data.validation_size + data.test_size must be below 1, got {carve}")
    if d.max_length < 4:
        errors.append(f"data.max_length must be at least 4 tokens, got {d.max_length}")
    for key in ("max_train_examples", "max_eval_examples"):
        v = getattr(d, key)
        if v is not None and v < 1:
            errors.append(f"data.{key} must be at least 1, got {v}")
    if d.label_names is not None and len(set(d.label_names)) != len(d.label_names):
        errors.append(f"data.label_names has duplicates: {d.label_names}")
    return errors


def _check_lm(cfg: Config, verb: Verb | None) -> list[str]:
    """The ``lm`` section: ranges always; what needs a teacher only for task causal_lm."""
    lm = cfg.lm
    errors = [
        f"lm.{k} must be between 0 and 1, got {getattr(lm, k)}"
        for k in ("beta", "alpha", "on_policy")
        if not 0.0 <= getattr(lm, k) <= 1.0
    ]
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
    if cfg.task == "causal_lm":
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


def _check_training(t: TrainingConfig) -> list[str]:
    errors = []
    positive = {"epochs": t.epochs, "learning_rate": t.learning_rate}
    for key, v in positive.items():
        if not v > 0:
            errors.append(f"training.{key} must be greater than 0, got {v}")
    at_least_one = {
        "batch_size": t.batch_size,
        "eval_batch_size": t.eval_batch_size,
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "log_every": t.log_every,
        "max_steps": t.max_steps,
        "eval_every": t.eval_every,
        "early_stopping_patience": t.early_stopping_patience,
        "save_every": t.save_every,
        "save_total_limit": t.save_total_limit,
        "max_tokens": t.max_tokens,
    }
    for key, v in at_least_one.items():
        if v is not None and v < 1:
            errors.append(f"training.{key} must be at least 1, got {v}")
    if not 0.0 <= t.warmup_ratio < 1.0:
        errors.append(f"training.warmup_ratio must be between 0 and 1, got {t.warmup_ratio}")
    if t.weight_decay < 0:
        errors.append(f"training.weight_decay must be 0 or more, got {t.weight_decay}")
    if t.max_grad_norm is not None and t.max_grad_norm <= 0:
        errors.append(
            f"training.max_grad_norm must be greater than 0 (or null for no clipping), got {t.max_grad_norm}"
        )
    if not 0 <= t.num_workers <= 64:
        errors.append(f"training.num_workers must be between 0 and 64, got {t.num_workers}")
    if t.compile and t.max_tokens is not None:
        errors.append(
            "training.compile and training.max_tokens are both set: token-budget batches vary in size, "
            "so the student would compile again for each; keep one (compile pads to fixed lengths)"
        )
    if t.teacher_cache is not None and not t.teacher_cache.strip():
        errors.append(
            "training.teacher_cache must be auto, a folder, or null (no cache), got an empty string"
        )
    return errors


def _check_student(s: StudentConfig) -> list[str]:
    errors = []
    if s.init == "from_teacher":
        given = [k for k in ("layers", "num_layers", "keep_every") if getattr(s, k) is not None]
        if not given:
            errors.append(
                "student.layers, student.num_layers or student.keep_every is required when "
                "student.init is from_teacher"
            )
        if len(given) > 1:
            errors.append(f"student.{given[0]} and student.{given[1]} are both set: keep one")
        if s.layers is not None:
            if not s.layers:
                errors.append("student.layers must name at least one teacher layer")
            if any(i < 0 for i in s.layers):
                errors.append(f"student.layers must be 0-based layer indices (0 or more), got {s.layers}")
            if len(set(s.layers)) != len(s.layers):
                errors.append(f"student.layers has duplicates: {s.layers}")
    elif s.init == "pretrained":
        if not s.name_or_path:
            errors.append("student.name_or_path is required when student.init is pretrained")
    elif s.init == "config" and s.num_layers is None:
        errors.append("student.num_layers is required when student.init is config")
    for key in ("num_layers", "hidden_size", "num_attention_heads", "intermediate_size", "keep_every"):
        v = getattr(s, key)
        if v is not None and v < 1:
            errors.append(f"student.{key} must be at least 1, got {v}")
    if s.hidden_size and s.num_attention_heads and s.hidden_size % s.num_attention_heads:
        errors.append(
            f"student.hidden_size ({s.hidden_size}) must be divisible by student.num_attention_heads "
            f"({s.num_attention_heads})"
        )
    return errors


def _check_distill(cfg: Config) -> list[str]:
    from lmdistill.methods.presets import presets_for

    PRESETS = presets_for(cfg.task)  # noqa: N806 - the recipes known for this task
    d = cfg.distill
    errors = []
    if d.method is not None and d.method not in PRESETS:
        errors.append(
            f"distill.method '{d.method}' is not a known recipe{_suggest(d.method, PRESETS)} "
            f"(known: {', '.join(PRESETS)})"
        )
    if not d.temperature > 0:
        errors.append(f"distill.temperature must be greater than 0, got {d.temperature}")
    errors += _check_schedule(d.temperature_schedule, "distill.temperature_schedule", positive=True)
    if d.losses is not None:
        errors += _check_losses(d.losses, cfg.task, "distill.losses", need_one=not d.matches and not d.stages)
    for name, sched in d.loss_schedules.items():
        if d.losses is not None and name not in d.losses:
            errors.append(
                f"distill.loss_schedules.{name} names no loss in distill.losses ({', '.join(d.losses)})"
            )
        errors += _check_schedule(sched, f"distill.loss_schedules.{name}")
    errors += _check_matches(d.matches, "distill.matches")
    for i, st in enumerate(d.stages):
        key = f"distill.stages[{i}]"
        errors += _check_losses(st.losses, cfg.task, f"{key}.losses", need_one=not st.matches)
        errors += _check_matches(st.matches, f"{key}.matches")
        for k in ("temperature", "epochs", "learning_rate"):
            v = getattr(st, k)
            if v is not None and not v > 0:
                errors.append(f"{key}.{k} must be greater than 0, got {v}")
    return errors


def _check_losses(losses: dict[str, float], task: str, key: str, need_one: bool) -> list[str]:
    errors = []
    known = TASK_LOSSES.get(task, ())
    for name, w in losses.items():
        if name not in known:
            hint = _suggest(name, known) or (
                f" (for task {task} use: {', '.join(known)})"
                if known
                else f" (task {task} takes no distill.losses: remove it)"
            )
            errors.append(f"{key}.{name} is not a loss for task {task}{hint}")
        elif not w >= 0:
            errors.append(f"{key}.{name} must be 0 or more, got {w}")
    if need_one and sum(w for w in losses.values() if w > 0) <= 0:
        errors.append(
            f"{key} needs at least one loss with a weight above 0 (e.g. {{kd: 0.5, ce: 0.5}}), or add matches"
        )
    return errors


def _check_schedule(sched: ScheduleConfig | None, key: str, positive: bool = False) -> list[str]:
    if sched is None:
        return []
    if sched.kind != "constant" and sched.end is None:
        return [f"{key}.end is required for a {sched.kind} schedule (the value at the last step)"]
    if sched.end is not None and (sched.end < 0 or (positive and sched.end == 0)):
        return [f"{key}.end must be {'above' if positive else 'at least'} 0, got {sched.end}"]
    return []


def _check_matches(matches: list[MatchConfig], key: str) -> list[str]:
    errors = []
    for i, m in enumerate(matches):
        where = f"{key}[{i}]"
        allowed = FEATURE_LOSSES[m.feature]
        if m.loss is not None and m.loss not in allowed:
            errors.append(
                f"{where}.loss '{m.loss}' does not apply to feature {m.feature} "
                f"(use one of: {', '.join(allowed)})"
            )
        if not m.weight >= 0:
            errors.append(f"{where}.weight must be 0 or more, got {m.weight}")
        if (m.teacher_layer is None) != (m.student_layer is None):
            errors.append(
                f"{where}: give both teacher_layer and student_layer, or neither (then strategy pairs "
                "every student layer)"
            )
        if m.relation_heads is not None and m.relation_heads < 1:
            errors.append(f"{where}.relation_heads must be at least 1, got {m.relation_heads}")
        if m.relation_heads is not None and m.feature not in ("qq", "kk", "vv"):
            errors.append(f"{where}.relation_heads applies only to qq, kk and vv, not {m.feature}")
        errors += _check_schedule(m.schedule, f"{where}.schedule")
    return errors


def resolve_defaults(cfg: Config) -> None:
    """Fill defaults that depend on other keys, so the saved config states exactly what ran."""
    if cfg.distill.losses is None:
        cfg.distill.losses = dict(DEFAULT_LOSSES.get(cfg.task, {}))
    if cfg.training.metric_for_best is None:
        cfg.training.metric_for_best = DEFAULT_METRIC.get(cfg.task, "loss")


def infer_verb(cfg_raw: dict | Config) -> Verb:
    """`distill` when a teacher is named, `compress` when a model and a student are, else `finetune`."""
    teacher = cfg_raw.teacher.name_or_path if isinstance(cfg_raw, Config) else (cfg_raw.get("teacher") or {})
    if isinstance(teacher, dict):
        teacher = teacher.get("name_or_path")
    student = cfg_raw.get("student") if isinstance(cfg_raw, dict) else None
    if teacher:
        return "distill"
    return "compress" if student else "finetune"


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: Path, header: str = "") -> None:
    """Write the resolved config as YAML (loadable again with :func:`load_config`)."""
    text = yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True)
    comment = "".join(f"# {line}\n" for line in header.splitlines())
    path.write_text(comment + text, encoding="utf-8")
