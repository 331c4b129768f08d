"""More than one process: the recipe's `launch:` section, what it renders, how it starts, what ran.

    launch:
      processes: 8          # per node: one per GPU
      nodes: 1              # machines; every node runs the same stage (node 0: make exp, others: make join)
      strategy: deepspeed   # ddp | deepspeed | fsdp
      zero_stage: 3         # deepspeed: 2 shards optimizer state and gradients, 3 also the weights
      offload: false        # deepspeed: optimizer state (and with ZeRO-3 the weights) in CPU RAM; fsdp: weights

One process with `ddp` runs the training script directly, as before. Anything else goes through
`accelerate launch` with an accelerate config rendered into the stage folder
(templates/accelerate/config.yaml.j2); DeepSpeed's config is rendered beside it
(templates/deepspeed/ds_config.json.j2). The SFT stage (Axolotl) takes DeepSpeed and FSDP through
Axolotl's own keys (`deepspeed:`, `fsdp_config:`) and accelerate only for the processes; the trl
stages take them through the accelerate config.

Several wrong launches exit 0 while doing something else (one process instead of two, two
independent trainings, plain DDP instead of DeepSpeed), so the exit code proves nothing: every
process of a training run records what it ran as (`launch/rank<N>.json`, written from inside
the trainer by safealign/callbacks.py) and `verify` refuses the stage unless the world size and
the distributed type are the ones the recipe asked for.

On a machine without CUDA (the tests, a laptop) DDP runs over gloo with ACCELERATE_USE_CPU=1, and
DeepSpeed with the trainer's `ddp_backend: gloo`; FSDP is refused (accelerate enables it only on
GPUs: on CPU it would train unsynchronised copies).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

STRATEGIES = ("ddp", "deepspeed", "fsdp")
ZERO_STAGES = (2, 3)
ACCELERATE_CONFIG = "accelerate.yaml"
DEEPSPEED_CONFIG = "ds_config.json"
# what a launched training stage renders besides its tool's templates (a Make prerequisite of it)
TEMPLATES = ["templates/accelerate/config.yaml.j2", "templates/deepspeed/ds_config.json.j2"]
RECORDS = "launch"  # the folder of per-process records in a stage folder
JOIN_FILE = "launch.json"  # node 0's launch command, for the other nodes (safealign join)


@dataclass
class LaunchCfg:
    processes: int = 1  # per node, one per GPU; more than the GPUs (or CPU cores without CUDA) is refused
    nodes: int = 1  # machines; nodes > 1 need a filesystem shared by all of them for experiments/
    strategy: str = "ddp"  # ddp: a full copy per GPU; deepspeed: ZeRO sharding; fsdp: torch FSDP2 (GPUs only)
    zero_stage: int = 2  # deepspeed: 2 = optimizer state + gradients sharded; 3 = weights too (slower, least memory)
    offload: bool = False  # deepspeed/fsdp: state in CPU RAM: fits bigger models, steps several times slower
    # deepspeed: your own DeepSpeed JSON (e.g. one of Axolotl's deepspeed_configs/) instead of the
    # rendered one; its ZeRO stage and offload settings are used, zero_stage and offload are not
    deepspeed_config: str = ""
    main_process_ip: str = "127.0.0.1"  # nodes > 1: node 0's address, reachable from every node
    main_process_port: int = 29500  # the rendezvous port on node 0 (free on it)


def user_deepspeed(cfg: LaunchCfg) -> Path | None:
    """The user's DeepSpeed file (launch.deepspeed_config), relative to the checkout unless absolute."""
    if not cfg.deepspeed_config:
        return None
    from safealign import REPO

    path = Path(cfg.deepspeed_config).expanduser()
    return path if path.is_absolute() else REPO / path


def files(cfg: LaunchCfg) -> list[str]:
    """What a launched stage's result depends on besides its tool's templates (Make prerequisites):
    the launch templates and the user's DeepSpeed file."""
    path = user_deepspeed(cfg)
    return TEMPLATES + ([str(path)] if path else [])


def zero_stage(cfg: LaunchCfg) -> int:
    """The ZeRO stage that runs: the user's DeepSpeed file's, else launch.zero_stage."""
    path = user_deepspeed(cfg)
    return json.loads(path.read_text())["zero_optimization"]["stage"] if path else cfg.zero_stage


def world_size(cfg: LaunchCfg) -> int:
    return cfg.processes * cfg.nodes


def launched(cfg: LaunchCfg) -> bool:
    """Whether a stage goes through `accelerate launch` (one process with ddp does not: nothing to shard)."""
    return world_size(cfg) > 1 or cfg.strategy != "ddp"


def identity(cfg: LaunchCfg) -> dict:
    """What a stage's result depends on: the world size (it shards the data and sets the global
    batch) and how the state is sharded; not the rendezvous address. Empty for one plain process,
    so single-process stages keep their names."""
    if not launched(cfg):
        return {}
    out = {"world_size": world_size(cfg), "strategy": cfg.strategy}
    if cfg.strategy == "deepspeed":
        out["zero_stage"] = zero_stage(cfg)
    if user_deepspeed(cfg):  # every setting in it counts: its content, not its name
        import hashlib

        out["deepspeed_config_sha256"] = hashlib.sha256(user_deepspeed(cfg).read_bytes()).hexdigest()
    elif cfg.strategy != "ddp" and cfg.offload:
        out["offload"] = True
    return {"launch": out}


