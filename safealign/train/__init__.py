"""Training: a stage's files rendered from its kind's templates (render), how it starts on one
or more processes and what each recorded (launcher), the trainers' code that runs inside
those processes (kto and its losses, callbacks, axolotl_plugin, axolotl_cpu), the online kinds'
labels, pairs, reward-hacking counts and GRPO's judge rewards (online), the offline
check of rendered configs for a GPU machine (render_check) and the GPU benchmark (benchgpu,
flops).

May import: core, models, config, plan, eval, data.
"""
