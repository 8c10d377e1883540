"""Run settings: one dataclass and the parsers of its structured values. A leaf module: it imports
nothing from the package but errors.

RunConfig holds what the user gave (strings for the structured settings, None for a setting
whose default depends on the algorithm). settings.resolve() applies the defaults and every
check once, at the edge; RunConfig.parsed holds the structured values (frozen dataclasses)
that every later layer reads. A bad value raises ConfigError whose one-line message names the
flag, the value and what is accepted; the CLI turns it into exit code 2.

Meaning of the shared flags (the fair-comparison rules, docs/architecture.md):
- epochs: passes over the training set by ALL workers together; every algorithm processes
  the same number of samples for the same epochs, whatever its worker count.
- batch_size: per worker (per forward thread for pdasgd); sync's effective batch is N*B.
- The learning-rate schedule is driven by global progress (samples processed by everyone).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from dataclasses import dataclass, fields
from pathlib import Path

from .errors import ConfigError

SCHEDULES = ("cosine", "constant", "step")
DEVICES = ("cpu", "cuda", "auto")
PROGRESS = ("auto", "bar", "lines", "none")
UPDATES = ("layer", "block")
BACKWARD_WEIGHTS = ("forward", "current")
SHARING = ("memory", "average", "auto")
TOPOLOGIES = ("all", "ring", "random:M")
STALENESS_POLICIES = ("none", "scale", "cap", "drop:MAX", "adaptive")
RUNTIMES = ("real", "sim")


# Defaults of the settings an algorithm may override (each algorithm's spec.py `defaults`): a field
# left None is resolved by settings.resolve() to the algorithm's value, else to this one.
# Nesterov momentum (since 2026-12-07, later, for sequential and Hogwild!; dasgd, lpap and layup
# earlier that day): mnist1d, 10 epochs, 2-core CPU, interleaved with heavy-ball momentum, sequential over
# seeds 0-39 0.9645 / 0.9723 / 0.9775 against 0.966 / 0.9715 / 0.9775 and to 0.95 in 1.52 s against
# 1.74 s (median of 8 seeds); Hogwild! x4 over seeds 0-9 0.9665 / 0.971 / 0.9765 against 0.963 /
# 0.9695 / 0.9745; Hogwild! x2 to 0.95 in 0.89 s against 1.01 s. sync and ddp (a batch of N x 32 at
# N x the lr) and pdasgd's unclipped layouts keep heavy-ball momentum (their spec.py).
SHARED_DEFAULTS = {"workers": 2, "lr": 0.05, "momentum": 0.9, "nesterov": True, "staleness": "none", "send_every": 1,
                   "warmup_epochs": 0.5, "topology": "all", "clip_grad_norm": 0.0, "forward_threads": 1,
                   "backward_threads": 2}


@dataclass
class RunConfig:
    """Every setting of a run. Field names are the CLI flags with '-' for '_'."""

    algorithm: str = "pdasgd"  # the default algorithm, written here only (algorithms/registry reads it)
    task: str = "mnist1d"
    model: str | None = None
    data_dir: str | None = None
    num_samples: int | None = None
    workers: int | None = None  # default: SHARED_DEFAULTS, or the algorithm's
    epochs: float = 10.0
    batch_size: int = 32
    lr: float | None = None  # default: SHARED_DEFAULTS, or the algorithm's
    momentum: float | None = None  # default: SHARED_DEFAULTS, or the algorithm's
    nesterov: bool | None = None  # default: SHARED_DEFAULTS, or the algorithm's
    weight_decay: float = 0.0
    # 0: off; per layer in layer-wise updates, whole-model in block ones (optim.py); default: SHARED_DEFAULTS or the algorithm's
    clip_grad_norm: float | None = None
    schedule: str = "cosine"
    warmup_epochs: float | None = None  # default: SHARED_DEFAULTS, or the algorithm's
    lr_steps: tuple[float, ...] = (0.5, 0.75)  # fractions of the run, for schedule=step
    lr_gamma: float = 0.1
    lr_scaling: str = "linear"  # sync, ddp: lr x N for its N x B effective batch (Goyal et al. 2017); "none" keeps lr
    seed: int = 0
    target_accuracy: float | None = None
    out: str | None = None
    overwrite: bool = False  # --out may be a finished or stopped run's directory, replaced
    resume: str | None = None
    device: str = "auto"
    eval_points: int = 40
    checkpoint_every: float = 1.0  # epochs
    threads_per_worker: int | None = None
    progress: str = "auto"
    stall_timeout: float = 120.0
    tensorboard: bool = False  # TensorBoard event files in the run directory (the tensorboard extra)
    # pdasgd
    forward_threads: int | None = None  # default: SHARED_DEFAULTS (1), or the algorithm's
    backward_threads: int | None = None  # default: SHARED_DEFAULTS (2), or the algorithm's (layup 1)
    fb_ratio: str | None = None  # "auto": time forward and backward, pick the ratio
    queue_size: int | None = None  # default: algorithms/pdasgd/spec.queue_size (docs/pdasgd.md)
    updates: str = "layer"
    # forward: a pass's backward runs on a private copy of the weights its forward read (the exact
    # gradient there); current: on the live shared weights, as other threads have updated them
    backward_weights: str = "current"
    # memory: every worker process updates one shared model; average: a replica per process (one per
    # GPU), averaged every --average-every backward passes in the background; auto: pdasgd/spec.resolve_sharing
    sharing: str = "auto"
    # lpap (average_every: pdasgd --sharing average too)
    groups: int = 2
    workers_per_group: int = 2
    average_every: int = 10
    partitioned: bool = False
    # ddp: DistributedDataParallel's bucket size limit in MiB; None: DDP's default (25, first bucket 1)
    bucket_cap_mb: float | None = None
    # dasgd
    send_every: int | None = None  # default: SHARED_DEFAULTS, or the algorithm's; 1 is the per-step exchange
    topology: str | None = None  # default: SHARED_DEFAULTS, or the algorithm's
    staleness: str | None = None  # default: SHARED_DEFAULTS, or the algorithm's
    # layup: what a layer's message carries, its parameters or its summed updates (algorithms/layup)
    gossip: str = "average"
    # resolved, not a setting: how --workers got its value when none was given (pdasgd's
    # machine-decided default, algorithms/pdasgd/rules.auto_processes); recorded in summary.json
    workers_from: str | None = None
    # delays and stragglers (every multi-worker algorithm)
    delay: str | None = None
    straggler: str | None = None
    # runtime
    runtime: str = "real"
    sim_workers: int | None = None
    sim_forward_s: float | None = None  # simulated forward time per batch (default: from --sim-times)
    sim_backward_s: float | None = None  # simulated backward time per batch (default: from --sim-times)
    # flops: the model's counted FLOPs / --sim-device-flops (deterministic); measured: time this host
    sim_times: str = "flops"
    sim_device_flops: float = 1e10  # FLOP/s of a simulated device (about one CPU core's dense fp32 rate)
    sim_compute: str = "lognormal:0.1"  # per-step compute-time factor: fixed, lognormal:SIGMA, pareto:ALPHA

    @functools.cached_property
    def parsed(self) -> "Parsed":
        """The structured settings (delay, straggler, staleness, topology, sim compute), parsed once
        per config; every layer reads these instead of parsing the strings again."""
        return Parsed(delay=parse_delay(self.delay), straggler=parse_straggler(self.straggler),
                      staleness=parse_staleness(self.staleness or SHARED_DEFAULTS["staleness"]),
                      topology=parse_topology(self.topology or SHARED_DEFAULTS["topology"]), sim_compute=parse_sim_compute(self.sim_compute))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["lr_steps"] = list(self.lr_steps)
        return d

    def replace(self, **changes) -> "RunConfig":
        return dataclasses.replace(self, **changes)


DERIVED = ("workers_from",)  # fields settings.resolve fills in; no flag, TOML key or train() argument sets them
FIELD_NAMES = tuple(f.name for f in fields(RunConfig) if f.name not in DERIVED)
_ANNOTATIONS = {f.name: f.type for f in fields(RunConfig)}  # strings: `from __future__ import annotations`


def flag(name: str) -> str:
    return "--algo" if name == "algorithm" else "--" + name.replace("_", "-")


def need(ok: bool, name: str, value, accepted: str) -> None:
    """ConfigError naming the flag, the value and what is accepted, unless ok."""
    if not ok:
        raise ConfigError(f"{flag(name)} {value!r} is not accepted; accepted: {accepted}")


COMMAND: list[str] = []  # the asyncsgd command line of this process, set by cli.main (summary.json)

SIM_OPTIONS = ("sim_workers", "sim_forward_s", "sim_backward_s", "sim_compute", "sim_times", "sim_device_flops")  # --runtime sim only
# --runtime real only: the simulated cluster keeps only the last checkpoint and has no processes to
# watch for stalls (sim/runtime.py); it runs on one torch thread (--threads-per-worker: only 1)
REAL_OPTIONS = ("checkpoint_every", "stall_timeout")


@dataclass(frozen=True)
class Delay:
    """--delay: every message (or collective) pays latency (exponentially jittered) + size / bandwidth."""
    latency_s: float = 0.0
    jitter: str | None = None  # "exp" or None
    bandwidth_bps: float | None = None


@dataclass(frozen=True)
class Straggler:
    """--straggler: worker `worker`'s steps take `slowdown` times as long."""
    worker: int
    slowdown: float


