"""The generation stage against a real OpenAI-compatible server: `transformers serve` on 127.0.0.1
serving tiny-local (the base model) and tiny-refuser (the stand-in for the strong model that writes
refusals), started and stopped here; a loopback proxy in front of it counts the requests and fails
chosen ones (tests/loopback.py).

    the shipped recipe gen_sft_kto: prompts -> gen -> data -> its data card, with make (its training
    and evaluation on the generated rows: the CPU regression suite's gen_sft_kto, regress/cpu.yaml)
    a run killed mid-way: no stage looks finished, the rerun asks only for what it lacks
    429s and 500s: retried; a server that keeps failing: a clear error, nothing stamped
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO
from loopback import Loopback, transformers_serve

from safealign.core import fsutil
from safealign.data import generate
from safealign.data import rows as data

pytestmark = pytest.mark.slow
ENV = {**os.environ, "SAFEALIGN_QUIET": "1", "HF_HUB_OFFLINE": "1"}


def make(*args, check=True):
    r = subprocess.run(["make", "--no-print-directory", *args], cwd=REPO, capture_output=True, text=True, env=ENV)
    if check and r.returncode:
        raise AssertionError(f"make {' '.join(args)} failed ({r.returncode}):\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}")
    return r


def sa(*args, **kw):
    return subprocess.run([sys.executable, "-m", "safealign", *args], cwd=REPO, env=ENV, text=True, **kw)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    make("tiny-refuser")  # (and tiny-local, which it is fine-tuned from)
    with transformers_serve(REPO, ENV, tmp_path_factory.mktemp("serve") / "serve.log") as url:
        yield url


@pytest.fixture
def proxy(server):
    with Loopback(upstream=server) as p:
        yield p


def sets(url: str, limit: int, *more: str) -> list[str]:
    return [
        f"data.generate.limit={limit}",
        f"data.generate.answers.base_url={url}",
        f"data.generate.refusals.base_url={url}",
        *more,
    ]


def test_the_recipe_generates_its_data_through_a_server_and_builds_its_dataset(tmp_path, proxy):
    root = tmp_path / "experiments"
    args = ["NAME=gen_sft_kto", "EXP_NAME=gen", f"EXPERIMENTS={root}", "SET=" + " ".join(sets(proxy.url, 24))]
    make("data-card", *args)  # gen -> data -> its card; training on generated rows: regress/cpu.yaml's gen_sft_kto
    exp = root / "gen"
    gen = exp / "gen"
    c = json.loads((gen / "counts.json").read_text())
    prompts = generate.read_prompts(REPO / "data" / "sg_safety" / "prompts.jsonl", 24)
    unsafe = sum(not p["safe"] for p in prompts)
    # every prompt answered by the base model, every unsafe one refused by the strong one, over HTTP
    assert (c["answers"]["asked"], c["refusals"]["asked"]) == (48, unsafe)
    assert proxy.forwarded == proxy.posts == 48 + unsafe
    models = Path(os.environ["SAFEALIGN_CACHE"]).resolve() / "models"  # embedded models are asked for by path
    assert {b["model"] for b in proxy.bodies} == {str(models / "tiny-local"), str(models / "tiny-refuser")}
    rows = {s: data.read_jsonl(gen / f"{s}.jsonl") for s in ("train", "test")}
    dropped = [json.loads(line) for line in (gen / "dropped.jsonl").read_text().splitlines()]
    assert len(rows["train"]) + len(rows["test"]) + len(dropped) == 48
    assert c["dropped"] == {k: sum(d["reason"] == k for d in dropped) for k in {d["reason"] for d in dropped}}
    paired = [r for r in rows["train"] if not r["safe"]]
    assert paired and all(r["meta"]["chosen"]["model"] == "tiny-refuser" for r in paired)
    assert all(r["meta"]["rejected"]["model"] == "tiny-local" and r["rejected"] for r in paired)
    # the filter did its job on what it kept: refusals refuse, base answers comply
    from safealign.eval.refusal import is_refusal

    assert all(is_refusal(r["chosen"]) and not is_refusal(r["rejected"]) for r in paired)
    # the training data was built from the generated rows, and its card says where they came from
    dc = json.loads((exp / "data" / "counts.json").read_text())
    assert dc["train"]["rows"] == len(rows["train"]) and dc["generate"]["rows"] == c["rows"]
    card = (exp / "data_card.md").read_text()
    assert "## Generation" in card and "`tiny-refuser`" in card and "data.generate" in card
    # nothing to do on a rerun: no stage, no request
    proxy.reset()
    assert make("-q", f"{exp}/data_card.md", *args, check=False).returncode == 0
    make("data-card", *args)
    assert proxy.posts == 0


def test_a_killed_generation_resumes_from_its_cache(tmp_path, proxy):
    exp = tmp_path / "experiments" / "g"
    items = sets(proxy.url, 20, "data.generate.concurrency=2")
    assert sa("resolve", "--recipe", "recipes/gen_sft_kto.yaml", "--exp", str(exp), "--set", *items,
              capture_output=True).returncode == 0  # fmt: skip
    cache = exp.parent / ".stages" / generate.CACHE / "answers.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "safealign", "stage", "gen", "--exp", str(exp)],
        cwd=REPO,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 120
    while not cache.exists() or len(cache.read_text().splitlines()) < 15:
        assert proc.poll() is None and time.time() < deadline, "the stage ended before it could be killed"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    stage_dir = exp.parent / ".stages" / json.loads((exp / "stages.json").read_text())["gen"]["dir"]
    assert not stage_dir.exists() and not fsutil.is_done(stage_dir)  # only its .tmp: never taken as finished
    proxy.idle()  # what the killed run had in flight is answered (and lost with it), not counted below
    kept = len(generate.Cache(cache).load())
    assert kept >= 15
    proxy.reset()
    r = sa("stage", "gen", "--exp", str(exp), capture_output=True)
    assert r.returncode == 0, r.stdout + r.stderr
    c = json.loads((stage_dir / "counts.json").read_text())
    total = c["answers"]["requests"] + c["refusals"]["requests"]
    assert c["answers"]["cached"] + c["refusals"]["cached"] == kept
    assert proxy.forwarded == c["answers"]["asked"] + c["refusals"]["asked"] == total - kept  # nothing paid twice


def test_failed_requests_are_retried_and_a_server_that_keeps_failing_is_a_clear_error(tmp_path, proxy):
    root = tmp_path / "experiments"
    # one request at a time: each fails with 429, then 500, then gets through (posts 1, 2, 3 of every 3)
    proxy.reset(fail=lambda n: {1: 429, 2: 500}.get(n % 3))
    items = sets(proxy.url, 6, "data.generate.backoff=0.01", "data.generate.concurrency=1")
    args = ["NAME=gen_sft_kto", "EXP_NAME=retry", f"EXPERIMENTS={root}", "SET=" + " ".join(items)]
    make("data-card", *args)
    c = json.loads((root / "retry" / "gen" / "counts.json").read_text())
    asked = c["answers"]["asked"] + c["refusals"]["asked"]
    assert proxy.failed and c["answers"]["retries"] + c["refusals"]["retries"] == len(proxy.failed)
    assert proxy.forwarded == asked and proxy.posts == asked + len(proxy.failed)
    # now the server fails for good after three answers: make stops with the endpoint, the status and what to do
    proxy.reset(fail=lambda n: 500 if n > 3 else None)
    items = sets(proxy.url, 6, "data.generate.backoff=0.01", "data.generate.concurrency=1", "data.generate.max_retries=2",
                 "seed=7")  # fmt: skip
    args = ["NAME=gen_sft_kto", "EXP_NAME=broken", f"EXPERIMENTS={root}", "SET=" + " ".join(items)]
    r = make("data-card", *args, check=False)
    out = r.stdout + r.stderr
    assert r.returncode != 0
    assert "/v1/chat/completions: answers for prompt" in out and "gave up after 3 tries (2 retries" in out
    assert "HTTP 500" in out and "a rerun asks only for the rest" in out
    gen_dir = root / ".stages" / json.loads((root / "broken" / "stages.json").read_text())["gen"]["dir"]
    assert not fsutil.is_done(gen_dir) and not (root / "broken" / "data_card.md").exists()
    assert proxy.posts == 3 + 3  # three answered, then one request tried three times
