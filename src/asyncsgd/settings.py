"""Settings resolved once: the shared and the algorithm's defaults, then every check.

resolve(cfg) is the one place a RunConfig becomes trusted: settings the user left unset take the
algorithm's default (its spec.py), else the shared one (config.SHARED_DEFAULTS); every value is
checked, the algorithm's own check runs (pdasgd resolves --sharing), and the structured settings
are parsed once (cfg.parsed). Later layers carry no defensive checks.

check_options(algorithm, given, runtime): a setting only some algorithms use, given explicitly
to another, would be silently ignored, so the CLI, TOML files and the Python API reject it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from .algorithms.registry import ALGORITHMS, users_of
from .config import (BACKWARD_WEIGHTS, DERIVED, DEVICES, PROGRESS, REAL_OPTIONS, RUNTIMES, SCHEDULES, SHARED_DEFAULTS, SIM_OPTIONS,
                     UPDATES, RunConfig,
                     flag, need)
from .errors import ConfigError

SIM_TIMES = ("flops", "measured")
LAYOUT_FIRST = ("forward_threads", "backward_threads", "queue_size")  # the defaults that others depend on

# Upper limits of the sizes a run allocates (threads, shared memory, samples, time), with why.
LIMITS = {"forward_threads": 64, "backward_threads": 64, "queue_size": 1024, "groups": 256, "workers_per_group": 64,
          "eval_points": 1000, "epochs": 100_000, "batch_size": 1 << 20, "num_samples": 10_000_000,
          "stall_timeout": 7 * 86400.0, "checkpoint_every": 100_000, "threads_per_worker": 1024,
          "warmup_epochs": 100_000}
LIMITS_WHY = {"forward_threads": "threads per worker", "backward_threads": "threads per worker",
              "queue_size": "pending forwards hold their activations", "groups": "processes",
              "workers_per_group": "threads per group",
              "eval_points": "each is a copy of the model in shared memory, per replica",
              "epochs": "passes over the training set", "batch_size": "samples per step",
              "num_samples": "generated samples held in memory", "stall_timeout": "seconds, a week",
              "checkpoint_every": "epochs", "threads_per_worker": "torch threads", "warmup_epochs": "epochs"}


def _described(default) -> str:
    """A default as the help states it: its value, or a layout-dependent default's docstring."""
    return default.__doc__ if callable(default) else str(default)


def default_text(name: str) -> str:
    """'default 0.05; dasgd 0.07': a setting's default as the CLI help states it, from where it lives."""
    if name in SHARED_DEFAULTS:
        parts = [f"default {SHARED_DEFAULTS[name]}"]
        parts += [f"{a.name} {_described(a.defaults[name])}" for a in ALGORITHMS.values() if name in a.defaults]
        if name == "workers":  # decided by the algorithm's own rule (Algorithm.default_workers), per device
            # (stated for both, not probed: probing CUDA imports torch, and the help is built by
            # every command, a refused flag included)
            for a in ALGORITHMS.values():
                if a.default_workers_text:
                    parts.append(f"{a.name} {a.default_workers_text}")
                elif a.default_workers:
                    cpu, gpu = (a.default_workers(RunConfig(algorithm=a.name, device=d))[0] for d in ("cpu", "cuda"))
                    parts.append(f"{a.name} {cpu}" if cpu == gpu else f"{a.name} {cpu} on a CPU, {gpu} on a GPU")
        return "; ".join(parts)
    value = getattr(RunConfig(), name)
    return f"default {value}" if value is not None else "default: unset"


