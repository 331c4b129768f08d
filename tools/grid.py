#!/usr/bin/env python3
"""Expand a sweep grid into one SET line per point (called by `make sweep`):

grid.py kto.beta=0.05,0.1 kto.learning_rate=5e-4,1e-3
-> kto.beta=0.05 kto.learning_rate=5e-4
   kto.beta=0.05 kto.learning_rate=1e-3
   ...

The rule is safealign.core.names.grid_points (also what `make pipeline-sweep` compiles).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from safealign.core import names  # noqa: E402

try:
    points = names.grid_points(sys.argv[1:])
except ValueError as e:
    sys.exit(f"grid: {e}")
for point in points:
    print(" ".join(point))
