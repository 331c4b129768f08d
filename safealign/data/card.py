"""`make data-card NAME=...`: a dataset card for an experiment's built data (experiments/<NAME>/data/).

Written from the data stage's own files, nothing recomputed from the source: where the rows came
from (source, format and what the import skipped), counts by split, label, category and subset,
the rows each training stage got, length histograms (PNG), a few examples per label, and the
SHA-256 of every file, so that a card identifies the exact data a run trained and was tested on.
Output: experiments/<NAME>/data_card.md and data_card/lengths.png.
"""

from __future__ import annotations

import json
from pathlib import Path

from safealign.core import fsutil

EXAMPLES = 2  # rows shown per split and label
CLIP = 160  # characters of each text shown


def _clip(text: str | None) -> str:
    if text is None:
        return "(none)"
    t = " ".join(text.split()).replace("|", "\\|")
    return t if len(t) <= CLIP else t[: CLIP - 1] + "…"


def lengths_plot(splits: dict[str, list[dict]], path: Path) -> None:
    """Words per prompt, chosen and rejected answer, one panel each, a histogram per split."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fields = ("prompt", "chosen", "rejected")
    fig, axes = plt.subplots(1, len(fields), figsize=(12, 3.2))
    for ax, f in zip(axes, fields):
        for split, rows in splits.items():
            words = [len(r[f].split()) for r in rows if r.get(f)]
            if words:
                ax.hist(words, bins=20, alpha=0.6, label=f"{split} ({len(words)})")
        ax.set_title(f"{f}: words")
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def card(exp_name: str, data_dir: Path, recipe_data: dict, out: Path) -> str:
    """The card's Markdown for the built data in `data_dir`; the plot goes beside `out`."""
    counts = json.loads((data_dir / "counts.json").read_text())
    prov = json.loads((data_dir / "provenance.json").read_text()) if (data_dir / "provenance.json").exists() else {}
    test = [json.loads(line) for line in (data_dir / "test.jsonl").read_text().splitlines() if line.strip()]
    sft = [json.loads(line) for line in (data_dir / "sft.jsonl").read_text().splitlines() if line.strip()]
    dpo = {r["prompt"][-1]["content"]: r for r in map(json.loads, (data_dir / "dpo.jsonl").read_text().splitlines())}
    train = [
        {
            "prompt": r["messages"][0]["content"],
            "chosen": r["messages"][1]["content"],
            "rejected": (dpo.get(r["messages"][0]["content"], {}).get("rejected") or [{}])[-1].get("content"),
        }
        for r in sft
    ]
    gen = counts.get("generate")
    source = (
        f"generated from `{recipe_data['generate']['prompts']}` (data.generate)"
        if gen and recipe_data.get("generate")
        else f"`{recipe_data.get('source')}`, format `{recipe_data.get('format', 'canonical')}`"
    )
    lines = [f"# Data card: {exp_name}", ""]
    lines += [
        f"- source: {source}",
        *(f"- {s}: `{where}`" for s, where in counts.get("source", {}).items()),
        f"- built: {prov.get('time', '?')} by safealign at {prov.get('git', {}).get('commit', '?')[:12]}",
        "",
    ]
    if counts.get("import"):
        imp = counts["import"]
        lines += ["## Import", "", "| split | read | rows | skipped |", "|---|---|---|---|"]
        for s in ("train", "test"):
            rep = imp.get(s, {})
            skipped = ", ".join(f"{k}: {v}" for k, v in rep.get("skipped", {}).items()) or "none"
            lines.append(f"| {s} | {rep.get('read')} | {rep.get('rows')} | {skipped} |")
        cats = recipe_data.get("categories") or {}
        if cats:
            lines += ["", "Category table (data.categories): " + ", ".join(f"`{k}` -> `{v}`" for k, v in cats.items())]
        lines.append("")
    if gen:
        lines += _generation(gen, recipe_data.get("generate") or {})
    lines += ["## Counts", "", "| split | rows | safe | unsafe |", "|---|---|---|---|"]
    for s in ("train", "test"):
        c = counts[s]
        lines.append(f"| {s} | {c['rows']} | {c['safe']} | {c['unsafe']} |")
    cats = sorted(set(counts["train"]["by_category"]) | set(counts["test"]["by_category"]))
    lines += ["", "| category | train | test |", "|---|---|---|"]
    lines += [
        f"| {k} | {counts['train']['by_category'].get(k, 0)} | {counts['test']['by_category'].get(k, 0)} |"
        for k in cats
    ]
    subsets = sorted(set(counts["train"]["by_subset"]) | set(counts["test"]["by_subset"]))
    lines += ["", "| subset | train | test |", "|---|---|---|"]
    lines += [
        f"| {k} | {counts['train']['by_subset'].get(k, 0)} | {counts['test']['by_subset'].get(k, 0)} |" for k in subsets
    ]
    lines += ["", "Rows each training stage gets:", ""]
    lines += [
        f"- `{name}.jsonl`: {v['rows']} rows"
        + (f" ({v['desirable']} desirable, {v['undesirable']} undesirable)" if "desirable" in v else "")
        for name, v in counts.get("stages", {}).items()
    ]
    plot = out.parent / "data_card" / "lengths.png"
    lengths_plot({"train": train, "test": test}, plot)
    lines += ["", "## Lengths", "", f"![lengths]({plot.relative_to(out.parent)})", ""]
    lines += ["## Examples", ""]
    for split, rows in (("test", test), ("train", [{**r, "safe": r["rejected"] is None} for r in train])):
        for safe in (False, True):
            picked = [r for r in rows if r.get("safe") == safe][:EXAMPLES]
            if not picked:
                continue
            lines += [
                f"{split}, {'safe' if safe else 'unsafe'} prompts:",
                "",
                "| prompt | chosen | rejected |",
                "|---|---|---|",
            ]
            lines += [f"| {_clip(r['prompt'])} | {_clip(r['chosen'])} | {_clip(r.get('rejected'))} |" for r in picked]
            lines.append("")
    lines += ["## Files", "", "| file | SHA-256 |", "|---|---|"]
    lines += [f"| `{p.name}` | `{fsutil.sha256_file(p)}` |" for p in sorted(data_dir.glob("*.jsonl"))]
    for s, h in sorted(prov.get("data_sha256", {}).items()):
        lines.append(f"| source {s} | `{h}` |")
    return "\n".join(lines) + "\n"


