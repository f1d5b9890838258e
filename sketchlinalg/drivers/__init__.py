"""Drivers: rsvd, nystrom, randomized eigh, ridge, woodbury_solve."""

from .eigh import eigh_randomized
from .nystrom import nystrom
from .ridge import ridge
from .rsvd import rsvd
from .woodbury import woodbury_solve

__all__ = ["eigh_randomized", "nystrom", "ridge", "rsvd", "woodbury_solve"]
