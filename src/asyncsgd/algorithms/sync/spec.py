"""sync's spec: synchronous data parallelism, gradients all-reduced every step."""

from __future__ import annotations

from ..base import Algorithm
from . import sim, worker
from .rules import warmup_default


SYNC = Algorithm(
    "sync", "synchronous data parallelism: N processes, gradients all-reduced every step (DDP semantics)",
    worker=worker.run, sim=sim.run, shared_model=False, distributed=True, options=("lr_scaling",),
    # Heavy-ball momentum, not the shared Nesterov: at N x the lr (--lr-scaling linear) Nesterov's
    # 1.9x weight on the newest gradient overshoots. 4 workers, 10 epochs, seeds 0-2 interleaved:
    # 0.9435 / 0.9515 / 0.8535 with it against 0.9665 / 0.9625 / 0.948, and ddp 0.5925 / 0.9515 /
    # 0.945 against 0.962 / 0.963 / 0.9445 (docs/benchmarks.md, "Nesterov momentum")
    defaults={"warmup_epochs": warmup_default, "nesterov": False})
