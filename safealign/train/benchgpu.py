"""`make bench-gpu`: training throughput of SFT (Axolotl), KTO and DPO (trl), LoRA and QLoRA,
packing on and off, precompute_ref_log_probs on and off, on a Llama-3-8B-shaped model.

The model is built from the shipped Llama-3-8B config.json (models/configs/) with random weights,
no download; the data are synthetic chats whose every row has an exact token count, so the tokens
of each step are known by construction. Each case runs through the stages' own code path: the
same templates rendered the same way (safealign/run/stages.py) and the same `python -m axolotl.cli.train`
or rendered trl script in a folder of its own, with the training callback's per-step wall times
(steps.jsonl, the GPU synchronised) and peak memory. After `warmup` steps, `steps` steps are
measured: tokens/s, seconds per step, peak GPU memory, MFU (safealign/train/flops.py, the formula),
and each preference step against what its extra forward passes predict (MFU relative to SFT's:
1.00 means the step costs exactly its FLOPs). Results: a table on stdout and bench.json.

`--shape toy` runs the same code at toy size on a CPU in about a minute (the tests do), so the
benchmark cannot rot between GPU runs.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from safealign import REPO
from safealign.config import kinds
from safealign.models import families
from safealign.models import load as models
from safealign.train import flops, render

SHAPES = {
    # Llama-3-8B (SEA-LION v2.1's shape): 2k-token sequences, the 80 GB profile's micro-batch
    "llama3-8b": dict(overrides={}, seq_len=2048, micro_batch=4, dtype="bfloat16"),
    # the same code at toy size, for a CPU
    "toy": dict(overrides=families.TOY_DIMS, seq_len=256, micro_batch=2, dtype="float32"),
}


@dataclass(frozen=True)
class Case:
    method: str  # sft, kto, dpo
    adapter: str = "lora"  # lora or qlora
    packing: bool = False  # sft only
    precompute: bool = False  # kto and dpo: precompute_ref_log_probs

    @property
    def name(self) -> str:
        extra = "+packing" if self.packing else "+precompute" if self.precompute else ""
        return f"{self.method}-{self.adapter}{extra}"


CASES = [
    Case("sft"),
    Case("sft", packing=True),
    Case("sft", adapter="qlora"),
    Case("kto"),
    Case("kto", precompute=True),
    Case("kto", adapter="qlora"),
    Case("dpo"),
    Case("dpo", precompute=True),
    Case("dpo", adapter="qlora"),
]


def build_model(shape: str, out: Path) -> Path:
    """A random-weight model of the shape with a tokenizer of the Llama-3 family (its special tokens
    and chat template, a small BPE vocabulary: ids stay far below the model's vocabulary)."""
    import torch
    from transformers import AutoModelForCausalLM

    if (out / ".done").exists():
        return out
    fam = families.get("llama3")
    rows = [json.loads(line) for line in (REPO / "data" / "sg_safety" / "train.jsonl").read_text().splitlines()]
    tok = families.tokenizer(
        fam, [t for r in rows for t in (r["prompt"], r["chosen"])] + ["user\n\nassistant\n\n"] * 50
    )
    spec = SHAPES[shape]
    cfg = families.real_config(fam, **spec["overrides"])
    cfg.bos_token_id, cfg.eos_token_id = tok.bos_token_id, tok.eos_token_id
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):  # 8B of random init: seconds on a GPU
        model = AutoModelForCausalLM.from_config(cfg, dtype=getattr(torch, spec["dtype"]))
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.model_max_length = max(spec["seq_len"], 512)
    tok.save_pretrained(out)
    (out / ".done").write_text("")
    return out


def _words(tok) -> list[str]:
    """Words that are exactly one token however often they repeat (space-led single tokens)."""
    found = [
        w
        for w in (" the", " to", " and", " you", " a", " can")
        if len(tok(w * 7, add_special_tokens=False)["input_ids"]) == 7
    ]
    if len(found) < 2:
        raise RuntimeError("fewer than two single-token words in the tokenizer")
    return found


