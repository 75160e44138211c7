"""The zs-cache v1 contract: round trip with plain h5py, version checks, refusals of mismatched appends."""
import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from zoomshot.cache import CacheError, CacheWriter, EncoderEntry, ensemble_classifier, open_cache
from zoomshot.cli import app

IDS = [f"img{i:03d}.jpg" for i in range(10)]


def vision(dim=6, spec="timm:test_vit", key="v"):
    return EncoderEntry(key=key, spec=spec, family="vision", dim=dim, weights="random",
                        preprocess={"input_size": [3, 32, 32]}, versions={"timm": "x"})


def clip(dim=4):
    return EncoderEntry(key="c", spec="open_clip:tiny", family="clip", dim=dim, normalized=True, weights="random")


@pytest.fixture
def cache_path(tmp_path):
    rng = np.random.default_rng(0)
    p = tmp_path / "c.h5"
    with CacheWriter(p, IDS, labels=[i % 3 for i in range(10)], class_names=["a", "b", "c"]) as w:
        w.add_encoder(vision())
        w.add_encoder(clip())
        w.write_rows("v", 0, rng.normal(size=(10, 6)))
        w.write_rows("c", 0, rng.normal(size=(7, 4)))
        w.mark_unreadable([3], ["truncated JPEG"])
        w.write_text("c", "classes", ["a", "b", "c"], ["a {c}.", "the {c}"], rng.normal(size=(3, 2, 4)))
    return p


def test_round_trip_plain_h5py_sees_the_contract(cache_path):
    with h5py.File(cache_path, "r") as f:
        assert f.attrs["format"] == "zs-cache" and f.attrs["format_version"] == 1
        assert f["images/ids"].asstr()[3] == "img003.jpg"
        assert f["images/labels"].dtype == np.int32 and f["images/status"].dtype == np.uint8
        assert f["encoders/v/image"].dtype == np.float16 and f["encoders/v/image"].shape == (10, 6)
        assert f["encoders/v/image"].chunks is not None and f["encoders/v/image"].fletcher32
        assert f["encoders/c/done"][()].sum() == 7
        assert f["encoders/c/text/classes/emb"].shape == (3, 2, 4)
        assert f["encoders/c/text/classes/emb"].dtype == np.float16
        assert f["encoders/c/text/classes/classifier"].dtype == np.float32
        for a in ("spec", "family", "dim", "normalized", "weights", "preprocess", "versions"):
            assert a in f["encoders/v"].attrs


def test_reader_api(cache_path):
    with open_cache(cache_path) as c:
        assert c.ids == IDS and c.n == 10 and c.class_names == ["a", "b", "c"]
        assert c.errors[3] == "truncated JPEG" and c.status[3] == 1
        assert set(c.encoders) == {"v", "c"} and c.encoder("v").preprocess == {"input_size": [3, 32, 32]}
        np.testing.assert_array_equal(c.usable_rows("v", "c"), [0, 1, 2, 4, 5, 6])
        allv = c.image("v")
        rows = np.array([9, 0, 4, 4])
        np.testing.assert_array_equal(c.image("v", rows), allv[rows])
        t = c.text("c")
        assert t.names == ["a", "b", "c"] and t.templates == ["a {c}.", "the {c}"]
        light = c.text("c", embeddings=False)
        assert light.emb is None and light.names == t.names
        np.testing.assert_array_equal(light.classifier, t.classifier)
        np.testing.assert_allclose(np.linalg.norm(t.classifier, axis=1), 1, rtol=1e-5)
        # the classifier is ensembled from the float32 embeddings, before their float16 rounding on disk
        np.testing.assert_allclose(t.classifier, ensemble_classifier(t.emb), atol=1e-3)
        assert "encoder v: timm:test_vit [vision] dim 6" in c.info()
        with pytest.raises(CacheError, match="no encoder 'x'; it has: c, v"):
            c.image("x")
        with pytest.raises(CacheError, match="no vocabulary 'imagenet1k'"):
            c.text("c", "imagenet1k")


def test_ensemble_is_mean_of_normalised_then_renormalised():
    emb = np.array([[[3.0, 0.0], [0.0, 1.0]]])
    np.testing.assert_allclose(ensemble_classifier(emb), [[2 ** -0.5, 2 ** -0.5]], rtol=1e-6)


@pytest.mark.parametrize("change,needle", [
    ({"dim": 7}, "dim=6"), ({"spec": "timm:other"}, "spec="), ({"family": "clip"}, "family=")])
def test_append_with_other_encoder_attrs_is_refused(cache_path, change, needle):
    entry = vision()
    for k, v in change.items():
        setattr(entry, k, v)
    with CacheWriter(cache_path, IDS) as w:
        with pytest.raises(CacheError, match=needle):
            w.add_encoder(entry)


def test_append_with_other_images_is_refused(cache_path):
    with pytest.raises(CacheError, match="different image list"):
        CacheWriter(cache_path, IDS[:-1])
    with pytest.raises(CacheError, match="different image list"):
        CacheWriter(cache_path, list(reversed(IDS)))


def test_reader_refuses_unknown_version_and_foreign_files(cache_path, tmp_path):
    with h5py.File(cache_path, "a") as f:
        f.attrs["format_version"] = 2
    with pytest.raises(CacheError, match="format_version 2"):
        open_cache(cache_path)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = 1
    with pytest.raises(CacheError, match="not a zs-cache"):
        open_cache(other)
    with pytest.raises(CacheError, match="no cache at"):
        open_cache(tmp_path / "missing.h5")


def test_cli_cache_info(cache_path, tmp_path):
    r = CliRunner().invoke(app, ["cache", "info", str(cache_path)])
    assert r.exit_code == 0, r.output
    assert "10 rows, 1 unreadable" in r.output and "7/10 rows done" in r.output
    r = CliRunner().invoke(app, ["cache", "info", str(tmp_path / "nope.h5")])
    assert r.exit_code == 2 and "error: no cache at" in r.output


def test_refused_new_cache_leaves_no_file_and_foreign_hdf5_is_refused(tmp_path):
    with pytest.raises(CacheError, match="unique"):
        CacheWriter(tmp_path / "dup.h5", ["a", "a"])
    with pytest.raises(CacheError, match="labels has shape"):
        CacheWriter(tmp_path / "lab.h5", ["a", "b"], labels=[0])
    assert not (tmp_path / "dup.h5").exists() and not (tmp_path / "lab.h5").exists()
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["images/x"] = 1
    with pytest.raises(CacheError, match="not a zs-cache file"):
        CacheWriter(foreign, ["a"])
    with h5py.File(foreign, "r") as f:
        assert list(f["images"]) == ["x"]  # untouched


def test_unwritable_output_is_a_one_line_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = CliRunner().invoke(app, ["synth", "--out", str(blocker / "sub" / "w"), "--rows", "10", "--test-rows", "5",
                                 "--classes", "3", "--dv", "4", "--d", "4"])
    assert r.exit_code == 2 and r.output.startswith("error: ") and "Traceback" not in r.output
