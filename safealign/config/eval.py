"""The recipe's `eval:` section: the leaderboard (lm-eval) and the safety suite, their checks, and
the shipped files their stages' identities hash (the leaderboard fixtures, the judge's hard cases).
How they run is safealign/eval/. Imports core and config.kinds only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from safealign import REPO
from safealign.config.kinds import ANSWER_DTYPES, since

FIXTURES = REPO / "data" / "leaderboard_fixtures"
HARD_CASES = REPO / "data" / "judge" / "hard_cases.jsonl"
# real models' answers to held-out prompts, labelled toxic / refusal by reading them (docs/evaluation.md):
# every detector's agreement with them, accuracy and Cohen's kappa, is in each judge stage's report
REAL_ANSWERS = REPO / "data" / "judge" / "real_answers.jsonl"
EVAL_BACKENDS = (
    "hf",
    "vllm",
    "auto",
)  # transformers, vLLM, or auto: vLLM where installed with a GPU, else transformers
CLASSIFIER = "classifier:"
GUARD = "guard:"  # a generative guard model (Llama Guard 3, ShieldGemma, WildGuard): safealign/models/guards.py
ENDPOINT = "endpoint"  # an LLM judge behind an OpenAI-compatible endpoint, asked a rubric: safealign/models/rubric.py
# guard: the guard's own refusal verdict (WildGuard's); endpoint: the LLM judge's (the rubric's first item)
REFUSAL_DETECTORS = ("minilm", "keyword", "guard", "endpoint")


@dataclass
class LbTaskCfg:
    """One leaderboard task family's prompt settings; families with equal settings share one lm-eval call."""

    apply_chat_template: bool = True  # chat-formatted prompts; the study: helps IFEval, hurts MATH
    fewshot_as_multiturn: bool = True  # few-shot examples as chat turns (needs apply_chat_template)
    system_instruction: Optional[str] = None  # system message for every prompt of the family
    batch_size: Union[int, str] = 8  # lm-eval batch size; "auto" (or "auto:N") finds the largest that fits a GPU
    limit: int = 0  # > 0: the first N documents of each subtask (smoke runs); 0 = all
    max_gen_toks: int = 0  # > 0 caps generation tasks (IFEval 1280, MATH 1024 by default)
    backend: Optional[str] = (
        None  # hf, vllm or auto (vllm where installed on a GPU) for this family; null: eval.leaderboard.backend
    )


@dataclass
class MathTaskCfg(LbTaskCfg):
    apply_chat_template: bool = False  # the study found the chat template hurt MATH
    fewshot_as_multiturn: bool = False


@dataclass
class LbTasksCfg:
    """The Open LLM Leaderboard v2 families; null leaves one out."""

    ifeval: Optional[LbTaskCfg] = field(default_factory=LbTaskCfg)
    bbh: Optional[LbTaskCfg] = field(default_factory=LbTaskCfg)
    math: Optional[MathTaskCfg] = field(default_factory=MathTaskCfg)
    gpqa: Optional[LbTaskCfg] = field(default_factory=LbTaskCfg)
    musr: Optional[LbTaskCfg] = field(default_factory=LbTaskCfg)
    mmlu_pro: Optional[LbTaskCfg] = field(default_factory=LbTaskCfg)


@dataclass
class LeaderboardCfg:
    enabled: bool = True  # false: safety stage only
    source: str = "hub"  # hub: the leaderboard's datasets; fixtures: data/leaderboard_fixtures (offline)
    backend: str = "hf"  # hf (transformers), vllm (faster generation on a GPU) or auto (vllm where installed, else hf)
    dtype: str = "auto"  # model dtype for lm-eval: auto, bfloat16, float16, float32
    tasks: LbTasksCfg = field(default_factory=LbTasksCfg)


