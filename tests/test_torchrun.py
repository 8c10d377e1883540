"""torchrun: two invocations on loopback (--nnodes 2, one process each) train one run together;
rank 0 writes the record, the other rank writes nothing and exits 0."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from conftest import read_run, run_cli

ARGS = ["--threads-per-worker", "1", "--progress", "none", "--eval-points", "5"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_pair(tmp_path, *train_args, timeout: float = 150):
    """Start node 0 and node 1 (static rendezvous at 127.0.0.1:free port); return both results."""
    port = free_port()
    procs = []
    for node in (0, 1):
        out = tmp_path / f"node{node}"  # each node gets its own --out: only node 0's may appear
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
               "--node-rank", str(node), "--master-addr", "127.0.0.1", "--master-port", str(port),
               "--max-restarts", "0", "-m", "asyncsgd", "train", "--out", str(out), *map(str, train_args), *ARGS]
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      env={**env, "PYTHONUNBUFFERED": "1"}))
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            results.append((p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate(timeout=30)
    return results


@pytest.mark.parametrize("algo,extra", [("dasgd", ["--momentum", "0", "--lr", "0.1"]), ("sync", [])])
def test_two_torchrun_nodes_train_one_run(tmp_path, algo, extra):
    (rc0, out0, err0), (rc1, out1, err1) = torchrun_pair(tmp_path, "--algo", algo, "--epochs", 2, *extra)
    assert rc0 == 0, err0[-3000:]
    assert rc1 == 0, err1[-3000:]
    s, metrics = read_run(tmp_path / "node0")
    assert s["workers"] == 2 and s["algorithm"] == algo
    assert s["samples"] == 2 * 8000  # both ranks' samples, summed across the boards
    assert all(w["samples"] > 0 for w in s["per_worker"])
    assert s["final_test_accuracy"] > 0.3 and len(metrics) >= 2
    assert not (tmp_path / "node1").exists()  # rank 1 wrote nothing
    assert "record" in out0 and out1.strip() == ""
    if algo == "dasgd":
        assert s["exchange"]["data_messages"] > 0 and s["consensus_distance"] < 1e-3


def test_torchrun_rejects_a_single_process_algorithm(tmp_path):
    env = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}
    r = run_cli("train", "--algo", "hogwild", "--epochs", 1, *ARGS, "--out", tmp_path / "x", env=env)
    assert r.returncode == 2
    assert "does not run across processes under torchrun" in r.stderr and "dasgd" in r.stderr
    assert "Traceback" not in r.stderr
