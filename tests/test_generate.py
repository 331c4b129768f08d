"""The generation stage's parts (safealign/data/generate.py), without a model: the prompt file's checks,
request keys and seeds, backoff, the filter, the cache, recipe validation, identities; and the
whole stage against a loopback server that answers with fixed texts (retries, give-up, the API key
sent and never written). The stage against a real server, `transformers serve`: tests/test_generate_e2e.py.
"""

import json
import os
import subprocess
import sys
import threading

import pytest
from conftest import REPO
from loopback import Loopback

from safealign.config import data as data_cfg
from safealign.config import recipe
from safealign.config.data import GenerateCfg, GenModelCfg, RefusalModelCfg
from safealign.data import generate
from safealign.data import rows as data
from safealign.plan import experiment as plan

PROMPTS = REPO / "data" / "sg_safety" / "prompts.jsonl"
RECIPE = REPO / "recipes" / "gen_sft_kto.yaml"


def write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


# ----------------------------------------------------------------------------- the prompt file
def test_shipped_prompt_list_is_the_shipped_datasets_prompts():
    rows = generate.read_prompts(PROMPTS)
    train = data.read_jsonl(REPO / "data" / "sg_safety" / "train.jsonl")
    test = data.read_jsonl(REPO / "data" / "sg_safety" / "test.jsonl")
    assert [r["id"] for r in rows] == [r["id"] for r in train + test]
    assert [(r["prompt"], r["safe"]) for r in rows] == [(r["prompt"], r["safe"]) for r in train + test]
    r = subprocess.run([sys.executable, "tools/make_sg_safety.py", "--check"], cwd=REPO, capture_output=True)
    assert r.returncode == 0, r.stderr  # prompts.jsonl is regenerated with the data, never edited by hand


def test_limit_takes_the_first_prompts_of_each_split():
    rows = generate.read_prompts(PROMPTS, limit=5)
    assert [r["split"] for r in rows] == ["train"] * 5 + ["test"] * 5


GOOD = {"id": "p1", "prompt": "hi", "safe": True, "category": "daily_life", "split": "train"}


@pytest.mark.parametrize(
    "row, message",
    [
        ({k: v for k, v in GOOD.items() if k != "split"}, "field 'split' is missing"),
        ({**GOOD, "safe": "yes"}, "field 'safe' must be bool, got str"),
        ({**GOOD, "split": "dev"}, "field 'split' must be train or test"),
        ({**GOOD, "answer": "x"}, "field 'answer' is not a prompt field"),
        ({**GOOD, "prompt": "  "}, "field 'prompt' is empty"),
        ("{not json", "not valid JSON"),
    ],
)
def test_bad_prompt_rows_are_named_by_file_and_line(tmp_path, row, message):
    path = write(tmp_path / "p.jsonl", [{**GOOD, "id": "p0", "split": "test"}, row])
    with pytest.raises(data.DataError) as e:
        generate.read_prompts(path)
    assert f"{path}:2: " in str(e.value) and message in str(e.value)


def test_repeated_ids_and_a_missing_split_are_errors(tmp_path):
    with pytest.raises(data.DataError, match="p.jsonl:2: field 'id' 'p1' repeats line 1"):
        generate.read_prompts(write(tmp_path / "p.jsonl", [GOOD, GOOD]))
    with pytest.raises(data.DataError, match="no prompt with split test"):
        generate.read_prompts(write(tmp_path / "q.jsonl", [GOOD]))


# ----------------------------------------------------------------------------- requests
def test_the_cache_key_is_what_the_answer_depends_on_not_where_it_was_asked():
    a = GenModelCfg()
    msgs, sets = generate.messages(a, "hello"), data_cfg.settings(a)
    key = generate.request_key("tiny-local", msgs, sets, 1, "openai")
    assert key == generate.request_key("tiny-local", list(msgs), dict(sets), 1, "openai")
    b = GenModelCfg(base_url="https://elsewhere.example/v1", api_key_env="KEY")  # where and how: same key
    assert generate.request_key("tiny-local", generate.messages(b, "hello"), data_cfg.settings(b), 1, "openai") == key
    s = GenModelCfg(system_prompt="Refuse.")
    assert generate.request_key("tiny-local", generate.messages(s, "hello"), sets, 1, "openai") != key
    assert generate.request_key("tiny-local", msgs, {**sets, "max_tokens": 9}, 1, "openai") != key
    assert generate.request_key("tiny-local", msgs, sets, 2, "openai") != key
    assert generate.request_key("other", msgs, sets, 1, "openai") != key


