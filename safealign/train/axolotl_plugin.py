"""Axolotl plugin, named in the rendered SFT config (`plugins:`).

- Seeds every RNG with the recipe's seed before the model and the LoRA adapter are built.
  Axolotl 0.19 leaves that to the HF Trainer, which seeds only once it is created, after the
  adapter's random initialisation: without this, two runs with the same seed diverge from the
  first optimiser step.
- Adds safealign's callbacks (train_log.jsonl).
- bf16 without CUDA: tells transformers the CPU is meant (`use_cpu`), which Axolotl 0.19 never
  passes, so the Trainer runs under CPU autocast instead of refusing ("Your setup doesn't support
  bf16/gpu"). On a CPU with AVX512-BF16 or AMX a step takes 1.2-1.4x less (docs/benchmarks.md).
- Freezes what is imported by then (gc.freeze) before the model loads: Axolotl and accelerate
  call gc.collect() five times around loading and training, ~0.4 s each on 2 cores, walking the
  same long-lived library objects every time. Numerics are untouched.
"""

from __future__ import annotations

import gc

from axolotl.integrations.base import BasePlugin
from transformers import set_seed

from safealign.train.callbacks import JsonlLogCallback


class SafealignPlugin(BasePlugin):
    def pre_model_load(self, cfg):
        gc.freeze()
        set_seed(cfg.seed)

    def pre_lora_load(self, cfg, model):
        set_seed(cfg.seed)

    def get_training_args(self, cfg):
        import torch

        if (cfg.bf16 is True or cfg.bfloat16 is True) and not torch.cuda.is_available():
            return {"use_cpu": True}
        return None

    def add_callbacks_post_trainer(self, cfg, trainer):
        return [JsonlLogCallback()]
