"""Sweeps and streaming: a grid fitted from one shared read gives what separate fits give, and a
cache streamed in blocks under a small memory budget gives the same mapping as one held in memory."""
import numpy as np
import pytest

from zoomshot.fit import FitConfig, fit_cache, fit_configs, fit_grid
from zoomshot.sweep import zero_shot_accuracy
from zoomshot.synth import write_synth_world

WORLD = dict(rows=3000, test_rows=1500, classes=20, dv=32, d=24, seed=5)
ROW_BYTES = 4 * (WORLD["dv"] + WORLD["d"])
HELD = 256  # 5% of 3000 is 150, raised to the minimum of 256


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return write_synth_world(tmp_path_factory.mktemp("grid") / "w", **WORLD)


def _close(a, b, tol=2e-4):
    for name in ("W", "b", "mean", "std"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=tol, atol=tol)


def test_grid_from_one_read_equals_separate_fits(world):
    cfg = FitConfig(batch_size=256)
    seen = []
    grid = fit_grid(world["train"], cfg, epochs=[1, 3], fractions=[0.25, 1.0],
                    methods=["zoomshot", "linear-aligner", "ridge"], on_result=seen.append)
    keys = [(m.method, m.run["epochs"], m.run["fraction"]) for m in grid]
    assert keys == [("zoomshot", 1, 0.25), ("zoomshot", 1, 1.0), ("zoomshot", 3, 0.25), ("zoomshot", 3, 1.0),
                    ("linear-aligner", 1, 0.25), ("linear-aligner", 1, 1.0), ("linear-aligner", 3, 0.25),
                    ("linear-aligner", 3, 1.0), ("ridge", 0, 0.25), ("ridge", 0, 1.0)]
    assert [id(m) for m in seen] == [id(m) for m in grid]  # each reported once, as it finished
    for m in grid:
        method, epochs, fraction = m.method, m.run["epochs"], m.run["fraction"]
        alone = fit_cache(world["train"], FitConfig(method=method, epochs=epochs or None, fraction=fraction,
                                                    batch_size=256))
        _close(m, alone)
        assert m.run["holdout"] == alone.run["holdout"]  # the same held-out rows for every cell
        if epochs:
            assert [h["epoch"] for h in m.run["history"]] == list(range(0, epochs + 1))
        assert m.run["rows"]["used"] == round(fraction * (WORLD["rows"] - HELD))


def test_streamed_fit_is_the_in_memory_fit(world):
    budget = ROW_BYTES * 400 * 3
    for cfg in (FitConfig(batch_size=128, epochs=2), FitConfig(method="linear-aligner", epochs=2),
                FitConfig(method="ridge")):
        resident = fit_cache(world["train"], cfg)
        streamed = fit_cache(world["train"], FitConfig(**{**cfg.__dict__, "memory_budget": budget}))
        assert resident.run["rows"]["streamed"] is False and streamed.run["rows"]["streamed"] is True
        assert streamed.run["rows"]["used"] == WORLD["rows"] - HELD
        # batch order depends on the seed and the rows' ranks only: the same mapping, bit for bit
        for name in ("W", "b", "mean", "std"):
            np.testing.assert_array_equal(getattr(streamed, name), getattr(resident, name))


def test_blocks_and_batches_are_fixed_by_seed_not_budget(world, monkeypatch):
    import zoomshot.fit.data as data

    monkeypatch.setattr(data, "BLOCK_BYTES", ROW_BYTES * 500)  # six blocks of 500 file rows
    cfg = FitConfig(batch_size=96, epochs=2)
    resident = fit_cache(world["train"], cfg)
    streamed = fit_cache(world["train"], FitConfig(batch_size=96, epochs=2, memory_budget=ROW_BYTES * 900))
    assert resident.run["rows"]["blocks"] == streamed.run["rows"]["blocks"] == 6
    assert streamed.run["rows"]["streamed"]
    np.testing.assert_array_equal(streamed.W, resident.W)
    other_seed = fit_cache(world["train"], FitConfig(batch_size=96, epochs=2, seed=1))
    assert not np.allclose(other_seed.W, resident.W)
    assert zero_shot_accuracy(streamed, world["test"]) == zero_shot_accuracy(resident, world["test"])


def test_configs_fitted_together_must_share_the_data_settings(world):
    from zoomshot.errors import ZsError

    with pytest.raises(ZsError, match="must share holdout"):
        fit_configs(world["train"], [FitConfig(method="ridge"), FitConfig(method="ridge", holdout=0.1)])


def test_the_fit_and_evaluate_stages_do_not_import_each_other():
    import subprocess
    import sys

    for mine, other in (("zoomshot.fit", "zoomshot.evaluate"), ("zoomshot.evaluate", "zoomshot.fit")):
        mods = {"zoomshot.fit": "zoomshot.fit.api, zoomshot.fit.iterative",
                "zoomshot.evaluate": "zoomshot.evaluate.run, zoomshot.evaluate.scoring, zoomshot.evaluate.report"}
        code = (f"import sys, {mods[mine]}\n"
                f"print(sorted(m for m in sys.modules if m == {other!r} or m.startswith({other!r} + '.')))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        assert out.strip() == "[]", (mine, out)
