"""More than one process: how a training stage starts and what each process ran. The recipe's
`launch:` section (processes, nodes, strategy, ZeRO stage, offload) is safealign/config/launch.py.

One process with `ddp` runs the training script directly, as before. Anything else goes through
`accelerate launch` with an accelerate config rendered into the stage folder
(templates/accelerate/config.yaml.j2); DeepSpeed's config is rendered beside it
(templates/deepspeed/ds_config.json.j2). The SFT stage (Axolotl) takes DeepSpeed and FSDP through
Axolotl's own keys (`deepspeed:`, `fsdp_config:`) and accelerate only for the processes; the trl
stages take them through the accelerate config.

Several wrong launches exit 0 while doing something else (one process instead of two, two
independent trainings, plain DDP instead of DeepSpeed), so the exit code proves nothing: every
process of a training run records what it ran as (`launch/rank<N>.json`, written from inside
the trainer by safealign/train/callbacks.py) and `verify` refuses the stage unless the world size and
the distributed type are the ones the recipe asked for.

On a machine without CUDA (the tests, a laptop) DDP runs over gloo with ACCELERATE_USE_CPU=1, and
DeepSpeed with the trainer's `ddp_backend: gloo`; FSDP is refused (accelerate enables it only on
GPUs: on CPU it would train unsynchronised copies).
"""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from safealign import REPO
from safealign.config.launch import (
    ACCELERATE_CONFIG,
    DEEPSPEED_CONFIG,
    RECORDS,
    LaunchCfg,
    launched,
    user_deepspeed,
    world_size,
    zero_stage,
)
from safealign.core import console, fsutil
from safealign.core.errors import StageError


def distributed_type(cfg: LaunchCfg, cuda: bool) -> str:
    """accelerate's DistributedType (its value) that a correct launch of `cfg` runs as."""
    if not launched(cfg):
        return "NO"
    return {"ddp": "MULTI_GPU" if cuda else "MULTI_CPU", "deepspeed": "DEEPSPEED", "fsdp": "FSDP"}[cfg.strategy]


def context(cfg: LaunchCfg, tool: str, rt: dict) -> dict:
    """What templates/accelerate/config.yaml.j2, templates/deepspeed/ds_config.json.j2 and the
    launch keys of the tools' templates render from."""
    cuda = rt["cuda"]
    # Axolotl switches DeepSpeed/FSDP on itself from its keys; accelerate's config only starts the processes
    acc_type = "MULTI_GPU" if tool == "axolotl" or cfg.strategy == "ddp" else distributed_type(cfg, cuda)
    return dict(
        launch=cfg,
        active=launched(cfg),
        world_size=world_size(cfg),
        accelerate_type=acc_type,
        deepspeed=cfg.strategy == "deepspeed",
        zero_stage=zero_stage(cfg) if cfg.strategy == "deepspeed" else None,
        user_deepspeed=str(user_deepspeed(cfg)) if user_deepspeed(cfg) else None,
        fsdp=cfg.strategy == "fsdp",
        deepspeed_config=DEEPSPEED_CONFIG,
        # no CUDA: DeepSpeed and DDP meet over gloo (NCCL is CUDA-only)
        ddp_backend=None if cuda else "gloo",
    )


def command(cfg: LaunchCfg, rt: dict, program: list[str], machine_rank: int = 0) -> list[str]:
    """The command that runs `program` (a script and its arguments, or `-m module ...`) in the
    stage folder: directly for one plain process, else through `accelerate launch` with the
    stage's accelerate.yaml, on node `machine_rank`."""

    if not launched(cfg):
        return [sys.executable, *program]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", ACCELERATE_CONFIG]
    if cfg.nodes > 1:
        cmd += ["--machine_rank", str(machine_rank)]
    cmd += program
    if not rt["cuda"] and cfg.strategy == "ddp":
        # accelerate's own CPU flags start one process (--cpu) or none on gloo; this variable with
        # a MULTI_GPU config is what gives N processes of DDP over gloo. Not with DeepSpeed: it
        # would silently turn it into plain DDP.
        cmd = ["env", "ACCELERATE_USE_CPU=1", *cmd]
    return cmd


