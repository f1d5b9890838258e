"""``python -m seng.train --nproc N`` and ``torchrun -m seng.train``: 2 gloo processes on the
CPU, launched by the tests themselves.

Oracle: one process with the same settings. With the global batch split into equal
contiguous slices, DDP (SGD) and DistributedSENG in global mode take the steps of one
process; only the order of float32 summations differs (per-rank partial sums, the
all-reduce, DistributedSENG's sqrt(n_r / N) rescaling of the gathered factors).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from helpers import assert_close
from seng.train import runner as runner_module
from seng.train import train
from seng.train.cli import main
from seng.train.models import MLP

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
# synthetic: 512 training samples (8 global batches of 64, 32 per rank), 256 test samples.
EPOCHS = 3
STEPS = 512 // 64
ARGS = ["--data", "synthetic", "--batch-size", "64", "--epochs", str(EPOCHS), "--no-progress",
        "--threads", "1", "--checkpoint-every", "1"]
KEYS = ("train_loss", "test_loss")
COUNTS = ("train_acc", "test_acc")
FAIL_ENV = "SENG_TEST_FAIL_RANK1_AFTER"
# A hung launch fails the test instead of the suite; generous, since a launch that takes
# 10 s on an idle machine took over 120 s with two other test suites running.
LIMIT_S = 600


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


def _cli(args: list[str], launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    cmd = [*(launcher or [sys.executable]), "-m", "seng.train", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=LIMIT_S,
                          env=_env())


def _logs(out: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))}


def _assert_same_run(actual: dict, desired: dict) -> None:
    """Per epoch: losses to float32 summation-order rounding, accuracies exactly.

    Each step's gradient agrees to a few eps relative (sums of 32 + 32 terms against 64,
    then one more addition); the weights then drift apart by at most about that much per
    step, roughly linearly in the steps taken for a training run that is not blowing up (we
    measured about 1 eps * |loss| after 24 steps). Tolerance: 4 eps per step taken, times
    |loss|. An accuracy changes only if a prediction's top-2 logit margin is below that
    drift (~1e-6), so the counts must agree exactly; one sample more or less in a batch, or
    local instead of global curvature, moves the loss by 1e-3 or more.
    """
    assert len(actual["epochs"]) == len(desired["epochs"]) == EPOCHS
    for a, d in zip(actual["epochs"], desired["epochs"], strict=True):
        for k in KEYS:
            assert_close(torch.tensor(a[k]), torch.tensor(d[k]), factor=4 * STEPS * a["epoch"],
                         dtype=torch.float32, scale=abs(d[k]))
        assert [a[k] for k in COUNTS] == [d[k] for k in COUNTS], (a, d)


@pytest.fixture(scope="module")
def two_procs(tmp_path_factory) -> Path:
    """``python -m seng.train --nproc 2`` with SENG (global) and SGD; its output folder."""
    out = tmp_path_factory.mktemp("nproc2")
    proc = _cli([*ARGS, "--optimizers", "seng,sgd", "--nproc", "2", "--out", str(out)])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("Best learning rate") == 1, proc.stdout  # one table, by rank 0
    return out


def test_two_processes_take_the_steps_of_one(two_procs, tmp_path):
    """SENG global mode and DDP-SGD on 2 ranks against one process: the same per-epoch
    training/test losses (to rounding) and accuracies (exactly); every file written once."""
    one = tmp_path / "one"
    assert main([*ARGS, "--optimizers", "seng,sgd", "--nproc", "1", "--out", str(one)]) == 0
    logs1, logs2 = _logs(one), _logs(two_procs)
    assert sorted(logs2) == ["seng_lr0.05_seed0", "sgd_lr0.05_seed0"] == sorted(logs1)
    for name, log in logs2.items():
        assert log["status"] == "complete"
        assert [r["nproc"] for r in log["epochs"]] == [2] * EPOCHS
        _assert_same_run(log, logs1[name])
    files = sorted(str(p.relative_to(two_procs)) for p in two_procs.rglob("*"))
    assert files == ["checkpoints", "checkpoints/seng_lr0.05_seed0.pt",
                     "checkpoints/sgd_lr0.05_seed0.pt", "comparison.png", "results.json",
                     "results.md", "runs", "runs/seng_lr0.05_seed0.json",
                     "runs/sgd_lr0.05_seed0.json"]
    assert json.loads((two_procs / "results.json").read_text())["nproc"] == 2
    ckpt = torch.load(two_procs / "checkpoints" / "seng_lr0.05_seed0.pt", weights_only=True)
    assert ckpt["optimizer"]["seng"]["world_size"] == 2
    assert ckpt["optimizer"]["seng"]["counters"]["skipped_steps"] == 0


def test_sharded_global_mode_takes_the_steps_of_one_process(tmp_path):
    """--dist-mode global-sharded (CountSketch Grams, factors kept on their rank) against
    one process with the same sketch: the same run, to the tolerance above."""
    sketch = ["--optimizers", "seng", "--sketch", "countsketch", "--sketch-size", "256"]
    two, one = tmp_path / "two", tmp_path / "one"
    proc = _cli([*ARGS, *sketch, "--nproc", "2", "--dist-mode", "global-sharded",
                 "--out", str(two)])
    assert proc.returncode == 0, proc.stderr
    assert main([*ARGS, *sketch, "--nproc", "1", "--out", str(one)]) == 0
    (name, log), = _logs(two).items()
    assert log["settings"]["seng"]["dist_mode"] == "global-sharded"
    ckpt = torch.load(two / "checkpoints" / f"{name}.pt", weights_only=True)
    assert ckpt["optimizer"]["seng"]["factors"] == "sharded"
    _assert_same_run(log, _logs(one)[name])


def test_torchrun_local_mode_trains_and_differs_from_global(two_procs, tmp_path):
    """``torchrun -m seng.train --dist-mode local``: no new processes are spawned (the job's
    2 ranks run the study), SENG trains, and its per-rank curvature gives another run than
    the global one (no equality with one process is expected in local mode)."""
    out = tmp_path / "local"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc-per-node", "2"]
    proc = _cli([*ARGS, "--optimizers", "seng", "--dist-mode", "local", "--out", str(out)],
                launcher=torchrun)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("Best learning rate") == 1, proc.stdout
    (local,) = _logs(out).values()
    glob = _logs(two_procs)["seng_lr0.05_seed0"]
    assert local["settings"]["seng"]["dist_mode"] == "local"
    assert [r["nproc"] for r in local["epochs"]] == [2] * EPOCHS
    losses = [r["train_loss"] for r in local["epochs"]]
    assert losses == sorted(losses, reverse=True), losses  # it trains...
    # ...past chance (0.25 on 4 classes; an untrained model is within 0.03 of it at 1 std)
    assert local["epochs"][-1]["test_acc"] > 0.5
    # and it is another run: the loss gap to global mode exceeds _assert_same_run's
    # rounding tolerance at epoch 1 (measured: ~75 times over)
    gap = abs(losses[0] - glob["epochs"][0]["train_loss"])
    assert gap > 4 * STEPS * torch.finfo(torch.float32).eps * losses[0]


# -- a failing rank, and a 2-rank checkpoint resumed on 1 ------------------------------------
class _FailingMLP(MLP):
    """The built-in MLP (same layers, same initialization); on rank 1 of a process group,
    when ``FAIL_ENV`` is set, its forward raises after that many training steps."""

    steps = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        limit = os.environ.get(FAIL_ENV)
        if limit and self.training and dist.is_initialized() and dist.get_rank() == 1:
            self.steps += 1
            if self.steps > int(limit):
                raise RuntimeError("injected failure on rank 1")
        return super().forward(x)


def mlp() -> MLP:
    """Named ``mlp`` on purpose: the runs' settings then match the CLI's ``--model mlp``
    runs, so an uninterrupted ``python -m seng.train`` run is the reference."""
    return _FailingMLP(64, 4)


def test_rank_failure_exits_and_its_checkpoint_resumes_on_one_process(two_procs, tmp_path):
    """Rank 1 raises in epoch 3 of the first run (SENG): the command exits non-zero with
    rank 1's error, without hanging and without results. The epoch-2 checkpoint, written by
    2 ranks, resumes in one process: the study completes (SENG continues, SGD runs whole) and
    equals the uninterrupted 2-process run."""
    out = tmp_path / "out"
    script = (f"import sys; sys.path.insert(0, {str(TESTS)!r})\n"
              "from test_train_distributed import mlp\n"
              "from seng.train import train\n"
              f"train(mlp, 'synthetic', optimizers=['seng', 'sgd'], batch_size=64, "
              f"epochs={EPOCHS}, checkpoint_every=1, progress=False, threads=1, nproc=2, "
              f"out={str(out)!r})\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=LIMIT_S, env=_env(**{FAIL_ENV: str(2 * STEPS)}))
    assert proc.returncode != 0
    assert "rank 1 of 2 failed" in proc.stderr and "injected failure on rank 1" in proc.stderr
    assert not any((out / f).exists() for f in ("results.md", "results.json", "comparison.png"))
    ckpt = torch.load(out / "checkpoints" / "seng_lr0.05_seed0.pt", weights_only=True)
    assert ckpt["state"]["epoch"] == 2 and ckpt["optimizer"]["seng"]["world_size"] == 2
    # rank 0 records its own collective error, or the launcher the rank-1 failure
    assert json.loads((out / "runs" / "seng_lr0.05_seed0.json").read_text())["status"] == "failed"

    result = train(mlp, "synthetic", optimizers=["seng", "sgd"], batch_size=64, epochs=EPOCHS,
                   checkpoint_every=1, progress=False, threads=1, nproc=1, resume=True,
                   out=out)
    assert (out / "results.md").exists()
    reference = _logs(two_procs)
    for log in result.logs:
        assert log["status"] == "complete"
        _assert_same_run(log, reference[log["run"]])
    seng, sgd = (log["epochs"] for log in result.logs)
    assert [r["nproc"] for r in seng] == [2, 2, 1] and [r["nproc"] for r in sgd] == [1, 1, 1]


class _Crash(Exception):
    pass


def test_one_process_checkpoint_resumes_on_two(two_procs, tmp_path, monkeypatch):
    """The other way: one process stops after its epoch-2 checkpoint (SENG, the study's
    first run); ``--nproc 2 --resume`` continues it and runs SGD, equal to the uninterrupted
    2-process run."""
    real = runner_module._save_checkpoint

    def save_then_crash(path, settings, model, opt, loader, state, *rest):
        real(path, settings, model, opt, loader, state, *rest)
        if state["epoch"] == 2:
            raise _Crash

    monkeypatch.setattr(runner_module, "_save_checkpoint", save_then_crash)
    out = tmp_path / "out"
    with pytest.raises(_Crash):
        main([*ARGS, "--optimizers", "seng,sgd", "--out", str(out)])
    monkeypatch.undo()
    proc = _cli([*ARGS, "--optimizers", "seng,sgd", "--nproc", "2", "--resume",
                 "--out", str(out)])
    assert proc.returncode == 0, proc.stderr
    logs, reference = _logs(out), _logs(two_procs)
    for name, log in logs.items():
        assert log["status"] == "complete"
        _assert_same_run(log, reference[name])
    assert [r["nproc"] for r in logs["seng_lr0.05_seed0"]["epochs"]] == [1, 1, 2]


# -- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("args", "words"), [
    (["--nproc", "0"], ["nproc", "0", ">= 1"]),
    (["--nproc", "2", "--batch-size", "33"], ["batch_size", "33", "nproc 2", "multiple of 2"]),
    (["--nproc", "2", "--curvature-batch", "5"], ["curvature_batch", "5", "multiple of 2"]),
    (["--nproc", "2", "--curvature-memory", "2"], ["curvature_memory", "2", "nproc 2",
                                                   "give 1"]),
    (["--nproc", "2", "--dist-mode", "global-sharded"], ["dist_mode", "global-sharded",
                                                         "sketch family"]),
    (["--nproc", "2", "--device", "cuda"], ["nproc", "2", "1 CUDA device"]),
    (["--nproc", "2", "--device", "cuda:0"], ["device", "'cuda:0'", "give 'cuda'"]),
])
def test_bad_arguments_clear_error_nothing_written(tmp_path, capsys, monkeypatch, args, words):
    """Refused before any process is spawned: exit status 2, the message names the argument
    and the value, no output folder. CUDA is faked as one visible device."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    out = tmp_path / "out"
    assert main([*ARGS, *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    for w in words:
        assert w in err, (w, err)
    assert not out.exists()


def test_nproc_must_match_torchrun(tmp_path, capsys, monkeypatch):
    """Under torchrun (WORLD_SIZE in the environment) the job's size is the process count:
    a different --nproc is refused rather than spawning more processes."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert main([*ARGS, "--nproc", "3", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "nproc: 3" in err and "job of 2" in err
    assert not (tmp_path / "out").exists()


def test_unpicklable_model_refused_before_spawning():
    with pytest.raises(TypeError, match="picklable"):
        train(lambda: MLP(64, 4), "synthetic", optimizers=["sgd"], epochs=1, progress=False,
              nproc=2)


def _teardown_rank(rank: int, tmp: str) -> None:
    """A DDP step, then seng.train's teardown: is the process group object gone?"""
    import gc
    import weakref

    from seng.train import parallel

    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank,
                            world_size=2)
    group = weakref.ref(dist.group.WORLD)
    torch.manual_seed(0)
    net = torch.nn.parallel.DistributedDataParallel(MLP(8, 2))
    net(torch.randn(4, 1, 8)).sum().backward()
    del net
    parallel.teardown()
    gc.collect()
    (Path(tmp) / f"rank{rank}.txt").write_text("gone" if group() is None else "alive")


def test_teardown_leaves_no_process_group_to_interpreter_shutdown(tmp_path):
    """After a DDP run, ``teardown`` destroys the group object itself, so no gloo connection
    or thread is left for interpreter shutdown to end in each rank's own time (where the
    issue's SIGABRT at exit was seen). Without seng.train.parallel's early import of
    ``torch.distributed.nn.functional``, DDP's first construction imports it and its
    ``group=group.WORLD`` defaults keep the group alive (measured: 'alive' on both ranks)."""
    import torch.multiprocessing as mp

    mp.start_processes(_teardown_rank, args=(str(tmp_path),), nprocs=2, join=True,
                       start_method="spawn")
    assert [(tmp_path / f"rank{r}.txt").read_text() for r in range(2)] == ["gone", "gone"]


def test_launcher_reports_the_rank_that_failed_first(tmp_path):
    """The race the loaded machine showed: rank 1 raises, its closed connections make rank 0
    fail too, and the launcher may see rank 0 exit first. The error files the workers write
    name rank 1 all the same."""
    from seng.train.parallel import _first_failure

    assert _first_failure(tmp_path, 2) is None  # killed by a signal: no file
    (tmp_path / "error1.txt").write_text("100.0\nRuntimeError: injected failure on rank 1\n")
    (tmp_path / "error0.txt").write_text("100.5\nRuntimeError: Connection closed by peer\n")
    message = _first_failure(tmp_path, 2)
    assert message.startswith("rank 1 of 2 failed first (then rank 0 failed too):")
    assert "injected failure on rank 1" in message and "Connection closed" not in message
