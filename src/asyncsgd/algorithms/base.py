"""Algorithm: what the launcher, the simulator and the record need to know about one algorithm.

The four properties shared_model, distributed, tolerates_failures and snapshot_all_replicas are
a bool, or a callable (RunConfig) -> bool where the run's settings decide (pdasgd --sharing:
one shared model, or replicas averaged across processes). Read them from for_config(cfg), never
from the entry itself (a callable is always truthy); the launchers do.

An entry names its worker and its simulated twin with later(module): they import torch, and the
registry is read by every command, so a bad flag is refused in a fraction of a second instead of
after torch's import (1.4 s on 2 cores). The module is imported when the run calls it.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field
from typing import Callable, Union

Flag = Union[bool, Callable]  # a bool, or (RunConfig) -> bool

FLAGS = ("shared_model", "distributed", "tolerates_failures", "snapshot_all_replicas")


class later:
    """A module's run(...), imported at its first call (see the module docstring)."""

    def __init__(self, module: str, function: str = "run"):
        self.module, self.function = module, function

    def __call__(self, *args, **kwargs):
        return getattr(importlib.import_module(self.module), self.function)(*args, **kwargs)

    def __repr__(self) -> str:
        return f"later({self.module!r}, {self.function!r})"


def workers(cfg) -> int:
    """The usual process count: --workers."""
    return cfg.workers


def processes(cfg):
    """The worker processes of the run (the simulated ones with --runtime sim); None before resolved."""
    return (cfg.sim_workers or cfg.workers) if cfg.runtime == "sim" else cfg.workers


def one(cfg) -> int:
    return 1


def sim_workers(cfg) -> tuple[int, int, int]:
    """(virtual workers, processes, workers per process) of a simulated run: --sim-workers (or
    --workers) virtual workers, each a process of its own (a straggler names one of them)."""
    n = cfg.sim_workers or cfg.workers
    return n, n, 1


@dataclass(frozen=True)
class Algorithm:
    name: str
    description: str
    worker: Callable  # run(ctx): the real schedule, run in every worker process with a WorkerContext
    sim: Callable  # run(simulation): the simulated twin (sim/simulation.py's Simulation)
    shared_model: Flag  # True: one model in shared memory; False: a replica per process
    distributed: Flag  # True: the processes form a torch.distributed group
    processes: Callable = workers  # (RunConfig) -> number of worker processes
    tolerates_failures: Flag = False  # the run goes on when a worker dies
    snapshot_all_replicas: Flag = False  # snapshot every replica (to evaluate their average), not only rank 0
    defaults: dict = field(default_factory=dict)  # settings this algorithm needs when the user gives none
    # (RunConfig) -> (workers, why): --workers when none is given, decided from the machine (pdasgd);
    # None: defaults / SHARED_DEFAULTS. `why` is recorded as the config's workers_from
    default_workers: Callable | None = None
    # the help text of that rule where it has more cases than the device (None: the CLI states its CPU and GPU values)
    default_workers_text: str | None = None
    options: tuple = ()  # settings only some algorithms use (given to another one: rejected, not ignored)
    summary_extra: Callable | None = None  # (record, summary dict) -> None: adds this algorithm's fields
    check: Callable | None = None  # (RunConfig) -> RunConfig: this algorithm's own resolution and checks
    # (given settings dict, runtime) -> None: ConfigError for a combination of GIVEN settings this
    # algorithm would ignore (settings.check_options calls it, before the defaults fill the rest in)
    check_given: Callable | None = None
    sim_layout: Callable = sim_workers  # (RunConfig) -> (virtual workers, processes, workers per process)
    sim_replicas: Callable | None = None  # (workers, groups) -> models the simulation keeps (default 1)
    sim_theory: bool = False  # the simulated record carries the theory check (as the real summary_extra)
    distributed_with: str = ""  # for messages, when `distributed` depends on the settings: which ones make it true

    def for_config(self, cfg) -> "Algorithm":
        """This entry with its setting-dependent properties decided for cfg (plain bools)."""
        decide = lambda v: bool(v(cfg)) if callable(v) else v
        return dataclasses.replace(self, **{k: decide(getattr(self, k)) for k in FLAGS})
