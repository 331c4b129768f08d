"""safealign: reproducible LLM safety-alignment experiments (Axolotl SFT, trl DPO/KTO, lm-eval)."""

from pathlib import Path

__version__ = "0.1.0"
REPO = Path(__file__).resolve().parent.parent  # the checkout: recipes/, templates/, data/
