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
    (`SAFEALIGN_TRAIN_LOG`, default ./train_log.jsonl) and starts empty at each run.
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
