"""Templates render with StrictUndefined into configs that Axolotl and trl themselves accept."""

import os

import jinja2
import pytest
import yaml

from safealign.config import kinds, recipe
from safealign.models import load as models
from safealign.run import stages
from safealign.train import launcher, render

REPO = stages.REPO
SHIPPED = recipe.load(REPO / "recipes" / "sft_kto.yaml")


def sft_yaml(r, base="/models/base", cuda=False) -> str:
    rt = {**models.runtime(r.sft, "sft", gpu=cuda), "bf16": False}
    ctx = render.axolotl_context(
        r.sft,
        recipe_path="recipes/x.yaml",
        base_model=base,
        seed=r.seed,
        tracker=r.tracker,
        tracker_project=r.tracker_project,
        rt=rt,
    )
    return render.render("axolotl/sft.yaml.j2", **ctx)


def kto_ctx(r, stage="kto"):
    return render.trl_context(
        kinds.get(stage),
        getattr(r, stage),
        recipe_path="recipes/x.yaml",
        model="/exp/sft/merged",
        seed=r.seed,
        warmup=6,
        tracker=r.tracker,
    )


def test_sft_render_carries_recipe_values():
    cfg = yaml.safe_load(sft_yaml(SHIPPED, base="aisingapore/some-8b-instruct"))
    assert cfg["base_model"] == "aisingapore/some-8b-instruct"
    assert cfg["lora_r"] == SHIPPED.sft.lora_r and cfg["learning_rate"] == SHIPPED.sft.learning_rate
    assert cfg["max_steps"] == SHIPPED.sft.max_steps and cfg["seed"] == 42
    assert cfg["datasets"][0]["path"] == "train.jsonl" and cfg["lora_target_linear"] is True
    assert cfg["plugins"] == ["safealign.train.axolotl_plugin.SafealignPlugin"]
    assert cfg["lora_mlp_kernel"] is False
    assert yaml.safe_load(sft_yaml(SHIPPED, cuda=True))["lora_mlp_kernel"] is True


def test_sft_variants_render():
    r = recipe.parse("sft:\n  lora_target_modules: [q_proj, v_proj]\n  max_steps: -1\n")
    cfg = yaml.safe_load(sft_yaml(r))
    assert cfg["lora_target_modules"] == ["q_proj", "v_proj"] and "lora_target_linear" not in cfg
    assert "max_steps" not in cfg
    full = yaml.safe_load(sft_yaml(recipe.parse("sft:\n  full_finetune: true\n")))
    assert "adapter" not in full and "lora_r" not in full


def test_strict_undefined_names_the_template_line():
    with pytest.raises(
        stages.StageError,
        match=r"templates/axolotl/sft.yaml.j2:\d+: UndefinedError: 'eot' is undefined",
    ) as e:
        render.render(
            "axolotl/sft.yaml.j2", recipe_path="x", base_model="m", seed=1, train_file="d", cfg=SHIPPED.sft, bf16=False
        )
    line = int(str(e.value).split("sft.yaml.j2:")[1].split(":")[0])
    assert "eot" in (REPO / "templates/axolotl/sft.yaml.j2").read_text().splitlines()[line - 1]
    assert isinstance(e.value.__cause__, jinja2.UndefinedError)
    with pytest.raises(stages.StageError, match="kto.yaml.j2"):
        render.render("trl/kto.yaml.j2", **{**kto_ctx(SHIPPED), "cfg": SHIPPED.eval})


def test_template_syntax_error_names_its_line(tmp_path, monkeypatch):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "x.j2").write_text("ok\n{% if %}\n")
    monkeypatch.setattr(render, "TEMPLATES", tmp_path)
    with pytest.raises(stages.StageError, match=r"t/x.j2:2: TemplateSyntaxError"):
        render.render("t/x.j2")


def test_axolotl_accepts_rendered_config(tmp_path):
    from axolotl.cli.config import load_cfg

    tiny = REPO / ".cache" / "models" / "tiny-local"
    if not (tiny / ".done").exists():
        pytest.skip("tiny-local not built yet (make tiny-model); the end-to-end test covers this")
    (tmp_path / "axolotl.yaml").write_text(sft_yaml(SHIPPED, base=str(tiny)))
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        cfg = load_cfg(str(tmp_path / "axolotl.yaml"))
    finally:
        os.chdir(cwd)
    assert cfg.adapter == "lora" and cfg.lora_r == 16 and cfg.sequence_len == SHIPPED.sft.max_length


