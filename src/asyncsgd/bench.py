"""`asyncsgd bench`: run algorithms side by side on one task and write results.json + report.md.

Every listed algorithm (default: all of asyncsgd.algorithms.ALGORITHMS) trains the same task with
the same seeds and the same total sample budget (--epochs counts samples by all workers together).
Runs are interleaved, repeat by repeat and scenario by scenario (A B C A B C ...), so drift of
the machine (heat, other load) hits every algorithm alike. Each run is an ordinary
asyncsgd.runner.run(RunConfig(...)) with its own run directory DIR/runs/<scenario>/<algo>-r<i>/.
Repeat i uses seed --seed + i for every algorithm. Before the first run the bench measures the
machine's dense-matmul peak (mfu.measure_peak_flops) and counts the model's FLOPs per sample
(mfu.flops_per_sample) for MFU. The tables and plots come from asyncsgd.report.

A suite is a small declarative dict below; its "settings" apply to every algorithm (settings an
algorithm does not use, e.g. lpap's groups, are ignored by the others). A suite with "variants"
runs those labelled configurations (label -> {"algorithm": name, settings...}) instead of one run
per algorithm, e.g. one algorithm in several layouts; --algos then picks variants by label or by
algorithm. A variant's value WORKERS stands for the suite's worker count (lpap's groups follow
`--set workers=N`); a variant marked "if_registered" runs only where its algorithm is registered
(the cluster suite's layup); "notes" (label -> text) are printed next to that label's results.
`--dry-run` prints every run as its `asyncsgd train` command and runs nothing.
Method and commands: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path

from .config import check_types
from .errors import AsyncSGDError, ConfigError, DataError, DivergedError

MAX_REPEATS = 1000  # run_order lists every run up front: a typo of 1e9 repeats would hang, not run
WORKERS = "$workers"  # a variant's value that is the suite's worker count (after --set workers=N)
FLOOR = "no exchange (floor)"  # the cluster suite's replicas that never send an update

# task / model / workers / epochs / target / repeats: shared by every scenario of the suite;
# settings: RunConfig fields for every run; scenarios: name -> extra settings of that scenario.
SUITES: dict[str, dict] = {
    "quick": {
        "about": "mnist1d, 2 workers, no delays: every algorithm once, a few minutes on 2 CPU cores",
        "task": "mnist1d", "model": None, "workers": 2, "epochs": 10.0, "target_accuracy": 0.90, "repeats": 1,
        "settings": {"device": "cpu", "groups": 2, "workers_per_group": 1},
        # pdasgd at its default layout (on a CPU a process per core, 1F:1B taking turns)
        "per_algorithm": {"pdasgd": {"workers": None}},
        "scenarios": {"quick": {}},
    },
    "delays": {
        "about": "mnist1d, 4 workers, one worker 4x slower and 20 ms on every message (PD-ASGD paper's delay "
                 "experiments), next to the same run without delays",
        "task": "mnist1d", "model": None, "workers": 4, "epochs": 20.0, "target_accuracy": 0.90, "repeats": 3,
        # lpap as the paper runs it, Hogwild! inside each device: 2 groups x 2 workers (4 groups of 1
        # average 4 replicas, which per sample learns like sync without its lr scaling: 1.8x sync
        # under delays, against 3.4x for 2 x 2); pdasgd at its default layout, what a user gets
        # (on a CPU a process per core, 1F:1B taking turns; 2 x 1F:2B until 2026-12-06)
        "settings": {"device": "cpu", "groups": 2, "workers_per_group": 2},
        "per_algorithm": {"pdasgd": {"workers": None}},
        "scenarios": {"no-delay": {},
                      "straggler-latency": {"straggler": "worker=1,slowdown=4", "delay": "latency=20ms"}},
    },
    "images": {
        "about": "MNIST test-set images (--data-dir: the t10k IDX files), seeded 8,000/2,000 split, 2-D CNN",
        "task": "mnist10k", "model": None, "workers": 2, "epochs": 3.0, "target_accuracy": 0.95, "repeats": 1,
        "settings": {"device": "cpu", "groups": 2, "workers_per_group": 1},
        "per_algorithm": {"pdasgd": {"workers": None}},  # its default layout
        "scenarios": {"mnist10k": {}},
    },
    "paper": {
        "about": "ResNet-18 on CIFAR-10 (--data-dir), 4 workers on one GPU: the paper-scale comparison",
        "task": "cifar10", "model": "resnet18", "workers": 4, "epochs": 30.0, "target_accuracy": 0.80, "repeats": 3,
        "settings": {"device": "cuda", "batch_size": 128, "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4,
                     "warmup_epochs": 1.0, "eval_points": 30, "groups": 2, "workers_per_group": 2},
        "scenarios": {"cifar10-resnet18": {}},
    },
    "speed": {
        "about": "mnist1d/cnn1d on the CPU: samples/s and time to 0.95 of sequential, Hogwild! (2 processes) "
                 "and PD-ASGD's CPU layouts (processes x forward:backward threads)",
        "task": "mnist1d", "model": "cnn1d", "workers": 1, "epochs": 10.0, "target_accuracy": 0.95, "repeats": 3,
        "settings": {"device": "cpu"},
        "variants": {
            "sequential": {"algorithm": "sequential"},
            "sequential threads=1": {"algorithm": "sequential", "threads_per_worker": 1},
            # the samples/s reference at its fastest: without its default clip (a norm per step,
            # 4% of its samples/s)
            "hogwild": {"algorithm": "hogwild", "workers": 2, "clip_grad_norm": 0.0},
            # the speed issue's bar names the command `--algo hogwild --workers 2`: at its defaults
            # (clipped at norm 2); the report's "vs hogwild" stays against the faster row above
            "hogwild (default)": {"algorithm": "hogwild", "workers": 2},
            "pdasgd (default)": {"algorithm": "pdasgd", "workers": None},  # its default layout (rules.auto_processes)
            "pdasgd 1x1F:2B": {"algorithm": "pdasgd", "workers": 1, "forward_threads": 1, "backward_threads": 2},
            "pdasgd 1x1F:1B": {"algorithm": "pdasgd", "workers": 1, "forward_threads": 1, "backward_threads": 1},
            "pdasgd 1x1F:1B threads=1": {"algorithm": "pdasgd", "workers": 1, "forward_threads": 1,
                                         "backward_threads": 1, "threads_per_worker": 1},
            "pdasgd 2x1F:1B": {"algorithm": "pdasgd", "workers": 2, "forward_threads": 1, "backward_threads": 1},
            "pdasgd 2x1F:2B": {"algorithm": "pdasgd", "workers": 2, "forward_threads": 1, "backward_threads": 2},
        },
        "scenarios": {"speed": {}},
    },
    "seeds": {
        "about": "mnist1d, 10 epochs, every algorithm at its defaults over many seeds (interleaved: seed by seed): "
                 "min / median / max final accuracy and collapses, next to sequential's, and pdasgd's thread layouts",
        "task": "mnist1d", "model": None, "workers": 4, "epochs": 10.0, "target_accuracy": 0.90, "repeats": 10,
        "settings": {"device": "cpu"},
        "per_algorithm": {"pdasgd": {"workers": 1}},  # the thread layouts: one process each
        "variants": {
            "sequential": {"algorithm": "sequential"},
            "pdasgd (default)": {"algorithm": "pdasgd", "workers": None},  # its default layout (rules.auto_processes)
            "pdasgd 1x1F:2B": {"algorithm": "pdasgd"},
            "pdasgd 1F:1B": {"algorithm": "pdasgd", "forward_threads": 1, "backward_threads": 1},
            "pdasgd 2F:2B": {"algorithm": "pdasgd", "forward_threads": 2, "backward_threads": 2},
            "pdasgd 1F:4B": {"algorithm": "pdasgd", "forward_threads": 1, "backward_threads": 4},
            "pdasgd 2x1F:1B": {"algorithm": "pdasgd", "workers": 2, "forward_threads": 1, "backward_threads": 1},
            "pdasgd 2x1F:2B": {"algorithm": "pdasgd", "workers": 2, "forward_threads": 1, "backward_threads": 2},
            "hogwild": {"algorithm": "hogwild", "workers": WORKERS},
            "dasgd": {"algorithm": "dasgd", "workers": WORKERS},
            "lpap 2x2": {"algorithm": "lpap", "groups": 2, "workers_per_group": 2},
        },
        "scenarios": {"no-delay": {}},
    },
    "cluster": {
        "about": "mnist1d, N devices (processes, default 4) that share no memory, cores/N torch threads each: "
                 "the algorithms that run across devices, without and with 20 ms per message and a 4x straggler; "
                 "hogwild only as the single-device reference",
        "task": "mnist1d", "model": None, "workers": 4, "epochs": 20.0, "target_accuracy": 0.90, "repeats": 3,
        # threads_per_worker unset: every process gets cores / processes torch threads (engine.set_threads)
        "settings": {"device": "cpu"},
        "variants": {
            "sync": {"algorithm": "sync"},
            "ddp": {"algorithm": "ddp"},
            # one group per device (Hogwild! inside a group: one worker thread on its cores/N threads)
            "lpap": {"algorithm": "lpap", "groups": WORKERS, "workers_per_group": 1},
            "pdasgd sharing=average": {"algorithm": "pdasgd", "sharing": "average"},
            "dasgd": {"algorithm": "dasgd"},
            "layup": {"algorithm": "layup", "if_registered": True},
            # replicas that exchange nothing: in straggler-latency they reached 0.90 sooner than dasgd
            # (6.4x sync against 4.4x, interleaved: docs/benchmarks.md, "A floor"), so every ratio
            # here reads against this row
            FLOOR: {"algorithm": "dasgd", "topology": "none"},
            "hogwild (single-device reference)": {"algorithm": "hogwild"},
        },
        "notes": {"hogwild (single-device reference)": "single-device reference, not a cluster algorithm: its N "
                  "processes update one model in this machine's shared memory, so --delay never touches it",
                  FLOOR: "the floor, not a cluster algorithm: dasgd's replicas with --topology none train alone and "
                  "exchange nothing; what an algorithm's messages are worth is what it gains over this row"},
        "scenarios": {"no-delay": {}, "latency": {"delay": "latency=20ms"},
                      "straggler-latency": {"straggler": "worker=1,slowdown=4", "delay": "latency=20ms"}},
    },
}

# Settings the bench owns: a --set of these would break the comparison or the run layout.
_BENCH_OWNED = {"algorithm", "out", "resume", "seed", "progress", "target_accuracy", "epochs"}


def add_arguments(parser) -> None:
    from .cli import FLOAT, INT  # argparse types whose errors name the value and what is accepted

    parser.add_argument("--suite", default="quick", help=f"which suite: {', '.join(SUITES)} (default quick)")
    parser.add_argument("--algos", "--algorithms", dest="algos", default=None,
                        help="comma-separated algorithms or variant labels (default: every registered algorithm, see `asyncsgd algorithms`; the speed, seeds and cluster suites: their own labelled variants)")
    parser.add_argument("--repeats", type=INT, default=None, help="runs of each algorithm (default: the suite's)")
    parser.add_argument("--out", default=None, help="output directory (default runs/bench-<suite>-<timestamp>); "
                                                    "must be new or empty")
    parser.add_argument("--peak-flops", type=FLOAT, default=None,
                        help="peak FLOP/s for MFU instead of the measured matmul peak, e.g. 9.9e14")
    parser.add_argument("--data-dir", default=None, help="dataset directory (the paper suite's CIFAR-10)")
    parser.add_argument("--epochs", type=FLOAT, default=None, help="epochs of every run (default: the suite's)")
    parser.add_argument("--target-accuracy", type=FLOAT, default=None,
                        help="test accuracy that time-to-target measures (default: the suite's)")
    parser.add_argument("--device", default=None, help="cpu, cuda or auto (default: the suite's)")
    parser.add_argument("--seed", type=INT, default=0, help="seed of repeat 0; repeat i uses seed+i (default 0)")
    parser.add_argument("--scenarios", default=None, help="comma-separated scenarios of the suite to run (default all)")
    parser.add_argument("--eval-points", type=INT, default=None,
                        help="parameter snapshots evaluated per run (default: the suite's, else 40)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="any other run setting for every run, e.g. --set batch_size=64 (repeatable)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print every run (in the order it would run) as its asyncsgd train command, run nothing")
    parser.add_argument("--peak-seconds", type=float, default=1.0, help=argparse.SUPPRESS)  # tests: a shorter peak measurement


def _fail(flag: str, value, accepted: str):
    raise ConfigError(f"{flag} {value!r} is not accepted; accepted: {accepted}")


def _parse_value(text: str):
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def plan(args) -> dict:
    """Everything the bench will run, checked before the first run (bad input: ConfigError)."""
    from .algorithms.registry import ALGORITHMS, users_of
    from .config import FIELD_NAMES

    if args.suite not in SUITES:
        _fail("--suite", args.suite, ", ".join(SUITES))
    suite = {"name": args.suite, **json.loads(json.dumps(SUITES[args.suite]))}  # a deep copy
    variants = suite.get("variants")
    if variants:  # a variant of an algorithm not registered (yet) is left out, where the suite allows it
        suite["variants"] = variants = {label: {k: v for k, v in vs.items() if k != "if_registered"}
                                        for label, vs in variants.items()
                                        if vs["algorithm"] in ALGORITHMS or not vs.get("if_registered")}
    if variants:  # labelled configurations: --algos picks them by label or by algorithm
        algos = list(variants)
        if args.algos is not None:
            algos = []
            for name in (a.strip() for a in args.algos.split(",")):
                chosen = [v for v, vs in variants.items() if name in (v, vs["algorithm"])]
                if not chosen:
                    _fail("--algos", name if name else args.algos,
                          "a variant of this suite (" + ", ".join(variants) + ") or its algorithm")
                algos += [v for v in chosen if v not in algos]
    elif args.algos is None:
        algos = list(ALGORITHMS)
    else:
        algos = []
        for name in (a.strip() for a in args.algos.split(",")):
            if name not in ALGORITHMS:
                _fail("--algos", name if name else args.algos, ", ".join(ALGORITHMS))
            if name not in algos:
                algos.append(name)
    repeats = suite["repeats"] if args.repeats is None else args.repeats
    if not isinstance(repeats, int) or not 1 <= repeats <= MAX_REPEATS:
        _fail("--repeats", repeats, f"a whole number from 1 to {MAX_REPEATS}")
    if args.epochs is not None:
        if not args.epochs > 0:
            _fail("--epochs", args.epochs, "a number > 0")
        suite["epochs"] = args.epochs
    if args.target_accuracy is not None:
        if not 0 < args.target_accuracy <= 1:
            _fail("--target-accuracy", args.target_accuracy, "a fraction in (0, 1], e.g. 0.9")
        suite["target_accuracy"] = args.target_accuracy
    if args.peak_flops is not None and not 0 < args.peak_flops < math.inf:
        _fail("--peak-flops", args.peak_flops, "a finite number of FLOP/s > 0, e.g. 1.5e11")
    if not 0 <= args.seed <= 2 ** 62:
        _fail("--seed", args.seed, "a whole number from 0 to 2**62 (as train takes)")
    settings = suite["settings"]
    if args.device is not None:
        settings["device"] = args.device
    if args.data_dir is not None:
        settings["data_dir"] = args.data_dir
    if args.eval_points is not None:
        settings["eval_points"] = args.eval_points
    for item in args.overrides:
        key, eq, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or key not in FIELD_NAMES or key in _BENCH_OWNED:
            _fail("--set", item, "KEY=VALUE with KEY a run setting other than "
                  f"{', '.join(sorted(_BENCH_OWNED))} (e.g. batch_size=64)")
        if key == "lr_steps":  # "0.5,0.75", as train's --lr-steps takes it
            try:
                value = tuple(float(s) for s in value.split(","))
            except ValueError:
                _fail("--set", item, "lr_steps=F1,F2,... (fractions of the run, e.g. 0.5,0.75)")
        else:
            value = _parse_value(value)
        try:
            value = check_types({key: value})[key]  # the types train takes: nesterov=yes is text, not a switch
        except ConfigError as e:
            raise ConfigError(f"--set {item!r}: {e}") from None
        if key in ("task", "model", "workers"):  # the suite's own fields: the report names them
            suite[key] = value
        else:
            settings[key] = value
    if args.scenarios is not None:
        wanted = [s.strip() for s in args.scenarios.split(",")]
        for s in wanted:
            if s not in suite["scenarios"]:
                _fail("--scenarios", s, ", ".join(suite["scenarios"]))
        suite["scenarios"] = {s: suite["scenarios"][s] for s in wanted}
    from .records import file_in_the_way
    from .tasks import check_task_name
    from .tasks.models import check_model_name

    check_task_name(suite["task"])  # before any run: a --dry-run must not print runs that train refuses
    if suite.get("model") is not None:
        check_model_name(suite["model"])
    if args.out is not None and not args.out.strip():
        _fail("--out", args.out, "a directory path")
    out = Path(args.out) if args.out else Path("runs") / f"bench-{args.suite}-{time.strftime('%Y%m%d-%H%M%S')}"
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        _fail("--out", str(out), "a new or empty directory (this one already holds files)")
    blocker = file_in_the_way(out)
    if blocker is not None:
        _fail("--out", str(out), f"a directory path ({blocker} is a file)")
    configs, adjustments = {}, {}
    for scenario, extra in suite["scenarios"].items():
        for algo in algos:
            cfg, note = _config(suite, scenario, extra, algo, args.seed)
            if note:
                adjustments.setdefault(scenario, {})[algo] = note
            configs[(scenario, algo)] = cfg
    for item in args.overrides:  # a --set that no run takes would be accepted and ignored
        key = item.partition("=")[0].strip().replace("-", "_")
        users = users_of(key)
        if users and not any(configs[(sc, a)].algorithm in users for sc, a in configs):
            _fail("--set", item, f"a setting one of this bench's algorithms uses ({key} is used by "
                  f"{', '.join(users)}; the bench runs {', '.join(algos)})")
    suite.update(repeats=repeats, seed=args.seed, algorithms=algos)
    return {"suite": suite, "algos": algos, "repeats": repeats, "out": out, "configs": configs,
            "adjustments": adjustments}


def _config(suite: dict, scenario: str, extra: dict, label: str, seed: int):
    """The RunConfig of one algorithm (or variant: label) in one scenario (repeat 0), validated;
    plus a note if adjusted."""
    from .algorithms.registry import ALGORITHMS
    from .config import RunConfig
    from .settings import resolve

    from .algorithms.registry import users_of
    from .settings import ignores_workers

    variant = {k: suite["workers"] if v == WORKERS else v
               for k, v in (suite.get("variants", {}).get(label) or {"algorithm": label}).items()}
    algo = variant.pop("algorithm")
    # The suite's and --set's settings go to the algorithms that use them, as `train` would take
    # them: a setting another algorithm uses (lpap's --groups, dasgd's --send-every) and --workers
    # where the process count does not follow it (sequential, lpap) stay at their defaults, so
    # every run's printed command is one `asyncsgd train` accepts (plan() refuses a --set no
    # algorithm of the bench uses)
    shared = {k: v for k, v in {"workers": suite["workers"], **suite["settings"], **extra}.items()
              if (not users_of(k) or algo in users_of(k)) and not (k == "workers" and ignores_workers(algo))}
    values = {"task": suite["task"], "model": suite.get("model"),
              "epochs": float(suite["epochs"]), "target_accuracy": suite["target_accuracy"], **shared,
              **suite.get("per_algorithm", {}).get(algo, {}), **variant, "algorithm": algo, "seed": seed,
              "progress": "none"}
    note = None
    try:
        cfg = RunConfig(**values)
        straggler = cfg.parsed.straggler
        # the processes of the layout the run will get (a default layout is chosen in resolve)
        n = ALGORITHMS[algo].processes(resolve(cfg.replace(straggler=None)))
        if straggler is not None and straggler.worker >= n:
            cfg = cfg.replace(straggler=None)
            note = f"no straggler: it runs {n} process(es), so worker {straggler.worker} does not exist"
        resolve(cfg)
    except (ConfigError, DataError) as e:
        raise type(e)(f"suite {suite['name']!r} scenario {scenario!r} algorithm {label!r}: {e}") from None
    except TypeError as e:  # an unknown setting in a suite definition
        raise ConfigError(f"scenario {scenario!r}: {e}; accepted: RunConfig fields") from None
    return cfg, note


def run_order(p: dict) -> list:
    """[(repeat, scenario, label, RunConfig)] in the order the bench runs them: interleaved, repeat by
    repeat, scenario by scenario, label by label; repeat r has seed --seed + r and its own directory."""
    order = []
    for r in range(p["repeats"]):
        for scenario in p["suite"]["scenarios"]:
            for label in p["algos"]:
                cfg = p["configs"][(scenario, label)]
                run_dir = p["out"] / "runs" / scenario / f"{_slug(label)}-r{r}"
                order.append((r, scenario, label, cfg.replace(seed=cfg.seed + r, out=str(run_dir))))
    return order


def train_command(cfg) -> str:
    """The `asyncsgd train` command line of one run: --algo, then every setting that is not
    RunConfig's default."""
    import dataclasses

    from .config import DERIVED, RunConfig, flag

    args = ["asyncsgd", "train"]
    for f in dataclasses.fields(RunConfig):
        value = getattr(cfg, f.name)
        if f.name in DERIVED or (value == f.default and f.name != "algorithm"):  # the CLI's default algorithm is not RunConfig's
            continue
        if value is True:
            args.append(flag(f.name))
        elif value is False:  # a default of True turned off (--no-nesterov); a False default is skipped above
            args.append("--no-" + flag(f.name).removeprefix("--"))
        else:
            args += [flag(f.name), ",".join(map(_text, value)) if isinstance(value, tuple) else _text(value)]
    return shlex.join(args)


