"""Architecture families (safealign/models/families.py): the toy models carry each family's real model
class, special tokens and chat template; the code that depends on the template handles each."""

import json
import types

import pytest
import torch
from conftest import REPO

from safealign.data import rows as data
from safealign.models import families, generation, truncate
from safealign.models import load as models

ROWS = data.read_jsonl(REPO / "data" / "sg_safety" / "train.jsonl")
CHAT = [{"role": "user", "content": "Eh, can help me book a table at the hawker centre?"}]
ANSWER = [{"role": "assistant", "content": "Sure lah, which one?"}]


@pytest.fixture(scope="module")
def toys(tmp_path_factory):
    root = tmp_path_factory.mktemp("toys")
    out = {}
    for name in families.ARCH_FAMILIES:
        info = families.build_toy(name, ROWS, root / name)
        out[name] = (root / name, info)
    return out


def ids(tok, messages, gen=False):
    return tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=gen, return_dict=False)


@pytest.mark.parametrize(
    "name,cls,model_type",
    [
        ("llama3", "LlamaForCausalLM", "llama"),
        ("qwen2", "Qwen2ForCausalLM", "qwen2"),
        ("gemma2", "Gemma2ForCausalLM", "gemma2"),
    ],
)
def test_toy_is_the_family_s_class_with_the_real_config_s_settings(toys, name, cls, model_type):
    path, info = toys[name]
    cfg = json.loads((path / "config.json").read_text())
    real = json.loads(families.config_file(families.get(name).config).read_text())
    assert info["model_class"] == cfg["architectures"][0] == cls and cfg["model_type"] == model_type
    assert cfg["hidden_size"] == 64 and cfg["num_hidden_layers"] == 2 and info["parameters"] < 1_000_000
    for key in (
        "hidden_act",
        "rms_norm_eps",
        "final_logit_softcapping",
        "attn_logit_softcapping",
        "tie_word_embeddings",
    ):
        if key in real:
            assert cfg[key] == real[key], key
    model = models.load_model(str(path), device="cpu")
    assert type(model).__name__ == cls
    with torch.no_grad():
        assert model(input_ids=torch.tensor([[1, 2, 3]])).logits.shape[-1] == cfg["vocab_size"]


def test_each_family_s_template_is_its_own(toys):
    llama, qwen, gemma = (models.load_tokenizer(str(toys[n][0])) for n in ("llama3", "qwen2", "gemma2"))
    text = lambda tok, m, gen=False: tok.apply_chat_template(m, tokenize=False, add_generation_prompt=gen)  # noqa: E731
    assert text(llama, CHAT, True) == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n" + CHAT[0]["content"] + "<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert text(qwen, CHAT, True) == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n" + CHAT[0]["content"] + "<|im_end|>\n<|im_start|>assistant\n"
    )
    assert text(gemma, CHAT + ANSWER) == (
        "<bos><start_of_turn>user\n"
        + CHAT[0]["content"]
        + "<end_of_turn>\n<start_of_turn>model\n"
        + ANSWER[0]["content"]
        + "<end_of_turn>\n"
    )
    with pytest.raises(Exception, match="System role not supported"):
        text(gemma, [{"role": "system", "content": "Be safe."}] + CHAT, True)
    assert "<|im_start|>system\nBe safe.<|im_end|>" in text(qwen, [{"role": "system", "content": "Be safe."}] + CHAT)


@pytest.mark.parametrize("name", list(families.ARCH_FAMILIES))
def test_prompt_tokens_are_a_prefix_of_prompt_and_answer_tokens(toys, name):
    tok = models.load_tokenizer(str(toys[name][0]))
    for r in ROWS[:50]:
        prompt = [{"role": "user", "content": r["prompt"]}]
        full = ids(tok, prompt + [{"role": "assistant", "content": r["chosen"]}])
        head = ids(tok, prompt, gen=True)
        assert full[: len(head)] == head, r["id"]


@pytest.mark.parametrize("name,end", [("llama3", None), ("qwen2", None), ("gemma2", "<end_of_turn>")])
def test_turn_end_is_found_from_the_template(toys, name, end):
    tok = models.load_tokenizer(str(toys[name][0]))
    assert models.turn_end(tok) == end
    assert families.get(name).turn_end == (end or tok.eos_token)


def test_gemma_generation_stops_on_its_turn_end_as_well_as_eos(toys):
    path = toys["gemma2"][0]
    tok, model = models.load_tokenizer(str(path)), models.load_model(str(path), device="cpu")
    stop = generation.stop_ids(model, tok)
    assert stop == [tok.eos_token_id, tok.convert_tokens_to_ids("<end_of_turn>")]
    llama = toys["llama3"][0]
    assert generation.stop_ids(models.load_model(str(llama), device="cpu"), models.load_tokenizer(str(llama))) == (
        models.load_tokenizer(str(llama)).eos_token_id
    )


def test_a_system_prompt_on_gemma_is_refused_naming_the_key(toys):
    tok = models.load_tokenizer(str(toys["gemma2"][0]))
    cfg = types.SimpleNamespace(system_prompt="You are a careful assistant.")
    with pytest.raises(generation.GenerationError, match=r"eval.safety.system_prompt: .*need system_prompt: null"):
        generation.chats_for(tok, ["hello"], cfg, 256)
    assert generation.chats_for(tok, ["hello"], types.SimpleNamespace(system_prompt=None), 256) == [
        [{"role": "user", "content": "hello"}]
    ]


@pytest.mark.parametrize("name", list(families.ARCH_FAMILIES))
def test_rows_fit_max_length_with_each_family_s_template(toys, name):
    tok = models.load_tokenizer(str(toys[name][0]))
    rows = [
        {
            "prompt": [{"role": "user", "content": r["prompt"] * 6}],
            "completion": [{"role": "assistant", "content": r["chosen"]}],
        }
        for r in ROWS[:20]
    ]
    fitted, counts = truncate.fit_rows(tok, rows, "kto", 96)
    assert counts[truncate.PROMPT] > 0 and len(fitted) + counts[truncate.DROPPED] == 20
    for r in fitted:
        assert len(ids(tok, r["prompt"] + r["completion"])) <= 96


def test_unknown_family_names_the_known_ones():
    with pytest.raises(KeyError, match="families: llama3, qwen2, gemma2"):
        families.get("mistral")
