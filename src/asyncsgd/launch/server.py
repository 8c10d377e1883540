"""The forkserver that forks a run's worker processes, and its early start.

Imports no torch (the standard library, and the registry for the names of the algorithms' worker
modules), so that the command line can start the server before it imports torch itself
(cli.main): the server's imports (torch, 1.8 s of start-up per run on our 2-core machine,
summary.json's time split) then overlap with the launcher's own instead of following them.

Ownership (the concurrency contract):
- A run's Launcher takes the server (take_server): the one started early if there is one,
  else a new one. It starts the workers from it and stops it after the last worker has ended.
- start_early starts one before the run's settings are known (only the command line calls it).
  Whoever calls it calls stop_early when the command ends: that stops the server if no run took
  it (the run was in-process, simulated, refused, or interrupted first) and does nothing if one
  did. A server nobody stops still ends with its launcher: its pipe from the launcher closes.
"""

from __future__ import annotations

import multiprocessing as mp
import os

from ..algorithms.registry import ALGORITHMS

# What the forkserver imports once, so that each worker it forks starts with them imported: a
# spawned worker imported torch itself (2.6 s of CPU on our 2-core machine, 5 s of start-up for
# 4 workers; measured with summary.json's time split). The algorithms' worker modules too: the
# registry names them without importing them (algorithms/base.later).
WORKER_PRELOAD = ["torch", "asyncsgd.launch.worker", *(a.worker.module for a in ALGORITHMS.values())]


def worker_context():
    """The multiprocessing context of the worker processes: forkserver where the platform has it
    (WorkerServer below), spawn elsewhere."""
    return mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")


class WorkerServer:
    """One run's forkserver: a process that imports WORKER_PRELOAD once and forks every worker of
    the run from itself, so no worker imports torch again. Nothing has run in it but imports (no
    thread pool, no CUDA), which is what makes the fork safe; each worker still gets the launcher's
    sys.path, working directory and main module (multiprocessing's preparation data, as with
    spawn), and its environment from WorkerSpec.environ (the server's is that of its start).

    Ownership: the Launcher takes it (take_server) before the first worker and stops it after the
    last one has ended (the server reports the workers' exit codes, so it must outlive them). multiprocessing
    keeps one server per process; WorkerServer starts and stops that one (through the private
    fields of multiprocessing.forkserver, the same in Python 3.10 to 3.13), so every run of a
    long-lived process (the Python API) gets a fresh server. Its socket (a path: AF_UNIX) is only
    needed to fork: once every worker is forked the socket and its folder are removed (the server
    keeps its listening descriptor, the exit codes come back on per-worker pipes), so a launcher
    killed later leaves nothing in the temporary folder. The server then ends by itself (its pipe
    from the launcher closes; the workers let go of their copies: worker.let_go_of_the_forkserver),
    and so its workers see their parent change (worker.watch_launcher)."""

    def __init__(self):
        self.folder = None
        self.pid = None

    def start(self) -> None:
        if worker_context().get_start_method() != "forkserver":
            return
        import tempfile
        from multiprocessing import forkserver, process
        # its own short folder (an AF_UNIX path has at most 107 bytes: a run directory can be longer)
        self.folder = tempfile.mkdtemp(prefix="asyncsgd-")
        worker_context().set_forkserver_preload(WORKER_PRELOAD)
        config = process.current_process()._config  # where multiprocessing makes its socket
        before = config.get("tempdir")
        config["tempdir"] = self.folder
        try:
            forkserver.ensure_running()
        finally:
            if before is None:
                config.pop("tempdir", None)
            else:
                config["tempdir"] = before
        self.pid = forkserver._forkserver._forkserver_pid

    def forked_all(self) -> None:
        """Every worker is forked: remove the socket and its folder."""
        if self.folder is not None:
            import shutil
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    def stop(self) -> None:
        """After the last worker was joined (Launcher._stop_all), or when it forked none: close the
        server's pipe and kill it. Its work is done by then: every worker's exit code has come back
        through its own pipe, and it holds nothing else (no file, no shared memory: it has only
        imported modules). Left to exit by itself it tore down an interpreter with torch loaded,
        0.54-0.66 s on the launcher's path at the end of every multi-process run (measured on our
        2-core machine, `asyncsgd train --algo dasgd --workers 2`). A worker that could not be
        stopped, if any, then sees its parent change and leaves (worker.watch_launcher)."""
        self.forked_all()
        if self.pid is None:
            return
        import signal
        from multiprocessing import forkserver
        server = forkserver._forkserver
        with server._lock:
            if server._forkserver_pid == self.pid:
                os.close(server._forkserver_alive_fd)
                server._forkserver_alive_fd = server._forkserver_pid = server._forkserver_address = None
        try:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):  # already reaped (multiprocessing restarts a dead server itself)
            pass
        self.pid = None


_early: WorkerServer | None = None  # started by start_early, not yet taken by a run


def start_early() -> None:
    """Start this process's server now, before torch is imported here (see the module's docstring)."""
    global _early
    if _early is None:
        server = WorkerServer()
        server.start()
        _early = server


def take_server() -> WorkerServer:
    """The server of the run about to start its workers, started: the early one, once, or a new one."""
    global _early
    server, _early = _early, None
    if server is None or server.pid is None:
        server = WorkerServer()
        try:
            server.start()
        except BaseException:  # half started (its folder made, maybe its process): leave nothing behind
            server.stop()
            raise
    return server


def stop_early() -> None:
    """The command has ended: stop an early server that no run took."""
    global _early
    server, _early = _early, None
    if server is not None:
        server.stop()
