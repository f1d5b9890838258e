"""The small damped system ``(U^T U + damping I) alpha = U^T g`` of the Woodbury identity."""

from __future__ import annotations

import torch


def damped_cholesky(gram: torch.Tensor, damping: float) -> tuple[torch.Tensor, bool]:
    """Lower Cholesky factor of ``gram + damping I`` and whether it needed the fallback.

    ``gram`` is positive semidefinite, so ``gram + damping I`` is positive definite for
    ``damping > 0``; rounding can still break the factorization when ``damping`` is tiny
    against ``||gram||``. The fallback then shifts the spectrum up to ``damping``: it factors
    ``V diag(max(w, damping)) V^T`` from an eigendecomposition (the caller reports it).
    """
    K = gram + damping * torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    L, info = torch.linalg.cholesky_ex(K)
    if int(info) == 0:
        return L, False
    w, V = torch.linalg.eigh(K)
    K = (V * w.clamp(min=damping)) @ V.T
    L, info = torch.linalg.cholesky_ex((K + K.T) / 2)
    if int(info) != 0:
        raise FloatingPointError("the damped Gram matrix could not be factored")
    return L, True


def cholesky_solve(L: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``(L L^T)^{-1} v`` for a vector ``v``."""
    return torch.cholesky_solve(v.reshape(-1, 1), L).reshape(-1)
