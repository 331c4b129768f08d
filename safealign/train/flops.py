"""Training FLOPs per step and model FLOPs utilisation (MFU), for `make bench-gpu`. Pure arithmetic.

Notation, per sequence of T tokens in a decoder of L layers, model width d, attention width
d_attn = heads x head_dim, N = the parameters in matrix multiplies (every linear layer and the
LM head; not the input embedding, a lookup), N_a = the LoRA adapter's parameters:

    forward            2 N T + 4 L T^2 d_attn        (PaLM's convention: the attention's QK^T and
                                                      AV products over the full T x T, causal
                                                      mask not discounted)
    backward, trained  4 N T + 8 L T^2 d_attn        (gradients of activations and of weights)
    backward, frozen   2 N T + 8 L T^2 d_attn        (gradients of activations only: a frozen base
                                                      under LoRA skips its weight gradients)

so one training pass over a sequence costs
    full fine-tuning   6 N T + 12 L T^2 d_attn
    LoRA               4 N T + 12 L T^2 d_attn + 6 N_a T      (QLoRA: the same; dequantising is
                                                               overhead, not model FLOPs)
and the preference methods add forward passes without gradients:
    DPO                chosen and rejected sequences, each trained, plus the reference's forward
                       on both (none with precompute_ref_log_probs: one reference pass up front)
    KTO                the trained sequences, plus the policy's forward on the mismatched KL
                       sequences, plus the reference's forward on both the trained and the KL
                       sequences (with precompute_ref_log_probs: the policy's KL forward only)

Gradient checkpointing recomputes a forward in the backward pass; MFU does not count it (that
is hardware FLOPs utilisation), so checkpointing lowers MFU by ~25% for the same hardware work.
MFU = model FLOPs per second / the GPU's peak dense bf16 FLOPs (PEAK_BF16).
"""

from __future__ import annotations

from dataclasses import dataclass

# dense bf16 tensor-core peak, FLOP/s (the vendors' datasheets, without sparsity)
PEAK_BF16 = {
    "H200": 989e12,
    "H100 SXM": 989e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10": 125e12,
    "RTX 4090": 165e12,
}


@dataclass(frozen=True)
class Shape:
    layers: int
    width: int  # hidden size d
    attn_width: int  # heads x head_dim
    matmul_params: int  # N: every linear layer and the LM head


def shape_of(config) -> Shape:
    """The Shape of a transformers config (Llama, Qwen2, Gemma-2 and others of that layout)."""
    d = config.hidden_size
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or d // heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    ff = config.intermediate_size
    per_layer = d * heads * head_dim + 2 * d * kv * head_dim + heads * head_dim * d + 3 * d * ff
    return Shape(
        layers=config.num_hidden_layers,
        width=d,
        attn_width=heads * head_dim,
        matmul_params=config.num_hidden_layers * per_layer + d * config.vocab_size,
    )


def forward(s: Shape, tokens: int, seq_len: int) -> float:
    """FLOPs of one forward pass over `tokens` tokens in sequences of `seq_len`."""
    return 2 * s.matmul_params * tokens + 4 * s.layers * seq_len * s.attn_width * tokens


def train_pass(s: Shape, tokens: int, seq_len: int, adapter_params: int = 0, full: bool = False) -> float:
    """Forward and backward over `tokens` tokens: all weights trained (`full`) or a frozen base
    with an adapter of `adapter_params` parameters."""
    attention = 12 * s.layers * seq_len * s.attn_width * tokens
    if full:
        return 6 * s.matmul_params * tokens + attention
    return 4 * s.matmul_params * tokens + attention + 6 * adapter_params * tokens


def step_flops(
    method: str,
    s: Shape,
    tokens: int,
    seq_len: int,
    adapter_params: int = 0,
    full: bool = False,
    precompute: bool = False,
) -> float:
    """Model FLOPs of one optimiser step of `method` (sft, dpo, kto) over `tokens` tokens per
    step: for DPO the chosen and rejected sequences together; for KTO the trained sequences (its
    KL sequences come on top, as many)."""
    trained = train_pass(s, tokens, seq_len, adapter_params, full)
    if method == "sft":
        return trained
    ref = 0.0 if precompute else forward(s, tokens, seq_len)
    if method == "dpo":
        return trained + ref
    if method == "kto":
        kl_policy = forward(s, tokens, seq_len)
        kl_ref = 0.0 if precompute else forward(s, tokens, seq_len)
        return trained + ref + kl_policy + kl_ref
    raise ValueError(f"method {method!r}: expected sft, dpo or kto")


def mfu(flops_per_step: float, seconds_per_step: float, peak: float) -> float:
    """Model FLOPs utilisation in [0, 1]."""
    return flops_per_step / seconds_per_step / peak


def peak_for(device_name: str) -> float | None:
    """The peak for a device name as torch reports it (e.g. "NVIDIA H100 80GB HBM3"); None if unknown."""
    name = device_name.upper()
    for key in sorted(PEAK_BF16, key=len, reverse=True):
        if key.upper() in name:
            if key == "H100" and "PCIE" in name:
                return PEAK_BF16["H100 PCIe"]
            return PEAK_BF16[key]
    return None
