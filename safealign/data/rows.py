"""The canonical safety dataset and the dataset build stage.

Canonical schema (docs/data.md), one JSON object per line:

    id        str   unique within the file
    prompt    str   the user's request
    safe      bool  whether the prompt is safe to answer
    category  str   e.g. a LionGuard category (hateful, harassment, ...) or a safe topic
    chosen    str   the preferred response (a refusal for unsafe prompts, an answer for safe)
    rejected  str   the compliant response to an unsafe prompt; null/absent for safe prompts
    subset    str   optional tag reported separately in evaluation (e.g. out_of_template)
    meta      dict  optional provenance, e.g. which model wrote each answer (the generation stage)

The build turns it into what each stage needs:
    sft.jsonl  {"messages": [user, assistant(chosen)]}                 every train row
    kto.jsonl  {"prompt": [user], "completion": [assistant], "label"}  unsafe -> refusal (True)
               and compliance (False); safe -> answer (True), labels interleaved
    kto_paired.jsonl  the same from unsafe rows only ("symmetric" KTO)
    dpo.jsonl  {"prompt": [user], "chosen": [..], "rejected": [..]}    unsafe rows (paired) only
    test.jsonl the held-out canonical rows, for evaluation
    counts.json rows per split, label and category
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

from safealign.core import fsutil

FIELDS = {
    "id": str,
    "prompt": str,
    "safe": bool,
    "category": str,
    "chosen": str,
    "rejected": (str, type(None)),
    "subset": (str, type(None)),
    "meta": (dict, type(None)),
}
REQUIRED = ("id", "prompt", "safe", "category", "chosen")
SPLITS = ("train", "test")


class DataError(ValueError):
    pass


def _tname(t) -> str:
    return " or ".join(x.__name__.replace("NoneType", "null") for x in (t if isinstance(t, tuple) else (t,)))


def validate_row(row, where: str) -> dict:
    """Check one canonical row; `where` is 'file:line' for the error message."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    for key in REQUIRED:
        if key not in row:
            raise DataError(f"{where}: field '{key}' is missing (required: {', '.join(REQUIRED)})")
    for key, value in row.items():
        if key not in FIELDS:
            raise DataError(f"{where}: field '{key}' is not in the schema ({', '.join(FIELDS)})")
        want = FIELDS[key]
        if not isinstance(value, want):
            raise DataError(f"{where}: field '{key}' must be {_tname(want)}, got {type(value).__name__} ({value!r})")
    for key in ("id", "prompt", "chosen", "category"):
        if not row[key].strip():
            raise DataError(f"{where}: field '{key}' is empty")
    if not row["safe"] and not (row.get("rejected") or "").strip():
        raise DataError(f"{where}: field 'rejected' is required for an unsafe prompt (safe: false)")
    return row


def _json_lines(path: Path):
    """(line number, 'file:line', object) for each non-blank line of a UTF-8 JSONL file."""
    try:
        text = fsutil.read_utf8(path)
    except fsutil.EncodingError as e:
        raise DataError(str(e)) from None
    for n, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            yield n, where, json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
        except RecursionError:
            raise DataError(f"{where}: not valid JSON (nested too deeply)") from None


def read_jsonl(path: Path) -> list[dict]:
    """Validated canonical rows of a JSONL file (UTF-8, a byte-order mark allowed)."""
    rows, ids = [], {}
    for n, where, row in _json_lines(path):
        validate_row(row, where)
        if row["id"] in ids:
            raise DataError(f"{where}: field 'id' {row['id']!r} repeats line {ids[row['id']]}")
        ids[row["id"]] = n
        rows.append(row)
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


def load_canonical(
    source: str, root: Path = Path("."), fmt: str = "canonical", categories: dict | None = None, names=None
) -> tuple[dict[str, list[dict]], dict[str, str]]:
    """Rows per split and a description of where each split came from (load_source)."""
    splits, origin, _ = load_source(source, root, fmt, categories, names)
    return splits, origin


