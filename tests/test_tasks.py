"""Tasks and models: IDX reading, MNIST/npz loading and validation, known optima, model sizes."""

from __future__ import annotations

import gzip
import pickle
import struct
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_one_line_error, run_cli

from asyncsgd.errors import ConfigError, DataError
from asyncsgd.tasks import get_task
from asyncsgd.tasks import vision
from asyncsgd.tasks.models import build_model, count_parameters
from asyncsgd.tasks.vision import MNIST_MEAN, MNIST_STD, mnist_idx_split, mnist_task, read_idx

torch.set_num_threads(1)

SHARED_MNIST = Path(__file__).parents[2] / "shared" / "data" / "mnist-test-10k"
needs_shared = pytest.mark.skipif(not SHARED_MNIST.is_dir(),
                                  reason=f"{SHARED_MNIST} absent (a user's clone has no ../shared)")


def write_idx(path: Path, arr: np.ndarray, gz: bool) -> Path:
    codes = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C, np.dtype(">f8"): 0x0E}
    arr = arr.astype(">i4") if arr.dtype == np.int32 else arr.astype(">f8") if arr.dtype == np.float64 else arr
    data = bytes([0, 0, codes[arr.dtype], arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def write_mnist(folder: Path, n_train: int, n_test: int, gz: bool, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
              "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
              "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8)}
    for name, a in arrays.items():
        write_idx(folder / name, a, gz)
    return arrays


# ---------------------------------------------------------------- IDX reader

@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_roundtrip(tmp_path, gz):
    images = np.random.default_rng(1).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    labels = np.arange(7, dtype=np.uint8)
    ints = np.array([[-5, 70000], [3, 0]], dtype=np.int32)
    for name, a in (("img", images), ("lab", labels), ("int", ints)):
        got = read_idx(write_idx(tmp_path / name, a, gz))
        assert got.shape == a.shape and np.array_equal(got, a) and got.dtype.isnative


def test_read_idx_rejects_bad_files(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x12\x34\x08\x01" + b"\0" * 8)
    with pytest.raises(DataError, match=r"bad is not an IDX file \(starts with 12340801\)"):
        read_idx(bad)
    cut = write_idx(tmp_path / "cut", np.zeros((4, 3), np.uint8), gz=False)
    cut.write_bytes(cut.read_bytes()[:-2])
    with pytest.raises(DataError, match=r"cut: IDX header says shape \[4, 3\] \(12 bytes\) but 10 data bytes"):
        read_idx(cut)
    broken = tmp_path / "broken.gz"
    broken.write_bytes(gzip.compress(b"\0\0\x08\x01\0\0\0\x05abcde")[:-6])
    with pytest.raises(DataError, match="cannot read IDX file .*broken.gz"):
        read_idx(broken)


@needs_shared
def test_read_idx_real_mnist_test_set():
    x = read_idx(SHARED_MNIST / "t10k-images-idx3-ubyte.gz")
    y = read_idx(SHARED_MNIST / "t10k-labels-idx1-ubyte.gz")
    assert x.shape == (10000, 28, 28) and x.dtype == np.uint8 and x.max() == 255 and x.min() == 0
    # the published class counts of the MNIST test set
    assert np.bincount(y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert 0.12 < x.mean() / 255 < 0.14  # MNIST's mean pixel is ~0.13


@needs_shared
def test_mnist10k_split_is_seeded():
    a, b = mnist_idx_split(SHARED_MNIST, seed=0), mnist_idx_split(SHARED_MNIST, seed=0)
    c = mnist_idx_split(SHARED_MNIST, seed=1)
    assert a["x"].shape == (8000, 28, 28) and a["x_test"].shape == (2000, 28, 28)
    assert np.array_equal(a["x"], b["x"]) and np.array_equal(a["y_test"], b["y_test"])
    assert not np.array_equal(a["y"], c["y"])
    task = get_task("mnist10k", data_dir=str(SHARED_MNIST), num_samples=500)
    x, y = task.train_set.tensors
    assert task.model_name == "cnn2d" and x.shape == (500, 1, 28, 28) and y.dtype == torch.long
    assert abs(x.mean().item()) < 0.1 and abs(x.std().item() - 1) < 0.1  # normalized
    assert task.info["test_samples"] == 2000 and task.model_fn()(x[:4]).shape == (4, 10)
    with pytest.raises(ConfigError, match="accepted: train >= 1, test >= 1, train \\+ test <= 10000"):
        mnist_idx_split(SHARED_MNIST, train=9000, test=2000)


def test_mnist10k_needs_data_dir(tmp_path):
    with pytest.raises(ConfigError, match="task mnist10k needs --data-dir"):
        get_task("mnist10k")
    with pytest.raises(DataError, match=f"mnist10k: no t10k-images-idx3-ubyte .* in {tmp_path}"):
        get_task("mnist10k", data_dir=str(tmp_path))


# ---------------------------------------------------------------- MNIST without torchvision

@pytest.mark.parametrize("layout,gz", [("flat", False), ("torchvision", True)])
def test_mnist_task_from_idx_files(tmp_path, layout, gz, monkeypatch):
    monkeypatch.setattr(vision, "_download_mnist", lambda root: pytest.fail("must not download"))
    folder = tmp_path if layout == "flat" else tmp_path / "MNIST" / "raw"
    arrays = write_mnist(folder, 200, 50, gz)
    task = get_task("mnist", data_dir=str(tmp_path))
    x, y = task.train_set.tensors
    assert x.shape == (200, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.long
    assert len(task.test_set) == 50 and task.num_classes == 10 and task.model_name == "cnn2d"
    raw = arrays["train-images-idx3-ubyte"]
    expect = (raw.astype(np.float32) / 255 - MNIST_MEAN[0]) / MNIST_STD[0]
    assert np.allclose(x[:, 0].numpy(), expect, atol=1e-6)
    assert np.array_equal(y.numpy(), arrays["train-labels-idx1-ubyte"])
    assert task.info["source"] == [str(folder.resolve())] and task.info["input_shape"] == [1, 28, 28]
    model = pickle.loads(pickle.dumps(task.model_fn))()  # what a spawned worker does
    assert model(x[:3]).shape == (3, 10)
    small = mnist_task(model="mlp", data_dir=tmp_path, num_samples=120)
    assert len(small.train_set) == 120 and small.model_fn()(x[:2]).shape == (2, 10)
    with pytest.raises(ConfigError, match="--model 'resnet18' does not fit mnist; accepted: cnn2d, mlp, linear"):
        mnist_task(model="resnet18", data_dir=tmp_path)
    with pytest.raises(ConfigError, match="--num-samples 201 does not fit mnist, .* accepted: 1..200"):
        mnist_task(data_dir=tmp_path, num_samples=201)


def test_mnist_missing_files_error_names_directory(tmp_path, monkeypatch):
    def offline(root):
        raise OSError("no network")

    monkeypatch.setattr(vision, "_download_mnist", offline)
    with pytest.raises(DataError) as err:
        get_task("mnist", data_dir=str(tmp_path))
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("mnist: no MNIST files train-images-idx3-ubyte")
    assert f"in {tmp_path} or {tmp_path / 'MNIST' / 'raw'} (download failed: OSError: no network)" in msg
    assert "put the four IDX files train-images-idx3-ubyte.gz" in msg and msg.endswith("or run once online")
    write_mnist(tmp_path, 20, 5, gz=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"no MNIST files t10k-labels-idx1-ubyte \(.gz or not\) .*\(download off\)"):
        mnist_task(data_dir=tmp_path, download=False)


def test_mnist_mismatched_pair_is_rejected(tmp_path):
    write_mnist(tmp_path, 20, 5, gz=False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(19, np.uint8), gz=False)
    with pytest.raises(DataError, match="labels of shape \\[19\\] for 20 images in train-images-idx3-ubyte"):
        mnist_task(data_dir=tmp_path, download=False)


def t10k_labels(dtype=np.uint8, bad=None):
    """10,000 labels 0..9 of `dtype`, with `bad` at position 5 if given."""
    y = (np.arange(10000) % 10).astype(dtype)
    if bad is not None:
        y[5] = bad
    return y


# Files that read as IDX but hold no MNIST data: refused while the task loads, not in training.
BAD_T10K = {
    "label 200": (dict(labels=t10k_labels(np.uint8, 200)),
                  ["t10k-labels-idx1-ubyte.gz has label 200 at position 5", "accepted: class labels 0..9"]),
    "label -1 as int32": (dict(labels=t10k_labels(np.int32, -1)), ["has label -1 at position 5", "0..9"]),
    "float labels with a NaN": (dict(labels=t10k_labels(np.float64, np.nan)),
                                ["holds float64 labels", "accepted: integer class labels 0..9"]),
    "images 0 pixels high": (dict(images=np.zeros((10000, 0, 28), np.uint8)),
                             ["t10k-images-idx3-ubyte.gz holds uint8 [10000, 0, 28]", "uint8 images [n, 28, 28]"]),
}


@pytest.mark.parametrize("name", sorted(BAD_T10K))
def test_bad_mnist10k_files_exit_2_at_load(name, tmp_path):
    arrays, needles = BAD_T10K[name]
    write_idx(tmp_path / "t10k-images-idx3-ubyte", arrays.get("images", np.zeros((10000, 28, 28), np.uint8)), gz=True)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", arrays.get("labels", t10k_labels()), gz=True)
    proc = run_cli("train", "--task", "mnist10k", "--data-dir", tmp_path, "--epochs", "0.01", "--progress", "none",
                   "--out", tmp_path / "run")
    assert_one_line_error(proc, 2, f"mnist10k: {tmp_path}", *needles)


def test_mnist_labels_beyond_9_are_rejected(tmp_path):
    write_mnist(tmp_path, 20, 5, gz=False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.full(20, 10, np.uint8), gz=False)
    with pytest.raises(DataError, match="^mnist: .*train-labels-idx1-ubyte has label 10 at position 0; accepted: "
                                        "class labels 0..9$"):
        mnist_task(data_dir=tmp_path, download=False)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_without_torchvision_says_how_to_install(name, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "torchvision.datasets", None)
    with pytest.raises(DataError, match=f'^{name} needs torchvision, .*; pip install "asyncsgd\\[vision\\]"$'):
        get_task(name)
    with pytest.raises(ConfigError, match=f"--model 'mlp' does not fit {name}; accepted: resnet18, resnet20, cnn2d"):
        get_task(name, model="mlp")


def fake_torchvision(monkeypatch, **classes):
    """Install a stand-in torchvision whose datasets module holds `classes` (torchvision is optional)."""
    tv, tvd = type(sys)("torchvision"), type(sys)("torchvision.datasets")
    tv.datasets = tvd
    for k, v in classes.items():
        setattr(tvd, k, v)
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", tvd)


def test_cifar_through_torchvision(tmp_path, monkeypatch):
    calls = []

    class CIFAR10:  # torchvision's attributes: data uint8 [n, 32, 32, 3], targets list
        def __init__(self, root, train, download):
            calls.append((root, train, download))
            n = 20 if train else 8
            self.data = np.random.default_rng(n).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
            self.targets = [i % 10 for i in range(n)]

    fake_torchvision(monkeypatch, CIFAR10=CIFAR10)
    task = get_task("cifar10", data_dir=str(tmp_path), num_samples=12)
    assert calls == [(str(tmp_path), True, True), (str(tmp_path), False, True)]
    x, y = task.train_set.tensors
    assert x.shape == (12, 3, 32, 32) and x.dtype == torch.float32 and y.tolist() == [i % 10 for i in range(12)]
    raw = CIFAR10(None, True, True).data[:12]
    mean, std = vision.CIFAR["cifar10"][2:4]
    assert np.allclose(x[:, 1].numpy(), (raw[..., 1] / 255 - mean[1]) / std[1], atol=1e-5)  # channel order
    assert task.model_name == "resnet18" and task.num_classes == 10 and len(task.test_set) == 8
    assert get_task("cifar10", data_dir=str(tmp_path), model="resnet20").model_fn()(x[:2]).shape == (2, 10)

    class Broken:
        def __init__(self, root, train, download):
            raise RuntimeError("Dataset not found or corrupted.\nYou can use download=True")

    fake_torchvision(monkeypatch, CIFAR100=Broken)
    with pytest.raises(DataError) as err:
        get_task("cifar100", data_dir=str(tmp_path))
    assert str(err.value) == (f"cifar100: no usable CIFAR100 files in {tmp_path} (download failed: RuntimeError: "
                              f"Dataset not found or corrupted. You can use download=True); put "
                              f"cifar-100-python.tar.gz (or its extracted cifar-100-python/) there, or run once online")


def test_mnist_download_uses_torchvision_when_present(tmp_path, monkeypatch):
    class MNIST:  # torchvision downloads all four files into root/MNIST/raw
        def __init__(self, root, train, download):
            write_mnist(Path(root) / "MNIST" / "raw", 30, 10, gz=True)

    fake_torchvision(monkeypatch, MNIST=MNIST)
    task = get_task("mnist", data_dir=str(tmp_path))
    assert len(task.train_set) == 30 and task.info["source"] == [str((tmp_path / "MNIST" / "raw").resolve())]


# ---------------------------------------------------------------- npz

def save(path: Path, **arrays) -> str:
    np.savez(path, **arrays)
    return str(path)


X = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
Y = np.arange(50) % 3

NPZ_ERRORS = [
    (dict(y=Y), "has no array 'x' (found: y); save it with np.savez(path, x=..., y=...)"),
    (dict(x=X), "has no array 'y' (found: x)"),
    (dict(x=X, y=Y, x_test=X), "has 'x_test' but no 'y_test'; save both or neither"),
    (dict(x=X, y=Y, y_test=Y), "has 'y_test' but no 'x_test'; save both or neither"),
    (dict(x=X[:0], y=Y[:0]), "array 'x' in {p} is empty (shape [0, 4]); it needs at least one row"),
    (dict(x=X, y=Y, x_test=X[:0], y_test=Y[:0]), "array 'x_test' in {p} is empty"),
    (dict(x=X, y=Y[:49]), "{p}: 'x' has 50 rows but 'y' has 49; they must match"),
    (dict(x=X.astype(str), y=Y), "array 'x' in {p} has dtype <U"),
    (dict(x=X.astype(complex), y=Y), "has dtype complex128; accepted: float or integer numbers"),
    (dict(x=X[:, 0], y=Y), "array 'x' in {p} has shape [50]; accepted: [n, features], [n, channels, length]"),
    (dict(x=X, y=Y.astype(np.float32)), "array 'y' in {p} has dtype float32; accepted: integer class labels"),
    (dict(x=X, y=Y[:, None]), "array 'y' in {p} has shape [50, 1]; accepted: [n] class labels"),
    (dict(x=X, y=Y - 1), "array 'y' in {p} has negative label -1; accepted: labels 0..k-1"),
    (dict(x=np.where(np.arange(50)[:, None] == 7, np.nan, X), y=Y),
     "array 'x' in {p} has NaN or inf values (as float32; first in row 7)"),
    (dict(x=X.astype(np.float64) * 1e300, y=Y), "array 'x' in {p} has NaN or inf values"),  # overflows float32
    (dict(x=X, y=Y, x_test=np.full((5, 4), np.inf), y_test=Y[:5]), "array 'x_test' in {p} has NaN or inf"),
    (dict(x=X, y=Y, x_test=X[:5, :3], y_test=Y[:5]),
     "{p}: 'x_test' rows have shape [3] but 'x' rows have [4]; they must match"),
    (dict(x=X, y=Y, x_test=X[:5], y_test=np.array([0, 1, 2, 3, 0])),
     "{p}: 'y_test' has label 3 but 'y' labels only reach 2; every test class must occur"),
    (dict(x=X[:1], y=Y[:1]), "{p} has 1 row, too few for the 80/20 train/test split"),
]


@pytest.mark.parametrize("arrays,message", NPZ_ERRORS, ids=[m[:40] for _, m in NPZ_ERRORS])
def test_npz_validation_errors(tmp_path, arrays, message):
    p = save(tmp_path / "data.npz", **arrays)
    with pytest.raises(DataError) as err:
        get_task(f"npz:{p}")
    assert message.format(p=p) in str(err.value) and "\n" not in str(err.value)


def test_npz_unreadable_files(tmp_path):
    missing = tmp_path / "nope.npz"
    with pytest.raises(DataError, match=f"npz: file {missing} not found; pass npz:PATH"):
        get_task(f"npz:{missing}")
    text = tmp_path / "text.npz"
    text.write_text("hello")
    with pytest.raises(DataError, match=f"npz: cannot read {text} \\(.*\\); save it with np.savez"):
        get_task(f"npz:{text}")
    npy = tmp_path / "one.npy"
    np.save(npy, X)
    with pytest.raises(DataError, match="is a single .npy array, not an .npz archive"):
        get_task(f"npz:{npy}")
    objs = save(tmp_path / "obj.npz", x=np.array([None, 1], dtype=object), y=Y[:2])
    with pytest.raises(DataError, match=f"npz: cannot read array 'x' in {objs}"):
        get_task(f"npz:{objs}")
    with pytest.raises(ConfigError, match="task 'npz:' has no path"):
        get_task("npz:")


def corrupt_compressed_x(path: Path) -> None:
    """An np.savez_compressed archive whose x.npy deflate stream is damaged (its zip headers are intact)."""
    np.savez_compressed(path, x=X, y=Y)
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("x.npy")
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len + 20  # 20 bytes into the compressed data
    raw[start:start + 40] = bytes(b ^ 0x5A for b in raw[start:start + 40])
    path.write_bytes(raw)


def text_members(path: Path) -> None:
    """A zip holding x.npy and y.npy that are plain text, not .npy arrays."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("x.npy", b"hello")
        z.writestr("y.npy", b"hello")


@pytest.mark.parametrize("write, needles", [
    (corrupt_compressed_x, ["cannot read array 'x'", "Error -3 while decompressing data"]),
    (text_members, ["cannot read array 'x'", "5 bytes without the .npy header", "np.savez(path, x=..., y=...)"]),
], ids=["corrupt compressed data", "text members"])
def test_damaged_npz_members_exit_2(write, needles, tmp_path):
    path = tmp_path / "data.npz"
    write(path)
    proc = run_cli("train", "--task", f"npz:{path}", "--epochs", "0.01", "--progress", "none",
                   "--out", tmp_path / "run")
    assert_one_line_error(proc, 2, f"npz: cannot read array 'x' in {path}", *needles)


@pytest.mark.parametrize("shape,model", [((4,), "mlp"), ((2, 9), "cnn1d"), ((3, 6, 5), "cnn2d")])
def test_npz_model_follows_x_shape(tmp_path, shape, model):
    rng = np.random.default_rng(0)
    x = rng.integers(-3, 4, size=(40, *shape)).astype(np.int16)  # integer features are accepted
    p = save(tmp_path / "d.npz", x=x, y=np.arange(40) % 4, x_test=x[:6], y_test=np.array([0, 1, 2, 5, 0, 1]))
    with pytest.raises(DataError, match="'y_test' has label 5 but 'y' labels only reach 3"):
        get_task(f"npz:{p}")
    p = save(tmp_path / "d.npz", x=x, y=np.arange(40) % 6, x_test=x[:6], y_test=np.array([0, 1, 2, 3, 0, 1]))
    task = get_task(f"npz:{p}")
    assert task.model_name == model and task.num_classes == 6 and task.info["input_shape"] == list(shape)
    xs, ys = task.train_set.tensors
    assert xs.dtype == torch.float32 and ys.dtype == torch.long and len(task.test_set) == 6
    net = pickle.loads(pickle.dumps(task.model_fn))()
    assert net(xs[:5]).shape == (5, 6)
    assert get_task(f"npz:{p}", model="linear").model_fn()(xs[:2]).shape == (2, 6)
    assert len(get_task(f"npz:{p}", num_samples=10).train_set) == 10


def test_npz_seeded_split_and_model_mismatch(tmp_path):
    p = save(tmp_path / "d.npz", x=X, y=Y)
    a, b, c = get_task(f"npz:{p}", seed=3), get_task(f"npz:{p}", seed=3), get_task(f"npz:{p}", seed=4)
    assert len(a.train_set) == 40 and len(a.test_set) == 10 and a.num_classes == 3
    assert torch.equal(a.test_set.tensors[0], b.test_set.tensors[0])
    assert not torch.equal(a.test_set.tensors[0], c.test_set.tensors[0])
    rows = {tuple(r) for r in a.train_set.tensors[0].tolist()} | {tuple(r) for r in a.test_set.tensors[0].tolist()}
    assert len(rows) == 50  # a partition of x
    with pytest.raises(ConfigError, match=r"--model 'cnn2d' does not fit npz x of shape \[n, 4\]; accepted: mlp, linear"):
        get_task(f"npz:{p}", model="cnn2d")


# ---------------------------------------------------------------- synthetic tasks with a known optimum

def test_logreg_gradient_descent_reaches_known_optimum():
    task = get_task("logreg")
    assert task.model_name == "linear" and task.num_classes == 2 and task.optimal_loss > 0.1
    assert task.info["train_samples"] == 4000 and task.info["test_samples"] == 1000
    x, y = task.train_set.tensors
    model = task.model_fn().double()
    x = x.double()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    losses = []
    for _ in range(300):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] - task.optimal_loss < 1e-2
    assert min(losses) >= task.optimal_loss - 1e-12  # nothing beats the reported optimum
    assert get_task("logreg").optimal_loss == task.optimal_loss  # deterministic
    with pytest.raises(ConfigError, match="--num-samples 50 is too small for logreg; accepted: >= 200"):
        get_task("logreg", num_samples=50)


def test_quadratic_closed_form_matches_optimal_loss():
    task = get_task("quadratic", seed=2, num_samples=500)
    assert task.loss == "mse" and task.num_classes is None and not task.is_classification
    a, b = task.train_set.tensors
    assert a.shape == (500, 20) and b.shape == (500, 1) and b.dtype == torch.float32
    a64, b64 = a.double(), b.double()
    sol = torch.linalg.lstsq(torch.cat([a64, torch.ones(500, 1, dtype=torch.float64)], 1), b64).solution
    model = task.model_fn().double()
    with torch.no_grad():
        model.weight.copy_(sol[:20].T)
        model.bias.copy_(sol[20])
        loss = F.mse_loss(model(a64), b64).item()
        assert loss == pytest.approx(task.optimal_loss, rel=1e-10)
        model.bias.add_(1e-3)  # any other point is worse
        assert F.mse_loss(model(a64), b64).item() > task.optimal_loss
    assert task.info["input_shape"] == [20] and len(task.test_set) == 1000


# ---------------------------------------------------------------- models and names

@pytest.mark.parametrize("name,params", [("resnet18", 11_173_962), ("resnet20", 269_722)])
def test_resnets(name, params):
    model = build_model(name, (3, 32, 32), 10)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert count_parameters(model) == params  # ~11.2M (CIFAR ResNet-18), ~0.27M (He et al. ResNet-20)


def test_model_and_task_names():
    with pytest.raises(ConfigError, match="unknown model 'vgg'; accepted: cnn1d, cnn2d, mlp, linear, resnet18, resnet20"):
        build_model("vgg", (3, 32, 32), 10)
    with pytest.raises(ConfigError, match=r"model 'cnn2d' needs inputs \[channels, height, width\]; got input shape \[20\]"):
        build_model("cnn2d", (20,), 10)
    with pytest.raises(ConfigError) as err:
        get_task("imagenet")
    assert str(err.value) == ("unknown task 'imagenet'; accepted: mnist1d, mnist, mnist10k, cifar10, cifar100, "
                              "logreg, quadratic, npz:PATH")
    assert build_model("cnn2d", (1, 28, 28), 10)(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    assert build_model("cnn2d", (2, 1, 3), 4)(torch.zeros(3, 2, 1, 3)).shape == (3, 4)  # tiny images work
    lin = build_model("linear", (4,), 2)
    assert isinstance(lin, torch.nn.Linear) and [n for n, _ in lin.named_parameters()] == ["weight", "bias"]
