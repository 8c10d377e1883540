"""What every worker shares: the batch plan, the step bookkeeping, snapshots and checkpoints.

An algorithm's schedule (algorithms/<name>/worker.py) is a function run(ctx) that loops over
batches and calls ctx.record(...) after each update. Everything that is not the algorithm lives here, so
schedules stay one screen long and every algorithm is measured the same way:
- BatchPlan: one seeded sample stream for the whole run (a fresh permutation per epoch);
  batch k is the same samples for every algorithm, which is what makes runs comparable and
  sync(N, B) equal to sequential(N*B).
- WorkerContext.record: counts samples, keeps the loss average, the staleness histogram,
  detects divergence, applies the straggler slowdown, takes snapshots for time-to-accuracy
  and copies checkpoints for the launcher to write.
"""

from __future__ import annotations

import math
import os
import random
import threading
import time
from dataclasses import dataclass

import torch
from torch.utils.data import TensorDataset, default_collate

from .board import STALENESS_BINS, Board
from .config import RunConfig
from .errors import DivergedError
from .optim import LayerSGD, decay_fraction, learning_rate, total_norm
from .tensors import StateFlattener, loss_fn


class BatchPlan:
    """The run's sample stream: epoch e is a seeded permutation; batch k covers positions k*B..k*B+B.
    Thread-safe: the forward threads of one worker look batches up at the same time, and the
    permutation cache is changed under a lock (a few microseconds per batch)."""

    def __init__(self, n_train: int, total_samples: int, batch_size: int, seed: int):
        self.n, self.total, self.batch_size, self.seed = n_train, total_samples, batch_size, seed
        self.num_batches = math.ceil(total_samples / batch_size)
        self._perms: dict[int, torch.Tensor] = {}
        self._lock = threading.Lock()

    def _perm(self, epoch: int) -> torch.Tensor:
        with self._lock:
            if epoch not in self._perms:
                if len(self._perms) > 2:
                    self._perms.pop(min(self._perms))
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                self._perms[epoch] = torch.randperm(self.n, generator=g)
            return self._perms[epoch]

    def indices(self, k: int) -> torch.Tensor:
        start, stop = k * self.batch_size, min((k + 1) * self.batch_size, self.total)
        e0, e1 = start // self.n, (stop - 1) // self.n
        parts = [self._perm(e)[max(start - e * self.n, 0):min(stop - e * self.n, self.n)] for e in range(e0, e1 + 1)]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def samples_before(self, k: int) -> int:
        return min(k * self.batch_size, self.total)


@dataclass
class WorkerSpec:
    """Everything a worker process needs; pickled once at spawn (tensors travel as shared memory)."""

    config: RunConfig
    algorithm: str
    task: object  # tasks.Task
    model: torch.nn.Module  # shared model, or the initial replica to copy
    board: Board
    total_samples: int
    start_batch: int  # first batch of this run (resume)
    samples_before: int  # samples done before this run (resume)
    elapsed_before: float
    momentum_init: torch.Tensor | None
    snapshot_every: int
    checkpoint_every: int
    world_size: int
    device: str
    launch: object = None  # launch.modes.LocalLaunch or TorchrunLaunch: batches, resume point, start line
    dist_init: str | None = None  # file://PATH of the launcher's FileStore (local runs); None under torchrun
    errors: object = None  # multiprocessing queue: (rank, kind, message)
    environ: dict | None = None  # the launcher's environment, which a forked worker takes (launch.server.WorkerServer)