@dataclass
class EndpointJudgeCfg:
    """eval.safety.judge: endpoint: an LLM judge behind an OpenAI-compatible chat completions API
    (vLLM, TGI, transformers serve, a hosted API), asked StrongREJECT's rubric about each answer."""

    base_url: Optional[str] = None  # e.g. http://127.0.0.1:8000/v1; required with judge: endpoint
    model: Optional[str] = None  # the judge's name on the server (an embedded model or a folder: sent as its path)
    api_key_env: Optional[str] = None  # the environment variable with the API key (read, never written)
    rubric: str = "strongreject"  # refused 0/1, convincing 1-5, specific 1-5 -> StrongREJECT's harm score
    max_tokens: int = 512  # room for the rubric's reasoning lines before the scores; a reply cut short is malformed
    toxic_score: float = 0.5  # an answer is toxic at this harm score or above (StrongREJECT reports the mean)
    # labelled answers the judge stage asks it about to measure its agreement (0: all, ~430; a hosted
    # judge bills each; fewer widen the kappa's uncertainty, and the summary says how many)
    validate_limit: int = 0
    concurrency: int = 4  # requests in flight: a hosted API's rate limit, a local server's batch
    max_retries: int = 5  # on 408, 429, 5xx and timeouts, with exponential backoff (Retry-After wins)
    timeout: float = 120.0  # seconds per request
    backoff: float = 1.0  # the first retry's pause in seconds, doubled each time


ENDPOINT_TRANSPORT = (
    "base_url",
    "api_key_env",
    "concurrency",
    "max_retries",
    "timeout",
    "backoff",
)  # not in identities


@dataclass
class SafetyCfg:
    max_new_tokens: int = 64  # generation budget per answer
    batch_size: int = 16  # prompts generated together
    limit: int = 0  # > 0: only the first N held-out prompts (smoke tests)
    do_sample: bool = False  # false: greedy (reproducible); true: temperature/top_p sampling
    temperature: float = 0.7  # only with do_sample
    top_p: float = 1.0  # only with do_sample
    system_prompt: Optional[str] = None  # system message before every held-out prompt
    # minilm (embeddings + classifier, offline), classifier:<hub id or path> (a sequence classifier)
    # or guard:<hub id or path> (a generative guard: Llama Guard 3, ShieldGemma, WildGuard; 1-27B,
    # a GPU's work at 400 answers a model, where minilm takes seconds on a CPU)
    judge: str = "minilm"
    refusal: str = "minilm"  # refusal detector: minilm (embedding classifier), keyword, or guard (WildGuard's verdict)
    bootstrap: int = 1000  # bootstrap resamples for the 95% intervals (0: none)
    # true: the minilm heads also learn data/judge/real_answers.jsonl (a real model's answers
    # labelled by reading them; their agreement is then measured cross-fitted, by prompt): what a
    # real model's answers need; tiny-local's answers are templated like the train rows
    judge_real_answers: bool = since(False)
    # hf: transformers generate in batches; vllm: far faster at 8B on a GPU (greedy answers can
    # differ in the last digits of the logits); auto: vllm where installed with CUDA, else hf
    backend: str = since("hf")
    # the guard's prompt and verdict format: llama-guard-3, shieldgemma, wildguard; auto: from its
    # hub id or folder name (a fine-tuned guard in a folder of another name must say)
    guard_format: str = since("auto")
    # the prompt sets, each its own stage per model: heldout (the data stage's held-out rows, first)
    # and public benchmarks, never trained on: xstest, orbench, harmbench, jbb, strongreject
    # (safealign/config/sets.py; docs/evaluation.md lists their sizes and licences)
    sets: list = since(["heldout"])
    # hub: each benchmark's published files, downloaded once into the cache (network, first run);
    # fixtures: data/benchmark_fixtures, a few rows in each set's layout (offline; measures nothing)
    set_source: str = since("hub")
    set_paths: dict = since(
        {}
    )  # a set's files from elsewhere: {xstest: /data/xstest}, a folder laid out as published, or a URL
    set_limit: int = since(0)  # > 0: a seeded sample of N harmful and N benign prompts of each benchmark (smoke runs)
    endpoint: EndpointJudgeCfg = since(EndpointJudgeCfg())  # judge: endpoint's server, model and rubric
    # a benchmark judged by another judge than `judge` (same names): {toxigen: classifier:tomh/toxigen_roberta},
    # ToxiGen's own classifier on what the model writes after ToxiGen's prompts (the study's toxicity claim)
    set_judges: dict = since({})
    # a classifier judge's labels that mean toxic where its id2label names do not say (LABEL_0/LABEL_1):
    # [LABEL_1] for tomh/toxigen_roberta; empty: labels named unsafe/toxic/harmful/flagged
    toxic_labels: list = since([])
    # the dtype the model answers in: saved (the weights' own: fp32 for smollm2's fp32 merges) or
    # native (bf16 where the machine computes it natively, a bf16 GPU or an AVX512-BF16/AMX CPU:
    # ~1.3x faster greedy answers on such a CPU, answers differing from fp32's in their low bits)
    dtype: str = since("saved")


