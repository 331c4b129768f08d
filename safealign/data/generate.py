"""The generation stage (`data.generate`): a prompt list -> the canonical dataset.

The study built its data this way. For each prompt of the list (JSONL: id, prompt, safe,
category, split, subset):

    answers   the base model's own answer, to every prompt            data.generate.answers
    refusals  a refusal written by a strong model, to unsafe prompts  data.generate.refusals
              (backend `prompts`: the one the prompt list carries, as written by its author)

and then one canonical row (safealign/data/rows.py): a safe prompt's chosen answer is the base
model's own; an unsafe prompt's chosen answer is the refusal and its rejected answer the base
model's. The filter (the refusal detector of safealign/eval/refusal.py) drops, and reports by
reason, the rows that would teach the wrong thing: an unsafe prompt the base model already
refuses (no compliant answer to learn away from), a "refusal" that does not refuse, a safe
prompt the base model refuses; it chooses training rows only, every held-out prompt stays.
Each row carries its provenance in `meta` (model, endpoint, settings, seed and time of each
answer); the stage's provenance.json holds the system prompts.

Requests go to an OpenAI-compatible `/v1/chat/completions` (vLLM, TGI, transformers serve, a
hosted API), `concurrency` at a time, retried with exponential backoff on 429, 5xx, timeouts
and dropped connections (a Retry-After header wins); or, with `backend: local`, through
transformers `generate` in batches in this process. Every answer is appended to a cache the
moment it arrives (`<store>/generate-cache/answers.jsonl`, keyed by the hash of the request:
the model's name, the messages, the settings and the seed), so a killed or failed run resumes
without paying twice. The endpoint's address is not in the key (the same model anywhere gives
the same answer); a different model behind the same name needs another name or an emptied
cache. API keys come from the environment variable the recipe names, go into a request header
and are written nowhere.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from pathlib import Path

from safealign.config import data as data_cfg
from safealign.models import client
from safealign.models.client import MAX_WAIT, RETRY_STATUS, Cache, ClientError, Endpoint, backoff_delay  # noqa: F401

SPLITS = ("train", "test")
PROMPT_FIELDS = {
    "id": str,
    "prompt": str,
    "safe": bool,
    "category": str,
    "split": str,
    "subset": (str, type(None)),
    "refusal": (str, type(None)),  # an unsafe prompt's written refusal (refusals.backend: prompts)
}
CACHE = "generate-cache"  # the cache's folder in the stage store


# the generation stage cannot go on; the message names the prompt, key or endpoint
GenerateError = ClientError


def served_name(name: str, role: str) -> str:
    """What the request's `model` field carries: an embedded model or a local folder as its
    absolute path (transformers serve loads a model by path), a hub or server name as it is."""
    from safealign.models import load as models

    return models.locate(name, f"data.generate.{role}.model") if models.is_local(name) else name


def messages(m, prompt: str) -> list[dict]:
    return ([{"role": "system", "content": m.system_prompt}] if m.system_prompt else []) + [
        {"role": "user", "content": prompt}
    ]


def request_seed(seed: int, prompt_id: str, role: str) -> int:
    """A per-request seed from the recipe's: a sampled answer is the same whatever order, or
    however many at once, the requests go out in (where the server honours `seed`)."""
    return int(hashlib.sha256(f"{seed}:{role}:{prompt_id}".encode()).hexdigest()[:8], 16) & 0x7FFFFFFF


def request_key(name: str, msgs: list[dict], sets: dict, seed: int, backend: str) -> str:
    """The cache key: everything the answer depends on, not where it was asked."""
    return client.request_key({"model": name, "messages": msgs, "settings": sets, "seed": seed, "backend": backend})


# ----------------------------------------------------------------------------- prompts
def read_prompts(path: Path, limit: int = 0) -> list[dict]:
    """The prompt file, checked line by line (file:line, field, what was expected); with `limit`,
    the first `limit` prompts of each split."""
    from safealign.data.rows import DataError, _json_lines, _tname

    if not path.is_file():
        raise DataError(f"data.generate.prompts: {path}: no such file")
    rows, ids = [], {}
    for n, where, row in _json_lines(path):
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
        for key in ("id", "prompt", "safe", "category", "split"):
            if key not in row:
                raise DataError(f"{where}: field '{key}' is missing (a prompt has id, prompt, safe, category, split)")
        for key, value in row.items():
            if key not in PROMPT_FIELDS:
                raise DataError(f"{where}: field '{key}' is not a prompt field ({', '.join(PROMPT_FIELDS)})")
            if not isinstance(value, PROMPT_FIELDS[key]):
                raise DataError(
                    f"{where}: field '{key}' must be {_tname(PROMPT_FIELDS[key])}, got {type(value).__name__} ({value!r})"
                )
        for key in ("id", "prompt", "category"):
            if not row[key].strip():
                raise DataError(f"{where}: field '{key}' is empty")
        if row["split"] not in SPLITS:
            raise DataError(f"{where}: field 'split' must be train or test, got {row['split']!r}")
        if row["id"] in ids:
            raise DataError(f"{where}: field 'id' {row['id']!r} repeats line {ids[row['id']]}")
        ids[row["id"]] = n
        rows.append(row)
    kept, seen = [], Counter()
    for r in rows:
        seen[r["split"]] += 1
        if not limit or seen[r["split"]] <= limit:
            kept.append(r)
    missing = [s for s in SPLITS if not seen[s]]
    if missing:
        raise DataError(f"{path}: no prompt with split {' or '.join(missing)} (each split needs prompts)")
    return kept


# ----------------------------------------------------------------------------- running the requests
def _entry(job: dict, text: str, tries: int, where: str) -> dict:
    return {
        "key": job["key"],
        "text": text.strip(),
        "model": job["model"],
        "endpoint": where,
        "settings": job["settings"],
        "seed": job["seed"],
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "tries": tries,
    }


def run_remote(jobs: list[dict], endpoint: Endpoint, cache: Cache, concurrency: int, where: str, log) -> None:
    """Send `jobs`, `concurrency` at a time, caching each answer as it arrives (models/client.py)."""
    client.run_remote(
        jobs, endpoint, concurrency, lambda j, text, tries: cache.add(_entry(j, text, tries, where)), log, "gen"
    )


def run_local(jobs: list[dict], model_path: str, m, seed: int, cache: Cache, log) -> None:
    """Answer `jobs` with transformers `generate` here, `batch_size` at a time, caching each batch."""
    from safealign.models import generation

    def cached(start: int, texts: list[str]) -> None:
        for job, text in zip(jobs[start : start + len(texts)], texts):
            cache.add(_entry(job, text, 1, "local"))

    role = jobs[0]["role"]
    generation.generate(
        model_path,
        [j["prompt"] for j in jobs],
        m,
        seed,
        on_batch=cached,
        label=f"gen: {role}",
        key=f"data.generate.{role}",
    )


# ----------------------------------------------------------------------------- rows
def classify(prompt: dict, answer: str, refusal: str | None, refuses) -> str | None:
    """Why a prompt's answers make no training row (None: they make one); `refuses(text)` is the
    refusal detector."""
    if not answer.strip():
        return "empty_answer"
    if prompt["safe"]:
        return "safe_base_refused" if refuses(answer) else None
    if not (refusal or "").strip():
        return "empty_refusal"
    if refuses(answer):
        return "unsafe_base_refused"
    if not refuses(refusal):
        return "refusal_not_refusing"
    return None


def _meta(entry: dict) -> dict:
    return {k: entry[k] for k in ("model", "endpoint", "settings", "seed", "time")}


def assemble(prompts: list[dict], got: dict, filt: str) -> tuple[dict[str, list[dict]], list[dict]]:
    """Canonical rows per split, and the dropped prompts with their reason. `got` maps
    (role, prompt id) to a cache entry. The filter chooses training rows only: a held-out prompt
    stays whatever the base model answered (dropping the unsafe prompts it already refuses would
    make its refusal rate 0 by construction); only an empty answer or refusal leaves it out."""
    from safealign.eval.refusal import is_refusal

    refuses = is_refusal if filt == "keyword" else (lambda text: None)
    rows, dropped = {s: [] for s in SPLITS}, []
    for p in prompts:
        ans = got[("answers", p["id"])]
        ref = None if p["safe"] else got[("refusals", p["id"])]
        reason = classify(p, ans["text"], ref and ref["text"], refuses)
        if (filt == "none" or p["split"] == "test") and reason not in ("empty_answer", "empty_refusal"):
            reason = None  # the detector is off, or a held-out prompt; an empty answer still makes no row
        if reason:
            dropped.append({**p, "reason": reason, "answer": ans["text"], "refusal": ref and ref["text"]})
            continue
        row = {
            "id": p["id"],
            "prompt": p["prompt"],
            "safe": p["safe"],
            "category": p["category"],
            "chosen": ans["text"] if p["safe"] else ref["text"],
            "rejected": None if p["safe"] else ans["text"],
            "subset": p.get("subset"),
            "meta": {"chosen": _meta(ans if p["safe"] else ref), **({} if p["safe"] else {"rejected": _meta(ans)})},
        }
        rows[p["split"]].append(row)
    return rows, dropped


def from_prompt_list(prompts: list[dict], path: Path) -> dict:
    """refusals.backend `prompts`: each unsafe prompt's own `refusal` field, as a cache entry would
    hold it (no model is asked); GenerateError naming the first prompts without one."""
    missing = [p["id"] for p in prompts if not p["safe"] and not (p.get("refusal") or "").strip()]
    if missing:
        raise GenerateError(
            f"{path}: {len(missing)} unsafe prompt(s) have no 'refusal' field (first: {', '.join(missing[:3])}); "
            "data.generate.refusals.backend is prompts, which takes each unsafe prompt's refusal from the list "
            "(tools/make_sg_safety.py writes them); or name a model that writes them (backend openai or local)"
        )
    meta = {"model": None, "endpoint": f"prompts:{Path(path).name}", "settings": {}, "seed": None, "time": None}
    return {("refusals", p["id"]): {**meta, "text": p["refusal"]} for p in prompts if not p["safe"]}


def _jobs(role: str, m, name: str, prompts: list[dict], seed: int) -> list[dict]:
    served = served_name(name, role) if m.backend == "openai" else name
    out = []
    for p in prompts:
        if role == "refusals" and p["safe"]:
            continue
        msgs, sets, s = messages(m, p["prompt"]), data_cfg.settings(m), request_seed(seed, p["id"], role)
        local = data_cfg.local_settings(m)  # the dtype a local model answers in, where not its own
        out.append(
            {
                "role": role,
                "id": p["id"],
                "prompt": p["prompt"],
                "key": request_key(name, msgs, {**sets, **local}, s, m.backend),
                "model": name,
                "settings": {**sets, **local},
                "seed": s,
                "body": {"model": served, "messages": msgs, "seed": s, "stream": False, **sets},
                "what": f"{role} for prompt {p['id']}",
            }
        )
    return out


def run(cfg, base_model: str, seed: int, prompts_path: Path, out: Path, cache_path: Path, log=print) -> dict:
    """The stage: answers and refusals (from the cache, else asked), filtered into canonical
    train.jsonl / test.jsonl in `out`, dropped.jsonl, and the summary it returns."""

    from safealign.models import load as models

    t0 = time.time()
    prompts = read_prompts(prompts_path, cfg.limit)
    cache = Cache(cache_path)
    have = cache.load()
    stats, got = {}, {}
    for role in data_cfg.ROLES:
        m = getattr(cfg, role)
        if m.backend == "prompts":  # refusals only (config/data.py checks): written in the list, nothing to ask
            written = from_prompt_list(prompts, prompts_path)
            got.update(written)
            stats[role] = {
                "model": None,
                "endpoint": f"prompt list ({prompts_path.name})",
                "requests": 0,
                "cached": 0,
                "asked": 0,
                "retries": 0,
                "seconds": 0.0,
            }
            log(f"  gen: {role}: {len(written)} from the prompt list's refusal field")
            continue
        name = data_cfg.model_name(m, base_model)
        jobs = _jobs(role, m, name, prompts, seed)
        todo = [j for j in jobs if j["key"] not in have]
        where = m.base_url if m.backend == "openai" else "local"
        log(f"  gen: {role}: {len(jobs)} prompts, {len(jobs) - len(todo)} cached, {len(todo)} to ask {name} ({where})")
        t1, retries = time.time(), 0
        if todo and m.backend == "openai":
            key = client.api_key(m.api_key_env, f"data.generate.{role}.api_key_env")
            endpoint = Endpoint(m.base_url, key, cfg.timeout, cfg.max_retries, cfg.backoff)
            try:
                run_remote(todo, endpoint, cache, cfg.concurrency, where, log)
            except GenerateError as e:
                kept = len(cache.load())
                raise GenerateError(
                    f"{e}\n  the {kept} answers received so far are kept in {cache_path}; a rerun asks only for the rest"
                ) from None
            finally:
                endpoint.close()
                retries = endpoint.retries
        elif todo:
            run_local(todo, models.locate(name, f"data.generate.{role}.model"), m, seed, cache, log)
        have = cache.load()
        for j in jobs:
            got[(role, j["id"])] = have[j["key"]]
        stats[role] = {
            "model": name,
            "endpoint": where,
            "requests": len(jobs),
            "cached": len(jobs) - len(todo),
            "asked": len(todo),
            "retries": retries,
            "seconds": round(time.time() - t1, 1),
        }
    rows, dropped = assemble(prompts, got, cfg.filter)
    from safealign.data.rows import write_jsonl

    for split in SPLITS:
        write_jsonl(out / f"{split}.jsonl", rows[split])
    write_jsonl(out / "dropped.jsonl", dropped)
    summary = {
        "prompts": {s: sum(p["split"] == s for p in prompts) for s in SPLITS},
        "rows": {s: len(rows[s]) for s in SPLITS},
        "dropped": dict(sorted(Counter(d["reason"] for d in dropped).items())),
        "filter": cfg.filter,
        **stats,
        "seconds": round(time.time() - t0, 1),
    }
    empty = [s for s in SPLITS if not rows[s]]
    if empty:
        raise GenerateError(
            f"data.generate: no {' or '.join(empty)} row is left after the filter (dropped: {summary['dropped']}); "
            f"the dropped prompts and their answers are in {out / 'dropped.jsonl'}"
        )
    return summary
