"""lpap's spec: Hogwild! threads inside each of --groups processes, parameters averaged across
groups in the background."""

from __future__ import annotations

from ...errors import ConfigError
from ..base import Algorithm, later


def sim_layout(cfg) -> tuple[int, int, int]:
    """(virtual workers, groups, workers per group): --sim-workers split evenly across --groups."""
    if cfg.sim_workers is None:
        return cfg.groups * cfg.workers_per_group, cfg.groups, cfg.workers_per_group
    if cfg.sim_workers % cfg.groups:
        raise ConfigError(f"--sim-workers {cfg.sim_workers} is not accepted for lpap with --groups {cfg.groups}; "
                          f"accepted: a multiple of --groups (workers are split evenly across groups)")
    return cfg.sim_workers, cfg.groups, cfg.sim_workers // cfg.groups


def check_given(given: dict, runtime: str | None) -> None:
    """On the simulated cluster --sim-workers is split across --groups (sim_layout): a
    --workers-per-group that does not match it would be replaced without a word."""
    if runtime == "sim" and given.get("sim_workers") is not None and given.get("workers_per_group") is not None:
        from ...config import RunConfig
        groups = given.get("groups") or RunConfig().groups
        if given["workers_per_group"] * groups != given["sim_workers"]:
            raise ConfigError(f"--workers-per-group {given['workers_per_group']} is not used with --sim-workers "
                              f"{given['sim_workers']} (split across {groups} groups); accepted: one of them, or "
                              "both matching")


def summary_extra(record, out: dict) -> None:
    from ...board import ExchangeCounter
    from ...exchange.summary import exchange_summary
    n_params = sum(p.numel() for p in record.model.parameters() if p.requires_grad)
    exchange_summary(record, out, n_params)
    out["lpap"] = {"groups": record.cfg.groups, "workers_per_group": record.cfg.workers_per_group,
                   "average_every": record.cfg.average_every, "partitioned": record.cfg.partitioned,
                   "averaging_rounds_per_group": [int(r) for r in record.board.exchange[:, ExchangeCounter.ROUNDS]]}


LPAP = Algorithm(
    "lpap", "LPAP-SGD: Hogwild! threads inside each of --groups processes, parameters averaged "
    "across groups every --average-every steps in the background",
    worker=later(__package__ + ".worker"), sim=later(__package__ + ".sim"),
    shared_model=False, distributed=True, processes=lambda cfg: cfg.groups,
    tolerates_failures=True, snapshot_all_replicas=True,
    # cap, lr 0.1 and the gradients clipped to norm 2 (the norm of a typical mnist1d step is about
    # 0.8, so the clip only shortens the rare large ones that a higher lr would otherwise turn into a
    # collapse). 2 groups x 2 threads, 10 epochs, interleaved with the former defaults (cap, lr 0.075,
    # no clip): seeds 0-9 0.9485 / 0.9617 / 0.967 against 0.938 / 0.951 / 0.9615 (sequential's
    # median 0.9712), seeds 10-19 0.9565 / 0.9615 / 0.9715 against 0.935 / 0.9495 / 0.9565; time to
    # 0.90 no longer (1.13 against 1.18-1.30 s median) and, under --straggler worker=1,slowdown=4
    # --delay latency=20ms, the same (1.45 / 1.55 s both). docs/benchmarks.md, "LPAP-SGD's defaults"
    # Nesterov momentum (2026-12-07): 2 x 2, seeds 0-9 interleaved, 0.959 / 0.9637 / 0.9675 against
    # 0.9465 / 0.959 / 0.9625 without it (sequential's median 0.972); under the straggler and
    # latency sooner to 0.90 (docs/benchmarks.md, "Nesterov momentum")
    defaults={"staleness": "cap", "lr": 0.1, "clip_grad_norm": 2.0},
    options=("groups", "workers_per_group", "average_every", "partitioned", "staleness"),
    summary_extra=summary_extra, sim_layout=sim_layout, sim_replicas=lambda workers, groups: groups,
    check_given=check_given)
