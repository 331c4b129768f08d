"""Recipes: load a YAML recipe, validate it against one schema, fill defaults, resolve.

The schema is the set of dataclasses below; each field's comment is its documentation.
Validation collects every problem before anything runs and names the file, the line, the
key and what was expected, e.g.

    recipes/sft_kto.yaml:21: kto.bta: unknown key (did you mean 'beta'?)
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from safealign.kinds import ADAPTERS, ATTENTION, AUTO, KINDS, TrainCfg, since  # the kinds' sections live there
from safealign.launch import LaunchCfg  # processes, nodes, strategy: safealign/launch.py
from safealign.leaderboard import BACKENDS
from safealign.pipeline import ResourcesCfg  # what each pipeline task asks for: safealign/pipeline.py

STAGE_KINDS = tuple(KINDS)
# model profiles: models/<name>.yaml (SAFEALIGN_MODELS points elsewhere, for tests)
MODELS = Path(os.environ.get("SAFEALIGN_MODELS", Path(__file__).resolve().parent.parent / "models"))
TRACKERS = ("tensorboard", "wandb", "mlflow", "none")


class RecipeError(ValueError):
    """A recipe failed validation; `problems` lists every message."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


# ----------------------------------------------------------------------------- schema
REFUSAL_INSTRUCTION = (
    "You are a careful assistant. The user's request is harmful. Refuse it politely in one or two "
    "sentences, say briefly why, and do not include any of the requested content."
)


@dataclass
class GenModelCfg:
    """Who writes one kind of answer in the generation stage (safealign/generate.py)."""

    # openai: any OpenAI-compatible /v1/chat/completions (vLLM, TGI, transformers serve, a hosted
    # API); local: transformers `generate` in batches in this process (no server, slower at 8B)
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
    batch_size: int = 16  # backend local: prompts generated together


@dataclass
class RefusalModelCfg(GenModelCfg):
    model: Optional[str] = None  # a strong instruction-following model (required); tiny-refuser on this machine
    system_prompt: Optional[str] = REFUSAL_INSTRUCTION  # the refusal instruction


@dataclass
class GenerateCfg:
    """The generation stage: a prompt list -> the canonical dataset (safealign/generate.py)."""

    prompts: str = "data/sg_safety/prompts.jsonl"  # JSONL: id, prompt, safe, category, split (train/test), subset
    limit: int = 0  # > 0: only the first N prompts of each split (smoke runs); 0: all
    answers: GenModelCfg = field(default_factory=GenModelCfg)  # the base model's own answers (all prompts)
    refusals: RefusalModelCfg = field(default_factory=RefusalModelCfg)  # the preferred answer to unsafe prompts
    # keyword: drop (and report) unsafe prompts whose base answer already refuses, refusals that do
    # not refuse, safe prompts the base model refuses (safealign/refusal.py); none: keep every row
    filter: str = "keyword"
    concurrency: int = 4  # requests in flight at once; raise for a large vLLM server, lower on a rate limit
    max_retries: int = 5  # retries of a request on 429, 5xx, a timeout or a dropped connection
    backoff: float = 1.0  # seconds before the first retry, doubled each time (a Retry-After header wins)
    timeout: float = 120.0  # seconds per request


@dataclass
class DataCfg:
    source: str = "data/sg_safety"  # local folder (train.jsonl, test.jsonl) or an HF dataset id
    # the source's schema: canonical, or a public dataset's own (safealign/importers.py), converted here
    format: str = since("canonical", "0.3")
    # a public dataset's category names -> the project's ("*": any other; "safe": safe prompts' topic)
    categories: dict = since({}, "0.3")
    # a hub dataset's split names for train and test, e.g. {train: 30k_train, test: 30k_test} (BeaverTails)
    splits: dict = since({}, "0.3")
    # generate the data from a prompt list (a `gen` stage before this one; data.source is then unused)
    generate: Optional[GenerateCfg] = since(None, "0.3")


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
class SafetyCfg:
    max_new_tokens: int = 64  # generation budget per answer
    batch_size: int = 16  # prompts generated together
    limit: int = 0  # > 0: only the first N held-out prompts (smoke tests)
    do_sample: bool = False  # false: greedy (reproducible); true: temperature/top_p sampling
    temperature: float = 0.7  # only with do_sample
    top_p: float = 1.0  # only with do_sample
    system_prompt: Optional[str] = None  # system message before every held-out prompt
    judge: str = "minilm"  # minilm (embeddings + classifier, offline) or classifier:<hub id or path>
    refusal: str = "minilm"  # refusal detector: minilm (embedding classifier) or keyword
    bootstrap: int = 1000  # bootstrap resamples for the 95% intervals (0: none)
    # hf: transformers generate in batches; vllm: far faster at 8B on a GPU (greedy answers can
    # differ in the last digits of the logits); auto: vllm where installed with CUDA, else hf
    backend: str = since("hf")


