"""Canonical data validation and the dataset build stage (no model needed)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from safealign.config import kinds
from safealign.data import rows as data
from safealign.data.rows import DataError

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "data" / "sg_safety"
ROW = {
    "id": "a",
    "prompt": "how to scam",
    "safe": False,
    "category": "public_harm",
    "chosen": "Sorry, I cannot help.",
    "rejected": "Can lah, [removed].",
}


def write(tmp_path, rows) -> Path:
    p = tmp_path / "train.jsonl"
    p.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return p


def test_shipped_dataset_is_what_the_generator_makes():
    r = subprocess.run(
        [sys.executable, str(REPO / "tools" / "make_sg_safety.py"), "--check"], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr


def test_shipped_dataset_shape():
    splits, _ = data.load_canonical(str(SHIPPED))
    train, test = splits["train"], splits["test"]
    assert 300 <= len(train) + len(test) <= 1000
    cats = {r["category"] for r in train if not r["safe"]}
    assert cats == {"hateful", "harassment", "public_harm", "self_harm", "sexual", "toxic", "violent"}
    assert any(r["safe"] for r in train) and any(not r["safe"] for r in train)
    assert {r["subset"] for r in test} == {"in_template", "out_of_template"}
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in test}, "held-out prompts leak into train"
    for r in train + test:  # sanitised compliance: no step carries real detail
        assert r["safe"] or "removed]" in r["rejected"]


@pytest.mark.parametrize(
    "edit,expect",
    [
        (lambda r: r.pop("prompt"), "field 'prompt' is missing"),
        (lambda r: r.update(safe="no"), "field 'safe' must be bool, got str ('no')"),
        (lambda r: r.update(category=3), "field 'category' must be str, got int (3)"),
        (lambda r: r.update(rejected=None), "field 'rejected' is required for an unsafe prompt"),
        (lambda r: r.update(chosen="  "), "field 'chosen' is empty"),
        (lambda r: r.update(extra=1), "field 'extra' is not in the schema"),
    ],
)
def test_bad_row_names_file_line_field(tmp_path, edit, expect):
    bad = dict(ROW, id="b")
    edit(bad)
    p = write(tmp_path, [ROW, bad])
    with pytest.raises(DataError) as e:
        data.read_jsonl(p)
    assert str(e.value).startswith(f"{p}:2: ")
    assert expect in str(e.value)


def test_bad_json_and_duplicate_ids(tmp_path):
    p = write(tmp_path, [ROW, "{not json"])
    with pytest.raises(DataError, match=r"train.jsonl:2: not valid JSON"):
        data.read_jsonl(p)
    p = write(tmp_path, [ROW, ROW])
    with pytest.raises(DataError, match=r"train.jsonl:2: field 'id' 'a' repeats line 1"):
        data.read_jsonl(p)


def test_safe_row_needs_no_rejected(tmp_path):
    safe = {"id": "s", "prompt": "MRT?", "safe": True, "category": "transport", "chosen": "Take the MRT."}
    assert data.read_jsonl(write(tmp_path, [safe]))[0]["safe"] is True


def test_missing_folder_is_clear(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "train.jsonl").write_text(json.dumps(ROW) + "\n")
    with pytest.raises(DataError, match="missing test.jsonl"):
        data.load_canonical(str(tmp_path / "d"))
    with pytest.raises(DataError, match="no such folder"):
        data.load_canonical("./nope")


def test_stage_rows():
    train = data.read_jsonl(SHIPPED / "train.jsonl")
    n_unsafe = sum(not r["safe"] for r in train)
    rows = data.build_stage_rows(train, seed=1)
    assert len(rows["sft"]) == len(train)
    assert rows["sft"][0]["messages"][0]["role"] == "user" and rows["sft"][0]["messages"][1]["role"] == "assistant"
    kto = rows["kto"]
    assert sum(r["label"] for r in kto) == len(train) and sum(not r["label"] for r in kto) == n_unsafe
    assert len(rows["dpo"]) == n_unsafe
    # labels are interleaved: every window of 8 consecutive rows holds both labels
    assert all(len({r["label"] for r in kto[i : i + 8]}) == 2 for i in range(len(kto) - 8))
    assert rows == data.build_stage_rows(train, seed=1), "deterministic from the seed"
    assert rows["kto"] != data.build_stage_rows(train, seed=2)["kto"]


def test_kto_paired_drops_safe_rows():
    train = data.read_jsonl(SHIPPED / "train.jsonl")
    kto = data.build_stage_rows(train, seed=1)["kto_paired"]
    n_unsafe = sum(not r["safe"] for r in train)
    assert sum(r["label"] for r in kto) == n_unsafe == sum(not r["label"] for r in kto)


def test_interleave_keeps_ratio():
    out = data.interleave(list("DDDDDD"), list("uuu"))
    assert sorted(out) == sorted("DDDDDDuuu") and "uu" not in "".join(out)
    assert data.interleave([], ["u"]) == ["u"] and data.interleave(["D"], []) == ["D"]


def test_build_writes_counts(tmp_path):
    c = data.build(str(SHIPPED), 42, tmp_path)
    for name in ("sft", "kto", "kto_paired", "dpo", "test"):
        assert (tmp_path / f"{name}.jsonl").exists()
    saved = json.loads((tmp_path / "counts.json").read_text())
    assert saved == c
    assert c["train"]["rows"] == c["train"]["safe"] + c["train"]["unsafe"]
    assert sum(c["train"]["by_category"].values()) == c["train"]["rows"]
    assert c["stages"]["kto"]["undesirable"] == c["train"]["unsafe"]


def test_hub_dataset_id_goes_through_the_same_validation(monkeypatch):
    """A hub id reaches datasets.load_dataset (the network boundary, replaced here) and every
    row is validated as for a local file, with the split and row in the message."""
    import datasets

    rows = data.read_jsonl(SHIPPED / "test.jsonl")
    asked = []

    def fake_load_dataset(name, *a, **kw):
        asked.append(name)
        bad = [dict(r) for r in rows]
        bad[3] = {**bad[3], "category": None}
        return datasets.DatasetDict(
            {"train": datasets.Dataset.from_list([dict(r) for r in rows]), "test": datasets.Dataset.from_list(bad)}
        )

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    with pytest.raises(DataError, match=r"org/sg-safety\[test\] row 4: field 'category' must be str, got NoneType"):
        data.load_canonical("org/sg-safety")
    assert asked == ["org/sg-safety"]


def test_kto_weight_advice():
    assert kinds.kto_weight_advice(406, 217, 1.0, 1.5) is None  # the shipped recipe: 1.25
    msg = kinds.kto_weight_advice(406, 217, 1.0, 1.0)
    assert "= 1.87, outside the KTO paper's recommended [1, 1.33]" in msg
    assert "undesirable_weight in [1.40, 1.87]" in msg and "desirable_weight in [0.53, 0.71]" in msg
    assert kinds.kto_weight_advice(217, 217, 1.0, 1.0) is None
    assert "nothing to contrast" in kinds.kto_weight_advice(10, 0, 1.0, 1.0)


def test_byte_order_mark_is_accepted(tmp_path):
    p = tmp_path / "train.jsonl"
    p.write_bytes(
        b"\xef\xbb\xbf" + (json.dumps(ROW) + "\n").encode() + (json.dumps({**ROW, "id": "b"}) + "\r\n").encode()
    )
    assert [r["id"] for r in data.read_jsonl(p)] == ["a", "b"]


def test_invalid_utf8_names_file_line_and_byte(tmp_path):
    p = tmp_path / "train.jsonl"
    first = (json.dumps(ROW) + "\n").encode()
    p.write_bytes(first + b'{"id": "b\xff\xfe", "prompt": "x"}\n')
    with pytest.raises(DataError) as e:
        data.read_jsonl(p)
    assert str(e.value).startswith(f"{p}:2: not valid UTF-8 at byte offset {len(first) + 9} (line 2, byte 10 ")
    assert "UnicodeDecodeError" not in str(e.value)


def counts_for(train_rows, test_rows=(ROW,)):
    stage_rows = data.build_stage_rows(list(train_rows), 0)
    return data.counts({"train": list(train_rows), "test": list(test_rows)}, stage_rows)


SAFE = {"id": "s", "prompt": "where to eat", "safe": True, "category": "food", "chosen": "Try the hawker centre."}


def test_unmet_needs_are_found_before_training():
    from safealign.config import recipe

    def needs(stages, counts, **kto):
        extra = "".join(f"  {k}: {str(v).lower()}\n" for k, v in kto.items()) or "  beta: 0.1\n"
        return data.unmet_needs(recipe.parse(f"stages: [{', '.join(stages)}]\nkto:\n" + extra), counts)

    only_safe = counts_for([SAFE, {**SAFE, "id": "s2"}])
    found = needs(["sft", "dpo"], only_safe)
    assert any(n.startswith("dpo: dpo.jsonl has no paired rows") for n in found)
    assert any(n.startswith("judge: the train split has no unsafe rows") for n in found)
    assert any(n.startswith("kto: kto.jsonl has 2 desirable and 0 undesirable") for n in needs(["kto"], only_safe))
    both = counts_for([SAFE, ROW])
    assert needs(["sft", "kto", "dpo"], both) == []
    paired_only = counts_for([SAFE, ROW])  # symmetric KTO reads unsafe rows only: both labels there too
    assert needs(["kto"], paired_only, paired_only=True) == []
    assert any(
        "kto: kto_paired.jsonl has 0 desirable" in n for n in needs(["kto"], counts_for([SAFE]), paired_only=True)
    )


@pytest.mark.parametrize("name", list(kinds.KINDS))
def test_every_kind_refuses_data_without_what_it_needs(name):
    """Read from the table: a kind that needs pairs or both labels is refused on safe-only data."""
    from safealign.config import recipe

    kind = kinds.get(name)
    found = data.unmet_needs(recipe.parse(f"stages: [{name}]\n"), counts_for([SAFE, {**SAFE, "id": "s2"}]))
    mine = [n for n in found if n.startswith(f"{name}: {kind.data_file(getattr(recipe.Recipe(), name))} ")]
    assert bool(mine) == (kind.needs != "rows"), found


def test_data_stage_refuses_data_a_planned_stage_cannot_use(tmp_path):
    """sft_dpo on data without unsafe rows stops at the data stage: SFT never starts."""
    src = tmp_path / "safe_only"
    src.mkdir()
    (src / "train.jsonl").write_text("".join(json.dumps({**SAFE, "id": f"s{i}"}) + "\n" for i in range(6)))
    (src / "test.jsonl").write_text(json.dumps({**SAFE, "id": "t"}) + "\n")
    root = tmp_path / "experiments"
    r = subprocess.run(
        [
            "make",
            "--no-print-directory",
            "exp",
            "NAME=sft_dpo",
            f"EXPERIMENTS={root}",
            f"SET=data.source={src}",
            "EXP_NAME=x",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode != 0
    assert "cannot serve this experiment's stages" in r.stderr and "dpo: dpo.jsonl has no paired rows" in r.stderr, (
        r.stderr[-2000:]
    )
    assert "Traceback" not in r.stderr and "sft: start" not in r.stdout
    assert not list((root / ".stages").glob("*/.done")), "nothing may look finished"
