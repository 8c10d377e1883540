"""The rules pdasgd's real schedule (worker.py, threads.py) and its simulated twin (sim.py) both
call, so the two cannot drift: the default process count (and why), the thread counts of --fb-ratio auto,
the default queue depth, the staleness policy's concurrency, who owns the momentum buffers, and
--sharing's resolution."""

from __future__ import annotations

from ..base import processes

MAX_AUTO_THREADS = 8
# One momentum buffer set per backward thread, as Hogwild! keeps one per process: a thread's
# momentum then sees its own updates without delay. One set shared by a worker's backward
# threads measured 0.72 test accuracy against 0.97 (docs/pdasgd.md, "Momentum buffers").
MOMENTUM_PER = "backward thread"


def _layout_given(cfg) -> bool:
    """The user chose a thread layout (--forward-threads, --backward-threads or --fb-ratio): one model's."""
    return cfg.fb_ratio is not None or cfg.forward_threads is not None or cfg.backward_threads is not None


def _cuda_available() -> bool:
    import torch  # here, not at the top: the registry imports this module for every command
    return torch.cuda.is_available()


def auto_processes(cfg) -> tuple[int, str]:
    """pdasgd's --workers when none is given: (processes, why). On a CPU, 2 processes (as Hogwild!'s
    default, whatever the cores; one per core on 2) on one shared model, each with one forward and
    one backward role that take turns on one thread (backward_default, queue_default 0,
    threads.Decoupled._turns_loop); each process gets half the cores. On 2 cores that layout runs 1.9x the
    samples/s of one 1F:2B process and reaches 0.95 in half the time, at 0.81-0.86x Hogwild!'s
    samples/s, and its median accuracy is sequential's (docs/pdasgd.md, "One process per core,
    taking turns"). A thread layout given (--forward-threads, --backward-threads or --fb-ratio) is
    one model's: one process, as the docs' layout tables (1F:1B, 1F:2B, 2F:2B, 1F:4B) measure it.
    On a GPU: one process of 1F:2B (the per-core layout is unmeasured there)."""
    if cfg.runtime == "sim":
        return 1, "one process: the simulator's default, the same on every machine"
    on_gpu = cfg.device == "cuda" or (cfg.device == "auto" and _cuda_available())
    if on_gpu:
        return 1, "one process on the GPU: its forward and backward threads share the device"
    if _layout_given(cfg):
        return 1, "one process: the thread layout given is one model's"
    return 2, "2 processes (as Hogwild!'s default; one per core on 2 cores), each 1F:1B taking turns (--queue-size 0), on one shared model"


def several_on_one_model(cfg) -> bool:
    """Several processes write one shared model (not --sharing average's replicas: the caller checks)."""
    return isinstance(processes(cfg), int) and processes(cfg) > 1


def backward_default(cfg, replicas: bool) -> int:
    """--backward-threads when not given: 1 where several processes share one model with one forward
    thread each (a process per core: its one core has no room for a second backward, and with
    --queue-size 0 two backward threads would only alternate, each momentum buffer seeing half the
    updates: 2 x 1F:2B at queue 0 ended 0.9295 at seed 0), else 2, the paper's 1F:2B."""
    if several_on_one_model(cfg) and not replicas and cfg.forward_threads in (None, 1):
        return 1
    return 2


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


def queue_default(cfg) -> int:
    """0 where several processes share one model with one forward and one backward thread each (they
    take turns), else 1"""
    # 0: no forward runs ahead of its own backward. There the backward is each process's bottleneck,
    # so at a queue of 1 every forward waited a whole backward while the other process updated every
    # layer again (staleness 2.35): 2 x 1F:1B ended 0.48-0.915 at a queue of 1 and 0.97-0.9735 at 0,
    # at the same samples/s (seeds 0-4, docs/pdasgd.md, "One process per core, taking turns").
    # Else 1 whatever the forward threads: at most one forward computed or waiting at a time, so with
    # 2 forward threads they take turns. Every extra pending forward makes every update one step
    # staler: 2F:2B at a queue of 2 ended 0.915 / 0.936 / 0.95 over seeds 0-9 (4 below 0.93,
    # staleness 1.8), at 1 0.96 / 0.966 / 0.9685 (staleness 0.85) at 5% fewer samples/s on 2 cores
    # (docs/pdasgd.md, "The queue"). One process of 1F:1B keeps 1: its forward and backward threads
    # overlap. Overlapping forwards (--queue-size F) are unmeasured on a GPU. settings.resolve
    # applies it after the thread counts, and the defaults that follow (taking_turns) see it.
    # --fb-ratio auto chooses the backward threads at run time, so they are not known to be one here.
    one_backward = cfg.backward_threads == 1 and cfg.forward_threads == 1 and cfg.fb_ratio is None
    return 0 if one_backward and several_share_one_model(cfg) else 1


def several_share_one_model(cfg) -> bool:
    """Several processes on one shared model: not replicas (--sharing memory, or auto resolving to it)."""
    memory = resolve_sharing(cfg.sharing, cfg.device, cfg.workers, cfg.runtime) == "memory"
    return several_on_one_model(cfg) and memory


def taking_turns(cfg) -> bool:
    """Several processes on one shared model, each at a queue of 0 (the CPU default's layout, with
    --queue-size resolved): no process's own update is ever stale, and the run is Hogwild!-like,
    several writers of one model with fresh reads, each layer updated as its gradient appears."""
    return cfg.queue_size == 0 and several_share_one_model(cfg)


def hogwild_like(cfg) -> bool:
    """Two processes taking turns (the CPU default's layout): one other writer, staleness about 0.5,
    as Hogwild!'s two processes. They take Hogwild!'s lr and warm-up (spec.lr_default). Four
    simulated ones (staleness 2.2, undamped: cap damps only a process's own delay, 0 here) collapsed
    at that lr in 3 of 3 seeds (median 0.706) and ended 0.9265 / 0.9435 / 0.964 at the lr of the
    rest (docs/pdasgd.md, "Later on 2026-12-06")."""
    return taking_turns(cfg) and processes(cfg) == 2


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


def one_thread(forward_threads: int, backward_threads: int, queue_size: int) -> bool:
    """1F:1B at a queue of 0: the next forward waits for the last backward anyway, so one thread
    plays both roles (threads.Decoupled._turns_loop) and gets the process's whole share of the cores."""
    return forward_threads == 1 and backward_threads == 1 and slot_back_at_end(queue_size)


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
    import torch
    return "average" if _cuda_available() and torch.cuda.device_count() > 1 else "memory"
