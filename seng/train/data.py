"""Data sets for the training studies: tensors in memory, read from local files only.

Every set is a :class:`Dataset` of float32 image tensors ``(N, C, H, W)``, normalized per
channel with the training split's mean and standard deviation, and int64 labels. Nothing is
downloaded unless ``download=True`` is passed (that path needs torchvision, which writes the
same folder layout that the readers here expect).
"""

from __future__ import annotations

import gzip
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

#: Names accepted by :func:`load_dataset`.
DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10", "synthetic")

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_FOLDERS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
_CIFAR_FOLDER = "cifar-10-batches-py"
_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST = ("test_batch",)


@dataclass
class Dataset:
    """A classification data set held in memory.

    Attributes
    ----------
    name : str
        Data set name (one of :data:`DATASETS`).
    x_train, x_test : torch.Tensor
        float32 inputs of shape ``(N, C, H, W)``, normalized per channel with the training
        split's statistics.
    y_train, y_test : torch.Tensor
        int64 labels in ``[0, num_classes)``.
    num_classes : int
        Number of classes.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        """``(C, H, W)`` of one sample."""
        return tuple(self.x_train.shape[1:])

    def subset(self, n: int, rng: int = 0) -> Dataset:
        """The first ``n`` samples of a fixed random permutation of each split (``n`` or
        fewer: a split smaller than ``n`` is kept whole)."""
        g = torch.Generator().manual_seed(rng)
        tr = torch.randperm(len(self.y_train), generator=g)[:n]
        te = torch.randperm(len(self.y_test), generator=g)[:n]
        return Dataset(self.name, self.x_train[tr], self.y_train[tr], self.x_test[te],
                       self.y_test[te], self.num_classes)

    def to(self, device: torch.device | str) -> Dataset:
        """The same data on ``device``."""
        return Dataset(self.name, self.x_train.to(device), self.y_train.to(device),
                       self.x_test.to(device), self.y_test.to(device), self.num_classes)


def load_dataset(name: str, data_dir: str | Path | None = None, *,
                 download: bool = False) -> Dataset:
    """Load a data set by name.

    Parameters
    ----------
    name : str
        ``"digits"``: scikit-learn's bundled 8 x 8 handwritten digits (1797 samples, 10
        classes), split once into 1437 training and 360 test samples (stratified, fixed
        seed 0); no file is read from ``data_dir``. ``"mnist"``, ``"fashion-mnist"``: the
        idx files (optionally gzipped) under ``<data_dir>/MNIST/raw/`` or
        ``<data_dir>/FashionMNIST/raw/``. ``"cifar10"``: the python pickles under
        ``<data_dir>/cifar-10-batches-py/``. ``"synthetic"``: 512 + 256 samples of
        ``1 x 8 x 8`` Gaussian inputs labelled by a fixed random linear map into 4 classes
        (for tests).
    data_dir : str or pathlib.Path, optional
        Root folder of the torchvision layout; required for MNIST, Fashion-MNIST and
        CIFAR-10.
    download : bool
        Fetch a missing MNIST / Fashion-MNIST / CIFAR-10 into ``data_dir`` with torchvision
        (which must be installed). Default False: a missing file is an error.

    Returns
    -------
    Dataset

    Raises
    ------
    ValueError
        Unknown ``name``; ``data_dir`` missing for a local data set.
    FileNotFoundError
        A data file is missing; the message lists the expected paths.
    """
    if not isinstance(name, str) or name not in DATASETS:
        raise ValueError(f"Invalid data set: {name!r} (valid: {', '.join(DATASETS)})")
    if name == "digits":
        return _digits()
    if name == "synthetic":
        return _synthetic()
    if data_dir is None:
        raise ValueError(f"data set {name!r} is read from a local folder: pass data_dir "
                         f"(--data-dir DIR); expected layout:\n{expected_layout(name, 'DIR')}")
    root = Path(data_dir)
    if download:
        _download(name, root)
    if name == "cifar10":
        return _cifar10(root)
    return _idx_dataset(name, root)


def expected_layout(name: str, root: str | Path) -> str:
    """The files :func:`load_dataset` reads for ``name`` under ``root``, one per line."""
    if name == "cifar10":
        folder = Path(root) / _CIFAR_FOLDER
        return "\n".join(f"  {folder / f}" for f in (*_CIFAR_TRAIN, *_CIFAR_TEST))
    folder = Path(root) / _IDX_FOLDERS[name] / "raw"
    files = [f for pair in _IDX_FILES.values() for f in pair]
    return "\n".join(f"  {folder / f}  (or {f}.gz)" for f in files)


def read_idx(path: str | Path) -> np.ndarray:
    """Read an idx file (the MNIST format), gzipped when its name ends in ``.gz``.

    The format: two zero bytes, a type code (0x08 = uint8), the number of dimensions ``k``,
    ``k`` big-endian uint32 sizes, then the data in C order.
    """
    path = Path(path)
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path} is not an idx file of uint8 data (header {raw[:4]!r})")
    ndim = raw[3]
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    offset = 4 + 4 * ndim
    if len(raw) - offset != int(np.prod(shape)):
        raise ValueError(f"{path}: header says shape {shape} but the file holds "
                         f"{len(raw) - offset} data bytes")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(shape)


def read_cifar_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 python batch: images ``(n, 3, 32, 32)`` uint8 and labels ``(n,)``.

    The pickle is loaded with an unpickler that only admits NumPy arrays, lists and plain
    values, so a tampered file cannot run code.
    """
    path = Path(path)
    with path.open("rb") as f:
        batch = _ArrayUnpickler(f, encoding="bytes").load()
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise ValueError(f"{path} is not a CIFAR-10 batch (a dict with b'data' and b'labels')")
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise ValueError(f"{path}: data of shape {data.shape} with {len(labels)} labels "
                         "(expected (n, 3072) and n labels)")
    return data.reshape(-1, 3, 32, 32), labels


