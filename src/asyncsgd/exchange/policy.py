"""Who receives a message (topology) and how a stale gradient is applied (staleness policy).

Vector clocks (dasgd): replica r keeps clock[o] = how many gradients (local steps) of origin o it
has applied, its own included. A message carries the sender's clock at the moment it computed
the (first) gradient of the message. The staleness of an arriving gradient is the number of
gradients the receiver has applied that the sender had not when it computed it:

    staleness = sum over origins o of max(0, receiver_clock[o] - sender_clock[o])

It is 0 for a gradient computed on exactly the receiver's current state (the own gradient), and
with N workers exchanging every step it is about N - 1 plus what arrived while in flight.
"""

from __future__ import annotations

import random

import numpy as np

from ..config import Staleness, TopologySpec


def staleness(receiver_clock, sender_clock) -> int:
    """Updates the receiver has applied that the sender had not (clocks: lists of ints)."""
    return sum(max(0, a - b) for a, b in zip(receiver_clock, sender_clock))


def gossip_staleness(receiver_clock, sender_clock, receiver: int, sent_to_sender: int) -> int:
    """staleness() of an update from a peer that gossips (layup: each update goes to some peers
    only). Of the receiver's own updates it counts those it had sent to that sender which the
    sender had not applied (sent_to_sender - sender_clock[receiver]): the ones it never sent
    there the sender can never apply, so they measure how the replicas differ, not how late this
    update is, and counting them would make every message staler than the last without bound.
    The other origins count as in staleness() (exact with --topology all, where sent_to_sender
    is every own update and this is staleness() itself). Clocks: sequences of ints (numpy rows)."""
    ahead = np.maximum(np.asarray(receiver_clock) - np.asarray(sender_clock), 0)
    return int(ahead.sum() - ahead[receiver]) + max(0, int(sent_to_sender) - int(sender_clock[receiver]))


class StalenessPolicy:
    """--staleness: what a receiver does with a gradient of staleness s.

    none        apply it as is (factor 1)
    scale       lr / (1 + s)
    cap         scale during the warm-up; after it min(lr, peak lr / (1 + s)): a stale update
                never steps further than scale's at the peak lr, and no shorter than the schedule's
                own lr allows. A delayed update's stability limit is about peak / (1 + s) (what
                scale damps to at the peak); once the decaying lr is below it (the cosine's second
                half for s = 1), damping further only slows the stale layers (pdasgd's lower
                layers; docs/pdasgd.md, "cap"). The caller passes optim.decay_fraction
                of the lr the update was MADE at: for a peer's update the sender's, which the
                message carries (wire.py's decay_ppm). The receiver's lr at arrival would
                release a late update made at the peak (a whole-run --send-every flush: 0.37-0.64
                final against a best of 0.67-0.95, docs/layup.md).
    drop:MAX    discard it when s > MAX (counted in dropped_updates), else apply as is
    adaptive    lr * min(1, c / s) with c = N - 1: the delay-adaptive step size of Koloskova,
                Stich & Jaggi (NeurIPS 2022), eta_t = min(eta, 1 / (4 L tau_t)), with the unknown
                smoothness constant folded into c. A gradient no staler than the concurrency
                (N - 1, what every gradient of an N-worker round-robin carries) keeps the full
                step; staler ones (stragglers' gradients, messages held up by delays) get a
                step that shrinks as 1 / s, so their total influence stays bounded.
    """

    def __init__(self, spec: Staleness, workers: int):
        self.kind, self.max = spec.kind, spec.max
        self.c = max(1, workers - 1)

    def factor(self, s: int, decayed: float = 1.0) -> float | None:
        """Multiplier of the learning rate, or None: drop the gradient. decayed:
        optim.decay_fraction (the lr over its peak after the warm-up, 1 during it); only cap uses it."""
        if self.kind == "scale":
            return 1.0 / (1 + s)
        if self.kind == "cap":
            return 1.0 if s <= 0 else min(1.0, 1.0 / ((1 + s) * max(decayed, 1e-12)))
        if self.kind == "drop":
            return None if s > self.max else 1.0
        if self.kind == "adaptive":
            return 1.0 if s <= self.c else self.c / s
        return 1.0

    def factors(self, s: np.ndarray, decayed: float = 1.0) -> np.ndarray:
        """factor() of many staleness values at once (the simulator's vectorised path); NaN: drop.
        decayed: one value, or one per staleness value (dasgd's messages, each made at its own lr)."""
        s = np.asarray(s, dtype=np.float64)
        if self.kind == "scale":
            return 1.0 / (1.0 + s)
        if self.kind == "cap":
            return np.minimum(1.0, 1.0 / ((1.0 + s) * np.maximum(decayed, 1e-12)))
        if self.kind == "drop":
            return np.where(s > self.max, np.nan, 1.0)
        if self.kind == "adaptive":
            return np.where(s <= self.c, 1.0, self.c / np.maximum(s, 1.0))
        return np.ones_like(s)


DRAWN_KEPT = 64  # rounds whose random draw a Topology remembers (a replica's layers are at most a few rounds apart)


class Topology:
    """--topology: the peers a worker sends round r's message to.

    all       every other live worker: N - 1 messages per worker per round, O(N^2) in all
    ring      one peer, rotating: round r goes to rank + 1 + (r mod (N - 1)), so over N - 1 rounds
              every peer gets one message; O(N) messages per round in all
    random:M  M distinct live peers drawn at random (seeded) each round; O(M N) per round. A round
              is drawn once: asked again (layup asks once per layer of the round) it gives the same
              peers while they live, so a round's layers travel together (one frame per peer)
    none      nobody: the replicas train alone (only the end-of-run DONEs travel), the floor that
              an exchange has to beat (docs/benchmarks.md, "A floor")
    Gone peers are skipped (ring moves on to the next one in the rotation).
    """

    def __init__(self, spec: TopologySpec, workers: int, rank: int, seed: int):
        self.kind, self.m = spec.kind, spec.m
        self.n, self.rank = workers, rank
        self.rng = random.Random(seed * 104_729 + rank)
        self._drawn: dict[int, list[int]] = {}  # random:M: round -> its peers (the latest DRAWN_KEPT rounds)

    def fanout(self) -> int:
        """Messages per round when every peer is alive."""
        peers = self.n - 1
        return {"all": peers, "ring": min(1, peers), "none": 0}.get(self.kind, min(self.m or 0, peers))

    def targets(self, round_: int, alive) -> list[int]:
        if self.kind == "none":
            return []
        peers = [p for p in range(self.n) if p != self.rank and alive(p)]
        if not peers:
            return []
        if self.kind == "all":
            return peers
        if self.kind == "ring":
            n = self.n
            for i in range(n - 1):
                p = (self.rank + 1 + (round_ + i) % (n - 1)) % n
                if alive(p):
                    return [p]
            return []
        drawn = self._drawn.get(round_)
        if drawn is None or not all(alive(p) for p in drawn):
            drawn = self._drawn[round_] = sorted(self.rng.sample(peers, min(self.m, len(peers))))
            if len(self._drawn) > DRAWN_KEPT:
                del self._drawn[min(self._drawn)]
        return list(drawn)
