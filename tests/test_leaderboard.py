"""Leaderboard: normalisation against hand-computed values, task grouping, offline fixtures,
MATH scoring through lm-eval's own task code, and errors raised before any model loads."""

import importlib.util
import json
import subprocess
import sys

import pytest

from safealign import REPO  # noqa: E402
from safealign.config import eval as eval_cfg
from safealign.config import recipe
from safealign.eval import leaderboard as lb
from safealign.eval.leaderboard import LeaderboardError, normalise, normalise_mc


def test_normalise_mc_hand_values():
    assert normalise_mc(0.6, 4) == pytest.approx(46.6667, abs=1e-4)  # the leaderboard docs' GPQA example
    assert normalise_mc(0.2, 4) == 0.0  # below the random baseline: clipped
    assert normalise_mc(0.5, 2) == 0.0
    assert normalise_mc(1.0, 10) == pytest.approx(100.0)
    assert normalise_mc(0.28, 10) == pytest.approx(20.0)


def test_bbh_and_musr_normalise_each_subtask_with_its_own_k():
    res = {
        "leaderboard_bbh": {"acc_norm,none": 0.6},
        "leaderboard_bbh_boolean_expressions": {"acc_norm,none": 0.75},  # k=2: 50
        "leaderboard_bbh_date_understanding": {"acc_norm,none": 0.5},
    }  # k=6: (0.5-1/6)/(5/6) = 40
    out = normalise("bbh", res)
    assert out["subtasks"]["boolean_expressions"]["normalised"] == pytest.approx(50.0)
    assert out["subtasks"]["date_understanding"]["normalised"] == pytest.approx(40.0)
    assert out["normalised"] == pytest.approx(45.0) and out["raw"] == 0.6
    musr = {
        "leaderboard_musr_murder_mysteries": {"acc_norm,none": 0.7},  # k=2: 40
        "leaderboard_musr_object_placements": {"acc_norm,none": 0.4},  # k=5: 25
        "leaderboard_musr_team_allocation": {"acc_norm,none": 0.6},
    }  # k=3: 40
    assert normalise("musr", musr)["normalised"] == pytest.approx(35.0)


def test_single_k_and_generative_families():
    res = {
        "leaderboard_gpqa": {"acc_norm,none": 0.6},
        "leaderboard_mmlu_pro": {"acc,none": 0.28},
        "leaderboard_math_hard": {"exact_match,none": 0.05},
        "leaderboard_ifeval": {"prompt_level_strict_acc,none": 0.4, "inst_level_strict_acc,none": 0.5},
    }
    t = lb.table(res, ["gpqa", "mmlu_pro", "math", "ifeval"])
    f = t["families"]
    assert f["gpqa"]["normalised"] == pytest.approx(46.6667, abs=1e-4)
    assert f["mmlu_pro"]["normalised"] == pytest.approx(20.0)
    assert f["math"]["normalised"] == pytest.approx(5.0)
    assert f["ifeval"]["normalised"] == pytest.approx(45.0)
    assert t["average"] == pytest.approx((46.6667 + 20 + 5 + 45) / 4, abs=1e-4)
    with pytest.raises(LeaderboardError, match="no acc_norm for leaderboard_gpqa"):
        normalise("gpqa", {})


def test_each_family_returns_exactly_its_fields():
    res = {
        "leaderboard_gpqa": {"acc_norm,none": 0.625},
        "leaderboard_mmlu_pro": {"acc,none": 0.325},
        "leaderboard_math_hard": {"exact_match,none": 0.125},
        "leaderboard_ifeval": {"prompt_level_strict_acc,none": 0.25, "inst_level_strict_acc,none": 0.75},
    }
    assert normalise("gpqa", res) == {"raw": 0.625, "normalised": pytest.approx(50.0), "k": 4}
    assert normalise("mmlu_pro", res) == {"raw": 0.325, "normalised": pytest.approx(25.0), "k": 10}
    assert normalise("math", res) == {"raw": 0.125, "normalised": 12.5}
    # IFEval: the mean of the prompt-level and instruction-level strict accuracies (unequal here)
    assert normalise("ifeval", res) == {
        "raw": 0.5,
        "normalised": 50.0,
        "prompt_level_strict_acc": 0.25,
        "inst_level_strict_acc": 0.75,
    }


