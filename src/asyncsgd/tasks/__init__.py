"""Tasks: a dataset, a model factory and a loss, ready for any algorithm.

A task is everything an algorithm needs that is not the algorithm: the training and test sets
(map-style datasets; the built-in tasks give TensorDatasets so batches are one indexing op),
a picklable model factory (spawned worker processes call it), and what "accuracy" means.

Built-in names: mnist1d (default, generated locally, no download), mnist (raw IDX files, read
without torchvision; downloaded if missing), mnist10k (the 10,000-image MNIST test set split
8,000/2,000, --data-dir required), cifar10, cifar100 (torchvision, --data-dir), npz:PATH (your own
arrays), logreg and quadratic (synthetic problems with a known optimum).

Default models: mnist1d cnn1d; mnist, mnist10k cnn2d; cifar10, cifar100 resnet18; npz by x's shape
(mlp, cnn1d, cnn2d); logreg and quadratic linear. Models are built by models.build_model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch.nn as nn
from torch.utils.data import Dataset

TASK_NAMES = ("mnist1d", "mnist", "mnist10k", "cifar10", "cifar100", "logreg", "quadratic", "npz:PATH")


@dataclass
class Task:
    """A dataset pair plus the model to train on it."""

    name: str
    model_name: str
    train_set: Dataset
    test_set: Dataset
    model_fn: Callable[[], nn.Module]  # picklable: spawned workers call it
    loss: str = "cross_entropy"  # "cross_entropy" (classification) or "mse" (regression)
    num_classes: int | None = None
    optimal_loss: float | None = None  # known optimum of the training loss (synthetic tasks)
    info: dict = field(default_factory=dict)  # sizes, shapes, source: copied into summary.json

    @property
    def is_classification(self) -> bool:
        return self.loss == "cross_entropy"


def check_task_name(name) -> None:
    """ConfigError unless name is a task get_task knows (its data is checked when the task is built)."""
    from ..errors import ConfigError

    if not isinstance(name, str) or not (name in TASK_NAMES or name.startswith("npz:")):
        raise ConfigError(f"unknown task {name!r}; accepted: {', '.join(TASK_NAMES)}")


def get_task(name: str = "mnist1d", *, model: str | None = None, data_dir: str | None = None,
             seed: int = 0, num_samples: int | None = None) -> Task:
    """Build a task by name ("mnist1d", "npz:PATH", ...); raises ConfigError/DataError on bad input."""
    from ..errors import ConfigError

    if name == "mnist1d":
        from .mnist1d import mnist1d_task
        return mnist1d_task(model=model, seed=seed, num_samples=num_samples)
    if name == "mnist":
        from .vision import mnist_task
        return mnist_task(model=model, data_dir=data_dir, seed=seed, num_samples=num_samples)
    if name == "mnist10k":
        from .vision import mnist10k_task
        return mnist10k_task(model=model, data_dir=data_dir, seed=seed, num_samples=num_samples)
    if name in ("cifar10", "cifar100"):
        from .vision import cifar_task
        return cifar_task(name, model=model, data_dir=data_dir, seed=seed, num_samples=num_samples)
    if name == "logreg":
        from .synthetic import logreg_task
        return logreg_task(model=model, seed=seed, num_samples=num_samples)
    if name == "quadratic":
        from .synthetic import quadratic_task
        return quadratic_task(model=model, seed=seed, num_samples=num_samples)
    if name.startswith("npz:"):
        if not name[4:]:
            raise ConfigError("task 'npz:' has no path; accepted: npz:PATH, PATH an .npz file with arrays x and y")
        from .npz import npz_task
        return npz_task(name[4:], model=model, seed=seed, num_samples=num_samples)
    check_task_name(name)  # every known name returned above
    raise AssertionError(f"task {name!r} is in TASK_NAMES but get_task does not build it")
