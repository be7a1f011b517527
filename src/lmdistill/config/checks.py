"""Checks that hold for every task: ranges and consistency of the data, training, student, distill and report
sections. Each returns a list of one-line problems (empty when fine) naming the key as typed; all are
reported at once. Task-specific keys are checked by each task (``lmdistill.tasks``).
"""

from __future__ import annotations

from lmdistill.config.schema import (
    STEPS,
    Config,
    DataConfig,
    ReportConfig,
    ScheduleConfig,
    StudentConfig,
    TrainingConfig,
    Verb,
)


def check_common(cfg: Config) -> list[str]:
    """Seed, data and training."""
    errors: list[str] = []
    if not 0 <= cfg.seed < 2**32:
        errors.append(f"seed must be between 0 and 4294967295, got {cfg.seed}")
    return errors + check_data(cfg.data) + check_training(cfg.training)


def check_label_columns(d: DataConfig) -> list[str]:
    """For labelled data: the text, text-pair and label columns are three different columns."""
    errors = []
    if d.text_column == d.label_column:
        errors.append(
            f"data.text_column and data.label_column are both '{d.text_column}': the label would be the text; "
            "name the label column in data.label_column"
        )
    if d.text_pair_column is not None and d.text_pair_column in (d.text_column, d.label_column):
        errors.append(f"data.text_pair_column '{d.text_pair_column}' is also the text or the label column")
    return errors


def check_verb(cfg: Config, verb: Verb | None) -> list[str]:
    """What each verb needs: a model to fine-tune, a teacher to distill from."""
    errors = []
    if verb == "finetune" and not cfg.model.name_or_path:
        errors.append("model.name_or_path is required for finetune: the pretrained model to fine-tune")
    if verb == "distill" and not cfg.teacher.name_or_path and not cfg.teachers:
        errors.append("teacher.name_or_path is required for distill: a fine-tuned teacher folder or hub id")
    if verb == "compress" and not cfg.teacher.name_or_path and not cfg.model.name_or_path:
        errors.append(
            "compress needs model.name_or_path (the model to fine-tune as teacher) or "
            "teacher.name_or_path (a teacher already fine-tuned for the task)"
        )
    return errors


def check_distill(cfg: Config) -> list[str]:
    """Temperatures, schedules and stage numbers (the loss names are the task's: lmdistill.tasks)."""
    d = cfg.distill
    errors = []
    errors += check_temperature(d.temperature, "distill.temperature")
    errors += check_schedule(d.temperature_schedule, "distill.temperature_schedule", positive=True)
    if d.temperature_schedule is not None and d.temperature_schedule.end is not None:
        errors += check_temperature(d.temperature_schedule.end, "distill.temperature_schedule.end")
    for name, w in (d.losses or {}).items():
        if w > MAX_WEIGHT:
            errors.append(f"distill.losses.{name} must be at most {MAX_WEIGHT:g}, got {w:g}")
    for key in ("beta", "alpha"):
        if not 0.0 <= getattr(d, key) <= 1.0:
            errors.append(f"distill.{key} must be between 0 and 1, got {getattr(d, key)}")
    for name, sched in d.loss_schedules.items():
        if d.losses is not None and name not in d.losses:
            errors.append(
                f"distill.loss_schedules.{name} names no loss in distill.losses ({', '.join(d.losses)})"
            )
        errors += check_schedule(sched, f"distill.loss_schedules.{name}")
    for i, st in enumerate(d.stages):
        for k in ("temperature", "epochs", "learning_rate"):
            v = getattr(st, k)
            if v is not None and not v > 0:
                errors.append(f"distill.stages[{i}].{k} must be greater than 0, got {v}")
        if st.temperature is not None and st.temperature > 0:
            errors += check_temperature(st.temperature, f"distill.stages[{i}].temperature")
    for i, m in enumerate(d.matches):
        if m.weight > MAX_WEIGHT:
            errors.append(f"distill.matches[{i}].weight must be at most {MAX_WEIGHT:g}, got {m.weight:g}")
    return errors


