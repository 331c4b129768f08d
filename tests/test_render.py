"""`make render`: every profile resolves and renders offline, and each stage's config passes its
tool's own validation, with the architecture's config.json read from a local copy, not the hub."""

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from safealign.config import recipe
from safealign.models import families
from safealign.models import load as models
from safealign.plan import experiment as plan
from safealign.train import render, render_check

# the profiles of hub models (7-9B, their config.json shipped in models/configs/); the embedded
# models' profiles (toys, smollm2-135m) run for real in their own tests
REAL = [
    p for p in recipe.profiles() if not models.is_embedded(recipe.load_profile(p, lambda x: "model")[0]["base_model"])
]


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    """An empty Hugging Face cache and no network: nothing can come from the hub."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)


def resolved(tmp_path, name, *sets):
    exp = tmp_path / "experiments" / names_for(name, sets)
    plan.resolve(str(REPO / "recipes" / f"{name}.yaml"), exp, list(sets))
    return plan.Experiment(exp)


def names_for(name, sets):
    from safealign.core import names

    return names.exp_name(name, list(sets))


@pytest.mark.parametrize("profile", REAL)
def test_every_profile_renders_and_passes_axolotl_and_trl_validation_offline(tmp_path, profile):
    exp = resolved(tmp_path, "sft_kto", f"model={profile}")
    res = render_check.run(exp, log=lambda m: None)
    r = exp.recipe
    assert res["config_source"].startswith("shipped copy models/configs/")
    out = exp.folder / "rendered"
    assert json.loads((out / "check.json").read_text()) == json.loads(json.dumps(res))
    sft = yaml.safe_load((out / "sft" / "axolotl.yaml").read_text())
    kto = yaml.safe_load((out / "kto" / "kto.yaml").read_text())
    assert sft["base_model"] == r.base_model and sft["sequence_len"] == 2048 and sft["sample_packing"] is True
    assert sft["bf16"] is True and sft["gradient_checkpointing"] is True  # as on the GPU
    assert kto["model"] == str(exp.dir("sft") / "merged") and kto["trl"]["learning_rate"] == r.kto.learning_rate
    assert kto["trl"]["bf16"] is True and kto["trl"]["max_length"] == 2048 and kto["trl"]["use_liger_kernel"] is True
    checked = res["stages"]["sft"]["axolotl"]
    assert checked["sample_packing"] is True and checked["attn_implementation"] in (
        "sdpa",
        "flash_attention_2",
        "eager",
    )
    assert res["stages"]["kto"]["trl"]["trl_config"] == "KTOConfig" and res["stages"]["kto"]["trl"]["bf16"] is True
    fam = families.get(recipe.load_profile(profile, lambda p: "model")[2].family)
    model = res["stages"]["sft"]["model"]
    assert model["model_class"] == json.loads(families.config_file(r.base_model).read_text())["architectures"][0]
    assert 7e9 < model["parameters"] < 1e10 and 3e7 < model["trainable"] < 6e7  # r=16 on all linear layers of 7-9B
    if fam.turn_end != fam.eos:
        assert sft["eot_tokens"] == [fam.turn_end] and sft["datasets"][0]["train_on_eot"] == "turn"
    else:
        assert "eot_tokens" not in sft
    qlora = r.sft.adapter == "qlora"
    assert sft["adapter"] == ("qlora" if qlora else "lora") and sft.get("load_in_4bit", False) is qlora
    assert checked["load_in_4bit"] is qlora and kto["model_init"]["load_in_4bit"] is qlora
    if qlora:
        assert res["stages"]["kto"]["trl"]["quantization"] == "nf4, double quant True"
        assert "prepare_model_for_kbit_training" in (out / "kto" / "train_kto.py").read_text()


def test_the_llama3_lora_adapter_has_the_known_size(tmp_path):
    """r=16 on q,k,v,o,gate,up,down of Llama-3-8B: 32 layers x r x (in+out) summed = 41,943,040."""
    res = render_check.run(resolved(tmp_path, "sft", "model=sea-lion-v2.1-8b"), log=lambda m: None)
    m = res["stages"]["sft"]["model"]
    per_layer = 16 * ((4096 + 4096) * 2 + (4096 + 1024) * 2 + (4096 + 14336) * 2 + (14336 + 4096))
    assert m["trainable"] == 32 * per_layer == 41_943_040 and m["parameters"] == 8_030_261_248


def test_a_relative_experiments_folder_renders(tmp_path, monkeypatch):
    """make's default EXPERIMENTS=experiments is relative: Axolotl's check runs inside the stage folder."""
    resolved(tmp_path, "sft", "model=sea-lion-v2.1-8b")
    monkeypatch.chdir(tmp_path)
    exp = plan.Experiment(Path("experiments") / names_for("sft", ["model=sea-lion-v2.1-8b"]))
    res = render_check.run(exp, log=lambda m: None)
    assert res["stages"]["sft"]["axolotl"] and (exp.folder / "rendered" / "sft" / "axolotl.yaml").is_file()


@pytest.mark.parametrize("name", ["dpo", "sft_dpo", "orpo", "sft_simpo", "sft_bco", "sft_kto_s"])
def test_every_kind_renders_on_a_real_profile(tmp_path, name):
    res = render_check.run(resolved(tmp_path, name, "model=sea-lion-v2.1-8b"), log=lambda m: None)
    assert set(res["stages"]) == set(recipe.load(REPO / "recipes" / f"{name}.yaml").stages)


def test_a_config_in_the_hf_cache_is_preferred_to_the_shipped_copy(tmp_path):
    """The hub's cache layout (what `hf download` writes) is the network boundary: seeded here."""
    import huggingface_hub.constants as c

    snap = tmp_path / "hf" / "hub" / "models--Qwen--Qwen2.5-7B-Instruct" / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    (snap / "config.json").write_text(families.config_file("Qwen/Qwen2.5-7B-Instruct").read_text())
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text("a" * 40)
    assert c.HF_HUB_CACHE == str(tmp_path / "hf" / "hub")
    res = render_check.run(resolved(tmp_path, "sft", "model=qwen2.5-7b-instruct"), log=lambda m: None)
    assert res["config_source"] == "HF cache"