def test_bbh_without_its_group_score_takes_the_subtasks_mean_raw():
    res = {
        "leaderboard_bbh_boolean_expressions": {"acc_norm,none": 0.75},  # k=2
        "leaderboard_bbh_date_understanding": {"acc_norm,none": 0.5},  # k=6
        "leaderboard_bbh_snarks": {"acc_norm,none": 0.25},  # k=2, below chance: 0
    }
    out = normalise("bbh", res)
    assert out["raw"] == pytest.approx(0.5) and out["normalised"] == pytest.approx((50.0 + 40.0 + 0.0) / 3)
    assert out["subtasks"]["date_understanding"] == {"raw": 0.5, "k": 6, "normalised": pytest.approx(40.0)}
    assert sorted(out["subtasks"]) == ["boolean_expressions", "date_understanding", "snarks"]


def test_normalise_and_table_edge_cases():
    assert normalise_mc(0.25, 4) == 0.0  # exactly the random baseline
    with pytest.raises(LeaderboardError, match="no leaderboard_musr subtasks"):
        normalise("musr", {"leaderboard_musr": {"acc_norm,none": 0.5}})
    assert lb.table({}, []) == {"families": {}, "average": None}


def test_choice_counts_match_lm_eval_task_definitions():
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda *a: None)
    for name, k in lb.K_BBH.items():
        cfg = yaml.load((lb.lm_eval_tasks_dir() / "bbh_mc" / f"{name}.yaml").read_text(), Loader=Loader)
        assert len(cfg["doc_to_choice"]) == k, name
    assert set(lb.K_BBH) == {p.stem for p in (lb.lm_eval_tasks_dir() / "bbh_mc").glob("*.yaml")} - {"_leaderboard_bbh"}


def test_families_with_equal_settings_share_one_invocation():
    r = recipe.load(REPO / "recipes" / "sft_kto.yaml")
    groups = lb.invocations(r.eval.leaderboard.tasks)
    assert [g["families"] for g in groups] == [["ifeval", "bbh", "gpqa", "musr", "mmlu_pro"], ["math"]]
    assert groups[0]["settings"]["apply_chat_template"] and not groups[1]["settings"]["apply_chat_template"]
    r = recipe.load(
        REPO / "recipes" / "sft_kto.yaml",
        ["eval.leaderboard.tasks.bbh.batch_size=2", "eval.leaderboard.tasks.gpqa=null"],
    )
    fams = [g["families"] for g in lb.invocations(r.eval.leaderboard.tasks)]
    assert fams == [["ifeval", "musr", "mmlu_pro"], ["bbh"], ["math"]]
    # a backend per family: generative families on vllm form their own call (and model load)
    r = recipe.load(REPO / "recipes" / "sft_kto.yaml", ["eval.leaderboard.tasks.ifeval.backend=vllm"])
    groups = lb.invocations(r.eval.leaderboard.tasks, r.eval.leaderboard.backend)
    assert [(g["families"], g["settings"]["backend"]) for g in groups] == [
        (["ifeval"], "vllm"),
        (["bbh", "gpqa", "musr", "mmlu_pro"], "hf"),
        (["math"], "hf"),
    ]
    with pytest.raises(recipe.RecipeError, match=r"tasks.math.backend: expected hf, vllm, auto or null"):
        recipe.load(REPO / "recipes" / "sft_kto.yaml", ["eval.leaderboard.tasks.math.backend=tgi"])


def test_fixture_overrides_point_lm_eval_tasks_at_the_fixtures(tmp_path):
    from lm_eval.tasks import TaskManager

    inc = lb.fixture_overrides(tmp_path / "tasks", list(lb.TASK_FAMILIES))
    tm = TaskManager(include_path=str(inc))
    tasks = tm.load_task_or_group(["leaderboard_bbh_navigate", "leaderboard_musr_team_allocation"])
    for name, task in tasks.items():
        assert str(eval_cfg.FIXTURES) in task.config.dataset_path
        assert len(list(task.eval_docs)) >= 1, name
    n_yaml = len(list(inc.glob("*.yaml")))
    assert n_yaml == 24 + 3 + 7 + 1 + 3 + 1  # every leaderboard task, groups left to lm-eval


