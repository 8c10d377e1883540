"""What a local run exposes and leaves behind: no listening socket beyond loopback, and no
rendezvous file or 'training' state once it ended."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import read_run

LOOPBACK = {"0100007F", "00000000000000000000000001000000"}  # 127.0.0.1 and ::1 as /proc/net/tcp{,6} writes them


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        pass
    return inodes


def _listening() -> dict[str, str]:
    """inode -> local address (hex, as the kernel writes it) of every listening TCP socket."""
    out = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                cols = line.split()
                if cols[3] == "0A":  # LISTEN
                    out[cols[9]] = cols[1].split(":")[0]
    return out


def test_a_local_four_worker_run_listens_on_loopback_only(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "asyncsgd", "train", "--algo", "dasgd", "--workers", "4",
                             "--epochs", "1", "--progress", "none", "--threads-per-worker", "1", "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen: dict[str, str] = {}
    try:
        deadline = time.time() + 240
        while proc.poll() is None and time.time() < deadline:
            try:
                info = json.loads((out / "workers.json").read_text())
            except (OSError, ValueError):
                time.sleep(0.05)
                continue
            pids = [info["launcher_pid"]] + [w["pid"] for w in info["workers"]]
            listening = _listening()
            for pid in pids:
                for inode in _socket_inodes(pid) & set(listening):
                    seen[inode] = listening[inode]
            time.sleep(0.05)
        assert proc.wait(timeout=60) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert seen, "gloo's listening sockets were never seen: the check itself is broken"
    assert set(seen.values()) <= LOOPBACK, seen
    summary, _ = read_run(out)
    assert summary["samples"] == 8000
    assert json.loads((out / "workers.json").read_text())["state"] == "done"
    assert not (out / ".asyncsgd-store").exists()


KILL_RUNS = {
    "sync": ["--algo", "sync"],
    "hogwild": ["--algo", "hogwild"],
    "dasgd": ["--algo", "dasgd"],
    "lpap": ["--algo", "lpap"],
    "pdasgd shared memory": ["--algo", "pdasgd", "--workers", "2"],
    "pdasgd replicas": ["--algo", "pdasgd", "--workers", "2", "--sharing", "average"],
    "ddp": ["--algo", "ddp"],
    "layup": ["--algo", "layup"],
}


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"  # a zombie has ended
    except OSError:
        return False


@pytest.mark.parametrize("name", sorted(KILL_RUNS))
def test_no_worker_outlives_a_killed_launcher(name, tmp_path):
    """SIGKILL the launcher mid-training: every worker process is gone within 15 s, and nothing
    of the run is left outside its directory."""
    out, tmp = tmp_path / "run", tmp_path / "tmp"
    tmp.mkdir()  # the run's temporary folder: whatever it leaves outside its directory would land here
    proc = subprocess.Popen([sys.executable, "-m", "asyncsgd", "train", *KILL_RUNS[name], "--epochs", "50",
                             "--progress", "none", "--threads-per-worker", "1", "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, "TMPDIR": str(tmp)})
    try:
        deadline = time.time() + 180
        info = None
        while time.time() < deadline and proc.poll() is None:
            try:
                info = json.loads((out / "workers.json").read_text())
                if info["state"] == "training":
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        assert info is not None and info["state"] == "training", "the run never started training"
        workers = [w["pid"] for w in info["workers"]]
        assert workers and all(_alive(p) for p in workers)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        gone_by = time.time() + 15
        while time.time() < gone_by and any(_alive(p) for p in workers):
            time.sleep(0.2)
        assert [p for p in workers if _alive(p)] == []
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the test's own cleanup, whatever happened above
        except OSError:
            pass
    assert os.listdir(tmp) == []
    # torch's shared memory of the run (named /dev/shm/torch_<pid>_...): none of its processes' is left
    pids = {str(proc.pid), *map(str, workers)}
    assert [f for f in _shm_files() if set(f.split("_")) & pids] == []


def _shm_files() -> list[str]:
    try:
        return os.listdir("/dev/shm")
    except OSError:
        return []


def test_a_lost_workers_unbooked_batches_are_claimed_again_first(tmp_path):
    """The board's re-queue: what a lost worker claimed and did not book comes back, in plan
    order, before any unclaimed batch; what it booked does not."""
    from asyncsgd.board import Board, ClaimLock
    b = Board(2, 1, 1, 1, 1, lock=ClaimLock(tmp_path), inflight_slots=4)
    assert [b.claim(1, 10) for _ in range(3)] == [0, 1, 2]
    b.booked(1, 1)
    assert b.peers_busy(0) and not b.peers_busy(1)
    b.status[1] = 3
    assert not b.peers_busy(0)  # a worker that finished leaves nothing behind
    b.status[1] = 2
    assert b.requeue_lost(1) == 2
    b.lost[1] = 1
    assert not b.peers_busy(0)
    assert [b.claim(0, 10) for _ in range(3)] == [0, 2, 3]
    assert int(b.requeue_ends[1]) == 2
    assert [b.claim(0, 4) for _ in range(2)] == [4, 4]  # past the plan the counter stays put


def test_a_claim_lock_without_a_directory_leaves_no_file(tmp_path, monkeypatch):
    """A torchrun rank that writes no record makes its claim lock without a run directory: the
    lock still excludes, and nothing of it is in the temporary folder even while it is held (so
    a killed rank leaves nothing there)."""
    import tempfile
    import threading
    from asyncsgd.board import ClaimLock
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    lock = ClaimLock()
    held, inside, most = [], [0], [0]

    def hold():
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
            time.sleep(0.02)  # long enough for the other threads to try
            held.append(os.listdir(tmp_path))
            inside[0] -= 1

    threads = [threading.Thread(target=hold) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert most == [1] and held == [[]] * 4 and os.listdir(tmp_path) == []


STARTUP_KILLS = {
    "dasgd": ["--algo", "dasgd", "--workers", "3"],
    "lpap": ["--algo", "lpap", "--groups", "3", "--workers-per-group", "1"],
    "pdasgd replicas": ["--algo", "pdasgd", "--sharing", "average", "--workers", "3"],
    "layup": ["--algo", "layup", "--workers", "3"],
}


@pytest.mark.parametrize("name", sorted(STARTUP_KILLS))
def test_a_worker_killed_during_start_up_fails_the_run_fast(name, tmp_path):
    """A worker SIGKILLed while the processes start (workers.json says starting: they are still
    importing torch) leaves the others joining a process group that needs it: the run fails at
    once with one clear line, instead of waiting out the group's timeout (it waited 120 s)."""
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "asyncsgd", "train", *STARTUP_KILLS[name], "--epochs", "1",
                             "--progress", "none", "--threads-per-worker", "1", "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.time() + 120
        info = None
        while time.time() < deadline and proc.poll() is None:
            try:
                info = json.loads((out / "workers.json").read_text())
                break
            except (OSError, ValueError):
                time.sleep(0.02)
        assert info is not None and info["state"] == "starting", info
        os.kill(info["workers"][1]["pid"], signal.SIGKILL)
        killed = time.time()
        try:
            _, err = proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:  # keep what the run said, to find the wait that did not end
            os.killpg(proc.pid, signal.SIGKILL)
            _, err = proc.communicate(timeout=30)
            logs = {p.name: p.read_text()[-2000:] for p in out.glob("*.log")}
            pytest.fail(f"the launcher had not exited 90 s after the kill; workers.json "
                        f"{(out / 'workers.json').read_text()}; stderr {err[-3000:]!r}; logs {logs}")
        took = time.time() - killed
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
    assert proc.returncode == 1, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "worker 1 was killed by SIGKILL (exit code -9) during start-up" in lines[0] and "cannot start without it" in lines[0]
    assert took < 30, took  # the survivors are stopped at once (the group's timeout is 120 s)
    assert [w["pid"] for w in info["workers"] if _alive(w["pid"])] == []
    assert json.loads((out / "workers.json").read_text())["state"] == "failed"