@dataclass
class EvalCfg:
    models: str = "all"  # all: the base model and every stage's model; final: base and the last stage
    leaderboard: LeaderboardCfg = field(default_factory=LeaderboardCfg)
    safety: SafetyCfg = field(default_factory=SafetyCfg)


@dataclass
class HealthCfg:
    """When a finished run still counts as failed (safealign/health.py); not part of any stage's identity."""

    enabled: bool = True  # false: stamp stages whatever their logs show (to inspect a diverging run only)
    window: int = 5  # logged steps averaged at the start and at the end of a training run
    min_loss_drop: float = 0.0  # the end's mean loss must be below the start's by more than this fraction
    zero_grad_steps: int = 3  # a run whose last this-many logged steps have grad_norm 0 is dead
    max_degenerate: float = 0.5  # share of empty/degenerate safety answers above which evaluation fails


@dataclass
class _Common:
    seed: int = 42  # one seed for data shuffling, LoRA init and training order
    tracker: str = "tensorboard"  # training metrics to: tensorboard (in each stage folder), wandb, mlflow or none
    tracker_project: str = "safealign"  # W&B project / MLflow experiment name
    base_model: str = "tiny-local"  # hub id, local path, tiny-local (the embedded model) or toy-<family>
    # a model profile, models/<model>.yaml (Make: MODEL=...): the base model and every size knob
    # for real hardware, applied over this recipe; empty: the recipe's own values
    model: str = ""
    stages: list = field(
        default_factory=lambda: ["sft", "kto"]
    )  # run in order; each trains on the previous one's merged model
    data: DataCfg = field(default_factory=DataCfg)
    # how many processes train each stage and how they shard it (safealign/launch.py); default one process
    launch: LaunchCfg = field(default_factory=LaunchCfg)
    # what each task of `make pipeline` asks the cluster for (safealign/pipeline.py); Make ignores it
    resources: ResourcesCfg = field(default_factory=ResourcesCfg)
    eval: EvalCfg = field(default_factory=EvalCfg)
    health: HealthCfg = field(default_factory=HealthCfg)
    description: str = ""


# A recipe: the settings above plus one section per stage kind (safealign/kinds.py), e.g. `kto:`.
Recipe = dataclasses.make_dataclass(
    "Recipe",
    [(name, kind.config, field(default_factory=kind.config)) for name, kind in KINDS.items()],
    bases=(_Common,),
)
Recipe.__module__ = __name__


