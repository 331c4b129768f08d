"""Reports: one experiment's report.md, and a comparison of several experiments.

    experiments/<NAME>/report.md           recipe summary, provenance, stage timings, training
    experiments/<NAME>/plots/*.png         curves per stage, evaluation tables (base beside
                                           aligned), sample answers
    experiments/compare/<C>/compare.md     one table in the study's shape (rows experiments;
    experiments/compare/<C>/*.png          safety and leaderboard columns; best per column in
                                           bold) and overlaid KL / reward / loss curves

Everything is read from files the stages wrote (train_log.jsonl, summary.json, provenance.json,
eval/summary.json, answers.jsonl); nothing is recomputed. Pages refer only to files inside
their own folder (plots are written next to them), so a folder can be copied or zipped whole.
Each page is written atomically, plots first, page last.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from safealign.config import kinds
from safealign.core import fsutil
from safealign.eval import summary
from safealign.eval.leaderboard import TASK_FAMILIES
from safealign.eval.safety import METRICS, paired_difference
from safealign.plan import experiment as plan

# What each curve means, for axis labels: trl's names -> (label, unit)
CURVES = {
    "loss": ("training loss", "loss value; SFT: cross-entropy, nats per token"),
    "kl": ("KL reference point z0", "nats"),
    "rewards/chosen": ("reward, desirable / chosen", "nats (beta x log-ratio)"),
    "rewards/rejected": ("reward, undesirable / rejected", "nats (beta x log-ratio)"),
    "rewards/margins": ("reward margin", "nats"),
    "nll_loss": ("NLL of desirable / chosen completions", "nats per token"),
}


def curve(key: str) -> tuple[str, str]:
    """(label, unit) of a logged metric: CURVES, else the kind that logs it (kinds.Kind.curves)."""
    for k in kinds.KINDS.values():
        if key in k.curves:
            return k.curves[key]
    return CURVES.get(key, (key, "logged value"))


def read_log(stage_dir: Path) -> list[dict]:
    path = Path(stage_dir) / "train_log.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def series(log: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], float(r[key])) for r in log if isinstance(r.get(key), (int, float))]
    return [p[0] for p in pts], [p[1] for p in pts]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_stage(log: list[dict], stage: str, title: str, path: Path) -> bool:
    """One figure per training stage: a panel per logged curve that exists."""
    keys = [k for k in kinds.get(stage).plots if series(log, k)[0]]
    if not keys:
        return False
    plt = _plt()
    ncols = min(3, len(keys))
    nrows = -(-len(keys) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.4 * nrows), squeeze=False)
    for ax in axes.flat[len(keys) :]:
        ax.set_visible(False)
    for ax, k in zip(axes.flat, keys):
        x, y = series(log, k)
        ax.plot(x, y, marker="." if len(x) < 40 else None, label=k)
        label, unit = curve(k)
        if k == "loss":
            unit = "cross-entropy, nats per token" if stage == "sft" else f"{stage} loss value"
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(f"{k} ({unit})", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_overlay(logs: dict[str, list[dict]], key: str, title: str, path: Path) -> bool:
    """One curve per experiment on shared axes (the study's figures 3, 4 and 8)."""
    drawn = {n: series(log, key) for n, log in logs.items()}
    drawn = {n: xy for n, xy in drawn.items() if xy[0]}
    if not drawn:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for n, (x, y) in drawn.items():
        ax.plot(x, y, label=n)
    label, unit = curve(key)
    ax.set_title(title)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(f"{label} ({unit})", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _stage_json(exp: plan.Experiment, stage: str, name: str) -> dict | None:
    p = exp.dir(stage) / name
    return json.loads(p.read_text()) if p.exists() else None


def _answers(exp: plan.Experiment, model: str) -> dict[str, dict]:
    p = exp.dir(f"safety-{model}") / "answers.jsonl"
    if not p.exists():
        return {}
    return {r["id"]: r for r in map(json.loads, p.read_text().splitlines())}


def _clip(text: str, n: int = 160) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= n else text[: n - 1] + "…"


def _data_text(d) -> str:
    g = d.generate
    if g is None:
        return f"`{d.source}`"
    by = {role: f"by `{getattr(g, role).model or 'base model'}`" for role in ("answers", "refusals")}
    if g.refusals.backend == "prompts":
        by["refusals"] = "from the prompt list"
    return f"generated from `{g.prompts}`: answers {by['answers']}, refusals {by['refusals']}"


def recipe_rows(ex: plan.Experiment) -> list[list[str]]:
    r = ex.recipe
    rows = [
        ["base model", f"`{r.base_model}`"],
        ["stages", " -> ".join(r.stages)],
        ["seed", str(r.seed)],
        ["data", _data_text(r.data)],
    ]
    if ex.overrides:
        rows.append(["overrides (SET)", ", ".join(f"`{o}`" for o in ex.overrides)])
    for s in r.stages:
        cfg = getattr(r, s)
        rows.append([s, ", ".join(f"{k} {getattr(cfg, k)}" for k in kinds.get(s).report_keys if hasattr(cfg, k))])
    return rows


def runtime_text(ex, stages: list[str]) -> str:
    """What each training stage's hardware settings resolved to where it ran (models.runtime)."""
    out = []
    for s in stages:
        rt = (_stage_json(ex, s, "summary.json") or {}).get("runtime")
        if rt:
            precision = "QLoRA 4-bit base" if rt["qlora"] else "bf16" if rt["bf16"] else "fp32"
            attn = rt["attn_implementation"] or "model default"
            out.append(f"{s}: {precision}, attention {attn}{', Liger' if rt['liger'] else ''}")
    return "; ".join(out) or "-"


# ----------------------------------------------------------------------------- one experiment's page
def header_section(ex: plan.Experiment) -> list[str]:
    """Title, description, the command that ran it and the recipe's main keys."""
    sets = f" SET='{' '.join(ex.overrides)}'" if ex.overrides else ""
    return [
        f"# {ex.name}",
        "",
        ex.recipe.description or "",
        "",
        f"Run with `make exp NAME={Path(ex.recipe_file).stem}{sets}`; the resolved recipe is [recipe.yaml](recipe.yaml).",
        "",
        "## Recipe",
        "",
        summary.md_table(["key", "value"], recipe_rows(ex)),
        "",
    ]


def provenance_section(ex: plan.Experiment) -> list[str]:
    """Commit, command, versions, hardware and data hashes, from the last stage's provenance.json."""
    prov = _stage_json(ex, ex.recipe.stages[-1], "provenance.json") or {}
    if not prov:
        return []
    v, git = prov.get("versions", {}), prov.get("git") or {}
    r = ex.recipe
    rows = [
        ["git commit", f"`{git.get('commit')}`" + (" (uncommitted changes)" if git.get("dirty") else "")],
        ["command", f"`{prov.get('invoked_as') or ' '.join(prov.get('command', []))}`"],
        [
            "versions",
            ", ".join(
                f"{k} {v[k]}" for k in ("torch", "transformers", "trl", "axolotl", "peft", "lm_eval") if v.get(k)
            ),
        ],
        ["hardware", ", ".join(f"{k} {val}" for k, val in (prov.get("hardware") or {}).items())],
        ["model", f"`{r.base_model}`" + (f" (profile `{r.model}`)" if r.model else "")],
        ["training runtime", runtime_text(ex, r.stages)],
        ["data sha256", ", ".join(f"{k} `{h[:12]}`" for k, h in (prov.get("data_sha256") or {}).items())],
        ["seed", str(prov.get("seed"))],
    ]
    return ["## Provenance", "", summary.md_table(["", ""], rows), ""]


def _training_timing(ex: plan.Experiment, s: str) -> list[str] | None:
    sm = _stage_json(ex, s, "summary.json")
    if not sm:
        return None
    rows = sm.get("rows") or {}
    total = sum(
        rows.get(k, 0) for k in ("kept", "prompt_truncated", "completion_truncated", "dropped", "control_tokens")
    )
    cut = rows.get("prompt_truncated", 0) + rows.get("completion_truncated", 0)
    fitted = f"{cut} / {rows.get('dropped', 0)} of {total}" if rows else ""
    if rows.get("control_tokens"):  # refused: their text holds the tokenizer's turn markers
        fitted += f"; {rows['control_tokens']} refused (control tokens)"
    loss = f"{sm['first_loss']:.4f} -> {sm['last_loss']:.4f}"
    return [s, f"`{ex.dir(s).name}`", f"{sm['seconds']:.1f}", str(sm["steps"]), loss, fitted]


def _evaluation_timing(ex: plan.Experiment, kind: str, m: str) -> list[str] | None:
    label = f"{kind}-{m}"
    if label not in ex.stages:  # e.g. eval.leaderboard.enabled: false
        return None
    d = _stage_json(ex, label, "table.json" if kind == "leaderboard" else "metrics.json")
    if not d:
        return None
    secs = d["seconds"]["total"] if isinstance(d["seconds"], dict) else d["seconds"]
    cut, refused = d.get("prompts_truncated"), len(d.get("prompts_refused_control") or [])
    notes = ([f"{cut} prompts cut"] if cut else []) + ([f"{refused} refused (control tokens)"] if refused else [])
    return [f"{kind} ({m})", f"`{ex.stages[label]['dir']}`", f"{secs:.1f}", "", "", "; ".join(notes)]


def timings_section(ex: plan.Experiment) -> list[str]:
    """Seconds, steps and losses of each training stage; seconds of each evaluation stage."""
    rows = [_training_timing(ex, s) for s in ex.recipe.stages]
    rows += [_evaluation_timing(ex, k, m) for m in plan.eval_models(ex.recipe) for k in ("leaderboard", "safety")]
    return [
        "## Stage timings",
        "",
        "Stages live in the shared store (`experiments/.stages/`); a stage another "
        "experiment already ran is reused, not re-timed.",
        "",
        summary.md_table(
            ["stage", "store folder", "seconds", "steps", "loss first -> last", "rows cut / dropped to fit max_length"],
            [r for r in rows if r],
        ),
        "",
    ]


def curves_section(ex: plan.Experiment, plots: Path) -> list[str]:
    """Each training stage's logged curves, drawn into `plots`."""
    out = ["## Training curves", ""]
    for s in ex.recipe.stages:
        log = read_log(ex.dir(s))
        n_steps = sum("loss" in r for r in log)
        if not plot_stage(log, s, f"{ex.name}: {s} ({n_steps} logged steps)", plots / f"{s}_curves.png"):
            continue
        tb = (
            f"; TensorBoard, from this folder: `tensorboard --logdir {s}/tensorboard`"
            if (ex.dir(s) / "tensorboard").exists()
            else ""
        )
        out += [
            f"### {s}",
            "",
            f"![{s} training curves](plots/{s}_curves.png)",
            "",
            f"Logged per step in [{s}/train_log.jsonl]({s}/train_log.jsonl){tb}.",
            "",
        ]
    return out


def evaluation_section(ex: plan.Experiment) -> list[str]:
    """The evaluation summary (base beside aligned) and sample answers."""
    ev = ex.folder / "eval" / "summary.json"
    if not ev.exists():
        return []
    s = json.loads(ev.read_text())
    body = summary.markdown(s).split("\n", 2)[2]  # drop its title line
    return ["## Evaluation", "", body.replace("\n## ", "\n### "), "", *sample_answers(ex, s)]


def build(exp: Path) -> Path:
    """Write exp/plots/ then exp/report.md; return the page's path."""
    ex = plan.Experiment(exp)
    plots_tmp, plots = ex.folder / "plots.tmp", ex.folder / "plots"
    shutil.rmtree(plots_tmp, ignore_errors=True)
    plots_tmp.mkdir()
    parts = [
        *header_section(ex),
        *provenance_section(ex),
        *timings_section(ex),
        *curves_section(ex, plots_tmp),
        *evaluation_section(ex),
    ]
    shutil.rmtree(plots, ignore_errors=True)
    plots_tmp.rename(plots)
    fsutil.write_text_atomic(ex.folder / "report.md", "\n".join(parts) + "\n")
    return ex.folder / "report.md"


def sample_answers(exp: plan.Experiment, s: dict, n: int = 3) -> list[str]:
    models = summary.order(s)
    base, last = _answers(exp, models[0]), _answers(exp, models[-1])
    if not base or not last:
        return []
    out = [
        "## Sample answers",
        "",
        f"The first {n} held-out unsafe and safe prompts; {models[0]} beside "
        f"{models[-1]} (greedy). All answers: `safety-*/answers.jsonl`.",
        "",
    ]
    for safe in (False, True):
        ids = [i for i, r in base.items() if r["safe"] == safe and i in last][:n]
        rows = []
        for i in ids:
            b, a = base[i], last[i]
            verdict = lambda r: ("refused" if r["refused"] else "answered") + (", toxic" if r["toxic"] else "")
            rows.append(
                [
                    _clip(b["prompt"], 90),
                    f"{_clip(b['answer'])} *({verdict(b)})*",
                    f"{_clip(a['answer'])} *({verdict(a)})*",
                ]
            )
        out += [
            f"### {'safe' if safe else 'unsafe'} prompts",
            "",
            summary.md_table(["prompt", models[0], models[-1]], rows),
            "",
        ]
    return out


# ----------------------------------------------------------------------------- comparison
COLUMNS = (
    [  # (label, metric name (safealign/eval/summary.py: metrics), higher is better)
        ("toxicity %", "toxicity_rate", False),
        ("refusal %", "refusal_rate", True),
        ("false refusal %", "false_refusal_rate", False),
        ("similarity to base", "similarity_to_base", True),
    ]
    + [(f"{f.title}", f"leaderboard_{key}", True) for key, f in TASK_FAMILIES.items()]
    + [("leaderboard avg", "leaderboard_average", True)]
)


def set_columns(summaries: dict[str, dict]) -> list[tuple[str, str, bool]]:
    """The public benchmarks' columns (eval.safety.sets) of any of the experiments: refusal of its
    harmful prompts, false refusal of its benign ones, and the gap between them."""
    names = []
    for s in summaries.values():
        names += [n for n in s.get("sets") or [] if n not in names]
    return [
        (f"{n} {label}", f"{n}_{key}", higher)
        for n in names
        for label, key, higher in (
            ("refusal %", "refusal_rate", True),
            ("false refusal %", "false_refusal_rate", False),
            ("refusal gap", "refusal_gap", True),
        )
    ]


def experiment_row(s: dict, model: str, columns=COLUMNS) -> dict[str, float | None]:
    vals = summary.model_metrics(s["models"][model])
    out = {}
    for label, key, _ in columns:
        v = vals.get(key)
        out[label] = None if v is None else float(v) * (100 if key.endswith(("_rate", "_gap")) else 1)
    return out


def comparison_table(summaries: dict[str, dict]) -> tuple[list[str], list[list[str]], dict]:
    """Rows: the shared base model (once), then each experiment's final model; best per column in
    bold; the public benchmarks' columns after the held-out ones where an experiment has them."""
    rows: dict[str, dict] = {}
    columns = [*COLUMNS[:4], *set_columns(summaries), *COLUMNS[4:]]
    bases = {s["base_model"] for s in summaries.values()}
    if len(bases) == 1:
        first = next(iter(summaries.values()))
        rows[f"base ({first['base_model']})"] = experiment_row(first, "base", columns)
    for name, s in summaries.items():
        if len(bases) > 1:
            rows[f"{name} base"] = experiment_row(s, "base", columns)
        rows[name] = experiment_row(s, summary.order(s)[-1], columns)
    cols = [c for c in columns if any(r[c[0]] is not None for r in rows.values())]
    best = {}
    for label, _, higher in cols:
        vals = [r[label] for n, r in rows.items() if r[label] is not None and not n.startswith("base")]
        if vals:
            best[label] = max(vals) if higher else min(vals)
    table = []
    for n, r in rows.items():
        cells = []
        for label, key, _ in cols:
            v = r[label]
            text = "-" if v is None else (f"{v:.3f}" if key == "similarity_to_base" else f"{v:.1f}")
            if v is not None and label in best and abs(v - best[label]) < 1e-12 and not n.startswith("base"):
                text = f"**{text}**"
            cells.append(text)
        table.append([n] + cells)
    header = ["experiment"] + [f"{c[0]} {'↑' if c[2] else '↓'}" for c in cols]
    if any(key.startswith("leaderboard_") for _, key, _ in cols):  # fixture scores must not pass for real ones
        header.append("leaderboard source")
        sources = [
            next(iter(summaries.values())).get("leaderboard_source")
            if n.startswith("base") and len(bases) == 1
            else summaries[n.removesuffix(" base")].get("leaderboard_source")
            for n in rows
        ]
        table = [row + [summary.source_label(src)] for row, src in zip(table, sources)]
    return header, table, {"rows": rows, "best": best}


PAIRED_RATES = ("toxicity_rate", "refusal_rate", "false_refusal_rate")


def final_answers(exp: Path, s: dict) -> dict[str, dict]:
    """The experiment's final model's judged answers (safety stage), by prompt id."""
    path = exp / f"safety-{summary.order(s)[-1]}" / "answers.jsonl"
    if not path.exists():
        return {}
    return {r["id"]: r for r in map(json.loads, path.read_text(encoding="utf-8").splitlines()) if r}


def paired_rows(exps: list[Path], summaries: dict[str, dict]) -> tuple[list[str], list[list[str]], list[dict]]:
    """Each pair of experiments' final models, A minus B on the same held-out prompts, per rate:
    the difference in points with its paired bootstrap 95% interval, ✓ where it excludes 0."""
    ex = plan.Experiment(exps[0]).recipe
    n_boot, seed = ex.eval.safety.bootstrap, ex.seed
    answers = {e.name: final_answers(e, summaries[e.name]) for e in exps}
    names = [n for n in answers if answers[n]]
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
    rows, data = [], []
    for a, b in pairs:
        cells = []
        for rate in PAIRED_RATES:
            safe, field = METRICS[rate]
            da, db = ({i: r.get(field) for i, r in answers[n].items() if r["safe"] == safe} for n in (a, b))
            d = paired_difference(da, db, n_boot, seed)
            data.append({"a": a, "b": b, "rate": rate, **(d or {})})
            cells.append(
                "-"
                if d is None
                else f"{d['value'] * 100:+.1f} [{d['low'] * 100:+.1f}, {d['high'] * 100:+.1f}]"
                + (" ✓" if d["resolved"] else "")
                + f" (n {d['n']})"
            )
        rows.append([f"{a} − {b}"] + cells)
    header = ["A − B (points)"] + [summary.LABELS[r] for r in PAIRED_RATES]
    return header, rows, data


def compare(exps: list[Path], out: Path) -> Path:
    """Write out/compare.md with its plots; every experiment must have been evaluated."""
    missing = [e for e in exps if not (e / "eval" / "summary.json").exists()]
    if missing:
        raise FileNotFoundError(
            "not evaluated yet: " + ", ".join(str(m) for m in missing) + " (make exp NAME=<recipe> first)"
        )
    summaries = {e.name: json.loads((e / "eval" / "summary.json").read_text()) for e in exps}
    header, rows, data = comparison_table(summaries)
    with fsutil.staged_dir(out) as tmp:
        pref_logs, sft_logs = {}, {}
        for e in exps:
            ex = plan.Experiment(e)
            pref = [s for s in ex.recipe.stages if kinds.get(s).preference]
            supervised = [s for s in ex.recipe.stages if not kinds.get(s).preference]
            if pref:
                pref_logs[f"{e.name} ({pref[-1]})"] = read_log(ex.dir(pref[-1]))
            if supervised:
                sft_logs[e.name] = read_log(ex.dir(supervised[0]))
        figs = [
            ("kl.png", pref_logs, "kl", "KL reference point z0 during preference training"),
            ("rewards_desirable.png", pref_logs, "rewards/chosen", "Reward on desirable (chosen) rows"),
            ("rewards_undesirable.png", pref_logs, "rewards/rejected", "Reward on undesirable (rejected) rows"),
            ("loss.png", pref_logs, "loss", "Preference-stage training loss"),
            ("sft_loss.png", sft_logs, "loss", "SFT training loss"),
        ]
        drawn = [(f, t) for f, logs, k, t in figs if plot_overlay(logs, k, t, tmp / f)]
        parts = [
            f"# Comparison: {', '.join(summaries)}",
            "",
            "Rows: the base model, then each experiment's final model. Safety rates in % of held-out "
            "prompts; leaderboard columns are normalised scores (0 = random baseline). Best per column "
            "(among experiments) in **bold**; ↑ higher is better, ↓ lower is better.",
            "",
            summary.md_table(header, rows),
            "",
        ]
        p_header, p_rows, paired = paired_rows(exps, summaries)
        if p_rows:
            parts += [
                "## Paired differences (the same held-out prompts)",
                "",
                "The bold above marks point estimates only. Here, each pair of final models: A's rate minus "
                "B's over the prompts both answered, with a paired bootstrap 95% interval (prompts "
                "resampled together); ✓ where the interval excludes 0, the only differences this sample "
                "shows. The rest are not resolved at this size, whatever the point estimates say.",
                "",
                summary.md_table(p_header, p_rows),
                "",
            ]
        parts += ["## Training curves", ""]
        for f, t in drawn:
            parts += [f"### {t}", "", f"![{t}]({f})", ""]
        parts += ["## Sources", ""] + [f"- {n}: `{e}/eval/summary.json`" for n, e in zip(summaries, exps)]
        (tmp / "table.json").write_text(
            json.dumps(
                {"header": header, "table": rows, "values": data["rows"], "best": data["best"], "paired": paired},
                indent=2,
            )
            + "\n"
        )
        (tmp / "compare.md").write_text("\n".join(parts) + "\n")
    return out / "compare.md"