class _ArrayUnpickler(pickle.Unpickler):
    _ALLOWED: ClassVar[set[tuple[str, str]]] = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> type:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")
        return super().find_class(module, name)


def _digits() -> Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = x.reshape(-1, 1, 8, 8)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=360, random_state=0, stratify=y)
    return _normalized("digits", xtr, ytr, xte, yte, 10)


def _synthetic() -> Dataset:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((768, 1, 8, 8))
    w = rng.standard_normal((64, 4))
    y = np.argmax(x.reshape(768, -1) @ w, axis=1)
    return _normalized("synthetic", x[:512], y[:512], x[512:], y[512:], 4)


def _idx_dataset(name: str, root: Path) -> Dataset:
    folder = root / _IDX_FOLDERS[name] / "raw"
    splits = {}
    for split, files in _IDX_FILES.items():
        paths = []
        for f in files:
            found = [p for p in (folder / f, folder / f"{f}.gz") if p.is_file()]
            if not found:
                _missing(name, root, folder / f)
            paths.append(found[0])
        images, labels = read_idx(paths[0]), read_idx(paths[1])
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(f"{paths[0]} / {paths[1]}: images of shape {images.shape} and "
                             f"labels of shape {labels.shape} do not match")
        splits[split] = (images[:, None], labels)
    return _normalized(name, *splits["train"], *splits["test"], 10)


def _cifar10(root: Path) -> Dataset:
    folder = root / _CIFAR_FOLDER
    parts = {}
    for split, files in (("train", _CIFAR_TRAIN), ("test", _CIFAR_TEST)):
        batches = []
        for f in files:
            if not (folder / f).is_file():
                _missing("cifar10", root, folder / f)
            batches.append(read_cifar_batch(folder / f))
        parts[split] = (np.concatenate([b[0] for b in batches]),
                        np.concatenate([b[1] for b in batches]))
    return _normalized("cifar10", *parts["train"], *parts["test"], 10)


def _missing(name: str, root: Path, path: Path) -> None:
    raise FileNotFoundError(
        f"data set {name!r}: {path} not found. Put the files in the torchvision layout "
        f"under the data folder {root}:\n{expected_layout(name, root)}\n"
        "(or pass --download / download=True to fetch them with torchvision)")


def _normalized(name: str, xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray,
                yte: np.ndarray, num_classes: int) -> Dataset:
    x_train = torch.as_tensor(np.asarray(xtr, dtype=np.float32))
    x_test = torch.as_tensor(np.asarray(xte, dtype=np.float32))
    mean = x_train.mean(dim=(0, 2, 3), keepdim=True)
    std = x_train.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    y_train = torch.as_tensor(np.asarray(ytr, dtype=np.int64))
    y_test = torch.as_tensor(np.asarray(yte, dtype=np.int64))
    for split, labels in (("train", y_train), ("test", y_test)):
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
            raise ValueError(f"data set {name!r}: {split} labels outside [0, {num_classes})")
    return Dataset(name, (x_train - mean) / std, y_train, (x_test - mean) / std, y_test,
                   num_classes)


def _download(name: str, root: Path) -> None:
    try:
        import torchvision.datasets as tvd
    except ImportError as e:
        raise ImportError(f"download=True fetches {name!r} with torchvision, which is not "
                          "installed (pip install torchvision), or put the files in place "
                          f"yourself:\n{expected_layout(name, root)}") from e
    cls = {"mnist": tvd.MNIST, "fashion-mnist": tvd.FashionMNIST, "cifar10": tvd.CIFAR10}[name]
    for train in (True, False):
        cls(str(root), train=train, download=True)


def augment_batch(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop after zero padding by ``pad`` and random horizontal flip, per sample (the
    standard CIFAR-10 augmentation); ``generator`` (on CPU) draws the offsets and flips."""
    n, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator).to(x.device)
    flip = torch.rand(n, 1, generator=generator).lt(0.5).to(x.device)
    rows = dy + torch.arange(h, device=x.device)
    cols = dx + torch.arange(w, device=x.device)
    cols = torch.where(flip, cols.flip(1), cols)
    i = torch.arange(n, device=x.device)[:, None, None, None]
    ch = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[i, ch, rows[:, None, :, None], cols[:, None, None, :]]


__all__ = ["DATASETS", "Dataset", "augment_batch", "expected_layout", "load_dataset",
           "read_cifar_batch", "read_idx"]
