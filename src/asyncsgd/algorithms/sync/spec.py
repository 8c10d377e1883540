"""sync's spec: synchronous data parallelism, gradients all-reduced every step."""

from __future__ import annotations

from ..base import Algorithm
from . import sim, worker
from .rules import DEFAULTS


SYNC = Algorithm(
    "sync", "synchronous data parallelism: N processes, gradients all-reduced every step (DDP semantics)",
    worker=worker.run, sim=sim.run, shared_model=False, distributed=True, options=("lr_scaling",),
    defaults=DEFAULTS)  # the warm-up of the lr scaling, heavy-ball momentum (rules.py)
