#!/usr/bin/env python3
"""Experiment folder name for a recipe and SET overrides (called by the Makefile):

    exp_name.py sft_kto kto.beta=0.2 kto.learning_rate=5e-6  ->  sft_kto+kto.beta-0.2+kto.learning_rate-5e-6

Only letters, digits and . _ - survive, so the name is safe as a folder and as a Make target.
"""
import re
import sys

name, *sets = sys.argv[1:]
parts = [re.sub(r"[^A-Za-z0-9._-]+", "_", s.replace("=", "-")).strip("_") for s in sets]
print("+".join([name, *parts]))
