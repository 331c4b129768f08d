"""`make pipeline`: the experiment compiled into a Kubeflow v2 pipeline, checked by reading the YAML
(what the cluster receives: one task per stage, the image, the command, the resources, the
identity in each task's inputs) and the Vertex AI submission built by google-cloud-aiplatform up
to its network call. Running the compiled pipeline is tests/test_pipeline_e2e.py (slow).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import kfp  # noqa: E402, F401  (make setup installs the pipeline extra: missing, the set-up is broken; no skip)
import pytest
import yaml

from safealign.config.recipe import RecipeError  # noqa: E402
from safealign.core import names
from safealign.run import pipeline, pipeline_steps  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
IMAGE = "europe-docker.pkg.dev/proj/repo/safealign:test"


def compile_(root: Path, *sets: str, grid: tuple = (), check=True, recipe="sft_kto"):
    r = subprocess.run(
        [sys.executable, "-m", "safealign", "pipeline", "--recipe", recipe, "--experiments", str(root),
         "--image", IMAGE, *(["--set", *sets] if sets else []), *(["--grid", *grid] if grid else [])],
        cwd=REPO, capture_output=True, text=True, env={**os.environ, "SAFEALIGN_QUIET": "1"},
    )  # fmt: skip
    if check:
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def spec(path: Path) -> dict:
    return next(yaml.safe_load_all(path.read_text()))


def tasks(sp: dict) -> dict:
    return sp["root"]["dag"]["tasks"]


def constant(task: dict, name: str):
    return task["inputs"]["parameters"][name]["runtimeValue"]["constant"]


def container(sp: dict, task: dict) -> dict:
    label = sp["components"][task["componentRef"]["name"]]["executorLabel"]
    return sp["deploymentSpec"]["executors"][label]["container"]


def op(task: dict) -> str:
    return task["componentRef"]["name"].removeprefix("comp-").rstrip("-0123456789")


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    root = tmp_path_factory.mktemp("experiments")
    compile_(root)
    return root


def test_one_task_per_stage_of_the_plan_with_its_identity(compiled):
    sp = spec(compiled / "sft_kto" / "pipeline.yaml")
    plan = json.loads((compiled / "sft_kto" / "stages.json").read_text())
    ts = tasks(sp)
    staged = {constant(t, "identity"): t for t in ts.values() if "identity" in t["inputs"].get("parameters", {})}
    assert set(staged) == {e["dir"] for e in plan.values()}  # every stage once, by its store identity
    assert sorted(op(t) for t in ts.values()) == sorted(
        ["resolve-op", "base-op", "data-op", "train-op", "train-op", "judge-op", *["leaderboard-op"] * 3,
         *["safety-op"] * 3, "summary-op", "report-op"]
    )  # fmt: skip
    assert {constant(t, "stage") for t in ts.values() if op(t) == "train-op"} == {"sft", "kto"}
    kto = staged[plan["kto"]["dir"]]
    sft_task = next(n for n, t in ts.items() if t is staged[plan["sft"]["dir"]])
    assert kto["inputs"]["artifacts"]["base"]["taskOutputArtifact"]["producerTask"] == sft_task  # kto trains on sft
    # the resolve task carries the plan it was compiled from, to refuse an image that differs
    resolve = next(t for t in ts.values() if op(t) == "resolve-op")
    assert json.loads(constant(resolve, "plan_json")) == plan
    # stage tasks are cached by Kubeflow (their identity is an input); resolve/summary/report always run
    assert all(t.get("cachingOptions", {}).get("enableCache") for t in staged.values())
    assert not any(
        t.get("cachingOptions", {}).get("enableCache")
        for t in ts.values()
        if op(t) in ("resolve-op", "summary-op", "report-op")
    )


def test_generated_data_runs_the_generation_task_before_the_data_task(tmp_path):
    compile_(tmp_path, recipe="gen_sft_kto")
    sp = spec(tmp_path / "gen_sft_kto" / "pipeline.yaml")
    plan = json.loads((tmp_path / "gen_sft_kto" / "stages.json").read_text())
    ts = tasks(sp)
    (gen,) = [n for n, t in ts.items() if op(t) == "gen-op"]
    assert constant(ts[gen], "identity") == plan["gen"]["dir"]
    (data,) = [t for t in ts.values() if op(t) == "data-op"]
    assert gen in data["dependentTasks"]  # the data task reads the generated rows from the store
    assert "base-op" in {op(ts[d]) for d in ts[gen]["dependentTasks"]}  # base (and tiny-refuser) built first


def test_each_benchmark_is_a_safety_task_per_model_after_the_base_models(tmp_path):
    compile_(tmp_path, "eval.safety.sets=[heldout,xstest,jbb]", "eval.safety.set_source=fixtures", recipe="sft")
    exp = next(p for p in tmp_path.iterdir() if p.name.startswith("sft"))
    plan = json.loads((exp / "stages.json").read_text())
    ts = tasks(spec(exp / "pipeline.yaml"))
    sets = {(constant(t, "eval_set"), constant(t, "model_name")): n for n, t in ts.items() if op(t) == "safety-set-op"}
    assert set(sets) == {(b, m) for b in ("xstest", "jbb") for m in ("base", "sft")}
    for b in ("xstest", "jbb"):
        assert constant(ts[sets[(b, "sft")]], "identity") == plan[f"safety-{b}-sft"]["dir"]
        assert sets[(b, "base")] in ts[sets[(b, "sft")]]["dependentTasks"]  # similarity to the base's answers
    summary = next(t for t in ts.values() if op(t) == "summary-op")
    assert set(sets.values()) <= set(summary["dependentTasks"])


def test_every_task_runs_the_cli_in_the_image_and_installs_nothing(compiled):
    sp = spec(compiled / "sft_kto" / "pipeline.yaml")
    for name, t in tasks(sp).items():
        c = container(sp, t)
        assert c["image"] == IMAGE, name
        text = " ".join(c["command"] + c.get("args", []))
        assert "pip install" not in text, name  # components install nothing
        assert "from safealign.run import pipeline_steps as pipeline" in text and "kfp.dsl.executor_main" in text, name
    # the steps the bodies call run `python -m safealign <command>`, as Make does
    src = (REPO / "safealign" / "run" / "pipeline_steps.py").read_text()
    assert '[sys.executable, "-m", "safealign", *args]' in src


def test_artifacts_are_typed(compiled):
    sp = spec(compiled / "sft_kto" / "pipeline.yaml")
    outs = {
        c.removeprefix("comp-").rstrip("-0123456789"): {
            k: v["artifactType"]["schemaTitle"] for k, v in comp["outputDefinitions"].get("artifacts", {}).items()
        }
        for c, comp in sp["components"].items()
    }
    assert outs["data-op"] == {"dataset": "system.Dataset"}
    assert outs["train-op"] == {"model": "system.Model"}
    assert outs["base-op"] == {"base": "system.Model"}
    assert outs["safety-op"] == {"rates": "system.Metrics"} and outs["leaderboard-op"] == {"scores": "system.Metrics"}
    assert outs["summary-op"] == {"summary": "system.Metrics", "table": "system.Markdown"}
    assert outs["report-op"] == {"report": "system.Markdown"}


def test_cpu_recipe_asks_for_no_accelerator(compiled):
    sp = spec(compiled / "sft_kto" / "pipeline.yaml")
    for t in tasks(sp).values():
        res = container(sp, t).get("resources", {})
        assert "accelerator" not in res
        assert res["resourceCpuLimit"] and res["resourceMemoryLimit"]


def test_resources_per_task_from_the_recipe(tmp_path):
    compile_(tmp_path, "resources.accelerator=NVIDIA_H100_80GB", "launch.processes=4", "resources.eval_gpus=2",
             "resources.cpu=24", "resources.memory=200G", "resources.light_cpu=1", "resources.light_memory=4G")  # fmt: skip
    exp = next(p for p in tmp_path.iterdir() if p.name.startswith("sft_kto+"))
    sp = spec(exp / "pipeline.yaml")
    seen = set()
    for t in tasks(sp).values():
        res, kind = container(sp, t)["resources"], op(t)
        seen.add(kind)
        if kind == "train-op":  # one GPU per launched process
            assert (res["accelerator"]["resourceType"], res["accelerator"]["resourceCount"]) == (
                "NVIDIA_H100_80GB",
                "4",
            )
            assert (res["resourceCpuLimit"], res["resourceMemoryLimit"]) == ("24", "200G")
        elif kind in ("leaderboard-op", "safety-op"):
            assert res["accelerator"]["resourceCount"] == "2"
        else:  # data, judge, resolve, base, summary, report: CPU only
            assert "accelerator" not in res, kind
            assert (res["resourceCpuLimit"], res["resourceMemoryLimit"]) == ("1", "4G")
    assert {"train-op", "safety-op", "data-op", "judge-op"} <= seen


def test_sweep_compiles_shared_stages_once(tmp_path):
    compile_(tmp_path, grid=("kto.beta=0.1,0.2",))
    path = tmp_path / "sweep" / pipeline.sweep_name("sft_kto", [], ["kto.beta=0.1,0.2"]) / "pipeline.yaml"
    ts = tasks(spec(path))
    plans = [
        json.loads((tmp_path / names.exp_name("sft_kto", [f"kto.beta={b}"]) / "stages.json").read_text())
        for b in ("0.1", "0.2")
    ]
    assert plans[0]["sft"] == plans[1]["sft"] and plans[0]["kto"] != plans[1]["kto"]
    train = [constant(t, "stage") for t in ts.values() if op(t) == "train-op"]
    assert sorted(train) == ["kto", "kto", "sft"]  # one SFT for both points
    assert sum(op(t) == "resolve-op" for t in ts.values()) == 2 and sum(op(t) == "report-op" for t in ts.values()) == 2
    assert sum(op(t) == "safety-op" for t in ts.values()) == 4  # base and sft once, each kto once
    identities = [constant(t, "identity") for t in ts.values() if "identity" in t["inputs"].get("parameters", {})]
    assert len(identities) == len(set(identities)) == len({e["dir"] for p in plans for e in p.values()})


def test_what_a_pipeline_cannot_run_is_refused_at_compile(tmp_path):
    r = compile_(tmp_path, "launch.nodes=2", "resources.accelerator=NVIDIA_H100_80GB", check=False)
    assert r.returncode == 2 and "launch.nodes" in r.stderr and "make join" in r.stderr
    r = compile_(tmp_path, "launch.processes=2", check=False)
    assert r.returncode == 2 and "resources.accelerator" in r.stderr
    assert not list(tmp_path.glob("*/pipeline.yaml"))


@pytest.mark.parametrize(
    "item, key",
    [
        ("resources.accelerator=H100", "resources.accelerator"),
        ("resources.cpu=0", "resources.cpu"),
        ("resources.memory=64GB", "resources.memory"),
        ("resources.eval_gpus=0", "resources.eval_gpus"),
    ],
)
def test_bad_resources_name_the_key(item, key):
    from safealign.config import recipe

    with pytest.raises(RecipeError) as e:
        recipe.load(REPO / "recipes" / "sft_kto.yaml", [item])
    assert key in str(e.value)


def test_an_image_that_resolves_otherwise_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    pt = pipeline.resolve_point("sft_kto", [], tmp_path)
    wrong = {**pt.stages, "kto": {"dir": "kto-000000000000"}}
    with pytest.raises(RuntimeError, match=r"kto: kto-000000000000 -> kto-"):
        pipeline_steps.step_resolve(str(tmp_path), ".cache", "", "sft_kto", [], pt.name, json.dumps(wrong))
    with pytest.raises(RuntimeError, match="compiled for sft-000000000000"):
        pipeline_steps.step_stage(str(tmp_path), ".cache", "", pt.name, "sft", "", "sft-000000000000")


def test_summary_metrics_are_flat_numbers():
    s = {
        "models": {
            "base": {"safety": {"overall": {"refusal_rate": {"value": 0.1, "low": 0, "high": 0.2, "n": 45}}}},
            "kto": {
                "safety": {"overall": {"refusal_rate": {"value": 0.9}, "toxicity_rate": {"value": 0.02}}},
                "leaderboard": {"families": {"bbh": {"raw": 0.3, "normalised": 13.5}}, "average": 15.2},
            },
        }
    }
    assert pipeline_steps.summary_metrics(s) == {
        "base.refusal_rate": 0.1,
        "kto.refusal_rate": 0.9,
        "kto.toxicity_rate": 0.02,
        "kto.leaderboard_bbh": 13.5,
        "kto.leaderboard_average": 15.2,
    }


def test_one_flattener_names_every_metric_for_the_pipeline_the_suite_and_the_report(tmp_path):
    """safealign/eval/summary.py: metrics is the one place that names a summary's numbers; the
    pipeline's Metrics artifact, the regression suite and the comparison table all read it."""
    from safealign.eval import report, summary
    from safealign.eval.leaderboard import TASK_FAMILIES
    from safealign.run import regress

    fams = {f: {"raw": 0.5, "normalised": 10.0 + i} for i, f in enumerate(TASK_FAMILIES)}
    rates = {k: {"value": 0.25 + i / 10} for i, k in enumerate(summary.METRICS)}
    entry = {"safety": {"overall": rates}, "leaderboard": {"families": fams, "average": 12.5, "seconds": 3.0}}
    s = {"models": {"base": entry}, "model_order": ["base"], "base_model": "tiny-local"}
    flat = summary.metrics(s)["base"]
    assert set(flat) == set(summary.METRICS) | {f"leaderboard_{f}" for f in TASK_FAMILIES} | {
        "leaderboard_average",
        "leaderboard_seconds",
    }
    assert pipeline_steps.summary_metrics(s) == {f"base.{k}": v for k, v in flat.items()}
    assert set(flat) <= set(regress.METRICS)  # the suite checks them under the same names
    row = report.experiment_row(s, "base")
    assert {key for _, key, _ in report.COLUMNS} <= set(flat)
    assert row["toxicity %"] == 100 * flat["toxicity_rate"] and row["leaderboard avg"] == 12.5
    # the suite reads the same numbers from an experiment folder
    exp = tmp_path / "e"
    (exp / "eval").mkdir(parents=True)
    (exp / "eval" / "summary.json").write_text(json.dumps(s))
    got = {k.split("/", 1)[1]: v["value"] for k, v in regress.collect(exp).items()}
    assert got == {k: v for k, v in flat.items()}