def _generation(gen: dict, cfg: dict) -> list[str]:
    """The generation stage's section: who answered, how many were asked or cached, what was dropped."""
    lines = ["## Generation", "", "| answers | model | endpoint | requests | cached | asked | retries | seconds |"]
    lines.append("|---|---|---|---|---|---|---|---|")
    for role in ("answers", "refusals"):
        g = gen.get(role, {})
        lines.append(
            f"| {role} | `{g.get('model')}` | {g.get('endpoint')} | {g.get('requests')} | {g.get('cached')} | "
            f"{g.get('asked')} | {g.get('retries')} | {g.get('seconds')} |"
        )
    dropped = ", ".join(f"{k}: {v}" for k, v in gen.get("dropped", {}).items()) or "none"
    ref = cfg.get("refusals") or {}
    who = (
        "the refusal each unsafe prompt carries in the list"
        if ref.get("backend") == "prompts"
        else "the refusal model's"
    )
    lines += [
        "",
        f"Route: rejected answers (unsafe prompts) and chosen answers (safe prompts) are "
        f"`{(gen.get('answers') or {}).get('model')}`'s own; "
        f"the preferred answer to an unsafe prompt is {who}.",
        "",
        f"Prompts {gen['prompts']['train']} train / {gen['prompts']['test']} test; rows kept {gen['rows']['train']} / "
        f"{gen['rows']['test']}; dropped by the `{gen.get('filter')}` filter: {dropped} (the gen stage's dropped.jsonl; "
        "the filter chooses training rows, every held-out prompt is kept).",
    ]
    system = ref.get("system_prompt") if ref.get("backend") != "prompts" else None
    if system:
        lines += ["", "Refusal instruction (system prompt):", "", "> " + " ".join(system.split())]
    return lines + [""]


def write(exp) -> Path:
    """experiments/<NAME>/data_card.md for the experiment `exp` (safealign.plan.experiment.Experiment)."""
    from safealign.config import recipe as recipe_mod

    data_dir = exp.dir("data")
    if not fsutil.is_done(data_dir):
        raise FileNotFoundError(f"{data_dir}: the data stage has not run; `make exp` (or the data stage) first")
    out = exp.folder / "data_card.md"
    text = card(exp.name, data_dir, recipe_mod.to_dict(exp.recipe)["data"], out)
    fsutil.write_text_atomic(out, text)
    return out