# ----------------------------------------------------------------------------- loading
class _Loader(yaml.SafeLoader):
    """YAML 1.2 floats: `learning_rate: 2e-5` is a number, as every trainer's docs write it
    (PyYAML's YAML 1.1 rules would read it as the string '2e-5')."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def _key_lines(text: str) -> dict[tuple, int]:
    """Map each key path in a YAML mapping tree to its 1-based line number."""
    lines: dict[tuple, int] = {}

    def walk(node, path):
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                p = path + (str(k.value),)
                lines[p] = k.start_mark.line + 1
                walk(v, p)

    try:
        walk(yaml.compose(text, Loader=_Loader), ())
    except yaml.YAMLError:
        pass
    return lines


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Union:
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _matches(value, tp) -> bool:
    origin = typing.get_origin(tp)
    if origin is Union:
        return any(_matches(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if tp is list:
        return isinstance(value, list)
    return isinstance(value, tp)


def _dataclass_in(tp):
    """The dataclass of a field typed `X` or `Optional[X]`, else None."""
    if dataclasses.is_dataclass(tp):
        return tp
    if typing.get_origin(tp) is Union:
        found = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        return found[0] if found else None
    return None


def _build(cls, raw: Any, path: tuple, where, problems: list[str]):
    if not isinstance(raw, dict):
        problems.append(f"{where(path)}: expected a mapping of keys, got {type(raw).__name__}")
        return cls()
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        kpath = path + (str(key),)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (known keys: {', '.join(names)})"
            problems.append(f"{where(kpath)}: unknown key{hint}")
            continue
        tp = hints[key]
        dc = _dataclass_in(tp)
        if dc is not None and value is None and tp is not dc:
            kwargs[key] = None  # Optional[...] set to null: left out
        elif dc is not None:
            kwargs[key] = _build(dc, value, kpath, where, problems)
        elif not _matches(value, tp):
            problems.append(f"{where(kpath)}: expected {_type_name(tp)}, got {type(value).__name__} ({value!r})")
        else:
            kwargs[key] = float(value) if tp is float else value
    return cls(**kwargs)


# Numeric ranges by field name, wherever the field sits in the schema: (test, what it means).
# Checked when the recipe resolves; a value that is not finite (nan, .inf) fails every range.
RANGES = {
    "seed": (lambda v: v >= 0, "a non-negative integer"),
    "learning_rate": (lambda v: v > 0, "> 0"),
    "beta": (lambda v: v > 0, "> 0 (beta <= 0 removes or inverts the KL constraint)"),
    "desirable_weight": (lambda v: v > 0, "> 0"),
    "undesirable_weight": (lambda v: v > 0, "> 0"),
    "nll_alpha": (lambda v: v >= 0, ">= 0"),
    "warmup_ratio": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "lora_dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "label_smoothing": (lambda v: 0 <= v < 0.5, "in [0, 0.5)"),
    "weight_decay": (lambda v: v >= 0, ">= 0"),
    "num_epochs": (lambda v: v > 0, "> 0"),
    "max_steps": (lambda v: v == -1 or v > 0, "-1 (use num_epochs) or > 0"),
    "micro_batch_size": (lambda v: v >= 1, ">= 1"),
    "gradient_accumulation_steps": (lambda v: v >= 1, ">= 1"),
    "max_length": (lambda v: v >= 16, ">= 16 tokens"),
    "logging_steps": (lambda v: v >= 1, ">= 1"),
    "lora_r": (lambda v: v >= 1, ">= 1"),
    "lora_alpha": (lambda v: v > 0, "> 0"),
    "batch_size": (lambda v: v >= 1, ">= 1"),
    "limit": (lambda v: v >= 0, ">= 0 (0: all)"),
    "max_gen_toks": (lambda v: v >= 0, ">= 0 (0: lm-eval's default)"),
    "max_new_tokens": (lambda v: v >= 1, ">= 1"),
    "temperature": (lambda v: v > 0, "> 0"),
    "top_p": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "bootstrap": (lambda v: v >= 0, ">= 0 (0: no intervals)"),
    "min_loss_drop": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "window": (lambda v: v >= 1, ">= 1"),
    "zero_grad_steps": (lambda v: v >= 1, ">= 1"),
    "max_degenerate": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "concurrency": (lambda v: v >= 1, ">= 1"),
    "max_retries": (lambda v: v >= 0, ">= 0"),
    "backoff": (lambda v: v >= 0, ">= 0 seconds"),
    "timeout": (lambda v: v > 0, "> 0 seconds"),
}


def _check_ranges(node, path: tuple, where, problems: list[str]) -> None:
    """Every numeric field named in RANGES, anywhere in the recipe tree."""
    if node is None:
        return
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        if dataclasses.is_dataclass(value):
            _check_ranges(value, path + (f.name,), where, problems)
        elif f.name in RANGES and isinstance(value, (int, float)) and not isinstance(value, bool):
            test, meaning = RANGES[f.name]
            if not math.isfinite(value) or not test(value):
                problems.append(f"{where(path + (f.name,))}: must be {meaning}, got {value}")


def _check_training(name: str, cfg, where, problems: list[str]) -> None:
    """The settings every training kind shares (kinds.TrainCfg)."""
    if cfg.bf16 not in (True, False, AUTO):
        problems.append(f"{where((name, 'bf16'))}: expected true, false or 'auto', got {cfg.bf16!r}")
    if cfg.adapter not in ADAPTERS:
        problems.append(f"{where((name, 'adapter'))}: expected one of {', '.join(ADAPTERS)}, got {cfg.adapter!r}")
    elif cfg.adapter == "qlora" and cfg.full_finetune:
        problems.append(
            f"{where((name, 'adapter'))}: qlora trains an adapter on a 4-bit base; it cannot go with full_finetune: true"
        )
    if cfg.attn_implementation not in ATTENTION:
        problems.append(
            f"{where((name, 'attn_implementation'))}: expected one of {', '.join(ATTENTION)}, "
            f"got {cfg.attn_implementation!r}"
        )
    if cfg.liger not in (True, False, AUTO):
        problems.append(f"{where((name, 'liger'))}: expected true, false or 'auto', got {cfg.liger!r}")


def _check_semantics(r: Recipe, where, problems: list[str]) -> None:
    if not r.stages:
        problems.append(f"{where(('stages',))}: at least one stage is needed")
    for i, s in enumerate(r.stages):
        if s not in STAGE_KINDS:
            close = difflib.get_close_matches(str(s), STAGE_KINDS, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"expected one of {', '.join(STAGE_KINDS)}"
            problems.append(f"{where(('stages',))}: stage {i + 1} {s!r} is not a stage kind ({hint})")
    if len(set(map(str, r.stages))) != len(r.stages):
        problems.append(f"{where(('stages',))}: each stage kind may appear once, got {r.stages}")
    from safealign.importers import FORMATS

    if r.data.format not in FORMATS:
        problems.append(f"{where(('data', 'format'))}: expected one of {', '.join(FORMATS)}, got {r.data.format!r}")
    bad = {k: v for k, v in r.data.categories.items() if not isinstance(v, str) or not v.strip()}
    if bad:
        problems.append(f"{where(('data', 'categories'))}: each name maps to a category name (a string), got {bad}")
    unknown = set(r.data.splits) - {"train", "test"}
    if unknown or not all(isinstance(v, str) and v for v in r.data.splits.values()):
        problems.append(
            f"{where(('data', 'splits'))}: maps train and test to the dataset's split names, got {r.data.splits}"
        )
    if r.data.categories and r.data.format == "canonical":
        problems.append(
            f"{where(('data', 'categories'))}: only for an imported format (data.format); canonical rows carry their category"
        )
    if r.data.generate is not None:
        from safealign.generate import check

        check(r.data.generate, lambda path: where(("data", "generate", *path)), problems)
    if r.base_model.startswith("toy-"):
        from safealign.families import FAMILIES

        if r.base_model[4:] not in FAMILIES:
            problems.append(
                f"{where(('base_model',))}: {r.base_model!r}: toy models are toy-<family>, families: "
                f"{', '.join(FAMILIES)}"
            )
    _check_ranges(r, (), where, problems)
    for name, kind in KINDS.items():
        cfg = getattr(r, name)
        _check_training(name, cfg, where, problems)
        if kind.check:
            kind.check(cfg, lambda path, name=name: where((name, *path)), problems)
    _check_eval(r.eval, where, problems)
    from safealign import launch

    stages = {s: getattr(r, s) for s in r.stages if isinstance(s, str) and s in KINDS}
    launch.check(r.launch, stages, lambda key: where(("launch", key)), problems)
    from safealign import pipeline

    pipeline.check(r.resources, r.launch, lambda key: where(("resources", key)), problems)
    if r.tracker not in TRACKERS:
        problems.append(f"{where(('tracker',))}: expected one of {', '.join(TRACKERS)}, got {r.tracker!r}")


def _check_eval(e: EvalCfg, where, problems: list[str]) -> None:
    choices = {
        ("eval", "models"): (e.models, ("all", "final")),
        ("eval", "leaderboard", "source"): (e.leaderboard.source, ("hub", "fixtures")),
        ("eval", "leaderboard", "backend"): (e.leaderboard.backend, BACKENDS),
        ("eval", "safety", "backend"): (e.safety.backend, BACKENDS),
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
        if t.backend is not None and t.backend not in BACKENDS:
            problems.append(
                f"{where(('eval', 'leaderboard', 'tasks', name, 'backend'))}: expected "
                f"{', '.join(BACKENDS)} or null, got {t.backend!r}"
            )
    from safealign.judges import name_problems

    for key, msg in name_problems(e.safety.judge, e.safety.refusal):
        problems.append(f"{where(('eval', 'safety', key))}: {msg}")


def _read(text: str, source: str) -> tuple[dict, dict[tuple, int]]:
    try:
        raw = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f":{mark.line + 1}" if mark else ""
        raise RecipeError([f"{source}{at}: not valid YAML: {getattr(e, 'problem', e)}"]) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RecipeError([f"{source}: expected a mapping of keys at the top, got {type(raw).__name__}"])
    return raw, _key_lines(text)


def _locator(files: list[tuple[str, dict]], overridden: frozenset = frozenset()):
    """`where(path)` -> 'file:line: dotted.key', from the first file (child before parent) that
    has it; a key set on the command line (SET=...) is reported as such."""

    def where(path: tuple) -> str:
        if path in overridden:
            return f"SET {'.'.join(path)}"
        for n in range(len(path), 0, -1):
            for source, lines in files:
                if path[:n] in lines:
                    return f"{source}:{lines[path[:n]]}: {'.'.join(path)}"
        return f"{files[0][0]}: {'.'.join(path)}" if path else files[0][0]

    return where


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def _validate(raw: dict, where) -> Recipe:
    problems: list[str] = []
    recipe = _build(Recipe, raw, (), where, problems)
    if not problems:
        _check_semantics(recipe, where, problems)
    if problems:
        raise RecipeError(problems)
    return recipe


def parse_overrides(overrides: list[str]) -> tuple[dict, frozenset]:
    """["kto.beta=0.2", "stages=[sft]"] -> nested dict (values read as YAML) and the key paths."""
    out: dict = {}
    paths = set()
    for item in overrides:
        key, eq, value = item.partition("=")
        if not eq or not key or any(not part for part in key.split(".")):
            raise RecipeError([f"SET {item!r}: expected key=value, e.g. kto.beta=0.2"])
        path = tuple(key.split("."))
        d = out
        for part in path[:-1]:
            d = d.setdefault(part, {})
            if not isinstance(d, dict):
                raise RecipeError([f"SET {item!r}: {part} is set to a value and a mapping at once"])
        try:
            d[path[-1]] = yaml.load(value, Loader=_Loader) if value.strip() else None
        except yaml.YAMLError:
            d[path[-1]] = value
        for n in range(1, len(path) + 1):
            paths.add(path[:n])
    return out, frozenset(paths)


# ----------------------------------------------------------------------------- model profiles
@dataclass
class ProfileInfo:
    """A profile's own keys, beside the recipe keys it sets (base_model, training, <kind>, eval)."""

    hardware: str = ""  # what it is sized for, e.g. "1x 80 GB GPU (A100/H100), bf16 LoRA"
    family: str = ""  # architecture family (safealign/families.py): llama3, qwen2 or gemma2
    description: str = ""


