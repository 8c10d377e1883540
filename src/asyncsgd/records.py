"""The run record (summary.json, metrics.jsonl), evaluation of snapshots, and progress output.

Time-to-accuracy without disturbing training: workers copy the parameters into a shared
buffer at fixed global-sample marks (--eval-points per run; a memory copy, no evaluation on
the training clock). After training, the launcher evaluates every copy on the test set and on
a fixed 2,000-sample slice of the training set. time_to_target_s is the wall-clock time of the
first copy whose test accuracy reached --target-accuracy, so its resolution is one eval point.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Subset, TensorDataset, default_collate

from . import terminal
from .config import COMMAND
from .errors import ConfigError
from .tensors import StateFlattener, loss_fn

TRAIN_LOSS_SAMPLES = 2000


@torch.no_grad()
def evaluate(model, dataset, loss_kind: str, device: str, batch_size: int = 1024) -> tuple[float | None, float]:
    """(accuracy or None for regression, mean loss) of model on dataset."""
    model.eval()
    loss_f = loss_fn(loss_kind)
    n, correct, total_loss = 0, 0, 0.0
    if isinstance(dataset, TensorDataset):
        xs, ys = dataset.tensors
        chunks = ((xs[i:i + batch_size], ys[i:i + batch_size]) for i in range(0, len(ys), batch_size))
    else:
        chunks = (default_collate([dataset[j] for j in range(i, min(i + batch_size, len(dataset)))])
                  for i in range(0, len(dataset), batch_size))
    for x, y in chunks:
        x, y = x.to(device), y.to(device)
        out = model(x)
        total_loss += float(loss_f(out, y, reduction="sum"))
        if loss_kind == "cross_entropy":
            correct += int((out.argmax(1) == y).sum())
        n += len(y)
    if n == 0:
        return None, float("nan")
    return (correct / n if loss_kind == "cross_entropy" else None), total_loss / (n * (1 if loss_kind != "mse" else y[0].numel()))


def _train_slice(dataset):
    n = min(len(dataset), TRAIN_LOSS_SAMPLES)
    if isinstance(dataset, TensorDataset):
        return TensorDataset(*(t[:n] for t in dataset.tensors))
    return Subset(dataset, range(n))


def evaluate_snapshots(task, board, device: str, average_replicas: bool, exclude=(), on_row=None) -> list[dict]:
    """One metrics row per snapshot: replica 0 (or the shared model), plus the replicas' average.
    on_row(): called after each row (the progress display's evaluation bar)."""
    model = task.model_fn().to(device)
    flat = StateFlattener(model)
    train_slice = _train_slice(task.train_set)
    rows = []
    count = int(board.snap_count[0])
    keep = [r for r in range(board.snap.shape[0]) if r not in exclude and int(board.snap_count[r]) > 0]
    for i in range(count):
        flat.load_flat(model, board.snap[0, i].to(device))
        acc, loss = evaluate(model, task.test_set, task.loss, device)
        _, train_loss = evaluate(model, train_slice, task.loss, device)
        row = {"wall_time_s": round(float(board.snap_time[0, i]), 4), "samples": int(board.snap_samples[0, i]),
               "test_accuracy": acc, "test_loss": loss, "train_loss": train_loss}
        if average_replicas and len(keep) > 1:
            # Replicas may hold one snapshot more than row 0 (the last sample mark is reached by
            # whichever worker records the last batch); the last row pairs every replica's LAST
            # snapshot, its state at finish (after lpap's / pdasgd's final average), not an earlier one.
            last = i == count - 1
            members = [board.snap[r, int(board.snap_count[r]) - 1 if last else min(i, int(board.snap_count[r]) - 1)]
                       for r in keep]
            avg = torch.stack(members).mean(0)
            row["consensus_distance"] = float(torch.stack([(m - avg).norm() for m in members]).mean())
            flat.load_flat(model, avg.to(device))
            row["avg_test_accuracy"], row["avg_test_loss"] = evaluate(model, task.test_set, task.loss, device)
        rows.append(row)
        if on_row is not None:
            on_row()
    return rows


def add_lr(rows: list[dict], cfg, total: int) -> list[dict]:
    """Each evaluation point's learning rate (the schedule at that point of global progress)."""
    from .optim import learning_rate
    for row in rows:
        row["lr"] = round(learning_rate(cfg, row["samples"], total), 8)
    return rows


TENSORBOARD_POINTS = {"test/accuracy": "test_accuracy", "test/loss": "test_loss", "train/loss": "train_loss",
                      "lr": "lr", "replicas/avg_test_accuracy": "avg_test_accuracy",
                      "replicas/consensus_distance": "consensus_distance"}


def write_tensorboard(record: RunRecord, summary: dict, metrics: list[dict]) -> None:
    """--tensorboard: the run as TensorBoard scalars, event files in the run directory. Written
    once the snapshots are evaluated (never during training): one point per evaluation point (step
    = samples processed, time = when training reached that point) for accuracy, loss, lr and the
    throughput since the point before; staleness (a distribution over the whole run: the workers
    count it, not per point) once, at the last step."""
    from torch.utils.tensorboard import SummaryWriter

    b = record.board
    start = (float(b.t0[0]) if float(b.t0[0]) > 0 else time.time()) - record.elapsed_before
    writer = SummaryWriter(log_dir=str(record.out))
    try:
        prev_samples, prev_time = 0, 0.0
        for row in metrics:
            step, t = row["samples"], row["wall_time_s"]
            for tag, key in TENSORBOARD_POINTS.items():
                if row.get(key) is not None:
                    writer.add_scalar(tag, row[key], step, walltime=start + t)
            # the point at 0 samples (the initial weights) is a start, not a rate: its wall time is
            # the start-up's, above 0 on a busy machine, and the rate there would read 0 samples/s
            if t > prev_time and step > prev_samples:
                writer.add_scalar("throughput/samples_per_s", (step - prev_samples) / (t - prev_time), step,
                                  walltime=start + t)
            prev_samples, prev_time = step, t
        last = metrics[-1]["samples"] if metrics else summary["samples"]
        for key in ("mean", "p99", "max"):
            writer.add_scalar(f"staleness/{key}", summary["staleness"][key], last)
    finally:
        writer.close()


def _git_revision() -> str | None:
    """The commit of the checkout asyncsgd runs from (an editable install), or None."""
    import subprocess
    from pathlib import Path as P
    try:
        r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=P(__file__).resolve().parent, capture_output=True,
                           text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def write_metrics(path, rows: list[dict]) -> None:
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def read_metrics(path) -> list[dict]:
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    except (OSError, ValueError):
        return []


COLLAPSE_DROP = 0.10  # a run whose final test accuracy is this far below its own best has collapsed


def collapse_check(rows: list[dict]) -> dict:
    """Whether a run collapsed: its final test accuracy ended COLLAPSE_DROP or more below its own best,
    or its training loss climbed back to where it started. Never silent: summary.json records it,
    the CLI warns on stderr, the report marks the run instead of ranking it."""
    accs = [r["test_accuracy"] for r in rows if r.get("test_accuracy") is not None]
    losses = [r["train_loss"] for r in rows if r.get("train_loss") is not None]
    out = {"collapsed": False, "best_test_accuracy": max(accs) if accs else None,
           "final_test_accuracy": accs[-1] if accs else None, "why": None}
    if accs and accs[-1] <= max(accs) - COLLAPSE_DROP:
        out.update(collapsed=True, why=f"final test accuracy {accs[-1]:.4f} is {max(accs) - accs[-1]:.4f} below "
                                       f"the run's best {max(accs):.4f}")
    elif len(losses) >= 3 and losses[-1] >= losses[0]:
        out.update(collapsed=True, why=f"the training loss climbed back to {losses[-1]:.4f}, where it started "
                                       f"({losses[0]:.4f})")
    return out


def time_to_target(rows: list[dict], target: float | None) -> float | None:
    if target is None:
        return None
    for row in sorted(rows, key=lambda r: r["wall_time_s"]):
        if row["test_accuracy"] is not None and row["test_accuracy"] >= target:
            return row["wall_time_s"]
    return None


RUN_FILES = ("summary.json", "checkpoint.pt", "metrics.jsonl")  # what makes a directory a run's record


def file_in_the_way(path: Path) -> Path | None:
    """The file at path, or at the first of its parents that exists, which keeps a directory from
    being made there (the bench's and the report's --out); None when there is none."""
    above = next((p for p in (path, *path.parents) if p.exists()), None)
    return above if above is not None and not above.is_dir() else None


def make_run_dir(cfg) -> Path:
    """The run directory, made and checked before anything runs: --out (or --resume's) as given,
    else a new runs/<timestamp>-<algo> (with -2, -3, ... when two runs start in the same second).
    ConfigError when it is a file, cannot be made or cannot be written."""
    import os

    given = cfg.out or cfg.resume
    flag_name = "--out" if cfg.out else "--resume"
    if given is None:
        base = Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.algorithm}"
        for i in range(1, 1000):
            path = base if i == 1 else base.with_name(f"{base.name}-{i}")
            try:
                path.mkdir(parents=True, exist_ok=False)
                return path
            except FileExistsError:
                continue
            except OSError as e:
                raise ConfigError(f"the run directory {str(path)!r} cannot be made ({e.strerror}); accepted: "
                                  "--out DIR with DIR a writable directory") from None
        raise ConfigError(f"{str(base)!r} and 998 more run directories of this second exist; accepted: --out DIR")
    path = Path(given)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{flag_name} {given!r} is not accepted: it is a file; accepted: a directory (new or existing)")
    if cfg.out and not cfg.resume and not cfg.overwrite and any((path / f).exists() for f in RUN_FILES):
        raise ConfigError(f"--out {given!r} is not accepted: it holds another run's record; accepted: a new or "
                          "empty directory, --overwrite to replace that record, or --resume DIR to continue it")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".asyncsgd-write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
        for stale in (*path.glob(".checkpoint.pt.*.tmp"), *path.glob("*.json.tmp")):  # a killed launcher's
            stale.unlink(missing_ok=True)
    except OSError as e:
        raise ConfigError(f"{flag_name} {given!r} is not accepted: it cannot be written ({e.strerror or e}); "
                          "accepted: a writable directory") from None
    return path


