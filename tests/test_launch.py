"""The recipe's launch: section without launching anything: validation with the key named, the
machine checks at resolve time, what each strategy renders (checked by accelerate, DeepSpeed's
transformers integration and Axolotl's own validation), the commands, and the check of what the
processes recorded. The launches themselves: tests/test_launch_e2e.py (slow)."""

import json
import sys

import pytest
import yaml
from conftest import REPO

from safealign.config import kinds, launch, recipe
from safealign.config.launch import LaunchCfg
from safealign.models import load as models
from safealign.plan import experiment as plan
from safealign.run import stages
from safealign.train import launcher, render, render_check

SFT_KTO = REPO / "recipes" / "sft_kto.yaml"


def problems(*sets):
    try:
        recipe.load(SFT_KTO, list(sets))
    except recipe.RecipeError as e:
        return e.problems
    return []


def test_one_process_is_the_default_and_changes_no_stage_name():
    r = recipe.load(SFT_KTO)
    assert r.launch == LaunchCfg() and not launch.launched(r.launch)
    assert launch.identity(r.launch) == {}
    named = plan.plan(r)
    two = plan.plan(recipe.load(SFT_KTO, ["launch.processes=2"]))
    # training stages depend on the world size; data, judge and the base model's evaluation do not
    assert named["sft"]["dir"] != two["sft"]["dir"] and named["kto"]["dir"] != two["kto"]["dir"]
    for shared in ("data", "judge", "safety-base"):
        assert named[shared]["dir"] == two[shared]["dir"]
    # the rendezvous address is not part of what a stage computes
    moved = plan.plan(recipe.load(SFT_KTO, ["launch.processes=2", "launch.main_process_port=29999"]))
    assert moved["kto"]["dir"] == two["kto"]["dir"]


@pytest.mark.parametrize(
    "sets, key, says",
    [
        (["launch.strategy=zero3"], "SET launch.strategy", "expected one of ddp, deepspeed, fsdp"),
        (["launch.strategy=deepspeed", "launch.zero_stage=1"], "SET launch.zero_stage", "expected 2"),
        (["launch.offload=true"], "SET launch.offload", "needs strategy deepspeed or fsdp"),
        (["launch.processes=0"], "SET launch.processes", "at least 1"),
        (["launch.nodes=0"], "SET launch.nodes", "at least 1"),
        (["launch.main_process_port=70000"], "SET launch.main_process_port", "TCP port"),
        (["launch.strategy=deepspeed", "sft.adapter=qlora"], "SET launch.strategy", "sft.adapter is qlora"),
        (["launch.procesess=2"], "SET launch.procesess", "did you mean 'processes'"),
    ],
)
def test_wrong_launch_settings_are_refused_with_the_key(sets, key, says):
    found = problems(*sets)
    assert any(p.startswith(key) and says in p for p in found), found


def test_launch_errors_name_the_recipe_line(tmp_path):
    (tmp_path / "r.yaml").write_text("stages: [kto]\nlaunch:\n  processes: 2\n  strategy: megatron\n")
    with pytest.raises(recipe.RecipeError) as e:
        recipe.load(tmp_path / "r.yaml")
    assert f"{tmp_path / 'r.yaml'}:4: launch.strategy" in str(e.value)


def test_machine_checks():
    cfg = LaunchCfg(processes=4)
    assert launch.check_machine(cfg, cuda_devices=8, cpus=2) == []
    (gpu,) = launch.check_machine(LaunchCfg(processes=9), cuda_devices=8, cpus=64)
    assert gpu.startswith("launch.processes: 9") and "8 CUDA GPU(s)" in gpu
    (cpu,) = launch.check_machine(cfg, cuda_devices=0, cpus=2)
    assert cpu.startswith("launch.processes: 4") and "2 CPU core(s)" in cpu
    (fsdp,) = launch.check_machine(LaunchCfg(processes=2, strategy="fsdp"), cuda_devices=0, cpus=2)
    assert fsdp.startswith("launch.strategy: fsdp needs CUDA")
    (ax,) = launch.check_machine(LaunchCfg(processes=2, strategy="deepspeed"), 0, 2, {"axolotl", "trl"})
    assert ax.startswith("launch.strategy: deepspeed with an Axolotl stage")
    assert launch.check_machine(LaunchCfg(processes=2, strategy="deepspeed"), 0, 2, {"trl"}) == []