PROFILE_RECIPE_KEYS = ("base_model", "training", *KINDS, "launch", "resources", "eval", "health")


def profiles() -> list[str]:
    return sorted(p.stem for p in MODELS.glob("*.yaml"))


def shown(path: Path) -> Path:
    """`path` relative to the working directory where it is under it (messages name models/x.yaml)."""
    try:
        return Path(path).resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return Path(path)


def _profile_file(name, where, key: tuple) -> Path:
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", name):
        raise RecipeError([f"{where(key)}: expected the name of a profile in {MODELS}/, got {name!r}"])
    path = shown(MODELS / f"{name}.yaml")
    if not path.exists():
        known = profiles()
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"profiles: {', '.join(known) or 'none'}"
        raise RecipeError([f"{where(key)}: no model profile {path} ({hint})"])
    return path


def load_profile(name, where) -> tuple[dict, list[tuple[str, dict]], ProfileInfo]:
    """models/<name>.yaml -> (the recipe keys it sets, [(file, key lines)], its own keys).

    `training:` holds settings for every training kind (kinds.TrainCfg's keys): it expands into
    each kind's section; a `<kind>:` section overrides it (in the profile or the one it extends).
    `extends: <profile>` (one level) starts from another profile, key by key. `where` locates the
    `model` key that named the profile, for the error when there is no such profile."""
    path = _profile_file(name, where, ("model",))
    raw, lines = _read(_read_file(path), str(path))
    files = [(str(path), lines)]
    parent = raw.pop("extends", None)
    if parent is not None:
        ppath = _profile_file(parent, _locator(files), ("extends",))
        praw, plines = _read(_read_file(ppath), str(ppath))
        if "extends" in praw:
            raise RecipeError(
                [f"{_locator(files)(('extends',))}: {ppath} extends another profile itself; one level only"]
            )
        raw = _merge(praw, raw)
        files.append((str(ppath), plines))
    pwhere = _locator(files)
    problems: list[str] = []
    info_names = [f.name for f in dataclasses.fields(ProfileInfo)]
    info = _build(ProfileInfo, {k: raw.pop(k) for k in info_names if k in raw}, (), pwhere, problems)
    from safealign.families import FAMILIES

    if info.family and info.family not in FAMILIES:
        problems.append(f"{pwhere(('family',))}: expected one of {', '.join(FAMILIES)}, got {info.family!r}")
    for key in list(raw):
        if key not in PROFILE_RECIPE_KEYS:
            problems.append(
                f"{pwhere((str(key),))}: a profile sets the model and its sizes "
                f"({', '.join(info_names + list(PROFILE_RECIPE_KEYS))}); {key!r} belongs in the recipe or SET"
            )
    training = raw.pop("training", None) or {}
    _build(TrainCfg, training, ("training",), pwhere, problems)  # its keys and types, with its lines
    if problems:
        raise RecipeError(problems)
    for kind in KINDS:
        section = raw.get(kind) or {}
        if training or section:
            raw[kind] = _merge(training, section if isinstance(section, dict) else {})
    for _, flines in files:  # a key that came from training: reported on its line there
        for p, n in list(flines.items()):
            if p[:1] == ("training",) and len(p) > 1:
                for kind in KINDS:
                    flines.setdefault((kind, *p[1:]), n)
    return raw, files, info


