"""Where models come from, how they load, and how a LoRA adapter is merged.

A recipe's `base_model` is a hub id, a local path, or `tiny-local`: the embedded model that
`make tiny-model` builds into the cache. All three go through the same `from_pretrained`
calls; `tiny-local` only decides the path.
"""

from __future__ import annotations

import os
from pathlib import Path

from safealign import refs

TINY = "tiny-local"


def cache_dir() -> Path:
    return Path(os.environ.get("SAFEALIGN_CACHE", ".cache")).resolve()


def tiny_path() -> Path:
    return cache_dir() / "models" / TINY


class ModelUnavailable(RuntimeError):
    """A model named in the recipe cannot be loaded here; the message says which key and what to do."""


def locate(name: str, key: str = "base_model") -> str:
    """A model named in the recipe -> what `from_pretrained` takes (a local path or a hub id),
    checked to be there; `key` names the recipe key in the error."""
    if name == TINY:
        path = tiny_path()
        if not (path / ".done").exists():
            raise ModelUnavailable(f"{key}: {TINY}: not built at {path}; run `make tiny-model`")
        return str(path)
    if refs.is_path(name):
        path = refs.path(name).resolve()
        if not (path / "config.json").exists():
            raise ModelUnavailable(f"{key}: {name}: no config.json in {path}")
        return str(path)
    check_hub_model(name, key)
    return name  # a hub id: read from the HF cache by from_pretrained


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def check_hub_model(name: str, key: str = "base_model") -> None:
    """Fail in one paragraph, before any training or loading, when hub id `name` cannot be had:
    not a valid id, not in the local HF cache while offline, or not fetchable from the hub."""
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        if isinstance(try_to_load_from_cache(name, "config.json"), str):
            return
    except HFValidationError as e:
        raise ModelUnavailable(
            f"{key}: {name!r} is not a local folder with a config.json (a path starts with "
            f"'.', '/' or '~') and not a valid hub id: {e}"
        ) from None
    todo = (
        f"Download it once where there is a network (`hf download {name}`) into the cache that "
        f"HF_HOME points to (now {constants.HF_HOME}), log in first if the model is gated (`hf auth login` "
        f"or HF_TOKEN), or check the id in `{key}`."
    )
    if _offline():
        raise ModelUnavailable(
            f"{key}: {name} is not in the local Hugging Face cache and HF_HUB_OFFLINE=1 forbids downloading it. {todo}"
        )
    try:
        hf_hub_download(name, "config.json", etag_timeout=10)
    except Exception as e:  # no network, gated, no such repo: the hub's own words in one line
        first = (str(e).strip().splitlines() or [""])[0]
        raise ModelUnavailable(
            f"{key}: {name} cannot be fetched from the hub ({type(e).__name__}: {first}). {todo}"
        ) from None


def is_local(name: str) -> bool:
    return name == TINY or refs.is_path(name)


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def use_bf16(setting) -> bool:
    """`bf16: auto` -> True where the GPU supports bfloat16, False on CPU."""
    if setting == "auto":
        import torch

        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return bool(setting)


def pick_dtype(setting):
    import torch

    return torch.bfloat16 if use_bf16(setting) else torch.float32


def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(name_or_path)
    if tok.pad_token is None:  # Llama-3 ships no pad token; eos would mask real ends
        tok.pad_token = tok.eos_token
    return tok


def load_model(name_or_path: str, dtype=None, device: str | None = None):
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one bar per load clutters the stage output

    model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype or torch.float32)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device)


def merge_lora(base: str, adapter_dir: Path, out_dir: Path, dtype=None) -> None:
    """Fold a LoRA adapter into its base weights and save a plain model plus tokenizer."""
    from peft import PeftModel

    model = load_model(base, dtype=dtype, device="cpu")
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(out_dir, safe_serialization=True)
    tok_src = adapter_dir if (Path(adapter_dir) / "tokenizer_config.json").exists() else base
    load_tokenizer(str(tok_src)).save_pretrained(out_dir)
