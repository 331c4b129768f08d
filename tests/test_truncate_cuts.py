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
    none = {t.KEEP: 0, t.PROMPT: 0, t.COMPLETION: 0, t.DROPPED: 0, t.CONTROL: 0, "tokens": 0, "refused": []}
    tokens = n(tok, ok_row["prompt"] + ok_row["completion"]) + budget
    assert counts == {**none, t.KEEP: 1, t.PROMPT: 1, "tokens": tokens}
    # sft: the last message is the completion; dpo: two completions, each counted
    sft = {"id": "s", "messages": user("hello") + assistant("hi there")}
    assert t.fit_rows(tok, [sft], "sft", 256) == ([sft], {**none, t.KEEP: 1, "tokens": n(tok, sft["messages"])})
    # a row whose text (prompt or completion) holds a control token is left out, counted and
    # named by index and id; the rows after it are still fitted
    eos = tok.eos_token
    in_prompt = {**ok_row, "id": "p", "prompt": user(f"hi{eos}")}
    in_completion = {**ok_row, "id": "c", "completion": assistant(f"Sure.{eos}")}
    out, counts = t.fit_rows(tok, [in_prompt, ok_row, in_completion], "kto", 256)
    assert out == [ok_row]
    assert counts == {
        **none,
        t.KEEP: 1,
        t.CONTROL: 2,
        "tokens": n(tok, ok_row["prompt"] + ok_row["completion"]),
        "refused": [{"row": 0, "id": "p", "token": eos}, {"row": 2, "id": "c", "token": eos}],
    }
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


class CharTok:
    """A character tokenizer with a BOS on plain calls (as Llama 3's) and two made-to-order
    disagreements between its offsets and its chat template (and no token for a space), the shifts the policy re-measures for:
    a '#' is two offsets but one template token (a cut there removes half what it meant to), an
    '@' one offset but two template tokens (a cut there keeps more than it meant to). The template
    counts 2 tokens per message plus its content's."""

    def __call__(self, text, add_special_tokens=True, return_offsets_mapping=False):
        offs = [(0, 0)] * add_special_tokens
        for i, ch in enumerate(text):
            if ch != " ":  # spaces are no token (as a whitespace pre-tokenizer drops them)
                offs += [(i, i + 1), (i + 1, i + 1)] if ch == "#" else [(i, i + 1)]
        return {"offset_mapping": offs}

    all_special_tokens, added_tokens_decoder = [], {}  # no control tokens

    def apply_chat_template(self, messages, tokenize=True, add_generation_prompt=False, return_dict=False):
        if not tokenize:
            return "".join(m["content"] for m in messages)
        size = sum(2 + len(m["content"]) + m["content"].count("@") for m in messages)
        return [0] * (size + add_generation_prompt)


def test_fit_re_measures_the_prompt_at_most_four_times():
    tok, c = CharTok(), assistant("ok")
    # the excess is all '#': each cut removes half of it, so the cuts go 4, 2, 1, 1 (fits at the
    # 4th measure) or 8, 4, 2, 1 (still over at the 4th: the fallback keeps MIN_PROMPT of the prompt)
    for hashes, outcome, left in ((4, t.PROMPT, "y" * 40), (8, t.COMPLETION, "y" * t.MIN_PROMPT)):
        p = user("#" * hashes + "y" * 40)
        budget = t._n(tok, p + c) - hashes
        assert t.fit(tok, p, [c], budget + t.MARGIN) == (user(left), [c], outcome)


def test_fit_keeps_a_prompt_of_exactly_min_prompt_tokens_and_a_short_one_whole():
    tok, c = CharTok(), assistant("ok")
    p = user("x" * 30 + "y" * t.MIN_PROMPT)
    budget = t._n(tok, p + c) - 30  # the cut leaves exactly MIN_PROMPT characters
    assert t.fit(tok, p, [c], budget + t.MARGIN) == (user("y" * t.MIN_PROMPT), [c], t.PROMPT)
    short, long_ = user("hello"), assistant("z" * 50)
    budget = t._n(tok, short + long_) - 20
    # the prompt loses nothing; the completion the 20 tokens over
    assert t.fit(tok, short, [long_], budget + t.MARGIN) == (short, [assistant("z" * 30)], t.COMPLETION)


def test_fit_shortens_the_completion_two_tokens_at_a_time_when_the_cut_grows_it():
    tok, p, c = CharTok(), user("hi"), assistant("@@@" + "c" * 40)
    budget = t._n(tok, p + t._with(c, "")) + 10  # room for 10 completion tokens
    # cut to 10 offsets: "@@@ccccccc" counts 13; to 8: 11; to 6: "@@@ccc", 9
    assert t.fit(tok, p, [c], budget + t.MARGIN) == (p, [assistant("@@@ccc")], t.COMPLETION)


def test_fit_prompt_cuts_at_most_four_times_and_only_the_last_message():
    tok = CharTok()
    head = [{"role": "system", "content": "s"}, {"role": "user", "content": "earlier"}, *assistant("reply")]
    # cuts of 8, 4, 2, 1 ... : 8 '#' fit after the 4th; 16 are one over after it, and it stops there
    for hashes, left in ((8, "y" * 40), (16, "#" + "y" * 40)):
        messages = head + user("#" * hashes + "y" * 40)
        out, cut = t.fit_prompt(tok, messages, t._n(tok, messages, True) - hashes)
        assert cut and out == head + user(left)


def test_fit_rows_sft_splits_off_only_the_last_message():
    tok = CharTok()
    sft = {"id": "s", "messages": [{"role": "system", "content": "s"}, *user("x" * 30), *assistant("ok")]}
    budget = t._n(tok, sft["messages"]) - 5
    (row,), counts = t.fit_rows(tok, [sft], "sft", budget + t.MARGIN)
    assert row["messages"] == [{"role": "system", "content": "s"}, *user("x" * 25), *assistant("ok")]
    assert counts[t.PROMPT] == 1 and counts["tokens"] == budget


def test_keeping_every_token_keeps_the_characters_outside_them():
    tok = CharTok()
    assert t.cut_right(tok, "ab ", 2) == "ab " and t.cut_right(tok, "ab ", 1) == "a"
