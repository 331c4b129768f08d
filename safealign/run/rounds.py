"""The online kinds' stages (docs/online.md), which safealign/run/stages.py's runners hand over to.

    run          kto_iter, dpo_iter: rounds of sample -> judge -> one round of the offline kind ->
                 probe, every round its own store stage; then the stage's folder (rounds.json, the
                 rounds' logs end to end, `merged`: the last round's model)
    grpo         GRPO: the judge stage first, the prompts with the base model's answers, then
                 training as any kind (its reward functions run inside trl's process)

The labels, pairs, counts and guard are pure functions of safealign/train/online.py; the
training of each round is run/training.py's train_as, as any stage's. The runners in
safealign/run/stages.py build the judge stage first (ensure_judge).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from safealign.config import kinds
from safealign.core import console, fsutil
from safealign.core.errors import StageError
from safealign.data import rows as data_mod
from safealign.eval import health
from safealign.models import load as models
from safealign.plan.experiment import Experiment
from safealign.run import training
from safealign.train import render


def grpo(exp: Experiment, stage: str) -> None:
    """A kind trained on the judge's rewards (GRPO): the judge stage first, then the prompts with
    the base model's answers, then training as any kind (the reward functions run inside trl's
    process: safealign/train/online.py judge_rewards)."""
    kind = kinds.get(stage)
    base = exp.input_model(stage)
    judge = {"dir": str(exp.dir("judge").resolve()), "settings": render.judge_settings(exp.recipe.eval.safety)}
    with fsutil.staged_dir(exp.dir(stage)) as tmp:
        training.train_as(exp, stage, kind, tmp, base, lambda: grpo_rows(exp, stage, tmp, base), judge=judge)


def grpo_rows(exp: Experiment, stage: str, tmp: Path, base: str) -> dict:
    """GRPO's train.jsonl: the training prompts (grpo.prompts of them), each with the base model's
    greedy answer (what the similarity reward compares with; safe prompts only are answered),
    prompts cut from the left to max_length - max_completion_length."""
    from types import SimpleNamespace

    from safealign.models import generation, truncate
    from safealign.train import online

    r, cfg = exp.recipe, getattr(exp.recipe, stage)
    rows = data_mod.read_jsonl(exp.dir("data") / "train.jsonl")
    picked = online.round_prompts(rows, cfg.prompts, r.seed, 0)
    safe = [x for x in picked if x["safe"]]
    answers = {}
    if safe and cfg.reward_weights.get("similarity", 0) > 0:
        gen = SimpleNamespace(
            system_prompt=r.eval.safety.system_prompt,
            max_new_tokens=cfg.max_completion_length,
            batch_size=r.eval.safety.batch_size,
            do_sample=False,
            temperature=1.0,
            top_p=1.0,
        )
        said = generation.generate(
            models.locate(r.base_model),
            [x["prompt"] for x in safe],
            gen,
            r.seed,
            label=f"{stage} base answers",
            backend=r.eval.safety.backend,
        )
        answers = {x["id"]: a for x, a in zip(safe, said)}
    out = online.grpo_rows(picked, answers, 0, r.seed)
    tok = models.load_tokenizer(base)
    budget, cut, tokens = cfg.max_length - cfg.max_completion_length, 0, 0
    for row in out:
        row["prompt"], was_cut = truncate.fit_prompt(tok, row["prompt"], budget)
        cut += was_cut
        tokens += truncate.prompt_length(tok, row["prompt"])
    data_mod.write_jsonl(tmp / "train.jsonl", out)
    console.say(
        f"  {stage}: {len(out)} prompts ({sum(x['safe'] for x in out)} safe, {len(answers)} answered by the base model)"
    )
    return {
        "source": "train.jsonl",
        "max_length": cfg.max_length,
        "kept": len(out) - cut,
        "prompt_truncated": cut,
        "completion_truncated": 0,
        "dropped": 0,
        "tokens": tokens,
    }


def run(exp: Experiment, stage: str) -> None:
    """An online kind (kto_iter, dpo_iter): its rounds in turn, each its own store stage (built
    here unless done: a longer run or a resumed one reuses them), then this stage's folder: the
    rounds' records (rounds.json), their logs end to end (train_log.jsonl), links to the rounds
    and `merged`, the last round's model. A round that trips the probe's false-refusal bound
    stops the run: its rounds stay done, this stage does not."""
    from safealign.eval import judges
    from safealign.train import online

    kind, cfg, r = kinds.get(stage), getattr(exp.recipe, stage), exp.recipe
    judge = judges.Judge.from_dir(exp.dir("judge"), r.eval.safety)
    rows = data_mod.read_jsonl(exp.dir("data") / "train.jsonl")
    probe, pool = online.split_probe(rows, cfg.probe_prompts, r.seed)
    model, t0, records = exp.input_model(stage), time.time(), []
    store = exp.dir(stage).parent
    with fsutil.staged_dir(exp.dir(stage)) as tmp:
        for k, entry in enumerate(exp.rounds(stage), 1):
            folder = store / entry["dir"]
            with fsutil.stage_lock(folder, f"[{exp.name}] {stage} round {k}") as built_meanwhile:
                if fsutil.is_done(folder) or built_meanwhile:
                    console.say(f"  {stage}: round {k}: reusing {folder.name} (same settings and inputs)")
                else:
                    with fsutil.staged_dir(folder) as rtmp:
                        fsutil.write_json_atomic(rtmp / "identity.json", entry["slice"])
                        one_round(exp, stage, k, kind, model, pool, probe, judge, rtmp)
            rec = json.loads((folder / "round.json").read_text())
            records.append(rec)
            (tmp / f"round{k}").symlink_to(Path("..") / folder.name, target_is_directory=True)
            fsutil.write_json_atomic(tmp / "rounds.json", records)
            problem = rec["probe"] and online.probe_problem(
                k, rec["probe"]["before"], rec["probe"]["after"], cfg.max_false_refusal_jump, rec["probe"]["n"]
            )
            if problem:
                raise StageError(
                    f"{stage}: {problem}; rounds 1-{k} are kept ({', '.join(e['dir'] for e in exp.rounds(stage)[:k])}), "
                    f"this stage is not done (the rounds so far: {tmp / 'rounds.json'}). A lower learning rate or "
                    "fewer safe-prompt refusals in the labels (eval.safety.refusal) help; a higher "
                    f"{stage}.max_false_refusal_jump resumes from these rounds"
                )
            model = str((folder / "merged").resolve())
        finish(exp, stage, tmp, records, t0)


def one_round(exp, stage, k, kind, model, pool, probe, judge, tmp) -> None:
    """Round k: sample answers from `model`, label them with the judge, write the round's rows,
    train one round of the offline kind on them (the input model as its reference), merge, and
    answer the probe before (round 1) and after."""
    from types import SimpleNamespace

    from safealign.eval.refusal import is_refusal
    from safealign.models import generation
    from safealign.train import online

    r, cfg = exp.recipe, getattr(exp.recipe, stage)
    offline = kinds.get(kind.online)
    prompts = online.round_prompts(pool, cfg.prompts_per_round, r.seed, k)
    settings = SimpleNamespace(
        system_prompt=r.eval.safety.system_prompt,
        max_new_tokens=cfg.max_new_tokens,
        batch_size=r.eval.safety.batch_size,
        do_sample=True,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
    )
    t0 = time.time()
    asked = [p["prompt"] for p in prompts for _ in range(cfg.samples_per_prompt)]
    answers = generation.generate(
        model, asked, settings, r.seed * 1000 + k, label=f"{stage} round {k} samples", backend=r.eval.safety.backend
    )
    t_gen = time.time() - t0
    verdicts = judge.judge(answers, asked)
    sampled = online.samples(prompts, answers, verdicts, [is_refusal(a) for a in answers], cfg.samples_per_prompt)
    data_mod.write_jsonl(tmp / "samples.jsonl", sampled)
    counts = online.label_counts(sampled)
    if kind.online == "kto":
        train = online.kto_rows(sampled)
        if not counts["desirable"] or not counts["undesirable"]:
            raise StageError(
                f"{stage}: round {k}: {counts['desirable']} desirable and {counts['undesirable']} undesirable "
                f"of {counts['samples']} samples ({counts['why']}): KTO needs both; more samples_per_prompt or a "
                f"higher temperature give the judge more to tell apart (samples: {tmp / 'samples.jsonl'})"
            )
        for warning in offline.advice(cfg, train):
            print(f"  warning: {stage}: round {k}: {warning}", flush=True)
        pairs = None
    else:
        reference = {p["id"]: p["chosen"] for p in prompts}
        train, pairs = online.dpo_pairs(sampled, reference, cfg.reference_fallback)
        if not train:
            raise StageError(
                f"{stage}: round {k}: no DPO pair in {counts['samples']} samples ({pairs}): every prompt's samples "
                f"agree; more samples_per_prompt or a higher temperature (samples: {tmp / 'samples.jsonl'})"
            )
    data_mod.write_jsonl(tmp / "round_rows.jsonl", train)
    before = online_probe(exp, model, probe, judge, settings) if k == 1 and probe else None
    console.say(
        f"  {stage}: round {k}: {counts['samples']} samples of {len(prompts)} prompts: {counts['desirable']} desirable "
        f"(unsafe {counts['unsafe']['desirable']}/{counts['unsafe']['samples']}, safe {counts['safe']['desirable']}/"
        f"{counts['safe']['samples']})" + (f"; {pairs['pairs']} pairs" if pairs else "")
    )
    training.train_as(
        exp,
        stage,
        offline,
        tmp,
        model,
        lambda: training.train_rows(exp, stage, tmp, model, tmp / "round_rows.jsonl", offline.data),
    )
    after = online_probe(exp, str(tmp / "merged"), probe, judge, settings) if probe else None
    if before is None and probe:  # rounds after the first start from the previous round's probe
        prev = exp.rounds(stage)[k - 2]["dir"]
        before = json.loads((tmp.parent / prev / "round.json").read_text())["probe"]["after"]
    record = {
        "round": k,
        "input_model": model,
        "prompts": len(prompts),
        "labels": counts,
        **({"pairs": pairs} if pairs else {}),
        "degenerate": online.degenerate_counts(sampled),
        "judge": {
            "name": judge.name,
            "refusal": judge.refusal_name,
            **online.judge_agreement(sampled),
            # the judge stage's kappa on the real answers labelled by reading them (every detector's)
            "kappa_real_answers": _judge_kappa(exp),
        },
        "probe": {"n": len(probe), "before": before, "after": after} if probe else None,
        "seconds": {"sampling": round(t_gen, 1), "total": round(time.time() - t0, 1)},
        "training": json.loads((tmp / "summary.json").read_text()),
    }
    fsutil.write_json_atomic(tmp / "round.json", record)


def _judge_kappa(exp) -> dict | None:
    f = exp.dir("judge") / "agreement.json"
    return ((json.loads(f.read_text()).get("real_answers") or {}).get("kappa")) if f.exists() else None


def online_probe(exp, model: str, probe: list[dict], judge, settings) -> float:
    """The false-refusal rate of `model` on the probe's safe prompts, answered greedily."""
    from types import SimpleNamespace

    from safealign.models import generation

    greedy = SimpleNamespace(**{**vars(settings), "do_sample": False})
    answers = generation.generate(
        model,
        [p["prompt"] for p in probe],
        greedy,
        exp.recipe.seed,
        label="probe",
        backend=exp.recipe.eval.safety.backend,
    )
    refused = judge.judge(answers, [p["prompt"] for p in probe])
    return round(sum(v["refused"] for v in refused) / len(probe), 4)