@dataclass(frozen=True)
class Staleness:
    """--staleness: what a stale update does (kind none | scale | cap | drop | adaptive; max for drop:MAX)."""
    kind: str
    max: int | None = None


@dataclass(frozen=True)
class TopologySpec:
    """--topology: all | ring | random (m peers per round) | none (no updates sent)."""
    kind: str
    m: int | None = None


@dataclass(frozen=True)
class SimCompute:
    """--sim-compute: the per-step compute-time factor (fixed | lognormal SIGMA | pareto ALPHA)."""
    kind: str
    param: float | None = None


@dataclass(frozen=True)
class Parsed:
    """The structured settings of one RunConfig, parsed once (RunConfig.parsed) and read by every layer."""
    delay: Delay | None
    straggler: Straggler | None
    staleness: Staleness
    topology: TopologySpec
    sim_compute: SimCompute


def parse_delay(spec: str | None) -> Delay | None:
    """'latency=20ms[,jitter=exp][,bandwidth=1Gbps]' -> Delay."""
    if spec is None:
        return None
    if not isinstance(spec, str):
        raise ConfigError(f"--delay {spec!r} is not accepted; accepted: latency=DURATION[,jitter=exp|none]"
                          "[,bandwidth=RATE] e.g. latency=20ms,jitter=exp")
    out = {"latency_s": 0.0, "jitter": None, "bandwidth_bps": None}
    seen = set()
    for part in spec.split(","):
        key, _, val = part.partition("=")
        key = key.strip()
        if key in seen:  # latency=1ms,latency=2ms: the last would silently win
            raise ConfigError(f"--delay {spec!r} is not accepted: it gives {key} twice; accepted: each of "
                              "latency, jitter, bandwidth at most once, e.g. latency=20ms,jitter=exp")
        seen.add(key)
        if key == "latency":
            out["latency_s"] = parse_duration(val, "delay")
            if out["latency_s"] > MAX_LATENCY_S:  # a run would wait that long for every message
                raise ConfigError(f"--delay latency {val!r} is not accepted; accepted: at most {MAX_LATENCY_S:g}s "
                                  "per message, e.g. 20ms")
        elif key == "jitter" and val in ("exp", "none"):
            out["jitter"] = None if val == "none" else val
        elif key == "bandwidth":
            out["bandwidth_bps"] = parse_rate(val)
        else:
            raise ConfigError(f"--delay {spec!r} is not accepted; accepted: "
                              "latency=DURATION[,jitter=exp|none][,bandwidth=RATE] e.g. latency=20ms,jitter=exp")
    return Delay(**out)


