"""sync's spec: synchronous data parallelism, gradients all-reduced every step."""

from __future__ import annotations

from ..base import Algorithm, later
from .rules import DEFAULTS


SYNC = Algorithm(
    "sync", "synchronous data parallelism: N processes, gradients all-reduced every step (DDP semantics)",
    worker=later(__package__ + ".worker"), sim=later(__package__ + ".sim"),
    shared_model=False, distributed=True, options=("lr_scaling",),
    defaults=DEFAULTS)  # the warm-up of the lr scaling, heavy-ball momentum (rules.py)
