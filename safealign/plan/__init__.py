"""The plan and the store: an experiment resolved into content-addressed stages (experiment:
identities, stages.json, stages.mk, the links, the Experiment every runner takes), the code
prerequisites Make reads for each stage (codedeps) and what every stage records about how it
was built (provenance).

May import: core, models, config.
"""
