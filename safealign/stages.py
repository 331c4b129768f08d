"""Stage runners. Each builds its folder as `<stage>.tmp/`, stamps it last and renames it.

    data  canonical JSONL -> sft/kto/dpo/test files + counts          (safealign.data)
    sft   render templates/axolotl/sft.yaml.j2, run Axolotl, merge the LoRA adapter
    kto   render templates/trl/kto.{py,yaml}.j2, run the script, merge
    dpo   render templates/trl/dpo.{py,yaml}.j2, run the script, merge
    judge        train the MiniLM judge heads, measure detector agreement      (safealign.judges)
    leaderboard  lm-eval's leaderboard tasks on one model                      (safealign.leaderboard)
    safety       answer held-out prompts, judge, aggregate with intervals      (safealign.safety)
    eval         the experiment's summary, base beside aligned                  (safealign.summary)

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

from safealign import REPO, fsutil, health, models, plan, provenance
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
    """Render templates/<template> with StrictUndefined: a missing variable is an error, reported
    as StageError with the template's file:line."""
    import traceback

    from jinja2 import TemplateError

    env = Environment(loader=FileSystemLoader(str(TEMPLATES)), undefined=StrictUndefined,
                      keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True, finalize=_finalize)
    env.filters["tojson"] = _tojson
    try:
        return env.get_template(template).render(**context)
    except TemplateError as e:
        # syntax errors carry their line; undefined variables show up as a frame in the template
        line = getattr(e, "lineno", None)
        if line is None:
            frames = [f for f in traceback.extract_tb(e.__traceback__) if f.filename.endswith(template)]
            line = frames[-1].lineno if frames else "?"
        raise StageError(f"{TEMPLATES / template}:{line}: {type(e).__name__}: {e.message or e}; the template uses "
                         "a variable or filter that the stage does not pass (see safealign/stages.py), or is not "
                         "valid Jinja") from e


def model_path(recipe: Recipe, exp_dir: Path, model: str) -> str:
    """An evaluated model by its name in the plan: `base` or a stage's merged model."""
    if model == "base":
        return models.resolve(recipe.base_model)
    return str((plan.store_dir(exp_dir, model) / "merged").resolve())


def input_model(recipe: Recipe, exp_dir: Path, stage: str) -> str:
    """The model a stage starts from: the base model, or the previous stage's merged model."""
    i = recipe.stages.index(stage)
    return model_path(recipe, exp_dir, "base" if i == 0 else recipe.stages[i - 1])


def tracker_env(tracker: str, project: str, stage_dir: Path) -> dict:
    """Where each tracker writes; none of them needs a network or a server unless the user says so."""
    import importlib.util

    out = {"TENSORBOARD_LOGGING_DIR": str((stage_dir / "tensorboard").resolve())}
    if tracker == "wandb":
        out["WANDB_MODE"] = os.environ.get("WANDB_MODE", "offline")  # offline: runs sync later with `wandb sync`
        out["WANDB_DIR"] = str(stage_dir.resolve())
        out["WANDB_PROJECT"] = project
    else:
        out["WANDB_MODE"] = "disabled"
    if tracker == "mlflow":
        if importlib.util.find_spec("mlflow") is None:
            raise StageError("tracker: mlflow is not installed in this environment (pip install mlflow), "
                             "or set tracker: tensorboard")
        out["MLFLOW_TRACKING_URI"] = os.environ.get("MLFLOW_TRACKING_URI", (stage_dir / "mlruns").resolve().as_uri())
        out["MLFLOW_EXPERIMENT_NAME"] = project
    return out


def report_to(tracker: str) -> list[str]:
    return [] if tracker == "none" else [tracker]


def child_env(stage_dir: Path, tracker: str = "none", project: str = "safealign") -> dict:
    env = dict(os.environ)
    env.update(tracker_env(tracker, project, stage_dir))
    env.update({
        "AXOLOTL_DO_NOT_TRACK": "1",  # axolotl's exit-time telemetry upload hangs without a network
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONUNBUFFERED": "1",
        "SAFEALIGN_TRAIN_LOG": str((stage_dir / "train_log.jsonl").resolve()),
    })
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


def run_logged(cmd: list[str], cwd: Path, log_path: Path, env: dict | None = None) -> None:
    """Run `cmd`, teeing its output to `log_path`; raise StageError with the log's tail on failure."""
    print(f"  $ {' '.join(cmd)}   (in {cwd})", flush=True)
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env or child_env(cwd), stdout=subprocess.PIPE,
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


