"""The thread engine of one PD-ASGD worker process: F forward threads, B backward threads, a
bounded queue between them, layer-wise updates and the bookkeeping of versions and staleness.

Concurrency contract:
- Decoupled.run() starts every thread and is their only owner: it joins them as they finish,
  and once a stop is asked for (a thread failed, or the launcher set board.stop) gives them
  STOP_JOIN_S to leave, then raises ThreadFailed naming the threads that did not.
- A forward thread takes a slot (semaphore of rules.slot_count(queue_size)) BEFORE it claims and
  computes a batch; a backward thread gives the slot back when it takes the item (with
  --queue-size 0: when it has finished that item's backward, rules.slot_back_at_end), so at most
  queue_size (1) computed forwards wait and the queue can never be full.
- 1F:1B at --queue-size 0 (the CPU default's layout) runs on ONE thread that plays both roles
  (_turns_loop): there the next forward waits for the last backward anyway, and handing the
  interpreter lock between two threads twice a batch cost 8% of the samples/s.
- Every blocking wait polls the stop flags every POLL_S seconds.
- Layer versions: board.layer_version[w, t, l] has one writer (backward thread t of worker w);
  with more backward threads than rows, threads that share a row bump it under its lock.
- ctx.record is called by one backward thread at a time (record_lock).
- Gradient delivery: each shared parameter's hook (registered in __init__, removed by close(),
  which run() calls on the way out) runs on the thread that runs that pass's graph and looks
  the pass up in _on_grad by autograd graph task id. Only the backward running a pass adds and
  removes its own entry (single dict operations, atomic under the interpreter lock), and its
  loss-node hook is removed when the backward returns, so no pass outlives its backward.
"""

from __future__ import annotations

import functools
import queue
import threading
import time
import traceback
import weakref
from dataclasses import dataclass, field

import torch

from ...config import Staleness
from ...errors import DivergedError
from ...exchange.policy import StalenessPolicy
from .rules import concurrency, damped_staleness, one_thread, slot_back_at_end, slot_count
from .views import ReadingReplica

POLL_S = 0.05  # how often blocked queue operations look at the stop flags
STOP_JOIN_S = 30.0  # after a stop, how long threads get to leave before the run gives up on them


class ThreadFailed(RuntimeError):
    """A forward or backward thread raised; the message names the thread, worker and batch."""


@dataclass
class Pending:
    """One forward pass waiting for its backward."""

    batch: int
    samples: int
    loss: torch.Tensor
    read: list  # each layer's version when the forward read the parameters
    own_read: list = None  # the same, counting this worker's own updates only (rules.damped_staleness)
    event: object = None  # CUDA: recorded on the forward stream after the loss
    stale: list = field(default_factory=list)
    decayed: float = 1.0  # optim.decay_fraction when its backward began (layup's messages carry it)


def _deliver(engine_ref, i: int, grad) -> None:
    """A shared parameter's tensor hook: its gradient to the engine, while the engine lives."""
    engine = engine_ref()
    if engine is not None:
        engine._leaf_grad(i, grad)


