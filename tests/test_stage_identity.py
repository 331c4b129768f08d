"""The stage identity (safealign/plan/experiment.py): each slice's exact fields and how each folder
name is derived from them; tests/test_kinds.py pins the shipped recipes' folder names."""

import hashlib
import json

from conftest import REPO

from safealign.config import eval as eval_cfg
from safealign.config import recipe
from safealign.core import fsutil
from safealign.plan import experiment as plan

SFT_KTO = recipe.load(REPO / "recipes" / "sft_kto.yaml")


def sha12(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


def test_hash_is_twelve_hex_of_the_key_sorted_json():
    assert plan._hash({"b": 1, "a": [2, 3]}) == sha12({"a": [2, 3], "b": 1})
    assert plan._hash({"b": 1, "a": 2}) == plan._hash({"a": 2, "b": 1})  # key order does not count
    assert len(plan._hash({})) == 12 and plan._hash(1) != plan._hash(2)


def test_data_identity_hashes_the_local_files_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the source is found under the checkout, not the current folder
    local = REPO / SFT_KTO.data.source
    assert plan.data_identity(SFT_KTO) == {
        "source": SFT_KTO.data.source,
        "sha256": {s: fsutil.sha256_file(local / f"{s}.jsonl") for s in ("train", "test")},
    }
    hub = recipe.parse("stages: [sft]\ndata: {source: org/some-dataset}\n")
    assert plan.data_identity(hub) == {"source": "org/some-dataset"}


def test_training_slices_chain_through_their_inputs():
    p = plan.plan(SFT_KTO)
    data = p["data"]["slice"]
    assert data == {
        "kind": "data",
        "seed": SFT_KTO.seed,
        "data": recipe.identity(SFT_KTO.data),
        "files": plan.data_identity(SFT_KTO),
    }
    assert p["data"]["dir"] == f"data-{sha12(data)}"
    sft, kto = p["sft"]["slice"], p["kto"]["slice"]
    assert sft == {
        "kind": "sft",
        "seed": SFT_KTO.seed,
        "input": {"base_model": SFT_KTO.base_model},
        "data": sha12(data),
        "config": recipe.identity(SFT_KTO.sft),
    }
    assert kto["input"] == {"stage": p["sft"]["dir"]} and kto["data"] == sha12(data)
    assert (p["sft"]["dir"], p["kto"]["dir"]) == (f"sft-{sha12(sft)}", f"kto-{sha12(kto)}")


def test_evaluation_slices_name_their_model_judge_and_reference():
    p = plan.plan(SFT_KTO)
    data_dir = p["data"]["dir"]
    judge = p["judge"]["slice"]
    assert judge == {
        "kind": "judge",
        "seed": SFT_KTO.seed,
        "data": data_dir,
        "hard_cases": fsutil.sha256_file(eval_cfg.HARD_CASES),
        "real_answers": fsutil.sha256_file(eval_cfg.REAL_ANSWERS),
    }
    # a profile whose heads learn the real answers gets another judge (and so other safety stages)
    learning = recipe.parse("base_model: tiny-local\neval: {safety: {judge_real_answers: true}}\n")
    assert plan.plan(learning)["judge"]["slice"] == {**judge, "learn_real_answers": True}
    ev = recipe.identity(SFT_KTO.eval)
    base = p["safety-base"]["slice"]
    assert base == {
        "kind": "safety",
        "seed": SFT_KTO.seed,
        "model": {"base_model": SFT_KTO.base_model},
        "config": ev["safety"],
        "judge": p["judge"]["dir"],
        "data": data_dir,
    }
    last = SFT_KTO.stages[-1]
    aligned = p[f"safety-{last}"]["slice"]
    assert aligned == {**base, "model": {"stage": p[last]["dir"]}, "reference": p["safety-base"]["dir"]}
    board = p[f"leaderboard-{last}"]["slice"]
    assert board["kind"] == "leaderboard" and board["seed"] == SFT_KTO.seed and board["config"] == ev["leaderboard"]
    assert board["model"] == {"stage": p[last]["dir"]}
    assert set(board) == {"kind", "seed", "model", "config"} | (
        {"fixtures"} if ev["leaderboard"]["source"] == "fixtures" else set()
    )
    for name in ("judge", "safety-base", f"safety-{last}", f"leaderboard-{last}"):
        assert p[name]["dir"] == f"{p[name]['slice']['kind']}-{sha12(p[name]['slice'])}", name


def test_only_a_fixtures_leaderboard_has_the_fixtures_in_its_identity():
    p = plan.plan(SFT_KTO)
    assert p["leaderboard-base"]["slice"]["fixtures"] == plan.fixtures_identity()
    hub = plan.plan(recipe.load(REPO / "recipes" / "sft_kto.yaml", ["eval.leaderboard.source=hub"]))
    assert "fixtures" not in hub["leaderboard-base"]["slice"]
    assert hub["leaderboard-base"]["dir"] != p["leaderboard-base"]["dir"]


def test_a_model_profile_enters_the_model_stages_only():
    r = recipe.load(REPO / "recipes" / "sft_kto.yaml", ["model=toy-llama3"])
    p = plan.plan(r)
    with_profile = [k for k, v in p.items() if v["slice"].get("profile") == "toy-llama3"]
    assert sorted(with_profile) == sorted(k for k in p if k not in ("data", "judge"))


def test_generated_data_is_named_by_the_generation_stage():
    r = recipe.load(REPO / "recipes" / "gen_sft_kto.yaml")
    p = plan.plan(r)
    gen = p["gen"]["slice"]
    assert gen == plan.gen_slice(r) and gen["kind"] == "gen" and p["gen"]["dir"] == f"gen-{sha12(gen)}"
    data = p["data"]["slice"]
    assert data["files"] == {"gen": p["gen"]["dir"]}
    assert data["data"] == {k: v for k, v in recipe.identity(r.data).items() if k != "generate"}
    assert "generate" in recipe.identity(r.data)
