"""A training stage's work in its folder, for every kind: the rows fitted to max_length, the
rendered files, the tool run in a child process (safealign/train/launcher.py), the health check,
the merge and the stage's summary and provenance. safealign/run/stages.py's runners and the
online rounds (safealign/run/rounds.py) train through train_as.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from safealign import REPO
from safealign.config import kinds, launch
from safealign.core import console, fsutil
from safealign.core.errors import StageError
from safealign.data import rows as data_mod
from safealign.eval import health
from safealign.models import load as models
from safealign.plan import provenance
from safealign.plan.experiment import Experiment, machine_problems
from safealign.train import launcher, render

MAX_LISTED = 20  # refused rows named in a stage's summary.json (the count is always whole)


def provenance_of(exp: Experiment, stage: str, **extra) -> dict:
    data_dir = exp.dir("data")
    counts = data_dir / "counts.json"
    hashes = {p.name: fsutil.sha256_file(p) for p in sorted(data_dir.glob("*.jsonl"))}
    return provenance.collect(
        REPO,
        exp.recipe.seed,
        hashes,
        stage=stage,
        data_source=json.loads(counts.read_text())["source"] if counts.exists() else None,
        built_for=exp.name,
        **extra,
    )


def train_rows(exp: Experiment, stage: str, tmp: Path, model: str, src: Path | None = None, layout: str = "") -> dict:
    """Write the rows `stage` trains on to tmp/train.jsonl, each fitted to its max_length with the
    model's own tokenizer and chat template (safealign/models/truncate.py); return the outcome counts.
    `src` and `layout`: an online round's own rows (default: the data stage's file of the kind)."""
    from safealign.models import truncate

    kind, cfg = kinds.get(stage), getattr(exp.recipe, stage)
    src = src or exp.dir("data") / kind.data_file(cfg)
    numbered = [(n, line) for n, line in enumerate(src.read_text(encoding="utf-8").splitlines(), 1) if line.strip()]
    rows = [json.loads(line) for _, line in numbered]
    fitted, counts = truncate.fit_rows(models.load_tokenizer(model), rows, layout or kind.data, cfg.max_length)
    refused = [f"{src.name}:{numbered[r['row']][0]} (id {r['id']}): {r['token']!r}" for r in counts.pop("refused")]
    if refused:
        console.say(
            f"  {stage}: {len(refused)} of {len(rows)} rows refused: their text holds a control token of the "
            f"model's tokenizer, which would become a turn marker ({'; '.join(refused[:3])}"
            f"{'; ...' if len(refused) > 3 else ''}; all in summary.json)"
        )
    if not fitted:
        raise StageError(
            f"{stage}: no row of {src} is left to train on: "
            + (f"{len(refused)} hold control tokens, " if refused else "")
            + f"the rest are longer than max_length {cfg.max_length} even when cut"
        )
    data_mod.write_jsonl(tmp / "train.jsonl", fitted)
    cut = counts[truncate.PROMPT] + counts[truncate.COMPLETION]
    if cut or counts[truncate.DROPPED]:
        console.say(
            f"  {stage}: {cut} of {len(rows)} rows cut to max_length {cfg.max_length} "
            f"({counts[truncate.PROMPT]} prompts from the left, {counts[truncate.COMPLETION]} completions), "
            f"{counts[truncate.DROPPED]} dropped"
        )
    return {"source": src.name, "max_length": cfg.max_length, **counts, "refused_control": refused[:MAX_LISTED]}


def speed(log: list[dict], tokens_per_epoch: int, memory_file: Path) -> dict:
    """The trainer's own wall time (`train_runtime`: the training loop, without loading and
    merging), tokens per second (the fitted rows' tokens x epochs run / that time, padding not
    counted: the same definition for every kind) and the training process's peak memory."""
    end = next((r for r in reversed(log) if "train_runtime" in r), None)
    out = {}
    if end:
        out["train_seconds"] = end["train_runtime"]
        epochs = end.get("epoch") or 0
        if end["train_runtime"] > 0 and epochs:
            out["tokens_per_second"] = round(tokens_per_epoch * epochs / end["train_runtime"], 1)
    if memory_file.exists():
        mem = json.loads(memory_file.read_text())
        out["peak_memory_mb"], out["memory_device"] = mem["peak_mb"], mem["device"]
    return out


