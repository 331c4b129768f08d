"""Stage runners. Each builds its folder as `<stage>.tmp/`, stamps it last and renames it.

    gen          data.generate: prompts -> canonical JSONL through a model server (safealign.data.generate)
    data         canonical JSONL -> sft/kto/dpo/test files + counts        (safealign.data.rows)
    <training>   a kind of safealign/config/kinds.py: fit its rows, render its templates, train, merge
                   axolotl (sft): templates/axolotl/<kind>.yaml.j2, `python -m axolotl.cli.train`
                   trl (the other kinds): templates/trl/train.py.j2 + <kind>.yaml.j2
                   online kinds (kto_iter, dpo_iter, grpo): safealign/run/rounds.py, each round as above
    judge        train the MiniLM judge heads, measure detector agreement    (safealign.eval.judges)
    leaderboard  lm-eval's leaderboard tasks on one model                    (safealign.eval.leaderboard)
    safety       answer held-out prompts, judge, aggregate with intervals    (safealign.eval.safety)
    summary      the experiment's evaluation summary, base beside aligned    (safealign.eval.summary)

Training (safealign/run/training.py) runs in a child process with its cwd in the stage folder, so the rendered config
there is the exact, re-runnable record of what ran; its output goes to train.log and, line
by line, to the terminal. One plain process is started as the stage begins and imports its
tool while the stage fits the rows and renders the command (safealign/train/preload.py). Every runner takes the experiment (plan.Experiment), loaded once
per command.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from safealign import REPO
from safealign.config import data as data_cfg
from safealign.config import eval as eval_cfg
from safealign.config import kinds, launch
from safealign.config import sets as eval_sets
from safealign.core import console, fsutil
from safealign.core.errors import StageError  # noqa: F401  (stages.StageError: what the CLI catches)
from safealign.data import rows as data_mod
from safealign.models import load as models
from safealign.plan import provenance
from safealign.plan.experiment import Experiment, set_location
from safealign.run.training import provenance_of, train_as, train_rows
from safealign.train import launcher


def run_gen(exp: Experiment) -> None:
    """The generation stage (data.generate): prompts -> canonical train/test rows (safealign/data/generate.py)."""
    from safealign.core import refs
    from safealign.data import generate
    from safealign.plan import experiment as plan

    r, g = exp.recipe, exp.recipe.data.generate
    cache = exp.folder.parent / plan.STORE / generate.CACHE / "answers.jsonl"
    with fsutil.staged_dir(exp.dir("gen")) as tmp:
        try:
            summary = generate.run(g, r.base_model, r.seed, refs.path(g.prompts, REPO), tmp, cache)
        except (generate.GenerateError, models.ModelUnavailable) as e:
            raise StageError(f"gen: {e}") from None
        fsutil.write_json_atomic(tmp / "counts.json", summary)
        roles = {role: getattr(g, role) for role in data_cfg.ROLES}
        fsutil.write_json_atomic(
            tmp / "provenance.json",
            provenance.collect(
                REPO,
                r.seed,
                {"prompts": fsutil.sha256_file(refs.path(g.prompts, REPO))},
                stage="gen",
                prompts=g.prompts,
                # every setting of each model, system prompts included; the API key's variable by name only
                generation={
                    role: {**vars(m), "model": None if m.backend == "prompts" else data_cfg.model_name(m, r.base_model)}
                    for role, m in roles.items()
                },
                filter=g.filter,
                cache=str(cache),
            ),
        )
        d = summary["dropped"]
        console.say(
            f"  gen: {summary['rows']['train']} train / {summary['rows']['test']} test rows from "
            f"{sum(summary['prompts'].values())} prompts; dropped {sum(d.values())}"
            + (f" ({', '.join(f'{k} {v}' for k, v in d.items())}; see dropped.jsonl)" if d else "")
        )


def run_data(exp: Experiment) -> None:
    r = exp.recipe
    generated = exp.dir("gen") if r.data.generate is not None else None
    with fsutil.staged_dir(exp.dir("data")) as tmp:
        c = data_mod.build(
            str(generated.resolve()) if generated else r.data.source,
            r.seed,
            tmp,
            root=REPO,
            fmt="canonical" if generated else r.data.format,
            categories=r.data.categories,
            names=r.data.splits,
        )
        if generated:  # the generation stage's summary beside the counts
            c["generate"] = json.loads((generated / "counts.json").read_text())
            fsutil.write_json_atomic(tmp / "counts.json", c)
        unmet = data_mod.unmet_needs(r, c)
        if unmet:
            raise StageError(
                f"data from {r.data.source} cannot serve this experiment's stages:\n  - "
                + "\n  - ".join(unmet)
                + f"\n  (counts: {tmp / 'counts.json'})"
            )
        fsutil.write_json_atomic(
            tmp / "provenance.json",
            provenance.collect(
                REPO,
                r.seed,
                {k: fsutil.sha256_file(Path(v)) for k, v in c["source"].items() if not v.startswith("hf://")},
                stage="data",
            ),
        )
        console.say(
            f"  data: {c['train']['rows']} train rows ({c['train']['unsafe']} unsafe), "
            f"{c['test']['rows']} held-out; kto {c['stages']['kto']['desirable']} desirable / "
            f"{c['stages']['kto']['undesirable']} undesirable; dpo {c['stages']['dpo']['rows']} pairs"
        )


def run_training(exp: Experiment, stage: str) -> None:
    """Any offline training kind: fit the rows, render the kind's templates, run its tool, check, merge."""
    kind, cfg = kinds.get(stage), getattr(exp.recipe, stage)
    base = exp.input_model(stage)
    if kind.advice:
        rows = [json.loads(line) for line in open(exp.dir("data") / kind.data_file(cfg), encoding="utf-8")]
        for warning in kind.advice(cfg, rows):
            print(f"  warning: {stage}: {warning}", flush=True)
    with fsutil.staged_dir(exp.dir(stage)) as tmp:
        train_as(exp, stage, kind, tmp, base, lambda: train_rows(exp, stage, tmp, base))