def test_an_edited_fixture_is_read_as_edited_and_cached_in_the_project(tmp_path, monkeypatch):
    """datasets' own cache names a local folder's build by the folder alone: an edited fixture
    used to be read as first built, from ~/.cache/huggingface."""
    import shutil

    from lm_eval.tasks import TaskManager

    monkeypatch.setenv("SAFEALIGN_CACHE", str(tmp_path / "cache"))
    fixtures = tmp_path / "fixtures"
    shutil.copytree(eval_cfg.FIXTURES / "TAUR-Lab" / "MuSR", fixtures / "TAUR-Lab" / "MuSR")
    rows_file = fixtures / "TAUR-Lab" / "MuSR" / "default" / "team_allocation.jsonl"

    def narratives(tasks_dir):
        inc = lb.fixture_overrides(tasks_dir, ["musr"], fixtures)
        task = TaskManager(include_path=str(inc)).load_task_or_group(["leaderboard_musr_team_allocation"])
        return [d["narrative"] for d in next(iter(task.values())).eval_docs]

    first = narratives(tmp_path / "a")
    rows = [json.loads(line) for line in rows_file.read_text().splitlines()]
    rows[0]["narrative"] = "An edited narrative."
    rows_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert narratives(tmp_path / "b") == ["An edited narrative."] + first[1:]
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "cache" / "datasets").iterdir()) == ["MuSR", "MuSR"]