def shell_text(cmd: list[str]) -> str:
    """A launch command as a person would type it (accelerate launch, python)."""
    import shlex

    text = " ".join(shlex.quote(c) for c in cmd)
    return text.replace(f"{sys.executable} -m accelerate.commands.launch", "accelerate launch").replace(
        sys.executable, "python"
    )


def record(args, state, train_dataloader=None) -> dict:
    """What this process trains as, from inside the trainer (safealign/train/callbacks.py writes it)."""
    import socket

    from accelerate.state import AcceleratorState, PartialState

    ps = PartialState()
    acc = AcceleratorState() if AcceleratorState._shared_state else None
    ds = getattr(acc, "deepspeed_plugin", None) if acc else None
    fsdp = getattr(acc, "fsdp_plugin", None) if acc else None
    dataset = getattr(train_dataloader, "dataset", None)
    return {
        "rank": ps.process_index,
        "local_rank": ps.local_process_index,
        "node_rank": int(os.environ.get("GROUP_RANK", os.environ.get("NODE_RANK", 0))),
        "world_size": ps.num_processes,
        "distributed_type": (acc.distributed_type if acc else ps.distributed_type).value,
        "backend": ps.backend,
        "device": str(ps.device),
        "zero_stage": ds.zero_stage if ds else None,
        "fsdp_version": getattr(fsdp, "fsdp_version", None) if fsdp else None,
        "per_device_batch": args.per_device_train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "batches_per_epoch": len(train_dataloader) if train_dataloader is not None else None,
        "rows": len(dataset) if dataset is not None and hasattr(dataset, "__len__") else None,
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }


def write_record(folder: Path, rec: dict) -> None:
    out = Path(folder) / RECORDS
    out.mkdir(exist_ok=True)
    (out / f"rank{rec['rank']}.json").write_text(json.dumps(rec, indent=2) + "\n")


class LaunchMismatch(RuntimeError):
    """The processes that trained are not the ones the recipe asked for."""


def verify(folder: Path, cfg: LaunchCfg, cuda: bool) -> dict:
    """Read every process's record in `folder`/launch and check them against `cfg`: the world
    size, every rank present once, the distributed type (and ZeRO stage); the result goes into
    the stage's summary and provenance. Raises LaunchMismatch naming what differs."""
    recs = sorted(
        (json.loads(p.read_text()) for p in (Path(folder) / RECORDS).glob("rank*.json")), key=lambda r: r["rank"]
    )
    want_world, want_type = world_size(cfg), distributed_type(cfg, cuda)
    problems = []
    if not recs:
        raise LaunchMismatch(f"no process recorded what it ran as in {Path(folder) / RECORDS} (did training start?)")
    worlds = {r["world_size"] for r in recs}
    if worlds != {want_world}:
        problems.append(f"world size {sorted(worlds)} recorded, {want_world} asked (launch.processes x launch.nodes)")
    if [r["rank"] for r in recs] != list(range(want_world)):
        problems.append(f"ranks {[r['rank'] for r in recs]} recorded, 0..{want_world - 1} expected")
    types = {r["distributed_type"] for r in recs}
    if types != {want_type}:
        problems.append(f"distributed type {sorted(types)} recorded, {want_type} expected for strategy {cfg.strategy}")
    if cfg.strategy == "deepspeed" and {r["zero_stage"] for r in recs} != {zero_stage(cfg)}:
        problems.append(f"ZeRO stage {sorted({str(r['zero_stage']) for r in recs})} recorded, {zero_stage(cfg)} asked")
    if problems:
        raise LaunchMismatch(
            "the launch did not run as the recipe asked, so the stage is not done: "
            + "; ".join(problems)
            + f" (records: {Path(folder) / RECORDS})"
        )
    r0 = recs[0]
    return {
        "world_size": r0["world_size"],
        "nodes": len({(r["host"], r["node_rank"]) for r in recs}),
        "strategy": cfg.strategy,
        "distributed_type": r0["distributed_type"],
        "backend": r0["backend"],
        **({"zero_stage": r0["zero_stage"]} if cfg.strategy == "deepspeed" else {}),
        **({"offload": cfg.offload} if cfg.strategy != "ddp" and not cfg.deepspeed_config else {}),
        "per_device_batch": r0["per_device_batch"],
        "global_batch": r0["per_device_batch"] * r0["gradient_accumulation_steps"] * r0["world_size"],
        "batches_per_epoch_per_process": r0["batches_per_epoch"],
        "devices": [r["device"] for r in recs],
    }