def test_a_diverged_dasgd_run_exits_3_at_once(tmp_path):
    """lr 1000 without the clip diverges within a few updates: exit 3 soon after training began (the
    workers' exchanges used to wait 30 s on receivers blocked on each other, and the run took 32 s),
    without the abort of a process group torn down under a blocked receive ('terminate called').
    (dasgd's default clip at 2 bounds every step, so the loss stays finite: it is turned off.)"""
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "asyncsgd", "train", "--algo", "dasgd", "--workers", "2", "--lr", "1000",
                             "--clip-grad-norm", "0", "--warmup-epochs", "0", "--epochs", "2", "--progress", "none", "--threads-per-worker", "1",
                             "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.time() + 180
        while time.time() < deadline and proc.poll() is None:
            try:
                if json.loads((out / "workers.json").read_text())["state"] != "starting":
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.02)
        began = time.time()
        _, err = proc.communicate(timeout=120)
        took = time.time() - began
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
    assert proc.returncode == 3, err
    assert "terminate called" not in err and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("asyncsgd: error: training diverged"), err
    assert took < 20, (took, err)
    assert json.loads((out / "summary.json").read_text())["status"] == "diverged"
    assert json.loads((out / "workers.json").read_text())["state"] == "diverged"


# -- the forkserver started before the launcher imports torch (launch/server.py) ------------------

def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_an_early_worker_server_is_taken_once_and_an_untaken_one_is_reaped():
    from asyncsgd.launch import server
    server.start_early()
    early = server._early
    assert early is not None and _alive(early.pid)
    pid, folder = early.pid, early.folder
    taken = server.take_server()
    assert taken is early and server._early is None  # handed over once: the next run gets a new one
    t0 = time.monotonic()
    taken.stop()  # killed, not left to finish its imports and tear torch down (over 1 s here before)
    assert time.monotonic() - t0 < 0.5
    assert not _alive(pid) and not os.path.exists(folder)

    server.start_early()
    pid = server._early.pid
    t0 = time.monotonic()
    server.stop_early()  # no run took it: killed at once, not left to finish importing torch
    assert time.monotonic() - t0 < 1.0 and server._early is None
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reaped: no zombie left behind


