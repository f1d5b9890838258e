"""``seng.train``: training studies comparing SENG with first-order baselines.

``python -m seng.train`` (see :mod:`seng.train.cli`) or, from Python, :func:`train`.
"""

from .data import DATASETS, Dataset, load_dataset
from .models import MLP, MODELS, ResNet, SmallCNN, build_model
from .optim import OPTIMIZERS, SCHEDULES, Schedule, make_optimizer
from .study import DEFAULT_LR, PRESETS, StudyResult, train

__all__ = ["DATASETS", "DEFAULT_LR", "MLP", "MODELS", "OPTIMIZERS", "PRESETS", "SCHEDULES",
           "Dataset", "ResNet", "Schedule", "SmallCNN", "StudyResult", "build_model",
           "load_dataset", "make_optimizer", "train"]