def test_trl_accepts_rendered_kto_config():
    from peft import LoraConfig
    from trl import KTOConfig

    cfg = yaml.safe_load(render.render("trl/kto.yaml.j2", **kto_ctx(SHIPPED)))
    args = KTOConfig(**cfg["trl"])
    assert args.beta == SHIPPED.kto.beta and args.undesirable_weight == SHIPPED.kto.undesirable_weight
    assert args.per_device_train_batch_size == SHIPPED.kto.micro_batch_size and args.report_to == ["tensorboard"]
    assert args.train_sampling_strategy == "sequential", "trl's KL pairs need the file order"
    assert not args.bf16 and args.learning_rate == SHIPPED.kto.learning_rate
    lora = LoraConfig(**cfg["lora"])
    assert lora.r == SHIPPED.kto.lora_r and cfg["train_file"] == "train.jsonl"
    script = render.render("trl/train.py.j2", **kto_ctx(SHIPPED))
    compile(script, "train_kto.py", "exec")
    assert '(KTOTrainer, {}) if variant.is_plain else (SafeKTOTrainer, {"variant": variant})' in script
    assert "recipes/x.yaml" in script and "from trl import KTOConfig, KTOTrainer" in script
    assert "variant" in cfg and cfg["variant"] == {"signed_kl": False, "nll_alpha": 0.0, "length_normalize": False}


def test_symmetric_kto_reads_the_paired_file():
    r = recipe.parse("kto:\n  paired_only: true\n")
    assert kinds.get("kto").data_file(r.kto) == "kto_paired.jsonl"
    assert kinds.get("kto").data_file(SHIPPED.kto) == "kto.jsonl" and kinds.get("dpo").data_file(r.dpo) == "dpo.jsonl"


def test_kto_weight_advice_is_a_warning():
    (warning,) = kinds.get("kto").advice(SHIPPED.kto, [{"label": True}] * 3 + [{"label": False}])
    assert "= 2.00, outside the KTO paper's recommended [1, 1.33]" in warning


def test_small_floats_stay_numbers_for_pyyaml():
    r = recipe.parse(
        "sft:\n  learning_rate: 1e-5\nkto:\n  learning_rate: 5e-7\ndpo:\n  loss_weights: [1.0, 1e-5]\n"
        "  loss_type: [sigmoid, sft]\n"
    )
    assert yaml.safe_load(sft_yaml(r))["learning_rate"] == 1e-5
    assert yaml.safe_load(render.render("trl/kto.yaml.j2", **kto_ctx(r)))["trl"]["learning_rate"] == 5e-7
    dpo = yaml.safe_load(render.render("trl/dpo.yaml.j2", **kto_ctx(r, "dpo")))
    assert dpo["trl"]["loss_weights"] == [1.0, 1e-5]


@pytest.mark.parametrize("tracker", ["tensorboard", "wandb", "mlflow", "none"])
def test_tracker_key_reaches_axolotl_and_trl(tracker, tmp_path):
    from axolotl.cli.config import load_cfg
    from trl import DPOConfig

    r = recipe.load(REPO / "recipes" / "sft_kto.yaml", [f"tracker={tracker}"])
    sft = yaml.safe_load(sft_yaml(r))
    assert sft["use_tensorboard"] == (tracker == "tensorboard") and sft["use_wandb"] == (tracker == "wandb")
    assert sft["use_mlflow"] == (tracker == "mlflow")
    assert sft.get("wandb_project") == ("safealign" if tracker == "wandb" else None)
    tiny = REPO / ".cache" / "models" / "tiny-local"
    if (tiny / ".done").exists():
        (tmp_path / "axolotl.yaml").write_text(sft_yaml(r, base=str(tiny)))
        cwd = os.getcwd()
        os.chdir(tmp_path)
        try:
            cfg = load_cfg(str(tmp_path / "axolotl.yaml"))  # Axolotl's own schema accepts the keys
        finally:
            os.chdir(cwd)
        assert bool(cfg.use_wandb) == (tracker == "wandb")
    ctx = kto_ctx(r, "dpo")
    dpo = yaml.safe_load(render.render("trl/dpo.yaml.j2", **ctx))
    assert DPOConfig(**dpo["trl"]).report_to == ([] if tracker == "none" else [tracker])
    env = launcher.tracker_env(tracker, r.tracker_project, tmp_path) if tracker != "mlflow" else None
    if env is not None:
        assert env["TENSORBOARD_LOGGING_DIR"] == str(tmp_path / "tensorboard")
        assert env["WANDB_MODE"] == ("disabled" if tracker != "wandb" else os.environ.get("WANDB_MODE", "offline"))


