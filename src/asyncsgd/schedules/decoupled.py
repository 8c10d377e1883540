"""PD-ASGD (arXiv 2410.05985): decoupled forward and backward threads with layer-wise updates.

Inside one worker process, F forward threads and B backward threads share one model:
- A forward thread takes a queue slot, claims the next batch of the shared plan, runs the
  forward pass on the parameters as they are at that moment and puts the pending backward
  (the loss with its graph, plus each layer's version when the forward read it) on a bounded
  queue.Queue(queue_size): at most queue_size computed forwards wait, which bounds the memory
  held in activations and how far forwards run ahead of the updates.
- A backward thread takes a pending backward and runs it. With --updates layer (default) each
  parameter tensor ("layer") is updated the moment its gradient exists, before the rest of the
  backward pass finishes, lock-free; with --updates block the gradients are collected and
  applied together when the pass ends. One implementation, one switch.

How a layer's gradient reaches its update while the backward pass is still running: every
forward thread runs its own module tree whose parameters and buffers ARE the shared tensors
(ViewedReplica). When a module runs, a forward pre-hook swaps in a fresh view (`p.view_as(p)`)
of each of its shared parameters; autograd treats the view as a node of its own, so a tensor
hook on it fires exactly when that layer's gradient has been computed, for this pass only.
The hook applies LayerSGD.update to the shared parameter (through .data, so autograd's version
checks never fire) and the pass is run with torch.autograd.grad over the views, so nothing is
accumulated in a .grad that threads would share.

Versions and staleness: board.layer_version[w, t, l] counts the updates backward thread t of
worker w applied to layer l (one writer per row, so no lock); a layer's version is the sum
over all rows, across processes. The staleness of one layer update = the layer's version when
it is applied - its version when the forward read that layer. A backward pass is misaligned
when any of its layers was updated by someone else between its forward and its update (the
backward then ran on weights newer than its forward's). docs/pdasgd.md says this for users.

Sharing between worker processes (--sharing, resolved in config.validate):
- memory: the --workers processes all run their threads on ONE model in shared memory (or on
  the one GPU that holds it: _align_device), Hogwild! style; versions count every worker's updates.
- average: each process keeps its own replica, on its own device (worker_main: cuda:{rank % GPUs},
  or the CPU), runs its forward and backward threads with layer-wise updates on it exactly as
  above, and a background averaging thread (exchange/averaging.py, the one lpap uses) averages
  the replicas' parameters every --average-every local backward passes, keeping the local
  progress made meanwhile; a final average at the end makes every replica equal. Versions and
  staleness are per replica (this worker's rows only); BatchNorm statistics stay per replica.
"""

from __future__ import annotations

import copy
import functools
import queue
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field

import torch

from ..errors import DivergedError

POLL_S = 0.05  # how often blocked queue operations look at the stop flags
STOP_JOIN_S = 30.0  # after a stop, how long threads get to leave before the run gives up on them
MAX_AUTO_THREADS = 8


class ThreadFailed(RuntimeError):
    """A forward or backward thread raised; the message names the thread, worker and batch."""


@dataclass
class Pending:
    """One forward pass waiting for its backward."""

    batch: int
    samples: int
    loss: torch.Tensor
    views: list  # [(layer, view)]: the views of the shared parameters this pass ran on
    read: list  # each layer's version when the forward read the parameters
    event: object = None  # CUDA: recorded on the forward stream after the loss
    stale: list = field(default_factory=list)


def shared_replica(model: torch.nn.Module) -> torch.nn.Module:
    """A new module tree whose parameters and buffers are the model's own tensors (shared).
    A forward thread swaps per-pass views into the modules it runs, so each needs its own tree."""
    memo = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    return copy.deepcopy(model, memo)


