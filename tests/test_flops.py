"""The FLOP formula of `make bench-gpu` (safealign/train/flops.py): pure arithmetic, no model."""

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from safealign.models import families
from safealign.train import flops

LLAMA3_8B = families.real_config(families.get("llama3"))


def test_matmul_parameters_of_llama3_8b_are_its_parameters_less_embedding_and_norms():
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(LLAMA3_8B)
    total = sum(p.numel() for p in model.parameters())
    norms = (2 * 32 + 1) * 4096
    s = flops.shape_of(LLAMA3_8B)
    assert total == 8_030_261_248
    assert s.matmul_params == total - 128256 * 4096 - norms
    assert (s.layers, s.width, s.attn_width) == (32, 4096, 4096)


@pytest.mark.parametrize("family", ["qwen2", "gemma2"])
def test_shape_of_counts_every_linear_layer_of_other_families(family):
    cfg = families.real_config(families.get(family))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    # the LM head is a Linear module even where its weight is the (tied) embedding, as in Gemma-2
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert flops.shape_of(cfg).matmul_params == linear


def test_six_n_t_for_full_training_and_four_for_a_frozen_base():
    s = flops.Shape(layers=2, width=8, attn_width=8, matmul_params=1000)
    t, seq = 10, 5
    attn = 12 * 2 * seq * 8 * t
    assert flops.train_pass(s, t, seq, full=True) == 6 * 1000 * t + attn
    assert flops.train_pass(s, t, seq, adapter_params=50) == 4 * 1000 * t + attn + 6 * 50 * t
    assert flops.forward(s, t, seq) == 2 * 1000 * t + attn / 3


def test_preference_steps_add_their_forward_passes():
    s = flops.shape_of(LLAMA3_8B)
    t, seq, a = 8192, 2048, 41_943_040
    sft = flops.step_flops("sft", s, t, seq, a)
    fwd = flops.forward(s, t, seq)
    assert flops.step_flops("dpo", s, t, seq, a) == sft + fwd  # the reference on chosen and rejected
    assert flops.step_flops("dpo", s, t, seq, a, precompute=True) == sft
    assert flops.step_flops("kto", s, t, seq, a) == sft + 3 * fwd  # reference + KL policy + KL reference
    assert flops.step_flops("kto", s, t, seq, a, precompute=True) == sft + fwd  # the KL policy pass remains
    # LoRA on a frozen 8B base: ~2/3 of full fine-tuning's FLOPs
    assert 0.66 < sft / flops.step_flops("sft", s, t, seq, full=True) < 0.72
    with pytest.raises(ValueError, match="method 'ppo'"):
        flops.step_flops("ppo", s, t, seq)


def test_mfu_and_the_peak_by_device_name():
    assert flops.peak_for("NVIDIA H100 80GB HBM3") == 989e12
    assert flops.peak_for("NVIDIA H100 PCIe") == 756e12
    assert flops.peak_for("NVIDIA H200") == 989e12 and flops.peak_for("NVIDIA A100-SXM4-80GB") == 312e12
    assert flops.peak_for("cpu") is None
    assert flops.mfu(989e12 * 0.4, 1.0, 989e12) == pytest.approx(0.4)


def test_a_known_figure_an_8b_lora_step():
    """4 x 7.50e9 x 8192 tokens (2.46e14) + attention 12 x 32 x 2048 x 4096 x 8192 (2.64e13) + adapter
    6 x 4.19e7 x 8192 (2.1e12) = 2.74e14 FLOPs: 0.69 s per step at 40% MFU of an H100."""
    s = flops.shape_of(LLAMA3_8B)
    f = flops.step_flops("sft", s, 8192, 2048, 41_943_040)
    assert 2.73e14 < f < 2.75e14
    assert 0.68 < f / (0.4 * 989e12) < 0.70
    # the shape came from the shipped config as transformers reads it (it was `assert AutoConfig`, always true)
    assert isinstance(LLAMA3_8B, AutoConfig.for_model("llama").__class__)
    assert (s.layers, s.width, s.attn_width) == (32, 4096, 4096) and 7.49e9 < s.matmul_params < 7.51e9
