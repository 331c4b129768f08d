"""Foundations every layer uses: atomic files and stage folders under a lock (fsutil), the one
rule for each command-line name (names), model and dataset references as path or hub id
(refs), where libraries keep their caches (caches), and the error a stage raises for a reason the user can act on (errors).

May import: nothing.
"""
