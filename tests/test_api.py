"""The Python API: any nn.Module factory, any map-style dataset, any algorithm."""

import functools

import pytest
import torch
import torch.nn as nn
from torch.utils.data import Dataset, TensorDataset

import asyncsgd
from asyncsgd.errors import ConfigError


class Blobs(Dataset):
    """A map-style dataset that is not a TensorDataset (exercises the generic collate path)."""

    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.y = torch.randint(0, 3, (n,), generator=g)
        centers = torch.tensor([[2.0, 0.0], [-2.0, 0.0], [0.0, 2.5]])
        self.x = centers[self.y] + 0.6 * torch.randn(n, 2, generator=g)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


class SmallNet(nn.Module):
    def __init__(self, hidden=16):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, 3))

    def forward(self, x):
        return self.net(x)


@pytest.mark.parametrize("algorithm", ["sequential", "hogwild"])
def test_train_any_module_on_any_dataset(tmp_path, algorithm):
    summary = asyncsgd.train(functools.partial(SmallNet, 16), Blobs(1200, 0), Blobs(300, 1), algorithm=algorithm,
                             workers=1 if algorithm == "sequential" else 2, epochs=3, lr=0.05, out=str(tmp_path / algorithm), progress="none",
                             threads_per_worker=1, target_accuracy=0.9, num_classes=3)
    assert summary["algorithm"] == algorithm and summary["samples"] == 3 * 1200
    assert summary["task_info"] == {"train_samples": 1200, "test_samples": 300, "num_classes": 3}
    assert summary["final_test_accuracy"] >= 0.9
    assert summary["model"] == "SmallNet" and (tmp_path / algorithm / "summary.json").exists()


def test_unpicklable_factory_is_a_clear_error_for_process_algorithms(tmp_path):
    data = TensorDataset(torch.randn(64, 2), torch.randint(0, 3, (64,)))
    # a lambda works in-process...
    ok = asyncsgd.train(lambda: SmallNet(4), data, data, algorithm="sequential", epochs=1, progress="none",
                        out=str(tmp_path / "seq"))
    assert ok["samples"] == 64
    # ...and a multi-process algorithm says what to do instead of a pickling traceback
    with pytest.raises(ConfigError, match="picklable"):
        asyncsgd.train(lambda: SmallNet(4), data, data, algorithm="hogwild", workers=2, epochs=1,
                       progress="none", out=str(tmp_path / "hog"))


def test_unknown_setting_is_rejected():
    with pytest.raises(ConfigError, match="unknown setting.*learning_rate"):
        asyncsgd.train(task="mnist1d", learning_rate=0.1)
