"""Command line of ``python -m seng.train``."""

from __future__ import annotations

import argparse
import inspect
import sys
from collections.abc import Sequence
from typing import Any

from seng._hyper import DAMPING_RULES
from seng.routes import ROUTE_NAMES

from .data import DATASETS
from .models import MODELS
from .optim import DIST_MODES, OPTIMIZERS, SCHEDULES
from .parallel import WorkerError
from .study import PRESETS, _prepare, train

# train()'s keyword defaults, which _prepare needs spelled out.
_DEFAULTS = {k: p.default for k, p in inspect.signature(train).parameters.items()
             if p.kind is p.KEYWORD_ONLY}

_EXAMPLES = """\
examples:
  python -m seng.train                                   # MLP on digits, all optimizers
  python -m seng.train --optimizers seng,sgd --seeds 0,1,2 --lr 0.02,0.05,0.1
  python -m seng.train --lr seng=0.05,0.1 --lr adam=0.001,0.003 --optimizers seng,adam
  python -m seng.train --data mnist --data-dir ~/data --model cnn --epochs 5
  python -m seng.train --preset cifar10-resnet18 --data-dir ~/data --device cuda
  python -m seng.train --nproc 2 --optimizers seng,sgd   # 2 processes, global batch 64
  torchrun --standalone --nproc-per-node 4 -m seng.train --device cuda --dist-mode local
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (flags left unset are ``None``, so presets can fill them)."""
    p = argparse.ArgumentParser(
        prog="python -m seng.train", epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a model with SENG and first-order baselines over learning rates "
                    "and seeds; write per-epoch logs, a results table and a comparison plot.")
    p.add_argument("--preset", choices=sorted(PRESETS),
                   help="a named recipe (its values are defaults that other flags override)")
    g = p.add_argument_group("model and data")
    g.add_argument("--model", help=f"one of {', '.join(MODELS)} (default mlp)")
    g.add_argument("--data", help=f"one of {', '.join(DATASETS)} (default digits)")
    g.add_argument("--data-dir", help="root folder of MNIST/Fashion-MNIST/CIFAR-10 in the "
                                      "torchvision layout")
    g.add_argument("--download", action="store_true", default=None,
                   help="fetch a missing local data set with torchvision")
    g.add_argument("--subset", type=int, help="use at most N samples of each split")
    g.add_argument("--augment", action=argparse.BooleanOptionalAction,
                   help="random crop + horizontal flip of training batches")
    g = p.add_argument_group("optimization")
    g.add_argument("--optimizers", help=f"comma-separated, among {', '.join(OPTIMIZERS)} "
                                        "(default all)")
    g.add_argument("--lr", action="append", metavar="[OPT=]LR[,LR...]",
                   help="learning rate(s) for every optimizer, or OPT=LR,... for one; "
                        "repeatable")
    g.add_argument("--seeds", help="comma-separated seeds (default 0)")
    g.add_argument("--epochs", type=int, help="default 10")
    g.add_argument("--batch-size", type=int, help="default 64")
    g.add_argument("--momentum", type=float, help="SENG and SGD (default 0.9)")
    g.add_argument("--weight-decay", type=float, help="default 0")
    g.add_argument("--schedule", choices=SCHEDULES, help="lr schedule (default constant)")
    g.add_argument("--decay-epochs", type=float, help="E of poly/cosine (default --epochs)")
    g.add_argument("--power", type=float, help="p of poly: lr (1 - epoch/E)^p (default 1)")
    g.add_argument("--step-size", type=int, help="epochs between step decays (default 30)")
    g.add_argument("--gamma", type=float, help="factor of a step decay (default 0.1)")
    g.add_argument("--warmup", type=float, help="linear warm-up epochs (default 0)")
    g = p.add_argument_group("SENG")
    g.add_argument("--damping", type=float, help="default 1.0")
    g.add_argument("--damping-decay", type=float, metavar="RATE",
                   help="damping * RATE^t at t epochs of training, RATE in (0, 1] (default: "
                        "constant)")
    g.add_argument("--damping-rule", choices=DAMPING_RULES,
                   help="absolute (the paper's, default), relative or spectral")
    g.add_argument("--update-freq", type=int, help="curvature every N steps (default 10)")
    g.add_argument("--sketch", choices=["none", *ROUTE_NAMES[1:]],
                   help="none (exact), auto, or a sketch family (default none)")
    g.add_argument("--sketch-size", type=int,
                   help="coordinates kept per layer, s*s for the paper's s (default 16384)")
    g.add_argument("--curvature-batch", type=int, help="samples used for the curvature")
    g.add_argument("--curvature-memory", type=int, metavar="K",
                   help="pool the curvature of the last K curvature batches (default 1)")
    g = p.add_argument_group("data-parallel")
    g.add_argument("--nproc", type=int, metavar="N",
                   help="spawn N processes on this host (gloo on CPU; NCCL with --device cuda, "
                        "rank r on cuda:r); --batch-size stays the global batch and must be "
                        "divisible by N; each worker uses cores/N threads unless --threads "
                        "(default 1, or torchrun's WORLD_SIZE under torchrun)")
    g.add_argument("--dist-mode", choices=DIST_MODES,
                   help="SENG's curvature with several processes: of the global batch (the "
                        "one-process direction; global-sharded keeps the sketched layers' "
                        "per-sample factors on their process, global-auto decides per layer "
                        "by bytes, both with --sketch a family) or of each process's slice "
                        "(default global)")
    g = p.add_argument_group("output")
    g.add_argument("--target", type=float, help="test accuracy to reach (default 0.97)")
    g.add_argument("--device", help="cpu (default), cuda, cuda:N")
    g.add_argument("--out", help="output folder (default out/train)")
    g.add_argument("--checkpoint-every", type=int, help="checkpoint every N epochs (0: never)")
    g.add_argument("--resume", action="store_true", default=None,
                   help="skip complete runs, continue the others from their checkpoints")
    g.add_argument("--threads", type=int, help="torch CPU threads for the study")
    g.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                   help="no progress bars")
    return p