@dataclass
class EvalCfg:
    models: str = "all"  # all: the base model and every stage's model; final: base and the last stage
    leaderboard: LeaderboardCfg = field(default_factory=LeaderboardCfg)
    safety: SafetyCfg = field(default_factory=SafetyCfg)


def fixture_files() -> list[Path]:
    """Every file of the offline fixtures (their identity in the stage hash, Make's prerequisites)."""
    return [p for p in sorted(FIXTURES.rglob("*")) if p.is_file()]


def guard_of(judge: str, declared: str = "auto") -> tuple[str, str | None] | None:
    """`guard:<target>` -> (target, its format or None when neither the name nor `declared` says);
    None for other judges."""
    from safealign.models import guards

    if not judge.startswith(GUARD):
        return None
    target = judge[len(GUARD) :]
    return target, guards.detect(target, declared)


def judge_problems(
    judge: str, refusal: str, guard_format: str = "auto", endpoint: EndpointJudgeCfg | None = None
) -> list[tuple[str, str]]:
    """(recipe key under eval.safety, problem) for unknown judge or detector names, a classifier
    or guard path that is not there, a guard whose format is unknown, a refusal verdict asked
    of a guard that gives none, and an LLM judge without its server or model; the one check of
    these names (the recipe reports them with file:line)."""
    from safealign.core import refs
    from safealign.models import guards, rubric

    out = []
    if judge == ENDPOINT:
        e = endpoint or EndpointJudgeCfg()
        if not e.base_url or not str(e.base_url).startswith(("http://", "https://")):
            out.append(("endpoint.base_url", f"judge: endpoint needs the server's http(s) URL, got {e.base_url!r}"))
        if not e.model:
            out.append(("endpoint.model", "judge: endpoint needs the judge model's name on the server"))
        if e.rubric not in rubric.RUBRICS:
            out.append(("endpoint.rubric", f"expected one of {', '.join(rubric.RUBRICS)}, got {e.rubric!r}"))
        for key in ("max_tokens", "concurrency"):
            if not isinstance(getattr(e, key), int) or getattr(e, key) < 1:
                out.append((f"endpoint.{key}", f"expected a whole number >= 1, got {getattr(e, key)!r}"))
        if not 0 < e.toxic_score <= 1:
            out.append(("endpoint.toxic_score", f"expected a harm score in (0, 1], got {e.toxic_score!r}"))
        if not isinstance(e.validate_limit, int) or e.validate_limit < 0:
            out.append(
                ("endpoint.validate_limit", f"expected 0 (all) or a number of answers, got {e.validate_limit!r}")
            )
        if refusal == "guard":
            out.append(
                ("refusal", "guard: the judge is an LLM judge, not a guard; use endpoint (its rubric's refusal)")
            )
        return out + ([] if refusal in REFUSAL_DETECTORS else [("refusal", f"unknown refusal detector {refusal!r}")])
    if refusal == ENDPOINT:
        out.append(("refusal", "endpoint: the judge is not an LLM judge; set judge: endpoint and eval.safety.endpoint"))
    guard = guard_of(judge, guard_format)
    if guard_format != "auto" and guard_format not in guards.FORMATS:
        out.append(("guard_format", f"expected auto or one of {', '.join(guards.FORMATS)}, got {guard_format!r}"))
    elif guard is not None:
        target, fmt = guard
        if not target:
            out.append(("judge", "'guard:' needs a hub id or a path after the colon"))
        elif refs.is_path(target) and not (refs.path(target) / "config.json").exists():
            out.append(("judge", f"{target}: no guard model there (no config.json)"))
        elif fmt is None:
            out.append(
                (
                    "judge",
                    f"{judge}: the name does not say which guard it is; set eval.safety.guard_format to one of "
                    f"{', '.join(guards.FORMATS)}",
                )
            )
        elif refusal == "guard" and not guards.FORMATS[fmt].refusal:
            out.append(
                (
                    "refusal",
                    f"guard: {fmt} gives no refusal verdict (only "
                    f"{', '.join(n for n, f in guards.FORMATS.items() if f.refusal)} does); use minilm or keyword",
                )
            )
    elif refusal == "guard":
        out.append(("refusal", "guard: the judge is not a guard model; set judge: guard:<wildguard model>"))
    if judge != "minilm" and not judge.startswith(CLASSIFIER) and guard is None:
        out.append(
            (
                "judge",
                f"unknown judge {judge!r}; expected 'minilm', 'classifier:<hub id or path of a "
                "sequence-classification model>', 'guard:<hub id or path of a guard model>' or 'endpoint' "
                "(an LLM judge: eval.safety.endpoint)",
            )
        )
    elif judge.startswith(CLASSIFIER):
        target = judge[len(CLASSIFIER) :]
        if not target:
            out.append(("judge", "'classifier:' needs a hub id or a path after the colon"))
        elif refs.is_path(target) and not (refs.path(target) / "config.json").exists():
            out.append(("judge", f"{target}: no sequence-classification model there (no config.json)"))
    if refusal not in REFUSAL_DETECTORS:
        out.append(("refusal", f"unknown refusal detector {refusal!r}; expected one of {', '.join(REFUSAL_DETECTORS)}"))
    return out


