"""hogwild's spec: N processes update one shared-memory model without locks."""

from __future__ import annotations

from ..base import Algorithm
from . import sim, worker

HOGWILD = Algorithm(
    "hogwild", "Hogwild!: N processes update one shared-memory model without locks",
    worker=worker.run, sim=sim.run, shared_model=True, distributed=False,
    # cap and lr 0.075, not the shared none and 0.05: with 4 processes (mean staleness 2.5) plain
    # updates at lr 0.05 ended at 0.458 / 0.8795 / 0.9485 over seeds 0-9, cap at lr 0.075 at
    # 0.9455 / 0.9567 / 0.9655; with 2 the two are level (0.9672 against 0.9688 median).
    # Measured interleaved: docs/benchmarks.md, "Hogwild!'s defaults"
    defaults={"staleness": "cap", "lr": 0.075},
    options=("staleness",))
