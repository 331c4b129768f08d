"""`make bench-gpu` at toy shape on a CPU: the GPU benchmark's own code path (the stage templates,
Axolotl and trl, per-step timing, the FLOP count) runs here so that it cannot rot between GPU runs."""

import json

import pytest

from safealign.models import families
from safealign.models import load as models
from safealign.train import benchgpu


def test_toy_benchmark_runs_qlora_sft_through_axolotl_and_qlora_dpo_through_trl(tmp_path):
    results = benchgpu.main("toy", tmp_path, ["sft-qlora", "dpo-qlora"], warmup=1, steps=2, log=lambda m: None)
    by = {r["case"]: r for r in results}
    assert set(by) == {"sft-qlora", "dpo-qlora"}
    for r in results:
        assert r["measured_steps"] == 2 and r["seconds_per_step"] > 0 and r["tokens_per_second"] > 0
        assert r["mfu"] is None and r["device"] == "cpu"  # no peak to divide by on a CPU
    sft, dpo = by["sft-qlora"], by["dpo-qlora"]
    assert sft["tokens_per_step"] == 2 * 248 and dpo["tokens_per_step"] == 2 * 2 * 248  # chosen + rejected
    assert sft["linear_4bit_layers"] == dpo["linear_4bit_layers"] == 14  # QLoRA really ran 4-bit in both tools
    assert dpo["trainable_parameters"] == sft["trainable_parameters"] > 0
    assert "vs_sft_flops_rate" in dpo and "vs_sft_flops_rate" not in sft
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert [r["case"] for r in saved["results"]] == ["sft-qlora", "dpo-qlora"] and "trl" in saved["versions"]
    assert "| sft-qlora | 1 ddp | 496 |" in benchgpu.table(results)
    # the step's tokens are what Axolotl itself counted
    log = [json.loads(line) for line in (tmp_path / "sft-qlora" / "train_log.jsonl").read_text().splitlines()]
    assert next(r["tokens/total"] for r in log if "tokens/total" in r) == sft["tokens_per_step"]


def test_synthetic_rows_have_the_exact_token_counts(tmp_path):
    model = benchgpu.build_model("toy", tmp_path / "m")
    tok = models.load_tokenizer(str(model))
    for case in (benchgpu.Case("sft"), benchgpu.Case("sft", packing=True), benchgpu.Case("dpo"), benchgpu.Case("kto")):
        rows, n, _ = benchgpu.synthetic_rows(tok, case, 256, 3)
        for r in rows:
            seqs = (
                [r["messages"]]
                if "messages" in r
                else [r["prompt"] + r[k] for k in ("chosen", "rejected", "completion") if k in r]
            )
            for m in seqs:
                assert len(tok.apply_chat_template(m, tokenize=True, return_dict=False)) == n
    assert json.loads((model / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    assert families.TOY_DIMS["hidden_size"] == json.loads((model / "config.json").read_text())["hidden_size"]


def test_unknown_cases_and_a_gpu_shape_without_a_gpu_are_refused(tmp_path):
    with pytest.raises(ValueError, match="--only sft-fancy: cases are sft-lora"):
        benchgpu.main("toy", tmp_path, ["sft-fancy"], 1, 1)
    if not models.has_cuda():
        with pytest.raises(RuntimeError, match="--shape llama3-8b needs a GPU"):
            benchgpu.main("llama3-8b", tmp_path, [], 1, 1)
