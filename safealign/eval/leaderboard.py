"""Open LLM Leaderboard v2 through lm-evaluation-harness: run, keep lm-eval's results, normalise.

What runs
    lm-eval's own `leaderboard_*` tasks (IFEval, BBH, MATH Lvl 5, GPQA, MuSR, MMLU-Pro), unchanged.
    Recipe key `eval.leaderboard.tasks` sets, per task family, the prompt settings:
    apply_chat_template, fewshot_as_multiturn, system_instruction, batch_size, limit,
    max_gen_toks. Families with equal settings share one `simple_evaluate` call ("invocation");
    every invocation of a model on the same backend reuses one loaded model (one load per model
    and backend; `backend` may be set per family, e.g. vllm for the generative ones).
    Each invocation's results JSON is lm-eval's own (EvaluationTracker), with its per-sample logs
    and the chat template, system instruction and fewshot_as_multiturn it ran with.

Where the data comes from (`eval.leaderboard.source`)
    hub       the hub datasets, as the leaderboard reads them.
    fixtures  data/leaderboard_fixtures/<hub id>/: one row per BBH subtask, a few per subtask
              elsewhere, in each dataset's own schema (tools/make_leaderboard_fixtures.py).
              Every task is re-declared in a generated include folder as `include: <lm-eval's
              yaml>` plus `dataset_path: <fixture folder>` and a project cache keyed by the
              fixture's content (fixture_cache), under the same task name, so lm-eval's task
              code and metrics run unchanged and nothing is downloaded.

Normalisation (`normalise`, the Open LLM Leaderboard's method)
    multiple choice, random baseline 1/k:  max(0, (score - 1/k) / (1 - 1/k)) * 100
    BBH, MuSR   subtasks differ in k: normalise each subtask's acc_norm with its own k
                (K_BBH, K_MUSR), then take the unweighted mean over subtasks.
    GPQA        acc_norm of lm-eval's leaderboard_gpqa group (size-weighted), k = 4.
    MMLU-Pro    acc, k = 10.
    MATH Lvl 5  exact_match of leaderboard_math_hard x 100 (no random baseline). Only
                `exact_match` (math-verify) is reported: `exact_match_original` needs sympy's
                LaTeX parser with antlr4 4.11, which clashes with Axolotl's antlr4 4.13.2 pin,
                and then scores every answer 0. See docs/evaluation.md.
    IFEval      mean of prompt_level_strict_acc and inst_level_strict_acc, x 100.
    average     mean of the normalised family scores that ran.
"""

from __future__ import annotations

import dataclasses
import json
import time
from contextlib import contextmanager
from pathlib import Path

from safealign.config import eval as eval_cfg
from safealign.core import console
from safealign.models import generation

# Number of answer choices per BBH subtask (lm-eval's doc_to_choice; the leaderboard's k).
K_BBH = {
    "boolean_expressions": 2,
    "causal_judgement": 2,
    "date_understanding": 6,
    "disambiguation_qa": 3,
    "formal_fallacies": 2,
    "geometric_shapes": 11,
    "hyperbaton": 2,
    "logical_deduction_five_objects": 5,
    "logical_deduction_seven_objects": 7,
    "logical_deduction_three_objects": 3,
    "movie_recommendation": 6,
    "navigate": 2,
    "object_counting": 19,
    "penguins_in_a_table": 5,
    "reasoning_about_colored_objects": 18,
    "ruin_names": 6,
    "salient_translation_error_detection": 6,
    "snarks": 2,
    "sports_understanding": 2,
    "temporal_sequences": 4,
    "tracking_shuffled_objects_five_objects": 5,
    "tracking_shuffled_objects_seven_objects": 7,
    "tracking_shuffled_objects_three_objects": 3,
    "web_of_lies": 2,
}
K_MUSR = {"murder_mysteries": 2, "object_placements": 5, "team_allocation": 3}


@dataclasses.dataclass(frozen=True)
class Family:
    title: str  # as the leaderboard names it
    task: str  # what lm-eval is asked to run (a group or a task)
    dataset: str  # hub id; also the fixture folder
    lm_eval_dir: str  # folder under lm_eval/tasks/leaderboard/


