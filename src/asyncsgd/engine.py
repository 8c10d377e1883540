"""What every worker shares: the batch plan, the step bookkeeping, snapshots and checkpoints.

An algorithm's schedule (schedules/*.py) is a function run(ctx) that loops over batches and
calls ctx.record(...) after each update. Everything that is not the algorithm lives here, so
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
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset, default_collate

from .board import STALENESS_BINS, Board
from .config import RunConfig, parse_delay, parse_straggler
from .errors import DivergedError
from .optim import LayerSGD, learning_rate


class BatchPlan:
    """The run's sample stream: epoch e is a seeded permutation; batch k covers positions k*B..k*B+B."""

    def __init__(self, n_train: int, total_samples: int, batch_size: int, seed: int):
        self.n, self.total, self.batch_size, self.seed = n_train, total_samples, batch_size, seed
        self.num_batches = math.ceil(total_samples / batch_size)
        self._perms: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
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


class StateFlattener:
    """Copies a model's float state (parameters and float buffers, e.g. BatchNorm statistics)
    to and from one flat vector: snapshots, checkpoints and averaging all use it."""

    def __init__(self, model: torch.nn.Module):
        self.keys = [k for k, v in model.state_dict().items() if v.is_floating_point()]
        self.numel = sum(model.state_dict()[k].numel() for k in self.keys)

    def tensors(self, model):
        sd = model.state_dict(keep_vars=False)
        return [sd[k] for k in self.keys]

    @torch.no_grad()
    def to_flat(self, model, out: torch.Tensor) -> torch.Tensor:
        i = 0
        for t in self.tensors(model):
            out[i:i + t.numel()].copy_(t.detach().reshape(-1), non_blocking=False)
            i += t.numel()
        return out

    @torch.no_grad()
    def load_flat(self, model, flat: torch.Tensor) -> None:
        i = 0
        for t in self.tensors(model):
            t.copy_(flat[i:i + t.numel()].view_as(t))
            i += t.numel()


