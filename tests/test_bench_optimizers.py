"""``python -m seng.bench --quick``: every file written, every run logged, the best learning
rate inside its grid or flagged, the tables' epochs to target recomputed from the logs; a
missing optional package is reported, never silent; the pieces the protocol rests on."""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from seng.bench import benchmark as benchmark_module
from seng.bench import optimizers as optimizers_module
from seng.bench.benchmark import (
    QUICK,
    BenchConfig,
    default_optimizer_names,
    quick_config,
    run_benchmark,
)
from seng.bench.optimizers import (
    SENG_VARIANTS,
    SENGVariant,
    all_optimizers,
    conv1d_as_conv2d,
    make_stepper,
)
from seng.bench.problems import MNIST1DCNN, PROBLEMS
from seng.bench.report import format_epochs

ROOT = Path(__file__).resolve().parents[1]
HAS_MNIST1D = importlib.util.find_spec("mnist1d") is not None
HAS_ASDL = importlib.util.find_spec("asdl") is not None
NO_MNIST1D = "mnist1d is not installed (pip install -e '.[bench]')"


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One ``--quick`` run of the CLI over every problem whose data is installed (the
    digits problem needs no optional package)."""
    out = tmp_path_factory.mktemp("bench") / "out"
    cmd = [sys.executable, "-m", "seng.bench", "--quick", "--no-progress", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    return out, results, proc


def _logs(out: Path) -> dict[str, dict]:
    return {str(p.relative_to(out)): json.loads(p.read_text())
            for p in sorted((out / "runs").rglob("*.json"))}


def test_quick_writes_tables_plots_and_logs(quick):
    out, results, proc = quick
    expected = set(PROBLEMS) if HAS_MNIST1D else {"digits-autoencoder"}
    assert set(results["problems"]) == expected
    for name in expected:
        for png in (out / "plots" / f"{name}.png", out / "plots" / f"{name}_lr.png"):
            assert png.stat().st_size > 10_000, png  # a drawn figure, not an empty canvas
    md = (out / "results.md").read_text()
    assert md.strip() in proc.stdout
    for name in expected:
        assert f"## {name}" in md
    skipped = {s.get("problem") or s.get("optimizer") for s in results["skipped"]}
    assert skipped == ({"mnist1d-cnn", "mnist1d-mlp"} if not HAS_MNIST1D else set()) | (
        set() if HAS_ASDL else {"kfac"})
    for name in skipped:  # said on the console, not only in the file
        assert f"skipping {'problem' if name.startswith('mnist1d') else 'optimizer'} {name}" \
            in proc.stderr


def test_quick_logs_every_run(quick):
    """Each (problem, optimizer) has one log per grid value and seed; the shown runs are the
    best value's; every file on disk is referenced and vice versa."""
    out, results, _ = quick
    logs = _logs(out)
    referenced = []
    seeds = list(range(QUICK["seeds"]))
    for pname, pr in results["problems"].items():
        for oname, row in pr["optimizers"].items():
            assert len(row["all_runs"]) == len(row["grid"]) * len(seeds)
            assert sorted((logs[f]["lr"], logs[f]["seed"]) for f in row["all_runs"]) == sorted(
                (lr, seed) for lr in row["grid"] for seed in seeds)
            assert row["seeds"] == seeds
            assert [(logs[f]["lr"], logs[f]["seed"]) for f in row["runs"]] == [
                (row["best_lr"], seed) for seed in seeds]
            for f in row["all_runs"]:
                log = logs[f]
                assert (log["problem"], log["optimizer"]) == (pname, oname)
                assert log["status"] in ("complete", "diverged"), (f, log.get("error"))
                assert log["epochs"][0]["epoch"] == 0
                if log["status"] == "complete":
                    assert [r["epoch"] for r in log["epochs"]] == list(range(QUICK["epochs"] + 1))
            referenced += row["all_runs"]
    assert sorted(referenced) == sorted(logs)


