"""MNIST-1D (Greydanus 2020), generated locally by the mnist1d package: no download.

Generating 10,000 samples takes a few seconds, so the arrays are cached as .npz under
$ASYNCSGD_CACHE (default ~/.cache/asyncsgd), keyed by sample count and seed.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from ..errors import ConfigError


def cache_dir() -> Path:
    return Path(os.environ.get("ASYNCSGD_CACHE", Path.home() / ".cache" / "asyncsgd"))


def load_mnist1d(num_samples: int = 10_000, data_seed: int = 42) -> dict:
    """The MNIST-1D arrays (x: [n, 40] float, y: [n] int), 80/20 train/test, cached on disk."""
    path = cache_dir() / f"mnist1d-{num_samples}-{data_seed}.npz"
    if path.exists():
        with np.load(path) as f:
            return {k: f[k] for k in ("x", "y", "x_test", "y_test")}
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.seed = num_samples, data_seed
    data = make_dataset(args)
    arrays = {k: data[k] for k in ("x", "y", "x_test", "y_test")}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)  # atomic: parallel first runs never read a half-written cache
    return arrays


def mnist1d_task(model: str | None = None, seed: int = 0, num_samples: int | None = None):
    from . import Task
    from .models import CNN1d

    num_samples = 10_000 if num_samples is None else num_samples
    if num_samples < 100:
        raise ConfigError(f"--num-samples {num_samples} is too small for mnist1d; accepted: >= 100")
    d = load_mnist1d(num_samples)
    to_x = lambda a: torch.tensor(a, dtype=torch.float32).unsqueeze(1)  # [n, 1, 40]
    train = TensorDataset(to_x(d["x"]), torch.tensor(d["y"], dtype=torch.long))
    test = TensorDataset(to_x(d["x_test"]), torch.tensor(d["y_test"], dtype=torch.long))
    model = model or "cnn1d"
    if model != "cnn1d":
        raise ConfigError(f"--model {model!r} does not fit mnist1d; accepted: cnn1d")
    return Task(name="mnist1d", model_name=model, train_set=train, test_set=test,
                model_fn=functools.partial(CNN1d, 1, 40, 10), num_classes=10,
                info={"train_samples": len(train), "test_samples": len(test), "input_shape": [1, 40]})
