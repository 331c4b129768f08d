"""Resolve an experiment: its recipe, its stages' identities, and what Make needs to run them.

A stage's identity is a hash of everything its result depends on: its config slice, the seed,
and the identities of its inputs (the data stage; the base model or the upstream stage).
Stages live once in a shared store, `<experiments>/.stages/<kind>-<hash>/`, and each
experiment links to them (`experiments/sft_kto/sft -> ../.stages/sft-1a2b3c4d5e6f`). Two
experiments whose SFT settings match therefore share one SFT training; deleting an experiment
deletes only its links. `stages.json` records, per stage, the store folder and the slice it was
hashed from. Code and template changes are Make's business (file mtimes), as before.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml

from safealign import REPO
from safealign.config import data as data_cfg
from safealign.config import eval as eval_cfg
from safealign.config import launch
from safealign.config import recipe as recipe_mod
from safealign.config import sets as benchmarks
from safealign.config.kinds import DRIVER_ONLY, KINDS
from safealign.core import fsutil, names, refs
from safealign.models import load as models
from safealign.plan import codedeps

STORE = ".stages"
RESOLVED = "recipe.yaml"


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


def data_identity(r: recipe_mod.Recipe) -> dict:
    local = refs.path(r.data.source, REPO)
    if local.exists():
        return {
            "source": r.data.source,
            "sha256": {
                s: fsutil.sha256_file(local / f"{s}.jsonl")
                for s in ("train", "test")
                if (local / f"{s}.jsonl").exists()
            },
        }
    return {"source": r.data.source}  # a hub id: its name (pin a revision in the id to be exact)


def prompts_file(r: recipe_mod.Recipe) -> Path:
    """data.generate's prompt file, checked to be there (the generation stage's input)."""
    path = refs.path(r.data.generate.prompts, REPO)
    if not path.is_file():
        raise recipe_mod.RecipeError([f"data.generate.prompts: {r.data.generate.prompts}: no such file ({path})"])
    return path


def gen_slice(r: recipe_mod.Recipe) -> dict:
    """The generation stage (data.generate): the prompt file by hash, the models and settings that
    answer it (safealign/data/generate.py says which settings count)."""

    return {
        "kind": "gen",
        "seed": r.seed,
        "prompts": {"file": r.data.generate.prompts, "sha256": fsutil.sha256_file(prompts_file(r))},
        "config": data_cfg.identity(r.data.generate, r.base_model),
    }


def stage_slices(r: recipe_mod.Recipe) -> dict[str, dict]:
    """What each stage's result depends on, inputs by identity; hashed into its store folder."""
    slices, data = {}, recipe_mod.identity(r.data)
    if r.data.generate is not None:  # the data stage reads the generation stage's files
        slices["gen"] = gen_slice(r)
        data.pop("generate")
        files = {"gen": f"gen-{_hash(slices['gen'])}"}
    else:
        files = data_identity(r)
    slices["data"] = {"kind": "data", "seed": r.seed, "data": data, "files": files}
    data_id = _hash(slices["data"])
    upstream = {"base_model": r.base_model}
    for s in r.stages:
        cfg = recipe_mod.identity(getattr(r, s))
        slices[s] = {
            "kind": s,
            "seed": r.seed,
            "input": upstream,
            "data": data_id,
            "config": cfg,
            **({"judged_by": judged_by(r, f"data-{data_id}")} if KINDS[s].judged else {}),
            **_profile(r),
            **launch.identity(r.launch),
        }
        upstream = {"stage": f"{s}-{_hash(slices[s])}"}
    return slices


def judged_by(r: recipe_mod.Recipe, data_id: str) -> dict:
    """What an online kind's labels or rewards depend on: the judge stage (its heads) and the
    eval.safety keys that decide a verdict (which judge, which refusal detector, an LLM judge's
    model and rubric; not where it is asked)."""
    s = r.eval.safety
    out = {
        "judge_stage": f"judge-{_hash(judge_slice(r, data_id))}",
        "judge": s.judge,
        "refusal": s.refusal,
        "guard_format": s.guard_format,
        "toxic_labels": list(s.toxic_labels),
    }
    if s.judge == eval_cfg.ENDPOINT:
        out["endpoint"] = endpoint_identity(recipe_mod.identity(r.eval)["safety"])
    return out


