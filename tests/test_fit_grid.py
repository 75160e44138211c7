"""Sweeps and streaming: a batched grid gives what sequential fits give, and a cache streamed in
chunks under a small memory budget trains as well as one held in memory."""
import numpy as np
import pytest

from zoomshot.fit import FitConfig, fit_cache, fit_configs, fit_grid
from zoomshot.fit.ablation import zero_shot_accuracy
from zoomshot.synth import write_synth_world

WORLD = dict(rows=3000, test_rows=1500, classes=20, dv=32, d=24, seed=5)
ROW_BYTES = 4 * (WORLD["dv"] + WORLD["d"])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return write_synth_world(tmp_path_factory.mktemp("grid") / "w", **WORLD)


def _close(a, b, tol=2e-4):
    for name in ("W", "b", "mean", "std"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=tol, atol=tol)


def test_grid_batched_equals_sequential(world):
    cfg = FitConfig(batch_size=256)
    seen = []
    grid = fit_grid(world["train"], cfg, epochs=[1, 3], fractions=[0.25, 1.0],
                    methods=["zoomshot", "linear-aligner", "ridge"], on_result=seen.append)
    keys = [(m.method, m.run["epochs"], m.run["fraction"]) for m in grid]
    assert keys == [("zoomshot", 1, 0.25), ("zoomshot", 1, 1.0), ("zoomshot", 3, 0.25), ("zoomshot", 3, 1.0),
                    ("linear-aligner", 1, 0.25), ("linear-aligner", 1, 1.0), ("linear-aligner", 3, 0.25),
                    ("linear-aligner", 3, 1.0), ("ridge", 0, 0.25), ("ridge", 0, 1.0)]
    assert sorted(map(id, seen)) == sorted(map(id, grid))  # each reported once, as it finished
    assert {m.run["batched_with"] for m in grid if m.method != "ridge"} == {4}
    for m in grid:
        method, epochs, fraction = m.method, m.run["epochs"], m.run["fraction"]
        alone = fit_cache(world["train"], FitConfig(method=method, epochs=epochs or None, fraction=fraction,
                                                    batch_size=256))
        _close(m, alone)
        assert [h["epoch"] for h in m.run["history"]] == list(range(1, epochs + 1))
        assert m.run["rows"]["used"] == round(fraction * WORLD["rows"])


def test_unbatched_reference_path_agrees(world):
    cfgs = [FitConfig(epochs=2, fraction=f, batch_size=256, kd=kd) for f in (0.5, 1.0) for kd in ("soft", "hard")]
    batched = fit_configs(world["train"], cfgs)
    one_by_one = fit_configs(world["train"], cfgs, batched=False)
    assert [m.run["batched_with"] for m in batched] == [4] * 4
    assert [m.run["batched_with"] for m in one_by_one] == [1] * 4
    for a, b in zip(batched, one_by_one):
        _close(a, b)


def test_streamed_fit_trains_as_well_as_in_memory(world):
    budget = ROW_BYTES * 400 * 3  # three chunks of ~400 rows in memory at once
    resident = fit_cache(world["train"], FitConfig(batch_size=128))
    streamed = fit_cache(world["train"], FitConfig(batch_size=128, memory_budget=budget))
    assert resident.run["rows"]["streamed"] is False
    assert streamed.run["rows"]["streamed"] is True and streamed.run["rows"]["chunks"] >= 7
    assert streamed.run["rows"]["used"] == WORLD["rows"]
    # the same rows and statistics; only the batch order differs
    np.testing.assert_allclose(streamed.mean, resident.mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(streamed.std, resident.std, rtol=1e-5)
    acc_r = zero_shot_accuracy(resident, world["test"])
    acc_s = zero_shot_accuracy(streamed, world["test"])
    assert acc_s >= acc_r - 0.03, (acc_s, acc_r)


def test_streamed_closed_form_equals_in_memory(world):
    a = fit_cache(world["train"], FitConfig(method="ridge"))
    b = fit_cache(world["train"], FitConfig(method="ridge", memory_budget=ROW_BYTES * 300 * 3))
    assert b.run["rows"]["streamed"]
    _close(a, b, tol=1e-4)


def test_streamed_grid_batched_equals_sequential(world):
    budget = ROW_BYTES * 500 * 3  # 1,500 rows: each fraction alone is streamed too
    cfgs = [FitConfig(epochs=e, fraction=f, batch_size=128, memory_budget=budget) for e in (1, 2)
            for f in (0.6, 1.0)]
    batched = fit_configs(world["train"], cfgs)
    for m, c in zip(batched, cfgs):
        assert m.run["rows"]["streamed"]
        _close(m, fit_cache(world["train"], c))


def test_the_gpu_path_stacked_kernels_agree(world, monkeypatch):
    """The path a GPU takes (one batched kernel per term over the stack), run on the CPU."""
    import zoomshot.fit.losses as losses

    cfgs = [FitConfig(epochs=e, fraction=f, batch_size=256, kd=kd) for e, f, kd in
            [(1, 0.5, "soft"), (2, 0.5, "hard"), (2, 1.0, "soft")]]
    per_job = fit_configs(world["train"], cfgs)
    monkeypatch.setattr(losses, "FORCE_BATCHED", True)
    stacked = fit_configs(world["train"], cfgs)
    for a, b in zip(per_job, stacked):
        _close(a, b)