def parse(
    text: str,
    source: str = "<recipe>",
    recipes_dir: Path | None = None,
    overrides: list[str] | None = None,
    apply_profile: bool = True,
) -> Recipe:
    """Validate recipe YAML text; raise RecipeError listing every problem.

    `extends: <name>` (one level) starts from recipes_dir/<name>.yaml and overrides it key by
    key; mappings merge, lists and values replace. `model: <profile>` applies models/<profile>.yaml
    over that, and `overrides` (Make's SET) apply last. A resolved recipe (every value final, its
    profile already applied) is read with apply_profile=False.
    """
    set_raw, set_paths = parse_overrides(overrides or [])
    raw, lines = _read(text, source)
    files = [(source, lines)]
    parent = raw.pop("extends", None)
    if parent is not None:
        where = _locator(files)
        if not isinstance(parent, str) or recipes_dir is None:
            raise RecipeError([f"{where(('extends',))}: expected the name of a recipe in the same folder"])
        ppath = Path(recipes_dir) / f"{parent}.yaml"
        if not ppath.exists():
            known = sorted(p.stem for p in Path(recipes_dir).glob("*.yaml"))
            close = difflib.get_close_matches(parent, known, n=1)
            raise RecipeError(
                [f"{where(('extends',))}: no recipe {ppath}" + (f" (did you mean '{close[0]}'?)" if close else "")]
            )
        praw, plines = _read(_read_file(ppath), str(ppath))
        if "extends" in praw:
            raise RecipeError(
                [f"{where(('extends',))}: {ppath} extends another recipe itself; only one level of reuse is allowed"]
            )
        _validate(praw, _locator([(str(ppath), plines)]))  # the parent's own problems, with its lines
        raw = _merge(praw, raw)
        files.append((str(ppath), plines))
    # a model profile (recipe key `model`, or SET model=... from Make's MODEL) applies over the
    # recipe and under SET
    profile = set_raw["model"] if "model" in set_raw else raw.get("model")
    if profile and apply_profile:
        praw, pfiles, _ = load_profile(profile, _locator(files, set_paths))
        raw = _merge(raw, praw)
        files = pfiles + files
    return _validate(_merge(raw, set_raw), _locator(files, set_paths))


