"""pdasgd's spec: its options, defaults, checks, process layout and summary fields. The rules its
real schedule and its simulated twin share are in rules.py."""

from __future__ import annotations

from ...config import SHARING, need
from ...errors import ConfigError
from ..base import Algorithm, later
from .rules import (auto_processes, backward_default, hogwild_like, processes, queue_default, resolve_sharing,
                    taking_turns)

def _replicas(cfg) -> bool:
    """A replica per process (--sharing average, or auto on several GPUs)."""
    return resolve_sharing(cfg.sharing, cfg.device, cfg.workers, cfg.runtime) == "average"


def check(cfg):
    """--sharing resolved and recorded (summary.json says which mode ran), and its constraints."""
    need(cfg.sharing in SHARING, "sharing", cfg.sharing, ", ".join(SHARING))
    cfg = cfg.replace(sharing=resolve_sharing(cfg.sharing, cfg.device, cfg.workers, cfg.runtime))
    if cfg.sharing == "average" and cfg.workers < 2:
        raise ConfigError(f"--sharing 'average' is not accepted with --workers {cfg.workers}; accepted: "
                          "--workers 2 or more (a replica per worker process to average), or --sharing memory, auto")
    if cfg.backward_weights == "forward" and cfg.runtime == "sim":
        raise ConfigError("--backward-weights 'forward' is not accepted with --runtime sim; accepted: current "
                          "(the simulated pdasgd runs its backward on the weights of the moment, as the paper does)")
    if cfg.sharing == "average" and cfg.runtime == "sim":
        raise ConfigError("--sharing 'average' is not accepted with --runtime sim; accepted: memory, auto "
                          "(the simulated cluster runs pdasgd on one shared model)")
    return cfg


def check_given(given: dict, runtime: str) -> None:
    """--average-every is used only with replicas: given with one shared model it would do nothing.
    --fb-ratio auto chooses the backward threads itself: a --backward-threads beside it would be
    replaced without a word."""
    if given.get("fb_ratio") == "auto" and given.get("backward_threads") is not None:
        raise ConfigError(f"--backward-threads {given['backward_threads']!r} is not used with --fb-ratio auto, "
                          "which chooses the backward threads from the measured forward and backward times; "
                          "accepted: one of them (--forward-threads may go with either)")
    if "average_every" in given:
        v = given.get
        if resolve_sharing(v("sharing") or "auto", v("device") or "auto", v("workers"), runtime or "real") == "memory":
            raise ConfigError(f"--average-every {v('average_every')!r} is not used by --algo pdasgd when its workers "
                              "share one model; accepted with: --algo pdasgd --sharing average (replicas), --algo lpap")


def layer_summary(record, out: dict) -> None:
    """Per-layer staleness, misalignment, queue depth and the thread counts (pdasgd's engine,
    threads.Decoupled: pdasgd and layup)."""
    b, cfg = record.board, record.cfg
    names = [n for n, p in record.model.named_parameters() if p.requires_grad]
    keep = [w for w in range(b.workers) if w not in record.lost]
    s, c, m = b.layer_stale_sum[keep].sum(0), b.layer_stale_count[keep].sum(0), b.layer_stale_max[keep].amax(0)
    own = b.layer_own_stale_sum[keep].sum(0)
    # own_mean: the staleness --staleness acted on (rules.damped_staleness: this process's own updates)
    mean = lambda v, i: round(float(v[i]) / int(c[i]), 4) if int(c[i]) else 0.0
    out["staleness_by_layer"] = [
        {"layer": name, "mean": mean(s, i), "own_mean": mean(own, i), "max": int(m[i]), "count": int(c[i])}
        for i, name in enumerate(names)]
    passes = int(b.backward_passes.sum())
    out["backward_passes"] = passes
    out["misaligned_fraction"] = round(int(b.misaligned.sum()) / passes, 4) if passes else 0.0
    rows = {tuple(int(v) for v in b.fb_threads[w]) for w in keep if int(b.fb_threads[w, 0]) > 0}
    fb = sorted(rows)[0] if rows else (cfg.forward_threads, cfg.backward_threads)
    out["forward_threads"], out["backward_threads"] = fb
    if len(rows) > 1:  # --fb-ratio auto chose differently in different workers
        out["threads_by_worker"] = [[int(v) for v in b.fb_threads[w]] for w in keep]
    out["fb_ratio"] = cfg.fb_ratio
    # the process x thread layout that ran, and what chose its process count
    out["layout"] = {"processes": b.workers, "forward_threads": fb[0], "backward_threads": fb[1],
                     "workers_from": cfg.workers_from or "--workers"}
    out["queue_size"] = cfg.queue_size
    out["queue_peak"] = int(b.queue_peak.max())


