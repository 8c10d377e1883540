"""The launcher: builds the run, starts and owns the worker processes, writes the run record.

Ownership (the concurrency contract):
- run() starts every worker process (torch.multiprocessing; forked by the
  run's WorkerServer where the platform has a forkserver, else spawned) and is the only one that
  joins or kills them. Workers that end normally are joined; on an error, a divergence, a
  stall (no progress for --stall-timeout seconds) or Ctrl-C, run() sets board.stop, gives the
  workers STOP_GRACE_S to leave their loops, then terminates and finally kills them.
- A one-process algorithm without torch.distributed runs in this process (no spawn cost; the
  Python API can then take unpicklable model factories); the monitor then runs in a thread
  that run() joins.
- The monitor reads the board (progress, checkpoints to write); it never steers training.
Wall-clock time counts training only: from the moment every worker is ready to the moment
the last one finishes. Process start-up, data generation and evaluation are outside it.
"""

from __future__ import annotations

import json
import math
import os
import queue
import sys
import threading
import time
from pathlib import Path

import torch
import torch.multiprocessing  # noqa: F401 (registers how tensors are shared with the workers)

from .. import records, terminal
from ..algorithms.registry import get_algorithm
from ..board import Board, ClaimLock
from ..checkpoint import load_checkpoint, save_checkpoint
from ..config import RunConfig
from ..engine import WorkerSpec
from ..errors import ConfigError, DivergedError, WorkerError
from ..settings import resolve, write_config_toml
from ..tensors import StateFlattener
from .modes import LocalLaunch
from .server import take_server, worker_context
from .worker import worker_main

STOP_GRACE_S = 10.0
STORE_FILE = ".asyncsgd-store"  # the local process group's FileStore, in the run directory
POLL_S = 0.05


def resolve_device(cfg: RunConfig) -> str:
    if cfg.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return cfg.device


def _exit_reason(rank: int, code: int) -> str:
    if code < 0:
        import signal
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"worker {rank} was killed by {name} (exit code {code})"
    return f"worker {rank} exited with code {code}"


def _batches_held(cfg: RunConfig) -> int:
    """The most batches one worker holds claimed at once (its board row of re-queueable batches):
    one per lpap thread, or per pdasgd forward thread, queued forward and backward thread."""
    return 2 + cfg.workers_per_group + cfg.forward_threads + cfg.backward_threads + (cfg.queue_size or cfg.forward_threads)


