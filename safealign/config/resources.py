"""The recipe's `resources:` section: what each task of `make pipeline` asks the cluster for.

Make on one machine ignores it; the Kubeflow compiler (safealign/run/pipeline.py) reads it.
Imports nothing of safealign.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Vertex AI's accelerator types (aiplatform's AcceleratorType); "" runs every stage on CPU
ACCELERATORS = (
    "NVIDIA_TESLA_T4",
    "NVIDIA_L4",
    "NVIDIA_TESLA_V100",
    "NVIDIA_TESLA_A100",
    "NVIDIA_A100_80GB",
    "NVIDIA_H100_80GB",
    "NVIDIA_H100_MEGA_80GB",
    "NVIDIA_H200_141GB",
    "NVIDIA_B200",
)


MEMORY_RE = re.compile(r"^\d+(\.\d+)?(K|M|G|T|Ki|Mi|Gi|Ti)?$")  # 64G, 512Mi


@dataclass
class ResourcesCfg:
    """The recipe's `resources:` section: what each pipeline task asks the cluster for (Make on
    one machine ignores it)."""

    # Vertex AI accelerator for the stages that load a model (training, leaderboard, safety);
    # "" = CPU only (the tiny model). An 8B LoRA run: NVIDIA_H100_80GB; QLoRA: NVIDIA_L4 fits
    accelerator: str = ""
    eval_gpus: int = 1  # GPUs per evaluation task (vLLM runs one replica per GPU); training: launch.processes
    cpu: float = 8  # CPU cores of those stages; more cores = faster tokenising and merging
    memory: str = "64G"  # their memory limit: an 8B merge holds the model in RAM (~32G in bf16)
    light_cpu: float = 2  # the CPU-only stages: resolve, data, judge, summary, report
    light_memory: str = "8G"


def check(cfg: ResourcesCfg, launch_cfg, where, problems: list[str]) -> None:
    """Recipe-level rules; `where(key)` names the recipe line."""
    if cfg.accelerator and cfg.accelerator not in ACCELERATORS:
        problems.append(
            f"{where('accelerator')}: expected a Vertex AI accelerator type ({', '.join(ACCELERATORS)}) "
            f"or '' for CPU only, got {cfg.accelerator!r}"
        )
    if cfg.eval_gpus < 1:
        problems.append(f"{where('eval_gpus')}: must be at least 1, got {cfg.eval_gpus}")
    for key in ("cpu", "light_cpu"):
        if not getattr(cfg, key) > 0:
            problems.append(f"{where(key)}: expected a number of CPU cores above 0 (8, 0.5), got {getattr(cfg, key)!r}")
    for key in ("memory", "light_memory"):
        if not MEMORY_RE.match(str(getattr(cfg, key))):
            problems.append(f"{where(key)}: expected a memory quantity like 64G or 512Mi, got {getattr(cfg, key)!r}")
