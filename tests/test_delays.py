"""Delays and stragglers for the multi-worker algorithms, and what a dead worker does to sync.

sync pays --delay on its critical path (every step waits for it); dasgd and lpap pay it in the
exchange's sender thread, so their steps do not. A --straggler slows one worker: sync's steps
all wait for it; lpap's slow group and dasgd's slow worker claim fewer batches.
"""

from __future__ import annotations

import math

from conftest import read_run, run_cli
from test_dasgd import ANALYSED, FAST, run_and_kill

LATENCY_S = 0.1


def test_sync_pays_the_delay_on_every_step(tmp_path):
    out = tmp_path / "run"
    r = run_cli("train", "--algo", "sync", "--workers", 2, "--epochs", 0.25, "--delay", f"latency={LATENCY_S}s",
                *FAST, "--out", out)
    assert r.returncode == 0, r.stderr[-3000:]
    s, _ = read_run(out)
    steps = math.ceil(math.ceil(2000 / 32) / 2)
    assert s["wall_time_s"] >= 0.95 * steps * LATENCY_S, (s["wall_time_s"], steps)


def test_dasgd_pays_the_delay_off_the_training_thread(tmp_path):
    out = tmp_path / "run"
    r = run_cli("train", "--algo", "dasgd", "--workers", 2, "--epochs", 0.5, "--delay", f"latency={LATENCY_S}s",
                *ANALYSED, *FAST, "--out", out)
    assert r.returncode == 0, r.stderr[-3000:]
    s, _ = read_run(out)
    steps_per_worker = math.ceil(math.ceil(4000 / 32) / 2)
    assert s["exchange"]["latency_ms_mean"] >= LATENCY_S * 1000  # every message waited its latency...
    assert s["wall_time_s"] < 0.5 * steps_per_worker * LATENCY_S  # ...but no step waited for one
    assert s["samples"] == 4000


def test_lpap_straggler_group_claims_fewer_batches(tmp_path):
    out = tmp_path / "run"
    r = run_cli("train", "--algo", "lpap", "--groups", 2, "--workers-per-group", 1, "--epochs", 2,
                "--straggler", "worker=1,slowdown=4", "--delay", "latency=20ms", *FAST, "--out", out)
    assert r.returncode == 0, r.stderr[-3000:]
    s, _ = read_run(out)
    fast, slow = s["per_worker"][0]["samples"], s["per_worker"][1]["samples"]
    assert fast + slow == 2 * 8000
    assert slow < 0.6 * fast, (fast, slow)
    assert s["exchange"]["latency_ms_mean"] >= 20


def test_dasgd_straggler_claims_fewer_batches(tmp_path):
    """Local dasgd workers claim batches as they go: nobody waits for the straggler."""
    out = tmp_path / "run"
    r = run_cli("train", "--algo", "dasgd", "--workers", 2, "--epochs", 1, "--straggler", "worker=1,slowdown=4",
                *ANALYSED, *FAST, "--out", out)
    assert r.returncode == 0, r.stderr[-3000:]
    s, _ = read_run(out)
    fast, slow = s["per_worker"]
    assert fast["samples"] + slow["samples"] == 8000
    assert slow["samples"] < 0.6 * fast["samples"], (fast, slow)
    assert fast["idle_s"] < 0.2 * s["wall_time_s"], (fast, s["wall_time_s"])


def test_killed_sync_worker_stops_the_run_with_a_clear_error(tmp_path):
    out = tmp_path / "run"
    code, err = run_and_kill(out, 1, 0.5, "--algo", "sync", "--workers", 3, "--epochs", 20, *FAST, timeout=120)
    assert code == 1, err[-3000:]
    assert "worker 1 was killed by SIGKILL" in err and "--algo sync cannot continue without it" in err
    assert "Traceback" not in err
