#!/usr/bin/env python3
"""Benchmark the evaluation stages of one experiment; prints figures.

    make bench-eval [NAME=sft_kto]     # or: .venv/bin/python tools/bench_eval.py --name sft_kto

Needs the experiment's training stages (runs `make exp NAME=<name>` first if they are missing),
then re-runs each evaluation stage in this process, in a scratch copy of the store entries, and
prints per stage: wall time, causal-LM loads (calls to AutoModelForCausalLM.from_pretrained,
counted, not assumed) and lm-eval invocations. Goal: one load per (model, backend) for the
leaderboard, however many invocations the prompt settings need.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", default="sft_kto")
    ap.add_argument("--experiments", default=str(REPO / "experiments"))
    a = ap.parse_args()
    exp = Path(a.experiments) / a.name
    r = subprocess.run(
        [
            "make",
            "--no-print-directory",
            "exp",
            f"NAME={a.name}",
            f"EXPERIMENTS={a.experiments}",
            "MODEL=",
        ],  # tiny-local
        cwd=REPO,
        env={**os.environ, "SAFEALIGN_QUIET": "1"},
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        sys.exit(f"make exp NAME={a.name} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")

    import transformers

    from safealign.plan import experiment as plan
    from safealign.run import stages

    loads = []
    orig = transformers.AutoModelForCausalLM.from_pretrained.__func__

    def counted(cls, *args, **kw):
        loads.append(args[0] if args else kw.get("pretrained_model_name_or_path"))
        return orig(cls, *args, **kw)

    transformers.AutoModelForCausalLM.from_pretrained = classmethod(counted)
    recipe = plan.Experiment(exp).recipe
    rows = []
    with tempfile.TemporaryDirectory(prefix="safealign-bench-eval-") as tmp:
        scratch = Path(tmp) / "experiments"
        shutil.copytree(exp, scratch / a.name, symlinks=True)
        store = scratch / plan.STORE
        store.mkdir()
        for entry in json.loads((exp / "stages.json").read_text()).values():  # inputs by link, results rewritten
            src = Path(a.experiments) / plan.STORE / entry["dir"]
            if entry["dir"].startswith(("leaderboard-", "safety-", "judge-")):
                continue
            (store / entry["dir"]).symlink_to(src.resolve(), target_is_directory=True)
        sexp = plan.Experiment(scratch / a.name)
        os.environ["SAFEALIGN_QUIET"] = "1"
        steps = [("judge", None)] + [
            (k, m)
            for m in plan.eval_models(recipe)
            for k in ("safety", "leaderboard")
            if k == "safety" or recipe.eval.leaderboard.enabled
        ]
        for kind, model in steps:
            n0, t0 = len(loads), time.time()
            stages.run(sexp, kind, model)
            secs = time.time() - t0
            inv = ""
            if kind == "leaderboard":
                inv = str(len(json.loads((sexp.dir(f"leaderboard-{model}") / "table.json").read_text())["invocations"]))
            rows.append((f"{kind}" + (f" ({model})" if model else ""), secs, len(loads) - n0, inv))
    print(f"\nevaluation stages of {a.name} ({len(plan.eval_models(recipe))} models), {os.cpu_count()} CPU cores:")
    print(f"  {'stage':<22} {'seconds':>8} {'model loads':>12} {'lm-eval calls':>14}")
    for name, secs, n, inv in rows:
        print(f"  {name:<22} {secs:>8.1f} {n:>12} {inv:>14}")
    total = sum(r[1] for r in rows)
    print(f"  {'total':<22} {total:>8.1f} {sum(r[2] for r in rows):>12}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
