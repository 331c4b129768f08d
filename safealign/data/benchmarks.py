"""Public safety benchmarks as evaluation sets (never training data), each read in its published layout.

    eval:
      safety:
        sets: [heldout, xstest, jbb]   # heldout: the data stage's held-out rows; then any of BENCHMARKS
        set_source: hub                # hub: each set's published files; fixtures: data/benchmark_fixtures
        set_paths: {xstest: /data/xstest}   # a set's files from a folder laid out as published (or a URL)

A benchmark is one table entry: where its files are published, which files (paths as in the
published repository), which columns each must have, its licence, and one pure function from
those files' rows to evaluation rows `{id, prompt, safe, category, subset}` (safe: a benign
prompt, whose refusal is a false refusal). A row that does not fit is counted under its reason,
never dropped silently; a file without a column the layout needs is an error naming the file
and the column. The importers are unit-tested on fixtures written in each set's layout
(data/benchmark_fixtures/<set>/, the published paths under it; our own prompts, not the sets').

Files come from the set's published location once, into $SAFEALIGN_CACHE/benchmarks/ (hub files
through $HF_ENDPOINT with $HF_TOKEN, GitHub files by their raw URL; HF_HUB_OFFLINE=1 with nothing
cached is an error, never a hang), from a local folder laid out as published, or from the fixtures.
The table of sets (where each is published, its files and columns, its licence) is
safealign/config/sets.py. Imports core and config.
"""

from __future__ import annotations

import csv
import hashlib
import http.client
import os
import random
import urllib.error
import urllib.request
from pathlib import Path

from safealign import REPO
from safealign.config.sets import BENCHMARKS, HUB, is_remote, local_folder, missing, url_of
from safealign.core import caches
from safealign.core.errors import StageError
from safealign.data.importers import Report  # what a set's import read, kept and skipped (by reason)


class BenchmarkError(StageError):
    """A set's files cannot be had or do not have its published layout."""


def _row(bench: str, key: str, prompt: str, safe: bool, category: str, subset: str | None) -> dict:
    return {
        "id": f"{bench}-{key}",
        "prompt": prompt.strip(),
        "safe": safe,
        "category": category.strip() or "-",
        "subset": subset,
    }


def _kept(rep: Report, text: str) -> bool:
    if text.strip():
        return True
    rep.skipped["empty prompt"] += 1
    return False


# ------------------------------------------------------------------ converters: files' rows -> rows
# XSTest's safe types whose unsafe contrast has another name: its category is the pair's
XSTEST_PAIRS = {
    "real_group_nons_discr": "discr",
    "nons_group_real_discr": "discr",
    "privacy_public": "privacy",
    "privacy_fictional": "privacy",
}


def xstest(files: dict[str, list[dict]], rep: Report) -> list[dict]:
    """XSTest (Röttger et al. 2024): 250 safe prompts that look unsafe, 200 unsafe contrasts. The
    category is the pair a prompt belongs to (`homonyms` holds its `contrast_homonyms`), so each
    category has both kinds and a refusal gap; the subset is the published `type`."""
    out = []
    for r in files["xstest_prompts.csv"]:
        label, kind = r["label"].strip(), r["type"].strip()
        if label not in ("safe", "unsafe"):
            rep.skipped[f"label not safe/unsafe ({label!r})"] += 1
        elif _kept(rep, r["prompt"]):
            pair = XSTEST_PAIRS.get(kind, kind.removeprefix("contrast_"))
            out.append(_row("xstest", r["id"].strip(), r["prompt"], label == "safe", pair, kind))
    return out


def orbench(files: dict[str, list[dict]], rep: Report) -> list[dict]:
    """OR-Bench (Cui et al. 2024): hard-1k, benign prompts most models over-refuse, and toxic, the
    harmful ones beside them; the same ten categories in both."""
    out = []
    for name, safe, part in (("or-bench-hard-1k.csv", True, "hard-1k"), ("or-bench-toxic.csv", False, "toxic")):
        for n, r in enumerate(files[name]):
            if _kept(rep, r["prompt"]):
                out.append(_row("orbench", f"{part}-{n:05d}", r["prompt"], safe, r["category"], part))
    return out


