"""The bad inputs of chat data, LoRA students and cross-tokenizer KD through the CLI: one line each, exit 2
(a chat row with an unknown role, an assistant turn the template drops, a LoRA target module that does not
exist, token-level intermediate matches across tokenizers)."""

from __future__ import annotations

import json

import pytest
import yaml

from lmdistill.cli import main

from .test_causal_lm import _cfg, tiny_llama
from .test_lm_chat import CHAT, chat_tokenizer

DROPPING = (
    "{% for m in messages %}{% if m['role'] != 'assistant' or loop.last %}<s>{{ m['role'] }} : "
    "{{ m['content'] }}</s>{% endif %}{% endfor %}{% if add_generation_prompt %}<s>assistant : {% endif %}"
)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A tiny Llama teacher with a chat template, the same with a template that drops earlier answers, and
    chat JSONL files (good; one row with the role 'bot')."""
    d = tmp_path_factory.mktemp("refusals")
    tok = chat_tokenizer()
    for name in ("teacher", "dropping"):
        tiny_llama(len(tok), layers=2).save_pretrained(d / name)
        if name == "dropping":
            tok.chat_template = DROPPING
        tok.save_pretrained(d / name)
    rows = [{"messages": CHAT}] * 20
    (d / "chat.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    bad = [{"messages": [{"role": "bot", "content": "is it good ?"}, CHAT[1]]}] * 20
    (d / "bot.jsonl").write_text("\n".join(json.dumps(r) for r in bad))
    return d


def _run(tmp_path, capsys, verb: str, cfg: dict) -> list[str]:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main([verb, str(path)]) == 2
    return capsys.readouterr().err.strip().splitlines()


def _chat_cfg(tmp_path, root, teacher: str, data: str, **sections) -> dict:
    return _cfg(
        tmp_path,
        "run",
        data={"train": str(root / data), "max_length": 64},
        teacher={"name_or_path": str(root / teacher)},
        student={"layers": [0]},
        lm={"messages_column": "messages"},
        training={"max_steps": 1, "batch_size": 4},
        **sections,
    )


def test_a_chat_row_with_an_unknown_role(tmp_path, root, capsys):
    err = _run(tmp_path, capsys, "distill", _chat_cfg(tmp_path, root, "teacher", "bot.jsonl"))
    assert len(err) == 1
    assert err[0].startswith(
        "error: data.train row 0 (messages): message 0 has the unknown role 'bot'; roles are"
    )


def test_an_assistant_turn_the_template_drops(tmp_path, root, capsys):
    err = _run(tmp_path, capsys, "distill", _chat_cfg(tmp_path, root, "dropping", "chat.jsonl"))
    assert len(err) == 1
    assert err[0].startswith(
        f"error: data.train row 0 (messages): the chat template of '{root / 'dropping'}' drops or rewrites "
        "assistant message 1"
    )


def test_a_lora_target_module_that_does_not_exist(tmp_path, root, capsys):
    cfg = _chat_cfg(tmp_path, root, "teacher", "chat.jsonl")
    cfg["student"]["lora"] = {"r": 2, "target_modules": ["q_proj", "query"]}
    err = _run(tmp_path, capsys, "distill", cfg)
    assert len(err) == 1
    assert err[0].startswith(
        "error: student.lora.target_modules: the student (LlamaForCausalLM) has no module 'query'; its linear "
        "layers are "
    )


@pytest.mark.parametrize("verb", ["validate", "distill"])
def test_token_level_matches_across_tokenizers(tmp_path, root, capsys, verb):
    cfg = _chat_cfg(tmp_path, root, "teacher", "chat.jsonl", distill={"matches": [{"feature": "hidden"}]})
    cfg["lm"]["cross_tokenizer"] = "uld"
    err = _run(tmp_path, capsys, verb, cfg)
    assert err == [
        "error: distill.matches[0] (hidden) is token-level, which needs one tokenizer: with lm.cross_tokenizer "
        "(uld) the two models' positions differ; use a sentence-level feature (cls, mean) or remove it"
    ]