def summary_extra(record, out: dict) -> None:
    """layer_summary; the update mode and --sharing; with replicas (--sharing average) also the
    averaging and the exchange that carried it."""
    b, cfg = record.board, record.cfg
    layer_summary(record, out)
    out["updates_mode"] = cfg.updates
    out["backward_weights"] = cfg.backward_weights
    out["sharing"] = cfg.sharing
    if cfg.sharing == "average":
        from ...board import ExchangeCounter
        from ...exchange.summary import exchange_summary
        exchange_summary(record, out, sum(p.numel() for p in record.model.parameters() if p.requires_grad))
        import torch
        gpus = torch.cuda.device_count() if record.device == "cuda" else 0
        local = record.launch == "local"  # under torchrun each machine numbers its own
        out["averaging"] = {
            "average_every": cfg.average_every,  # local backward passes between rounds
            "rounds_per_worker": [int(r) for r in b.exchange[:, ExchangeCounter.ROUNDS]],
            "devices": [f"cuda:{w % gpus}" if gpus else "cpu" for w in range(b.workers)] if local else None}
    from ...theory import add_theory  # measured staleness vs the PD-ASGD bias bound
    add_theory(record, out)


def _one_writer_per_model(cfg) -> bool:
    """One forward thread on each model: one process, or replicas (--sharing average)."""
    # runs before the settings are checked: comparisons only, so a bad value fails its own check later
    if cfg.forward_threads not in (None, 1):  # None: not given, the default of 1
        return False
    return processes(cfg) == 1 or (isinstance(processes(cfg), int) and _replicas(cfg))


def staleness_default(cfg) -> str:
    """none with one forward thread per model, cap with more writers (2F:2B, 2 processes on one model)"""
    return "none" if _one_writer_per_model(cfg) else "cap"


def _clipped(cfg) -> bool:
    """One forward thread per model, or processes taking turns (--queue-size 0): the layouts whose
    updates are clipped and undamped."""
    return _one_writer_per_model(cfg) or taking_turns(cfg)


def clip_default(cfg) -> float:
    """1.0 with one forward thread per model or processes taking turns (--queue-size 0), else 0.0 (off)"""
    return 1.0 if _clipped(cfg) else 0.0


def nesterov_default(cfg) -> bool:
    """True (the shared default) in the layouts that clip_default clips (one forward thread per model, or processes taking turns), whatever --clip-grad-norm is given, else False (heavy-ball)"""
    # Nesterov weighs a gradient 1.9x in its own step, and the clip bounds that step. 2-core CPU,
    # mnist1d, 10 epochs (docs/pdasgd.md, "Nesterov momentum"): the CPU default over seeds 0-39 ended
    # 0.9665 / 0.9752 / 0.982 against 0.967 / 0.9735 / 0.9785 with heavy-ball momentum, and reached
    # 0.95 in 0.89 s against 1.07 s (median of 8 seeds); 1F:1B, 1F:2B, 1F:4B, 2 x 1F:1B, 4 processes
    # taking turns, the npz example and the MNIST images held their bars with it. 2F:2B (cap,
    # unclipped) ended below 0.93 in 2 of 20 runs with it and in none of 10 without.
    return _clipped(cfg)