def round_slices(r: recipe_mod.Recipe, stage: str, stage_slice: dict) -> list[dict]:
    """An online stage's rounds, each its own store stage: round k's identity is the stage's minus
    what only the driver reads (the number of rounds, the probe's bound), its round number and
    round k-1 as its input (round 1: the stage's input). So `rounds: 3` reuses the two rounds of
    `rounds: 2`, and a run killed in round 3 resumes there."""
    out, upstream = [], stage_slice["input"]
    config = {k: v for k, v in stage_slice["config"].items() if k not in DRIVER_ONLY}
    for k in range(1, getattr(r, stage).rounds + 1):
        sl = {**stage_slice, "kind": f"{stage}-round", "round": k, "input": upstream, "config": config}
        out.append({"dir": f"{stage}-round{k}-{_hash(sl)}", "slice": sl})
        upstream = {"stage": out[-1]["dir"]}
    return out


def _profile(r: recipe_mod.Recipe) -> dict:
    """The model profile, in the identity of every stage whose result depends on the model (the
    training and evaluation stages; data and judge do not, and are shared across profiles)."""
    return {"profile": r.model} if r.model else {}


def eval_models(r: recipe_mod.Recipe) -> list[str]:
    """Which models are evaluated: `base` and the stages (all, or the last one)."""
    return ["base"] + (list(r.stages) if r.eval.models == "all" else list(r.stages[-1:]))


def fixtures_identity() -> dict:

    return {str(p.relative_to(eval_cfg.FIXTURES)): fsutil.sha256_file(p) for p in eval_cfg.fixture_files()}


def judge_slice(r: recipe_mod.Recipe, data_id: str) -> dict:
    """The judge stage: the data stage's rows, the hard cases and the labelled real answers, and
    the guard or LLM judge it measures on them."""
    d = recipe_mod.identity(r.eval)
    out = {"kind": "judge", "seed": r.seed, "data": data_id, "hard_cases": fsutil.sha256_file(eval_cfg.HARD_CASES)}
    if eval_cfg.REAL_ANSWERS.exists():  # the labelled real answers, where shipped
        out["real_answers"] = fsutil.sha256_file(eval_cfg.REAL_ANSWERS)
        if r.eval.safety.judge_real_answers:  # the heads learn them too
            out["learn_real_answers"] = True
    guard = eval_cfg.guard_of(r.eval.safety.judge, r.eval.safety.guard_format)
    if guard:  # the judge stage measures the guard on the labelled answers
        out["guard"] = {"model": guard[0], "format": guard[1], "refusal": r.eval.safety.refusal == "guard"}
    if r.eval.safety.judge == eval_cfg.ENDPOINT:  # the judge stage measures the LLM judge on the labelled answers
        out["endpoint"] = {**endpoint_identity(d["safety"]), "refusal": r.eval.safety.refusal == "endpoint"}
    return out


def eval_slices(r: recipe_mod.Recipe, train: dict[str, dict]) -> dict[str, dict]:
    """Evaluation stages, also content-addressed: a model evaluated with the same settings is
    evaluated once, whichever experiment asks (the base model above all)."""

    d = recipe_mod.identity(r.eval)
    data_id = train["data"]["dir"]
    model_id = {"base": {"base_model": r.base_model}, **{s: {"stage": train[s]["dir"]} for s in r.stages}}
    slices = {"judge": judge_slice(r, data_id)}
    judge_dir = f"judge-{_hash(slices['judge'])}"
    lb = d["leaderboard"]
    safety = {k: v for k, v in d["safety"].items() if k not in SET_KEYS}
    if "endpoint" in safety:  # the judge's server is where it is asked, not what it answers
        safety["endpoint"] = {k: v for k, v in endpoint_identity(d["safety"]).items() if k != "validate_limit"}
    for m in eval_models(r):
        if lb["enabled"]:
            slices[f"leaderboard-{m}"] = {
                "kind": "leaderboard",
                "seed": r.seed,
                "model": model_id[m],
                "config": lb,
                **({"fixtures": fixtures_identity()} if lb["source"] == "fixtures" else {}),
                **_profile(r),
            }
        slices[f"safety-{m}"] = {
            "kind": "safety",
            "seed": r.seed,
            "model": model_id[m],
            "config": safety,
            "judge": judge_dir,
            "data": data_id,
            **({"reference": f"safety-{_hash(slices['safety-base'])}"} if m != "base" else {}),
            **_profile(r),
        }
        for name in benchmark_sets(r):  # a benchmark's stage: its files, not the data stage's rows
            base = f"safety-{name}-base"
            slices[f"safety-{name}-{m}"] = {
                "kind": "safety",
                "seed": r.seed,
                "model": model_id[m],
                "config": {**safety, **({"set_limit": r.eval.safety.set_limit} if r.eval.safety.set_limit else {})},
                "judge": judge_dir,
                "set": benchmarks.identity(name, set_location(r, name)),
                **(
                    {"judge_override": own}
                    if (own := r.eval.safety.set_judges.get(name, r.eval.safety.judge)) != r.eval.safety.judge
                    else {}
                ),
                **({"reference": f"safety-{_hash(slices[base])}"} if m != "base" else {}),
                **_profile(r),
            }
    return slices


