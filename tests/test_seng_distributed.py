"""seng.distributed on gloo with 2 CPU processes, spawned by the tests themselves.

Oracles: one process on the concatenated batch (global mode), the dense per-worker
(block-Jacobi) formula from torch.func per-sample gradients (local mode).
"""

from __future__ import annotations

import datetime
import gc
import os
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from seng_oracle import block_rows, dense_direction, full_grad, per_sample_grads
from torch import nn

from helpers import assert_close
from seng import SENG, SENGPreconditioner
from seng.distributed import DistributedSENG, DistributedSENGPreconditioner

WORLD = 2
N_LOCAL = 6
TIMEOUT_S = 60


class Net(nn.Module):
    def __init__(self, conv: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3) if conv else None
        self.fc1 = nn.Linear(27 if conv else 5, 7)
        self.fc2 = nn.Linear(7, 3)

    def forward(self, x):
        if self.conv is not None:
            x = self.conv(x).flatten(1)
        return self.fc2(torch.tanh(self.fc1(x)))


def make_model(conv: bool) -> nn.Module:
    torch.manual_seed(0)
    return Net(conv).double()


def batches(steps: int, conv: bool):
    """Global batches (x, y) of WORLD * N_LOCAL samples; rank r takes rows r*N..(r+1)*N."""
    g = torch.Generator().manual_seed(1)
    shape = (2, 5, 5) if conv else (5,)
    return [(torch.randn(WORLD * N_LOCAL, *shape, generator=g, dtype=torch.float64),
             torch.randint(0, 3, (WORLD * N_LOCAL,), generator=g)) for _ in range(steps)]


def shard(batch, rank):
    x, y = batch
    return x[rank * N_LOCAL:(rank + 1) * N_LOCAL], y[rank * N_LOCAL:(rank + 1) * N_LOCAL]


def loss_of(model, x, y, reduction="mean"):
    return nn.functional.cross_entropy(model(x), y, reduction=reduction)


def run_steps(model, pre, opt, data, reduction, corrupt=None, micro=1):
    """SGD steps with the preconditioner: ``[(applied, grads, params)]`` per step, each
    batch's gradient accumulated over ``micro`` micro-batches. ``corrupt(k, model)`` may
    edit the gradients before ``pre.step()``."""
    record = []
    for k, (x, y) in enumerate(data):
        opt.zero_grad()
        for xm, ym in zip(x.chunk(micro), y.chunk(micro), strict=True):
            loss = loss_of(model, xm, ym, reduction)
            (loss / micro if reduction == "mean" else loss).backward()
        if corrupt is not None:
            corrupt(k, model)
        applied = pre.step()
        grads = {n: None if p.grad is None else p.grad.clone()
                 for n, p in model.named_parameters()}
        if applied is not False:
            opt.step()
        record.append((applied, grads,
                       {n: p.detach().clone() for n, p in model.named_parameters()}))
    return record