@pytest.mark.parametrize("argv,starts", [
    (["train"], True), (["train", "--algo", "hogwild", "--workers", "2"], True), (["train", "--algo=dasgd"], True),
    (["train", "--algo", "sequential"], False), (["train", "--algo=sequential"], False),
    (["train", "--runtime", "sim", "--algo", "dasgd"], False), (["train", "--help"], False),
    (["bench", "--suite", "quick"], False), (["report", "runs"], False), ([], False)])
def test_the_command_line_starts_the_worker_server_early_only_for_a_run_that_starts_workers(argv, starts):
    """Decided from the words alone, in a fresh interpreter (one that has imported torch gains nothing)."""
    code = f"import sys; from asyncsgd import cli; assert 'torch' not in sys.modules; print(cli._starts_workers({argv!r}))"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(starts)


def test_a_worker_server_that_fails_to_start_leaves_no_folder(monkeypatch):
    """take_server stops a server whose start raised (the launcher's finally never sees it)."""
    import tempfile
    from multiprocessing import forkserver
    from asyncsgd.launch import server
    made = []
    real_mkdtemp = tempfile.mkdtemp
    monkeypatch.setattr(tempfile, "mkdtemp", lambda **kw: made.append(real_mkdtemp(**kw)) or made[-1])

    def refuse():
        raise OSError("no forkserver today")
    monkeypatch.setattr(forkserver, "ensure_running", refuse)
    with pytest.raises(OSError, match="no forkserver today"):
        server.take_server()
    assert made and not os.path.exists(made[0])


def test_a_second_interrupt_while_the_workers_stop_kills_them_at_once():
    """Ctrl-C (or SIGTERM) again during the launcher's grace period for its workers: it does not
    leave them running; every worker still alive is killed at once, and the interrupt goes on."""
    from types import SimpleNamespace

    from asyncsgd.launch.local import Launcher

    class Worker:  # a worker process that does not stop by itself
        def __init__(self, interrupt_join: bool):
            self.alive, self.interrupt_join, self.signals = True, interrupt_join, []

        def is_alive(self):
            return self.alive

        def join(self, timeout=None):
            if self.interrupt_join:  # the second Ctrl-C arrives while the launcher waits here
                self.interrupt_join = False
                raise KeyboardInterrupt

        def terminate(self):
            self.signals.append("SIGTERM")

        def kill(self):
            self.signals.append("SIGKILL")
            self.alive = False

    workers = [Worker(interrupt_join=True), Worker(interrupt_join=False)]
    launcher = SimpleNamespace(board=SimpleNamespace(stop=[0], t0=[1.0]))  # training had begun
    with pytest.raises(KeyboardInterrupt):
        Launcher._stop_all(launcher, workers)
    assert launcher.board.stop == [1]
    assert [w.signals for w in workers] == [["SIGKILL"], ["SIGKILL"]] and not any(w.alive for w in workers)


def test_a_stalled_run_in_the_launchers_own_process_stops_after_the_stall_timeout(tmp_path):
    """--stall-timeout holds for a run in the launcher's own process (sequential; hogwild or pdasgd
    with one process) as for worker processes: a step that hangs past it stops the run with that
    reason once the step returns, instead of the option being ignored there (the run went on)."""
    import time as _time

    import torch
    from torch.utils.data import TensorDataset

    import asyncsgd
    from asyncsgd.errors import WorkerError

    made = []

    class HangsOnce(torch.nn.Module):  # its 20th training forward takes 3 s, 3x the stall timeout
        def __init__(self):
            super().__init__()
            self.linear, self.calls = torch.nn.Linear(4, 2), 0
            made.append(self)

        def forward(self, x):
            self.calls += 1
            if self.training and self.calls == 20:
                _time.sleep(3)
            return self.linear(x)

    data = TensorDataset(torch.randn(640, 4), torch.randint(0, 2, (640,)))
    with pytest.raises(WorkerError, match=r"no progress for 1 s \(--stall-timeout\); training stopped"):
        asyncsgd.train(HangsOnce, data, data, algorithm="sequential", epochs=5, stall_timeout=1.0,
                       progress="none", out=str(tmp_path / "run"))
    # stopped after the step that hung, not trained on to the end (100 steps)
    assert 20 <= max(m.calls for m in made) < 30
    ended = json.loads((tmp_path / "run" / "summary.json").read_text())  # the record says how it ended
    assert ended["status"] == "error" and ended["why"].startswith("no progress for 1 s (--stall-timeout)")
    assert 0 < ended["samples"] < ended["planned_samples"]