def shard_batches(rows: int, per_device_batch: int, world: int) -> int:
    """Batches each process sees per epoch when `rows` are sharded over `world` processes:
    accelerate deals the batches of the one shuffled order out in turn (and evens the last
    round), ceil(ceil(rows / batch) / world)."""
    return math.ceil(math.ceil(rows / per_device_batch) / world)


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
            raise StageError(
                "tracker: mlflow is not installed in this environment (pip install mlflow), or set tracker: tensorboard"
            )
        out["MLFLOW_TRACKING_URI"] = os.environ.get("MLFLOW_TRACKING_URI", (stage_dir / "mlruns").resolve().as_uri())
        out["MLFLOW_EXPERIMENT_NAME"] = project
    return out


DATASETS_CACHE = "hf_datasets"  # the training child's datasets cache, under its stage folder


def child_env(stage_dir: Path, tracker: str = "none", project: str = "safealign") -> dict:
    env = dict(os.environ)
    env.update(tracker_env(tracker, project, stage_dir))
    env.update(
        {
            "AXOLOTL_DO_NOT_TRACK": "1",  # axolotl's exit-time telemetry upload hangs without a network
            "TOKENIZERS_PARALLELISM": "false",
            "PYTHONUNBUFFERED": "1",
            "SAFEALIGN_TRAIN_LOG": str((stage_dir / "train_log.jsonl").resolve()),
            # datasets' Arrow copies of train.jsonl: in the stage folder (removed once trained),
            # not in the user's ~/.cache/huggingface/datasets, where they piled up run after run
            "HF_DATASETS_CACHE": str((stage_dir / DATASETS_CACHE).resolve()),
        }
    )
    # console.SITE first: its sitecustomize filters the known-harmless messages at their source
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(console.SITE), str(REPO), env.get("PYTHONPATH")) if p)
    return env


# What a training child imports before its command is rendered (safealign/train/preload.py): the
# modules Axolotl's `axolotl.cli.train` imports lazily; for trl, the kind's trainer and config
AXOLOTL_PRELOAD = ("transformers.hf_argparser", "axolotl.cli.config", "axolotl.common.datasets", "axolotl.train")


def preload_names(kind) -> list[str]:
    """The modules (or module:attribute) a stage kind's child imports first."""
    if kind.tool == "axolotl":
        return list(AXOLOTL_PRELOAD)
    return ["datasets", "peft", kind.trl_config, kind.trainer] + ([kind.variant] if kind.variant else [])


@contextmanager
def preloaded(names: list[str], cfg: LaunchCfg, cwd: Path, env: dict):
    """A training child started now, importing `names` while the stage fits its rows and renders
    its command, which run_logged then hands it (safealign/train/preload.py). None where the
    launch starts its own processes (accelerate launch). A child never handed its command (the
    stage failed first) is ended on the way out."""
    if launched(cfg):
        yield None
        return
    proc = subprocess.Popen(
        [sys.executable, "-m", "safealign.train.preload", f"--parent={os.getpid()}", *(f"--import={n}" for n in names)],
        cwd=cwd,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        pass_fds=fsutil.held_locks(),  # the stage's lock stays held while this child lives
    )
    try:
        yield proc
    finally:
        if not proc.stdin.closed:
            proc.kill()
            proc.wait()
            proc.stdin.close()
            proc.stdout.close()


