"""LayUp (arXiv 2410.05985 v4): decentralized PD-ASGD, layer-wise updates gossiped to peers.

Each worker process is one device with its own replica and runs pdasgd's F forward and B
backward threads on it (pdasgd/threads.py's Decoupled engine with replica=True, as
`pdasgd --sharing average` does), but instead of averaging the replicas in the background it
gossips: every layer update a backward thread applies to its replica is also sent to peers as
soon as it exists (summed over --send-every updates of that layer), one message per layer,
to the peers --topology picks for that layer's round (random:M: M drawn anew each round; ring;
all). The backward thread only posts the message (Exchange.post never waits on the network);
the exchange's sender thread does the rest. Peers' layer updates are applied by the receiver
threads the moment they arrive, under --staleness, like dasgd's whole-model updates.

What travels (--gossip):
- average (the default): the layer's parameters as they are when its group leaves (PARAMS), and
  the receiver moves its layer halfway to them (rules.average_into: pairwise gossip averaging).
  Updates alone never pull the replicas together: each applies its own and only the ones sent to
  it, so with random:1 they drifted apart (docs/layup.md, "Gossip averaging").
- updates: the update the sender applied to that layer (lr x its own optimizer direction,
  momentum included), summed over the group, as in dasgd (GRAD); the receiver adds it.
A message carries one layer's slice of the flat parameter vector: the wire header's offset says
where it starts, and the receiver checks it is exactly one layer (exchange/wire.py).

Vector clocks, per layer: clock[l][o] = updates of origin o applied to layer l of this replica (its
own included); a layer's version is sum_o clock[l][o]. An update message carries the sender's clock
of that layer when its forward read the layer (for a group of --send-every updates: the first
one's); a parameters message the layer's clock when they were copied (what they contain). Its
staleness at a receiver: exchange/policy.gossip_staleness, the vector-clock rule sum_o max(0,
receiver clock[l][o] - sender clock[o]) except that of the receiver's own updates it counts only
those it had sent to that sender (sent[l][sender]): with gossip the others never reach the sender,
and counting them made every message staler than the last (measured: a mean of 118 after 10 epochs
on 4 workers). An own layer update's staleness is, as in pdasgd, the layer's version now minus when
the forward read it: the same rule with the sender being this replica, so it counts the peers'
updates applied meanwhile too. Both kinds go into the staleness histogram and staleness_by_layer.
An average is never damped (a convex combination cannot overshoot; damping it by the adaptive
factor cost 3 points, docs/layup.md), and enters the clock as the message's updates. Only a peer's
update gets the --staleness factor of its staleness (pdasgd's concurrency with N workers), where it
arrives (cap: at the lr the sender made it at, the message's decay_ppm); an own update takes its
full step (rules.own_update_staleness: damped by its sender too, every peer's update was damped
twice, which starved the run; docs/layup.md).

Concurrency: one lock per layer guards that layer's parameters while an update or an average is
written (own, by a backward thread; a peer's, by a receiver thread) or copied to be sent, its clock
row, its pending group and its round counter; forwards read the parameters and clocks without it
(Hogwild!-style, as pdasgd). The board rows the engine's bookkeeping writes (staleness, updates,
dropped) are written under the engine's record_lock, by backward and receiver threads alike.

Lost workers and the end of the run: dasgd's (the exchange stops sending to a gone peer; local
survivors go on claiming the plan; DONE to every peer, then wait for theirs: idle time).
"""

from __future__ import annotations

import threading

import numpy as np
import torch

from ...board import ExchangeCounter
from ...exchange import DONE, GRAD, PARAMS, Exchange, Topology
from ...exchange.policy import gossip_staleness
from ...tensors import flatten_params
from ..pdasgd.threads import Decoupled
from .rules import average_into, own_update_staleness


def layer_slices(params) -> list[tuple[int, int]]:
    """(offset, length) of each parameter tensor in the flat vector (flatten_params' order)."""
    out, offset = [], 0
    for p in params:
        out.append((offset, p.numel()))
        offset += p.numel()
    return out


