"""Model profiles (models/<profile>.yaml, Make's MODEL=): one argument puts a recipe on a real
model sized for real hardware; the profile is in the experiment's name, its resolved recipe and
the identity of every stage that depends on the model."""

import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from safealign.config import recipe
from safealign.core import names
from safealign.models import load as models
from safealign.plan import experiment as plan

PROFILES = recipe.profiles()
REAL = [p for p in PROFILES if not p.startswith("toy-")]
RECIPES = sorted(p.stem for p in (REPO / "recipes").glob("*.yaml"))


def load(name="sft_kto", *sets):
    return recipe.load(REPO / "recipes" / f"{name}.yaml", list(sets))


def test_the_issue_s_profiles_are_shipped():
    assert {
        "sea-lion-v2.1-8b",
        "llama-3.1-8b-instruct",
        "qwen2.5-7b-instruct",
        "gemma-2-9b-it",
        "sea-lion-v2.1-8b-qlora",
    } <= set(PROFILES)
    assert {"toy-llama3", "toy-qwen2", "toy-gemma2"} <= set(PROFILES)


@pytest.mark.parametrize("profile", PROFILES)
def test_every_profile_applies_to_every_shipped_recipe(profile):
    for name in RECIPES:
        r = load(name, f"model={profile}")
        assert r.model == profile


@pytest.mark.parametrize("profile", PROFILES)
def test_every_profile_opens_with_its_command_and_names_its_hardware_and_family(profile):
    text = (REPO / "models" / f"{profile}.yaml").read_text()
    assert text.startswith(f"# make exp NAME=sft_kto MODEL={profile}")
    _, _, info = recipe.load_profile(profile, lambda p: "model")
    assert info.hardware and info.family in ("llama3", "qwen2", "gemma2")


def test_a_profile_sets_the_size_knobs_and_keeps_the_recipe_s_method():
    tiny, real = load(), load("sft_kto", "model=sea-lion-v2.1-8b")
    assert real.base_model == "aisingapore/llama3-8b-cpt-sea-lionv2.1-instruct"
    assert real.sft.learning_rate == 2e-4 and real.kto.learning_rate == 5e-6 and real.dpo.learning_rate == 5e-6
    for kind in ("sft", "kto", "dpo", "orpo", "simpo", "bco"):  # `training:` reaches every kind
        cfg = getattr(real, kind)
        assert cfg.max_length == 2048 and cfg.max_steps == -1 and cfg.num_epochs == 1
        assert cfg.gradient_checkpointing is True and cfg.attn_implementation == "auto" and cfg.liger == "auto"
    assert real.sft.sample_packing is True and real.kto.sample_packing if hasattr(real.kto, "sample_packing") else True
    assert real.eval.leaderboard.source == "hub" and real.eval.leaderboard.tasks.ifeval.max_gen_toks == 0
    assert (
        real.eval.leaderboard.tasks.ifeval.batch_size == "auto" and real.eval.leaderboard.tasks.math.backend == "auto"
    )
    assert real.eval.safety.max_new_tokens == 256 and real.eval.safety.backend == "auto"
    # the method stays the recipe's
    assert (real.stages, real.kto.beta, real.kto.undesirable_weight, real.data.source) == (
        tiny.stages,
        tiny.kto.beta,
        tiny.kto.undesirable_weight,
        tiny.data.source,
    )


def test_extending_profiles_change_only_their_delta():
    base, qlora, gemma = (
        load("sft_kto", f"model={m}") for m in ("sea-lion-v2.1-8b", "sea-lion-v2.1-8b-qlora", "gemma-2-9b-it")
    )
    assert qlora.base_model == base.base_model and qlora.sft.adapter == qlora.kto.adapter == "qlora"
    assert qlora.sft.micro_batch_size == 2 and qlora.sft.gradient_accumulation_steps == 8
    assert qlora.sft.learning_rate == base.sft.learning_rate and base.sft.adapter == "lora"
    assert gemma.sft.attn_implementation == "eager" and gemma.kto.micro_batch_size == 4
    assert gemma.base_model == "google/gemma-2-9b-it"


def test_set_overrides_the_profile_and_the_profile_overrides_the_recipe():
    r = load("sft_kto", "model=sea-lion-v2.1-8b", "kto.learning_rate=1e-5", "sft.max_length=4096")
    assert r.kto.learning_rate == 1e-5 and r.sft.max_length == 4096 and r.kto.max_length == 2048


def test_a_recipe_may_name_its_profile_and_model_set_replaces_it(tmp_path):
    (tmp_path / "base.yaml").write_text((REPO / "recipes" / "sft_kto.yaml").read_text())
    (tmp_path / "mine.yaml").write_text("extends: base\nmodel: qwen2.5-7b-instruct\n")
    assert recipe.load(tmp_path / "mine.yaml").base_model == "Qwen/Qwen2.5-7B-Instruct"
    assert recipe.load(tmp_path / "mine.yaml", ["model=gemma-2-9b-it"]).base_model == "google/gemma-2-9b-it"
    assert recipe.load(tmp_path / "mine.yaml", ["model=''"]).base_model == "tiny-local"  # empty: no profile


