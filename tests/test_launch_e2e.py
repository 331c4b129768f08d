"""Training stages launched as several processes, for real, on CPU (`make test-slow`).

Two processes over gloo on the tiny model, through the stage runner itself (`safealign stage`),
so that what is checked is what `make exp` runs. Several wrong launches exit 0 while doing the
wrong thing, so no test here trusts an exit code: each reads what the processes recorded from
inside the trainer (launch/rank<N>.json, summarised in summary.json and provenance.json as
`distributed`) and asserts the world size and the distributed type, that the data was sharded
(each process saw its share of the batches, and the epoch counter moved accordingly), that only
rank 0 wrote the log, and that the adapter matches a reference run within a stated tolerance.

The references: one process with the same global batch (8 = 2 processes x 4). LoRA dropout is off
(each process would draw its own masks) and so is the tracker. KTO's KL estimate pairs each
completion with another prompt *within a device's batch*, so it changes with the per-device batch:
KTO across batch layouts is compared loosely, DeepSpeed against DDP at the same layout tightly.

The SFT stage runs Axolotl through safealign.train.axolotl_cpu, which clears the `device_map={"":
LOCAL_RANK}` Axolotl forces for more than one process (a CUDA index that does not exist here);
on a GPU the stage runs Axolotl's own entry point. FSDP is GPU-only (accelerate enables it only on
GPUs; over gloo it would not sync): its rendering is tested in tests/test_launch.py, its launch by
the gpu-marked test at the end.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from safealign.config import launch
from safealign.train import launcher

REPO = Path(__file__).resolve().parent.parent
RECIPE = str(REPO / "recipes" / "sft_kto.yaml")
STEPS = 4

# Measured on this kind of machine (2 processes, 4 steps): see each test for the measured value.
TOL_DPO_DDP = 1e-5  # DPO: DDP 2x4 vs one process x8: measured 5.6e-7
TOL_SFT_DDP = 5e-2  # SFT: measured 1.2e-2 (Axolotl's batches per process are not the single run's halves)
# KTO: the KL estimate is per device batch (see the module docstring), and Adam turns that small
# difference in LoRA A's near-zero gradients (B starts at 0) into steps of about the learning rate
# whose sign varies by CPU: A differed by 6.0e-5 on an AMD EPYC, 2.4e-4 on an Intel Xeon (all of
# the 4 steps' movement, 1e-3, would be 4e-3 at most). B, which training moves from zero, differed
# by 2.2e-6 there: KTO is compared on B, against 1e-4 (every entry 10x below what training moved)
TOL_KTO_DDP = 1e-4
TOL_ZERO2 = 1e-6  # ZeRO-2 vs DDP, same layout
TOL_ZERO3 = 1e-5  # ZeRO-3 vs DDP, same layout (weights gathered and re-partitioned each step)


def sa(*args, check=True, **kw):
    r = subprocess.run(
        [sys.executable, "-m", "safealign", *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "SAFEALIGN_QUIET": "1"},
        **kw,
    )
    if check:
        assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    return r


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("experiments")


def sets(stage: str, *extra: str) -> list[str]:
    return [
        f"stages=[{stage}]",
        f"{stage}.max_steps={STEPS}",
        f"{stage}.lora_dropout=0.0",
        "tracker=none",
        *extra,
    ]


def resolve(root: Path, name: str, stage: str, *extra: str) -> Path:
    exp = root / name
    sa("resolve", "--recipe", RECIPE, "--exp", exp, "--set", *sets(stage, *extra))
    sa("stage", "data", "--exp", exp)
    return exp


def train(root: Path, name: str, stage: str, *extra: str) -> Path:
    exp = resolve(root, name, stage, *extra)
    sa("stage", stage, "--exp", exp)
    return (exp / stage).resolve()


def adapter(d: Path) -> dict:
    return load_file(str(d / "adapter" / "adapter_model.safetensors"))


def max_diff(a: Path, b: Path, only: str = "") -> float:
    """The largest difference between two adapters' weights (those whose name holds `only`)."""
    x, y = adapter(a), adapter(b)
    assert x.keys() == y.keys()
    return max((x[k].float() - y[k].float()).abs().max().item() for k in x if only in k)