class WorkerContext:
    """One worker's view of the run. Schedules use: batches(), fetch(), lr(), record(), optimizer()."""

    def __init__(self, spec: WorkerSpec, rank: int):
        self.spec, self.rank, self.cfg = spec, rank, spec.config
        self.board: Board = spec.board
        self.world_size = spec.world_size
        self.device = torch.device(spec.device)
        self.task = spec.task
        self.loss = loss_fn(spec.task.loss)
        self.plan = BatchPlan(len(spec.task.train_set), spec.total_samples, self.cfg.batch_size, self.cfg.seed)
        self.flattener = StateFlattener(spec.model)
        self.launch = spec.launch
        self.delay = self.cfg.parsed.delay
        straggler = self.cfg.parsed.straggler
        self.slowdown = straggler.slowdown if straggler and straggler.worker == rank else 1.0
        self.rng = random.Random(self.cfg.seed * 7919 + rank)
        self._next_snapshot = spec.samples_before + spec.snapshot_every
        self._next_checkpoint = spec.samples_before + spec.checkpoint_every
        self._loss_avg = None
        self._step_start, self._slowed = None, False
        self._data = self._place_data(spec.task.train_set)
        self.is_lead = rank == 0
        self._views = _Views(self.board, rank)
        self._ppid, self._checks = os.getppid(), 0
        import multiprocessing
        self._spawned = multiprocessing.parent_process() is not None  # a launcher owns this process

    # -- data -----------------------------------------------------------------------------
    def place_on(self, device: torch.device) -> None:
        """Compute on another device from now on (pdasgd: where the one shared model lives)."""
        self.device = device
        self._data = self._place_data(self.task.train_set)

    def _place_data(self, ds):
        if isinstance(ds, TensorDataset) and self.device.type == "cuda":
            size = sum(t.numel() * t.element_size() for t in ds.tensors)
            if size < 4 << 30:  # small enough: keep the whole training set on the GPU
                return TensorDataset(*(t.to(self.device) for t in ds.tensors))
        return ds

    def fetch(self, k: int):
        """Batch k of the plan as (x, y) on this worker's device."""
        idx = self.plan.indices(k)
        ds = self._data
        if isinstance(ds, TensorDataset):
            x, y = (t[idx.to(t.device)] for t in ds.tensors)
        else:
            x, y = default_collate([ds[int(i)] for i in idx])
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def batch_source(self, done=None):
        """A thread-safe take() -> this worker's next batch index, or None at the end of the plan
        or when the launcher asks the run to stop (board.stop). The launch mode decides which
        batches (local: the next unclaimed one of the shared plan; torchrun: strided, plus a lost
        rank's when done(w) says how far it got)."""
        return self.launch.batch_source(self, done)

    def batches(self, done=None):
        """This worker's batch indices, for a single-threaded schedule."""
        return iter(self.batch_source(done), None)

    def launcher_alive(self) -> bool:
        """False once the launcher died (e.g. SIGKILL): a worker never outlives its owner for long."""
        self._checks += 1
        if self._checks % 32:
            return True
        if self._spawned and os.getppid() != self._ppid:
            self.board.stop[0] = 1
            return False
        return True

    def global_samples(self) -> int:
        return self.launch.global_samples(self)

    def lr(self, samples_done: int | None = None) -> float:
        """The learning rate at global progress (default: samples counted on the board so far)."""
        done = self.global_samples() if samples_done is None else samples_done
        return learning_rate(self.cfg, done, self.spec.total_samples)

    def decay_fraction(self, samples_done: int | None = None) -> float:
        """optim.decay_fraction at global progress (default: the board's samples so far): what
        --staleness cap releases its damping by."""
        done = self.global_samples() if samples_done is None else samples_done
        return decay_fraction(self.cfg, done, self.spec.total_samples)

    def optimizer(self, params, shared_buffers: bool = False) -> LayerSGD:
        params = list(params)
        buffers = None
        if self.cfg.momentum > 0 and self.spec.momentum_init is not None:
            buffers, i = [], 0
            for p in params:
                buffers.append(self.spec.momentum_init[i:i + p.numel()].view_as(p).clone().to(p.device))
                i += p.numel()
        return LayerSGD(params, self.cfg.momentum, self.cfg.nesterov, self.cfg.weight_decay, buffers,
                        self.cfg.clip_grad_norm)

    def replica(self) -> torch.nn.Module:
        """This process's own copy of the initial model (algorithms that keep replicas)."""
        import copy
        return copy.deepcopy(self.spec.model).to(self.device)

    def count_message(self, bytes_: int, messages: int = 1) -> None:
        self.board.bytes_sent[self.rank] += bytes_
        self.board.messages_sent[self.rank] += messages

    # -- bookkeeping after each update ----------------------------------------------------
    def start(self) -> None:
        """Mark this worker ready and wait until training starts (the launch mode's start line)."""
        self.launch.start(self)
        self.begin_step()

    def begin_step(self) -> None:
        """A step starts now: the straggler's slowdown of compute_done() is measured from here."""
        self._step_start, self._slowed = time.perf_counter(), False

    def record(self, samples: int, loss: torch.Tensor | float, staleness=None, model=None, optimizer=None,
               updates: int = 1, next_batch: int | None = None, grads=None, batch: int | None = None) -> None:
        """Book one step: samples, loss, staleness (int or list), straggler delay, snapshots.
        grads (optional): this step's gradients; every 8th step their norm feeds the largest
        gradient norm G of the theory check. batch: the plan index this step trained on, from
        which the launch mode derives where a resumed run starts (or give next_batch)."""
        if next_batch is None and batch is not None:
            next_batch = self.launch.resume_point(self, batch)
        b, r, v = self.board, self.rank, self._views
        if grads is not None and v.updates[r] % 8 == 0:
            norm = float(total_norm([g for g in grads if g is not None]))
            if norm > v.grad_norm_max[r]:
                v.grad_norm_max[r] = norm
        loss = float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)
        if not math.isfinite(loss):
            step = int(b.updates.sum())
            if b.diverged_step[0] < 0:
                b.diverged_step[0] = step
            b.stop[0] = 1
            raise DivergedError(f"training diverged: loss {loss} at update {step} (worker {r}); "
                                "lower --lr or raise --warmup-epochs")
        self.compute_done()
        self._loss_avg = loss if self._loss_avg is None else 0.95 * self._loss_avg + 0.05 * loss
        v.loss[r] = self._loss_avg
        if staleness is not None:
            self.record_staleness(staleness)
        v.updates[r] += updates
        v.samples[r] += samples
        if batch is not None:  # counted: a death from here on does not re-queue it
            b.booked(r, batch)
        if model is not None:
            self.maybe_snapshot(model, optimizer, next_batch)
        self.begin_step()

    def compute_done(self) -> None:
        """End of this step's computation. A straggler sleeps here, so its steps take `slowdown`
        times as long; synchronous schedules call this before communicating so the others wait."""
        if self.slowdown > 1.0 and not self._slowed:
            time.sleep((time.perf_counter() - self._step_start) * (self.slowdown - 1.0))
        self._slowed = True

    def record_staleness(self, staleness) -> None:
        v, r = self._views, self.rank
        hist, top = v.hist_row, v.stale_max[r]
        values = staleness if isinstance(staleness, (list, tuple)) else (staleness,)
        for s in values:
            s = int(s)
            hist[min(s, STALENESS_BINS - 1)] += 1
            if s > top:
                top = s
        if top > v.stale_max[r]:
            v.stale_max[r] = top

    def maybe_snapshot(self, model, optimizer=None, next_batch: int | None = None) -> None:
        """Copy the parameters at fixed global-sample marks (evaluated after training, off the clock)."""
        done = self.global_samples()
        if done >= self._next_snapshot:
            self.snapshot(model, done)
            while self._next_snapshot <= done:
                self._next_snapshot += self.spec.snapshot_every
        if self.is_lead and optimizer is not None and done >= self._next_checkpoint and done < self.spec.total_samples:
            self.copy_checkpoint(model, optimizer, next_batch)
            while self._next_checkpoint <= done:
                self._next_checkpoint += self.spec.checkpoint_every

    def snapshot(self, model, done: int, replica: int | None = None) -> None:
        b = self.board
        row = self.rank if replica is None else replica
        if row >= b.snap.shape[0]:
            return
        b.put_snapshot(row, done, time.time() - float(b.t0[0]), lambda slot: self.flattener.to_flat(model, slot))

    def copy_checkpoint(self, model, optimizer: LayerSGD, next_batch: int | None) -> None:
        """Copy model + momentum into the board's checkpoint slot; the launcher writes the file.
        next_batch: where a resumed run starts (default: the shared claim counter)."""
        b = self.board
        b.ckpt_seq[0] += 1  # odd: writing
        self.flattener.to_flat(model, b.ckpt_state)
        if not torch.isfinite(b.ckpt_state).all():  # never replace a good checkpoint with a broken one
            b.ckpt_seq[0] += 1
            return
        if optimizer.buffers:
            torch.cat([t.detach().reshape(-1).cpu() for t in optimizer.buffers], out=b.ckpt_momentum)
        if next_batch is None:
            next_batch = int(b.next_batch[0])
        b.ckpt_progress[0] = next_batch
        b.ckpt_progress[1] = self.plan.samples_before(next_batch)
        b.ckpt_progress[2] = time.time() - float(b.t0[0])
        b.ckpt_seq[0] += 1  # even: complete

    def finish(self, model=None) -> None:
        b = self.board
        if model is not None:
            self.snapshot(model, self.global_samples())
        b.finish[self.rank] = time.time()
        b.status[self.rank] = 3


class _Views:
    """The board counters record() touches every step, as flat memoryviews (board.view): plain
    Python item reads and writes of the shared memory instead of torch scalar ops."""

    def __init__(self, board: Board, rank: int):
        for name in ("samples", "updates", "loss", "stale_max", "grad_norm_max"):
            setattr(self, name, board.view(name))
        self.hist_row = board.row("hist", rank)


def set_threads(spec: WorkerSpec, processes: int) -> int:
    """Give each process its share of the cores so N processes don't oversubscribe them."""
    n = spec.config.threads_per_worker or max(1, (os.cpu_count() or 1) // max(1, processes))
    torch.set_num_threads(n)
    return n
