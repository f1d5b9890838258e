"""``python -m seng.bench``: the optimizer benchmark from the command line."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .benchmark import QUICK, BenchConfig, default_optimizer_names, run_benchmark
from .optimizers import all_optimizers
from .problems import PROBLEMS


def _names(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m seng.bench",
        description="Optimizer benchmark on MNIST-1D and digits: SENG against SGD, Adam, "
                    "AdamW, Muon and K-FAC (tables, plots and every run's log in --out).")
    p.add_argument("--out", type=Path, default=Path("out/bench"),
                   help="output folder (default out/bench)")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke run: small data, {QUICK['epochs']} epochs, "
                        f"{QUICK['grid_points']} grid points, {QUICK['seeds']} seeds")
    p.add_argument("--problems", type=_names, default=None,
                   help=f"comma-separated (default all: {','.join(PROBLEMS)})")
    defaults = default_optimizer_names()
    p.add_argument("--optimizers", type=_names, default=None,
                   help=f"comma-separated (default {','.join(default_optimizer_names())}; "
                        f"also {','.join(o for o in all_optimizers() if o not in defaults)})")
    p.add_argument("--seeds", type=int, default=None,
                   help="seeds run at every learning rate (default 3)")
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs of every run (default: each problem's own)")
    p.add_argument("--grid-points", type=int, default=None,
                   help="keep the middle N values of each initial grid")
    p.add_argument("--max-extend", type=int, default=None,
                   help="grid extensions allowed per optimizer (default 3)")
    p.add_argument("--timing-rounds", type=int, default=None,
                   help="rounds of interleaved step timing (default 8)")
    p.add_argument("--workers", type=int, default=None,
                   help="processes for the training runs (default 2; step timing always "
                        "runs alone in the main process)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    settings = dict(QUICK) if args.quick else {}
    for name in ("seeds", "epochs", "grid_points", "max_extend", "timing_rounds", "workers"):
        value = getattr(args, name)
        if value is not None:
            settings[name] = value
    if args.problems is not None:
        settings["problems"] = args.problems
    if args.optimizers is not None:
        settings["optimizers"] = args.optimizers
    try:
        cfg = BenchConfig(out=args.out, quick=args.quick, progress=not args.no_progress,
                          **settings)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    results = run_benchmark(cfg)
    print((args.out / "results.md").read_text())
    print(f"wrote {args.out}/results.md, results.json, plots/, runs/ "
          f"({time.perf_counter() - start:.0f} s; {len(results['skipped'])} skipped)")
    return 0


__all__ = ["main", "parser"]
