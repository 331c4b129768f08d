"""Stage runners. Each builds its folder as `<stage>.tmp/`, stamps it last and renames it.

    data  canonical JSONL -> sft/kto/dpo/test files + counts          (safealign.data)
    sft   render templates/axolotl/sft.yaml.j2, run Axolotl, merge the LoRA adapter
    kto   render templates/trl/kto.{py,yaml}.j2, run the script, merge
    dpo   render templates/trl/dpo.{py,yaml}.j2, run the script, merge
    eval  generate on held-out prompts with the base and every stage's model (safealign.evaluate)

Training runs in a child process with its cwd in the stage folder, so the rendered config
there is the exact, re-runnable record of what ran; its output goes to train.log and, line
by line, to the terminal.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml
from jinja2 import Environment, FileSystemLoader, StrictUndefined, Undefined

from safealign import REPO, fsutil, models, plan, provenance
from safealign import data as data_mod
from safealign.recipe import Recipe

TEMPLATES = Path(os.environ.get("SAFEALIGN_TEMPLATES", REPO / "templates"))


class StageError(RuntimeError):
    pass


def _float(x: float) -> str:
    """A float as YAML 1.1 reads it back as a float: PyYAML (used by Axolotl and by the rendered
    scripts) reads `1e-05` as a string, `1.0e-05` as a number."""
    text = repr(x)
    mantissa, e, exponent = text.partition("e")
    return f"{mantissa}.0e{exponent}" if e and "." not in mantissa else text


def _tojson(value) -> str:
    """A JSON (hence YAML) literal; unlike jinja's own filter, an undefined value is an error."""
    if isinstance(value, Undefined):
        value._fail_with_undefined_error()
    if isinstance(value, float):
        return _float(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_tojson(v) for v in value) + "]"
    return json.dumps(value)


def _finalize(value):
    return _float(value) if isinstance(value, float) else value


def render(template: str, **context) -> str:
    """Render templates/<template> with StrictUndefined: a missing variable is an error."""
    env = Environment(loader=FileSystemLoader(str(TEMPLATES)), undefined=StrictUndefined,
                      keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True, finalize=_finalize)
    env.filters["tojson"] = _tojson
    return env.get_template(template).render(**context)


def input_model(recipe: Recipe, exp_dir: Path, stage: str) -> str:
    """The model a stage starts from: the base model, or the previous stage's merged model."""
    i = recipe.stages.index(stage)
    if i == 0:
        return models.resolve(recipe.base_model)
    return str((plan.store_dir(exp_dir, recipe.stages[i - 1]) / "merged").resolve())


def child_env(stage_dir: Path) -> dict:
    env = dict(os.environ)
    env.update({
        "AXOLOTL_DO_NOT_TRACK": "1",  # axolotl's exit-time telemetry upload hangs without a network
        "WANDB_MODE": env.get("WANDB_MODE", "disabled"),
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONUNBUFFERED": "1",
        "SAFEALIGN_TRAIN_LOG": str((stage_dir / "train_log.jsonl").resolve()),
    })
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


def run_logged(cmd: list[str], cwd: Path, log_path: Path) -> None:
    """Run `cmd`, teeing its output to `log_path`; raise StageError with the log's tail on failure."""
    print(f"  $ {' '.join(cmd)}   (in {cwd})", flush=True)
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, env=child_env(cwd), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, bufsize=1)
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            if line.strip() and os.environ.get("SAFEALIGN_QUIET") != "1":
                sys.stdout.write("  | " + line)
        rc = proc.wait()
    if rc != 0:
        tail = "".join(open(log_path, encoding="utf-8").readlines()[-25:])
        raise StageError(f"{cmd[0]} exited with {rc}; full log: {log_path}\n{tail}")


def _provenance(recipe: Recipe, exp_dir: Path, stage: str, **extra) -> dict:
    data_dir = plan.store_dir(exp_dir, "data")
    counts = data_dir / "counts.json"
    hashes = {p.name: fsutil.sha256_file(p) for p in sorted(data_dir.glob("*.jsonl"))}
    return provenance.collect(REPO, recipe.seed, hashes, stage=stage,
                              data_source=json.loads(counts.read_text())["source"] if counts.exists() else None,
                              built_for=exp_dir.name, **extra)


def _finish_training(recipe: Recipe, exp_dir: Path, stage: str, tmp: Path, base: str, t0: float) -> None:
    cfg = getattr(recipe, stage)
    log = [json.loads(l) for l in (tmp / "train_log.jsonl").read_text().splitlines() if l.strip()]
    losses = [r["loss"] for r in log if "loss" in r]
    if not losses:
        raise StageError(f"{stage}: training logged no loss; see {tmp / 'train.log'}")
    if not cfg.full_finetune:
        print(f"  merging {stage} adapter into {base}", flush=True)
        models.merge_lora(base, tmp / "adapter", tmp / "merged", dtype=models.pick_dtype(cfg.bf16))
    else:
        os.replace(tmp / "adapter", tmp / "merged")
    summary = {"stage": stage, "input_model": base, "steps": log[-1]["step"], "first_loss": losses[0],
               "last_loss": losses[-1], "seconds": round(time.time() - t0, 1)}
    fsutil.write_json_atomic(tmp / "summary.json", summary)
    fsutil.write_json_atomic(tmp / "provenance.json", _provenance(recipe, exp_dir, stage, input_model=base))
    print(f"  {stage}: {summary['steps']} steps, loss {losses[0]:.4f} -> {losses[-1]:.4f}, "
          f"{summary['seconds']}s", flush=True)


