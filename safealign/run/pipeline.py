"""Kubeflow Pipelines v2 (Vertex AI Pipelines): an experiment's stage plan as one pipeline.

    make pipeline NAME=sft_kto [SET=...] [MODEL=...]           # -> experiments/<name>/pipeline.yaml
    make pipeline-sweep NAME=sft_kto GRID='kto.beta=0.1,0.2'    # -> experiments/<name>+sweep-<grid>/pipeline.yaml
    make submit NAME=sft_kto PROJECT=my-project REGION=us-central1 BUCKET=my-bucket

The pipeline is compiled from the same resolved recipe and stage plan as `make exp`
(safealign/plan/experiment.py): one task per stage (resolve, the base model, generation with data.generate,
data, each training stage with its merge, judge, leaderboard and safety per model, summary,
report), each a lightweight Python component (safealign/run/pipeline_ops.py) whose body runs a step
of safealign/run/pipeline_steps.py, which calls `python -m safealign <command>`, the entry point Make
calls, so a stage's output is the same whichever runner ran it. This module compiles (and submits);
it never runs inside a task. Components install nothing: the image (the
repository's Dockerfile, built from requirements.lock) holds everything, and kfp's local runner
(`SubprocessRunner(use_venv=False)`) runs them in the current venv.

Stages write where Make writes them: `<root>/.stages/<stage>-<hash>`, with `<root>/<experiment>/`
linking to them. The `root` parameter is the checkout's experiments/ locally and a shared
filesystem on a cluster (Vertex AI mounts Cloud Storage at /gcs/<bucket>; `make submit` sets it).
Each task carries its stage's identity (the store folder's name) as an input, so Kubeflow's cache
key changes exactly when the project's does, and the task refuses to run when the image resolves
the recipe to another identity (its code or recipes differ from the checkout that compiled it).

Artifacts: Dataset (rows by split and label, file hashes), Model (base, each stage's adapter and
merged model, the judge), Metrics (safety and leaderboard figures per model, the summary numbers
Vertex shows), Markdown (summary.md, report.md). Their metadata carries the figures; their files
are small manifests naming the store folder (models stay in the store, not copied per task).

Resources come from the recipe's `resources:` section (or a model profile's): the accelerator and
its count for the stages that load a model (training: launch.processes GPUs; evaluation:
resources.eval_gpus), CPU and memory; none for the CPU-only stages.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from safealign import REPO
from safealign.config.kinds import KINDS
from safealign.config.resources import ResourcesCfg

PIPELINE_FILE = "pipeline.yaml"


def compile_problems(r) -> list[str]:
    """What a pipeline cannot run that Make can (checked when compiling)."""
    problems = []
    if r.launch.nodes > 1:
        problems.append(
            f"launch.nodes: {r.launch.nodes}: a pipeline task is one machine; several nodes run with "
            "`make exp` on node 0 and `make join` on the others (README: More than one GPU)"
        )
    if r.launch.processes > 1 and not r.resources.accelerator:
        problems.append(
            f"launch.processes: {r.launch.processes} processes need resources.accelerator (one GPU each) "
            "in a pipeline; CPU processes run with `make exp`"
        )
    return problems


@dataclass
class Point:
    """One experiment of the pipeline: its recipe, SET items, folder name and resolved plan."""

    recipe: str
    sets: list
    name: str
    recipe_obj: object
    stages: dict  # stages.json: label -> {"dir": identity}


def resolve_point(recipe: str, sets: list[str], experiments: Path) -> Point:
    """Resolve as `make exp` does (experiments/<name>/ written the same way), for the cluster's
    machines rather than this one (the launch is checked against them when the task resolves)."""
    from safealign.config.recipe import RecipeError
    from safealign.core import names
    from safealign.plan import experiment as plan

    name = names.exp_name(recipe, sets)
    rel = f"recipes/{recipe}.yaml"
    recipe_file = rel if Path.cwd().resolve() == REPO else str(REPO / rel)
    if not (REPO / rel).exists():
        raise RecipeError([f"{rel}: no such recipe"])
    old = os.environ.get("SAFEALIGN_RENDER")
    os.environ["SAFEALIGN_RENDER"] = "1"
    try:
        plan.resolve(recipe_file, experiments / name, sets)
    finally:
        if old is None:
            os.environ.pop("SAFEALIGN_RENDER", None)
        else:
            os.environ["SAFEALIGN_RENDER"] = old
    exp = plan.Experiment(experiments / name)
    problems = compile_problems(exp.recipe)
    if problems:
        raise RecipeError([f"{rel}: {p}" for p in problems])
    return Point(recipe, list(sets), name, exp.recipe, exp.stages)


def sweep_name(recipe: str, sets: list[str], grid: list[str]) -> str:
    """experiments/sweep/<this>/: the recipe, its SET items and the grid's keys and values,
    e.g. sft_kto+sweep+kto.beta-0.1_0.2 (the grid's hash when that is not a valid name)."""
    from safealign.core import names

    base = names.exp_name(recipe, sets)
    axes = "+".join(g.replace("=", "-").replace(",", "_") for g in grid)
    label = f"{base}+sweep+{axes}"
    try:
        names.check_name(label, "sweep name")
        return label
    except names.InvalidName:
        from safealign.core import fsutil

        return f"{base}+sweep-{fsutil.sha256_text(' '.join(grid))[:12]}"


def _cores(n: float) -> str:
    return str(int(n)) if float(n).is_integer() else f"{int(n * 1000)}m"


def pipeline_name(text: str) -> str:
    """Kubeflow's rule for a pipeline name: lower-case letters, digits and '-', at most 128."""
    return (re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-") or "safealign")[:128]


def build(points: list[Point], image: str, root: str, cache: str, name: str):
    """The pipeline function: one task per distinct stage over all points (a stage shared by
    several points, same identity, runs once)."""
    from kfp import dsl

    from safealign.plan import experiment as plan
    from safealign.run import pipeline_ops

    op = {f.__name__: dsl.component(f, base_image=image, install_kfp_package=False) for f in pipeline_ops.OPS}

    def sized(task, res: ResourcesCfg, gpus: int):
        """gpus > 0: a stage that loads a model (the accelerator when the recipe names one);
        0: a CPU-only stage."""
        if not gpus:
            return task.set_cpu_limit(_cores(res.light_cpu)).set_memory_limit(str(res.light_memory))
        task.set_cpu_limit(_cores(res.cpu)).set_memory_limit(str(res.memory))
        if res.accelerator:
            task.set_accelerator_type(res.accelerator).set_accelerator_limit(gpus)
        return task

    def pipe(root: str = root, cache: str = cache, hf_home: str = ""):
        common = {"root": root, "cache": cache, "hf_home": hf_home}
        done: dict[str, object] = {}  # stage identity -> its task: once per pipeline

        def stage(identity: str, name: str, resolve, res: ResourcesCfg, gpus: int, **inputs):
            """The task of a stage identity, created by the first point that needs it (after that
            point's resolve); a later point with the same identity reuses it."""
            if identity not in done:
                task = sized(op[name](**common, identity=identity, **inputs), res, gpus).after(resolve)
                task.set_display_name(identity).set_env_variable("AXOLOTL_DO_NOT_TRACK", "1")
                done[identity] = task
            return done[identity]

        for pt in points:
            r, res, e = pt.recipe_obj, pt.recipe_obj.resources, pt.name
            ident = {label: entry["dir"] for label, entry in pt.stages.items()}
            plan_json = json.dumps(pt.stages, sort_keys=True)
            resolve = op["resolve_op"](**common, recipe=pt.recipe, sets=pt.sets, exp_name=e, plan_json=plan_json)
            sized(resolve, res, 0).set_display_name(f"resolve {e}").set_caching_options(False)
            experiment = resolve.outputs["experiment"]
            key = f"base:{r.base_model}"
            if key not in done:  # builds the embedded model (tiny-local) or names the hub one: always runs
                done[key] = sized(op["base_op"](**common, exp_name=e, experiment=experiment), res, 0)
                done[key].set_display_name(f"base {r.base_model}").set_caching_options(False)
            models = {"base": done[key].outputs["base"]}
            data = stage(ident["data"], "data_op", resolve, res, 0, exp_name=e, experiment=experiment)
            if "gen" in ident:  # data.generate: generation first; its servers must be reachable from the task
                data.after(stage(ident["gen"], "gen_op", resolve, res, 0, exp_name=e, experiment=experiment,
                                 base=models["base"]))  # fmt: skip
            dataset = data.outputs["dataset"]
            prev = models["base"]
            judge_task = stage(ident["judge"], "judge_op", resolve, res, 0, exp_name=e, dataset=dataset)
            judge = judge_task.outputs["judge"]
            for s in r.stages:
                train = stage(ident[s], "train_op", resolve, res, r.launch.processes, exp_name=e, stage=s,
                              dataset=dataset, base=prev)  # fmt: skip
                if KINDS[s].judged:  # an online kind labels its samples with the judge
                    train.after(judge_task)
                models[s] = prev = train.outputs["model"]
            evals = []
            for m in plan.eval_models(r):
                if f"leaderboard-{m}" in ident:
                    evals.append(stage(ident[f"leaderboard-{m}"], "leaderboard_op", resolve, res, res.eval_gpus,
                                       exp_name=e, model_name=m, model=models[m]))  # fmt: skip
                safety = stage(ident[f"safety-{m}"], "safety_op", resolve, res, res.eval_gpus, exp_name=e,
                               model_name=m, model=models[m], judge=judge, dataset=dataset)  # fmt: skip
                if m != "base":  # safety compares each answer with the base model's
                    safety.after(done[ident["safety-base"]])
                evals.append(safety)
                for b in plan.benchmark_sets(r):  # a public benchmark's stage (eval.safety.sets)
                    task = stage(ident[f"safety-{b}-{m}"], "safety_set_op", resolve, res, res.eval_gpus, exp_name=e,
                                 model_name=m, eval_set=b, model=models[m], judge=judge)  # fmt: skip
                    if m != "base":
                        task.after(done[ident[f"safety-{b}-base"]])
                    evals.append(task)
            summary = sized(op["summary_op"](**common, exp_name=e), res, 0).after(*evals)
            summary.set_display_name(f"summary {e}").set_caching_options(False)
            report = sized(op["report_op"](**common, exp_name=e, summary=summary.outputs["summary"]), res, 0)
            report.set_display_name(f"report {e}").set_caching_options(False)

    pipe.__annotations__ = {"root": str, "cache": str, "hf_home": str}  # this module's are strings (PEP 563)
    return dsl.pipeline(name=pipeline_name(name), description=f"safealign: {name} ({len(points)} experiment(s))")(pipe)


def compile_pipeline(points: list[Point], out: Path, image: str, root: str, cache: str, name: str) -> Path:
    from kfp import compiler

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp.yaml")  # kfp insists on the suffix
    compiler.Compiler().compile(build(points, image, root, cache, name), str(tmp))
    os.replace(tmp, out)
    return out


def run_local(pipeline_file: Path, pipeline_root: Path, **params) -> None:
    """Run a compiled pipeline with kfp's local runner in this venv (no Docker, no network; it
    ignores resources, caching and retries). Raises when a task fails."""
    from kfp import components, local

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root))
    components.load_component_from_file(str(pipeline_file))(**params)


