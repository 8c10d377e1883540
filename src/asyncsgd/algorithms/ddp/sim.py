"""The simulated twin of ddp (worker.py): sync's twin, one all-reduce per step.

ddp's schedule is sync's (every step waits for the slowest worker, then all-reduces the
gradients; the same batches, the same lr scaling), so the twin plays sync's simulated schedule.
What it does not model is DDP's bucketing: the twin pays the latency once per step, where the
real ddp pays it once per gradient bucket. The small models (logreg, mnist1d's) fit one bucket
at DDP's default 25 MiB, so the two agree there; a larger one (resnet18, 45 MB) takes several
buckets, and then the twin pays fewer latencies than the real ddp. --bucket-cap-mb, which would
split them further, is refused with --runtime sim (spec.py)."""

from __future__ import annotations

from ..sync.sim import run as sync


def run(sim) -> None:
    """sync's simulated schedule (one all-reduce of the whole gradient per step)."""
    sync(sim)