def test_quick_best_lr_inside_grid_or_flagged(quick):
    _, results, _ = quick
    initial = {o: v["initial_grid"] for o, v in results["optimizers"].items()}
    for pr in results["problems"].values():
        for oname, row in pr["optimizers"].items():
            grid = row["grid"]
            assert grid == sorted(grid) and row["best_lr"] in grid
            assert sorted(set(grid) - set(initial[oname])) == sorted(row["extended"])
            # extensions continue the grid's log spacing
            ratios = [b / a for a, b in itertools.pairwise(grid)]
            assert max(ratios) / min(ratios) < 1.01
            i = grid.index(row["best_lr"])
            at_edge = i in (0, len(grid) - 1)
            assert row["best_at_edge"] == at_edge
            if at_edge:  # only once the extensions are used up
                assert len(row["extended"]) == QUICK["max_extend"]
                assert row["edge_side"] == ("low" if i == 0 else "high")
            # the choice is the minimum of the documented key over the sweep
            keys = {s["lr"]: tuple(math.inf if k is None else k for k in s["key"])
                    for s in row["sweep"]}
            assert keys[row["best_lr"]] == min(keys.values())
            assert keys[row["best_lr"]][0] == row["mean_epochs_to_target"]


def test_quick_epochs_to_target_match_the_logs(quick):
    """Recomputed here from the reported runs' logs: the first epoch meeting the target,
    a missed seed counting as epochs + 1; and the Markdown cell built from them."""
    out, results, _ = quick
    logs = _logs(out)
    md = (out / "results.md").read_text()
    reached_somewhere = 0
    for pr in results["problems"].values():
        higher = pr["target_metric"].endswith("acc")
        for row in pr["optimizers"].values():
            hits = []
            for f in row["runs"]:
                hit = None
                for r in logs[f]["epochs"][1:]:
                    v = r.get(pr["target_metric"])
                    if v is not None and (v >= pr["target"] if higher else v <= pr["target"]):
                        hit = r["epoch"]
                        break
                hits.append(hit)
            assert row["epochs_to_target"] == hits
            assert row["reached"] == sum(h is not None for h in hits)
            censored = [pr["epochs"] + 1 if h is None else h for h in hits]
            assert row["mean_epochs_to_target"] == pytest.approx(sum(censored) / len(censored))
            steps = pr["steps_per_epoch"]
            assert row["time_to_target"] == pytest.approx(
                row["mean_epochs_to_target"] * steps * row["step_time"])
            assert format_epochs(row, pr["epochs"]) in md
            reached_somewhere += row["reached"]
    assert reached_somewhere > 0  # the quick targets exercise the counting, not only "> E"


def test_missing_packages_are_reported_and_skipped(tmp_path, monkeypatch):
    """A problem or optimizer whose package is missing is skipped with its reason in the
    results and on stderr; the rest still runs."""
    monkeypatch.setitem(PROBLEMS, "mnist1d-mlp",
                        replace(PROBLEMS["mnist1d-mlp"], requires=("no_such_pkg",)))
    real = optimizers_module.missing_requirement
    monkeypatch.setattr(benchmark_module, "missing_requirement",
                        lambda s: "no_such_pkg is not installed" if s.name == "adam" else real(s))
    cfg = BenchConfig(out=tmp_path, problems=("mnist1d-mlp", "digits-autoencoder"),
                      optimizers=("sgd", "adam"), quick=True, progress=False,
                      **{**QUICK, "seeds": 1, "epochs": 1, "grid_points": 1, "max_extend": 0})
    results = run_benchmark(cfg)
    assert {"problem": "mnist1d-mlp", "reason": "needs no_such_pkg (pip install -e '.[bench]')"} \
        in results["skipped"]
    assert {"optimizer": "adam", "reason": "no_such_pkg is not installed"} in results["skipped"]
    assert list(results["problems"]) == ["digits-autoencoder"]
    assert list(results["problems"]["digits-autoencoder"]["optimizers"]) == ["sgd"]
    assert "**Skipped** adam" in (tmp_path / "results.md").read_text()


