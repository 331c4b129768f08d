"""Command line: `python -m safealign <command>`. Make calls these; each is thin.

resolve     validate recipes/<name>.yaml (+ SET overrides), write the experiment's resolved
            recipe, stage plan, links and stages.mk (safealign/plan.py)
stage       run one stage of an experiment (data, a training kind of safealign/kinds.py, judge,
            leaderboard, safety, summary)
join        on node N > 0 of a multi-node experiment (launch.nodes): join node 0's training stages
report      write experiments/<NAME>/report.md and its plots
compare     write experiments/compare/<names>/compare.md: one table, overlaid curves
status      every experiment's stages: done / stale / shared / failed / not run
tiny-model  build the embedded tiny-local model into the cache
toy-model   build toy-<family> (random weights, that family's class, tokens and chat template)
render      resolve an experiment and render every training stage's config for a GPU machine,
            validated by Axolotl and trl, offline (safealign/render.py)
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

from safealign import fsutil, kinds, names, plan
from safealign import recipe as recipe_mod
from safealign.recipe import RecipeError


def cmd_resolve(a) -> int:
    names.check_name(Path(a.exp).name, "experiment name")
    names.check_name(Path(a.recipe).stem, "recipe name")
    plan.resolve(a.recipe, Path(a.exp), a.set)
    return 0


def cmd_stage(a) -> int:
    from safealign import stages

    exp = plan.Experiment(Path(a.exp))
    t0 = time.time()
    label = f"{a.stage}-{a.model}" if a.model else a.stage
    print(f"[{exp.name}] {label}: start", flush=True)
    if a.stage in ("leaderboard", "safety") and not a.model:
        raise stages.StageError(f"stage {a.stage} needs --model (base or a stage name)")
    target = exp.dir(label)
    with fsutil.stage_lock(target, f"[{exp.name}] {label}") as built_meanwhile:
        if built_meanwhile:
            print(f"[{exp.name}] {label}: reusing {target}, which another process built meanwhile", flush=True)
            return 0
        stages.run(exp, a.stage, a.model)
    print(f"[{exp.name}] {label}: done in {time.time() - t0:.1f}s", flush=True)
    return 0


def cmd_join(a) -> int:
    from safealign import stages

    stages.join(plan.Experiment(Path(a.exp)), a.node_rank, wait=a.wait)
    return 0


def cmd_report(a) -> int:
    from safealign import report

    t0 = time.time()
    path = report.build(Path(a.exp))
    print(f"[{Path(a.exp).name}] report: {path} ({time.time() - t0:.1f}s)", flush=True)
    return 0


def cmd_compare(a) -> int:
    from safealign import report

    root = Path(a.experiments)
    for n in a.names:
        names.check_name(n, "NAMES: experiment")
    out = root / "compare" / names.check_name(a.out or "-".join(a.names)[:128], "COMPARE: folder")
    path = report.compare([root / n for n in a.names], out)
    print(f"comparison of {', '.join(a.names)}: {path}", flush=True)
    return 0


def cmd_status(a) -> int:
    """One line per stage of every experiment: done / stale / shared / failed / not run."""
    import subprocess
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
        rfile = Path(res["recipe_file"])
        make_args = [f"NAME={rfile.stem}", f"RECIPES={rfile.parent}", f"EXPERIMENTS={root}", f"EXP_NAME={e.name}"]
        if res.get("overrides"):
            make_args.append("SET=" + " ".join(res["overrides"]))
        print(
            f"{e.name}  ({res['recipe_file']}{', SET ' + ' '.join(res['overrides']) if res.get('overrides') else ''})"
        )
        entries = [(s, root / plan.STORE / d["dir"]) for s, d in json.loads((e / "stages.json").read_text()).items()]
        for stage, d in entries + [("summary", e / "eval")]:
            if fsutil.is_done(d):
                q = subprocess.run(
                    ["make", "-q", "--no-print-directory", f"{d}/.done", *make_args], capture_output=True, text=True
                )
                state = "done" if q.returncode == 0 else "stale"
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
    from safealign import data, tinymodel

    rows = data.read_jsonl(Path(a.data))
    with fsutil.stage_lock(Path(a.out), "tiny-local") as built_meanwhile:
        if built_meanwhile:
            print(f"tiny-local: reusing {a.out}, which another process built meanwhile")
            return 0
        with fsutil.staged_dir(Path(a.out)) as tmp:
            info = tinymodel.build(rows, tmp, steps=a.steps, seed=a.seed)
    print(
        f"tiny-local: {info['parameters'] / 1e6:.2f}M parameters, loss {info['first_loss']:.3f} -> "
        f"{info['final_loss']:.4f} in {info['seconds']}s -> {a.out}"
    )
    return 0


def cmd_render(a) -> int:
    from safealign import render

    os.environ["HF_HUB_OFFLINE"] = "1"  # rendering never needs the network: the cache or models/configs/
    exp = plan.Experiment(Path(a.exp))
    print(f"[{exp.name}] rendering its training stages for a GPU machine (offline)", flush=True)
    render.run(exp)
    return 0


def cmd_toy_model(a) -> int:
    from safealign import data, families

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
    from safealign import data

    p = Path(a.path)
    if p.is_dir():
        splits, _ = data.load_canonical(str(p))
        print(f"{p}: ok ({', '.join(f'{k} {len(v)} rows' for k, v in splits.items())})")
    else:
        print(f"{p}: ok ({len(data.read_jsonl(p))} rows)")
    return 0


def cmd_regress(a) -> int:
    from safealign import regress

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
    p.add_argument("stage", choices=["data", *kinds.NAMES, *kinds.EVALUATION])
    p.add_argument("--exp", required=True)
    p.add_argument("--model", help="leaderboard/safety: base or a stage name")
    p.set_defaults(fn=cmd_stage)
    p = sub.add_parser("join")
    p.add_argument("--exp", required=True)
    p.add_argument("--node-rank", type=int, required=True, help="this node's number, 1..launch.nodes-1")
    p.add_argument("--wait", type=float, default=3600, help="seconds to wait for node 0 at each stage")
    p.set_defaults(fn=cmd_join)
    p = sub.add_parser("report")
    p.add_argument("--exp", required=True)
    p.set_defaults(fn=cmd_report)
    p = sub.add_parser("compare")
    p.add_argument("names", nargs="+")
    p.add_argument("--experiments", default="experiments")
    p.add_argument("--out", help="folder name under compare/")
    p.set_defaults(fn=cmd_compare)
    p = sub.add_parser("tiny-model")
    p.add_argument("--out", required=True)
    p.add_argument("--data", default="data/sg_safety/train.jsonl")
    p.add_argument("--steps", type=int, default=360)
    p.add_argument("--seed", type=int, default=1234)
    p.set_defaults(fn=cmd_tiny_model)
    p = sub.add_parser("render")
    p.add_argument("--exp", required=True)
    p.set_defaults(fn=cmd_render)
    p = sub.add_parser("toy-model")
    p.add_argument("--family", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--data", default="data/sg_safety/train.jsonl")
    p.set_defaults(fn=cmd_toy_model)
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
    from safealign.data import DataError
    from safealign.judges import JudgeError
    from safealign.leaderboard import LeaderboardError
    from safealign.models import ModelUnavailable, RuntimeUnavailable
    from safealign.regress import RegressError
    from safealign.render import RenderError
    from safealign.safety import DegenerateAnswers, SafetyError
    from safealign.stages import StageError

    return (
        DataError,
        StageError,
        FileNotFoundError,
        JudgeError,
        LeaderboardError,
        ModelUnavailable,
        RuntimeUnavailable,
        DegenerateAnswers,
        SafetyError,
        RegressError,
        RenderError,
        names.InvalidName,
    )


if __name__ == "__main__":
    sys.exit(main())