def run_grpo(exp: Experiment, stage: str) -> None:
    """A kind trained on the judge's rewards (GRPO): its judge first, then safealign/run/rounds.py."""
    from safealign.run import rounds

    ensure_judge(exp)
    rounds.grpo(exp, stage)


def run_online(exp: Experiment, stage: str) -> None:
    """An online kind's rounds (kto_iter, dpo_iter): its judge first, then safealign/run/rounds.py."""
    from safealign.run import rounds

    ensure_judge(exp)
    rounds.run(exp, stage)


def ensure_judge(exp: Experiment) -> None:
    """Build the judge stage now when it is not done: an online kind labels with it before the
    evaluation stages run (the queued judge is then found done; cli.cmd_stage)."""
    folder = exp.dir("judge")
    if fsutil.is_done(folder) and exp.up_to_date(folder / fsutil.STAMP):  # as Make judges it (code included)
        return
    with fsutil.stage_lock(folder, f"[{exp.name}] judge") as built_meanwhile:
        if not built_meanwhile:
            console.say(f"  judge: built first: {exp.name}'s online stages label with it")
            run_judge(exp)


def join(exp: Experiment, node_rank: int, wait: float = 3600.0, poll: float = 1.0) -> None:
    """Node `node_rank` (> 0) of a multi-node experiment: for each training stage, wait for node 0
    (`make exp`) to render it and start its processes, then start this node's with the same
    command and `--machine_rank node_rank`, in the same stage folder (a filesystem shared by the
    nodes). Node 0 alone writes the results; this node's output goes to train.node<N>.log."""
    r = exp.recipe
    if r.launch.nodes < 2:
        raise StageError(
            f"{exp.folder}: launch.nodes is {r.launch.nodes}; joining needs an experiment with launch.nodes > 1"
        )
    if not 1 <= node_rank < r.launch.nodes:
        raise StageError(f"NODE_RANK {node_rank}: expected 1..{r.launch.nodes - 1} (node 0 runs make exp)")
    for stage in r.stages:
        final = exp.dir(stage)
        tmp = final.with_name(final.name + ".tmp")
        ticket = tmp / launch.JOIN_FILE
        deadline = time.time() + wait
        print(f"[{exp.name}] {stage}: node {node_rank} waiting for node 0 to start it ({ticket})", flush=True)
        # done and not being rebuilt: nothing to join; otherwise wait for node 0's launch command
        while not ticket.exists() and not (fsutil.is_done(final) and not tmp.exists()):
            if time.time() > deadline:
                raise StageError(
                    f"{stage}: node 0 did not start the stage within {wait:.0f}s ({ticket} never appeared)"
                )
            time.sleep(poll)
        if not ticket.exists():
            print(f"[{exp.name}] {stage}: done already ({final}); nothing to join", flush=True)
            continue
        cmd = list(json.loads(ticket.read_text())["command"])
        cmd[cmd.index("--machine_rank") + 1] = str(node_rank)
        launcher.run_logged(
            cmd, tmp, tmp / f"train.node{node_rank}.log", env=launcher.child_env(tmp, r.tracker, r.tracker_project)
        )
        while not fsutil.is_done(final):  # node 0 checks, merges and stamps the stage
            if time.time() > deadline:
                raise StageError(
                    f"{stage}: node 0 did not finish the stage within {wait:.0f}s (see {tmp / 'train.log'})"
                )
            time.sleep(poll)
        print(f"[{exp.name}] {stage}: node {node_rank} done", flush=True)


