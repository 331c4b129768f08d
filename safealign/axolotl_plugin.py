"""Axolotl plugin: named in the rendered SFT config (`plugins:`), it adds safealign's callbacks."""
from __future__ import annotations

from axolotl.integrations.base import BasePlugin

from safealign.callbacks import JsonlLogCallback


class SafealignPlugin(BasePlugin):
    def add_callbacks_post_trainer(self, cfg, trainer):
        return [JsonlLogCallback()]