TASK_FAMILIES = {
    "ifeval": Family("IFEval", "leaderboard_ifeval", "wis-k/instruction-following-eval", "ifeval"),
    "bbh": Family("BBH", "leaderboard_bbh", "SaylorTwift/bbh", "bbh_mc"),
    "math": Family("MATH Lvl 5", "leaderboard_math_hard", "DigitalLearningGmbH/MATH-lighteval", "math"),
    "gpqa": Family("GPQA", "leaderboard_gpqa", "Idavidrein/gpqa", "gpqa"),
    "musr": Family("MuSR", "leaderboard_musr", "TAUR-Lab/MuSR", "musr"),
    "mmlu_pro": Family("MMLU-Pro", "leaderboard_mmlu_pro", "TIGER-Lab/MMLU-Pro", "mmlu_pro"),
}


class LeaderboardError(ValueError):
    pass


# ----------------------------------------------------------------------------- normalisation (pure)
def normalise_mc(score: float, k: int) -> float:
    """A multiple-choice score in [0, 1] with k choices -> 0..100 above the random baseline."""
    low = 1.0 / k
    return 0.0 if score < low else (score - low) / (1.0 - low) * 100.0


def _metric(results: dict, task: str, metric: str) -> float:
    try:
        return float(results[task][f"{metric},none"])
    except KeyError:
        raise LeaderboardError(f"lm-eval results have no {metric} for {task}") from None


def normalise(family: str, results: dict) -> dict:
    """lm-eval's `results["results"]` -> {raw, normalised, subtasks} for one family (see module doc)."""
    task = TASK_FAMILIES[family].task
    if family in ("bbh", "musr"):
        ks = K_BBH if family == "bbh" else K_MUSR
        sub = {}
        for name, k in ks.items():
            key = f"{task}_{name}"
            if key in results:
                raw = _metric(results, key, "acc_norm")
                sub[name] = {"raw": raw, "k": k, "normalised": normalise_mc(raw, k)}
        if not sub:
            raise LeaderboardError(f"lm-eval results have no {task} subtasks")
        norm = sum(s["normalised"] for s in sub.values()) / len(sub)
        raw = results[task]["acc_norm,none"] if task in results else sum(s["raw"] for s in sub.values()) / len(sub)
        return {"raw": float(raw), "normalised": norm, "subtasks": sub}
    if family == "gpqa":
        raw = _metric(results, task, "acc_norm")
        return {"raw": raw, "normalised": normalise_mc(raw, 4), "k": 4}
    if family == "mmlu_pro":
        raw = _metric(results, task, "acc")
        return {"raw": raw, "normalised": normalise_mc(raw, 10), "k": 10}
    if family == "math":
        raw = _metric(results, task, "exact_match")
        return {"raw": raw, "normalised": raw * 100.0}
    if family == "ifeval":
        p, i = _metric(results, task, "prompt_level_strict_acc"), _metric(results, task, "inst_level_strict_acc")
        return {
            "raw": (p + i) / 2,
            "normalised": (p + i) / 2 * 100.0,
            "prompt_level_strict_acc": p,
            "inst_level_strict_acc": i,
        }
    raise LeaderboardError(f"unknown task family {family!r}")


def table(results: dict, families: list[str]) -> dict:
    """Every family's scores plus the leaderboard average of the normalised scores."""
    out = {f: normalise(f, results) for f in families}
    return {"families": out, "average": sum(v["normalised"] for v in out.values()) / len(out) if out else None}


# ----------------------------------------------------------------------------- planning (no model)
GENERATIVE = ("ifeval", "math")  # generate_until tasks; max_gen_toks only matters for these


