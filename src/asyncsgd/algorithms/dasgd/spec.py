"""dasgd's spec: a replica per process, updates applied at once and sent to peers, peers'
applied on arrival (decentralized, no averaging)."""

from __future__ import annotations

from ...config import need
from ..base import Algorithm
from . import sim, worker


def check(cfg):
    """--topology random:M needs M peers to draw from: with fewer it would silently send to all."""
    topo = cfg.parsed.topology
    peers = (cfg.sim_workers or cfg.workers) - 1
    if topo.kind == "random":
        need(topo.m <= max(peers, 1), "topology", cfg.topology,
             f"random:M with M at most the {peers} peer(s) of each of the {peers + 1} workers, or all, ring")
    return cfg


def summary_extra(record, out: dict) -> None:
    from ...exchange.summary import exchange_summary
    n_params = sum(p.numel() for p in record.model.parameters() if p.requires_grad)
    exchange_summary(record, out, n_params)
    from ...theory import add_theory  # measured staleness vs the bias bound's regime
    add_theory(record, out)


DASGD = Algorithm(
    "dasgd", "DASGD: a replica per process, gradients applied at once and sent to peers, peers' gradients "
    "applied on arrival (decentralized, no averaging)",
    worker=worker.run, sim=sim.run, shared_model=False, distributed=True, tolerates_failures=True,
    snapshot_all_replicas=True,
    # the analysed algorithm is --staleness none --send-every 1 --momentum 0; these defaults reach
    # 0.90 about 3x sooner than sync under delays and a straggler, and learn more per sample without
    # them. lr 0.07, not the shared 0.05: peers' updates arrive down-weighted (adaptive), so a
    # replica takes in less of the others' work than a Hogwild! process (measured, 6 seeds:
    # docs/distributed.md, "Defaults")
    defaults={"staleness": "adaptive", "send_every": 4, "lr": 0.07},
    options=("send_every", "topology", "staleness"),
    summary_extra=summary_extra, check=check, sim_replicas=lambda workers, groups: workers, sim_theory=True)
