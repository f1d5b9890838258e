"""examples/lm_damping_trace.py runs and prints one line per epoch with the loss, the
damping and the reduction ratios it reports (a smoke test: the guide quotes the example).
It runs in a subprocess, since the example sets torch's thread count for its process."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("torch") is None or importlib.util.find_spec("mnist1d") is None,
    reason="needs torch and mnist1d (pip install -e '.[torch,bench]')")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "lm_damping_trace.py"


def test_lm_damping_trace_prints_an_epoch():
    done = subprocess.run([sys.executable, str(EXAMPLE), "--epochs", "1"], capture_output=True,
                          text=True, timeout=300, check=True)
    out = done.stdout.strip().splitlines()
    assert len(out) == 1, done.stdout
    m = re.fullmatch(r"epoch 1: training loss (\S+), damping (\S+), rho ((?:\S+ ?){6})", out[0])
    assert m, out[0]
    # 31 steps adapt the damping 7 times (every 5th step): it has moved from its start of 1
    assert float(m.group(2)) != 1.0