def lr_default(cfg) -> float:
    """0.075 with two processes taking turns (--queue-size 0, the CPU default), else 0.05"""
    return 0.075 if hogwild_like(cfg) else 0.05


def warmup_default(cfg) -> float:
    """0.5 with two processes taking turns (--queue-size 0, the CPU default), else 2.0"""
    return 0.5 if hogwild_like(cfg) else 2.0


def backward_threads_default(cfg) -> int:
    """1 where several processes share one model with one forward thread each (a process per CPU core), else 2 (1F:2B)"""
    return backward_default(cfg, _replicas(cfg))


PDASGD = Algorithm(
    "pdasgd", "PD-ASGD: decoupled forward and backward threads, each layer updated as soon as its "
    "gradient exists (by default 2 processes on a CPU, or one on a GPU, all on one shared model; "
    "--workers N chooses, and with --sharing average the processes keep replicas averaged in the "
    "background, one per GPU)",
    worker=later(__package__ + ".worker"), sim=later(__package__ + ".sim"),
    shared_model=lambda cfg: not _replicas(cfg), distributed=_replicas,
    # With replicas the survivors of a dead worker carry on, as lpap's: they claim the rest of the
    # plan (board.ClaimLock, which the OS releases when its holder dies) and average among
    # themselves. One shared model: a worker killed mid-update may leave it half-written, so that
    # run stops with exit 1.
    tolerates_failures=_replicas, snapshot_all_replicas=_replicas,
    # A 2-epoch warm-up, and with one forward thread per model each layer's gradient clipped to
    # norm 1 and no damping of stale updates. One step of delay with momentum 0.9 made a rare
    # large gradient kill the lower layers' ReLU channels (collapses); damping every stale update
    # (cap) stopped that by shortening every step and under-trained the run, where clipping
    # shortens only the spikes: 1F:2B median 0.968 against cap's 0.965 over seeds 0-39, no
    # collapse in 64 seeds of the npz example (cap: 4). With 2 processes on one model (staleness
    # about 2) undamped updates diverge, so cap stays there, unclipped: the clip took 2 x 1F:2B 22%
    # longer to 0.90 under the delays scenario (docs/pdasgd.md, "Clipping instead of damping").
    # 2F:2B keeps cap unclipped too: at its queue of 1 (rules.queue_default, staleness 0.85) none with
    # the clip ended a quarter point higher at 15% fewer samples/s (docs/pdasgd.md, "The queue")
    # On a CPU with no layout given: 2 processes, each 1F:1B with --queue-size 0 on one thread
    # (rules.auto_processes, backward_default, queue_default).
    # Two processes taking turns (the CPU default) are Hogwild!-like and take Hogwild!'s lr and warm-up,
    # clipped: seeds 0-39 ended 0.9665 / 0.9728 / 0.9805 against 0.9635 / 0.9692 / 0.9755 at lr 0.05
    # with a 2-epoch warm-up, and reached 0.95 in 1.10 s (seeds 0-5) against 1.38 s (seeds 0-4)
    # (docs/pdasgd.md, "Later on 2026-12-06").
    defaults={"backward_threads": backward_threads_default, "queue_size": queue_default,
              "staleness": staleness_default, "clip_grad_norm": clip_default, "lr": lr_default,
              "warmup_epochs": warmup_default, "nesterov": nesterov_default},
    default_workers=auto_processes,
    default_workers_text="2 on a CPU, else 1 (on a GPU, with a thread layout given, or with --runtime sim)",
    options=("forward_threads", "backward_threads", "fb_ratio", "queue_size", "updates", "backward_weights",
             "sharing", "average_every", "staleness"),
    summary_extra=summary_extra, check=check, check_given=check_given, sim_theory=True,
    distributed_with="--sharing average")