def _finish_training(recipe: Recipe, exp_dir: Path, stage: str, tmp: Path, base: str, t0: float,
                     rows: dict) -> None:
    cfg = getattr(recipe, stage)
    log = [json.loads(l) for l in (tmp / "train_log.jsonl").read_text().splitlines() if l.strip()]
    problems = health.check_training(log, recipe.health)
    if problems and (recipe.health.enabled or not any("loss" in r for r in log)):
        raise StageError(f"{stage}: the run failed its health check, so the stage is not done:\n  - "
                         + "\n  - ".join(problems) + f"\n  log: {tmp / 'train_log.jsonl'}; thresholds: the recipe's "
                         "health: section (health.enabled: false keeps such a run, to inspect it)")
    for p in problems:
        print(f"  warning: {stage}: {p} (health.enabled: false)", flush=True)
    losses = [health._num(r["loss"]) for r in log if "loss" in r]
    if not cfg.full_finetune:
        print(f"  merging {stage} adapter into {base}", flush=True)
        models.merge_lora(base, tmp / "adapter", tmp / "merged", dtype=models.pick_dtype(cfg.bf16))
    else:
        os.replace(tmp / "adapter", tmp / "merged")
    summary = {"stage": stage, "input_model": base, "steps": log[-1]["step"], "first_loss": losses[0],
               "last_loss": losses[-1], "seconds": round(time.time() - t0, 1), "rows": rows}
    fsutil.write_json_atomic(tmp / "summary.json", summary)
    fsutil.write_json_atomic(tmp / "provenance.json", _provenance(recipe, exp_dir, stage, input_model=base))
    print(f"  {stage}: {summary['steps']} steps, loss {losses[0]:.4f} -> {losses[-1]:.4f}, "
          f"{summary['seconds']}s", flush=True)


def train_file_name(stage: str, cfg) -> str:
    """The data stage's file a training stage learns from."""
    if stage == "kto":
        return "kto_paired.jsonl" if cfg.paired_only else "kto.jsonl"
    return f"{stage}.jsonl"


def train_rows(recipe: Recipe, exp_dir: Path, stage: str, tmp: Path, model: str) -> dict:
    """Write the rows `stage` trains on to tmp/train.jsonl, each fitted to its max_length with the
    model's own tokenizer and chat template (safealign/truncate.py); return the outcome counts."""
    from safealign import truncate

    cfg = getattr(recipe, stage)
    src = plan.store_dir(exp_dir, "data") / train_file_name(stage, cfg)
    rows = [json.loads(l) for l in src.read_text(encoding="utf-8").splitlines() if l.strip()]
    fitted, counts = truncate.fit_rows(models.load_tokenizer(model), rows, "sft" if stage == "sft" else
                                       ("dpo" if stage == "dpo" else "kto"), cfg.max_length)
    if not fitted:
        raise StageError(f"{stage}: every row of {src} is longer than max_length {cfg.max_length} even when cut")
    data_mod.write_jsonl(tmp / "train.jsonl", fitted)
    cut = counts[truncate.PROMPT] + counts[truncate.COMPLETION]
    if cut or counts[truncate.DROPPED]:
        print(f"  {stage}: {cut} of {len(rows)} rows cut to max_length {cfg.max_length} "
              f"({counts[truncate.PROMPT]} prompts from the left, {counts[truncate.COMPLETION]} completions), "
              f"{counts[truncate.DROPPED]} dropped", flush=True)
    return {"source": src.name, "max_length": cfg.max_length, **counts}


def run_data(recipe: Recipe, exp_dir: Path) -> None:
    with fsutil.staged_dir(plan.store_dir(exp_dir, "data")) as tmp:
        c = data_mod.build(recipe.data.source, recipe.seed, tmp, root=REPO)
        unmet = data_mod.unmet_needs(recipe.stages, recipe.kto.paired_only, c, judge=recipe.eval.safety.judge == "minilm"
                                     or recipe.eval.safety.refusal == "minilm")
        if unmet:
            raise StageError(f"data from {recipe.data.source} cannot serve this experiment's stages:\n  - "
                             + "\n  - ".join(unmet) + f"\n  (counts: {tmp / 'counts.json'})")
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
        rows = train_rows(recipe, exp_dir, "sft", tmp, base)
        text = render("axolotl/sft.yaml.j2", recipe_path=recipe_path, base_model=base, seed=recipe.seed,
                      train_file="train.jsonl", cfg=recipe.sft,
                      bf16=models.use_bf16(recipe.sft.bf16), cuda=models.has_cuda(), tracker=recipe.tracker,
                      tracker_project=recipe.tracker_project)
        (tmp / "axolotl.yaml").write_text(text)
        run_logged([sys.executable, "-m", "axolotl.cli.train", "axolotl.yaml"], tmp, tmp / "train.log",
                   env=child_env(tmp, recipe.tracker, recipe.tracker_project))
        shutil.rmtree(tmp / "prepared", ignore_errors=True)
        _finish_training(recipe, exp_dir, "sft", tmp, base, t0, rows)


def check_rows(stage: str, cfg, data_dir: Path) -> list[str]:
    """Warnings worth printing before a stage trains (the data stage already refused data that a
    stage cannot use at all: data.unmet_needs)."""
    if stage != "kto":
        return []
    rows = [json.loads(line) for line in open(data_dir / ("kto_paired.jsonl" if cfg.paired_only else "kto.jsonl"))]
    n_d = sum(r["label"] for r in rows)
    advice = data_mod.kto_weight_advice(n_d, len(rows) - n_d, cfg.desirable_weight, cfg.undesirable_weight)
    if n_d in (0, len(rows)):  # one class only (data built before the data stage checked it)
        raise StageError(f"kto: {advice}")
    return [f"kto: {advice}"] if advice else []


