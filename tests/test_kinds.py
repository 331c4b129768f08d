"""The stage-kind table (safealign/config/kinds.py): every kind renders, validates and plans from it,
and the shipped recipes keep the stage folders they had before the table existed."""

import importlib
import json

import pytest
import yaml
from conftest import REPO

from safealign.config import kinds, recipe
from safealign.plan import codedeps
from safealign.plan import experiment as plan
from safealign.train import render

SHIPPED = recipe.load(REPO / "recipes" / "sft_kto.yaml")


BEFORE = json.loads((REPO / "tests" / "fixtures" / "stage_names.json").read_text())


@pytest.mark.parametrize("name", sorted(BEFORE))
def test_shipped_recipes_keep_their_stage_folders(name):
    """Existing stores stay valid: the folder names recorded before the table existed (tests/fixtures).
    The leaderboard stages' names follow the fixture files, part of their identity: re-recorded
    when the fixtures were cut to one row per BBH subtask (issue #25)."""
    now = {k: v["dir"] for k, v in plan.plan(recipe.load(REPO / "recipes" / f"{name}.yaml")).items()}
    assert now == BEFORE[name]


@pytest.mark.parametrize("name", [k for k, v in kinds.KINDS.items() if v.tool == "trl"])
def test_every_trl_kind_renders_a_script_and_a_config_its_trainer_accepts(name, tmp_path):
    """An online kind's rounds render its offline kind's files with the online kind's settings."""
    kind = kinds.get(name)
    cfg = getattr(SHIPPED, name)
    kind = kinds.get(kind.online) if kind.online else kind
    ctx = render.trl_context(kind, cfg, recipe_path="recipes/x.yaml", model="/m", seed=3, warmup=4, tracker="none")
    script = render.render("trl/train.py.j2", **ctx)
    compile(script, f"train_{name}.py", "exec")
    module, cls = kind.trainer.split(":")
    assert f"from {module} import" in script and cls in script
    rendered = yaml.safe_load(render.render(f"trl/{kind.name}.yaml.j2", **ctx))
    assert rendered["train_file"] == "train.jsonl" and rendered["trl"]["seed"] == 3
    assert rendered["trl"]["warmup_steps"] == 4 and rendered["lora"]["r"] == cfg.lora_r
    module, cls = kind.trl_config.split(":")
    args = getattr(importlib.import_module(module), cls)(
        **{**rendered["trl"], "output_dir": str(tmp_path), "use_cpu": True}
    )
    assert args.learning_rate == cfg.learning_rate and args.per_device_train_batch_size == cfg.micro_batch_size
    for key in ("beta", "simpo_gamma", "cpo_alpha", "desirable_weight", "label_smoothing"):
        if hasattr(cfg, key):
            assert getattr(args, key) == getattr(cfg, key), key


@pytest.mark.parametrize("name", kinds.NAMES)
def test_every_kind_is_in_the_recipe_schema_and_the_plan(name):
    r = recipe.parse(f"stages: [{name}]\n")
    assert isinstance(getattr(r, name), kinds.get(name).config)
    p = plan.plan(r)
    assert p[name]["dir"].startswith(f"{name}-") and p[name]["slice"]["config"] == recipe.identity(getattr(r, name))
    files = codedeps.templates(name) + codedeps.files(name)
    assert all((REPO / f).exists() for f in files) and "safealign/run/stages.py" in files
    assert all(t in files for t in (f"templates/{t}" for t in kinds.get(name).templates()))
    assert ("safealign/train/losses.py" in files) == (name in ("kto", "kto_iter")), (
        "KTO's own loss code reruns KTO only"
    )
    assert ("safealign/train/online.py" in files) == kinds.get(name).judged, (
        "the online code reruns the online kinds only"
    )
    assert ("safealign/eval/judges.py" in files) == kinds.get(name).judged


def test_unknown_kind_is_refused_with_the_table():
    with pytest.raises(recipe.RecipeError, match=r"stage 2 'dp0' is not a stage kind \(did you mean 'dpo'\?\)"):
        recipe.parse("stages: [sft, dp0]\n")


def test_warmup_steps_are_what_transformers_would_count():
    cfg = recipe.parse("kto:\n  max_steps: 60\n  warmup_ratio: 0.1\n").kto
    assert render.warmup_steps(cfg, rows=623) == 6
    cfg = recipe.parse(
        "kto:\n  max_steps: -1\n  num_epochs: 2\n  micro_batch_size: 8\n"
        "  gradient_accumulation_steps: 2\n  warmup_ratio: 0.1\n"
    ).kto
    assert render.warmup_steps(cfg, rows=100) == 2  # ceil(100/8)=13 batches, 6 updates per epoch, 12 steps