def _text(value) -> str:
    """A setting as the CLI reads it back exactly: 20.0 -> 20, 0.05 -> 0.05."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return repr(value) if isinstance(value, float) else str(value)


def machine_info(device: str) -> dict:
    import torch

    from . import __version__
    from .records import device_name

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "torch_version": torch.__version__, "asyncsgd_version": __version__,
            "device": device_name(device), "torch_threads": torch.get_num_threads()}
    if hasattr(os, "sched_getaffinity"):
        info["usable_cores"] = len(os.sched_getaffinity(0))
    if hasattr(os, "getloadavg"):
        info["load_avg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    return info


def bench(suite: str = "quick", **options) -> dict:
    """Python entry point: asyncsgd.bench.bench("quick", algos="sync,hogwild", repeats=3) -> results dict.

    Keyword names are the flags with '_' for '-'; a list is accepted for algos and scenarios.
    """
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--suite", suite])
    for key, value in options.items():
        if not hasattr(args, key) or key == "suite":
            raise ConfigError(f"bench(): unknown option {key!r}; accepted: "
                              f"{', '.join(k for k in vars(args) if k != 'suite')}")
        if key in ("algos", "scenarios") and isinstance(value, (list, tuple)):
            value = ",".join(value)
        setattr(args, key, value)
    results, _ = execute(args)
    return results


def main(args) -> int:
    if args.dry_run:
        p = plan(args)
        for r, scenario, label, cfg in run_order(p):
            print(f"# {scenario} / {label} / repeat {r}\n{train_command(cfg)}")
        return 0
    results, runs = execute(args)
    suite = results["suite"]
    for name, sc in results["scenarios"].items():
        w = sc.get("winner")
        if w and w["by"] == "time_to_target_s":
            vs = ", ".join(f"{w[f'ratio_vs_{ref}']:.2f}x vs {ref}" for ref in ("sync", "hogwild")
                           if w.get(f"ratio_vs_{ref}") is not None and w["algorithm"] != ref)
            print(f"{name}: fastest to {suite['target_accuracy']:g}: {w['algorithm']} ({w['value']:.2f} s"
                  + (f"; {vs}" if vs else "") + ")")
        elif w:
            print(f"{name}: target not reached; best final accuracy {w['algorithm']} ({w['value']:.4f})")
    out = Path(results["out_dir"])
    print(f"bench: {out / 'report.md'}, {out / 'results.json'} ({len(runs)} runs in {results['bench_elapsed_s']:.0f} s)")
    failed = [r for r in runs if r.status == "error"]
    if failed:
        print(f"asyncsgd: {len(failed)} run(s) failed: " + "; ".join(f"{r.scenario}/{r.label}-r{r.repeat}: {r.error}"
                                                                    for r in failed), file=sys.stderr)
        return 1
    return 0


def execute(args) -> tuple[dict, list]:
    """Plan, measure, run every run interleaved, write the report; returns (results, runs)."""
    from . import mfu
    from .report import Run, build_results, render
    from .launch.local import resolve_device
    from .runner import run
    from .tasks import get_task

    p = plan(args)
    suite, out = p["suite"], p["out"]
    first_cfg = next(iter(p["configs"].values()))
    device = resolve_device(first_cfg)
    t_bench = time.perf_counter()
    # Build every scenario's task first: missing data fails here, before any output or measurement.
    scenario_info = {}
    for scenario in suite["scenarios"]:
        cfg = p["configs"][(scenario, p["algos"][0])]
        task = get_task(cfg.task, model=cfg.model, data_dir=cfg.data_dir, seed=cfg.seed, num_samples=cfg.num_samples)
        scenario_info[scenario] = {"settings": {**suite["settings"], **suite["scenarios"][scenario]},
                                   "flops_per_sample": mfu.flops_per_sample(task, cfg.batch_size)}
        if p["adjustments"].get(scenario):
            scenario_info[scenario]["adjustments"] = p["adjustments"][scenario]
        notes = {label: text for label, text in suite.get("notes", {}).items() if label in p["algos"]}
        if notes:
            scenario_info[scenario]["notes"] = notes
    flops = {s: i["flops_per_sample"] for s, i in scenario_info.items()}
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--out {str(out)!r} could not be made ({e.strerror}); accepted: a directory path "
                          "this user can write") from None
    machine = machine_info(device)
    if args.peak_flops is not None:
        peak = {"flops": args.peak_flops, "source": "given (--peak-flops)", "method": "given by the user"}
    else:
        _say(f"measuring peak FLOP/s on {device} ({args.peak_seconds:g} s of dense matmuls)")
        peak = {**mfu.measure_peak_flops(device, seconds=args.peak_seconds), "source": "measured"}
        peak["flops"] = round(peak["flops"])
        if device.startswith("cuda"):
            import torch
            bf16 = mfu.measure_peak_flops(device, seconds=args.peak_seconds, dtype=torch.bfloat16)
            machine["peak_flops_bf16"] = round(bf16["flops"])
    machine["peak_flops"] = peak
    argv = sys.argv[1:]
    suite["command"] = "asyncsgd " + " ".join(shlex.quote(a) for a in argv) if argv[:1] == ["bench"] else None
    order = run_order(p)
    runs: list[Run] = []

    def write(complete: bool, plots: bool):
        results = build_results(runs, target=suite["target_accuracy"], peak=peak, flops=flops, machine=machine,
                                suite=suite, scenario_info=scenario_info, base_dir=out)
        results["complete"] = complete
        results["out_dir"] = str(out)
        results["bench_elapsed_s"] = round(time.perf_counter() - t_bench, 2)
        if hasattr(os, "getloadavg"):
            machine["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
        if plots:
            render(results, runs, out, title=f"asyncsgd bench: {suite['name']} suite")
        else:
            (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        return results

    try:
        for i, (r, scenario, algo, cfg) in enumerate(order):
            run_dir = Path(cfg.out)
            _say(f"[{i + 1}/{len(order)}] {scenario} / {algo} repeat {r} (seed {cfg.seed}) -> {run_dir}")
            started = time.strftime("%Y-%m-%dT%H:%M:%S")
            t = time.perf_counter()
            status, error, summary = "ok", None, None
            try:
                summary = run(cfg)
            except (ConfigError, DataError):
                raise
            except DivergedError as e:
                status, error = "diverged", str(e).splitlines()[0]
            except (AsyncSGDError, Exception) as e:  # a failing algorithm must not stop the others
                status, error = "error", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            elapsed = time.perf_counter() - t
            run_obj = Run(dir=run_dir, summary=summary, metrics=[], scenario=scenario, label=algo, repeat=r,
                          status=status, error=error,
                          extra={"seed": cfg.seed, "started_at": started, "elapsed_s": round(elapsed, 2)})
            if status == "ok":
                from .report import load_run
                run_obj.metrics = load_run(run_dir).metrics
                t2t = summary.get("time_to_target_s")
                _say(f"    done in {elapsed:.1f} s: training {summary['wall_time_s']:.2f} s, "
                     f"time to {suite['target_accuracy']:g} {'not reached' if t2t is None else f'{t2t:.2f} s'}, "
                     f"accuracy {summary.get('final_test_accuracy') or 0:.4f}, {summary['samples_per_s']:,.0f} samples/s")
            else:
                _say(f"    {status} after {elapsed:.1f} s: {error}")
            runs.append(run_obj)
            write(complete=False, plots=False)
    except KeyboardInterrupt:
        if runs:
            write(complete=False, plots=True)
            _say(f"interrupted: partial results of {len(runs)} run(s) in {out}")
        raise
    results = write(complete=True, plots=True)
    return results, runs


def _slug(label: str) -> str:
    """A variant's label as a directory name: "pdasgd 2x1F:1B" -> "pdasgd-2x1F-1B"."""
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in label)


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
