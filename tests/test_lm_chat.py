"""Chat data for causal LMs (lm.messages_column): the tokenizer's template, loss on assistant turns
(lm.train_on), prompts of generated-data KD per assistant turn, and the one-line refusals."""

from __future__ import annotations

import json

import pytest
import torch

from lmdistill.data import alignment as al
from lmdistill.data.chat import parse_messages, render_chat
from lmdistill.data.lm import LMCollator
from lmdistill.errors import DataError
from lmdistill.tasks.lm_generation import Generation, item_prompts
from lmdistill.tasks.lm_objective import CausalLMObjective

from .test_causal_lm import WORDS, _cfg, tiny_llama, word_tokenizer
from .test_lm_cross import char_tokenizer

TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }} : {{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant : {% endif %}"
)
CHAT = [
    {"role": "user", "content": "is it good ?"},
    {"role": "assistant", "content": "yes"},
    {"role": "user", "content": "is it bad ?"},
    {"role": "assistant", "content": "no ."},
]


def chat_tokenizer(char: bool = False):
    words = sorted(set(WORDS + ["user", "assistant", "system", ":"]))
    tok = char_tokenizer(words) if char else word_tokenizer(words=words)
    tok.chat_template = TEMPLATE
    return tok


def test_two_turn_masks_hand_checked_token_by_token():
    tok = chat_tokenizer()
    r = render_chat(tok, CHAT, "assistant", "row 0", "tok")
    tokens = tok.convert_ids_to_tokens(r.ids)
    assert tokens == (
        ["<s>", "user", ":", "is", "it", "good", "?", "</s>", "<s>", "assistant", ":", "yes", "</s>"]
        + ["<s>", "user", ":", "is", "it", "bad", "?", "</s>", "<s>", "assistant", ":", "no", ".", "</s>"]
    )
    targets = [t for t, lab in zip(tokens, r.labels) if lab != -100]
    assert [i for i, lab in enumerate(r.labels) if lab != -100] == [11, 12, 24, 25, 26]
    assert targets == ["yes", "</s>", "no", ".", "</s>"]  # each answer and its end of turn
    assert all(lab == tid for tid, lab in zip(r.ids, r.labels) if lab != -100)
    assert r.turns == [11, 24]  # the prompts end before each assistant turn
    last = render_chat(tok, CHAT, "last", "row 0", "tok")
    assert [i for i, lab in enumerate(last.labels) if lab != -100] == [24, 25, 26] and last.turns == [24]
    everything = render_chat(tok, CHAT, "all", "row 0", "tok")
    assert everything.labels == everything.ids


def test_prompts_of_generated_data_kd_end_at_each_assistant_turn():
    tok = chat_tokenizer()
    r = render_chat(tok, CHAT, "assistant", "row 0", "tok")
    item = {"input_ids": r.ids, "labels": r.labels, "turns": r.turns}
    prompts = item_prompts(item, max_new_tokens=4)
    assert prompts == [r.ids[:11], r.ids[:24]]
    assert tok.convert_ids_to_tokens(prompts[1])[-6:] == ["bad", "?", "</s>", "<s>", "assistant", ":"]
    batch = LMCollator(0)([item, {"input_ids": r.ids[:13], "labels": r.labels[:13], "turns": [11]}])
    assert batch["turns"].tolist() == [[11, 24], [11, -1]]
    seen = set()

    def fake_generate(model, prompts, gen):
        seen.update(len(p) for p in prompts)
        return [[5] for _ in prompts]

    import lmdistill.tasks.lm_objective as lo

    obj = CausalLMObjective({"kd": 1.0}, 1.0, on_policy=1.0, generation=Generation(1, 1.0, 0, 3))
    original = lo.lm_generation.generate
    lo.lm_generation.generate = fake_generate
    try:
        torch.manual_seed(0)
        for _ in range(12):
            obj.prepare_batch(batch, None)
    finally:
        lo.lm_generation.generate = original
    assert seen == {11, 24}  # row 0 draws either of its turns, row 1 its only one


def test_cross_tokenizer_chat_pairs_align_each_answer():
    s_tok, t_tok = chat_tokenizer(char=True), chat_tokenizer()
    rs = render_chat(s_tok, CHAT, "assistant", "row 0", "s")
    rt = render_chat(t_tok, CHAT, "assistant", "row 0", "t")
    item = al.cross_item(rs, rt, "aligned", al.vocab_strings(s_tok), al.vocab_strings(t_tok))
    s_yes, t_yes = rs.turns[0], rt.turns[0]
    s_no, t_no = rs.turns[1], rt.turns[1]
    assert item["pairs"] == [
        (s_yes - 1, t_yes - 1, False),  # 'y' 'e' 's' | 'yes'
        (s_yes + 2, t_yes, True),  # '</s>' | '</s>'
        (s_no - 1, t_no - 1, False),  # 'n' 'o' | 'no'
        (s_no + 1, t_no, True),  # '.' | '.'
        (s_no + 2, t_no + 1, True),  # '</s>' | '</s>'
    ]


def test_chat_refusals_are_one_line():
    with pytest.raises(
        DataError,
        match=r"^data.train row 3: message 1 has the unknown role 'bot'; roles are system, user, assistant, tool$",
    ):
        parse_messages(
            [{"role": "user", "content": "hi"}, {"role": "bot", "content": "x"}], "data.train row 3"
        )
    plain = word_tokenizer()
    with pytest.raises(
        DataError,
        match=r"^lm.messages_column: tokenizer 'runs/s' has no chat template; give a tokenizer with one",
    ):
        from lmdistill.data.chat import check_template

        check_template(plain, "runs/s")
    dropping = chat_tokenizer()
    dropping.chat_template = (
        "{% for m in messages %}{% if m['role'] != 'assistant' or loop.last %}<s>{{ m['role'] }} : "
        "{{ m['content'] }}</s>{% endif %}{% endfor %}{% if add_generation_prompt %}<s>assistant : {% endif %}"
    )
    with pytest.raises(DataError) as e:
        render_chat(dropping, CHAT, "assistant", "data.train row 0", "runs/t")
    assert str(e.value).startswith(
        "data.train row 0: the chat template of 'runs/t' drops or rewrites assistant message 1"
    )
    assert "\n" not in str(e.value)
    assert render_chat(dropping, CHAT, "last", "row 0", "t").turns == [
        19
    ]  # the last turn alone is fine (8 + 8 + 3)


def test_distill_on_chat_jsonl(tmp_path):
    from lmdistill import api

    tok = chat_tokenizer()
    tiny_llama(len(tok)).save_pretrained(tmp_path / "teacher")
    tok.save_pretrained(tmp_path / "teacher")
    rows = [{"messages": CHAT}, {"messages": [CHAT[2], CHAT[3]]}] * 20
    (tmp_path / "chat.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    cfg = _cfg(
        tmp_path,
        "chat",
        data={"train": str(tmp_path / "chat.jsonl"), "max_length": 64},
        teacher={"name_or_path": str(tmp_path / "teacher")},
        student={"layers": [0, 2]},
        lm={"messages_column": "messages"},
        training={"max_steps": 2, "batch_size": 8},
    )
    res = api.distill(cfg)
    out = json.loads((tmp_path / "chat" / "results.json").read_text())
    # per conversation the answers and their end-of-turn tokens are the targets: 5 (two turns) or 3 tokens
    assert res.steps == 2 and sum(out["split_targets"].values()) == 20 * 5 + 20 * 3