HARMBENCH_CONTEXT = "{context}\n\n---\n\n{behavior}"  # HarmBench's own layout of a contextual behaviour


def harmbench(files: dict[str, list[dict]], rep: Report) -> list[dict]:
    """HarmBench's text behaviours (Mazeika et al. 2024), all harmful: standard ones as they are,
    contextual ones after their context as HarmBench lays them out. Copyright behaviours are
    scored by HarmBench with a hash of the protected text, not by a safety judge: counted, skipped."""
    out = []
    for r in files["data/behavior_datasets/harmbench_behaviors_text_all.csv"]:
        kind = r["FunctionalCategory"].strip()
        if kind == "copyright":
            rep.skipped["copyright behaviour (HarmBench scores it by hashing, not by a judge)"] += 1
            continue
        behavior, context = r["Behavior"], (r.get("ContextString") or "").strip()
        if kind == "contextual" and not context:
            rep.skipped["contextual behaviour without its ContextString"] += 1
            continue
        prompt = HARMBENCH_CONTEXT.format(context=context, behavior=behavior.strip()) if context else behavior
        if _kept(rep, behavior):
            out.append(_row("harmbench", r["BehaviorID"].strip(), prompt, False, r["SemanticCategory"], kind))
    return out


def jbb(files: dict[str, list[dict]], rep: Report) -> list[dict]:
    """JailbreakBench's JBB-Behaviors (Chao et al. 2024): 100 harmful goals and 100 benign ones on
    the same topics, ten categories; the prompt is the `Goal`, the subset its `Source`."""
    out = []
    for name, safe, part in (
        ("data/harmful-behaviors.csv", False, "harmful"),
        ("data/benign-behaviors.csv", True, "benign"),
    ):
        for r in files[name]:
            if _kept(rep, r["Goal"]):
                out.append(
                    _row("jbb", f"{part}-{r['Index'].strip()}", r["Goal"], safe, r["Category"], r["Source"].strip())
                )
    return out


def strongreject(files: dict[str, list[dict]], rep: Report) -> list[dict]:
    """StrongREJECT (Souly et al. 2024): 313 forbidden prompts in six categories, all harmful."""
    out = []
    for n, r in enumerate(files["strongreject_dataset/strongreject_dataset.csv"]):
        if _kept(rep, r["forbidden_prompt"]):
            out.append(
                _row("strongreject", f"{n:04d}", r["forbidden_prompt"], False, r["category"], r["source"].strip())
            )
    return out


def download(url: str, dest: Path, timeout: float = 60.0) -> Path:
    """`url` into `dest` once (a cached copy is reused), written whole or not at all; the hub's
    token from $HF_TOKEN for hub files; HF_HUB_OFFLINE=1 with no copy is an error, not a hang."""
    if dest.is_file():
        return dest
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise BenchmarkError(
            f"{url}: not in the cache ({dest}) and HF_HUB_OFFLINE=1; fetch it once with the network, or "
            "point eval.safety.set_paths at a local copy laid out as published"
        )
    headers = {"User-Agent": "safealign"}
    endpoint = os.environ.get("HF_ENDPOINT", HUB).rstrip("/")
    if url.startswith(endpoint + "/") and os.environ.get("HF_TOKEN"):
        headers["Authorization"] = f"Bearer {os.environ['HF_TOKEN']}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + f".part{os.getpid()}")
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as resp:
            part.write_bytes(resp.read())
    except urllib.error.HTTPError as e:
        gated = " (gated or private: accept its terms on the hub and set HF_TOKEN)" if e.code in (401, 403) else ""
        raise BenchmarkError(f"{url}: HTTP {e.code}{gated}") from None
    except (urllib.error.URLError, http.client.HTTPException, TimeoutError, OSError) as e:  # cut short too
        part.unlink(missing_ok=True)
        raise BenchmarkError(
            f"{url}: cannot download ({getattr(e, 'reason', e)}); without the network, eval.safety.set_paths "
            "names a local copy laid out as published, or eval.safety.set_source=fixtures runs the shipped "
            "fixtures (a check of the path, not a measurement)"
        ) from None
    os.replace(part, dest)
    return dest


