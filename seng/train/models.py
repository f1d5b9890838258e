"""Models for the training studies: an MLP, a small CNN and CIFAR-style ResNets.

All take images ``(N, C, H, W)`` and return logits ``(N, num_classes)`` and are built from
standard ``torch.nn`` modules (``Linear``, ``Conv2d``, ``BatchNorm2d``), which SENG handles
through its layer helpers (:data:`seng.layers.HELPERS`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

#: Names accepted by :func:`build_model`.
MODELS = ("mlp", "cnn", "resnet8", "resnet18")


class MLP(nn.Sequential):
    """Flatten, then ``Linear -> ReLU`` for each hidden width, then a ``Linear`` to the logits.

    Parameters
    ----------
    in_features : int
        Number of input values per sample (``C * H * W``).
    num_classes : int
        Number of outputs.
    hidden : sequence of int
        Hidden widths. Default ``(128,)``.
    """

    def __init__(self, in_features: int, num_classes: int,
                 hidden: Sequence[int] = (128,)) -> None:
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, num_classes))
        super().__init__(*layers)


class SmallCNN(nn.Sequential):
    """Two ``Conv3x3 -> ReLU -> MaxPool2`` stages (32 and 64 channels), an adaptive average
    pool to at most 4 x 4, then ``Linear(., 128) -> ReLU -> Linear(128, num_classes)``.

    Parameters
    ----------
    input_shape : tuple of int
        ``(C, H, W)`` of one sample; ``H, W >= 4``.
    num_classes : int
        Number of outputs.
    """

    def __init__(self, input_shape: Sequence[int], num_classes: int) -> None:
        c, h, w = input_shape
        side = min(4, h // 4, w // 4) or 1
        super().__init__(
            nn.Conv2d(c, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(side), nn.Flatten(),
            nn.Linear(64 * side * side, 128), nn.ReLU(), nn.Linear(128, num_classes),
        )


class BasicBlock(nn.Module):
    """``x -> ReLU(BN(Conv3x3(ReLU(BN(Conv3x3(x))))) + shortcut(x))`` (He et al. 2016);
    the shortcut is a strided ``Conv1x1 -> BN`` when the shape changes."""

    def __init__(self, in_channels: int, channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, channels, 1, stride, bias=False),
                                          nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """The CIFAR variant of ResNet (He et al. 2016, as in the SENG paper's CIFAR-10 runs): a
    ``Conv3x3 -> BN -> ReLU`` stem without max-pooling, four stages of :class:`BasicBlock`
    with widths ``width * (1, 2, 4, 8)`` (stride 2 from the second stage on), global average
    pooling and a ``Linear`` classifier. ``blocks=(2, 2, 2, 2), width=64`` is ResNet-18.

    Parameters
    ----------
    input_shape : tuple of int
        ``(C, H, W)`` of one sample (32 x 32 for CIFAR-10; any size >= 8 works).
    num_classes : int
        Number of outputs.
    blocks : sequence of int
        Blocks per stage. Default ``(2, 2, 2, 2)``.
    width : int
        Channels of the first stage. Default 64.
    """

    def __init__(self, input_shape: Sequence[int], num_classes: int,
                 blocks: Sequence[int] = (2, 2, 2, 2), width: int = 64) -> None:
        super().__init__()
        c = input_shape[0]
        self.stem = nn.Sequential(nn.Conv2d(c, width, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU())
        stages: list[nn.Module] = []
        channels = width
        for i, n in enumerate(blocks):
            out = width * 2**i
            for j in range(n):
                stages.append(BasicBlock(channels, out, 2 if i > 0 and j == 0 else 1))
                channels = out
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(channels, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


def build_model(name: str, input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """A model by name: ``"mlp"`` (:class:`MLP`, one hidden layer of 128), ``"cnn"``
    (:class:`SmallCNN`), ``"resnet8"`` (:class:`ResNet` with one block per stage, width 16)
    or ``"resnet18"`` (:class:`ResNet`, ``(2, 2, 2, 2)``, width 64)."""
    if name == "mlp":
        return MLP(int(torch.Size(input_shape).numel()), num_classes)
    if name == "cnn":
        return SmallCNN(input_shape, num_classes)
    if name == "resnet8":
        return ResNet(input_shape, num_classes, blocks=(1, 1, 1, 1), width=16)
    if name == "resnet18":
        return ResNet(input_shape, num_classes)
    raise ValueError(f"Invalid model: {name!r} (valid: {', '.join(MODELS)}, or pass an "
                     "nn.Module / a function returning one to seng.train.train(model=...))")


__all__ = ["MLP", "MODELS", "BasicBlock", "ResNet", "SmallCNN", "build_model"]