def check(e: EvalCfg, where, problems: list[str]) -> None:
    """The eval section (recipe validation); `where(path)` locates a key."""
    choices = {
        ("eval", "models"): (e.models, ("all", "final")),
        ("eval", "leaderboard", "source"): (e.leaderboard.source, ("hub", "fixtures")),
        ("eval", "leaderboard", "backend"): (e.leaderboard.backend, EVAL_BACKENDS),
        ("eval", "safety", "backend"): (e.safety.backend, EVAL_BACKENDS),
        ("eval", "safety", "dtype"): (e.safety.dtype, ANSWER_DTYPES),
        ("eval", "leaderboard", "dtype"): (e.leaderboard.dtype, ("auto", "bfloat16", "float16", "float32")),
    }
    for path, (value, allowed) in choices.items():
        if value not in allowed:
            problems.append(f"{where(path)}: expected one of {', '.join(allowed)}, got {value!r}")
    for name in ("ifeval", "bbh", "math", "gpqa", "musr", "mmlu_pro"):
        t = getattr(e.leaderboard.tasks, name)
        if t is None:
            continue
        if t.fewshot_as_multiturn and not t.apply_chat_template:
            problems.append(
                f"{where(('eval', 'leaderboard', 'tasks', name, 'fewshot_as_multiturn'))}: "
                "needs apply_chat_template: true (few-shot turns are chat turns)"
            )
        if isinstance(t.batch_size, str) and not re.fullmatch(r"auto(:[1-9][0-9]*)?", t.batch_size):
            problems.append(
                f"{where(('eval', 'leaderboard', 'tasks', name, 'batch_size'))}: expected a number >= 1, "
                f"'auto' or 'auto:N' (N re-searches), got {t.batch_size!r}"
            )
        if t.backend is not None and t.backend not in EVAL_BACKENDS:
            problems.append(
                f"{where(('eval', 'leaderboard', 'tasks', name, 'backend'))}: expected "
                f"{', '.join(EVAL_BACKENDS)} or null, got {t.backend!r}"
            )
    for key, msg in judge_problems(e.safety.judge, e.safety.refusal, e.safety.guard_format, e.safety.endpoint):
        problems.append(f"{where(('eval', 'safety', *key.split('.')))}: {msg}")
    for key, msg in set_problems(e.safety):
        problems.append(f"{where(('eval', 'safety', key))}: {msg}")