def run_data(recipe: Recipe, exp_dir: Path) -> None:
    with fsutil.staged_dir(plan.store_dir(exp_dir, "data")) as tmp:
        c = data_mod.build(recipe.data.source, recipe.seed, tmp, root=REPO)
        fsutil.write_json_atomic(tmp / "provenance.json", provenance.collect(
            REPO, recipe.seed, {k: fsutil.sha256_file(Path(v)) for k, v in c["source"].items()
                                if not v.startswith("hf://")}, stage="data"))
        print(f"  data: {c['train']['rows']} train rows ({c['train']['unsafe']} unsafe), "
              f"{c['test']['rows']} held-out; kto {c['stages']['kto']['desirable']} desirable / "
              f"{c['stages']['kto']['undesirable']} undesirable; dpo {c['stages']['dpo']['rows']} pairs", flush=True)


def run_sft(recipe: Recipe, exp_dir: Path, recipe_path: str) -> None:
    t0 = time.time()
    base = input_model(recipe, exp_dir, "sft")
    with fsutil.staged_dir(plan.store_dir(exp_dir, "sft")) as tmp:
        text = render("axolotl/sft.yaml.j2", recipe_path=recipe_path, base_model=base, seed=recipe.seed,
                      data_dir=str(plan.store_dir(exp_dir, "data").resolve()), cfg=recipe.sft,
                      bf16=models.use_bf16(recipe.sft.bf16), cuda=models.has_cuda())
        (tmp / "axolotl.yaml").write_text(text)
        run_logged([sys.executable, "-m", "axolotl.cli.train", "axolotl.yaml"], tmp, tmp / "train.log")
        shutil.rmtree(tmp / "prepared", ignore_errors=True)
        _finish_training(recipe, exp_dir, "sft", tmp, base, t0)


def check_rows(stage: str, cfg, data_dir: Path) -> list[str]:
    """Stop a stage that cannot learn from its data; return warnings worth printing."""
    if stage == "dpo":
        n = sum(1 for line in open(data_dir / "dpo.jsonl") if line.strip())
        if not n:
            raise StageError(f"dpo: {data_dir / 'dpo.jsonl'} has no paired rows (unsafe prompts with a rejected "
                             "answer); DPO needs pairs")
        return []
    rows = [json.loads(line) for line in open(data_dir / ("kto_paired.jsonl" if cfg.paired_only else "kto.jsonl"))]
    n_d = sum(r["label"] for r in rows)
    advice = data_mod.kto_weight_advice(n_d, len(rows) - n_d, cfg.desirable_weight, cfg.undesirable_weight)
    if n_d in (0, len(rows)):  # one class only
        raise StageError(f"kto: {advice}")
    return [f"kto: {advice}"] if advice else []


def run_trl(recipe: Recipe, exp_dir: Path, stage: str, recipe_path: str) -> None:
    t0 = time.time()
    base = input_model(recipe, exp_dir, stage)
    cfg = getattr(recipe, stage)
    for warning in check_rows(stage, cfg, plan.store_dir(exp_dir, "data")):
        print(f"  warning: {warning}", flush=True)
    with fsutil.staged_dir(plan.store_dir(exp_dir, stage)) as tmp:
        ctx = dict(recipe_path=recipe_path, model=base, seed=recipe.seed, cfg=cfg,
                   data_dir=str(plan.store_dir(exp_dir, "data").resolve()),
                   bf16=models.use_bf16(cfg.bf16))
        (tmp / f"train_{stage}.py").write_text(render(f"trl/{stage}.py.j2", **ctx))
        (tmp / f"{stage}.yaml").write_text(render(f"trl/{stage}.yaml.j2", **ctx))
        yaml.safe_load((tmp / f"{stage}.yaml").read_text())  # a template that renders bad YAML fails here
        run_logged([sys.executable, f"train_{stage}.py", f"{stage}.yaml"], tmp, tmp / "train.log")
        _finish_training(recipe, exp_dir, stage, tmp, base, t0)


def run_eval(recipe: Recipe, exp_dir: Path) -> None:
    from safealign import evaluate

    with fsutil.staged_dir(exp_dir / "eval") as tmp:
        targets = {"base": models.resolve(recipe.base_model)}
        targets.update({s: str((plan.store_dir(exp_dir, s) / "merged").resolve()) for s in recipe.stages})
        metrics = evaluate.run(targets, plan.store_dir(exp_dir, "data") / "test.jsonl", recipe.eval, tmp,
                               seed=recipe.seed)
        fsutil.write_json_atomic(tmp / "provenance.json", _provenance(recipe, exp_dir, "eval", models=targets))
        table = evaluate.format_table(metrics)
        (tmp / "summary.txt").write_text(table + "\n")
        print(table, flush=True)
