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
        if int(os.environ.get("RANK", "0")) == 0:  # one writer: the first process of the world
            self.path.write_text("")
            (self.path.parent / "steps.jsonl").unlink(missing_ok=True)

    def on_train_begin(self, args, state, control, train_dataloader=None, processing_class=None, model=None, **kwargs):
        """model_info.json: what really trains (class, attention, parameters, 4-bit layers, dtype);
        train_samples.jsonl: the first rows exactly as the trainer tokenized them (every token-id
        column, each also decoded), to check what the model sees against its chat template;
        launch/rank<N>.json from every process: what it trains as (safealign/config/launch.py checks it)."""
        from safealign.train import launcher

        launcher.write_record(self.path.parent, launcher.record(args, state, train_dataloader))
        if not state.is_world_process_zero:
            return
        if model is not None:
            (self.path.parent / "model_info.json").write_text(json.dumps(model_info(model), indent=2) + "\n")
        if train_dataloader is None:
            return
        dataset = getattr(train_dataloader, "dataset", None)
        if dataset is None or not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            return
        tok = processing_class or kwargs.get("tokenizer")
        with open(self.path.parent / "train_samples.jsonl", "w", encoding="utf-8") as f:
            for i in range(min(SAMPLES, len(dataset))):
                row = {k: _ids(v) for k, v in dict(dataset[i]).items()}
                row = {k: v for k, v in row.items() if v is not None}
                if tok is not None:
                    for k in [k for k in row if k.endswith("ids")]:
                        row[f"{k}_text"] = tok.decode(row[k])
                f.write(json.dumps(row) + "\n")

    def on_step_begin(self, args, state, control, **kwargs):
        self._step_start = _now()

    def on_step_end(self, args, state, control, **kwargs):
        """steps.jsonl: each optimiser step's wall time (the GPU synchronised first), for benchmarks."""
        start = getattr(self, "_step_start", None)
        if start is None or not state.is_world_process_zero:
            return
        with open(self.path.parent / "steps.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": state.global_step, "seconds": round(_now() - start, 6)}) + "\n")

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


SAMPLES = 8  # rows of train_samples.jsonl


def _now() -> float:
    import time

    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


def model_info(model) -> dict:
    """The model as the trainer holds it (a peft wrapper around the base, when an adapter trains)."""
    params = list(model.parameters())
    base = getattr(model, "get_base_model", lambda: model)()
    # bitsandbytes' own 4-bit layers (peft's LoRA wrapper around one has the same class name)
    linear4 = sum(
        1 for m in model.modules() if type(m).__module__.startswith("bitsandbytes") and "4bit" in type(m).__name__
    )
    dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in params})
    return {
        "class": type(base).__name__,
        "attn_implementation": getattr(base.config, "_attn_implementation", None),
        "parameters": sum(p.numel() for p in params),
        "trainable": sum(p.numel() for p in params if p.requires_grad),
        "linear_4bit_layers": linear4,
        "dtypes": dtypes,
        "gradient_checkpointing": bool(getattr(base, "is_gradient_checkpointing", False)),
    }


def _ids(value):
    """A column of token ids (list or tensor of ints) as a list; None for anything else."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return value
    return None


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