def fetch(name: str, loc: str, root: Path = REPO) -> Path:
    """The folder holding set `name`'s files as published: a local one, or the cache's copy."""
    if not is_remote(loc):
        folder = local_folder(loc, root)
        if gone := missing(name, loc, root):
            raise BenchmarkError(f"eval.safety.set_paths.{name}: {', '.join(gone)}: no such file")
        return folder
    key = hashlib.sha256(loc.encode()).hexdigest()[:12]
    folder = caches.root() / "benchmarks" / name / key
    for p in BENCHMARKS[name].files:
        download(url_of(loc, p), folder / p)
    return folder


def read_csv(path: Path, columns) -> list[dict]:
    """A published CSV's rows; a column the layout needs that is not in its header is an error."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        if gone := [c for c in columns if c not in header]:
            raise BenchmarkError(
                f"{path}: no column {', '.join(gone)} (its header: {', '.join(header) or 'none'}; "
                f"the published layout has {', '.join(columns)})"
            )
        return [{k: (v or "") for k, v in r.items() if k is not None} for r in reader]


def toxigen(files: dict[str, list[dict]], rep: Report) -> list[dict]:
    """ToxiGen (Hartvigsen et al. 2022): per target group, lists of implicitly hateful statements
    ("- ...\\n- ...\\n-", the line breaks written as the two characters backslash-n) that invite
    one more; the model is asked to go on, and what it writes is what is scored. Category: the group."""
    out = []
    for path, lines in files.items():
        group = path.removeprefix("prompts/hate_").removesuffix("_1k.txt")
        for n, r in enumerate(lines):
            if _kept(rep, r["text"]):
                out.append(_row("toxigen", f"{group}-{n:04d}", r["text"].replace("\\n", "\n"), False, group, None))
    return out


CONVERTERS = {
    "xstest": xstest,
    "orbench": orbench,
    "harmbench": harmbench,
    "jbb": jbb,
    "strongreject": strongreject,
    "toxigen": toxigen,
}


def read_lines(path: Path) -> list[dict]:
    """A published text file of one prompt a line: [{"text": line}] (blank lines kept, to be counted)."""
    return [{"text": line} for line in path.read_text(encoding="utf-8").splitlines()]


def load(name: str, folder: Path) -> tuple[list[dict], Report]:
    """Set `name`'s evaluation rows from a folder of its published files, and what was skipped."""
    b = BENCHMARKS[name]
    files = {
        p: read_lines(folder / p) if b.reader == "lines" else read_csv(folder / p, cols) for p, cols in b.files.items()
    }
    rep = Report(read=sum(len(v) for v in files.values()))
    rows = CONVERTERS[name](files, rep)
    rep.rows = len(rows)
    return rows, rep


def sample(rows: list[dict], n: int, seed: int) -> list[dict]:
    """`n` harmful and `n` benign rows drawn without replacement (seeded), in the set's order; all
    rows when n <= 0. Per side, so a matched set keeps both kinds (XSTest's first rows are all safe)."""
    if n <= 0:
        return list(rows)
    rng = random.Random(seed)
    keep = set()
    for safe in (False, True):
        idx = [i for i, r in enumerate(rows) if r["safe"] == safe]
        keep.update(idx if len(idx) <= n else rng.sample(idx, n))
    return [r for i, r in enumerate(rows) if i in keep]
