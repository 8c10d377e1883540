"""The rules pdasgd's real schedule (worker.py, threads.py) and its simulated twin (sim.py) both
call, so the two cannot drift: the thread counts of --fb-ratio auto, the default queue depth, the
staleness policy's concurrency, who owns the momentum buffers, and --sharing's resolution."""

from __future__ import annotations

import torch

MAX_AUTO_THREADS = 8
# One momentum buffer set per backward thread, as Hogwild! keeps one per process: a thread's
# momentum then sees its own updates without delay. One set shared by a worker's backward
# threads measured 0.72 test accuracy against 0.97 (docs/pdasgd.md, "Momentum buffers").
MOMENTUM_PER = "backward thread"


def auto_threads(forward_threads: int, t_forward: float, t_backward: float) -> tuple[int, int]:
    """--fb-ratio auto: B backward threads so that they keep up with F forward threads,
    B = round(F * tb / tf), clamped to 1..MAX_AUTO_THREADS."""
    ratio = t_backward / max(t_forward, 1e-9)
    return forward_threads, max(1, min(MAX_AUTO_THREADS, round(forward_threads * ratio)))


def queue_size(cfg, forward_threads: int) -> int:
    """--queue-size, default one computed forward waiting per forward thread: every extra queued
    forward makes every update one step staler (a queue of 2 collapsed, 4 diverged: docs/pdasgd.md)."""
    return cfg.queue_size or forward_threads


def concurrency(forward_threads: int, backward_threads: int, workers: int) -> int:
    """The staleness a layer update sees in normal operation, for --staleness adaptive: the other
    backward threads of every worker plus the queued forwards; staler updates (a descheduled
    thread's) get lr * c / s."""
    return backward_threads * workers + forward_threads + 1


def resolve_sharing(sharing: str, device: str, workers: int | None, runtime: str = "real") -> str:
    """--sharing: memory or average as given; auto is average (a replica per process, each on
    its own GPU) when the run has several processes and more than one GPU to put them on (--device
    cuda, or auto with CUDA visible), else memory (one shared model, on one GPU if any). The
    simulated runtime models the shared model only."""
    if sharing != "auto":
        return sharing
    if runtime == "sim" or (workers or 1) < 2 or device not in ("cuda", "auto"):
        return "memory"
    return "average" if torch.cuda.is_available() and torch.cuda.device_count() > 1 else "memory"
