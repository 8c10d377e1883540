"""lpap's spec: Hogwild! threads inside each of --groups processes, parameters averaged across
groups in the background."""

from __future__ import annotations

from ...board import ExchangeCounter
from ...errors import ConfigError
from ..base import Algorithm
from . import sim, worker


def sim_layout(cfg) -> tuple[int, int, int]:
    """(virtual workers, groups, workers per group): --sim-workers split evenly across --groups."""
    if cfg.sim_workers is None:
        return cfg.groups * cfg.workers_per_group, cfg.groups, cfg.workers_per_group
    if cfg.sim_workers % cfg.groups:
        raise ConfigError(f"--sim-workers {cfg.sim_workers} is not accepted for lpap with --groups {cfg.groups}; "
                          f"accepted: a multiple of --groups (workers are split evenly across groups)")
    return cfg.sim_workers, cfg.groups, cfg.sim_workers // cfg.groups


def summary_extra(record, out: dict) -> None:
    from ...exchange.summary import exchange_summary
    n_params = sum(p.numel() for p in record.model.parameters() if p.requires_grad)
    exchange_summary(record, out, n_params)
    out["lpap"] = {"groups": record.cfg.groups, "workers_per_group": record.cfg.workers_per_group,
                   "average_every": record.cfg.average_every, "partitioned": record.cfg.partitioned,
                   "averaging_rounds_per_group": [int(r) for r in record.board.exchange[:, ExchangeCounter.ROUNDS]]}


LPAP = Algorithm(
    "lpap", "LPAP-SGD: Hogwild! threads inside each of --groups processes, parameters averaged "
    "across groups every --average-every steps in the background",
    worker=worker.run, sim=sim.run, shared_model=False, distributed=True, processes=lambda cfg: cfg.groups,
    tolerates_failures=True, snapshot_all_replicas=True,
    # cap and lr 0.075, as hogwild (its threads are Hogwild!): 2 groups x 2 threads, 10 epochs,
    # seeds 0-9: the shared none / lr 0.05 ended at 0.9185 / 0.9285 / 0.9485, cap lr 0.075 at
    # 0.941 / 0.951 / 0.956; with --straggler worker=1,slowdown=4 --delay latency=20ms (seeds 0-5)
    # 0.881 / 0.9165 / 0.9265 against 0.894 / 0.9227 / 0.9345, time to 0.90 6% longer (median).
    # docs/benchmarks.md, "LPAP-SGD's defaults"
    defaults={"staleness": "cap", "lr": 0.075},
    options=("groups", "workers_per_group", "average_every", "partitioned", "staleness"),
    summary_extra=summary_extra, sim_layout=sim_layout, sim_replicas=lambda workers, groups: groups)
