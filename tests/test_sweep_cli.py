"""`zs sweep`: the grid of fitted cells is scored on every evaluation cache and reported with a heatmap.

Most tests replace zoomshot.fit's fit_grid with a stand-in whose mappings get better with epochs ×
fraction, so the sweep's own side (progress, records, report, heatmap) is checked without training.
The last test runs the real fit_grid on a planted world.
"""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
from conftest import make_mapping, make_world
from typer.testing import CliRunner

import zoomshot.fit
from zoomshot.cli import app
from zoomshot.evaluate.plots import heatmap_grid
from zoomshot.mapping import load_mapping

runner = CliRunner()


@pytest.fixture
def grid_world(tmp_path, monkeypatch):
    """A training cache, two evaluation caches of the same world, and a stand-in fit_grid."""
    train = make_world(tmp_path / "train.h5", seed=7, sample_seed=0)
    evals = [make_world(tmp_path / f"eval{i}.h5", seed=7, sample_seed=i) for i in (1, 2)]
    calls = []

    def fit_grid(cache_path, cfg, epochs, fractions, methods=None, on_result=None):
        calls.append((cache_path, list(epochs), list(fractions), methods))
        rng = np.random.default_rng(0)
        out = []
        for method in methods or ["zoomshot"]:
            for e in ([0] if method in ("ridge", "procrustes") else epochs):  # closed form: no epochs
                for f in fractions:
                    noise = rng.normal(size=train["W"].shape) * 3.0 / (max(e, 3) * f * 20)
                    m = make_mapping(None, train["W"] + noise, mean=train["offset"], method=method,
                                     epochs=e, fraction=f, save=False)
                    m.run["cache"] = {"path": str(cache_path)}
                    if on_result:
                        on_result(m)
                    out.append(m)
        return out

    monkeypatch.setattr(zoomshot.fit, "fit_grid", fit_grid)
    return {"train": train, "evals": evals, "calls": calls, "dir": tmp_path}


