#!/usr/bin/env python3
"""Expand a sweep grid into one SET line per point (called by `make sweep`):

grid.py kto.beta=0.05,0.1 kto.learning_rate=5e-4,1e-3
-> kto.beta=0.05 kto.learning_rate=5e-4
   kto.beta=0.05 kto.learning_rate=1e-3
   ...
"""

import itertools
import sys

axes = []
for arg in sys.argv[1:]:
    key, eq, values = arg.partition("=")
    if not eq or not key or not values:
        sys.exit(f"grid: {arg!r}: expected key=v1,v2,... e.g. kto.beta=0.05,0.1,0.2")
    axes.append([f"{key}={v}" for v in values.split(",")])
if not axes:
    sys.exit("grid: GRID is empty; e.g. make sweep NAME=sft_kto GRID='kto.beta=0.05,0.1,0.2,0.4'")
for point in itertools.product(*axes):
    print(" ".join(point))
