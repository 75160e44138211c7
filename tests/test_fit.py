"""zs fit on planted worlds: every method reaches a stated share of the teacher, zoomshot beats the
linear aligner, labels are never read, closed forms ignore row order, the run record is complete,
and bad input is a one-line error."""
import shutil

import h5py
import numpy as np
import pytest

from zoomshot.cache import open_cache
from zoomshot.errors import ZsError
from zoomshot.fit import METHODS, FitConfig, fit_cache, fit_configs
from zoomshot.sweep import teacher_accuracy, zero_shot_accuracy
from zoomshot.mapping import load_mapping, save_mapping
from zoomshot.synth import write_synth_world

# A small world with the default knobs; the fits use their default hyper-parameters (zoomshot's
# batch size and epochs come from the row count).
WORLD = dict(rows=6000, test_rows=3000, classes=40, dv=48, d=32, seed=11)
# Share of the CLIP teacher's top-1 each method must reach on the test split.
SHARE = {"zoomshot": 0.95, "linear-aligner": 0.85, "ridge": 0.85, "procrustes": 0.75}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("fit-world")
    return write_synth_world(root / "w", **WORLD)


@pytest.fixture(scope="module")
def fitted(world):
    cfgs = [FitConfig(method=m) for m in METHODS]
    maps = fit_configs(world["train"], cfgs)
    return {m.method: m for m in maps}


def test_every_method_reaches_its_share_of_the_teacher(world, fitted):
    teacher = teacher_accuracy(world["test"])
    assert teacher == pytest.approx(world["teacher_acc_test"])
    accs = {m: zero_shot_accuracy(fitted[m], world["test"]) for m in METHODS}
    for m in METHODS:
        assert accs[m] >= SHARE[m] * teacher, (m, accs, teacher)
    assert accs["zoomshot"] > accs["linear-aligner"], accs


