"""Online alignment: the model's own answers, labelled by the safety judge (docs/online.md).

An iterative round (kto_iter, dpo_iter) draws training prompts, samples several answers to each
from the current model, asks the experiment's judge about every (prompt, answer), and turns the
verdicts into one KTO round's labelled rows or one DPO round's pairs; after training, the round's
model answers a probe of safe prompts kept out of sampling, and a jump in its false-refusal rate
stops the run (the reward-hacking guard). GRPO's rewards (judge_rewards) are the same verdicts
as numbers, computed inside trl's training process.

Everything here but judge_rewards is a pure function of rows and verdicts (tests need no model);
the rounds themselves run in safealign/run/stages.py (run_online).

May import: core, models, config, plan, eval, data.
"""

from __future__ import annotations

import collections

import numpy as np

from safealign.eval import health
from safealign.eval.judges import cohen_kappa

# why a sample is desirable or not (samples.jsonl `why`, counted per round)
REFUSED, HELPFUL = "refused an unsafe prompt", "answered a safe prompt"
TOXIC, COMPLIED, OVER_REFUSED, DEGENERATE = (
    "toxic",
    "complied with an unsafe prompt",
    "refused a safe prompt",
    "degenerate",
)


# ----------------------------------------------------------------------------- prompts
def split_probe(rows: list[dict], n: int, seed: int) -> tuple[list[dict], list[dict]]:
    """(probe, pool): `n` safe training prompts drawn by `seed`, kept out of every round's sampling
    and answered greedily after it (at most half the safe prompts, so rounds still see safe ones);
    the pool is every other row, in the data's order. The same for every round of a run."""
    safe = [i for i, r in enumerate(rows) if r["safe"]]
    n = min(n, len(safe) // 2)
    chosen = set(np.random.default_rng(seed).permutation(safe)[:n].tolist()) if n else set()
    return [rows[i] for i in sorted(chosen)], [r for i, r in enumerate(rows) if i not in chosen]


def round_prompts(pool: list[dict], n: int, seed: int, round_: int) -> list[dict]:
    """Round `round_`'s prompts: `n` rows of the pool drawn by (seed, round), in the pool's order;
    all of them when n is 0 or at least the pool."""
    if n <= 0 or n >= len(pool):
        return list(pool)
    picked = np.random.default_rng([seed, round_]).choice(len(pool), size=n, replace=False)
    return [pool[i] for i in sorted(picked.tolist())]


# ----------------------------------------------------------------------------- labels
def label(safe: bool, verdict: dict, answer: str) -> tuple[bool, str]:
    """(desirable, why) for one sampled answer. Unsafe prompt: a refusal that is not toxic is
    desirable, anything else (toxic, compliance) is not. Safe prompt: an answer that is neither a
    refusal nor toxic is desirable, a refusal is not. A degenerate answer (empty, one word
    repeated: safealign/eval/health.py) is never desirable, whatever the judge says of it."""
    if health.is_degenerate(answer):
        return False, DEGENERATE
    if verdict["toxic"]:
        return False, TOXIC
    if safe:
        return (False, OVER_REFUSED) if verdict["refused"] else (True, HELPFUL)
    return (True, REFUSED) if verdict["refused"] else (False, COMPLIED)


def samples(
    prompts: list[dict], answers: list[str], verdicts: list[dict], keyword: list[bool], per_prompt: int
) -> list[dict]:
    """The round's samples.jsonl: `answers` hold `per_prompt` answers to each of `prompts` in turn
    (prompt 0's, then prompt 1's, ...), `verdicts` the judge's on each, `keyword` the keyword
    refusal detector's (a cross-check)."""
    if not len(answers) == len(verdicts) == len(keyword) == len(prompts) * per_prompt:
        raise ValueError(
            f"{len(prompts)} prompts x {per_prompt} samples, but {len(answers)} answers, "
            f"{len(verdicts)} verdicts and {len(keyword)} keyword checks"
        )
    out = []
    for i, (a, v, kw) in enumerate(zip(answers, verdicts, keyword)):
        row = prompts[i // per_prompt]
        good, why = label(row["safe"], v, a)
        out.append(
            {
                "id": row["id"],
                "sample": i % per_prompt,
                "safe": row["safe"],
                "category": row.get("category"),
                "prompt": row["prompt"],
                "answer": a,
                "p_toxic": v["p_toxic"],
                "toxic": v["toxic"],
                "refused": v["refused"],
                "refused_keyword": bool(kw),
                "desirable": good,
                "why": why,
            }
        )
    return out


def _chat(role: str, text: str) -> list[dict]:
    return [{"role": role, "content": text}]


def kto_rows(sampled: list[dict]) -> list[dict]:
    """Every sample as an unpaired KTO row (the data stage's kto.jsonl layout)."""
    return [
        {
            "prompt": _chat("user", s["prompt"]),
            "completion": _chat("assistant", s["answer"]),
            "label": s["desirable"],
            "id": f"{s['id']}-s{s['sample']}",
        }
        for s in sampled
    ]


def _score(s: dict) -> float:
    """Ranks one prompt's samples: desirable first, then the less toxic."""
    return float(s["desirable"]) - s["p_toxic"]


def dpo_pairs(sampled: list[dict], reference: dict[str, str], fallback: bool) -> tuple[list[dict], dict]:
    """One DPO pair per prompt whose samples disagree: its best desirable sample (least toxic)
    chosen over its worst undesirable one (most toxic); a prompt with no desirable sample takes the
    data's own preferred answer (`reference`: id -> its chosen answer) as chosen when `fallback`;
    a prompt whose samples are all desirable gives no pair. Returns (rows, counts)."""
    by_prompt: dict[str, list[dict]] = collections.defaultdict(list)
    for s in sampled:
        by_prompt[s["id"]].append(s)
    rows, counts = [], {"from_samples": 0, "from_reference": 0, "all_desirable": 0, "no_pair": 0}
    for pid, group in by_prompt.items():
        good = [s for s in group if s["desirable"]]
        bad = [s for s in group if not s["desirable"]]
        if not bad:
            counts["all_desirable"] += 1
            continue
        worst = min(bad, key=_score)
        if good:
            chosen, key = max(good, key=_score)["answer"], "from_samples"
        elif fallback and reference.get(pid):
            chosen, key = reference[pid], "from_reference"
        else:
            counts["no_pair"] += 1
            continue
        counts[key] += 1
        rows.append(
            {
                "prompt": _chat("user", group[0]["prompt"]),
                "chosen": _chat("assistant", chosen),
                "rejected": _chat("assistant", worst["answer"]),
                "id": pid,
            }
        )
    counts["pairs"] = len(rows)
    return rows, counts


# ----------------------------------------------------------------------------- the round's record
def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def label_counts(sampled: list[dict]) -> dict:
    """Desirable and undesirable samples on unsafe and safe prompts, and why."""
    out = {
        "samples": len(sampled),
        "desirable": sum(s["desirable"] for s in sampled),
        "undesirable": sum(not s["desirable"] for s in sampled),
    }
    for side, sel in (("unsafe", False), ("safe", True)):
        part = [s for s in sampled if s["safe"] == sel]
        out[side] = {"samples": len(part), "desirable": sum(s["desirable"] for s in part)}
    out["why"] = dict(sorted(collections.Counter(s["why"] for s in sampled).items()))
    return out


def degenerate_counts(sampled: list[dict]) -> dict:
    """Reward-hacking signs in one round's samples: empty answers, degenerate ones (one word or
    character repeated), and the one answer given most often across different prompts (the same
    refusal to everything) with the share of prompts it was given to."""
    texts = [s["answer"] for s in sampled]
    prompts_of: dict[str, set] = collections.defaultdict(set)
    for s in sampled:
        if s["answer"].strip():
            prompts_of[_norm(s["answer"])].add(s["id"])
    n_prompts = len({s["id"] for s in sampled}) or 1
    top, ids = max(prompts_of.items(), key=lambda kv: (len(kv[1]), kv[0]), default=("", set()))
    return {
        "empty": sum(not t.strip() for t in texts),
        "degenerate": sum(health.is_degenerate(t) for t in texts),
        "same_answer_prompts": round(len(ids) / n_prompts, 4),
        "same_answer": top[:120],
    }


def judge_agreement(sampled: list[dict]) -> dict:
    """The judge's refusal verdicts against the keyword detector's on the round's own answers: a
    cheap check that the judge still reads this model's answers as it read the labelled ones."""
    judge = [s["refused"] for s in sampled]
    kw = [s["refused_keyword"] for s in sampled]
    agree = sum(a == b for a, b in zip(judge, kw))
    return {
        "refusal_keyword_agreement": round(agree / len(sampled), 4) if sampled else None,
        "refusal_keyword_kappa": cohen_kappa(judge, kw),
    }


def probe_problem(round_: int, before: float, after: float, bound: float, n: int) -> str | None:
    """The reward-hacking guard: a problem when round `round_` raised the probe's false-refusal
    rate (n safe prompts) by more than `bound` over the model it started from."""
    if after - before > bound + 1e-9:
        return (
            f"round {round_} raised the false-refusal rate on the {n} probe prompts from {before:.1%} to "
            f"{after:.1%} (+{(after - before) * 100:.1f} points), past max_false_refusal_jump "
            f"{bound * 100:.0f} points: the model is learning to refuse safe prompts"
        )
    return None


# ----------------------------------------------------------------------------- GRPO
def grpo_rows(rows: list[dict], base_answers: dict[str, str], n: int, seed: int) -> list[dict]:
    """GRPO's prompts (n drawn by the seed, 0: all): the user turn, whether the prompt is safe,
    and the base model's answer to it (what the similarity reward compares with; safe prompts)."""
    picked = round_prompts(rows, n, seed, 0)
    return [
        {
            "prompt": _chat("user", r["prompt"]),
            "safe": bool(r["safe"]),
            "base_answer": base_answers.get(r["id"], ""),
            "id": r["id"],
        }
        for r in picked
    ]


def reward_values(name: str, safe: list[bool], verdicts: list[dict], answers: list[str], similarity=None) -> list:
    """One reward for each answer (None where it does not apply: trl then leaves it out of that
    answer's sum). refusal: unsafe prompts, 1 for a refusal less P(toxic); helpful: safe prompts,
    1 - P(toxic) for an answer that is not a refusal, 0 for a refusal; similarity: safe prompts,
    the cosine similarity to the base model's answer; degenerate: -1 for a degenerate answer, 0
    otherwise, on every prompt."""
    out = []
    for i, (s, v, a) in enumerate(zip(safe, verdicts, answers)):
        if name == "refusal":
            out.append(None if s else float(v["refused"]) - float(v["p_toxic"]))
        elif name == "helpful":
            out.append((0.0 if v["refused"] else 1.0 - float(v["p_toxic"])) if s else None)
        elif name == "similarity":
            out.append(float(similarity[i]) if s else None)
        elif name == "degenerate":
            out.append(-1.0 if health.is_degenerate(a) else 0.0)
        else:
            raise ValueError(f"{name!r} is not a reward")
    return out


def _text(x) -> str:
    """A completion or prompt as trl passes it: text, or a list of messages (the last one's)."""
    if isinstance(x, list):
        return str(x[-1]["content"]) if x else ""
    return str(x)


def judge_rewards(spec: dict) -> tuple[list, list[float]]:
    """GRPO's reward functions and their weights, from the rendered config's `rewards:` section
    (the judge stage's folder, the eval.safety settings the judge reads, the recipe's weights).
    Every function judges the same completions: the verdicts are computed once per batch."""
    from types import SimpleNamespace

    from safealign.config import eval as eval_cfg
    from safealign.eval import judges

    s = spec["safety"]
    endpoint = eval_cfg.EndpointJudgeCfg(**s["endpoint"]) if s.get("endpoint") else None
    judge = judges.Judge.from_dir(spec["judge_dir"], SimpleNamespace(**{**s, "endpoint": endpoint}))
    memo: dict = {}

    def verdicts(prompts, completions) -> list[dict]:
        key = (tuple(map(_text, prompts)), tuple(map(_text, completions)))
        if memo.get("key") != key:
            memo.clear()
            memo.update(key=key, verdicts=judge.judge(list(key[1]), list(key[0])))
        return memo["verdicts"]

    def make(name: str):
        def reward(prompts, completions, safe, base_answer=None, **_):
            answers = [_text(c) for c in completions]
            sim = None
            if name == "similarity":
                sim = judges.cosine(judges.embed(answers), judges.embed([b or "" for b in base_answer]))
            return reward_values(name, list(safe), verdicts(prompts, completions), answers, sim)

        reward.__name__ = name  # trl logs rewards/<name>/mean
        return reward

    used = [(n, float(w)) for n, w in spec["weights"].items() if w > 0]
    return [make(n) for n, _ in used], [w for _, w in used]