def loss_fn(kind: str):
    if kind == "mse":
        return F.mse_loss
    return F.cross_entropy


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
    dist_init: str | None = None  # tcp://host:port of the launcher's store (local runs), or env:// (torchrun)
    errors: object = None  # multiprocessing queue: (rank, kind, message)
    extra: dict = field(default_factory=dict)


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
        self.delay = parse_delay(self.cfg.delay)
        straggler = parse_straggler(self.cfg.straggler)
        self.slowdown = straggler["slowdown"] if straggler and straggler["worker"] == rank else 1.0
        self.rng = random.Random(self.cfg.seed * 7919 + rank)
        self._next_snapshot = spec.samples_before + spec.snapshot_every
        self._next_checkpoint = spec.samples_before + spec.checkpoint_every
        self._loss_avg = None
        self._step_start, self._slowed = None, False
        self._data = self._place_data(spec.task.train_set)
        self.is_lead = rank == 0
        self._ppid = os.getppid()
        import multiprocessing
        self._spawned = multiprocessing.parent_process() is not None  # a launcher owns this process

    # -- data -----------------------------------------------------------------------------
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

    def batches(self, mode: str = "claim", stride: int = 1, offset: int = 0):
        """Batch indices for this worker. claim: take the next unclaimed batch of the shared
        plan (processes sharing one model); strided: offset, offset+stride, ... (replicas).
        Stops early when the launcher asks (board.stop)."""
        board = self.board
        if mode == "claim":
            while not board.stop[0] and self._parent_alive():
                k = board.claim()
                if k >= self.plan.num_batches:
                    return
                yield k
        else:
            k = self.spec.start_batch + offset
            while k < self.plan.num_batches and not board.stop[0] and self._parent_alive():
                yield k
                k += stride

    def _parent_alive(self) -> bool:
        """False once the launcher died (e.g. SIGKILL): a worker never outlives its owner for long."""
        self._checks = getattr(self, "_checks", 0) + 1
        if self._checks % 32:
            return True
        if self._spawned and os.getppid() != self._ppid:
            self.board.stop[0] = 1
            return False
        return True

    def global_samples(self) -> int:
        if self.spec.extra.get("launch") == "torchrun":  # a local board has only this rank's row
            # every rank does about as many (strided batches); capped at the plan, which dasgd's
            # survivors of a lost rank pass when they take over its batches (the snapshot slots
            # are sized for the plan: past it the final snapshot would find no slot)
            return min(self.spec.total_samples,
                       self.spec.samples_before + int(self.board.samples[self.rank]) * self.world_size)
        return self.spec.samples_before + int(self.board.samples.sum())

    def lr(self, samples_done: int | None = None) -> float:
        """The learning rate at global progress (default: samples counted on the board so far)."""
        done = self.global_samples() if samples_done is None else samples_done
        return learning_rate(self.cfg, done, self.spec.total_samples)

    def optimizer(self, params, shared_buffers: bool = False) -> LayerSGD:
        params = list(params)
        buffers = None
        if self.cfg.momentum > 0 and self.spec.momentum_init is not None:
            buffers, i = [], 0
            for p in params:
                buffers.append(self.spec.momentum_init[i:i + p.numel()].view_as(p).clone().to(p.device))
                i += p.numel()
        return LayerSGD(params, self.cfg.momentum, self.cfg.nesterov, self.cfg.weight_decay, buffers)

    def replica(self) -> torch.nn.Module:
        """This process's own copy of the initial model (algorithms that keep replicas)."""
        import copy
        return copy.deepcopy(self.spec.model).to(self.device)

    def count_message(self, bytes_: int, messages: int = 1) -> None:
        self.board.bytes_sent[self.rank] += bytes_
        self.board.messages_sent[self.rank] += messages

    # -- bookkeeping after each update ----------------------------------------------------
    def start(self) -> None:
        """Mark this worker ready and wait until every worker is (the training clock starts then)."""
        b = self.board
        if self.spec.extra.get("launch") == "torchrun":  # no shared board: worker_main's barrier was the start
            b.t0[0] = time.time() - self.spec.elapsed_before
            b.status[self.rank] = 2
            self._step_start, self._slowed = time.perf_counter(), False
            return
        b.status[self.rank] = 1
        deadline = time.time() + 600
        while int((b.status >= 1).sum()) < b.workers and not b.stop[0]:
            if time.time() > deadline:
                raise TimeoutError("workers did not all become ready within 600 s")
            time.sleep(0.001)
        if self.is_lead:
            b.t0[0] = time.time() - self.spec.elapsed_before
        while b.t0[0] == 0 and not b.stop[0]:
            time.sleep(0.0005)
        b.status[self.rank] = 2
        self._step_start, self._slowed = time.perf_counter(), False

    def record(self, samples: int, loss: torch.Tensor | float, staleness=None, model=None, optimizer=None,
               updates: int = 1, next_batch: int | None = None, grads=None) -> None:
        """Book one step: samples, loss, staleness (int or list), straggler delay, snapshots.
        grads (optional): this step's gradients; every 8th step their norm feeds the largest
        gradient norm G of the theory check."""
        b, r = self.board, self.rank
        if grads is not None and int(b.updates[r]) % 8 == 0:
            norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads if g is not None])))
            if norm > b.grad_norm_max[r]:
                b.grad_norm_max[r] = norm
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
        b.loss[r] = self._loss_avg
        if staleness is not None:
            self.record_staleness(staleness)
        b.updates[r] += updates
        b.samples[r] += samples
        if model is not None:
            self.maybe_snapshot(model, optimizer, next_batch)
        self._step_start, self._slowed = time.perf_counter(), False

    def compute_done(self) -> None:
        """End of this step's computation. A straggler sleeps here, so its steps take `slowdown`
        times as long; synchronous schedules call this before communicating so the others wait."""
        if self.slowdown > 1.0 and not self._slowed:
            time.sleep((time.perf_counter() - self._step_start) * (self.slowdown - 1.0))
        self._slowed = True

    def record_staleness(self, staleness) -> None:
        b, r = self.board, self.rank
        values = staleness if isinstance(staleness, (list, tuple)) else (staleness,)
        for s in values:
            s = int(s)
            b.hist[r, min(s, STALENESS_BINS - 1)] += 1
            if s > b.stale_max[r]:
                b.stale_max[r] = s

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
        i = int(b.snap_count[row])
        if i >= b.snap.shape[1]:
            return
        self.flattener.to_flat(model, b.snap[row, i])
        b.snap_time[row, i] = time.time() - float(b.t0[0])
        b.snap_samples[row, i] = done
        b.snap_count[row] = i + 1

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


def set_threads(spec: WorkerSpec, processes: int) -> int:
    """Give each process its share of the cores so N processes don't oversubscribe them."""
    n = spec.config.threads_per_worker or max(1, (os.cpu_count() or 1) // max(1, processes))
    torch.set_num_threads(n)
    return n
