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
from typing import Any, Literal, Union

import yaml

from safealign import REPO
from safealign.config import data as data_cfg
from safealign.config import eval as eval_cfg
from safealign.config import launch, resources
from safealign.config.data import DataCfg
from safealign.config.eval import EvalCfg
from safealign.config.kinds import ADAPTERS, ATTENTION, AUTO, KINDS, NATIVE, TrainCfg  # the kinds' sections live there
from safealign.config.launch import LaunchCfg  # processes, nodes, strategy: safealign/config/launch.py
from safealign.config.resources import ResourcesCfg  # what each pipeline task asks for: safealign/config/resources.py
from safealign.core.names import check_keys

STAGE_KINDS = tuple(KINDS)
# model profiles: models/<name>.yaml (SAFEALIGN_MODELS points elsewhere, for tests)
MODELS = Path(os.environ.get("SAFEALIGN_MODELS", REPO / "models"))  # the model profiles
TRACKERS = ("tensorboard", "wandb", "mlflow", "none")


class RecipeError(ValueError):
    """A recipe failed validation; `problems` lists every message."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass
class HealthCfg:
    """When a finished run still counts as failed (safealign/eval/health.py); not part of any stage's identity."""

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
    base_model: str = "tiny-local"  # hub id, local path, tiny-local (the embedded model), smollm2-135m or toy-<family>
    # a model profile, models/<model>.yaml (Make: MODEL=...): the base model and every size knob
    # for real hardware, applied over this recipe; empty: the recipe's own values
    model: str = ""
    stages: list = field(
        default_factory=lambda: ["sft", "kto"]
    )  # run in order; each trains on the previous one's merged model
    data: DataCfg = field(default_factory=DataCfg)
    # how many processes train each stage and how they shard it (safealign/config/launch.py); default one process
    launch: LaunchCfg = field(default_factory=LaunchCfg)
    # what each task of `make pipeline` asks the cluster for (safealign/config/resources.py); Make ignores it
    resources: ResourcesCfg = field(default_factory=ResourcesCfg)
    eval: EvalCfg = field(default_factory=EvalCfg)
    health: HealthCfg = field(default_factory=HealthCfg)
    description: str = ""


# A recipe: the settings above plus one section per stage kind (safealign/config/kinds.py), e.g. `kto:`.
Recipe = dataclasses.make_dataclass(
    "Recipe",
    [(name, kind.config, field(default_factory=kind.config)) for name, kind in KINDS.items()],
    bases=(_Common,),
)
Recipe.__module__ = __name__


# ----------------------------------------------------------------------------- loading
# Nodes a document may expand to with its aliases followed (a shipped recipe has ~150). YAML's
# anchors let a few lines nest references that expand without bound (an "alias bomb": nine
# levels of nine aliases are 9**9 values); the document is refused before anything is built.
MAX_NODES = 100_000


class _Loader(yaml.SafeLoader):
    """YAML 1.2 floats: `learning_rate: 2e-5` is a number, as every trainer's docs write it
    (PyYAML's YAML 1.1 rules would read it as the string '2e-5'). A document whose aliases expand
    it past MAX_NODES nodes, or that refers to itself, is refused as it is composed."""

    def compose_document(self):
        node = super().compose_document()
        _check_expansion(node)
        return node


class Unbounded(yaml.composer.ComposerError):
    """A document that its aliases expand past MAX_NODES, or that contains itself."""


def _check_expansion(root) -> None:
    """Raise Unbounded (with the line of the innermost node past the bound) when `root`, aliases
    followed, has more than MAX_NODES nodes or contains itself."""
    sizes: dict[int, int] = {}
    open_: set[int] = set()

    def size(node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_:
            raise Unbounded(
                None, None, "an alias refers to a node that contains it (a recursive document)", node.start_mark
            )
        open_.add(key)
        if isinstance(node, yaml.SequenceNode):
            n = 1 + sum(size(c) for c in node.value)
        elif isinstance(node, yaml.MappingNode):
            n = 1 + sum(size(k) + size(v) for k, v in node.value)
        else:
            n = 1
        open_.discard(key)
        if n > MAX_NODES:
            raise Unbounded(
                None,
                None,
                f"its aliases expand this document past {MAX_NODES:,} values (nested anchors, an 'alias bomb'?)",
                node.start_mark,
            )
        sizes[key] = n
        return n

    if root is not None:
        size(root)


# Integers are decimal: YAML 1.1's 0x10 (16), 010 (8, octal) and 1:30 (90, base 60) are read as
# text, which the recipe's types then refuse with the value as written
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:int"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:int", re.compile(r"^[-+]?(?:0|[1-9][0-9_]*)$"), list("-+0123456789"))
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
            if not math.isfinite(value):
                problems.append(
                    f"{where(path + (f.name,))}: must be {meaning}, got {value} (a finite number; a literal "
                    "past 1.8e308, such as 1e309, is read as infinity)"
                )
            elif not test(value):
                problems.append(f"{where(path + (f.name,))}: must be {meaning}, got {value}")


