"""The run record is a contract: summary.json and metrics.jsonl fields, types and consistency."""

import json

import pytest
import torch

from conftest import read_run, run_cli

SUMMARY_FIELDS = {
    "algorithm": str, "task": str, "model": str, "workers": int, "epochs": (int, float), "samples": int,
    "updates": int, "wall_time_s": float, "samples_per_s": float, "final_test_accuracy": float,
    "final_test_loss": float, "time_to_target_s": (float, type(None)), "staleness": dict, "bytes_sent": int,
    "config": dict, "asyncsgd_version": str, "torch_version": str, "device": str,
}
METRIC_FIELDS = {"wall_time_s": float, "samples": int, "test_accuracy": float, "test_loss": float, "train_loss": float}


@pytest.fixture(scope="module")
def hogwild_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("rec") / "run"
    proc = run_cli("train", "--algo", "hogwild", "--workers", "2", "--epochs", "3", "--target-accuracy", "0.5",
                   "--eval-points", "12", "--out", out, "--progress", "lines", "--threads-per-worker", "1")
    assert proc.returncode == 0, proc.stderr
    return out, proc


def test_summary_fields_and_types(hogwild_run):
    summary, metrics = read_run(hogwild_run[0])
    for key, kind in SUMMARY_FIELDS.items():
        assert key in summary, key
        assert isinstance(summary[key], kind), (key, summary[key])
    assert summary["algorithm"] == "hogwild" and summary["task"] == "mnist1d" and summary["workers"] == 2
    assert summary["samples"] == 3 * 8000 == sum(w["samples"] for w in summary["per_worker"])
    assert summary["updates"] == 3 * 8000 // 32
    assert summary["samples_per_s"] == pytest.approx(summary["samples"] / summary["wall_time_s"], rel=0.01)
    s = summary["staleness"]
    assert set(s) >= {"min", "mean", "p50", "p99", "max"}
    assert s["min"] <= s["p50"] <= s["p99"] <= s["max"] and s["min"] <= s["mean"] <= s["max"]
    assert sum(summary["staleness_histogram"].values()) == summary["updates"]
    assert summary["bytes_sent"] == 0  # one shared-memory model: nothing crosses a process boundary
    assert summary["config"]["algorithm"] == "hogwild"
    assert summary["config"]["lr"] == 0.075 and summary["config"]["staleness"] == "cap"  # hogwild's own defaults
    assert summary["final_test_accuracy"] == metrics[-1]["test_accuracy"]
    assert 0 < summary["time_to_target_s"] <= summary["wall_time_s"]
    first = next(m for m in metrics if m["test_accuracy"] >= 0.5)
    assert summary["time_to_target_s"] == first["wall_time_s"]


def test_metrics_rows(hogwild_run):
    _, metrics = read_run(hogwild_run[0])
    assert 12 <= len(metrics) <= 15
    for row in metrics:
        for key, kind in METRIC_FIELDS.items():
            assert isinstance(row[key], kind), (key, row)
        assert 0 <= row["test_accuracy"] <= 1
    times = [m["wall_time_s"] for m in metrics]
    samples = [m["samples"] for m in metrics]
    # one row per point: the final state at the last mark replaces that mark's copy
    assert times == sorted(times) and samples == sorted(set(samples)) and samples[-1] == 24000
    assert metrics[-1]["test_loss"] < metrics[0]["test_loss"]


def test_model_and_progress_lines(hogwild_run):
    out, proc = hogwild_run
    state = torch.load(out / "model.pt", weights_only=True)
    assert "head.weight" in state and all(torch.isfinite(t).all() for t in state.values())
    assert "samples/s" in proc.stderr  # plain periodic progress lines when not on a terminal
    assert "test accuracy" in proc.stdout  # the final summary table


def test_staleness_is_zero_for_sequential(tmp_path):
    out = tmp_path / "seq"
    assert run_cli("train", "--algo", "sequential", "--epochs", "0.5", "--out", out, "--progress", "none").returncode == 0
    summary, _ = read_run(out)
    assert summary["staleness"] == {"count": summary["updates"], "min": 0, "mean": 0.0, "p50": 0, "p99": 0, "max": 0}
    assert summary["time_to_target_s"] is None


def test_summary_splits_the_wall_time(tmp_path):
    """setup, start-up (worker processes until training began), training, evaluation and writing:
    each non-negative, and together no more than the total the launcher measured."""
    from asyncsgd import cli

    out = tmp_path / "run"
    assert cli.main(["train", "--algo", "hogwild", "--epochs", "0.2", "--progress", "none", "--threads-per-worker", "1",
                     "--out", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())
    t = s["timings"]
    parts = ("setup_s", "startup_s", "training_s", "evaluation_s", "writing_s")
    assert all(t[k] >= 0 for k in parts) and t["startup_s"] > 0 and t["training_s"] == pytest.approx(s["wall_time_s"], abs=0.01)
    assert sum(t[k] for k in parts) <= t["total_s"] + 0.01


def test_summary_says_what_ran_and_when(tmp_path):
    from asyncsgd import cli

    out = tmp_path / "run"
    assert cli.main(["train", "--runtime", "sim", "--task", "logreg", "--epochs", "0.2", "--progress", "none",
                     "--out", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["status"] == "done" and s["started_at"] <= s["ended_at"] and "train" in s["command"]
    assert s["best_test_accuracy"] >= s["final_test_accuracy"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(r["lr"] > 0 for r in rows) and max(r["lr"] for r in rows) <= 0.05


@pytest.mark.parametrize("histogram,p50,p99", [
    ({0: 94, 1: 105, 2: 48, 3: 3}, 1, 3),  # a hogwild run's: 247 of 250 (98.8%) are <= 2, so p99 is 3
    ({0: 158, 1: 7, 2: 123, 3: 46, 4: 21, 5: 11, 6: 4, 7: 1, 8: 1, 9: 3}, 2, 8),  # dasgd's: 371 of 375 <= 7
    ({1: 1, 3: 2}, 3, 3),  # 2 of 3 updates at 3: the median is 3
    ({0: 99, 5: 1}, 0, 0),  # exactly 99% at 0
    ({0: 50, 7: 50}, 0, 7),  # exactly half at 0
])
def test_staleness_percentiles_are_nearest_rank(histogram, p50, p99):
    """p50 / p99: the smallest staleness at or below which at least 50% / 99% of the updates lie."""
    from asyncsgd.board import Board
    board = Board(1, 1, 1, 1, 1)
    for value, count in histogram.items():
        board.hist[0, value] = count
    board.stale_max[0] = max(histogram)
    stats = board.staleness_stats()
    assert (stats["p50"], stats["p99"], stats["count"]) == (p50, p99, sum(histogram.values()))