class ViewedReplica:
    """A forward thread's module tree (shared_replica) run on per-pass views of the parameters.

    Why views made when each module runs, not all at the start: autograd runs ready nodes in
    reverse creation order, so a view created before the forward would have its node (and our
    hook) run after everything else, at the very end of the backward. A view created in the
    module's forward pre-hook sits just below that module's own operations, so its gradient is
    delivered as soon as the module's backward has run. The pre-hook also notes the layer's
    version then: the moment the forward reads that layer.
    A parameter used outside its own module's call (read by a parent before the module runs)
    gets the pass's early view, made at the start; both kinds are inputs of the backward.
    """

    def __init__(self, model: torch.nn.Module, params: list, version_of):
        self.module = shared_replica(model)
        self.params, self.version_of = params, version_of
        index = {id(p): i for i, p in enumerate(params)}  # by identity: tied weights are one layer
        self.slots = []  # (module, attribute, layer)
        for mod in self.module.modules():
            mine = [(n, index[id(p)]) for n, p in mod._parameters.items() if p is not None and id(p) in index]
            if mine:
                self.slots += [(mod, n, i) for n, i in mine]
                mod.register_forward_pre_hook(functools.partial(self._enter, mine))
        self.late = self.read = None

    def _enter(self, mine, module, args) -> None:
        if self.late is None:
            return
        for n, i in mine:
            v = self.late[i]
            if v is None:  # first call of this module in this pass (a reused module keeps its view)
                p = self.params[i]
                v = self.late[i] = p.view_as(p)
                self.read[i] = self.version_of(i)
            module._parameters[n] = v

    def __call__(self, x, read: list):
        """The model's output on x and the pass's views [(layer, view)]; read[i] is set to the
        version of layer i when the forward read it."""
        early = [p.view_as(p) for p in self.params]
        self.late, self.read = [None] * len(self.params), read
        for mod, n, i in self.slots:
            mod._parameters[n] = early[i]
        try:
            out = self.module(x)
        finally:
            for mod, n, i in self.slots:
                mod._parameters[n] = self.params[i]
            late, self.late, self.read = self.late, None, None
        return out, list(enumerate(early)) + [(i, v) for i, v in enumerate(late) if v is not None]