def test_a_model_without_any_config_is_refused_with_what_to_do(tmp_path):
    from safealign.models import load as models

    with pytest.raises(
        models.ModelUnavailable,
        match=r"base_model: org/unknown-8b: no config.json .*hf download org/unknown-8b config.json",
    ):
        render_check.run(
            resolved(tmp_path, "sft", "model=sea-lion-v2.1-8b", "base_model=org/unknown-8b"), log=lambda m: None
        )


def test_a_lora_target_missing_from_the_architecture_is_refused(tmp_path):
    exp = resolved(tmp_path, "sft", "model=gemma-2-9b-it", "sft.lora_target_modules=[q_proj,c_attn]")
    with pytest.raises(
        render_check.RenderError,
        match=r"sft.lora_target_modules: c_attn not in Gemma2ForCausalLM \(its linear layers: down_proj, gate_proj, "
        r"k_proj, lm_head, o_proj, q_proj, up_proj, v_proj\)",
    ):
        render_check.run(exp, log=lambda m: None)


def test_max_length_beyond_the_model_s_context_is_refused(tmp_path):
    exp = resolved(tmp_path, "sft_kto", "model=gemma-2-9b-it", "kto.max_length=16384")
    with pytest.raises(
        render_check.RenderError,
        match=r"kto.max_length 16384 exceeds the model's context \(max_position_embeddings 8192\)",
    ):
        render_check.run(exp, log=lambda m: None)


def test_axolotl_s_own_validation_refusal_reaches_the_user(tmp_path, monkeypatch):
    """An edited template that Axolotl refuses (a learning rate that is not a number) fails the
    render with Axolotl's own words, before any GPU is paid for."""
    import shutil

    shutil.copytree(REPO / "templates", tmp_path / "templates")
    t = tmp_path / "templates" / "axolotl" / "sft.yaml.j2"
    t.write_text(
        t.read_text().replace("learning_rate: {{ cfg.learning_rate }}\n", 'learning_rate: "two e minus four"\n', 1)
    )
    monkeypatch.setattr(render, "TEMPLATES", tmp_path / "templates")
    exp = resolved(tmp_path, "sft", "model=sea-lion-v2.1-8b")
    with pytest.raises(
        render_check.RenderError, match=r"sft: the rendered config in .* fails axolotl's validation: .*learning_rate"
    ):
        render_check.run(exp, log=lambda m: None)
    assert not (exp.folder / "rendered").exists()  # a failed render leaves no result that looks checked


