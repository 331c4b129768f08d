"""Run by Python at start-up in the processes a stage launches (this folder is first on their
PYTHONPATH: safealign/train/launcher.child_env): the known-harmless messages are filtered at
their source there too (safealign/core/console.py, HARMLESS). Nothing else happens here."""

try:
    from safealign.core import console

    console.install_filters()
except Exception:  # never stop a training process over its terminal
    pass