MAX_TEMPERATURE = 100.0
"""Above it every softened distribution is uniform to float precision: the soft-target loss carries nothing."""
MAX_WEIGHT = 1e6


def check_temperature(t: float, key: str) -> list[str]:
    if not t > 0:
        return [f"{key} must be greater than 0, got {t}"]
    if t > MAX_TEMPERATURE:
        return [
            f"{key} must be at most {MAX_TEMPERATURE:g}, got {t:g}: at such a temperature every distribution is "
            "uniform and the soft targets carry nothing (papers use 1 to 20)"
        ]
    return []


def check_report(r: ReportConfig) -> list[str]:
    errors = []
    for key in ("latency_repeats", "latency_calls_per_turn", "speed_texts", "bootstrap_resamples"):
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


def check_data(d: DataConfig) -> list[str]:
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
    if d.block_size is not None and d.block_size < 8:
        errors.append(f"data.block_size must be at least 8 tokens, got {d.block_size}")
    if not 0.0 < d.mlm_probability < 1.0:
        errors.append(f"data.mlm_probability must be between 0 and 1 (exclusive), got {d.mlm_probability}")
    u, a = d.unlabeled, d.augment
    if u is not None:
        if u.ratio is not None and not 0.0 < u.ratio <= 1.0:
            errors.append(
                f"data.unlabeled.ratio must be in (0, 1] (the unlabelled share of a batch), got {u.ratio}"
            )
        if u.max_examples is not None and u.max_examples < 1:
            errors.append(f"data.unlabeled.max_examples must be at least 1, got {u.max_examples}")
        if not u.source.strip():
            errors.append("data.unlabeled.source is empty: give a file, a built-in corpus or a datasets name")
    if a is not None and a.max_examples is not None and a.max_examples < 1:
        errors.append(f"data.augment.max_examples must be at least 1, got {a.max_examples}")
    if d.label_names is not None and len(set(d.label_names)) != len(d.label_names):
        errors.append(f"data.label_names has duplicates: {d.label_names}")
    return errors


def check_training(t: TrainingConfig) -> list[str]:
    errors = []
    positive = {"epochs": t.epochs, "learning_rate": t.learning_rate}
    for key, v in positive.items():
        if not v > 0:
            errors.append(f"training.{key} must be greater than 0, got {v}")
    if t.learning_rate > 1.0:
        errors.append(
            f"training.learning_rate must be at most 1 (typical: 1e-5 to 1e-3), got {t.learning_rate:g}"
        )
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


def check_student(s: StudentConfig) -> list[str]:
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
    if s.seed is not None and not 0 <= s.seed < 2**32:
        errors.append(f"student.seed must be between 0 and 4294967295, got {s.seed}")
    if s.hidden_size and s.num_attention_heads and s.hidden_size % s.num_attention_heads:
        errors.append(
            f"student.hidden_size ({s.hidden_size}) must be divisible by student.num_attention_heads "
            f"({s.num_attention_heads})"
        )
    return errors


def check_schedule(sched: ScheduleConfig | None, key: str, positive: bool = False) -> list[str]:
    if sched is None:
        return []
    if sched.kind != "constant" and sched.end is None:
        return [f"{key}.end is required for a {sched.kind} schedule (the value at the last step)"]
    if sched.end is not None and (sched.end < 0 or (positive and sched.end == 0)):
        return [f"{key}.end must be {'above' if positive else 'at least'} 0, got {sched.end}"]
    return []


# --------------------------------------------------------------------------------------------- compress.steps

CHAIN_TASKS = ("classification", "regression")
"""Tasks whose compress runs the steps besides distill (their students are sequence classifiers)."""


