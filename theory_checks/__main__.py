"""``python -m theory_checks``: run the checks, print the table, write the report.

Exit status 0 when every claim passes, 1 when one fails, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from . import CHECKS, run_check
from ._arrays import Arrays
from ._config import BACKENDS, DEVICES, Config
from ._report import table, write
from ._threads import NOTE


def _only(text: str) -> tuple[str, ...]:
    names = tuple(s.strip() for s in text.split(",") if s.strip())
    bad = [n for n in names if n not in CHECKS]
    if not names or bad:
        raise argparse.ArgumentTypeError(
            f"invalid check name(s) {', '.join(bad) or repr(text)}; valid: {', '.join(CHECKS)}")
    return names


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m theory_checks",
        description="Numerical checks of the SENG paper's claims: one row per sub-claim with "
                    "the predicted and measured values and PASS/FAIL; writes report.md and PNG "
                    "figures; exits 1 when a claim fails.")
    p.add_argument("--only", type=_only, default=CHECKS, metavar="NAME,...",
                   help=f"checks to run, comma-separated (default all: {','.join(CHECKS)})")
    p.add_argument("--backend", choices=BACKENDS, default="numpy",
                   help="array backend of the ntk, fisher and linalg checks (default numpy)")
    p.add_argument("--device", choices=DEVICES, default="cpu",
                   help="device for torch and cupy (default cpu)")
    p.add_argument("--quick", action="store_true", help="small sizes (the test suite's)")
    p.add_argument("--out", type=Path, default=Path("theory_report"),
                   help="report folder (default theory_report/)")
    p.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        config = Config(backend=args.backend, device=args.device, quick=args.quick,
                        seed=args.seed, out=args.out, progress=True)
        Arrays(config)  # the backend and device exist (imports torch or cupy if asked)
    except (ValueError, ImportError) as exc:
        parser().error(str(exc))
    from tqdm.auto import tqdm

    results = []
    t0 = time.perf_counter()
    bar = tqdm(args.only, desc="theory checks", file=sys.stderr)
    for name in bar:
        bar.set_postfix_str(name)
        results.append(run_check(name, config))
    seconds = time.perf_counter() - t0
    print(table(results))
    print()
    for r in results:
        print(f"{r.status}  {r.name}: {r.claim} ({r.seconds:.1f} s)"
              + (f"\n      not checked: {r.skipped}" if r.skipped else ""))
    note = NOTE if importlib.util.find_spec("threadpoolctl") else (
        "CPU threads: library defaults (threadpoolctl is not installed)")
    path = write(args.out, results, config, [note], seconds)
    failed = [r.name for r in results if not r.passed]
    print(f"\n{len(results) - len(failed)} of {len(results)} claims pass in {seconds:.1f} s; "
          f"report: {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