def _check_training(name: str, cfg, where, problems: list[str]) -> None:
    """The settings every training kind shares (kinds.TrainCfg)."""
    if cfg.bf16 not in (True, False, AUTO, NATIVE):
        problems.append(f"{where((name, 'bf16'))}: expected true, false, 'auto' or 'native', got {cfg.bf16!r}")
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
    data_cfg.check(r.data, lambda path: where(("data", *path)), problems)
    if r.base_model.startswith("toy-"):
        from safealign.models.families import ARCH_FAMILIES

        if r.base_model[4:] not in ARCH_FAMILIES:
            problems.append(
                f"{where(('base_model',))}: {r.base_model!r}: toy models are toy-<family>, families: "
                f"{', '.join(ARCH_FAMILIES)}"
            )
    _check_ranges(r, (), where, problems)
    for name, kind in KINDS.items():
        cfg = getattr(r, name)
        _check_training(name, cfg, where, problems)
        if kind.check:
            kind.check(cfg, lambda path, name=name: where((name, *path)), problems)
    eval_cfg.check(r.eval, where, problems)
    stages = {s: getattr(r, s) for s in r.stages if isinstance(s, str) and s in KINDS}
    launch.check(r.launch, stages, lambda key: where(("launch", key)), problems)
    resources.check(r.resources, r.launch, lambda key: where(("resources", key)), problems)
    if r.tracker not in TRACKERS:
        problems.append(f"{where(('tracker',))}: expected one of {', '.join(TRACKERS)}, got {r.tracker!r}")


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
    """["kto.beta=0.2", "stages=[sft]"] -> nested dict (values read as YAML) and the key paths.
    A key given twice, or a key and one inside it (kto={beta: 0.1} kto.beta=0.2), is refused:
    which would win? (core.names.check_keys, also what sweeps check their SET and GRID with)"""
    out: dict = {}
    paths = set()
    for item in overrides:
        key, eq, value = item.partition("=")
        if not eq or not key or any(not part for part in key.split(".")):
            raise RecipeError([f"SET {item!r}: expected key=value, e.g. kto.beta=0.2"])
    try:
        check_keys(("SET", overrides))
    except ValueError as e:
        raise RecipeError([str(e)]) from None
    for item in overrides:
        key, _, value = item.partition("=")
        path = tuple(key.split("."))
        d = out
        for part in path[:-1]:
            d = d.setdefault(part, {})
            if not isinstance(d, dict):
                raise RecipeError([f"SET {item!r}: {part} is set to a value and a mapping at once"])
        try:
            d[path[-1]] = yaml.load(value, Loader=_Loader) if value.strip() else None
        except Unbounded as e:
            raise RecipeError([f"SET {key}: {e.problem}"]) from None
        except yaml.YAMLError:  # not YAML: the text itself (a string key's value)
            d[path[-1]] = value
        for n in range(1, len(path) + 1):
            paths.add(path[:n])
        _add_nested(path, d[path[-1]], paths)  # kto={beta: -1}: kto.beta is SET's too
    return out, frozenset(paths)


def _add_nested(path: tuple, value, paths: set) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            paths.add(path + (str(k),))
            _add_nested(path + (str(k),), v, paths)


# ----------------------------------------------------------------------------- model profiles
@dataclass
class ProfileInfo:
    """A profile's own keys, beside the recipe keys it sets (base_model, training, <kind>, eval)."""

    hardware: str = ""  # what it is sized for, e.g. "1x 80 GB GPU (A100/H100), bf16 LoRA"
    family: str = ""  # architecture family (safealign/models/families.py): llama3, qwen2 or gemma2
    description: str = ""
    # SET items `make study` adds on this model, its data route (e.g. the base model's own answers,
    # data.generate...); `make exp` does not. The study's experiments are named <recipe>+model-<m>+data-study
    study_set: list = field(default_factory=list)


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
    from safealign.models.families import ARCH_FAMILIES

    if info.family and info.family not in ARCH_FAMILIES:
        problems.append(f"{pwhere(('family',))}: expected one of {', '.join(ARCH_FAMILIES)}, got {info.family!r}")
    bad = [x for x in info.study_set if not isinstance(x, str) or "=" not in x or x.startswith("model=")]
    if bad:
        problems.append(f"{pwhere(('study_set',))}: expected SET items key=value (not model=), got {bad}")
    for key in list(raw):
        if key not in PROFILE_RECIPE_KEYS:
            known = info_names + list(PROFILE_RECIPE_KEYS)
            close = difflib.get_close_matches(str(key), known, n=1)
            problems.append(
                f"{pwhere((str(key),))}: unknown profile key (did you mean '{close[0]}'?)"
                if close
                else f"{pwhere((str(key),))}: a profile sets the model and its sizes "
                f"({', '.join(known)}); {key!r} belongs in the recipe or SET"
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
    info = None
    if profile and apply_profile:
        praw, pfiles, info = load_profile(profile, _locator(files, set_paths))
        raw = _merge(raw, praw)
        files = pfiles + files
    r = _validate(_merge(raw, set_raw), _locator(files, set_paths))
    r.profile = info  # the profile's own keys (family, hardware); not a recipe key, so in no identity
    return r


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
    from safealign.core.fsutil import EncodingError, read_utf8

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
