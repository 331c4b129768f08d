"""The prompt sets a recipe may evaluate on (eval.safety.sets): the held-out rows and public
safety benchmarks, each with where it is published, which files (paths as in the published
repository) and which columns each must have, its licence, and whether it holds harmful and benign
prompts (a refusal gap). Where a recipe's set lives and what its stages' identities hash are
here; reading the files into prompts is safealign/data/benchmarks.py. Imports core only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from safealign import REPO
from safealign.core import fsutil

FIXTURES = REPO / "data" / "benchmark_fixtures"  # a few rows of our own in each set's layout (offline)
HELDOUT = "heldout"  # the data stage's held-out rows, not a benchmark: first in eval.safety.sets
HUB = "https://huggingface.co"  # $HF_ENDPOINT replaces it (a mirror), as huggingface_hub does


@dataclass(frozen=True)
class Benchmark:
    title: str
    base: str  # where the files are published: a hub dataset (hf://datasets/<repo>@<revision>) or a URL
    files: dict  # path as published -> the columns it must have
    licence: str
    matched: bool  # harmful and benign prompts: a refusal gap
    reader: str = "csv"  # csv: a header and its columns; lines: one prompt a line (no columns)


# ToxiGen's target groups, each a published prompt file (prompts/hate_<group>_1k.txt: 1,000 prompts)
TOXIGEN_GROUPS = (
    "asian",
    "bisexual",
    "black",
    "chinese",
    "immigrant",
    "jewish",
    "latino",
    "lgbtq",
    "mental_disability",
    "mexican",
    "middle_east",
    "muslim",
    "native_american",
    "physical_disability",
    "trans",
    "women",
)


BENCHMARKS = {
    "xstest": Benchmark(
        "XSTest",
        "https://raw.githubusercontent.com/paul-rottger/exaggerated-safety/main",
        {"xstest_prompts.csv": ("id", "prompt", "type", "label")},
        "CC-BY-4.0",
        True,
    ),
    "orbench": Benchmark(
        "OR-Bench hard-1k + toxic",
        "hf://datasets/bench-llm/or-bench@main",
        {"or-bench-hard-1k.csv": ("prompt", "category"), "or-bench-toxic.csv": ("prompt", "category")},
        "CC-BY-4.0",
        True,
    ),
    "harmbench": Benchmark(
        "HarmBench text behaviours",
        "https://raw.githubusercontent.com/centerforaisafety/HarmBench/main",
        {
            "data/behavior_datasets/harmbench_behaviors_text_all.csv": (
                "Behavior",
                "FunctionalCategory",
                "SemanticCategory",
                "ContextString",
                "BehaviorID",
            )
        },
        "MIT",
        False,
    ),
    "jbb": Benchmark(
        "JailbreakBench JBB-Behaviors",
        "hf://datasets/JailbreakBench/JBB-Behaviors@main",
        {
            "data/harmful-behaviors.csv": ("Index", "Goal", "Category", "Source"),
            "data/benign-behaviors.csv": ("Index", "Goal", "Category", "Source"),
        },
        "MIT",
        True,
    ),
    "strongreject": Benchmark(
        "StrongREJECT",
        "https://raw.githubusercontent.com/alexandrasouly/strongreject/main",
        {"strongreject_dataset/strongreject_dataset.csv": ("category", "source", "forbidden_prompt")},
        "MIT",
        False,
    ),
    # the study's toxicity claim: the model continues ToxiGen's lists of implicitly hateful
    # statements about a group; what it writes is scored by a classifier of ToxiGen's
    # (set_judges: {toxigen: classifier:tomh/toxigen_roberta}, toxic_labels: [LABEL_1])
    "toxigen": Benchmark(
        "ToxiGen hate prompts (generations)",
        "https://raw.githubusercontent.com/microsoft/TOXIGEN/main",
        {f"prompts/hate_{g}_1k.txt": () for g in TOXIGEN_GROUPS},
        "MIT (its repository's)",
        False,
        reader="lines",
    ),
}
SET_NAMES = (HELDOUT, *BENCHMARKS)


# ------------------------------------------------------------------ where a set's files are
def url_of(base: str, path: str) -> str:
    """A published file's URL: a hub dataset's through $HF_ENDPOINT, anything else as written."""
    if base.startswith("hf://datasets/"):
        repo, _, rev = base.removeprefix("hf://datasets/").partition("@")
        endpoint = os.environ.get("HF_ENDPOINT", HUB).rstrip("/")
        return f"{endpoint}/datasets/{repo}/resolve/{rev or 'main'}/{path}"
    return f"{base.rstrip('/')}/{path}"


def is_remote(location: str) -> bool:
    return location.startswith(("hf://", "http://", "https://"))


def location(name: str, source: str, paths: dict | None) -> str:
    """Where set `name`'s files are: eval.safety.set_paths' entry, else the fixtures or its published base."""
    if paths and name in paths:
        return str(paths[name])
    return str(FIXTURES / name) if source == "fixtures" else BENCHMARKS[name].base


def local_folder(loc: str, root: Path = REPO) -> Path:
    p = Path(loc).expanduser()
    return p if p.is_absolute() else root / p


def identity(name: str, loc: str, root: Path = REPO) -> dict:
    """What a set stage's result depends on: a local folder's files by hash, a remote one by address."""
    if is_remote(loc):
        return {"set": name, "source": loc}
    folder = local_folder(loc, root)
    return {
        "set": name,
        "files": {p: fsutil.sha256_file(folder / p) for p in BENCHMARKS[name].files if (folder / p).is_file()},
    }


def local_files(name: str, loc: str, root: Path = REPO) -> list[Path]:
    """A local set's files (Make's prerequisites); none for a remote one."""
    if is_remote(loc):
        return []
    folder = local_folder(loc, root)
    return [folder / p for p in BENCHMARKS[name].files]


def missing(name: str, loc: str, root: Path = REPO) -> list[str]:
    """A local set's published files that are not there (the recipe check names them)."""
    return [str(p) for p in local_files(name, loc, root) if not p.is_file()]