def test_sweep_scores_every_cell_and_writes_a_heatmap(grid_world):
    w, out = grid_world, grid_world["dir"] / "sweep"
    res = runner.invoke(app, ["sweep", "--cache", w["train"]["path"], "--eval", w["evals"][0]["path"],
                              "--eval", w["evals"][1]["path"], "--epochs", "1,5", "--fractions", "0.01,0.2",
                              "--method", "zoomshot,ridge", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert w["calls"] == [(w["train"]["path"], [1, 5], [0.01, 0.2], ["zoomshot", "ridge"])]
    # the grid filling in, one line per cell: 2 epochs × 2 fractions for zoomshot, 2 fractions for ridge
    cell_lines = [line for line in res.stdout.splitlines() if re.match(r"\[train \d+/6\]", line)]
    assert len(cell_lines) == 6
    assert "CLIP toy:clip on eval1: acc1" in res.stdout

    records = json.loads((out / "results.json").read_text())
    assert len(records) == 2 + 6 * 2  # CLIP per evaluation cache + every cell on every cache
    for name in ("heatmap.png", "report.md", "results.csv", "accuracy.png"):
        assert (out / name).stat().st_size > 0
    saved = sorted(p.name for p in (out / "mappings").iterdir())
    assert len(saved) == 6 and "train-zoomshot-e5-f0.2" in saved
    m = load_mapping(out / "mappings" / "train-ridge-e0-f0.01")
    assert (m.method, m.run["epochs"], m.run["fraction"]) == ("ridge", 0, 0.01)

    # the heatmap's grid holds the records' accuracies, and the stand-in improves with epochs × fraction
    cache = w["evals"][0]["path"]
    epochs, fractions, grid = heatmap_grid(records, "zoomshot", cache)
    assert (epochs, fractions) == ([1, 5], [0.01, 0.2])
    acc = {(r["epochs"], r["fraction"]): 100 * r["metrics"]["acc1"] for r in records
           if r["method"] == "zoomshot" and r["cache"] == cache}
    assert grid.tolist() == [[acc[(e, f)] for f in fractions] for e in epochs]
    assert grid[1, 1] > grid[0, 0]


def test_sweep_skips_an_evaluation_cache_that_does_not_fit(grid_world):
    w = grid_world
    other = make_world(w["dir"] / "other.h5", vision_spec="toy:other")
    res = runner.invoke(app, ["sweep", "--cache", w["train"]["path"], "--eval", w["evals"][0]["path"],
                              "--eval", other["path"], "--epochs", "2", "--fractions", "0.5",
                              "--out", str(w["dir"] / "s")])
    assert res.exit_code == 0, res.output
    assert "other skipped" in res.stdout
    assert "skipped:" in res.stderr and "no encoder with spec 'toy:vision'" in res.stderr
    records = json.loads((w["dir"] / "s" / "results.json").read_text())
    assert sorted((r["dataset"], r["method"]) for r in records) == [
        ("eval1", "clip"), ("eval1", "zoomshot"), ("other", "clip")]


@pytest.mark.parametrize("args,message", [
    (["--epochs", "1,x"], "--epochs must be a comma-separated list of ints"),
    (["--epochs", "0,2"], "epochs must be >= 1"),
    (["--fractions", "0.5,1.5"], "fractions must lie in (0, 1]"),
    (["--fractions", ","], "--fractions is empty"),
    (["--method", "zoomshoot"], "unknown method 'zoomshoot'"),
])
def test_sweep_bad_grid_is_a_one_line_error(grid_world, args, message):
    w = grid_world
    res = runner.invoke(app, ["sweep", "--cache", w["train"]["path"], "--eval", w["evals"][0]["path"],
                              "--out", str(w["dir"] / "bad"), *args])
    assert res.exit_code == 2
    assert message in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert w["calls"] == [] and not (w["dir"] / "bad").exists()


def test_sweep_missing_cache_is_a_one_line_error(grid_world):
    w = grid_world
    res = runner.invoke(app, ["sweep", "--cache", "nope.h5", "--eval", w["evals"][0]["path"],
                              "--epochs", "1", "--fractions", "0.5", "--out", str(w["dir"] / "bad")])
    assert res.exit_code == 2 and "no cache at nope.h5" in res.stderr


def test_real_sweep_on_a_planted_world(tmp_path):
    from zoomshot.synth import write_synth_world

    world = write_synth_world(tmp_path / "w", rows=2000, test_rows=400, classes=20, dv=24, d=16, seed=1,
                              noise=0.5, spread=1.0, clip_noise=4.0, gap=1.0, mismatch=0.0, cond=10.0,
                              template_noise=0.3)
    assert 0.3 < world["teacher_acc_test"] < 1.0
    out = tmp_path / "sweep"
    res = runner.invoke(app, ["sweep", "--cache", world["train"], "--eval", world["test"], "--epochs", "1,3",
                              "--fractions", "0.1,1", "--method", "zoomshot,ridge", "--out", str(out)])
    assert res.exit_code == 0, res.output
    # ridge is closed-form: one cell per fraction, so 2 × 2 + 2 cells
    assert len(re.findall(r"^\[w-train \d/6\] ", res.stdout, flags=re.M)) == 6
    records = json.loads((out / "results.json").read_text())
    ref = [r for r in records if r["mapping"] is None]
    cells = [r for r in records if r["mapping"] is not None]
    assert ref[0]["metrics"]["acc1"] == pytest.approx(world["teacher_acc_test"])
    assert {(r["method"], r["epochs"], r["fraction"]) for r in cells} == {
        ("zoomshot", 1, 0.1), ("zoomshot", 1, 1.0), ("zoomshot", 3, 0.1), ("zoomshot", 3, 1.0),
        ("ridge", 0, 0.1), ("ridge", 0, 1.0)}
    best = max(r["metrics"]["acc1"] for r in cells)
    assert best > 0.5 * world["teacher_acc_test"]  # a fitted map recovers much of the teacher
    assert all(r["metrics"]["agreement"] is not None for r in cells)
    assert (out / "heatmap.png").is_file()


def test_sweep_out_that_is_a_file_is_a_one_line_error_before_fitting(grid_world):
    w = grid_world
    (w["dir"] / "taken").write_text("not a folder")
    res = runner.invoke(app, ["sweep", "--cache", w["train"]["path"], "--eval", w["evals"][0]["path"],
                              "--epochs", "1", "--fractions", "0.5", "--out", str(w["dir"] / "taken")])
    assert res.exit_code == 2 and "is a file" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and w["calls"] == []


def test_sweep_whose_eval_caches_cannot_score_is_refused_before_fitting(grid_world):
    w = grid_world
    res = runner.invoke(app, ["sweep", "--cache", w["train"]["path"], "--eval", w["evals"][0]["path"],
                              "--vocab", "nosuchvocab", "--epochs", "1", "--fractions", "0.5",
                              "--out", str(w["dir"] / "sw")])
    assert res.exit_code == 2 and "no --eval cache can score a mapping" in res.stderr, res.output
    assert "nosuchvocab" in res.stderr and w["calls"] == [] and not (w["dir"] / "sw" / "results.json").exists()