def test_pipeline_names_follow_kubeflow_s_rule():
    assert pipeline.pipeline_name("sft_kto+kto.beta-0.2") == "sft-kto-kto-beta-0-2"
    assert pipeline.sweep_name("sft_kto", [], ["kto.beta=0.1,0.2"]) == "sft_kto+sweep+kto.beta-0.1_0.2"


# ------------------------------------------------------------------ Vertex AI, up to the network
@pytest.fixture
def anonymous(monkeypatch):
    import google.auth
    from google.auth.credentials import AnonymousCredentials

    monkeypatch.setattr(google.auth, "default", lambda *a, **k: (AnonymousCredentials(), "my-project"))


def test_submit_builds_the_vertex_job_and_stops_at_the_call(compiled, anonymous, monkeypatch):
    from google.cloud import aiplatform

    sent = {}

    def intercepted(self, service_account=None, **kw):  # the network call: creates the run on Vertex AI
        sent.update(job=self, service_account=service_account)

    monkeypatch.setattr(aiplatform.PipelineJob, "submit", intercepted)
    path = compiled / "sft_kto" / "pipeline.yaml"
    job = pipeline.submit(
        path, "my-project", "europe-west4", "gs://my-bucket/", "runner@my-project.iam.gserviceaccount.com"
    )
    assert sent["job"] is job and sent["service_account"] == "runner@my-project.iam.gserviceaccount.com"
    g = job._gca_resource
    assert (job.project, job.location) == ("my-project", "europe-west4")
    assert g.runtime_config.gcs_output_directory == "gs://my-bucket/pipeline-root"
    assert dict(g.runtime_config.parameter_values) == {
        "root": "/gcs/my-bucket/experiments",  # the stage store on the bucket, through Vertex's Cloud Storage mount
        "cache": "/gcs/my-bucket/cache",
        "hf_home": "/gcs/my-bucket/huggingface",
    }
    assert dict(g.pipeline_spec)["pipelineInfo"]["name"] == "sft-kto"
    assert g.display_name == "sft_kto"


