"""An LLM judge end to end on CPU (slow: ~2 minutes): `make exp` with `eval.safety.judge: endpoint`,
the judge model (smollm2-135m, the embedded real model) served by `transformers serve` on
127.0.0.1 behind a counting proxy (tests/loopback.py), as a user names vLLM or a hosted API.
A 135M model does not follow StrongREJECT's rubric: its replies are off the rubric, and that is
what this checks end to end: every one counted as malformed, toxic and not a refusal (never as
safe), kept with its reason, reported; the judge stage's agreement on the first N labelled
answers; a rerun asks the server for nothing (the verdicts are kept as they arrive)."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import REPO
from loopback import Loopback, transformers_serve

from safealign.core import names

pytestmark = pytest.mark.slow
ENV = {**os.environ, "SAFEALIGN_QUIET": "1", "HF_HUB_OFFLINE": "1"}


def sets(url):
    return (
        "sft.max_steps=6 eval.leaderboard.enabled=false eval.models=final eval.safety.limit=6 "
        f"eval.safety.judge=endpoint eval.safety.refusal=endpoint eval.safety.endpoint.base_url={url} "
        "eval.safety.endpoint.model=smollm2-135m eval.safety.endpoint.max_tokens=32 "
        "eval.safety.endpoint.validate_limit=4 eval.safety.endpoint.concurrency=2"
    )


def make(*args):
    out = subprocess.run(["make", "--no-print-directory", *args], cwd=REPO, capture_output=True, text=True, env=ENV)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    make("smollm2")  # the judge model, converted into the model cache
    with transformers_serve(REPO, ENV, tmp_path_factory.mktemp("serve") / "serve.log") as url:
        with Loopback(upstream=url) as p:
            yield p


def test_make_exp_with_an_llm_judge_counts_off_rubric_verdicts_as_toxic_and_reports_them(proxy, tmp_path):
    s = sets(proxy.url)
    make("exp", "NAME=sft", f"SET={s}", f"EXPERIMENTS={tmp_path}")
    exp = tmp_path / names.exp_name("sft", s.split())
    asked = proxy.forwarded
    pairs = {  # what the safety stages asked about: each distinct (prompt, answer) once
        (r["prompt"], r["answer"])
        for m in ("base", "sft")
        for r in map(json.loads, (exp / f"safety-{m}" / "answers.jsonl").read_text().splitlines())
    }
    assert len(pairs) < asked <= len(pairs) + 2 * 4  # and the first 4 held-out and 4 real labelled answers
    models = Path(os.environ["SAFEALIGN_CACHE"]).resolve() / "models"  # an embedded judge is asked for by its path
    assert {b["model"] for b in proxy.bodies} == {str(models / "smollm2-135m")}
    assert all(b["messages"][0]["content"].startswith("You are a helpful red teaming assistant.") for b in proxy.bodies)
    rows = [json.loads(line) for line in (exp / "safety-sft" / "answers.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all("endpoint_malformed" in r for r in rows)
    for r in rows:
        if r["endpoint_malformed"]:  # off the rubric: toxic, not refused, its reason and reply kept
            assert r["toxic"] and not r["refused"] and r["score"] is None and r["endpoint_problem"]
        else:
            assert r["score"] is not None
    m = json.loads((exp / "safety-sft" / "metrics.json").read_text())
    assert m["judge"] == "endpoint" and m["endpoint"]["verdicts"] == 6
    assert m["endpoint"]["malformed"] == sum(r["endpoint_malformed"] for r in rows)
    agree = json.loads((exp / "judge" / "agreement.json").read_text())
    assert agree["real_answers"]["endpoint_n"] == 4 and "toxic_endpoint" in agree["real_answers"]["kappa"]
    summary = (exp / "eval" / "summary.md").read_text()
    assert "| toxic: LLM judge | refusal: LLM judge |" in summary and "on the first 4 of" in summary
    assert "toxicity by endpoint: κ" in summary

    # the safety stage built again (its folder gone): the same greedy answers, every verdict from the
    # replies kept as they arrived, nothing asked again
    cache = tmp_path / ".stages" / "judge-cache" / "verdicts.jsonl"
    assert len(cache.read_text().splitlines()) == asked
    shutil.rmtree((exp / "safety-sft").resolve())
    proxy.reset()
    make("exp", "NAME=sft", f"SET={s}", f"EXPERIMENTS={tmp_path}")
    assert proxy.posts == 0 and (exp / "safety-sft" / "metrics.json").exists()
    again = [json.loads(line) for line in (exp / "safety-sft" / "answers.jsonl").read_text().splitlines()]
    assert [r["endpoint_malformed"] for r in again] == [r["endpoint_malformed"] for r in rows]
