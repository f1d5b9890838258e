"""``seng.train``: CLI smoke runs, bit-identical resume, clear errors that leave no
complete-looking results, the local data readers, schedules and the study summary."""

from __future__ import annotations

import gzip
import json
import math
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from helpers import assert_close
from seng.train import Schedule, build_model, load_dataset, train
from seng.train import runner as runner_module
from seng.train.cli import main
from seng.train.data import read_cifar_batch, read_idx
from seng.train.report import best_per_optimizer, summarize, to_target

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--data", "digits", "--subset", "96", "--batch-size", "32", "--no-progress",
         "--threads", "1"]


def _complete_logs(out: Path) -> list[dict]:
    logs = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))]
    return [log for log in logs if log["status"] == "complete"]


def _looks_complete(out: Path) -> bool:
    """Anything a reader could take for finished results."""
    if not out.exists():
        return False
    results = [out / f for f in ("results.md", "results.json", "comparison.png")]
    runs_done = (out / "runs").exists() and bool(_complete_logs(out))
    return any(p.exists() for p in results) or runs_done


# -- CLI smoke --------------------------------------------------------------------------------
def test_cli_module_smoke_every_optimizer(tmp_path):
    """``python -m seng.train``: one epoch on a subset with each optimizer writes a complete
    log per run, the table and the plot; the logged test accuracy is that of the saved
    final model (recomputed here)."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "seng.train", *SMALL, "--epochs", "1", "--model", "cnn",
           "--optimizers", "seng,sgd,adam,adamw", "--checkpoint-every", "1", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    logs = _complete_logs(out)
    assert sorted(log["optimizer"] for log in logs) == ["adam", "adamw", "seng", "sgd"]
    data = load_dataset("digits").subset(96)
    for log in logs:
        (row,) = log["epochs"]
        assert set(row) >= {"train_loss", "train_acc", "test_acc", "time", "step_time"}
        assert math.isfinite(row["train_loss"]) and row["step_time"] > 0
        ckpt = torch.load(out / "checkpoints" / f"{log['run']}.pt", weights_only=True)
        model = build_model("cnn", data.input_shape, data.num_classes)
        model.load_state_dict(ckpt["model"])
        model.eval()
        with torch.no_grad():
            acc = (model(data.x_test).argmax(1) == data.y_test).double().mean().item()
        assert acc == pytest.approx(row["test_acc"], abs=0.5 / len(data.y_test))
    table = (out / "results.md").read_text()
    for opt in ("seng", "sgd", "adam", "adamw"):
        assert f"| {opt} |" in table
    assert (out / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "results.json").read_text())["best"]


def test_cli_lr_grid_and_seeds(tmp_path, capsys):
    """Per-optimizer grids and several seeds give one run per (lr, seed)."""
    out = tmp_path / "out"
    rc = main([*SMALL, "--epochs", "1", "--optimizers", "sgd,adam", "--lr", "sgd=0.05,0.1",
               "--lr", "adam=0.003", "--seeds", "0,1", "--out", str(out)])
    assert rc == 0
    runs = sorted(p.stem for p in (out / "runs").glob("*.json"))
    assert runs == ["adam_lr0.003_seed0", "adam_lr0.003_seed1", "sgd_lr0.05_seed0",
                    "sgd_lr0.05_seed1", "sgd_lr0.1_seed0", "sgd_lr0.1_seed1"]
    assert "| sgd | 0.1 |" in capsys.readouterr().out


# -- bad arguments ----------------------------------------------------------------------------
@pytest.mark.parametrize(("args", "words"), [
    (["--model", "vgg"], ["model", "'vgg'", "mlp", "resnet18"]),
    (["--data", "imagenet"], ["data set", "'imagenet'", "digits", "cifar10"]),
    (["--optimizers", "sgd,lbfgs"], ["optimizer", "'lbfgs'", "seng", "adamw"]),
    (["--lr", "0"], ["learning rate", "0.0", "> 0"]),
    (["--optimizers", "sgd", "--lr", "sgd=-0.1"], ["learning rate for sgd", "-0.1", "> 0"]),
    (["--data", "mnist", "--data-dir", "{tmp}/nowhere"],
     ["mnist", "MNIST/raw/train-images-idx3-ubyte", "--download"]),
    (["--data", "cifar10"], ["--data-dir", "cifar-10-batches-py/data_batch_1"]),
    (["--damping-decay", "1.01"], ["damping_decay", "1.01", "(0, 1]"]),
    (["--damping-decay", "0"], ["damping_decay", "0.0", "(0, 1]"]),
    (["--curvature-memory", "0"], ["curvature_memory", "0", ">= 1"]),
    (["--curvature-memory", "2", "--sketch", "countsketch"],
     ["curvature_memory", "2", "exact route"]),
])
def test_bad_arguments_clear_error_no_results(tmp_path, capsys, args, words):
    out = tmp_path / "out"
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    rc = main([*SMALL, "--epochs", "1", *args, "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2
    for w in words:
        assert w in err, (w, err)
    assert not out.exists()


def test_failed_run_leaves_no_complete_looking_results(tmp_path, monkeypatch):
    """A run that raises mid-study: its log says "failed", no table/plot/summary, and the
    results of an earlier study in the same folder are removed rather than left stale."""
    out = tmp_path / "out"
    train("mlp", "synthetic", optimizers=["sgd"], epochs=1, out=out, progress=False)
    assert (out / "results.md").exists()

    real, calls = runner_module._evaluate, []

    def boom(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # warm-up, epoch 1, then epoch 2 of the run fails
            raise RuntimeError("disk on fire")
        return real(*args, **kwargs)

    monkeypatch.setattr(runner_module, "_evaluate", boom)
    with pytest.raises(RuntimeError, match="disk on fire"):
        train("mlp", "synthetic", optimizers=["sgd"], epochs=3, out=out, progress=False)
    assert not _looks_complete(out)
    log = json.loads((out / "runs" / "sgd_lr0.05_seed0.json").read_text())
    assert log["status"] == "failed" and "disk on fire" in log["error"]
    assert len(log["epochs"]) == 1


# -- resume -----------------------------------------------------------------------------------
class _Crash(Exception):
    pass


def _dropout_mlp() -> nn.Module:
    # Dropout draws from torch's global RNG: resume must restore it too.
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.2),
                         nn.Linear(32, 4))


@pytest.mark.parametrize("optimizer", ["seng", "adam"])
def test_resume_is_bit_identical(tmp_path, monkeypatch, optimizer):
    """Crash after the epoch-2 checkpoint, resume, and compare with an uninterrupted run:
    every weight, optimizer state tensor (SENG's stored curvature included) and logged
    loss/accuracy must be bitwise equal. 7 steps per epoch with curvature every 3 steps, so
    the checkpoint falls between curvature updates; augmentation and dropout exercise the
    data-loader and global RNG states; the schedule has warm-up and decay, and SENG's
    damping decays with the step counter restored from the checkpoint."""
    kw = dict(optimizers=[optimizer], epochs=4, batch_size=64, update_freq=3, augment=True,
              schedule="poly", power=2.0, warmup=1.0, weight_decay=1e-3, sketch="countsketch",
              sketch_size=64, damping_decay=0.8, checkpoint_every=1, progress=False,
              threads=1)
    torch_state = torch.get_rng_state()
    train(_dropout_mlp, "synthetic", out=tmp_path / "a", **kw)
    assert torch.equal(torch.get_rng_state(), torch_state), "the caller's RNG was changed"

    real = runner_module._save_checkpoint

    def save_then_crash(path, settings, model, opt, loader, state, *rest):
        real(path, settings, model, opt, loader, state, *rest)
        if state["epoch"] == 2:
            raise _Crash

    monkeypatch.setattr(runner_module, "_save_checkpoint", save_then_crash)
    with pytest.raises(_Crash):
        train(_dropout_mlp, "synthetic", out=tmp_path / "b", **kw)
    monkeypatch.undo()
    assert not _looks_complete(tmp_path / "b")
    result = train(_dropout_mlp, "synthetic", out=tmp_path / "b", resume=True, **kw)
    assert result.logs[0]["status"] == "complete"

    name = f"{optimizer}_lr{result.logs[0]['lr']:g}_seed0"
    a = torch.load(tmp_path / "a" / "checkpoints" / f"{name}.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoints" / f"{name}.pt", weights_only=True)
    _assert_bitwise(a["model"], b["model"])
    _assert_bitwise(a["optimizer"], b["optimizer"])
    la = json.loads((tmp_path / "a" / "runs" / f"{name}.json").read_text())["epochs"]
    lb = json.loads((tmp_path / "b" / "runs" / f"{name}.json").read_text())["epochs"]
    keys = ("lr", "train_loss", "train_acc", "test_loss", "test_acc")
    assert [[r[k] for k in keys] for r in la] == [[r[k] for k in keys] for r in lb]
    if optimizer == "seng":
        assert a["optimizer"]["seng"]["counters"]["curvature_updates"] > 0


def _assert_bitwise(a, b, where="state"):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            _assert_bitwise(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_bitwise(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_resume_refuses_other_settings(tmp_path):
    kw = dict(optimizers=["sgd"], checkpoint_every=1, progress=False)
    train("mlp", "synthetic", epochs=1, out=tmp_path, **kw)
    with pytest.raises(ValueError, match=r"different settings.*epochs"):
        train("mlp", "synthetic", epochs=2, out=tmp_path, resume=True, **kw)


# -- Python API -------------------------------------------------------------------------------
def test_train_accepts_a_module_and_a_factory():
    """An ``nn.Module`` is copied per run (every seed starts from its weights, which are not
    modified); a factory is called under each seed (different initial weights)."""
    module = _dropout_mlp()
    before = [p.detach().clone() for p in module.parameters()]
    r = train(module, "synthetic", optimizers=["sgd"], seeds=[0, 1], epochs=1, progress=False)
    assert len(r.logs) == 2 and all(log["status"] == "complete" for log in r.logs)
    assert all(torch.equal(p, q) for p, q in zip(module.parameters(), before, strict=True))
    with pytest.raises(TypeError, match="model factory returned int"):
        train(lambda: 3, "synthetic", optimizers=["sgd"], epochs=1, progress=False)


def test_models_forward_shapes():
    for name, shape in [("mlp", (1, 8, 8)), ("cnn", (1, 28, 28)), ("resnet8", (3, 32, 32)),
                        ("resnet18", (3, 32, 32))]:
        model = build_model(name, shape, 10)
        assert model(torch.zeros(2, *shape)).shape == (2, 10)
    n18 = sum(p.numel() for p in build_model("resnet18", (3, 32, 32), 10).parameters())
    assert n18 == 11_173_962  # the CIFAR ResNet-18 of He et al. with a 10-way head


# -- data readers -----------------------------------------------------------------------------
def _idx_bytes(a: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, a.ndim]) + np.asarray(a.shape, dtype=">u4").tobytes()
    return header + a.astype(np.uint8).tobytes()


@pytest.mark.parametrize(("name", "folder"), [("mnist", "MNIST"),
                                              ("fashion-mnist", "FashionMNIST")])
def test_idx_reader_round_trip(tmp_path, name, folder):
    rng = np.random.default_rng(0)
    raw = tmp_path / folder / "raw"
    raw.mkdir(parents=True)
    arrays = {}
    for split, n in (("train", 12), ("t10k", 5)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        arrays[split] = (images, labels)
        # One file gzipped, one plain: the reader takes either.
        (raw / f"{split}-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(images)))
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(_idx_bytes(labels))
    np.testing.assert_array_equal(read_idx(raw / "train-images-idx3-ubyte.gz"),
                                  arrays["train"][0])
    data = load_dataset(name, tmp_path)
    assert data.x_train.shape == (12, 1, 28, 28) and data.x_test.shape == (5, 1, 28, 28)
    np.testing.assert_array_equal(data.y_train.numpy(), arrays["train"][1])
    np.testing.assert_array_equal(data.y_test.numpy(), arrays["t10k"][1])
    # Normalization by the training split's mean and std (float32 rounding of a handful of
    # operations on values <= 255 / std ~ 2: a few ulps of 2).
    tr = arrays["train"][0].astype(np.float64)
    expect = (arrays["t10k"][0].astype(np.float64) - tr.mean()) / tr.std(ddof=1)
    assert_close(data.x_test[:, 0], expect, factor=8.0)


def test_cifar_reader_round_trip_and_refuses_code(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = {}
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        data = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, 3).tolist()
        batches[name] = (data, labels)
        with (folder / name).open("wb") as f:
            pickle.dump({b"data": data, b"labels": labels, b"batch_label": b"x"}, f)
    images, labels = read_cifar_batch(folder / "data_batch_2")
    # Row layout: 1024 red, 1024 green, 1024 blue values, each a row-major 32 x 32 image.
    data2 = batches["data_batch_2"][0]
    assert images[1, 2, 5, 7] == data2[1, 2 * 1024 + 5 * 32 + 7]
    assert labels.tolist() == batches["data_batch_2"][1]
    ds = load_dataset("cifar10", tmp_path)
    assert ds.x_train.shape == (15, 3, 32, 32) and ds.x_test.shape == (3, 3, 32, 32)
    assert ds.y_test.tolist() == batches["test_batch"][1]

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (folder / "test_batch").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        read_cifar_batch(folder / "test_batch")


def test_digits_split():
    d = load_dataset("digits")
    assert d.x_train.shape == (1437, 1, 8, 8) and d.x_test.shape == (360, 1, 8, 8)
    # Stratified: each class keeps its share (178 to 183 of 1797) of the 360 test samples.
    assert all(35 <= c <= 37 for c in torch.bincount(d.y_test).tolist())


# -- schedules and summaries ------------------------------------------------------------------
def test_schedules_match_their_formulas():
    poly = Schedule("poly", decay_epochs=70, power=6)
    assert poly.factor(10, 10.5) == pytest.approx((1 - 10.5 / 70) ** 6, rel=1e-15)
    assert poly.factor(70, 70.0) == 0.0
    cos = Schedule("cosine", decay_epochs=10)
    assert cos.factor(5, 5.0) == pytest.approx(0.5, rel=1e-15)
    assert Schedule("step", step_size=3, gamma=0.1).factor(7, 7.0) == pytest.approx(0.01)
    warm = Schedule("constant", warmup=2.0)
    assert warm.factor(0, 0.5) == 0.25 and warm.factor(3, 3.0) == 1.0
    with pytest.raises(ValueError, match=r"schedule.*'linear'"):
        Schedule("linear")


def test_damping_decay_per_step(monkeypatch):
    """SENG's damping at step k is damping * rate^((k + 1) / steps_per_epoch): synthetic has
    512 training samples, 8 steps of 64 per epoch; the progress counts the current step, as
    the learning-rate schedule's does."""
    import seng._hyper

    real, seen = seng._hyper.damping_at, []

    def record(damping, step):
        value = real(damping, step)
        seen.append((step, value))
        return value

    monkeypatch.setattr(seng._hyper, "damping_at", record)
    train("mlp", "synthetic", optimizers=["seng"], epochs=2, batch_size=64, damping=2.0,
          damping_decay=0.5, progress=False, threads=1)
    seen = seen[-16:]  # after the study's two warm-up steps (a 2-step epoch of its own)
    assert [k for k, _ in seen] == list(range(16))
    for k, value in seen:
        assert value == pytest.approx(2.0 * 0.5 ** ((k + 1) / 8), rel=1e-15), k


def test_cli_passes_damping_rule_and_curvature_memory(monkeypatch):
    """--damping-rule and --curvature-memory reach the SENG optimizer of every run."""
    import seng.train.optim

    built = []
    real = seng.train.optim.SENG

    def record(*args, **kwargs):
        opt = real(*args, **kwargs)
        built.append(opt.preconditioner)
        return opt

    monkeypatch.setattr(seng.train.optim, "SENG", record)
    assert main([*SMALL, "--epochs", "1", "--optimizers", "seng", "--update-freq", "1",
                 "--damping-rule", "spectral", "--curvature-memory", "2",
                 "--no-progress"]) == 0
    assert built and all(p.damping_rule == "spectral" and p.curvature_memory == 2
                         for p in built)
    assert all(r["last"]["pooled_batches"] == 2 for r in built[-1].layer_info())


def _log(opt, lr, seed, accs, status="complete"):
    return {"optimizer": opt, "lr": lr, "seed": seed, "status": status,
            "epochs": [{"epoch": i + 1, "test_acc": a, "time": 2.0 * (i + 1), "step_time": 0.01}
                       for i, a in enumerate(accs)]}


def test_summary_epochs_and_time_to_target():
    logs = [_log("sgd", 0.1, 0, [0.9, 0.97, 0.98]), _log("sgd", 0.1, 1, [0.95, 0.96, 0.99]),
            _log("sgd", 0.3, 0, [0.97, 0.99, 0.99]), _log("sgd", 0.3, 1, [0.5, 0.6, 0.7]),
            _log("adam", 0.01, 0, [0.8, 0.9, 0.95])]
    assert to_target(logs[0], 0.97) == (2, 4.0)
    rows = {(r["optimizer"], r["lr"]): r for r in summarize(logs, 0.97)}
    assert rows[("sgd", 0.1)]["epochs_to_target"] == (2.5, 0.5)
    assert rows[("sgd", 0.1)]["time_to_target"] == (5.0, 1.0)
    assert rows[("sgd", 0.3)]["epochs_to_target"] is None  # one seed missed it
    assert rows[("sgd", 0.3)]["reached"] == 1
    best = {r["optimizer"]: r["lr"] for r in best_per_optimizer(list(rows.values()))}
    assert best == {"sgd": 0.1, "adam": 0.01}