def load_source(
    source: str, root: Path = Path("."), fmt: str = "canonical", categories: dict | None = None, names=None
) -> tuple[dict[str, list[dict]], dict[str, str], dict]:
    """Rows per split, a description of where each split came from, and the import report.

    `source` is a local folder holding train.jsonl and test.jsonl, or an HF dataset id with train
    and test splits; in the canonical schema, or (`fmt`) a public dataset's own, converted by
    safealign/data/importers.py with the `categories` table (report: rows read, written, skipped by reason).
    `names`: a hub dataset's own split names for train and test ({"train": "30k_train"}).
    """
    from safealign.core import refs

    local = refs.path(source, root)
    if local.exists():
        missing = [s for s in SPLITS if not (local / f"{s}.jsonl").exists()]
        if missing:
            raise DataError(f"{local}: missing {', '.join(m + '.jsonl' for m in missing)}")
        origin = {s: str(local / f"{s}.jsonl") for s in SPLITS}
        if fmt == "canonical":
            return {s: read_jsonl(local / f"{s}.jsonl") for s in SPLITS}, origin, {}
        raw = {s: _raw_jsonl(local / f"{s}.jsonl") for s in SPLITS}
    else:
        if refs.is_path(source, root) or source.endswith(".jsonl"):
            raise DataError(f"data.source: {source}: no such folder")
        import datasets  # a hub id: the same validation, row by row

        ds = datasets.load_dataset(source)
        name = {s: (names or {}).get(s, s) for s in SPLITS}
        for split in SPLITS:
            if name[split] not in ds:
                raise DataError(
                    f"data.source: {source}: dataset has no '{name[split]}' split (has {', '.join(ds)}); "
                    "data.splits maps train and test to its names"
                )
        origin = {s: f"hf://{source}[{name[s]}]" for s in SPLITS}
        if fmt == "canonical":
            out = {
                s: [validate_row(dict(r), f"{source}[{name[s]}] row {i + 1}") for i, r in enumerate(ds[name[s]])]
                for s in SPLITS
            }
            return out, origin, {}
        raw = {s: [dict(r) for r in ds[name[s]]] for s in SPLITS}
    from safealign.data import importers

    out, report = {}, {"format": fmt}
    for s in SPLITS:
        rows, rep = importers.convert(fmt, raw[s], categories or {}, s)
        if not rows:
            raise DataError(
                f"data.source: {source}[{s}]: no row converted from format {fmt} "
                f"({rep.read} read; skipped: {dict(rep.skipped) or 'none'}); see data.categories"
            )
        out[s] = [validate_row(r, f"{origin[s]} ({fmt}) row {r['id']}") for r in rows]
        report[s] = rep.as_dict()
    return out, origin, report


def _raw_jsonl(path: Path) -> list[dict]:
    """A public dataset's rows, JSON objects one per line, not yet in the canonical schema."""
    rows = []
    for _, where, row in _json_lines(path):
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows


def _user(text):
    return [{"role": "user", "content": text}]


def _assistant(text):
    return [{"role": "assistant", "content": text}]


def interleave(desirable: list, undesirable: list) -> list:
    """Merge two lists keeping their ratio even along the result (Bresenham-style).

    trl estimates KTO's KL reference point by pairing each prompt with another row's
    completion in the same batch; long runs of one label would bias that estimate.
    """
    out, i, j = [], 0, 0
    total = len(desirable) + len(undesirable)
    for k in range(1, total + 1):
        want_u = round(k * len(undesirable) / total) if total else 0
        if j < want_u and j < len(undesirable):
            out.append(undesirable[j])
            j += 1
        elif i < len(desirable):
            out.append(desirable[i])
            i += 1
        else:
            out.append(undesirable[j])
            j += 1
    return out


def kto_rows(rows: list[dict], rng: random.Random, paired_only: bool) -> list[dict]:
    desirable, undesirable = [], []
    for r in rows:
        if r["safe"] and paired_only:
            continue
        desirable.append(
            {"prompt": _user(r["prompt"]), "completion": _assistant(r["chosen"]), "label": True, "id": r["id"]}
        )
        if not r["safe"]:
            undesirable.append(
                {"prompt": _user(r["prompt"]), "completion": _assistant(r["rejected"]), "label": False, "id": r["id"]}
            )
    rng.shuffle(desirable)
    rng.shuffle(undesirable)
    return interleave(desirable, undesirable)


