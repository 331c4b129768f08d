#!/usr/bin/env python3
"""Benchmark the KTO modifications: sft_kto against sft_kto_s, sft_kto_nll, sft_kto_lennorm.

    make bench-kto                    # or: .venv/bin/python tools/bench_kto.py [--set kto.undesirable_weight=0.25]

All four run on the same data, seed and SFT model: the others reuse sft_kto's data and SFT
stages from the stage store (checked), so only the KTO stage and evaluation differ. Prints,
per logged step, z0 (trl's `kl`), the mean reward on desirable and undesirable rows and the
loss, then a summary per variant with its refusal rates on the held-out prompts.

z0 is clamped at 0 and KTO-S equals KTO wherever z0 = 0, so the comparison only means something
where z0 > 0. With the shipped recipe the mismatched-pair estimate is negative on the tiny model
(KTO pushes the compliant answers down everywhere, and those answers also appear as the KL
pairs' completions). `--set` overrides recipe keys for every variant, e.g. a smaller
undesirable weight, and the summary prints the share of steps with z0 > 0.
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

import yaml

REPO = Path(__file__).resolve().parent.parent
VARIANTS = ["sft_kto", "sft_kto_s", "sft_kto_nll", "sft_kto_lennorm"]


def make(*args: str) -> None:
    r = subprocess.run(
        ["make", "--no-print-directory", *args, "MODEL="],  # tiny-local: the figures in docs/benchmarks.md
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "SAFEALIGN_QUIET": "1"},
    )
    if r.returncode != 0:
        sys.exit(f"make {' '.join(args)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")


def set_key(d: dict, dotted: str, value: str) -> None:
    *path, last = dotted.split(".")
    for k in path:
        d = d.setdefault(k, {})
    d[last] = yaml.safe_load(value)


def write_recipes(dst: Path, overrides: list[str]) -> None:
    for name in VARIANTS:
        raw = yaml.safe_load((REPO / "recipes" / f"{name}.yaml").read_text())
        if name == "sft_kto":
            for o in overrides:
                key, _, value = o.partition("=")
                set_key(raw, key, value)
        (dst / f"{name}.yaml").write_text(f"# make exp NAME={name}\n" + yaml.safe_dump(raw, sort_keys=False))


def log_rows(stage_dir: Path) -> list[dict]:
    return [r for r in map(json.loads, (stage_dir / "train_log.jsonl").read_text().splitlines()) if "loss" in r]


def fmt(v) -> str:
    return f"{v:8.3f}" if isinstance(v, (int, float)) else f"{'-':>8}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="recipe overrides for all variants, e.g. kto.undesirable_weight=0.25",
    )
    ap.add_argument("--keep", type=Path, help="keep the experiments in this folder")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="safealign-bench-kto-"))
    recipes, root = tmp / "recipes", a.keep or tmp / "experiments"
    recipes.mkdir()
    write_recipes(recipes, a.set)
    common = [f"EXPERIMENTS={root}", f"RECIPES={recipes}"]
    timings = {}
    for name in VARIANTS:  # sft_kto first; the others reuse its data and SFT stages from the store
        t0 = time.time()
        make("exp", f"NAME={name}", *common)
        timings[name] = time.time() - t0
        plan = json.loads((root / name / "stages.json").read_text())
        base = json.loads((root / "sft_kto" / "stages.json").read_text())
        shared = [k for k in ("data", "sft") if k in base]
        assert all(plan.get(k) == base[k] for k in shared), f"{name} does not share sft_kto's {shared}"

    logs = {n: log_rows(root / n / "kto") for n in VARIANTS}
    print(f"KTO variants on the same data, seed and SFT model; overrides: {' '.join(a.set) or 'none'}")
    for metric, label in (
        ("kl", "z0 (kl)"),
        ("rewards/chosen", "reward, desirable rows"),
        ("rewards/rejected", "reward, undesirable rows"),
        ("loss", "loss"),
        ("nll_loss", "nll_loss"),
    ):
        if not any(metric in r for rows in logs.values() for r in rows):
            continue
        print(f"\n{label}\n  step " + "".join(f"{n[-12:]:>16}" for n in VARIANTS))
        for i in range(max(len(v) for v in logs.values())):
            step = next(rows[i]["step"] for rows in logs.values() if i < len(rows))
            print(
                f"  {step:4d} "
                + "".join(f"{fmt(rows[i].get(metric) if i < len(rows) else None):>16}" for rows in logs.values())
            )
    print("\nsummary")
    print(
        f"  {'variant':<18}{'steps z0>0':>11}{'mean z0':>9}{'max z0':>8}{'first loss':>11}{'last loss':>10}"
        f"{'last r_D':>9}{'last r_U':>9}{'seconds':>9}"
    )
    for n, rows in logs.items():
        kl = [r["kl"] for r in rows]
        last = rows[-1]
        print(
            f"  {n:<18}{sum(k > 0 for k in kl):>5}/{len(kl):<5}{sum(kl) / len(kl):9.3f}{max(kl):8.3f}"
            f"{rows[0]['loss']:11.4f}{last['loss']:10.4f}{last.get('rewards/chosen', float('nan')):9.3f}"
            f"{last.get('rewards/rejected', float('nan')):9.3f}{timings[n]:9.1f}"
        )
    print(f"\n  {'variant':<18}{'unsafe refused':>15}{'safe refused':>13}{'toxic':>8}   (held-out prompts, KTO model)")
    for n in VARIANTS:
        m = json.loads((root / n / "eval" / "summary.json").read_text())["models"]["kto"]["safety"]["overall"]
        print(
            f"  {n:<18}{m['refusal_rate']['value']:>15.1%}{m['false_refusal_rate']['value']:>13.1%}"
            f"{m['toxicity_rate']['value']:>8.1%}"
        )
    if not a.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