def endpoint_identity(safety: dict) -> dict:
    """An LLM judge's settings that decide its verdicts (model, rubric, tokens, threshold), not
    where or how fast it is asked (as the generation stage's identity leaves its endpoint out)."""
    e = {**eval_cfg.EndpointJudgeCfg().__dict__, **(safety.get("endpoint") or {})}
    return {k: v for k, v in sorted(e.items()) if k not in eval_cfg.ENDPOINT_TRANSPORT}


# the keys that choose the prompt sets: each set is its own stage, so they are in none's config
SET_KEYS = ("sets", "set_source", "set_paths", "set_limit", "set_judges")


def benchmark_sets(r: recipe_mod.Recipe) -> list[str]:
    """The public benchmarks the recipe evaluates on (eval.safety.sets less heldout), in its order."""
    return [n for n in r.eval.safety.sets if n != benchmarks.HELDOUT]


def set_location(r: recipe_mod.Recipe, name: str) -> str:
    """Where benchmark `name`'s files are for this recipe (set_paths, the fixtures or the hub)."""
    return benchmarks.location(name, r.eval.safety.set_source, r.eval.safety.set_paths)


def plan(r: recipe_mod.Recipe) -> dict[str, dict]:
    train = {name: {"dir": f"{name}-{_hash(sl)}", "slice": sl} for name, sl in stage_slices(r).items()}
    evals = {name: {"dir": f"{sl['kind']}-{_hash(sl)}", "slice": sl} for name, sl in eval_slices(r, train).items()}
    return {**train, **evals}


def profile_file(r: recipe_mod.Recipe) -> str:
    """models/<profile>.yaml, relative to the checkout where it is inside it (a Make prerequisite)."""
    if not r.model:
        return ""
    path = (recipe_mod.MODELS / f"{r.model}.yaml").resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def base_dep(base_model: str) -> str:
    """The Make target that builds an embedded base model (tiny-local, smollm2-135m, toy-<family>);
    none for others."""
    if base_model == models.TINY:
        return "$(TINY_MODEL)"
    if base_model == models.REFUSER:
        return "$(REFUSER_MODEL)"
    if base_model == models.GUARD:
        return "$(GUARD_MODEL)"
    if base_model == models.SMOLLM2:
        return "$(SMOLLM2_MODEL)"
    if models.toy_family(base_model):
        return f"$(SAFEALIGN_CACHE)/models/{base_model}/.done"
    return ""


def offline(r: recipe_mod.Recipe, p: dict) -> bool:
    """Whether every input is local (base model, data, leaderboard fixtures): the stages then run
    with the hub switched off (HF_HUB_OFFLINE), whichever runner runs them."""
    files = p["data"]["slice"]["files"]
    local_data = "sha256" in files or "gen" in files  # generated: from a local prompt file
    hub_eval = r.eval.leaderboard.enabled and r.eval.leaderboard.source == "hub"
    hub_sets = any(benchmarks.is_remote(set_location(r, n)) for n in benchmark_sets(r))
    return models.is_local(r.base_model) and local_data and not hub_eval and not hub_sets


def judge_dep(r: recipe_mod.Recipe) -> str:
    """The Make targets that build an embedded guard judge (tiny-guard), the recipe's or a
    benchmark's own (eval.safety.set_judges); none for others."""
    deps = []
    for judge in (r.eval.safety.judge, *r.eval.safety.set_judges.values()):
        guard = eval_cfg.guard_of(judge)
        if guard and (dep := base_dep(guard[0])) and dep not in deps:
            deps.append(dep)
    return " ".join(deps)


