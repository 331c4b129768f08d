"""The GitHub Actions workflows: actionlint (with shellcheck on every run: script) passes, and
every `make` target they call exists in the Makefile."""

import re
import subprocess

import pytest
import yaml
from conftest import REPO

WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.yml"))
VENV_BIN = REPO / ".venv" / "bin"


def make_targets() -> set[str]:
    """Every target make knows from the Makefile (its database, nothing run)."""
    out = subprocess.run(["make", "-pRrq", "-f", "Makefile"], cwd=REPO, capture_output=True, text=True).stdout
    return {m.group(1) for m in re.finditer(r"^([A-Za-z0-9_.-]+):(?!=)", out, re.M)}


def called_targets(text: str) -> set[str]:
    """The targets of each `make ...` command in a workflow's run: scripts (flags and VAR=value
    skipped)."""
    targets = set()
    for step in (s for job in yaml.safe_load(text)["jobs"].values() for s in job["steps"]):
        for line in step.get("run", "").splitlines():
            for cmd in re.findall(r"(?:^|[;&|]\s*)make\s+([^;&|]*)", line.strip()):
                targets |= {w for w in cmd.split() if not w.startswith("-") and "=" not in w and not w.startswith('"')}
    return targets


def test_there_are_the_three_workflows():
    assert [p.name for p in WORKFLOWS] == ["ci.yml", "nightly.yml", "study.yml"]


def test_actionlint_and_shellcheck_pass():
    r = subprocess.run(
        [str(VENV_BIN / "actionlint"), f"-shellcheck={VENV_BIN / 'shellcheck'}", *map(str, WORKFLOWS)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_actionlint_can_fail(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "on: push\njobs:\n  x:\n    runs-on: [self-hosted, linux, gpux]\n    steps:\n      - run: echo ${{ github.event.issue.title }}\n"
    )
    r = subprocess.run([str(VENV_BIN / "actionlint"), str(bad)], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 1 and "gpux" in r.stdout and "potentially untrusted" in r.stdout


@pytest.mark.parametrize("wf", WORKFLOWS, ids=lambda p: p.name)
def test_every_make_target_a_workflow_calls_exists(wf):
    called = called_targets(wf.read_text())
    missing = called - make_targets()
    assert not missing, f"{wf.name} calls make {', '.join(sorted(missing))}: no such target in the Makefile"


def test_every_make_target_ci_run_calls_exists():
    """ci.yml runs .ci/run, which calls make (each call through its `phase` timer)."""
    lines = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if not line.lstrip().startswith("#")]
    called = {m[1] for line in lines for m in re.finditer(r"(?:^|[\s;&|(])make\s+([A-Za-z][\w-]*)", line)}
    assert {"lint", "test", "test-slow", "regress"} <= called and not called - make_targets()


def test_the_target_check_can_fail():
    text = "on: push\njobs:\n  x:\n    runs-on: x\n    steps:\n      - run: make setup && make regres SUITE=cpu\n"
    assert called_targets(text) == {"setup", "regres"}
    assert called_targets(text) - make_targets() == {"regres"}


def test_nightly_is_scheduled_on_the_gpu_runner_with_the_suite_and_its_secret():
    wf = yaml.safe_load((REPO / ".github" / "workflows" / "nightly.yml").read_text())
    on = wf[True]  # YAML 1.1 reads the key `on` as true
    assert on["schedule"] and {"suite", "only", "set"} <= set(on["workflow_dispatch"]["inputs"])
    job = wf["jobs"]["regress"]
    assert job["runs-on"] == ["self-hosted", "linux", "gpu"] and job["timeout-minutes"] >= 60
    assert "--gpus all" in job["container"]["options"] and wf["concurrency"]["cancel-in-progress"] is False
    assert job["env"]["HF_TOKEN"] == "${{ secrets.HF_TOKEN }}"
    runs = "\n".join(s.get("run", "") for s in job["steps"])
    assert "secrets." not in runs and "HF_TOKEN" not in runs  # the token reaches processes only through env
    assert "${{" not in runs  # inputs reach scripts through env, never spliced into the shell
    assert "make regress SUITE=" in runs and "GITHUB_STEP_SUMMARY" in runs and "TORCH_INDEX=" in runs
    steps = {s.get("uses", "").split("@")[0] for s in job["steps"]}
    assert {"actions/cache", "actions/upload-artifact"} <= steps


def test_ci_runs_what_ci_runs_here():
    wf = yaml.safe_load((REPO / ".github" / "workflows" / "ci.yml").read_text())
    job = wf["jobs"]["ci"]
    assert "pull_request" in wf[True] and job["timeout-minutes"] <= 90
    assert any(s.get("run", "").strip() == "bash .ci/run" for s in job["steps"])
