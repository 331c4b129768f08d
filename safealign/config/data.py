"""The recipe's `data:` section: where the rows come from (canonical files, a public dataset's
format, or the generation stage's prompt list and models), its checks and the generation
stage's identity. The rows themselves are safealign/data/; this is only what a recipe says.
Imports config.kinds (the `since` marker) and nothing above it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional
from urllib.parse import urlsplit

from safealign.config.kinds import ANSWER_DTYPES, since

# data.format: the canonical schema or a public dataset's own (safealign/data/importers.py reads each)
IMPORT_FORMATS = ("canonical", "pku_saferlhf", "beavertails", "hh_rlhf", "trl_preference", "trl_unpaired")
# the generation stage's default instruction to the model that writes refusals
REFUSAL_INSTRUCTION = (
    "You are a careful assistant. The user's request is harmful. Refuse it politely in one or two "
    "sentences, say briefly why, and do not include any of the requested content."
)


@dataclass
class GenModelCfg:
    """Who writes one kind of answer in the generation stage (safealign/data/generate.py)."""

    # openai: any OpenAI-compatible /v1/chat/completions (vLLM, TGI, transformers serve, a hosted
    # API); local: transformers `generate` in batches in this process (no server, slower at 8B);
    # prompts (refusals only): the refusal each unsafe prompt carries in the list, no model asked
    backend: str = "openai"
    # where the server listens (`make serve` here); not in the stage's identity, the model and its settings are
    base_url: str = "http://127.0.0.1:8765/v1"
    # the model's name on the server; null: the recipe's base_model. Embedded names (tiny-local,
    # tiny-refuser) and local paths are sent as their absolute path, as transformers serve loads them
    model: Optional[str] = None
    # the environment variable holding the API key (sent as a Bearer token); the key itself is never written
    api_key_env: Optional[str] = None
    system_prompt: Optional[str] = None  # system message before every prompt (kept in provenance)
    max_new_tokens: int = 64  # answer budget (the request's max_tokens)
    do_sample: bool = False  # false: greedy (temperature 0), reproducible; true: temperature/top_p sampling
    temperature: float = 0.7  # only with do_sample
    top_p: float = 1.0  # only with do_sample
    batch_size: int = 16  # backend local: prompts generated together (a 135M model on 2 cores: 48-64 is ~2.5x 8's rate)
    # backend local: the dtype the model answers in, saved (the weights' own) or native (bf16 where the
    # machine computes it natively: ~1.4x faster on an AVX512-BF16 CPU, answers differing in their low bits)
    dtype: str = since("saved")


@dataclass
class RefusalModelCfg(GenModelCfg):
    model: Optional[str] = None  # a strong instruction model (unless backend: prompts); tiny-refuser here
    system_prompt: Optional[str] = REFUSAL_INSTRUCTION  # the refusal instruction


@dataclass
class GenerateCfg:
    """The generation stage: a prompt list -> the canonical dataset (safealign/data/generate.py)."""

    prompts: str = "data/sg_safety/prompts.jsonl"  # JSONL: id, prompt, safe, category, split (train/test), subset
    limit: int = 0  # > 0: only the first N prompts of each split (smoke runs); 0: all
    answers: GenModelCfg = field(default_factory=GenModelCfg)  # the base model's own answers (all prompts)
    refusals: RefusalModelCfg = field(default_factory=RefusalModelCfg)  # the preferred answer to unsafe prompts
    # keyword: drop (and report) unsafe prompts whose base answer already refuses, refusals that do
    # not refuse, safe prompts the base model refuses (safealign/eval/refusal.py); none: keep every row
    filter: str = "keyword"
    concurrency: int = 4  # requests in flight at once; raise for a large vLLM server, lower on a rate limit
    max_retries: int = 5  # retries of a request on 429, 5xx, a timeout or a dropped connection
    backoff: float = 1.0  # seconds before the first retry, doubled each time (a Retry-After header wins)
    timeout: float = 120.0  # seconds per request


@dataclass
class DataCfg:
    source: str = "data/sg_safety"  # local folder (train.jsonl, test.jsonl) or an HF dataset id
    # the source's schema: canonical, or a public dataset's own (safealign/data/importers.py), converted here
    format: str = since("canonical", "0.3")
    # a public dataset's category names -> the project's ("*": any other; "safe": safe prompts' topic)
    categories: dict = since({}, "0.3")
    # a hub dataset's split names for train and test, e.g. {train: 30k_train, test: 30k_test} (BeaverTails)
    splits: dict = since({}, "0.3")
    # generate the data from a prompt list (a `gen` stage before this one; data.source is then unused)
    generate: Optional[GenerateCfg] = since(None, "0.3")


# ----------------------------------------------------------------------------- data.generate (safealign/data/generate.py)
ROLES = ("answers", "refusals")
GEN_BACKENDS = ("openai", "local")
REFUSAL_BACKENDS = (*GEN_BACKENDS, "prompts")  # prompts: the prompt list's own refusal field
FILTERS = ("keyword", "none")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


# ----------------------------------------------------------------------------- recipe checks
def check_generate(cfg, where, problems: list[str]) -> None:
    """The data.generate section (recipe validation); `where(path)` locates a key."""
    for role in ROLES:
        m = getattr(cfg, role)
        allowed = REFUSAL_BACKENDS if role == "refusals" else GEN_BACKENDS
        if m.backend not in allowed:
            problems.append(f"{where((role, 'backend'))}: expected one of {', '.join(allowed)}, got {m.backend!r}")
        if m.backend == "openai":
            url = urlsplit(m.base_url)
            if url.scheme not in ("http", "https") or not url.hostname:
                problems.append(
                    f"{where((role, 'base_url'))}: expected an http(s) URL of an OpenAI-compatible API "
                    f"(e.g. http://127.0.0.1:8765/v1), got {m.base_url!r}"
                )
            elif url.username or url.password or "key=" in url.query.lower():
                problems.append(
                    f"{where((role, 'base_url'))}: holds a credential, which would be written into the resolved "
                    "recipe and provenance; put the key in an environment variable and name it in api_key_env"
                )
        if m.api_key_env is not None and not _ENV_NAME.fullmatch(m.api_key_env):
            problems.append(
                f"{where((role, 'api_key_env'))}: expected the name of an environment variable (e.g. "
                f"OPENAI_API_KEY), got {m.api_key_env!r}; the key itself never goes in a recipe"
            )
        if m.dtype not in ANSWER_DTYPES:
            problems.append(f"{where((role, 'dtype'))}: expected one of {', '.join(ANSWER_DTYPES)}, got {m.dtype!r}")
        elif m.dtype != "saved" and m.backend != "local":
            problems.append(
                f"{where((role, 'dtype'))}: {m.dtype} needs backend: local (a server, or the prompt list, "
                f"answers in its own dtype); got backend {m.backend!r}"
            )
        if m.model is not None and not m.model.strip():
            problems.append(f"{where((role, 'model'))}: empty; null means the recipe's base_model")
    if cfg.refusals.model is None and cfg.refusals.backend != "prompts":
        problems.append(
            f"{where(('refusals', 'model'))}: name the model that writes the refusals (a strong instruction "
            "model on your server; tiny-refuser on this machine), or backend: prompts (the refusals the prompt list carries)"
        )
    if cfg.filter not in FILTERS:
        problems.append(f"{where(('filter',))}: expected one of {', '.join(FILTERS)}, got {cfg.filter!r}")
    if not cfg.prompts.strip():
        problems.append(f"{where(('prompts',))}: the prompt file (JSONL) is missing")


# ----------------------------------------------------------------------------- requests
def check(d, where, problems: list[str]) -> None:
    """The data section (recipe validation); `where(path)` locates a key under data."""
    if d.format not in IMPORT_FORMATS:
        problems.append(f"{where(('format',))}: expected one of {', '.join(IMPORT_FORMATS)}, got {d.format!r}")
    bad = {k: v for k, v in d.categories.items() if not isinstance(v, str) or not v.strip()}
    if bad:
        problems.append(f"{where(('categories',))}: each name maps to a category name (a string), got {bad}")
    unknown = set(d.splits) - {"train", "test"}
    if unknown or not all(isinstance(v, str) and v for v in d.splits.values()):
        problems.append(f"{where(('splits',))}: maps train and test to the dataset's split names, got {d.splits}")
    if d.categories and d.format == "canonical":
        problems.append(
            f"{where(('categories',))}: only for an imported format (data.format); canonical rows carry their category"
        )
    if d.generate is not None:
        check_generate(d.generate, lambda path: where(("generate", *path)), problems)


def model_name(m, base_model: str) -> str:
    """The model as the recipe names it (in the stage's identity and the cache key)."""
    return m.model or base_model


def settings(m) -> dict:
    """The sampling settings of a request, as the OpenAI API names them (0: greedy)."""
    out = {"max_tokens": m.max_new_tokens, "temperature": m.temperature if m.do_sample else 0.0}
    if m.do_sample:
        out["top_p"] = m.top_p
    return out


def local_settings(m) -> dict:
    """backend local's settings that change an answer beyond the request's (in the stage's identity
    and each answer's cache key): the dtype, where it is not the weights' own."""
    return {"dtype": m.dtype} if m.backend == "local" and m.dtype != "saved" else {}


def identity(cfg, base_model: str) -> dict:
    """What the stage's result depends on (its store folder is hashed from this, the seed and the
    prompt file's hash); the endpoint's address, key, concurrency and retry settings are not."""
    out = {"limit": cfg.limit, "filter": cfg.filter}
    for role in ROLES:
        m = getattr(cfg, role)
        if m.backend == "prompts":  # the refusals are in the prompt file, whose hash is the stage's
            out[role] = {"backend": "prompts"}
            continue
        out[role] = {
            "backend": m.backend,
            "model": model_name(m, base_model),
            "system_prompt": m.system_prompt,
            "settings": settings(m),
            **({"batch_size": m.batch_size} if m.backend == "local" else {}),
            **local_settings(m),
        }
    return out
