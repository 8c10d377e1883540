"""DASGD (Tosi & Theobald, arXiv 2309.03754): decentralized asynchronous SGD.

A full replica per worker process, no parameter server, no averaging, no barrier. Each step a
worker computes the gradient of its batch (local runs: the next batch of the shared plan, claimed
as Hogwild! does; torchrun: strided, rank, rank+N, ...),
applies it to its own replica at once, and sends the update (summed over --send-every steps) to
its peers (--topology); the receiver thread applies peers' updates the moment they arrive, so
no step ever waits for the network and a peer's update is never held back by a local step.

What travels is the update the sender applied to its own replica: lr x its optimizer direction
(momentum / Nesterov / weight decay over the sender's OWN gradients, like each Hogwild! process
keeps its own momentum). With --momentum 0 and no weight decay this is lr x the gradient: the
paper's algorithm exactly. With momentum, running every peer's raw gradient through each
receiver's momentum buffer instead diverged at staleness 2 on mnist1d at the default lr in a
simulation, while this form converged (0.93); it also means that with --topology all the
replicas agree exactly (up to float summation order) once every message is delivered.

Concurrency: one lock guards the replica's parameters while an update is written (the training
thread's own step, the receiver thread's peer update) and the vector clock; a second one this
worker's board row. Forward and backward run without them (Hogwild!-style reads), and so do the
snapshots (a snapshot may catch a peer's update half-applied, as a Hogwild! read would).

Staleness (vector clocks, exchange/policy.py) of every applied update is recorded: own updates
count what the receiver thread applied during their forward/backward, peers' updates what this
replica had applied that the sender had not. --staleness scales or drops peers' updates (cap by
the lr the sender made the update at, which the message carries: wire.py's decay_ppm).
With --topology ring or random:M an update reaches its origin and M peers only (gossip without
forwarding): each replica applies a different subset, so the replicas drift apart. Nothing
reconciles them during the run; the record shows how far apart they are (consensus_distance)
and how good their average is (avg_test_accuracy), next to replica 0's own accuracy.
Lost workers (the launcher saw the process die and set board.lost; under torchrun the exchange
sets it): the exchange stops sending to them; local survivors go on claiming the plan, torchrun
survivors take over the strided batches the lost rank did not get to (launch/modes.py).
End of the run: DONE to every peer, then wait until every peer has sent DONE or is gone (the
exchange's shutdown protocol), applying their last updates; that wait is the worker's idle time.
"""

from __future__ import annotations

import threading

import torch

from ...board import ExchangeCounter
from ...exchange import DONE, GRAD, Exchange, StalenessPolicy, Topology, staleness
from ...tensors import flatten_params


def run(ctx) -> None:
    cfg, board, n, rank = ctx.cfg, ctx.board, ctx.world_size, ctx.rank
    model = ctx.replica()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    flat = flatten_params(params)  # the parameters become views of one vector: an update is one add
    opt = ctx.optimizer(params)
    policy = StalenessPolicy(cfg.parsed.staleness, n)
    topo = Topology(cfg.parsed.topology, n, rank, cfg.seed)
    clock = [0] * n  # updates applied to this replica, per origin
    lock = threading.Lock()  # the parameters while an update is written, and the clock
    stats = threading.Lock()  # this worker's board row (the training and the receiver thread write it)

    @torch.no_grad()
    def apply_peer(msg) -> bool:
        """Receiver thread: apply a peer's update under the staleness policy."""
        if msg.kind != GRAD:
            return False
        delta = msg.payload.to(ctx.device, non_blocking=True)
        sender_clock = msg.clock.tolist()
        with lock:
            s = staleness(clock, sender_clock)
            factor = policy.factor(s, msg.decayed)  # damped by the lr it was made at, not today's
            if factor is not None:
                flat.add_(delta, alpha=factor)
            # a dropped update enters the clock too (processed, by decision): otherwise every later
            # message of ours would look that much staler to its sender, and with drop:MAX the
            # drops would feed themselves until every message between the two was dropped
            clock[msg.sender] += msg.steps
        with stats:
            ctx.record_staleness(s)
            board.updates[rank] += int(factor is not None)
            board.dropped[rank] += int(factor is None)
        return True

    ex = Exchange(ctx, flat.numel(), dtype=flat.dtype, name="dasgd", handler=apply_peer)
    ex.start()
    try:
        ctx.start()
        pending, pending_steps, pending_clock, pending_decayed, rounds = None, 0, None, 1.0, 0
        # Local processes claim the next batch of the shared plan, as Hogwild! does: a straggler
        # simply processes fewer batches, nobody waits for it, and the survivors of a dead worker
        # go on claiming. Under torchrun (strided batches) the survivors take over a lost rank's
        # batches from how far it got: the updates of it this replica applied, its clock entry.
        for k in ctx.batches(done=lambda w: clock[w]):
            x, y = ctx.fetch(k)
            with lock:
                seen = list(clock)  # what this replica had applied when the forward read it
            loss = ctx.loss(model(x), y)
            grads = torch.autograd.grad(loss, params)
            ctx.compute_done()  # a straggler sleeps here, outside the lock
            progress = ctx.plan.samples_before(k)  # the batch's place in the plan: its lr
            lr = ctx.lr(progress)
            with lock:
                before = flat.clone()
                opt.step(grads, lr)
                delta = flat.sub(before)  # exactly the update this step applied
                own_staleness = staleness(clock, seen)
                if pending_steps == 0:
                    pending, pending_clock, pending_decayed = delta, seen, ctx.decay_fraction(progress)
                else:
                    pending += delta
                clock[rank] += 1
                pending_steps += 1
            if pending_steps == cfg.send_every:
                ex.post(topo.targets(rounds, ex.alive), GRAD, pending, seq=rounds, steps=pending_steps,
                        clock=torch.tensor(pending_clock), coalesce=True, decayed=pending_decayed)
                rounds += 1
                board.exchange[rank, ExchangeCounter.ROUNDS] = rounds
                pending_steps = 0
            with stats:
                ctx.record(len(y), loss, staleness=own_staleness, model=model, optimizer=opt,
                           batch=k, grads=grads)
        if pending_steps:
            ex.post(topo.targets(rounds, ex.alive), GRAD, pending, seq=rounds, steps=pending_steps,
                    clock=torch.tensor(pending_clock), coalesce=True, decayed=pending_decayed)
            board.exchange[rank, ExchangeCounter.ROUNDS] = rounds + 1
        ex.send_last(DONE)
        board.idle_s[rank] += ex.wait_peers(cfg.stall_timeout, stop=lambda: bool(board.stop[0]))
        if not ex.peers_finished() and not board.stop[0]:  # told to stop: no waiting was given up
            ex.log(f"gave up waiting for worker(s) {ex.unfinished()} to finish")
    finally:
        # The sender hands over what is still queued (our DONE) first. When the run is told to stop
        # (a divergence, a failure, Ctrl-C) nothing is left worth sending, and a receiver blocked on
        # a peer that stops too would hold this worker the whole timeout (a diverged run took 32 s).
        ex.close(timeout=1.0 if board.stop[0] else 30)
    with lock, stats:
        ctx.finish(model)
