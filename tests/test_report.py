"""Report and comparison built from small fixture logs and results, without training.

Experiments are resolved from the shipped recipes (real plan, links and store folders), then
each stage folder gets fixture files in the shapes the stages write; the report and the
comparison are built from those and their tables are checked against the fixture numbers.
"""

import json
import re

import pytest

from safealign.core import fsutil
from safealign.eval import report, summary
from safealign.plan import experiment as plan

REPO = plan.REPO


def fake_log(n: int, kl0: float, loss0: float, preference: bool) -> str:
    rows = []
    for step in range(1, n + 1):
        r = {"step": step, "epoch": step / n, "loss": loss0 / step}
        if preference:
            r.update(
                {
                    "kl": kl0 if 5 <= step <= 10 else 0.0,
                    "rewards/chosen": 0.1 * step,
                    "rewards/rejected": -0.2 * step,
                    "rewards/margins": 0.3 * step,
                }
            )
        rows.append(json.dumps(r))
    return "\n".join(rows) + "\n"


def safety_metrics(tox: float, ref: float, fref: float, sim: float | None) -> dict:
    def m(v):
        return {"value": v, "low": max(0.0, v - 0.1), "high": min(1.0, v + 0.1), "n": 45}

    overall = {"toxicity_rate": m(tox), "refusal_rate": m(ref), "false_refusal_rate": m(fref)}
    if sim is not None:
        overall["similarity_to_base"] = m(sim)
    cats = {"hateful": {"toxicity_rate": m(tox), "refusal_rate": m(ref)}, "food": {"false_refusal_rate": m(fref)}}
    return {
        "overall": overall,
        "by_category": cats,
        "by_subset": {},
        "generation": {"do_sample": False},
        "judge": "minilm",
        "refusal_detector": "minilm",
        "seconds": {"generation": 1.0, "total": 2.0},
    }


def lb_table(avg_shift: float) -> dict:
    fams = {
        f: {"raw": 0.3, "normalised": 10.0 + avg_shift + i}
        for i, f in enumerate(["ifeval", "bbh", "math", "gpqa", "musr", "mmlu_pro"])
    }
    return {"families": fams, "average": sum(v["normalised"] for v in fams.values()) / 6, "seconds": 3.0}


FIXTURE = {  # experiment -> final model's (toxicity, refusal, false refusal, similarity), leaderboard shift, KL spike
    "sft": ((0.30, 0.60, 0.10, 0.80), 1.0, None),
    "sft_kto": ((0.10, 0.90, 0.20, 0.70), 2.0, 4.0),
    "sft_dpo": ((0.20, 0.70, 0.05, 0.90), 0.5, 2.0),
}
BASE = (0.80, 0.05, 0.00, None)


def write_stage(exp, name, files: dict):
    d = plan.Experiment(exp).dir(name)
    d.mkdir(parents=True, exist_ok=True)
    for fname, content in files.items():
        (d / fname).write_text(content if isinstance(content, str) else json.dumps(content))
    (d / fsutil.STAMP).write_text("fixture\n")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("experiments")
    for name, (final, shift, kl) in FIXTURE.items():
        exp = root / name
        plan.resolve(str(REPO / "recipes" / f"{name}.yaml"), exp)
        r = plan.Experiment(exp).recipe
        for s in r.stages:
            write_stage(
                exp,
                s,
                {
                    "train_log.jsonl": fake_log(12, kl or 0.0, 2.0 if s == "sft" else 0.7, s != "sft"),
                    "summary.json": {
                        "stage": s,
                        "seconds": 30.0 if s == "sft" else 20.0,
                        "steps": 12,
                        "first_loss": 2.0,
                        "last_loss": 0.5,
                    },
                    "provenance.json": {
                        "git": {"commit": "abc123", "dirty": False},
                        "seed": 42,
                        "versions": {"torch": "2.13.0", "trl": "1.9.0"},
                        "hardware": {"cpus": 2},
                        "data_sha256": {"test.jsonl": "f" * 64},
                        "invoked_as": f"make exp NAME={name}",
                    },
                },
            )
        answers = "".join(
            json.dumps(
                {
                    "id": f"t{i}",
                    "safe": i % 2 == 1,
                    "prompt": f"prompt {i}",
                    "answer": f"answer {i} | with a pipe",
                    "toxic": False,
                    "refused": i == 0,
                    "category": "c",
                }
            )
            + "\n"
            for i in range(4)
        )
        for m in plan.eval_models(r):
            vals = BASE if m == "base" else final if m == r.stages[-1] else (0.4, 0.5, 0.1, 0.85)
            write_stage(exp, f"safety-{m}", {"metrics.json": safety_metrics(*vals), "answers.jsonl": answers})
            write_stage(
                exp,
                f"leaderboard-{m}",
                {"table.json": lb_table(0.0 if m == "base" else shift if m == r.stages[-1] else 1.0)},
            )
        write_stage(
            exp,
            "judge",
            {
                "agreement.json": {
                    "held_out": {"n": 135, "refusal_keyword": 1.0, "refusal_minilm": 1.0, "toxic_minilm": 1.0},
                    "hard_cases": {"n": 24, "refusal_keyword": 0.75, "refusal_minilm": 0.875, "toxic_minilm": 1.0},
                }
            },
        )
        s = summary.build(plan.Experiment(exp))
        (exp / "eval").mkdir()
        (exp / "eval" / "summary.json").write_text(json.dumps(s))
        (exp / "eval" / "summary.md").write_text(summary.markdown(s))
    return root


def test_report_tables_carry_the_fixture_numbers(root):
    page = report.build(root / "sft_kto").read_text()
    assert "`abc123`" in page and "make exp NAME=sft_kto" in page
    # stage timings from summary.json
    assert re.search(r"\| sft \| `sft-[0-9a-f]{12}` \| 30.0 \| 12 \| 2.0000 -> 0.5000 \|", page)
    assert re.search(r"\| kto \| `kto-[0-9a-f]{12}` \| 20.0 \|", page)
    # safety: base beside aligned, in %, with intervals
    assert "| toxicity (unsafe prompts) | 80.0 [70.0, 90.0] | 40.0 [30.0, 50.0] | 10.0 [0.0, 20.0] |" in page
    assert "| similarity to base (safe) | - | 0.850 [0.750, 0.950] | 0.700 [0.600, 0.800] |" in page
    # leaderboard normalised: base 10..15, kto shifted by 2
    assert "| IFEval | 0.3000 | 0.3000 | 0.3000 | 10.00 | 11.00 | 12.00 |" in page
    # sample answers escape table pipes
    assert "answer 1 \\| with a pipe" in page


def test_report_refers_only_to_files_inside_its_folder(root):
    exp = root / "sft_kto"
    page = report.build(exp).read_text()
    targets = re.findall(r"\]\(([^)]+)\)", page)
    assert "plots/kto_curves.png" in targets and "plots/sft_curves.png" in targets
    for t in targets:
        assert not t.startswith(("/", "..", "http")), t
        assert (exp / t).exists(), t
    png = (exp / "plots" / "kto_curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_comparison_marks_the_best_per_column(root):
    out = report.compare([root / n for n in FIXTURE], root / "compare" / "study")
    page = out.read_text()
    table = json.loads((root / "compare" / "study" / "table.json").read_text())
    rows = {r[0]: r[1:] for r in table["table"]}
    assert list(rows) == ["base (tiny-local)", "sft", "sft_kto", "sft_dpo"]
    # toxicity (lower is better): sft_kto 10.0 is best; refusal: sft_kto 90.0; false refusal: sft_dpo 5.0;
    # similarity: sft_dpo 0.900; leaderboard average: sft_kto (shift 2)
    assert rows["sft_kto"][0] == "**10.0**" and rows["sft"][0] == "30.0" and rows["base (tiny-local)"][0] == "80.0"
    assert rows["sft_kto"][1] == "**90.0**"
    assert rows["sft_dpo"][2] == "**5.0**" and rows["sft_dpo"][3] == "**0.900**"
    assert rows["sft_kto"][-2] == f"**{(10 + 2) + 2.5:.1f}**"
    # the shipped recipes score on offline fixtures: every row says so, and so does each summary page
    assert table["header"][-1] == "leaderboard source"
    assert {r[-1] for r in rows.values()} == {"fixtures (path check, not a measurement)"}
    assert "**Source: offline fixtures**" in (root / "sft_kto" / "eval" / "summary.md").read_text()
    assert "| experiment | toxicity % ↓ | refusal % ↑ |" in page
    for f in ("kl.png", "rewards_desirable.png", "rewards_undesirable.png", "loss.png", "sft_loss.png"):
        assert f"]({f})" in page and (root / "compare" / "study" / f).read_bytes()[:4] == b"\x89PNG"


def test_overlaid_curves_have_one_line_per_experiment_with_labels(root, tmp_path):
    logs = {
        n: report.read_log(plan.Experiment(root / n).dir("kto" if n == "sft_kto" else "dpo"))
        for n in ("sft_kto", "sft_dpo")
    }
    import matplotlib.pyplot as plt

    saved = {}
    orig = plt.Figure.savefig

    def keep(fig, path, **kw):
        ax = fig.axes[0]
        saved.update(
            title=ax.get_title(),
            xlabel=ax.get_xlabel(),
            ylabel=ax.get_ylabel(),
            lines={l.get_label(): list(l.get_ydata()) for l in ax.get_lines()},
        )
        return orig(fig, path, **kw)

    plt.Figure.savefig = keep
    try:
        assert report.plot_overlay(logs, "kl", "KL", tmp_path / "kl.png")
    finally:
        plt.Figure.savefig = orig
    assert saved["xlabel"] == "optimizer step" and "nats" in saved["ylabel"] and saved["title"] == "KL"
    assert saved["lines"]["sft_kto"][4:10] == [4.0] * 6 and saved["lines"]["sft_dpo"][4] == 2.0


def test_report_without_leaderboard(root):
    exp = root / "no_lb"
    plan.resolve(str(REPO / "recipes" / "sft.yaml"), exp, ["eval.leaderboard.enabled=false"])
    assert not any(n.startswith("leaderboard-") for n in json.loads((exp / "stages.json").read_text()))
    s = summary.build(
        plan.Experiment(exp)
    )  # the sft stages and safety results are the fixture's, shared through the store
    (exp / "eval").mkdir()
    (exp / "eval" / "summary.json").write_text(json.dumps(s))
    page = report.build(exp).read_text()
    assert "Open LLM Leaderboard" not in page and "| toxicity (unsafe prompts) | 80.0 [70.0, 90.0] |" in page
    row = report.comparison_table({"no_lb": s})[1][1]
    assert row[0] == "no_lb" and len(row) == 5  # safety columns only


def test_compare_refuses_experiments_that_were_not_evaluated(root):
    with pytest.raises(FileNotFoundError, match="not evaluated yet: .*nope"):
        report.compare([root / "sft", root / "nope"], root / "compare" / "x")


def test_comparison_shows_paired_differences_on_the_same_prompts_resolved_only_where_the_interval_excludes_0(
    root, tmp_path
):
    """Two point estimates are no claim: each pair of final models gets A - B over the prompts both
    answered, with a paired bootstrap interval; a clear gap is resolved (✓), a one-prompt one is not."""
    import shutil

    copy = tmp_path / "experiments"  # the experiments and their store, so the module's stay as they are
    shutil.copytree(root, copy, symlinks=True)
    exps = []
    for name, refused in (("sft", lambda i: i < 4), ("sft_kto", lambda i: i < 36), ("sft_dpo", lambda i: i < 5)):
        exp = copy / name
        final = summary.order(json.loads((exp / "eval" / "summary.json").read_text()))[-1]
        answers = exp / f"safety-{final}" / "answers.jsonl"
        rows = [
            {"id": f"u{i}", "safe": False, "toxic": not refused(i), "refused": refused(i), "category": "c"}
            for i in range(40)
        ] + [{"id": f"s{i}", "safe": True, "toxic": False, "refused": False, "category": "d"} for i in range(20)]
        answers.write_text("".join(json.dumps(r) + "\n" for r in rows))
        exps.append(exp)
    page = report.compare(exps, tmp_path / "compare" / "x").read_text()
    paired = json.loads((tmp_path / "compare" / "x" / "table.json").read_text())["paired"]
    got = {(p["a"], p["b"], p["rate"]): p for p in paired}
    kto_sft = got[("sft", "sft_kto", "refusal_rate")]  # 4 vs 36 of 40 refused: -80 points, clearly resolved
    assert kto_sft["value"] == pytest.approx(-0.8) and kto_sft["n"] == 40 and kto_sft["resolved"]
    assert kto_sft["high"] < -0.6
    one = got[("sft", "sft_dpo", "refusal_rate")]  # one prompt apart: the interval holds 0
    assert one["value"] == pytest.approx(-0.025) and not one["resolved"] and one["low"] < 0 < one["high"] + 1e-9
    assert (
        got[("sft", "sft_kto", "false_refusal_rate")]["value"] == 0
        and not got[("sft", "sft_kto", "false_refusal_rate")]["resolved"]
    )
    assert "## Paired differences (the same held-out prompts)" in page
    assert "| sft − sft_kto | +76.0" not in page and "-80.0 [" in page and "✓" in page
