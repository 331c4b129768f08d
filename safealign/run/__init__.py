"""Orchestration: the stage dispatcher Make calls (stages), a training stage's work in its
folder (training), the online kinds' rounds (rounds), the Kubeflow compiler (pipeline),
its components and the steps they run in their containers (pipeline_ops, pipeline_steps), and
the regression suite (regress).

May import: core, models, config, plan, eval, data, train.
"""
