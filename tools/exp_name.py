#!/usr/bin/env python3
"""Experiment folder name for a recipe and SET overrides (called by the Makefile):

    exp_name.py sft_kto kto.beta=0.2 kto.learning_rate=5e-6  ->  sft_kto+kto.beta-0.2+kto.learning_rate-5e-6

The rule is safealign.core.names.exp_name: letters, digits and . _ - + only, at most 128 characters.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from safealign.core import names  # noqa: E402

try:
    print(names.exp_name(sys.argv[1], sys.argv[2:]))
except (names.InvalidName, IndexError) as e:
    sys.exit(f"exp_name: {e}")
