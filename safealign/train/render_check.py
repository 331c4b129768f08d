"""`make render`: an experiment's training configs as a GPU machine would run them, checked offline.

Before paying for a GPU, a user wants to know that the experiment they resolved (a recipe on a
model profile) renders into configs that Axolotl and trl accept, and what it will train. This
renders every training stage as `safealign stage` would on a GPU machine with this environment
(bf16, the attention and Liger choices of models.runtime with a GPU present) into
`experiments/<name>/rendered/<stage>/`, then checks each with the tools' own code:

- SFT: Axolotl's `validate_config` (with an H100's capabilities, as on that machine) and
  `normalize_config`, which reads the model's config.json;
- trl kinds: the kind's trl config class constructs from the rendered `trl:` block, peft's
  LoraConfig from `lora:`, transformers' BitsAndBytesConfig for QLoRA;
- every kind: the architecture, built from its config.json on the meta device (no weights, no
  memory), takes the LoRA adapter: the target modules exist, and the trainable share is counted.

Nothing is downloaded: the model's config.json comes from the Hugging Face cache if it is there,
else from the copy shipped in models/configs/ (the profiles' models). The one thing a CPU machine
cannot answer for the GPU, transformers' "does this GPU support bf16" probe, is answered yes while
the trl configs construct. Results: rendered/check.json and a table on stdout.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import yaml

from safealign import REPO
from safealign.config import kinds
from safealign.core import fsutil
from safealign.data import rows as data_mod
from safealign.models import families
from safealign.models import load as models
from safealign.plan.experiment import Experiment
from safealign.train import render

# the target GPU's capabilities, as axolotl.cli.config.gpu_capabilities reports an H100's
GPU_CAPABILITIES = {"bf16": True, "fp8": True, "tf32": True, "n_gpu": 1, "compute_capability": "sm_90"}


class RenderError(RuntimeError):
    """A stage's rendered config fails its tool's validation; the message names stage and tool."""


def config_dir(model: str, work: Path) -> tuple[Path, str]:
    """A folder holding `model`'s config.json, and where it came from (no network)."""
    from huggingface_hub import constants, try_to_load_from_cache

    if models.is_local(model):
        return Path(models.locate(model)), "local"
    hit = try_to_load_from_cache(model, "config.json")
    if isinstance(hit, str):
        return Path(hit).parent, "HF cache"
    shipped = families.config_file(model)
    if shipped.exists():
        d = work / "configs" / model.replace("/", "--")
        d.mkdir(parents=True, exist_ok=True)
        shutil.copy(shipped, d / "config.json")
        return d, f"shipped copy {shipped.relative_to(REPO)}"
    raise models.ModelUnavailable(
        f"base_model: {model}: no config.json in the Hugging Face cache ({constants.HF_HOME}) and no shipped "
        f"copy {shipped.relative_to(REPO)}; fetch it once where there is a network: "
        f"`hf download {model} config.json` (the weights are not needed to render)"
    )


@contextlib.contextmanager
def gpu_bf16():
    """transformers' TrainingArguments refuses bf16 where no GPU supports it: answer for the target GPU."""
    import transformers.training_args as ta

    saved = ta.is_torch_bf16_gpu_available
    ta.is_torch_bf16_gpu_available = lambda: True
    try:
        yield
    finally:
        ta.is_torch_bf16_gpu_available = saved


def check_axolotl(text: str, config: Path) -> dict:
    """Axolotl's own validation of a rendered config, the model's config.json read from `config`."""
    import torch
    from axolotl.utils.config import normalize_config, prepare_plugins, validate_config
    from axolotl.utils.dict import DictDefault

    cfg = DictDefault(yaml.safe_load(text))
    cfg.base_model = str(config)  # the rendered file keeps the hub id; validation reads the local copy
    prepare_plugins(cfg)
    cfg = validate_config(
        cfg,
        capabilities=GPU_CAPABILITIES,
        env_capabilities={"torch_version": torch.__version__.split("+")[0]},
    )
    normalize_config(cfg)
    return {
        # Axolotl reads the deepspeed: file into its config: the ZeRO stage it will run
        "deepspeed_zero_stage": (cfg.deepspeed or {}).get("zero_optimization", {}).get("stage"),
        "fsdp_version": cfg.fsdp_version,
        "adapter": cfg.adapter,
        "load_in_4bit": bool(cfg.load_in_4bit),
        "attn_implementation": cfg.attn_implementation,
        "sample_packing": bool(cfg.sample_packing),
        "model_type": cfg.model_config_type,
        "batch_size": cfg.batch_size,
    }


