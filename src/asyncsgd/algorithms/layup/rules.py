"""The rules layup's real schedule (worker.py) and its simulated twin (sim.py) both call, so the two
cannot drift: which staleness --staleness acts on for a replica's own layer updates, and how a
layer is averaged with a peer's parameters (--gossip average)."""

from __future__ import annotations

# A layer's averaging message moves the receiver's layer halfway to the sender's: pairwise gossip
# averaging (Boyd et al. 2006, "Randomized gossip algorithms"; AD-PSGD, Lian et al. 2018, averages
# a worker's whole model with one random peer's the same way).
AVERAGE_WEIGHT = 0.5


def own_update_staleness(total: int, own: int) -> int:
    """The staleness --staleness acts on for a replica's OWN layer update: none, so it takes its full
    step, as dasgd's own gradient does; peers' updates are still damped at the receiver by their
    vector-clock staleness (exchange.policy.gossip_staleness). Damping the own update by the total
    (the peers' updates applied since its forward read the layer) damped every peer's update twice,
    by its sender and by its receiver, and starved the run. Interleaved, 4 workers, defaults
    otherwise (--send-every 8), own undamped with --staleness cap --clip-grad-norm 1 against own
    damped by the total with scale: seeds 0-4 at 10 epochs 0.6925 / 0.7755 / 0.7995 against
    0.5865 / 0.682 / 0.7325; with --straggler worker=1,slowdown=4 --delay latency=20ms at 20 epochs
    0.90 reached in 3 of 3 seeds (8.1-10.1 s) against 1 of 3 (docs/layup.md)."""
    return 0


def average_into(layer, senders_layer) -> None:
    """A peer's parameters message arrives (--gossip average): this replica's layer (a view, written
    in place) moves AVERAGE_WEIGHT of the way to the sender's. Never damped by --staleness: a convex
    combination cannot overshoot, and damping it by the adaptive factor cost 3 points (docs/layup.md,
    "Gossip averaging")."""
    layer.add_(senders_layer - layer, alpha=AVERAGE_WEIGHT)
