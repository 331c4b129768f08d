#!/usr/bin/env python3
"""Training throughput on a GPU: SFT (Axolotl), KTO and DPO (trl), LoRA and QLoRA, packing and
precompute_ref_log_probs on and off, on a Llama-3-8B-shaped model with random weights.

    make bench-gpu                                  # all cases, 5 warm-up + 20 measured steps at 2k tokens
    make bench-gpu ONLY='sft-lora kto-lora'         # some cases
    .venv/bin/python tools/bench_gpu.py --shape toy # the same code at toy size on a CPU (~1-2 minutes)
    make bench-gpu LAUNCH='processes=8 strategy=deepspeed zero_stage=3'   # every case on 8 GPUs

Prints a table (tokens/s, s/step, TFLOP/s, MFU, each preference step against its FLOPs
prediction, peak memory) and writes bench.json; the method is in safealign/train/benchgpu.py, the FLOP
formula in safealign/train/flops.py. Figures measured so far: docs/benchmarks.md.
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from safealign.train import benchgpu  # noqa: E402

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--shape", choices=sorted(benchgpu.SHAPES), default="llama3-8b")
ap.add_argument("--only", nargs="*", default=[], help=f"cases: {' '.join(c.name for c in benchgpu.CASES)}")
ap.add_argument("--warmup", type=int, default=5)
ap.add_argument("--steps", type=int, default=20)
ap.add_argument(
    "--launch",
    nargs="*",
    default=[],
    help="run every case as these processes, the recipe's launch keys: processes=8 strategy=deepspeed zero_stage=3",
)
ap.add_argument("--out", default=f"experiments/bench-gpu/{time.strftime('%Y%m%d-%H%M%S')}")
a = ap.parse_args()
try:
    launch_cfg = benchgpu.launch_from(a.launch) if a.launch else None
    benchgpu.main(a.shape, Path(a.out), a.only, a.warmup, a.steps, launch_cfg=launch_cfg)
except (ValueError, RuntimeError) as e:
    sys.exit(f"bench-gpu: {e}")
