"""Data: canonical rows and the per-stage files (rows), public datasets' own formats (importers),
the generation stage that writes rows from a prompt list through a model (generate), and the
data card (card).

May import: core, models, config, plan, eval.
"""