def _messages(tok, word: str, total: int, answer_share: float = 0.75) -> tuple[list, list]:
    """(prompt, completion) message lists whose templated tokens are exactly `total`."""
    overhead = len(
        tok.apply_chat_template(
            [{"role": "user", "content": ""}, {"role": "assistant", "content": ""}], tokenize=True, return_dict=False
        )
    )
    body = total - overhead
    n_answer = int(body * answer_share)
    prompt = [{"role": "user", "content": (word * (body - n_answer)).strip()}]
    completion = [{"role": "assistant", "content": (word * n_answer).strip()}]
    n = len(tok.apply_chat_template(prompt + completion, tokenize=True, return_dict=False))
    # the strip() of the first word's space can change one token: adjust the answer to hit `total`
    completion = [{"role": "assistant", "content": (word * (n_answer + total - n)).strip()}]
    return prompt, completion


def synthetic_rows(tok, case: Case, seq_len: int, count: int) -> tuple[list[dict], int, int]:
    """(rows, tokens per row as trained, attention span): packing uses rows of seq_len/8 tokens
    so that eight pack into one sequence; DPO rows are pairs (two sequences)."""
    word, other = _words(tok)[:2]
    length = seq_len // 8 - 1 if case.packing else seq_len - 8  # a little room for the trainers' joins
    prompt, completion = _messages(tok, word, length)
    if case.method == "sft":
        rows = [{"messages": prompt + completion} for _ in range(count * (8 if case.packing else 1))]
        return rows, length, length
    if case.method == "kto":
        return [{"prompt": prompt, "completion": completion, "label": i % 2 == 0} for i in range(count)], length, length
    _, rejected = _messages(tok, other, length)  # another answer of the same length
    return [{"prompt": prompt, "chosen": completion, "rejected": rejected} for _ in range(count)], length, length


def _settings(case: Case, shape: str, steps: int):
    """The stage config of the case: the sea-lion-v2.1-8b profile's, with the case's switches."""
    from safealign.config import recipe

    r = recipe.load(REPO / "recipes" / "sft_kto.yaml", ["model=sea-lion-v2.1-8b"])
    cfg = getattr(r, case.method)
    spec = SHAPES[shape]
    cfg = replace(
        cfg,
        adapter=case.adapter,
        max_steps=steps,
        micro_batch_size=spec["micro_batch"],
        gradient_accumulation_steps=1,
        max_length=spec["seq_len"],
        warmup_ratio=0.0,
        logging_steps=1,
        liger="auto",
        bf16="auto",
        attn_implementation="auto",
    )
    if case.method == "sft":
        cfg = replace(cfg, sample_packing=case.packing)
    else:
        cfg = replace(cfg, precompute_ref_log_probs=case.precompute)
    if shape == "toy":  # a CPU: no checkpointing at toy size, fp32
        cfg = replace(cfg, gradient_checkpointing=False)
    return cfg


