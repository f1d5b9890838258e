"""The benchmark's problems: data, model, loss, metric and target of each.

- ``mnist1d-cnn``, ``mnist1d-mlp``: classification of MNIST-1D (Greydanus 2020, "Scaling
  down deep learning", arXiv:2011.14439), 4000 training and 1000 test signals of length 40,
  generated procedurally by the ``mnist1d`` package (``make_dataset(get_dataset_args())``;
  its download path is never used). Target: a test accuracy.
- ``digits-autoencoder``: a deep autoencoder 64-256-128-32-128-256-64 on scikit-learn's
  bundled 8 x 8 digits (the training split of :func:`seng.train.load_dataset`), pixel
  intensities in [0, 1]. Target: a training mean squared error.
"""

from __future__ import annotations

import importlib.util
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from seng.train.data import load_dataset
from seng.train.models import MLP

#: The ``mnist1d`` release the benchmark was written and measured with (the ``bench`` extra).
MNIST1D_VERSION = "0.0.2.post1"


@dataclass(frozen=True)
class Data:
    """Tensors of one problem: inputs and targets (labels, or the inputs for an
    autoencoder) of the training and test splits."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    def subset(self, n_train: int, n_test: int) -> Data:
        """The first ``n_train`` training and ``n_test`` test samples (the generators
        shuffle, so the first ones are a fair sample)."""
        return Data(self.x_train[:n_train], self.y_train[:n_train],
                    self.x_test[:n_test], self.y_test[:n_test])


def per_sample_mse(output: torch.Tensor, target: torch.Tensor,
                   reduction: str = "mean") -> torch.Tensor:
    """Squared error averaged over the features of each sample, then reduced over the batch
    (``"mean"``: equal to ``F.mse_loss``; ``"sum"``: what ASDL's K-FAC asks of a loss on its
    curvature steps, so that the per-sample loss keeps its scale on every step)."""
    per_sample = (output - target).pow(2).flatten(1).mean(1)
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    if reduction == "none":
        return per_sample
    raise ValueError(f"Invalid reduction: {reduction!r} (valid: 'mean', 'sum', 'none')")


@dataclass(frozen=True)
class Problem:
    """One benchmark problem.

    Attributes
    ----------
    name : str
        Key in :data:`PROBLEMS`.
    description : str
        One line for the report.
    kind : {"classification", "reconstruction"}
        Classification logs test accuracy; reconstruction does not.
    target_metric : str
        The logged quantity compared with ``target`` (``"test_acc"`` or ``"train_loss"``).
    target : float
        The value to reach (``>=`` for an accuracy, ``<=`` for a loss).
    epochs : int
        Epochs of the full study.
    quick_target : float
        The target of ``--quick`` runs (1-2 epochs on a subset): low enough that some
        optimizers reach it, so that the smoke run exercises the bookkeeping.
    requires : tuple of str
        Optional modules the data needs (checked by :func:`missing_requirements`).
    load : callable
        ``load(quick) -> Data``.
    build : callable
        ``build() -> nn.Module``, drawing its initial weights from torch's global RNG (the
        study seeds it per seed).
    loss : callable
        ``loss(output, target, reduction="mean")``.
    """

    name: str
    description: str
    kind: str
    target_metric: str
    target: float
    epochs: int
    quick_target: float
    load: Callable[[bool], Data] = field(repr=False)
    build: Callable[[], nn.Module] = field(repr=False)
    loss: Callable[..., torch.Tensor] = field(repr=False)
    requires: tuple[str, ...] = ()

    @property
    def higher_is_better(self) -> bool:
        """Whether the target metric improves upwards (accuracy) or downwards (loss)."""
        return self.target_metric.endswith("acc")

    def reached(self, value: float) -> bool:
        """Whether ``value`` of the target metric meets the target."""
        if not np.isfinite(value):
            return False
        return value >= self.target if self.higher_is_better else value <= self.target


def missing_requirements(problem: Problem) -> list[str]:
    """The modules ``problem`` needs that are not installed."""
    return [m for m in problem.requires if importlib.util.find_spec(m) is None]


# -- data --------------------------------------------------------------------------------------
def load_mnist1d(quick: bool = False) -> Data:
    """MNIST-1D from ``mnist1d.data.make_dataset(get_dataset_args())``: 4000 + 1000 signals
    of length 40, standardized by the package, labels 0-9.

    ``quick`` generates 1000 signals with the same generator and keeps 384 training and 200
    test signals: a smoke size, not a subset of the full data. The package seeds NumPy's and
    Python's global generators; their states are restored afterwards.
    """
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as e:
        raise ImportError("MNIST-1D needs the mnist1d package: pip install -e '.[bench]' "
                          f"(pins mnist1d=={MNIST1D_VERSION})") from e
    args = get_dataset_args()
    if quick:
        args.num_samples = 1000
    np_state, py_state = np.random.get_state(), random.getstate()  # noqa: NPY002
    try:
        d = make_dataset(args)
    finally:
        np.random.set_state(np_state)  # noqa: NPY002
        random.setstate(py_state)

    def f32(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(a, dtype=np.float32))

    def i64(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(a, dtype=np.int64))

    data = Data(f32(d["x"]), i64(d["y"]), f32(d["x_test"]), i64(d["y_test"]))
    return data.subset(384, 200) if quick else data


def load_digits_pixels(quick: bool = False) -> Data:
    """The digits split of :func:`seng.train.load_dataset` (1437 training, 360 test images)
    as flat 64-vectors of pixel intensities in [0, 1]; targets are the inputs.

    That loader standardizes; an affine map is undone exactly by a min-max rescaling with the
    training split's extremes (raw intensities 0 and 16 both occur there), giving raw / 16.
    ``quick`` keeps the first 256 training and 128 test images.
    """
    ds = load_dataset("digits")
    lo, hi = ds.x_train.min(), ds.x_train.max()
    x_train = ((ds.x_train - lo) / (hi - lo)).flatten(1)
    x_test = ((ds.x_test - lo) / (hi - lo)).flatten(1).clamp(0.0, 1.0)
    data = Data(x_train, x_train, x_test, x_test)
    return data.subset(256, 128) if quick else data


# -- models ------------------------------------------------------------------------------------
class MNIST1DCNN(nn.Sequential):
    """Three ``Conv1d -> ReLU`` stages (25 channels; kernel 5 then 3, 3; stride 2; padding 1:
    lengths 40 -> 19 -> 10 -> 5), flattened into ``Linear(125, 10)``: the shape of the CNN of
    the MNIST-1D paper. Input ``(N, 40)`` or ``(N, 1, 40)``."""

    def __init__(self, channels: int = 25, num_classes: int = 10) -> None:
        super().__init__(
            nn.Unflatten(1, (1, -1)),
            nn.Conv1d(1, channels, 5, stride=2, padding=1), nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1), nn.ReLU(),
            nn.Flatten(), nn.Linear(channels * 5, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.flatten(1))


def deep_autoencoder(widths: tuple[int, ...] = (64, 256, 128, 32, 128, 256, 64)) -> nn.Sequential:
    """``Linear -> Tanh`` between consecutive ``widths``, except a linear code layer (the
    narrowest width) and a linear output: the classic deep-autoencoder shape of the
    second-order optimization literature (Hinton and Salakhutdinov 2006; Martens 2010),
    scaled to 8 x 8 digits."""
    code = widths.index(min(widths))
    layers: list[nn.Module] = []
    for i in range(len(widths) - 1):
        layers.append(nn.Linear(widths[i], widths[i + 1]))
        if i + 1 != code and i + 1 != len(widths) - 1:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


PROBLEMS: dict[str, Problem] = {
    "mnist1d-cnn": Problem(
        "mnist1d-cnn", "MNIST-1D, CNN (3 Conv1d + Linear, 5.2k parameters)", "classification",
        "test_acc", 0.85, epochs=15, quick_target=0.15, load=load_mnist1d, build=MNIST1DCNN,
        loss=F.cross_entropy, requires=("mnist1d",)),
    "mnist1d-mlp": Problem(
        "mnist1d-mlp", "MNIST-1D, MLP 40-100-100-10 (15.2k parameters)", "classification",
        "test_acc", 0.60, epochs=20, quick_target=0.2, load=load_mnist1d,
        build=lambda: MLP(40, 10, hidden=(100, 100)), loss=F.cross_entropy,
        requires=("mnist1d",)),
    "digits-autoencoder": Problem(
        "digits-autoencoder", "digits, autoencoder 64-256-128-32-128-256-64 (107k parameters)",
        "reconstruction", "train_loss", 0.02, epochs=20, quick_target=0.075,
        load=load_digits_pixels, build=deep_autoencoder, loss=per_sample_mse),
}

__all__ = ["MNIST1DCNN", "MNIST1D_VERSION", "PROBLEMS", "Data", "Problem", "deep_autoencoder",
           "load_digits_pixels", "load_mnist1d", "missing_requirements", "per_sample_mse"]