def test_bad_settings_raise_named_errors(tmp_path):
    with pytest.raises(ValueError, match="seeds"):
        BenchConfig(out=tmp_path, seeds=0)
    with pytest.raises(ValueError, match="problems"):
        BenchConfig(out=tmp_path, problems=("mnist2d",))
    with pytest.raises(ValueError, match="optimizers"):
        BenchConfig(out=tmp_path, optimizers=("lbfgs",))
    with pytest.raises(ValueError, match="learning rate"):
        make_stepper(all_optimizers()["sgd"], MNIST1DCNN(), -1.0, PROBLEMS["mnist1d-cnn"],
                     128, 0)
    with pytest.raises(ValueError, match="targets"):
        BenchConfig(out=tmp_path, targets={"mnist2d": 0.5})
    with pytest.raises(ValueError, match="targets"):
        BenchConfig(out=tmp_path, targets={"mnist1d-cnn": math.nan})
    for grid in ((), (0.1, 0.01), (0.0,), 0.1):
        with pytest.raises(ValueError, match="lrs"):
            BenchConfig(out=tmp_path, lrs={"sgd": grid})
    with pytest.raises(ValueError, match="lrs"):
        BenchConfig(out=tmp_path, lrs={"lbfgs": (0.1,)})


def test_targets_and_grids_replace_the_problems_and_optimizers_own(tmp_path):
    # a training MSE of 10 is met after any first epoch, 0 never: the target decides
    cfg = quick_config(tmp_path, problems=("digits-autoencoder",), optimizers=("sgd",),
                       seeds=1, max_extend=0, grid_points=None, lrs={"sgd": (0.05, 0.5)},
                       progress=False)
    for target, epochs in ((10.0, [1]), (0.0, [None])):
        results = run_benchmark(replace(cfg, targets={"digits-autoencoder": target}))
        problem = results["problems"]["digits-autoencoder"]
        row = problem["optimizers"]["sgd"]
        assert problem["target"] == target
        assert row["grid"] == [0.05, 0.5] and row["epochs_to_target"] == epochs


def test_seng_variants_table_adds_optimizers(monkeypatch):
    monkeypatch.setitem(SENG_VARIANTS, "seng-test", SENGVariant({"update_freq": 5}, (0.1,)))
    spec = all_optimizers()["seng-test"]
    assert (spec.kind, spec.options, spec.lrs, spec.cycle) == ("seng", {"update_freq": 5},
                                                               (0.1,), 5)
    assert all_optimizers()["seng"].cycle == 10  # SENG's own default


def test_variants_out_of_the_study_run_only_when_named(monkeypatch, tmp_path):
    monkeypatch.setitem(SENG_VARIANTS, "seng-out", SENGVariant({"update_freq": 5}, (0.1,),
                                                               in_study=False))
    assert "seng-out" in all_optimizers()
    defaults = default_optimizer_names()
    assert "seng-out" not in defaults and {"seng", "seng-lm", "sgd"} <= set(defaults)
    assert BenchConfig(out=tmp_path, optimizers=("seng-out",)).optimizers == ("seng-out",)


def test_conv1d_as_conv2d_is_the_same_function():
    torch.manual_seed(0)
    model = MNIST1DCNN()
    x = torch.randn(7, 40)
    expected = model(x)
    conv1d_as_conv2d(model)
    assert not any(isinstance(m, torch.nn.Conv1d) for m in model.modules())
    torch.testing.assert_close(model(x), expected)


def test_muon_trains_conv_weights_through_their_2d_views():
    if not hasattr(torch.optim, "Muon"):
        pytest.skip(f"torch.optim.Muon is not in torch {torch.__version__}")
    torch.manual_seed(0)
    model = MNIST1DCNN()
    before = [p.detach().clone() for p in model.parameters()]
    stepper = make_stepper(all_optimizers()["muon"], model, 0.01, PROBLEMS["mnist1d-cnn"],
                           16, 0)
    stepper.step(torch.randn(16, 40), torch.randint(0, 10, (16,)))
    for p, p0 in zip(model.parameters(), before, strict=True):
        assert not torch.equal(p, p0)  # conv weights (3-D) moved too