def gen_deps(r: recipe_mod.Recipe) -> list[str]:
    """What the generation stage needs here: its prompt file, and the embedded models it asks."""

    g = r.data.generate
    path = prompts_file(r)
    deps = [str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)]
    for role in data_cfg.ROLES:
        if getattr(g, role).backend == "prompts":  # written in the prompt file: no model to build
            continue
        dep = base_dep(data_cfg.model_name(getattr(g, role), r.base_model))
        if dep and dep not in deps:
            deps.append(dep)
    return deps


# what Make's SET may hold (its CHARS_set) and the spaces between items
_MAKE_SET = re.compile(r"[A-Za-z0-9_.+/=,:@\[\] -]*\Z")


def resolved_set(overrides: list[str] | None) -> str:
    """stages.mk's RESOLVED_SET: the SET as Make's SETS holds it, which Make compares with its own
    to resolve again when they differ; one that Make could not have given, a text it never equals."""
    text = " ".join(overrides or [])
    return text if _MAKE_SET.match(text) else "(not from make)"


def stages_mk(
    r: recipe_mod.Recipe, p: dict, recipe_file: str, parent: Path | None, overrides: list[str] | None = None
) -> str:
    local_data = "sha256" in p["data"]["slice"]["files"]
    src = Path(r.data.source)
    if "gen" in p:
        data_dep = f"$(STORE)/{p['gen']['dir']}/.done"
    else:
        data_dep = " ".join(str(src / f"{s}.jsonl") for s in ("train", "test")) if local_data else ""
    lines = [
        f"# Generated by `safealign resolve` from {recipe_file}; rewritten on every resolve.",
        f"STAGES := {' '.join(r.stages)}",
        f"BASE_DEP := {base_dep(r.base_model)}",
        f"JUDGE_DEP := {judge_dep(r)}",
        f"DATA_DEP := {data_dep}",
        f"GEN_DEP := {' '.join(gen_deps(r)) if 'gen' in p else ''}",
        f"OFFLINE := {1 if offline(r, p) else 0}",
        f"RECIPE_PARENT := {parent or ''}",
        f"PROFILE_FILE := {profile_file(r)}",
        f"RESOLVED_SET := {resolved_set(overrides)}",
    ]
    for name, entry in p.items():
        lines.append(f"DIR_{name} := $(STORE)/{entry['dir']}")
    for i, s in enumerate(r.stages):
        lines.append(f"INPUT_{s} := {'$(BASE_DEP)' if i == 0 else f'$(DIR_{r.stages[i - 1]})/.done'}")
        # an online kind labels with the judge, which it builds first: the judge's own inputs
        judged = "$(JUDGE_DEP) data/judge/hard_cases.jsonl $(wildcard data/judge/real_answers.jsonl)"
        lines.append(f"TRAIN_DEP_{s} := {judged if KINDS[s].judged else ''}")
    for name, entry in p.items():  # the files each stage's result depends on (safealign/plan/codedeps.py)
        kind = "safety_set" if "set" in entry["slice"] else entry["slice"]["kind"]
        code = codedeps.templates(kind) + codedeps.files(kind)
        if "launch" in entry["slice"]:  # a launched training stage also renders the launch templates
            code += launch.files(r.launch)
        lines.append(f"CODE_{name} := {' '.join(code)}")
    lines.append(f"CODE_summary := {' '.join(codedeps.files('summary'))}")
    models_ = eval_models(r)
    lines.append(f"EVAL_MODELS := {' '.join(models_)}")
    lines.append(f"SAFETY_SETS := {' '.join(benchmark_sets(r))}")
    for name in benchmark_sets(r):  # a local benchmark's files: an edit reruns its stages
        files = benchmarks.local_files(name, set_location(r, name))
        lines.append(f"SET_DEP_{name} := {' '.join(_rel(f) for f in files)}")
    lines.append(f"LEADERBOARD := {1 if r.eval.leaderboard.enabled else ''}")
    lines.append("MODEL_DEP_base := $(BASE_DEP)")
    for s in r.stages:
        lines.append(f"MODEL_DEP_{s} := $(DIR_{s})/.done")
    if r.eval.leaderboard.enabled and r.eval.leaderboard.source == "fixtures":
        lines.append(f"FIXTURE_DEP := {' '.join(str(p.relative_to(REPO)) for p in eval_cfg.fixture_files())}")
    else:
        lines.append("FIXTURE_DEP :=")
    return "\n".join(lines) + "\n"


