"""The former private name of :mod:`sketchlinalg.backend`, kept importable while its last
users move to the public name; ``sketchlinalg._backend`` *is* that module (one object, so
attributes and monkeypatches are shared)."""

import sys

from . import backend

sys.modules[__name__] = backend