class Gossiping(Decoupled):
    """pdasgd's engine on this process's replica, with every layer update also sent to peers."""

    def __init__(self, ctx, forward_threads: int, backward_threads: int, model, flat: torch.Tensor):
        cfg = ctx.cfg
        super().__init__(ctx, forward_threads, backward_threads, cfg.queue_size, "layer",
                         cfg.parsed.staleness, ctx.world_size, model=model, replica=True)
        n, L = ctx.world_size, len(self.params)
        self.flat, self.k = flat, cfg.send_every
        self.averaging = cfg.gossip == "average"
        self.slices = layer_slices(self.params)
        self.layer_at = {offset: i for i, (offset, _) in enumerate(self.slices)}
        self.clock = np.zeros((L, n), np.int64)  # clock[l][o]: updates of origin o applied to layer l
        # version[l] = sum_o clock[l][o], kept as a Python int beside the clock (both written under
        # layer l's lock): every backward reads each layer's version, and a numpy row sum and int()
        # per layer were 2.1% of a replica's compute-thread samples (docs/layup.md, "Where a
        # replica's time goes")
        self.version = [0] * L
        self.locks = [threading.Lock() for _ in range(L)]
        self.pending: list = [None] * L  # per layer: [update sum (--gossip updates; average: the
        #   parameters, copied when it leaves), clock at its first update (average: at the copy),
        #   updates, decay_fraction at its first update]
        # per layer: groups posted, kept on the board (the summary's by_layer rounds) through a view
        # of its shared memory, not a torch-indexed += per group
        self.rounds = self.board.row("layer_rounds", self.rank)
        self.sent = np.zeros((L, n), np.int64)  # sent[l][p]: own updates of layer l sent to peer p
        self.topo = Topology(cfg.parsed.topology, n, self.rank, cfg.seed)
        self.topo_lock = threading.Lock()  # its random draws, from several backward threads
        self._tls = threading.local()  # a forward thread's clocks of the layers as it read them
        self.exchange = Exchange(ctx, flat.numel(), dtype=flat.dtype, name="layup", handler=self.apply_peer,
                                 slices=self.slices)
        # torchrun survivors take over a lost rank's strided batches from how far it got: the most
        # updates of it this replica applied to any layer (a part, with gossip: some are redone)
        self.take = ctx.batch_source(done=lambda w: int(self.clock[:, w].max()))

    # -- versions: the clocks -----------------------------------------------------------------
    def versions(self) -> list:
        return list(self.version)

    def version_of(self, i: int) -> int:
        return self.version[i]

    def _read(self, i: int) -> int:
        """A forward reads layer i (ReadingReplica's forward wrapper): note its clock for the messages."""
        row = self.clock[i].copy()
        self._tls.seen[i] = row
        return int(row.sum())

    def policy_staleness(self, total: int, own: int) -> int:
        """What --staleness acts on for an own layer update: rules.own_update_staleness (none: the
        full step; peers' updates are damped where they arrive, apply_peer)."""
        return own_update_staleness(total, own)

    def _forward(self, replica, k: int):
        self._tls.seen = self.clock.copy()  # layers no module's wrapper reads are read now
        item = super()._forward(replica, k)
        item.seen = self._tls.seen
        return item

    # -- own updates: applied, then sent ---------------------------------------------------
    def backward(self, item, writer: int, stream=None) -> list:
        """A backward pass, its layers' messages posted as they are made and sent when it ends, one
        frame per peer (Exchange.batched; the layers of a round have the same peers: Topology)."""
        with self.exchange.batched():
            return super().backward(item, writer, stream)

    # No torch.no_grad() here (LayerSGD.update's reason): it runs in the parameters' hooks, during a
    # backward that records no graph, on tensors outside autograd, and the decorator's context was
    # 2.7% of a layup replica's compute-thread samples (docs/layup.md, "Where a replica's time goes").
    def update(self, item, opt, writer: int, i: int, grad, lr: float) -> None:
        p = self.params[i]
        with self.locks[i]:
            if self.averaging:
                opt.update(i, grad, lr)
                delta = None  # the parameters leave instead (_take_group)
            else:
                before = p.detach().clone()
                opt.update(i, grad, lr)
                delta = p.detach().sub(before)  # exactly the update this step applied: what the peers add
            self.clock[i, self.rank] += 1
            self.version[i] += 1
            self.bump(writer, i)
            group = self.pending[i]
            if group is None:
                group = self.pending[i] = [delta, item.seen[i], 0, item.decayed]
            elif delta is not None:
                group[0] += delta
            group[2] += 1
            # decided under the lock: once it is released another backward thread may add to this
            # same group (still pending) and take it, so group[2] read after it says nothing
            full = group[2] >= self.k
            if full:
                targets, round_ = self._take_group(i)
        if full:
            self.send(i, group, targets, round_)

    def _take_group(self, i: int):
        """(Caller holds layer i's lock.) Layer i's group leaves: its round number and peers, which
        enter the sent counts (gossip_staleness) before any of them can answer. --gossip average:
        the layer's parameters as they are now, and their clock, replace the update sum."""
        group, self.pending[i] = self.pending[i], None
        if self.averaging:
            group[0], group[1] = self.params[i].detach().clone(), self.clock[i].copy()
        round_ = self.rounds[i]
        self.rounds[i] += 1
        with self.topo_lock:
            targets = self.topo.targets(round_, self.exchange.alive)
        self.sent[i, targets] += group[2]
        return targets, round_

    def send(self, i: int, group, targets: list, round_: int) -> None:
        """Post one layer's group to its peers (never blocks: Exchange.post)."""
        payload, seen, steps, decayed = group
        self.exchange.post(targets, PARAMS if self.averaging else GRAD, payload, seq=round_, steps=steps,
                           clock=torch.from_numpy(seen), coalesce=True, offset=self.slices[i][0], decayed=decayed)

    def flush(self) -> None:
        """After the last backward: send every layer's unfinished group."""
        with self.exchange.batched():
            self._flush()
        self.board.exchange[self.rank, ExchangeCounter.ROUNDS] = sum(self.rounds)

    def _flush(self) -> None:
        for i in range(len(self.params)):
            with self.locks[i]:
                group = self.pending[i]
                if group is not None:
                    targets, round_ = self._take_group(i)
            if group is not None:
                self.send(i, group, targets, round_)

    # -- peers' updates: applied on arrival ------------------------------------------------
    @torch.no_grad()
    def apply_peer(self, msg) -> bool:
        """Receiver thread: apply a peer's layer update under the staleness policy, or average the
        layer with the peer's parameters (--gossip average: PARAMS, never damped)."""
        if msg.kind != (PARAMS if self.averaging else GRAD):
            return False
        i = self.layer_at[msg.offset]  # wire.decode checked it is exactly one layer's slice
        offset, length = self.slices[i]
        payload = msg.payload.to(self.device, non_blocking=True)
        sender_clock = msg.clock.numpy()
        with self.locks[i]:
            row = self.clock[i]
            s = gossip_staleness(row, sender_clock, self.rank, self.sent[i, msg.sender])
            layer = self.flat[offset:offset + length]
            if self.averaging:
                factor = 1.0
                average_into(layer, payload)
            else:
                factor = self.policy.factor(s, msg.decayed)  # damped by the lr it was made at, not today's
                if factor is not None:
                    layer.add_(payload, alpha=factor)
            # a dropped update enters the clock too (processed, by decision), as in dasgd
            row[msg.sender] += msg.steps
            self.version[i] += msg.steps
        r = self.rank
        with self.record_lock:
            self.ctx.record_staleness(s)
            self.stale_sum[i] += s
            self.own_stale_sum[i] += s  # the staleness the policy acted on: a peer's update's own
            self.stale_count[i] += 1
            if s > self.stale_max[i]:
                self.stale_max[i] = s
            if factor is None:
                self.dropped[r] += 1
            else:
                self.board.updates[r] += 1
        return True


