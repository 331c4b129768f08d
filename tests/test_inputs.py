"""Hostile and careless command-line values: each is refused with the variable named, and
nothing runs and no file appears (tests/test_inputs.py; README "What is refused")."""

import os
import subprocess
from pathlib import Path

import pytest

from safealign.core import names
from safealign.plan import experiment as plan

REPO = Path(__file__).resolve().parent.parent


def hostile(canary: Path) -> list[str]:
    c = str(canary)
    return [
        f"x;touch {c}/semicolon",
        f"x$(shell touch {c}/make_shell)",
        f"x`touch {c}/backtick`",
        f"x$$(touch {c}/dollar_paren)",
        f"x|touch {c}/pipe",
        f"x&&touch {c}/and",
        f"x>{c}/redirect",
        f"x\ntouch {c}/newline",
        f"'x';touch {c}/quote",
        f'"x";touch {c}/dquote',
        "${HOME}",
        "x*",
        "~root",
    ]


NAME_ONLY = ["../escape", "..", ".hidden", "a b", "a/b"]
# variable -> the make goal and fixed arguments it is used with
CASES = {
    "NAME": ["exp"],
    "EXP_NAME": ["exp", "NAME=sft_kto"],
    "SET": ["exp", "NAME=sft_kto"],
    "GRID": ["sweep", "NAME=sft_kto"],
    "NAMES": ["compare"],
    "COMPARE": ["compare", "NAMES=sft_kto"],
    "EXPERIMENTS": ["status"],
    "RECIPES": ["exp", "NAME=sft_kto"],
    "SAFEALIGN_CACHE": ["tiny-model"],
    "NODE_RANK": ["join", "NAME=sft_kto"],
    "LAUNCH": ["bench-gpu"],
    "PORT": ["serve"],
}


@pytest.mark.parametrize("var", list(CASES))
def test_hostile_values_are_refused_and_write_nothing(var, tmp_path):
    canary = tmp_path / "canary"
    canary.mkdir()
    root = tmp_path / "experiments"
    before = subprocess.run(
        ["git", "status", "--porcelain", "--ignored"], cwd=REPO, capture_output=True, text=True
    ).stdout
    values = hostile(canary) + (NAME_ONLY if var in ("NAME", "EXP_NAME", "COMPARE") else [])
    for value in values:
        args = ["make", "--no-print-directory", *CASES[var], f"{var}={value}"]
        if var != "EXPERIMENTS":
            args.append(f"EXPERIMENTS={root}")
        r = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=60)
        out = r.stdout + r.stderr
        assert r.returncode != 0, f"{var}={value!r} was accepted:\n{out[-2000:]}"
        assert f"{var}:" in out and "Stop." in out, f"{var}={value!r}: no clear refusal:\n{out[-2000:]}"
    assert list(canary.iterdir()) == [], "a hostile value ran a command"
    assert not root.exists(), "a refused run wrote into the experiments folder"
    after = subprocess.run(
        ["git", "status", "--porcelain", "--ignored"], cwd=REPO, capture_output=True, text=True
    ).stdout
    assert after == before, "a refused run left a file in the repository"


