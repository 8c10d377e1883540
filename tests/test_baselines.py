"""The baselines reach the accuracy users expect on mnist1d with default settings."""

import pytest

from conftest import read_run, run_cli


# sequential and sync x4 (about 30 s each) run with `pytest -m acceptance`: the default suite keeps
# sync x2 and hogwild x2, and sequential's accuracy is held there by sync == sequential(N x B)
# (test_sync_equivalence.py) and the resume tests
LONG = pytest.mark.acceptance


@pytest.mark.parametrize("algo,workers", [pytest.param("sequential", 1, marks=LONG), ("sync", 2),
                                          pytest.param("sync", 4, marks=LONG), ("hogwild", 2)])
def test_baseline_reaches_90_percent_on_mnist1d(tmp_path, algo, workers):
    out = tmp_path / "run"
    proc = run_cli("train", "--algo", algo, "--workers", workers, "--out", out, "--progress", "none",
                   "--target-accuracy", "0.9")
    assert proc.returncode == 0, proc.stderr
    summary, _ = read_run(out)
    assert summary["workers"] == workers and summary["samples"] == 10 * 8000
    assert summary["final_test_accuracy"] >= 0.90, summary["final_test_accuracy"]
    assert summary["time_to_target_s"] is not None
    if algo == "sync":  # every step all-reduces the flattened gradient: 2(N-1)/N of it per rank (ring)
        steps = -(-summary["samples"] // (32 * workers))
        n_params = 9610
        assert summary["bytes_sent"] == steps * workers * int((n_params + 2) * 4 * 2 * (workers - 1) / workers)


@pytest.mark.parametrize("algo", ["sync", "ddp"])
def test_the_synchronous_warmup_grows_with_the_lr_scaling(algo):
    """lr x N (the linear scaling rule) comes with a warm-up of N / 4 epochs, from 0.5 to a quarter
    of the run: with lr x 4 a 0.5-epoch warm-up collapsed a run (the test below)."""
    from asyncsgd.config import RunConfig
    from asyncsgd.settings import resolve

    warmup = lambda **kw: resolve(RunConfig(algorithm=algo, **kw)).warmup_epochs
    assert warmup(workers=2) == 0.5 and warmup(workers=4) == 1.0 and warmup(workers=8) == 2.0
    assert warmup(workers=8, epochs=4) == 1.0  # at most a quarter of the run
    assert warmup(workers=4, epochs=1) == 0.5  # never shorter than the shared default
    assert warmup(workers=4, lr_scaling="none") == 0.5  # no lr scaling: nothing to warm up to
    assert warmup(workers=4, warmup_epochs=0.25) == 0.25  # given: kept


@LONG
def test_sync_x4_does_not_collapse_in_the_seed_that_did(tmp_path):
    """sync --workers 4 at 20 epochs, seed 2: with the 0.5-epoch warm-up it ended at chance
    (0.0925, best 0.47) in the cluster suite and alone; with the N / 4 warm-up it trains."""
    out = tmp_path / "run"
    proc = run_cli("train", "--algo", "sync", "--workers", 4, "--epochs", 20, "--seed", 2, "--out", out,
                   "--progress", "none")
    assert proc.returncode == 0, proc.stderr
    summary, _ = read_run(out)
    assert summary["config"]["warmup_epochs"] == 1.0
    assert summary["final_test_accuracy"] >= 0.95 and not summary["collapsed"], summary["final_test_accuracy"]


@pytest.mark.parametrize("settings,expected", [
    (dict(workers=2), (0.075, 2.0)),  # the default workers: Hogwild!'s lr, clipped at 2
    (dict(workers=4), (0.1, 2.0)),  # more than two writers: the higher lr
    (dict(workers=3), (0.1, 2.0)),
    (dict(runtime="sim", sim_workers=4), (0.1, 2.0)),  # the simulated processes count
    (dict(runtime="sim", workers=2), (0.075, 2.0)),
    (dict(workers=4, lr=0.05, clip_grad_norm=0.0), (0.05, 0.0)),  # given values stay as given
])
def test_hogwild_defaults_follow_the_writers(settings, expected):
    """Hogwild!'s lr is resolved once from the number of processes that write the model; the clip
    at 2 holds for any number (algorithms/hogwild/spec.py; measured in docs/benchmarks.md, "More
    than two processes" and "Two processes clip too")."""
    from asyncsgd.config import RunConfig
    from asyncsgd.settings import resolve
    cfg = resolve(RunConfig(algorithm="hogwild", **settings))
    assert (cfg.lr, cfg.clip_grad_norm) == expected