def run(ctx) -> None:
    cfg, board, rank = ctx.cfg, ctx.board, ctx.rank
    model = ctx.replica()  # this process's own replica, on its own device
    model.train()
    F, B = cfg.forward_threads, cfg.backward_threads
    board.fb_threads[rank, 0], board.fb_threads[rank, 1] = F, B
    # set_threads gave this process its share of the cores; its F + B threads split it.
    torch.set_num_threads(max(1, torch.get_num_threads() // (F + B)))
    flat = flatten_params([p for p in model.parameters() if p.requires_grad])  # a layer = a slice of it
    worker = Gossiping(ctx, F, B, model, flat)
    ex = worker.exchange
    ex.start()  # collective: every worker makes the exchange's gloo group
    try:
        ctx.start()
        worker.run()  # raises ThreadFailed if a forward or backward thread failed
        worker.flush()
        ex.send_last(DONE)
        board.idle_s[rank] += ex.wait_peers(cfg.stall_timeout, stop=lambda: bool(board.stop[0]))
        if not ex.peers_finished() and not board.stop[0]:
            ex.log(f"gave up waiting for worker(s) {ex.unfinished()} to finish")
    finally:
        ex.close(timeout=30)  # the sender hands over what is still queued (our DONE) first
    for lock in worker.locks:  # a receiver abandoned at close may still write a layer
        lock.acquire()
    try:
        ctx.finish(model)
    finally:
        for lock in worker.locks:
            lock.release()
