"""Models: locate and load a base model or a stage's merged model (load: hub ids, local folders,
the embedded tiny-local / tiny-refuser, smollm2-135m and toy-<family> models, the runtime each
training stage gets), the architecture families and their chat templates (families), building the
embedded models (tiny; smollm2: the real SmolLM2-135M-Instruct from a pinned PyPI wheel), the one
policy for over-long rows (truncate) and the generation loop that the safety stage and data
generation share (generation).

May import: core.
"""
