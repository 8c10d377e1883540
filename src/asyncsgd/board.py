"""The board: shared-memory counters through which workers report and the launcher watches.

Concurrency protocol (read this before touching a field):
- The launcher (parent process) creates every tensor before starting workers and passes the
  Board to them; spawned processes map the same memory (torch shared memory).
- Each worker writes ONLY its own row (samples[w], hist[w], ...). No row has two writers, so
  no locks are needed; readers may see a value one step old, which is fine for monitoring.
- Exceptions: `next_batch`, `requeue` and `requeue_ends` (under `claim_lock`; the launcher
  appends a lost worker's batches to `requeue`), `stop`, `diverged_step` and `t0`
  (set once), and the checkpoint slot, written by the lead worker under a sequence number
  (odd while writing) so the launcher never saves a half-copied checkpoint.
- The snapshot buffer row r belongs to replica r (row 0 for a single shared model).
Under torchrun there is no parent: each process makes its own Board and the rows are summed
with all_reduce at the end (see torchrun.gather_board).

Hot paths (a step's bookkeeping, pdasgd's per-layer versions) read and write the counters
through board.view(name): a flat memoryview of the tensor's own memory, made once per process.
Its items are plain Python ints and floats, and a write is visible to every process at once,
exactly as a torch scalar write is; an item access costs ~0.2 us where a torch scalar op costs
5-15 us. The tensors stay the one source of truth: the views add no state of their own.
"""

from __future__ import annotations

import enum
import fcntl
import os
import tempfile
import threading
import weakref

import torch

STALENESS_BINS = 4096  # exact counts for staleness 0..4094, the last bin holds >= 4095
LAYER_WRITERS = 8  # pdasgd: version-counter rows per worker, one per backward thread (more threads share rows)


class ExchangeCounter(enum.IntEnum):
    """The columns of board.exchange[w] (exchange/transport.py, averaging.py, algorithms/dasgd/worker.py):
    index with the name, board.exchange[rank, ExchangeCounter.ROUNDS]. The one place they are defined."""
    ROUNDS = 0  # dasgd: messages this worker's training thread posted (rounds); lpap: averaging rounds
    DATA_SENT = 1  # messages with a payload sent (GRAD / PARAMS / FINAL: header + payload)
    CONTROL_SENT = 2  # header-only messages sent (DONE)
    COALESCED = 3  # gradients summed into a queued message (backlog) instead of sent on their own
    LATENCY_SUM_US = 4  # sum over received messages of (arrival - sender's post), microseconds
    RECEIVED = 5  # valid messages received (malformed ones are in board.malformed instead)
    LATENCY_MAX_US = 6  # the largest such latency, microseconds
    SENDS = 7  # gloo sends: each carried one message, or a frame of several to one peer (wire.encode_frame)


EXCHANGE_COUNTERS = tuple(c.name.lower() for c in ExchangeCounter)  # column names, in column order