def run_judge(exp: Experiment) -> None:
    from safealign.eval import judges

    r = exp.recipe
    data = exp.dir("data")  # the rows the data stage wrote (imported, generated or shipped), not the source
    train, test = data_mod.read_jsonl(data / "train.jsonl"), data_mod.read_jsonl(data / "test.jsonl")
    origin = json.loads((data / "counts.json").read_text())["source"]
    with fsutil.staged_dir(exp.dir("judge")) as tmp:
        cfg = r.eval.safety
        guard = None  # a guard or LLM judge is measured on the labelled answers too
        if eval_cfg.guard_of(cfg.judge, cfg.guard_format) or cfg.judge == eval_cfg.ENDPOINT:
            cache = exp.dir("judge").parent / judges.ENDPOINT_CACHE
            guard = judges.Judge(
                cfg.judge, cfg.refusal, {}, None, cfg.guard_format, cfg.batch_size, cfg.backend, cfg.endpoint, cache
            )
        report = judges.build(train, test, r.seed, tmp, learn_real=cfg.judge_real_answers, guard=guard)
        fsutil.write_json_atomic(
            tmp / "provenance.json",
            provenance.collect(
                REPO,
                r.seed,
                {p.name: fsutil.sha256_file(p) for p in (eval_cfg.HARD_CASES, eval_cfg.REAL_ANSWERS) if p.exists()},
                stage="judge",
                data_source=origin,
            ),
        )
        h = report["hard_cases"]
        console.say(
            f"  judge: agreement on held-out answers: refusal keyword {report['held_out']['refusal_keyword']:.0%}, "
            f"minilm {report['held_out']['refusal_minilm']:.0%}, toxic {report['held_out']['toxic_minilm']:.0%}; "
            f"hard cases: refusal keyword {h['refusal_keyword']:.0%}, minilm {h['refusal_minilm']:.0%}"
        )
        if "real_answers" in report:  # kappa: agreement beyond chance, on real models' answers
            k = {key: "-" if v is None else f"{v:.2f}" for key, v in report["real_answers"]["kappa"].items()}
            gen = ("toxic_guard", "refusal_guard", "toxic_endpoint", "refusal_endpoint")  # a generative judge's
            more = "".join(f"; {key.replace('_', ' ')} {k[key]}" for key in gen if key in k)
            bad = report["real_answers"].get("guard_malformed", report["real_answers"].get("endpoint_malformed"))
            console.say(
                f"  judge: Cohen's kappa on {report['real_answers']['n']} labelled real answers"
                f"{' (heads learnt them: cross-fitted)' if report['heads_learnt_real_answers'] else ''}: refusal keyword "
                f"{k['refusal_keyword']}, minilm {k['refusal_minilm']}; toxic minilm {k['toxic_minilm']}{more}"
                + (
                    f" ({bad} {'guard' if cfg.judge != eval_cfg.ENDPOINT else 'LLM judge'} verdicts malformed, counted toxic)"
                    if bad
                    else ""
                )
            )


def run_leaderboard(exp: Experiment, model: str) -> None:
    from safealign.eval import leaderboard

    r = exp.recipe
    path = exp.model_path(model)
    cut_before = console.filtered_count("lm_eval.models.huggingface")
    with fsutil.staged_dir(exp.dir(f"leaderboard-{model}")) as tmp:
        tab = leaderboard.run(path, r.eval.leaderboard, tmp, r.seed, log=lambda m: print(m, flush=True))
        cut = console.filtered_count("lm_eval.models.huggingface") - cut_before
        fsutil.write_json_atomic(
            tmp / "provenance.json",
            provenance.collect(REPO, r.seed, {}, stage="leaderboard", model=path, source=r.eval.leaderboard.source),
        )
        console.say(
            "  leaderboard (normalised): "
            + ", ".join(f"{t} {n}" for t, _, n in leaderboard.format_rows(tab))
            + (f" ({cut} requests cut from the left to the model's length by lm-eval; see the log)" if cut else "")
        )