class Decoupled:
    """One worker process of PD-ASGD: its threads, queue, counters and bookkeeping."""

    def __init__(self, ctx, forward_threads: int, backward_threads: int, queue_size: int, updates: str,
                 staleness: Staleness = Staleness("none"), workers: int = 1, model=None, replica: bool = False,
                 backward_weights: str = "current"):
        """model: what the threads train (default the shared ctx.spec.model); replica: it is this
        process's own replica, so only this worker's updates count in its layer versions;
        backward_weights: forward (each pass on a private copy of the weights it read, see
        ReadingReplica) or current (the graph saves the live shared weights)."""
        self.snapshot = backward_weights == "forward"
        self.ctx, self.board, self.rank = ctx, ctx.board, ctx.rank
        self.model = ctx.spec.model if model is None else model
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        # One LayerSGD (momentum buffers) per backward thread, as Hogwild! keeps one per process:
        # a thread's momentum then sees its own updates without delay (see docs/pdasgd.md).
        self.opts = [ctx.optimizer(self.params) for _ in range(backward_threads)]
        # --staleness on layer updates (pdasgd's default: adaptive), with the concurrency of spec.py
        self.policy = StalenessPolicy(staleness, concurrency(queue_size, backward_threads, workers))
        self.F, self.B, self.queue_size, self.mode = forward_threads, backward_threads, queue_size, updates
        self.device = self.params[0].device if self.params else ctx.device
        self.cuda = self.device.type == "cuda"
        self.q: queue.Queue = queue.Queue(maxsize=slot_count(queue_size))
        self.slot_back_at_end = slot_back_at_end(queue_size)
        self.stop = threading.Event()
        self.forwards_done = threading.Event()
        self.errors: list = []  # (thread name, exception, traceback), first one wins
        self.lock = threading.Lock()  # errors, queue peak, forward count: small, short
        self.record_lock = threading.Lock()  # ctx.record is called by one thread at a time
        self.forwards_left = forward_threads
        self.slots = threading.Semaphore(slot_count(queue_size))  # taken by a forward, given back when its item is taken
        self.peak = 0
        lv = self.board.layer_version
        self.layer_version = lv
        # The updates a layer's version counts: every worker's on the shared model; on a replica,
        # this worker's only (peers' progress arrives by averaging, not as layer updates).
        self.scope = lv[self.rank:self.rank + 1] if replica else lv
        self.rows, L = lv.shape[1], lv.shape[2]
        # The counters are read and written through flat memoryviews of the board's shared memory
        # (board.view): a version is a sum of Python ints, not a torch reduction, and other
        # processes' updates are seen the moment they are written.
        flat = self.board.view("layer_version")
        block = self.rows * L  # one worker's rows
        lo, hi = (self.rank * block, (self.rank + 1) * block) if replica else (0, len(flat))
        self.columns = [flat[lo + i:hi:L] for i in range(len(self.params))]  # layer i over the scope's rows
        own = flat[self.rank * block:(self.rank + 1) * block]  # this worker's rows
        self.own_columns = [own[i::L] for i in range(len(self.params))]
        self._tls = threading.local()  # a forward thread's own versions of the layers as it read them
        self.writer_rows = [flat[(self.rank * self.rows + t) * L:(self.rank * self.rows + t + 1) * L]
                            for t in range(self.rows)]
        self.scope_np = self.scope.numpy()
        self.stop_flag = self.board.view("stop")
        self.dropped = self.board.view("dropped")
        r = self.rank
        self.stale_sum, self.stale_count, self.stale_max, self.own_stale_sum = (
            self.board.row(n, r) for n in ("layer_stale_sum", "layer_stale_count", "layer_stale_max",
                                           "layer_own_stale_sum"))
        self.passes, self.misaligned = self.board.view("backward_passes"), self.board.view("misaligned")
        # More backward threads than rows: threads share a row, and bump it under its lock.
        self.row_locks = [threading.Lock() for _ in range(self.rows)] if backward_threads > self.rows else None
        self.take = ctx.batch_source()  # the forward threads' batches (thread-safe; the launch mode's)
        self.on_pass = None  # set by run_replica: called after every backward pass (the averager's steps)
        # Layer-wise delivery: one tensor hook per shared parameter, registered once. Autograd runs
        # a leaf's hooks the moment its whole gradient for a pass exists (a leaf's node has the
        # highest priority), on whichever thread runs that pass's graph; the hook hands the
        # gradient to that pass's on_grad, found by the graph task (backward() maps it). The hooks
        # hold the engine weakly: autograd keeps a hook from C++, where the garbage collector
        # cannot see a cycle through it, and an engine never run (never closed) would stay alive,
        # shared-memory board and all.
        self._on_grad: dict = {}  # autograd graph task id -> the running pass's on_grad
        self._leaf_hooks = [p.register_hook(functools.partial(_deliver, weakref.ref(self), i))
                            for i, p in enumerate(self.params)]

    # -- versions -------------------------------------------------------------------------
    def versions(self) -> list:
        return self.scope_np.sum((0, 1)).tolist()

    def bump(self, writer: int, i: int) -> None:
        row = self.writer_rows[writer % self.rows]
        if self.row_locks is None:
            row[i] += 1
        else:
            with self.row_locks[writer % self.rows]:
                row[i] += 1

    def version_of(self, i: int) -> int:
        return sum(self.columns[i])

    def own_versions(self) -> list:
        return [sum(c) for c in self.own_columns]

    def _read(self, i: int) -> int:
        """A forward reads layer i (ReadingReplica's forward wrapper): its version, and this worker's own."""
        self._tls.own[i] = sum(self.own_columns[i])
        return sum(self.columns[i])

    def policy_staleness(self, total: int, own: int) -> int:
        """The staleness --staleness acts on (layup's Gossiping engine: the total, its clock's)."""
        return damped_staleness(total, own)

    def update(self, item: Pending, opt, writer: int, i: int, grad, lr: float) -> None:
        """Apply one layer's update (backward thread `writer`, for the pass `item`) and count it
        in the layer's version. layup's Gossiping engine also sends it to peers."""
        opt.update(i, grad, lr)
        self.bump(writer, i)

    # -- one forward, one backward ----------------------------------------------------------
    def replica(self) -> ReadingReplica:
        return ReadingReplica(self.model, self.params, self._read, self.snapshot)

    def forward(self, replica: ReadingReplica, k: int, stream=None) -> Pending:
        if stream is None:
            return self._forward(replica, k)
        with torch.cuda.stream(stream):
            item = self._forward(replica, k)
            item.event = torch.cuda.Event()
            item.event.record(stream)
        return item

    def _forward(self, replica: ReadingReplica, k: int) -> Pending:
        ctx = self.ctx
        x, y = ctx.fetch(k)
        own = self._tls.own = self.own_versions()  # layers no module's wrapper reads are read now
        read = self.versions()
        out = replica(x, read)
        return Pending(k, len(y), ctx.loss(out, y), read, own_read=own)

    def _leaf_grad(self, i: int, grad) -> None:
        """Tensor hook of shared parameter i: its gradient for the running pass (none outside one:
        an evaluation, another engine's graph)."""
        on_grad = self._on_grad.get(torch._C._current_graph_task_id())
        if on_grad is not None:
            on_grad(i, grad)

    def close(self) -> None:
        """Remove the parameter hooks (the end of the run: the model outlives the engine)."""
        for handle in self._leaf_hooks:
            handle.remove()
        self._leaf_hooks = []

    def backward(self, item: Pending, writer: int, stream=None) -> list:
        """Run one pending backward, updating layers (layer mode: as their gradients appear).
        Returns the gradients; item.stale gets (layer, staleness) for every layer updated."""
        lr, opt = self.ctx.lr(), self.opts[writer]
        decayed = item.decayed = self.ctx.decay_fraction()  # --staleness cap releases its damping by it
        layer_mode = self.mode == "layer"
        grads = [None] * len(self.params)
        stale = item.stale

        def apply(i, g, s, own):
            s_policy = self.policy_staleness(s, own)
            stale.append((i, s, s_policy))
            factor = self.policy.factor(s_policy, decayed)
            if factor is None:  # --staleness drop:MAX
                self.dropped[self.rank] += 1
                return
            self.update(item, opt, writer, i, g, lr * factor)

        def on_grad(i, g):
            grads[i] = g if grads[i] is None else grads[i] + g
            if layer_mode:
                apply(i, g, self.version_of(i) - item.read[i], sum(self.own_columns[i]) - item.own_read[i])

        task = []

        def begin(grad_outputs):  # the loss's node runs first in its graph task: map the task to this pass
            task.append(torch._C._current_graph_task_id())
            self._on_grad[task[0]] = on_grad

        # removed after the pass: a hook on a C++ node is a reference the garbage collector cannot
        # see, and begin -> on_grad -> item -> loss -> its node would be a cycle never freed
        handle = item.loss.grad_fn.register_prehook(begin)
        try:
            if stream is not None:
                with torch.cuda.stream(stream):
                    stream.wait_event(item.event)
                    torch.autograd.grad(item.loss, self.params, allow_unused=True)
            else:
                torch.autograd.grad(item.loss, self.params, allow_unused=True)
        finally:
            handle.remove()
            if task:
                self._on_grad.pop(task[0], None)
        if not layer_mode:
            now, own = self.versions(), self.own_versions()
            for i, g in enumerate(grads):
                if g is not None:
                    apply(i, g, now[i] - item.read[i], own[i] - item.own_read[i])
        return grads

    def book(self, item: Pending, grads: list, opt) -> None:
        """Bookkeeping of one finished backward pass (one thread at a time per worker)."""
        r, ctx = self.rank, self.ctx
        total, count, top, damped = self.stale_sum, self.stale_count, self.stale_max, self.own_stale_sum
        with self.record_lock:
            if item.stale:
                values = []
                for i, s, s_policy in item.stale:
                    s = max(0, s)
                    values.append(s)
                    total[i] += s
                    damped[i] += max(0, s_policy)
                    count[i] += 1
                    if s > top[i]:
                        top[i] = s
                ctx.record_staleness(values)
                if any(values):
                    self.misaligned[r] += 1
            self.passes[r] += 1
            ctx.record(item.samples, item.loss, staleness=None, model=self.model, optimizer=opt,
                       batch=item.batch,
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
        return self.stop.is_set() or bool(self.stop_flag[0])

    def _acquire_slot(self) -> bool:
        while not self._stopping():
            if self.slots.acquire(timeout=POLL_S):
                return True
        return False

    def _thread_stream(self):
        """A compute thread's own CUDA stream on the engine's device (None on the CPU)."""
        if not self.cuda:
            return None
        torch.cuda.set_device(self.device)
        return torch.cuda.Stream(self.device)

    def _forward_loop(self, index: int) -> None:
        k = None
        try:
            stream = self._thread_stream()
            replica = self.replica()
            # A slot is taken BEFORE claiming and computing a batch and given back when a
            # backward thread takes the item: the forward reads the weights as late as it can,
            # and at most queue_size computed forwards wait (the queue can never be full).
            while self._acquire_slot():
                k = self.take()
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
            with self.lock:
                self.forwards_left -= 1
                if self.forwards_left == 0:
                    self.forwards_done.set()

    def _backward_loop(self, index: int) -> None:
        k = None
        try:
            stream = self._thread_stream()
            while not self._stopping():
                try:
                    item = self.q.get(timeout=POLL_S)
                except queue.Empty:
                    # No producer left and nothing queued (checked after the flag: a last put
                    # may land between the failed get and the flag).
                    if self.forwards_done.is_set() and self.q.empty():
                        return
                    continue
                if not self.slot_back_at_end:
                    self.slots.release()
                k = item.batch
                try:
                    grads = self.backward(item, index, stream)
                    self.book(item, grads, self.opts[index])
                finally:
                    if self.slot_back_at_end:
                        self.slots.release()
                del item, grads
        except BaseException as e:
            self._fail(f"backward thread {index}", e, k)

    def _turns_loop(self) -> None:
        """1F:1B at --queue-size 0 on one thread: the forward of batch k+1 begins only when the
        backward of batch k has finished (slot_back_at_end), so the two roles take turns; one
        thread plays both, and the interpreter lock is not handed from one to the other twice a
        batch. Same reads, same updates, same counters as the two threads."""
        k, phase = None, "forward"
        try:
            stream = self._thread_stream()
            replica = self.replica()
            while not self._stopping():
                k, phase = self.take(), "forward"
                if k is None:
                    break
                item = self.forward(replica, k, stream)
                if not self.peak:  # one computed forward waits for its backward, as in the queue
                    self.peak = self.board.queue_peak[self.rank] = 1
                phase = "backward"
                grads = self.backward(item, 0, stream)
                self.book(item, grads, self.opts[0])
                del item, grads
        except BaseException as e:
            self._fail(f"{phase} on the forward/backward thread", e, k)
        finally:
            self.forwards_done.set()

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
        try:
            self._run()
        finally:
            self.close()

    def _run(self) -> None:
        if one_thread(self.F, self.B, self.queue_size):
            threads = [threading.Thread(target=self._turns_loop, daemon=True, name=f"pdasgd-w{self.rank}-turns")]
        else:
            threads = self._role_threads()
        self._start_and_wait(threads)

    def _role_threads(self) -> list:
        threads = [threading.Thread(target=self._backward_loop, args=(i,), daemon=True,
                                    name=f"pdasgd-w{self.rank}-backward-{i}") for i in range(self.B)]
        threads += [threading.Thread(target=self._forward_loop, args=(i,), daemon=True,
                                     name=f"pdasgd-w{self.rank}-forward-{i}") for i in range(self.F)]
        return threads

    def _start_and_wait(self, threads) -> None:
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