class ClaimLock:
    """The lock around the shared batch counter, one the OS releases when its holder dies.

    A multiprocessing.Lock held by a process that is SIGKILLed stays held: every survivor then
    blocks in claim() for good (seen: 1 kill in 5 hung a pdasgd run that way), which would turn
    the "survivors carry on" promise of lpap into a hang. fcntl.flock locks belong to an open
    file description, and the kernel drops them when the process holding it dies. Each process
    opens the lock file itself (its own description, so processes exclude each other); flock
    does not exclude threads sharing one description, so a threading.Lock per process does that.
    The creating process (the launcher) removes the file when the lock object goes away."""

    _open_lock = threading.Lock()

    def __init__(self, directory=None):
        """directory: where the lock file lives (the run directory, so that a killed launcher leaves
        nothing elsewhere; a stale one there is replaced). Without one (a torchrun rank that writes
        no record: its workers are threads of this process) the lock is for this process only: its
        temporary file is opened and unlinked at once, so not even a SIGKILL leaves it behind."""
        if directory is None:
            fd, path = tempfile.mkstemp(prefix="asyncsgd-claim-")
            os.unlink(path)
            self.path = None
            self._pid, self._fd, self._threads = os.getpid(), fd, threading.Lock()
            weakref.finalize(self, os.close, fd)
            return
        self.path = os.path.join(str(directory), ".asyncsgd-claim")
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600))
        self._pid, self._fd, self._threads = None, None, None
        weakref.finalize(self, _unlink, self.path)

    def __getstate__(self):
        if self.path is None:
            raise TypeError("a ClaimLock made without a directory is for its own process only")
        return {"path": self.path}  # the descriptor and thread lock are per process

    def __setstate__(self, state):
        self.path = state["path"]
        self._pid, self._fd, self._threads = None, None, None

    def _local(self):
        with ClaimLock._open_lock:
            if self._pid != os.getpid():
                if self.path is None:
                    raise RuntimeError("a ClaimLock made without a directory is for its own process only")
                self._fd, self._threads, self._pid = os.open(self.path, os.O_RDWR), threading.Lock(), os.getpid()
        return self._fd, self._threads

    def __enter__(self):
        fd, threads = self._local()
        threads.acquire()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            threads.release()
            raise
        return self

    def __exit__(self, *exc):
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._threads.release()


def flat_view(t: torch.Tensor) -> memoryview:
    """A 1-D memoryview of a contiguous CPU tensor's memory (shared memory stays shared):
    view[i] is element i of t.reshape(-1), a Python int or float, read and written in place."""
    a = t.numpy()
    return memoryview(a).cast("B").cast(a.dtype.char)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


