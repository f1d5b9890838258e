"""``import sketchlinalg`` must not import a backend the caller did not pass."""

import subprocess
import sys


def test_import_does_not_pull_torch_or_cupy():
    code = (
        "import sys, numpy as np, sketchlinalg as sl\n"
        "S = sl.sketch('srht', 4, 16, rng=0); S @ np.ones((16, 2))\n"
        "print(' '.join(m for m in ('torch', 'cupy', 'jax') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