def test_run_record_rebuilds_the_run(world, fitted, tmp_path):
    m = fitted["zoomshot"]
    r = m.run
    held = r["rows"]["held_out"]
    assert held == 300 and r["holdout"]["rows"] == held and r["holdout"]["final"]["agreement"] > 0.5
    used = WORLD["rows"] - held
    sched = r["schedule"]
    assert sched["batch_size"] == 128 and sched["steps_per_epoch"] == -(-used // 128)
    assert sched["steps"] == sched["steps_per_epoch"] * r["epochs"] >= 600  # enough steps at this size
    assert r["method"] == "zoomshot" and r["fraction"] == 1.0 and r["seed"] == 0
    assert r["hyper"]["lambda_kd"] == FitConfig().lambda_kd and r["hyper"]["batch_size"] == 128
    assert r["source"]["spec"] == "synth:vision" and r["source"]["dim"] == WORLD["dv"]
    assert r["target"]["spec"] == "synth:clip" and r["target"]["weights"] == "planted"
    assert r["vocab"] == "synth" and r["cache"]["rows"] == WORLD["rows"]
    assert r["rows"]["usable"] == WORLD["rows"] and r["rows"]["used"] == used
    assert r["rows"]["streamed"] is False and r["rows"]["blocks"] == 1
    assert [h["epoch"] for h in r["history"]] == list(range(r["epochs"] + 1))  # 0: the start
    assert all(np.isfinite(h["loss"]) for h in r["history"][1:]) and r["wall_time_s"] > 0
    kept = r["history"][sched["best_epoch"]]  # early stopping: the kept state is never below the start
    assert r["holdout"]["final"]["agreement"] == pytest.approx(kept["holdout"]["agreement"], abs=1e-6)
    assert kept["holdout"]["agreement"] >= r["history"][0]["holdout"]["agreement"]
    with open_cache(world["train"]) as c:
        v = c.image("synth_vision")
    trained = v[np.random.default_rng(0).permutation(WORLD["rows"])[:used]]  # ranks < used
    np.testing.assert_allclose(m.mean, trained.mean(0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(m.std, trained.std(0), rtol=1e-3)
    # the saved folder rebuilds the same map
    save_mapping(m, tmp_path / "m")
    back = load_mapping(tmp_path / "m")
    assert back.run["history"] == r["history"] and back.U is not None
    np.testing.assert_array_equal(back.forward(v[:50]), m.forward(v[:50]))
    # every method's map has the standardised form and agrees with its forward()
    for meth in METHODS:
        mm = fitted[meth]
        raw = ((v[:20] - mm.mean) / mm.std) @ mm.W.T + mm.b
        np.testing.assert_allclose(mm.forward(v[:20], normalize=False), raw, rtol=1e-5, atol=1e-5)


def test_a_mapping_is_refused_by_a_cache_with_other_encoders(world, fitted, tmp_path):
    other = write_synth_world(tmp_path / "o", rows=50, test_rows=50, classes=4, dv=20, d=16)
    with pytest.raises(ZsError, match="dim"):
        zero_shot_accuracy(fitted["ridge"], other["test"])


def _copy_with(src, dst, *, labels=None, perm=None, nan_row=None, status_row=None):
    """A byte copy of a cache, then: labels replaced, rows permuted, a NaN planted, a row unreadable."""
    shutil.copy(src, dst)
    with h5py.File(dst, "a") as f:
        if labels is not None:
            f["images/labels"][...] = labels
        if perm is not None:
            for name in ("images/ids", "images/labels", "images/status", "images/errors",
                         *(f"encoders/{k}/image" for k in f["encoders"]),
                         *(f"encoders/{k}/done" for k in f["encoders"])):
                f[name][...] = f[name][()][perm]
        if nan_row is not None:
            f["encoders/synth_vision/image"][nan_row, 3] = np.nan
        if status_row is not None:
            f["images/status"][status_row] = 1
            f["images/errors"][status_row] = "broken jpeg"
    return dst


def test_labels_are_never_read(world, tmp_path):
    rng = np.random.default_rng(0)
    with open_cache(world["train"]) as c:
        shuffled = rng.permutation(c.labels)
    other = _copy_with(world["train"], tmp_path / "perm.h5", labels=shuffled)
    for method in ("zoomshot", "ridge"):
        cfg = FitConfig(method=method, epochs=1, batch_size=1024)
        a, b = fit_cache(world["train"], cfg), fit_cache(other, cfg)
        np.testing.assert_array_equal(a.W, b.W)
        np.testing.assert_array_equal(a.b, b.b)


def test_closed_forms_ignore_row_order(world, tmp_path):
    perm = np.random.default_rng(1).permutation(WORLD["rows"])
    other = _copy_with(world["train"], tmp_path / "shuf.h5", perm=perm)
    for method in ("ridge", "procrustes"):  # every row, no held-out or leave-one-out sample by rank
        cfg = FitConfig(method=method, holdout=0.0, ridge_lambda=1e-3)
        a, b = fit_cache(world["train"], cfg), fit_cache(other, cfg)
        np.testing.assert_allclose(a.W, b.W, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(a.b, b.b, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(a.std, b.std, rtol=1e-5)


def test_fraction_is_a_seeded_nested_subset(world):
    small = fit_cache(world["train"], FitConfig(method="ridge", fraction=0.1, seed=3))
    same = fit_cache(world["train"], FitConfig(method="ridge", fraction=0.1, seed=3))
    other = fit_cache(world["train"], FitConfig(method="ridge", fraction=0.1, seed=4))
    assert small.run["rows"]["used"] == 570 and small.run["fraction"] == 0.1  # of 6000 − 300 held out
    np.testing.assert_array_equal(small.W, same.W)
    assert not np.allclose(small.W, other.W)


def test_unusable_rows_are_skipped_even_when_broken(world, tmp_path):
    # row 7 is marked unreadable and holds NaN: it must be left out, not refused
    p = _copy_with(world["train"], tmp_path / "bad.h5", nan_row=7, status_row=7)
    m = fit_cache(p, FitConfig(method="ridge"))
    assert m.run["rows"]["usable"] == WORLD["rows"] - 1 and np.isfinite(m.W).all()


def test_nan_rows_are_a_one_line_error(world, tmp_path):
    p = _copy_with(world["train"], tmp_path / "nan.h5", nan_row=7)
    with pytest.raises(ZsError, match=r"encoders/synth_vision/image has NaN/Inf in 1 of the rows read "
                                      r"\(first: row 7"):
        fit_cache(p, FitConfig(method="ridge"))


def test_missing_vocabulary_is_a_one_line_error(world, tmp_path):
    p = tmp_path / "novocab.h5"
    shutil.copy(world["train"], p)
    with h5py.File(p, "a") as f:
        del f["encoders/synth_clip/text"]
    with pytest.raises(ZsError, match="has no text vocabulary"):
        fit_cache(p, FitConfig(epochs=1))
    fit_cache(p, FitConfig(method="ridge"))  # the closed forms do not need one
    with pytest.raises(ZsError, match="no vocabulary 'imagenet1k'"):
        fit_cache(world["train"], FitConfig(method="ridge", vocab="imagenet1k"))


def test_a_diverging_loss_stops_the_run(world):
    with pytest.raises(ZsError, match=r"became NaN/Inf in epoch 1; lower the learning rate \(--lr, now 1e\+12\)"):
        fit_cache(world["train"], FitConfig(method="linear-aligner", lr=1e12, epochs=1, fraction=0.2))


@pytest.mark.parametrize("cfg, words", [
    (FitConfig(method="zoomshott"), "did you mean: zoomshot"),
    (FitConfig(kd="medium"), "--kd must be one of soft, hard, lm"),
    (FitConfig(holdout=1.0), "--holdout must be in [0, 1)"),
    (FitConfig(fraction=0.0), "--fraction must be in (0, 1]"),
    (FitConfig(lambda_align=0, lambda_cycle=0, lambda_kd=0), "all loss weights are 0"),
    (FitConfig(source="nope"), "no encoder 'nope'"),
    (FitConfig(target="synth_vision"), "must be a CLIP encoder"),
    (FitConfig(device="tpu"), "device"),
])
def test_bad_configs_are_one_line_errors(world, cfg, words):
    with pytest.raises(ZsError) as err:
        fit_cache(world["train"], cfg)
    assert words in str(err.value) and "\n" not in str(err.value)