@dataclass
class RunRecord:
    """What the record of one finished run is built from: the real launchers and the simulator
    each build one, and summary() and every algorithm's summary_extra(record, summary) read it."""

    cfg: object  # the resolved RunConfig
    task: object
    board: object  # board.Board: the run's counters and snapshots (the simulator fills one too)
    model: object  # the model as built (names and shapes of the parameters)
    out: Path
    device: str
    workers: int
    launch: str  # "local", "torchrun" or "sim"
    algo: object = None  # algorithms.base.Algorithm, for its summary_extra (None: the twin added its fields)
    lost: list = field(default_factory=list)
    lost_reasons: dict = field(default_factory=dict)  # worker -> why it was lost (the line stderr printed)
    setup_s: float = 0.0
    samples_before: int = 0  # resumed runs: samples done before this run
    elapsed_before: float = 0.0
    resumed: bool = False
    metrics: list = field(default_factory=list)  # the evaluated points (for final consensus distance...)
    started_at: str | None = None  # ISO time the run was set up


def summary(record: RunRecord, metrics: list[dict], wall: float, eval_s: float) -> dict:
    from . import __version__

    cfg, b, task = record.cfg, record.board, record.task
    samples = record.samples_before + int(b.samples.sum())
    run_samples = int(b.samples.sum())
    run_wall = max(wall - record.elapsed_before, 1e-9)
    final = metrics[-1] if metrics else {}
    collapse = collapse_check(metrics)
    stale = b.staleness_stats()
    hist = stale.pop("histogram")
    out = {
        "status": "done", "algorithm": cfg.algorithm, "task": task.name, "model": task.model_name, "workers": record.workers,
        "epochs": cfg.epochs, "samples": samples, "updates": int(b.updates.sum()),
        "wall_time_s": round(wall, 4), "samples_per_s": round(run_samples / run_wall, 2),
        "final_test_accuracy": final.get("test_accuracy"), "final_test_loss": final.get("test_loss"),
        "final_train_loss": final.get("train_loss"),
        "best_test_accuracy": collapse["best_test_accuracy"], "collapsed": collapse["collapsed"],
        "collapse": collapse,
        "target_accuracy": cfg.target_accuracy, "time_to_target_s": time_to_target(metrics, cfg.target_accuracy),
        "staleness": stale, "staleness_histogram": hist,
        "bytes_sent": int(b.bytes_sent.sum()), "messages_sent": int(b.messages_sent.sum()),
        "dropped_updates": int(b.dropped.sum()),
        "per_worker": [{"worker": w, "samples": int(b.samples[w]), "updates": int(b.updates[w]),
                        "idle_s": round(float(b.idle_s[w]), 4)} for w in range(b.workers)],
        "lost_workers": sorted(record.lost),
        # why each was lost: what a post-mortem needs once the terminal that printed it is gone
        "lost_reasons": {str(w): record.lost_reasons.get(w, "lost") for w in sorted(record.lost)},
        "requeued_batches": int(b.requeue_ends[1]),  # a lost worker's unfinished batches, redone by the survivors
        "optimal_loss": task.optimal_loss,
        "setup_s": round(record.setup_s, 3), "eval_s": round(eval_s, 3),
        "resumed_from_samples": record.samples_before if record.resumed else None,
        "config": cfg.to_dict(), "task_info": task.info,
        "command": shlex.join(COMMAND or sys.argv), "started_at": record.started_at,
        "ended_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "git_revision": _git_revision(),
        "out_dir": str(record.out), "asyncsgd_version": __version__, "torch_version": torch.__version__, "device": device_name(record.device),
        "threads_per_worker": cfg.threads_per_worker or max(1, (__import__("os").cpu_count() or 1) // record.workers),
    }
    if record.algo is not None and record.algo.summary_extra:  # algorithm-specific fields (per-layer staleness, drops, theory check...)
        record.algo.summary_extra(record, out)
    return out


def device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name(0)})"
    import platform
    return f"cpu ({platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores)"