def test_legitimate_values_still_pass_the_check(tmp_path):
    """The checks refuse by character, not by accident: real SET values get through to the recipe."""
    r = subprocess.run(
        [
            "make",
            "-n",
            "--no-print-directory",
            "exp",
            "NAME=sft_kto",
            f"EXPERIMENTS={tmp_path}/e",
            "SET=kto.beta=0.2 dpo.loss_type=[sigmoid,sft] eval.safety.judge=classifier:org/model-1.5",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "not allowed" not in r.stderr and "has spaces" not in r.stderr, r.stderr


@pytest.mark.parametrize("value", ["..", ".stages", "compare", "a/b", "", "x" * 129, "-x", "a b", "a\n"])
def test_python_side_names(value):
    with pytest.raises(names.InvalidName):
        names.check_name(value, "experiment name")


def test_generated_names_are_safe_and_bounded():
    n = names.exp_name("sft_kto", ["kto.beta=0.2", "dpo.loss_type=[sigmoid,sft]"])
    assert n == "sft_kto+kto.beta-0.2+dpo.loss_type-_sigmoid_sft"
    long = names.exp_name("sft_kto", [f"kto.beta=0.{i}" for i in range(40)])
    assert len(long) <= 128 and names.NAME.match(long)
    assert long != names.exp_name("sft_kto", [f"kto.beta=0.{i}" for i in range(41)])


def test_resolve_refuses_an_experiment_folder_that_leads_outside(tmp_path):
    root, outside = tmp_path / "experiments", tmp_path / "elsewhere"
    root.mkdir()
    outside.mkdir()
    (root / "sft_kto").symlink_to(outside, target_is_directory=True)
    with pytest.raises(names.InvalidName, match="outside"):
        plan.resolve(str(REPO / "recipes" / "sft_kto.yaml"), root / "sft_kto")
    assert list(outside.iterdir()) == [] and not (root / ".stages").exists()


def test_cli_refuses_bad_names_before_writing(tmp_path):
    env = {**os.environ}
    for args in (
        ["resolve", "--recipe", "recipes/sft_kto.yaml", "--exp", str(tmp_path / "..")],
        ["compare", "../x", "--experiments", str(tmp_path)],
        ["compare", "sft_kto", "--experiments", str(tmp_path), "--out", "../../x"],
    ):
        r = subprocess.run(
            [str(REPO / ".venv" / "bin" / "python"), "-m", "safealign", *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert r.returncode == 1 and "expected 1-128 letters" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert list(tmp_path.iterdir()) == []


def test_unreachable_hub_model_is_one_paragraph_naming_the_key(tmp_path):
    py = str(REPO / ".venv" / "bin" / "python")
    exp = tmp_path / "experiments" / "hub"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty-cache")}
    r = subprocess.run(
        [
            py,
            "-m",
            "safealign",
            "resolve",
            "--recipe",
            "recipes/sft_kto.yaml",
            "--exp",
            str(exp),
            "--set",
            "base_model=aisingapore/not-in-this-cache",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    cmd = [py, "-m", "safealign", "stage", "safety", "--model", "base", "--exp", str(exp)]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert (
        "error: base_model: aisingapore/not-in-this-cache is not in the local Hugging Face cache and "
        "HF_HUB_OFFLINE=1 forbids downloading it."
        in r.stderr
        and "SAFEALIGN_DEBUG=1" in r.stderr
    )
    assert len(r.stderr.strip().splitlines()) <= 3
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**env, "SAFEALIGN_DEBUG": "1"}, timeout=120)
    assert r.returncode == 1 and "Traceback" in r.stderr and "ModelUnavailable" in r.stderr


def _make(*args):
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    return subprocess.run(
        ["make", "--no-print-directory", *args], cwd=REPO, capture_output=True, text=True, env=env, timeout=120
    )


@pytest.mark.parametrize(
    "sets, expect",
    [
        ("kto.beta=-1", "SET kto.beta: must be > 0"),
        ("kto.beta=0.1 kto.beta=0.2", "SET kto.beta: given twice (0.1 and 0.2); keep one"),
    ],
)
def test_a_refused_recipe_is_one_message_without_makes_missing_file_noise(tmp_path, sets, expect):
    """The first resolve of an experiment runs as make reads the Makefile: a refused recipe or SET
    stops make with its message and make's one line, not also "stages.mk: No such file or directory"."""
    root = tmp_path / "experiments"
    r = _make("-n", "exp", "NAME=sft_kto", f"SET={sets}", f"EXPERIMENTS={root}")  # -n: accepted, nothing trains
    assert r.returncode != 0 and expect in r.stderr, r.stdout + r.stderr
    assert "No such file or directory" not in r.stderr, r.stderr
    assert "not resolved, nothing ran" in r.stderr and len(r.stderr.strip().splitlines()) == 2, r.stderr
    assert not root.exists()


def test_a_failed_re_resolve_never_runs_the_old_stages_mk(tmp_path):
    """An experiment resolved once (EXP_NAME fixed), then run again with another SET: it is resolved
    again (it used to keep the old stages.mk, the new SET unread), and a refused SET stops make
    before any stage, with the old stages.mk untouched and unused."""
    root = tmp_path / "experiments"
    exp = root / "mine"
    r = _make("-n", "exp", "NAME=sft_kto", "EXP_NAME=mine", f"EXPERIMENTS={root}")
    assert r.returncode == 0 and "safealign stage data" in r.stdout, r.stdout + r.stderr
    old_mk, old_recipe = (exp / "stages.mk").read_text(), (exp / "recipe.yaml").read_text()
    r = _make("-n", "exp", "NAME=sft_kto", "EXP_NAME=mine", "SET=kto.beta=-1", f"EXPERIMENTS={root}")
    assert r.returncode != 0 and "SET kto.beta: must be > 0" in r.stderr, r.stdout + r.stderr
    assert "safealign stage" not in r.stdout, "a stage ran on the old stages.mk"
    assert "No such file or directory" not in r.stderr, r.stderr
    assert (exp / "stages.mk").read_text() == old_mk and (exp / "recipe.yaml").read_text() == old_recipe
    r = _make("-n", "exp", "NAME=sft_kto", "EXP_NAME=mine", "SET=kto.beta=0.3", f"EXPERIMENTS={root}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "RESOLVED_SET := kto.beta=0.3\n" in (exp / "stages.mk").read_text()
    assert "beta: 0.3" in (exp / "recipe.yaml").read_text()
