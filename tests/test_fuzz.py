"""Fuzzing: hundreds of malformed configs, data files and overrides, generated from a fixed seed.

Every case must end in a clear error (exit code 2, only one-line ``error: ...`` messages on stderr, or a
one-line :class:`DataError`) or, where the input is in fact usable, in a normal result; never in a
traceback, Python repr noise or a hang (each case runs under a ``SIGALRM`` deadline).

The corpus has three groups:

* configs through ``lmdistill validate`` (wrong types for every key, found by walking the config
  dataclasses, unknown and misspelt keys at every level, missing keys per verb, bad numbers, non-mapping
  roots, truncated YAML, garbage bytes, wrong encodings, duplicate keys, deep nesting, code-running YAML
  tags), plus values that only fail at run time through ``lmdistill finetune``;
* data files through :func:`load_task_data` (fast) and a smaller set through the whole ``finetune`` CLI;
* ``key=value`` overrides.

A case that shows a bug in the source is marked ``xfail(strict=True)`` with ``BUG:`` in its reason (see
``BUGS`` and ``BUG_RULES``): the suite stays green, the bug stays visible, and the mark must go when the bug
is fixed.
"""

from __future__ import annotations

import copy
import dataclasses
import gzip
import io
import json
import math
import random
import re
import signal
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union

import pandas as pd
import pytest
import yaml

from lmdistill import config as config_module
from lmdistill.cli import main
from lmdistill.config import DataConfig
from lmdistill.data.tables import load_task_data
from lmdistill.errors import DataError

SEED = 20240611
CASE_SECONDS = 20
"""A case that runs longer than this is a hang: SIGALRM turns it into a failure."""
MAX_LINE = 2000
"""An error line longer than this is not a clear message (e.g. a whole value echoed back)."""
NOISE = ("Traceback", '  File "', "<class ", "<function ", " object at 0x", "<module ")
SENTINEL = "PWNED"
"""A file that the code-running YAML tags would create; it must never appear."""

OK, ERROR, EITHER = "ok", "error", "either"


def _rng(*parts: object) -> random.Random:
    """A generator per purpose (and per key), so adding a config key never shifts the other cases."""
    return random.Random("/".join(map(str, (SEED, *parts))))