def check_launch(folder: Path, launch_cfg) -> dict:
    """A launched stage's accelerate.yaml as `accelerate launch` itself reads it: its own argument
    parsing and validation, the launcher it picks (a plain one would start a single process) and
    the environment it gives the processes; under that environment, accelerate's DeepSpeed or
    FSDP plugin constructs as in the trainer (for DeepSpeed: reading ds_config.json, and refusing
    accelerate keys that the file must own)."""
    import os
    from unittest import mock

    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    from safealign.config import launch

    path = folder / launch.ACCELERATE_CONFIG
    args = launch_command_parser().parse_args(["--config_file", str(path), "train.py"])
    with contextlib.chdir(folder):
        args, defaults, mp_from_config = _validate_launch_command(args)
        if args.use_deepspeed and not args.cpu:
            fields = list(defaults.deepspeed_config.keys()) + (["mixed_precision"] if mp_from_config else [])
            args.deepspeed_fields_from_accelerate_config = ",".join(fields)
            launcher, (_, env) = "deepspeed", prepare_deepspeed_cmd_env(args)
        elif (args.use_fsdp or args.multi_gpu) and not args.cpu:
            launcher, env = "multi_gpu", prepare_multi_gpu_env(args)
        else:
            raise RenderError(
                f"{path}: accelerate would start one process (its plain launcher), not {args.num_processes}"
            )
        if args.num_processes != launch.world_size(launch_cfg) or args.num_machines != launch_cfg.nodes:
            raise RenderError(
                f"{path}: {args.num_processes} processes on {args.num_machines} machine(s), launch asks "
                f"{launch.world_size(launch_cfg)} on {launch_cfg.nodes}"
            )
        out = {"launcher": launcher, "processes": args.num_processes, "machines": args.num_machines}
        with mock.patch.dict(os.environ, {k: v for k, v in env.items() if k.startswith(("ACCELERATE_", "FSDP_"))}):
            if env.get("ACCELERATE_USE_DEEPSPEED") == "true":
                from accelerate.utils import DeepSpeedPlugin

                ds = DeepSpeedPlugin()
                out["zero_stage"] = ds.zero_stage
                out["offload"] = (
                    ds.deepspeed_config["zero_optimization"].get("offload_optimizer", {}).get("device") == "cpu"
                )
            elif env.get("ACCELERATE_USE_FSDP") == "true":
                from accelerate.utils import FullyShardedDataParallelPlugin

                fsdp = FullyShardedDataParallelPlugin()
                out["fsdp_version"] = fsdp.fsdp_version
                # FSDP2: a CPUOffloadPolicy (a plain OffloadPolicy is none); FSDP1: CPUOffload(offload_params)
                policy = fsdp.cpu_offload
                out["offload"] = bool(getattr(policy, "offload_params", type(policy).__name__ == "CPUOffloadPolicy"))
    return out


def check_trl(kind, rendered: dict, tmp: Path) -> dict:
    """The kind's trl config class, peft's LoraConfig and (QLoRA) BitsAndBytesConfig construct."""
    import importlib

    import torch
    from peft import LoraConfig

    module, cls = kind.trl_config.split(":")
    with gpu_bf16():
        args = getattr(importlib.import_module(module), cls)(**{**rendered["trl"], "output_dir": str(tmp)})
    out = {"trl_config": cls, "bf16": args.bf16, "optim": str(args.optim), "use_liger_kernel": args.use_liger_kernel}
    if rendered.get("lora"):
        LoraConfig(**rendered["lora"])
    if rendered["model_init"]["load_in_4bit"]:
        q = models.quantization_config(torch.bfloat16 if args.bf16 else torch.float32)
        out["quantization"] = f"{q.bnb_4bit_quant_type}, double quant {q.bnb_4bit_use_double_quant}"
    return out