# -- workers ---------------------------------------------------------------------------------
# One pair of processes runs every scenario (process start-up and torch import dominate).
SCENARIOS = {
    "global-mlp-exact": dict(mode="global", conv=False, steps=4,
                             options={"damping": 0.5, "update_freq": 2}),
    "global-conv-exact": dict(mode="global", conv=True, steps=4,
                              options={"damping": 0.5, "update_freq": 2}),
    "global-conv-gaussian-sketch": dict(mode="global", conv=True, steps=4, options={
        "damping": 0.5, "update_freq": 1, "sketch": "gaussian", "sketch_size": 6}),
    "global-conv-countsketch-sharded": dict(mode="global", conv=True, steps=4, factors="sharded",
                                            options={"damping": 0.5, "update_freq": 2,
                                                     "sketch": "countsketch", "sketch_size": 6}),
    "global-conv-accumulation": dict(mode="global", conv=True, steps=3, micro=2, options={
        "damping": 0.5, "update_freq": 2, "accumulation_steps": 2}),
    "global-conv-countsketch-auto": dict(mode="global", conv=True, steps=4, factors="auto",
                                         options={"damping": 0.5, "update_freq": 2,
                                                  "sketch": "countsketch", "sketch_size": 6}),
    "global-mlp-sum-loss": dict(mode="global", conv=False, steps=4, options={
        "damping": 0.5, "update_freq": 1, "loss_reduction": "sum"}),
    "local-mlp": dict(mode="local", conv=False, steps=2,
                      options={"damping": 0.5, "update_freq": 1}),
    "nan-global": dict(mode="global", conv=False, steps=3, nan_step=1,
                       options={"damping": 0.5, "update_freq": 2}),
    "nan-local": dict(mode="local", conv=False, steps=3, nan_step=1,
                      options={"damping": 0.5, "update_freq": 2}),
    "checkpoint": dict(mode="global", conv=False, steps=5, save_after=3,
                       options={"damping": 0.5, "update_freq": 2}),
    "checkpoint-sharded": dict(mode="global", conv=False, steps=5, save_after=3,
                               factors="sharded", options={
                                   "damping": 0.5, "update_freq": 2, "sketch": "gaussian",
                                   "sketch_size": 8}),
}


def _worker(rank, init, out_dir):
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=TIMEOUT_S))
    try:
        torch.set_num_threads(1)
        results = {name: _train_rank(rank, os.path.join(out_dir, name), **config)
                   for name, config in SCENARIOS.items()}
        results["optimizer"] = _optimizer_rank(rank)
        results["timeout"] = _timeout_rank(rank)
        dist.barrier()
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        # The preconditioners (in reference cycles) hold the groups: free them first, so
        # that destroy_process_group ends the groups here and not at interpreter shutdown.
        gc.collect()
        dist.destroy_process_group()


def _train_rank(rank, ckpt, *, mode, conv, steps, options, nan_step=None, save_after=None,
                factors="replicated", micro=1):
    model = make_model(conv)
    pre = DistributedSENGPreconditioner(model, mode=mode, factors=factors, **options)
    comm = []
    step = pre.step

    def logged_step():
        applied = step()
        comm.append(list(pre.comm_log))
        return applied

    pre.step = logged_step
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    data = [shard(b, rank) for b in batches(steps, conv)]
    reduction = options.get("loss_reduction", "mean")
    record = []
    if save_after is not None:
        record = run_steps(model, pre, opt, data[:save_after], reduction)
        if rank == 0:
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(),
                        "pre": pre.state_dict()}, ckpt + ".pt")
        data = data[save_after:]

    def corrupt(k, model):
        if k == nan_step and rank == 1:
            model.fc1.weight.grad[0, 0] = float("nan")

    record += run_steps(model, pre, opt, data, reduction, corrupt, micro)
    return {"record": record, "counters": dict(pre.counters), "comm": comm,
            "stores": [info["last"]["store"] for info in pre.layer_info()]}


OPTIMIZER = dict(lr=0.1, momentum=0.9, weight_decay=0.01, damping=0.5, update_freq=2)
OPTIMIZER_STEPS, OPTIMIZER_NAN_STEP = 4, 2


def _optimizer_steps(model, opt, data, corrupt=None):
    """DistributedSENG/SENG steps: the parameters after each step."""
    params = []
    for k, (x, y) in enumerate(data):
        opt.zero_grad()
        loss_of(model, x, y).backward()
        if corrupt is not None:
            corrupt(k, model)
        opt.step()
        params.append({n: p.detach().clone() for n, p in model.named_parameters()})
    return params


