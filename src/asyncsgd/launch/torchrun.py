"""torchrun: this process is one worker (rank) of a job that torchrun started on one or more
machines (`torchrun --nnodes ... -m asyncsgd train ...`); docs/distributed.md.

- TorchrunLauncher: the Launcher of one rank; it runs worker_main inline, rank 0 writes the record.
- The rules of this launch mode (strided batches, resume point, start line): modes.TorchrunLaunch.
- The end of the run (who finished, who is lost; the survivors' boards combined): job.py.
"""

from __future__ import annotations

import os
import queue
import threading
import time

from ..algorithms.registry import ALGORITHMS, get_algorithm
from ..config import RunConfig
from ..errors import ConfigError, DivergedError, WorkerError
from .local import POLL_S, Launcher
from .modes import TorchrunLaunch
from .worker import worker_main


def torchrun_env() -> dict | None:
    """This process's place in a torchrun job (RANK, WORLD_SIZE, MASTER_ADDR/PORT set), or None."""
    env = os.environ
    if not all(k in env for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")):
        return None
    try:
        return {"rank": int(env["RANK"]), "world_size": int(env["WORLD_SIZE"]),
                "local_rank": int(env.get("LOCAL_RANK", 0)), "local_world_size": int(env.get("LOCAL_WORLD_SIZE", 1))}
    except ValueError:
        return None


class TorchrunLauncher(Launcher):
    """This process IS worker RANK of a torchrun job (`torchrun ... -m asyncsgd train ...`).

    Every rank builds the task and the model with the same seed, keeps a local Board and runs
    worker_main inline (the env:// store, held by TorchrunJob; a barrier is the start line). The
    world size is the number of workers: --workers (sync, ddp, dasgd, layup, pdasgd --sharing
    average) or --groups (lpap) is set from WORLD_SIZE. Data:
    strided batches (no shared claim counter across machines). At the end the ranks agree on who
    finished through the job's store (TorchrunJob), the survivors' boards are summed
    (gather_board) and rank 0 evaluates and writes the run record (and writes the checkpoints
    during the run); the other ranks write nothing and return. Failures: a rank that fails
    raises (exit code 1). The survivors of a dead rank other than 0 carry on in the algorithms
    that tolerate failures (dasgd, lpap, layup, pdasgd --sharing average: their exchange saw it
    die), and the record lists it in lost_workers; without rank 0 there is no record, so the
    other ranks stop and exit 1 (_watch_rank0)."""

    def __init__(self, cfg: RunConfig, env: dict, task=None):
        world = env["world_size"]
        algo = get_algorithm(cfg.algorithm).for_config(cfg.replace(workers=world))  # as it will run: WORLD_SIZE workers
        if not algo.distributed:
            distributed = ", ".join(n if a.distributed is True else f"{n} {a.distributed_with}"
                                    for n, a in ALGORITHMS.items() if a.distributed)
            raise ConfigError(f"--algo {cfg.algorithm!r} does not run across processes under torchrun "
                              f"(WORLD_SIZE={world}); accepted: {distributed}")
        if algo.processes(cfg) != world:
            for field_ in ("workers", "groups"):
                if algo.processes(cfg.replace(**{field_: world})) == world:
                    # WORLD_SIZE decides, not a machine-chosen --workers (whose reason would then be wrong)
                    cfg = cfg.replace(**{field_: world, "workers_from": None})
                    break
            else:
                raise ConfigError(f"torchrun started {world} processes but --algo {cfg.algorithm} runs "
                                  f"{algo.processes(cfg)}; accepted: a world size equal to its process count")
        self.dist_rank = env["rank"]
        self.writes_record = self.dist_rank == 0
        if not self.writes_record:
            cfg = cfg.replace(progress="none")
        super().__init__(cfg, task, launch=TorchrunLaunch(env["local_rank"], env["local_world_size"]))
        self.errors = queue.Queue()
        self.spec.errors = self.errors

    def run(self) -> dict:
        progress = self.progress
        progress.total, progress.board, progress.before = self.total, self.board, self.spec.samples_before
        progress.elapsed_before = self.spec.elapsed_before
        self.run_started = time.time()
        done = threading.Event()
        if self.writes_record:  # progress and checkpoints: rank 0 only
            monitor = threading.Thread(target=self._monitor_thread, args=(progress, done), name="asyncsgd-monitor")
        else:
            monitor = threading.Thread(target=self._watch_rank0, args=(done,), name="asyncsgd-watch-rank0")
        monitor.start()
        try:
            try:
                worker_main(self.dist_rank, self.spec)
            finally:
                done.set()
                monitor.join(timeout=30)
                progress.close()
            self._drain_errors()
            self._raise_failure()
        except KeyboardInterrupt:  # torchrun's SIGTERM, or Ctrl-C: the record says so, as a local run's does
            self.board.stop[0] = 1
            if self.writes_record:  # rank 0: the checkpoint and the record are its own
                self._write_checkpoint()
                self._save_metrics_until_checkpoint()
            self._write_ended("interrupted", "interrupted (Ctrl-C or SIGTERM); --resume DIR continues from the last checkpoint")
            raise
        except DivergedError as e:
            self._write_ended("diverged", str(e))  # rank 0 only (writes_record), as every record
            raise
        except WorkerError as e:
            self._write_ended("error", str(e))
            raise
        self.lost = [r for r in range(self.n_proc) if int(self.board.lost[r])]  # agreed on in TorchrunJob.finish
        self.lost_reasons = {r: f"worker {r} became unreachable (a peer's connection to it failed)" for r in self.lost}
        if not self.writes_record:
            return {"torchrun_rank": self.dist_rank, "record_written": False}
        self._write_checkpoint()
        return self._finish()

    def _watch_rank0(self, done: threading.Event) -> None:
        """Ranks other than 0: once this rank's exchange saw rank 0 die, stop training (board.stop)
        instead of finishing work that no record will hold; TorchrunJob.finish then fails the rank."""
        while not done.wait(POLL_S):
            if int(self.board.lost[0]):
                self.board.stop[0] = 1
                return

    def _drain_errors(self) -> None:
        """Every report on this queue is this process's own failure (a peer's death is seen by the
        exchange and settled by TorchrunJob), so never the base class's 'continue without it'."""
        while True:
            try:
                _, kind, message, tb = self.errors.get_nowait()
            except queue.Empty:
                return
            if self.failure is None or (kind == "diverged" and self.failure[0] != "diverged"):
                self.failure = (kind, message, tb)
