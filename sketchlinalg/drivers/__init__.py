"""Drivers: rsvd, nystrom, randomized eigh, ridge, woodbury_solve."""
