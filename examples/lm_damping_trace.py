"""Levenberg-Marquardt damping on SENG: the reduction ratio on the step's batch against the
loss on the whole training set.

Trains the optimizer benchmark's MNIST-1D MLP (``seng.bench``, needs ``.[bench]``) with
``SENG(adaptive_damping=True)``, batch 128, and prints per epoch the training loss, the
damping and the first reduction ratios ``rho`` of the epoch (``-inf``: the quadratic model
predicted no decrease for the update, momentum included)::

    python examples/lm_damping_trace.py                         # curvature every step
    python examples/lm_damping_trace.py --update-freq 10 --lr 0.1

With the curvature of every batch, ``rho`` stays near 1 on the batch that was stepped on, so
the damping keeps falling, while the loss on the training set rises: the damped natural
gradient of one batch of 128 in 15k parameters fits that batch and generalizes poorly to the
others, which the ratio, measured on the same batch, cannot see.
"""

from __future__ import annotations

import argparse

import torch

from seng import SENG
from seng.bench.problems import PROBLEMS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--update-freq", type=int, default=1)
    parser.add_argument("--lr", type=float, default=0.0316)
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    problem = PROBLEMS["mnist1d-mlp"]
    data = problem.load()
    torch.manual_seed(0)
    model = problem.build()
    opt = SENG(model, lr=args.lr, update_freq=args.update_freq, adaptive_damping=True)
    order = torch.Generator().manual_seed(0)
    n, batch = data.x_train.shape[0], 128
    for epoch in range(args.epochs):
        perm = torch.randperm(n, generator=order)
        rhos = []
        for start in range(0, n - batch + 1, batch):
            idx = perm[start:start + batch]
            x, y = data.x_train[idx], data.y_train[idx]

            def closure(x=x, y=y):
                opt.zero_grad()
                loss = problem.loss(model(x), y)
                loss.backward()
                return loss

            adapts = opt.preconditioner.step_count % opt.adapt_interval == 0
            opt.step(closure)
            if adapts:
                rhos.append(opt.last_reduction_ratio)
        with torch.no_grad():
            loss = problem.loss(model(data.x_train), data.y_train).item()
        print(f"epoch {epoch + 1}: training loss {loss:.3f}, damping "
              f"{opt.preconditioner.damping:.3g}, rho {' '.join(f'{r:.2f}' for r in rhos[:6])}")


if __name__ == "__main__":
    main()