def trained(d: Path) -> float:
    """How far training moved the adapter: LoRA's B matrices start at zero (peft's default
    initialisation), so their largest entry is the largest change training made there."""
    b = [v for k, v in adapter(d).items() if "lora_B" in k]
    assert b, f"{d}: no lora_B weights in the adapter"
    return max(v.float().abs().max().item() for v in b)


def log(d: Path) -> list[dict]:
    return [json.loads(line) for line in (d / "train_log.jsonl").read_text().splitlines() if line.strip()]


def check_distributed(d: Path, world: int, dtype: str, batch: int, zero=None) -> dict:
    """What the processes recorded: world size, type, each rank once, the data sharded."""
    dist = json.loads((d / "summary.json").read_text())["distributed"]
    assert dist == json.loads((d / "provenance.json").read_text())["distributed"]
    assert dist["world_size"] == world and dist["distributed_type"] == dtype, dist
    if dtype != "NO":
        # on GPUs torch names the backend per device: "nccl", or FSDP2's "cuda:nccl,cpu:gloo"
        assert ("nccl" in dist["backend"]) if torch.cuda.is_available() else dist["backend"] == "gloo", dist
    if zero:
        assert dist["zero_stage"] == zero
    recs = [json.loads((d / "launch" / f"rank{i}.json").read_text()) for i in range(world)]
    assert sorted(r["rank"] for r in recs) == list(range(world)) and len({r["pid"] for r in recs}) == world
    rows = recs[0]["rows"]
    # sharded: each process sees its share of the batches, and an epoch is that many steps
    assert {r["batches_per_epoch"] for r in recs} == {launcher.shard_batches(rows, batch, world)}
    steps = log(d)
    end = [r for r in steps if "loss" in r]
    assert [r["step"] for r in end] == list(range(1, STEPS + 1))  # one writer: rank 0, each step once
    assert end[-1]["epoch"] == pytest.approx(STEPS / launcher.shard_batches(rows, batch, world))
    assert dist["global_batch"] == batch * world
    return dist


# ------------------------------------------------------------------------------------ trl: DDP
@pytest.mark.slow
@pytest.mark.parametrize("stage, tol", [("dpo", TOL_DPO_DDP), ("kto", TOL_KTO_DDP)])
def test_trl_ddp_two_processes_match_one(root, stage, tol):
    one = train(root, f"{stage}-one", stage, f"{stage}.micro_batch_size=8")
    two = train(root, f"{stage}-ddp", stage, f"{stage}.micro_batch_size=4", "launch.processes=2")
    check_distributed(one, 1, "NO", 8)
    check_distributed(two, 2, "MULTI_CPU", 4)
    assert not (one / "accelerate.yaml").exists() and (two / "accelerate.yaml").exists()
    diff = max_diff(one, two, only="lora_B" if stage == "kto" else "")
    print(f"{stage}: DDP 2x4 vs 1x8 adapter max |diff| {diff:.3g} (all weights: {max_diff(one, two):.3g})")
    assert diff < tol
    # the tolerance is well below what the 4 steps moved (measured 1.0e-3 for both: Adam moves a
    # weight by about the learning rate a step), so a launch that trained nothing, or two
    # unsynchronised halves, would be found
    print(f"{stage}: training moved the adapter by up to {trained(one):.3g}")
    assert trained(one) > 3 * tol