def adapter_size(config: Path, cfg, stage: str) -> dict:
    """The architecture from its config.json on the meta device, with the stage's LoRA adapter:
    parameter counts; a clear error when max_length exceeds the model's context or a named
    target module does not exist in it (peft itself only refuses when none does)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    mcfg = AutoConfig.from_pretrained(config)
    context = getattr(mcfg, "max_position_embeddings", None)
    if context and cfg.max_length > context:
        raise RenderError(
            f"{stage}.max_length {cfg.max_length} exceeds the model's context (max_position_embeddings {context})"
        )
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(mcfg)
    total = sum(p.numel() for p in model.parameters())
    if isinstance(cfg.lora_target_modules, list) and not cfg.full_finetune:
        present = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
        missing = [t for t in cfg.lora_target_modules if t not in present]
        if missing:
            linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
            raise RenderError(
                f"{stage}.lora_target_modules: {', '.join(missing)} not in {type(model).__name__} "
                f"(its linear layers: {', '.join(linear)})"
            )
    if cfg.full_finetune:
        return {"model_class": type(model).__name__, "parameters": total, "trainable": total}
    try:
        peft = get_peft_model(
            model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, target_modules=cfg.lora_target_modules)
        )
    except ValueError as e:
        raise RenderError(
            f"{stage}.lora_target_modules {cfg.lora_target_modules!r} on {type(model).__name__}: {e}"
        ) from None
    trainable = sum(p.numel() for p in peft.parameters() if p.requires_grad)
    return {"model_class": type(model).__name__, "parameters": total, "trainable": trainable}


def profile_family(r):
    """The architecture family the experiment's model profile declares, if any (as resolved)."""
    info = r.profile
    return families.get(info.family) if info and info.family else None


def turn_end_offline(r, config: Path) -> tuple[str | None, str | None]:
    """(turn end, eos) from the model's own tokenizer where it is here (a local model, or the HF
    cache), else from the profile's family; (None, None) when neither says."""
    try:
        tok = models.load_tokenizer(str(config) if (config / "tokenizer_config.json").exists() else r.base_model)
        return models.turn_end(tok) or tok.eos_token, tok.eos_token
    except Exception:  # not in the cache: offline, nothing to read
        family = profile_family(r)
        return (family.turn_end, family.eos) if family else (None, None)


def rows_per_stage_file(exp: Experiment) -> tuple[dict[str, int], str]:
    """How many rows each data stage file (sft, kto, kto_paired, dpo) holds, and where that was
    read: the data stage's own counts when it has run; else the source read as the data stage
    reads it; with data.generate (rows not generated yet) the prompt list's train split, every
    prompt kept (the filter can only drop some: the warm-up is then an upper bound)."""
    r = exp.recipe
    data = exp.dir("data")
    if fsutil.is_done(data):
        stages = json.loads((data / "counts.json").read_text())["stages"]
        return {name: c["rows"] for name, c in stages.items()}, f"the data stage {data.name}"
    if r.data.generate is None:
        splits, _, _ = data_mod.load_source(r.data.source, REPO, r.data.format, r.data.categories, r.data.splits)
        rows = splits["train"]
        src = r.data.source
    else:
        from safealign.data import generate
        from safealign.plan import experiment as plan

        prompts = generate.read_prompts(plan.prompts_file(r), r.data.generate.limit)
        prompts = [p for p in prompts if p["split"] == "train"]
        rows = [{**p, "chosen": "-", "rejected": None if p["safe"] else "-"} for p in prompts]
        src = f"{r.data.generate.prompts} (train prompts, none dropped: an upper bound)"
    return {k: len(v) for k, v in data_mod.build_stage_rows(rows, r.seed).items()}, src


