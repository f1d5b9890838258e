"""seng: the SENG (sketchy empirical natural gradient) preconditioner and optimizer for
standard ``torch.nn`` models, built on ``sketchlinalg``.

Reference: M. Yang, D. Xu, Z. Wen, M. Chen, P. Xu, "Sketchy empirical natural gradient
methods for deep learning", J. Sci. Comput. 92 (2022); arXiv:2006.05924.
"""

from .optimizer import SENG
from .preconditioner import SENGPreconditioner

__all__ = ["SENG", "SENGPreconditioner"]
