"""layup's spec: a replica per process, pdasgd's forward and backward threads on each, every layer
update sent to peers as it is made (layer-wise gossip) and peers' applied on arrival."""

from __future__ import annotations

from ...config import ConfigError, need
from ..base import Algorithm, later
from ..dasgd.spec import check as check_topology

GOSSIP = ("average", "updates")


def staleness_default(cfg) -> str:
    """adaptive with --gossip updates, none with average (an average is never damped)"""
    return "adaptive" if cfg.gossip == "updates" else "none"


def lr_default(cfg) -> float:
    """0.2 with --gossip average, 0.1 with updates"""
    return 0.2 if cfg.gossip == "average" else 0.1


def check(cfg):
    """--gossip is average or updates; --staleness acts on peers' updates only (a replica's own
    take their full step, rules.own_update_staleness), so with --gossip average, where peers send
    parameters, any policy but none would be accepted and do nothing."""
    need(cfg.gossip in GOSSIP, "gossip", cfg.gossip, ", ".join(GOSSIP))
    if cfg.gossip == "average" and cfg.parsed.staleness.kind != "none":
        raise ConfigError(f"--staleness {cfg.staleness!r} is not used by --algo layup --gossip average (a peer's "
                          "parameters are averaged, never damped; a replica's own updates take their full step); "
                          "accepted with: --gossip updates")
    return check_topology(cfg)


def summary_extra(record, out: dict) -> None:
    """pdasgd's per-layer fields, the exchange's (dasgd's), and the messages of each layer."""
    from ...exchange.summary import exchange_summary
    from ..pdasgd.spec import layer_summary
    layer_summary(record, out)
    del out["fb_ratio"]  # a pdasgd option layup does not take
    named = [(n, p) for n, p in record.model.named_parameters() if p.requires_grad]
    exchange_summary(record, out, sum(p.numel() for _, p in named))
    out["gossip"] = record.cfg.gossip
    b, x = record.board, out["exchange"]
    # a message carries one layer: its payload is that layer's size (the whole vector's is no message's)
    del x["payload_bytes"]
    x["by_layer"] = [{"layer": name, "payload_bytes": p.numel() * 4, "rounds": int(b.layer_rounds[:, i].sum()),
                      "data_messages": int(b.layer_sent[:, i].sum()), "coalesced": int(b.layer_coalesced[:, i].sum())}
                     for i, (name, p) in enumerate(named)]
    for w in x["per_worker"]:
        r = w["worker"]
        w["by_layer"] = [{"rounds": int(b.layer_rounds[r, i]), "data_messages": int(b.layer_sent[r, i]),
                          "coalesced": int(b.layer_coalesced[r, i])} for i in range(len(named))]
    from ...theory import add_theory  # measured staleness vs the PD-ASGD bias bound
    add_theory(record, out)


LAYUP = Algorithm(
    "layup", "LayUp: a replica per process running pdasgd's forward and backward threads; every layer update "
    "is sent to peers (--topology, gossip) as soon as it is made, and peers' are applied on arrival",
    worker=later(__package__ + ".worker"), sim=later(__package__ + ".sim"),
    shared_model=False, distributed=True, tolerates_failures=True,
    snapshot_all_replicas=True,
    # --send-every 8: each layer's message sums 8 of its updates. On 2 cores gloo's cost per message
    # (8 per backward pass at k = 1) held 4 workers to 6,000-7,700 samples/s against 13,300-17,300
    # at k = 8, and the messages queued behind a 20 ms latency reached a mean staleness of 73-125;
    # interleaved, seeds 0-4 at 10 epochs 0.4605 / 0.6935 / 0.7185 against 0.547 / 0.553 / 0.6095
    # (min / median / max), and with --straggler worker=1,slowdown=4 --delay latency=20ms at 20
    # epochs 0.87-0.9475, 0.90 reached in 2 of 3 seeds, against 0.79-0.83, never (docs/layup.md)
    # Each layer's gradient clipped to norm 1 (pdasgd's clip), own updates undamped
    # (rules.own_update_staleness): --staleness acts on the peers' updates only, where they arrive.
    # --queue-size 0 with one backward thread: a forward starts when the last backward has
    # finished, so no update of a replica is stale by its own pipeline (pdasgd/rules.slot_back_at_end),
    # and with it --staleness adaptive and lr 0.1. 10 epochs, seeds 0-4 interleaved, 4 workers on 2
    # cores: 0.6505 / 0.7185 / 0.7715 for the pipelined defaults before (1F:2B, queue 1, cap, lr
    # 0.05) against 0.897 / 0.9095 / 0.925; 2 workers (seeds 0-2) 0.909 against 0.9655 (median);
    # with --straggler worker=1,slowdown=4 --delay latency=20ms at 20 epochs 0.90 in 3 of 3 seeds,
    # median 5.48 s, against 2 of 3, 8.60 s. A device here has half a core: the pipeline's overlap
    # had nothing to run on, and its staleness cost the accuracy (docs/layup.md). GPUs: unmeasured.
    # Nesterov momentum (2026-12-07), as dasgd's: 4 workers, 10 epochs, seeds 0-9 interleaved,
    # 0.938 / 0.9447 / 0.9515 against 0.8765 / 0.896 / 0.9345; under the straggler and latency at 20
    # epochs 0.90 in 3.41-4.66 s against 5.78-6.60 s (docs/layup.md, "Nesterov momentum")
    # --gossip average (2026-12-07): a layer's message carries its parameters and the receiver moves
    # its layer halfway to them (rules.average_into), with lr 0.2 and no damping. With updates alone
    # the replicas drifted apart (consensus distance about 6 after 10 epochs), each taking in only its
    # own updates and those sent to it. 4 workers, 10 epochs, seeds 0-9 interleaved with sequential's
    # 0.9665 / 0.9728 / 0.976: 0.9605 / 0.965 / 0.9705 against 0.931 / 0.9492 / 0.956 for updates,
    # 0.90 in 2.64 s against 3.06 s; with the straggler and latency 0.96-0.9745 (docs/layup.md,
    # "Gossip averaging"). --gossip updates keeps the earlier form and its defaults (lr 0.1,
    # --staleness adaptive).
    defaults={"staleness": staleness_default, "clip_grad_norm": 1.0, "warmup_epochs": 2.0,
              "topology": "random:1", "send_every": 8, "queue_size": 0, "backward_threads": 1,
              "lr": lr_default},
    options=("forward_threads", "backward_threads", "queue_size", "send_every", "gossip", "topology", "staleness"),
    summary_extra=summary_extra, check=check, sim_replicas=lambda workers, groups: workers, sim_theory=True)