def check(cfg: LaunchCfg, training: dict, where, problems: list[str]) -> None:
    """Recipe-level rules (any machine): `training` maps each stage of the recipe to its config;
    `where(key)` names the recipe line."""
    if cfg.strategy not in STRATEGIES:
        problems.append(f"{where('strategy')}: expected one of {', '.join(STRATEGIES)}, got {cfg.strategy!r}")
        return
    if cfg.processes < 1:
        problems.append(f"{where('processes')}: must be at least 1, got {cfg.processes}")
    if cfg.nodes < 1:
        problems.append(f"{where('nodes')}: must be at least 1, got {cfg.nodes}")
    if not 1 <= cfg.main_process_port <= 65535:
        problems.append(f"{where('main_process_port')}: expected a TCP port 1-65535, got {cfg.main_process_port}")
    if cfg.strategy == "deepspeed" and cfg.zero_stage not in ZERO_STAGES:
        problems.append(
            f"{where('zero_stage')}: expected 2 (optimizer state and gradients sharded) or 3 (weights too), "
            f"got {cfg.zero_stage!r}"
        )
    if cfg.offload and cfg.strategy == "ddp":
        problems.append(
            f"{where('offload')}: offloading needs strategy deepspeed or fsdp (ddp keeps a full copy per GPU)"
        )
    if cfg.deepspeed_config:
        _check_user_deepspeed(cfg, where, problems)
    for stage, t in training.items():
        if getattr(t, "adapter", "lora") == "qlora" and cfg.strategy != "ddp":
            problems.append(
                f"{where('strategy')}: {stage}.adapter is qlora: its 4-bit base cannot be sharded by "
                f"{cfg.strategy} here (bitsandbytes weights need quant_storage settings safealign does not "
                "render); use strategy ddp (each GPU holds the 4-bit base) or adapter lora"
            )


def _check_user_deepspeed(cfg: LaunchCfg, where, problems: list[str]) -> None:
    """launch.deepspeed_config: a JSON file with a ZeRO stage of 2 or 3 that, at stage 3, gathers
    the weights when saving (the stage merges the saved adapter: partitioned, there is none)."""
    key = where("deepspeed_config")
    if cfg.strategy != "deepspeed":
        problems.append(f"{key}: a DeepSpeed file needs strategy deepspeed, got {cfg.strategy!r}")
        return
    path = user_deepspeed(cfg)
    if not path.is_file():
        problems.append(f"{key}: no such file {path}")
        return
    try:
        ds = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        problems.append(f"{key}: {path} is not JSON: {e}")
        return
    zero = ds.get("zero_optimization", {}) if isinstance(ds, dict) else {}
    if zero.get("stage") not in ZERO_STAGES:
        problems.append(f"{key}: {path}: zero_optimization.stage must be 2 or 3, got {zero.get('stage')!r}")
    elif zero["stage"] == 3 and zero.get("stage3_gather_16bit_weights_on_model_save") is not True:
        problems.append(
            f"{key}: {path}: ZeRO-3 saves the weights partitioned unless "
            "zero_optimization.stage3_gather_16bit_weights_on_model_save is true, and the stage merges the "
            "saved adapter (or keeps the saved model): set it to true"
        )


def check_machine(cfg: LaunchCfg, cuda_devices: int, cpus: int, tools: set[str] = frozenset()) -> list[str]:
    """Rules about this machine, checked when an experiment resolves (not when a profile is
    validated or rendered for another machine): processes per node against the GPUs, or without
    CUDA against the CPU cores; FSDP only with CUDA; `tools`: the stages' tools (Axolotl's
    DeepSpeed path initialises NCCL itself, so it needs CUDA)."""
    problems = []
    if not cuda_devices and cfg.strategy == "deepspeed" and "axolotl" in tools:
        problems.append(
            "launch.strategy: deepspeed with an Axolotl stage (sft) needs CUDA GPUs: Axolotl's DeepSpeed path "
            "fails without them (NCCL with one process; a batch-size mismatch with several); use ddp here "
            "(the trl stages do run DeepSpeed over gloo)"
        )
    if cuda_devices:
        if cfg.processes > cuda_devices:
            problems.append(
                f"launch.processes: {cfg.processes} processes per node, but this machine has {cuda_devices} "
                f"CUDA GPU(s) (one process per GPU); set launch.processes to at most {cuda_devices}"
            )
    else:
        if cfg.strategy == "fsdp" and launched(cfg):
            problems.append(
                "launch.strategy: fsdp needs CUDA GPUs: accelerate enables FSDP only on GPUs, and over gloo "
                "on CPU the processes would train unsynchronised copies; use ddp or deepspeed here"
            )
        if cfg.processes > cpus:
            problems.append(
                f"launch.processes: {cfg.processes} processes per node, but this machine has no CUDA GPU and "
                f"{cpus} CPU core(s) (one process per core over gloo); set launch.processes to at most {cpus}"
            )
    return problems


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
    import sys

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
    import sys

    text = " ".join(shlex.quote(c) for c in cmd)
    return text.replace(f"{sys.executable} -m accelerate.commands.launch", "accelerate launch").replace(
        sys.executable, "python"
    )


def record(args, state, train_dataloader=None) -> dict:
    """What this process trains as, from inside the trainer (safealign/callbacks.py writes it)."""
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
