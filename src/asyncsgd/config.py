"""Run settings: one dataclass, validated once at the edge.

Every later layer trusts a RunConfig: the inner training loops carry no defensive checks.
A bad value raises ConfigError whose one-line message names the flag, the value and what is
accepted; the CLI turns it into exit code 2.

Meaning of the shared flags (the fair-comparison rules, docs/design.md):
- epochs: passes over the training set by ALL workers together; every algorithm processes
  the same number of samples for the same epochs, whatever its worker count.
- batch_size: per worker (per forward thread for pdasgd); sync's effective batch is N*B.
- The learning-rate schedule is driven by global progress (samples processed by everyone).
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path

from .errors import ConfigError

SCHEDULES = ("cosine", "constant", "step")
DEVICES = ("cpu", "cuda", "auto")
PROGRESS = ("auto", "bar", "lines", "none")
UPDATES = ("layer", "block")
SHARING = ("memory", "average", "auto")
TOPOLOGIES = ("all", "ring", "random:M")
STALENESS_POLICIES = ("none", "scale", "drop:MAX", "adaptive")
RUNTIMES = ("real", "sim")


# Defaults of the settings an algorithm may override (algorithms.Algorithm.defaults): a field
# left None is resolved in validate() to the algorithm's value, else to this one.
SHARED_DEFAULTS = {"workers": 2, "lr": 0.05, "momentum": 0.9, "staleness": "none", "send_every": 1}


@dataclass
class RunConfig:
    """Every setting of a run. Field names are the CLI flags with '-' for '_'."""

    algorithm: str = "hogwild"
    task: str = "mnist1d"
    model: str | None = None
    data_dir: str | None = None
    num_samples: int | None = None
    workers: int | None = None  # default: the algorithm's (pdasgd 1 process of F+B threads, others 2)
    epochs: float = 10.0
    batch_size: int = 32
    lr: float | None = None  # default 0.05 (dasgd 0.07): see SHARED_DEFAULTS and Algorithm.defaults
    momentum: float | None = None  # default 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    schedule: str = "cosine"
    warmup_epochs: float = 0.5
    lr_steps: tuple[float, ...] = (0.5, 0.75)  # fractions of the run, for schedule=step
    lr_gamma: float = 0.1
    lr_scaling: str = "linear"  # sync: lr x N for its N x B effective batch (Goyal et al. 2017); "none" keeps lr
    seed: int = 0
    target_accuracy: float | None = None
    out: str | None = None
    resume: str | None = None
    device: str = "auto"
    eval_points: int = 40
    checkpoint_every: float = 1.0  # epochs
    threads_per_worker: int | None = None
    progress: str = "auto"
    stall_timeout: float = 120.0
    # pdasgd
    forward_threads: int = 1
    backward_threads: int = 2
    fb_ratio: str | None = None  # "auto": time forward and backward, pick the ratio
    queue_size: int | None = None  # default forward_threads (docs/pdasgd.md: deeper queues add staleness)
    updates: str = "layer"
    # memory: every worker process updates one shared model; average: a replica per process (one per
    # GPU), averaged every --average-every backward passes in the background; auto: resolve_sharing()
    sharing: str = "auto"
    # lpap (average_every: pdasgd --sharing average too)
    groups: int = 2
    workers_per_group: int = 2
    average_every: int = 10
    partitioned: bool = False
    # dasgd
    send_every: int | None = None  # default 4 (docs/distributed.md); 1 is the per-step exchange
    topology: str = "all"
    staleness: str | None = None  # default none (pdasgd, dasgd: adaptive)
    # delays and stragglers (every multi-worker algorithm)
    delay: str | None = None
    straggler: str | None = None
    # runtime
    runtime: str = "real"
    sim_workers: int | None = None
    sim_forward_s: float | None = None  # simulated forward time per batch (default: measured)
    sim_backward_s: float | None = None  # simulated backward time per batch (default: measured)
    sim_compute: str = "lognormal:0.1"  # per-step compute-time factor: fixed, lognormal:SIGMA, pareto:ALPHA

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["lr_steps"] = list(self.lr_steps)
        return d

    def replace(self, **changes) -> "RunConfig":
        return dataclasses.replace(self, **changes)


FIELD_NAMES = tuple(f.name for f in fields(RunConfig))


def flag(name: str) -> str:
    return "--algo" if name == "algorithm" else "--" + name.replace("_", "-")


def _need(ok: bool, name: str, value, accepted: str) -> None:
    if not ok:
        raise ConfigError(f"{flag(name)} {value!r} is not accepted; accepted: {accepted}")


def parse_delay(spec: str | None) -> dict | None:
    """'latency=20ms[,jitter=exp]' -> {'latency_s': 0.02, 'jitter': 'exp'|None}."""
    if spec is None:
        return None
    out = {"latency_s": 0.0, "jitter": None, "bandwidth_bps": None}
    for part in spec.split(","):
        key, _, val = part.partition("=")
        key = key.strip()
        if key == "latency":
            out["latency_s"] = parse_duration(val, "delay")
        elif key == "jitter" and val in ("exp", "none"):
            out["jitter"] = None if val == "none" else val
        elif key == "bandwidth":
            out["bandwidth_bps"] = parse_rate(val)
        else:
            raise ConfigError(f"--delay {spec!r} is not accepted; accepted: "
                              "latency=DURATION[,jitter=exp|none][,bandwidth=RATE] e.g. latency=20ms,jitter=exp")
    return out


def parse_duration(text: str, name: str) -> float:
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(us|ms|s)?\s*", text or "")
    if not m:
        raise ConfigError(f"--{name} duration {text!r} is not accepted; accepted: a number with us, ms or s, e.g. 20ms")
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0, None: 1.0}[m.group(2)]
    return float(m.group(1)) * scale


def parse_rate(text: str) -> float:
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(bps|kbps|Mbps|Gbps)?\s*", text or "")
    if not m:
        raise ConfigError(f"--delay bandwidth {text!r} is not accepted; accepted: a number with bps, kbps, Mbps or Gbps, e.g. 1Gbps")
    scale = {"bps": 1, "kbps": 1e3, "Mbps": 1e6, "Gbps": 1e9, None: 1}[m.group(2)]
    return float(m.group(1)) * scale


def parse_straggler(spec: str | None) -> dict | None:
    """'worker=1,slowdown=4' -> {'worker': 1, 'slowdown': 4.0}."""
    if spec is None:
        return None
    try:
        kv = dict(part.split("=", 1) for part in spec.split(","))
        out = {"worker": int(kv.pop("worker")), "slowdown": float(kv.pop("slowdown"))}
        if kv or out["worker"] < 0 or not out["slowdown"] >= 1:
            raise ValueError
    except (ValueError, KeyError):
        raise ConfigError(f"--straggler {spec!r} is not accepted; accepted: worker=W,slowdown=S "
                          "with W a worker index >= 0 and S >= 1, e.g. worker=1,slowdown=4") from None
    return out


def parse_staleness(spec: str) -> tuple[str, int | None]:
    if spec in ("none", "scale", "adaptive"):
        return spec, None
    m = re.fullmatch(r"drop:(\d+)", spec or "")
    if not m:
        raise ConfigError(f"--staleness {spec!r} is not accepted; accepted: {', '.join(STALENESS_POLICIES)}")
    return "drop", int(m.group(1))


def parse_sim_compute(spec: str) -> tuple[str, float | None]:
    """--sim-compute: 'fixed', 'lognormal:SIGMA' (median-1 factor) or 'pareto:ALPHA' (factor >= 1, heavy tail)."""
    if spec == "fixed":
        return "fixed", None
    m = re.fullmatch(r"(lognormal|pareto):([0-9]*\.?[0-9]+)", spec or "")
    if m and (m.group(1) == "lognormal" or float(m.group(2)) > 1):
        return m.group(1), float(m.group(2))
    raise ConfigError(f"--sim-compute {spec!r} is not accepted; accepted: fixed, lognormal:SIGMA with SIGMA >= 0, "
                      "pareto:ALPHA with ALPHA > 1, e.g. pareto:1.5")


def parse_topology(spec: str) -> tuple[str, int | None]:
    if spec in ("all", "ring"):
        return spec, None
    m = re.fullmatch(r"random:(\d+)", spec or "")
    if not m or int(m.group(1)) < 1:
        raise ConfigError(f"--topology {spec!r} is not accepted; accepted: all, ring, random:M with M >= 1")
    return "random", int(m.group(1))


# Settings only some algorithms use. Given explicitly to another algorithm they would be silently
# ignored, so the CLI, TOML files and the Python API reject them (the bench, which sets them for
# a whole suite, does not go through this check).
ALGORITHM_OPTIONS = {
    "forward_threads": ("pdasgd",), "backward_threads": ("pdasgd",), "fb_ratio": ("pdasgd",),
    "queue_size": ("pdasgd",), "updates": ("pdasgd",), "sharing": ("pdasgd",),
    "groups": ("lpap",), "workers_per_group": ("lpap",), "average_every": ("lpap", "pdasgd"), "partitioned": ("lpap",),
    "send_every": ("dasgd",), "topology": ("dasgd",), "staleness": ("dasgd", "pdasgd"),
    "lr_scaling": ("sync",),
}


SIM_OPTIONS = ("sim_workers", "sim_forward_s", "sim_backward_s", "sim_compute")


def check_algorithm_options(algorithm: str, given, runtime: str | None = None, values: dict | None = None) -> None:
    """ConfigError for an explicitly given setting the chosen algorithm (or runtime) does not use.
    values: the given settings' values (default: `given` itself when it is a dict), for options
    used only in one mode of an algorithm (pdasgd's --average-every: only with replicas)."""
    if values is None and isinstance(given, dict):
        values = given
    for name in given:
        if name in SIM_OPTIONS and runtime != "sim":
            raise ConfigError(f"{flag(name)} is only used by the simulated cluster; accepted with: --runtime sim")
        users = ALGORITHM_OPTIONS.get(name)
        if users and algorithm not in users:
            raise ConfigError(f"{flag(name)} is not used by --algo {algorithm}; accepted with: "
                              f"{', '.join('--algo ' + u for u in users)}")
    if algorithm == "pdasgd" and "average_every" in given and values is not None:
        v = values.get
        if resolve_sharing(v("sharing") or "auto", v("device") or "auto", v("workers"), runtime or "real") == "memory":
            raise ConfigError(f"--average-every {v('average_every')!r} is not used by --algo pdasgd when its workers "
                              "share one model; accepted with: --algo pdasgd --sharing average (replicas), --algo lpap")


def resolve_sharing(sharing: str, device: str, workers: int | None, runtime: str = "real") -> str:
    """pdasgd --sharing: memory or average as given; auto is average (a replica per process, each on
    its own GPU) when the run has several processes and more than one GPU to put them on (--device
    cuda, or auto with CUDA visible), else memory (one shared model, on one GPU if any). The
    simulated runtime models the shared model only."""
    if sharing != "auto":
        return sharing
    if runtime == "sim" or (workers or 1) < 2 or device not in ("cuda", "auto"):
        return "memory"
    import torch
    return "average" if torch.cuda.is_available() and torch.cuda.device_count() > 1 else "memory"


def validate(cfg: RunConfig) -> RunConfig:
    """Check every value; returns the config with defaults resolved. Raises ConfigError."""
    from .algorithms import ALGORITHMS

    _need(cfg.algorithm in ALGORITHMS, "algorithm", cfg.algorithm, ", ".join(ALGORITHMS))
    # Settings left unset take the algorithm's own default, else the shared one.
    resolved = {**SHARED_DEFAULTS, **ALGORITHMS[cfg.algorithm].defaults}
    cfg = cfg.replace(**{k: v for k, v in resolved.items() if getattr(cfg, k) is None})
    for name in ("workers", "batch_size", "eval_points", "forward_threads", "backward_threads",
                 "groups", "workers_per_group", "average_every", "send_every"):
        v = getattr(cfg, name)
        _need(isinstance(v, int) and not isinstance(v, bool) and v >= 1, name, v, "a whole number >= 1")
    _need(cfg.workers <= 256, "workers", cfg.workers, "1 to 256 real workers (use --runtime sim for more)")
    for name in ("epochs", "lr"):
        v = getattr(cfg, name)
        _need(_is_num(v) and v > 0 and math.isfinite(v), name, v, "a number > 0")
    for name in ("momentum",):
        v = getattr(cfg, name)
        _need(_is_num(v) and 0 <= v < 1, name, v, "a number in [0, 1)")
    for name in ("weight_decay", "warmup_epochs"):
        v = getattr(cfg, name)
        _need(_is_num(v) and v >= 0 and math.isfinite(v), name, v, "a number >= 0")
    _need(_is_num(cfg.checkpoint_every) and cfg.checkpoint_every > 0, "checkpoint_every",
          cfg.checkpoint_every, "a number of epochs > 0")
    _need(_is_num(cfg.stall_timeout) and cfg.stall_timeout > 0, "stall_timeout", cfg.stall_timeout, "seconds > 0")
    _need(_is_num(cfg.lr_gamma) and 0 < cfg.lr_gamma <= 1, "lr_gamma", cfg.lr_gamma, "a number in (0, 1]")
    _need(all(_is_num(s) and 0 < s < 1 for s in cfg.lr_steps), "lr_steps", cfg.lr_steps,
          "comma-separated fractions of the run in (0, 1), e.g. 0.5,0.75")
    _need(isinstance(cfg.seed, int) and not isinstance(cfg.seed, bool) and cfg.seed >= 0, "seed", cfg.seed,
          "a whole number >= 0")
    if cfg.target_accuracy is not None:
        _need(_is_num(cfg.target_accuracy) and 0 < cfg.target_accuracy <= 1, "target_accuracy",
              cfg.target_accuracy, "a fraction in (0, 1], e.g. 0.9")
    if cfg.num_samples is not None:
        _need(isinstance(cfg.num_samples, int) and cfg.num_samples >= 1, "num_samples", cfg.num_samples,
              "a whole number >= 1")
    if cfg.threads_per_worker is not None:
        _need(isinstance(cfg.threads_per_worker, int) and cfg.threads_per_worker >= 1, "threads_per_worker",
              cfg.threads_per_worker, "a whole number >= 1")
    if cfg.queue_size is not None:
        _need(isinstance(cfg.queue_size, int) and cfg.queue_size >= 1, "queue_size", cfg.queue_size,
              "a whole number >= 1")
    if cfg.sim_workers is not None:
        _need(isinstance(cfg.sim_workers, int) and 1 <= cfg.sim_workers <= 65536, "sim_workers",
              cfg.sim_workers, "a whole number from 1 to 65536")
    for name in ("sim_forward_s", "sim_backward_s"):
        v = getattr(cfg, name)
        if v is not None:
            _need(_is_num(v) and v > 0 and math.isfinite(v), name, v, "seconds > 0 per batch, e.g. 0.002 (or unset: measured)")
    parse_sim_compute(cfg.sim_compute)
    _need(cfg.schedule in SCHEDULES, "schedule", cfg.schedule, ", ".join(SCHEDULES))
    _need(cfg.lr_scaling in ("linear", "none"), "lr_scaling", cfg.lr_scaling, "linear, none")
    _need(cfg.device in DEVICES, "device", cfg.device, ", ".join(DEVICES))
    _need(cfg.progress in PROGRESS, "progress", cfg.progress, ", ".join(PROGRESS))
    _need(cfg.updates in UPDATES, "updates", cfg.updates, ", ".join(UPDATES))
    _need(cfg.runtime in RUNTIMES, "runtime", cfg.runtime, ", ".join(RUNTIMES))
    _need(cfg.fb_ratio in (None, "auto"), "fb_ratio", cfg.fb_ratio, "auto (or leave unset and give the thread counts)")
    parse_staleness(cfg.staleness)
    parse_topology(cfg.topology)
    parse_delay(cfg.delay)
    straggler = parse_straggler(cfg.straggler)
    if straggler is not None:
        if cfg.runtime == "sim":
            from .sim import straggler_range
            n = straggler_range(cfg)  # virtual workers (lpap: groups) of the simulated cluster
        else:
            n = ALGORITHMS[cfg.algorithm].processes(cfg)
        _need(straggler["worker"] < max(n, 1), "straggler", cfg.straggler,
              f"worker=W with W < the {n} worker(s) of this run")
    if cfg.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            raise ConfigError("--device 'cuda' is not accepted: no CUDA device is visible; accepted: cpu, auto")
    _need(cfg.sharing in SHARING, "sharing", cfg.sharing, ", ".join(SHARING))
    if cfg.algorithm == "pdasgd":  # recorded resolved: summary.json says which mode ran
        cfg = cfg.replace(sharing=resolve_sharing(cfg.sharing, cfg.device, cfg.workers, cfg.runtime))
        if cfg.sharing == "average" and cfg.workers < 2:
            raise ConfigError(f"--sharing 'average' is not accepted with --workers {cfg.workers}; accepted: "
                              "--workers 2 or more (a replica per worker process to average), or --sharing memory, auto")
        if cfg.sharing == "average" and cfg.runtime == "sim":
            raise ConfigError("--sharing 'average' is not accepted with --runtime sim; accepted: memory, auto "
                              "(the simulated cluster runs pdasgd on one shared model)")
    return cfg


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def load_toml(path: str) -> dict:
    """Settings from a TOML file (keys are field names, '-' or '_'); ConfigError if unreadable."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    p = Path(path)
    try:
        with p.open("rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"--config {path!r}: no such file; accepted: a readable TOML file") from None
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"--config {path!r} is not valid TOML ({str(e).splitlines()[0]}); "
                          "accepted: a TOML file of settings such as lr = 0.05") from None
    out = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name == "algo":
            name = "algorithm"
        if name not in FIELD_NAMES:
            raise ConfigError(f"--config {path!r}: unknown setting {key!r}; accepted: {', '.join(FIELD_NAMES)}")
        out[name] = tuple(value) if name == "lr_steps" else value
    return out


def default_out_dir(cfg: RunConfig) -> str:
    import time
    return str(Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.algorithm}")
