"""Image tasks: MNIST (torchvision not needed), the MNIST test set as a small benchmark, CIFAR.

MNIST is read from its raw IDX files by our own reader (the same bytes torchvision's MNIST reads),
found in data_dir or data_dir/MNIST/raw (torchvision's layout), gzipped or not. Missing files are
downloaded into data_dir/MNIST/raw: by torchvision when it is installed, else by urllib from the
same mirror with the same md5 checks. CIFAR-10/100 need torchvision (optional: the "vision"
extra), imported only when a CIFAR task is asked for.

Images become float32 tensors normalized per channel, (x/255 - mean) / std, in TensorDatasets:
no augmentation, so every algorithm sees exactly the same samples.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from ..errors import ConfigError, DataError
from .common import check_num_samples, one_line, resolve_data_dir
from .models import build_model, check_model

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
MNIST_MD5 = {"train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
             "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
             "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
             "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"}
MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
MNIST_CLASSES = 10
MNIST_MODELS = ("cnn2d", "mlp", "linear")  # first is the default

# IDX type byte -> numpy dtype (big-endian on disk); MNIST uses 0x08.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path) -> np.ndarray:
    """Read one IDX file, gzipped or not (told apart by the gzip magic, not the name).

    Format: 2 zero bytes, a dtype byte (0x08 = uint8), a dims byte, one big-endian uint32 size
    per dimension, then the data in C order. Raises DataError on anything else.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"cannot read IDX file {path} ({one_line(e)}); re-download it") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (starts with {raw[:4].hex() or 'nothing'}); expected "
                        f"2 zero bytes, a dtype byte such as 08 (uint8) and a dims byte")
    ndim, header = raw[3], 4 + 4 * raw[3]
    if len(raw) < header:
        raise DataError(f"{path}: IDX header for {ndim} dims is cut short; the file is truncated, re-download it")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    need = math.prod(shape) * dtype.itemsize
    if len(raw) - header != need:
        raise DataError(f"{path}: IDX header says shape {list(shape)} ({need} bytes) but {len(raw) - header} "
                        f"data bytes follow; the file is truncated or corrupt, re-download it")
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def find_idx(stem: str, data_dir) -> Path | None:
    """`stem` or `stem.gz` in data_dir or data_dir/MNIST/raw (torchvision's layout), else None."""
    for d in (Path(data_dir), Path(data_dir) / "MNIST" / "raw"):
        for name in (stem, stem + ".gz"):
            if (d / name).is_file():
                return d / name
    return None


def _read_pair(task: str, images: Path, labels: Path) -> tuple[np.ndarray, np.ndarray]:
    x, y = read_idx(images), read_idx(labels)
    if x.ndim != 3 or x.shape[1:] != (28, 28) or x.dtype != np.uint8:
        raise DataError(f"{task}: {images} holds {x.dtype} {list(x.shape)}; expected uint8 images [n, 28, 28]")
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(f"{task}: {labels} holds labels of shape {list(y.shape)} for {len(x)} images in "
                        f"{images.name}; the pair must match")
    if y.dtype.kind not in "iu":  # a float label (NaN, 2.5) is no class
        raise DataError(f"{task}: {labels} holds {y.dtype} labels; accepted: integer class labels "
                        f"0..{MNIST_CLASSES - 1} (IDX type 08, unsigned byte)")
    bad = (y < 0) | (y >= MNIST_CLASSES)
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(f"{task}: {labels} has label {y[i]} at position {i}; accepted: class labels "
                        f"0..{MNIST_CLASSES - 1}")
    return x, y.astype(np.int64)


