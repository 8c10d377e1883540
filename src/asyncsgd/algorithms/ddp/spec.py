"""ddp's spec: sync through torch.nn.parallel.DistributedDataParallel, delays paid per bucket."""

from __future__ import annotations

from ...config import need
from ...errors import ConfigError
from ..base import Algorithm, later
from ..sync.rules import DEFAULTS


def check(cfg):
    if cfg.bucket_cap_mb is not None:
        need(isinstance(cfg.bucket_cap_mb, (int, float)) and not isinstance(cfg.bucket_cap_mb, bool)
             and 0 < cfg.bucket_cap_mb <= 1024, "bucket_cap_mb", cfg.bucket_cap_mb, "MiB in (0, 1024], e.g. 25")
        if cfg.runtime == "sim":  # the twin pays one all-reduce per step (sim.py): it would be ignored
            raise ConfigError(f"--bucket-cap-mb {cfg.bucket_cap_mb!r} is not accepted with --runtime sim "
                              "(the twin all-reduces once per step); accepted with: --runtime real")
    return cfg


def summary_extra(record, out: dict) -> None:
    """The all-reduces the comm hooks started (one per gradient bucket) and the --delay they paid."""
    b = record.board
    steps = int(b.updates[0])  # rank 0 books one update per step
    out["ddp"] = {"bucket_allreduces": int(b.collectives.sum()),
                  "bucket_allreduces_per_worker": [int(c) for c in b.collectives],
                  "steps": steps, "bucket_cap_mb": record.cfg.bucket_cap_mb,
                  "delay_paid_s": round(float(b.delay_paid_s.sum()), 6),
                  "delay_paid_s_per_worker": [round(float(s), 6) for s in b.delay_paid_s]}


DDP = Algorithm(
    "ddp", "synchronous data parallelism with torch DistributedDataParallel (sync's batches and lr "
    "scaling; --delay paid per gradient bucket in a comm hook)",
    worker=later(__package__ + ".worker"), sim=later(__package__ + ".sim"),
    shared_model=False, distributed=True, options=("lr_scaling", "bucket_cap_mb"),
    defaults=DEFAULTS,  # sync's recipe: lr scaling, its warm-up, heavy-ball momentum
    summary_extra=summary_extra, check=check)