def run_case(
    case: Case, model_dir: Path, work: Path, shape: str, warmup: int, steps: int, log=print, launch_cfg=None
) -> dict:
    """Train one case for warmup + steps steps through the stage's own templates and tool, as
    the processes of `launch_cfg` (safealign/config/launch.py; default one) when given."""
    from safealign.config import launch
    from safealign.data import rows as data_mod
    from safealign.train import launcher

    launch_cfg = launch_cfg or launch.LaunchCfg()
    world = launch.world_size(launch_cfg)

    tok = models.load_tokenizer(str(model_dir))
    spec = SHAPES[shape]
    total = warmup + steps
    cfg = _settings(case, shape, total)
    rows, row_tokens, span = synthetic_rows(tok, case, spec["seq_len"], (total * spec["micro_batch"] + 8) * world)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    data_mod.write_jsonl(work / "train.jsonl", rows)
    rt = models.runtime(cfg, case.method)
    env = launcher.child_env(work, "none", "bench")
    cmd = render.render_stage(
        kinds.get(case.method),
        cfg,
        work,
        recipe_path="bench-gpu",
        model=str(model_dir),
        seed=0,
        tracker="none",
        tracker_project="bench",
        rt=rt,
        eot=models.turn_end(tok),
        eos=tok.eos_token,
        launch_cfg=launch_cfg,
    )
    t0 = time.time()
    log(f"  {case.name}: {' '.join(cmd[1:])} in {work}")
    launcher.run_logged(cmd, work, work / "train.log", env=env, quiet=True)
    wall = time.time() - t0
    dist = launcher.verify(work, launch_cfg, rt["cuda"])  # the processes that ran are the ones asked for
    times = [json.loads(line)["seconds"] for line in (work / "steps.jsonl").read_text().splitlines()]
    measured = times[warmup:]
    if len(measured) < 1:
        raise RuntimeError(f"{case.name}: {len(times)} steps logged, fewer than warmup {warmup} + 1")
    info = json.loads((work / "model_info.json").read_text())
    sequences = spec["micro_batch"] * (8 if case.packing else 1) * (2 if case.method == "dpo" else 1)
    tokens = sequences * row_tokens * world  # every process's step
    return summarise(case, shape, model_dir, tokens, span, measured, info, work, wall, dist)


def summarise(case, shape, model_dir, tokens, span, measured, info, work, wall, dist=None) -> dict:
    """One case's figures; with several processes, tokens, FLOPs and the MFU peak cover all of them
    (rank 0's step time: they step together) and memory is rank 0's."""
    from transformers import AutoConfig

    s = flops.shape_of(AutoConfig.from_pretrained(model_dir))
    adapter = info["trainable"]
    step = sum(measured) / len(measured)
    fl = flops.step_flops(case.method, s, tokens, span, adapter_params=adapter, precompute=case.precompute)
    mem = json.loads((work / "peak_memory.json").read_text())
    world = dist["world_size"] if dist else 1
    peak = flops.peak_for(mem["device"]) * world if mem["device"] != "cpu" and flops.peak_for(mem["device"]) else None
    return {
        "case": case.name,
        "processes": world,
        "strategy": (dist or {}).get("strategy", "ddp")
        + (f"-zero{dist['zero_stage']}" if dist and dist.get("zero_stage") else ""),
        "method": case.method,
        "adapter": case.adapter,
        "packing": case.packing,
        "precompute_ref_log_probs": case.precompute,
        "shape": shape,
        "tokens_per_step": tokens,
        "seconds_per_step": round(step, 4),
        "seconds_per_step_min_max": [round(min(measured), 4), round(max(measured), 4)],
        "tokens_per_second": round(tokens / step, 1),
        "model_flops_per_step": fl,
        "tflops_per_second": round(fl / step / 1e12, 4),
        "flops_per_second": fl / step,
        "mfu": round(flops.mfu(fl, step, peak), 4) if peak else None,
        "peak_memory_mb": mem["peak_mb"],
        "device": mem["device"],
        "trainable_parameters": adapter,
        "linear_4bit_layers": info["linear_4bit_layers"],
        "attn_implementation": info["attn_implementation"],
        "measured_steps": len(measured),
        "wall_seconds": round(wall, 1),
    }


def relative_to_sft(results: list[dict]) -> None:
    """Each preference case's FLOPs rate relative to SFT's (same adapter, no packing): 1.0 when
    its step costs exactly what its extra forward passes predict."""
    base = {r["adapter"]: r for r in results if r["method"] == "sft" and not r["packing"]}
    for r in results:
        b = base.get(r["adapter"])
        if r["method"] != "sft" and b:
            r["vs_sft_flops_rate"] = round(r["flops_per_second"] / b["flops_per_second"], 3)