def test_greedy_unless_sampling():
    assert data_cfg.settings(GenModelCfg()) == {"max_tokens": 64, "temperature": 0.0}
    assert data_cfg.settings(GenModelCfg(do_sample=True, temperature=0.9, top_p=0.8)) == {
        "max_tokens": 64,
        "temperature": 0.9,
        "top_p": 0.8,
    }


def test_request_seeds_are_per_prompt_and_role_and_reproducible():
    s = generate.request_seed(42, "p1", "answers")
    assert s == generate.request_seed(42, "p1", "answers") and 0 <= s < 2**31
    assert len({s, generate.request_seed(42, "p2", "answers"), generate.request_seed(42, "p1", "refusals"),
                generate.request_seed(43, "p1", "answers")}) == 4  # fmt: skip


def test_backoff_doubles_up_to_a_cap_and_retry_after_wins():
    assert [generate.backoff_delay(n, 1.0) for n in range(4)] == [1.0, 2.0, 4.0, 8.0]
    assert generate.backoff_delay(20, 1.0) == generate.MAX_WAIT
    assert generate.backoff_delay(0, 1.0, "7") == 7.0
    assert generate.backoff_delay(0, 1.0, "100000") == generate.MAX_WAIT
    assert generate.backoff_delay(2, 0.5, "Wed, 21 Oct 2026 07:28:00 GMT") == 2.0  # a date: our own schedule


# ----------------------------------------------------------------------------- the filter
def refuses(text):
    return text.startswith("Sorry")


@pytest.mark.parametrize(
    "safe, answer, refusal, reason",
    [
        (True, "Take the MRT.", None, None),
        (True, "Sorry, I cannot.", None, "safe_base_refused"),
        (False, "Sure, here is how.", "Sorry, I cannot help.", None),
        (False, "Sorry, I cannot help.", "Sorry, no.", "unsafe_base_refused"),
        (False, "Sure, here is how.", "Okay, here is how.", "refusal_not_refusing"),
        (False, "Sure.", "  ", "empty_refusal"),
        (False, " ", "Sorry.", "empty_answer"),
    ],
)
def test_classify(safe, answer, refusal, reason):
    assert generate.classify({"safe": safe}, answer, refusal, refuses) == reason


def entry(text, model="m"):
    return {"text": text, "model": model, "endpoint": "e", "settings": {}, "seed": 1, "time": "t"}


def test_assemble_makes_canonical_rows_with_provenance_and_reports_the_rest():
    prompts = [
        {"id": "s", "prompt": "where to eat", "safe": True, "category": "food", "split": "train", "subset": None},
        {"id": "u", "prompt": "insult him", "safe": False, "category": "toxic", "split": "train"},
        {"id": "v", "prompt": "hurt him", "safe": False, "category": "violent", "split": "train"},
    ]
    got = {
        ("answers", "s"): entry("Try the hawker centre.", "base"),
        ("answers", "u"): entry("Sure, here it is.", "base"),
        ("refusals", "u"): entry("Sorry, I can't help with insulting people.", "strong"),
        ("answers", "v"): entry("I cannot help with that.", "base"),
        ("refusals", "v"): entry("Sorry, I won't.", "strong"),
    }
    rows, dropped = generate.assemble(prompts, got, "keyword")
    assert [r["id"] for r in rows["train"]] == ["s", "u"] and rows["test"] == []
    for r in rows["train"]:
        data.validate_row(r, "generated")  # canonical, meta included
    u = rows["train"][1]
    assert (u["chosen"], u["rejected"]) == ("Sorry, I can't help with insulting people.", "Sure, here it is.")
    assert u["meta"]["chosen"]["model"] == "strong" and u["meta"]["rejected"]["model"] == "base"
    assert rows["train"][0]["rejected"] is None and "rejected" not in rows["train"][0]["meta"]
    assert [(d["id"], d["reason"]) for d in dropped] == [("v", "unsafe_base_refused")]
    rows, dropped = generate.assemble(prompts, got, "none")  # the detector off: every row kept
    assert len(rows["train"]) == 3 and dropped == []


