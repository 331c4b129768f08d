"""`tiny-guard`: tiny-local fine-tuned to answer as a guard model does, in WildGuard's format.

Real guards (Llama Guard 3, ShieldGemma, WildGuard) are hub downloads of 1-27B; this machine has
neither the network nor the time. tiny-guard runs the whole guard path offline (prompt built in
the published format, verdict generated and parsed, malformed verdicts counted) the way
tiny-refuser stands in for the model that writes refusals. It learns the train rows' answers as
their labels say (unsafe prompt + refusal: refusal, not harmful; unsafe prompt + compliant answer:
harmful; safe prompt + helpful answer: neither), so on templated answers it is a fair judge and
on anything else a poor one: its agreement is measured like every judge's, never assumed.
WildGuard's format because it is the one that also reads refusals and fits tiny-local's 512
positions (Llama Guard 3's category list alone is ~600 of its tokens). Imports models only.
"""

from __future__ import annotations

from pathlib import Path

from safealign.models import guards, tiny

# 120 steps (~75 s here): 240 reached loss 2e-4, twice what the held-out verdicts need
GUARD_DEFAULTS = dict(steps=120, batch_size=16, learning_rate=1e-3, seed=1234)
FORMAT = "wildguard"
MAX_LEN = 512


def wildguard_answer(harmful_request: bool, refusal: bool, harmful_response: bool) -> str:
    yn = {True: "yes", False: "no"}
    return (
        f"Harmful request: {yn[harmful_request]}\nResponse refusal: {yn[refusal]}\n"
        f"Harmful response: {yn[harmful_response]}"
    )


def labelled_pairs(rows: list[dict]) -> list[tuple[str, str, str]]:
    """(prompt, answer, verdict) per answer of the canonical train rows, labelled by the row."""
    out = []
    for r in rows:
        if r["safe"]:
            out.append((r["prompt"], r["chosen"], wildguard_answer(False, False, False)))
            continue
        out.append((r["prompt"], r["chosen"], wildguard_answer(True, True, False)))
        if r.get("rejected"):
            out.append((r["prompt"], r["rejected"], wildguard_answer(True, False, True)))
    return out


def encode(tok, prompt: str, answer: str, verdict: str) -> tuple[list[int], list[int]]:
    """The guard input (guards.encode, as at judging time) then the verdict and end of turn; the
    loss on the verdict only. A row whose input is too long loses its prompt's head, never the
    verdict (the end of the input holds the answer and the question it is asked)."""
    head = guards.encode(tok, guards.build(FORMAT, prompt, answer)[0])
    tail = tok(verdict + tiny.EOT, add_special_tokens=False)["input_ids"]
    head = head[-(MAX_LEN - len(tail)) :]
    return head + tail, [-100] * len(head) + tail


def build_guard(rows: list[dict], base_dir: Path, out_dir: Path, log=print, **overrides) -> dict:
    from transformers import AutoTokenizer, LlamaForCausalLM

    cfg = {**GUARD_DEFAULTS, **overrides}
    tok = AutoTokenizer.from_pretrained(base_dir)
    model = LlamaForCausalLM.from_pretrained(base_dir)
    encoded = [encode(tok, p, a, v) for p, a, v in labelled_pairs(rows)]
    log(
        f"tiny-guard: fine-tuning {base_dir} on {len(encoded)} labelled answers ({FORMAT} format), {cfg['steps']} steps"
    )
    losses, t0 = tiny.train_loop(model, tok, encoded, cfg, log)
    info = {"config": cfg, "base": str(base_dir), "guard_format": FORMAT}
    return tiny._save(model, tok, out_dir, losses, t0, info, len(encoded))
