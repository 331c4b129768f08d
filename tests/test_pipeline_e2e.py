"""The compiled pipeline, run for real with kfp's local runner (`make pipeline ... LOCAL=1`:
`SubprocessRunner(use_venv=False)`, no Docker, no network) on tiny-local, against `make exp` with
the same seed in another store (conftest.two_concurrent_runs, shared with
tests/test_recipes_e2e.py): the same stage identities and the same metrics, read from the
pipeline's own Metrics artifact; then a 2-point sweep compiled into one pipeline, which reuses
the stages it shares (SFT trains once). Short training and base + final model evaluated (SETS):
~6 minutes on 2 cores (`make test-slow`).

The local runner ignores resources, caching and retries: those are checked on the compiled YAML
in tests/test_pipeline.py.
"""

import json
import os
import subprocess
from pathlib import Path

import kfp  # noqa: E402, F401  (make setup installs the pipeline extra: missing, the set-up is broken; no skip)
import pytest
from conftest import TWO_RUNS_SETS

from safealign.core import names
from safealign.run import pipeline_steps  # noqa: E402

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent


# short training, the base and the final model evaluated: what is compared is the same either way
SETS = TWO_RUNS_SETS
NAME = names.exp_name("sft_kto", SETS)


def make(*args):
    r = subprocess.run(
        ["make", "--no-print-directory", *args], cwd=REPO, capture_output=True, text=True,
        env={**os.environ, "SAFEALIGN_QUIET": "1"},
    )  # fmt: skip
    assert r.returncode == 0, f"make {' '.join(args)}:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    return r


def executor_outputs(run_dir: Path, task: str) -> dict:
    return json.loads((run_dir / task / "executor_output.json").read_text())


@pytest.fixture(scope="module")
def by_make(two_concurrent_runs) -> Path:
    """`make exp` with SETS in its own store: the first of conftest's two concurrent runs (which
    tests/test_recipes_e2e.py checks against each other), under the name make gives it."""
    _, [(folder, rc, out, err), _] = two_concurrent_runs
    assert rc == 0 and folder.name == NAME, out[-3000:] + err[-3000:]
    return folder


@pytest.fixture(scope="module")
def by_pipeline(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pipeline")
    make("pipeline", "NAME=sft_kto", "SET=" + " ".join(SETS), f"EXPERIMENTS={root}", "LOCAL=1")
    return root / NAME


def run_dir(exp: Path) -> Path:
    (run,) = list((exp / "local-run").iterdir())  # one run: <pipeline name>-<time>
    return run


def test_pipeline_gives_make_exp_s_stages_and_metrics(by_make, by_pipeline):
    assert json.loads((by_pipeline / "stages.json").read_text()) == json.loads((by_make / "stages.json").read_text())
    made = pipeline_steps.summary_metrics(json.loads((by_make / "eval" / "summary.json").read_text()))
    # the pipeline's own Metrics artifact: what the Vertex AI UI shows for the run
    art = executor_outputs(run_dir(by_pipeline), "summary-op")["artifacts"]["summary"]["artifacts"][0]["metadata"]
    shown = {k: v for k, v in art.items() if k != "experiment"}
    assert len(made) >= 20 and set(shown) == set(made)
    # every figure equal; wall times (leaderboard_seconds) are the two runs' own
    figures = lambda m: {k: v for k, v in m.items() if not k.endswith("_seconds")}  # noqa: E731
    assert figures(shown) == figures(made) and len(figures(made)) < len(made)
    for stage in ("sft", "kto"):  # the same training, step by step
        a, b = ((e / stage / "train_log.jsonl").read_text().splitlines() for e in (by_make, by_pipeline))
        assert [json.loads(x).get("loss") for x in a] == [json.loads(x).get("loss") for x in b]
    assert (by_pipeline / "report.md").read_text().count("kto") >= 1


def test_artifacts_carry_the_stage_figures(by_pipeline):
    run = run_dir(by_pipeline)
    data = json.loads((run / "data-op" / "dataset").read_text())
    counts = json.loads((by_pipeline / "data" / "counts.json").read_text())
    assert data["train_rows"] == counts["train"]["rows"] and data["test_unsafe"] == counts["test"]["unsafe"]
    assert set(data["sha256"]) >= {"sft.jsonl", "kto.jsonl", "test.jsonl"}
    models = [json.loads((d / "model").read_text()) for d in run.glob("train-op*")]
    assert {m["stage"] for m in models} == {"sft", "kto"}
    kto = next(m for m in models if m["stage"] == "kto")
    assert Path(kto["merged"], "config.json").exists() and kto["last_loss"] < kto["first_loss"]
    safety = [executor_outputs(run, d.name) for d in run.glob("safety-op*")]
    rates = [s["artifacts"]["rates"]["artifacts"][0]["metadata"] for s in safety]
    assert {r["model"] for r in rates} == {"base", "kto"} and all("refusal_rate" in r for r in rates)
    assert (run / "report-op" / "report").read_text() == (by_pipeline / "report.md").read_text()


def test_sweep_runs_as_one_pipeline_and_trains_shared_stages_once(by_pipeline):
    root = by_pipeline.parent
    stored = lambda kind: sorted(p for p in (root / ".stages").glob(f"{kind}-*") if p.is_dir())  # not the .lock files
    sft = stored("sft")
    assert len(sft) == 1
    sft_done = (sft[0] / ".done").stat().st_mtime_ns
    make("pipeline-sweep", "NAME=sft_kto", "SET=" + " ".join(SETS), "GRID=kto.beta=0.1,0.2", f"EXPERIMENTS={root}",
         "LOCAL=1")  # fmt: skip
    points = [root / names.exp_name("sft_kto", [*SETS, f"kto.beta={b}"]) for b in ("0.1", "0.2")]
    plans = [json.loads((p / "stages.json").read_text()) for p in points]
    assert plans[0] == json.loads((by_pipeline / "stages.json").read_text())  # beta 0.1 is the recipe's own
    assert plans[0]["sft"] == plans[1]["sft"] and plans[0]["kto"] != plans[1]["kto"]
    assert stored("sft") == sft and (sft[0] / ".done").stat().st_mtime_ns == sft_done  # not trained again
    assert len(stored("kto")) == 2
    for p in points:
        summary = json.loads((p / "eval" / "summary.json").read_text())
        assert summary["models"]["kto"]["safety"]["overall"]["refusal_rate"]["value"] is not None
        assert (p / "report.md").exists()