def finish_training(exp: Experiment, stage: str, tmp: Path, base: str, t0: float, rows: dict, rt: dict) -> None:
    cfg = getattr(exp.recipe, stage)
    try:  # what ran, as every process recorded it: a wrong launch can exit 0
        dist = launcher.verify(tmp, exp.recipe.launch, rt["cuda"])
    except launcher.LaunchMismatch as e:
        raise StageError(f"{stage}: {e}") from None
    log = [json.loads(line) for line in (tmp / "train_log.jsonl").read_text().splitlines() if line.strip()]
    # an online round's or GRPO's loss need not fall (Kind.loss_falls); divergence and dead gradients still fail it
    problems = health.check_training(log, exp.recipe.health, fall=kinds.get(stage).loss_falls)
    if problems and (exp.recipe.health.enabled or not any("loss" in r for r in log)):
        raise StageError(
            f"{stage}: the run failed its health check, so the stage is not done:\n  - "
            + "\n  - ".join(problems)
            + f"\n  log: {tmp / 'train_log.jsonl'}; thresholds: the recipe's "
            "health: section (health.enabled: false keeps such a run, to inspect it)"
        )
    for p in problems:
        print(f"  warning: {stage}: {p} (health.enabled: false)", flush=True)
    losses = [health.number(r["loss"]) for r in log if "loss" in r]
    merge = None
    if not cfg.full_finetune:
        dtype = models.merge_dtype(base, cfg.bf16)
        print(f"  merging {stage} adapter into {base} (reloaded unquantised, {dtype})", flush=True)
        models.merge_lora(base, tmp / "adapter", tmp / "merged", dtype=dtype)
        merge = {
            "adapter_trained_on": "4-bit NF4 base (QLoRA)" if rt["qlora"] else f"{models.pick_dtype(cfg.bf16)} base",
            "merged_into": f"{base} reloaded in {dtype}, unquantised",
        }
    else:
        os.replace(tmp / "adapter", tmp / "merged")
    summary = {
        "stage": stage,
        "input_model": base,
        "steps": log[-1]["step"],
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "mean_loss": sum(losses) / len(losses),
        "seconds": round(time.time() - t0, 1),
        "rows": rows,
        **speed(log, rows["tokens"], tmp / "peak_memory.json"),
        "runtime": rt,
        "distributed": dist,
    }
    fsutil.write_json_atomic(tmp / "summary.json", summary)
    fsutil.write_json_atomic(
        tmp / "provenance.json",
        provenance_of(
            exp, stage, input_model=base, runtime=rt, distributed=dist, **({"merge": merge} if merge else {})
        ),
    )
    console.say(
        f"  {stage}: {summary['steps']} steps, loss {losses[0]:.4f} -> {losses[-1]:.4f}, {summary['seconds']}s"
        + (
            f"; {dist['world_size']} processes, {dist['distributed_type']} over {dist['backend']}"
            if dist["world_size"] > 1 or dist["distributed_type"] != "NO"
            else ""
        )
    )


_WARNED_BF16: set[str] = set()  # stages told that bf16 is emulated on this CPU


def train_as(exp: Experiment, stage: str, kind, tmp: Path, base: str, prepare, judge: dict | None = None) -> None:
    """Train `stage`'s settings as `kind` (an online stage's round: its offline kind) from `base`
    in the folder `tmp`: `prepare()` writes tmp/train.jsonl and returns its counts while the
    preloaded child imports its tool; then render, run, check and merge."""
    t0 = time.time()
    cfg, r = getattr(exp.recipe, stage), exp.recipe
    try:
        rt = models.runtime(cfg, kind.name)
    except models.RuntimeUnavailable as e:
        raise StageError(str(e)) from None
    problems = machine_problems(r)
    if problems:
        raise StageError(f"{stage}: " + "; ".join(problems))
    if rt["bf16"] and not rt["cuda"] and not models.cpu_bf16() and stage not in _WARNED_BF16:
        _WARNED_BF16.add(stage)  # once a stage: an online stage's rounds all call here
        print(
            f"  warning: {stage}.bf16: this CPU has no AVX512-BF16 or AMX, so bf16 is emulated and "
            "slower than fp32 here (bf16: native trains in fp32 on such a CPU)",
            flush=True,
        )
    env = launcher.child_env(tmp, r.tracker, r.tracker_project)
    # the child starts now: its imports run beside this process's tokenizer and rows
    with launcher.preloaded(launcher.preload_names(kind), r.launch, tmp, env) as child:
        rows = prepare()
        tok = models.load_tokenizer(base)
        per_step = cfg.num_generations if kind.rewards else 1  # GRPO's batches hold answers, num_generations a prompt
        cmd = render.render_stage(
            kind,
            cfg,
            tmp,
            recipe_path=exp.recipe_file,
            model=base,
            seed=r.seed,
            tracker=r.tracker,
            tracker_project=r.tracker_project,
            rt=rt,
            warmup=render.warmup_steps(
                cfg, per_step * (rows["kept"] + rows["prompt_truncated"] + rows["completion_truncated"])
            ),
            eot=models.turn_end(tok),
            eos=tok.eos_token,
            launch_cfg=r.launch,
            judge=judge,
        )
        if r.launch.nodes > 1:  # the other nodes (safealign join) run this command with their --machine_rank
            fsutil.write_json_atomic(
                tmp / launch.JOIN_FILE, {"command": cmd, "nodes": r.launch.nodes, "pid": os.getpid()}
            )
            print(f"  {stage}: waiting for {r.launch.nodes - 1} more node(s): make join ... NODE_RANK=<n>", flush=True)
        launcher.run_logged(
            cmd, tmp, tmp / "train.log", env=env, steps=cfg.max_steps if cfg.max_steps > 0 else None, child=child
        )
        shutil.rmtree(tmp / "prepared", ignore_errors=True)  # Axolotl's tokenized copy of train.jsonl
        shutil.rmtree(tmp / launcher.DATASETS_CACHE, ignore_errors=True)  # datasets' Arrow copy of it
    finish_training(exp, stage, tmp, base, t0, rows, rt)