def compress_steps(cfg: Config) -> list[str]:
    """``compress.steps`` as given, else distill preceded by trim_vocabulary / prune_width when
    ``student.vocabulary`` / ``student.width`` are set."""
    if cfg.compress.steps is not None:
        return list(cfg.compress.steps)
    before = [
        step
        for step, given in (("trim_vocabulary", cfg.student.vocabulary), ("prune_width", cfg.student.width))
        if given is not None
    ]
    return [*before, "distill"]


def check_compress(cfg: Config, verb: Verb | None) -> list[str]:
    """The steps: known, once each, distill among them, trim/prune before it, quantize/export after it; their
    settings given where needed and in range. student.vocabulary / student.width belong to compress."""
    s = cfg.student
    if verb is None:
        return []  # a saved config read back (report, evaluate): checked when it ran
    if verb != "compress":
        return [
            f"student.{key} is applied by compress (compress.steps: {step}), not by {verb}; run "
            "lmdistill compress, or distill the student that compress saved in OUTPUT_DIR/steps"
            for key, step in (("vocabulary", "trim_vocabulary"), ("width", "prune_width"))
            if getattr(s, key) is not None
        ]
    steps = compress_steps(cfg)
    errors = []
    repeated = sorted({x for x in steps if steps.count(x) > 1})
    if repeated:
        errors.append(f"compress.steps names {', '.join(repeated)} more than once; give each step once")
    if "distill" not in steps:
        errors.append(f"compress.steps must include distill (got {steps}); the steps are {', '.join(STEPS)}")
    else:
        at = steps.index("distill")
        late = [x for x in steps[at:] if x in ("trim_vocabulary", "prune_width")]
        early = [x for x in steps[:at] if x in ("quantize", "export")]
        if late:
            errors.append(
                f"compress.steps: {late[0]} must come before distill (it shapes the student distill trains)"
            )
        if early:
            errors.append(
                f"compress.steps: {early[0]} must come after distill (it serves the distilled student)"
            )
    if cfg.task not in CHAIN_TASKS and any(x != "distill" for x in steps):
        errors.append(
            f"compress.steps: steps besides distill support tasks {', '.join(CHAIN_TASKS)}, not {cfg.task}"
        )
    for key, step in (("vocabulary", "trim_vocabulary"), ("width", "prune_width")):
        if getattr(s, key) is not None and step not in steps:
            errors.append(
                f"student.{key} is set but compress.steps has no {step}: add it, or remove student.{key}"
            )
    if "prune_width" in steps and s.width is None:
        errors.append(
            "compress.steps has prune_width but student.width is not set: give student.width.heads / "
            "intermediate_size / hidden_size, or student.width.target_parameters"
        )
    return errors + _check_vocabulary(s) + _check_width(s)


def _check_vocabulary(s: StudentConfig) -> list[str]:
    v = s.vocabulary
    if v is None:
        return []
    errors = []
    if v.min_count < 1:
        errors.append(f"student.vocabulary.min_count must be at least 1, got {v.min_count}")
    if v.top_n is not None and v.top_n < 1:
        errors.append(f"student.vocabulary.top_n must be at least 1, got {v.top_n}")
    return errors


def _check_width(s: StudentConfig) -> list[str]:
    w = s.width
    if w is None:
        return []
    errors = [
        f"student.width.{key} must be at least 1, got {getattr(w, key)}"
        for key in ("heads", "intermediate_size", "hidden_size", "target_parameters", "calibration_examples")
        if getattr(w, key) is not None and getattr(w, key) < 1
    ]
    sizes = [k for k in ("heads", "intermediate_size", "hidden_size") if getattr(w, k) is not None]
    if w.target_parameters is not None and sizes:
        errors.append(f"student.width.target_parameters and student.width.{sizes[0]} are both set: keep one")
    if w.target_parameters is None and not sizes:
        errors.append(
            "student.width needs heads, intermediate_size or hidden_size (per layer), or target_parameters"
        )
    return errors
