"""lpap: Hogwild! threads per group + background averaging; partitioned (LPP) variant; a lost group."""

from __future__ import annotations

from conftest import read_run, run_cli
from test_dasgd import FAST, run_and_kill

from asyncsgd.algorithms.lpap.worker import partition


def test_lpap_two_groups_of_two_reaches_090(tmp_path):
    out = tmp_path / "run"
    r = run_cli("train", "--algo", "lpap", "--groups", 2, "--workers-per-group", 2, "--epochs", 12, *FAST,
                "--out", out)
    assert r.returncode == 0, r.stderr[-3000:]
    s, metrics = read_run(out)
    assert s["workers"] == 2 and s["samples"] == 12 * 8000
    assert s["config"]["staleness"] == "cap" and s["config"]["lr"] == 0.1  # lpap's own defaults (spec.py)
    assert s["config"]["clip_grad_norm"] == 2.0
    assert s["final_test_accuracy"] >= 0.90, s["final_test_accuracy"]
    rounds = s["lpap"]["averaging_rounds_per_group"]
    # a round every --average-every (10) local steps of some group; both groups join every round
    # while both train (the last one may be answered by a group that just finished, with FINAL)
    steps = 12 * 8000 // 32
    assert abs(rounds[0] - rounds[1]) <= 1 and steps / 10 / 3 <= min(rounds) <= steps / 10 + 1
    assert s["exchange"]["data_messages"] == sum(rounds) + 2  # PARAMS per round each way, FINAL each way
    assert s["consensus_distance"] < 1e-4  # the final average: both groups end with the same model
    assert s["staleness"]["max"] >= 1  # two Hogwild! threads per group do overlap


def test_lpp_partitioned_variant_learns(tmp_path):
    out = tmp_path / "run"
    r = run_cli("train", "--algo", "lpap", "--groups", 2, "--workers-per-group", 2, "--partitioned",
                "--epochs", 8, *FAST, "--out", out)
    assert r.returncode == 0, r.stderr[-3000:]
    s, _ = read_run(out)
    assert s["lpap"]["partitioned"] is True
    assert s["final_test_accuracy"] >= 0.80, s["final_test_accuracy"]  # 8 epochs, half the layers each step


def test_partition_is_contiguous_and_balanced():
    sizes = [160, 32, 3072, 32, 3072, 32, 3200, 10]  # cnn1d
    assert partition(sizes, 2) == [(0, 5), (5, 8)]
    parts = partition(sizes, 3)
    assert [p for p in parts if p] == sorted(p for p in parts if p)
    assert partition(sizes[:1], 2) == [(0, 1), None]  # more threads than tensors: some update everything


def test_killed_lpap_group_survivors_finish(tmp_path):
    out = tmp_path / "run"
    code, err = run_and_kill(out, 1, 1.0, "--algo", "lpap", "--groups", 3, "--workers-per-group", 1, "--epochs", 10, *FAST, timeout=240)
    assert code == 0, err[-3000:]
    assert "worker 1 was killed by SIGKILL" in err
    s, _ = read_run(out)
    assert s["lost_workers"] == [1]
    # the survivors claimed the rest of the plan and redid the batch the dead group was training on
    assert 10 * 8000 <= s["samples"] <= 10 * 8000 + 32 and s["requeued_batches"] <= 1, s["requeued_batches"]
    assert s["final_test_accuracy"] >= 0.88, s["final_test_accuracy"]
    assert s["consensus_distance"] < 1e-4  # survivors' final average