def test_unknown_tracker_is_a_recipe_error():
    with pytest.raises(recipe.RecipeError, match=r"SET tracker: expected one of tensorboard, wandb, mlflow, none"):
        recipe.load(REPO / "recipes" / "sft_kto.yaml", ["tracker=comet"])


def test_recipe_strings_cannot_inject_config_keys():
    """A string from the recipe is one YAML value in every rendered config, whatever it holds."""
    evil = "adamw_torch\nlearning_rate: 99\nbase_model: elsewhere"
    r = recipe.parse(
        yaml.safe_dump({"sft": {"optimizer": evil, "lr_scheduler": "cosine\nseed: 1"}, "kto": {"optimizer": evil}})
    )
    sft = yaml.safe_load(sft_yaml(r, base="org/model\nadapter: none"))
    assert sft["optimizer"] == evil and sft["learning_rate"] == r.sft.learning_rate
    assert sft["base_model"] == "org/model\nadapter: none" and sft["adapter"] == "lora"
    assert sft["lr_scheduler"] == "cosine\nseed: 1" and sft["seed"] == r.seed
    kto = yaml.safe_load(render.render("trl/kto.yaml.j2", **kto_ctx(r)))
    assert kto["trl"]["optim"] == evil and kto["trl"]["learning_rate"] == r.kto.learning_rate


def test_bf16_on_a_cpu_trains_under_autocast_instead_of_refusing(monkeypatch):
    """transformers refuses bf16 without a GPU unless told the CPU is meant (use_cpu): the trl
    config says so where this machine has no CUDA, Axolotl's through safealign's plugin; on a GPU
    neither does."""
    import torch
    from transformers import TrainingArguments
    from trl import KTOConfig

    from safealign.train.axolotl_plugin import SafealignPlugin

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the plugin's view; a GPU machine too

    r = recipe.load(REPO / "recipes" / "sft_kto.yaml", overrides=["kto.bf16=true", "sft.bf16=true"])
    cpu = {**models.runtime(r.kto, "kto", gpu=False), "bf16": True, "cuda": False}
    cfg = yaml.safe_load(render.render("trl/kto.yaml.j2", **{**kto_ctx(r), "rt": cpu, "bf16": True}))
    assert cfg["trl"]["bf16"] is True and cfg["trl"]["use_cpu"] is True
    from transformers.utils import is_torch_bf16_gpu_available

    if not is_torch_bf16_gpu_available():  # what the key prevents (a bf16 GPU accepts bf16 as it is)
        with pytest.raises(ValueError, match="use_cpu"):
            TrainingArguments(output_dir="x", bf16=True)
    args = KTOConfig(**cfg["trl"])
    assert args.bf16 and args.use_cpu
    gpu = {**cpu, "cuda": True}
    assert "use_cpu" not in yaml.safe_load(render.render("trl/kto.yaml.j2", **{**kto_ctx(r), "rt": gpu}))["trl"]
    ds = {**kto_ctx(r), "rt": cpu, "bf16": True, "deepspeed": True}  # DeepSpeed sets up its own processes and device
    assert "use_cpu" not in yaml.safe_load(render.render("trl/kto.yaml.j2", **ds))["trl"]
    plugin = SafealignPlugin()

    class Cfg(dict):
        __getattr__ = dict.get

    assert plugin.get_training_args(Cfg(bf16=True)) == {"use_cpu": True}
    assert plugin.get_training_args(Cfg(bf16=False)) is None
