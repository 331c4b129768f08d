"""An experiment's evaluation summary: eval/summary.json and eval/summary.md.

Columns are the evaluated models (the base model first, then each stage's model), so every
aligned number sits beside the base model's. Everything is read from the stage folders the
experiment links to; nothing is recomputed here.
"""

from __future__ import annotations

import json
from pathlib import Path

from safealign.eval.leaderboard import TASK_FAMILIES
from safealign.eval.safety import METRICS, resolvable_difference
from safealign.plan import experiment as plan

LABELS = {
    "toxicity_rate": "toxicity (unsafe prompts)",
    "refusal_rate": "refusal (unsafe prompts)",
    "false_refusal_rate": "false refusal (safe prompts)",
    "similarity_to_base": "similarity to base (safe)",
    "refusal_gap": "refusal gap (refusal - false refusal)",
    "harm_score": "harm score (StrongREJECT, unsafe)",
}


def order(s: dict) -> list[str]:
    """The evaluated models, base first, then the stages in training order."""
    return s.get("model_order") or list(s["models"])


def _read(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def build(exp: plan.Experiment) -> dict:
    recipe = exp.recipe
    models = plan.eval_models(recipe)
    out = {
        "experiment": exp.name,
        "base_model": recipe.base_model,
        "model_order": models,
        "models": {},
        "judge": None,
        "leaderboard_source": recipe.eval.leaderboard.source if recipe.eval.leaderboard.enabled else None,
    }
    for m in models:
        entry = {"stage_dirs": {}}
        if recipe.eval.leaderboard.enabled:
            d = exp.dir(f"leaderboard-{m}")
            entry["stage_dirs"]["leaderboard"] = d.name
            entry["leaderboard"] = _read(d / "table.json")
        d = exp.dir(f"safety-{m}")
        entry["stage_dirs"]["safety"] = d.name
        met = _read(d / "metrics.json")
        entry["safety"] = (
            {
                k: met.get(k)
                for k in (
                    "overall",
                    "by_category",
                    "by_subset",
                    "generation",
                    "judge",
                    "refusal_detector",
                    "cross_check",
                )
            }
            if met
            else None
        )
        sets = {}
        for name in plan.benchmark_sets(recipe):  # the public benchmarks: one stage per set and model
            d = exp.dir(f"safety-{name}-{m}")
            entry["stage_dirs"][f"safety-{name}"] = d.name
            met = _read(d / "metrics.json")
            sets[name] = {k: met.get(k) for k in SET_KEYS} if met else None
        if sets:
            entry["sets"] = sets
        out["models"][m] = entry
    out["sets"] = plan.benchmark_sets(recipe)
    out["judge_name"] = recipe.eval.safety.judge  # the judge the judge stage measured (a set may have its own)
    out["judge"] = _read(exp.dir("judge") / "agreement.json")
    return out


SET_KEYS = ("overall", "by_category", "by_subset", "set", "source", "import", "judge", "refusal_detector")


# ----------------------------------------------------------------------------- flat metric names
# One flattener of the evaluation into metric names, read by the report's comparison, the
# regression suite and the pipeline's Metrics artifacts: the safety rates under their own names
# (toxicity_rate, refusal_rate, false_refusal_rate, similarity_to_base), leaderboard_<family>
# (normalised score), leaderboard_average and leaderboard_seconds.
def safety_metrics(m: dict | None) -> dict[str, float]:
    """A safety stage's metrics.json (or its copy in summary.json) -> {rate: value}, overall."""
    overall = (m or {}).get("overall") or {}
    return {k: v["value"] for k, v in overall.items() if isinstance(v, dict) and _number(v.get("value"))}


def leaderboard_metrics(t: dict | None) -> dict[str, float]:
    """A leaderboard stage's table.json (or its copy in summary.json) -> leaderboard_* numbers."""
    if not t:
        return {}
    out = {
        f"leaderboard_{f}": v["normalised"] for f, v in t.get("families", {}).items() if _number(v.get("normalised"))
    }
    for key in ("average", "seconds"):
        if _number(t.get(key)):
            out[f"leaderboard_{key}"] = t[key]
    return out


def model_metrics(entry: dict) -> dict[str, float]:
    """One evaluated model of summary.json: its safety rates and leaderboard scores, flat; a
    benchmark's rates as <set>_<rate> (xstest_false_refusal_rate)."""
    out = {**safety_metrics(entry.get("safety")), **leaderboard_metrics(entry.get("leaderboard"))}
    for name, m in (entry.get("sets") or {}).items():
        out.update({f"{name}_{k}": v for k, v in safety_metrics(m).items()})
    return out


def metrics(s: dict) -> dict[str, dict[str, float]]:
    """eval/summary.json -> {model: {metric: value}}."""
    return {m: model_metrics(e) for m, e in s.get("models", {}).items()}


def _number(v) -> bool:
    """A figure: a number, or the string a log writes for NaN/inf (kept, so that a broken run shows)."""
    if isinstance(v, str):
        try:
            float(v)
            return True
        except ValueError:
            return False
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _ci(v: dict | None, pct: bool = True) -> str:
    if not v:
        return "-"
    f = (lambda x: f"{x * 100:.1f}") if pct else (lambda x: f"{x:.3f}")
    return f"{f(v['value'])} [{f(v['low'])}, {f(v['high'])}]"


def leaderboard_rows(s: dict) -> tuple[list[str], list[list[str]]]:
    models = [m for m in order(s) if s["models"][m].get("leaderboard")]
    header = ["task"] + [f"{m} raw" for m in models] + [f"{m} norm" for m in models]
    fams = [f for f in TASK_FAMILIES if any(f in s["models"][m]["leaderboard"]["families"] for m in models)]
    rows = []
    for f in fams:
        vals = [s["models"][m]["leaderboard"]["families"].get(f) for m in models]
        rows.append(
            [TASK_FAMILIES[f].title]
            + [f"{v['raw']:.4f}" if v else "-" for v in vals]
            + [f"{v['normalised']:.2f}" if v else "-" for v in vals]
        )
    if fams:
        rows.append(
            ["Average (normalised)"]
            + [""] * len(models)
            + [f"{s['models'][m]['leaderboard']['average']:.2f}" for m in models]
        )
    return header, rows


def safety_rows(s: dict) -> tuple[list[str], list[list[str]]]:
    models = [m for m in order(s) if s["models"][m].get("safety")]
    header = ["metric (%, 95% CI)"] + models
    rows = []
    for k in (*METRICS, "refusal_gap"):  # the gap: safety.gap, refusal aimed at the unsafe prompts
        vals = [s["models"][m]["safety"]["overall"].get(k) for m in models]
        if any(vals):
            rows.append([LABELS[k]] + [_ci(v, pct=k != "similarity_to_base") for v in vals])
    return header, rows


def category_rows(s: dict) -> tuple[list[str], list[list[str]]]:
    models = [m for m in order(s) if s["models"][m].get("safety")]
    header = ["category", "n"] + [f"{m} tox / refused" for m in models]
    rows = []
    cats = sorted({c for m in models for c in s["models"][m]["safety"]["by_category"]})
    for c in cats:
        blocks = [s["models"][m]["safety"]["by_category"].get(c, {}) for m in models]
        if "toxicity_rate" in blocks[0]:
            n = blocks[0]["toxicity_rate"]["n"]
            cells = [
                f"{b['toxicity_rate']['value'] * 100:.0f} / {b['refusal_rate']['value'] * 100:.0f}" for b in blocks
            ]
        else:
            n = blocks[0]["false_refusal_rate"]["n"]
            cells = [f"- / {b['false_refusal_rate']['value'] * 100:.0f} (safe)" for b in blocks]
        rows.append([c, str(n)] + cells)
    return header, rows


SET_RATES = ("refusal_rate", "false_refusal_rate", "refusal_gap", "toxicity_rate", "harm_score", "similarity_to_base")


def set_rows(s: dict, name: str) -> tuple[list[str], list[list[str]]]:
    """A benchmark's rates, one column per model (those whose stage for it has finished)."""
    models = [m for m in order(s) if (s["models"][m].get("sets") or {}).get(name)]
    rows = []
    for k in SET_RATES:
        vals = [s["models"][m]["sets"][name]["overall"].get(k) for m in models]
        if any(vals):
            rows.append([LABELS[k]] + [_ci(v, pct=k != "similarity_to_base") for v in vals])
    return ["metric (%, 95% CI)"] + models, rows


def set_category_rows(s: dict, name: str) -> tuple[list[str], list[list[str]]]:
    """A benchmark's refusals per category: harmful prompts refused / benign prompts refused."""
    models = [m for m in order(s) if (s["models"][m].get("sets") or {}).get(name)]
    cats = sorted({c for m in models for c in s["models"][m]["sets"][name]["by_category"]})
    rows = []
    for c in cats:
        blocks = [s["models"][m]["sets"][name]["by_category"].get(c, {}) for m in models]
        n = "/".join(str((blocks[0].get(k) or {}).get("n", 0)) for k in ("refusal_rate", "false_refusal_rate"))
        rows.append([c, n] + [f"{_pct(b.get('refusal_rate'))} / {_pct(b.get('false_refusal_rate'))}" for b in blocks])
    return ["category", "n harmful/benign"] + [f"{m} refused harmful / benign" for m in models], rows


def sets_section(s: dict) -> list[str]:
    """The public benchmarks (eval.safety.sets), each its rates and its categories."""
    from safealign.config.sets import BENCHMARKS

    names = [n for n in s.get("sets") or [] if any((e.get("sets") or {}).get(n) for e in s["models"].values())]
    if not names:
        return []
    parts = [
        "## Safety on public benchmarks",
        "",
        "Each set answered and judged as the held-out prompts are (same judge, same settings); never "
        "trained on. Refusal gap: harmful prompts refused minus benign prompts refused, where a set has both.",
        "",
    ]
    for name in names:
        first = next(e["sets"][name] for e in s["models"].values() if (e.get("sets") or {}).get(name))
        b, imp = BENCHMARKS[name], first.get("import") or {}
        skipped = "; ".join(f"{v} skipped: {k}" for k, v in (imp.get("skipped") or {}).items())
        fixtures = "data/benchmark_fixtures" in str(first.get("source") or "")
        own = first.get("judge") and first.get("judge") != (s.get("judge_name") or first.get("judge"))
        parts += [
            f"### {b.title} (`{name}`, {b.licence})",
            "",
            f"Source: `{first.get('source')}`; {imp.get('rows', '?')} prompts of {imp.get('read', '?')} rows read; "
            f"judge `{first.get('judge')}`"
            + (f" ({skipped})" if skipped else "")
            + (". **Offline fixtures: a path check, not a measurement.**" if fixtures else ".")
            + (
                " This set's own judge (eval.safety.set_judges) is not measured against labelled answers "
                "here: its rates rest on its own validation."
                if own
                else ""
            ),
            "",
            md_table(*set_rows(s, name)),
            "",
            md_table(*set_category_rows(s, name)),
            "",
        ]
    return parts


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


SOURCE_NOTE = {
    "fixtures": "**Source: offline fixtures** (`data/leaderboard_fixtures`: a few rows per task): these scores "
    "check that the evaluation path runs; they are not a measurement and are not comparable with "
    "leaderboard scores.",
    "hub": "Source: the leaderboard's own datasets (hub).",
}


def source_label(source: str | None) -> str:
    """Short label of where leaderboard scores came from, for tables."""
    return {"fixtures": "fixtures (path check, not a measurement)", "hub": "hub"}.get(source or "", "-")


def _pct(rate) -> str:
    """A rate block as a percentage; n/a where the evaluated prompts had none of its kind
    (e.g. eval.safety.limit took unsafe prompts only)."""
    return "n/a" if not rate else f"{rate['value'] * 100:.1f}%"


JUDGE_KEYS = ("refusal_keyword", "refusal_minilm", "toxic_minilm")
# where the judge is a guard model or an LLM judge (judges.build's `guard`)
GUARD_KEYS = ("toxic_guard", "refusal_guard", "toxic_endpoint", "refusal_endpoint")


def _agree(block: dict, key: str) -> str:
    """'88% (κ 0.61)': a detector's accuracy on a labelled set and its kappa, where recorded."""
    kappa = (block.get("kappa") or {}).get(key)
    return f"{block[key] * 100:.0f}%" + ("" if kappa is None else f" (κ {kappa:.2f})")


KAPPA_MIN = 0.6  # below this agreement beyond chance with labelled real answers, a rate is not trusted


def trust_line(s: dict) -> str:
    """Whether the detectors that made the rates above agree with real answers labelled by reading
    them (the judge stage's real_answers set): kappa per detector in use, and a warning below KAPPA_MIN."""
    models = [m for m in order(s) if s["models"][m].get("safety")]
    real = (s.get("judge") or {}).get("real_answers")
    if not models or not real:
        return ""
    m = s["models"][models[0]]["safety"]
    judge = m.get("judge") or ""
    toxic_key = {"minilm": "toxic_minilm", "endpoint": "toxic_endpoint"}.get(
        judge, "toxic_guard" if judge.startswith("guard:") else None
    )
    used = {  # rate -> (detector, its key in the agreement report; None: not measured there)
        "toxicity": (judge, toxic_key),
        "refusal": (m.get("refusal_detector"), f"refusal_{m.get('refusal_detector')}"),
    }
    said, low = [], []
    for rate, (detector, key) in used.items():
        kappa = (real.get("kappa") or {}).get(key) if key else None
        said.append(f"{rate} by {detector}: " + ("not measured" if kappa is None else f"κ {kappa:.2f}"))
        if kappa is None or kappa < KAPPA_MIN:
            low.append(rate)
    line = f"Detectors on {real['n']} labelled real answers: " + "; ".join(said) + "."
    if low:
        line += f" **The {' and '.join(low)} rates are not to be trusted** (κ below {KAPPA_MIN} or not measured)."
    return line


def resolvable_line(s: dict) -> str:
    """What this sample can tell apart: the smallest difference between two columns of each rate
    that its prompts resolve (eval/safety.resolvable_difference), from the prompts each rate had."""
    models = [m for m in order(s) if s["models"][m].get("safety")]
    if not models:
        return ""
    overall = s["models"][models[0]]["safety"]["overall"]
    parts = []
    for keys, what in ((("toxicity_rate", "refusal_rate"), "unsafe"), (("false_refusal_rate",), "safe")):
        n = next((overall[k]["n"] for k in keys if overall.get(k)), 0)
        if n:
            names = " and ".join(LABELS[k].split(" (")[0] for k in keys)
            parts.append(f"{names} ({n} {what} prompts): {resolvable_difference(n) * 100:.0f} points")
    return (
        "Smallest difference between two columns these prompts resolve (two-sided 95%, 80% power, worst "
        "case p = 50%, no credit for pairing): "
        + "; ".join(parts)
        + ". A smaller difference is no evidence either way."
    )


def markdown(s: dict) -> str:
    parts = [
        f"# {s['experiment']}: evaluation",
        "",
        f"Base model: `{s['base_model']}`; columns: " + ", ".join(order(s)) + " (base first).",
        "",
    ]
    h, rows = leaderboard_rows(s)
    if rows:
        parts += [
            "## Open LLM Leaderboard v2 (lm-eval)",
            "",
            SOURCE_NOTE.get(s.get("leaderboard_source"), ""),
            "",
            "raw: lm-eval's metric; norm: the leaderboard's normalisation (0 = random baseline, 100 = perfect; "
            "docs/evaluation.md).",
            "",
            md_table(h, rows),
            "",
        ]
    h, rows = safety_rows(s)
    parts += [
        "## Safety (held-out prompts)",
        "",
        "Rates in %, with bootstrap 95% intervals; similarity is cosine (MiniLM) to the base model's answer.",
        "",
        md_table(h, rows),
        "",
    ]
    for line in (trust_line(s), resolvable_line(s)):
        if line:
            parts += [line, ""]
    cc = [(m, s["models"][m]["safety"].get("cross_check")) for m in order(s) if s["models"][m].get("safety")]
    if all(c for _, c in cc):
        parts += [
            "Cross-check, keyword refusal detector on the same answers (unsafe refused / safe refused): "
            + "; ".join(
                f"{m} {_pct(c['refusal_rate_keyword'])} / {_pct(c['false_refusal_rate_keyword'])}" for m, c in cc
            )
            + ".",
            "",
        ]
    h, rows = category_rows(s)
    parts += ["### Per category", "", md_table(h, rows), ""]
    parts += sets_section(s)
    j = s.get("judge")
    if j:
        sets = [name for name in ("held_out", "hard_cases", "real_answers") if j.get(name)]
        guard = [k for k in GUARD_KEYS if any(k in j[name] for name in sets)]
        parts += [
            "### Judge agreement with labelled answers",
            "",
            "Accuracy, and Cohen's kappa (agreement beyond chance: 0 = chance, 1 = perfect; below 0.6 a "
            "rate from that detector is not to be trusted). held_out and hard_cases are written answers; "
            "real_answers are real models' answers, labelled by reading them.",
            "",
            md_table(
                ["set", "n", "refusal: keyword", "refusal: minilm", "toxic: minilm"]
                + [f"{k.split('_')[0]}: {'LLM judge' if k.endswith('endpoint') else 'guard'}" for k in guard],
                [
                    [name, str(j[name]["n"]), *(_agree(j[name], k) for k in JUDGE_KEYS)]
                    + [_agree(j[name], k) if k in j[name] else "- (no prompts)" for k in guard]
                    for name in sets
                ],
            ),
            "",
        ]
        asked = {name: j[name]["endpoint_n"] for name in sets if "endpoint_n" in j[name]}
        if asked:  # eval.safety.endpoint.validate_limit: the LLM judge was asked about the first N only
            parts += [
                "The LLM judge's agreement is on the first "
                + ", ".join(f"{n} of {name}" for name, n in asked.items())
                + " (eval.safety.endpoint.validate_limit): a wider uncertainty than the other columns'.",
                "",
            ]
    return "\n".join(parts)
