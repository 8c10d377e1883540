"""--tensorboard: the run directory holds TensorBoard event files with one point per evaluation point
(accuracy, losses, lr, throughput) and the run's staleness; without the package, one line and exit 2."""

from __future__ import annotations

import sys

import pytest

from asyncsgd import cli
from conftest import read_run

TINY = ["--epochs", "1", "--num-samples", "1000", "--eval-points", "3", "--progress", "none"]
RUNS = {"real": ["--algo", "sequential"],
        "sim": ["--runtime", "sim", "--algo", "dasgd", "--sim-workers", "8", "--task", "logreg",
                "--sim-forward-s", "0.001", "--sim-backward-s", "0.002"]}


@pytest.mark.parametrize("runtime", sorted(RUNS))
def test_tensorboard_events_hold_every_evaluation_point(runtime, tmp_path):
    ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    out = tmp_path / "run"
    assert cli.main(["train", *RUNS[runtime], *TINY, "--tensorboard", "--out", str(out)]) == 0
    summary, metrics = read_run(out)
    assert list(out.glob("events.out.tfevents.*")), sorted(p.name for p in out.iterdir())
    acc = ea.EventAccumulator(str(out))
    acc.Reload()

    def points(tag):
        return [(e.step, e.value) for e in acc.Scalars(tag)] if tag in acc.Tags()["scalars"] else []

    assert len(metrics) >= 3
    for tag, key in (("test/accuracy", "test_accuracy"), ("test/loss", "test_loss"), ("train/loss", "train_loss"),
                     ("lr", "lr")):
        assert points(tag) == [(r["samples"], pytest.approx(r[key], rel=1e-6, abs=1e-7)) for r in metrics], tag
    # throughput between consecutive evaluation points (from the start for the first)
    marks = [(0, 0.0)] + [(r["samples"], r["wall_time_s"]) for r in metrics]
    assert len(points("throughput/samples_per_s")) == sum(
        b[0] > a[0] and b[1] > a[1] for a, b in zip(marks, marks[1:])) > 0
    assert all(v > 0 for _, v in points("throughput/samples_per_s"))
    assert points("staleness/mean") == [(metrics[-1]["samples"], pytest.approx(summary["staleness"]["mean"]))]
    assert points("staleness/max") == [(metrics[-1]["samples"], summary["staleness"]["max"])]


def test_tensorboard_without_the_package_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if not installed: find_spec finds nothing
    code = cli.main(["train", *RUNS["real"], *TINY, "--tensorboard", "--out", str(tmp_path / "run")])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1, err
    assert "--tensorboard needs the tensorboard package" in err[0] and "pip install tensorboard" in err[0], err
    assert not (tmp_path / "run").exists()
