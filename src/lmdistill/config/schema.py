"""The config schema: one dataclass per section, every key with its type, default and meaning.

Loading (YAML, overrides, strict type conversion) is :mod:`lmdistill.config.load`; the checks that hold for
every task are :mod:`lmdistill.config.checks`; each task checks its own keys (``lmdistill.tasks``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from lmdistill.config.assistant import AssistantConfig
from lmdistill.config.multi import EnsembleSection, TeacherSpec
from lmdistill.config.mutual import MutualConfig
from lmdistill.config.sweep import SweepConfig
from lmdistill.config.task_sections import EmbeddingConfig, QAConfig, TokensConfig

Verb = Literal["finetune", "distill", "compress"]


@dataclass
class UnlabeledConfig:
    """A transfer set (``data.unlabeled``): unlabelled in-domain text that the teacher scores once and the
    student learns from by KD alone (DistilBERT's and Tang et al.'s transfer sets). Texts equal to a validation
    or test text are dropped (and counted)."""

    source: str
    """A file (.txt: one text per line; .csv / .tsv / .jsonl / .parquet: its ``text_column``), a built-in corpus
    (movie-review-sentences, bbc-news-sentences, vader), or a `datasets` name (its train split)."""
    text_column: str = "text"
    options: dict[str, Any] = field(default_factory=dict)
    """Options of a built-in corpus (``vader``: ``{domains: [tweets, amazon, nyt]}``)."""
    max_examples: int | None = None
    """Keep at most this many texts (the first ones, after de-duplication)."""
    ratio: float | None = None
    """The share of unlabelled examples (transfer texts and augmented copies) in every training batch, in (0, 1];
    null: in proportion to the two pools, so every example is seen once per epoch."""


@dataclass
class AugmentConfig:
    """Augmented copies of the labelled training texts (``data.augment``), scored by the teacher and learned by KD
    alone: Tang et al. 2019 (masking, POS-guided replacement, n-gram sampling) or TinyBERT's word replacement
    (Jiao et al. 2020: nearest neighbours in the teacher's input embeddings, or a masked LM's predictions).
    Generated once (seeded by the run's seed), saved in OUTPUT_DIR/augmented, reused while unchanged."""

    method: str = "tang"
    """tang | mask | pos | ngram | embedding | mlm (see docs/methods.md)."""
    copies: int = 20
    """Copies per labelled text (Tang's n_iter, TinyBERT's N_a); copies equal to their source are dropped."""
    p_mask: float = 0.1
    p_pos: float = 0.1
    p_ng: float = 0.25
    ngram_max: int = 5
    p_replace: float = 0.4
    """TinyBERT's p_t: the probability to replace a word that has candidates."""
    top_k: int = 15
    """TinyBERT's K: candidates per word."""
    mlm: str | None = None
    """method mlm: a masked-LM folder or hub id whose predictions are the candidates."""
    max_examples: int | None = None
    """Keep at most this many augmented copies (the first ones)."""


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
    split_seed: int | None = None
    """The seed that carves validation/test out of train (default: the run's `seed`). Fix it to compare
    training seeds on the same test examples, with a teacher trained on the same training split."""
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
    unlabeled: UnlabeledConfig | None = None
    """A transfer set of unlabelled text learned by KD alone (classification, regression, embedding)."""
    augment: AugmentConfig | None = None
    """Augmented copies of the labelled training texts, learned by KD alone (classification, regression)."""


@dataclass
class ModelConfig:
    """A model given by local folder or hub id."""

    name_or_path: str | None = None
    tokenizer: str | None = None
    """Tokenizer folder or id when it differs from `name_or_path`."""
    revision: str | None = None
    trust_remote_code: bool = False


@dataclass
class LoraSection:
    """A LoRA student (Hu et al. 2022, "LoRA: Low-Rank Adaptation of Large Language Models"), through PEFT: the
    student's weights are frozen and low-rank adapters ``W + (alpha / r) B A`` on ``target_modules`` train."""

    r: int = 8
    """The rank of each adapter."""
    alpha: float = 16.0
    """The scale numerator: the update is multiplied by alpha / r."""
    dropout: float = 0.0
    """Dropout on the adapters' input."""
    target_modules: list[str] | None = None
    """Module names (or name suffixes) that get adapters, e.g. [q_proj, v_proj]; null: PEFT's default for the
    architecture."""


@dataclass
class VocabularyConfig:
    """Vocabulary trimming (``student.vocabulary``; the ``trim_vocabulary`` step of ``compress``): keep the tokens
    of the task's training texts (and transfer texts), the special tokens and, by default, every single-character
    piece; slice the embeddings and rewrite the fast tokenizer (:mod:`lmdistill.models.vocab`)."""

    min_count: int = 1
    """Keep a token seen at least this many times in the texts."""
    top_n: int | None = None
    """Cap the whole kept vocabulary (always-kept tokens included) at this many tokens, most frequent first."""
    keep_characters: bool = True
    """Keep every single-character piece, so an unseen word is spelled out instead of becoming [UNK]."""
    transfer_texts: bool = True
    """Count the transfer set's texts (data.unlabeled) too, when there is one."""


@dataclass
class WidthConfig:
    """Width pruning by importance before distillation (``student.width``; the ``prune_width`` step of
    ``compress``): every layer keeps its most important heads and FFN neurons (and hidden channels), measured on
    ``calibration_examples`` training examples (:mod:`lmdistill.models.prune`). Give sizes or
    ``target_parameters``."""

    heads: int | None = None
    """Attention heads per layer. BERT family: the head size is kept, so hidden_size = heads x head size."""
    intermediate_size: int | None = None
    """FFN neurons per layer."""
    hidden_size: int | None = None
    """Hidden width (BERT family: implied by heads, or implies them)."""
    target_parameters: int | None = None
    """Instead of sizes: the most heads, then the widest FFN, whose parameters fit this count."""
    importance: Literal["activation", "gradient"] = "activation"
    """How heads are ranked: activation magnitude (Minitron) or Michel et al. (2019) eq. 2 first-order scores."""
    calibration_examples: int = 256
    """Training examples the importance is measured on (the first ones)."""


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
    seed: int | None = None
    """config: the seed of the fresh student's weights (default: the run's seed; mutual sets one per student)."""
    lora: LoraSection | None = None
    """causal_lm: train LoRA adapters on the student instead of all its weights (saved as a PEFT adapter)."""
    vocabulary: VocabularyConfig | None = None
    """compress: trim the student's vocabulary to the task's texts before distillation (step trim_vocabulary)."""
    width: WidthConfig | None = None
    """compress: prune the student's width by importance before distillation (step prune_width)."""


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
    """auto: bf16 autocast on a GPU that supports it or a CPU that multiplies bf16 natively, otherwise fp32."""
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


@dataclass
class MatchConfig:
    """One piece of intermediate knowledge: a teacher feature matched to a student feature.

    Give ``teacher_layer`` and ``student_layer`` (0-based; negative counts from the end: -1 is the last),
    or leave them out and let ``strategy`` pair every student layer with a teacher layer.
    """

    feature: str
    """embeddings | hidden | cls | mean | attention | attention_scores | qq | kk | vv
    (:data:`lmdistill.knowledge.FEATURES`)."""
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
    divergence: Literal["forward_kl", "reverse_kl", "jsd", "skew_forward_kl", "skew_reverse_kl", "tvd"] = (
        "forward_kl"
    )
    """The output-level divergence of ``kd`` for every task: forward_kl = KL(teacher || student) (Hinton et al.);
    reverse_kl = KL(student || teacher) (MiniLLM); jsd (GKD, ``beta``); skew_forward_kl / skew_reverse_kl
    (DistiLLM, ``alpha``); tvd (total variation). See :mod:`lmdistill.losses.divergences`."""
    beta: float = 0.5
    """jsd: the teacher's weight in the mixture; 0 = forward_kl, 1 = reverse_kl (continuous at both ends)."""
    alpha: float = 0.1
    """skew_*: the skew (DistiLLM's default 0.1); 0 = the plain KL."""
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

    divergence: (
        Literal["forward_kl", "reverse_kl", "jsd", "skew_forward_kl", "skew_reverse_kl", "tvd"] | None
    ) = None
    """The same key as ``distill.divergence`` (its causal-LM name, kept): when given, it sets it; the resolved
    config shows both with the same value."""
    beta: float | None = None
    """The same key as ``distill.beta``."""
    alpha: float | None = None
    """The same key as ``distill.alpha``."""
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
    messages_column: str | None = None
    """Chat data: the column of conversations (lists of {role, content}), rendered with each tokenizer's chat
    template."""
    train_on: Literal["assistant", "all", "last"] = "assistant"
    """Chat data: which tokens carry the loss and KD: every assistant turn, every token, or the last
    assistant turn."""
    cross_tokenizer: Literal["uld", "aligned"] | None = None
    """Teacher and student with different tokenizers: uld (Boizard et al. 2024, sorted-probability L1 at
    index-paired positions) or aligned (character-offset spans: the exact divergence on one-token spans of a
    shared token, ULD on the rest); null: one tokenizer is required."""
    fused: bool = False
    """Compute the LM head with kd and lm chunk by chunk from the hidden states: the (B, T, V) logits are never
    made (values and gradients equal the unfused loss)."""


@dataclass
class ReportConfig:
    """How `compress` and `report` measure the models."""

    country_iso_code: str = "USA"
    """Country whose electricity mix converts energy to CO2 (codecarbon, offline)."""
    latency_repeats: int = 20
    """Timed calls per model and batch size."""
    latency_calls_per_turn: int = 1
    """Models are timed in turns, interleaved (A, B, C, A, B, C, ...). 1: a turn is one timed call, which
    follows another model's call (cold caches). n > 1: a turn is n consecutive calls of one model, the first
    untimed: a served model answering consecutive requests (docs/compression.md)."""
    warmup: int = 3
    speed_texts: int = 256
    """How many test texts are used for the speed, memory and energy measurements."""
    energy: bool = True
    bootstrap_resamples: int = 1000
    bf16: bool | None = None
    """Also evaluate and time the student with its weights in bf16 (one more point on the quality-vs-latency
    plot): true, false, or null (default) = where this CPU multiplies bf16 natively (AVX512-BF16, AMX, ARM
    BF16: :func:`lmdistill.models.precision.cpu_native_bf16`) or the CUDA GPU supports bf16."""


STEPS = ("trim_vocabulary", "prune_width", "distill", "quantize", "export")
"""The steps of ``compress.steps``, in the order they may run (trim and prune in either order, before distill)."""


@dataclass
class CompressConfig:
    """The chain ``compress`` runs (docs/compression.md). The student is built (layers kept), then each step
    in turn; the report gets one row per step."""

    steps: list[Literal["trim_vocabulary", "prune_width", "distill", "quantize", "export"]] | None = None
    """trim_vocabulary (student.vocabulary), prune_width (student.width), distill (required; also trains the
    no-KD baseline), quantize (dynamic int8: PyTorch, and ONNX Runtime with export), export (ONNX fp32 in
    OUTPUT_DIR/export; the teacher too, for a same-runtime comparison). Default: distill, preceded by
    trim_vocabulary / prune_width when student.vocabulary / student.width are given."""
    fuse: bool = False
    """export: ONNX Runtime's transformer fusion of BERT / RoBERTa graphs, the teacher's and the student's alike
    (``lmdistill export --fuse``; docs/compression.md)."""
    assistants: list[AssistantConfig] = field(default_factory=list)
    """Teacher assistants, teacher -> assistant 1 -> ... -> student (:mod:`lmdistill.config.assistant`)."""


@dataclass
class Config:
    """The whole run. `finetune` uses `model`; `distill` uses `teacher` and `student`."""

    task: str = "classification"
    """What the models do: classification, regression, causal_lm, mlm, general, embedding, token_classification,
    question_answering (``lmdistill.tasks``)."""
    seed: int = 42
    output_dir: str = "runs/lmdistill"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    teacher: ModelConfig = field(default_factory=ModelConfig)
    teachers: list[TeacherSpec] = field(default_factory=list)
    """A teacher ensemble (instead of ``teacher``), taught as ``ensemble`` says (:mod:`lmdistill.config.multi`)."""
    ensemble: EnsembleSection = field(default_factory=EnsembleSection)
    student: StudentConfig = field(default_factory=StudentConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    distill: DistillSection = field(default_factory=DistillSection)
    report: ReportConfig = field(default_factory=ReportConfig)
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    lm: CausalLMConfig = field(default_factory=CausalLMConfig)
    tokens: TokensConfig = field(default_factory=TokensConfig)
    qa: QAConfig = field(default_factory=QAConfig)
    compress: CompressConfig = field(default_factory=CompressConfig)
    sweep: SweepConfig | None = None
    """A study of variants x seeds (``lmdistill sweep``; other verbs ignore it): :mod:`lmdistill.config.sweep`."""
    mutual: MutualConfig | None = None
    """Deep mutual learning: several students trained together (:mod:`lmdistill.config.mutual`)."""
