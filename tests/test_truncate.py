"""One truncation policy (safealign/models/truncate.py) on the real tiny-local tokenizer and chat template."""

import pytest
from conftest import REPO

from safealign.models import load as models
from safealign.models import truncate


@pytest.fixture(scope="module")
def tok():
    path = REPO / ".cache" / "models" / "tiny-local"
    if not (path / ".done").exists():
        pytest.skip("tiny-local not built yet (make tiny-model)")
    return models.load_tokenizer(str(path))


def n(tok, messages):
    return len(tok.apply_chat_template(messages, tokenize=True, return_dict=False))


def user(t):
    return [{"role": "user", "content": t}]


def assistant(t):
    return [{"role": "assistant", "content": t}]


def test_short_rows_are_untouched(tok):
    rows = [{"id": "a", "prompt": user("hello"), "completion": assistant("hi there"), "label": True}]
    out, counts = truncate.fit_rows(tok, rows, "kto", 256)
    assert out == rows and counts[truncate.KEEP] == 1


def test_200k_character_prompt_keeps_its_completion_and_its_end(tok):
    prompt = "start " + "how to do this in Singapore " * 7000 + "THE END OF THE QUESTION"
    rows = [{"id": "long", "messages": user(prompt) + assistant("I cannot help with that.")}]
    (row,), counts = truncate.fit_rows(tok, rows, "sft", 256)
    tokens = counts.pop("tokens")
    assert counts == {
        truncate.KEEP: 0,
        truncate.PROMPT: 1,
        truncate.COMPLETION: 0,
        truncate.DROPPED: 0,
        truncate.CONTROL: 0,
        "refused": [],
    }
    assert tokens == n(tok, row["messages"])  # what the trainer sees, after the cut
    assert row["messages"][-1]["content"] == "I cannot help with that."
    kept = row["messages"][0]["content"]
    assert kept.endswith("THE END OF THE QUESTION") and not kept.startswith("start") and len(kept) < 2000
    assert n(tok, row["messages"]) <= 256


def test_dpo_fits_the_longer_of_chosen_and_rejected(tok):
    rows = [{"id": "d", "prompt": user("q " * 300), "chosen": assistant("no"), "rejected": assistant("sure " * 100)}]
    (row,), counts = truncate.fit_rows(tok, rows, "dpo", 200)
    assert counts[truncate.PROMPT] == 1 and row["rejected"] == rows[0]["rejected"]
    assert max(n(tok, row["prompt"] + row[k]) for k in ("chosen", "rejected")) <= 200
    # a pair is two sequences, each with the prompt: the speed figures count both
    assert counts["tokens"] == sum(n(tok, row["prompt"] + row[k]) for k in ("chosen", "rejected"))


def test_overlong_completion_is_cut_from_its_end(tok):
    rows = [{"id": "c", "prompt": user("tell me"), "completion": assistant("BEGIN " + "lah " * 3000), "label": True}]
    (row,), counts = truncate.fit_rows(tok, rows, "kto", 128)
    assert counts[truncate.COMPLETION] == 1 and row["completion"][0]["content"].startswith("BEGIN")
    assert n(tok, row["prompt"] + row["completion"]) <= 128


def test_generation_prompt_is_cut_from_the_left(tok):
    msgs, cut = truncate.fit_prompt(tok, user("a " * 5000 + "LAST WORDS"), 100)
    assert cut and msgs[0]["content"].endswith("LAST WORDS")
    assert len(tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True, return_dict=False)) <= 100
    assert truncate.fit_prompt(tok, user("short"), 100) == (user("short"), False)
