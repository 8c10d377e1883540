"""sync with N workers at batch B per worker is the same computation as sequential at batch N*B."""

import torch

from conftest import run_cli


def _state(path):
    return torch.load(path / "model.pt", weights_only=True)


def test_sync_matches_sequential_with_n_times_the_batch(tmp_path):
    common = ["--epochs", "1", "--momentum", "0.9", "--lr", "0.05", "--seed", "3", "--progress", "none",
              "--threads-per-worker", "1", "--eval-points", "4"]
    seq = run_cli("train", "--algo", "sequential", "--batch-size", "64", "--out", tmp_path / "seq", *common)
    assert seq.returncode == 0, seq.stderr
    syn = run_cli("train", "--algo", "sync", "--workers", "2", "--batch-size", "32", "--lr-scaling", "none",
                  "--out", tmp_path / "sync", *common)
    assert syn.returncode == 0, syn.stderr
    a, b = _state(tmp_path / "seq"), _state(tmp_path / "sync")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=1e-4, atol=1e-5), f"{key} differs: max {(a[key] - b[key]).abs().max()}"
    # and training really moved the parameters (the comparison is not vacuous)
    torch.manual_seed(3)
    from asyncsgd.tasks.models import CNN1d
    fresh = CNN1d(1, 40, 10).state_dict()
    assert max((a[k] - fresh[k]).abs().max() for k in a) > 1e-2