def table(results: list[dict]) -> str:
    head = "| case | processes | tokens/step | s/step | tokens/s | TFLOP/s | MFU | vs SFT | peak MB | attention |"
    lines = [head, "|" + "---|" * 10]
    for r in results:
        mfu = f"{r['mfu'] * 100:.1f}%" if r.get("mfu") is not None else "n/a (CPU)"
        vs = f"{r['vs_sft_flops_rate']:.2f}" if "vs_sft_flops_rate" in r else ""
        lines.append(
            f"| {r['case']} | {r['processes']} {r['strategy']} | {r['tokens_per_step']} | {r['seconds_per_step']:.3f} | {r['tokens_per_second']:.0f} | "
            f"{r['tflops_per_second']:.3g} | {mfu} | {vs} | {r['peak_memory_mb']:.0f} | {r['attn_implementation']} |"
        )
    return "\n".join(lines)


def main(shape: str, out: Path, only: list[str], warmup: int, steps: int, log=print, launch_cfg=None) -> list[dict]:
    cases = [c for c in CASES if not only or c.name in only]
    unknown = set(only) - {c.name for c in CASES}
    if unknown:
        raise ValueError(f"--only {', '.join(sorted(unknown))}: cases are {', '.join(c.name for c in CASES)}")
    if shape != "toy" and not models.has_cuda():
        raise RuntimeError(f"--shape {shape} needs a GPU; --shape toy runs the same code on a CPU")
    import torch

    if not torch.cuda.is_available() or not _qlora_ok():
        skipped = [c.name for c in cases if c.adapter == "qlora" and not _qlora_ok()]
        cases = [c for c in cases if c.name not in skipped]
        if skipped:
            log(f"  skipping {', '.join(skipped)}: bitsandbytes cannot quantise here")
    if launch_cfg is not None:
        from safealign.config import launch

        refused = launch.check_machine(
            launch_cfg, _cuda_count(), len(__import__("os").sched_getaffinity(0)), {"axolotl"}
        )
        if refused:  # the Axolotl cases cannot run this launch here: say why, run the others
            log(f"  skipping {', '.join(c.name for c in cases if c.method == 'sft')}: {'; '.join(refused)}")
            cases = [c for c in cases if c.method != "sft"]
    if launch_cfg is not None and launch_cfg.strategy != "ddp":
        sharded = [c.name for c in cases if c.adapter == "qlora"]
        cases = [c for c in cases if c.adapter != "qlora"]
        if sharded:
            log(f"  skipping {', '.join(sharded)}: QLoRA runs with ddp only (safealign/config/launch.py)")
    out.mkdir(parents=True, exist_ok=True)
    model_dir = build_model(shape, out / f"model-{shape}")
    results = []
    for c in cases:
        results.append(run_case(c, model_dir, out / c.name, shape, warmup, steps, log, launch_cfg))
    relative_to_sft(results)
    versions = _versions()
    (out / "bench.json").write_text(json.dumps({"results": results, "versions": versions}, indent=2) + "\n")
    log(table(results))
    log(f"  {out / 'bench.json'}; versions: {', '.join(f'{k} {v}' for k, v in versions.items())}")
    return results


def launch_from(items: list[str]):
    """`processes=8 strategy=deepspeed` -> a LaunchCfg, validated as the recipe's launch: section
    is, and against this machine."""
    from safealign.config import launch, recipe

    r = recipe.parse("stages: [sft, kto, dpo]\n", "bench-gpu --launch", overrides=[f"launch.{i}" for i in items])
    problems = launch.check_machine(r.launch, _cuda_count(), len(__import__("os").sched_getaffinity(0)), {"trl"})
    if problems:
        raise ValueError("; ".join(problems))
    return r.launch


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _qlora_ok() -> bool:
    try:
        import bitsandbytes  # noqa: F401
    except Exception:
        return False
    return True


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for p in ("torch", "transformers", "trl", "peft", "axolotl", "bitsandbytes", "flash-attn", "liger-kernel"):
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            pass
    return out


if __name__ == "__main__":  # pragma: no cover - tools/bench_gpu.py is the entry point
    raise SystemExit("run tools/bench_gpu.py")