def invocations(tasks_cfg, default_backend: str = "hf") -> list[dict]:
    """Group the enabled families by their prompt settings: one lm-eval call per group.

    max_gen_toks only affects generation, so a multiple-choice family joins a group whatever
    its max_gen_toks, and a generative family joins a group whose generation budget is unset
    or equal to its own.
    """
    groups: list[dict] = []
    for family in TASK_FAMILIES:
        cfg = getattr(tasks_cfg, family)
        if cfg is None:
            continue
        prompt = {
            "apply_chat_template": cfg.apply_chat_template,
            "fewshot_as_multiturn": cfg.fewshot_as_multiturn,
            "system_instruction": cfg.system_instruction,
            "batch_size": cfg.batch_size,
            "limit": cfg.limit,
            "backend": cfg.backend or default_backend,
        }
        budget = cfg.max_gen_toks if family in GENERATIVE else None
        for g in groups:
            if g["prompt"] == prompt and (budget is None or g["budget"] in (None, budget)):
                g["families"].append(family)
                g["budget"] = g["budget"] if budget is None else budget
                break
        else:
            groups.append({"prompt": prompt, "budget": budget, "families": [family]})
    out = []
    for i, g in enumerate(groups):
        out.append(
            {
                "id": f"{i + 1}-" + "+".join(g["families"]),
                "families": g["families"],
                "settings": {**g["prompt"], "max_gen_toks": g["budget"] or 0},
            }
        )
    return out


def lm_eval_tasks_dir() -> Path:
    import lm_eval

    return Path(lm_eval.__file__).parent / "tasks" / "leaderboard"


def fixture_overrides(out: Path, families: list[str], fixtures: Path = eval_cfg.FIXTURES) -> Path:
    """Write `<out>/<task>.yaml` = lm-eval's task + the fixture folder as dataset_path.

    Raises LeaderboardError, before any model is loaded, when a fixture is missing or unreadable.
    """
    import yaml
    from lm_eval.utils import load_yaml_config

    out.mkdir(parents=True, exist_ok=True)
    for family in families:
        fam = TASK_FAMILIES[family]
        folder = fixtures / fam.dataset
        check_fixture(folder)
        cache = fixture_cache(folder)
        for src in sorted((lm_eval_tasks_dir() / fam.lm_eval_dir).glob("*.yaml")):
            cfg = load_yaml_config(str(src), mode="simple")
            if not isinstance(cfg.get("task"), str):
                continue  # group definitions stay lm-eval's own; the task names they list resolve to these
            if cfg.get("dataset_kwargs"):  # none of lm-eval 0.4.11's leaderboard tasks has any to keep
                raise LeaderboardError(f"{src}: has dataset_kwargs, which the fixture override would replace")
            text = yaml.safe_dump(
                {
                    "task": cfg["task"],
                    "include": str(src),
                    "dataset_path": str(folder.resolve()),
                    "dataset_kwargs": {"cache_dir": str(cache)},
                },
                sort_keys=False,
            )
            (out / f"{cfg['task']}.yaml").write_text(text)
    return out