def parse(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Keyword arguments of :func:`seng.train.train` from the command line."""
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    kwargs: dict[str, Any] = dict(PRESETS[args["preset"]]) if args["preset"] else {}
    kwargs.setdefault("out", "out/train")
    for key, value in args.items():
        if key == "preset" or value is None:
            continue
        try:
            kwargs[key] = _convert(key, value)
        except ValueError as e:
            parser.error(f"argument --{key.replace('_', '-')}: {e}")
    return kwargs


def _convert(key: str, value: Any) -> Any:
    if key == "optimizers":
        return [v.strip() for v in value.split(",") if v.strip()]
    if key == "seeds":
        return [int(v) for v in value.split(",")]
    if key == "lr":
        return _lr(value)
    if key == "sketch":
        return None if value == "none" else value
    return value


def _lr(items: list[str]) -> float | list[float] | dict[str, list[float]]:
    common: list[float] | None = None
    per: dict[str, list[float]] = {}
    for item in items:
        name, _, values = item.rpartition("=")
        grid = [float(v) for v in values.split(",")]
        if name:
            per[name.strip()] = grid
        else:
            common = grid
    if not per:
        return common if common is not None else []
    if common is not None:
        raise ValueError("give either LR,... for every optimizer or OPT=LR,... per optimizer, "
                         f"not both: {items}")
    return per


def main(argv: Sequence[str] | None = None) -> int:
    """Run a study from the command line; exit status 0 on success, 2 on a bad argument, 1
    when a spawned worker failed (its rank and traceback on stderr)."""
    kwargs = parse(argv)
    model, data = kwargs.pop("model", "mlp"), kwargs.pop("data", "digits")
    try:
        study = _prepare(model, data, **{**_DEFAULTS, **kwargs})
    except (ValueError, TypeError, FileNotFoundError, ImportError) as e:
        print(f"python -m seng.train: error: {e}", file=sys.stderr)
        return 2
    try:
        result = study.run()
    except WorkerError as e:
        print(f"python -m seng.train: error: {e}", file=sys.stderr)
        return 1
    if study.is_main:
        print(result.table)
        if result.out is not None:
            print(f"logs, results.md and comparison.png in {result.out}")
    return 0
