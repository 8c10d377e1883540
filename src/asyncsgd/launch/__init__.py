"""Launching a run: launch modes (modes.py), the local launcher (local.py), the forkserver that
forks its workers (server.py), torchrun ranks (torchrun.py) and the worker entry point every
process runs (worker.py). This file imports nothing."""
