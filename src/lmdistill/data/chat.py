"""Chat data for causal LMs: a ``messages`` column (lists of ``{role, content}``) rendered with the tokenizer's
own chat template, the loss on the assistant turns (``lm.train_on``).

Where a turn lies is found by rendering prefixes of the conversation (as chat fine-tuning libraries do): the
assistant turn ``i`` is the text between the rendering of ``messages[:i]`` with the generation prompt and the
rendering of ``messages[:i + 1]`` (its content and the template's end-of-turn text), inside the rendering of
the whole conversation. A template that does not render the conversation that way (it drops or rewrites a
turn) is refused for that row, naming it.

``lm.train_on``: ``assistant`` (every assistant turn; default), ``last`` (only the last assistant turn),
``all`` (every token). Each target turn's first token index is kept (``turns``): the prompts of
sequence-level and on-policy KD are the conversation up to each of them.
"""

from __future__ import annotations

import json

from lmdistill.data.alignment import IGNORE, Rendered
from lmdistill.errors import DataError

ROLES = ("system", "user", "assistant", "tool")


def parse_messages(value, where: str) -> list[dict[str, str]]:
    """A row's ``messages`` as a list of ``{"role", "content"}`` (JSON text is parsed); one line otherwise."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise DataError(
                f"{where}: messages is text that is not JSON; give a list of {{role, content}}"
            ) from None
    if hasattr(value, "tolist"):  # a numpy array from Parquet / datasets
        value = value.tolist()
    if not isinstance(value, list) or not value:
        raise DataError(
            f"{where}: messages must be a non-empty list of {{role, content}}, got {type(value).__name__}"
        )
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise DataError(f"{where}: message {i} must be a {{role, content}} mapping, got {str(m)[:60]!r}")
        if m["role"] not in ROLES:
            raise DataError(
                f"{where}: message {i} has the unknown role {str(m['role'])[:30]!r}; roles are {', '.join(ROLES)}"
            )
        out.append({"role": str(m["role"]), "content": "" if m["content"] is None else str(m["content"])})
    if not any(m["role"] == "assistant" for m in out):
        raise DataError(f"{where}: the conversation has no assistant message to learn from")
    return out


def check_template(tokenizer, name: str) -> None:
    """One line when ``tokenizer`` has no chat template."""
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(
            f"lm.messages_column: tokenizer '{name}' has no chat template; give a tokenizer with one "
            "(student.tokenizer / teacher.tokenizer), or use lm.prompt_column and lm.response_column"
        )


def _render(tokenizer, messages: list[dict], where: str, generation: bool = False) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
    except Exception as e:  # jinja raises its own errors (e.g. roles that must alternate)
        first = " ".join(str(e).split())[:100] or type(e).__name__
        raise DataError(f"{where}: the chat template cannot render this conversation ({first})") from None


def _turn(tokenizer, messages: list[dict], i: int, full: str, where: str, name: str) -> tuple[int, int, int]:
    """``(turn_start, content_start, turn_end)`` characters of assistant message ``i`` in ``full``."""
    before = _render(tokenizer, messages[:i], where, generation=True) if i else ""
    upto = _render(tokenizer, messages[: i + 1], where)
    at = upto.find(messages[i]["content"], len(before)) if upto.startswith(before) else -1
    if at < 0 or not full.startswith(upto):
        raise DataError(
            f"{where}: the chat template of '{name}' drops or rewrites assistant message {i} (its text is not "
            "where the conversation up to it puts it); use a template that renders every turn as given"
        )
    return len(before), at, len(upto)


def render_chat(tokenizer, messages: list[dict], train_on: str, where: str, name: str) -> Rendered:
    """Tokens of the rendered conversation with labels on the target turns, the character offsets, anchors
    (each target assistant content, or every message's content for ``all``) and ``turns``."""
    full = _render(tokenizer, messages, where)
    assistant = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    targets = assistant[-1:] if train_on == "last" else assistant
    spans = [_turn(tokenizer, messages, i, full, where, name) for i in targets]
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    first_at = [
        next((k for k, (a, _) in enumerate(offsets) if a >= start), len(ids)) for start, _, _ in spans
    ]
    if train_on == "all":
        labels = list(ids)
    else:
        labels = [
            tid if any(s <= a < e for s, _, e in spans) else IGNORE for tid, (a, _) in zip(ids, offsets)
        ]
    anchors, turns = [], []
    for k, ((start, content, end), first) in enumerate(zip(spans, first_at)):
        text = messages[targets[k]]["content"]
        last = max((k for k, (a, _) in enumerate(offsets) if start <= a < end), default=first - 1)
        anchors.append((content, content + len(text), last + 1))
        turns.append(first)
    if train_on == "all":
        anchors = _all_anchors(messages, full, offsets)
    return Rendered(ids, labels, offsets, full, anchors, turns)


def _all_anchors(
    messages: list[dict], full: str, offsets: list[tuple[int, int]]
) -> list[tuple[int, int, int]]:
    """Every message's content, found in order; each anchor's targets run to the next content's first token."""
    found, cursor = [], 0
    for m in messages:
        at = full.find(m["content"], cursor) if m["content"] else -1
        if at >= 0:
            found.append((at, at + len(m["content"])))
            cursor = at + len(m["content"])
    ends = [next((k for k, (a, _) in enumerate(offsets) if a >= s), len(offsets)) for s, _ in found[1:]]
    return [(s, e, end) for (s, e), end in zip(found, ends + [len(offsets)])]
