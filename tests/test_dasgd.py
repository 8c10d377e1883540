"""dasgd: accuracy, replica agreement, staleness drops, message counts per topology, a killed worker.

Settings: --momentum 0 --lr 0.1 --clip-grad-norm 0 (the paper's plain SGD). With the default
momentum 0.9 and lr 0.05, 4 asynchronous workers on 2 busy cores see a staleness of ~4-9 and diverge on mnist1d (so does
a simulation with a fixed staleness of 3, docs/distributed.md), so the accuracy tests use the
setting where asynchrony is stable here.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import read_run, run_cli

from asyncsgd.cli import build_parser, config_from_args
from asyncsgd.settings import resolve

FAST = ["--threads-per-worker", "1", "--progress", "none", "--eval-points", "6"]
PLAIN = ["--momentum", "0", "--lr", "0.1", "--clip-grad-norm", "0"]  # plain SGD, for sequential too
ANALYSED = [*PLAIN, "--staleness", "none", "--send-every", "1"]  # the paper's dasgd (not the defaults)
# the same at lr 0.05: lr 0.1 is not stable at 4 workers
ANALYSED_STABLE = ["--momentum", "0", "--lr", "0.05", "--clip-grad-norm", "0", "--staleness", "none",
                   "--send-every", "1"]


def test_dasgd_four_workers_learn_and_replicas_agree(tmp_path):
    """The analysed form at lr 0.05, not its 0.1: at lr 0.1 (staleness mean 3.3) 1 of 10 repeats of
    this run was knocked back early (0.50 -> 0.16 at the second evaluation) and ended at 0.619, and a
    CI run ended at 0.8745; at lr 0.05, 8 of 8 ended at 0.857-0.8635 after 20 epochs, and 5 of 5 at
    0.553-0.5625 after the 8 run here (plain SGD at lr 0.05 learns slowly; docs/distributed.md)."""
    out = tmp_path / "run"
    r = run_cli("train", "--algo", "dasgd", "--workers", 4, "--epochs", 8, *ANALYSED_STABLE, *FAST, "--out", out)
    assert r.returncode == 0, r.stderr[-3000:]
    s, metrics = read_run(out)
    assert s["workers"] == 4 and s["lost_workers"] == []
    assert s["samples"] == 8 * 8000
    assert s["final_test_accuracy"] >= 0.52, s["final_test_accuracy"]  # 5x chance, on course to the 20 epochs' 0.86
    # topology all, updates exchanged: once everything is delivered every replica applied the same set
    assert s["consensus_distance"] is not None and s["consensus_distance"] < 1e-3
    assert abs(s["final_avg_test_accuracy"] - s["final_test_accuracy"]) < 0.005
    assert all("consensus_distance" in m and "avg_test_accuracy" in m for m in metrics)
    assert s["staleness"]["count"] > 0 and s["staleness"]["max"] >= 1  # peers' updates arrive late
    assert all(w["samples"] > 0 and w["idle_s"] >= 0 for w in s["per_worker"])


def test_dasgd_defaults_with_four_workers_learn_as_sequential_does(tmp_path):
    """The defaults (Nesterov momentum and --send-every 2 since 2026-12-07), 4 workers, 10 epochs, seed 0.
    Measured on 2 cores: at --send-every 2, 20 runs over seeds 0-19 ended at 0.951-0.970, seed 0 at
    0.958 (sequential 0.965-0.9775); at --send-every 4 with Nesterov 0.949-0.9685 over 25 runs; with
    heavy-ball momentum seed 0 ended at 0.8655-0.9365 in five runs (docs/distributed.md, "Nesterov
    momentum" and "Every 2 steps"), so this fails on those defaults in most runs."""
    out = tmp_path / "run"
    r = run_cli("train", "--algo", "dasgd", "--workers", 4, *FAST, "--out", out)
    assert r.returncode == 0, r.stderr[-3000:]
    s, _ = read_run(out)
    assert s["config"]["nesterov"] is True and s["config"]["send_every"] == 2
    assert s["final_test_accuracy"] >= 0.94, s["final_test_accuracy"]


@pytest.mark.parametrize("algo, flags, nesterov", [
    ("dasgd", [], True), ("dasgd", ["--no-nesterov"], False), ("layup", [], True), ("lpap", [], True),
    ("sequential", [], True), ("sequential", ["--no-nesterov"], False), ("hogwild", [], True),
    ("sync", [], False), ("sync", ["--nesterov"], True), ("ddp", [], False),
    # pdasgd: Nesterov where its updates are clipped (the CPU default, one forward thread per model)
    ("pdasgd", [], True), ("pdasgd", ["--forward-threads", "1", "--backward-threads", "2"], True),
    ("pdasgd", ["--forward-threads", "2", "--backward-threads", "2"], False),
    ("pdasgd", ["--forward-threads", "2", "--backward-threads", "2", "--nesterov"], True)])
def test_nesterov_defaults_per_algorithm_and_the_flag_both_ways(algo, flags, nesterov):
    """Nesterov momentum is the shared default; sync and ddp (N x the lr) and pdasgd's unclipped
    layouts keep heavy-ball momentum, as measured (config.py, their spec.py)."""
    args = build_parser().parse_args(["train", "--algo", algo, *flags])
    assert resolve(config_from_args(args)).nesterov is nesterov


@pytest.mark.acceptance
def test_dasgd_within_one_point_of_sequential(tmp_path):
    """Same total samples and settings; long enough for the staleness terms to fade."""
    args = ["--epochs", 40, *PLAIN, *FAST]
    seq, das = tmp_path / "seq", tmp_path / "dasgd"
    assert run_cli("train", "--algo", "sequential", *args, "--out", seq, timeout=600).returncode == 0
    r = run_cli("train", "--algo", "dasgd", "--workers", 4, *args, *ANALYSED, "--out", das, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = read_run(seq)[0]["final_test_accuracy"], read_run(das)[0]["final_test_accuracy"]
    assert b >= a - 0.01, (a, b)


def test_staleness_drop_discards_stale_updates(tmp_path):
    out = tmp_path / "run"
    r = run_cli("train", "--algo", "dasgd", "--workers", 4, "--epochs", 1, "--staleness", "drop:1", *PLAIN, "--send-every", 1, *FAST,
                "--out", out)
    assert r.returncode == 0, r.stderr[-3000:]
    s, _ = read_run(out)
    assert s["dropped_updates"] > 0
    assert s["staleness"]["max"] > 1  # what was dropped was measured (and was staler than MAX)
    received = s["exchange"]["received"] - s["exchange"]["control_messages"]
    assert s["dropped_updates"] <= received


def test_staleness_drop_does_not_feed_itself(tmp_path):
    """A MAX above the usual staleness drops only the stragglers among the messages. (Before a
    dropped update entered the receiver's clock, each drop made every later message between the
    two replicas look staler, until nearly all of them were dropped.)"""
    out = tmp_path / "run"
    r = run_cli("train", "--algo", "dasgd", "--workers", 4, "--epochs", 3, "--staleness", "drop:8", *PLAIN, "--send-every", 1, *FAST,
                "--out", out)
    assert r.returncode == 0, r.stderr[-3000:]
    s, _ = read_run(out)
    received = s["exchange"]["received"] - s["exchange"]["control_messages"]
    # measured 13% dropped after the fix, 60% before (and rising with the run's length); busy
    # cores raise the staleness of everything, hence the margin
    assert 0 < s["dropped_updates"] < 0.4 * received, (s["dropped_updates"], received)
    assert s["final_test_accuracy"] > 0.2  # 2x chance: still learning (3 epochs of plain SGD: 0.30-0.43 seen)


@pytest.mark.parametrize("topology,fanout", [("all", 3), ("ring", 1), ("random:2", 2)])
def test_messages_per_round_and_bytes(tmp_path, topology, fanout):
    """all: N-1 messages per worker per round (O(N^2) per round), ring: 1 (O(N)), random:M: M.
    bytes_sent is exactly messages x message size (header + payload; DONE is a header only)."""
    out = tmp_path / "run"
    r = run_cli("train", "--algo", "dasgd", "--workers", 4, "--epochs", 0.5, "--topology", topology, *ANALYSED, *FAST,
                "--out", out)
    assert r.returncode == 0, r.stderr[-3000:]
    s, _ = read_run(out)
    x = s["exchange"]
    steps = -(-4000 // 32)  # 0.5 epoch of 8,000 samples, batch 32
    assert x["rounds"] == steps  # --send-every 1: one round per local step, summed over the workers
    for w in x["per_worker"]:
        # a gradient summed into a queued message (backlog) is one message less, never one lost
        assert w["data_messages"] + w["coalesced"] == w["rounds"] * fanout
        assert w["control_messages"] == 3  # DONE to every peer
    assert s["messages_sent"] == x["data_messages"] + x["control_messages"]
    assert s["bytes_sent"] == x["data_messages"] * (x["header_bytes"] + x["payload_bytes"]) + \
        x["control_messages"] * x["header_bytes"]
    assert x["header_bytes"] == (8 + 4) * 8 and x["payload_bytes"] == 9610 * 4
    assert x["received"] == s["messages_sent"]  # every message sent was received


def start_run(out, *args):
    return subprocess.Popen([sys.executable, "-m", "asyncsgd", "train", "--out", str(out), *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def run_and_kill(out, worker: int, after_s: float, *args, timeout: float = 240) -> tuple[int, str]:
    """Start a run, SIGKILL one worker once training is under way, wait for the run to end:
    (exit code, stderr). The run is killed if it outlives `timeout` (a hang fails the test)."""
    proc = start_run(out, *args)
    try:
        kill_worker_when_training(proc, out, worker=worker, after_s=after_s)
        _, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
    return proc.returncode, err


def kill_worker_when_training(proc, out, worker: int, after_s: float, timeout: float = 120) -> int:
    """Wait for workers.json to say training, then SIGKILL that worker's pid; returns the pid."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            info = json.loads((out / "workers.json").read_text())
            if info["state"] == "training":
                break
        except (OSError, ValueError, KeyError):
            pass
        if proc.poll() is not None:
            pytest.fail(f"run ended before training started: {proc.communicate()[1][-2000:]}")
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("workers.json never said training")
    time.sleep(after_s)
    pid = next(w["pid"] for w in info["workers"] if w["worker"] == worker)
    os.kill(pid, signal.SIGKILL)
    return pid


def test_killed_dasgd_worker_survivors_finish(tmp_path):
    out = tmp_path / "run"
    code, err = run_and_kill(out, 2, 1.0, "--algo", "dasgd", "--workers", 4, "--epochs", 20, *FAST, timeout=240)
    assert code == 0, err[-3000:]
    assert "worker 2 was killed by SIGKILL" in err and "continuing with the survivors" in err
    s, _ = read_run(out)
    assert s["lost_workers"] == [2]
    # the bar; the survivors go on claiming the plan's batches
    assert s["final_test_accuracy"] >= 0.88, s["final_test_accuracy"]
    # the dead worker's unclaimed batches went to the survivors, and the one it was training on was
    # re-queued to them: every planned sample is processed (one batch more only if it died between
    # counting its last batch and marking it booked)
    assert 20 * 8000 <= s["samples"] <= 20 * 8000 + 32 and s["requeued_batches"] <= 1, s["requeued_batches"]
    assert s["per_worker"][2]["samples"] < s["per_worker"][0]["samples"]


def test_topology_none_sends_no_update(tmp_path):
    """--topology none: the replicas train alone (the cluster suite's floor): rounds are formed but
    no update travels, only the DONEs; bytes_sent is those headers."""
    out = tmp_path / "run"
    r = run_cli("train", "--algo", "dasgd", "--workers", 2, "--epochs", 0.25, "--topology", "none", *FAST,
                "--out", out)
    assert r.returncode == 0, r.stderr[-3000:]
    s, _ = read_run(out)
    x = s["exchange"]
    assert s["config"]["topology"] == "none" and x["rounds"] > 0
    assert x["data_messages"] == 0 and x["control_messages"] == 2  # each worker's DONE to its one peer
    assert s["bytes_sent"] == 2 * x["header_bytes"] and x["received"] == 2
    assert s["consensus_distance"] > 0  # apart: nothing brought them together


@pytest.mark.parametrize("runtime, workers", [("real", 2), ("sim", 4)])
def test_cap_damps_a_late_update_by_the_lr_it_was_made_at(tmp_path, runtime, workers):
    """--send-every larger than the run: each replica trains alone, then sends its whole-run sum
    at the end, when the cosine has brought the lr near 0. cap must damp that sum by the lr its
    updates were made at (the message's decay_ppm: a staleness of hundreds, a factor near 0), not
    by the lr at arrival, which released it: the replicas took each other's whole run at full
    weight (consensus distance ~1e-6) and ended far below their best (real, seeds 0 / 1: 0.6075 /
    0.4855 against 0.721 / 0.612; sim 0.296 against 0.4465)."""
    out = tmp_path / "run"
    r = run_cli("train", "--algo", "dasgd", "--workers", workers, "--runtime", runtime, "--epochs", 4,
                "--send-every", 1_000_000, "--staleness", "cap", *FAST, "--out", out)
    assert r.returncode == 0, r.stderr[-3000:]
    s, _ = read_run(out)
    assert s["exchange"]["data_messages"] == workers * (workers - 1)  # one flush to each peer
    assert s["final_test_accuracy"] >= s["best_test_accuracy"] - 0.01, (s["final_test_accuracy"], s["best_test_accuracy"])
    assert s["consensus_distance"] > 0.5  # the flush moved no replica onto the others
