"""Answers from a model to a list of prompts: the one generation loop that evaluation (the safety
stage) and data generation (`data.generate` with `backend: local`) share.

Each prompt becomes a chat (an optional system prompt, the user turn cut from the left to fit the
context beside the answer budget: safealign/models/truncate.py) and is answered through the
model's own chat template, greedy unless the settings sample: transformers `generate` in batches
with left padding, in the dtype the weights were saved in or natively in bf16
(load.inference_dtype), or vLLM where installed with a GPU. Imports models only.
"""

from __future__ import annotations

from safealign.core import console
from safealign.models.load import inference_dtype, load_model, load_tokenizer


class GenerationError(RuntimeError):
    """The model cannot answer as configured; the message names the recipe key."""


def resolve_backend(backend: str) -> str:
    """`auto` -> vllm where vLLM is installed and a GPU is present, else hf (the leaderboard's
    generation families and the safety answers: the same rule)."""
    import importlib.util

    if backend != "auto":
        return backend
    import torch

    return "vllm" if importlib.util.find_spec("vllm") is not None and torch.cuda.is_available() else "hf"


def chats_for(
    tok, prompts: list[str], cfg, budget: int, truncated: list | None = None, key: str = "eval.safety"
) -> list[list[dict]]:
    """Each prompt as the chat the model answers: the recipe's system prompt (if any) and
    the user turn, cut from the left to `budget` tokens (safealign/models/truncate.py); the indices of
    cut prompts are appended to `truncated`."""
    from jinja2 import TemplateError

    from safealign.models import truncate

    out = []
    for j, p in enumerate(prompts):
        chat = ([{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else []) + [
            {"role": "user", "content": p}
        ]
        try:
            chat, cut = truncate.fit_prompt(tok, chat, budget)
        except TemplateError as e:  # Gemma-2's template raises on a system turn
            raise GenerationError(
                f"{key}.system_prompt: this model's chat template refuses the chat ({e}); "
                "Gemma-2 and other templates without a system role need system_prompt: null"
                if cfg.system_prompt
                else f"the model's chat template refuses a single user turn: {e}"
            ) from None
        if cut and truncated is not None:
            truncated.append(j)
        out.append(chat)
    return out


def generate(
    model_path: str,
    prompts: list[str],
    cfg,
    seed: int,
    truncated: list | None = None,
    on_batch=None,
    label: str = "safety",
    backend: str = "hf",
    key: str = "eval.safety",
) -> list[str]:
    """Answers through the model's chat template, greedy unless do_sample: transformers'
    `generate` in batches (left padding), or vLLM (`backend`; auto: where installed with a GPU).
    `cfg` holds the sampling settings (system_prompt, max_new_tokens, batch_size, do_sample,
    temperature, top_p: eval.safety's, or a data.generate model's); `key` names them in errors. A prompt longer than the model's context minus max_new_tokens is cut from the
    left (safealign/models/truncate.py); the indices of such prompts are appended to `truncated`.
    `on_batch(start, answers)` is called after each batch (transformers only)."""
    tok = load_tokenizer(model_path)
    backend = resolve_backend(backend)
    if backend == "vllm":
        return _generate_vllm(model_path, tok, prompts, cfg, seed, truncated, key, label)
    import torch

    torch.manual_seed(seed)
    tok.padding_side = "left"
    # as saved (a bf16 merge stays bf16), or bf16 where native if the settings say so (eval.safety.dtype)
    model = load_model(model_path, dtype=inference_dtype(model_path, getattr(cfg, "dtype", "saved"))).eval()
    extra = (
        {"do_sample": True, "temperature": cfg.temperature, "top_p": cfg.top_p}
        if cfg.do_sample
        else {"do_sample": False}
    )
    context = getattr(model.config, "max_position_embeddings", None) or tok.model_max_length
    chats = chats_for(tok, prompts, cfg, context - cfg.max_new_tokens, truncated, key)
    eos = stop_ids(model, tok)
    out = []
    for i in range(0, len(chats), cfg.batch_size):
        texts = [
            tok.apply_chat_template(c, add_generation_prompt=True, tokenize=False)
            for c in chats[i : i + cfg.batch_size]
        ]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        with torch.no_grad():
            gen = model.generate(
                **enc,
                max_new_tokens=cfg.max_new_tokens,
                pad_token_id=tok.pad_token_id,
                eos_token_id=eos,
                **extra,
            )
        texts = tok.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        if on_batch:  # e.g. the generation stage's cache: answers kept as each batch ends
            on_batch(i, [t.strip() for t in texts])
        out += texts
        done = min(i + cfg.batch_size, len(prompts))
        print(f"  {label}: {done}/{len(prompts)} answers", flush=True)  # the log's
        console.progress(label, done, len(prompts), "answers")  # the terminal's
    return [t.strip() for t in out]


def stop_ids(model, tok):
    """Where an answer ends: the tokenizer's eos plus the model's generation_config eos ids (Gemma-2
    ends a turn with <end_of_turn>, its tokenizer's eos is <eos>); one id stays an int, as before."""
    ids = [tok.eos_token_id]
    gen = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for i in gen if isinstance(gen, list) else [gen]:
        if i is not None and i not in ids:
            ids.append(i)
    return ids[0] if len(ids) == 1 else ids


def _generate_vllm(
    model_path: str, tok, prompts: list[str], cfg, seed: int, truncated: list | None, key: str, label: str
) -> list[str]:
    """The same chats through vLLM: token ids from our tokenizer's chat template (vLLM would add a
    second BOS to templated text), one replica per GPU when there are several."""
    import torch
    from vllm import LLM, SamplingParams

    gpus = torch.cuda.device_count()
    llm = LLM(model=model_path, seed=seed, **({"data_parallel_size": gpus} if gpus > 1 else {}))
    context = llm.llm_engine.model_config.max_model_len
    chats = chats_for(tok, prompts, cfg, context - cfg.max_new_tokens, truncated, key)
    params = SamplingParams(
        max_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature if cfg.do_sample else 0.0,
        top_p=cfg.top_p if cfg.do_sample else 1.0,
        seed=seed,
        skip_special_tokens=True,
    )
    ids = [tok.apply_chat_template(c, add_generation_prompt=True, tokenize=True, return_dict=False) for c in chats]
    outs = llm.generate([{"prompt_token_ids": i} for i in ids], params)
    print(f"  {label}: {len(outs)}/{len(prompts)} answers (vllm)", flush=True)
    return [o.outputs[0].text.strip() for o in outs]