def test_submit_errors_say_what_to_set(compiled, anonymous, monkeypatch):
    import google.auth
    import google.auth.exceptions
    from google.cloud import aiplatform

    def network(self, *a, **k):
        raise AssertionError("reached the network")

    monkeypatch.setattr(aiplatform.PipelineJob, "submit", network)
    path = compiled / "sft_kto" / "pipeline.yaml"
    with pytest.raises(pipeline.SubmitError, match="BUCKET"):
        pipeline.submit(path, "p", "us-central1", "My_Bucket!")
    with pytest.raises(pipeline.SubmitError, match="REGION"):
        pipeline.submit(path, "p", "moon-1", "my-bucket")

    def no_credentials(*a, **k):
        raise google.auth.exceptions.DefaultCredentialsError("none")

    monkeypatch.setattr(google.auth, "default", no_credentials)
    with pytest.raises(pipeline.SubmitError, match="gcloud auth application-default login"):
        pipeline.submit(path, "p", "us-central1", "my-bucket")


def test_make_submit_without_project_says_usage():
    r = subprocess.run(
        ["make", "--no-print-directory", "submit", "NAME=sft_kto"], cwd=REPO, capture_output=True, text=True
    )
    assert r.returncode == 2 and "PROJECT=" in r.stdout


# ------------------------------------------------------------------ the image
def test_the_image_is_built_from_the_lock_and_named_once():
    docker = (REPO / "Dockerfile").read_text()
    assert "COPY requirements.lock" in docker and "-r requirements.lock" in docker and "pip check" in docker
    assert "nvidia/cuda:" in docker  # CUDA base for the GPU stages
    make = (REPO / "Makefile").read_text()
    assert make.count("IMAGE       ?=") == 1 and "docker build -t $(IMAGE)" in make
    assert "experiments" in (REPO / ".dockerignore").read_text().split()
