"""Axolotl's training entry point for several processes on a machine without CUDA (the tests, a laptop).

`python -m safealign.train.axolotl_cpu axolotl.yaml` is `python -m axolotl.cli.train axolotl.yaml` with
one fix: with more than one process Axolotl 0.19 places the model on `device_map={"": LOCAL_RANK}`
(axolotl/utils/config/__init__.py, normalize_config), an accelerator index that does not exist
without CUDA ("Cannot access accelerator device when none is available"). Here the map is
cleared, so the model loads on the CPU and accelerate's DDP over gloo takes it from there. The
stage uses this module only when it launches several processes without CUDA; on a GPU the command
is Axolotl's own. Axolotl's DeepSpeed path also assumes CUDA (one process: NCCL hard-coded in
axolotl/utils/trainer.py; several CPU processes: DeepSpeed's batch check fails), so without CUDA
the recipe refuses DeepSpeed for the SFT stage (safealign/config/launch.py, check_machine).
"""

from __future__ import annotations


def patch() -> None:
    import axolotl.cli.config as cli_config
    import torch

    normalize = cli_config.normalize_config

    def normalize_for_cpu(cfg):
        normalize(cfg)
        if not torch.cuda.is_available() and (cfg.world_size or 1) > 1:
            cfg.device_map = None  # the CPU; not a CUDA index per rank

    cli_config.normalize_config = normalize_for_cpu


if __name__ == "__main__":  # a guard, not a convenience: dataset workers re-import the main module
    import fire
    from axolotl.cli.train import do_cli

    patch()
    fire.Fire(do_cli)
