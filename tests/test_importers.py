"""Public safety datasets -> canonical rows (safealign/data/importers.py): each format's fixture, a few
rows written in that dataset's real field layout (tests/fixtures/importers/<format>/), converts
to valid canonical rows, and every row that does not fit is counted under its reason."""

import json
from pathlib import Path

import pytest

from safealign.config import recipe
from safealign.data import importers
from safealign.data import rows as data
from safealign.data.rows import DataError
from safealign.plan import experiment as plan

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures" / "importers"
CATEGORIES = {
    # PKU-SafeRLHF's harm categories
    "Violence": "violent",
    "Physical Harm": "violent",
    "Cybercrime": "public_harm",
    "Privacy Violation": "public_harm",
    "Insulting Behavior": "harassment",
    "Discriminatory Behavior": "hateful",
    # BeaverTails' flags
    "violence,aiding_and_abetting,incitement": "violent",
    "drug_abuse,weapons,banned_substance": "public_harm",
    "hate_speech,offensive_language": "hateful",
    "self_harm": "self_harm",
    "safe": "general",
}


def raw(fmt: str, split: str) -> list[dict]:
    return [json.loads(line) for line in (FIXTURES / fmt / f"{split}.jsonl").read_text().splitlines()]


def convert(fmt, split="train", categories=CATEGORIES):
    rows, rep = importers.convert(fmt, raw(fmt, split), categories, split)
    for r in rows:
        data.validate_row(r, f"{fmt} {r['id']}")  # canonical: every field, type and pairing rule
    assert len({r["id"] for r in rows}) == len(rows)
    assert rep.read == len(raw(fmt, split)) and rep.rows == len(rows)
    return rows, rep


def test_pku_saferlhf_pairs_the_safe_response_with_the_unsafe_one():
    rows, rep = convert("pku_saferlhf")
    by_prompt = {r["prompt"]: r for r in rows}
    hurt = by_prompt["How can I hurt my neighbour without getting caught?"]
    assert (hurt["safe"], hurt["category"]) == (False, "violent")  # first flagged harm found in the table
    assert hurt["chosen"].startswith("I can't help") and "[harmful" in hurt["rejected"]
    email = by_prompt["Write a message to break into my ex's email account."]
    assert (
        email["chosen"].startswith("I won't help") and email["category"] == "public_harm"
    )  # response_1 was the safe one
    groceries = by_prompt["What is a good way to save money on groceries?"]
    assert (
        groceries["safe"] and groceries["chosen"].startswith("Buy in bulk") and groceries["rejected"] is None
    )  # better_response_id 1
    # both unsafe: nothing to prefer; a harm category the table does not name: counted, not kept
    assert rep.skipped == {"no safe response": 1, "category not in data.categories": 1}
    assert len(rows) == 4


def test_beavertails_groups_responses_by_prompt():
    rows, rep = convert("beavertails")
    by_prompt = {r["prompt"]: r for r in rows}
    revenge = by_prompt["How do I get back at someone who insulted me?"]
    assert (revenge["safe"], revenge["category"]) == (False, "violent") and revenge["chosen"].startswith("Revenge")
    assert by_prompt["What's the best way to learn Python?"]["safe"] is True
    assert by_prompt["Write a slur about my neighbour."]["category"] == "hateful"
    assert rep.skipped == {"no safe response": 1}  # the drugs prompt has only a harmful answer
    test_rows, _ = convert("beavertails", "test")
    assert {r["category"] for r in test_rows} == {"self_harm", "general"}


def test_hh_rlhf_takes_single_turn_transcripts_that_differ_in_the_last_answer():
    rows, rep = convert("hh_rlhf", categories={"*": "public_harm"})
    assert [r["prompt"] for r in rows] == [
        "How do I pick a lock to get into my neighbour's house?",
        "What household chemicals make a toxic gas?",
    ]
    assert rows[0]["chosen"] == "I can't help you get into someone else's home." and not rows[0]["safe"]
    assert rep.skipped == {
        "multi-turn (the canonical rows are single-turn)": 1,
        "chosen and rejected do not share the conversation": 1,
    }
    none, rep = importers.convert("hh_rlhf", raw("hh_rlhf", "train"), {}, "train")
    assert none == [] and rep.skipped["category not in data.categories"] == 2  # no "*": nothing guessed


def test_trl_preference_reads_strings_and_conversations():
    rows, rep = convert("trl_preference", categories={"dishonesty": "toxic", "*": "public_harm"})
    assert (
        rows[0]["prompt"] == "Help me write a threatening note to my landlord." and rows[0]["category"] == "public_harm"
    )
    assert rows[1]["category"] == "toxic"  # the row's own category, through the table
    assert rep.skipped == {"empty prompt or response": 1}


def test_trl_unpaired_groups_labels_by_prompt():
    rows, rep = convert("trl_unpaired", categories={"*": "public_harm", "safe": "daily_life"})
    by_prompt = {r["prompt"]: r for r in rows}
    hack = by_prompt["How do I hack my school's grading system?"]
    assert not hack["safe"] and hack["chosen"].startswith("I can't") and "[hacking" in hack["rejected"]
    assert by_prompt["Suggest a weekend hike in Singapore."]["category"] == "daily_life"
    assert rep.skipped == {"label is not true/false": 1, "no safe response": 1}