def _rel(path: Path) -> str:
    """A path for stages.mk: relative to the checkout where it is inside it."""
    path = Path(path).resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _link(exp: Path, name: str, dirname: str) -> None:
    link, target = exp / name, Path("..") / STORE / dirname
    if link.is_symlink() and Path(os.readlink(link)) == target:
        return
    if link.exists() and not link.is_symlink():
        raise FileExistsError(f"{link}: a folder where safealign keeps a link to the stage store; move it away")
    tmp = exp / f".{name}.link"
    if tmp.is_symlink():
        tmp.unlink()
    tmp.symlink_to(target, target_is_directory=True)
    os.replace(tmp, link)


def machine_problems(r: recipe_mod.Recipe) -> list[str]:
    """The recipe's launch against this machine's GPUs or CPU cores (safealign/config/launch.py); checked
    when an experiment resolves and again when a training stage starts."""
    if not launch.launched(r.launch):
        return []
    import torch

    from safealign.config.kinds import KINDS

    cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    tools = {KINDS[s].tool for s in r.stages}
    return launch.check_machine(r.launch, cuda, len(os.sched_getaffinity(0)), tools)


def local_problems(r: recipe_mod.Recipe) -> list[str]:
    """A `base_model` that is a local path (refs.is_path) but holds no model: found here, when the
    experiment resolves, instead of when the first stage that loads it runs (after data and the
    judge)."""
    from safealign.core import refs
    from safealign.models import load

    if load.is_embedded(r.base_model) or not refs.is_path(r.base_model):
        return []
    folder = refs.path(r.base_model)
    if (folder / "config.json").exists():
        return []
    return [
        f"base_model: {r.base_model}: no model there ({folder / 'config.json'} missing); a local "
        "base_model is a Hugging Face model folder, anything else a hub id (org/name)"
    ]


def resolve(recipe_file: str, exp: Path, overrides: list[str] | None = None) -> dict:
    """Validate, then write recipe.yaml, config/, stages.json, stages.mk and the stage links.

    Nothing is written when validation fails. A changed recipe keeps the previous resolved
    recipe in history/ and says what changed.
    """
    r = recipe_mod.load(Path(recipe_file), overrides)
    # `make render` resolves for the GPU machine it renders for (SAFEALIGN_RENDER=1): not this one's
    machine = machine_problems(r) + local_problems(r) if os.environ.get("SAFEALIGN_RENDER") != "1" else []
    if machine:
        raise recipe_mod.RecipeError([f"{recipe_file}: {m}" for m in machine])
    names.check_name(exp.name, "experiment name")
    names.inside(exp.parent, exp, "experiment folder")  # a link to elsewhere is refused
    parent = recipe_mod.parent_of(Path(recipe_file))
    p = plan(r)
    resolved = {
        "name": exp.name,
        "recipe_file": recipe_file,
        "extends": str(parent) if parent else None,
        "overrides": list(overrides or []),
        **({"profile": dataclasses.asdict(r.profile)} if r.profile else {}),  # its family, hardware
        **recipe_mod.to_dict(r),
    }
    text = f"# Resolved from {recipe_file}; stages read this file, not the recipe.\n" + yaml.safe_dump(
        resolved, sort_keys=False
    )
    path = exp / RESOLVED
    if path.exists() and path.read_text() != text:
        old, new = _flatten(yaml.safe_load(path.read_text()) or {}), _flatten(resolved)
        changed = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
        # sections the schema gained since (a new stage kind's defaults): named once, not key by key
        sections = {k.split(".")[0] for k in old}
        added = sorted({k.split(".")[0] for k in changed if k not in old and k.split(".")[0] not in sections})
        changed = [k for k in changed if k.split(".")[0] not in added]
        hist = exp / "history" / f"recipe.{time.strftime('%Y%m%d-%H%M%S')}.yaml"
        hist.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, hist)
        what = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed]
        what += [f"new sections with their defaults: {', '.join(added)}"] if added else []
        print(
            f"{exp}: recipe changed ({'; '.join(what)}); the previous resolved recipe is kept as {hist}",
            file=sys.stderr,
        )
    exp.mkdir(parents=True, exist_ok=True)
    (exp.parent / STORE).mkdir(exist_ok=True)
    fsutil.write_if_changed(path, text)
    for name, entry in p.items():
        fsutil.write_if_changed(
            exp / "config" / f"{name}.json", json.dumps(entry["slice"], indent=2, sort_keys=True) + "\n"
        )
        _link(exp, name, entry["dir"])
        if fsutil.is_done(exp.parent / STORE / entry["dir"]):
            print(f"[{exp.name}] {name}: reusing {STORE}/{entry['dir']} (same config and inputs)", file=sys.stderr)
    eval_slice = {
        "seed": r.seed,
        "base_model": r.base_model,
        "models": eval_models(r),
        "stages": {n: e["dir"] for n, e in p.items()},
        "eval": recipe_mod.identity(r.eval),
    }
    fsutil.write_if_changed(exp / "config" / "eval.json", json.dumps(eval_slice, indent=2, sort_keys=True) + "\n")
    fsutil.write_text_atomic(
        exp / "stages.json", json.dumps({n: {"dir": e["dir"]} for n, e in p.items()}, indent=2) + "\n"
    )
    fsutil.write_text_atomic(exp / "stages.mk", stages_mk(r, p, recipe_file, parent, overrides))
    return p


