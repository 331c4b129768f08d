"""vLLM cannot exist here (it needs a GPU): its call sites run up to the library boundary, with
recording stand-ins for `vllm.LLM`/`SamplingParams` and lm-eval's `VLLM` class, to check what the
project asks of them: token-id prompts from the model's own chat template (no second BOS), greedy
sampling with the recipe's budget and seed, one replica per GPU."""

import sys
import types

import pytest
import torch
from conftest import REPO

from safealign.data import rows as data
from safealign.eval import leaderboard
from safealign.models import families, generation
from safealign.models import load as models

ROWS = data.read_jsonl(REPO / "data" / "sg_safety" / "train.jsonl")


@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy") / "gemma2"
    families.build_toy("gemma2", ROWS, out)
    return out


class Recorder:
    calls: list = []

    def __init__(self, *args, **kwargs):
        Recorder.calls.append((type(self).__name__, args, kwargs))
        self.kwargs = kwargs


@pytest.fixture
def fake_vllm(monkeypatch):
    Recorder.calls = []
    mod = types.ModuleType("vllm")

    class SamplingParams(Recorder):
        pass

    class LLM(Recorder):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.llm_engine = types.SimpleNamespace(model_config=types.SimpleNamespace(max_model_len=512))
            self.prompts = None

        def generate(self, prompts, params):
            Recorder.calls.append(("generate", (prompts, params), {}))
            return [
                types.SimpleNamespace(outputs=[types.SimpleNamespace(text=f" answer {i} ")])
                for i in range(len(prompts))
            ]

    mod.LLM, mod.SamplingParams = LLM, SamplingParams
    monkeypatch.setitem(sys.modules, "vllm", mod)
    return mod


def cfg(**kw):
    base = dict(
        system_prompt=None,
        max_new_tokens=256,
        batch_size=8,
        do_sample=False,
        temperature=0.7,
        top_p=1.0,
        backend="vllm",
    )
    return types.SimpleNamespace(**{**base, **kw})


def test_safety_answers_through_vllm_use_the_chat_template_s_token_ids(gemma, fake_vllm, monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    answers = generation.generate(
        str(gemma), ["Eh, how to cheat on my exam?", "Where got good chicken rice?"], cfg(), 42, backend="vllm"
    )
    assert answers == ["answer 0", "answer 1"]  # stripped, in order
    (llm,) = [c for c in Recorder.calls if c[0] == "LLM"]
    assert llm[2] == {"model": str(gemma), "seed": 42, "data_parallel_size": 2}
    (params,) = [c for c in Recorder.calls if c[0] == "SamplingParams"]
    assert params[2] == {"max_tokens": 256, "temperature": 0.0, "top_p": 1.0, "seed": 42, "skip_special_tokens": True}
    (gen,) = [c for c in Recorder.calls if c[0] == "generate"]
    tok = models.load_tokenizer(str(gemma))
    want = tok.apply_chat_template(
        [{"role": "user", "content": "Eh, how to cheat on my exam?"}],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=False,
    )
    assert gen[1][0][0] == {"prompt_token_ids": want}
    assert want.count(tok.bos_token_id) == 1  # one BOS: the template's, none added by vLLM


def test_sampling_settings_reach_vllm_and_one_gpu_runs_one_replica(gemma, fake_vllm, monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    generation.generate(
        str(gemma), ["hello"], cfg(do_sample=True, temperature=0.6, top_p=0.9, max_new_tokens=32), 7, backend="vllm"
    )
    llm = next(c for c in Recorder.calls if c[0] == "LLM")
    params = next(c for c in Recorder.calls if c[0] == "SamplingParams")
    assert "data_parallel_size" not in llm[2]
    assert params[2]["temperature"] == 0.6 and params[2]["top_p"] == 0.9 and params[2]["max_tokens"] == 32


def test_prompts_longer_than_vllm_s_context_are_cut_and_counted(gemma, fake_vllm):
    truncated: list = []
    long = " ".join(r["prompt"] for r in ROWS[:40])
    generation.generate(str(gemma), ["short", long], cfg(max_new_tokens=256), 1, truncated, backend="vllm")
    (gen,) = [c for c in Recorder.calls if c[0] == "generate"]
    assert truncated == [1] and len(gen[1][0][1]["prompt_token_ids"]) <= 512 - 256


def test_the_leaderboard_s_vllm_model_runs_one_replica_per_gpu(monkeypatch):
    mod = types.ModuleType("lm_eval.models.vllm_causallms")

    class VLLM(Recorder):
        pass

    mod.VLLM = VLLM
    monkeypatch.setitem(sys.modules, "lm_eval.models.vllm_causallms", mod)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    Recorder.calls = []
    leaderboard.load_lm("/models/m", "vllm", "auto", "bfloat16")
    assert Recorder.calls[-1][2] == {
        "pretrained": "/models/m",
        "dtype": "bfloat16",
        "batch_size": "auto",
        "data_parallel_size": 4,
    }