def test_resolve_refuses_more_processes_than_this_machine_has(tmp_path, monkeypatch):
    cores = len(__import__("os").sched_getaffinity(0))
    exp = tmp_path / "experiments" / "x"
    with pytest.raises(recipe.RecipeError) as e:
        plan.resolve(str(SFT_KTO), exp, [f"launch.processes={cores + 1}"])
    assert f"launch.processes: {cores + 1} processes per node" in str(e.value)
    assert not exp.exists()  # nothing written
    monkeypatch.setenv("SAFEALIGN_RENDER", "1")  # `make render` resolves for the GPU machine instead
    plan.resolve(str(SFT_KTO), exp, [f"launch.processes={cores + 1}"])


def render_stage(tmp_path, stage, cfg_launch, cuda=False, r=None):
    r = r or recipe.load(SFT_KTO)
    kind, cfg = kinds.get(stage), getattr(r, stage)
    rt = {**models.runtime(cfg, stage, gpu=cuda), "bf16": cuda}
    d = tmp_path / f"{stage}-{cfg_launch.strategy}-{cuda}"
    d.mkdir(parents=True)
    cmd = render.render_stage(
        kind,
        cfg,
        d,
        recipe_path="recipes/sft_kto.yaml",
        model="/m",
        seed=1,
        tracker="none",
        tracker_project="p",
        rt=rt,
        launch_cfg=cfg_launch,
    )
    return d, cmd


def test_one_process_renders_no_launcher(tmp_path):
    d, cmd = render_stage(tmp_path, "kto", LaunchCfg())
    assert cmd == [sys.executable, "train_kto.py", "kto.yaml"]
    assert not (d / "accelerate.yaml").exists() and "ddp_backend" not in (d / "kto.yaml").read_text()


def test_cpu_ddp_command_and_config(tmp_path):
    d, cmd = render_stage(tmp_path, "kto", LaunchCfg(processes=2))
    # ACCELERATE_USE_CPU=1 + a MULTI_GPU config: the one accelerate route to N gloo processes on CPU
    assert cmd[:2] == ["env", "ACCELERATE_USE_CPU=1"]
    assert cmd[2:] == [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        "accelerate.yaml",
        "train_kto.py",
        "kto.yaml",
    ]
    acc = yaml.safe_load((d / "accelerate.yaml").read_text())
    assert acc["distributed_type"] == "MULTI_GPU" and acc["num_processes"] == 2 and acc["use_cpu"] is False
    assert yaml.safe_load((d / "kto.yaml").read_text())["trl"]["ddp_backend"] == "gloo"
    assert (
        "# Run from the stage folder:  env ACCELERATE_USE_CPU=1 accelerate launch"
        in (d / "accelerate.yaml").read_text()
    )
    assert render_check.check_launch(d, LaunchCfg(processes=2)) == {
        "launcher": "multi_gpu",
        "processes": 2,
        "machines": 1,
    }


@pytest.mark.parametrize("stage_", [2, 3])
@pytest.mark.parametrize("offload", [False, True])
def test_deepspeed_for_trl_renders_a_config_transformers_reads(tmp_path, stage_, offload):
    cfg = LaunchCfg(processes=2, strategy="deepspeed", zero_stage=stage_, offload=offload)
    d, cmd = render_stage(tmp_path, "dpo", cfg, cuda=True)
    assert cmd[0] == sys.executable  # no ACCELERATE_USE_CPU: it would silently turn DeepSpeed into DDP
    acc = yaml.safe_load((d / "accelerate.yaml").read_text())
    assert acc["distributed_type"] == "DEEPSPEED"
    assert acc["deepspeed_config"]["deepspeed_config_file"] == "ds_config.json"
    assert acc["deepspeed_config"]["zero3_init_flag"] is (stage_ == 3)
    checked = render_check.check_launch(d, cfg)  # accelerate's launcher and DeepSpeed plugin read them as the run will
    assert checked["launcher"] == "deepspeed" and checked["zero_stage"] == stage_ and checked["offload"] is offload
    ds = json.loads((d / "ds_config.json").read_text())
    assert ds["train_micro_batch_size_per_gpu"] == "auto"  # the trainer's own value, one place
    if stage_ == 3:  # the merge reads the saved adapter: ZeRO-3 must gather it on save
        assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert "ddp_backend" not in yaml.safe_load((d / "dpo.yaml").read_text())["trl"]  # NCCL on GPUs