class Board:
    def __init__(self, workers: int, replicas: int, snapshots: int, state_numel: int, param_numel: int,
                 layers: int = 1, lock=None, inflight_slots: int = 1):
        z = lambda *shape, dtype=torch.int64: torch.zeros(*shape, dtype=dtype).share_memory_()
        self.workers = workers
        self.samples = z(workers)  # samples this worker processed in this run
        self.updates = z(workers)  # updates this worker applied
        self.loss = z(workers, dtype=torch.float64)  # moving average of training loss
        self.hist = z(workers, STALENESS_BINS)  # staleness histogram
        self.stale_max = z(workers)
        self.layer_stale_sum = z(workers, layers, dtype=torch.float64)  # per-layer staleness sums
        self.layer_stale_count = z(workers, layers)
        self.layer_stale_max = z(workers, layers)
        # pdasgd: per-layer sums of the staleness --staleness acted on (rules.damped_staleness)
        self.layer_own_stale_sum = z(workers, layers, dtype=torch.float64)
        self.misaligned = z(workers)  # backward passes run on weights newer than their forward's
        self.backward_passes = z(workers)
        self.queue_peak = z(workers)
        # pdasgd: layer_version[w, t, l] = updates backward thread t of worker w applied to layer l
        # (one writer per row: lock-free); a layer's version is the sum over w and t.
        self.layer_version = z(workers, LAYER_WRITERS, layers)
        self.fb_threads = z(workers, 2)  # pdasgd: forward and backward threads each worker ran
        self.bytes_sent = z(workers)
        self.messages_sent = z(workers)
        self.dropped = z(workers)
        self.idle_s = z(workers, dtype=torch.float64)
        # ddp: all-reduces this worker's comm hook started (one per gradient bucket) and the seconds
        # of --delay it slept before them (algorithms/ddp/worker.py)
        self.collectives = z(workers)
        self.delay_paid_s = z(workers, dtype=torch.float64)
        # exchange (dasgd, lpap, layup, pdasgd replicas): lost[w] = 1 once worker w was seen to die
        # (survivors stop sending to it); exchange[w, c] = counter c of ExchangeCounter (rounds,
        # data messages sent, control messages sent, coalesced, latency sum us, messages received,
        # latency max us) -- exchange/transport.py
        self.lost = z(workers, dtype=torch.int8)
        self.exchange = z(workers, len(ExchangeCounter))
        # malformed[w]: messages worker w's exchange received and dropped as malformed
        # (exchange/wire.py); written only by w's receiver threads (under the exchange's lock)
        self.malformed = z(workers)
        # layup, per layer: layer_rounds[w, l] update groups worker w posted for layer l (its backward
        # threads, under that layer's lock); layer_sent / layer_coalesced[w, l] its messages of that
        # layer sent / summed into a queued one (its exchange, exchange/transport.py)
        self.layer_rounds = z(workers, layers)
        self.layer_sent = z(workers, layers)
        self.layer_coalesced = z(workers, layers)
        self.grad_norm_max = z(workers, dtype=torch.float64)
        self.finish = z(workers, dtype=torch.float64)  # wall time (time.time) a worker finished
        self.status = z(workers, dtype=torch.int8)  # 0 starting, 1 ready, 2 running, 3 done, 4 failed
        self.t0 = z(1, dtype=torch.float64)  # time.time() when training started
        self.stop = z(1, dtype=torch.int8)
        self.diverged_step = z(1).fill_(-1)
        self.next_batch = z(1)
        # Batches claimed and not yet booked: inflight[w] holds worker w's (-1: a free slot; written
        # by w under claim_lock when it claims, when it books one). When w is lost the launcher
        # moves them to requeue[head:tail] (requeue_ends = [head, tail]), which claims take first:
        # the survivors process them, so every planned batch is trained once (re-queued batches: tail).
        self.inflight = z(workers, inflight_slots).fill_(-1)
        self.requeue = z(workers * inflight_slots)  # room for every slot of every worker
        self.requeue_ends = z(2)
        self.claim_lock = lock
        self.snap = torch.zeros(replicas, snapshots, state_numel).share_memory_()
        self.snap_time = z(replicas, snapshots, dtype=torch.float64)
        self.snap_samples = z(replicas, snapshots)
        self.snap_count = z(replicas)
        self.ckpt_seq = z(1)
        self.ckpt_state = torch.zeros(state_numel).share_memory_()
        self.ckpt_momentum = torch.zeros(param_numel).share_memory_()
        self.ckpt_progress = z(3, dtype=torch.float64)  # next_batch, samples_done, elapsed_s

    # -- fast access ----------------------------------------------------------------------
    def view(self, name: str) -> memoryview:
        """flat_view of the counter `name`, made once per process (the cache is not pickled:
        a spawned worker makes its own over the same shared memory)."""
        views = self.__dict__.setdefault("_views", {})
        v = views.get(name)
        if v is None:
            v = views[name] = flat_view(getattr(self, name))
        return v

    def row(self, name: str, r: int) -> memoryview:
        """Row r of a 2-D counter (e.g. hist[r]) as a flat memoryview."""
        n = getattr(self, name).shape[1]
        return self.view(name)[r * n:(r + 1) * n]

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_views", None)
        state.pop("_slots", None)
        return state

    # -- claims ---------------------------------------------------------------------------
    def _slot_state(self):
        """This process's free slots of its inflight row and the slot of each claimed batch (made
        once per process: the threads of one worker share them, under _slots' lock or claim_lock)."""
        st = self.__dict__.get("_slots")
        if st is None:
            st = self.__dict__["_slots"] = {"free": None, "of": {}, "lock": threading.Lock()}
        return st

    def claim(self, rank: int = 0, limit: int | None = None) -> int:
        """The next batch index of the shared plan (dynamic work sharing between processes): a lost
        worker's re-queued batch first, else the next unclaimed one. A batch below `limit` (the
        plan's size) stays in worker `rank`'s inflight row until it is booked (booked())."""
        nb, rq, ends = self.view("next_batch"), self.view("requeue"), self.view("requeue_ends")
        st = self._slot_state()
        with self.claim_lock:
            if ends[0] < ends[1]:
                k = rq[ends[0]]
                ends[0] += 1
            else:
                k = nb[0]
                if limit is None or k < limit:  # past the plan it stays put (waiting survivors claim again)
                    nb[0] = k + 1
            if limit is not None and k < limit:
                with st["lock"]:
                    if st["free"] is None:
                        st["free"] = list(range(self.inflight.shape[1] - 1, -1, -1))
                    if st["free"]:  # sized for every batch a worker holds at once (Launcher)
                        slot = st["free"].pop()
                        st["of"][k] = slot
                        self.view("inflight")[rank * self.inflight.shape[1] + slot] = k
        return k

    def booked(self, rank: int, k: int) -> None:
        """Worker `rank` has booked batch k (its samples are counted): no longer re-queued if it dies."""
        st = self.__dict__.get("_slots")
        if st is None:
            return
        with st["lock"]:
            slot = st["of"].pop(k, None)
            if slot is not None:
                self.view("inflight")[rank * self.inflight.shape[1] + slot] = -1
                st["free"].append(slot)

    def peers_busy(self, rank: int) -> bool:
        """Whether a worker other than `rank`, not known lost and not done, still holds claimed
        batches that it may yet leave behind (if it dies)."""
        held = (self.inflight >= 0).any(1)
        held[rank] = False
        return bool((held & (self.lost == 0) & (self.status != 3)).any())

    def requeue_lost(self, rank: int) -> int:
        """The launcher: move lost worker `rank`'s unbooked batches to the re-queue (in plan order);
        returns how many. Appended before the row is cleared, so a survivor that sees the row
        empty finds them in the queue."""
        with self.claim_lock:
            row = self.inflight[rank]
            held = sorted(int(k) for k in row.tolist() if k >= 0)
            tail = int(self.requeue_ends[1])
            for k in held:
                self.requeue[tail] = k
                tail += 1
            self.requeue_ends[1] = tail
            row.fill_(-1)
        return len(held)

    def put_snapshot(self, row: int, samples: int, time_s: float, write) -> None:
        """Row's copy of the parameters at `samples` (write(dst) fills the slot), in the next free
        slot; the same point again (the final state at the last mark) replaces that mark's copy, so
        that metrics.jsonl has one row per point. A full row keeps what it has."""
        i = int(self.snap_count[row])
        if i > 0 and int(self.snap_samples[row, i - 1]) == samples:
            i -= 1
        elif i >= self.snap.shape[1]:
            return
        write(self.snap[row, i])
        self.snap_time[row, i], self.snap_samples[row, i] = time_s, samples
        self.snap_count[row] = i + 1

    # -- reading --------------------------------------------------------------------------
    def staleness_stats(self) -> dict:
        """min / mean / p50 / p99 / max over all recorded updates, plus the histogram."""
        hist = self.hist.sum(0)
        n = int(hist.sum())
        if n == 0:
            return {"count": 0, "min": 0, "mean": 0.0, "p50": 0, "p99": 0, "max": 0, "histogram": {}}
        values = torch.arange(STALENESS_BINS, dtype=torch.float64)
        cum = hist.cumsum(0)

        def percentile(percent: int) -> int:
            """Nearest rank: the smallest staleness at or below which ceil(percent% of n) updates
            lie, the rank in whole numbers (a float's ceil of 0.99 x 100 would be 100, not 99)."""
            rank = -(-percent * n // 100)
            return int(torch.searchsorted(cum, torch.tensor(rank, dtype=cum.dtype)).item())

        nz = torch.nonzero(hist).flatten()
        mean = float((hist.double() * values).sum() / n)
        return {"count": n, "min": int(nz[0]), "mean": round(mean, 4), "p50": percentile(50), "p99": percentile(99),
                "max": int(self.stale_max.max()), "histogram": {str(int(i)): int(hist[i]) for i in nz}}

    def tensors(self) -> dict:
        """Every counter, for summing across processes under torchrun."""
        return {k: v for k, v in vars(self).items() if isinstance(v, torch.Tensor)}