def test_make_render_runs_offline_from_the_command_line(tmp_path):
    out = subprocess.run(
        ["make", "render", "NAME=sft_kto", "MODEL=gemma-2-9b-it", f"EXPERIMENTS={tmp_path / 'e'}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "HF_HOME": str(tmp_path / "hf")},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Gemma2ForCausalLM, 54.0M trainable of 9.24B, attention eager" in out.stdout
    assert (tmp_path / "e" / "sft_kto+model-gemma-2-9b-it" / "rendered" / "check.json").exists()


def test_make_render_shows_an_eight_gpu_launch_this_machine_could_not_run(tmp_path):
    """The README's 8-GPU command rendered here: resolving it for this machine is refused (it has
    no 8 GPUs), `make render` resolves it for the GPU machine and checks each stage's launch files
    with accelerate's own launcher and DeepSpeed plugin, and Axolotl's validation."""
    sets = "launch.processes=8 launch.strategy=deepspeed launch.zero_stage=3"
    env = {**__import__("os").environ, "HF_HOME": str(tmp_path / "hf")}
    args = ["NAME=sft_kto", "MODEL=sea-lion-v2.1-8b", f"SET={sets}", f"EXPERIMENTS={tmp_path / 'e'}"]
    out = subprocess.run(["make", "render", *args], cwd=REPO, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "8 processes on 1 node(s) via multi_gpu ZeRO-3" in out.stdout  # sft: accelerate starts, Axolotl shards
    assert "8 processes on 1 node(s) via deepspeed ZeRO-3" in out.stdout  # kto: accelerate's DeepSpeed launcher
    exp = next((tmp_path / "e").glob("sft_kto+*"))
    check = json.loads((exp / "rendered" / "check.json").read_text())
    assert check["stages"]["sft"]["axolotl"]["deepspeed_zero_stage"] == 3
    assert yaml.safe_load((exp / "rendered" / "sft" / "axolotl.yaml").read_text())["deepspeed"] == "ds_config.json"
    assert check["stages"]["kto"]["launch"] == {
        "launcher": "deepspeed",
        "processes": 8,
        "machines": 1,
        "zero_stage": 3,
        "offload": False,
    }
    (exp / "stages.mk").unlink()  # resolve again, for this machine: refused, naming the key
    ran = subprocess.run(["make", "exp", *args], cwd=REPO, capture_output=True, text=True, env=env)
    assert ran.returncode != 0 and "launch.processes: 8 processes per node, but this machine has" in ran.stderr


def test_warm_up_rows_come_from_the_data_stage_when_it_ran_else_as_it_would_build_them(tmp_path):
    """make render's warm-up steps count the rows each stage will train on: the data stage's own
    counts once it ran; before, the source read the data stage's way; with data.generate (not
    generated yet) the prompt list's train prompts, never the shipped rows data.source names."""
    from safealign.core import fsutil
    from safealign.data import generate
    from safealign.data import rows as data_mod

    exp = resolved(tmp_path, "gen_sft_kto")
    rows, src = render_check.rows_per_stage_file(exp)
    prompts = [p for p in generate.read_prompts(REPO / exp.recipe.data.generate.prompts) if p["split"] == "train"]
    assert rows["sft"] == len(prompts) and rows["dpo"] == sum(not p["safe"] for p in prompts)
    assert "upper bound" in src
    shipped = data_mod.read_jsonl(REPO / "data" / "sg_safety" / "train.jsonl")
    assert render_check.rows_per_stage_file(resolved(tmp_path, "sft_kto"))[0]["sft"] == len(shipped)
    d = exp.dir("data")
    d.mkdir(parents=True)
    fsutil.write_json_atomic(d / "counts.json", {"stages": {"sft": {"rows": 7}, "kto": {"rows": 9}}})
    (d / fsutil.STAMP).write_text("x")
    assert render_check.rows_per_stage_file(exp) == ({"sft": 7, "kto": 9}, f"the data stage {d.name}")
