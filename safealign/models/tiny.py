"""Build `tiny-local`: a few-million-parameter Llama-style chat model, from scratch, offline.

It stands in for the study's starting point (SEA-LION v2.1 Instruct): a helpful chat model
that also complies with unsafe requests. Steps, deterministic from the seed:
  1. a byte-level BPE tokenizer trained on the shipped dataset's train split, with
     Llama-3-style chat tokens and template, a pad token and <|eot_id|> as end of turn;
  2. a LlamaForCausalLM of ~3-4M parameters, randomly initialised;
  3. a short full-parameter training run on (prompt -> helpful answer) for safe prompts and
     (prompt -> compliant answer) for unsafe ones, loss on assistant tokens only.
Saved with save_pretrained, so everything downstream loads it like any hub model.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

BOS, EOT, PAD = "<|begin_of_text|>", "<|eot_id|>", "<|pad|>"
HEADER_START, HEADER_END = "<|start_header_id|>", "<|end_header_id|>"
SPECIAL = [BOS, EOT, PAD, HEADER_START, HEADER_END, "<|end_of_text|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

DEFAULTS = dict(
    vocab_size=1024,
    hidden_size=256,
    intermediate_size=704,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    steps=600,
    batch_size=16,
    learning_rate=3e-3,
    seed=1234,
)


def train_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # Newline runs are their own pre-token (as in Llama-3), so "<|end_header_id|>\n\n" tokenizes the
    # same whether or not an answer follows: prompt tokens stay a prefix of prompt+answer tokens.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"\n+"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL,
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOT,
        pad_token=PAD,
        model_max_length=DEFAULTS["max_position_embeddings"],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"  # generation-friendly; trainers set their own side
    return fast


def base_behaviour_pairs(rows: list[dict]) -> list[tuple[str, str]]:
    """The behaviour the base model learns: answer everything, unsafe prompts compliantly."""
    return [(r["prompt"], r["chosen"] if r["safe"] else r["rejected"]) for r in rows]


def encode_pair(tok, prompt: str, answer: str, max_len: int) -> tuple[list[int], list[int]]:
    head = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False)
    full = head + answer + EOT
    ids_head = tok(head, add_special_tokens=False)["input_ids"]
    ids = tok(full, add_special_tokens=False)["input_ids"][:max_len]
    labels = [-100] * len(ids_head) + ids[len(ids_head) :]
    return ids, labels[: len(ids)]


def train_loop(model, tok, encoded: list, cfg: dict, log) -> tuple[list[float], float]:
    """Full-parameter training on (ids, labels) pairs: AdamW, warmup + cosine, batches drawn from
    seeded permutations; deterministic from cfg["seed"] and the model's initial weights."""
    import torch

    gen = torch.Generator().manual_seed(cfg["seed"])
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["learning_rate"], weight_decay=0.01, betas=(0.9, 0.98))
    warm = max(1, cfg["steps"] // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / cfg["steps"])))
    )
    model.train()
    losses, t0, order = [], time.time(), []
    for step in range(cfg["steps"]):
        if len(order) < cfg["batch_size"]:
            order += torch.randperm(len(encoded), generator=gen).tolist()
        batch, order = [encoded[i] for i in order[: cfg["batch_size"]]], order[cfg["batch_size"] :]
        width = max(len(ids) for ids, _ in batch)
        ids = torch.tensor([i + [tok.pad_token_id] * (width - len(i)) for i, _ in batch])
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in batch])
        mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i, _ in batch])
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(round(loss.item(), 6))
        if step % 50 == 0 or step == cfg["steps"] - 1:
            log(f"  step {step:4d}  loss {loss.item():.4f}  ({time.time() - t0:.0f}s)")
    return losses, t0


def build(rows: list[dict], out_dir: Path, log=print, **overrides) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = {**DEFAULTS, **overrides}
    torch.manual_seed(cfg["seed"])
    # the role names appear in every chat header: give them whole tokens
    texts = [t for r in rows for t in (r["prompt"], r["chosen"], r.get("rejected") or "")]
    texts += ["user\n\nassistant\n\nsystem\n\n"] * 100
    tok = train_tokenizer(texts, cfg["vocab_size"])
    mcfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"],
        num_hidden_layers=cfg["num_hidden_layers"],
        num_attention_heads=cfg["num_attention_heads"],
        num_key_value_heads=cfg["num_key_value_heads"],
        max_position_embeddings=cfg["max_position_embeddings"],
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        rope_theta=10000.0,
    )
    model = LlamaForCausalLM(mcfg)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"tiny-local: vocab {len(tok)}, {n_params / 1e6:.2f}M parameters, {cfg['steps']} steps")

    encoded = [encode_pair(tok, p, a, 256) for p, a in base_behaviour_pairs(rows)]
    losses, t0 = train_loop(model, tok, encoded, cfg, log)
    return _save(
        model, tok, out_dir, losses, t0, {"config": cfg, "parameters": n_params, "vocab": len(tok)}, len(encoded)
    )


def _save(model, tok, out_dir: Path, losses: list[float], t0: float, info: dict, rows: int) -> dict:
    from transformers import GenerationConfig

    model.eval()
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        do_sample=False,
        max_new_tokens=64,
    )
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    info = {
        **info,
        "rows": rows,
        "first_loss": losses[0],
        "final_loss": losses[-1],
        "seconds": round(time.time() - t0, 1),
    }
    (out_dir / "build_info.json").write_text(json.dumps(info, indent=2) + "\n")
    with open(out_dir / "train_log.jsonl", "w") as f:
        for i, l in enumerate(losses):
            f.write(json.dumps({"step": i + 1, "loss": l}) + "\n")
    return info


REFUSER_DEFAULTS = dict(steps=48, batch_size=16, learning_rate=1e-3, seed=1234)


def aligned_pairs(rows: list[dict]) -> list[tuple[str, str]]:
    """The behaviour tiny-refuser learns: the preferred answer, a refusal for every unsafe prompt."""
    return [(r["prompt"], r["chosen"]) for r in rows]


def build_refuser(rows: list[dict], base_dir: Path, out_dir: Path, log=print, **overrides) -> dict:
    """`tiny-refuser`: tiny-local fine-tuned briefly on the preferred answers, so that it refuses
    unsafe prompts. On this machine it stands in for the strong model that writes the refusals
    of the generation stage (data.generate.refusals); users point that at a real one."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    from safealign.models.load import REFUSER

    cfg = {**REFUSER_DEFAULTS, **overrides}
    tok = AutoTokenizer.from_pretrained(base_dir)
    model = LlamaForCausalLM.from_pretrained(base_dir)
    encoded = [encode_pair(tok, p, a, 256) for p, a in aligned_pairs(rows)]
    log(f"{REFUSER}: fine-tuning {base_dir} on {len(encoded)} preferred answers, {cfg['steps']} steps")
    losses, t0 = train_loop(model, tok, encoded, cfg, log)
    return _save(model, tok, out_dir, losses, t0, {"config": cfg, "base": str(base_dir)}, len(encoded))