def run(exp: Experiment, out: Path | None = None, log=print) -> dict:
    """Render and check every training stage of `exp` into `out` (default: <exp>/rendered/)."""

    r = exp.recipe
    # absolute: Axolotl's check runs inside a stage folder (make's EXPERIMENTS=experiments is relative)
    out = (out or exp.folder / "rendered").absolute()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    base_config, source = config_dir(r.base_model, tmp)
    stage_rows, rows_from = rows_per_stage_file(exp)  # for the warm-up steps
    turn_end, eos = turn_end_offline(r, base_config)
    results = {
        "experiment": exp.name,
        "base_model": r.base_model,
        "config_source": source,
        "warmup_rows_from": rows_from,
        "stages": {},
    }
    model = r.base_model
    for stage in r.stages:
        kind, cfg = kinds.get(stage), getattr(r, stage)
        # an online kind's rounds render its offline kind's files; their rows are the round's samples
        rows = (
            cfg.prompts_per_round * cfg.samples_per_prompt
            if kind.online
            else stage_rows.get(kind.data_file(cfg).removesuffix(".jsonl"), stage_rows.get("sft", 0))
        )
        if kind.rewards:  # GRPO's batches hold num_generations answers a prompt
            rows *= cfg.num_generations
        kind = kinds.get(kind.online) if kind.online else kind
        rt = models.runtime(cfg, stage, gpu=True)
        d = tmp / stage
        d.mkdir()
        try:
            render.render_stage(
                kind,
                cfg,
                d,
                recipe_path=exp.recipe_file,
                model=model,
                seed=r.seed,
                tracker=r.tracker,
                tracker_project=r.tracker_project,
                rt=rt,
                warmup=render.warmup_steps(cfg, rows),
                eot=turn_end if turn_end != eos else None,
                eos=eos,
                launch_cfg=r.launch,
            )
            if kind.tool == "axolotl":
                with contextlib.chdir(d):  # its deepspeed: file is relative to the stage folder
                    checked = {"axolotl": check_axolotl((d / "axolotl.yaml").read_text(), base_config)}
            else:
                checked = {"trl": check_trl(kind, yaml.safe_load((d / f"{kind.name}.yaml").read_text()), d / "out")}
            checked["model"] = adapter_size(base_config, cfg, stage)  # every stage trains the same architecture
            if (d / "accelerate.yaml").exists():
                checked["launch"] = check_launch(d, r.launch)
                ax = checked.get("axolotl", {})
                if ax.get("deepspeed_zero_stage"):  # Axolotl switches DeepSpeed on itself, from its own key
                    checked["launch"]["zero_stage"] = ax["deepspeed_zero_stage"]
                if ax.get("fsdp_version"):
                    checked["launch"]["fsdp_version"] = ax["fsdp_version"]
        except RenderError:
            raise
        except Exception as e:  # the tool's own validation refused the config: its words, with the stage
            first = " ".join(line.strip() for line in str(e).strip().splitlines()[:3]) or type(e).__name__
            raise RenderError(
                f"{stage}: the rendered config in {d} fails {kind.tool}'s validation: {type(e).__name__}: {first}"
            ) from e
        results["stages"][stage] = {"input_model": model, "runtime": rt, **checked}
        model = str(exp.dir(stage) / "merged")  # the next stage starts from this one's merged model
    fsutil.write_json_atomic(tmp / "check.json", results)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    for stage, s in results["stages"].items():
        m = s["model"]
        log(
            f"  {stage:<6} {'axolotl' if 'axolotl' in s else 'trl':<8} ok   {m['model_class']}, "
            f"{m['trainable'] / 1e6:.1f}M trainable of {m['parameters'] / 1e9:.2f}B, "
            f"attention {s['runtime']['attn_implementation']}, liger {s['runtime']['liger']}, "
            f"{'QLoRA 4-bit' if s['runtime']['qlora'] else 'bf16' if s['runtime']['bf16'] else 'fp32'}"
            + (
                f", {s['launch']['processes']} processes on {s['launch']['machines']} node(s) via {s['launch']['launcher']}"
                + (f" ZeRO-{s['launch']['zero_stage']}" if "zero_stage" in s["launch"] else "")
                + (f" FSDP{s['launch']['fsdp_version']}" if "fsdp_version" in s["launch"] else "")
                if "launch" in s
                else ""
            )
        )
    log(f"[{exp.name}] rendered and checked: {out}/ (config.json: {source})")
    return results
