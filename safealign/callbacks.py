"""Training callbacks shared by the Axolotl plugin and the rendered trl scripts."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from transformers import TrainerCallback


class JsonlLogCallback(TrainerCallback):
    """Append every `Trainer.log` record, with its step, to a JSONL file (one line per log).

    The file is what the report and the determinism check read; it sits in the stage folder
    (`SAFEALIGN_TRAIN_LOG`, default ./train_log.jsonl) and starts empty at each run. At the end
    of training, peak_memory.json beside it holds this process's peak memory: on a GPU what
    torch allocated on its device (the figure to compare against the card's size), on a CPU the
    process's peak resident set (host memory, Python and libraries included).
    """

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path or os.environ.get("SAFEALIGN_TRAIN_LOG", "train_log.jsonl"))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        rec = {"step": state.global_step, "epoch": state.epoch}
        for k, v in logs.items():
            if isinstance(v, float) and not math.isfinite(v):
                v = str(v)
            rec[k] = v
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")

    def on_train_end(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        (self.path.parent / "peak_memory.json").write_text(json.dumps(peak_memory()) + "\n")


def peak_memory() -> dict:
    """{"device": ..., "peak_mb": ...} for this process (see JsonlLogCallback)."""
    import resource

    import torch

    if torch.cuda.is_available():
        dev = torch.cuda.current_device()
        return {
            "device": f"cuda:{dev} {torch.cuda.get_device_name(dev)}",
            "peak_mb": round(torch.cuda.max_memory_allocated(dev) / 2**20, 1),
        }
    return {"device": "cpu", "peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
