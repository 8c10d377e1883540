"""Launch modes: where a run's worker processes come from, and the rules that follow from it.

A schedule never asks which launch it is in; it calls the WorkerContext, which asks its mode:
- batch_source(ctx, done): a thread-safe take() -> the next batch index of this worker, or None
  at the end of the plan (or when the run is told to stop).
- resume_point(ctx, k): where a resumed run starts after this worker's batch k (None: the shared
  claim counter, which the launcher saves).
- global_samples(ctx): samples everyone has processed (the learning-rate schedule's clock).
- start(ctx): this worker is ready; returns when training starts (the clock's zero).
- marks_lost_peers: True where no launcher watches the processes, so the exchange itself marks
  a dead peer lost (board.lost) and the survivors go on without it.
- join_group(spec, rank, backend, timeout): this worker joins the run's torch.distributed group
  (returns the torchrun job handle, or None); processes_here(spec) and local_index(rank): how
  many of the run's processes share this machine, and this one's index among them (threads, GPU).
- explain_failure(e, message, algo, rank): the failure's message as the launcher will print it.

LocalLaunch: processes (or one in-process worker) started by launch.local.Launcher on this
machine. They share one Board in shared memory: batches are claimed from one counter (a
straggler simply processes fewer, survivors of a dead worker go on claiming), the launcher sees
every row, and the start line is "every worker ready".

TorchrunLaunch: one rank of a torchrun job (launch.torchrun). No memory is shared across
machines: each rank has a Board of its own, takes the strided batches rank, rank + N, ... and,
when given done(w) (how far lost rank w got), its share of the batches a lost rank did not get
to, merged in plan order. The start line is the process group's barrier (worker_main).
"""

from __future__ import annotations

import heapq
import threading
import time
from dataclasses import dataclass

START_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class LocalLaunch:
    name = "local"
    marks_lost_peers = False  # the launcher watches exit codes and sets board.lost

    def join_group(self, spec, rank: int, backend: str, timeout):
        """The launcher's FileStore in the run directory (Launcher._run_processes) is the rendezvous;
        gloo's own sockets listen on the loopback interface only: every peer is on this machine."""
        import os
        import socket

        import torch.distributed as dist
        loopback = [name for _, name in socket.if_nameindex() if name.startswith("lo")]
        if loopback:
            os.environ.setdefault("GLOO_SOCKET_IFNAME", loopback[0])
        path = spec.dist_init.removeprefix("file://")
        store = dist.FileStore(path, spec.world_size + 1)
        # gloo logs each failed connection attempt to fd 2 from C++. When a peer dies during start-up
        # the launcher fails the run with one line, but the survivors' retry lines could reach the
        # terminal before it stops them (a CI run printed 5). So the join writes fd 2 to
        # startup-<rank>.log in the run directory, kept where it says something, else removed.
        log = os.path.join(os.path.dirname(path), f"startup-{rank}.log")
        saved = os.dup(2)
        try:
            with open(log, "w") as f:
                os.dup2(f.fileno(), 2)
            dist.init_process_group(backend, store=store, rank=rank, world_size=spec.world_size, timeout=timeout)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        if os.path.getsize(log) == 0:
            os.unlink(log)
        return None

    def processes_here(self, spec) -> int:
        return spec.world_size

    def local_index(self, rank: int) -> int:
        return rank

    def explain_failure(self, e: BaseException, message: str, algo, rank: int) -> str:
        return message  # the launcher sees exit codes and names a dead worker itself

    def batch_source(self, ctx, done=None):
        board, plan = ctx.board, ctx.plan

        stop = board.view("stop")

        def take() -> int | None:
            if stop[0] or not ctx.launcher_alive():
                return None
            k = board.claim(ctx.rank, plan.num_batches)
            if k < plan.num_batches:
                return k
            while not stop[0] and ctx.launcher_alive():
                # Peers first, then the claim: the launcher re-queues a lost peer's batches before it
                # clears its row, so "no peer busy" seen here means nothing more will be re-queued.
                busy = board.peers_busy(ctx.rank)
                k = board.claim(ctx.rank, plan.num_batches)
                if k < plan.num_batches:
                    return k
                if not busy:
                    return None
                # The plan is claimed, but a peer still holds batches: if it dies they come back
                # here (the launcher sees the death within POLL_S); if it books them, we are done.
                time.sleep(0.01)
            return None
        return take

    def resume_point(self, ctx, k: int) -> int | None:
        return None

    def global_samples(self, ctx) -> int:
        return ctx.spec.samples_before + sum(ctx.board.view("samples"))

    def start(self, ctx) -> None:
        b = ctx.board
        b.status[ctx.rank] = 1
        deadline = time.time() + START_TIMEOUT_S
        while int((b.status >= 1).sum()) < b.workers and not b.stop[0]:
            if time.time() > deadline:
                raise TimeoutError(f"workers did not all become ready within {START_TIMEOUT_S:.0f} s")
            time.sleep(0.001)
        if ctx.is_lead:
            b.t0[0] = time.time() - ctx.spec.elapsed_before
        while b.t0[0] == 0 and not b.stop[0]:
            time.sleep(0.0005)
        b.status[ctx.rank] = 2