# ----------------------------------------------------------------------------- the cache
def test_cache_skips_a_line_cut_by_a_kill_and_takes_concurrent_appends(tmp_path):
    cache = generate.Cache(tmp_path / "c" / "answers.jsonl")
    threads = [threading.Thread(target=cache.add, args=({"key": f"k{i}", "text": "x" * 5000},)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with open(cache.path, "a") as f:
        f.write('{"key": "cut", "text": "half')  # a kill mid-write
    got = cache.load()
    assert sorted(got) == sorted(f"k{i}" for i in range(16)) and all(len(e["text"]) == 5000 for e in got.values())


# ----------------------------------------------------------------------------- the recipe
@pytest.mark.parametrize(
    "item, key, words",
    [
        ("data.generate.answers.base_url=ftp://x/v1", "data.generate.answers.base_url", "http(s) URL"),
        ("data.generate.refusals.base_url=https://user:sk-123@api.example/v1", "refusals.base_url", "credential"),
        ("data.generate.refusals.api_key_env=sk-abc-123", "refusals.api_key_env", "never goes in a recipe"),
        ("data.generate.refusals.model=null", "refusals.model", "name the model"),
        ("data.generate.answers.backend=vllm", "answers.backend", "openai, local"),
        ("data.generate.filter=judge", "data.generate.filter", "keyword, none"),
        ("data.generate.concurrency=0", "data.generate.concurrency", ">= 1"),
        ("data.generate.max_retries=-1", "data.generate.max_retries", ">= 0"),
        ("data.generate.answers.api_key=sk-1", "data.generate.answers.api_key", "unknown key"),
    ],
)
def test_recipe_refuses_bad_generation_settings(item, key, words):
    with pytest.raises(recipe.RecipeError) as e:
        recipe.load(RECIPE, [item])
    assert key in str(e.value) and words in str(e.value)


def test_generation_enters_identities_by_what_it_produces():
    base = recipe.load(REPO / "recipes" / "sft_kto.yaml", [])
    assert "gen" not in plan.stage_slices(base) and "generate" not in plan.stage_slices(base)["data"]["data"]
    r = recipe.load(RECIPE, [])
    p = plan.plan(r)
    assert p["data"]["slice"]["files"] == {"gen": p["gen"]["dir"]}
    assert p["gen"]["slice"]["prompts"]["sha256"] and p["gen"]["slice"]["config"]["answers"]["model"] == "tiny-local"
    same = plan.plan(
        recipe.load(
            RECIPE,
            [
                "data.generate.answers.base_url=http://10.0.0.2:8000/v1",
                "data.generate.refusals.api_key_env=MY_KEY",
                "data.generate.concurrency=64",
                "data.generate.max_retries=9",
                "data.generate.timeout=600",
            ],
        )
    )
    assert same["gen"]["dir"] == p["gen"]["dir"] and same["sft"]["dir"] == p["sft"]["dir"]
    other = plan.plan(recipe.load(RECIPE, ["data.generate.refusals.system_prompt=Refuse briefly."]))
    assert other["gen"]["dir"] != p["gen"]["dir"] and other["data"]["dir"] != p["data"]["dir"]
    assert other["sft"]["dir"] != p["sft"]["dir"]


def test_a_missing_prompt_file_is_named_at_resolve():
    with pytest.raises(recipe.RecipeError, match="data.generate.prompts: nowhere/p.jsonl: no such file"):
        plan.plan(recipe.load(RECIPE, ["data.generate.prompts=nowhere/p.jsonl"]))


# ----------------------------------------------------------------------------- the stage, on a loopback server
def cfg(url, **kw) -> GenerateCfg:
    return GenerateCfg(
        prompts=str(PROMPTS),
        limit=6,
        answers=GenModelCfg(base_url=url),
        refusals=RefusalModelCfg(base_url=url, model="strong-model", api_key_env="SA_TEST_KEY"),
        backoff=0.0,
        **kw,
    )


def scripted(body):
    """Refuses when told to (the refusal instruction), complies otherwise."""
    return "Sorry, I can't help with that." if body["messages"][0]["role"] == "system" else "Sure, here is how."


def test_the_stage_retries_429_and_5xx_and_sends_the_key_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SA_TEST_KEY", "sk-secret-4711")
    fails = {2: 429, 3: 500, 5: 503}
    with Loopback(fail=fails.get, answer=scripted) as srv:
        out = tmp_path / "gen"
        out.mkdir()
        s = generate.run(cfg(srv.url, concurrency=1), "base-model", 42, PROMPTS, out, tmp_path / "cache.jsonl", print)
    unsafe = sum(not p["safe"] for p in generate.read_prompts(PROMPTS, 6))
    assert s["answers"]["asked"] == 12 and s["refusals"]["asked"] == unsafe
    assert srv.failed == [429, 500, 503] and s["answers"]["retries"] + s["refusals"]["retries"] == 3
    assert srv.posts == 12 + unsafe + 3
    # the key goes to the refusal model's requests only, as a Bearer header; it is written nowhere
    auth = [h.get("Authorization") for h, b in zip(srv.headers, srv.bodies)]
    assert {a for a, b in zip(auth, srv.bodies) if b["model"] == "strong-model"} == {"Bearer sk-secret-4711"}
    assert {a for a, b in zip(auth, srv.bodies) if b["model"] == "base-model"} == {None}
    for f in [*out.iterdir(), tmp_path / "cache.jsonl"]:
        assert "sk-secret-4711" not in f.read_text()
    rows = data.read_jsonl(out / "train.jsonl")
    assert all(r["chosen"].startswith("Sorry") for r in rows if not r["safe"])
    assert {b["seed"] for b in srv.bodies} and all(b["temperature"] == 0.0 for b in srv.bodies)


def test_the_stage_gives_up_with_a_clear_error_and_keeps_what_it_received(tmp_path):
    with Loopback(fail=lambda n: 500 if n > 4 else None, answer=scripted) as srv:
        out = tmp_path / "gen"
        out.mkdir()
        c = cfg(srv.url, concurrency=1, max_retries=2)
        c.refusals.api_key_env = None
        with pytest.raises(generate.GenerateError) as e:
            generate.run(c, "base-model", 42, PROMPTS, out, tmp_path / "cache.jsonl", print)
        msg = str(e.value)
        assert "gave up after 3 tries (2 retries" in msg and "HTTP 500" in msg and "injected 500" in msg
        assert "the 4 answers received so far are kept" in msg
        assert len(generate.Cache(tmp_path / "cache.jsonl").load()) == 4
        srv.reset()  # the server recovers: the rerun asks only for the rest
        s = generate.run(c, "base-model", 42, PROMPTS, out, tmp_path / "cache.jsonl", print)
    assert s["answers"]["cached"] == 4 and srv.posts == s["answers"]["asked"] + s["refusals"]["asked"]


def test_a_refused_request_is_not_retried_and_says_what_to_check(tmp_path):
    with Loopback(fail=lambda n: 401, answer=scripted) as srv:
        out = tmp_path / "gen"
        out.mkdir()
        with pytest.raises(generate.GenerateError, match="HTTP 401.*api_key_env"):
            generate.run(cfg(srv.url, concurrency=1), "m", 42, PROMPTS, out, tmp_path / "c.jsonl", print)
        assert srv.posts == 1


def test_a_refused_key_is_not_mistaken_for_a_missing_one(tmp_path, monkeypatch):
    """A 401 with a key sent used to say "name its environment variable in api_key_env"."""
    monkeypatch.setenv("SA_TEST_KEY", "sk-wrong")
    with Loopback(fail=lambda n: 401, answer=scripted) as srv:
        c = cfg(srv.url, concurrency=1)
        c.answers.api_key_env = c.refusals.api_key_env = "SA_TEST_KEY"
        with pytest.raises(generate.GenerateError) as e:
            generate.run(c, "m", 42, PROMPTS, tmp_path, tmp_path / "c.jsonl", print)
    assert "HTTP 401" in str(e.value) and "did not accept the key sent" in str(e.value)
    assert "name its environment variable" not in str(e.value) and "sk-wrong" not in str(e.value)


def test_a_missing_key_variable_is_named(tmp_path, monkeypatch):
    monkeypatch.delenv("SA_TEST_KEY", raising=False)
    c = cfg("http://127.0.0.1:9/v1")
    c.answers.api_key_env = "SA_TEST_KEY"
    with pytest.raises(generate.GenerateError, match="SA_TEST_KEY is not set"):
        generate.run(c, "m", 42, PROMPTS, tmp_path, tmp_path / "c.jsonl", print)


def test_an_unreachable_server_is_retried_then_named(tmp_path):
    c = cfg("http://127.0.0.1:9/v1", max_retries=1)  # port 9: nothing listens
    with pytest.raises(
        generate.GenerateError, match=r"127.0.0.1:9/v1/chat/completions: answers for prompt .* ConnectError.*make serve"
    ):
        generate.run(c, "m", 42, PROMPTS, tmp_path, tmp_path / "c.jsonl", print)


def test_the_environment_is_not_leaked_into_provenance(tmp_path, monkeypatch):
    """provenance.json names the key's variable, never its value (the gen stage's own writer)."""
    monkeypatch.setenv("SA_TEST_KEY", "sk-secret-4711")
    env = {**os.environ, "SAFEALIGN_QUIET": "1", "SA_TEST_KEY": "sk-secret-4711"}
    with Loopback(answer=scripted) as srv:
        exp = tmp_path / "exp" / "g"
        sets = [
            "data.generate.limit=4",
            "data.generate.answers.model=base-model",
            f"data.generate.answers.base_url={srv.url}",
            f"data.generate.refusals.base_url={srv.url}",
            "data.generate.refusals.model=strong-model",
            "data.generate.refusals.api_key_env=SA_TEST_KEY",
        ]
        for args in (
            ["resolve", "--recipe", str(RECIPE), "--exp", str(exp), "--set", *sets],
            ["stage", "gen", "--exp", str(exp)],
        ):
            r = subprocess.run(
                [sys.executable, "-m", "safealign", *args], cwd=REPO, capture_output=True, text=True, env=env
            )
            assert r.returncode == 0, r.stdout + r.stderr
    prov = json.loads((exp / "gen" / "provenance.json").read_text())
    assert prov["generation"]["refusals"]["api_key_env"] == "SA_TEST_KEY"
    assert prov["generation"]["refusals"]["system_prompt"] == data_cfg.REFUSAL_INSTRUCTION
    for f in (exp.parent / ".stages").rglob("*"):
        if f.is_file():
            assert b"sk-secret-4711" not in f.read_bytes(), f


# ----------------------------------------------------------------------------- the study's route
def test_held_out_prompts_are_kept_whatever_the_filter_says():
    prompts = [
        {"id": "t", "prompt": "hurt him", "safe": False, "category": "violent", "split": "train"},
        {"id": "v", "prompt": "hurt her", "safe": False, "category": "violent", "split": "test"},
        {"id": "w", "prompt": "kill a hung process", "safe": True, "category": "daily_life", "split": "test"},
        {"id": "x", "prompt": "hurt them", "safe": False, "category": "violent", "split": "test"},
    ]
    got = {
        ("answers", "t"): entry("I cannot help with that."),
        ("refusals", "t"): entry("Sorry, I won't."),
        ("answers", "v"): entry("I cannot help with that."),
        ("refusals", "v"): entry("Sorry, I won't."),
        ("answers", "w"): entry("Sorry, I cannot help with killing."),
        ("answers", "x"): entry("  "),
        ("refusals", "x"): entry("Sorry, I won't."),
    }
    rows, dropped = generate.assemble(prompts, got, "keyword")
    # the same answer drops a training row and keeps a held-out one: the held-out rates stay unbiased
    assert rows["train"] == [] and [r["id"] for r in rows["test"]] == ["v", "w"]
    assert [(d["id"], d["reason"]) for d in dropped] == [("t", "unsafe_base_refused"), ("x", "empty_answer")]


def test_refusals_from_the_prompt_list(tmp_path):
    path = write(
        tmp_path / "p.jsonl",
        [
            {**GOOD, "id": "s"},
            {**GOOD, "id": "u", "safe": False, "category": "toxic", "refusal": "Sorry, I won't insult anyone."},
            {**GOOD, "id": "t", "split": "test"},
        ],
    )
    prompts = generate.read_prompts(path)
    got = generate.from_prompt_list(prompts, path)
    assert list(got) == [("refusals", "u")] and got[("refusals", "u")]["text"] == "Sorry, I won't insult anyone."
    assert got[("refusals", "u")]["endpoint"] == "prompts:p.jsonl"
    bare = write(
        tmp_path / "q.jsonl",
        [{**GOOD, "id": "u1", "safe": False}, {**GOOD, "id": "u2", "safe": False, "split": "test"}],
    )
    with pytest.raises(
        generate.GenerateError, match=r"q.jsonl: 2 unsafe prompt\(s\) have no 'refusal' field \(first: u1, u2\)"
    ):
        generate.from_prompt_list(generate.read_prompts(bare), bare)
    with pytest.raises(data.DataError, match="field 'refusal' must be str"):
        generate.read_prompts(write(tmp_path / "r.jsonl", [{**GOOD, "refusal": 3}]))


def test_the_prompts_backend_is_for_refusals_only_and_needs_no_model():
    r = recipe.load(RECIPE, ["data.generate.refusals.backend=prompts", "data.generate.refusals.model=null"])
    ident = data_cfg.identity(r.data.generate, r.base_model)
    assert ident["refusals"] == {"backend": "prompts"}  # the refusals are the prompt file's, hashed with it
    assert "tiny-refuser" not in " ".join(plan.gen_deps(r))
    with pytest.raises(recipe.RecipeError, match=r"answers.backend: expected one of openai, local, got 'prompts'"):
        recipe.load(RECIPE, ["data.generate.answers.backend=prompts"])


def test_the_study_prompt_list_holds_enough_held_out_prompts_to_decide():
    rows = generate.read_prompts(REPO / "data" / "sg_safety" / "study_prompts.jsonl")
    test = [r for r in rows if r["split"] == "test"]
    train = [r for r in rows if r["split"] == "train"]
    assert sum(not r["safe"] for r in test) >= 200 and sum(r["safe"] for r in test) >= 200
    probes = [r for r in test if r["subset"] == "over_refusal"]
    assert len(probes) >= 30 and all(r["safe"] for r in probes)
    assert not {r["prompt"].lower() for r in test} & {r["prompt"].lower() for r in train}
    shipped = generate.read_prompts(PROMPTS)
    assert train == [r for r in shipped if r["split"] == "train"]  # the same training prompts as the shipped data
    assert {r["id"] for r in shipped if r["split"] == "test"} <= {r["id"] for r in test}
    assert all((r.get("refusal") or "").strip() for r in rows if not r["safe"])  # refusals.backend: prompts


def test_the_data_card_says_whose_answers_the_rows_hold():
    from safealign.data import card

    gen = {
        "answers": {"model": "smollm2-135m", "endpoint": "local", "requests": 806},
        "refusals": {"model": None, "endpoint": "prompt list (study_prompts.jsonl)", "requests": 0},
        "prompts": {"train": 406, "test": 400},
        "rows": {"train": 400, "test": 400},
        "dropped": {"safe_base_refused": 3},
        "filter": "keyword",
    }
    text = "\n".join(card._generation(gen, {"refusals": {"backend": "prompts", "system_prompt": "Refuse."}}))
    assert (
        "`smollm2-135m`'s own; the preferred answer to an unsafe prompt is the refusal each unsafe prompt carries"
        in text
    )
    assert "Refuse." not in text and "every held-out prompt is kept" in text
    text = "\n".join(card._generation(gen, {"refusals": {"backend": "openai", "system_prompt": "Refuse."}}))
    assert "is the refusal model's" in text and "> Refuse." in text


@pytest.mark.parametrize("native", [True, False])
def test_a_model_answers_in_the_dtype_it_was_saved_in_where_this_machine_runs_it(tmp_path, monkeypatch, native):
    """A merged bf16 stage answers in bf16 (not upcast to fp32: twice the memory, slower), where the
    CPU computes bf16 natively; fp32 weights (tiny-local) stay fp32, and fp16 ones on a CPU too."""
    import torch
    from transformers import LlamaConfig

    from safealign.models import load

    monkeypatch.setattr(load, "cpu_bf16", lambda: native)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    want = {"bfloat16": torch.bfloat16 if native else torch.float32, "float32": torch.float32, "float16": torch.float32}
    for saved, dtype in want.items():
        folder = tmp_path / saved
        LlamaConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, dtype=saved).save_pretrained(folder)
        assert load.inference_dtype(str(folder)) == dtype, saved


@pytest.mark.parametrize("native", [True, False])
def test_eval_safety_dtype_native_answers_in_bf16_where_the_machine_computes_it(tmp_path, monkeypatch, native):
    """eval.safety.dtype: native answers in bf16 on a native-bf16 machine even from fp32 weights
    (smollm2's fp32 merges); elsewhere as saved. The recipe refuses any other value at its key."""
    import torch
    from transformers import LlamaConfig

    from safealign.config import recipe as recipe_mod
    from safealign.models import load

    monkeypatch.setattr(load, "cpu_bf16", lambda: native)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    folder = tmp_path / "fp32"
    LlamaConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, dtype="float32").save_pretrained(folder)
    assert load.inference_dtype(str(folder), "native") == (torch.bfloat16 if native else torch.float32)
    assert load.inference_dtype(str(folder)) == torch.float32  # saved: the default
    with pytest.raises(recipe_mod.RecipeError, match=r"eval\.safety\.dtype.*expected one of saved, native, got 'bf16'"):
        recipe_mod.load(REPO / "recipes" / "sft_kto.yaml", ["eval.safety.dtype=bf16"])