class Decoupled:
    """One worker process of PD-ASGD: its threads, queue, counters and bookkeeping."""

    def __init__(self, ctx, forward_threads: int, backward_threads: int, queue_size: int, updates: str,
                 staleness: str = "none", workers: int = 1, model=None, replica: bool = False):
        """model: what the threads train (default the shared ctx.spec.model); replica: it is this
        process's own replica, so only this worker's updates count in its layer versions."""
        self.ctx, self.board, self.rank = ctx, ctx.board, ctx.rank
        self.model = ctx.spec.model if model is None else model
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        # One LayerSGD (momentum buffers) per backward thread, as Hogwild! keeps one per process:
        # a thread's momentum then sees its own updates without delay (see docs/pdasgd.md).
        self.opts = [ctx.optimizer(self.params) for _ in range(backward_threads)]
        # --staleness on layer updates (pdasgd's default: adaptive). The concurrency c is what a
        # layer update sees in normal operation: the other backward threads of every worker plus
        # the queued forwards; staler updates (a descheduled thread's) get lr * c / s.
        from ..exchange.policy import StalenessPolicy
        self.policy = StalenessPolicy(staleness, backward_threads * workers + forward_threads + 1)
        self.F, self.B, self.queue_size, self.mode = forward_threads, backward_threads, queue_size, updates
        self.device = self.params[0].device if self.params else ctx.device
        self.cuda = self.device.type == "cuda"
        self.q: queue.Queue = queue.Queue(maxsize=queue_size)
        self.stop = threading.Event()
        self.forwards_done = threading.Event()
        self.errors: list = []  # (thread name, exception, traceback), first one wins
        self.lock = threading.Lock()  # errors, queue peak, forward count: small, short
        self.record_lock = threading.Lock()  # ctx.record is called by one thread at a time
        self.forwards_left = forward_threads
        self.slots = threading.Semaphore(queue_size)  # taken by a forward, given back when its item is taken
        self.peak = 0
        lv = self.board.layer_version
        self.layer_version = lv
        # The updates a layer's version counts: every worker's on the shared model; on a replica,
        # this worker's only (peers' progress arrives by averaging, not as layer updates).
        self.scope = lv[self.rank:self.rank + 1] if replica else lv
        self.columns = [self.scope[:, :, i] for i in range(len(self.params))]
        self.rows = lv.shape[1]
        # More backward threads than rows: threads share a row, and bump it under its lock.
        self.row_locks = [threading.Lock() for _ in range(self.rows)] if backward_threads > self.rows else None
        # Set by run() where needed: each forward thread's batch indices (default: claim the next
        # batch of the shared plan), the resume point a checkpoint records after batch k (default:
        # the claim counter), and a callback after every backward pass (the averager's step count).
        self.batch_iter = lambda: ctx.batches(mode="claim")
        self.next_batch_of = None
        self.on_pass = None
        self._guard_plan()

    def _guard_plan(self) -> None:
        """BatchPlan caches permutations in a dict; forward threads fetch concurrently, so this
        worker's plan looks indices up under a lock (a few microseconds per batch)."""
        plan, lock = self.ctx.plan, threading.Lock()
        unlocked = plan.indices

        def indices(k):
            with lock:
                return unlocked(k)
        plan.indices = indices

    # -- versions -------------------------------------------------------------------------
    def versions(self) -> list:
        return self.scope.sum((0, 1)).tolist()

    def bump(self, writer: int, i: int) -> None:
        row = self.layer_version[self.rank, writer % self.rows]
        if self.row_locks is None:
            row[i] += 1
        else:
            with self.row_locks[writer % self.rows]:
                row[i] += 1

    def version_of(self, i: int) -> int:
        return int(self.columns[i].sum())

    # -- one forward, one backward ----------------------------------------------------------
    def replica(self) -> ViewedReplica:
        return ViewedReplica(self.model, self.params, self.version_of)

    def forward(self, replica: ViewedReplica, k: int, stream=None) -> Pending:
        if stream is None:
            return self._forward(replica, k)
        with torch.cuda.stream(stream):
            item = self._forward(replica, k)
            item.event = torch.cuda.Event()
            item.event.record(stream)
        return item

    def _forward(self, replica: ViewedReplica, k: int) -> Pending:
        ctx = self.ctx
        x, y = ctx.fetch(k)
        read = self.versions()  # layers no module pre-hook reads are read now
        out, views = replica(x, read)
        return Pending(k, len(y), ctx.loss(out, y), views, read)

    def backward(self, item: Pending, writer: int, stream=None) -> list:
        """Run one pending backward, updating layers (layer mode: as their gradients appear).
        Returns the gradients; item.stale gets (layer, staleness) for every layer updated."""
        lr, opt = self.ctx.lr(), self.opts[writer]
        layer_mode = self.mode == "layer"
        grads = [None] * len(self.params)
        stale = item.stale

        def apply(i, g, s):
            stale.append((i, s))
            factor = self.policy.factor(s)
            if factor is None:  # --staleness drop:MAX
                self.board.dropped[self.rank] += 1
                return
            opt.update(i, g, lr * factor)
            self.bump(writer, i)

        def on_grad(i, g):
            grads[i] = g if grads[i] is None else grads[i] + g
            if layer_mode:
                apply(i, g, self.version_of(i) - item.read[i])

        handles = [v.register_hook(functools.partial(on_grad, i)) for i, v in item.views]
        inputs = [v for _, v in item.views]
        try:
            if stream is not None:
                with torch.cuda.stream(stream):
                    stream.wait_event(item.event)
                    torch.autograd.grad(item.loss, inputs, allow_unused=True)
            else:
                torch.autograd.grad(item.loss, inputs, allow_unused=True)
        finally:
            for h in handles:
                h.remove()
        if not layer_mode:
            now = self.versions()
            for i, g in enumerate(grads):
                if g is not None:
                    apply(i, g, now[i] - item.read[i])
        return grads

    def book(self, item: Pending, grads: list, opt) -> None:
        """Bookkeeping of one finished backward pass (one thread at a time per worker)."""
        b, r, ctx = self.board, self.rank, self.ctx
        with self.record_lock:
            if item.stale:
                idx = torch.tensor([i for i, _ in item.stale], dtype=torch.long)
                val = torch.tensor([max(0, s) for _, s in item.stale], dtype=torch.long)
                b.layer_stale_sum[r].index_add_(0, idx, val.double())
                b.layer_stale_count[r].index_add_(0, idx, torch.ones_like(val))
                b.layer_stale_max[r].scatter_reduce_(0, idx, val, reduce="amax")
                ctx.record_staleness(val.tolist())
                if any(s > 0 for _, s in item.stale):
                    b.misaligned[r] += 1
            b.backward_passes[r] += 1
            ctx.record(item.samples, item.loss, staleness=None, model=self.model, optimizer=opt,
                       next_batch=None if self.next_batch_of is None else self.next_batch_of(item.batch),
                       grads=[g for g in grads if g is not None] or None)
            if self.on_pass is not None:
                self.on_pass()

    # -- threads --------------------------------------------------------------------------
    def _fail(self, name: str, e: BaseException, batch: int | None) -> None:
        where = f"{name} of worker {self.rank}" + ("" if batch is None else f" (batch {batch})")
        with self.lock:
            self.errors.append((where, e, traceback.format_exc()))
        self.stop.set()

    def _stopping(self) -> bool:
        return self.stop.is_set() or bool(self.board.stop[0])

    def _acquire_slot(self) -> bool:
        while not self._stopping():
            if self.slots.acquire(timeout=POLL_S):
                return True
        return False

    def _forward_loop(self, index: int) -> None:
        batches = self.batch_iter()  # each thread its own generator (over board.claim() by default)
        k = None
        try:
            if self.cuda:
                torch.cuda.set_device(self.device)
            stream = torch.cuda.Stream(self.device) if self.cuda else None
            replica = self.replica()
            # A slot is taken BEFORE claiming and computing a batch and given back when a
            # backward thread takes the item: the forward reads the weights as late as it can,
            # and at most queue_size computed forwards wait (the queue can never be full).
            while self._acquire_slot():
                k = next(batches, None)
                if k is None or self._stopping():
                    self.slots.release()
                    break
                item = self.forward(replica, k, stream)
                while not self._stopping():
                    try:
                        self.q.put(item, timeout=POLL_S)
                    except queue.Full:
                        continue
                    depth = self.q.qsize()
                    with self.lock:
                        if depth > self.peak:
                            self.peak = depth
                            self.board.queue_peak[self.rank] = depth
                    break
                del item
        except BaseException as e:
            self._fail(f"forward thread {index}", e, k)
        finally:
            batches.close()
            with self.lock:
                self.forwards_left -= 1
                if self.forwards_left == 0:
                    self.forwards_done.set()

    def _backward_loop(self, index: int) -> None:
        k = None
        try:
            if self.cuda:
                torch.cuda.set_device(self.device)
            stream = torch.cuda.Stream(self.device) if self.cuda else None
            while not self._stopping():
                try:
                    item = self.q.get(timeout=POLL_S)
                except queue.Empty:
                    # No producer left and nothing queued (checked after the flag: a last put
                    # may land between the failed get and the flag).
                    if self.forwards_done.is_set() and self.q.empty():
                        return
                    continue
                self.slots.release()
                k = item.batch
                grads = self.backward(item, index, stream)
                self.book(item, grads, self.opts[index])
                del item, grads
        except BaseException as e:
            self._fail(f"backward thread {index}", e, k)

    def _wait(self, threads) -> None:
        """Join the threads as they finish; once a stop is asked for (a thread failed, or the
        launcher set board.stop), give them STOP_JOIN_S to leave, then stop waiting."""
        stop_seen = None
        while any(t.is_alive() for t in threads):
            for t in threads:
                t.join(timeout=POLL_S)
            if self._stopping():
                self.stop.set()
                stop_seen = stop_seen or time.monotonic()
                if time.monotonic() - stop_seen > STOP_JOIN_S:
                    return

    def run(self) -> None:
        threads = [threading.Thread(target=self._backward_loop, args=(i,), daemon=True,
                                    name=f"pdasgd-w{self.rank}-backward-{i}") for i in range(self.B)]
        threads += [threading.Thread(target=self._forward_loop, args=(i,), daemon=True,
                                     name=f"pdasgd-w{self.rank}-forward-{i}") for i in range(self.F)]
        started = []
        try:
            for t in threads:
                t.start()
                started.append(t)
        except BaseException as e:  # could not start a thread: stop the ones that did
            self._fail("thread start", e, None)
        try:
            self._wait(started)
        except BaseException:  # e.g. Ctrl-C in an in-process run: stop the threads, then leave
            self.stop.set()
            deadline = time.monotonic() + STOP_JOIN_S
            for t in started:
                t.join(timeout=max(0.1, deadline - time.monotonic()))
            raise
        alive = [t.name for t in started if t.is_alive()]
        while not self.q.empty():  # release the graphs of pending backwards nobody will run
            try:
                self.q.get_nowait()
            except queue.Empty:
                break
        if self.errors:
            where, e, _ = self.errors[0]
            if isinstance(e, DivergedError):
                raise e
            raise ThreadFailed(f"pdasgd {where} failed: {type(e).__name__}: {e}") from e
        if alive:
            raise ThreadFailed(f"pdasgd worker {self.rank}: threads {', '.join(alive)} did not stop "
                               f"within {STOP_JOIN_S:.0f} s of the stop request")