def test_fixtures_are_what_the_generator_writes():
    r = subprocess.run(
        [sys.executable, "tools/make_leaderboard_fixtures.py", "--check"], cwd=REPO, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr


def test_unreadable_fixture_fails_before_any_model_loads(tmp_path, monkeypatch):
    bad = tmp_path / "fixtures"
    src = eval_cfg.FIXTURES / "TAUR-Lab" / "MuSR"
    (bad / "TAUR-Lab" / "MuSR" / "default").mkdir(parents=True)
    (bad / "TAUR-Lab" / "MuSR" / "README.md").write_text((src / "README.md").read_text())
    for f in ("murder_mysteries", "object_placements"):
        (bad / "TAUR-Lab" / "MuSR" / "default" / f"{f}.jsonl").write_text((src / "default" / f"{f}.jsonl").read_text())
    (bad / "TAUR-Lab" / "MuSR" / "default" / "team_allocation.jsonl").write_text('{"narrative": "x"}\n{oops\n')
    monkeypatch.setattr(eval_cfg, "FIXTURES", bad)
    monkeypatch.setattr(lb, "load_lm", lambda *a, **k: pytest.fail("a model was loaded"))
    only_musr = [f"eval.leaderboard.tasks.{f}=null" for f in ("ifeval", "bbh", "math", "gpqa", "mmlu_pro")]
    r = recipe.load(REPO / "recipes" / "sft_kto.yaml", only_musr)
    with pytest.raises(LeaderboardError, match=r"team_allocation.jsonl:2: not valid JSON"):
        lb.run("unused-model", r.eval.leaderboard, tmp_path / "out", seed=0)
    (bad / "TAUR-Lab" / "MuSR" / "README.md").unlink()
    with pytest.raises(LeaderboardError, match=r"MuSR: no fixture here"):
        lb.run("unused-model", r.eval.leaderboard, tmp_path / "out2", seed=0)


@pytest.mark.parametrize("sets", [["eval.leaderboard.backend=vllm"], ["eval.leaderboard.tasks.math.backend=vllm"]])
def test_vllm_backend_without_vllm_is_refused_before_loading(tmp_path, monkeypatch, sets):
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here")
    monkeypatch.setattr(lb, "load_lm", lambda *a, **k: pytest.fail("a model was loaded"))
    r = recipe.load(REPO / "recipes" / "sft_kto.yaml", sets)
    with pytest.raises(LeaderboardError, match="vllm is not installed"):
        lb.run("unused-model", r.eval.leaderboard, tmp_path, seed=0)


def _math_utils():
    path = lb.lm_eval_tasks_dir() / "math" / "utils.py"
    spec = importlib.util.spec_from_file_location("lb_math_utils", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_a_correct_math_answer_scores_one_with_math_verify():
    m = _math_utils()
    doc = {"problem": "Compute $3 \\times 8$.", "solution": "We have $3 \\times 8 = \\boxed{24}$.", "answer": "24"}
    right = m.process_results(doc, ["Final Answer: The final answer is $24$. I hope it is correct."])
    assert right["exact_match"] == 1
    assert m.process_results(doc, ["Final Answer: The final answer is $25$. I hope it is correct."])["exact_match"] == 0
    # An equivalent form: math-verify (exact_match, reported) scores it; the sympy path
    # (exact_match_original, not reported) needs antlr4 4.11 and silently scores 0 here.
    equivalent = m.process_results(doc, ["So the answer is $\\boxed{\\frac{48}{2}}$."])
    assert equivalent["exact_match"] == 1 and equivalent["exact_match_original"] == 0


def test_ifeval_sentence_splitting_needs_no_download(tmp_path, monkeypatch):
    import nltk

    from safealign.eval import nltkdata

    monkeypatch.setenv("SAFEALIGN_CACHE", str(tmp_path))
    monkeypatch.setattr(nltk, "download", lambda *a, **k: pytest.fail("NLTK tried to download"))
    root = nltkdata.ensure()
    assert nltk.data.find("tokenizers/punkt_tab/english/")
    assert str(root).startswith(str(tmp_path))
    assert nltk.sent_tokenize("Mr. Tan took the MRT. It was late! Was it?") == [
        "Mr. Tan took the MRT.",
        "It was late!",
        "Was it?",
    ]
    from lm_eval.tasks.leaderboard.ifeval import instructions

    check = instructions.NumberOfSentences("number_sentences")
    check.build_description(num_sentences=3, relation="at least")
    assert check.check_following("One. Two. Three.") and not check.check_following("One. Two.")


def test_results_of_a_real_lm_eval_run_are_normalised():
    """lm-eval's own results (a tiny-local run on the fixtures), normalised by hand below."""
    res = json.loads((REPO / "tests" / "fixtures" / "lm_eval_results.json").read_text())["results"]
    t = lb.table(res, ["ifeval", "bbh", "math", "gpqa", "musr", "mmlu_pro"])
    f = t["families"]
    # MuSR: murder 1.0 (k=2) -> 100; object placements 1/3 (k=5) -> (1/3-1/5)/(4/5) = 16.67; team 1.0 -> 100
    assert f["musr"]["normalised"] == pytest.approx((100 + 100 / 6 + 100) / 3, abs=1e-6)
    assert f["gpqa"]["normalised"] == pytest.approx((1 / 3 - 1 / 4) / (3 / 4) * 100, abs=1e-6)  # 11.11
    assert f["mmlu_pro"]["normalised"] == 0.0  # 0.1 = the k=10 baseline
    assert f["ifeval"]["normalised"] == pytest.approx((0.125 + 1 / 9) / 2 * 100, abs=1e-6)
    assert f["math"]["normalised"] == 0.0
    bbh = [
        max(0.0, (res[f"leaderboard_bbh_{n}"]["acc_norm,none"] - 1 / k) / (1 - 1 / k)) * 100
        for n, k in lb.K_BBH.items()
    ]
    assert f["bbh"]["normalised"] == pytest.approx(sum(bbh) / 24, abs=1e-6)
    assert f["bbh"]["raw"] == res["leaderboard_bbh"]["acc_norm,none"]


def test_auto_backend_is_vllm_only_where_installed_with_a_gpu(monkeypatch):
    """A profile asks for `backend: auto` (vLLM for the generative families and the safety answers);
    without vLLM or a GPU it is transformers, as here."""
    import torch

    from safealign.models import generation

    assert generation.resolve_backend("hf") == "hf" and generation.resolve_backend("vllm") == "vllm"
    has = importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()
    assert generation.resolve_backend("auto") == ("vllm" if has else "hf")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "vllm" else None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert generation.resolve_backend("auto") == "vllm"


def test_each_invocation_gets_its_batch_size_including_auto():
    import types

    from safealign.eval import leaderboard

    lm = types.SimpleNamespace(batch_size_per_gpu=8, batch_schedule=1)
    leaderboard.set_batch_size(lm, "auto:4")
    assert (lm.batch_size_per_gpu, lm.batch_schedule) == ("auto", 4.0)
    leaderboard.set_batch_size(lm, 16)
    assert lm.batch_size_per_gpu == 16