def finish(exp, stage: str, tmp: Path, records: list[dict], t0: float) -> None:
    """The online stage's own folder: the rounds' training logs end to end (steps numbered on;
    each record names its round), a summary like any training stage's, `merged` (the last round's)."""
    log, offset = [], 0
    for k, rec in enumerate(records, 1):
        for line in (tmp / f"round{k}" / "train_log.jsonl").read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                log.append({**row, "step": row.get("step", 0) + offset, "round": k})
        offset += rec["training"]["steps"]
    data_mod.write_jsonl(tmp / "train_log.jsonl", log)
    (tmp / "merged").symlink_to(Path(f"round{len(records)}") / "merged", target_is_directory=True)
    losses = [health.number(x["loss"]) for x in log if "loss" in x]
    last = records[-1]
    summary = {
        "stage": stage,
        "input_model": records[0]["input_model"],
        "rounds": len(records),
        "steps": offset,
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "mean_loss": sum(losses) / len(losses),
        "seconds": round(time.time() - t0, 1),
        "per_round": [
            {
                "round": rec["round"],
                "desirable": rec["labels"]["desirable"],
                "samples": rec["labels"]["samples"],
                "degenerate": rec["degenerate"]["degenerate"],
                "same_answer_prompts": rec["degenerate"]["same_answer_prompts"],
                "probe_false_refusal": rec["probe"] and rec["probe"]["after"],
                "seconds": rec["seconds"]["total"],
            }
            for rec in records
        ],
        "rows": last["training"]["rows"],
    }
    fsutil.write_json_atomic(tmp / "summary.json", summary)
    fsutil.write_json_atomic(
        tmp / "provenance.json",
        training.provenance_of(
            exp,
            stage,
            input_model=summary["input_model"],
            rounds=[str((tmp / f"round{k}").resolve()) for k in range(1, len(records) + 1)],
        ),
    )
    console.say(
        f"  {stage}: {len(records)} rounds, {offset} steps, loss {losses[0]:.4f} -> {losses[-1]:.4f}; desirable share "
        + " -> ".join(f"{rec['labels']['desirable'] / max(rec['labels']['samples'], 1):.0%}" for rec in records)
        + (
            "; probe false refusal "
            + " -> ".join(
                f"{x:.0%}" for x in [records[0]["probe"]["before"]] + [rec["probe"]["after"] for rec in records]
            )
            if records[0]["probe"]
            else ""
        )
    )
