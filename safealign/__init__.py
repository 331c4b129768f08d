"""safealign: reproducible LLM safety-alignment experiments (Axolotl SFT, trl DPO/KTO, lm-eval).

Subpackages, lowest first; each imports only those before it (tests/test_layers.py):
core, models, config, plan, eval, data, train, run; the command line (cli) stands above them.
"""

from pathlib import Path

__version__ = "0.1.0"
REPO = Path(__file__).resolve().parent.parent  # the checkout: recipes/, templates/, data/
