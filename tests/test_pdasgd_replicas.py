"""pdasgd --sharing average: a replica per worker process (one per GPU on a multi-GPU machine; here
on the CPU over gloo), each trained by its own forward/backward threads with layer-wise updates,
kept together by the background parameter averaging lpap uses (exchange/averaging.py)."""

from __future__ import annotations

import time

import pytest
import torch

from asyncsgd import cli
from asyncsgd.algorithms.pdasgd import threads
from asyncsgd.algorithms.pdasgd.rules import resolve_sharing
from asyncsgd.algorithms.registry import ALGORITHMS, get_algorithm
from asyncsgd.config import RunConfig
from asyncsgd.settings import resolve as validate
from conftest import assert_one_line_error, read_run, run_cli
from test_dasgd import run_and_kill
from test_pdasgd import Marker, Sandwich, fake_ctx

FAST = ["--threads-per-worker", "1", "--progress", "none", "--eval-points", "4"]
CNN1D_PARAMS = 9610  # mnist1d's cnn1d: the payload of every PARAMS / FINAL message, in floats


def test_two_replicas_average_in_the_background_and_learn(tmp_path):
    """Two processes on the CPU, 1F:2B threads each. Measured on 2 busy cores: 0.906-0.950 test
    accuracy over 6 seeds (--average-every 5, 10 epochs), 5-11 s of training."""
    out = tmp_path / "run"
    t = time.time()
    r = run_cli("train", "--algo", "pdasgd", "--workers", 2, "--sharing", "average", "--average-every", 5,
                "--epochs", 10, *FAST, "--out", out, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    s, metrics = read_run(out)
    assert s["sharing"] == s["config"]["sharing"] == "average" and s["workers"] == 2
    assert s["samples"] == 10 * 8000 and s["backward_passes"] == s["updates"] == 2500
    # it learned (chance is 0.1): 6 epochs of 3 replicas reach 0.75 without a kill, 0.81 with one (measured)
    assert s["final_test_accuracy"] >= 0.6, s["final_test_accuracy"]
    # a round every --average-every (5) local backward passes of either replica; both join every
    # round while both train (the last may be answered by a replica that just finished, with FINAL)
    avg = s["averaging"]
    rounds, passes = avg["rounds_per_worker"], [w["updates"] for w in s["per_worker"]]
    assert avg["average_every"] == 5 and avg["devices"] == ["cpu", "cpu"]
    assert abs(rounds[0] - rounds[1]) <= 1 and max(passes) / 5 / 3 <= min(rounds) <= max(rounds) <= sum(passes) / 5 + 1
    ex = s["exchange"]
    assert ex["data_messages"] == sum(rounds) + 2 and ex["control_messages"] == 0  # PARAMS per round each way, FINAL each way
    assert ex["payload_bytes"] == 4 * CNN1D_PARAMS
    assert s["messages_sent"] == ex["data_messages"]
    assert s["bytes_sent"] == s["messages_sent"] * (ex["header_bytes"] + ex["payload_bytes"])
    assert s["consensus_distance"] < 1e-4  # the final average: both replicas end with the same parameters
    assert metrics[-1]["avg_test_accuracy"] == pytest.approx(s["final_test_accuracy"], abs=0.002)
    # staleness per layer as with one shared model, counted within each replica
    layers = s["staleness_by_layer"]
    assert len(layers) == 8 and sum(d["count"] for d in layers) == s["staleness"]["count"] == 2500 * 8
    assert 0 < s["misaligned_fraction"] < 1
    assert time.time() - t < 90


def test_replica_versions_count_only_this_workers_updates():
    """On a replica a layer's version counts this worker's updates only: another process's
    updates reach it by averaging, they are not updates it missed."""
    torch.manual_seed(0)
    Marker.probe = lambda: None
    ctx = fake_ctx(Sandwich(), workers=2)
    shared = threads.Decoupled(ctx, 1, 1, 1, "layer")
    replica = threads.Decoupled(ctx, 1, 1, 1, "layer", replica=True)
    ctx.board.layer_version[1, 0] += 5  # worker 1's updates
    assert shared.versions() == [5] * 4 and replica.versions() == [0] * 4
    item = replica.forward(replica.replica(), 0)
    ctx.board.layer_version[1, 0] += 1  # worker 1 again, between this forward and its backward
    replica.backward(item, 0)
    assert [s for _, s, _ in item.stale] == [0] * 4
    assert ctx.board.layer_version[0, 0].tolist() == [1] * 4  # this worker's own row counted the updates


def test_auto_sharing_picks_replicas_with_several_gpus_and_workers(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert resolve_sharing("auto", "cuda", 4) == resolve_sharing("auto", "auto", 2) == "average"
    assert resolve_sharing("auto", "cuda", 1) == resolve_sharing("auto", "cuda", None) == "memory"
    assert resolve_sharing("auto", "cpu", 4) == resolve_sharing("auto", "cuda", 4, "sim") == "memory"
    assert resolve_sharing("memory", "cuda", 4) == "memory" and resolve_sharing("average", "cpu", 2) == "average"
    assert validate(RunConfig(algorithm="pdasgd", device="cuda", workers=4)).sharing == "average"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert validate(RunConfig(algorithm="pdasgd", device="cuda", workers=4)).sharing == "memory"  # one GPU


def test_registry_properties_follow_the_sharing_mode():
    pd = get_algorithm("pdasgd")
    mem = pd.for_config(validate(RunConfig(algorithm="pdasgd", device="cpu", workers=2)))
    rep = pd.for_config(validate(RunConfig(algorithm="pdasgd", device="cpu", workers=2, sharing="average")))
    flags = lambda a: (a.shared_model, a.distributed, a.snapshot_all_replicas, a.tolerates_failures)
    assert flags(mem) == (True, False, False, False)
    assert flags(rep) == (False, True, True, True)  # replicas: survivors carry on
    for name, algo in ALGORITHMS.items():  # every other algorithm: static, whatever the settings
        if name != "pdasgd":
            assert algo.for_config(validate(RunConfig(algorithm=name, device="cpu"))) == algo


def test_bad_sharing_value_exits_2_with_one_line(tmp_path):
    r = run_cli("train", "--algo", "pdasgd", "--sharing", "gpu", "--out", tmp_path / "x", timeout=60)
    assert_one_line_error(r, 2, "--sharing 'gpu'", "memory, average, auto")
    assert not (tmp_path / "x" / "summary.json").exists()


@pytest.mark.parametrize("args,needles", [
    (["--average-every", "5"], ["--average-every 5", "--sharing average"]),  # one shared model: no averaging
    (["--workers", "2", "--sharing", "memory", "--average-every", "5"], ["--average-every 5"]),
    (["--sharing", "average", "--workers", "1"], ["--workers 1", "--workers 2 or more"]),  # nobody to average with
    (["--sharing", "average", "--workers", "2", "--runtime", "sim"], ["--runtime sim"]),
    (["--algo", "lpap", "--sharing", "average"], ["--sharing is not used by --algo lpap"]),
    (["--algo", "hogwild", "--average-every", "5"], ["--average-every is not used by --algo hogwild"]),
])
def test_options_that_would_be_ignored_are_rejected(tmp_path, capsys, args, needles):
    algo = [] if "--algo" in args else ["--algo", "pdasgd"]
    code = cli.main(["train", *algo, *args, "--epochs", "0.1", "--progress", "none", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_killed_replica_the_survivors_finish(tmp_path):
    """With replicas, pdasgd carries on without a dead worker as lpap does: the survivors claim the
    rest of the plan (the claim lock is one the OS releases) and average among themselves."""
    out = tmp_path / "run"
    code, err = run_and_kill(out, 1, 0.5, "--algo", "pdasgd", "--sharing", "average", "--workers", 3,
                             "--epochs", 6, *FAST, timeout=180)
    assert code == 0, err[-3000:]
    assert "worker 1 was killed by SIGKILL" in err and "continuing with the survivors" in err
    assert "Traceback" not in err
    s, _ = read_run(out)
    assert s["lost_workers"] == [1]
    # the survivors covered the dead worker's share, and redid the batches it held (being forwarded,
    # queued or in a backward pass; one more only if it died while booking one)
    assert 6 * 8000 <= s["samples"] <= 6 * 8000 + 32, s["samples"]
    assert s["requeued_batches"] <= 1 + 1 + 2, s["requeued_batches"]  # a forward thread, its queue, 2 backward threads
    # it learned (chance is 0.1): 6 epochs of 3 replicas reach 0.75 without a kill, 0.81 with one (measured)
    assert s["final_test_accuracy"] >= 0.6, s["final_test_accuracy"]


def test_killed_worker_of_one_shared_model_stops_the_run_with_exit_1(tmp_path):
    """Processes sharing one model: a worker killed mid-update may leave it half-written, so the
    launcher names the dead worker and stops the others, no hang."""
    out = tmp_path / "run"
    t = time.time()
    code, err = run_and_kill(out, 1, 0.5, "--algo", "pdasgd", "--sharing", "memory", "--workers", 2,
                             "--epochs", 20, *FAST, timeout=120)
    assert code == 1, err[-3000:]
    assert "worker 1 was killed by SIGKILL" in err and "--algo pdasgd cannot continue without it" in err
    assert "Traceback" not in err
    assert time.time() - t < 60  # the survivors stop at board.stop, or are terminated after the grace period
