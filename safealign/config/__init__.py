"""The recipe: one schema, split by section (recipe: loading, composition through extends,
profile and SET, ranges, validation with file:line; kinds: the table of stage kinds and their
sections; data, eval, launch, resources: those sections and their checks). Nothing here runs
a stage; it says what one is.

May import: core, models.
"""