def run_trl(recipe: Recipe, exp_dir: Path, stage: str, recipe_path: str) -> None:
    t0 = time.time()
    base = input_model(recipe, exp_dir, stage)
    cfg = getattr(recipe, stage)
    for warning in check_rows(stage, cfg, plan.store_dir(exp_dir, "data")):
        print(f"  warning: {warning}", flush=True)
    with fsutil.staged_dir(plan.store_dir(exp_dir, stage)) as tmp:
        rows = train_rows(recipe, exp_dir, stage, tmp, base)
        ctx = dict(recipe_path=recipe_path, model=base, seed=recipe.seed, cfg=cfg, train_file="train.jsonl",
                   bf16=models.use_bf16(cfg.bf16), report_to=report_to(recipe.tracker))
        (tmp / f"train_{stage}.py").write_text(render(f"trl/{stage}.py.j2", **ctx))
        (tmp / f"{stage}.yaml").write_text(render(f"trl/{stage}.yaml.j2", **ctx))
        yaml.safe_load((tmp / f"{stage}.yaml").read_text())  # a template that renders bad YAML fails here
        run_logged([sys.executable, f"train_{stage}.py", f"{stage}.yaml"], tmp, tmp / "train.log",
                   env=child_env(tmp, recipe.tracker, recipe.tracker_project))
        _finish_training(recipe, exp_dir, stage, tmp, base, t0, rows)


def run_judge(recipe: Recipe, exp_dir: Path) -> None:
    from safealign import judges

    splits, origin = data_mod.load_canonical(recipe.data.source, REPO)
    with fsutil.staged_dir(plan.store_dir(exp_dir, "judge")) as tmp:
        report = judges.build(splits["train"], splits["test"], recipe.seed, tmp)
        fsutil.write_json_atomic(tmp / "provenance.json", provenance.collect(
            REPO, recipe.seed, {"hard_cases.jsonl": fsutil.sha256_file(judges.HARD_CASES)}, stage="judge",
            data_source=origin))
        h = report["hard_cases"]
        print(f"  judge: agreement on held-out answers: refusal keyword {report['held_out']['refusal_keyword']:.0%}, "
              f"minilm {report['held_out']['refusal_minilm']:.0%}, toxic {report['held_out']['toxic_minilm']:.0%}; "
              f"hard cases: refusal keyword {h['refusal_keyword']:.0%}, minilm {h['refusal_minilm']:.0%}", flush=True)


def run_leaderboard(recipe: Recipe, exp_dir: Path, model: str) -> None:
    from safealign import leaderboard

    path = model_path(recipe, exp_dir, model)
    with fsutil.staged_dir(plan.store_dir(exp_dir, f"leaderboard-{model}")) as tmp:
        tab = leaderboard.run(path, recipe.eval.leaderboard, tmp, recipe.seed,
                              log=lambda m: print(m, flush=True))
        fsutil.write_json_atomic(tmp / "provenance.json", provenance.collect(
            REPO, recipe.seed, {}, stage="leaderboard", model=path, source=recipe.eval.leaderboard.source))
        print("  leaderboard (normalised): " + ", ".join(f"{t} {n}" for t, _, n in leaderboard.format_rows(tab)),
              flush=True)


def run_safety(recipe: Recipe, exp_dir: Path, model: str) -> None:
    from safealign import judges, safety

    cfg = recipe.eval.safety
    judges.check_name(cfg.judge, cfg.refusal)
    path = model_path(recipe, exp_dir, model)
    test = [json.loads(l) for l in (plan.store_dir(exp_dir, "data") / "test.jsonl").read_text().splitlines() if l.strip()]
    judge = judges.Judge.from_dir(plan.store_dir(exp_dir, "judge"), cfg.judge, cfg.refusal)
    reference = None if model == "base" else plan.store_dir(exp_dir, "safety-base") / "answers.jsonl"
    with fsutil.staged_dir(plan.store_dir(exp_dir, f"safety-{model}")) as tmp:
        m = safety.run(path, test, cfg, judge, tmp, recipe.seed, base_answers=reference, health_cfg=recipe.health)
        fsutil.write_json_atomic(tmp / "provenance.json", _provenance(recipe, exp_dir, "safety", model=path))
        o = m["overall"]
        print("  safety: " + ", ".join(f"{k} {v['value']:.3f} [{v['low']:.3f}, {v['high']:.3f}]" for k, v in o.items()),
              flush=True)


def run_eval(recipe: Recipe, exp_dir: Path) -> None:
    """The experiment's summary: every evaluated model's leaderboard and safety results side by side."""
    from safealign import summary

    with fsutil.staged_dir(exp_dir / "eval") as tmp:
        s = summary.build(recipe, exp_dir)
        fsutil.write_text_atomic(tmp / "summary.json", json.dumps(s, indent=2) + "\n")  # keeps the model order
        text = summary.markdown(s)
        (tmp / "summary.md").write_text(text)
        print(text, flush=True)