def test_fsdp_for_trl_goes_in_the_accelerate_config(tmp_path):
    d, _ = render_stage(tmp_path, "kto", LaunchCfg(processes=8, strategy="fsdp", offload=True), cuda=True)
    acc = yaml.safe_load((d / "accelerate.yaml").read_text())
    assert acc["distributed_type"] == "FSDP" and acc["num_processes"] == 8
    assert acc["fsdp_config"]["fsdp_version"] == 2 and acc["fsdp_config"]["fsdp_offload_params"] is True
    assert acc["fsdp_config"]["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    checked = render_check.check_launch(d, LaunchCfg(processes=8, strategy="fsdp", offload=True))
    assert checked["launcher"] == "multi_gpu" and checked["fsdp_version"] == 2 and checked["offload"]
    d, _ = render_stage(tmp_path / "no", "kto", LaunchCfg(processes=8, strategy="fsdp"), cuda=True)
    assert render_check.check_launch(d, LaunchCfg(processes=8, strategy="fsdp"))["offload"] is False


def test_render_check_catches_what_accelerate_refuses_at_launch(tmp_path):
    """accelerate refuses precision in its config beside a DeepSpeed file, in every process at
    start-up; the render check replays its launcher and finds it first. And a config that would
    start one process is refused."""
    cfg = LaunchCfg(processes=2, strategy="deepspeed")
    d, _ = render_stage(tmp_path, "kto", cfg, cuda=True)
    good = (d / "accelerate.yaml").read_text()
    (d / "accelerate.yaml").write_text(good + 'mixed_precision: "no"\n')
    with pytest.raises(ValueError, match="When using `deepspeed_config_file`"):
        render_check.check_launch(d, cfg)
    (d / "accelerate.yaml").write_text(good.replace("distributed_type: DEEPSPEED", "distributed_type: MULTI_CPU"))
    with pytest.raises(render_check.RenderError, match="would start one process"):
        render_check.check_launch(d, cfg)


def test_two_nodes_render_one_command_per_node(tmp_path):
    cfg = LaunchCfg(processes=8, nodes=2, main_process_ip="10.0.0.1", main_process_port=29501)
    d, cmd = render_stage(tmp_path, "kto", cfg, cuda=True)
    acc = yaml.safe_load((d / "accelerate.yaml").read_text())
    assert (acc["num_machines"], acc["num_processes"], acc["main_process_ip"]) == (2, 16, "10.0.0.1")
    assert acc["main_process_port"] == 29501 and acc["machine_rank"] == 0
    assert cmd[cmd.index("--machine_rank") + 1] == "0"  # safealign join swaps in its own


@pytest.mark.parametrize("strategy", ["ddp", "deepspeed", "fsdp"])
def test_axolotl_takes_deepspeed_and_fsdp_through_its_own_keys(tmp_path, strategy):
    cfg = LaunchCfg(processes=8, strategy=strategy, zero_stage=3)
    d, cmd = render_stage(tmp_path, "sft", cfg, cuda=True)
    assert cmd[-3:] == ["-m", "axolotl.cli.train", "axolotl.yaml"]  # on a GPU: Axolotl's own entry point
    ax = yaml.safe_load((d / "axolotl.yaml").read_text())
    acc = yaml.safe_load((d / "accelerate.yaml").read_text())
    assert acc["distributed_type"] == "MULTI_GPU" and acc["num_processes"] == 8  # Axolotl switches DS/FSDP on
    assert ax.get("deepspeed") == ("ds_config.json" if strategy == "deepspeed" else None)
    assert (ax.get("fsdp_version"), "fsdp_config" in ax) == ((2, True) if strategy == "fsdp" else (None, False))
    # Axolotl's own validation, with the tiny model's config.json
    import contextlib

    with contextlib.chdir(d):
        checked = render_check.check_axolotl((d / "axolotl.yaml").read_text(), models.tiny_path())
    assert checked["deepspeed_zero_stage"] == (3 if strategy == "deepspeed" else None)
    assert checked["fsdp_version"] == (2 if strategy == "fsdp" else None)


def test_axolotl_on_several_cpu_processes_uses_the_cpu_entry_point(tmp_path):
    _, cmd = render_stage(tmp_path, "sft", LaunchCfg(processes=2))
    assert cmd[-3:] == ["-m", "safealign.train.axolotl_cpu", "axolotl.yaml"] and cmd[:2] == [
        "env",
        "ACCELERATE_USE_CPU=1",
    ]


def records(tmp_path, recs):
    (tmp_path / "launch").mkdir(exist_ok=True)
    for r in recs:
        (tmp_path / "launch" / f"rank{r['rank']}.json").write_text(json.dumps(r))


def rec(rank, world=2, dtype="MULTI_CPU", zero=None):
    return {
        "rank": rank,
        "local_rank": rank,
        "node_rank": 0,
        "world_size": world,
        "distributed_type": dtype,
        "backend": "gloo",
        "device": "cpu",
        "zero_stage": zero,
        "fsdp_version": None,
        "per_device_batch": 4,
        "gradient_accumulation_steps": 1,
        "batches_per_epoch": 10,
        "rows": 80,
        "host": "h",
        "pid": rank,
    }


def test_verify_accepts_what_was_asked(tmp_path):
    records(tmp_path, [rec(0), rec(1)])
    got = launcher.verify(tmp_path, LaunchCfg(processes=2), cuda=False)
    assert got["world_size"] == 2 and got["distributed_type"] == "MULTI_CPU" and got["global_batch"] == 8


@pytest.mark.parametrize(
    "recs, cfg, says",
    [
        # `accelerate launch --cpu --num_processes 2`: one process, exit 0
        ([rec(0, world=1, dtype="NO")], LaunchCfg(processes=2), "world size [1] recorded, 2 asked"),
        # --multi_gpu without ACCELERATE_USE_CPU on CPU: two independent single-process trainings
        ([rec(0, world=1, dtype="NO")] * 2, LaunchCfg(processes=2), "world size [1] recorded"),
        # ACCELERATE_USE_CPU=1 with a DeepSpeed config: plain DDP
        ([rec(0), rec(1)], LaunchCfg(processes=2, strategy="deepspeed"), "MULTI_CPU'] recorded, DEEPSPEED expected"),
        (
            [rec(0, dtype="DEEPSPEED", zero=2), rec(1, dtype="DEEPSPEED", zero=2)],
            LaunchCfg(processes=2, strategy="deepspeed", zero_stage=3),
            "ZeRO stage ['2'] recorded, 3 asked",
        ),
        ([rec(0)], LaunchCfg(processes=2), "ranks [0] recorded, 0..1 expected"),
        ([], LaunchCfg(processes=2), "no process recorded"),
    ],
)
def test_verify_refuses_wrong_launches_that_exit_0(tmp_path, recs, cfg, says):
    records(tmp_path, recs)
    with pytest.raises(launcher.LaunchMismatch) as e:
        launcher.verify(tmp_path, cfg, cuda=False)
    assert says in str(e.value)


def test_shard_arithmetic():
    # accelerate deals whole batches out in turn: 623 rows, 8 per batch, 2 processes -> 78 batches, 39 each
    assert launcher.shard_batches(623, 8, 2) == 39 and launcher.shard_batches(623, 8, 1) == 78
    assert launcher.shard_batches(406, 4, 2) == 51


def test_join_refuses_a_single_node_experiment(tmp_path):
    exp = tmp_path / "experiments" / "x"
    plan.resolve(str(SFT_KTO), exp, [])
    with pytest.raises(stages.StageError, match="launch.nodes is 1"):
        stages.join(plan.Experiment(exp), 1)
    plan.resolve(str(SFT_KTO), exp, ["launch.nodes=2"])
    with pytest.raises(stages.StageError, match="NODE_RANK 2: expected 1..1"):
        stages.join(plan.Experiment(exp), 2)


def test_a_profile_may_carry_its_launch(tmp_path, monkeypatch):
    """A model too big for one GPU says so in its profile; SET still overrides it."""
    (tmp_path / "big.yaml").write_text(
        "hardware: 8x 80 GB\nbase_model: org/big\nlaunch:\n  processes: 8\n  strategy: deepspeed\n  zero_stage: 3\n"
    )
    monkeypatch.setattr(recipe, "MODELS", tmp_path)
    r = recipe.load(SFT_KTO, ["model=big"])
    assert (r.launch.processes, r.launch.strategy, r.launch.zero_stage) == (8, "deepspeed", 3)
    assert recipe.load(SFT_KTO, ["model=big", "launch.zero_stage=2"]).launch.zero_stage == 2
    (tmp_path / "bad.yaml").write_text("base_model: org/big\nlaunch:\n  strategy: zero\n")
    with pytest.raises(recipe.RecipeError, match=r"bad.yaml:3: launch.strategy: expected one of"):
        recipe.load(SFT_KTO, ["model=bad"])


def test_launch_templates_are_prerequisites_of_launched_stages_only(tmp_path):
    def code(sets):
        exp = tmp_path / "experiments" / f"x{len(sets)}"
        plan.resolve(str(SFT_KTO), exp, sets)
        lines = dict(line.split(" := ", 1) for line in (exp / "stages.mk").read_text().splitlines() if " := " in line)
        return lines["CODE_kto"].split(), lines["CODE_safety-kto"].split()

    kto, safety = code([])
    assert "templates/accelerate/config.yaml.j2" not in kto
    kto, safety = code(["launch.processes=2"])
    assert set(launch.TEMPLATES) <= set(kto) and "templates/accelerate/config.yaml.j2" not in safety
    assert "safealign/train/launcher.py" in kto and "safealign/train/axolotl_cpu.py" in kto


def test_your_own_deepspeed_file(tmp_path):
    """launch.deepspeed_config: a user's DeepSpeed JSON (Axolotl ships a folder of them) is used as
    it is, its stage read from it, its content in the stage's identity and Make prerequisites; a
    ZeRO-3 file that would save the adapter partitioned is refused before anything runs."""
    z3 = {
        "zero_optimization": {"stage": 3, "stage3_gather_16bit_weights_on_model_save": True},
        "bf16": {"enabled": "auto"},
    }
    good = tmp_path / "z3.json"
    good.write_text(json.dumps(z3))
    sets = ["launch.processes=2", "launch.strategy=deepspeed", f"launch.deepspeed_config={good}"]
    r = recipe.load(SFT_KTO, sets)
    assert launch.zero_stage(r.launch) == 3  # the file's, not launch.zero_stage (2)
    d, _ = render_stage(tmp_path, "kto", r.launch, cuda=True, r=r)
    assert json.loads((d / "ds_config.json").read_text()) == z3
    assert yaml.safe_load((d / "accelerate.yaml").read_text())["deepspeed_config"]["zero3_init_flag"] is True
    assert render_check.check_launch(d, r.launch)["zero_stage"] == 3
    before = plan.plan(r)["kto"]["dir"]
    good.write_text(json.dumps({**z3, "gradient_clipping": 0.5}))
    assert plan.plan(recipe.load(SFT_KTO, sets))["kto"]["dir"] != before  # its content is part of the identity
    assert str(good) in launch.files(r.launch)

    bad = tmp_path / "bad.json"
    for text, says in [
        (json.dumps({"zero_optimization": {"stage": 3}}), "stage3_gather_16bit_weights_on_model_save is true"),
        (json.dumps({"zero_optimization": {"stage": 1}}), "zero_optimization.stage must be 2 or 3, got 1"),
        ("{stage: 3", "is not JSON"),
    ]:
        bad.write_text(text)
        found = problems("launch.processes=2", "launch.strategy=deepspeed", f"launch.deepspeed_config={bad}")
        assert any(p.startswith("SET launch.deepspeed_config") and says in p for p in found), found
    found = problems("launch.processes=2", f"launch.deepspeed_config={good}")
    assert any("needs strategy deepspeed" in p for p in found), found
    found = problems(
        "launch.processes=2", "launch.strategy=deepspeed", f"launch.deepspeed_config={tmp_path / 'none.json'}"
    )
    assert any("no such file" in p for p in found), found


def test_a_failed_stage_shows_its_error_not_nanobinds_leak_report():
    log = ["Traceback (most recent call last):\n", "ValueError: the real reason\n", "nanobind: leaked 5 instances!\n"]
    log += [' - leaked instance 0x1 of type "triton._C.x"\n'] * 40 + [" - ... skipped remainder\n"]
    log += ["nanobind: this is likely caused by a reference counting issue in the binding code.\n"]
    log += ["See https://nanobind.readthedocs.io/en/latest/refleaks.html\n"]
    assert launcher.failure_tail(log) == log[:2]
    assert launcher.failure_tail([f"{i}\n" for i in range(30)]) == [f"{i}\n" for i in range(5, 30)]
