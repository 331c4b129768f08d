"""Every shipped recipe runs end to end on tiny-local (slow: `make test-slow`; .ci/run runs them).

sft_kto itself is covered, in more depth, by test_e2e.py. All recipes share one experiments
folder, as a user's would: the SFT stage is trained once and reused by every SFT+X recipe.
"""

import json
import math
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from safealign import plan

REPO = Path(__file__).resolve().parent.parent
# SFT-only first, so that the SFT+X recipes after it reuse its SFT stage
RECIPES = sorted(
    (p.stem for p in (REPO / "recipes").glob("*.yaml") if p.stem != "sft_kto"), key=lambda n: (n != "sft", n)
)


def make_exp(name: str, root: Path) -> None:
    """`make exp NAME=name` into the shared experiments folder; fails the test with the output's tail."""
    r = subprocess.run(
        ["make", "--no-print-directory", "exp", f"NAME={name}", f"EXPERIMENTS={root}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "SAFEALIGN_QUIET": "1"},
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("experiments")


@pytest.mark.slow
@pytest.mark.parametrize("name", RECIPES)
def test_recipe_runs_end_to_end(name, root):
    make_exp(name, root)
    exp = root / name
    resolved = (exp / "recipe.yaml").read_text()
    models = json.loads((exp / "eval" / "summary.json").read_text())["models"]
    stages = plan.Experiment(exp).recipe.stages  # every training kind the recipe names
    assert all((exp / s / ".done").exists() for s in stages), stages
    assert set(models) == {"base", *stages}
    assert all(m["safety"] and m["leaderboard"] for m in models.values())
    assert (exp / "report.md").exists()
    for stage in stages:
        log = [json.loads(l) for l in (exp / stage / "train_log.jsonl").read_text().splitlines()]
        losses = [row["loss"] for row in log if "loss" in row]
        # the log writes NaN as the string "nan": a number check, not l == l, catches it
        assert losses and all(isinstance(l, float) and math.isfinite(l) for l in losses), f"{stage}: {losses}"
        if "nll_alpha: 0.2" in resolved and stage == "kto":
            assert any("nll_loss" in row for row in log), "KTO+NLL logs nll_loss"


@pytest.mark.slow
def test_comparison_of_the_grid(root):
    """The study's comparison after the grid's recipes ran: one table, overlaid curves."""
    names = ["sft", "kto", "sft_kto", "dpo", "sft_dpo", "sft_kto_symmetric"]
    for name in names:  # sft_kto is test_e2e's; here it reuses this folder's SFT stage and base evaluation
        if not (root / name / "eval" / "summary.json").exists():
            make_exp(name, root)
    r = subprocess.run(
        ["make", "--no-print-directory", "compare", f"NAMES={' '.join(names)}", "COMPARE=study", f"EXPERIMENTS={root}"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = root / "compare" / "study"
    page = (out / "compare.md").read_text()
    table = json.loads((out / "table.json").read_text())
    assert [row[0] for row in table["table"]] == ["base (tiny-local)", *names]
    for name in names:
        s = json.loads((root / name / "eval" / "summary.json").read_text())
        final = s["model_order"][-1]
        tox = s["models"][final]["safety"]["overall"]["toxicity_rate"]["value"] * 100
        assert table["values"][name]["toxicity %"] == pytest.approx(tox)
    assert sum("**" in c for row in table["table"] for c in row) >= len(table["header"]) - 1
    for png in ("kl.png", "rewards_desirable.png", "rewards_undesirable.png", "loss.png", "sft_loss.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG" and f"]({png})" in page


@pytest.mark.slow
def test_sft_was_trained_once(root):
    plans = [json.loads((root / n / "stages.json").read_text()) for n in RECIPES]
    sft_dirs = {p["sft"]["dir"] for p in plans if "sft" in p}
    assert len(plans) >= len(RECIPES) and len(sft_dirs) == 1, sft_dirs


@pytest.mark.slow
def test_full_parameter_mode(root):
    sets = (
        "sft.full_finetune=true kto.full_finetune=true sft.max_steps=20 kto.max_steps=10 "
        "sft.learning_rate=1e-4 kto.learning_rate=1e-5"
    )
    r = subprocess.run(
        ["make", "--no-print-directory", "exp", "NAME=sft_kto", f"SET={sets}", "EXP_NAME=full", f"EXPERIMENTS={root}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "SAFEALIGN_QUIET": "1"},
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for stage in ("sft", "kto"):
        d = root / "full" / stage
        assert (d / "merged" / "model.safetensors").exists() and not (d / "adapter").exists()
    assert "adapter: lora" not in (root / "full" / "sft" / "axolotl.yaml").read_text()
    assert "lora" not in yaml.safe_load((root / "full" / "kto" / "kto.yaml").read_text())


@pytest.mark.slow
def test_two_concurrent_runs_on_an_empty_store(tmp_path):
    """Two `make exp` started together on an empty store: both succeed, each stage is built once
    (the other process waits on the stage's lock and reuses it), and nothing is left half-done."""
    root = tmp_path / "experiments"
    sets = "SET=sft.max_steps=20 kto.max_steps=16 eval.leaderboard.enabled=false eval.models=final"
    procs = [
        subprocess.Popen(
            ["make", "--no-print-directory", "exp", "NAME=sft_kto", sets, f"EXP_NAME={n}", f"EXPERIMENTS={root}"],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "SAFEALIGN_QUIET": "1"},
        )
        for n in ("a", "b")
    ]
    outs = [p.communicate(timeout=1800) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, out[-3000:] + err[-3000:]
    trained = [out.count("-m axolotl.cli.train") + out.count("train_kto.py kto.yaml") for out, _ in outs]
    assert sorted(trained) in ([0, 2], [1, 1]) and sum(trained) == 2, trained  # SFT once and KTO once in all
    assert any("waiting: another process is building" in err for _, err in outs)
    assert any("which another process built meanwhile" in out for out, _ in outs)
    summaries = [json.loads((root / n / "eval" / "summary.json").read_text())["models"] for n in ("a", "b")]
    assert summaries[0] == summaries[1]
    assert not list((root / ".stages").glob("*.tmp")) and all(
        (d / ".done").exists() for d in (root / ".stages").iterdir() if d.is_dir()
    )