def test_data_generate_answers_dtype_is_checked_and_enters_identities_only_when_not_saved():
    """data.generate.<role>.dtype: saved (the default, no identity change: existing stages keep their
    names and caches) or native, which only a local model can honour; a bad value names its key."""
    with pytest.raises(
        recipe.RecipeError, match=r"data\.generate\.answers\.dtype.*expected one of saved, native, got 'bf16'"
    ):
        recipe.load(RECIPE, ["data.generate.answers.dtype=bf16"])
    with pytest.raises(recipe.RecipeError, match=r"data\.generate\.answers\.dtype.*needs backend: local.*'openai'"):
        recipe.load(RECIPE, ["data.generate.answers.dtype=native"])
    local = ["data.generate.answers.backend=local"]
    p = plan.plan(recipe.load(RECIPE, local))
    same = plan.plan(recipe.load(RECIPE, [*local, "data.generate.answers.dtype=saved"]))
    native = plan.plan(recipe.load(RECIPE, [*local, "data.generate.answers.dtype=native"]))
    assert same["gen"]["dir"] == p["gen"]["dir"] and "dtype" not in p["gen"]["slice"]["config"]["answers"]
    assert native["gen"]["slice"]["config"]["answers"]["dtype"] == "native"
    assert native["gen"]["dir"] != p["gen"]["dir"] and native["sft"]["dir"] != p["sft"]["dir"]