@dataclass(frozen=True)
class TorchrunLaunch:
    local_rank: int = 0
    local_world_size: int = 1
    name = "torchrun"
    marks_lost_peers = True  # no launcher: the exchange records a dead peer

    def join_group(self, spec, rank: int, backend: str, timeout):
        """The store env:// would make, kept: the end of the run is agreed on through it (job.py).
        No board is shared across machines: the group's barrier is the start line."""
        import torch.distributed as dist

        from ..engine import set_threads
        from .job import TorchrunJob
        job = TorchrunJob(rank, spec.world_size, timeout)
        job.init_process_group(backend)
        try:
            # The cores are shared by every rank on this machine, whichever node started it: with two
            # nodes of one process on a 2-core machine, 2 torch threads each oversubscribed the cores
            # and a dasgd run trained ~90x slower than the same run launched locally.
            set_threads(spec, max(self.local_world_size, job.ranks_on_this_host()))
            dist.barrier()
            job.watch_losses(spec.board)  # a loss one rank sees reaches the others' boards (job.py)
        except BaseException:  # the caller owns the group and the job only once they are returned
            job.close()  # end/<rank> = failed: rank 0 need not wait for this rank
            try:
                dist.destroy_process_group()
            except Exception:
                pass
            raise
        return job

    def processes_here(self, spec) -> int:
        return self.local_world_size

    def local_index(self, rank: int) -> int:
        return self.local_rank

    def explain_failure(self, e: BaseException, message: str, algo, rank: int) -> str:
        """No launcher names the dead rank here: say that a peer is gone."""
        from ..exchange.transport import brief, peer_gone
        if not algo.tolerates_failures and peer_gone(e):
            return (f"worker {rank}: a peer is gone ({brief(e)}); --algo {algo.name} cannot continue "
                    "without every rank")
        return message

    def batch_source(self, ctx, done=None):
        """take() over this rank's strided batches (plus, with done, its share of lost ranks'),
        one generator shared by the worker's threads under a lock."""
        batches, lock = strided_with_takeover(ctx, done), threading.Lock()

        def take() -> int | None:
            with lock:
                return next(batches, None)
        return take

    def resume_point(self, ctx, k: int) -> int:
        n = ctx.world_size
        return (k // n + 1) * n  # every rank resumes at the same round of the strided order

    def global_samples(self, ctx) -> int:
        # A rank's board has only its own row; every rank does about as many (strided batches).
        # Capped at the plan, which dasgd's survivors of a lost rank pass when they take over its
        # batches (the snapshot slots are sized for the plan: past it the final snapshot would find no slot).
        return min(ctx.spec.total_samples,
                   ctx.spec.samples_before + ctx.board.view("samples")[ctx.rank] * ctx.world_size)

    def start(self, ctx) -> None:
        ctx.board.t0[0] = time.time() - ctx.spec.elapsed_before  # worker_main's barrier was the start
        ctx.board.status[ctx.rank] = 2


def strided_with_takeover(ctx, done=None):
    """This worker's strided batches (rank, rank+N, ...), merged in plan order with its share of the
    batches that workers seen to die did not get to (split among the survivors), so the run
    still covers the whole plan. In plan order, not after its own share: a batch's lr follows its
    plan position (the run's global progress), so batches taken over only at the end would be
    trained at mid-run learning rates just before the run ends (with a worker of 4 killed 1 s in,
    the final accuracy was 0.78-0.92 that way). Best effort: a worker lost after this one
    finished is not covered.
    done(w): batches worker w got through (dasgd passes w's updates this replica applied, its
    vector clock entry: in-flight messages are missed, and with --topology ring / random:M a
    replica sees only part of them, so some batches are redone). None: no takeover."""
    n, rank, board, plan = ctx.world_size, ctx.rank, ctx.board, ctx.plan
    start = ctx.spec.start_batch

    def own():
        k = start + rank
        while k < plan.num_batches and not board.stop[0]:
            yield k
            k += n

    sources = {-1: own()}
    heap: list[tuple[int, int]] = []  # (next batch, source): the smallest plan position first

    def advance(src: int) -> None:
        k = next(sources[src], None)
        if k is not None:
            heapq.heappush(heap, (k, src))

    def takeover(w: int, survivors: list[int]):
        j = done(w) + survivors.index(rank)
        while (k := start + w + j * n) < plan.num_batches:
            yield k
            j += len(survivors)

    advance(-1)
    taken: set[int] = set()
    while heap and not board.stop[0]:
        if done is not None:
            for w in range(n):
                if int(board.lost[w]) and w not in taken:
                    taken.add(w)
                    survivors = [r for r in range(n) if not int(board.lost[r])]
                    if rank in survivors:
                        sources[w] = takeover(w, survivors)
                        advance(w)
        k, src = heapq.heappop(heap)
        yield k
        advance(src)
