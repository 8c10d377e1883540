"""The simulator's machinery: event loop, compute-time and network models, statistics, flat models.

Everything here is deterministic given the run's seed: the event queue orders by (time, seq)
with seq the insertion counter, and every random draw comes from a per-worker random.Random
seeded from the run's seed and the worker's index, drawn in event order.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import random
import statistics
import time

import numpy as np
import torch

from ..board import STALENESS_BINS
from ..config import Delay, SimCompute, Straggler
from ..delays import message_delay
from ..errors import DivergedError


class EventLoop:
    """Simulated time. at(t, fn, *args) schedules fn(*args) at time t; run() plays events in
    (time, insertion order): two events at the same time run in the order they were scheduled."""

    def __init__(self):
        self.heap: list = []
        self.seq = 0
        self.now = 0.0
        self.events = 0

    def at(self, t: float, fn, *args) -> None:
        heapq.heappush(self.heap, (t, self.seq, fn, args))
        self.seq += 1

    def run(self, on_event=None) -> None:
        heap = self.heap
        while heap:
            t, _, fn, args = heapq.heappop(heap)
            self.now = t
            self.events += 1
            fn(*args)
            if on_event is not None and self.events % 4096 == 0:
                on_event()


class ComputeModel:
    """How long a virtual worker's forward / backward pass takes.

    base time (--sim-forward-s / --sim-backward-s, or from --sim-times: the model's FLOPs over
    --sim-device-flops by default, or measured on this host) x a per-pass random factor
    (--sim-compute: fixed = 1; lognormal:SIGMA = exp(SIGMA * N(0,1)), median 1; pareto:ALPHA =
    Pareto type I with minimum 1 and tail index ALPHA, P(factor > x) = x^-ALPHA: most passes near
    the base time, a heavy tail of stragglers) x the --straggler slowdown of that worker.
    """

    def __init__(self, forward_s: float, backward_s: float, spec: SimCompute, straggler: Straggler | None, seed: int,
                 workers: int, per_process: int = 1):
        """per_process: virtual workers per simulated process; --straggler worker=W slows process W
        (all its workers), as the real runtime slows one process."""
        self.forward_s, self.backward_s = forward_s, backward_s
        self.kind, self.param = spec.kind, spec.param
        self.seed = seed
        self.slowdown = {}
        if straggler is not None:
            first = straggler.worker * per_process
            self.slowdown = {w: straggler.slowdown for w in range(first, min(first + per_process, workers))}
        self.rngs: dict[int, random.Random] = {}

    def rng(self, worker: int) -> random.Random:
        r = self.rngs.get(worker)
        if r is None:
            r = self.rngs[worker] = random.Random(f"asyncsgd-sim:{self.seed}:compute:{worker}")
        return r

    def factor(self, worker: int) -> float:
        if self.kind == "fixed":
            f = 1.0
        elif self.kind == "lognormal":
            f = self.rng(worker).lognormvariate(0.0, self.param)
        else:
            f = self.rng(worker).paretovariate(self.param)
        return f * self.slowdown.get(worker, 1.0)

    def forward(self, worker: int) -> float:
        return self.forward_s * self.factor(worker)

    def backward(self, worker: int) -> float:
        return self.backward_s * self.factor(worker)

    def step(self, worker: int) -> float:
        """A whole forward + backward (one factor for both: one step on one device)."""
        return (self.forward_s + self.backward_s) * self.factor(worker)


class Network:
    """Messages and collectives under --delay (delays.message_delay: latency, exp jitter, size/bandwidth).

    Point-to-point: a sender's messages leave one after another through its link (the transfer
    time nbytes*8/bandwidth occupies the link; latency overlaps), and messages between a pair of
    workers never overtake each other (FIFO, as MPI and TCP guarantee), so jitter cannot reorder
    them. Collectives (all-reduce among n): 2*ceil(log2 n) latency hops (a tree, each hop one
    message_delay draw) plus 2*(n-1)/n*nbytes*8/bandwidth (a ring's bandwidth term): the
    best-of-both model NCCL-style libraries approach, i.e. a fair, well-tuned synchronous baseline.
    Without --delay every message and collective takes zero time.
    """

    def __init__(self, delay: Delay | None, seed: int, workers: int):
        self.delay = delay
        self.latency_only = dataclasses.replace(delay, bandwidth_bps=None) if delay else None
        self.bandwidth = delay.bandwidth_bps if delay else None
        self.seed = seed
        self.link_free = [0.0] * workers
        self.last_arrival: dict[tuple[int, int], float] = {}
        self.rngs: dict[int, random.Random] = {}

    def rng(self, worker: int) -> random.Random:
        r = self.rngs.get(worker)
        if r is None:
            r = self.rngs[worker] = random.Random(f"asyncsgd-sim:{self.seed}:network:{worker}")
        return r

    def send(self, now: float, src: int, dst: int, nbytes: int) -> float:
        """Arrival time at dst of nbytes sent by src at time now."""
        if not self.delay:
            return now
        start = max(now, self.link_free[src])
        if self.bandwidth:
            self.link_free[src] = start + nbytes * 8 / self.bandwidth
        arrival = start + message_delay(self.delay, nbytes, self.rng(src))
        key = (src, dst)
        last = self.last_arrival.get(key, 0.0)
        if arrival < last:
            arrival = last
        self.last_arrival[key] = arrival
        return arrival

    def allreduce(self, n: int, nbytes: int, rng_owner: int = 0) -> float:
        """Seconds an all-reduce of nbytes among n participants takes."""
        if not self.delay or n <= 1:
            return 0.0
        rng = self.rng(rng_owner)
        hops = 2 * math.ceil(math.log2(n))
        seconds = sum(message_delay(self.latency_only, 0, rng) for _ in range(hops))
        if self.bandwidth:
            seconds += 2 * (n - 1) / n * nbytes * 8 / self.bandwidth
        return seconds


class Stats:
    """Per-worker counters of the simulated run (numpy while simulating; copied into a Board at the end)."""

    def __init__(self, workers: int, layers: int):
        self.workers = workers
        self.samples = np.zeros(workers, np.int64)
        self.updates = np.zeros(workers, np.int64)
        self.loss = np.full(workers, np.nan)
        self.hist = np.zeros((workers, STALENESS_BINS), np.int64)
        self.stale_max = np.zeros(workers, np.int64)
        self.bytes_sent = np.zeros(workers, np.int64)
        self.messages_sent = np.zeros(workers, np.int64)
        self.dropped = np.zeros(workers, np.int64)
        self.idle_s = np.zeros(workers, np.float64)
        self.layer_stale_sum = np.zeros(layers, np.float64)
        self.layer_stale_count = np.zeros(layers, np.int64)
        self.layer_stale_max = np.zeros(layers, np.int64)
        self.misaligned = 0
        self.backward_passes = 0
        self.queue_peak = np.zeros(workers, np.int64)
        self.grad_norm_max = 0.0
        self.global_samples = 0
        self.total_updates = 0

    def staleness(self, worker: int, s: int) -> None:
        self.hist[worker, s if s < STALENESS_BINS else STALENESS_BINS - 1] += 1
        if s > self.stale_max[worker]:
            self.stale_max[worker] = s

    def step(self, worker: int, samples: int, loss: float, updates: int = 1) -> None:
        """Book one step's samples, loss (moving average, as engine.WorkerContext.record) and updates."""
        if not math.isfinite(loss):
            raise DivergedError(f"training diverged: loss {loss} at update {self.total_updates} (virtual worker "
                                f"{worker}); lower --lr or raise --warmup-epochs")
        prev = self.loss[worker]
        self.loss[worker] = loss if prev != prev else 0.95 * prev + 0.05 * loss
        self.samples[worker] += samples
        self.updates[worker] += updates
        self.total_updates += updates
        self.global_samples += samples

    def grad_norm(self, g: torch.Tensor) -> None:
        norm = float(torch.linalg.vector_norm(g))
        if norm > self.grad_norm_max:
            self.grad_norm_max = norm

    def to_board(self, layers: int):
        """A board.Board holding these counters, so records.summary reads them like a real run's."""
        from ..board import Board

        b = Board(self.workers, 1, 1, 1, 1, layers=layers)
        b.samples.copy_(torch.from_numpy(self.samples))
        b.updates.copy_(torch.from_numpy(self.updates))
        b.loss.copy_(torch.from_numpy(np.nan_to_num(self.loss)))
        b.hist.copy_(torch.from_numpy(self.hist))
        b.stale_max.copy_(torch.from_numpy(self.stale_max))
        b.bytes_sent.copy_(torch.from_numpy(self.bytes_sent))
        b.messages_sent.copy_(torch.from_numpy(self.messages_sent))
        b.dropped.copy_(torch.from_numpy(self.dropped))
        b.idle_s.copy_(torch.from_numpy(self.idle_s))
        b.grad_norm_max[0] = self.grad_norm_max
        b.layer_stale_sum[0].copy_(torch.from_numpy(self.layer_stale_sum))
        b.layer_stale_count[0].copy_(torch.from_numpy(self.layer_stale_count))
        b.layer_stale_max[0].copy_(torch.from_numpy(self.layer_stale_max))
        b.misaligned[0] = self.misaligned
        b.backward_passes[0] = self.backward_passes
        b.queue_peak.copy_(torch.from_numpy(self.queue_peak))
        return b


class FlatModel:
    """One real model whose trainable parameters are views into one flat vector.

    Virtual workers keep their parameters as rows of a [replicas, P] tensor; computing a gradient
    for replica r copies row r into the flat vector (one memcpy). With a single replica the
    parameters ARE row 0 (no copy), so a pending backward graph sees in-place updates of that row
    exactly as a real shared-memory model's backward does (PD-ASGD's misalignment).
    """

    def __init__(self, model: torch.nn.Module, loss_f, x: torch.Tensor, y: torch.Tensor, plan, flat: torch.Tensor):
        self.model, self.loss_f, self.x, self.y, self.plan = model, loss_f, x, y, plan
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.sizes = [p.numel() for p in self.params]
        self.offsets = [0]
        for s in self.sizes:
            self.offsets.append(self.offsets[-1] + s)
        self.numel = self.offsets[-1]
        self.flat = flat
        with torch.no_grad():
            for p, a, b in zip(self.params, self.offsets, self.offsets[1:]):
                flat[a:b].copy_(p.detach().reshape(-1))
                p.data = flat[a:b].view_as(p)
        model.train()

    def layer_views(self, vec: torch.Tensor) -> list[torch.Tensor]:
        """vec (P,) split into views shaped like the parameters."""
        return [vec[a:b].view_as(p) for p, a, b in zip(self.params, self.offsets, self.offsets[1:])]

    def load(self, vec: torch.Tensor) -> None:
        if vec.data_ptr() != self.flat.data_ptr():
            self.flat.copy_(vec)

    def fetch(self, batches) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(batches, int):
            idx = self.plan.indices(batches)
        else:
            idx = torch.cat([self.plan.indices(k) for k in batches])
        return self.x[idx], self.y[idx]

    def forward(self, batches) -> tuple[torch.Tensor, int]:
        """The loss of the batch(es) at the current parameters, with its autograd graph."""
        x, y = self.fetch(batches)
        return self.loss_f(self.model(x), y), len(y)

    def backward(self, loss: torch.Tensor) -> torch.Tensor:
        """The flat gradient of loss (a graph from forward) at the parameters as they are now."""
        grads = torch.autograd.grad(loss, self.params)
        return torch.cat([g.reshape(-1) for g in grads])

    def gradient(self, batches) -> tuple[torch.Tensor, float, int]:
        """(flat gradient, loss, samples) of the batch(es) at the current parameters."""
        loss, n = self.forward(batches)
        return self.backward(loss), float(loss.detach()), n


def flops_compute(model: torch.nn.Module, loss_f, x: torch.Tensor, y: torch.Tensor, device_flops: float) -> tuple[float, float]:
    """(forward_s, backward_s) of one batch on a simulated device of device_flops FLOP/s: the FLOPs
    torch's FlopCounterMode counts in the model's forward and in its backward, over the rate. It
    reads no clock, so a simulated run is the same on every host (--sim-times flops, the default)."""
    from torch.utils.flop_counter import FlopCounterMode

    params = [p for p in model.parameters() if p.requires_grad]
    forward, backward = FlopCounterMode(display=False), FlopCounterMode(display=False)
    with forward:
        loss = loss_f(model(x), y)
    with backward:
        torch.autograd.grad(loss, params)
    f, b = forward.get_total_flops(), backward.get_total_flops()
    if not f:  # a model the counter cannot follow (no matmuls or convolutions): count its parameters
        f = 2 * x.shape[0] * sum(p.numel() for p in params)
    return max(f / device_flops, 1e-7), max((b or 2 * f) / device_flops, 1e-7)


def measure_compute(model: torch.nn.Module, loss_f, x: torch.Tensor, y: torch.Tensor, repeats: int = 7) -> tuple[float, float]:
    """(forward_s, backward_s): medians of `repeats` timed passes on one batch (after 2 warm-ups)."""
    params = [p for p in model.parameters() if p.requires_grad]
    fwd, bwd = [], []
    for i in range(repeats + 2):
        t0 = time.perf_counter()
        loss = loss_f(model(x), y)
        t1 = time.perf_counter()
        torch.autograd.grad(loss, params)
        t2 = time.perf_counter()
        if i >= 2:
            fwd.append(t1 - t0)
            bwd.append(t2 - t1)
    return max(statistics.median(fwd), 1e-7), max(statistics.median(bwd), 1e-7)
