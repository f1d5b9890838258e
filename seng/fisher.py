r"""The true Fisher by Monte Carlo: targets sampled from the model's predictive distribution.

The empirical Fisher uses the gradients of the losses of the data's own targets; the Fisher
of the model's likelihood :math:`p(y \mid f(x))` takes the expectation over
:math:`y \sim p(y \mid f(x))` instead (Kunstner, Hennig and Balles 2019 explain when the
empirical one fails). One sample per input gives an unbiased estimate: the per-sample
gradients of :math:`-\log p(\hat y_i \mid f(x_i))` with :math:`\hat y_i` drawn from the model,
as K-FAC does (Martens and Grosse 2015, section 5). For an exponential family the expectation
is the generalized Gauss-Newton matrix of the loss.

Two likelihoods, each matching a standard loss so that the damping keeps its units:

- ``"categorical"``: :func:`torch.nn.functional.cross_entropy` on logits (classes in
  dimension 1); :math:`\hat y \sim \mathrm{softmax}(f)`.
- ``"gaussian"``: the squared error averaged over the features of each sample (what
  :func:`torch.nn.functional.mse_loss` gives per sample); :math:`\hat y = f + \sigma
  \varepsilon` with :math:`\varepsilon \sim N(0, I)` and :math:`\sigma^2 = D/2` for
  :math:`D` features, the variance under which :math:`-\log p` is that loss up to a constant.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LIKELIHOODS = ("categorical", "gaussian")


def sample_targets(outputs: torch.Tensor, likelihood: str,
                   generator: torch.Generator) -> torch.Tensor:
    """Targets drawn from the model's predictive distribution at ``outputs`` (detached)."""
    f = outputs.detach()
    if likelihood == "categorical":
        if f.ndim < 2:
            raise ValueError(f"categorical outputs must have the classes in dimension 1, got "
                             f"shape {tuple(f.shape)}")
        probs = torch.softmax(f.movedim(1, -1).reshape(-1, f.shape[1]).float(), dim=1)
        draws = torch.multinomial(probs.cpu(), 1, generator=generator).reshape(-1)
        return draws.reshape(f.movedim(1, -1).shape[:-1]).to(f.device)
    if likelihood == "gaussian":
        features = f[0].numel() if f.ndim > 1 else 1
        noise = torch.randn(f.shape, generator=generator, dtype=torch.float64)
        return f + (math.sqrt(features / 2) * noise).to(f.device, f.dtype)
    raise ValueError(f"Invalid likelihood value: {likelihood!r} (valid: "
                     f"{', '.join(repr(k) for k in LIKELIHOODS)})")


def sampled_loss(outputs: torch.Tensor, targets: torch.Tensor, likelihood: str,
                 reduction: str) -> torch.Tensor:
    """:math:`-\\log p(\\hat y \\mid f)` up to a constant, reduced over the samples as the
    training loss is (``"mean"`` or ``"sum"``)."""
    if likelihood == "categorical":
        per_sample = F.cross_entropy(outputs, targets, reduction="none")
        per_sample = per_sample.reshape(outputs.shape[0], -1).mean(1) if per_sample.ndim > 1 \
            else per_sample
    else:
        per_sample = (outputs - targets).pow(2).reshape(outputs.shape[0], -1).mean(1)
    return per_sample.mean() if reduction == "mean" else per_sample.sum()