# what a process that imported Triton prints as it exits after an exception: nanobind's reference
# leak report (hundreds of lines, none about the failure), which would fill a failed stage's tail
_LEAK_REPORT = ("nanobind: ", " - leaked ", " - ... skipped remainder", "See https://nanobind.readthedocs.io")


def failure_tail(lines: list[str], n: int = 25) -> list[str]:
    """The last `n` lines of a failed child's log that say something: without nanobind's leak report."""
    return [line for line in lines if not line.startswith(_LEAK_REPORT)][-n:]


def run_logged(
    cmd: list[str],
    cwd: Path,
    log_path: Path,
    env: dict | None = None,
    quiet: bool | None = None,
    steps: int | None = None,
    child: subprocess.Popen | None = None,
) -> None:
    """Run `cmd`, its output into `log_path`; raise StageError with the log's tail on failure.
    With `child` (from preloaded), that process runs `cmd` (the interpreter's arguments) instead
    of a new one.

    The terminal shows a progress bar of the optimiser steps done (the training callback's
    steps.jsonl in `cwd`, out of `steps`) and the log's warnings and errors (console.is_alarm);
    with VERBOSE=1 every line, unless `quiet` (default: SAFEALIGN_QUIET=1, the benchmarks')."""
    quiet = os.environ.get("SAFEALIGN_QUIET") == "1" if quiet is None else quiet
    print(f"  $ {' '.join(cmd)}   (in {cwd}{'; its imports done beforehand' if child else ''})", flush=True)
    steps_file = Path(cwd) / "steps.jsonl"
    label, last = Path(cwd).name.split("-")[0], 0.0
    launched = time.time()
    with open(log_path, "w", encoding="utf-8") as log:
        if child is not None:
            if cmd[0] != sys.executable:
                raise ValueError(f"a preloaded child runs Python arguments, not {cmd[0]}")
            try:
                child.stdin.write((json.dumps(cmd[1:]) + "\n").encode())
                child.stdin.close()
            except BrokenPipeError:  # it died importing: its output and exit code say why, below
                pass
            proc = child
        else:
            proc = subprocess.Popen(  # under the guard: it and its workers die with the stage, holding its lock
                [sys.executable, "-m", "safealign.train.guard", f"--parent={os.getpid()}", "--", *cmd],
                cwd=cwd,
                env=env or child_env(cwd),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                pass_fds=fsutil.held_locks(),
            )
        assert proc.stdout is not None
        # newline="": a tqdm redraw (\r) is a line of its own
        for line in io.TextIOWrapper(proc.stdout, encoding="utf-8", errors="replace", newline=""):
            log.write(line)
            text = line.strip()
            if quiet or not text:
                continue
            if console.verbose():
                console.say("  | " + text)
            elif console.is_alarm(text):
                console.say("  " + text)
            elif time.time() - last > 0.5 and steps_file.exists():
                last = time.time()
                with open(steps_file, "rb") as f:
                    console.progress(label, sum(1 for _ in f), steps or None, "steps")
        rc = proc.wait()
    if steps_file.exists() and not quiet:
        with open(steps_file, "rb") as f:
            done = sum(1 for _ in f)
        console.progress(label, done, done, "steps")
    begun = Path(cwd) / "model_info.json"  # written as training begins (safealign/train/callbacks.py)
    if begun.exists():  # for `make bench`: the child's start-up (imports, model, data) before its first step
        print(f"timing: child start-up {begun.stat().st_mtime - launched:.1f} s", flush=True)
    if rc != 0:
        tail = "".join(failure_tail(open(log_path, encoding="utf-8").readlines()))
        raise StageError(f"{cmd[0]} exited with {rc}; full log: {log_path}\n{tail}")
