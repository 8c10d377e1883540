"""npz:PATH: train on your own arrays, saved with np.savez(PATH, x=..., y=..., [x_test=..., y_test=...]).

x is [n, features], [n, channels, length] or [n, channels, height, width] (float or int); y is [n]
integer class labels 0..k-1. Without x_test/y_test a seeded 80/20 split of x/y is the test set.
The default model follows x's shape: mlp, cnn1d or cnn2d. Every check raises a one-line
DataError naming the file and the array, so a bad file fails before any worker starts.
"""

from __future__ import annotations

import functools
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from ..errors import DataError
from .common import check_num_samples, one_line
from .models import build_model, check_model

# ndim of x -> accepted models, the first being the default
NPZ_MODELS = {2: ("mlp", "linear"), 3: ("cnn1d", "mlp", "linear"),
              4: ("cnn2d", "resnet18", "resnet20", "mlp", "linear")}
MAX_CLASSES = 100_000  # a label of 10^6 asked for a 22 GB model and its snapshots
_LAYOUTS = "[n, features], [n, channels, length] or [n, channels, height, width]"


def load_npz(path) -> dict:
    """The validated arrays of an npz file: x float32, y int64, x_test, y_test (or None)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"npz: file {path} not found; pass npz:PATH with an .npz file holding arrays x and y")
    try:
        f = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, RuntimeError) as e:  # RuntimeError: zip features
        raise DataError(f"npz: cannot read {path} ({one_line(e)}); save it with np.savez(path, x=..., y=...)") from None
    if not isinstance(f, np.lib.npyio.NpzFile):
        raise DataError(f"npz: {path} is a single .npy array, not an .npz archive; save it with "
                        f"np.savez(path, x=..., y=...)")
    with f:
        names = set(f.files)
        found = ", ".join(n if n.isprintable() else repr(n) for n in sorted(names)) or "none"  # one line
        for k in ("x", "y"):
            if k not in names:
                raise DataError(f"npz: {path} has no array {k!r} (found: {found}); "
                                f"save it with np.savez(path, x=..., y=...)")
        if ("x_test" in names) != ("y_test" in names):
            have, lack = ("x_test", "y_test") if "x_test" in names else ("y_test", "x_test")
            raise DataError(f"npz: {path} has {have!r} but no {lack!r}; save both or neither")
        arrays = {}
        for k in ("x", "y", "x_test", "y_test"):
            if k in names:
                try:
                    arrays[k] = f[k]
                # zlib.error: corrupt compressed data; RuntimeError: zipfile's encrypted or unsupported member
                except (ValueError, OSError, zipfile.BadZipFile, EOFError, zlib.error, RuntimeError) as e:
                    raise DataError(f"npz: cannot read array {k!r} in {path} ({one_line(e)}); "
                                    f"save plain numeric arrays") from None
                if not isinstance(arrays[k], np.ndarray):  # numpy hands back raw bytes for a non-.npy member
                    raise DataError(f"npz: cannot read array {k!r} in {path} (its member is {len(arrays[k])} bytes "
                                    f"without the .npy header); save it with np.savez(path, x=..., y=...)")
    return _validate(path, arrays)


def _validate(path: Path, a: dict) -> dict:
    for k, v in a.items():
        if v.size == 0:
            raise DataError(f"npz: array {k!r} in {path} is empty (shape {list(v.shape)}); it needs at least one row")
    out = {"x_test": None, "y_test": None}
    for xk, yk in (("x", "y"), ("x_test", "y_test")):
        if xk not in a:
            continue
        x, y = a[xk], a[yk]
        if x.dtype.kind not in "fiu":
            raise DataError(f"npz: array {xk!r} in {path} has dtype {x.dtype}; accepted: float or integer numbers")
        if x.ndim not in NPZ_MODELS:
            raise DataError(f"npz: array {xk!r} in {path} has shape {list(x.shape)}; accepted: {_LAYOUTS}")
        if y.dtype.kind not in "iu":
            raise DataError(f"npz: array {yk!r} in {path} has dtype {y.dtype}; accepted: integer class labels "
                            f"(save y.astype(np.int64))")
        if y.ndim != 1:
            raise DataError(f"npz: array {yk!r} in {path} has shape {list(y.shape)}; accepted: [n] class labels")
        if len(x) != len(y):
            raise DataError(f"npz: {path}: {xk!r} has {len(x)} rows but {yk!r} has {len(y)}; they must match")
        if y.min() < 0:
            raise DataError(f"npz: array {yk!r} in {path} has negative label {int(y.min())}; accepted: labels 0..k-1")
        if y.max() >= MAX_CLASSES:  # the model's output layer has max label + 1 units
            raise DataError(f"npz: array {yk!r} in {path} has label {int(y.max())}; accepted: labels 0..k-1 with "
                            f"k at most {MAX_CLASSES} (the model has one output per class up to the largest label)")
        with np.errstate(over="ignore", invalid="ignore"):  # overflow to inf is reported just below
            x32 = np.asarray(x, dtype=np.float32)
        bad = ~np.isfinite(x32.reshape(len(x32), -1)).all(axis=1)
        if bad.any():
            raise DataError(f"npz: array {xk!r} in {path} has NaN or inf values (as float32; first in row "
                            f"{int(np.argmax(bad))}); clean or drop those rows")
        out[xk], out[yk] = x32, y.astype(np.int64)
    if out["x_test"] is None and len(out["x"]) < 2:  # before the class count: one row is one class too
        raise DataError(f"npz: {path} has {len(out['x'])} row, too few for the 80/20 train/test split; "
                        f"add rows or save x_test and y_test too")
    if len(np.unique(out["y"])) < 2:  # nothing to learn: every prediction of that class is right
        raise DataError(f"npz: array 'y' in {path} has one class only (label {int(out['y'][0])}); accepted: "
                        "labels of at least 2 classes")
    if out["x_test"] is not None:
        if out["x_test"].shape[1:] != out["x"].shape[1:]:
            raise DataError(f"npz: {path}: 'x_test' rows have shape {list(out['x_test'].shape[1:])} but 'x' rows "
                            f"have {list(out['x'].shape[1:])}; they must match")
        top, test_top = int(out["y"].max()), int(out["y_test"].max())
        if test_top > top:
            raise DataError(f"npz: {path}: 'y_test' has label {test_top} but 'y' labels only reach {top}; "
                            f"every test class must occur in training labels 0..{top}")
    return out


def npz_task(path, model: str | None = None, seed: int = 0, num_samples: int | None = None):
    """Task from an npz file (see module docstring); num_samples keeps the first n training rows."""
    from . import Task

    path = Path(path).expanduser()
    d = load_npz(path)
    x, y = d["x"], d["y"]
    if d["x_test"] is None:
        order = np.random.default_rng(seed).permutation(len(x))
        n_test = max(1, round(0.2 * len(x)))
        tr, te = order[n_test:], order[:n_test]
        x, y, x_test, y_test = x[tr], y[tr], x[te], y[te]
        split = f"seeded 80/20 split of x (seed {seed})"
    else:
        x_test, y_test = d["x_test"], d["y_test"]
        split = "x_test/y_test"
    accepted = NPZ_MODELS[x.ndim]
    model = check_model(f"npz x of shape [n, {', '.join(map(str, x.shape[1:]))}]", model, accepted)
    n = check_num_samples(f"npz:{path}", num_samples, len(x))
    num_classes = int(max(y.max(), y_test.max())) + 1
    train = TensorDataset(torch.from_numpy(np.ascontiguousarray(x[:n])), torch.from_numpy(y[:n].copy()))
    test = TensorDataset(torch.from_numpy(np.ascontiguousarray(x_test)), torch.from_numpy(y_test.copy()))
    shape = list(x.shape[1:])
    return Task(name=f"npz:{path}", model_name=model, train_set=train, test_set=test,
                model_fn=functools.partial(build_model, model, tuple(shape), num_classes),
                num_classes=num_classes,
                info={"train_samples": len(train), "test_samples": len(test), "input_shape": shape,
                      "source": str(path.resolve()), "test_split": split})
