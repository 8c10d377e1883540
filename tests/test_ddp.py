"""ddp (torch DistributedDataParallel) is sync done by DDP: at the same seed and settings it ends
on sync's parameters (logreg; on mnist1d over seeds, at sync's accuracy: the acceptance test);
--delay is paid once per gradient bucket, in its comm hook, and counted."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from asyncsgd import cli
from asyncsgd.config import RunConfig
from asyncsgd.runner import run
from conftest import read_run, run_cli

FAST = ["--progress", "none", "--threads-per-worker", "1"]


def _train(out, algo, *args, timeout=240):
    proc = run_cli("train", "--algo", algo, "--out", out, *FAST, *args, timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    return read_run(out)[0]


def test_ddp_ends_where_sync_ends_at_the_same_seed(tmp_path):
    # logreg: 4,000 samples in batches of 32 = 125 batches, so with 2 workers the last step has one
    # batch: rank 1 joins DDP's all-reduce with a zero-weighted batch, and the weighting must still
    # give sync's batch-weighted mean
    common = ["--task", "logreg", "--workers", "2", "--epochs", "1", "--seed", "4", "--momentum", "0.9"]
    ddp = _train(tmp_path / "ddp", "ddp", *common)
    sync = _train(tmp_path / "sync", "sync", *common)
    assert ddp["samples"] == sync["samples"] == 4000 and ddp["updates"] == sync["updates"] == 63
    # one staleness value per update of the model (not one per worker and step), every one 0
    assert ddp["staleness"]["count"] == sync["staleness"]["count"] == 63 and sync["staleness"]["max"] == 0
    a, b = (torch.load(tmp_path / d / "model.pt", weights_only=True) for d in ("ddp", "sync"))
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=1e-4, atol=1e-5), f"{key}: max {(a[key] - b[key]).abs().max()}"
    assert abs(ddp["final_test_accuracy"] - sync["final_test_accuracy"]) <= 0.005
    assert ddp["final_test_accuracy"] > 0.75  # it learned (logreg's chance level is 0.5)
    assert ddp["ddp"]["delay_paid_s"] == 0.0 and ddp["ddp"]["steps"] == 63


def test_ddp_pays_the_latency_once_per_bucket(tmp_path):
    """--bucket-cap-mb 0.01 splits cnn1d's 38 kB of gradients into several buckets; each bucket's
    hook sleeps the latency before its all-reduce, so a worker's paid delay is its bucket count x
    latency, and training lasts at least that long (the sleeps are on the backward's thread)."""
    latency = 0.005
    s = _train(tmp_path / "d", "ddp", "--task", "mnist1d", "--num-samples", "2000", "--workers", "2", "--epochs", "1",
               "--delay", f"latency={latency * 1000:g}ms", "--bucket-cap-mb", "0.01")
    d = s["ddp"]
    steps = math.ceil(1600 / 32 / 2)  # 1,600 training samples, batches of 32, 2 per step
    assert d["steps"] == steps
    counts = d["bucket_allreduces_per_worker"]
    assert counts[0] == counts[1] and sum(counts) == d["bucket_allreduces"]  # every bucket is one collective of both
    assert counts[0] > steps  # more than one bucket a step
    for c, paid in zip(counts, d["delay_paid_s_per_worker"]):
        assert paid == pytest.approx(c * latency, rel=1e-6)
    assert s["wall_time_s"] >= counts[0] * latency
    assert s["bytes_sent"] > 0 and s["messages_sent"] == sum(counts) * 2  # 2 (N - 1) ring messages per bucket, N = 2


def test_ddp_twin_is_syncs(tmp_path):
    """The simulated twin plays sync's schedule (one all-reduce per step): the same record."""
    sim = dict(runtime="sim", task="logreg", epochs=1, eval_points=4, progress="none", sim_compute="fixed",
               workers=4, delay="latency=2ms")
    d, s = (run(RunConfig(algorithm=a, out=str(tmp_path / a), **sim)) for a in ("ddp", "sync"))
    for key in ("final_test_accuracy", "wall_time_s", "updates", "samples", "bytes_sent"):
        assert d[key] == s[key], key
    assert d["staleness"]["count"] == s["staleness"]["count"] == s["updates"]  # as the real sync counts them


def _one_line(capsys, *args):
    code = cli.main(["train", *map(str, args)])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def test_bucket_cap_is_ddps_and_checked(capsys):
    assert _one_line(capsys, "--algo", "sync", "--bucket-cap-mb", "1").endswith(
        "--bucket-cap-mb is not used by --algo sync; accepted with: --algo ddp")
    assert "MiB in (0, 1024]" in _one_line(capsys, "--algo", "ddp", "--bucket-cap-mb", "0")
    assert "--runtime sim" in _one_line(capsys, "--algo", "ddp", "--runtime", "sim", "--bucket-cap-mb", "1")


@pytest.mark.acceptance
@pytest.mark.timeout(3600)  # 6 runs of 10 epochs
def test_ddp_matches_sync_on_three_seeds(tmp_path):
    """mnist1d, 4 workers, 10 epochs, seeds 0-2: ddp's final accuracy is sync's within noise.
    Not run by run: the two reduce in a different order (DDP divides, then sums), and at lr x 4
    with momentum the rounding grows (1e-9 after 4 steps, 5e-3 after an epoch): the trajectories
    part, so one seed can end a few points apart (measured: sync 0.9305, ddp 0.963 at seed 2;
    0.965/0.9655 and 0.9665/0.968 at seeds 0 and 1). The medians over seeds are what must agree."""
    common = ["--task", "mnist1d", "--workers", "4", "--epochs", "10"]
    accs = {"ddp": [], "sync": []}
    for seed in range(3):
        for a in accs:
            accs[a].append(_train(tmp_path / f"{a}-{seed}", a, *common, "--seed", seed, timeout=600)["final_test_accuracy"])
    assert abs(statistics.median(accs["ddp"]) - statistics.median(accs["sync"])) <= 0.01, accs
    assert min(accs["ddp"]) >= min(accs["sync"]) - 0.01, accs  # no seed worse than sync's spread
    assert statistics.median(accs["ddp"]) > 0.9, accs
