"""Drivers: rsvd, nystrom, randomized eigh, ridge, woodbury_solve."""

from .woodbury import woodbury_solve
