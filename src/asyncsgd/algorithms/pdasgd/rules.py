"""The rules pdasgd's real schedule (worker.py, threads.py) and its simulated twin (sim.py) both
call, so the two cannot drift: the default process count (and why), the thread counts of --fb-ratio auto,
the default queue depth, the staleness policy's concurrency, who owns the momentum buffers, and
--sharing's resolution."""

from __future__ import annotations

import torch

MAX_AUTO_THREADS = 8
# One momentum buffer set per backward thread, as Hogwild! keeps one per process: a thread's
# momentum then sees its own updates without delay. One set shared by a worker's backward
# threads measured 0.72 test accuracy against 0.97 (docs/pdasgd.md, "Momentum buffers").
MOMENTUM_PER = "backward thread"


def auto_processes(cfg) -> tuple[int, str]:
    """pdasgd's --workers when none is given: (processes, why). One process, on a CPU as on a GPU.
    One process per CPU core (2 x 1F:2B, one shared model) runs 1.42x the samples/s on 2 cores,
    but it does not converge in every run: with a core kept busy, 6 of 27 runs ended below 0.94
    (0.889 the worst) against 2 of 20 for one process (0.922 the worst), and a fresh-clone CI run
    of it ended at 0.8445 (docs/pdasgd.md, "Layout"). `--workers N` chooses it."""
    if cfg.runtime == "sim":
        return 1, "one process: the simulator's default, the same on every machine"
    on_gpu = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if on_gpu:
        return 1, "one process on the GPU: its forward and backward threads share the device"
    return 1, "one process: one per CPU core is faster but does not converge in every run"


def auto_threads(forward_threads: int, t_forward: float, t_backward: float) -> tuple[int, int]:
    """--fb-ratio auto: B backward threads so that they keep up with F forward threads,
    B = round(F * tb / tf), clamped to 1..MAX_AUTO_THREADS."""
    ratio = t_backward / max(t_forward, 1e-9)
    return forward_threads, max(1, min(MAX_AUTO_THREADS, round(forward_threads * ratio)))


def damped_staleness(total: int, own: int) -> int:
    """The staleness --staleness acts on for one layer update: `own`, the updates of the layer by
    this worker process's own backward threads between the forward's read and this update (the
    delay of its own pipeline), not `total`, which also counts the other processes' updates of the
    shared model. Those act like Hogwild!'s concurrent writers, which train undamped; damping by
    them starved the lower layers of a 2-process run (2 x 1F:2B, --staleness scale: median 0.9485
    over 12 runs; by its own: median 0.957 over 10 seeds; docs/pdasgd.md "Layout"). With one
    process, or a replica per process, the two are the same."""
    return own


def queue_size(cfg, forward_threads: int) -> int:
    """--queue-size, default 1 whatever the forward threads: at most one forward computed or
    waiting at a time, so with 2 forward threads they take turns. Every extra pending forward makes
    every update one step staler: 2F:2B at a queue of 2 (one per forward thread, the default
    before) ended 0.915 / 0.936 / 0.95 over seeds 0-9 (4 below 0.93, staleness 1.8), at 1 0.96 /
    0.966 / 0.9685 (staleness 0.85) at 5% fewer samples/s on 2 cores (docs/pdasgd.md, "The
    queue"). Overlapping forwards (--queue-size F) are unmeasured on a GPU. 0: no forward runs
    ahead at all (slot_count(0) is 1, given back only when the backward has finished: slot_back_at_end)."""
    return 1 if cfg.queue_size is None else cfg.queue_size


def slot_count(queue_size: int) -> int:
    """The forward slots of a worker (the real engine's semaphore, the simulated PassQueue's
    count): queue_size, and 1 for --queue-size 0, whose one slot is held through the backward."""
    return max(1, queue_size)


def slot_back_at_end(queue_size: int) -> bool:
    """When a forward's slot comes back: when a backward takes its pass (the default: the next
    forward overlaps that backward), or, with --queue-size 0, when that backward has finished, so
    that the next forward reads every layer after the last update of its worker's own passes: no
    own pipeline delay, and the forward and backward threads only take turns. For a device whose
    share of the cores is less than one (4 layup workers on 2 cores) the overlap has no core to run
    on, and its staleness costs accuracy (docs/layup.md, "A forward that waits for its backward")."""
    return queue_size == 0


def concurrency(queue_depth: int, backward_threads: int, workers: int) -> int:
    """The staleness a layer update sees in normal operation, for --staleness adaptive: the other
    backward threads of every worker plus the pending forwards (queue_size's slots); staler updates
    (a descheduled thread's) get lr * c / s."""
    return backward_threads * workers + queue_depth + 1


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
