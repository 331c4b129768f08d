"""Architecture families: what differs between the chat models users align, and toy copies of them.

Each family is the model class, the special tokens and the chat template of one line of hub
models (templates written from the public tokenizer_config.json files, the tool-calling branches
left out), plus the shipped copy of a real member's config.json (models/configs/). Users never
name a family: their model's own files carry all of it. It serves three purposes:

- `toy-<family>` (a recipe's base_model, or a toy profile): a random-weight model of that
  family's class with a tiny config derived from the real one, and a byte-level BPE tokenizer
  trained on the shipped data that carries the family's real special tokens and chat template.
  Built offline in seconds into the cache; the tests run every stage on it.
- the offline validation of the profiles (`safealign render`): the real config.json, no hub.
- `make bench-gpu`: a Llama-3-8B-shaped model with random weights built from its config.

    llama3  Llama-3 / SEA-LION v2.1: <|start_header_id|>role<|end_header_id|> headers, <|eot_id|>
            ends a turn (and is the instruct tokenizer's eos); no pad token
    qwen2   Qwen2 / Qwen2.5: ChatML (<|im_start|>role ... <|im_end|>), a default system prompt
            when the chat has none; no bos token
    gemma2  Gemma-2: <start_of_turn>user|model ... <end_of_turn>; no system role (the template
            raises on one); the tokenizer's eos <eos> is not the turn end: generation stops on
            either (generation_config.eos_token_id)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from safealign import REPO
from safealign.models.load import TOY_PREFIX  # noqa: F401  (toy-<family>: the name models.locate knows)

CONFIGS = REPO / "models" / "configs"  # config.json of real models, <org>--<name>.json

LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
QWEN2_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    '{%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant") %}'
    "{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)
GEMMA2_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)


@dataclass(frozen=True)
class Family:
    name: str
    config: str  # models/configs/<config>.json: the real member the toy copies and the bench builds from
    chat_template: str
    bos: str | None
    eos: str  # the tokenizer's eos_token
    pad: str | None
    special: tuple  # every special token, in vocabulary order
    turn_end: str  # the token that closes a turn in the template
    toy: dict = field(default_factory=dict)  # the toy config's own extra overrides


TOY_DIMS = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
)

ARCH_FAMILIES = {
    f.name: f
    for f in (
        Family(
            "llama3",
            "aisingapore--llama3-8b-cpt-sea-lionv2.1-instruct",
            LLAMA3_TEMPLATE,
            bos="<|begin_of_text|>",
            eos="<|eot_id|>",
            pad=None,
            special=("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
            turn_end="<|eot_id|>",
        ),
        Family(
            "qwen2",
            "Qwen--Qwen2.5-7B-Instruct",
            QWEN2_TEMPLATE,
            bos=None,
            eos="<|im_end|>",
            pad="<|endoftext|>",
            special=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
            turn_end="<|im_end|>",
            toy={"max_window_layers": 2},
        ),
        Family(
            "gemma2",
            "google--gemma-2-9b-it",
            GEMMA2_TEMPLATE,
            bos="<bos>",
            eos="<eos>",
            pad="<pad>",
            special=("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"),
            turn_end="<end_of_turn>",
            toy={"head_dim": 16, "query_pre_attn_scalar": 16, "sliding_window": 256},
        ),
    )
}


def get(name: str) -> Family:
    try:
        return ARCH_FAMILIES[name]
    except KeyError:
        raise KeyError(f"{name!r} is not an architecture family (families: {', '.join(ARCH_FAMILIES)})") from None


def config_file(hub_id_or_name: str) -> Path:
    """The shipped config.json copy of a hub model (`org/name` or `org--name`)."""
    return CONFIGS / f"{hub_id_or_name.replace('/', '--')}.json"


def real_config(family: Family, **overrides):
    """The family's real config (models/configs/), with `overrides` applied before it is built
    (so derived fields, such as Gemma-2's alternating layer types, follow them)."""
    from transformers import AutoConfig

    raw = {**json.loads(config_file(family.config).read_text()), **overrides}
    return AutoConfig.for_model(raw.pop("model_type"), **raw)


def toy_config(family: Family, vocab_size: int, tok):
    """The family's real config with toy dimensions: the same class, activation, norms, rope,
    soft-capping and sliding window; random weights of a few hundred thousand parameters."""
    return real_config(
        family,
        **TOY_DIMS,
        **family.toy,
        vocab_size=vocab_size,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )


def tokenizer(family: Family, texts: list[str], vocab_size: int = 1024):
    """A byte-level BPE trained on `texts` with the family's special tokens and chat template."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # newline runs are their own pre-token, so a generation prompt ending in "\n" tokenizes as a
    # prefix of the prompt followed by an answer (as the real tokenizers do for their templates)
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r"\n+"), behavior="isolated"), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(family.special),
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=family.bos,
        eos_token=family.eos,
        pad_token=family.pad,
        model_max_length=TOY_DIMS["max_position_embeddings"],
    )
    fast.chat_template = family.chat_template
    return fast


def build_toy(family_name: str, rows: list[dict], out_dir: Path, seed: int = 1234) -> dict:
    """toy-<family>: random weights, the family's class and tokenizer conventions; saved with
    save_pretrained like any hub model."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    family = get(family_name)
    torch.manual_seed(seed)
    texts = [t for r in rows for t in (r["prompt"], r["chosen"], r.get("rejected") or "")]
    texts += ["user\n\nassistant\n\nmodel\n\nsystem\n\n"] * 100
    tok = tokenizer(family, texts)
    cfg = toy_config(family, len(tok), tok)
    model = AutoModelForCausalLM.from_config(cfg)
    stop = [tok.convert_tokens_to_ids(t) for t in dict.fromkeys([family.eos, family.turn_end])]
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id,
        eos_token_id=stop[0] if len(stop) == 1 else stop,
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
        do_sample=False,
        max_new_tokens=64,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    info = {
        "family": family.name,
        "model_class": type(model).__name__,
        "from_config": family.config,
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab": len(tok),
        "seed": seed,
    }
    (out_dir / "build_info.json").write_text(json.dumps(info, indent=2) + "\n")
    return info
