"""Recipe validation: every shipped recipe is valid; bad recipes name file, line, key."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from safealign.config import recipe
from safealign.config.recipe import RecipeError

REPO = Path(__file__).resolve().parent.parent
GOOD = (REPO / "recipes" / "sft_kto.yaml").read_text()


@pytest.mark.parametrize("path", sorted((REPO / "recipes").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_recipes_validate(path):
    r = recipe.load(path)
    assert r.stages
    assert path.read_text().startswith(f"# make exp NAME={path.stem}\n"), "a recipe opens with its command"


def problems(text: str) -> list[str]:
    with pytest.raises(RecipeError) as e:
        recipe.parse(text, "r.yaml")
    return e.value.problems


def test_unknown_key_names_line_and_suggests():
    text = GOOD.replace("  beta: 0.1", "  bta: 0.1", 1)  # kto.beta, the first
    line = text.splitlines().index(next(l for l in text.splitlines() if l.startswith("  bta:"))) + 1
    (msg,) = problems(text)
    assert msg == f"r.yaml:{line}: kto.bta: unknown key (did you mean 'beta'?)"


def test_unknown_top_level_key():
    (msg,) = problems("seed: 1\nbase_modle: x\n")
    assert msg.startswith("r.yaml:2: base_modle: unknown key (did you mean 'base_model'?)")


@pytest.mark.parametrize(
    "text,expect",
    [
        ("seed: '42'\n", "r.yaml:1: seed: expected int, got str ('42')"),
        ("seed: true\n", "r.yaml:1: seed: expected int, got bool (True)"),
        ("kto:\n  beta: high\n", "r.yaml:2: kto.beta: expected float, got str ('high')"),
        ("kto:\n  paired_only: 'yes'\n", "r.yaml:2: kto.paired_only: expected bool, got str ('yes')"),
        ("sft: 3\n", "r.yaml:1: sft: expected a mapping of keys, got int"),
        ("stages: [sft, kt0]\n", "stage 2 'kt0' is not a stage kind (did you mean 'kto'?)"),
        ("stages: []\n", "at least one stage is needed"),
        ("stages: [sft, sft]\n", "each stage kind may appear once"),
        ("kto:\n  micro_batch_size: 1\n", "r.yaml:2: kto.micro_batch_size: KTO estimates its KL reference point"),
        ("sft:\n  learning_rate: -1.0\n", "r.yaml:2: sft.learning_rate: must be > 0, got -1.0"),
        ("kto:\n  warmup_ratio: 1.5\n", "r.yaml:2: kto.warmup_ratio: must be in [0, 1), got 1.5"),
        ("sft:\n  bf16: maybe\n", "r.yaml:2: sft.bf16: expected true, false, 'auto' or 'native', got 'maybe'"),
        ("dpo:\n  loss_type: [sigmoid, sft]\n  loss_weights: [1.0]\n", "dpo.loss_weights: 1 weights for 2 loss types"),
        ("seed: [1\n", "r.yaml:2: not valid YAML"),
        (
            "dpo:\n  loss_type: [sigmoid, ipoo]\n",
            "r.yaml:2: dpo.loss_type: entry 2 'ipoo' is not a trl DPO loss (did you mean 'ipo'?)",
        ),
        ("dpo:\n  label_smoothing: 0.7\n", "r.yaml:2: dpo.label_smoothing: must be in [0, 0.5), got 0.7"),
        # numeric ranges, wherever the field sits (recipe.RANGES)
        ("kto:\n  beta: -0.1\n", "r.yaml:2: kto.beta: must be > 0 (beta <= 0 removes or inverts the KL constraint)"),
        ("dpo:\n  beta: 0\n", "r.yaml:2: dpo.beta: must be > 0"),
        ("kto:\n  undesirable_weight: 0\n", "r.yaml:2: kto.undesirable_weight: must be > 0, got 0"),
        ("kto:\n  nll_alpha: -1\n", "kto.nll_alpha: must be >= 0, got -1"),
        ("sft:\n  lora_dropout: 1.0\n", "sft.lora_dropout: must be in [0, 1), got 1.0"),
        ("sft:\n  learning_rate: .nan\n", "sft.learning_rate: must be > 0, got nan"),
        ("sft:\n  learning_rate: .inf\n", "sft.learning_rate: must be > 0, got inf"),
        ("sft:\n  max_steps: 0\n", "sft.max_steps: must be -1 (use num_epochs) or > 0, got 0"),
        ("sft:\n  gradient_accumulation_steps: 0\n", "sft.gradient_accumulation_steps: must be >= 1"),
        ("eval:\n  safety:\n    top_p: 1.5\n", "r.yaml:3: eval.safety.top_p: must be in (0, 1], got 1.5"),
        ("eval:\n  safety:\n    temperature: 0\n", "eval.safety.temperature: must be > 0"),
        (
            "eval:\n  leaderboard:\n    tasks:\n      bbh: {limit: -2}\n",
            "r.yaml:4: eval.leaderboard.tasks.bbh.limit: must be",
        ),
        (
            "dpo:\n  loss_type: [sigmoid, sft]\n  loss_weights: [1.0, -1]\n",
            "dpo.loss_weights: entry 2 must be a number > 0",
        ),
        ("seed: -3\n", "r.yaml:1: seed: must be a non-negative integer, got -3"),
        ("stages: [sft, {kto: 1}]\n", "stage 2 {'kto': 1} is not a stage kind"),
        # trl needs a per-device batch of 2 for KTO: accumulation does not count
        (
            "kto:\n  micro_batch_size: 1\n  gradient_accumulation_steps: 8\n",
            "r.yaml:2: kto.micro_batch_size: KTO estimates its KL reference point from mismatched pairs within each "
            "device's batch; trl needs micro_batch_size >= 2 (gradient accumulation does not count), got 1",
        ),
    ],
)
def test_bad_recipes_give_specific_messages(text, expect):
    msgs = problems(text)
    assert any(expect in m for m in msgs), msgs


def test_exponent_floats_are_numbers():
    r = recipe.parse("kto:\n  learning_rate: 5e-6\nsft:\n  learning_rate: 2E-4\n")
    assert r.kto.learning_rate == 5e-6 and r.sft.learning_rate == 2e-4


def test_all_problems_reported_at_once():
    assert len(problems("seed: x\nkto:\n  bta: 1\n  beta: no\n")) == 3


def test_missing_recipe_suggests_name(tmp_path):
    (tmp_path / "sft_kto.yaml").write_text("seed: 1\n")
    with pytest.raises(RecipeError, match=r"no such recipe \(did you mean 'sft_kto'\?\)"):
        recipe.load(tmp_path / "sft_kt.yaml")


def test_defaults_fill_in():
    r = recipe.parse("seed: 7\n")
    assert r.seed == 7 and r.stages == ["sft", "kto"] and r.kto.beta == 0.1
    assert isinstance(recipe.parse("kto:\n  beta: 1\n").kto.beta, float)


def test_bad_recipe_writes_nothing(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("  beta: 0.1", "  bta: 0.1"))
    exp = tmp_path / "experiments" / "bad"
    r = subprocess.run(
        [sys.executable, "-m", "safealign", "resolve", "--recipe", str(bad), "--exp", str(exp)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert r.returncode == 2
    assert "kto.bta: unknown key (did you mean 'beta'?)" in r.stderr
    assert not (tmp_path / "experiments").exists()


def resolve(src, exp, *sets):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "safealign",
            "resolve",
            "--recipe",
            str(src),
            "--exp",
            str(exp),
            *(["--set", *sets] if sets else []),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )


def test_resolve_writes_plan_links_and_only_changed_slices(tmp_path):
    exp = tmp_path / "exp"
    src = tmp_path / "r.yaml"
    src.write_text(GOOD)
    assert resolve(src, exp).returncode == 0
    mk = (exp / "stages.mk").read_text()
    assert "STAGES := sft kto" in mk and "OFFLINE := 1" in mk and "INPUT_kto := $(DIR_sft)/.done" in mk
    plan = json.loads((exp / "stages.json").read_text())
    evals = {f"{k}-{m}" for k in ("leaderboard", "safety") for m in ("base", "sft", "kto")}
    assert set(plan) == {"data", "sft", "kto", "judge"} | evals and f"DIR_kto := $(STORE)/{plan['kto']['dir']}" in mk
    assert os.readlink(exp / "sft") == f"../.stages/{plan['sft']['dir']}"
    before = {p.name: p.stat().st_mtime_ns for p in (exp / "config").iterdir()}
    src.write_text(GOOD.replace("  beta: 0.1", "  beta: 0.2"))
    r = resolve(src, exp)
    after = {p.name: p.stat().st_mtime_ns for p in (exp / "config").iterdir()}
    changed = sorted(n for n in before if before[n] != after[n])
    assert changed == ["eval.json", "kto.json", "leaderboard-kto.json", "safety-kto.json"]
    assert "kto.beta: 0.1 -> 0.2" in r.stderr
    assert len(list((exp / "history").glob("recipe.*.yaml"))) == 1
    plan2 = json.loads((exp / "stages.json").read_text())
    assert plan2["sft"] == plan["sft"] and plan2["data"] == plan["data"] and plan2["kto"] != plan["kto"]
    assert plan2["leaderboard-base"] == plan["leaderboard-base"] and plan2["safety-kto"] != plan["safety-kto"]
    # local model and data, but a leaderboard on the hub datasets: not offline
    assert resolve(src, exp, "eval.leaderboard.source=hub").returncode == 0
    assert "OFFLINE := 0" in (exp / "stages.mk").read_text()


def test_identities_chain_through_inputs(tmp_path):
    from safealign.plan import experiment as plan

    base = recipe.parse(GOOD)
    p0 = plan.plan(base)
    p_seed = plan.plan(recipe.parse(GOOD.replace("seed: 42", "seed: 43")))
    assert all(p0[s]["dir"] != p_seed[s]["dir"] for s in p0), "the seed reaches every stage"
    p_sft = plan.plan(recipe.parse(GOOD.replace("lora_r: 16                      # adapter rank", "lora_r: 8 #")))
    assert p_sft["data"] == p0["data"] and p_sft["sft"] != p0["sft"] and p_sft["kto"] != p0["kto"], (
        "a changed SFT changes every stage downstream of it"
    )
    p_kto_only = plan.plan(recipe.parse(GOOD.replace("stages: [sft, kto]", "stages: [kto]")))
    assert p_kto_only["kto"] != p0["kto"], "KTO on the base model is not KTO on the SFT model"
    sym = plan.plan(recipe.parse(GOOD.replace("paired_only: false", "paired_only: true")))
    assert sym["data"] == p0["data"] and sym["sft"] == p0["sft"] and sym["kto"] != p0["kto"], (
        "symmetric KTO shares data and SFT"
    )


def test_set_overrides(tmp_path):
    r = recipe.load(REPO / "recipes" / "sft_kto.yaml", ["kto.beta=0.3", "stages=[sft]", "eval.safety.limit=5"])
    assert r.kto.beta == 0.3 and r.stages == ["sft"] and r.eval.safety.limit == 5
    with pytest.raises(RecipeError, match=r"SET kto.bta: unknown key \(did you mean 'beta'\?\)"):
        recipe.load(REPO / "recipes" / "sft_kto.yaml", ["kto.bta=0.3"])
    with pytest.raises(RecipeError, match=r"SET kto.beta: expected float, got str"):
        recipe.load(REPO / "recipes" / "sft_kto.yaml", ["kto.beta=high"])
    with pytest.raises(RecipeError, match="expected key=value"):
        recipe.load(REPO / "recipes" / "sft_kto.yaml", ["kto.beta"])
    exp = tmp_path / "e"
    assert resolve(REPO / "recipes" / "sft_kto.yaml", exp, "kto.beta=0.3").returncode == 0
    assert "overrides:\n- kto.beta=0.3" in (exp / "recipe.yaml").read_text()


def write_recipes(tmp_path, **files):
    for name, text in files.items():
        (tmp_path / f"{name}.yaml").write_text(text)
    return tmp_path


def test_extends_overrides_key_by_key(tmp_path):
    d = write_recipes(
        tmp_path,
        base="seed: 5\nkto:\n  beta: 0.3\n  max_steps: 9\n",
        child="extends: base\nkto:\n  beta: 0.5\nstages: [kto]\n",
    )
    r = recipe.load(d / "child.yaml")
    assert (r.seed, r.kto.beta, r.kto.max_steps, r.stages) == (5, 0.5, 9, ["kto"])


def test_extends_errors(tmp_path):
    d = write_recipes(
        tmp_path,
        a="seed: 1\n",
        b="extends: a\n",
        c="extends: b\n",
        e="extends: x\n",
        bad="kto:\n  bta: 1\n",
        f="extends: bad\n",
        g="extends: a\nkto:\n  bta: 1\n",
    )
    with pytest.raises(RecipeError, match="only one level of reuse"):
        recipe.load(d / "c.yaml")
    with pytest.raises(RecipeError, match=r"e.yaml:1: extends: no recipe .*x.yaml"):
        recipe.load(d / "e.yaml")
    with pytest.raises(RecipeError, match=r"bad.yaml:2: kto.bta: unknown key"):
        recipe.load(d / "f.yaml")
    with pytest.raises(RecipeError, match=r"g.yaml:3: kto.bta: unknown key"):
        recipe.load(d / "g.yaml")


def test_extending_recipe_reruns_when_parent_changes(tmp_path):
    exp = tmp_path / "exp"
    r = resolve("recipes/sft_kto_s.yaml", exp)
    assert r.returncode == 0, r.stderr
    assert "RECIPE_PARENT := recipes/sft_kto.yaml" in (exp / "stages.mk").read_text()
    assert '"signed_kl": true' in (exp / "config" / "kto.json").read_text()


def test_recipe_encodings(tmp_path):
    good = tmp_path / "bom.yaml"
    good.write_bytes(b"\xef\xbb\xbfseed: 7\n")
    assert recipe.load(good).seed == 7  # a byte-order mark is fine
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"seed: 7\ndescription: caf\xe9\n")
    with pytest.raises(
        RecipeError,
        match=r"bad.yaml:2: not valid UTF-8 at byte offset 24 \(line 2, byte 17 of "
        r"the line\)",
    ):
        recipe.load(bad)


def _bomb(levels: int = 9) -> str:
    """Nested anchors: each level refers nine times to the one before (9**levels values)."""
    names = [f"l{i}" for i in range(levels)]
    text = f"{names[0]}: &{names[0]} [x, x, x, x, x, x, x, x, x]\n"
    for prev, name in zip(names, names[1:]):
        text += f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 9) + "]\n"
    return text


@pytest.mark.parametrize("where", ["recipe", "set"])
def test_an_alias_bomb_is_refused_at_its_line_before_anything_is_built(tmp_path, where):
    """It used to expand until MemoryError (~3 GB after 34 s), raised while printing the value."""
    import time

    src = tmp_path / "bomb.yaml"
    if where == "recipe":
        src.write_text(GOOD + _bomb())
        sets = []
    else:
        src.write_text(GOOD)
        sets = ["kto.beta=" + "{" + _bomb().replace("\n", ", ").rstrip(", ") + "}"]
    t0 = time.time()
    r = resolve(src, tmp_path / "experiments" / "bomb", *sets)
    assert r.returncode == 2, r.stderr
    assert "aliases expand this document past 100,000 values" in r.stderr
    if where == "recipe":
        assert f"{src}:{GOOD.count(chr(10)) + 6}: not valid YAML" in r.stderr  # the first level past the bound
    assert len(r.stderr) < 2000 and time.time() - t0 < 30
    assert not (tmp_path / "experiments").exists()


def test_a_document_that_contains_itself_is_refused(tmp_path):
    src = tmp_path / "loop.yaml"
    src.write_text(GOOD + "loop: &loop [1, *loop]\n")
    r = resolve(src, tmp_path / "experiments" / "loop")
    assert r.returncode == 2 and "an alias refers to a node that contains it" in r.stderr, r.stderr


def test_anchors_and_aliases_of_ordinary_size_still_load():
    assert recipe.yaml.load("a: &a {x: 1}\nb: *a\n", Loader=recipe._Loader) == {"a": {"x": 1}, "b": {"x": 1}}


def test_a_missing_local_base_model_is_refused_when_the_experiment_resolves(tmp_path):
    """It was found only when a stage loaded the model, after the data and judge stages ran."""
    exp = tmp_path / "experiments" / "nomodel"
    r = resolve(REPO / "recipes" / "sft_kto.yaml", exp, f"base_model={tmp_path / 'no-such-model'}")
    assert r.returncode == 2 and "base_model: " in r.stderr and "no model there" in r.stderr, r.stderr
    assert not (tmp_path / "experiments").exists()
    (tmp_path / "empty").mkdir()  # a folder, but no model in it
    r = resolve(REPO / "recipes" / "sft_kto.yaml", exp, f"base_model={tmp_path / 'empty'}")
    assert r.returncode == 2 and "config.json missing" in r.stderr, r.stderr


@pytest.mark.parametrize(
    "item, expect",
    [
        # a mapping given in SET: its keys are SET's (they were blamed on the recipe file's line)
        ("kto={beta: -1}", r"^SET kto\.beta: must be > 0"),
        # YAML 1.1 integers: 0x10 was read as 16, 010 as 8, 1:30 as 90
        ("sft.max_steps=0x10", r"^SET sft\.max_steps: expected int, got str \('0x10'\)"),
        ("sft.max_steps=010", r"^SET sft\.max_steps: expected int, got str \('010'\)"),
        ("sft.max_steps=1:30", r"^SET sft\.max_steps: expected int, got str \('1:30'\)"),
        # an overflowing literal said only "got inf"
        ("kto.beta=1e309", r"^SET kto\.beta: must be > 0 .*got inf \(a finite number; .*1e309, is read as infinity\)"),
    ],
)
def test_set_values_are_read_as_written_and_blamed_on_set(item, expect):
    with pytest.raises(RecipeError) as e:
        recipe.load(REPO / "recipes" / "sft_kto.yaml", [item])
    assert any(re.search(expect, p) for p in e.value.problems), e.value.problems


def test_decimal_integers_with_underscores_still_read():
    assert recipe.load(REPO / "recipes" / "sft_kto.yaml", ["sft.max_steps=1_000"]).sft.max_steps == 1000


@pytest.mark.parametrize(
    "items, expect",
    [
        (["kto.beta=0.1", "kto.beta=0.2"], "SET kto.beta: given twice (0.1 and 0.2); keep one"),
        (["kto.beta=0.1", "sft.max_steps=3", "kto.beta=0.1"], "SET kto.beta: given twice (0.1 and 0.1); keep one"),
        # a key and one inside it: applied in order, the mapping replaced or was overwritten by turns
        (["kto={beta: 0.1}", "kto.beta=0.2"], "SET kto and kto.beta overlap (kto={beta: 0.1} and kto.beta=0.2)"),
        (["kto.beta=0.2", "kto={beta: 0.1}"], "SET kto.beta and kto overlap (kto.beta=0.2 and kto={beta: 0.1})"),
        (["kto={beta: 0.1}", "kto.max_steps=3"], "SET kto and kto.max_steps overlap"),
        (["kto=1", "kto.beta=2"], "SET kto and kto.beta overlap (kto=1 and kto.beta=2)"),
    ],
)
def test_a_key_given_twice_in_set_is_refused_naming_both_values(items, expect):
    with pytest.raises(RecipeError) as e:
        recipe.load(REPO / "recipes" / "sft_kto.yaml", items)
    assert len(e.value.problems) == 1 and e.value.problems[0].startswith(expect), e.value.problems


def test_resolve_refuses_a_key_given_twice_and_writes_nothing(tmp_path):
    exp = tmp_path / "experiments" / "e"
    r = resolve(REPO / "recipes" / "sft_kto.yaml", exp, "kto.beta=0.1", "kto.beta=0.2")
    assert r.returncode == 2 and "SET kto.beta: given twice (0.1 and 0.2)" in r.stderr, r.stderr
    assert not (tmp_path / "experiments").exists()
    # distinct keys, and sibling keys under one section, still apply
    r = recipe.load(REPO / "recipes" / "sft_kto.yaml", ["kto.beta=0.3", "kto.max_steps=4", "seed=3"])
    assert r.kto.beta == 0.3 and r.kto.max_steps == 4 and r.seed == 3
