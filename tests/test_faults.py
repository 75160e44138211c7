"""Fault injection: nothing lost, nothing silently wrong, no traceback (issue 10's items, one test or
case per item; items 8 and 10, degenerate fits and the memory budget, are tested with the fit stage).

No root is needed: a lost write is a patched shard writer (and a real RLIMIT_FSIZE in a child
process), an unwritable place is under /proc (unwritable even for root), a crash is a patched
rename, a damaged file is a flipped byte located through h5py.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import make_mapping, make_world
from conftest import VISION_PLUGIN, image_bytes, make_image_folder
from zoomshot.cache import CacheError, open_cache
from zoomshot.cli import app

runner = CliRunner()
UNWRITABLE = "/proc/zs-nowhere"  # nothing can be created under /proc, not even by root
OVERFLOW_PLUGIN_SRC = '''
from torchvision import transforms as T

class Big:
    name, family, dim = "big", "vision", 4
    preprocess = T.Compose([T.Resize(32), T.CenterCrop(32), T.ToTensor()])
    def encode_image(self, x):
        return x.mean(dim=(2, 3)).repeat(1, 2)[:, :4] * 1e6 + 1e5

def make(weights="default"):
    return Big()
'''


def zs(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(res, *needles):
    """A refused command: non-zero exit, no traceback, one line on stderr holding every needle."""
    assert res.exit_code != 0, res.output
    assert "Traceback" not in res.output and res.exception is None or isinstance(res.exception, SystemExit), res.output
    err = res.stderr.strip().splitlines()
    assert err and err[-1].startswith("error: "), res.output
    for n in needles:
        assert n in err[-1], err[-1]
    return err[-1]


def extract(images, out, *extra, encoder=VISION_PLUGIN):
    return zs("extract", "--images", images, "--encoder", encoder, "--out", out, "--workers", 0,
              "--batch-size", 2, "--quiet", *extra)


@pytest.fixture
def images(tmp_path):
    return make_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=3)


# ------------------------------------------------------------------ 1: a lost write ------------------
def test_1_lost_write_never_becomes_a_final_shard(tmp_path, images, monkeypatch):
    from zoomshot.extract import shardfile

    real = shardfile.ShardFile.write

    def lossy(self, a, b, feats, ok, errors):  # the disk "accepts" the rows but keeps NaN for them
        real(self, a, b, feats, ok, errors)
        self.f["image"][a - self.start:b - self.start] = np.nan

    monkeypatch.setattr(shardfile.ShardFile, "write", lossy)
    out = tmp_path / "c.h5"
    line = one_line_error(extract(images, out, "--shard-rows", 3), "did not read back", "not made final")
    assert not list((tmp_path / "c.shards").glob("*/[0-9]*.h5")), "a shard with lost rows was made final"
    assert not out.exists()
    monkeypatch.setattr(shardfile.ShardFile, "write", real)
    res = extract(images, out, "--shard-rows", 3)  # the rerun recomputes the lost rows
    assert res.exit_code == 0, res.output + line
    with open_cache(out) as c:
        key = next(iter(c.encoders))
        assert c.done(key).all() and np.isfinite(c.image(key)).all()


def test_1_a_final_shard_with_missing_rows_is_written_again(tmp_path, images):
    out = tmp_path / "c.h5"
    assert extract(images, out, "--shard-rows", 3).exit_code == 0
    shard = next((tmp_path / "c.shards").glob("*/00001.h5"))
    with h5py.File(shard, "a") as f:  # what the old full-disk fault left: final, rows not done
        f["done"][0] = False
    out.unlink()
    res = extract(images, out, "--shard-rows", 3)
    assert res.exit_code == 0, res.output
    with open_cache(out) as c:
        key = next(iter(c.encoders))
        assert c.done(key).all()


def test_1_full_disk_in_a_child_process(tmp_path, images):
    """A real file-size limit (RLIMIT_FSIZE) that the image list fits under and a shard does not:
    one line, exit 2, no final shard, and the rerun without the limit finishes with every row."""
    ref = tmp_path / "ref.h5"
    assert extract(images, ref).exit_code == 0
    listing = (tmp_path / "ref.shards" / "images.h5").stat().st_size
    shard = max(p.stat().st_size for p in (tmp_path / "ref.shards").glob("*/00000.h5"))
    assert shard > listing + 1000
    out = tmp_path / "c.h5"
    script = textwrap.dedent(f"""
        import resource, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from zoomshot.extract.runner import ExtractConfig, extract
        from zoomshot.errors import ZsError
        resource.setrlimit(resource.RLIMIT_FSIZE, ({(listing + shard) // 2}, {(listing + shard) // 2}))
        try:
            s = extract(ExtractConfig(out={str(out)!r}, encoders=[{VISION_PLUGIN!r}], images={str(images)!r},
                                      workers=0, batch_size=2, progress=False))
            sys.exit(3 if s.failed else 0)
        except ZsError as e:
            print("error:", e); sys.exit(2)
    """)
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert child.returncode == 2, child.stdout + child.stderr
    assert "cannot write" in child.stdout and "File too large" in child.stdout and "Traceback" not in child.stderr
    assert not list((tmp_path / "c.shards").glob("*/[0-9]*.h5")), "a shard cut by the full disk became final"
    res = extract(images, out)
    assert res.exit_code == 0, res.output
    with open_cache(out) as c:
        key = next(iter(c.encoders))
        assert c.done(key).all() and np.isfinite(c.image(key)).all()
        np.testing.assert_array_equal(c.image(key), open_cache(ref).image(key))


def test_1_too_little_free_space_is_refused_before_the_first_batch(tmp_path, images, monkeypatch):
    from collections import namedtuple

    import zoomshot.extract.runner as R

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(R.shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 100, 100))
    out = tmp_path / "c.h5"
    one_line_error(extract(images, out), "GB free")
    assert not out.exists() and not (tmp_path / "c.shards").exists()


# ------------------------------------------------------------------ 2: refit into a mapping folder ---
def _mapping(seed):
    from zoomshot.mapping import Mapping

    rng = np.random.default_rng(seed)
    return Mapping(W=rng.normal(size=(4, 6)).astype(np.float32), b=np.zeros(4, np.float32),
                   mean=np.zeros(6, np.float32), std=np.ones(6, np.float32),
                   run={"method": "ridge", "source": {"key": "v", "spec": "v", "dim": 6},
                        "target": {"key": "c", "spec": "c", "dim": 4}})


def test_2_refit_keeps_other_files_and_a_mapping_at_every_instant(tmp_path, monkeypatch):
    from zoomshot import mapping as M

    out = tmp_path / "m"
    M.save_mapping(_mapping(0), out)
    (out / "eval").mkdir()
    (out / "eval" / "results.json").write_text("[]")
    (out / "notes.txt").write_text("mine")
    M.save_mapping(_mapping(1), out)
    assert (out / "eval" / "results.json").read_text() == "[]" and (out / "notes.txt").read_text() == "mine"
    np.testing.assert_array_equal(M.load_mapping(out).W, _mapping(1).W)

    real_replace = os.replace

    def crash_at(target_name):
        def replace(src, dst):
            if Path(dst).name == target_name:
                raise KeyboardInterrupt("killed")
            return real_replace(src, dst)
        return replace

    # killed before the commit point: the old mapping loads
    monkeypatch.setattr(os, "replace", crash_at(M.RUN_FILE))
    with pytest.raises(KeyboardInterrupt):
        M.save_mapping(_mapping(2), out)
    monkeypatch.setattr(os, "replace", real_replace)
    np.testing.assert_array_equal(M.load_mapping(out).W, _mapping(1).W)
    # killed after run.json was replaced, before the tensors were renamed: the new mapping loads
    monkeypatch.setattr(os, "replace", crash_at(M.TENSORS_FILE))
    with pytest.raises(KeyboardInterrupt):
        M.save_mapping(_mapping(3), out)
    monkeypatch.setattr(os, "replace", real_replace)
    np.testing.assert_array_equal(M.load_mapping(out).W, _mapping(3).W)
    assert (out / "eval" / "results.json").exists()


# ------------------------------------------------------------------ 3: skip-existing by content ------
def test_3_skip_existing_rescores_a_refit_mapping(tmp_path):
    w = make_world(tmp_path / "ev.h5", classes=6)
    make_mapping(tmp_path / "m", w["W"], mean=w["offset"])
    rep = tmp_path / "rep"
    assert zs("evaluate", "--mapping", tmp_path / "m", "--cache", w["path"], "--out", rep).exit_code == 0
    first = [r for r in json.loads((rep / "results.json").read_text()) if r["mapping"]]
    make_mapping(tmp_path / "m", np.zeros_like(w["W"]), mean=w["offset"])  # refit: same folder, other map
    res = zs("evaluate", "--mapping", tmp_path / "m", "--cache", w["path"], "--out", rep, "--skip-existing")
    assert res.exit_code == 0, res.output
    second = [r for r in json.loads((rep / "results.json").read_text()) if r["mapping"]]
    assert len(second) == 1, "the stale record was kept beside the new one"
    assert second[0]["mapping_sha256"] != first[0]["mapping_sha256"]
    assert second[0]["metrics"]["acc1"] != first[0]["metrics"]["acc1"]
    # unchanged mapping and cache: skipped, the record is kept as it was
    res = zs("evaluate", "--mapping", tmp_path / "m", "--cache", w["path"], "--out", rep, "--skip-existing")
    assert "kept" in res.output and json.loads((rep / "results.json").read_text())[-1] == second[0]


# ------------------------------------------------------------------ 4, 5, 6, 17: sources -------------
def test_4_a_symlink_loop_lists_each_image_once(tmp_path, images):
    from zoomshot.sources import folder_source

    (images / "a" / "loop").symlink_to(images, target_is_directory=True)
    (images / "b" / "again").symlink_to(images / "b", target_is_directory=True)
    src = folder_source(images)
    assert len(src) == 6 and src.class_names == ["a", "b"]
    assert [src.class_names[lab] for lab in src.labels] == [i.split("/")[0] for i in src.ids]


def test_5_16_bit_png_keeps_its_picture():
    import io

    from PIL import Image

    from zoomshot.sources import decode_rgb

    a = np.tile(np.linspace(0, 65535, 64, dtype=np.uint16), (64, 1))
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    rgb = np.asarray(decode_rgb(buf.getvalue()))
    assert rgb.shape == (64, 64, 3)
    assert 100 < rgb.mean() < 155 and (rgb == 255).mean() < 0.1  # a ramp, not a white sheet
    np.testing.assert_array_equal(rgb[0, :, 0], (a[0] >> 8).astype(np.uint8))


def test_6_empty_class_folder_keeps_every_label(tmp_path):
    from zoomshot.sources import folder_source

    root = make_image_folder(tmp_path / "imgs", classes=("a", "c"), per_class=2)
    (root / "b").mkdir()  # empty class between two others
    src = folder_source(root)
    assert src.class_names == ["a", "b", "c"]
    assert [src.class_names[lab] for lab in src.labels] == [i.split("/")[0] for i in src.ids]


def test_6_unreadable_class_folder_is_an_error(tmp_path, monkeypatch):
    from zoomshot.sources import SourceError, folder_source

    root = make_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=2)
    real = os.scandir

    def scandir(path="."):
        if Path(path) == root / "b":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(SourceError, match="cannot list .*b"):
        folder_source(root)


def test_17_tsv_list_is_tab_separated(tmp_path, images):
    from zoomshot.sources import list_source

    lst = tmp_path / "list.tsv"
    lst.write_text("path\tlabel\n" + "".join(f"imgs/{p.parent.name}/{p.name}\t{p.parent.name}\n"
                                             for p in sorted(images.glob("*/*"))))
    src = list_source(lst)
    assert len(src) == 6 and src.class_names == ["a", "b"]
    assert all((tmp_path / i).is_file() for i in src.ids)


# ------------------------------------------------------------------ 7: copy, rename, delete ----------
def test_7_copied_cache_reads_its_own_shards(tmp_path, images):
    a = tmp_path / "a.h5"
    assert extract(images, a, "--shard-rows", 2).exit_code == 0
    with open_cache(a) as c:
        key = next(iter(c.encoders))
        want = c.image(key)
    shutil.copy(a, tmp_path / "b.h5")
    shutil.copytree(tmp_path / "a.shards", tmp_path / "b.shards")
    # damage in the copy is seen in the copy
    shard = tmp_path / "b.shards" / key / "00001.h5"
    saved = shard.read_bytes()
    shard.unlink()
    with open_cache(tmp_path / "b.h5") as c, pytest.raises(CacheError, match="b.shards"):
        c.image(key)
    shard.write_bytes(saved)
    # deleting the original leaves the copy whole
    a.unlink()
    shutil.rmtree(tmp_path / "a.shards")
    with open_cache(tmp_path / "b.h5") as c:
        np.testing.assert_array_equal(c.image(key), want)
        assert "INCOMPLETE" not in c.info()


# ------------------------------------------------------------------ 9: checksums ---------------------
def _flip_first_chunk_byte(path, name):
    with h5py.File(path, "r") as f:
        info = f[name].id.get_chunk_info(0)
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset)
        b = fh.read(1)
        fh.seek(info.byte_offset)
        fh.write(bytes([b[0] ^ 1]))


@pytest.mark.parametrize("name", ["images/labels", "images/status", "encoders/toy:vision/done"])
def test_9_a_flipped_bit_fails_the_read(tmp_path, name):
    w = make_world(tmp_path / "ev.h5", classes=6)
    _flip_first_chunk_byte(w["path"], name.replace("toy:vision", w["vision_key"]))
    with open_cache(w["path"]) as c, pytest.raises(CacheError, match="does not read back"):
        c.labels, c.status, c.done(w["vision_key"])


def test_9_changed_ids_fail_their_checksum(tmp_path):
    w = make_world(tmp_path / "ev.h5", classes=6)
    with h5py.File(w["path"], "a") as f:
        f["images/ids"][0] = "someone-else"
    with open_cache(w["path"]) as c, pytest.raises(CacheError, match="checksum"):
        c.ids


# ------------------------------------------------------------------ 11: unwritable --out -------------
def test_11_unwritable_out_is_refused_before_any_work(tmp_path, images, monkeypatch):
    import zoomshot.fit
    import zoomshot.model

    def no_work(*a, **k):
        raise AssertionError("work started before --out was checked")

    monkeypatch.setattr(zoomshot.fit, "fit_cache", no_work)
    monkeypatch.setattr(zoomshot.model, "load", no_work)
    w = make_world(tmp_path / "ev.h5", classes=6)
    make_mapping(tmp_path / "m", w["W"], mean=w["offset"])
    one_line_error(extract(images, f"{UNWRITABLE}/c.h5"), "cannot be written")
    one_line_error(zs("fit", "--cache", w["path"], "--out", f"{UNWRITABLE}/m"), "cannot be written")
    one_line_error(zs("evaluate", "--mapping", tmp_path / "m", "--cache", w["path"], "--out", f"{UNWRITABLE}/r"),
                   "cannot be written")
    one_line_error(zs("export", "--mapping", tmp_path / "m", "--labels", "x,y", "--out", f"{UNWRITABLE}/m.pt"),
                   "cannot be written")
    (tmp_path / "file").write_text("x")
    one_line_error(extract(images, tmp_path / "file" / "c.h5"), "is a file")


# ------------------------------------------------------------------ 12: damaged inputs ---------------
def test_12_truncated_mapping_is_one_line(tmp_path):
    w = make_world(tmp_path / "ev.h5", classes=6)
    make_mapping(tmp_path / "m", w["W"], mean=w["offset"])
    t = tmp_path / "m" / "mapping.safetensors"
    t.write_bytes(t.read_bytes()[:100])
    one_line_error(zs("evaluate", "--mapping", tmp_path / "m", "--cache", w["path"], "--out", tmp_path / "r"),
                   "mapping.safetensors")
    img = tmp_path / "x.png"
    img.write_bytes(image_bytes(0, "PNG"))
    one_line_error(zs("predict", img, "--mapping", tmp_path / "m", "--labels", "a,b"), "mapping.safetensors")


def test_12_damaged_shard_header_is_one_line_everywhere(tmp_path, images):
    out = tmp_path / "c.h5"
    assert extract(images, out, "--shard-rows", 3).exit_code == 0
    with open_cache(out) as c:
        key = next(iter(c.encoders))
    with h5py.File(tmp_path / "c.shards" / key / "00000.h5", "a") as f:
        f.move("image", "imagf")  # what a flipped byte in the dataset's name does
    res = zs("cache", "info", out)
    assert "INCOMPLETE" in res.output and "corrupt" in res.output
    with open_cache(out) as c, pytest.raises(CacheError, match="corrupt shard"):
        c.image(key)


# ------------------------------------------------------------------ 13: failed runs exit non-zero ----
def test_13_all_unreadable_extract_fails(tmp_path):
    root = tmp_path / "bad"
    root.mkdir()
    for i in range(3):
        (root / f"x{i}.jpg").write_bytes(b"not an image")
    one_line_error(extract(root, tmp_path / "c.h5"), "every one of the 3 images is unreadable")


def test_13_evaluate_whose_only_mapping_fits_no_cache_fails(tmp_path):
    w = make_world(tmp_path / "ev.h5", classes=6)
    make_mapping(tmp_path / "wide", np.zeros((16, 30)))
    one_line_error(zs("evaluate", "--mapping", tmp_path / "wide", "--cache", w["path"], "--out", tmp_path / "r"),
                   "fit no --cache")


# ------------------------------------------------------------------ 14, 15: resolved before writing --
@pytest.mark.parametrize("encoder,vocab,needle", [
    ("timm:no_such_model@random", None, "no model"),
    ("py:/nonexistent/plugin.py:make", None, "does not exist"),
    (VISION_PLUGIN, "no_such_vocab", "no_such_vocab"),
    ("resnet18", None, "huggingface-cli download timm/resnet18.a1_in1k"),
])
def test_14_failed_first_extract_leaves_nothing(tmp_path, images, encoder, vocab, needle, monkeypatch):
    import zoomshot.encoders

    monkeypatch.setattr(zoomshot.encoders, "_cached", lambda files: None)  # whatever this machine's hub cache holds
    out = tmp_path / "c.h5"
    args = ["--vocab", vocab] if vocab else []
    one_line_error(extract(images, out, *args, encoder=encoder), needle)
    assert not out.exists() and not (tmp_path / "c.shards").exists()
    assert extract(images, out).exit_code == 0  # the corrected rerun is not refused


def test_15_missing_weights_fail_fast_before_listing(tmp_path, monkeypatch):
    from huggingface_hub import constants

    import zoomshot.encoders

    monkeypatch.setattr(zoomshot.encoders, "_cached", lambda files: None)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    t = time.perf_counter()
    # the image source does not exist: a weights message proves the weights were checked first
    line = one_line_error(extract(tmp_path / "no-images", tmp_path / "c.h5", encoder="resnet18"),
                          "not in the local hub cache", "model.safetensors", "huggingface-cli download",
                          "@random")
    assert time.perf_counter() - t < 20
    assert line.rstrip().endswith("@random"), "the message is cut"
    res = zs("encoders", "--check", "resnet18", f"{VISION_PLUGIN}", "timm:test_vit@random")
    assert res.exit_code == 1
    lines = res.output.strip().splitlines()
    assert lines[0].startswith("resnet18: cannot load") and "loads" in lines[1] and "loads" in lines[2]


# ------------------------------------------------------------------ 16: ImageNet names ---------------
def test_16_imagenet_names_are_unique_and_old_caches_load():
    from zoomshot.model import check_labels, disambiguate_labels
    from zoomshot.vocab import load_vocabulary

    names = load_vocabulary("imagenet1k").classnames
    assert len(set(names)) == 1000 and check_labels(names) == names
    assert names[744] == "projectile, missile" and names[836] == "sunglass"
    old = list(names)
    old[744], old[836] = "missile", "sunglasses"  # what caches written before the fix hold
    fixed = disambiguate_labels(old)
    assert len(set(fixed)) == 1000 and fixed[744] == "projectile, missile"


# ------------------------------------------------------------------ 18: compute identity -------------
def test_18_resume_with_another_precision_is_refused(tmp_path, images):
    out = tmp_path / "c.h5"
    assert extract(images, out, "--shard-rows", 3, "--precision", "fp32").exit_code == 0
    with open_cache(out) as c:
        key = next(iter(c.encoders))
        assert c.encoders[key].precision == "fp32" and c.encoders[key].decode == "cpu"
    assert extract(images, out, "--precision", "bf16").exit_code == 0  # nothing left to compute: nothing mixed
    (tmp_path / "c.shards" / key / "00001.h5").unlink()  # rows left to compute
    one_line_error(extract(images, out, "--precision", "bf16"), "--precision fp32")
    assert extract(images, out, "--precision", "fp32").exit_code == 0


def test_18_decoder_is_part_of_the_identity(tmp_path):
    from dataclasses import replace

    from zoomshot.cache import EncoderEntry
    from zoomshot.extract.layout import Layout

    lay = Layout(tmp_path / "c.h5")
    entry = EncoderEntry("k", "s", "vision", 4, weights="random", precision="fp32", decode="cpu")
    lay.write_encoder(entry)
    assert lay.encoder("k") == entry
    with pytest.raises(CacheError, match="--decode cpu"):
        lay.check_encoder(replace(entry, decode="gpu"))


# ------------------------------------------------------------------ 19: float16 range ----------------
def test_19_features_beyond_float16_are_refused(tmp_path, images):
    plugin = tmp_path / "big.py"
    plugin.write_text(OVERFLOW_PLUGIN_SRC)
    out = tmp_path / "c.h5"
    one_line_error(extract(images, out, encoder=f"py:{plugin}:make"), "beyond float16", "encoder ")
    assert not list((tmp_path / "c.shards").glob("*/[0-9]*.h5")), "inf features reached a final shard"


# ------------------------------------------------------------------ bad-input matrix -----------------
def test_bad_input_matrix_never_prints_a_traceback(tmp_path, images):
    w = make_world(tmp_path / "ev.h5", classes=6)
    make_mapping(tmp_path / "m", w["W"], mean=w["offset"])
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5")
    cut = tmp_path / "cut"
    shutil.copytree(tmp_path / "m", cut)
    (cut / "mapping.safetensors").write_bytes(b"\x00" * 10)
    img = tmp_path / "x.png"
    img.write_bytes(image_bytes(0, "PNG"))
    commands = [
        ["extract", "--images", images, "--encoder", VISION_PLUGIN, "--out", f"{UNWRITABLE}/c.h5"],
        ["extract", "--images", images, "--encoder", VISION_PLUGIN, "--out", tmp_path],
        ["extract", "--images", tmp_path / "none", "--encoder", VISION_PLUGIN, "--out", tmp_path / "c.h5"],
        ["extract", "--images", images, "--encoder", "nope:x", "--out", tmp_path / "c.h5"],
        ["fit", "--cache", junk, "--out", tmp_path / "f"],
        ["fit", "--cache", w["path"], "--out", f"{UNWRITABLE}/m"],
        ["evaluate", "--mapping", cut, "--cache", w["path"], "--out", tmp_path / "r"],
        ["evaluate", "--mapping", tmp_path / "m", "--cache", junk, "--out", tmp_path / "r"],
        ["evaluate", "--mapping", tmp_path / "m", "--cache", w["path"], "--out", f"{UNWRITABLE}/r"],
        ["predict", img, "--mapping", cut, "--labels", "a,b"],
        ["export", "--mapping", tmp_path / "m", "--labels", "a,b", "--out", f"{UNWRITABLE}/m.pt"],
        ["export", "--mapping", cut, "--labels", "a,b", "--out", tmp_path / "m.pt"],
        ["sweep", "--cache", w["path"], "--eval", w["path"], "--out", f"{UNWRITABLE}/s"],
        ["cache", "info", junk],
        ["encoders", "--check", "nope:x"],
    ]
    for args in commands:
        res = zs(*args)
        assert res.exit_code != 0, (args, res.output)
        assert "Traceback" not in res.output, (args, res.output)
        assert res.exception is None or isinstance(res.exception, SystemExit), (args, repr(res.exception))