def parent_of(path: Path) -> Path | None:
    """The recipe file `path` extends, if any (for Make's prerequisites)."""
    raw = yaml.load(_read_file(Path(path)), Loader=_Loader) or {}
    ext = raw.get("extends") if isinstance(raw, dict) else None
    return Path(path).parent / f"{ext}.yaml" if isinstance(ext, str) else None


def load(path: Path, overrides: list[str] | None = None) -> Recipe:
    path = Path(path)
    if not path.exists():
        known = sorted(p.stem for p in path.parent.glob("*.yaml")) if path.parent.exists() else []
        close = difflib.get_close_matches(path.stem, known, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else (f" (known: {', '.join(known)})" if known else "")
        raise RecipeError([f"{path}: no such recipe{hint}"])
    return parse(_read_file(path), str(path), recipes_dir=path.parent, overrides=overrides)


def _read_file(path: Path) -> str:
    from safealign.fsutil import EncodingError, read_utf8

    try:
        return read_utf8(path)
    except EncodingError as e:
        raise RecipeError([str(e)]) from None


def to_dict(recipe: Recipe) -> dict:
    return dataclasses.asdict(recipe)


def identity(node) -> dict:
    """A recipe section as it enters a stage's identity: to_dict, less the fields added after
    stage names were published (kinds.since) while they hold their default."""
    out = {}
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        if "since" in f.metadata and value == f.metadata["default"]:
            continue
        out[f.name] = identity(value) if dataclasses.is_dataclass(value) else copy.deepcopy(value)
    return out
