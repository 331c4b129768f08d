"""The truncation policy (safealign/models/truncate.py) at its exact boundaries, on a byte-level BPE
tokenizer with the tiny models' chat template built here in seconds (no model, no cache): every
expected count is measured with the tokenizer itself, so no figure depends on its merges."""

import pytest
from conftest import REPO

from safealign.data import rows as data
from safealign.models import tiny as tinymodel
from safealign.models import truncate as t

WORDS = "the quick brown fox jumps over the lazy dog in singapore today".split()
# 120 numbered words, then an end marker: a prompt far over the lengths used below
LONG = " ".join(f"{WORDS[i % len(WORDS)]}{i % 7}" for i in range(120)) + " THE END"


@pytest.fixture(scope="module")
def tok():
    rows = data.read_jsonl(REPO / "data" / "sg_safety" / "train.jsonl")
    texts = [x for r in rows for x in (r["prompt"], r["chosen"], r.get("rejected") or "")]
    return tinymodel.train_tokenizer(texts + ["user\n\nassistant\n\n"] * 50, 512)


def user(text):
    return [{"role": "user", "content": text}]


def assistant(text):
    return [{"role": "assistant", "content": text}]


def n(tok, messages, generation_prompt=False):
    return len(
        tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation_prompt, return_dict=False)
    )


def test_counts_and_cuts_follow_the_tokenizer_offsets(tok):
    text = "the quick brown fox jumps over the lazy dog"
    offs = tok(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    assert t._offsets(tok, text) == offs and len(offs) > 6
    assert t._n(tok, user(text)) == n(tok, user(text))
    assert t._n(tok, user(text), generation_prompt=True) == n(tok, user(text), True) > n(tok, user(text))
    assert t._n(tok, user(text), True) > t._n(tok, user(text))
    # cut_left drops whole tokens from the start; all of them: nothing left
    assert t.cut_left(tok, text, 0) == text
    assert t.cut_left(tok, text, 3) == text[offs[3][0] :]
    assert t.cut_left(tok, text, len(offs) - 1) == text[offs[-1][0] :] != ""
    assert t.cut_left(tok, text, len(offs)) == "" and t.cut_left(tok, text, len(offs) + 5) == ""
    # cut_right keeps whole tokens from the start
    assert t.cut_right(tok, text, 1) == text[: offs[0][1]]
    assert t.cut_right(tok, text, 4) == text[: offs[3][1]]
    assert t.cut_right(tok, text, len(offs) - 1) == text[: offs[-2][1]] != text
    assert t.cut_right(tok, text, len(offs)) == text and t.cut_right(tok, text, len(offs) + 5) == text
    assert t.cut_right(tok, text, 0) == "" and t.cut_right(tok, text, -2) == ""


def test_with_replaces_only_the_last_messages_content():
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "a", "name": "x"}]
    assert t._with(messages, "b") == [{"role": "system", "content": "s"}, {"role": "user", "content": "b", "name": "x"}]
    assert messages[1]["content"] == "a"


def test_fit_keeps_a_row_at_the_budget_and_cuts_the_prompt_by_exactly_the_excess(tok):
    p, c = user(LONG), assistant("I cannot help with that.")
    whole = n(tok, p + c)
    # budget = max_length - MARGIN: a row of exactly the budget is kept as it is
    assert t.fit(tok, p, [c], whole + t.MARGIN) == (p, [c], t.KEEP)
    for over in (1, 40):
        budget = whole - over
        prompt, (completion,), outcome = t.fit(tok, p, [c], budget + t.MARGIN)
        assert outcome == t.PROMPT and completion == c
        assert n(tok, prompt + completion) == budget  # cut from the left by the excess, no more
        assert LONG.endswith(prompt[-1]["content"]) and prompt[-1]["content"].endswith("THE END")


def test_fit_cuts_the_completion_beside_min_prompt_tokens_or_drops_the_row(tok):
    p, c = user(LONG), assistant(" ".join(WORDS * 10))
    content = p[-1]["content"]
    short = t._with(p, t.cut_left(tok, content, len(t._offsets(tok, content)) - t.MIN_PROMPT))
    head = n(tok, short + t._with(c, ""))  # the template and MIN_PROMPT prompt tokens
    assert t.fit(tok, p, [c], head + t.MARGIN) == (short, [c], t.DROPPED)  # no room for one token
    for room in (1, 30):
        prompt, (completion,), outcome = t.fit(tok, p, [c], head + room + t.MARGIN)
        assert outcome == t.COMPLETION and prompt == short
        assert len(t._offsets(tok, prompt[-1]["content"])) == t.MIN_PROMPT
        assert n(tok, prompt + completion) == head + room  # the completion fills the room
        assert c[-1]["content"].startswith(completion[-1]["content"]) and completion[-1]["content"]


def test_fit_measures_the_longest_of_several_completions(tok):
    p = user(" ".join(WORDS * 2))
    short, long_ = assistant("No."), assistant(" ".join(WORDS * 3))
    budget = n(tok, p + long_) - 5
    prompt, completions, outcome = t.fit(tok, p, [short, long_], budget + t.MARGIN)
    assert outcome == t.PROMPT and completions == [short, long_]
    assert max(n(tok, prompt + x) for x in completions) == budget


def test_fit_rows_per_layout_counts_and_tokens(tok):
    long_row = {"id": "l", "prompt": user(LONG), "completion": assistant("No."), "label": False}
    ok_row = {"id": "k", "prompt": user("hello"), "completion": assistant("hi there"), "label": True}
    budget = n(tok, ok_row["prompt"] + ok_row["completion"]) + 20
    out, counts = t.fit_rows(tok, [ok_row, long_row], "kto", budget + t.MARGIN)
    assert out[0] == ok_row and out[1]["completion"] == long_row["completion"] and out[1]["label"] is False
    assert counts == {
        t.KEEP: 1,
        t.PROMPT: 1,
        t.COMPLETION: 0,
        t.DROPPED: 0,
        "tokens": n(tok, ok_row["prompt"] + ok_row["completion"]) + budget,
    }
    # sft: the last message is the completion; dpo: two completions, each counted
    sft = {"id": "s", "messages": user("hello") + assistant("hi there")}
    assert t.fit_rows(tok, [sft], "sft", 256) == (
        [sft],
        {**dict.fromkeys(counts, 0), t.KEEP: 1, "tokens": n(tok, sft["messages"])},
    )
    dpo = {"id": "d", "prompt": user("hello"), "chosen": assistant("No."), "rejected": assistant("Sure, here.")}
    out, counts = t.fit_rows(tok, [dpo], "dpo", 256)
    assert out == [dpo] and counts["tokens"] == n(tok, dpo["prompt"] + dpo["chosen"]) + n(
        tok, dpo["prompt"] + dpo["rejected"]
    )
    # a row that cannot fit at all is left out, and counted
    out, counts = t.fit_rows(tok, [long_row, ok_row], "kto", 12)
    assert out == [] and counts[t.DROPPED] == 2 and counts["tokens"] == 0


def test_fit_prompt_cuts_to_exactly_max_tokens_with_the_generation_prompt(tok):
    p = [{"role": "system", "content": "be brief"}] + user(LONG)
    whole = n(tok, p, True)
    assert t.fit_prompt(tok, p, whole) == (p, False)
    for limit in (whole - 1, 60):
        messages, cut = t.fit_prompt(tok, p, limit)
        assert cut and n(tok, messages, True) == limit
        assert messages[0] == p[0] and LONG.endswith(messages[-1]["content"])