def _slug(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return (re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_") or "empty")[:28]


def _dump(raw: Any) -> bytes:
    return yaml.safe_dump(raw, sort_keys=False, allow_unicode=True).encode("utf-8")


# --------------------------------------------------------------------------- known bugs
# case id -> what goes wrong (BUG_RULES below covers the generated families). Each listed case is
# xfail(strict=True): fixing the bug makes it XPASS (a failure), which is the cue to delete its line here.

_NAN_KEPT = "BUG: a NaN value passes the range check (`x < 0` is False for NaN); it must be rejected"
_INF_KEPT = "BUG: an infinite value is accepted; it must be rejected as not a finite number"
_TRACEBACK_YAML = (
    "BUG: a YAML scalar with an explicit tag that cannot be constructed raises {exc} from "
    "yaml.safe_load, which read_yaml does not catch (it catches only yaml.YAMLError): traceback"
)
_TWO_LINES_READER = (
    "BUG: yaml ReaderError (control/NUL character) prints as two lines; the second, "
    "'  in \"<unicode string>\", position N', has no 'error: ' prefix"
)
_NEWLINE_KEY = "BUG: a key containing a newline is echoed raw, so the error spans two lines (use repr/escape)"
_RECURSION = "BUG: deeply nested YAML raises RecursionError out of yaml.safe_load: traceback"
_MATCH_NOT_MAPPING = (
    "BUG: a list item of a dataclass with a required field (MatchConfig.feature) that is not a "
    "mapping makes _build call cls() without it: TypeError traceback"
)
_CLASS_REPR = (
    "BUG: _type_name() falls back to str(tp) for dataclasses, so the message reads "
    "\"must be a list of <class 'lmdistill.config.MatchConfig'>\"; say 'a list of mappings'"
)
_DUPLICATE = (
    "BUG: PyYAML keeps the last of two equal keys and drops the first silently, so a whole section "
    "the user typed is never checked; duplicate keys must be an error"
)
_SEED_RANGE = (
    "BUG: seed outside 0..2**32-1 passes validation and then fails in numpy/accelerate "
    "(ValueError 'expected non-negative integer' / 'Seed must be between 0 and 2**32 - 1'): traceback"
)
_HUGE_INT = (
    "BUG: an integer above 2**63 passes validation and then overflows in torch/python: {exc} traceback"
)
_LIST_LABEL = (
    "BUG: list/dict/array labels are turned into class names with str() (e.g. '[1, 2]') instead of "
    "a DataError naming the row"
)
_LIST_TEXT = (
    "BUG: list/dict/bytes texts are turned into text with str() (e.g. \"['a', 'b']\") instead of a "
    "DataError naming the row"
)
_NAN_LABEL = (
    "BUG: a literal NaN label in a CSV (keep_default_na=False) becomes a class named 'NaN'; in the "
    "label column NaN/nan/NA must count as a missing label"
)

BUGS: dict[str, str] = {}  # every bug this corpus found is fixed; list new ones here while they are open
BUG_RULES: list[tuple[str, str]] = []


def _bug(case_id: str) -> str | None:
    if case_id in BUGS:
        return BUGS[case_id]
    return next((reason for rule, reason in BUG_RULES if re.fullmatch(rule, case_id)), None)


def _params(cases: list) -> list:
    out = []
    for case in cases:
        reason = _bug(case.id)
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        out.append(pytest.param(case, id=case.id, marks=marks))
    return out


@pytest.fixture(autouse=True)
def _deadline():
    """Fail a case that hangs instead of blocking the suite."""

    def expire(signum, frame):
        raise TimeoutError(f"the case ran longer than {CASE_SECONDS} s (a hang?)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(CASE_SECONDS)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def _check_lines(lines: list[str]) -> None:
    for line in lines:
        assert line.startswith("error: ") and line[len("error: ") :].strip(), (
            f"not a clean error line: {line!r}"
        )
        assert len(line) <= MAX_LINE, f"error line of {len(line)} characters: {line[:200]!r}..."
        assert not any(n in line for n in NOISE), f"Python noise in the message: {line!r}"


def _check_exit(
    code: int, out: str, err: str, expect: str, needle: str = "", stderr_only_errors: bool = True
) -> None:
    """The CLI contract: 0 and no error, or 2 and one-line `error: ...` messages, never a traceback."""
    assert "Traceback" not in err, err[-2000:]
    assert code in (0, 2), f"exit code {code}; stderr: {err[-2000:]}"
    if expect != EITHER:
        assert code == (0 if expect == OK else 2), (
            f"expected {expect}, got exit {code}; stderr: {err[-2000:]}"
        )
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    if code == 0:
        assert not errors, err
        return
    assert errors, f"exit 2 without an 'error: ' line; stderr: {err[-2000:]}"
    _check_lines(errors if not stderr_only_errors else err.splitlines())
    if needle:
        assert needle in err, f"{needle!r} not named in: {err}"


# =========================================================================== 1. configs

BASE_DISTILL: dict[str, Any] = {
    "task": "classification",
    "seed": 42,
    "output_dir": "runs/fuzz",
    "data": {"train": "train.csv", "max_length": 32},
    "model": {"name_or_path": "bert-tiny"},
    "teacher": {"name_or_path": "teacher-tiny"},
    "student": {"num_layers": 2},
    "training": {"max_steps": 1, "batch_size": 8},
}
"""Valid for `validate` (distill is inferred from the teacher, so every section is checked)."""
BASE_FINETUNE: dict[str, Any] = {k: v for k, v in BASE_DISTILL.items() if k not in ("teacher", "student")}

# a valid element for list/optional sections, so the fields inside them can be fuzzed too
ELEMENT_BASE: dict[str, dict] = {
    "MatchConfig": {"feature": "hidden"},
    "StageConfig": {"losses": {"kd": 1.0}},
    "ScheduleConfig": {"kind": "linear", "end": 1.0},
    "UnlabeledConfig": {"source": "movie-review-sentences"},
}

WRONG: dict[str, list] = {
    "int": ["three", 1.5, [1], {"a": 1}, True],
    "float": ["fast", [0.1], {"a": 1}, True],
    "str": [["a", "b"], {"a": 1}, True],
    "bool": ["maybe", 1, [True], {"a": 1}],
    "choice": ["nonsense", 3, ["x"], True],
    "list_int": ["0,1", {"a": 1}, ["a"], [True], [1.5]],
    "list_str": ["a", {"a": 1}, [["a"]], [{"a": 1}]],
    "list_section": ["x", {"a": 1}, [3], [["x"]]],
    "dict_float": ["kd", ["kd"], {"kd": "abc"}, {"kd": [1]}],
    "dict_any": ["x", [1], 3],
    "dict_section": ["x", [1], {"kd": 3}],
    "section": [3, [1], "x", True],
}


@dataclass(frozen=True)
class ConfigCase:
    id: str
    text: bytes
    expect: str = ERROR
    needle: str = ""
    overrides: tuple[str, ...] = ()
    for_verb: str | None = None


def _unwrap(tp: Any) -> tuple[Any, bool]:
    """(inner type, optional) for `X | None`."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(inner) == 1:
            return inner[0], len(inner) < len(typing.get_args(tp))
    return tp, False


def _category(tp: Any) -> str | None:
    tp, _ = _unwrap(tp)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return "section"
    if origin is Literal:
        return "choice"
    if origin is list:
        return (
            "list_section"
            if dataclasses.is_dataclass(args[0])
            else {int: "list_int", str: "list_str"}.get(args[0])
        )
    if origin is dict:
        value = _unwrap(args[1])[0]
        if dataclasses.is_dataclass(value):
            return "dict_section"
        return {float: "dict_float", Any: "dict_any"}.get(value)
    return {int: "int", float: "float", str: "str", bool: "bool"}.get(tp)


def _path_text(path: tuple) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else p)
    return out


def _with(raw: dict, path: tuple, value: Any) -> dict:
    raw = copy.deepcopy(raw)
    node = raw
    for p in path[:-1]:
        if isinstance(p, int):
            node = node[p]
        else:
            node = node.setdefault(p, {})
    node[path[-1]] = value
    return raw


def _without(raw: dict, path: tuple) -> dict:
    raw = copy.deepcopy(raw)
    node = raw
    for p in path[:-1]:
        node = node[p]
    del node[path[-1]]
    return raw


def _fields(cls: type, base: dict, path: tuple = ()):
    """Every (path, type, base config) of ``cls``, recursing into sections and into one list/optional element."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = (*path, f.name)
        tp = hints[f.name]
        yield key, tp, base
        inner, _ = _unwrap(tp)
        if dataclasses.is_dataclass(inner):
            element = ELEMENT_BASE.get(inner.__name__, {})
            sub = base if not element else _with(base, key, element)
            yield from _fields(inner, sub, key)
        elif typing.get_origin(inner) is list and dataclasses.is_dataclass(typing.get_args(inner)[0]):
            element_cls = typing.get_args(inner)[0]
            if element_cls.__name__ in ELEMENT_BASE:
                sub = _with(base, key, [ELEMENT_BASE[element_cls.__name__]])
                yield from _fields(element_cls, sub, (*key, 0))


def _wrong_type_cases() -> list[ConfigCase]:
    cases = []
    for path, tp, base in _fields(config_module.Config, BASE_DISTILL):
        name = _path_text(path)
        category = _category(tp)
        if category is None:
            continue
        for value in _rng("wrong", name).sample(WRONG[category], 2):
            case_id = f"type-{name}-{type(value).__name__}_{_slug(value)}"
            cases.append(ConfigCase(case_id, _dump(_with(base, path, value)), ERROR, name))
        inner, optional = _unwrap(tp)
        if not optional and category in ("int", "float", "str", "bool", "choice"):
            cases.append(ConfigCase(f"null-{name}", _dump(_with(base, path, None)), ERROR, name))
    return cases


def _typo(name: str, rng: random.Random, taken: set[str]) -> str:
    for _ in range(50):
        i = rng.randrange(len(name))
        op = rng.choice(["swap", "drop", "double", "dash", "upper", "plural", "space"])
        if op == "swap" and len(name) > 1:
            i = min(i, len(name) - 2)
            new = name[:i] + name[i + 1] + name[i] + name[i + 2 :]
        elif op == "drop":
            new = name[:i] + name[i + 1 :]
        elif op == "double":
            new = name[:i] + name[i] + name[i:]
        elif op == "dash":
            new = name.replace("_", "-") if "_" in name else name + "-"
        elif op == "upper":
            new = name[:1].upper() + name[1:]
        elif op == "plural":
            new = name + "s"
        else:
            new = name.replace("_", " ") if "_" in name else " " + name
        if new and new not in taken:
            return new
    return name + "_x"


RANDOM_NAMES = [
    "zzyzx",
    "colour",
    "lr",
    "épochs",
    "训练",
    "__class__",
    "null_",
    "0",
    "-",
    "a.b",
    "$ref",
    "🙂",
]


def _unknown_key_cases() -> list[ConfigCase]:
    sections = [((), config_module.Config, BASE_DISTILL)]
    for path, tp, base in _fields(config_module.Config, BASE_DISTILL):
        inner, _ = _unwrap(tp)
        if dataclasses.is_dataclass(inner) and (len(path) == 1 or inner.__name__ in ELEMENT_BASE):
            sections.append(
                (
                    path,
                    inner,
                    _with(base, path, ELEMENT_BASE.get(inner.__name__, {}))
                    if inner.__name__ in ELEMENT_BASE
                    else base,
                )
            )
        elif typing.get_origin(inner) is list and dataclasses.is_dataclass(typing.get_args(inner)[0]):
            element = typing.get_args(inner)[0]
            if element.__name__ in ELEMENT_BASE:
                sections.append(((*path, 0), element, _with(base, path, [ELEMENT_BASE[element.__name__]])))
    cases = []
    for path, cls, base in sections:
        names = {f.name for f in dataclasses.fields(cls)}
        rng = _rng("unknown", _path_text(path) or "top")
        for real in rng.sample(sorted(names), min(2, len(names))):
            typo = _typo(real, rng, names)
            full = _path_text((*path, typo))
            cases.append(
                ConfigCase(
                    f"unknown-{full}", _dump(_with(base, (*path, typo), 1)), ERROR, f"unknown key '{full}'"
                )
            )
        odd = rng.choice(RANDOM_NAMES)
        full = _path_text((*path, odd))
        cases.append(
            ConfigCase(
                f"unknown-{full}-random",
                _dump(_with(base, (*path, odd), {"x": [1]})),
                ERROR,
                f"unknown key '{full}'",
            )
        )
    return cases


def _missing_cases() -> list[ConfigCase]:
    d, f = BASE_DISTILL, BASE_FINETUNE
    return [
        ConfigCase("valid-base-distill", _dump(d), OK),
        ConfigCase("valid-base-finetune", _dump(f), OK),
        ConfigCase("valid-base-finetune-for-finetune", _dump(f), OK, for_verb="finetune"),
        ConfigCase("missing-model-finetune", _dump(_without(f, ("model",))), ERROR, "model.name_or_path"),
        ConfigCase(
            "missing-model-name-empty-string",
            _dump(_with(f, ("model", "name_or_path"), "")),
            ERROR,
            "model.name_or_path",
        ),
        ConfigCase(
            "missing-teacher-for-distill", _dump(f), ERROR, "teacher.name_or_path", for_verb="distill"
        ),
        ConfigCase(
            "missing-teacher-null-for-distill",
            _dump(_with(f, ("teacher",), {"name_or_path": None})),
            ERROR,
            "teacher.name_or_path",
            for_verb="distill",
        ),
        ConfigCase(
            "missing-model-for-finetune",
            _dump(_without(d, ("model",))),
            ERROR,
            "model.name_or_path",
            for_verb="finetune",
        ),
        ConfigCase("missing-student-section", _dump(_without(d, ("student",))), ERROR, "student."),
        ConfigCase(
            "missing-student-pretrained-path",
            _dump(_with(d, ("student",), {"init": "pretrained"})),
            ERROR,
            "student.name_or_path",
        ),
        ConfigCase(
            "missing-student-config-depth",
            _dump(_with(d, ("student",), {"init": "config"})),
            ERROR,
            "student.num_layers",
        ),
        ConfigCase("missing-data-section", _dump(_without(d, ("data",))), ERROR, "data.train"),
        ConfigCase("missing-data-empty-mapping", _dump(_with(d, ("data",), {})), ERROR, "data.train"),
        ConfigCase("missing-data-train-null", _dump(_with(d, ("data", "train"), None)), ERROR, "data.train"),
        ConfigCase("missing-data-section-null", _dump(_with(d, ("data",), None)), ERROR, "data.train"),
        ConfigCase(
            "missing-match-feature",
            _dump(_with(d, ("distill", "matches"), [{}])),
            ERROR,
            "distill.matches[0].feature",
        ),
        ConfigCase(
            "missing-schedule-end",
            _dump(_with(d, ("distill", "temperature_schedule"), {"kind": "linear"})),
            ERROR,
            "distill.temperature_schedule",
        ),
        ConfigCase(
            "missing-everything-for-distill",
            _dump({"task": "classification"}),
            ERROR,
            "data.train",
            for_verb="distill",
        ),
    ]


NUMBERS: list[tuple[str, Any, str]] = [
    ("training.learning_rate", math.nan, ERROR),
    ("training.learning_rate", math.inf, ERROR),
    ("training.learning_rate", -1e-5, ERROR),
    ("training.learning_rate", 0, ERROR),
    ("training.learning_rate", "1e999", ERROR),
    ("training.learning_rate", "3e-5", OK),
    ("training.learning_rate", 1e-300, OK),
    ("training.epochs", math.nan, ERROR),
    ("training.epochs", math.inf, ERROR),
    ("training.epochs", 0, ERROR),
    ("training.epochs", -3, ERROR),
    ("training.epochs", 0.5, OK),
    ("training.weight_decay", math.nan, ERROR),
    ("training.weight_decay", math.inf, ERROR),
    ("training.weight_decay", -0.1, ERROR),
    ("training.weight_decay", 0, OK),
    ("training.warmup_ratio", math.nan, ERROR),
    ("training.warmup_ratio", 1, ERROR),
    ("training.warmup_ratio", -0.1, ERROR),
    ("training.warmup_ratio", 0, OK),
    ("training.max_grad_norm", math.nan, ERROR),
    ("training.max_grad_norm", 0, ERROR),
    ("training.max_grad_norm", -1, ERROR),
    ("training.max_grad_norm", None, OK),
    ("training.batch_size", 0, ERROR),
    ("training.batch_size", -8, ERROR),
    ("training.eval_batch_size", 0, ERROR),
    ("training.gradient_accumulation_steps", 0, ERROR),
    ("training.log_every", 0, ERROR),
    ("training.log_every", 10**30, EITHER),
    ("training.max_steps", 0, ERROR),
    ("training.max_steps", -5, ERROR),
    ("training.eval_every", 0, ERROR),
    ("training.eval_every", 10**30, EITHER),
    ("training.early_stopping_patience", 0, ERROR),
    ("training.num_workers", -1, ERROR),
    ("data.validation_size", math.nan, ERROR),
    ("data.validation_size", 1, ERROR),
    ("data.validation_size", -0.1, ERROR),
    ("data.validation_size", math.inf, ERROR),
    ("data.validation_size", 0, OK),
    ("data.test_size", 1.5, ERROR),
    ("data.test_size", 0.95, ERROR),
    ("data.max_length", 0, ERROR),
    ("data.max_length", 3, ERROR),
    ("data.max_length", -1, ERROR),
    ("data.max_length", 4, OK),
    ("data.max_train_examples", 0, ERROR),
    ("data.max_train_examples", -1, ERROR),
    ("data.max_eval_examples", 0, ERROR),
    ("data.max_train_examples", 10**30, EITHER),
    ("seed", 0, OK),
    ("seed", 2**32 - 1, OK),
    ("student.num_layers", 0, ERROR),
    ("student.num_layers", -1, ERROR),
    ("student.hidden_size", 0, ERROR),
    ("student.intermediate_size", -4, ERROR),
    ("student.layers", [-1], ERROR),
    ("student.layers", [], ERROR),
    ("student.layers", [0, 0], ERROR),
    ("distill.temperature", math.nan, ERROR),
    ("distill.temperature", math.inf, ERROR),
    ("distill.temperature", 0, ERROR),
    ("distill.temperature", -2, ERROR),
    ("distill.losses", {"kd": math.nan}, ERROR),
    ("distill.losses", {"kd": math.inf}, ERROR),
    ("distill.losses", {"kd": -1}, ERROR),
    ("distill.losses", {"kd": 0, "ce": 0}, ERROR),
    ("distill.losses", {}, ERROR),
    ("distill.temperature_schedule", {"kind": "linear", "end": math.nan}, ERROR),
    ("distill.temperature_schedule", {"kind": "linear", "end": -1}, ERROR),
]


def _number_cases() -> list[ConfigCase]:
    cases = []
    for key, value, expect in NUMBERS:
        path = tuple(key.split("."))
        base = BASE_DISTILL
        if key == "student.layers":
            base = _with(base, ("student",), {})
        if key == "data.test_size":
            base = _with(base, ("data", "validation_size"), 0.1)
        label = _slug(value if not isinstance(value, float) or math.isfinite(value) else str(value))
        needle = key if expect == ERROR else ""
        cases.append(ConfigCase(f"number-{key}-{label}", _dump(_with(base, path, value)), expect, needle))
    # a value no config can use, in both spellings YAML knows
    # a NaN is refused wherever it stands, also in a section this verb does not use
    cases.append(
        ConfigCase(
            "number-yaml-dot-nan-literal",
            _dump(BASE_FINETUNE) + b"distill: {temperature: .NaN}\n",
            ERROR,
            "distill.temperature",
        )
    )
    cases.append(
        ConfigCase(
            "number-yaml-dot-nan-lr",
            _dump(_without(BASE_FINETUNE, ("training",))) + b"training: {learning_rate: .nan}\n",
            ERROR,
            "training.learning_rate",
        )
    )
    cases.append(
        ConfigCase(
            "number-yaml-minus-inf-epochs",
            _dump(_without(BASE_FINETUNE, ("training",))) + b"training: {epochs: -.inf}\n",
            ERROR,
            "training.epochs",
        )
    )
    return cases


GOOD_YAML = """\
# a complete config (commentaire en français: schön, déjà vu)
task: classification
seed: 7
output_dir: runs/fuzz-ü
data:
  train: data/train.csv
  validation_size: 0.1
  test_size: 0.1
  text_column: text
  label_column: label
  max_length: 64
model:
  name_or_path: prajjwal1/bert-tiny
training:
  epochs: 2
  batch_size: 16
  learning_rate: 5.0e-5
  scheduler: cosine
  mixed_precision: "no"
"""


def _structure_cases() -> list[ConfigCase]:
    good = GOOD_YAML.encode("utf-8")
    cases = [ConfigCase("valid-good-yaml", good, OK)]
    # non-mapping roots and empty files
    for case_id, text in [
        ("root-list", b"- data\n- model\n"),
        ("root-int", b"42\n"),
        ("root-string", b"just some words\n"),
        ("root-bool", b"true\n"),
        ("root-null", b"null\n"),
        ("root-tilde", b"~\n"),
        ("root-empty-file", b""),
        ("root-blank-lines", b"\n\n   \n\t\n"),
        ("root-only-comments", b"# data: {train: x.csv}\n# nothing else\n"),
        ("root-document-marker", b"---\n"),
        ("root-document-end", b"...\n"),
        ("root-flow-list", b"[]\n"),
        ("root-empty-mapping", b"{}\n"),
        ("root-float-nan", b".nan\n"),
        ("root-multi-document", good + b"---\n" + good),
    ]:
        cases.append(ConfigCase(case_id, text, ERROR))
    # truncated YAML: a good file cut at seeded byte offsets (some cuts leave a usable prefix)
    rng = _rng("truncate")
    for cut in sorted(rng.sample(range(1, len(good) - 1), 12)):
        cases.append(ConfigCase(f"truncated-at-{cut}", good[:cut], EITHER))
    cut = good.index("ö".encode()) + 1
    cases.append(ConfigCase("truncated-inside-utf8-char", good[:cut], ERROR, "UTF-8"))
    # binary garbage
    rng = _rng("garbage")
    for n in (1, 16, 256, 4096):
        cases.append(ConfigCase(f"garbage-random-{n}-bytes", bytes([0xFF]) + rng.randbytes(n), ERROR))
    cases.append(ConfigCase("garbage-gzip", gzip.compress(good), ERROR))
    cases.append(ConfigCase("garbage-png-header", b"\x89PNG\r\n\x1a\n" + rng.randbytes(64), ERROR))
    cases.append(ConfigCase("garbage-control-characters", b"data: {train: x.csv}\x07\x1b[31m\n", ERROR))
    cases.append(
        ConfigCase("garbage-nul-in-value", b"data:\n  train: a\x00b.csv\nmodel: {name_or_path: m}\n", ERROR)
    )
    cases.append(ConfigCase("garbage-json-not-yaml-mapping", b'["data", {"train": 1}]', ERROR))
    cases.append(ConfigCase("garbage-tab-indent", b"data:\n\ttrain: x.csv\n", ERROR))
    cases.append(ConfigCase("garbage-unclosed-flow", b"data: {train: x.csv\nmodel: [\n", ERROR))
    cases.append(ConfigCase("garbage-unhashable-key", b"? [a, b]\n: c\n", ERROR))
    cases.append(ConfigCase("garbage-undefined-alias", b"data: *nope\n", ERROR))
    cases.append(ConfigCase("garbage-yaml-2.0-directive", b"%YAML 2.0\n---\n" + good, ERROR))
    # wrong encodings
    text = GOOD_YAML.replace('"no"', '"no"  # Grüße')
    for enc, expect in [
        ("latin-1", ERROR),
        ("utf-16", ERROR),
        ("utf-16-le-no-bom", ERROR),
        ("utf-32", ERROR),
        ("cp1252", ERROR),
        ("shift_jis", ERROR),
        ("utf-8-sig", OK),
    ]:
        if enc == "shift_jis":
            data = (text + "# 設定\n").encode("shift_jis", errors="replace")
        elif enc == "cp1252":
            data = text.replace("schön", "\u201cschön\u201d").encode("cp1252")
        elif enc == "utf-16-le-no-bom":  # ASCII text: valid UTF-8, full of NULs
            data = _dump(BASE_FINETUNE).decode().encode("utf-16-le")
        else:
            data = text.encode(enc)
        cases.append(ConfigCase(f"encoding-{enc}", data, expect))
    cases.append(
        ConfigCase(
            "encoding-utf-8-non-ascii-values", _dump(_with(BASE_FINETUNE, ("output_dir",), "runs/日本")), OK
        )
    )
    # duplicate and near-duplicate keys
    # (the first `data:` holds a typo and a bad value that nobody checks, since the second one wins)
    cases.append(
        ConfigCase(
            "duplicate-key-top-level",
            b"data: {train: x.csv, max_lenght: 3, max_length: -1}\n" + _dump(BASE_FINETUNE),
            ERROR,
            "data",
        )
    )
    cases.append(
        ConfigCase(
            "duplicate-key-nested",
            _dump(_without(BASE_FINETUNE, ("training",))) + b"training:\n  batch_size: -1\n  batch_size: 8\n",
            ERROR,
            "batch_size",
        )
    )
    for spelling in ("learning-rate", "Learning_Rate", "learningRate", "learning_rate ", "lr"):
        raw = _with(BASE_FINETUNE, ("training", spelling), 1e-4)
        cases.append(
            ConfigCase(
                f"near-duplicate-training.{spelling.strip()}{'-space' if ' ' in spelling else ''}",
                _dump(raw),
                ERROR,
                "unknown key",
            )
        )
    cases.append(
        ConfigCase(
            "near-duplicate-Data-section",
            _dump({**BASE_FINETUNE, "Data": {"train": "y.csv"}}),
            ERROR,
            "unknown key 'Data'",
        )
    )
    # deep nesting
    cases.append(ConfigCase("nested-list-1000", b"[" * 1000 + b"]" * 1000, ERROR))
    cases.append(ConfigCase("nested-list-300-as-root", b"[" * 300 + b"]" * 300, ERROR))
    cases.append(ConfigCase("nested-mapping-1000", b"a: " + b"{b: " * 1000 + b"1" + b"}" * 1000, ERROR))
    junk: Any = "deep"
    for i in range(40):
        junk = {f"k{i}": [junk]} if i % 2 else [junk, i]
    cases.append(
        ConfigCase(
            "nested-junk-under-unknown-key",
            _dump({**BASE_FINETUNE, "extras": junk}),
            ERROR,
            "unknown key 'extras'",
        )
    )
    cases.append(
        ConfigCase(
            "nested-junk-under-training",
            _dump(_with(BASE_FINETUNE, ("training",), [junk])),
            ERROR,
            "training",
        )
    )
    cases.append(
        ConfigCase(
            "nested-junk-in-data-options", _dump(_with(BASE_FINETUNE, ("data", "options"), {"any": junk})), OK
        )
    )
    laughs = b"".join(
        b"%s: &%s [%s]\n"
        % (bytes([97 + i]), bytes([97 + i]), b",".join([b"*" + bytes([96 + i])] * 9 if i else [b"lol"] * 9))
        for i in range(6)
    )
    # 9^6 values once the aliases are expanded: refused by size before anything is built
    cases.append(ConfigCase("billion-laughs-keys", laughs, ERROR, "expands (through YAML aliases)"))
    cases.append(
        ConfigCase("billion-laughs-value", laughs + b"data: *f\n", ERROR, "expands (through YAML aliases)")
    )
    # YAML tags: code-running ones must never run, odd ones must fail cleanly
    base = _dump(BASE_FINETUNE)
    for case_id, text in [
        (
            "tag-python-apply-os-system-root",
            f"!!python/object/apply:os.system ['touch {SENTINEL}']\n".encode(),
        ),
        (
            "tag-python-apply-os-system-value",
            base + f"seed: !!python/object/apply:os.system ['touch {SENTINEL}']\n".encode(),
        ),
        (
            "tag-python-new-popen",
            base + f"x: !!python/object/new:subprocess.Popen [[touch, {SENTINEL}]]\n".encode(),
        ),
        ("tag-python-name", base.replace(b"output_dir: runs/fuzz", b"output_dir: !!python/name:os.system")),
        ("tag-python-module", base + b"x: !!python/module:os\n"),
        ("tag-python-tuple-layers", base + b"student: {layers: !!python/tuple [0, 1]}\n"),
        ("tag-local-custom", base + b"x: !secret token\n"),
        ("tag-str-on-list", base + b"x: !!str [1]\n"),
        ("tag-map-on-list", base + b"x: !!map [1]\n"),
        ("tag-int-not-a-number", base + b"x: !!int abc\n"),
        ("tag-int-float-text", base.replace(b"seed: 42", b"seed: !!int 1.5")),
        ("tag-int-empty-hex", base + b"x: !!int 0x\n"),
        ("tag-int-bad-octal", base + b"x: !!int 09\n"),
        ("tag-float-not-a-number", base + b"x: !!float abc\n"),
        ("tag-float-empty", base + b"x: !!float\n"),
        ("tag-bool-maybe", base + b"x: !!bool maybe\n"),
        ("tag-timestamp-garbage", base + b"x: !!timestamp nope\n"),
        ("tag-timestamp-month-13", base + b"x: !!timestamp 2020-13-45\n"),
        ("tag-binary-bad-base64", base + b"x: !!binary '@@@'\n"),
    ]:
        cases.append(ConfigCase(case_id, text, ERROR))
    cases.append(
        ConfigCase(
            "tag-binary-for-path",
            _dump(_without(BASE_FINETUNE, ("data",))) + b"data: {train: !!binary aGVsbG8=}\n",
            ERROR,
            "data.train",
        )
    )
    cases.append(
        ConfigCase(
            "tag-timestamp-for-path",
            base.replace(b"output_dir: runs/fuzz", b"output_dir: 2024-01-01"),
            ERROR,
            "output_dir",
        )
    )
    cases.append(
        ConfigCase(
            "tag-set-for-label-names",
            _dump(_without(BASE_FINETUNE, ("data",))) + b"data: {train: x.csv, label_names: !!set {a, b}}\n",
            ERROR,
            "data.label_names",
        )
    )
    # odd keys
    for case_id, extra, needle in [
        ("key-int", b"1: 2\n", "unknown key '1'"),
        ("key-null", b"null: x\n", "unknown key"),
        ("key-bool-yes", b"yes: 1\n", "unknown key"),
        ("key-empty-string", b"'': 1\n", "unknown key ''"),
        ("key-date", b"2020-01-01: x\n", "unknown key"),
        ("key-float", b"1.5: x\n", "unknown key '1.5'"),
        ("key-with-newline", b'"data\\nmodel": 1\n', "unknown key"),
        ("key-very-long", b"k" * 300 + b": 1\n", "unknown key"),
        ("key-merge-unknown", b"base: &b {train: x.csv}\nother: {<<: *b}\n", "unknown key 'base'"),
    ]:
        cases.append(ConfigCase(case_id, base + extra, ERROR, needle))
    # documented coercions and YAML 1.1 surprises
    cases.append(ConfigCase("coerce-int-path", _dump(_with(BASE_FINETUNE, ("data", "train"), 123)), OK))
    cases.append(
        ConfigCase("coerce-string-float", _dump(_with(BASE_FINETUNE, ("training", "epochs"), "1")), OK)
    )
    cases.append(
        ConfigCase(
            "coerce-string-int-rejected",
            _dump(_with(BASE_FINETUNE, ("training", "batch_size"), "8")),
            ERROR,
            "training.batch_size",
        )
    )
    cases.append(
        ConfigCase(
            "yaml11-cpu-yes", _dump(_without(BASE_FINETUNE, ("training",))) + b"training: {cpu: yes}\n", OK
        )
    )
    cases.append(
        ConfigCase(
            "yaml11-mixed-precision-no",
            _dump(_without(BASE_FINETUNE, ("training",))) + b"training: {mixed_precision: no}\n",
            OK,
        )
    )
    cases.append(
        ConfigCase(
            "choice-wrong-case", _dump(_with(BASE_FINETUNE, ("task",), "Classification")), ERROR, "task"
        )
    )
    cases.append(
        ConfigCase(
            "choice-typo-suggested",
            _dump(_with(BASE_FINETUNE, ("training", "scheduler"), "cosin")),
            ERROR,
            "did you mean 'cosine'",
        )
    )
    cases.append(
        ConfigCase(
            "distill-unknown-loss",
            _dump(_with(BASE_DISTILL, ("distill", "losses"), {"kdd": 1.0})),
            ERROR,
            "distill.losses.kdd",
        )
    )
    cases.append(
        ConfigCase(
            "distill-regression-loss-for-classification",
            _dump(_with(BASE_DISTILL, ("distill", "losses"), {"mse": 1.0})),
            ERROR,
            "distill.losses.mse",
        )
    )
    cases.append(
        ConfigCase(
            "student-layers-and-num-layers",
            _dump(_with(BASE_DISTILL, ("student", "layers"), [0, 1])),
            ERROR,
            "student.",
        )
    )
    cases.append(
        ConfigCase(
            "student-heads-not-dividing",
            _dump(
                _with(
                    BASE_DISTILL,
                    ("student",),
                    {"init": "config", "num_layers": 2, "hidden_size": 30, "num_attention_heads": 4},
                )
            ),
            ERROR,
            "student.hidden_size",
        )
    )
    cases.append(
        ConfigCase(
            "label-names-duplicates",
            _dump(_with(BASE_FINETUNE, ("data", "label_names"), ["a", "a"])),
            ERROR,
            "data.label_names",
        )
    )
    return cases


CONFIG_CASES = (
    _wrong_type_cases() + _unknown_key_cases() + _missing_cases() + _number_cases() + _structure_cases()
)


def _run_validate(case: ConfigCase, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "train.csv").write_text(
        "text,label\ngood film,positive\nbad film,negative\n"
    )  # validate reads it
    path = tmp_path / "config.yaml"
    path.write_bytes(case.text)
    # the config layer alone (these configs name data files that do not exist; the data cases test those)
    argv = [
        "validate",
        "--no-data",
        *(["--for", case.for_verb] if case.for_verb else []),
        str(path),
        *case.overrides,
    ]
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    _check_exit(code, out, err, case.expect, case.needle)
    if code == 0:
        assert out.strip() == "ok" and not err
    assert not (tmp_path / SENTINEL).exists(), "a YAML tag ran code"


@pytest.mark.parametrize("case", _params(CONFIG_CASES))
def test_config(case: ConfigCase, tmp_path, monkeypatch, capsys):
    _run_validate(case, tmp_path, monkeypatch, capsys)


# --------------------------------------------------------------------------- configs that fail at run time

RUNTIME: list[tuple[str, tuple[str, ...]]] = [
    ("seed-negative", ("seed=-1",)),
    ("seed-2**32", (f"seed={2**32}",)),
    ("batch_size-2**64", (f"training.batch_size={2**64}",)),
    ("eval_batch_size-2**64", (f"training.eval_batch_size={2**64}",)),
    ("gradient_accumulation_steps-2**64", (f"training.gradient_accumulation_steps={2**64}",)),
    ("max_length-2**64", (f"data.max_length={2**64}",)),
    ("epochs-inf", ("training.epochs=.inf", "training.max_steps=null")),
]
RUNTIME_CASES = [ConfigCase(f"runtime-{name}", b"", ERROR, overrides=ov) for name, ov in RUNTIME]


@pytest.fixture(scope="module")
def small_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("fuzz_data") / "train.csv"
    path.write_bytes(_csv(_rows(40)))
    return path


def _finetune(
    tmp_path: Path,
    capsys,
    model_dir: Path,
    train: str,
    overrides: tuple[str, ...] = (),
    data: dict | None = None,
) -> tuple[int, str, str]:
    cfg = {
        "data": {"train": train, "max_length": 32, **(data or {})},
        "model": {"name_or_path": str(model_dir)},
        "output_dir": str(tmp_path / "out"),
        "training": {"max_steps": 1, "batch_size": 8, "eval_batch_size": 8, "cpu": True},
    }
    path = tmp_path / "config.yaml"
    path.write_bytes(_dump(cfg))
    capsys.readouterr()
    code = main(["finetune", str(path), *overrides])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("case", _params(RUNTIME_CASES))
def test_config_at_run_time(case: ConfigCase, tmp_path, monkeypatch, capsys, tiny_bert_dir, small_csv):
    monkeypatch.chdir(tmp_path)
    code, out, err = _finetune(tmp_path, capsys, tiny_bert_dir, str(small_csv), case.overrides)
    _check_exit(code, out, err, case.expect, stderr_only_errors=False)


# =========================================================================== 2. data files

WORDS = ["good", "bad", "movie", "plot", "great", "awful", "the", "was", "really", "film"]


def _rows(n: int, seed: int = 0) -> list[tuple[str, str, float]]:
    rng = _rng("rows", seed)
    rows = []
    for i in range(n):
        label = "positive" if i % 2 else "negative"
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 7)))
        rows.append((text, label, round((1 if i % 2 else -1) * rng.uniform(0.5, 3.0), 3)))
    return rows


