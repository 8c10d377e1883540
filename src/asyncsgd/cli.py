"""The command line: `asyncsgd train | algorithms | ...`.

Parses, checks the given settings (settings.check_options; settings.resolve does the rest), calls the API, and maps errors to exit codes:
0 done; 2 bad input (one line on stderr, no traceback); 3 diverged; 1 anything else;
130 interrupted (Ctrl-C; the last checkpoint is kept and --resume continues from it); 141 its
output's reader left (a closed pipe: 128 + SIGPIPE, as a shell reports a writer SIGPIPE stopped).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import terminal
from .config import FIELD_NAMES, RunConfig, check_types, load_toml
from .errors import AsyncSGDError, ConfigError


class _Parser(argparse.ArgumentParser):
    """argparse, but bad input is a one-line error with exit code 2 and no usage dump."""

    def error(self, message):
        if message.startswith("unrecognized arguments"):
            message += f"; accepted: the flags listed by `{self.prog} --help`"
        elif message.startswith("argument command: invalid choice"):
            message += "; see `asyncsgd --help`"
        elif "ignored explicit argument" in message:  # --nesterov=yes: a switch takes no value
            message += "; accepted: the switch alone (e.g. --nesterov or --no-nesterov), without a value"
        raise ConfigError(message)


def _typed(kind, accepted: str):
    """An argparse type whose error names the value and what is accepted."""
    def convert(text: str):
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not accepted; accepted: {accepted}") from None
    convert.__name__ = kind.__name__
    return convert


INT = _typed(int, "a whole number")
FLOAT = _typed(float, "a number")


def _add_train_flags(p: argparse.ArgumentParser) -> None:
    from .algorithms.registry import default_algorithm
    from .settings import default_text as D  # each default is written once: RunConfig, SHARED_DEFAULTS, a spec

    S = argparse.SUPPRESS
    p.add_argument("--algo", "--algorithm", dest="algorithm", default=S,
                   help=f"algorithm name (see `asyncsgd algorithms`; default {default_algorithm()})")
    p.add_argument("--task", default=S, help=f"mnist1d, mnist, mnist10k, cifar10, cifar100, logreg, quadratic, npz:PATH ({D('task')})")
    p.add_argument("--model", default=S, help="model name; default follows the task (cnn1d, cnn2d, mlp, linear, resnet18, resnet20)")
    p.add_argument("--data-dir", default=S, help="where mnist/cifar files are (or are downloaded to)")
    p.add_argument("--num-samples", type=INT, default=S, help="size of generated datasets (mnist1d, logreg, quadratic); "
                   "for the other tasks, training samples kept (default all)")
    p.add_argument("--workers", type=INT, default=S, help=f"worker processes ({D('workers')})")
    p.add_argument("--epochs", type=FLOAT, default=S, help=f"passes over the training set by all workers together ({D('epochs')})")
    p.add_argument("--batch-size", type=INT, default=S, help=f"batch per worker / forward thread ({D('batch_size')})")
    p.add_argument("--lr", type=FLOAT, default=S, help=f"peak learning rate ({D('lr')})")
    p.add_argument("--momentum", type=FLOAT, default=S, help=f"momentum ({D('momentum')})")
    p.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=S,
                   help=f"Nesterov momentum; --no-nesterov turns an algorithm's default off ({D('nesterov')})")
    p.add_argument("--weight-decay", type=FLOAT, default=S, help=f"L2 weight decay ({D('weight_decay')})")
    p.add_argument("--clip-grad-norm", type=FLOAT, default=S,
                   help=f"scale a gradient down to this norm when longer: a layer's own in layer-wise updates, "
                        f"the whole model's in block ones; 0 is off ({D('clip_grad_norm')})")
    p.add_argument("--schedule", default=S, help=f"cosine, constant or step, driven by global samples ({D('schedule')})")
    p.add_argument("--warmup-epochs", type=FLOAT, default=S, help=f"linear warm-up length in epochs ({D('warmup_epochs')})")
    p.add_argument("--lr-steps", default=S, help="for --schedule step: fractions of the run, e.g. 0.5,0.75")
    p.add_argument("--lr-gamma", type=FLOAT, default=S, help=f"for --schedule step: lr factor at each step ({D('lr_gamma')})")
    p.add_argument("--lr-scaling", default=S, help=f"sync, ddp: linear (lr x N for the N x B effective batch) or none ({D('lr_scaling')})")
    p.add_argument("--seed", type=INT, default=S, help=f"seed of everything random ({D('seed')})")
    p.add_argument("--target-accuracy", type=FLOAT, default=S, help="report the first wall-clock time test accuracy reached this")
    p.add_argument("--out", default=S, help="run directory (default runs/<timestamp>-<algo>)")
    p.add_argument("--overwrite", action="store_true", default=S,
                   help="let --out replace the record of a run already in that directory")
    p.add_argument("--config", help="TOML file of settings; flags given here override it")
    p.add_argument("--resume", default=S, help="continue the run in this directory from its last checkpoint")
    p.add_argument("--device", default=S, help=f"cpu, cuda or auto ({D('device')})")
    p.add_argument("--eval-points", type=INT, default=S, help=f"parameter snapshots evaluated after training ({D('eval_points')})")
    p.add_argument("--checkpoint-every", type=FLOAT, default=S, help=f"epochs between checkpoints ({D('checkpoint_every')})")
    p.add_argument("--threads-per-worker", type=INT, default=S, help="torch threads per process (default cores / processes)")
    p.add_argument("--progress", default=S, help=f"auto (bar on a terminal, lines otherwise), bar, lines, none ({D('progress')})")
    p.add_argument("--stall-timeout", type=FLOAT, default=S, help=f"seconds without progress before the run is stopped ({D('stall_timeout')})")
    p.add_argument("--tensorboard", action="store_true", default=S,
                   help="write accuracy, loss, lr, throughput and staleness as TensorBoard event files into the run "
                        "directory (`tensorboard --logdir runs`; needs `pip install tensorboard`)")
    g = p.add_argument_group("pdasgd")
    g.add_argument("--forward-threads", type=INT, default=S, help=f"forward threads per worker ({D('forward_threads')})")
    g.add_argument("--backward-threads", type=INT, default=S, help=f"backward threads per worker ({D('backward_threads')})")
    g.add_argument("--fb-ratio", default=S, help="auto: time forward and backward and pick the thread counts")
    g.add_argument("--queue-size", type=INT, default=S, help="forwards computed or waiting for a backward thread at once (default 1: several forward threads take turns; deeper queues add staleness; 0, layup's default and pdasgd's where several processes share one model with one forward and one backward thread each (not with --fb-ratio auto, which chooses the backward threads at run time): the next forward waits until the last backward has finished, no own pipeline delay)")
    g.add_argument("--updates", default=S, help=f"layer (each layer updated when its gradient is ready) or block ({D('updates')})")
    g.add_argument("--backward-weights", default=S, help="current (a backward runs on the live shared weights, as "
                   "others updated them since its forward) or forward (on a private copy of the weights its forward "
                   f"read) ({D('backward_weights')})")
    g.add_argument("--sharing", default=S, help="memory: the --workers processes update one shared model; average: a replica "
                   "per process (one per GPU), averaged in the background every --average-every backward passes; "
                   "auto: average with several GPUs (--device cuda, or auto with CUDA visible) and --workers > 1, "
                   "else memory (" + D("sharing") + ")")
    g = p.add_argument_group("lpap")
    g.add_argument("--groups", type=INT, default=S, help=f"groups (devices), parameters averaged across them ({D('groups')})")
    g.add_argument("--workers-per-group", type=INT, default=S, help=f"Hogwild! workers per group ({D('workers_per_group')})")
    g.add_argument("--average-every", type=INT, default=S, help=f"local steps (pdasgd --sharing average: backward passes) between averagings ({D('average_every')})")
    g.add_argument("--partitioned", action="store_true", default=S, help="LPP variant: workers update their own layer slices")
    g = p.add_argument_group("ddp")
    g.add_argument("--bucket-cap-mb", type=FLOAT, default=S, help="DistributedDataParallel's gradient bucket size "
                   "in MiB; --delay is paid once per bucket (default: DDP's, 25)")
    g = p.add_argument_group("dasgd")
    g.add_argument("--send-every", type=INT, default=S, help=f"local steps summed into one message ({D('send_every')})")
    g.add_argument("--gossip", default=S, help="layup: what a layer's message carries: average (its parameters, "
                   "which the receiver averages with its own) or updates (the layer's summed updates, which the "
                   f"receiver adds under --staleness) ({D('gossip')})")
    g.add_argument("--topology", default=S, help=f"all, ring, random:M, or none: send nothing, replicas that train alone ({D('topology')})")
    g.add_argument("--staleness", default=S, help=f"none, scale, cap, drop:MAX or adaptive: what a stale update does ({D('staleness')})")
    g = p.add_argument_group("delays and stragglers")
    g.add_argument("--delay", default=S, help="latency=20ms[,jitter=exp][,bandwidth=1Gbps] on every message")
    g.add_argument("--straggler", default=S, help="worker=1,slowdown=4: that worker's steps take 4x as long")
    g = p.add_argument_group("runtime")
    g.add_argument("--runtime", default=S, help=f"real or sim (simulated cluster) ({D('runtime')})")
    g.add_argument("--sim-workers", type=INT, default=S, help="virtual workers for --runtime sim")
    g.add_argument("--sim-forward-s", type=FLOAT, default=S, help="simulated forward seconds per batch (default: from --sim-times)")
    g.add_argument("--sim-backward-s", type=FLOAT, default=S, help="simulated backward seconds per batch (default: from --sim-times)")
    g.add_argument("--sim-times", default=S, help=f"flops: the model's FLOPs / --sim-device-flops (deterministic); measured: time this host ({D('sim_times')})")
    g.add_argument("--sim-device-flops", type=FLOAT, default=S, help=f"FLOP/s of a simulated device ({D('sim_device_flops')})")
    g.add_argument("--sim-compute", default=S, help=f"per-step compute-time factor: fixed, lognormal:SIGMA or pareto:ALPHA (heavy-tailed stragglers) ({D('sim_compute')})")


def settings_markdown() -> str:
    """docs/configuration.md: every setting once, from the same flags and help text as `asyncsgd
    train --help` (tests/test_docs.py keeps the file equal to this)."""
    p = _Parser(prog="asyncsgd train")
    _add_train_flags(p)
    lines = ["# Configuration", "",
             "Every setting of `asyncsgd train`, as a flag and as a key of a TOML file given with `--config`",
             "(keys are the flag names without `--`, with `-` or `_`; flags given on the command line override",
             "the file). Each run directory holds `config.toml` with the run's resolved settings, which",
             "`asyncsgd train --config DIR/config.toml` runs again. Settings only some algorithms use are",
             "rejected, not ignored, when given to another one.",
             "",
             "Generated from the CLI's own definitions: `python -c \"from asyncsgd.cli import settings_markdown; "
             "print(settings_markdown(), end='')\" > docs/configuration.md`.", ""]
    groups = [("general", p._actions)] + [(g.title, g._group_actions) for g in p._action_groups[2:]]
    seen = set()
    for title, actions in groups:
        rows = [a for a in actions if a.option_strings and a.dest not in seen and a.dest != "help"]
        if not rows:
            continue
        lines += [f"## {title}", "", "| flag | TOML key | meaning |", "|---|---|---|"]
        for a in rows:
            seen.add(a.dest)
            key = "(command line only)" if a.dest == "config" else f"`{a.dest}`"
            lines.append(f"| `{a.option_strings[0]}` | {key} | "
                         f"{(a.help or '').replace('|', '/')} |")
        lines.append("")
    lines += ["## Example", "", "```toml", "# run.toml: asyncsgd train --config run.toml", 'algorithm = "dasgd"',
              "workers = 4", "epochs = 20", "lr = 0.07", 'staleness = "adaptive"', 'topology = "ring"',
              'delay = "latency=20ms"', 'straggler = "worker=1,slowdown=4"', "lr_steps = [0.5, 0.75]", "```", ""]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="asyncsgd", description="Asynchronous SGD for PyTorch, compared side by side with synchronous training.")
    from . import __version__
    parser.add_argument("--version", action="version", version=f"asyncsgd {__version__}")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    train = sub.add_parser("train", help="train one run and write its record")
    _add_train_flags(train)
    sub.add_parser("algorithms", help="list the algorithms")
    # Subcommands that live in their own modules: "name": ("module", help). Each module has
    # add_arguments(parser) and main(args) -> exit code.
    for name, (module, help_) in PLUGINS.items():
        p = sub.add_parser(name, help=help_)
        importlib.import_module(module).add_arguments(p)
    return parser


PLUGINS = {
    "bench": ("asyncsgd.bench", "run algorithms side by side and write results.json + report.md"),
    "report": ("asyncsgd.report", "render a report (plots, tables) from existing run directories"),
}


def config_from_args(args: argparse.Namespace) -> RunConfig:
    from .algorithms.registry import default_algorithm, get_algorithm
    from .settings import check_numbers, check_options, check_resume

    values = load_toml(args.config) if getattr(args, "config", None) is not None else {}
    for name in FIELD_NAMES:
        if hasattr(args, name):
            values[name] = getattr(args, name)
    if isinstance(values.get("lr_steps"), str):
        try:
            values["lr_steps"] = tuple(float(s) for s in values["lr_steps"].split(","))
        except ValueError:
            raise ConfigError(f"--lr-steps {values['lr_steps']!r} is not accepted; accepted: fractions like 0.5,0.75") from None
    values = check_types(values)
    if values.get("resume") is not None:
        from .checkpoint import load_checkpoint
        load_checkpoint(values["resume"])  # a missing or broken checkpoint is the first thing to say
        check_resume({k for k, v in values.items() if v is not None})
    values.setdefault("algorithm", default_algorithm())
    get_algorithm(values["algorithm"])  # an unknown name is refused here, before torch
    if values.get("resume") is None:  # a resumed run keeps its saved settings
        check_options(values["algorithm"], {k: v for k, v in values.items() if v is not None}, values.get("runtime"))
    cfg = RunConfig(**values)
    # refused before torch is imported (settings.resolve checks everything again, with the defaults):
    check_numbers(cfg)
    cfg.parsed  # noqa: B018 (the structured settings: a malformed --delay, --straggler or --topology)
    return cfg


def cmd_algorithms(args) -> int:
    from .algorithms.registry import ALGORITHMS, default_algorithm

    width = max(len(n) for n in ALGORITHMS)
    for name, algo in ALGORITHMS.items():
        mark = " (default)" if name == default_algorithm() else ""
        print(f"{name:<{width}}  {algo.description}{mark}")
    return 0


def cmd_train(args) -> int:
    progress = getattr(args, "progress", None)
    if progress is None and getattr(args, "config", None) is not None:
        progress = load_toml(args.config).get("progress")
    if progress != "none":  # within a second, before PyTorch and the task load (terminal.py)
        terminal.transient("starting: loading PyTorch")
    cfg = config_from_args(args)  # before the runner's import of torch: bad input is refused at once
    from .runner import run

    summary = run(cfg)
    if summary.get("record_written") is False:  # a torchrun rank other than 0: rank 0 reports
        return 0
    print_summary(summary)
    if summary.get("collapsed"):
        print(f"asyncsgd: warning: the run collapsed: {summary['collapse']['why']} (summary.json: collapsed)",
              file=sys.stderr, flush=True)
    return 0


def _this_part(s: dict) -> str:
    """A resumed run: its wall time counts every part's training, its throughput this part's."""
    if not s.get("resumed_from_samples"):
        return ""
    part = (s.get("timings") or {}).get("training_s")
    return f" (all parts; this part {part:.2f} s)" if part is not None else " (all parts)"


def print_summary(s: dict) -> None:
    acc = s.get("final_test_accuracy")
    rows = [
        ("algorithm", s["algorithm"]), ("task / model", f"{s['task']} / {s['model']}"),
        ("workers", s["workers"]), ("samples", s["samples"]), ("updates", s["updates"]),
        ("wall time (training)", f"{s['wall_time_s']:.2f} s" + _this_part(s)),
        ("throughput", f"{s['samples_per_s']:.0f} samples/s" + (" (this part)" if s.get("resumed_from_samples") else "")),
        ("test accuracy", "n/a" if acc is None else f"{acc:.4f}" + (
            f" (best {s['best_test_accuracy']:.4f})" if s.get("best_test_accuracy") not in (None, acc) else "")),
        ("test loss", "n/a" if s.get("final_test_loss") is None else f"{s['final_test_loss']:.4f}"),
        ("staleness mean / p99 / max", f"{s['staleness']['mean']:.2f} / {s['staleness']['p99']} / {s['staleness']['max']}"),
    ]
    if s.get("target_accuracy") is not None:
        t = s.get("time_to_target_s")
        rows.append((f"time to {s['target_accuracy']:g}", "not reached" if t is None else f"{t:.2f} s"))
    if s.get("bytes_sent"):
        rows.append(("bytes sent", f"{s['bytes_sent']:,}"))
    if s.get("lost_workers"):
        rows.append(("lost workers", ", ".join(map(str, s["lost_workers"]))))
    t = s.get("timings")
    if t:
        rows.append(("time split", f"setup {t['setup_s']:.1f} s, start-up {t['startup_s']:.1f} s, training "
                     f"{t['training_s']:.1f} s, evaluation {t['evaluation_s']:.1f} s, writing {t['writing_s']:.1f} s "
                     f"(total {t['total_s']:.1f} s)"))
    rows.append(("record", s.get("out_dir", "")))
    w = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{w}}  {v}")




def _terminate(signum, frame):
    raise KeyboardInterrupt


COMMANDS = {"train": cmd_train, "algorithms": cmd_algorithms}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    from . import config
    config.COMMAND[:] = ["asyncsgd", *map(str, argv)]
    import signal
    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:  # SIGTERM (schedulers, timeout) stops like Ctrl-C
        signal.signal(signal.SIGTERM, _terminate)
    from .launch import server
    if _starts_workers(argv):
        server.start_early()  # its torch import overlaps with ours (build_parser's)
    try:
        code = _run_command(argv)
    finally:
        server.stop_early()  # when no run took it
    worker = sys.modules.get("asyncsgd.launch.worker")
    if worker is not None and worker.PROCESS_GROUP_LEFT:  # a torchrun rank told to stop (launch/worker.py)
        sys.stdout.flush()
        sys.stderr.flush()
        import os
        os._exit(code)
    return code


def _starts_workers(argv) -> bool:
    """Whether the command will likely start worker processes, so that their forkserver is worth
    starting before this process imports torch: a `train` that is not sequential, simulated or
    help, here where torch is not imported yet (in a Python process that has imported it there is
    nothing to overlap) and not a torchrun rank (which starts no workers). A guess from the words
    alone: a wrong one costs a server that imports torch on another core and is stopped unused."""
    words = [str(a) for a in argv]
    if not words or words[0] != "train" or "torch" in sys.modules or "-h" in words or "--help" in words:
        return False
    import os
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return False
    given = {}
    for i, w in enumerate(words):
        key, eq, value = w.partition("=")
        if key in ("--algo", "--runtime"):
            given[key] = value if eq else (words[i + 1] if i + 1 < len(words) else "")
    return given.get("--algo") != "sequential" and given.get("--runtime") != "sim"


def _run_command(argv) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 0
        if args.command in PLUGINS:
            return importlib.import_module(PLUGINS[args.command][0]).main(args)
        return COMMANDS[args.command](args)
    except AsyncSGDError as e:
        terminal.erase()
        print(f"asyncsgd: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("asyncsgd: interrupted; the last checkpoint is kept (continue with --resume DIR)", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader left (`asyncsgd bench --dry-run | head -1`): stop quietly, as
        # a pipe's writer does; stdout goes to /dev/null, else Python's flush at exit fails again
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