class Progress:
    """What the user sees while a run goes on, and never a silent stretch (stderr):
    - bar (a terminal): "starting N workers" at once, the training bar (tqdm, fits 80 columns),
      then an evaluation bar over the snapshots;
    - lines (not a terminal): a line at the start, every 5 s a line with samples, rate, ETA,
      loss and staleness, and a final line;
    - none: nothing.
    The launcher calls start() before the workers, update() while they run, close() when training
    ended, and evaluating(n) / evaluated() around the evaluation of the snapshots."""

    LINE_EVERY_S = 5.0

    def __init__(self, cfg, total: int, board, samples_before: int, workers: int = 1):
        mode = cfg.progress
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "lines"
        self.mode, self.total, self.board, self.before = mode, total, board, samples_before
        self.bar = None
        self.last_line = 0.0
        self.start = None
        self.elapsed_before = 0.0  # a resumed run's training seconds before this part (its launcher sets it)
        self.desc = cfg.algorithm
        self.workers = workers
        self.closed = False

    def say(self, text: str) -> None:
        if self.mode != "none":
            terminal.erase()  # the transient line this one replaces (on a terminal; then over a bar's line too)
            print(("\r\x1b[K" if sys.stderr.isatty() else "") + f"[asyncsgd] {text}", file=sys.stderr, flush=True)

    def starting(self) -> None:
        self.say(f"{self.desc}: starting {self.workers} worker{'s' * (self.workers != 1)}")

    def _stats(self):
        b = self.board
        done = self.before + int(b.samples.sum())
        hist = b.hist.sum(0)
        n = int(hist.sum())
        stale = float((hist.double() * torch.arange(len(hist), dtype=torch.float64)).sum() / n) if n else 0.0
        active = b.loss[b.samples > 0]
        loss = float(active.mean()) if len(active) else None
        return done, loss, stale

    def update(self) -> None:
        if self.mode == "none" or self.board.t0[0] == 0 or self.closed:
            return
        done, loss, stale = self._stats()
        if self.start is None:  # training started: the bar's clock starts now, not at process start-up
            self.start = (time.time(), done)
            if self.mode == "bar":
                from tqdm import tqdm
                # a fixed 10-cell bar and short fields: the counts, times and rate fit in 80 columns
                self.bar = tqdm(total=self.total, initial=done, unit="", unit_scale=True, desc=self.desc,
                                file=sys.stderr, dynamic_ncols=True, bar_format="{desc} {percentage:3.0f}%|{bar:10}| "
                                "{n_fmt}/{total_fmt} {elapsed}<{remaining} {rate_noinv_fmt}")
            else:
                self.last_line = time.time()
                self.say(f"training: {done}/{self.total} samples")
                return  # the first progress line comes with a rate to show, not "0 samples/s"
        loss_text = "loss –" if loss is None else f"loss {loss:.3f}"
        if self.bar is not None:
            self.bar.n = done
            self.bar.set_description_str(f"{self.desc} {loss_text} st {stale:.2f}", refresh=False)
            self.bar.refresh()
        elif self.mode == "lines" and time.time() - self.last_line >= self.LINE_EVERY_S:
            self.last_line = time.time()
            self.say(self._line(done, loss_text, stale))

    def _line(self, done: int, loss_text: str, stale: float) -> str:
        elapsed = max(1e-9, time.time() - self.start[0])
        rate = (done - self.start[1]) / elapsed
        eta = f"ETA {(self.total - done) / rate:.0f} s" if rate > 0 else "ETA –"
        return (f"{done}/{self.total} samples ({100 * done / self.total:.0f}%) {rate:.0f} samples/s {eta} "
                f"{loss_text} staleness {stale:.2f}")

    def close(self) -> None:
        """Training ended (or stopped): the bar's last state, or the final line."""
        if self.closed:
            return
        if self.bar is not None:
            self.update()
            self.bar.close()
            self.bar = None
        elif self.mode == "lines" and self.start is not None:
            done, loss, stale = self._stats()
            b = self.board
            wall = float(b.finish.max() - b.t0[0]) if float(b.finish.max()) > 0 else time.time() - float(b.t0[0])
            # a resumed run's clock (t0) includes the earlier parts' training: the rate is this part's
            part = max(wall - self.elapsed_before, 1e-9)
            rate = (done - self.before) / part
            resumed = f" (this part {part:.2f} s, resumed at {self.before})" if self.before else ""
            ended = "stopped" if int(b.stop[0]) else "done"  # stopped: interrupted, failed, diverged, stalled
            self.say(f"training {ended}: {done}/{self.total} samples in {wall:.2f} s{resumed}, {rate:.0f} samples/s, "
                     + ("loss –" if loss is None else f"loss {loss:.3f}") + f", staleness {stale:.2f}")
        self.closed = True

    def evaluating(self, snapshots: int):
        """A bar (or a line) for the evaluation of the snapshots after training; returns a
        callback to call after each one."""
        if self.mode == "bar":
            from tqdm import tqdm
            bar = tqdm(total=snapshots, desc="evaluating", unit="snapshot", file=sys.stderr, dynamic_ncols=True,
                       bar_format="{desc} {percentage:3.0f}%|{bar:12}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}]")
            self._eval_bar = bar
            return lambda: bar.update(1)
        self.say(f"evaluating {snapshots} snapshots")
        return lambda: None

    def evaluated(self) -> None:
        bar = getattr(self, "_eval_bar", None)
        if bar is not None:
            bar.close()
            self._eval_bar = None
