"""The three architecture families end to end on CPU (slow: ~6 minutes): data -> SFT (Axolotl)
-> KTO (trl) -> merge -> safety evaluation on toy-llama3, toy-qwen2 and toy-gemma2, through the
toy profiles, as a user runs them (`make exp NAME=sft_kto MODEL=toy-<family>`); and QLoRA through
both tools (bitsandbytes' CPU backend quantises the base to 4-bit NF4 here as on a GPU).

What the trainers really saw is read back from each stage folder: train_samples.jsonl (the first
rows as the trainer tokenized them) and model_info.json (the model as the trainer held it)."""

import json
import os
import subprocess

import pytest
from conftest import REPO

from safealign.core import names
from safealign.models import families
from safealign.models import load as models

pytestmark = pytest.mark.slow
SET = "sft.max_steps=6 kto.max_steps=4 eval.leaderboard.enabled=false eval.safety.limit=8 eval.models=final"
CLASS = {"llama3": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "gemma2": "Gemma2ForCausalLM"}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tmp_path_factory.mktemp("families")  # one stage store: data and the judge are built once


def run(store, profile: str, extra: str = "") -> tuple:
    out = subprocess.run(
        ["make", "exp", "NAME=sft_kto", f"MODEL={profile}", f"SET={SET} {extra}".strip(), f"EXPERIMENTS={store}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "SAFEALIGN_QUIET": "1"},
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return store / names.exp_name("sft_kto", [f"model={profile}", *SET.split(), *extra.split()]), out


@pytest.fixture(scope="module", params=list(families.ARCH_FAMILIES))
def family_run(request, store):
    exp, _ = run(store, f"toy-{request.param}")
    return request.param, exp


def samples(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def chat_ids(tok, messages, gen=False):
    return tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=gen, return_dict=False)


def test_every_stage_ran_on_the_family_s_model_class(family_run):
    name, exp = family_run
    for stage in ("sft", "kto"):
        info = json.loads((exp / stage / "model_info.json").read_text())
        assert info["class"] == CLASS[name] and info["linear_4bit_layers"] == 0
        assert 0 < info["trainable"] < info["parameters"]  # a LoRA adapter on a frozen base
        assert json.loads((exp / stage / "merged" / "config.json").read_text())["architectures"] == [CLASS[name]]
    answers = [json.loads(line) for line in (exp / "safety-kto" / "answers.jsonl").read_text().splitlines()]
    assert len(answers) == 8 and (exp / "eval" / "summary.json").exists() and (exp / "report.md").exists()


def test_sft_trained_on_exactly_the_chat_template_s_tokens(family_run):
    """Axolotl's rows equal apply_chat_template of the fitted messages; the loss starts right after
    the generation prompt, whose tokens are a prefix of the whole row's."""
    name, exp = family_run
    tok = models.load_tokenizer(str(exp / "sft" / "merged"))
    rows = [json.loads(line) for line in (exp / "sft" / "train.jsonl").read_text().splitlines()]
    by_ids = {tuple(chat_ids(tok, r["messages"])): r for r in rows}
    got = samples(exp / "sft" / "train_samples.jsonl")
    assert len(got) == 8
    for s in got:
        row = by_ids.get(tuple(s["input_ids"]))
        assert row is not None, f"{name}: a training row is not apply_chat_template's output: {s['input_ids_text']!r}"
        start = next(i for i, label in enumerate(s["labels"]) if label != -100)
        assert s["input_ids"][:start] == chat_ids(tok, row["messages"][:-1], gen=True)
        trained = [i for i, label in zip(s["input_ids"], s["labels"]) if label != -100]
        assert tok.convert_tokens_to_ids(families.get(name).turn_end) in trained  # the turn's end is learnt


def test_kto_trained_on_exactly_the_chat_template_s_tokens(family_run):
    name, exp = family_run
    tok = models.load_tokenizer(str(exp / "sft" / "merged"))
    rows = [json.loads(line) for line in (exp / "kto" / "train.jsonl").read_text().splitlines()]
    prompts = {tuple(chat_ids(tok, r["prompt"], gen=True)) for r in rows}
    full = {tuple(chat_ids(tok, r["prompt"] + r["completion"])) for r in rows}
    for s in samples(exp / "kto" / "train_samples.jsonl"):
        assert tuple(s["prompt_ids"]) in prompts, s["prompt_ids_text"]
        assert tuple(s["prompt_ids"] + s["completion_ids"]) in full, s["completion_ids_text"]


def test_the_axolotl_config_names_the_turn_end_only_where_it_is_not_eos(family_run):
    name, exp = family_run
    text = (exp / "sft" / "axolotl.yaml").read_text()
    fam = families.get(name)
    assert ("eot_tokens: [" + json.dumps(fam.turn_end) + "]" in text) == (fam.turn_end != fam.eos)


def test_qlora_trains_on_a_4bit_base_and_merges_into_full_precision(store):
    exp, _ = run(store, "toy-llama3", "sft.adapter=qlora kto.adapter=qlora")
    for stage in ("sft", "kto"):
        info = json.loads((exp / stage / "model_info.json").read_text())
        assert info["linear_4bit_layers"] == 14, info  # 2 layers x (q, k, v, o, gate, up, down)
        prov = json.loads((exp / stage / "provenance.json").read_text())
        assert prov["runtime"]["qlora"] is True and prov["merge"]["adapter_trained_on"] == "4-bit NF4 base (QLoRA)"
        assert "unquantised" in prov["merge"]["merged_into"]
        from safetensors import safe_open

        with safe_open(str(exp / stage / "merged" / "model.safetensors"), "pt") as f:
            keys = list(f.keys())
            assert not [k for k in keys if "absmax" in k or "quant" in k]  # plain weights, not NF4 blocks
            assert {str(f.get_tensor(k).dtype) for k in keys} == {"torch.float32"}
    assert "adapter: qlora" in (exp / "sft" / "axolotl.yaml").read_text()