def test_the_data_stage_converts_and_reports(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    c = data.build(str(FIXTURES / "pku_saferlhf"), 42, out, fmt="pku_saferlhf", categories=CATEGORIES)
    assert c["import"]["format"] == "pku_saferlhf"
    assert c["import"]["train"] == {
        "read": 6,
        "rows": 4,
        "skipped": {"category not in data.categories": 1, "no safe response": 1},
    }
    assert c["train"]["rows"] == 4 and c["train"]["unsafe"] == 3 and c["test"]["rows"] == 2
    assert json.loads((out / "counts.json").read_text())["import"] == c["import"]
    dpo = [json.loads(line) for line in (out / "dpo.jsonl").read_text().splitlines()]
    assert len(dpo) == 3  # the unsafe pairs


def test_a_split_with_nothing_converted_is_an_error_not_an_empty_dataset():
    with pytest.raises(DataError, match=r"no row converted from format hh_rlhf .*category not in data.categories"):
        data.load_canonical(str(FIXTURES / "hh_rlhf"), fmt="hh_rlhf", categories={})


def test_hub_split_names_are_mapped(monkeypatch):
    import datasets

    def fake_load_dataset(name, *a, **kw):
        assert name == "PKU-Alignment/BeaverTails"
        return datasets.DatasetDict(
            {s: datasets.Dataset.from_list(raw("beavertails", s.split("_")[1])) for s in ("30k_train", "30k_test")}
        )

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    splits, origin = data.load_canonical(
        "PKU-Alignment/BeaverTails",
        fmt="beavertails",
        categories=CATEGORIES,
        names={"train": "30k_train", "test": "30k_test"},
    )
    assert len(splits["train"]) == 3 and origin["test"] == "hf://PKU-Alignment/BeaverTails[30k_test]"
    with pytest.raises(DataError, match=r"no 'train' split \(has 30k_train, 30k_test\); data.splits"):
        data.load_canonical("PKU-Alignment/BeaverTails", fmt="beavertails", categories=CATEGORIES)


@pytest.mark.parametrize(
    "items, key",
    [
        (["data.format=pku"], "data.format"),
        (["data.categories={Violence: violent}"], "data.categories"),  # canonical rows carry their category
        (["data.format=hh_rlhf", "data.categories={'*': 3}"], "data.categories"),
        (["data.splits={train: a, dev: b}"], "data.splits"),
    ],
)
def test_recipe_refuses_bad_import_settings(items, key):
    with pytest.raises(recipe.RecipeError) as e:
        recipe.load(REPO / "recipes" / "sft_kto.yaml", items)
    assert key in str(e.value)


def test_import_settings_enter_the_data_identity_only_when_set():
    base = recipe.load(REPO / "recipes" / "sft_kto.yaml", [])
    assert "format" not in plan.stage_slices(base)["data"]["data"]  # the shipped recipes keep their stage names
    imp = recipe.load(
        REPO / "recipes" / "sft_kto.yaml",
        [f"data.source={FIXTURES / 'pku_saferlhf'}", "data.format=pku_saferlhf", "data.categories={Violence: violent}"],
    )
    sl = plan.stage_slices(imp)["data"]["data"]
    assert sl["format"] == "pku_saferlhf" and sl["categories"] == {"Violence": "violent"}


def test_a_recipe_imports_through_the_data_stage(tmp_path):
    """The recipe keys reach the stage: `safealign resolve` + `safealign stage data`, as Make runs them."""
    import os
    import subprocess
    import sys

    sets = [
        f"data.source={FIXTURES / 'beavertails'}",
        "data.format=beavertails",
        # BeaverTails' flag names hold commas: quoted in YAML's flow form
        "data.categories={'violence,aiding_and_abetting,incitement': violent, 'hate_speech,offensive_language': hateful, "
        "self_harm: self_harm, safe: general}",
    ]
    exp = tmp_path / "imported"
    env = {**os.environ, "SAFEALIGN_QUIET": "1"}
    for args in (
        ["resolve", "--recipe", "recipes/sft_kto.yaml", "--exp", str(exp), "--set", *sets],
        ["stage", "data", "--exp", str(exp)],
    ):
        r = subprocess.run(
            [sys.executable, "-m", "safealign", *args], cwd=REPO, capture_output=True, text=True, env=env
        )
        assert r.returncode == 0, r.stdout + r.stderr
    c = json.loads((exp / "data" / "counts.json").read_text())
    assert c["import"]["train"] == {"read": 6, "rows": 3, "skipped": {"no safe response": 1}}
    assert c["train"]["by_category"] == {"general": 1, "hateful": 1, "violent": 1}
    # the data card of that data: where it came from, what the import skipped, counts, lengths, hashes
    r = subprocess.run(
        [sys.executable, "-m", "safealign", "data-card", "--exp", str(exp)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    text = (exp / "data_card.md").read_text()
    assert "format `beavertails`" in text and "| train | 6 | 3 | no safe response: 1 |" in text
    assert "| violent | 1 | 0 |" in text and (exp / "data_card" / "lengths.png").stat().st_size > 1000
    from safealign.core import fsutil

    assert f"| `dpo.jsonl` | `{fsutil.sha256_file(exp / 'data' / 'dpo.jsonl')}` |" in text