def shared_memory_free() -> int | None:
    """Bytes free in /dev/shm, where torch's shared tensors live (None where there is none)."""
    try:
        st = os.statvfs("/dev/shm")
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def check_shared_memory(cfg: RunConfig, replicas: int, numel: int, shared_model: bool = False) -> None:
    """The board's snapshot buffer (--eval-points copies of the model, per replica) and a shared model
    are refused before they are allocated when /dev/shm cannot hold them: the kernel killed a
    launcher that asked for 15 GB and left the file behind."""
    free = shared_memory_free()
    copies = cfg.eval_points + 3  # the snapshots, the final state and the checkpoint slot
    need = (replicas * copies + shared_model) * numel * 4
    if free is not None and need > free:
        most = max(0, free // (replicas * numel * 4) - 3)
        raise ConfigError(f"--eval-points {cfg.eval_points} is not accepted here: the snapshots need "
                          f"{need / 2**30:.2f} GiB of shared memory ({replicas} replica(s) x {copies} copies of "
                          f"{numel:,} values) and /dev/shm has {free / 2**30:.2f} GiB free; accepted: at most "
                          f"{most} here, or a smaller model")


class StallClock:
    """--stall-timeout: no new samples on the board for that many seconds. The clock restarts at
    every change of the sample count; from_training: it also stands still until training began
    (board.t0), for a run whose start-up cannot hang on a peer (one in the launcher's process)."""

    def __init__(self, board: Board, timeout: float, from_training: bool = False):
        self.board, self.timeout, self.from_training = board, timeout, from_training
        self.samples, self.since = -1, time.time()

    def stalled(self) -> bool:
        samples = int(self.board.samples.sum())
        if samples != self.samples or (self.from_training and self.board.t0[0] == 0):
            self.samples, self.since = samples, time.time()
            return False
        return time.time() - self.since > self.timeout

    def why(self, what: str) -> str:
        return f"no progress for {self.timeout:.0f} s (--stall-timeout); {what}"


class Launcher:
    """Owns one run: its processes (or in-process worker), monitor, checkpoints and record."""

    writes_record = True  # False on torchrun ranks other than 0

    def __init__(self, cfg: RunConfig, task=None, launch=LocalLaunch()):
        from ..tasks import get_task

        self.created = time.perf_counter()  # the wall-time split of summary.json starts here
        self.started_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.cfg = cfg = resolve(cfg)
        self.algo = get_algorithm(cfg.algorithm).for_config(cfg)  # properties decided by the settings
        self.resumed = None
        if cfg.resume:
            self.resumed = load_checkpoint(cfg.resume)
        self.n_proc = self.algo.processes(cfg)
        self.progress = records.Progress(cfg if self.writes_record else cfg.replace(progress="none"), 1, None, 0,
                                         workers=self.n_proc)
        if self.progress.mode != "none":  # transient: a task that cannot be prepared is then one line
            terminal.transient(f"{cfg.algorithm}: preparing task {cfg.task}")
        t = time.perf_counter()
        self.task = task if task is not None else get_task(cfg.task, model=cfg.model, data_dir=cfg.data_dir,
                                                           seed=cfg.seed, num_samples=cfg.num_samples)
        self.setup_s = time.perf_counter() - t
        if self.writes_record:
            self.out = records.make_run_dir(cfg)
            write_config_toml(cfg, self.out / "config.toml")
        else:  # a torchrun rank other than 0: rank 0 writes the record
            self.out = Path(cfg.out or cfg.resume or "runs")
        self.device = resolve_device(cfg)
        n_train = len(self.task.train_set)
        if n_train == 0:
            raise ConfigError(f"--task {cfg.task!r} has an empty training set; accepted: at least one sample")
        self.total = max(1, round(cfg.epochs * n_train))
        torch.manual_seed(cfg.seed)
        self.model = self.task.model_fn()
        self.flat = StateFlattener(self.model)
        if self.resumed is not None:
            try:
                self.model.load_state_dict(self.resumed["model"])
            except (RuntimeError, KeyError) as e:
                raise ConfigError(f"--resume {cfg.resume!r}: the checkpoint does not fit the model "
                                  f"({str(e).splitlines()[0][:120]}); accepted: a checkpoint of the same task and model") from None
            saved = self.resumed["momentum"]  # the lead worker's buffers, flat (LayerSGD's layout)
            numel = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
            if saved is not None and (saved.dtype != torch.float32 or saved.numel() != numel):
                raise ConfigError(f"--resume {cfg.resume!r}: the checkpoint's momentum ({saved.numel():,} "
                                  f"{str(saved.dtype).removeprefix('torch.')} values) does not fit the model; accepted: "
                                  f"{numel:,} float32 values, as asyncsgd writes them for this task and model")
        replicas = self.n_proc if self.algo.snapshot_all_replicas else 1
        # before anything goes to shared memory: a launcher killed there for lack of memory leaves it in /dev/shm
        check_shared_memory(cfg, replicas, self.flat.numel, shared_model=self.algo.shared_model and self.device == "cpu")
        if self.device == "cuda" and self.algo.shared_model:
            self.model.to("cuda")
        if self.algo.shared_model:
            self.model.share_memory()
        self.snapshot_every = max(1, math.ceil(self.total / cfg.eval_points))
        n_params = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        ctx = worker_context()
        self.board = Board(self.n_proc, replicas, cfg.eval_points + 3, self.flat.numel, n_params,
                           layers=len([p for p in self.model.parameters() if p.requires_grad]), lock=ClaimLock(self.out if self.writes_record else None),
                           inflight_slots=_batches_held(cfg))
        start_batch = samples_before = 0
        elapsed = 0.0
        momentum = None
        if self.resumed is not None:
            start_batch, samples_before = self.resumed["next_batch"], self.resumed["samples_done"]
            elapsed, momentum = self.resumed["elapsed_s"], self.resumed["momentum"]
            self.board.next_batch[0] = start_batch
        self.errors = ctx.Queue() if self.n_proc > 1 or self.algo.distributed else queue.Queue()
        self.spec = WorkerSpec(
            config=cfg, algorithm=cfg.algorithm, task=self.task, model=self.model, board=self.board,
            total_samples=self.total, start_batch=start_batch, samples_before=samples_before,
            elapsed_before=elapsed, momentum_init=momentum, snapshot_every=self.snapshot_every,
            checkpoint_every=max(1, round(cfg.checkpoint_every * n_train)), world_size=self.n_proc,
            device=self.device, launch=launch, errors=self.errors, environ=dict(os.environ))
        self.ctx = ctx
        self.lost: list[int] = []
        self.lost_reasons: dict[int, str] = {}  # worker -> the line printed when it was lost
        self.failure: tuple | None = None
        self._ckpt_seen = 0

    # -- running --------------------------------------------------------------------------
    def run(self) -> dict:
        progress = self.progress
        progress.total, progress.board, progress.before = self.total, self.board, self.spec.samples_before
        progress.elapsed_before = self.spec.elapsed_before
        progress.starting()
        self.run_started = time.time()
        in_process = self.n_proc == 1 and not self.algo.distributed
        try:
            if in_process:
                self._run_in_process(progress)
            else:
                self._run_processes(progress)
        except KeyboardInterrupt:
            self.board.stop[0] = 1
            progress.close()
            self._write_checkpoint()
            self._save_metrics_until_checkpoint()
            self._write_ended("interrupted", "interrupted (Ctrl-C or SIGTERM); --resume DIR continues from the last checkpoint")
            raise
        except DivergedError as e:
            self._write_ended("diverged", str(e))
            raise
        except WorkerError as e:  # a worker failed, was lost where the algorithm cannot go on, or stalled
            self._write_ended("error", str(e))
            raise
        finally:
            progress.close()
        self._write_checkpoint()
        return self._finish()

    def _write_ended(self, status: str, why: str) -> None:
        """A run that ended early still leaves a summary.json, saying how it ended and how far it got."""
        if not self.writes_record:
            return
        b = self.board
        summary = {"status": status, "why": why, "algorithm": self.cfg.algorithm, "workers": self.n_proc,
                   "samples": self.spec.samples_before + int(b.samples.sum()), "planned_samples": self.total,
                   "updates": int(b.updates.sum()), "diverged_at_update": int(b.diverged_step[0]) if status == "diverged" else None,
                   "checkpoint": "checkpoint.pt" if (self.out / "checkpoint.pt").exists() else None,
                   "lost_workers": sorted(self.lost), "config": self.cfg.to_dict(), "out_dir": str(self.out)}
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")

    def _run_in_process(self, progress) -> None:
        self.spec.errors = self.errors
        done = threading.Event()
        monitor = threading.Thread(target=self._monitor_thread, args=(progress, done, True), name="asyncsgd-monitor")
        monitor.start()
        try:
            worker_main(0, self.spec)
        finally:
            done.set()
            monitor.join(timeout=30)
        self._drain_errors()
        self._raise_failure()

    def _monitor_thread(self, progress, done: threading.Event, watch_stall: bool = False) -> None:
        """Progress and checkpoints of a run in this process. watch_stall (a local run in this
        process, _run_in_process): _watch's stall check too, no new samples for --stall-timeout
        seconds sets board.stop (the schedule's batches end there) and the run fails with that
        reason. Not under torchrun, where rank 0 waits for its peers at the end without new samples
        for up to --stall-timeout by design (TorchrunJob.finish)."""
        clock = StallClock(self.board, self.cfg.stall_timeout, from_training=True)
        while not done.wait(POLL_S):
            self._poll(progress)
            if watch_stall and clock.stalled() and not self.board.stop[0]:
                if self.failure is None:
                    self.failure = ("error", clock.why("training stopped"))
                self.board.stop[0] = 1

    def _run_processes(self, progress) -> None:
        import pickle
        try:  # fail with a clear message before starting anything
            pickle.dumps(self.task.model_fn)
        except Exception as e:
            raise ConfigError(f"model_fn {self.task.model_fn!r} is not picklable ({type(e).__name__}); accepted for "
                              f"multi-process algorithms: a module-level function or class, or functools.partial of one") from None
        store = None
        if self.algo.distributed:
            # The process group's rendezvous is a FileStore in the run directory: no port at all
            # (a TCPStore listens on every interface, whatever host it is given), nothing another
            # run can take, and the launcher holds it for the whole run. Its file is removed at the
            # end, and a stale one (a killed launcher's) at the next start.
            import torch.distributed as dist
            path = self.out / STORE_FILE
            path.unlink(missing_ok=True)
            store = dist.FileStore(str(path), self.n_proc + 1)  # the workers and this launcher
            self.spec.dist_init = f"file://{path.resolve()}"
        procs = self.procs = []
        server = None
        state = "failed"
        try:
            server = take_server()  # started early by the command line, or now
            for rank in range(self.n_proc):
                p = self.ctx.Process(target=worker_main, args=(rank, self.spec), name=f"asyncsgd-worker-{rank}")
                p.start()
                procs.append(p)
            server.forked_all()
            self._write_workers_json("starting")
            self._watch(procs, progress)
            state = "done"
        except KeyboardInterrupt:
            state = "interrupted"
            raise
        except DivergedError:
            state = "diverged"
            raise
        finally:
            try:
                self._stop_all(procs)  # also the ones started before a start failed
            finally:  # also when a second interrupt cut the stop short (the workers are killed by then)
                self._after_workers(server, state)
                if store is not None:
                    del store  # after the workers
                    (self.out / STORE_FILE).unlink(missing_ok=True)  # a killed worker never closed its copy

    def _after_workers(self, server, state: str) -> None:
        """Once every worker has ended: the fork server, the final workers.json and the startup logs."""
        if server is not None:
            server.stop()  # after the workers: it reports their exit codes
        self._write_workers_json(state)  # a final state: every process above has ended
        for log in self.out.glob("startup-*.log"):  # modes.join_group's: keep only what says something
            if log.stat().st_size == 0:
                log.unlink()

    def _write_workers_json(self, state: str) -> None:
        """workers.json in the run directory: the worker processes' pids (to watch or kill them)."""
        info = {"state": state, "launcher_pid": os.getpid(), "algorithm": self.cfg.algorithm,
                "workers": [{"worker": r, "pid": p.pid} for r, p in enumerate(self.procs)]}
        tmp = self.out / "workers.json.tmp"
        tmp.write_text(json.dumps(info, indent=2) + "\n")
        os.replace(tmp, self.out / "workers.json")

    def _watch(self, procs, progress) -> None:
        clock = StallClock(self.board, self.cfg.stall_timeout)
        started = False
        while any(p.is_alive() for p in procs):
            time.sleep(POLL_S)
            if not started and self.board.t0[0] > 0:
                started = True
                self._write_workers_json("training")
            for rank, p in enumerate(procs):  # exit codes first: a dead worker is the cause, not its peers' errors
                if p.exitcode not in (None, 0) and rank not in self.lost and self.board.status[rank] != 3:
                    self._worker_lost(rank, _exit_reason(rank, p.exitcode))
            self._drain_errors()
            if self.failure is not None:
                break
            self._poll(progress)
            if clock.stalled():
                self.failure = ("error", clock.why("workers stopped"))
                break
        self._drain_errors()
        self._raise_failure()

    def _worker_lost(self, rank: int, why: str) -> None:
        if rank in self.lost:  # seen twice (its exit code and its error report): once is enough
            print(f"asyncsgd: {why}", file=sys.stderr, flush=True)
            return
        if self.algo.distributed and self.board.t0[0] == 0:
            # Before training began the survivors are joining the process group (or waiting at the
            # start line), which needs every worker: they would wait out its timeout. Fail now.
            if self.failure is None:
                self.failure = ("error", f"{why} during start-up, before training began; --algo "
                                f"{self.cfg.algorithm} cannot start without it (its process group needs every worker)")
            return
        if self.algo.tolerates_failures and len(self.lost) + 1 < self.n_proc:
            self.lost.append(rank)
            self.lost_reasons[rank] = why
            requeued = self.board.requeue_lost(rank)  # before lost[rank]: a survivor waiting at the end of
            self.board.lost[rank] = 1  # the plan stops waiting on it; exchanges stop sending to it
            print(f"asyncsgd: {why}; continuing with the survivors"
                  + (f" (its {requeued} unfinished batch(es) re-queued)" if requeued else ""), file=sys.stderr, flush=True)
            return
        if self.failure is None:
            self.failure = ("error", why + ("" if self.algo.tolerates_failures else
                                            f"; --algo {self.cfg.algorithm} cannot continue without it"))

    def _drain_errors(self) -> None:
        while True:
            try:
                rank, kind, message, tb = self.errors.get_nowait()
            except (queue.Empty, OSError, EOFError, ValueError):
                return
            if kind == "error" and self.algo.tolerates_failures and len(self.lost) + 1 < self.n_proc:
                self._worker_lost(rank, f"worker {rank} failed: {message}")
                continue
            if self.failure is None or (kind == "diverged" and self.failure[0] != "diverged"):
                self.failure = (kind, message, tb)

    def _raise_failure(self) -> None:
        if self.failure is None:
            return
        self.board.stop[0] = 1
        kind, message = self.failure[0], self.failure[1]
        if kind == "diverged":
            if self.writes_record:
                self._write_checkpoint()  # a copy the monitor had not saved yet is still a good one
            if (self.out / "checkpoint.pt").exists():
                raise DivergedError(message + f"; last good checkpoint kept in {self.out}")
            raise DivergedError(message + "; it diverged before the first checkpoint (see --checkpoint-every)")
        if len(self.failure) > 2 and self.failure[2] and self.writes_record:
            (self.out / "error.log").write_text(self.failure[2])
        raise WorkerError(message)

    def _stop_all(self, procs) -> None:
        """Stop the workers: board.stop, a grace period to finish their step, then SIGTERM, then
        SIGKILL. A second Ctrl-C (or SIGTERM) while this waits cuts it short: every worker still
        alive is killed at once, and the interrupt goes on once they are."""
        if any(p.is_alive() for p in procs):
            self.board.stop[0] = 1
        # Before training began there is nothing to save, and a worker blocked in joining the
        # process group never sees board.stop: no grace period then.
        deadline = time.time() + (STOP_GRACE_S if self.board.t0[0] > 0 else 1.0)
        try:
            for p in procs:
                p.join(timeout=max(0.1, deadline - time.time()))
            for p in procs:
                if p.is_alive():
                    p.terminate()
                    p.join(timeout=5)
        finally:  # also on a second interrupt: no worker outlives its launcher
            for p in procs:
                if p.is_alive():
                    p.kill()
                    p.join(timeout=5)

    def _poll(self, progress) -> None:
        progress.update()
        # After a divergence the slot may still be saved: the lead copies the model into it only
        # after a step whose loss was finite, and never leaves a non-finite copy there.
        seq = int(self.board.ckpt_seq[0])
        if seq != self._ckpt_seen and seq % 2 == 0:
            self._write_checkpoint_slot(seq)

    def _write_checkpoint_slot(self, seq: int) -> None:
        b = self.board
        state, momentum = b.ckpt_state.clone(), b.ckpt_momentum.clone()
        progress = b.ckpt_progress.clone()
        if int(b.ckpt_seq[0]) != seq:
            return  # overwritten while copying; the next poll takes the newer one
        self._ckpt_seen = seq
        if not torch.isfinite(state).all():
            return  # the lead skipped a non-finite copy; keep the last good file
        save_checkpoint(self.out, self._state_dict(state), momentum if self.cfg.momentum > 0 else None,
                        int(progress[0]), int(progress[1]), float(progress[2]), self.cfg.to_dict())

    def _write_checkpoint(self) -> None:
        seq = int(self.board.ckpt_seq[0])
        if seq != self._ckpt_seen and seq % 2 == 0:
            self._write_checkpoint_slot(seq)

    def _save_metrics_until_checkpoint(self) -> None:
        """On an interrupt, keep the evaluation points the last checkpoint covers (a resume appends)."""
        if self._ckpt_seen == 0:
            return
        done = int(self.board.ckpt_progress[1])
        rows = records.evaluate_snapshots(self.task, self.board, self.device, False, exclude=self.lost)
        records.write_metrics(self.out / "metrics.jsonl", [r for r in rows if r["samples"] <= done])

    def _state_dict(self, flat: torch.Tensor) -> dict:
        model = self.task.model_fn()
        StateFlattener(model).load_flat(model, flat)
        return model.state_dict()

    # -- the record -----------------------------------------------------------------------
    def _finish(self) -> dict:
        b = self.board
        wall = float(b.finish.max() - b.t0[0]) if b.t0[0] > 0 else 0.0
        if self.algo.shared_model:  # the shared model after the last worker finished: the run's final state
            b.put_snapshot(0, self.spec.samples_before + int(b.samples.sum()), wall,
                           lambda slot: self.flat.to_flat(self.model, slot))
        if 0 in self.lost and self.algo.snapshot_all_replicas:
            # Replica 0 died: the first survivor's replica stands in as "the" model (row 0 is what
            # the record evaluates); the replicas' average is still over the survivors only.
            alive = [r for r in range(b.snap.shape[0]) if r not in self.lost and int(b.snap_count[r]) > 0]
            if alive:
                for t_ in (b.snap, b.snap_time, b.snap_samples, b.snap_count):
                    t_[0] = t_[alive[0]]
        t = time.perf_counter()
        tick = self.progress.evaluating(int(b.snap_count[0]))
        metrics = records.evaluate_snapshots(self.task, b, self.device, self.algo.snapshot_all_replicas, on_row=tick,
                                             exclude=self.lost)
        self.progress.evaluated()
        eval_s = time.perf_counter() - t
        if self.resumed is not None:  # keep the evaluation points from before the interruption
            before = [r for r in records.read_metrics(self.out / "metrics.jsonl")
                      if r["samples"] <= self.spec.samples_before]
            metrics = before + [r for r in metrics if r["samples"] > self.spec.samples_before]
        records.write_metrics(self.out / "metrics.jsonl", records.add_lr(metrics, self.cfg, self.total))
        final_state = self._state_dict(b.snap[0, int(b.snap_count[0]) - 1]) if b.snap_count[0] > 0 else \
            self.model.state_dict()
        record = records.RunRecord(
            cfg=self.cfg, task=self.task, board=b, model=self.model, out=self.out, device=self.device,
            workers=self.n_proc, launch=self.spec.launch.name, algo=self.algo, lost=self.lost, lost_reasons=self.lost_reasons, setup_s=self.setup_s,
            samples_before=self.spec.samples_before, elapsed_before=self.spec.elapsed_before,
            resumed=self.resumed is not None, metrics=metrics, started_at=self.started_at)
        summary = records.summary(record, metrics, wall, eval_s)
        t = time.perf_counter()
        save_checkpoint(self.out, final_state, None, math.ceil(self.total / self.cfg.batch_size), self.total,
                        wall, self.cfg.to_dict())
        if self.cfg.tensorboard:
            records.write_tensorboard(record, summary, metrics)
        writing_s = time.perf_counter() - t
        # Where the command's seconds went: building the task, starting the workers (spawn, imports,
        # the process group) until training began, training, evaluating the snapshots, writing.
        started = float(b.t0[0]) + self.spec.elapsed_before if b.t0[0] > 0 else time.time()
        summary["timings"] = {
            "setup_s": round(self.setup_s, 3), "startup_s": round(max(0.0, started - self.run_started), 3),
            "training_s": round(wall - self.spec.elapsed_before, 3), "evaluation_s": round(eval_s, 3),
            "writing_s": round(writing_s, 3), "total_s": round(time.perf_counter() - self.created, 3)}
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary
