"""A training stage's files, rendered from its kind's templates: what the stage, `make render` and
`make bench-gpu` all write before a tool trains.

    axolotl (sft): templates/axolotl/<kind>.yaml.j2 -> axolotl.yaml, `python -m axolotl.cli.train`
    trl (the other kinds): templates/trl/train.py.j2 + <kind>.yaml.j2 -> train_<kind>.py, <kind>.yaml
    launched (launch: more than one process): templates/accelerate, templates/deepspeed

Templates render with StrictUndefined (a missing variable names the template's file:line) and a
`yaml` filter whose floats PyYAML reads back as floats. Imports config, models and the launcher.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml
from jinja2 import Environment, FileSystemLoader, StrictUndefined, Undefined

from safealign import REPO
from safealign.config import launch
from safealign.core.errors import StageError
from safealign.models import load as models
from safealign.train import axolotl_cpu, launcher

TEMPLATES = Path(os.environ.get("SAFEALIGN_TEMPLATES", REPO / "templates"))


def _float(x: float) -> str:
    """A float as YAML 1.1 reads it back as a float: PyYAML (used by Axolotl and by the rendered
    scripts) reads `1e-05` as a string, `1.0e-05` as a number."""
    text = repr(x)
    mantissa, e, exponent = text.partition("e")
    return f"{mantissa}.0e{exponent}" if e and "." not in mantissa else text


def _yaml_value(value) -> str:
    """The `yaml` filter: a value as a flow-style YAML literal that PyYAML reads back as the same
    value (floats as `1.0e-05`); an undefined value is an error (jinja's `tojson` would render it)."""
    if isinstance(value, Undefined):
        value._fail_with_undefined_error()
    if isinstance(value, float):
        return _float(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml_value(v) for v in value) + "]"
    return json.dumps(value)


def _finalize(value):
    return _float(value) if isinstance(value, float) else value


def render(template: str, **context) -> str:
    """Render templates/<template> with StrictUndefined: a missing variable is an error, reported
    as StageError with the template's file:line."""
    import traceback

    from jinja2 import TemplateError

    env = Environment(
        loader=FileSystemLoader(str(TEMPLATES)),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        finalize=_finalize,
    )
    env.filters["yaml"] = _yaml_value
    try:
        return env.get_template(template).render(**context)
    except TemplateError as e:
        # syntax errors carry their line; undefined variables show up as a frame in the template
        line = getattr(e, "lineno", None)
        if line is None:
            frames = [f for f in traceback.extract_tb(e.__traceback__) if f.filename.endswith(template)]
            line = frames[-1].lineno if frames else "?"
        raise StageError(
            f"{TEMPLATES / template}:{line}: {type(e).__name__}: {e.message or e}; the template uses "
            "a variable or filter that the stage does not pass (see safealign/run/stages.py), or is not "
            "valid Jinja"
        ) from e


def report_to(tracker: str) -> list[str]:
    return [] if tracker == "none" else [tracker]


def warmup_steps(cfg, rows: int) -> int:
    """`warmup_ratio` as the optimiser steps transformers will warm up for (it takes steps, not a
    ratio, in version 5): ceil(ratio x total steps), total as the Trainer counts it."""
    import math

    if cfg.max_steps > 0:
        total = cfg.max_steps
    else:
        per_epoch = max(math.ceil(rows / cfg.micro_batch_size) // cfg.gradient_accumulation_steps, 1)
        total = math.ceil(cfg.num_epochs * per_epoch)
    return math.ceil(total * cfg.warmup_ratio)


def render_stage(
    kind,
    cfg,
    folder: Path,
    *,
    recipe_path: str,
    model: str,
    seed: int,
    tracker: str,
    tracker_project: str,
    rt: dict,
    warmup: int = 0,
    eot: str | None = None,
    eos: str | None = None,
    launch_cfg: launch.LaunchCfg | None = None,
    judge: dict | None = None,
) -> list[str]:
    """Write a training stage's rendered files into `folder` (Axolotl: axolotl.yaml; trl:
    train_<kind>.py and <kind>.yaml; with a `launch_cfg` of more than one plain process also
    accelerate.yaml and, for DeepSpeed, ds_config.json) and return the command that trains it
    there. The stage, `make render` and `make bench-gpu` all render through here."""
    launch_cfg = launch_cfg or launch.LaunchCfg()
    if kind.tool == "axolotl":
        ctx = axolotl_context(
            cfg,
            recipe_path=recipe_path,
            base_model=model,
            seed=seed,
            tracker=tracker,
            tracker_project=tracker_project,
            rt=rt,
            eot=eot,
            eos=eos,
            launch_cfg=launch_cfg,
        )
        (folder / "axolotl.yaml").write_text(render(f"axolotl/{kind.name}.yaml.j2", **ctx))
        # Axolotl on several CPU processes needs one fix (safealign/train/axolotl_cpu.py); never on a GPU
        module = axolotl_cpu.__name__ if ctx["active"] and not rt["cuda"] else "axolotl.cli.train"
        program = ["-m", module, "axolotl.yaml"]
    else:
        ctx = trl_context(
            kind,
            cfg,
            recipe_path=recipe_path,
            model=model,
            seed=seed,
            warmup=warmup,
            tracker=tracker,
            rt=rt,
            launch_cfg=launch_cfg,
            judge=judge,
        )
        (folder / f"train_{kind.name}.py").write_text(render("trl/train.py.j2", **ctx))
        (folder / f"{kind.name}.yaml").write_text(render(f"trl/{kind.name}.yaml.j2", **ctx))
        yaml.safe_load((folder / f"{kind.name}.yaml").read_text())  # a template that renders bad YAML fails here
        program = [f"train_{kind.name}.py", f"{kind.name}.yaml"]
    cmd = launcher.command(launch_cfg, rt, program)
    if ctx["active"]:
        shown = launcher.shell_text(cmd)
        (folder / launch.ACCELERATE_CONFIG).write_text(
            render(
                "accelerate/config.yaml.j2", **{**ctx, "stage": kind.name, "recipe_path": recipe_path, "command": shown}
            )
        )
        yaml.safe_load((folder / launch.ACCELERATE_CONFIG).read_text())
        if ctx["deepspeed"]:  # the user's file as it is (launch.deepspeed_config), else the template's
            if ctx["user_deepspeed"]:
                text = Path(ctx["user_deepspeed"]).read_text(encoding="utf-8")
            else:
                text = render("deepspeed/ds_config.json.j2", **ctx)
            json.loads(text)  # a template that renders bad JSON fails here
            (folder / launch.DEEPSPEED_CONFIG).write_text(text)
    return cmd


def axolotl_context(
    cfg,
    *,
    recipe_path: str,
    base_model: str,
    seed: int,
    tracker: str,
    tracker_project: str,
    rt: dict | None = None,
    eot: str | None = None,
    eos: str | None = None,
    launch_cfg: launch.LaunchCfg | None = None,
) -> dict:
    """What templates/axolotl/<kind>.yaml.j2 renders from; `rt`: models.runtime (this machine's);
    `eot`: the token closing a turn when it is not `eos` (models.turn_end); `launch_cfg`: the
    recipe's launch section (default: one process)."""
    rt = rt or models.runtime(cfg, "sft")
    return dict(
        **launcher.context(launch_cfg or launch.LaunchCfg(), "axolotl", rt),
        eot=eot,
        eos=eos,
        recipe_path=recipe_path,
        base_model=base_model,
        seed=seed,
        train_file="train.jsonl",
        cfg=cfg,
        bf16=rt["bf16"],
        cuda=rt["cuda"],
        rt=rt,
        tracker=tracker,
        tracker_project=tracker_project,
    )


def trl_context(
    kind,
    cfg,
    *,
    recipe_path: str,
    model: str,
    seed: int,
    warmup: int,
    tracker: str,
    rt: dict | None = None,
    launch_cfg: launch.LaunchCfg | None = None,
    judge: dict | None = None,
) -> dict:
    """What templates/trl/train.py.j2 and <kind>.yaml.j2 render from; `rt`: models.runtime
    (this machine's unless given); `launch_cfg`: the recipe's launch section (default: one process);
    `judge`: for a kind trained on the judge's rewards (GRPO), {"dir": the judge stage's folder,
    "settings": eval.safety's judge keys} (rewards_context)."""
    rt = rt or models.runtime(cfg, kind.name)

    def split(ref: str) -> tuple[str, str]:
        module, _, cls = ref.partition(":")
        return module, cls

    return dict(
        **launcher.context(launch_cfg or launch.LaunchCfg(), "trl", rt),
        kind=kind,
        cfg=cfg,
        recipe_path=recipe_path,
        model=model,
        seed=seed,
        train_file="train.jsonl",
        warmup_steps=warmup,
        bf16=rt["bf16"],
        rt=rt,
        report_to=report_to(tracker),
        trainer=split(kind.trainer),
        config_class=split(kind.trl_config),
        variant=split(kind.variant) if kind.variant else None,
        rewards=split(kind.rewards) if kind.rewards else None,
        **(rewards_context(cfg, judge, rt) if kind.rewards else {}),
    )


# the eval.safety keys the judge reads (safealign/eval/judges.py Judge.from_dir)
JUDGE_KEYS = ("judge", "refusal", "guard_format", "batch_size", "backend", "endpoint", "toxic_labels")


def judge_settings(safety) -> dict:
    """eval.safety's judge keys as plain values, for a rendered config (the endpoint as a mapping)."""
    import dataclasses

    out = {k: getattr(safety, k) for k in JUDGE_KEYS}
    if out["endpoint"] is not None and dataclasses.is_dataclass(out["endpoint"]):
        out["endpoint"] = dataclasses.asdict(out["endpoint"])
    return out


def rewards_context(cfg, judge: dict | None, rt: dict) -> dict:
    """GRPO's template variables: the rewards used (weight > 0) in order, the judge, vLLM."""
    import importlib.util

    from safealign.config import eval as eval_cfg

    used = [(n, float(w)) for n, w in cfg.reward_weights.items() if w > 0]
    vllm = cfg.use_vllm if cfg.use_vllm != "auto" else bool(rt["cuda"] and importlib.util.find_spec("vllm"))
    judge = judge or {"dir": "<the judge stage's folder>", "settings": judge_settings(eval_cfg.SafetyCfg())}
    return dict(
        reward_names=[n for n, _ in used],
        reward_weights=[w for _, w in used],
        judge_dir=str(judge["dir"]),
        judge_settings=judge["settings"],
        use_vllm=vllm,
    )