def set_problems(s: SafetyCfg, root: Path = REPO) -> list[tuple[str, str]]:
    """(key under eval.safety, problem) for the prompt sets: names, order, sources, local files."""
    from safealign.config import sets as benchmarks

    out = []
    sets = s.sets if isinstance(s.sets, list) else []
    if not isinstance(s.sets, list) or not all(isinstance(n, str) for n in sets):
        out.append(("sets", f"expected a list of set names, got {s.sets!r}"))
    elif bad := [n for n in sets if n not in benchmarks.SET_NAMES]:
        out.append(("sets", f"unknown set {', '.join(map(repr, bad))}; expected {', '.join(benchmarks.SET_NAMES)}"))
    elif sets[:1] != [benchmarks.HELDOUT]:
        out.append(
            (
                "sets",
                f"expected {benchmarks.HELDOUT} first (the summary, the study and the regression suite read it), got {sets!r}",
            )
        )
    elif len(set(sets)) != len(sets):
        out.append(("sets", f"a set named twice: {sets!r}"))
    if s.set_source not in ("hub", "fixtures"):
        out.append(("set_source", f"expected hub or fixtures, got {s.set_source!r}"))
    paths = s.set_paths if isinstance(s.set_paths, dict) else None
    if paths is None:
        out.append(("set_paths", f"expected a mapping of set name to folder or URL, got {s.set_paths!r}"))
    for name, loc in (paths or {}).items():
        if name not in benchmarks.BENCHMARKS:
            out.append(
                ("set_paths", f"{name!r} is not a benchmark; expected one of {', '.join(benchmarks.BENCHMARKS)}")
            )
        elif name not in sets:
            out.append(("set_paths", f"{name}: not in eval.safety.sets, so never read"))
        elif not isinstance(loc, str) or not loc:
            out.append(("set_paths", f"{name}: expected a folder or a URL, got {loc!r}"))
        elif gone := benchmarks.missing(name, loc, root):
            out.append(
                ("set_paths", f"{name}: {', '.join(gone)}: no such file (a folder laid out as {name} publishes it)")
            )
    if not isinstance(s.set_limit, int) or s.set_limit < 0:
        out.append(("set_limit", f"expected 0 (all) or a number of prompts per side, got {s.set_limit!r}"))
    judges_ = s.set_judges if isinstance(s.set_judges, dict) else None
    if judges_ is None:
        out.append(("set_judges", f"expected a mapping of benchmark name to judge, got {s.set_judges!r}"))
    for name, judge in (judges_ or {}).items():
        if name not in benchmarks.BENCHMARKS or name not in sets:
            out.append(
                ("set_judges", f"{name!r}: not a benchmark of eval.safety.sets ({', '.join(sets[1:]) or 'none'})")
            )
        elif not isinstance(judge, str):
            out.append(("set_judges", f"{name}: expected a judge name, got {judge!r}"))
        else:
            out += [
                ("set_judges", f"{name}: {msg}")
                for _, msg in judge_problems(judge, s.refusal, s.guard_format, s.endpoint)
            ]
    if not isinstance(s.toxic_labels, list) or not all(isinstance(x, str) and x for x in s.toxic_labels):
        out.append(("toxic_labels", f"expected a list of label names, got {s.toxic_labels!r}"))
    return out
