"""One policy for over-long rows, in every stage: keep the completion, cut the prompt from the left.

A row is too long when its chat-formatted prompt + completion has more than `max_length`
tokens (the model's own chat template and tokenizer). Then, as trl does with its
`truncation_mode`, the prompt's last user turn loses tokens from its start; if the
completion alone does not fit beside a few prompt tokens, the completion is cut from its
end too; a row whose template alone is too long is dropped. Training stages write the rows
they really train on (`train.jsonl` in the stage folder) and count each outcome in their
summary.json; the safety stage cuts its prompts the same way to fit the model's context
beside the answer budget. Nothing is dropped or cut silently. lm-eval truncates its own
prompts from the left.

Before any of that, a row whose text holds one of the tokenizer's control tokens (its turn
markers: safealign/models/control.py) is refused and counted, so that user text never becomes a
turn of its own in the ids the trainer sees.
"""

from __future__ import annotations

from safealign.models import control

KEEP, PROMPT, COMPLETION, DROPPED = "kept", "prompt_truncated", "completion_truncated", "dropped"
CONTROL = "control_tokens"  # refused: the row's text holds a control token of the tokenizer
MARGIN = 8  # tokens of slack: the trainers tokenize prompt and completion with their own joins
MIN_PROMPT = 16  # prompt tokens kept at least when the completion has to be cut


def _n(tok, messages: list[dict], generation_prompt: bool = False) -> int:
    return len(
        tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation_prompt, return_dict=False)
    )


def _offsets(tok, text: str) -> list[tuple[int, int]]:
    return tok(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]


def cut_left(tok, text: str, drop: int) -> str:
    """`text` without its first `drop` tokens."""
    offs = _offsets(tok, text)
    return "" if drop >= len(offs) else text[offs[drop][0] :]


def cut_right(tok, text: str, keep: int) -> str:
    """The first `keep` tokens of `text`."""
    offs = _offsets(tok, text)
    return text if keep >= len(offs) else ("" if keep <= 0 else text[: offs[keep - 1][1]])


def _with(messages: list[dict], content: str) -> list[dict]:
    return messages[:-1] + [{**messages[-1], "content": content}]


def fit(tok, prompt: list[dict], completions: list[list[dict]], max_length: int) -> tuple[list, list, str]:
    """(prompt, completions, outcome) so that prompt + each completion fits in max_length tokens."""
    budget = max_length - MARGIN
    longest = lambda p, cs: max(_n(tok, p + c) for c in cs)  # noqa: E731
    if longest(prompt, completions) <= budget:
        return prompt, completions, KEEP
    for _ in range(4):  # BPE merges at the cut can shift a token or two: re-measure
        excess = longest(prompt, completions) - budget
        if excess <= 0:
            return prompt, completions, PROMPT
        n_user = len(_offsets(tok, prompt[-1]["content"]))
        if n_user - excess < MIN_PROMPT:
            break
        prompt = _with(prompt, cut_left(tok, prompt[-1]["content"], excess))
    # the completion does not fit beside a short prompt: keep MIN_PROMPT tokens of it, cut the completion
    prompt = _with(
        prompt, cut_left(tok, prompt[-1]["content"], max(0, len(_offsets(tok, prompt[-1]["content"])) - MIN_PROMPT))
    )
    out = []
    for c in completions:
        room = budget - _n(tok, prompt + _with(c, ""))
        if room <= 0:
            return prompt, completions, DROPPED
        c = _with(c, cut_right(tok, c[-1]["content"], room))
        while _n(tok, prompt + c) > budget and c[-1]["content"]:
            room -= 2
            c = _with(c, cut_right(tok, c[-1]["content"], room))
        out.append(c)
    return prompt, out, COMPLETION


# the message lists in each stage's rows: (prompt key, completion keys)
LAYOUT = {"sft": (None, ("messages",)), "kto": ("prompt", ("completion",)), "dpo": ("prompt", ("chosen", "rejected"))}


def fit_rows(tok, rows: list[dict], layout: str, max_length: int) -> tuple[list[dict], dict]:
    """Rows of one stage's file, each fitted; and the count of each outcome, plus `tokens`: the
    tokens the trainer sees in the kept rows (prompt + completion, once per completion: a
    preference pair is two sequences), without padding. Speed figures divide by it. Rows whose
    text holds a control token are left out (CONTROL), each listed in `refused` as
    {"row": its index in `rows`, "id", "token"}."""
    pkey, ckeys = LAYOUT[layout]
    out, counts = [], {KEEP: 0, PROMPT: 0, COMPLETION: 0, DROPPED: 0, CONTROL: 0}
    refused = []
    tokens = 0
    for i, r in enumerate(rows):
        if pkey is None:  # sft: one message list, the last message is the completion
            p, cs = r["messages"][:-1], [r["messages"][-1:]]
        else:
            p, cs = r[pkey], [r[k] for k in ckeys]
        token = control.in_messages(tok, p, *cs)
        if token is not None:
            counts[CONTROL] += 1
            refused.append({"row": i, "id": r.get("id"), "token": token})
            continue
        p, cs, outcome = fit(tok, p, cs, max_length)
        counts[outcome] += 1
        if outcome == DROPPED:
            continue
        tokens += sum(_n(tok, p + c) for c in cs)
        out.append({**r, "messages": p + cs[0]} if pkey is None else {**r, pkey: p, **dict(zip(ckeys, cs))})
    return out, {**counts, "tokens": tokens, "refused": refused}


def prompt_length(tok, messages: list[dict]) -> int:
    """Tokens of a generation prompt: the chat template with its generation prompt."""
    return _n(tok, messages, generation_prompt=True)


def fit_prompt(tok, messages: list[dict], max_tokens: int) -> tuple[list[dict], bool]:
    """A generation prompt cut from the left to `max_tokens` (chat template and generation prompt included)."""
    n = _n(tok, messages, generation_prompt=True)
    if n <= max_tokens:
        return messages, False
    for _ in range(4):
        excess = _n(tok, messages, generation_prompt=True) - max_tokens
        if excess <= 0:
            break
        messages = _with(messages, cut_left(tok, messages[-1]["content"], excess))
    return messages, True