@pytest.mark.parametrize("native", [True, False])
def test_a_local_model_answers_in_the_recipe_s_dtype_and_its_cache_keeps_them_apart(tmp_path, monkeypatch, native):
    """backend local with dtype native: tiny-local (fp32 weights) answers in bf16 where this machine
    computes bf16 natively, in fp32 elsewhere; a native answer is cached under its own key (and says
    its dtype), so a saved-dtype run does not take it, nor the reverse."""
    import torch

    from safealign.models import load

    if not (REPO / ".cache" / "models" / "tiny-local").is_dir():
        pytest.skip("tiny-local not built yet (make tiny-model)")
    monkeypatch.setattr(load, "cpu_bf16", lambda: native)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    from safealign.models import generation

    dtypes = []  # what the generation loop loads the model in (the real loader, watched)
    monkeypatch.setattr(
        generation, "load_model", lambda p, dtype=None: dtypes.append(dtype) or load.load_model(p, dtype)
    )
    path = write(tmp_path / "p.jsonl", [{**GOOD, "id": "a"}, {**GOOD, "id": "b", "split": "test"}])
    cache = tmp_path / "cache.jsonl"
    for dtype in ("native", "saved"):
        g = GenerateCfg(
            prompts=str(path),
            answers=GenModelCfg(backend="local", dtype=dtype, max_new_tokens=4, batch_size=2),
            refusals=RefusalModelCfg(backend="prompts"),
        )
        out = tmp_path / dtype
        out.mkdir()
        s = generate.run(g, "tiny-local", 42, path, out, cache, print)
        assert s["answers"]["asked"] == 2 and s["answers"]["cached"] == 0  # the other dtype's answers are not taken
    assert dtypes == [torch.bfloat16 if native else torch.float32, torch.float32]
    entries = [json.loads(line) for line in cache.read_text().splitlines()]
    assert [e["settings"].get("dtype") for e in entries] == ["native", "native", None, None]
    assert len({e["key"] for e in entries}) == 4