MAX_LATENCY_S = 60.0  # --delay latency: more would make a run wait minutes per message
MIN_BANDWIDTH_BPS = 1e3  # --delay bandwidth


def parse_duration(text: str, name: str) -> float:
    """'20ms' -> 0.02. The unit is required: a bare 20 would silently mean 20 s per message."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(us|ms|s)\s*", text or "")
    if not m:
        raise ConfigError(f"--{name} duration {text!r} is not accepted; accepted: a number with a unit us, ms or s, "
                          "e.g. 20ms or 1s")
    return float(m.group(1)) * {"us": 1e-6, "ms": 1e-3, "s": 1.0}[m.group(2)]


def parse_rate(text: str) -> float:
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(bps|kbps|Mbps|Gbps)?\s*", text or "")
    if not m or not float(m.group(1)) > 0:
        raise ConfigError(f"--delay bandwidth {text!r} is not accepted; accepted: a number > 0 with bps, kbps, Mbps "
                          "or Gbps, e.g. 1Gbps")
    scale = {"bps": 1, "kbps": 1e3, "Mbps": 1e6, "Gbps": 1e9, None: 1}[m.group(2)]
    rate = float(m.group(1)) * scale
    if rate < MIN_BANDWIDTH_BPS:  # 1 bps: one message of a 10k-parameter model would take 3.5 days
        raise ConfigError(f"--delay bandwidth {text!r} is not accepted; accepted: at least 1kbps, e.g. 1Gbps")
    return rate


def parse_straggler(spec: str | None) -> Straggler | None:
    """'worker=1,slowdown=4' -> Straggler(1, 4.0)."""
    if spec is None:
        return None
    try:
        kv = dict(part.split("=", 1) for part in spec.split(","))
        out = Straggler(worker=int(kv.pop("worker")), slowdown=float(kv.pop("slowdown")))
        if kv or out.worker < 0 or not 1 <= out.slowdown <= 1000:
            raise ValueError
    except (ValueError, KeyError, AttributeError, TypeError):
        raise ConfigError(f"--straggler {spec!r} is not accepted; accepted: worker=W,slowdown=S "
                          "with W a worker index >= 0 and S from 1 to 1000, e.g. worker=1,slowdown=4") from None
    return out


def parse_staleness(spec: str) -> Staleness:
    if spec in ("none", "scale", "cap", "adaptive"):
        return Staleness(spec)
    m = re.fullmatch(r"drop:(\d+)", spec) if isinstance(spec, str) else None
    if not m:
        raise ConfigError(f"--staleness {spec!r} is not accepted; accepted: {', '.join(STALENESS_POLICIES)}")
    return Staleness("drop", int(m.group(1)))


def parse_sim_compute(spec: str) -> SimCompute:
    """--sim-compute: 'fixed', 'lognormal:SIGMA' (median-1 factor) or 'pareto:ALPHA' (factor >= 1, heavy tail)."""
    if spec == "fixed":
        return SimCompute("fixed")
    m = re.fullmatch(r"(lognormal|pareto):([0-9]*\.?[0-9]+)", spec) if isinstance(spec, str) else None
    if m and (m.group(1) == "lognormal" or float(m.group(2)) > 1):
        return SimCompute(m.group(1), float(m.group(2)))
    raise ConfigError(f"--sim-compute {spec!r} is not accepted; accepted: fixed, lognormal:SIGMA with SIGMA >= 0, "
                      "pareto:ALPHA with ALPHA > 1, e.g. pareto:1.5")


def parse_topology(spec: str) -> TopologySpec:
    if spec in ("all", "ring", "none"):
        return TopologySpec(spec)
    m = re.fullmatch(r"random:(\d+)", spec) if isinstance(spec, str) else None
    if not m or int(m.group(1)) < 1:
        raise ConfigError(f"--topology {spec!r} is not accepted; accepted: all, ring, random:M with M >= 1, none")
    return TopologySpec("random", int(m.group(1)))


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def load_toml(path: str) -> dict:
    """Settings from a TOML file (keys are field names, '-' or '_'); ConfigError if unreadable."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    if not path:  # Path('') is the current directory
        raise ConfigError("--config '' is not accepted; accepted: a readable TOML file")
    p = Path(path)
    try:
        with p.open("rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"--config {path!r}: no such file; accepted: a readable TOML file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"--config {path!r} is not valid TOML: it is not UTF-8 text; accepted: a UTF-8 "
                          "TOML file of settings such as lr = 0.05") from None
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"--config {path!r} is not valid TOML ({str(e).splitlines()[0]}); "
                          "accepted: a TOML file of settings such as lr = 0.05") from None
    out, spelled = {}, {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name == "algo":
            name = "algorithm"
        if name not in FIELD_NAMES:
            raise ConfigError(f"--config {path!r}: unknown setting {key!r}; accepted: {', '.join(FIELD_NAMES)}")
        if name in out:  # algo and algorithm, or batch-size and batch_size: one would silently win
            raise ConfigError(f"--config {path!r}: setting {key!r} is given twice (as {spelled[name]!r} and {key!r}); "
                              "accepted: each setting once")
        out[name], spelled[name] = value, key
    return check_types(out)


# What each setting's value may be, from RunConfig's annotations: (accepted Python types, words).
_KINDS = {"int": ((int,), "a whole number"), "float": ((int, float), "a number"), "str": ((str,), "text"),
          "bool": ((bool,), "true or false"), "tuple[float, ...]": ((list, tuple), "a list of numbers")}


def check_types(values: dict) -> dict:
    """The same type check for TOML files, the Python API and the CLI: each value of the type its
    setting takes (booleans only true/false, numbers finite; None where a setting may be unset).
    Returns the values with lists made tuples. ConfigError names the setting and what is accepted."""
    out = {}
    for name, value in values.items():
        annotation = _ANNOTATIONS[name]
        optional = annotation.endswith(" | None")
        kinds, words = _KINDS[annotation.removesuffix(" | None")]
        if value is None and optional:
            out[name] = None
            continue
        ok = isinstance(value, bool) if bool in kinds else isinstance(value, kinds) and not isinstance(value, bool)
        if ok and isinstance(value, float):
            ok = math.isfinite(value)
        if ok and isinstance(value, (list, tuple)):
            ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
            value = tuple(value)
        if ok and isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2 ** 62:
            ok = False
        if not ok:
            raise ConfigError(f"{flag(name)} {value!r} is not accepted; accepted: {words}"
                              + (" (or leave it unset)" if optional else ""))
        out[name] = value
    return out