def _download_mnist(root: Path) -> None:
    """Fetch the four MNIST files into root/MNIST/raw; raises on failure."""
    try:
        import torchvision.datasets as tvd
    except Exception:  # noqa: BLE001 - missing or broken torchvision: use urllib below
        tvd = None
    if tvd is not None:
        tvd.MNIST(str(root), train=True, download=True)
        return
    import urllib.request

    raw = root / "MNIST" / "raw"
    for stem in MNIST_FILES:
        if find_idx(stem, root):
            continue
        name, errors = stem + ".gz", []
        for mirror in MNIST_MIRRORS:
            try:
                with urllib.request.urlopen(mirror + name, timeout=30) as r:
                    data = r.read()
            except OSError as e:
                errors.append(one_line(e))
                continue
            if hashlib.md5(data).hexdigest() != MNIST_MD5[name]:
                errors.append(f"md5 mismatch from {mirror}")
                continue
            raw.mkdir(parents=True, exist_ok=True)
            tmp = raw / f"{name}.{os.getpid()}.part"
            tmp.write_bytes(data)
            os.replace(tmp, raw / name)  # atomic: a parallel run never reads half a file
            break
        else:
            raise OSError(f"{name} from {len(MNIST_MIRRORS)} mirrors: {errors[-1]}")


def load_mnist(data_dir=None, download: bool = True) -> dict:
    """MNIST as uint8 arrays: x [60000, 28, 28], y, x_test [10000, 28, 28], y_test, plus source."""
    root = resolve_data_dir(data_dir)
    found = {s: find_idx(s, root) for s in MNIST_FILES}
    why = "download off"
    if download and not all(found.values()):
        try:
            _download_mnist(root)
            why = "download gave no files"
        except Exception as e:  # noqa: BLE001 - any failure becomes the one-line DataError below
            why = f"download failed: {one_line(e)}"
        found = {s: find_idx(s, root) for s in MNIST_FILES}
    missing = [s for s, p in found.items() if p is None]
    if missing:
        raise DataError(f"mnist: no MNIST files {', '.join(missing)} (.gz or not) in {root} or "
                        f"{root / 'MNIST' / 'raw'} ({why}); put the four IDX files "
                        f"{', '.join(s + '.gz' for s in MNIST_FILES)} there, or run once online")
    x, y = _read_pair("mnist", found[MNIST_FILES[0]], found[MNIST_FILES[1]])
    x_test, y_test = _read_pair("mnist", found[MNIST_FILES[2]], found[MNIST_FILES[3]])
    return {"x": x, "y": y, "x_test": x_test, "y_test": y_test,
            "source": sorted({str(p.parent.resolve()) for p in found.values()})}


def mnist_idx_split(data_dir, train: int = 8000, test: int = 2000, seed: int = 0) -> dict:
    """A seeded train/test split of the MNIST test set (t10k-* files only), for quick benchmarks.

    The 10,000 t10k images are real, small and often all an offline machine has; a fixed-seed
    permutation takes the first `train` for training and the next `test` for testing.
    """
    if not data_dir:
        raise ConfigError("task mnist10k needs --data-dir: the folder holding t10k-images-idx3-ubyte.gz "
                          "and t10k-labels-idx1-ubyte.gz (the MNIST test set)")
    root = Path(data_dir).expanduser()
    images, labels = find_idx(MNIST_FILES[2], root), find_idx(MNIST_FILES[3], root)
    if images is None or labels is None:
        raise DataError(f"mnist10k: no {MNIST_FILES[2] if images is None else MNIST_FILES[3]} (.gz or not) "
                        f"in {root} or {root / 'MNIST' / 'raw'}; put the MNIST test-set files "
                        f"t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz there")
    x, y = _read_pair("mnist10k", images, labels)
    if train < 1 or test < 1 or train + test > len(x):
        raise ConfigError(f"mnist10k: split {train} train + {test} test does not fit the {len(x)} images in "
                          f"{images}; accepted: train >= 1, test >= 1, train + test <= {len(x)}")
    order = np.random.default_rng(seed).permutation(len(x))
    tr, te = order[:train], order[train:train + test]
    return {"x": x[tr], "y": y[tr], "x_test": x[te], "y_test": y[te], "source": [str(images.parent.resolve())]}


def normalize_images(x: np.ndarray, mean, std) -> torch.Tensor:
    """uint8 [n, h, w] or [n, h, w, c] -> float32 [n, c, h, w], (x/255 - mean) / std per channel."""
    t = torch.from_numpy(np.ascontiguousarray(x))
    t = t.unsqueeze(1) if t.ndim == 3 else t.permute(0, 3, 1, 2)
    t = t.to(torch.float32).div_(255)
    mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return t.sub_(mean).div_(std).contiguous()


