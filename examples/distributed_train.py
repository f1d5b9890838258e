"""Data-parallel SENG on scikit-learn's digits with torch.distributed.

Launch (gloo on CPU; use --backend nccl with one GPU per process)::

    torchrun --standalone --nproc-per-node 2 examples/distributed_train.py --mode global
    torchrun --standalone --nproc-per-node 2 examples/distributed_train.py --mode local
    python examples/distributed_train.py            # one process, no process group

The model is not wrapped in DistributedDataParallel: ``pre.step()`` does the reduction.
Rank 0 writes a checkpoint that resumes on any number of processes (``--resume``).
"""

from __future__ import annotations

import argparse
import datetime
import os

import torch
import torch.distributed as dist
from sklearn.datasets import load_digits
from torch import nn

from seng.distributed import DistributedSENGPreconditioner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["global", "local"], default="global")
    parser.add_argument("--backend", default="gloo")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32, help="samples per process and step")
    parser.add_argument("--checkpoint", default="seng_distributed.pt")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()

    distributed = "WORLD_SIZE" in os.environ  # set by torchrun
    if distributed:
        # A rank that dies or stalls makes the others raise after this timeout.
        dist.init_process_group(args.backend, timeout=datetime.timedelta(minutes=2))
    rank = dist.get_rank() if distributed else 0
    world = dist.get_world_size() if distributed else 1
    device = (torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
              if args.backend == "nccl" else torch.device("cpu"))

    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X / 16.0, dtype=torch.float32, device=device)
    y = torch.tensor(y, device=device)
    torch.manual_seed(0)  # reproducible; rank 0's weights are broadcast by the preconditioner
    model = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 10)).to(device)
    pre = DistributedSENGPreconditioner(model, damping=1.0, update_freq=5, mode=args.mode)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    if args.resume:
        state = torch.load(args.checkpoint, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        pre.load_state_dict(state["pre"])

    step_size = args.batch * world
    for epoch in range(args.epochs):
        order = torch.randperm(len(X), generator=torch.Generator().manual_seed(epoch))
        for start in range(0, len(X) - step_size + 1, step_size):
            idx = order[start + rank * args.batch:start + (rank + 1) * args.batch].to(device)
            opt.zero_grad()
            nn.functional.cross_entropy(model(X[idx]), y[idx]).backward()
            if pre.step():  # False on every rank when some rank saw NaN/Inf
                opt.step()
        with torch.no_grad():
            acc = (model(X).argmax(1) == y).float().mean().item()
        if rank == 0:
            print(f"epoch {epoch}: training accuracy {acc:.3f}; counters {pre.counters}")
    if rank == 0:
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(),
                    "pre": pre.state_dict()}, args.checkpoint)
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
