"""Planted worlds (`zs synth`): what they hold, that the stored teacher accuracy is the true one,
and that a seed fixes the world."""
import json

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from zoomshot.cache import open_cache
from zoomshot.cli import app
from zoomshot.synth import CLIP_SPEC, VISION_SPEC, read_synth_attrs, write_synth_world

runner = CliRunner()
SMALL = dict(rows=900, test_rows=400, classes=12, dv=24, d=16)


def test_world_holds_two_encoders_a_vocabulary_and_labels(tmp_path):
    w = write_synth_world(tmp_path / "w", seed=3, **SMALL)
    with open_cache(w["train"]) as c:
        encs = c.encoders
        assert {e.spec for e in encs.values()} == {CLIP_SPEC, VISION_SPEC}
        clip = next(e for e in encs.values() if e.family == "clip")
        vis = next(e for e in encs.values() if e.family == "vision")
        assert (clip.dim, vis.dim) == (16, 24) and clip.weights == vis.weights == "planted"
        assert c.n == 900 and len(c.usable_rows(clip.key, vis.key)) == 900
        assert c.labels.min() >= 0 and c.labels.max() < 12
        tv = c.text(clip.key)
        assert tv.names == c.class_names and len(tv.names) == 12 and tv.emb.shape[:2] == (12, len(tv.templates))
        feats = c.image(clip.key)
        np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, atol=2e-3)  # stored normalised
    with open_cache(w["test"]) as c:
        assert c.n == 400


def test_stored_teacher_accuracy_is_the_caches_own(tmp_path):
    w = write_synth_world(tmp_path / "w", seed=5, **SMALL)
    for split in ("train", "test"):
        with open_cache(w[split]) as c:
            key = next(k for k, e in c.encoders.items() if e.family == "clip")
            acc = float(((c.image(key) @ c.text(key).classifier.T).argmax(1) == c.labels).mean())
        meta = read_synth_attrs(w[split])
        assert meta["split"] == split and meta["seed"] == 5 and meta["rows"] == SMALL["rows"]
        assert meta["teacher_acc"] == acc == w[f"teacher_acc_{split}"]
    assert 0.2 < w["teacher_acc_test"] < 0.99  # the default world's teacher is good, not perfect


def test_a_seed_fixes_the_world(tmp_path):
    a = write_synth_world(tmp_path / "a", seed=1, **SMALL)
    b = write_synth_world(tmp_path / "b", seed=1, **SMALL)
    c = write_synth_world(tmp_path / "c", seed=2, **SMALL)

    def feats(p):
        with h5py.File(p, "r") as f:
            return f["encoders/synth_vision/image"][()], f["images/labels"][()]

    va, la = feats(a["test"])
    vb, lb = feats(b["test"])
    vc, _ = feats(c["test"])
    assert np.array_equal(va, vb) and np.array_equal(la, lb)
    assert not np.array_equal(va, vc)


def test_knobs_move_the_teacher(tmp_path):
    clean = write_synth_world(tmp_path / "clean", seed=0, spread=0.0, clip_noise=0.0, **SMALL)
    noisy = write_synth_world(tmp_path / "noisy", seed=0, spread=3.0, clip_noise=3.0, **SMALL)
    assert clean["teacher_acc_test"] == 1.0
    assert noisy["teacher_acc_test"] < 0.9


def test_cli_writes_the_pair_and_reports_the_teacher(tmp_path):
    res = runner.invoke(app, ["synth", "--out", str(tmp_path / "s"), "--rows", "300", "--test-rows", "100",
                              "--classes", "5", "--dv", "12", "--d", "8", "--seed", "4"])
    assert res.exit_code == 0, res.output
    meta = read_synth_attrs(tmp_path / "s-test.h5")
    assert f"{100 * meta['teacher_acc']:.2f}%" in res.stdout
    assert (tmp_path / "s-train.h5").is_file()
    with h5py.File(tmp_path / "s-train.h5", "r") as f:
        assert json.loads(f.attrs["synth"])["classes"] == 5


@pytest.mark.parametrize("args, words", [(["--d", "4"], "d >= 8"), (["--classes", "1"], "at least 2 classes"),
                                         (["--rows", "0"], "rows >= 1")])
def test_cli_bad_sizes_are_one_line_errors(tmp_path, args, words):
    res = runner.invoke(app, ["synth", "--out", str(tmp_path / "s"), *args])
    assert res.exit_code == 2 and words in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())
