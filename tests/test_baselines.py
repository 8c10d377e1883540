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
