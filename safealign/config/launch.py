"""The recipe's `launch:` section: how many processes on how many nodes, and which strategy.

    launch:
      processes: 8          # per node: one per GPU
      nodes: 1              # machines; every node runs the same stage (node 0: make exp, others: make join)
      strategy: deepspeed   # ddp | deepspeed | fsdp
      zero_stage: 3         # deepspeed: 2 shards optimizer state and gradients, 3 also the weights
      offload: false        # deepspeed: optimizer state (and with ZeRO-3 the weights) in CPU RAM; fsdp: weights

Its schema, its checks (against the recipe, and against this machine's GPUs or cores), its part
of a stage's identity and the template files a launched stage renders. How a launched stage
starts and what it recorded is safealign/train/launcher.py. Imports only the package root.
"""

from __future__ import annotations

import json
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
