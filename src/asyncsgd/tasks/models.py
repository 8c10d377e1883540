"""Models for the built-in tasks. Small, standard, and picklable by name for spawned workers.

Tasks hand workers `functools.partial(build_model, name, input_shape, num_classes)`: a partial of
a module-level function pickles by reference, so spawned processes rebuild the same architecture.
`input_shape` excludes the batch dimension: [features], [channels, length] or [channels, h, w].
"""

from __future__ import annotations

import math

import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError


class CNN1d(nn.Module):
    """A small 1-D CNN: three convolutions and a linear head (MNIST-1D reaches ~95% with it)."""

    def __init__(self, in_channels: int = 1, length: int = 40, num_classes: int = 10, width: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(in_channels, width, 5, padding=2), nn.ReLU(),
            nn.Conv1d(width, width, 3, padding=1, stride=2), nn.ReLU(),
            nn.Conv1d(width, width, 3, padding=1, stride=2), nn.ReLU(),
        )
        out_len = (((length + 1) // 2) + 1) // 2
        self.head = nn.Linear(width * out_len, num_classes)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


class CNN2d(nn.Module):
    """The classic small MNIST CNN: two 3x3 conv + 2x2 max-pool stages and a linear head (~99% on MNIST).

    Pooling uses ceil_mode so any image size works (a side of n becomes ceil(n/2)), down to 1x1.
    """

    def __init__(self, in_channels: int = 1, height: int = 28, width: int = 28, num_classes: int = 10,
                 channels: tuple[int, int] = (32, 64)):
        super().__init__()
        c1, c2 = channels
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
        )
        h, w = (((height + 1) // 2) + 1) // 2, (((width + 1) // 2) + 1) // 2
        self.head = nn.Linear(c2 * h * w, num_classes)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


class MLP(nn.Module):
    """Fully connected ReLU network for flat features (inputs of any shape are flattened)."""

    def __init__(self, in_features: int, num_classes: int, hidden: tuple[int, ...] = (128, 128)):
        super().__init__()
        layers, width = [], in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x.flatten(1))


class Linear(nn.Linear):
    """One affine layer (logistic / least-squares regression); flattens its input first.

    A subclass rather than Sequential(Flatten, Linear) so the parameters stay `weight` and `bias`.
    """

    def forward(self, x):
        return super().forward(x.flatten(1))


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv-BN layers plus a shortcut.

    shortcut="B": a 1x1 conv + BN projection when the shape changes (ResNet-18).
    shortcut="A": parameter-free, subsample by 2 and zero-pad the new channels (He et al. 2016's
    CIFAR ResNets), so ResNet-20 has the paper's 0.27M parameters.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "B"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut_type = shortcut
        self.pad = planes - in_planes
        self.stride = stride
        self.shortcut = nn.Sequential()
        if (stride != 1 or in_planes != planes) and shortcut == "B":
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(planes))

    def _short(self, x):
        if self.shortcut_type == "A" and (self.stride != 1 or self.pad):
            x = x[:, :, ::self.stride, ::self.stride]
            return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return self.shortcut(x)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self._short(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet: 3x3 stride-1 stem, no max-pool, BasicBlock stages, global average pool."""

    def __init__(self, blocks: list[int], widths: list[int], in_channels: int = 3, num_classes: int = 10,
                 shortcut: str = "B"):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU())
        stages, in_planes = [], widths[0]
        for i, (n, planes) in enumerate(zip(blocks, widths)):
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                stages.append(BasicBlock(in_planes, planes, stride, shortcut))
                in_planes = planes
        self.layers = nn.Sequential(*stages)
        self.head = nn.Linear(in_planes, num_classes)

    def forward(self, x):
        out = self.layers(self.stem(x))
        return self.head(F.adaptive_avg_pool2d(out, 1).flatten(1))


def resnet18(in_channels: int = 3, num_classes: int = 10) -> ResNet:
    """ResNet-18 for 32x32 images (the common CIFAR form, ~11.2M parameters)."""
    return ResNet([2, 2, 2, 2], [64, 128, 256, 512], in_channels, num_classes, shortcut="B")


def resnet20(in_channels: int = 3, num_classes: int = 10) -> ResNet:
    """He et al.'s CIFAR ResNet-20: 3 stages x 3 blocks, 16/32/64 channels, option-A shortcuts (~0.27M)."""
    return ResNet([3, 3, 3], [16, 32, 64], in_channels, num_classes, shortcut="A")


MODEL_NAMES = ("cnn1d", "cnn2d", "mlp", "linear", "resnet18", "resnet20")
_SHAPES = {"cnn1d": (2, "[channels, length]"), "cnn2d": (3, "[channels, height, width]"),
           "resnet18": (3, "[channels, height, width]"), "resnet20": (3, "[channels, height, width]")}


def check_model_name(name) -> None:
    """ConfigError unless name is a model build_model knows."""
    if name not in MODEL_NAMES:
        raise ConfigError(f"unknown model {name!r}; accepted: {', '.join(MODEL_NAMES)}")


def build_model(name: str, input_shape, num_classes: int) -> nn.Module:
    """The model `name` for inputs of `input_shape` (no batch dim) and `num_classes` outputs."""
    shape = tuple(int(s) for s in input_shape)
    check_model_name(name)
    if name in _SHAPES and len(shape) != _SHAPES[name][0]:
        raise ConfigError(f"model {name!r} needs inputs {_SHAPES[name][1]}; got input shape {list(shape)}"
                          f" (use mlp or linear for flat features)")
    if name == "cnn1d":
        return CNN1d(shape[0], shape[1], num_classes)
    if name == "cnn2d":
        return CNN2d(shape[0], shape[1], shape[2], num_classes)
    if name == "mlp":
        return MLP(math.prod(shape), num_classes)
    if name == "linear":
        return Linear(math.prod(shape), num_classes)
    return (resnet18 if name == "resnet18" else resnet20)(shape[0], num_classes)


def check_model(task: str, model: str | None, accepted: tuple[str, ...]) -> str:
    """The model name to use for `task`: `model`, or accepted[0] (the default) when None."""
    model = model or accepted[0]
    if model not in accepted:
        raise ConfigError(f"--model {model!r} does not fit {task}; accepted: {', '.join(accepted)}")
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["CNN1d", "CNN2d", "MLP", "Linear", "ResNet", "resnet18", "resnet20", "build_model",
           "check_model", "count_parameters", "MODEL_NAMES"]
