#!/usr/bin/env python3
"""Expand a sweep grid into one SET line per point, after the user's SET (called by `make sweep`):

grid.py --set 'kto.max_steps=30' kto.beta=0.05,0.1 kto.learning_rate=5e-4,1e-3
-> kto.max_steps=30 kto.beta=0.05 kto.learning_rate=5e-4
   kto.max_steps=30 kto.beta=0.05 kto.learning_rate=1e-3
   ...

The rule is safealign.core.names.sweep_sets (also what `make pipeline-sweep` compiles).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from safealign.core import names  # noqa: E402

args = sys.argv[1:]
sets = args[1].split() if args[:1] == ["--set"] and len(args) > 1 else []
grid = args[2:] if args[:1] == ["--set"] else args
try:
    points = names.sweep_sets(sets, grid)
except ValueError as e:
    sys.exit(str(e))  # names SET or GRID itself
for point in points:
    print(" ".join(point))
