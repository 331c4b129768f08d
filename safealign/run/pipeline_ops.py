"""The pipeline's components: lightweight Python components whose bodies call safealign's steps
(safealign/run/pipeline_steps.py), which run `python -m safealign <command>` as Make does. kfp ships each
body's source into the task, so each is self-contained; this module imports kfp (the `pipeline`
extra) and is imported only to compile.
"""

from kfp.dsl import Artifact, Dataset, Input, Markdown, Metrics, Model, Output


# Each body is self-contained (kfp ships its source): it imports the package, runs one step of
# safealign/run/pipeline_steps.py and fills its artifacts. `root`, `cache`, `hf_home` are pipeline parameters
# (where the store and the model cache live); `identity` is the stage's store folder, part of
# Kubeflow's cache key.
def resolve_op(root: str, cache: str, hf_home: str, recipe: str, sets: list, exp_name: str, plan_json: str,
               experiment: Output[Artifact]):  # fmt: skip
    from safealign.run import pipeline_steps as pipeline

    pipeline.fill(experiment, pipeline.step_resolve(root, cache, hf_home, recipe, sets, exp_name, plan_json))


def base_op(root: str, cache: str, hf_home: str, exp_name: str, experiment: Input[Artifact], base: Output[Model]):
    from safealign.run import pipeline_steps as pipeline

    pipeline.fill(base, pipeline.step_base(root, cache, hf_home, exp_name))


def gen_op(root: str, cache: str, hf_home: str, exp_name: str, identity: str, experiment: Input[Artifact],
           base: Input[Model], generated: Output[Dataset]):  # fmt: skip
    from safealign.run import pipeline_steps as pipeline

    pipeline.fill(generated, pipeline.step_stage(root, cache, hf_home, exp_name, "gen", "", identity))


def data_op(root: str, cache: str, hf_home: str, exp_name: str, identity: str, experiment: Input[Artifact],
            dataset: Output[Dataset]):  # fmt: skip
    from safealign.run import pipeline_steps as pipeline

    pipeline.fill(dataset, pipeline.step_stage(root, cache, hf_home, exp_name, "data", "", identity))


def train_op(root: str, cache: str, hf_home: str, exp_name: str, stage: str, identity: str, dataset: Input[Dataset],
             base: Input[Model], model: Output[Model]):  # fmt: skip
    from safealign.run import pipeline_steps as pipeline

    meta = pipeline.step_stage(root, cache, hf_home, exp_name, stage, "", identity)
    pipeline.fill(model, {**meta, "trained_from": base.metadata.get("stage", base.metadata.get("base_model", ""))})


def judge_op(root: str, cache: str, hf_home: str, exp_name: str, identity: str, dataset: Input[Dataset],
             judge: Output[Model]):  # fmt: skip
    from safealign.run import pipeline_steps as pipeline

    pipeline.fill(judge, pipeline.step_stage(root, cache, hf_home, exp_name, "judge", "", identity))


def leaderboard_op(root: str, cache: str, hf_home: str, exp_name: str, model_name: str, identity: str,
                   model: Input[Model], scores: Output[Metrics]):  # fmt: skip
    from safealign.run import pipeline_steps as pipeline

    meta = pipeline.step_stage(root, cache, hf_home, exp_name, "leaderboard", model_name, identity)
    for k, v in meta.pop("metrics").items():
        scores.log_metric(k, v)
    scores.metadata.update(meta)


def safety_op(root: str, cache: str, hf_home: str, exp_name: str, model_name: str, identity: str,
              model: Input[Model], judge: Input[Model], dataset: Input[Dataset], rates: Output[Metrics]):  # fmt: skip
    from safealign.run import pipeline_steps as pipeline

    meta = pipeline.step_stage(root, cache, hf_home, exp_name, "safety", model_name, identity)
    for k, v in meta.pop("metrics").items():
        rates.log_metric(k, v)
    rates.metadata.update(meta)


def safety_set_op(root: str, cache: str, hf_home: str, exp_name: str, model_name: str, eval_set: str, identity: str,
                  model: Input[Model], judge: Input[Model], rates: Output[Metrics]):  # fmt: skip
    from safealign.run import pipeline_steps as pipeline

    meta = pipeline.step_stage(root, cache, hf_home, exp_name, "safety", model_name, identity, eval_set)
    for k, v in meta.pop("metrics").items():
        rates.log_metric(k, v)
    rates.metadata.update(meta)


def summary_op(root: str, cache: str, hf_home: str, exp_name: str, summary: Output[Metrics],
               table: Output[Markdown]):  # fmt: skip
    import shutil

    from safealign.run import pipeline_steps as pipeline

    for k, v in pipeline.step_summary(root, cache, hf_home, exp_name).items():
        summary.log_metric(k, v)
    summary.metadata["experiment"] = exp_name
    shutil.copyfile(pipeline.experiment_at(root, exp_name).folder / "eval" / "summary.md", table.path)


def report_op(root: str, cache: str, hf_home: str, exp_name: str, summary: Input[Metrics], report: Output[Markdown]):
    import shutil

    from safealign.run import pipeline_steps as pipeline

    shutil.copyfile(pipeline.step_report(root, cache, hf_home, exp_name), report.path)


OPS = (resolve_op, base_op, gen_op, data_op, train_op, judge_op, leaderboard_op, safety_op, safety_set_op, summary_op,
       report_op)  # fmt: skip