def check_options(algorithm: str, given, runtime: str | None = None) -> None:
    """ConfigError for an explicitly given setting the chosen algorithm (or runtime) does not use.
    given: the names given, or a dict of them with their values (for the checks that depend on
    values: pdasgd's --average-every is used only with replicas)."""
    for name in given:
        if name in SIM_OPTIONS and runtime != "sim":
            raise ConfigError(f"{flag(name)} is only used by the simulated cluster; accepted with: --runtime sim")
        if name in REAL_OPTIONS and runtime == "sim":
            value = f" {given[name]!r}" if isinstance(given, dict) else ""
            raise ConfigError(f"{flag(name)}{value} is not used by the simulated cluster (it keeps only the last checkpoint "
                              "and has no processes to watch); accepted with: --runtime real")
        users = users_of(name)
        if users and algorithm not in users:
            raise ConfigError(f"{flag(name)} is not used by --algo {algorithm}; accepted with: "
                              f"{', '.join('--algo ' + u for u in users)}")
    if isinstance(given, dict) and "sim_device_flops" in given and (
            given.get("sim_times") == "measured" or {"sim_forward_s", "sim_backward_s"} <= set(given)):
        raise ConfigError("--sim-device-flops is not used when the compute times are measured or both given; "
                          "accepted with: --sim-times flops and at most one of --sim-forward-s, --sim-backward-s")
    if isinstance(given, dict) and runtime == "sim":  # it computes on the CPU, on one torch thread
        if given.get("device") == "cuda":
            raise ConfigError("--device 'cuda' is not used by the simulated cluster, which computes on the CPU; "
                              "accepted with --runtime sim: cpu, auto")
        if given.get("threads_per_worker") not in (None, 1):
            raise ConfigError(f"--threads-per-worker {given['threads_per_worker']!r} is not used by the simulated "
                              "cluster, which runs on one torch thread; accepted with --runtime sim: 1, or unset")
    if isinstance(given, dict) and given.get("workers") is not None and algorithm in ALGORITHMS:
        _check_workers_used(algorithm, given, runtime)
    if (isinstance(given, dict) and runtime == "sim" and given.get("sim_workers") is not None
            and algorithm in ALGORITHMS and _ignores_sim_workers(algorithm)):
        raise ConfigError(f"--sim-workers {given['sim_workers']} is not used by --algo {algorithm}, which simulates "
                          "one worker; accepted: leave --sim-workers unset")
    if isinstance(given, dict) and given.get("nesterov") is True and given.get("momentum") == 0:
        raise ConfigError("--nesterov is not used with --momentum 0 (Nesterov's look-ahead is a momentum "
                          "step); accepted: --momentum > 0 with --nesterov, or --no-nesterov")
    algo = ALGORITHMS.get(algorithm)
    if isinstance(given, dict) and algo is not None and algo.check_given is not None:
        algo.check_given(given, runtime)


def ignores_workers(algorithm: str) -> bool:
    """True for an algorithm whose process count does not follow --workers (sequential: one; lpap: --groups)."""
    processes = ALGORITHMS[algorithm].processes
    return processes(RunConfig(workers=1)) == processes(RunConfig(workers=2))


def _ignores_sim_workers(algorithm: str) -> bool:
    """True for an algorithm whose simulated layout does not follow --sim-workers (sequential: one worker)."""
    layout = ALGORITHMS[algorithm].sim_layout
    return layout(RunConfig(sim_workers=2)) == layout(RunConfig(sim_workers=4))


def _check_workers_used(algorithm: str, given: dict, runtime: str | None) -> None:
    """--workers that would be silently overridden: by the algorithm's own process count, or by
    --sim-workers on the simulated cluster. A value equal to what runs is harmless, and accepted."""
    w = given["workers"]
    if runtime == "sim" and given.get("sim_workers") is not None and given["sim_workers"] != w:
        raise ConfigError(f"--workers {w} is not used with --sim-workers {given['sim_workers']} (the simulated "
                          "cluster runs --sim-workers workers); accepted: one of them, or both equal")
    if ignores_workers(algorithm):
        n = ALGORITHMS[algorithm].processes(RunConfig(**{k: v for k, v in given.items() if k in RunConfig.__dataclass_fields__}))
        if w != n:
            raise ConfigError(f"--workers {w} is not used by --algo {algorithm}, which runs {n} process(es) "
                              + ("(one per --groups) " if algorithm == "lpap" else "")
                              + "whatever --workers says; accepted: leave --workers unset")


# What may be given with --resume (how this process shows progress and uses the cores); every
# other setting is the saved run's.
RESUME_FLAGS = ("resume", "progress", "threads_per_worker")


def check_resume(given) -> None:
    """A resumed run continues with its saved settings: another setting given with --resume would
    be silently ignored, so it is refused."""
    other = sorted(set(given) - set(RESUME_FLAGS))
    if other:
        raise ConfigError(f"{flag(other[0])} is not accepted with --resume (a resumed run continues with the "
                          f"settings saved in its checkpoint); accepted with --resume: --progress, --threads-per-worker")