def test_the_profile_is_in_the_experiment_name():
    assert names.exp_name("sft_kto", ["model=sea-lion-v2.1-8b"]) == "sft_kto+model-sea-lion-v2.1-8b"
    assert names.exp_name("sft_kto", ["model=qwen2.5-7b-instruct", "kto.beta=0.2"]) == (
        "sft_kto+model-qwen2.5-7b-instruct+kto.beta-0.2"
    )


def test_make_puts_model_into_the_name_and_the_resolved_recipe(tmp_path):
    out = subprocess.run(
        ["make", "-n", "exp", "NAME=sft_kto", "MODEL=sea-lion-v2.1-8b", f"EXPERIMENTS={tmp_path}"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    # make -n still remakes the included stages.mk: the resolve ran, nothing else did
    resolved = yaml.safe_load((tmp_path / "sft_kto+model-sea-lion-v2.1-8b" / "recipe.yaml").read_text())
    assert resolved["model"] == "sea-lion-v2.1-8b" and resolved["overrides"] == ["model=sea-lion-v2.1-8b"]
    assert resolved["base_model"] == "aisingapore/llama3-8b-cpt-sea-lionv2.1-instruct"
    assert resolved["sft"]["learning_rate"] == 2e-4 and "stage sft" in out.stdout


def test_the_profile_enters_the_identity_of_every_model_dependent_stage():
    """Training and evaluation stages carry the profile; data and the judge do not depend on the
    model and stay shared across profiles."""
    p_tiny = plan.plan(load())
    # the toy-llama3 profile with SET restoring tiny-local: the same settings, only the profile differs
    p_same = plan.plan(load("sft_kto", "model=toy-llama3", "base_model=tiny-local", "health.max_degenerate=0.5"))
    for name, entry in p_same.items():
        if entry["slice"]["kind"] in ("data", "judge"):
            assert entry["dir"] == p_tiny[name]["dir"] and "profile" not in entry["slice"]
        else:
            assert entry["slice"]["profile"] == "toy-llama3" and entry["dir"] != p_tiny[name]["dir"], name


def test_new_settings_at_their_default_leave_stage_names_unchanged():
    """adapter, attn_implementation, liger and safety.backend arrived after stage names were
    published: at their defaults they are not hashed; set, they are."""
    r = load()
    assert "adapter" not in recipe.identity(r.sft) and "backend" not in recipe.identity(r.eval)["safety"]
    changed = plan.plan(load("sft_kto", "sft.attn_implementation=sdpa"))
    assert changed["sft"]["dir"] != plan.plan(r)["sft"]["dir"]
    assert changed["sft"]["slice"]["config"]["attn_implementation"] == "sdpa"


def test_profile_errors_name_the_file_the_line_and_the_key(tmp_path, monkeypatch):
    monkeypatch.setattr(recipe, "MODELS", tmp_path)
    (tmp_path / "good.yaml").write_text("hardware: x\nfamily: llama3\nbase_model: org/m\n")
    (tmp_path / "typo.yaml").write_text("base_model: org/m\ntraining:\n  lerning_rate: 1.0e-4\n")
    (tmp_path / "badvalue.yaml").write_text("base_model: org/m\ntraining:\n  attn_implementation: flash\n")
    (tmp_path / "method.yaml").write_text("base_model: org/m\nstages: [sft]\n")
    (tmp_path / "kindtypo.yaml").write_text("kto:\n  beta: -1\n")
    (tmp_path / "deep.yaml").write_text("extends: typo\n")
    (tmp_path / "fam.yaml").write_text("family: mistral\nbase_model: org/m\n")
    (tmp_path / "deeper.yaml").write_text("extends: deep\n")
    (tmp_path / "keytypo.yaml").write_text("hardware: x\nbse_model: org/m\n")  # had no did-you-mean
    (tmp_path / "route.yaml").write_text("base_model: org/m\nstudy_set:\n  - data.generate.limit=2\n  - model=other\n")
    with pytest.raises(recipe.RecipeError, match=r"SET model: no model profile .*goood.yaml \(did you mean 'good'\?\)"):
        load("sft_kto", "model=goood")
    with pytest.raises(
        recipe.RecipeError, match=r"typo.yaml:3: training.lerning_rate: unknown key \(did you mean 'learning_rate'\?\)"
    ):
        load("sft_kto", "model=typo")
    with pytest.raises(
        recipe.RecipeError, match=r"badvalue.yaml:3: (sft|kto).attn_implementation: expected one of auto, eager"
    ):
        load("sft_kto", "model=badvalue")
    with pytest.raises(
        recipe.RecipeError, match=r"method.yaml:2: stages: a profile sets the model .* belongs in the recipe"
    ):
        load("sft_kto", "model=method")
    with pytest.raises(
        recipe.RecipeError, match=r"keytypo.yaml:2: bse_model: unknown profile key \(did you mean 'base_model'\?\)"
    ):
        load("sft_kto", "model=keytypo")
    with pytest.raises(recipe.RecipeError, match=r"kindtypo.yaml:2: kto.beta: must be > 0"):
        load("sft_kto", "model=kindtypo")
    with pytest.raises(
        recipe.RecipeError, match=r"route.yaml:2: study_set: expected SET items key=value .*'model=other'"
    ):
        load("sft_kto", "model=route")
    with pytest.raises(recipe.RecipeError, match=r"deeper.yaml:1: extends: .*deep.yaml extends another profile"):
        load("sft_kto", "model=deeper")
    with pytest.raises(
        recipe.RecipeError, match=r"fam.yaml:1: family: expected one of llama3, qwen2, gemma2, got 'mistral'"
    ):
        load("sft_kto", "model=fam")
    with pytest.raises(recipe.RecipeError, match=r"SET model: expected the name of a profile"):
        load("sft_kto", "model=../etc/passwd")
    assert load("sft_kto", "model=good").base_model == "org/m"


def test_make_refuses_a_hostile_model_value():
    out = subprocess.run(["make", "-n", "exp", "NAME=sft_kto", "MODEL=x;rm"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode != 0 and "MODEL: character(s) ';' not allowed" in out.stderr


def test_toy_base_models_name_a_known_family():
    with pytest.raises(
        recipe.RecipeError,
        match=r"base_model: 'toy-mistral': toy models are toy-<family>, families: llama3, qwen2, gemma2",
    ):
        load("sft_kto", "base_model=toy-mistral")
    assert models.is_local("toy-gemma2") and plan.base_dep("toy-gemma2") == "$(SAFEALIGN_CACHE)/models/toy-gemma2/.done"
    assert plan.base_dep("tiny-local") == "$(TINY_MODEL)" and plan.base_dep("org/model") == ""


def test_runtime_resolves_auto_for_this_machine_and_for_a_gpu():
    cfg = load("sft_kto", "model=sea-lion-v2.1-8b").sft
    cpu = models.runtime(cfg, "sft", gpu=False)
    assert cpu["bf16"] is False and cpu["liger"] is False and cpu["attn_implementation"] == "sdpa"  # packing: sdpa
    gpu = models.runtime(cfg, "sft", gpu=True)
    assert gpu["bf16"] is True and gpu["attn_implementation"] in ("sdpa", "flash_attention_2")
    tiny = models.runtime(load().sft, "sft", gpu=False)
    assert tiny == {"bf16": False, "cuda": False, "attn_implementation": None, "liger": False, "qlora": False}


def test_runtime_refuses_what_this_machine_lacks_naming_the_key():
    if models.has_cuda():
        pytest.skip("a GPU machine may have flash-attn and Liger")
    with pytest.raises(models.RuntimeUnavailable, match=r"kto.attn_implementation: flash_attention_2 needs a GPU"):
        models.runtime(load("sft_kto", "kto.attn_implementation=flash_attention_2").kto, "kto")
    with pytest.raises(models.RuntimeUnavailable, match=r"sft.liger: Liger's Triton kernels need a GPU"):
        models.runtime(load("sft_kto", "sft.liger=true").sft, "sft")


def test_qlora_cannot_go_with_full_finetune():
    with pytest.raises(recipe.RecipeError, match=r"sft.adapter: qlora trains an adapter on a 4-bit base"):
        load("sft_kto", "sft.adapter=qlora", "sft.full_finetune=true")


def test_leaderboard_batch_size_auto_is_checked():
    assert (
        load("sft_kto", "eval.leaderboard.tasks.bbh.batch_size=auto:4").eval.leaderboard.tasks.bbh.batch_size
        == "auto:4"
    )
    with pytest.raises(recipe.RecipeError, match=r"tasks.bbh.batch_size: expected a number >= 1, 'auto' or 'auto:N'"):
        load("sft_kto", "eval.leaderboard.tasks.bbh.batch_size=big")


def test_profile_file_is_a_make_prerequisite_of_the_resolve(tmp_path):
    r = load("sft_kto", "model=qwen2.5-7b-instruct")
    assert plan.profile_file(r) == "models/qwen2.5-7b-instruct.yaml" and Path(REPO / plan.profile_file(r)).exists()
    mk = plan.stages_mk(r, plan.plan(r), "recipes/sft_kto.yaml", None)
    assert "PROFILE_FILE := models/qwen2.5-7b-instruct.yaml" in mk


def test_the_resolved_experiment_keeps_set_over_the_profile(tmp_path):
    """Stages read the resolved recipe, whose profile is applied already: reading it must not apply
    the profile a second time over the SET values."""
    exp = tmp_path / "e"
    plan.resolve(
        str(REPO / "recipes" / "sft_kto.yaml"),
        exp,
        ["model=sea-lion-v2.1-8b", "base_model=org/other-8b", "kto.learning_rate=1e-5"],
    )
    r = plan.Experiment(exp).recipe
    assert r.model == "sea-lion-v2.1-8b" and r.base_model == "org/other-8b" and r.kto.learning_rate == 1e-5
    assert r.sft.learning_rate == 2e-4