def submit(pipeline_file: Path, project: str, region: str, bucket: str, service_account: str = "", job=None):
    """Submit to Vertex AI Pipelines: the stage store and model caches on the bucket (mounted by
    Vertex at /gcs/<bucket>), the pipeline's own artifacts under gs://<bucket>/pipeline-root.
    Returns the PipelineJob (built by google-cloud-aiplatform; `job` replaces its class in tests)."""
    import google.auth
    import google.auth.exceptions
    from google.cloud import aiplatform

    bucket = bucket.removeprefix("gs://").strip("/")
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]{1,221}[a-z0-9]", bucket):
        raise SubmitError(f"BUCKET: {bucket!r} is not a Cloud Storage bucket name (lower-case letters, digits, - _ .)")
    try:  # this machine's credentials (gcloud's application default, or GOOGLE_APPLICATION_CREDENTIALS)
        credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
    except google.auth.exceptions.DefaultCredentialsError:
        raise SubmitError(
            "no Google Cloud credentials here: run `gcloud auth application-default login` (or set "
            "GOOGLE_APPLICATION_CREDENTIALS to a service account key), then `make submit` again"
        ) from None
    try:
        aiplatform.init(project=project, location=region, staging_bucket=f"gs://{bucket}", credentials=credentials)
    except ValueError as e:  # aiplatform checks the region against Vertex AI's list
        raise SubmitError(f"REGION: {region!r}: {str(e)[:300]}") from None
    pj = (job or aiplatform.PipelineJob)(
        display_name=pipeline_file.parent.name,
        template_path=str(pipeline_file),
        pipeline_root=f"gs://{bucket}/pipeline-root",
        parameter_values={
            "root": f"/gcs/{bucket}/experiments",
            "cache": f"/gcs/{bucket}/cache",
            "hf_home": f"/gcs/{bucket}/huggingface",
        },
        enable_caching=True,
        project=project,
        location=region,
        credentials=credentials,
    )
    # unmocked, this checks (or creates) the bucket, then creates the run on Vertex AI
    pj.submit(service_account=service_account or None)
    return pj


class SubmitError(RuntimeError):
    """`make submit` cannot reach Vertex AI as asked; the message says what to set."""