def _optimizer_rank(rank):
    """DistributedSENG from different initial weights (rank 1 perturbed: the broadcast at
    construction must undo it), with a NaN on rank 1 at one step."""
    model = make_model(False)
    if rank == 1:
        with torch.no_grad():
            model.fc1.weight.add_(1.0)
    opt = DistributedSENG(model, **OPTIMIZER)

    def corrupt(k, model):
        if k == OPTIMIZER_NAN_STEP and rank == 1:
            model.fc2.bias.grad[0] = float("inf")

    data = [shard(b, rank) for b in batches(OPTIMIZER_STEPS, False)]
    return {"params": _optimizer_steps(model, opt, data, corrupt),
            "counters": dict(opt.preconditioner.counters)}


def _timeout_rank(rank):
    """Rank 1 never reaches the step's all-reduce: rank 0 must raise, not hang."""
    group = dist.new_group(timeout=datetime.timedelta(seconds=2))
    model = make_model(False)
    pre = DistributedSENGPreconditioner(model, mode="local", process_group=group)
    loss_of(model, *shard(batches(1, False)[0], rank)).backward()
    if rank == 1:
        return None
    try:
        pre.step()
    except RuntimeError as e:
        return str(e)
    return "no error"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``{scenario: [result of rank 0, result of rank 1]}`` from WORLD gloo processes;
    fails (never hangs) past the deadline."""
    out = tmp_path_factory.mktemp("distributed")
    init = f"file://{out / 'rendezvous'}"
    ctx = mp.start_processes(_worker, args=(init, str(out)), nprocs=WORLD, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + 2 * TIMEOUT_S
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"the {WORLD} processes hung for {2 * TIMEOUT_S} s")
    per_rank = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    results = {name: [r[name] for r in per_rank]
               for name in [*SCENARIOS, "optimizer", "timeout"]}
    for name in ("checkpoint", "checkpoint-sharded"):
        results[name + "-file"] = torch.load(out / f"{name}.pt", weights_only=False)
    return results


def _one_process(conv, options, data):
    """One process on the concatenated batches, in one pass each."""
    model = make_model(conv)
    options = {k: v for k, v in options.items() if k != "accumulation_steps"}
    pre = SENGPreconditioner(model, **options)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return run_steps(model, pre, opt, data, options.get("loss_reduction", "mean"))


def _check_same(record, want):
    # Float64; Grams sum a few hundred products, N = 12 samples, cond(damped Gram) < 1e3,
    # errors compound over 4 steps: 1e5 eps of the largest entry is far below what a
    # modelling error (a wrong 1/sqrt(N), reduction factor or sample set) would change.
    for (applied, grads, params), (_, g_ref, p_ref) in zip(record, want, strict=True):
        assert applied is True
        for n in g_ref:
            assert_close(grads[n], g_ref[n], factor=1e5)
            assert_close(params[n], p_ref[n], factor=1e5)


# -- tests -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", [n for n in SCENARIOS if n.startswith("global-")])
def test_global_equals_one_process_on_concatenated_batch(runs, name):
    config = SCENARIOS[name]
    want = _one_process(config["conv"], config["options"],
                        batches(config["steps"], config["conv"]))
    for res in runs[name]:
        _check_same(res["record"], want)
        assert res["counters"]["curvature_updates"] > 0


def test_sharded_factors_gather_only_sketches(runs):
    """Sharded: a curvature step gathers each sketched layer's sketch (at most n s floats
    per rank); every step adds one all-gather of U_r^T g (n floats per layer) and one
    all-reduce of U alpha (the layers' gradient size). Replicated: a curvature step
    gathers the factors as well."""
    config = SCENARIOS["global-conv-countsketch-sharded"]
    s, n = config["options"]["sketch_size"], N_LOCAL
    model = make_model(True)
    grad_bytes = sum(p.numel() * 8 for p in model.parameters())  # float64, 3 layers
    for res in runs["global-conv-countsketch-sharded"]:
        for k, log in enumerate(res["comm"]):
            reduces = [b for op, b in log if op == "all_reduce"]
            assert len(reduces) == 2 and reduces[0] > grad_bytes and reduces[1] == grad_bytes
            gathers = [b for op, b in log if op == "all_gather"]
            assert gathers[-1] == 3 * n * 8  # U_r^T g of the 3 layers, after any sketch
            if k % 2 == 0:  # curvature steps: one sketch per layer
                assert len(gathers) == 4 and all(b <= n * s * 8 for b in gathers[:3])
            else:
                assert len(gathers) == 1
    for res in runs["global-conv-gaussian-sketch"]:  # replicated: the factors as well
        assert max(b for op, b in res["comm"][0] if op == "all_gather") > n * 6 * 8


def test_auto_factors_shard_where_the_ring_model_says_fewer_bytes(runs):
    """factors="auto", n = 6 per rank, W = 2, update_freq F = 2, float32-byte model:
    conv (compact: 57 dense entries, p = 57): sharded 2 (228 + 24) = 504 < replicated
    6 * 4 * 57 = 1368 bytes; fc1 (compact: 35 factor entries, p = 196): 2 (784 + 24) = 1616
    > 840, replicated; fc2 (11 entries, p = 24): 2 (96 + 24) = 240 < 264, sharded."""
    for res in runs["global-conv-countsketch-auto"]:
        assert res["stores"] == ["sharded-dense", "kronecker", "sharded-kronecker"]


def test_local_equals_dense_block_jacobi(runs):
    config = SCENARIOS["local-mlp"]
    results, damping = runs["local-mlp"], config["options"]["damping"]
    model = make_model(False)
    loss = lambda out, y: nn.functional.cross_entropy(out, y)  # noqa: E731
    blocks = [["fc1.weight", "fc1.bias"], ["fc2.weight", "fc2.bias"]]
    for k, batch in enumerate(batches(config["steps"], False)):
        if k > 0:  # the weights the ranks reached after step k - 1
            model.load_state_dict(results[0]["record"][k - 1][2])
        want = {}
        for names in blocks:
            d = 0
            for r in range(WORLD):
                ps = per_sample_grads(model, loss, *shard(batch, r))
                g = full_grad(ps, "mean")
                dr, _ = dense_direction(block_rows(ps, names),
                                        torch.cat([g[n].reshape(-1) for n in names]), damping)
                d = d + dr / WORLD
            want.update(dict(zip(names, torch.split(d, [model.get_parameter(n).numel()
                                                        for n in names]), strict=True)))
        for res in results:
            applied, grads, _ = res["record"][k]
            assert applied is True
            for n, w in want.items():
                # per-rank dense solves (cond(K) < 1e3, p = 42 products per Gram entry)
                assert_close(grads[n].reshape(-1), w, factor=1e4)


@pytest.mark.parametrize("mode", ["global", "local"])
def test_nan_on_one_rank_skips_everywhere(runs, mode):
    results = runs[f"nan-{mode}"]
    for res in results:
        (a0, _, p0), (a1, g1, p1), (a2, _, _) = res["record"]
        assert (a0, a1, a2) == (True, False, True)
        assert all(g is None for g in g1.values())
        assert all(torch.equal(p1[n], p0[n]) for n in p0)
        assert res["counters"]["skipped_steps"] == 1
    for n, p in results[0]["record"][-1][2].items():
        assert torch.equal(p, results[1]["record"][-1][2][n])
    if mode == "global":  # a skipped step leaves no trace: as if batch 1 never happened
        b = batches(3, False)
        want = _one_process(False, SCENARIOS["nan-global"]["options"], [b[0], b[2]])
        _check_same([r for r in results[0]["record"] if r[0]], want)


def test_checkpoint_from_two_ranks_resumes_on_one(runs):
    config = SCENARIOS["checkpoint"]
    ckpt, save_after = runs["checkpoint-file"], config["save_after"]
    assert ckpt["pre"]["world_size"] == WORLD
    model = make_model(False)
    model.load_state_dict(ckpt["model"])
    pre = DistributedSENGPreconditioner(model, mode="global", **config["options"])  # 1 process
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    opt.load_state_dict(ckpt["opt"])
    pre.load_state_dict(ckpt["pre"])
    # step 3 reuses the curvature gathered at step 2 (in the checkpoint), step 4 refreshes
    record = run_steps(model, pre, opt, batches(config["steps"], False)[save_after:], "mean")
    for res in runs["checkpoint"]:
        _check_same(res["record"][save_after:], record)


def test_distributed_seng_optimizer_equals_seng_on_concatenated_batch(runs):
    """Rank 1 started from other weights: the broadcast makes both rank 0's, and the
    optimizer (momentum, weight decay) follows one SENG process; the NaN step changes
    nothing, so the reference simply never sees that batch."""
    b = batches(OPTIMIZER_STEPS, False)
    model = make_model(False)
    want = _optimizer_steps(model, SENG(model, **OPTIMIZER),
                            [b[k] for k in range(OPTIMIZER_STEPS) if k != OPTIMIZER_NAN_STEP])
    want.insert(OPTIMIZER_NAN_STEP, want[OPTIMIZER_NAN_STEP - 1])
    for res in runs["optimizer"]:
        assert res["counters"]["skipped_steps"] == 1
        assert all(torch.equal(res["params"][OPTIMIZER_NAN_STEP][n],
                               res["params"][OPTIMIZER_NAN_STEP - 1][n]) for n in want[0])
        for got, ref in zip(res["params"], want, strict=True):
            for n in ref:  # float64, as _check_same
                assert_close(got[n], ref[n], factor=1e5)


def test_sharded_checkpoint_refreshes_after_loading(runs):
    """A sharded curvature holds one rank's factors: it is not saved, and the first step
    after loading (here on one process) refreshes it, as a fresh one-process run would."""
    config = SCENARIOS["checkpoint-sharded"]
    ckpt, save_after = runs["checkpoint-sharded-file"], config["save_after"]
    assert ckpt["pre"]["factors"] == "sharded"
    assert all(s["curvature"] is None and s["needs_refresh"]
               for s in ckpt["pre"]["layers"].values())
    model = make_model(False)
    model.load_state_dict(ckpt["model"])
    pre = DistributedSENGPreconditioner(model, mode="global", **config["options"])
    pre.load_state_dict(ckpt["pre"])
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    opt.load_state_dict(ckpt["opt"])
    before = pre.counters["curvature_updates"]
    batch = batches(config["steps"], False)[save_after]
    run_steps(model, pre, opt, [batch], "mean")
    assert pre.counters["curvature_updates"] == before + 2  # both layers, at step 3


def test_missing_rank_times_out_with_a_clear_error(runs):
    message = runs["timeout"][0]
    assert message.startswith("seng.distributed: all_reduce")
    assert "init_process_group(timeout=...)" in message and "rank 0 of 2" in message


def test_invalid_arguments():
    model = make_model(False)
    with pytest.raises(ValueError, match="mode"):
        DistributedSENGPreconditioner(model, mode="sync")
    with pytest.raises(ValueError, match="bucket_cap_mb"):
        DistributedSENGPreconditioner(model, bucket_cap_mb=0)
    with pytest.raises(ValueError, match="process_group"):
        DistributedSENGPreconditioner(model, process_group=object())
    with pytest.raises(ValueError, match="factors"):
        DistributedSENGPreconditioner(model, factors="some")
    with pytest.raises(ValueError, match="factors='auto' applies to mode='global'"):
        DistributedSENGPreconditioner(model, mode="local", factors="auto")
    with pytest.raises(TypeError, match="broadcast_parameters"):
        DistributedSENGPreconditioner(model, broadcast_parameters=1)
    with pytest.raises(ValueError, match="mode"):
        DistributedSENG(model, lr=0.1, mode="sync")