# ------------------------------------------------------------------------------- trl: DeepSpeed
@pytest.mark.slow
# each ZeRO stage once and each trainer once (a launch costs ~1 minute here: DeepSpeed's start-up);
# how each combination renders is tests/test_launch.py's
@pytest.mark.parametrize("stage, zero, tol", [("dpo", 3, TOL_ZERO3), ("kto", 2, TOL_ZERO2)])
def test_trl_deepspeed_zero_matches_ddp(root, stage, zero, tol):
    ddp = train(root, f"{stage}-ddp", stage, f"{stage}.micro_batch_size=4", "launch.processes=2")
    ds = train(
        root,
        f"{stage}-zero{zero}",
        stage,
        f"{stage}.micro_batch_size=4",
        "launch.processes=2",
        "launch.strategy=deepspeed",
        f"launch.zero_stage={zero}",
    )
    check_distributed(ds, 2, "DEEPSPEED", 4, zero=zero)
    assert json.loads((ds / "ds_config.json").read_text())["zero_optimization"]["stage"] == zero
    diff = max_diff(ddp, ds)
    print(f"{stage}: ZeRO-{zero} vs DDP adapter max |diff| {diff:.3g}")
    assert diff < tol
    assert (ds / "merged" / "model.safetensors").exists()  # the merge read the gathered adapter


# ------------------------------------------------------------------------------- Axolotl: DDP
@pytest.mark.slow
def test_axolotl_sft_ddp_two_processes(root):
    one = train(root, "sft-one", "sft", "sft.micro_batch_size=8")
    two = train(root, "sft-ddp", "sft", "sft.micro_batch_size=4", "launch.processes=2")
    check_distributed(two, 2, "MULTI_CPU", 4)
    assert "-m safealign.train.axolotl_cpu axolotl.yaml" in (two / "accelerate.yaml").read_text()
    diff = max_diff(one, two)
    # another seed, for scale (4 steps need not lower this seed's loss: the health check is off for it)
    other = max_diff(one, train(root, "sft-one-b", "sft", "sft.micro_batch_size=8", "seed=7", "health.enabled=false"))
    print(f"sft: DDP 2x4 vs 1x8 adapter max |diff| {diff:.3g}; another seed: {other:.3g}")
    assert diff < TOL_SFT_DDP and other > 3 * diff


# --------------------------------------------------------------------- a wrong launch, for real
@pytest.mark.slow
def test_a_real_wrong_launch_exits_0_and_is_caught(root, tmp_path):
    """`accelerate launch --cpu --num_processes 2` runs one process and exits 0: the records say so."""
    exp = resolve(root, "kto-ddp", "kto", "kto.micro_batch_size=4", "launch.processes=2")
    d = (exp / "kto").resolve()
    if not (d / "train_kto.py").exists():
        sa("stage", "kto", "--exp", exp)
    work = tmp_path / "wrong"
    work.mkdir()
    for f in ("train_kto.py", "train.jsonl"):
        (work / f).write_bytes((d / f).read_bytes())
    # the config as a user would write it without the stage's help: no ddp_backend
    (work / "kto.yaml").write_text(
        "".join(line for line in (d / "kto.yaml").read_text().splitlines(True) if "ddp_backend" not in line)
    )
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--cpu",
            "--num_processes",
            "2",
            "train_kto.py",
            "kto.yaml",
        ],
        cwd=work,
        capture_output=True,
        text=True,
        env={**os.environ, "SAFEALIGN_TRAIN_LOG": str(work / "train_log.jsonl"), "PYTHONPATH": str(REPO)},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    with pytest.raises(launcher.LaunchMismatch, match=r"world size \[1\] recorded, 2 asked"):
        launcher.verify(work, launch.LaunchCfg(processes=2), cuda=False)


