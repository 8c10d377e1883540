"""Launching a run: launch modes (modes.py), the local launcher (local.py), torchrun ranks (torchrun.py)
and the worker entry point every process runs (worker.py). This file imports nothing."""