class Experiment:
    """One experiment folder, read once per command: its resolved recipe, its stage plan and the
    paths of its stages. Every runner, the summary and the report take one of these."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        raw = yaml.safe_load((self.folder / RESOLVED).read_text(encoding="utf-8"))
        self.recipe_file: str = raw.pop("recipe_file")
        self.overrides: list[str] = raw.pop("overrides", None) or []
        profile = raw.pop("profile", None)
        for key in ("name", "extends"):
            raw.pop(key, None)
        # resolved: the profile is applied already (applying it again would undo SET over it)
        self.recipe = recipe_mod.parse(yaml.safe_dump(raw), str(self.folder / RESOLVED), apply_profile=False)
        self.recipe.profile = recipe_mod.ProfileInfo(**profile) if profile else None
        self.stages: dict[str, dict] = json.loads((self.folder / "stages.json").read_text())

    @property
    def name(self) -> str:
        return self.folder.name

    def up_to_date(self, target: Path) -> bool:
        """Whether Make holds `target` (a stage's .done) up to date for this experiment: done, and
        not older than its config and code prerequisites. Asked of Make itself (`make -q`), so
        `safealign status` and the pipeline's tasks judge a finished stage as `make exp` does."""
        rfile = Path(self.recipe_file)
        args = [
            f"NAME={rfile.stem}",
            f"RECIPES={rfile.parent}",
            f"EXPERIMENTS={self.folder.parent}",
            f"EXP_NAME={self.name}",
            "MODEL=",  # the model is in the overrides (model=...); not the Makefile's default MODEL
        ]
        if self.overrides:
            args.append("SET=" + " ".join(self.overrides))
        q = subprocess.run(["make", "-q", "--no-print-directory", str(target), *args], cwd=REPO, capture_output=True)
        return q.returncode == 0

    def dir(self, stage: str) -> Path:
        """A stage's folder: in the store, or the experiment's own `eval/` for its summary."""
        if stage == "summary":
            return self.folder / "eval"
        return self.folder.parent / STORE / self.stages[stage]["dir"]

    def model_path(self, model: str) -> str:
        """An evaluated model by its name in the plan: `base`, or a training stage's merged model."""
        if model == "base":
            return models.locate(self.recipe.base_model)
        return str((self.dir(model) / "merged").resolve())

    def rounds(self, stage: str) -> list[dict]:
        """An online stage's rounds: [{"dir": store folder name, "slice": identity}] (round_slices)."""
        stage_slice = json.loads((self.folder / "config" / f"{stage}.json").read_text())
        return round_slices(self.recipe, stage, stage_slice)

    def input_model(self, stage: str) -> str:
        """The model a training stage starts from: the base model, or the previous stage's merged model."""
        i = self.recipe.stages.index(stage)
        return self.model_path("base" if i == 0 else self.recipe.stages[i - 1])
