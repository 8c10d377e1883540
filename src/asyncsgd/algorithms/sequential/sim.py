"""The simulated twin of sequential SGD: hogwild's twin with one worker (staleness 0)."""

from __future__ import annotations

from ..hogwild.sim import run as hogwild

def run(sim) -> None:
    """One worker: forward, backward, update, repeat (hogwild with one worker: staleness 0)."""
    hogwild(sim)