def _image_task(name, d, model, accepted, num_classes, mean, std, num_samples, **info):
    from . import Task

    model = check_model(name, model, accepted)
    n = check_num_samples(name, num_samples, len(d["x"]))
    train = TensorDataset(normalize_images(d["x"][:n], mean, std), torch.as_tensor(d["y"][:n], dtype=torch.long))
    test = TensorDataset(normalize_images(d["x_test"], mean, std), torch.as_tensor(d["y_test"], dtype=torch.long))
    shape = list(train.tensors[0].shape[1:])
    return Task(name=name, model_name=model, train_set=train, test_set=test,
                model_fn=functools.partial(build_model, model, tuple(shape), num_classes),
                num_classes=num_classes,
                info={"train_samples": len(train), "test_samples": len(test), "input_shape": shape,
                      "source": d["source"], **info})


def mnist_task(model: str | None = None, data_dir=None, seed: int = 0, num_samples: int | None = None,
               download: bool = True):
    """MNIST, 60,000/10,000; num_samples keeps the first n training images (MNIST is pre-shuffled)."""
    d = load_mnist(data_dir, download)
    return _image_task("mnist", d, model, MNIST_MODELS, MNIST_CLASSES, MNIST_MEAN, MNIST_STD, num_samples)


def mnist10k_task(model: str | None = None, data_dir=None, seed: int = 0, num_samples: int | None = None,
                  train: int = 8000, test: int = 2000):
    """The MNIST test set split 8,000/2,000 by `seed` (see mnist_idx_split); num_samples trims train."""
    d = mnist_idx_split(data_dir, train, test, seed)
    return _image_task("mnist10k", d, model, MNIST_MODELS, MNIST_CLASSES, MNIST_MEAN, MNIST_STD, num_samples,
                       split_seed=seed)


# name -> (torchvision class, classes, mean, std, archive, extracted folder)
CIFAR = {
    "cifar10": ("CIFAR10", 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
                "cifar-10-python.tar.gz", "cifar-10-batches-py"),
    "cifar100": ("CIFAR100", 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
                 "cifar-100-python.tar.gz", "cifar-100-python"),
}
CIFAR_MODELS = ("resnet18", "resnet20", "cnn2d")


def import_torchvision_datasets(task: str):
    """torchvision.datasets, or a DataError saying how to install it (it is an optional extra)."""
    try:
        import torchvision.datasets as tvd
    except ImportError as e:
        raise DataError(f"{task} needs torchvision, which is not installed ({one_line(e)}); "
                        f'pip install "asyncsgd[vision]"') from None
    except Exception as e:  # noqa: BLE001 - e.g. a torchvision built for another torch
        raise DataError(f"{task}: torchvision failed to import ({one_line(e)}); install the torchvision "
                        f'matching torch {torch.__version__}: pip install "asyncsgd[vision]"') from None
    return tvd


def cifar_task(name: str = "cifar10", model: str | None = None, data_dir=None, seed: int = 0,
               num_samples: int | None = None, download: bool = True):
    """CIFAR-10/100 through torchvision (its pickled batches, no reader of our own), 50,000/10,000."""
    cls_name, num_classes, mean, std, archive, folder = CIFAR[name]
    check_model(name, model, CIFAR_MODELS)  # fail on a bad --model before any download
    tvd = import_torchvision_datasets(name)
    root = resolve_data_dir(data_dir)
    try:
        train = getattr(tvd, cls_name)(str(root), train=True, download=download)
        test = getattr(tvd, cls_name)(str(root), train=False, download=download)
    except Exception as e:  # noqa: BLE001 - missing files, failed download, corrupt archive
        raise DataError(f"{name}: no usable {cls_name} files in {root} ({'download failed: ' if download else ''}"
                        f"{one_line(e)}); put {archive} (or its extracted {folder}/) there, or run once "
                        f"online") from None
    d = {"x": np.asarray(train.data), "y": np.asarray(train.targets), "x_test": np.asarray(test.data),
         "y_test": np.asarray(test.targets), "source": [str((root / folder).resolve())]}
    return _image_task(name, d, model, CIFAR_MODELS, num_classes, mean, std, num_samples)