def fixture_cache(folder: Path) -> Path:
    """Where `datasets` keeps its Arrow copy of one fixture folder: the project's cache, under a
    name that is the hash of the folder's files. datasets' own cache (~/.cache/huggingface)
    names a local folder's build by the folder alone, offline: an edited fixture was read as it
    was when first built, and the cache lay outside the project."""
    import hashlib

    from safealign.models import load

    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(f.relative_to(folder).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return load.cache_dir() / "datasets" / f"{folder.name}-{h.hexdigest()[:16]}"


def check_fixture(folder: Path) -> None:
    """A fixture folder must have a README.md with `configs:` whose files exist and parse."""
    import yaml

    readme = folder / "README.md"
    if not readme.exists():
        raise LeaderboardError(
            f"{folder}: no fixture here (README.md missing); run `python tools/make_leaderboard_fixtures.py`"
        )
    text = readme.read_text(encoding="utf-8")
    try:
        meta = yaml.safe_load(text.split("---")[1])
        configs = meta["configs"]
    except Exception as e:
        raise LeaderboardError(f"{readme}: expected a YAML header with `configs:` ({e})") from None
    for c in configs:
        for df in c["data_files"]:
            f = folder / df["path"]
            try:
                lines = f.read_text(encoding="utf-8").splitlines()
            except FileNotFoundError:
                raise LeaderboardError(
                    f"{readme}: config {c['config_name']} split {df['split']}: no file {f}"
                ) from None
            except UnicodeDecodeError as e:
                raise LeaderboardError(f"{f}: not UTF-8 text ({e})") from None
            if not lines:
                raise LeaderboardError(f"{f}: empty")
            for n, line in enumerate(lines, 1):
                try:
                    json.loads(line)
                except json.JSONDecodeError as e:
                    raise LeaderboardError(f"{f}:{n}: not valid JSON ({e.msg})") from None


def set_batch_size(lm, batch_size) -> None:
    """One loaded HF model serves several invocations: give each its own batch size (a number,
    or lm-eval's `auto`/`auto:N` search for the largest that fits)."""
    if str(batch_size).startswith("auto"):
        head, _, n = str(batch_size).partition(":")
        lm.batch_size_per_gpu, lm.batch_schedule = head, float(n) if n else 1
    else:
        lm.batch_size_per_gpu = int(batch_size)


def check_backend(backend: str) -> None:
    """The backend's name was checked with the recipe (safealign/config/eval.py: EVAL_BACKENDS); here: is it installed."""
    import importlib.util

    if backend == "vllm" and importlib.util.find_spec("vllm") is None:
        raise LeaderboardError(
            "eval.leaderboard.backend: vllm is not installed in this environment; "
            "use hf, or `pip install vllm` (GPU machines)"
        )


# ----------------------------------------------------------------------------- running
def load_lm(model_path: str, backend: str, batch_size, dtype: str):
    """One model object for every invocation on this model. vLLM runs one replica per GPU
    (lm-eval's data_parallel_size) when there are several; HF runs on one device."""
    import torch

    if backend == "vllm":
        from lm_eval.models.vllm_causallms import VLLM

        gpus = torch.cuda.device_count()
        return VLLM(
            pretrained=model_path,
            dtype=dtype,
            batch_size=batch_size,
            **({"data_parallel_size": gpus} if gpus > 1 else {}),
        )
    from lm_eval.models.huggingface import HFLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return HFLM(pretrained=model_path, device=device, dtype=dtype, batch_size=batch_size)


@contextmanager
def requests_progress():
    """lm-eval's request loops (its tqdm bars go to the stage's log) also draw the terminal's
    progress bar: lm-eval's HF model takes its `tqdm` from its module, so it gets a subclass that
    passes each update on to safealign/core/console.py, for as long as this block runs."""
    import lm_eval.models.huggingface as hf

    class Mirrored(hf.tqdm):
        def update(self, n=1):
            shown = super().update(n)
            what = (self.desc or "requests").replace("Running ", "").replace(" requests", "")
            console.progress(f"leaderboard: {what}", self.n, self.total, "requests")
            return shown

    original, hf.tqdm = hf.tqdm, Mirrored
    try:
        yield
    finally:
        hf.tqdm = original


# lm-eval's task objects (datasets read, documents processed: ~2 s a model for the fixtures), by
# the task overrides' content and the task names: the next model of this process reuses them
_TASKS: dict = {}


def _reusing(task_manager_class):
    """lm-eval's TaskManager whose load_task_or_group (what simple_evaluate calls) returns the task
    objects an earlier model of this process was evaluated on, for the same task files and names.
    What a run changes on them is reset by simple_evaluate and evaluate each time (num_fewshot,
    the few-shot sampler's seed, generation kwargs; the requests are rebuilt), so a model gets
    the results it gets alone (tests/test_leaderboard.py)."""

    class Reusing(task_manager_class):
        overrides: tuple = ()

        def load_task_or_group(self, task_list=None):
            key = (self.overrides, tuple(task_list) if isinstance(task_list, list) else task_list)
            if key not in _TASKS:
                _TASKS[key] = super().load_task_or_group(task_list)
            return _TASKS[key]

    return Reusing


def run(model_path: str, cfg, out: Path, seed: int, log=print) -> dict:
    """Run every invocation on one model into `out`; return the table (also written to table.json)."""
    from safealign.eval import nltkdata

    nltkdata.ensure()  # IFEval's sentence splitter, from the installed package: no download
    from lm_eval import simple_evaluate
    from lm_eval.loggers import EvaluationTracker
    from lm_eval.tasks import TaskManager

    groups = invocations(cfg.tasks, cfg.backend)
    for g in groups:
        g["settings"]["backend"] = generation.resolve_backend(g["settings"]["backend"])
    families = [f for g in groups for f in g["families"]]
    include = (
        fixture_overrides(out / "lm_eval_tasks", families, eval_cfg.FIXTURES) if cfg.source == "fixtures" else None
    )
    for backend in {g["settings"]["backend"] for g in groups}:
        check_backend(backend)
    # lm-eval's leaderboard folder (and the fixture overrides) only: indexing all of lm-eval's
    # ~13,000 task files costs 5-10 s a process and finds nothing the leaderboard uses
    tm = _reusing(TaskManager)(
        include_path=[str(lm_eval_tasks_dir())] + ([str(include)] if include else []), include_defaults=False
    )
    tm.overrides = tuple(sorted((p.name, p.read_text()) for p in include.glob("*.yaml"))) if include else ()
    t0 = time.time()
    lms, merged, record = {}, {}, []
    log(f"  leaderboard: {len(groups)} invocation(s) for {', '.join(families)}")
    for g in groups:
        s, gdir = g["settings"], out / "lm_eval" / g["id"]
        t1 = time.time()
        if s["backend"] not in lms:  # one model per backend, loaded when first needed
            lms[s["backend"]] = load_lm(model_path, s["backend"], s["batch_size"], cfg.dtype)
            log(f"  leaderboard: model loaded in {time.time() - t1:.1f}s ({s['backend']})")
        lm = lms[s["backend"]]
        if hasattr(lm, "batch_size_per_gpu"):
            set_batch_size(lm, s["batch_size"])
        tracker = EvaluationTracker(output_path=str(gdir))
        with requests_progress():
            res = simple_evaluate(
                model=lm,
                tasks=[TASK_FAMILIES[f].task for f in g["families"]],
                task_manager=tm,
                apply_chat_template=s["apply_chat_template"],
                fewshot_as_multiturn=s["fewshot_as_multiturn"],
                system_instruction=s["system_instruction"],
                limit=s["limit"] or None,
                gen_kwargs={"max_gen_toks": s["max_gen_toks"]} if s["max_gen_toks"] else None,
                log_samples=True,
                evaluation_tracker=tracker,
                random_seed=seed,
                numpy_random_seed=seed,
                torch_random_seed=seed,
                fewshot_random_seed=seed,
                bootstrap_iters=0,
            )
        samples = res.pop("samples")
        tracker.save_results_aggregated(results=res, samples=samples)
        for task_name in res["configs"]:
            tracker.save_results_samples(task_name=task_name, samples=samples[task_name])
        files = sorted(gdir.rglob("results_*.json"))
        if not files:
            raise LeaderboardError(f"lm-eval wrote no results JSON under {gdir}")
        merged.update(res["results"])
        record.append({**g, "results_json": str(files[-1].relative_to(out)), "seconds": round(time.time() - t1, 1)})
        log(
            f"  leaderboard: {g['id']} ({'chat template' if s['apply_chat_template'] else 'no chat template'}) "
            f"in {time.time() - t1:.1f}s"
        )
    tab = {
        **table(merged, families),
        "invocations": record,
        "model_loads": len(lms),
        "model": model_path,
        "source": cfg.source,
        "backend": cfg.backend,
        "seconds": round(time.time() - t0, 1),
    }
    (out / "table.json").write_text(json.dumps(tab, indent=2) + "\n")
    return tab


def format_rows(tab: dict) -> list[tuple[str, str, str]]:
    rows = [(TASK_FAMILIES[f].title, f"{v['raw']:.4f}", f"{v['normalised']:.2f}") for f, v in tab["families"].items()]
    if tab.get("average") is not None:
        rows.append(("Average", "", f"{tab['average']:.2f}"))
    return rows
