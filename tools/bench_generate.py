#!/usr/bin/env python3
"""Throughput of the generation stage against a running OpenAI-compatible server.

    make serve                                               # terminal 1 (or vllm serve <model>)
    .venv/bin/python tools/bench_generate.py --concurrency 1 4 8 [--url http://127.0.0.1:8765/v1]
    .venv/bin/python tools/bench_generate.py --local       # transformers generate here, no server

For each concurrency: the stage's own code (safealign/data/generate.py) answers the first --limit
prompts of each split of the shipped prompt list (base answers, then refusals to the unsafe ones)
with an empty cache, and prints requests per second; then once more with the cache filled, to show
what a resumed run costs. Figures: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    from safealign.config.data import GenerateCfg, GenModelCfg, RefusalModelCfg
    from safealign.data import generate

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="http://127.0.0.1:8765/v1")
    ap.add_argument("--base-model", default="tiny-local")
    ap.add_argument("--refusal-model", default="tiny-refuser")
    ap.add_argument("--limit", type=int, default=40, help="prompts per split")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--local", action="store_true", help="backend local: transformers generate in batches here")
    ap.add_argument("--batch-size", type=int, default=16, help="--local: prompts generated together")
    a = ap.parse_args(argv)
    prompts = REPO / "data" / "sg_safety" / "prompts.jsonl"
    if a.local:
        a.concurrency = [1]
    print(f"{'local, batch ' + str(a.batch_size) if a.local else a.url}: {a.base_model} answers, {a.refusal_model} refusals, {a.limit} prompts a split, "
          f"{a.max_new_tokens} new tokens at most")  # fmt: skip
    print(f"| {'backend' if a.local else 'concurrency'} | requests | seconds | requests/s | rerun from the cache, s |")
    print("|---|---|---|---|---|")
    backend = "local" if a.local else "openai"
    common = {"backend": backend, "base_url": a.url, "max_new_tokens": a.max_new_tokens, "batch_size": a.batch_size}
    for c in a.concurrency:
        cfg = GenerateCfg(
            prompts=str(prompts),
            limit=a.limit,
            answers=GenModelCfg(**common),
            refusals=RefusalModelCfg(**common, model=a.refusal_model),
            concurrency=c,
        )
        with tempfile.TemporaryDirectory() as tmp:
            out, cache = Path(tmp) / "gen", Path(tmp) / "cache.jsonl"
            out.mkdir()
            t0 = time.time()
            s = generate.run(cfg, a.base_model, 42, prompts, out, cache, log=lambda *_: None)
            seconds = time.time() - t0
            t1 = time.time()
            generate.run(cfg, a.base_model, 42, prompts, out, cache, log=lambda *_: None)
            again = time.time() - t1
        n = s["answers"]["asked"] + s["refusals"]["asked"]
        print(f"| {'local' if a.local else c} | {n} | {seconds:.1f} | {n / seconds:.1f} | {again:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