def _csv(rows, header="text,label,score", sep=",", end="\n") -> bytes:
    return (header.replace(",", sep) + end + "".join(sep.join(map(str, r)) + end for r in rows)).encode(
        "utf-8"
    )


def _jsonl(records: list[dict], raw_label: str | None = None) -> bytes:
    lines = [json.dumps(r) for r in records]
    if raw_label is not None:  # a label JSON can hold but json.dumps would not write (NaN) or any raw text
        lines = [line.replace('"label": "@"', f'"label": {raw_label}') for line in lines]
    return ("\n".join(lines) + "\n").encode("utf-8")


def _parquet(frame: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    return buf.getvalue()


def _records(n: int = 40, label: Any = None, text: Any = None, every: int = 2) -> list[dict]:
    out = []
    for i, (t, lab, score) in enumerate(_rows(n)):
        odd = i % every == 0
        out.append(
            {
                "text": text if odd and text is not None else t,
                "label": label if odd and label is not None else lab,
                "score": score,
            }
        )
    return out


DIRECTORY, MISSING = object(), object()


@dataclass(frozen=True)
class DataCase:
    id: str
    name: str
    content: Any
    expect: str = ERROR
    task: str = "classification"
    options: tuple = ()
    extra: tuple = ()
    """(file name, bytes) written next to the main file (other splits)."""
    needle: str = ""
    cli: bool = False


def _data_cases() -> list[DataCase]:
    good_rows = _rows(40)
    good = _csv(good_rows)
    lab = lambda i: "positive" if i % 2 else "negative"  # noqa: E731
    reg = (("label_column", "score"),)
    cases = [
        DataCase("csv-good", "train.csv", good, OK),
        DataCase("csv-good-regression", "train.csv", good, OK, "regression", reg),
        DataCase("csv-empty", "train.csv", b"", needle="empty"),
        DataCase("csv-blank-lines", "train.csv", b"\n\n   \n"),
        DataCase("csv-header-only", "train.csv", b"text,label\n", needle="no rows"),
        DataCase("csv-header-only-crlf", "train.csv", b"text,label\r\n"),
        DataCase("csv-crlf", "train.csv", _csv(good_rows, end="\r\n"), OK),
        DataCase("csv-utf-8-bom", "train.csv", b"\xef\xbb\xbf" + good, OK),
        DataCase("csv-uppercase-suffix", "TRAIN.CSV", good, OK),
        DataCase(
            "csv-ragged-extra-fields",
            "train.csv",
            b"text,label\n"
            + b"".join(b"t%d,%s%s\n" % (i, lab(i).encode(), b",x,y" if i == 7 else b"") for i in range(40)),
        ),
        DataCase(
            "csv-ragged-missing-fields",
            "train.csv",
            b"text,label\n"
            + b"".join(b"t%d%s\n" % (i, b"" if i == 5 else b"," + lab(i).encode()) for i in range(40)),
            needle="label",
        ),
        DataCase(
            "csv-one-unquoted-comma-every-row",
            "train.csv",
            b"text,label\n"
            + b"".join(b"first part %d, second part,%s\n" % (i, lab(i).encode()) for i in range(40)),
        ),
        DataCase(
            "csv-trailing-comma-every-row",
            "train.csv",  # pandas (index_col=False) reads these correctly
            b"text,label\n" + b"".join(b"t%d,%s,\n" % (i, lab(i).encode()) for i in range(40)),
            OK,
        ),
        DataCase("csv-semicolon-delimiter", "train.csv", _csv(good_rows, sep=";"), needle="column"),
        DataCase("csv-tab-delimiter", "train.csv", _csv(good_rows, sep="\t"), needle="column"),
        DataCase("tsv-with-commas", "train.tsv", good, needle="column"),
        DataCase("tsv-good", "train.tsv", _csv(good_rows, sep="\t"), OK),
        DataCase(
            "csv-missing-label-column",
            "train.csv",
            _csv([r[:1] + r[2:] for r in good_rows], "text,score"),
            needle="data.label_column",
        ),
        DataCase(
            "csv-missing-text-column",
            "train.csv",
            _csv([r[1:] for r in good_rows], "label,score"),
            needle="data.text_column",
        ),
        DataCase(
            "csv-no-header", "train.csv", _csv(good_rows)[len(b"text,label,score\n") :], needle="column"
        ),
        DataCase(
            "csv-empty-header",
            "train.csv",
            b",\n" + b"".join(b"t%d,%s\n" % (i, lab(i).encode()) for i in range(40)),
            needle="column",
        ),
        DataCase(  # pandas would rename the second 'text' to 'text.1' silently
            "csv-duplicate-columns",
            "train.csv",
            b"text,text,label\n" + b"".join(b"a%d,b%d,%s\n" % (i, i, lab(i).encode()) for i in range(40)),
            ERROR,
            needle="names column 'text' more than once",
        ),
        DataCase("csv-unclosed-quote", "train.csv", b'text,label\n"good movie,positive\nbad,negative\n'),
        DataCase(
            "csv-quoted-newlines",
            "train.csv",
            b"text,label\n" + b"".join(b'"line\nbreak %d",%s\n' % (i, lab(i).encode()) for i in range(40)),
            OK,
        ),
        DataCase(
            "csv-latin-1",
            "train.csv",
            b"text,label\n" + "".join(f"caf\xe9 {i},{lab(i)}\n" for i in range(40)).encode("latin-1"),
            needle="UTF-8",
        ),
        DataCase(
            "csv-cp1252",
            "train.csv",
            b"text,label\n"
            + "".join(f"\u201cquoted\u201d {i},{lab(i)}\n" for i in range(40)).encode("cp1252"),
            needle="UTF-8",
        ),
        DataCase("csv-utf-16", "train.csv", good.decode().encode("utf-16"), needle="UTF-8"),
        DataCase("csv-utf-16-le-no-bom", "train.csv", good.decode().encode("utf-16-le"), needle="UTF-8"),
        DataCase(
            "csv-invalid-utf-8-bytes", "train.csv", good[:40] + b"\xff\xfe\xfa" + good[40:], needle="UTF-8"
        ),
        DataCase("csv-gzip-bytes", "train.csv", gzip.compress(good)),
        DataCase(
            "csv-nul-in-text",
            "train.csv",
            b"text,label\n" + b"".join(b"t\x00%d,%s\n" % (i, lab(i).encode()) for i in range(40)),
            EITHER,
        ),
        DataCase(
            "csv-label-empty",
            "train.csv",
            b"text,label\n"
            + b"".join(b"t%d,%s\n" % (i, b"" if i == 3 else lab(i).encode()) for i in range(40)),
            needle="missing label",
        ),
        DataCase(
            "csv-label-NaN-string",
            "train.csv",
            b"text,label\n"
            + b"".join(b"t%d,%s\n" % (i, b"NaN" if i % 4 == 0 else lab(i).encode()) for i in range(40)),
            needle="missing label",
        ),
        DataCase(
            "csv-single-label-class",
            "train.csv",
            b"text,label\n" + b"".join(b"t%d,positive\n" % i for i in range(40)),
            needle="only one label",
        ),
        DataCase(
            "csv-text-empty",
            "train.csv",
            b"text,label\n"
            + b"".join(b"%s,%s\n" % (b"" if i == 9 else b"t%d" % i, lab(i).encode()) for i in range(40)),
            needle="empty text",
        ),
        DataCase(
            "csv-text-whitespace-only",
            "train.csv",
            b"text,label\n" + b"".join(b"   ,%s\n" % lab(i).encode() for i in range(40)),
            EITHER,
        ),
        DataCase(
            "csv-text-NaN-string-is-text",
            "train.csv",
            b"text,label\n" + b"".join(b"NaN,%s\n" % lab(i).encode() for i in range(40)),
            OK,
        ),
        DataCase(
            "csv-text-very-long",
            "train.csv",
            b"text,label\n"
            + b"".join(b"%s %d,%s\n" % (b"good bad " * 400, i, lab(i).encode()) for i in range(40)),
            OK,
        ),
        DataCase("csv-too-few-rows-to-carve", "train.csv", _csv(good_rows[:3]), needle="test_size"),
        DataCase(
            "csv-labels-numeric",
            "train.csv",
            b"text,label\n" + b"".join(b"t%d,%s\n" % (i, [b"0", b"1", b"1.0"][i % 3]) for i in range(40)),
            OK,
        ),
        DataCase(
            "csv-labels-negative-numbers",
            "train.csv",
            b"text,label\n" + b"".join(b"t%d,%d\n" % (i, i % 3 - 1) for i in range(40)),
            OK,
        ),
        DataCase(
            "csv-labels-huge-numbers",
            "train.csv",
            b"text,label\n" + b"".join(b"t%d,%d\n" % (i, (-1) ** i * 10**30) for i in range(40)),
            OK,
        ),
        DataCase(
            "csv-regression-non-numeric",
            "train.csv",
            good.replace(b"-1.", b"abc"),
            task="regression",
            options=reg,
            needle="not a finite number",
        ),
        DataCase(
            "csv-regression-inf",
            "train.csv",
            good.replace(b"1.", b"inf", 1),
            task="regression",
            options=reg,
            needle="not a finite number",
        ),
        DataCase(
            "csv-regression-huge-overflow",
            "train.csv",
            good.replace(b"1.", b"1e400", 1),
            task="regression",
            options=reg,
            needle="not a finite number",
        ),
        DataCase(
            "csv-regression-huge-finite",
            "train.csv",
            b"text,score\n" + b"".join(b"t%d,%de300\n" % (i, i % 3 - 1) for i in range(40)),
            OK,
            "regression",
            reg,
        ),
        DataCase(
            "csv-regression-NaN",
            "train.csv",
            good.replace(b"1.", b"NaN", 1),
            task="regression",
            options=reg,
            needle="not a finite number",
        ),
        DataCase(
            "csv-regression-empty",
            "train.csv",
            b"text,score\n" + b"".join(b"t%d,%s\n" % (i, b"" if i == 4 else b"%d" % i) for i in range(40)),
            task="regression",
            options=reg,
        ),
        DataCase(
            "csv-regression-decimal-comma",
            "train.csv",
            b"text,score\n" + b"".join(b't%d,"%d,5"\n' % (i, i) for i in range(40)),
            task="regression",
            options=reg,
        ),
        DataCase(
            "csv-label-names-not-covering",
            "train.csv",
            good,
            options=(("label_names", ["positive", "neutral"]),),
            needle="not among the known labels",
        ),
        DataCase(
            "csv-text-pair-column-missing",
            "train.csv",
            good,
            options=(("text_pair_column", "premise"),),
            needle="data.text_pair_column",
        ),
        DataCase(
            "csv-text-pair-column-empty-values",
            "train.csv",
            b"text,pair,label\n"
            + b"".join(b"t%d,%s,%s\n" % (i, b"" if i == 2 else b"p", lab(i).encode()) for i in range(40)),
            options=(("text_pair_column", "pair"),),
            needle="data.text_pair_column",
        ),
        DataCase(
            "csv-validation-empty",
            "train.csv",
            good,
            options=(("validation", "val.csv"),),
            extra=(("val.csv", b"text,label\n"),),
            needle="data.validation",
        ),
        DataCase(
            "csv-validation-other-columns",
            "train.csv",
            good,
            options=(("validation", "val.csv"),),
            extra=(("val.csv", b"sentence,y\na,positive\n"),),
            needle="validation",
        ),
        DataCase(
            "csv-test-unknown-label",
            "train.csv",
            good,
            options=(("test", "test.csv"),),
            extra=(("test.csv", b"text,label\na,mixed\n"),),
            needle="not among the known labels",
        ),
        DataCase(
            "csv-validation-latin-1",
            "train.csv",
            good,
            options=(("validation", "val.csv"),),
            extra=(("val.csv", "text,label\ncaf\xe9,positive\n".encode("latin-1")),),
            needle="data.validation",
        ),
        DataCase("csv-max-train-examples-1", "train.csv", good, OK, options=(("max_train_examples", 1),)),
        # JSONL / JSON
        DataCase("jsonl-good", "train.jsonl", _jsonl(_records()), OK),
        DataCase("jsonl-empty", "train.jsonl", b""),
        DataCase("jsonl-blank-lines", "train.jsonl", b"\n\n\n"),
        DataCase("jsonl-broken-last-line", "train.jsonl", _jsonl(_records())[:-20]),
        DataCase("jsonl-broken-middle-line", "train.jsonl", _jsonl(_records()).replace(b"}\n", b"\n", 1)),
        DataCase("jsonl-label-list", "train.jsonl", _jsonl(_records(label=[1, 2]))),
        DataCase("jsonl-label-dict", "train.jsonl", _jsonl(_records(label={"a": 1}))),
        DataCase(
            "jsonl-label-null", "train.jsonl", _jsonl(_records(label="@"), "null"), needle="missing label"
        ),
        DataCase(
            "jsonl-label-NaN",
            "train.jsonl",
            _jsonl(_records(label="@", every=7), "NaN"),
            needle="missing label",
        ),
        DataCase(
            "jsonl-label-bool",
            "train.jsonl",
            _jsonl([{**r, "label": bool(i % 2)} for i, r in enumerate(_records())]),
            OK,
        ),
        DataCase("jsonl-text-list", "train.jsonl", _jsonl(_records(text=["a", "b"]))),
        DataCase("jsonl-text-dict", "train.jsonl", _jsonl(_records(text={"a": 1}))),
        DataCase(
            "jsonl-text-null",
            "train.jsonl",
            _jsonl(_records(text="@")).replace(b'"text": "@"', b'"text": null'),
            needle="empty text",
        ),
        DataCase("jsonl-text-number", "train.jsonl", _jsonl(_records(text=5)), OK),
        DataCase("jsonl-scalar-lines", "train.jsonl", b"1\n2\n3\n" * 20),
        DataCase("jsonl-array-lines", "train.jsonl", b"[1, 2]\n[3, 4]\n" * 20),
        DataCase("jsonl-one-json-array", "train.jsonl", json.dumps(_records()).encode()),
        DataCase("jsonl-utf-16", "train.jsonl", _jsonl(_records()).decode().encode("utf-16"), needle="UTF-8"),
        DataCase(
            "jsonl-latin-1",
            "train.jsonl",
            _jsonl(_records(text="caf\xe9"), None)
            .decode("utf-8")
            .replace("\\u00e9", "\xe9")
            .encode("latin-1"),
            needle="UTF-8",
        ),
        DataCase(
            "jsonl-regression-list-target",
            "train.jsonl",
            _jsonl(_records(label=[1, 2])),
            task="regression",
            needle="holds a list",
        ),
        DataCase(
            "jsonl-regression-string-numbers",
            "train.jsonl",
            _jsonl([{**r, "label": str(r["score"])} for r in _records()]),
            OK,
            "regression",
        ),
        DataCase(
            "jsonl-regression-inf",
            "train.jsonl",
            _jsonl(_records(label="@", every=5), "Infinity"),
            task="regression",
            needle="not a finite number",
        ),
        DataCase("json-object", "train.json", b'{"text": "a", "label": "b"}'),
        DataCase("json-scalar", "train.json", b"5"),
        DataCase("json-empty", "train.json", b""),
        DataCase("json-empty-list", "train.json", b"[]"),
        DataCase("json-deep-nesting", "train.json", b"[" * 3000 + b"]" * 3000),
        DataCase("json-good", "train.json", json.dumps(_records()).encode(), OK),
        # Parquet
        DataCase("parquet-good", "train.parquet", _parquet(pd.DataFrame(_records())), OK),
        DataCase(
            "parquet-truncated", "train.parquet", _parquet(pd.DataFrame(_records()))[:300], needle="PARQUET"
        ),
        DataCase("parquet-garbage", "train.parquet", b"PAR1garbagePAR1"),
        DataCase("parquet-empty-file", "train.parquet", b""),
        DataCase(
            "parquet-zero-rows",
            "train.parquet",
            _parquet(pd.DataFrame({"text": [], "label": []})),
            needle="no rows",
        ),
        DataCase("parquet-csv-bytes", "train.parquet", good),
        DataCase(
            "parquet-label-list",
            "train.parquet",
            _parquet(pd.DataFrame({"text": [f"t{i}" for i in range(40)], "label": [[1, 2], [3]] * 20})),
        ),
        DataCase(
            "parquet-label-nan",
            "train.parquet",
            _parquet(pd.DataFrame({"text": [f"t{i}" for i in range(40)], "label": [1.0, math.nan] * 20})),
            needle="missing label",
        ),
        DataCase(
            "parquet-text-int",
            "train.parquet",
            _parquet(pd.DataFrame({"text": list(range(40)), "label": [0, 1] * 20})),
            OK,
        ),
        DataCase(
            "parquet-text-bytes",
            "train.parquet",
            _parquet(pd.DataFrame({"text": [b"\xff\x00"] * 40, "label": [0, 1] * 20})),
        ),
        # paths
        DataCase("path-directory", "train.csv", DIRECTORY, needle="folder"),
        DataCase("path-missing", "train.csv", MISSING, needle="not found"),
        DataCase("path-xlsx", "train.xlsx", b"PK\x03\x04" + bytes(60), needle="cannot tell the format"),
        DataCase("path-no-suffix", "train", good, needle="cannot tell the format"),
        DataCase("path-txt", "train.txt", good, needle="cannot tell the format"),
        DataCase("path-csv-gz", "train.csv.gz", gzip.compress(good), needle="cannot tell the format"),
    ]
    # seeded damage: truncations and byte flips of good files (a cut may leave a usable file)
    rng = _rng("data-truncate")
    jl = _jsonl(_records())
    for cut in sorted(rng.sample(range(1, len(good) - 1), 8)):
        cases.append(DataCase(f"csv-truncated-at-{cut}", "train.csv", good[:cut], EITHER))
    for cut in sorted(rng.sample(range(1, len(jl) - 1), 6)):
        cases.append(DataCase(f"jsonl-truncated-at-{cut}", "train.jsonl", jl[:cut], EITHER))
    pq = _parquet(pd.DataFrame(_records()))
    for cut in sorted(rng.sample(range(1, len(pq) - 1), 3)):
        cases.append(DataCase(f"parquet-truncated-at-{cut}", "train.parquet", pq[:cut], ERROR))
    for k in range(6):
        data = bytearray(good)
        for _ in range(1 + k * 3):
            data[rng.randrange(len(data))] = rng.randrange(256)
        cases.append(DataCase(f"csv-bytes-flipped-{k}", "train.csv", bytes(data), EITHER))
    return cases


DATA_CASES = _data_cases()


def _write_data(case: DataCase, folder: Path) -> Path:
    path = folder / case.name
    if case.content is DIRECTORY:
        path.mkdir()
    elif case.content is not MISSING:
        path.write_bytes(case.content)
    for name, content in case.extra:
        (folder / name).write_bytes(content)
    return path


@pytest.mark.parametrize("case", _params(DATA_CASES))
def test_data_file(case: DataCase, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = _write_data(case, tmp_path)
    cfg = DataConfig(train=str(path), **dict(case.options))
    try:
        data = load_task_data(cfg, case.task, seed=0)
    except DataError as e:
        assert case.expect in (ERROR, EITHER), f"expected a usable file, got DataError: {e}"
        message = str(e)
        _check_lines([f"error: {line}" for line in message.splitlines()])
        assert "\n" not in message, f"a multi-line DataError: {message!r}"
        assert "data" in message, f"the message names no key: {message!r}"
        if case.needle:
            assert case.needle in message, f"{case.needle!r} not in {message!r}"
        return
    assert case.expect in (OK, EITHER), f"expected a DataError, but the file loaded: {data.label_names}"
    for split, ex in data.splits.items():
        assert len(ex) > 0, split
        assert all(isinstance(t, str) for t in ex.texts), split
        if case.task == "classification":
            assert len(data.label_names) >= 2
            assert all(isinstance(y, int) and 0 <= y < len(data.label_names) for y in ex.labels), split
        else:
            assert all(isinstance(y, float) and math.isfinite(y) for y in ex.labels), split


# --------------------------------------------------------------------------- data through the whole CLI

CLI_DATA_IDS = {
    "csv-good": "cli-data-good",
    "csv-empty": "cli-data-empty",
    "csv-header-only": "cli-data-header-only",
    "path-directory": "cli-data-directory",
    "path-xlsx": "cli-data-xlsx",
    "csv-latin-1": "cli-data-latin-1",
    "csv-ragged-extra-fields": "cli-data-ragged",
    "csv-label-NaN-string": "cli-data-label-NaN-string",
    "csv-single-label-class": "cli-data-single-class",
    "csv-text-very-long": "cli-data-long-texts",
    "csv-text-empty": "cli-data-empty-texts",
    "jsonl-label-list": "cli-data-jsonl-label-list",
    "csv-regression-inf": "cli-data-regression-inf",
    "parquet-truncated": "cli-data-parquet-truncated",
    "csv-missing-text-column": "cli-data-missing-text-column",
    "jsonl-broken-middle-line": "cli-data-jsonl-broken",
}
CLI_DATA_CASES = [
    dataclasses.replace(c, id=CLI_DATA_IDS[c.id], cli=True) for c in DATA_CASES if c.id in CLI_DATA_IDS
]
CLI_DATA_CASES.append(
    dataclasses.replace(
        next(c for c in DATA_CASES if c.id == "csv-text-very-long"),
        id="cli-data-long-texts-default-max-length",
        options=(("max_length", 128),),
        cli=True,
    )
)


@pytest.mark.parametrize("case", _params(CLI_DATA_CASES))
def test_data_file_cli(case: DataCase, tmp_path, monkeypatch, capsys, tiny_bert_dir):
    monkeypatch.chdir(tmp_path)
    path = _write_data(case, tmp_path)
    data = {k: v for k, v in case.options}
    overrides = ("task=regression",) if case.task == "regression" else ()
    code, out, err = _finetune(tmp_path, capsys, tiny_bert_dir, str(path), overrides, data)
    _check_exit(code, out, err, case.expect, case.needle, stderr_only_errors=False)
    if code == 0:
        assert (tmp_path / "out" / "results.json").is_file()


# =========================================================================== 3. overrides

OVERRIDES: list[tuple[str, tuple[str, ...], str, str]] = [
    # id, overrides, expect, needle
    ("override-only-equals", ("=",), ERROR, "empty key"),
    ("override-no-equals", ("a.b",), ERROR, "key.sub=value"),
    ("override-dot-key", (".=3",), ERROR, "empty key"),
    ("override-dots-and-spaces", (" . =1",), ERROR, "empty key"),
    ("override-empty-key", ("=3",), ERROR, "empty key"),
    ("override-double-dot", ("training..learning_rate=1e-4",), OK, ""),
    ("override-double-dot-unknown", ("training..lr=1",), ERROR, "training.lr"),
    ("override-list-for-int", ("training.batch_size=[1,2]",), ERROR, "training.batch_size"),
    ("override-mapping-for-int", ("training.batch_size={a: 1}",), ERROR, "training.batch_size"),
    ("override-unicode-key", ("trainíng.learning_rate=1",), ERROR, "did you mean 'training'"),
    ("override-emoji-key", ("🙂=1",), ERROR, "unknown key"),
    ("override-newline-in-key", ("training.a\nb=1",), ERROR, "unprintable"),
    ("override-newline-only-key", ("\n=1",), ERROR, "unprintable"),
    ("override-nul-value", ("training.learning_rate=\x00",), ERROR, "training.learning_rate"),
    ("override-learning-rate-1e999", ("training.learning_rate=1e999",), ERROR, "training.learning_rate"),
    ("override-learning-rate-string", ("training.learning_rate=fast",), ERROR, "training.learning_rate"),
    ("override-learning-rate-nan", ("training.learning_rate=.nan",), ERROR, "training.learning_rate"),
    ("override-deeply-nested-value", ("data.options=" + "[" * 1000,), ERROR, "data.options"),
    (
        "override-python-tag",
        ("training.batch_size=!!python/object/apply:os.system [ls]",),
        ERROR,
        "training.batch_size",
    ),
    ("override-into-a-scalar", ("data.train.x=1",), ERROR, "data.train"),
    ("override-empty-value-required", ("training.batch_size=",), ERROR, "training.batch_size"),
    ("override-empty-value-optional", ("training.max_steps=",), OK, ""),
    ("override-section-scalar", ("training=3",), ERROR, "training"),
    ("override-section-null", ("data=null",), ERROR, "data.train"),
    ("override-unclosed-flow", ("training.batch_size={",), ERROR, "training.batch_size"),
    ("override-equals-in-value", ("data.train=a=b.csv",), OK, ""),
    ("override-hex-int", ("seed=0x10",), OK, ""),
    ("override-spaces-around", (" training.batch_size = 2",), OK, ""),
    ("override-float-for-int", ("training.max_steps=1e3",), ERROR, "training.max_steps"),
    ("override-upper-case-section", ("TRAINING.batch_size=2",), ERROR, "unknown key 'TRAINING'"),
    ("override-wrong-choice", ("training.scheduler=LINEAR",), ERROR, "training.scheduler"),
    ("override-last-wins", ("training.batch_size=-1", "training.batch_size=4"), OK, ""),
    (
        "override-many-errors",
        ("training.batch_size=0", "data.max_length=1", "seed=x"),
        ERROR,
        "data.max_length",
    ),
    ("override-model-empty", ("model.name_or_path=",), ERROR, "model.name_or_path"),
    ("override-yaml-mapping-section", ("training={batch_size: 4, epochs: 1}",), OK, ""),
    ("override-nul-key", ("\x00=1",), ERROR, "unprintable"),
]
OVERRIDE_CASES = [
    ConfigCase(case_id, _dump(BASE_FINETUNE), expect, needle, overrides)
    for case_id, overrides, expect, needle in OVERRIDES
]


@pytest.mark.parametrize("case", _params(OVERRIDE_CASES))
def test_override(case: ConfigCase, tmp_path, monkeypatch, capsys):
    _run_validate(case, tmp_path, monkeypatch, capsys)


# =========================================================================== the corpus itself


def test_corpus_size_and_bug_list():
    """The issue asks for >= 200 malformed inputs; every BUGS entry must still name a generated case."""
    n_config = len(CONFIG_CASES) + len(RUNTIME_CASES)
    n_data = len(DATA_CASES) + len(CLI_DATA_CASES)
    assert n_config >= 120 and n_data >= 60 and len(OVERRIDE_CASES) >= 20
    ids = [c.id for c in CONFIG_CASES + RUNTIME_CASES + DATA_CASES + CLI_DATA_CASES + OVERRIDE_CASES]
    assert len(ids) == len(set(ids)), [i for i in ids if ids.count(i) > 1]
    assert not set(BUGS) - set(ids), f"stale BUGS entries: {sorted(set(BUGS) - set(ids))}"
    for rule, _ in BUG_RULES:
        assert any(re.fullmatch(rule, i) for i in ids), f"BUG_RULES entry matches no case: {rule}"