def build_stage_rows(train: list[dict], seed: int) -> dict[str, list[dict]]:
    """Pure: canonical train rows -> rows per stage format (deterministic from the seed)."""
    rng = random.Random(seed)
    rows = list(train)
    rng.shuffle(rows)
    sft = [{"messages": _user(r["prompt"]) + _assistant(r["chosen"]), "id": r["id"]} for r in rows]
    kto = kto_rows(rows, rng, paired_only=False)
    kto_paired = kto_rows(rows, rng, paired_only=True)
    dpo = [
        {
            "prompt": _user(r["prompt"]),
            "chosen": _assistant(r["chosen"]),
            "rejected": _assistant(r["rejected"]),
            "id": r["id"],
        }
        for r in rows
        if r.get("rejected")
    ]
    return {"sft": sft, "kto": kto, "kto_paired": kto_paired, "dpo": dpo}


def counts(splits: dict[str, list[dict]], stage_rows: dict[str, list[dict]]) -> dict:
    out = {}
    for split, rows in splits.items():
        out[split] = {
            "rows": len(rows),
            "safe": sum(r["safe"] for r in rows),
            "unsafe": sum(not r["safe"] for r in rows),
            "by_category": dict(sorted(Counter(r["category"] for r in rows).items())),
            "by_subset": dict(sorted(Counter(r.get("subset") or "-" for r in rows).items())),
        }
    out["stages"] = {"sft": {"rows": len(stage_rows["sft"])}, "dpo": {"rows": len(stage_rows["dpo"])}}
    for name in ("kto", "kto_paired"):
        rows = stage_rows[name]
        out["stages"][name] = {
            "rows": len(rows),
            "desirable": sum(r["label"] for r in rows),
            "undesirable": sum(not r["label"] for r in rows),
        }
    return out


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def build(
    source: str,
    seed: int,
    out_dir: Path,
    root: Path = Path("."),
    fmt: str = "canonical",
    categories: dict | None = None,
    names: dict | None = None,
) -> dict:
    """Validate the canonical data (converted first from a public format) and write every stage's
    files into `out_dir`."""
    splits, origin, imported = load_source(source, root, fmt, categories, names)
    stage_rows = build_stage_rows(splits["train"], seed)
    for name, rows in stage_rows.items():
        write_jsonl(out_dir / f"{name}.jsonl", rows)
    write_jsonl(out_dir / "train.jsonl", splits["train"])  # canonical: the judge stage learns from these
    write_jsonl(out_dir / "test.jsonl", splits["test"])
    c = counts(splits, stage_rows)
    c["source"] = origin
    if imported:
        c["import"] = imported
    (out_dir / "counts.json").write_text(json.dumps(c, indent=2) + "\n")
    return c


def unmet_needs(recipe, c: dict) -> list[str]:
    """What the recipe's stages need from the built data (counts.json `c`) and it lacks; checked
    right after the data stage, so no training starts on data a later stage cannot use.
    What each training kind needs is its `needs` in safealign/config/kinds.py."""
    from safealign.config import kinds

    out = []
    for stage in recipe.stages:
        kind = kinds.get(stage)
        f = kind.data_file(getattr(recipe, stage))
        if kind.needs == "prompts":  # an online kind samples answers to unsafe and safe training prompts
            unsafe, safe = c["train"]["unsafe"], c["train"]["rows"] - c["train"]["unsafe"]
            if not unsafe or not safe:
                out.append(
                    f"{stage}: {f} has {unsafe} unsafe and {safe} safe prompts; {kind.title} samples answers "
                    "to both (refusals learnt on unsafe prompts, helpful answers on safe ones)"
                )
            continue
        n = c["stages"][f.removesuffix(".jsonl")]
        if kind.needs == "rows" and not n["rows"]:
            out.append(f"{stage}: {f} has no rows")
        elif kind.needs == "pairs" and not n["rows"]:
            out.append(
                f"{stage}: {f} has no paired rows (unsafe prompts with a chosen and a rejected answer); "
                f"{kind.title} needs pairs"
            )
        elif kind.needs == "labels" and (not n["desirable"] or not n["undesirable"]):
            out.append(
                f"{stage}: {f} has {n['desirable']} desirable and {n['undesirable']} undesirable rows; "
                f"{kind.title} needs both labels (unsafe prompts with a rejected answer give the undesirable ones)"
            )
    if not c["train"]["unsafe"]:
        out.append(
            "judge: the train split has no unsafe rows; the safety judge learns refusals and compliant "
            "answers from them"
        )
    if not c["test"]["rows"]:
        out.append("safety: the test split has no rows to evaluate on")
    return out
