"""LPAP-SGD (Chatterjee et al., arXiv 2203.06638, "Scaling the Wild: Decentralizing Hogwild!-style
Shared-memory SGD"): Hogwild! inside each group, non-blocking parameter averaging across groups.

--groups K processes (one per device), each running --workers-per-group Hogwild! workers as
THREADS on the process's own model (lock-free updates; torch ops release the GIL). Batches: the
threads of every group claim the next batch of the shared plan (board.claim, a lock shared by the
local processes); under torchrun, group g takes batches g, g+K, ... and its threads share them.

Averaging (LAP): a background averaging thread per group (exchange/averaging.py, shared with
pdasgd --sharing average). Round r starts when this group has made --average-every local steps
since its last averaging, or when a peer's round-r parameters arrive (so a straggler group never
delays the others' averaging; LPP-SGD's reference code starts rounds on the largest step count of
any group the same way). In a round the thread copies the parameters (snapshot), sends them to
every live peer (point-to-point, exchange/transport.py), waits for every live peer's round-r
parameters, and adds (average - snapshot) to the live parameters: local progress made by the
Hogwild! threads meanwhile is kept, training never stops. A group that finished training answers
further rounds with its final parameters (FINAL). At the end every group sends FINAL, waits for
everyone's, and takes their average: all groups end with the same model (unless a group was lost
or timed out). Only parameters are averaged; float buffers (BatchNorm statistics) stay per group.

--partitioned (LPP-SGD): after a warm-up (max(1 epoch, --warmup-epochs) of global progress,
at most half the run), each thread alternates: on even steps it computes the gradient of its own
contiguous slice of the parameter tensors only (split by size, as the reference code does; the
backward pass stops at the slice's first layer: "partial backpropagation") and updates only that
slice; on odd steps it runs the full backward and updates everything. A thread with an empty
slice (more threads than tensors) always updates everything.

Staleness: updates the other threads of the same group applied between a thread's forward read
and its write, as for hogwild; --staleness applies its rules to it (exchange.policy, the
concurrency being the group's threads: averaging rounds are not counted). The averaging
thread's waits never block training; the end-of-run wait for the final average is the group's idle time.

Threads and their owner: run() starts the group's compute threads and the averager's thread and
joins them: the compute threads when the plan is exhausted, or, once one failed or the launcher set
board.stop, within --stall-timeout (else TimeoutError); when run() itself is interrupted (a thread
that would not start, Ctrl-C, torchrun's SIGTERM) they are told to stop and joined within
STOP_JOIN_S; the averager last, by close(timeout=30).
"""

from __future__ import annotations

import threading
import time

import torch

from ...engine import WorkerContext
from ...exchange.averaging import BackgroundAverager
from ...exchange.policy import StalenessPolicy
from ...tensors import flatten_params


def partition(sizes: list[int], threads: int) -> list[tuple[int, int] | None]:
    """Contiguous ranges of parameter tensors (given by element counts), one per thread, balanced
    by element count. The simulator uses the same partition."""
    total, offset, owner = sum(sizes), 0, []
    for s in sizes:
        owner.append(min(threads - 1, offset * threads // total))
        offset += s
    out = []
    for t in range(threads):
        mine = [i for i, o in enumerate(owner) if o == t]
        out.append((mine[0], mine[-1] + 1) if mine else None)
    return out


STOP_JOIN_S = 30.0  # after a failure, how long the compute threads get to finish their step


def run(ctx) -> None:
    cfg, board, g = ctx.cfg, ctx.board, ctx.rank
    threads_n = cfg.workers_per_group
    model = ctx.replica()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    flat = flatten_params(params)
    lock = threading.Lock()  # this group's board row
    failed = threading.Event()
    errors: list[BaseException] = []
    take = ctx.batch_source()  # the threads' batches (thread-safe): local claims, or torchrun's strided ones
    parts = partition([p.numel() for p in params], threads_n)
    policy = StalenessPolicy(cfg.parsed.staleness, threads_n)  # the concurrency is the group's threads
    n_train = len(ctx.task.train_set)
    warm = min(ctx.spec.total_samples / 2, n_train * max(1.0, cfg.warmup_epochs))

    def on_error(e: BaseException) -> None:
        errors.append(e)
        failed.set()

    # LAP: rounds every --average-every local steps (or when a peer starts one), final average at the end
    averager = BackgroundAverager(ctx, flat, cfg.average_every, name="lpap", label=f"lpap group {g}",
                                  stopping=failed.is_set, on_error=on_error)

    def next_batch() -> int | None:
        return None if failed.is_set() else take()

    def work(t: int, c: WorkerContext) -> None:
        opt = c.optimizer(params)  # momentum per thread, as per process in hogwild
        step = 0
        while (k := next_batch()) is not None:
            x, y = c.fetch(k)
            version = int(board.updates[g])
            part = parts[t] if cfg.partitioned else None
            partial = part is not None and step % 2 == 0 and c.global_samples() >= warm
            loss = c.loss(model(x), y)
            grads = torch.autograd.grad(loss, params[part[0]:part[1]] if partial else params)
            c.compute_done()
            # staleness at the write: the group's updates since this thread's read (as in hogwild)
            stale = int(board.updates[g]) - version
            factor = policy.factor(stale, c.decay_fraction())
            if factor is not None:
                lr = c.lr() * factor
                if partial:
                    for i, grad in zip(range(*part), grads):
                        opt.update(i, grad, lr)
                else:
                    opt.step(grads, lr)
            with lock:
                if factor is None:  # not applied: counted in dropped_updates, the version does not move
                    board.dropped[g] += 1
                c.record(len(y), loss, staleness=stale, model=model if t == 0 else None, optimizer=opt,
                         batch=k, grads=None if partial or factor is None else grads,
                         updates=int(factor is not None))
                if factor is not None:
                    averager.step()
            step += 1

    def guarded(fn, *args):
        try:
            fn(*args)
        except BaseException as e:
            on_error(e)

    contexts = [ctx] + [WorkerContext(ctx.spec, g) for _ in range(threads_n - 1)]
    workers: list[threading.Thread] = []
    finished = False
    averager.open()
    try:
        ctx.start()
        for c in contexts[1:]:
            c.begin_step()
        workers = [threading.Thread(target=guarded, args=(work, t, c), daemon=True, name=f"asyncsgd-lpap-{g}.{t}")
                   for t, c in enumerate(contexts)]
        averager.start()
        for w in workers:
            w.start()
        deadline = None
        for w in workers:  # they end when the plan is exhausted, on board.stop, or when one failed
            while w.is_alive():
                w.join(timeout=0.5)
                if deadline is None and (failed.is_set() or board.stop[0]):
                    deadline = time.monotonic() + cfg.stall_timeout
                if deadline is not None and time.monotonic() > deadline and w.is_alive():
                    raise TimeoutError(f"lpap group {g}: worker thread {w.name} did not stop within "
                                       f"{cfg.stall_timeout:.0f} s")
        averager.finish()  # the final average; its wait is the group's idle time
        if errors:
            raise errors[0]
        finished = True
    finally:
        if not finished:  # a thread failed, or this one raised (a thread that would not start, Ctrl-C,
            # torchrun's SIGTERM): the compute threads stop at their next batch and are joined before
            # the averager they call is closed
            failed.set()
            deadline = time.monotonic() + STOP_JOIN_S
            for w in workers:
                if w.ident is not None:  # started
                    w.join(timeout=max(0.1, deadline - time.monotonic()))
        averager.close(timeout=30)  # joins the averaging thread (an error path: without the final wait)
    ctx.finish(model)