def _whole(cfg, name: str, low: int = 1, high: int | None = None, accepted: str = "a whole number >= 1") -> None:
    v = getattr(cfg, name)
    need(isinstance(v, int) and not isinstance(v, bool) and v >= low and (high is None or v <= high), name, v, accepted)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


NUMBER_RULES = {  # setting -> (rule, what is accepted), for the numbers no default depends on
    "epochs": (lambda v: v > 0, "a number > 0"),
    "lr": (lambda v: v > 0, "a number > 0"),
    "momentum": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "weight_decay": (lambda v: v >= 0, "a number >= 0"),
    "warmup_epochs": (lambda v: v >= 0, "a number >= 0"),
    "clip_grad_norm": (lambda v: v >= 0, "a number >= 0"),
    "checkpoint_every": (lambda v: v > 0, "a number of epochs > 0"),
    "stall_timeout": (lambda v: v > 0, "seconds > 0"),
    "lr_gamma": (lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "target_accuracy": (lambda v: 0 < v <= 1, "a fraction in (0, 1], e.g. 0.9"),
}


def check_numbers(cfg) -> None:
    """The plain numbers (NUMBER_RULES, lr_steps, seed, and workers when given), those left unset
    skipped. The CLI calls it on the user's values before it imports torch (1.4 s on 2 cores), so a
    bad number is refused at once; resolve() calls it on every value once the defaults are in."""
    for name, (rule, accepted) in NUMBER_RULES.items():
        v = getattr(cfg, name)
        if v is not None:
            need(_number(v) and rule(v), name, v, accepted)
    need(all(_number(s) and 0 < s < 1 for s in cfg.lr_steps), "lr_steps", cfg.lr_steps,
         "comma-separated fractions of the run in (0, 1), e.g. 0.5,0.75")
    _whole(cfg, "seed", low=0, accepted="a whole number >= 0")
    if cfg.workers is not None:
        _whole(cfg, "workers")


def resolve(cfg: RunConfig) -> RunConfig:
    """Every default applied and every value checked, once; returns the resolved config. Raises ConfigError."""
    need(cfg.algorithm in ALGORITHMS, "algorithm", cfg.algorithm, ", ".join(ALGORITHMS))
    algo = ALGORITHMS[cfg.algorithm]
    if cfg.workers is None and algo.default_workers is not None:
        workers, why = algo.default_workers(cfg)
        cfg = cfg.replace(workers=workers, workers_from=why)
    resolved = {**SHARED_DEFAULTS, **algo.defaults}
    # A default may depend on the layout (pdasgd's queue, staleness, clip and lr): then it is a function
    # of the config, called with the workers decided above and every default before it in this order
    # applied: the thread counts, then the queue, then the rest.
    order = [k for k in LAYOUT_FIRST if k in resolved] + [k for k in resolved if k not in LAYOUT_FIRST]
    for k in order:
        if getattr(cfg, k) is None:
            v = resolved[k]
            cfg = cfg.replace(**{k: v(cfg) if callable(v) else v})
    for name in ("workers", "batch_size", "eval_points", "forward_threads", "backward_threads",
                 "groups", "workers_per_group", "average_every", "send_every"):
        _whole(cfg, name)
    need(cfg.workers <= 256, "workers", cfg.workers, "1 to 256 real workers (use --runtime sim for more)")
    for name, high in LIMITS.items():  # sizes that allocate threads, memory or time: refused before anything runs
        v = getattr(cfg, name)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v > high:
            need(False, name, v, f"at most {high:g} ({LIMITS_WHY[name]})")
    check_numbers(cfg)
    for name in ("num_samples", "threads_per_worker"):
        if getattr(cfg, name) is not None:
            _whole(cfg, name)
    if cfg.queue_size is not None:
        _whole(cfg, "queue_size", low=0,
               accepted="a whole number >= 0 (0: the next forward waits until the last backward has finished)")
    if cfg.sim_workers is not None:
        _whole(cfg, "sim_workers", high=65536, accepted="a whole number from 1 to 65536")
    for name in ("sim_forward_s", "sim_backward_s"):
        v = getattr(cfg, name)
        if v is not None:
            need(_number(v) and v > 0, name, v, "seconds > 0 per batch, e.g. 0.002 (or unset: from --sim-times)")
    need(cfg.sim_times in SIM_TIMES, "sim_times", cfg.sim_times, ", ".join(SIM_TIMES))
    need(_number(cfg.sim_device_flops) and cfg.sim_device_flops > 0, "sim_device_flops", cfg.sim_device_flops,
         "FLOP/s > 0, e.g. 1e10")
    for name in ("out", "resume", "data_dir", "model"):  # '' would silently mean the default
        need(getattr(cfg, name) != "", name, "", "a non-empty value (or leave it unset)")
    if cfg.overwrite and not cfg.out:  # the default run directory is always new: nothing to replace
        raise ConfigError("--overwrite is not accepted without --out; accepted with: --out DIR")
    need(cfg.schedule in SCHEDULES, "schedule", cfg.schedule, ", ".join(SCHEDULES))
    need(cfg.lr_scaling in ("linear", "none"), "lr_scaling", cfg.lr_scaling, "linear, none")
    need(cfg.device in DEVICES, "device", cfg.device, ", ".join(DEVICES))
    need(cfg.progress in PROGRESS, "progress", cfg.progress, ", ".join(PROGRESS))
    need(cfg.updates in UPDATES, "updates", cfg.updates, ", ".join(UPDATES))
    need(cfg.backward_weights in BACKWARD_WEIGHTS, "backward_weights", cfg.backward_weights, ", ".join(BACKWARD_WEIGHTS))
    need(cfg.runtime in RUNTIMES, "runtime", cfg.runtime, ", ".join(RUNTIMES))
    need(cfg.fb_ratio in (None, "auto"), "fb_ratio", cfg.fb_ratio, "auto (or leave unset and give the thread counts)")
    straggler = cfg.parsed.straggler  # parses every structured setting once (ConfigError on a bad one)
    if straggler is not None:
        if cfg.runtime == "sim":
            n = algo.sim_layout(cfg)[1]  # simulated processes (lpap: groups)
        else:
            n = algo.processes(cfg)
        need(straggler.worker < max(n, 1), "straggler", cfg.straggler, f"worker=W with W < the {n} worker(s) of this run")
    if cfg.tensorboard:
        import importlib.util
        if importlib.util.find_spec("tensorboard") is None:
            raise ConfigError("--tensorboard needs the tensorboard package, which is not installed; accepted: "
                              "--tensorboard after `pip install tensorboard` (or `pip install -e \".[tensorboard]\"`)")
    if cfg.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            raise ConfigError("--device 'cuda' is not accepted: no CUDA device is visible; accepted: cpu, auto")
    if algo.check is not None:
        cfg = algo.check(cfg)
    return cfg


def replayable(cfg: RunConfig) -> dict:
    """The resolved settings a run's config.toml holds: every setting this algorithm and runtime
    use (the others would be rejected as unused by `--config`), without the run's own directory."""
    out = {}
    for name, value in cfg.to_dict().items():
        if value is None or name in ("out", "resume", "overwrite") or name in DERIVED:
            continue
        users = users_of(name)
        if (users and cfg.algorithm not in users) or (name in SIM_OPTIONS and cfg.runtime != "sim") or (
                name in REAL_OPTIONS and cfg.runtime == "sim"):
            continue
        if name == "workers" and (ignores_workers(cfg.algorithm) or (cfg.runtime == "sim" and cfg.sim_workers)):
            continue  # not what decides the process count here (check_options refuses a different one)
        if name == "average_every" and cfg.algorithm == "pdasgd" and cfg.sharing != "average":
            continue  # used only with replicas
        if name == "nesterov" and not cfg.momentum:
            continue  # nothing without momentum (check_options refuses --nesterov with --momentum 0)
        if name == "backward_threads" and cfg.fb_ratio == "auto":
            continue  # chosen at run time by --fb-ratio auto (check_options refuses both given)
        out[name] = value
    return out


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(str(v))  # a TOML basic string: JSON's escapes are TOML's


def write_config_toml(cfg: RunConfig, path) -> None:
    """config.toml in the run directory: `asyncsgd train --config DIR/config.toml` runs the same settings."""
    lines = ["# asyncsgd run settings: asyncsgd train --config this-file (flags given there override it)"]
    lines += [f"{name} = {_toml_value(value)}" for name, value in replayable(cfg).items()]
    Path(path).write_text("\n".join(lines) + "\n")
