"""worker_main: the entry point of every worker process (or of the one in-process worker, or of a
torchrun rank). It sets the process's threads and device, joins the process group through its
launch mode, runs the algorithm's schedule with a WorkerContext, and reports every failure to
the launcher (the errors queue) before it leaves; the process group is destroyed on every path."""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
import traceback

import torch

from ..algorithms.registry import get_algorithm
from ..engine import WorkerContext, WorkerSpec, set_threads
from ..errors import DivergedError, WorkerError


LAUNCHER_POLL_S = 0.5


def watch_launcher() -> threading.Thread:
    """A worker process never outlives its launcher: a daemon thread looks at the parent pid every
    LAUNCHER_POLL_S and ends the process when the launcher is gone (SIGKILL, a crash), wherever its
    threads are blocked (a collective waiting for a peer, a queue). Nothing is lost that could be
    kept: without the launcher there is no record to write."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(LAUNCHER_POLL_S)
        os._exit(1)
    t = threading.Thread(target=watch, name="asyncsgd-watch-launcher", daemon=True)
    t.start()
    return t


def let_go_of_the_forkserver() -> None:
    """multiprocessing hands every process the forkserver forks the write end of the pipe by which
    the server sees its launcher end (so that the child could start processes of its own; ours
    start none). While a worker holds it, a killed launcher's server never ends, the workers'
    parent never changes and watch_launcher never fires (measured: they trained on). Closed, the
    server ends with the launcher and its workers follow within LAUNCHER_POLL_S."""
    from multiprocessing import forkserver
    server = forkserver._forkserver  # multiprocessing's own singleton; None-valued under spawn
    if server._forkserver_alive_fd is not None:
        os.close(server._forkserver_alive_fd)
        server._forkserver_alive_fd = None


def worker_main(rank: int, spec: WorkerSpec) -> None:
    """Entry point of every worker (process or in-process): runs the algorithm's schedule."""
    algo = get_algorithm(spec.algorithm).for_config(spec.config)  # pdasgd: shared model or replicas
    board, launch = spec.board, spec.launch
    group = failed = False
    diverged = None  # this worker's divergence message (torchrun: the others end with it)
    job = None  # torchrun: this rank's handle on the job's store (end-of-run agreement)
    spawned = spec.errors is not None and not isinstance(spec.errors, queue.Queue)  # a process the launcher started
    if spawned:
        if spec.environ is not None:  # forked by the forkserver, whose environment is that of its start
            os.environ.clear()
            os.environ.update(spec.environ)
        let_go_of_the_forkserver()
        import signal
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the launcher's to handle
        watch_launcher()
    try:
        set_threads(spec, launch.processes_here(spec))
        if spec.device.startswith("cuda"):
            local = launch.local_index(rank)
            torch.cuda.set_device(local % torch.cuda.device_count())
            spec.device = f"cuda:{local % torch.cuda.device_count()}"
        if algo.distributed:
            import datetime
            # nccl needs one GPU per rank; ranks sharing a GPU all-reduce CUDA tensors through gloo
            one_gpu_each = spec.device.startswith("cuda") and spec.world_size <= torch.cuda.device_count()
            backend = "nccl" if one_gpu_each else "gloo"
            timeout = datetime.timedelta(seconds=max(60.0, spec.config.stall_timeout))
            job = launch.join_group(spec, rank, backend, timeout)
            group = True
        algo.worker(WorkerContext(spec, rank))
        if job is not None:
            job.finish(board, algo, spec.config)
    except DivergedError as e:
        diverged = str(e)
        _report(spec, rank, "diverged", diverged)
    except KeyboardInterrupt:
        board.stop[0] = 1
        raise
    except BaseException as e:  # report every failure to the launcher, then leave
        failed = True
        board.status[rank] = 4
        message = str(e) if isinstance(e, WorkerError) else f"{type(e).__name__}: {e}"  # ours: already says it all
        message = launch.explain_failure(e, message, algo, rank)
        _report(spec, rank, "error", message, traceback.format_exc())
        if spec.errors is None:
            raise
    finally:
        if job is not None:
            job.close(diverged)  # a rank that did not finish says so, so rank 0 need not wait for it
        if group and spawned and (board.stop[0] or failed):  # failed: the survivors go on (board.stop
            # unset), and this worker's exchange may have abandoned receivers blocked on them
            _leave_now(spec)
        if group and (board.stop[0] or failed):
            # torchrun (not spawned): a run told to stop, or a rank that failed, may have left
            # exchange threads blocked in a gloo receive from a peer, and tearing the group down
            # under them aborts the process ("terminate called": 1 diverged two-rank dasgd run in 3), here or
            # in the group's destructor at exit. So the group is left in place, and the command
            # ends the process with os._exit once the record and the error line are out (cli.main).
            global PROCESS_GROUP_LEFT
            PROCESS_GROUP_LEFT = True
            group = False
        if group:
            import torch.distributed as dist
            try:
                dist.destroy_process_group()
            except Exception:
                pass


# A torchrun worker told to stop left its process group in place (worker_main): cli.main then ends
# the process with os._exit, so that no destructor tears the group down under a blocked receive.
PROCESS_GROUP_LEFT = False


def _leave_now(spec: WorkerSpec) -> None:
    """A worker of a run told to stop (a divergence, a failure, Ctrl-C) ends its process here, once
    its report has reached the launcher: its exchange threads may still be blocked in a gloo
    receive from a peer that is stopping too, and tearing the process group down under them
    aborts the process ("terminate called without an active exception" on stderr). Everything
    the run keeps lives in the launcher; the launcher owns this process and sees exit code 0."""
    try:
        spec.errors.close()
        spec.errors.join_thread()  # the queue's feeder thread has handed our report over
    except Exception:
        pass
    sys.stderr.flush()
    os._exit(0)


def _report(spec: WorkerSpec, rank: int, kind: str, message: str, tb: str = "") -> None:
    if spec.errors is not None:
        try:
            spec.errors.put((rank, kind, message, tb), timeout=5)
        except Exception:
            pass
