"""The named algorithms: presets over one shared machinery (workers, updates, metrics).

Each algorithm is a local schedule (what one worker process does each step) plus a global
exchange (how processes share what they learn), docs/design.md. An Algorithm entry says how
many processes the launcher starts, whether they share one model in shared memory or each
keep a replica, whether they need a torch.distributed process group, and which function
each process runs. New algorithms register here and every command (train, bench, report,
algorithms) picks them up.

The four properties shared_model, distributed, tolerates_failures and snapshot_all_replicas are
a bool, or a callable (RunConfig) -> bool where the run's settings decide (pdasgd --sharing:
one shared model, or replicas averaged across processes). Read them from for_config(cfg), never
from the registry entry itself (a callable is always truthy); the Launcher and worker_main do.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Union

Flag = Union[bool, Callable]  # a bool, or (RunConfig) -> bool


@dataclass(frozen=True)
class Algorithm:
    name: str
    description: str
    worker: str  # "module:function" run in every worker process with a WorkerContext
    shared_model: Flag  # True: one model in shared memory; False: a replica per process
    distributed: Flag  # True: the processes form a torch.distributed group
    processes: Callable  # (RunConfig) -> number of worker processes
    tolerates_failures: Flag = False  # the run goes on when a worker dies
    snapshot_all_replicas: Flag = False  # snapshot every replica (to evaluate their average), not only rank 0
    defaults: dict = field(default_factory=dict)  # settings this algorithm needs when the user gives none
    summary_extra: str | None = None  # "module:function" (launcher, summary dict) -> None, adds fields
    distributed_with: str = ""  # for messages, when `distributed` depends on the settings: which ones make it true

    def for_config(self, cfg) -> "Algorithm":
        """This entry with its setting-dependent properties decided for cfg (plain bools)."""
        decide = lambda v: bool(v(cfg)) if callable(v) else v
        return dataclasses.replace(self, **{k: decide(getattr(self, k)) for k in FLAGS})


FLAGS = ("shared_model", "distributed", "tolerates_failures", "snapshot_all_replicas")


def _workers(cfg) -> int:
    return cfg.workers


ALGORITHMS: dict[str, Algorithm] = {}


def register(algo: Algorithm) -> Algorithm:
    ALGORITHMS[algo.name] = algo
    return algo


register(Algorithm("sequential", "mini-batch SGD in one process: the reference every method is compared with",
                   "asyncsgd.schedules.sequential:run", shared_model=True, distributed=False,
                   processes=lambda cfg: 1))
register(Algorithm("sync", "synchronous data parallelism: N processes, gradients all-reduced every step (DDP semantics)",
                   "asyncsgd.schedules.sync:run", shared_model=False, distributed=True, processes=_workers))
register(Algorithm("hogwild", "Hogwild!: N processes update one shared-memory model without locks",
                   "asyncsgd.schedules.hogwild:run", shared_model=True, distributed=False, processes=_workers))


def _replicas(cfg) -> bool:
    """pdasgd keeps a replica per process (--sharing average, or auto on several GPUs)."""
    from .config import resolve_sharing
    return resolve_sharing(cfg.sharing, cfg.device, cfg.workers, cfg.runtime) == "average"


register(Algorithm("pdasgd", "PD-ASGD: decoupled forward and backward threads, each layer updated as soon as its "
                   "gradient exists (one process by default; --workers N processes share one model, or with "
                   "--sharing average keep replicas averaged in the background, one per GPU)",
                   "asyncsgd.schedules.decoupled:run", shared_model=lambda cfg: not _replicas(cfg),
                   distributed=_replicas, processes=_workers,
                   # With replicas the survivors of a dead worker carry on, as lpap's: they claim the
                   # rest of the plan (board.ClaimLock, which the OS releases when its holder dies)
                   # and average among themselves. One shared model: a worker killed mid-update may
                   # leave it half-written, so that run stops with exit 1.
                   tolerates_failures=_replicas, snapshot_all_replicas=_replicas,
                   defaults={"workers": 1, "staleness": "adaptive"},
                   summary_extra="asyncsgd.schedules.decoupled:summary_extra", distributed_with="--sharing average"))


register(Algorithm("dasgd", "DASGD: a replica per process, gradients applied at once and sent to peers, peers' gradients "
                   "applied on arrival (decentralized, no averaging)",
                   "asyncsgd.schedules.dasgd:run", shared_model=False, distributed=True, processes=_workers,
                   tolerates_failures=True, snapshot_all_replicas=True,
                   # the analysed algorithm is --staleness none --send-every 1 --momentum 0; these
                   # defaults reach 0.90 about 3x sooner than sync under delays and a straggler, and
                   # learn more per sample without them. lr 0.07, not the shared 0.05: peers' updates
                   # arrive down-weighted (adaptive), so a replica takes in less of the others' work
                   # than a Hogwild! process (measured, 6 seeds: docs/distributed.md, "Defaults")
                   defaults={"staleness": "adaptive", "send_every": 4, "lr": 0.07},
                   summary_extra="asyncsgd.schedules.dasgd:summary_extra"))
register(Algorithm("lpap", "LPAP-SGD: Hogwild! threads inside each of --groups processes, parameters averaged "
                   "across groups every --average-every steps in the background",
                   "asyncsgd.schedules.lpap:run", shared_model=False, distributed=True,
                   processes=lambda cfg: cfg.groups, tolerates_failures=True, snapshot_all_replicas=True,
                   summary_extra="asyncsgd.schedules.lpap:summary_extra"))


def get_algorithm(name: str) -> Algorithm:
    from .errors import ConfigError

    if name not in ALGORITHMS:
        raise ConfigError(f"--algo {name!r} is not accepted; accepted: {', '.join(ALGORITHMS)}")
    return ALGORITHMS[name]


def default_algorithm() -> str:
    """pdasgd once it is registered, else hogwild."""
    return "pdasgd" if "pdasgd" in ALGORITHMS else "hogwild"