def run_safety(exp: Experiment, model: str) -> None:
    """The held-out rows' safety stage for `model`."""
    exp.model_path(model)  # a model that cannot be had is the error, before anything is read
    test = [json.loads(line) for line in (exp.dir("data") / "test.jsonl").read_text().splitlines() if line.strip()]
    _safety(exp, model, f"safety-{model}", test, {})


def run_safety_set(exp: Experiment, model: str, name: str) -> None:
    """A public benchmark's safety stage for `model` (eval.safety.sets): its files read in their
    published layout (fetched once where they are remote), sampled by set_limit."""
    from safealign.data import benchmarks

    r = exp.recipe
    exp.model_path(model)
    loc = set_location(r, name)
    folder = benchmarks.fetch(name, loc)
    rows, rep = benchmarks.load(name, folder)
    if not rows:
        raise StageError(f"{name}: no prompts in {folder} ({rep.as_dict()})")
    rows = benchmarks.sample(rows, r.eval.safety.set_limit, r.seed)
    files = eval_sets.identity(name, str(folder))["files"]  # the files read, by hash (a hub copy's too)
    info = {"set": name, "source": loc, "import": rep.as_dict(), "files": files}
    judge = r.eval.safety.set_judges.get(name)  # the set's own judge, where the recipe names one
    _safety(exp, model, f"safety-{name}-{model}", rows, {**info, **({"judge": judge} if judge else {})}, limit=0)


def _safety(exp: Experiment, model: str, stage: str, rows: list[dict], info: dict, limit: int | None = None) -> None:
    from safealign.eval import judges, safety

    r = exp.recipe
    cfg = r.eval.safety
    path = exp.model_path(model)
    judge = judges.Judge.from_dir(exp.dir("judge"), cfg, info.get("judge"))
    reference = None if model == "base" else exp.dir(stage.removesuffix(model) + "base") / "answers.jsonl"
    with fsutil.staged_dir(exp.dir(stage)) as tmp:
        m = safety.run(
            path, rows, cfg, judge, tmp, r.seed, base_answers=reference, health_cfg=r.health, limit=limit, extra=info
        )
        fsutil.write_json_atomic(tmp / "provenance.json", provenance_of(exp, "safety", model=path, **info))
        o = m["overall"]
        console.say(
            f"  safety{' (' + info['set'] + ')' if info else ''}: "
            + ", ".join(f"{k} {v['value']:.3f} [{v['low']:.3f}, {v['high']:.3f}]" for k, v in o.items())
        )


def run_summary(exp: Experiment) -> None:
    """The experiment's evaluation summary (eval/): every evaluated model's results side by side."""
    from safealign.eval import summary

    with fsutil.staged_dir(exp.dir("summary")) as tmp:
        s = summary.build(exp)
        fsutil.write_text_atomic(tmp / "summary.json", json.dumps(s, indent=2) + "\n")  # keeps the model order
        text = summary.markdown(s)
        (tmp / "summary.md").write_text(text)
        print(text, flush=True)  # the log's copy; `make exp` shows summary.md once, at its end


def run(exp: Experiment, stage: str, model: str | None = None, eval_set: str | None = None) -> None:
    """Run one stage of `exp` by its kind: data, a training kind, judge, leaderboard, safety (of
    the held-out rows, or of the benchmark `eval_set`), summary."""
    if stage == "gen":
        run_gen(exp)
    elif stage == "data":
        run_data(exp)
    elif stage in kinds.KINDS:  # run_training, or the kind's own runner (online kinds)
        globals()[kinds.get(stage).runner](exp, stage)
    elif stage == "judge":
        run_judge(exp)
    elif stage == "leaderboard":
        run_leaderboard(exp, model)
    elif stage == "safety" and eval_set:
        run_safety_set(exp, model, eval_set)
    elif stage == "safety":
        run_safety(exp, model)
    elif stage == "summary":
        run_summary(exp)
    else:
        raise StageError(f"unknown stage {stage!r}")