# ------------------------------------------------------------------------- two nodes, one host
@pytest.mark.slow
def test_two_nodes_rendezvous_on_localhost(root, tmp_path):
    """Node 0 runs the stage (make exp runs the same command), node 1 joins it (make join): one
    world of two processes, one per node, on a shared experiments folder. (Its own store: two
    nodes x one process is the same stage as one node x two, which the module's store holds.)"""
    own = tmp_path / "experiments"
    exp = resolve(own, "kto-nodes", "kto", "kto.micro_batch_size=4", "launch.nodes=2", "launch.main_process_port=29531")
    env = {**os.environ, "SAFEALIGN_QUIET": "1"}
    node1 = subprocess.Popen(
        [sys.executable, "-m", "safealign", "join", "--exp", str(exp), "--node-rank", "1", "--wait", "600"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    node0 = sa("stage", "kto", "--exp", exp, check=False, timeout=900)
    out1, _ = node1.communicate(timeout=900)
    assert node0.returncode == 0, node0.stdout[-3000:] + node0.stderr[-3000:]
    assert node1.returncode == 0, out1[-3000:]
    d = (exp / "kto").resolve()
    dist = check_distributed(d, 2, "MULTI_CPU", 4)
    recs = [json.loads((d / "launch" / f"rank{i}.json").read_text()) for i in range(2)]
    assert [r["node_rank"] for r in recs] == [0, 1] and [r["local_rank"] for r in recs] == [0, 0]
    assert dist["nodes"] == 2
    assert (d / "train.node1.log").exists()  # node 1's own output, beside node 0's train.log
    # the same world as one node with two processes: the same adapter
    assert max_diff(d, train(root, "kto-ddp", "kto", "kto.micro_batch_size=4", "launch.processes=2")) < TOL_ZERO2


# ------------------------------------------------------------------- the benchmark, launched
@pytest.mark.slow
def test_benchmark_runs_its_cases_as_the_launch_asks(tmp_path):
    from safealign.train import benchgpu

    cfg = benchgpu.launch_from(["processes=2", "strategy=deepspeed", "zero_stage=2"])
    (r,) = benchgpu.main("toy", tmp_path, ["dpo-lora"], warmup=1, steps=2, log=lambda m: None, launch_cfg=cfg)
    assert (r["processes"], r["strategy"]) == (2, "deepspeed-zero2")
    assert r["tokens_per_step"] == 2 * 2 * 2 * 248  # micro-batch 2 x (chosen + rejected) x 2 processes
    recs = sorted((tmp_path / "dpo-lora" / "launch").glob("rank*.json"))
    assert [json.loads(p.read_text())["distributed_type"] for p in recs] == ["DEEPSPEED"] * 2


# ----------------------------------------------------------------------------------- GPU only
@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="FSDP needs 2 CUDA GPUs (accelerate enables it only on GPUs)")
def test_fsdp_on_two_gpus(root):
    ddp = train(root, "dpo-ddp-gpu", "dpo", "dpo.micro_batch_size=4", "launch.processes=2")
    fsdp = train(root, "dpo-fsdp", "dpo", "dpo.micro_batch_size=4", "launch.processes=2", "launch.strategy=fsdp")
    check_distributed(fsdp, 2, "FSDP", 4)
    assert max_diff(ddp, fsdp) < 1e-3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (accelerate runs FSDP only on GPUs)")
def test_fsdp_on_one_gpu(root):
    """FSDP with one process still goes through the launcher, over NCCL, and wraps the model: world
    size 1, type FSDP; the adapter close to the plain single-process run's."""
    one = train(root, "dpo-one-gpu", "dpo", "dpo.micro_batch_size=4")
    fsdp = train(root, "dpo-fsdp-one", "dpo", "dpo.micro_batch_size=4", "launch.strategy=fsdp")
    check_distributed(fsdp, 1, "FSDP", 4)
    assert max_diff(one, fsdp) < 2e-3  # measured on an H200: 6.5e-4 (FSDP2 keeps its own parameter copies)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (NCCL, DeepSpeed's CPU Adam for offload)")
def test_one_gpu_still_goes_through_the_launcher_with_zero3_offload(root):
    """One GPU, ZeRO-3 with the optimizer state and weights offloaded to CPU RAM: world size 1, but
    DeepSpeed, over NCCL; the adapter close to the plain single-process run's."""
    one = train(root, "dpo-one-gpu", "dpo", "dpo.micro_batch_size=4")
    ds = train(
        root,
        "dpo-z3-offload",
        "dpo",
        "dpo.micro_batch_size=4",
        "launch.strategy=deepspeed",
        "launch.zero_stage=3",
        "launch.offload=true",
    )
    dist = json.loads((ds / "summary.json").read_text())["distributed"]
    assert (dist["world_size"], dist["distributed_type"], dist["backend"]) == (1, "DEEPSPEED", "nccl")
    assert dist["zero_stage"] == 3 and dist["offload"] is True
    assert max_diff(one, ds) < 1e-3