# -- choosing thread counts -------------------------------------------------------------------
def measure(ctx, model, steps: int = 5) -> tuple[float, float]:
    """Median seconds of one forward and one backward pass on batch 0 (a private copy of the
    model, so nothing shared changes: not the weights, not BatchNorm statistics)."""
    m = copy.deepcopy(model)
    m.train()
    replica = ViewedReplica(m, [p for p in m.parameters() if p.requires_grad], lambda i: 0)
    x, y = ctx.fetch(0)
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
    fwd, bwd = [], []
    for step in range(steps + 2):  # two warm-up steps
        sync()
        t0 = time.perf_counter()
        out, views = replica(x, [0] * len(replica.params))
        loss = ctx.loss(out, y)
        sync()
        t1 = time.perf_counter()
        torch.autograd.grad(loss, [v for _, v in views], allow_unused=True)
        sync()
        t2 = time.perf_counter()
        if step >= 2:
            fwd.append(t1 - t0)
            bwd.append(t2 - t1)
    med = lambda v: sorted(v)[len(v) // 2]
    return med(fwd), med(bwd)


def auto_threads(forward_threads: int, t_forward: float, t_backward: float) -> tuple[int, int]:
    """B backward threads so that they keep up with F forward threads: B = round(F * tb / tf)."""
    ratio = t_backward / max(t_forward, 1e-9)
    return forward_threads, max(1, min(MAX_AUTO_THREADS, round(forward_threads * ratio)))


def _align_device(ctx, model) -> None:
    """--sharing memory: the shared model lives on one GPU; every worker of this run computes
    there (with --sharing average each worker keeps a replica on its own GPU instead)."""
    p = next(model.parameters(), None)
    if p is None or p.device.type != "cuda" or ctx.device == p.device:
        return
    ctx.device = p.device
    ctx._data = ctx._place_data(ctx.task.train_set)
    torch.cuda.set_device(p.device)


def run(ctx) -> None:
    cfg, board, rank = ctx.cfg, ctx.board, ctx.rank
    replicas = cfg.sharing == "average"
    if replicas:  # this process's own replica on its own device (cuda:{rank % GPUs} or the CPU)
        model = ctx.replica()
    else:
        model = ctx.spec.model  # shared memory (or the one GPU): every thread and process updates it
        _align_device(ctx, model)
    model.train()
    F, B = cfg.forward_threads, cfg.backward_threads
    if cfg.fb_ratio == "auto":
        tf, tb = measure(ctx, model)
        F, B = auto_threads(F, tf, tb)
        if rank == 0:
            print(f"pdasgd: --fb-ratio auto: forward {tf * 1e3:.2f} ms, backward {tb * 1e3:.2f} ms per batch "
                  f"-> {F} forward thread(s), {B} backward thread(s) per worker", file=sys.stderr, flush=True)
    queue_size = cfg.queue_size or F  # one computed forward waiting per forward thread
    board.fb_threads[rank, 0], board.fb_threads[rank, 1] = F, B
    # set_threads gave this process its share of the cores; its F + B threads split it.
    torch.set_num_threads(max(1, torch.get_num_threads() // (F + B)))
    if not replicas:
        worker = Decoupled(ctx, F, B, queue_size, cfg.updates, cfg.staleness, cfg.workers)
        ctx.start()
        worker.run()
        ctx.finish(model)
        return
    from .dasgd import flatten_params
    # After --fb-ratio auto's private copy: the parameters become views of one vector, the averaged one
    flat = flatten_params([p for p in model.parameters() if p.requires_grad])
    # The staleness policy's concurrency counts this replica's threads only
    worker = Decoupled(ctx, F, B, queue_size, cfg.updates, cfg.staleness, 1, model=model, replica=True)
    run_replica(ctx, worker, flat)


def run_replica(ctx, worker: Decoupled, flat: torch.Tensor) -> None:
    """--sharing average: the worker's threads train its replica while a BackgroundAverager averages
    the replicas every --average-every local backward passes; the final average ends the run."""
    from ..exchange.averaging import BackgroundAverager

    cfg, rank, n = ctx.cfg, ctx.rank, ctx.world_size
    failures: list[BaseException] = []

    def on_error(e: BaseException) -> None:  # the averaging thread failed: stop this worker's threads
        failures.append(e)
        worker._fail("averaging thread", e, None)

    averager = BackgroundAverager(ctx, flat, cfg.average_every, name="pdasgd", stopping=worker._stopping,
                                  on_error=on_error)
    worker.on_pass = averager.step
    if ctx.spec.extra.get("launch") == "torchrun":
        # No board shared across machines to claim from: replica r takes batches r, r+N, ... and
        # its forward threads share them (one generator, so under a lock). Otherwise replicas
        # claim from the shared plan like every worker: a faster GPU simply does more batches.
        mine, lock = ctx.batches(mode="strided", stride=n, offset=rank), threading.Lock()

        def take():
            while True:
                with lock:
                    k = next(mine, None)
                if k is None:
                    return
                yield k
        worker.batch_iter = take
        worker.next_batch_of = lambda k: (k // n + 1) * n  # where a resumed run starts
    averager.open()  # collective: every worker makes the exchange's gloo group
    try:
        ctx.start()
        averager.start()
        worker.run()  # raises ThreadFailed if a thread (or the averaging thread) failed
        averager.finish()  # the final average: every replica ends equal; its wait is idle time
        if failures:  # failed during the final average
            e = failures[0]
            raise ThreadFailed(f"pdasgd averaging thread of worker {rank} failed: {type(e).__name__}: {e}") from e
    finally:
        averager.close(timeout=30)  # joins the averaging thread and the exchange's threads
    ctx.finish(worker.model)


# -- the record -------------------------------------------------------------------------------
def summary_extra(launcher, out: dict) -> None:
    """Per-layer staleness, misalignment, queue depth and the thread counts, into summary.json;
    with replicas (--sharing average) also the averaging and the exchange that carried it."""
    b, cfg = launcher.board, launcher.cfg
    names = [n for n, p in launcher.model.named_parameters() if p.requires_grad]
    keep = [w for w in range(b.workers) if w not in launcher.lost]
    s, c, m = b.layer_stale_sum[keep].sum(0), b.layer_stale_count[keep].sum(0), b.layer_stale_max[keep].amax(0)
    out["staleness_by_layer"] = [
        {"layer": name, "mean": round(float(s[i]) / int(c[i]), 4) if int(c[i]) else 0.0, "max": int(m[i]),
         "count": int(c[i])} for i, name in enumerate(names)]
    passes = int(b.backward_passes.sum())
    out["backward_passes"] = passes
    out["misaligned_fraction"] = round(int(b.misaligned.sum()) / passes, 4) if passes else 0.0
    rows = {tuple(int(v) for v in b.fb_threads[w]) for w in keep if int(b.fb_threads[w, 0]) > 0}
    fb = sorted(rows)[0] if rows else (cfg.forward_threads, cfg.backward_threads)
    out["forward_threads"], out["backward_threads"] = fb
    if len(rows) > 1:  # --fb-ratio auto chose differently in different workers
        out["threads_by_worker"] = [[int(v) for v in b.fb_threads[w]] for w in keep]
    out["fb_ratio"] = cfg.fb_ratio
    out["queue_size"] = cfg.queue_size or fb[0]
    out["queue_peak"] = int(b.queue_peak.max())
    out["updates_mode"] = cfg.updates
    out["sharing"] = cfg.sharing
    if cfg.sharing == "average":
        from ..exchange.summary import exchange_summary
        exchange_summary(launcher, out, sum(p.numel() for p in launcher.model.parameters() if p.requires_grad))
        gpus = torch.cuda.device_count() if launcher.device == "cuda" else 0
        local = launcher.spec.extra.get("launch") != "torchrun"  # under torchrun each machine numbers its own
        out["averaging"] = {
            "average_every": cfg.average_every,  # local backward passes between rounds
            "rounds_per_worker": [int(r) for r in b.exchange[:, 0]],
            "devices": [f"cuda:{w % gpus}" if gpus else "cpu" for w in range(b.workers)] if local else None}
    from ..theory import add_theory  # measured staleness vs the PD-ASGD bias bound
    add_theory(launcher, out)
