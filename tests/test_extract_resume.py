"""Crash safety: runs killed with SIGKILL at several points resume to exactly the cache an
uninterrupted run writes; a second writer is refused; corrupt and missing shards are reported.

Killed runs are forked children that SIGKILL themselves at a named point (ZS_EXTRACT_FAULT,
see zoomshot.extract.faults), or are SIGKILLed from here while paused mid-shard.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import signal
import time

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import CLIP_PLUGIN, RESIZABLE_PLUGIN_SRC, make_image_folder
from zoomshot.cache import CacheError, open_cache
from zoomshot.cli import app
from zoomshot.errors import ZsError
from zoomshot.extract.layout import Layout
from zoomshot.extract.runner import ExtractConfig, extract

VIT = "timm:test_vit@random"
ENCODERS = [VIT, CLIP_PLUGIN]
runner = CliRunner()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    # 15 images (2 unreadable), shards of 6 rows: 3 shards, batches of 4 + 2 rows per shard.
    return make_image_folder(tmp_path_factory.mktemp("img") / "imgs", classes=("a", "b", "c"), per_class=4,
                             corrupt={"a": ["truncated"], "c": ["notimage", "empty"]})


def config(out, images, **kw) -> ExtractConfig:
    return ExtractConfig(out=str(out), encoders=ENCODERS, images=str(images), batch_size=4, shard_rows=6,
                         workers=0, progress=False, **kw)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, images):
    out = tmp_path_factory.mktemp("ref") / "ref.h5"
    s = extract(config(out, images))
    assert s.entry_written and s.shards == (0, 3, 3)
    return out, s


def snapshot(path) -> dict:
    with open_cache(path) as c:
        snap = {"ids": c.ids, "labels": c.labels.tolist(), "status": c.status.tolist(), "errors": c.errors,
                "names": c.class_names}
        for k, e in c.encoders.items():
            snap[k] = (e.attrs(), c.done(k).tolist(), c.image(k, dtype=np.float16))
            for v in c.vocabularies(k):
                t = c.text(k, v)
                snap[f"{k}/{v}"] = (t.names, t.templates, t.emb, t.classifier)
    return snap


def assert_same_cache(a, b):
    sa, sb = snapshot(a), snapshot(b)
    assert sa.keys() == sb.keys()
    for k in sa:
        va, vb = sa[k], sb[k]
        if isinstance(va, tuple):
            for x, y in zip(va, vb):
                if isinstance(x, np.ndarray):
                    assert x.dtype == y.dtype and np.array_equal(x, y, equal_nan=True), k  # bitwise
                else:
                    assert x == y, k
        else:
            assert va == vb, k


def rows_already_written(out) -> dict[str, int]:
    """Readable rows the killed run left in final and partial shards, per encoder."""
    lay = Layout(out)
    m = lay.read_manifest()
    got = {}
    for key in lay.encoder_keys():
        n = 0
        for s in range(m.shards):
            final, partial = lay.shard_path(key, s), lay.partial_path(key, s)
            if final.exists():
                with h5py.File(final) as f:
                    n += int(f["done"][()].sum())
            elif partial.exists():
                with h5py.File(partial) as f:
                    n += int(f["done"][: int(f.attrs["rows_done"]) - m.bounds(s)[0]].sum())
        got[key] = n
    return got


def copy_cache(entry, folder):
    """A copy of a cache: the entry file and its shard folder move together, under the same name."""
    out = folder / entry.name
    shutil.copy(entry, out)
    shutil.copytree(Layout(entry).root, Layout(out).root)
    return out


def _child(cfg, fault, ready):
    import torch

    # GNU OpenMP's thread pool does not survive fork: a forked child that computes with it hangs.
    torch.set_num_threads(1)
    os.environ["ZS_EXTRACT_FAULT"] = fault
    os.environ["ZS_EXTRACT_FAULT_READY"] = ready
    try:
        extract(cfg)
    finally:
        os._exit(3)  # reached only when the fault point was never hit


def start_child(cfg, fault, ready="") -> mp.Process:
    p = mp.get_context("fork").Process(target=_child, args=(cfg, fault, str(ready)), daemon=True)
    p.start()
    return p


def wait_paused(p: mp.Process, ready) -> None:
    deadline = time.time() + 60
    while not os.path.exists(ready):
        assert time.time() < deadline and p.is_alive(), "the child never reached its pause point"
        time.sleep(0.1)


def join_killed(p: mp.Process) -> None:
    p.join(60)
    if p.exitcode is None:
        p.kill()
    assert p.exitcode == -signal.SIGKILL


@pytest.mark.parametrize("fault", ["batch_written:1", "batch_written:5", "shard_complete:2", "shard_final:3",
                                   "entry_written:1"])
def test_killed_run_resumes_to_the_uninterrupted_cache(tmp_path, images, reference, fault):
    ref, ref_summary = reference
    out = tmp_path / "c.h5"
    join_killed(start_child(config(out, images), fault))
    assert not out.exists()  # the entry file appears only complete
    before = rows_already_written(out)
    s = extract(config(out, images))
    assert s.entry_written
    # Nothing written before the kill is computed again; nothing is missing.
    for key, n in ref_summary.computed.items():
        assert s.computed[key] + before.get(key, 0) == n, (key, s.computed, before)
    assert_same_cache(out, ref)
    assert not list(Layout(out).root.rglob("*.partial"))


def test_paused_writer_refuses_a_second_then_resumes_after_sigkill(tmp_path, images, reference):
    out = tmp_path / "c.h5"
    ready = tmp_path / "paused"
    p = start_child(config(out, images), "batch_written:3:pause", ready)
    wait_paused(p, ready)
    res = runner.invoke(app, ["extract", "--images", str(images), "--encoder", VIT, "--encoder", CLIP_PLUGIN,
                              "--out", str(out), "--workers", "0"])
    assert res.exit_code == 2
    assert "being written by another zs extract" in res.output and len(res.output.strip().splitlines()) == 1
    os.kill(p.pid, signal.SIGKILL)
    join_killed(p)
    assert rows_already_written(out)["test_vit"] > 0
    res = runner.invoke(app, ["cache", "info", str(out)])
    assert res.exit_code == 2 and "unfinished" in res.output and "partial" in res.output
    extract(config(out, images))
    assert_same_cache(out, reference[0])


def test_unfinished_shards_are_reported_not_read_as_features(tmp_path, images, reference):
    out = copy_cache(reference[0], tmp_path)
    lay = Layout(out)
    os.replace(lay.shard_path("test_vit", 1), lay.partial_path("test_vit", 1))
    res = runner.invoke(app, ["cache", "info", str(out)])
    assert res.exit_code == 0
    assert "missing shard files" in res.output and "2 of 3 shards final, 1 partial" in res.output
    with open_cache(out) as c, pytest.raises(CacheError, match="missing shard files"):
        c.image("test_vit")
    extract(config(out, images))  # a rerun redoes the shard (its partial file is whole: resumes at its end)
    assert_same_cache(out, reference[0])


def test_a_flipped_byte_in_a_shard_is_reported_naming_the_file(tmp_path, images, reference):
    out = copy_cache(reference[0], tmp_path)
    shard = Layout(out).shard_path("test_vit", 2)
    with h5py.File(shard) as f:
        where = f["image"].id.get_chunk_info(0).byte_offset + 10
    data = bytearray(shard.read_bytes())
    data[where] ^= 0xFF
    shard.write_bytes(bytes(data))
    with open_cache(out) as c:
        c.image(f"{next(k for k in c.encoders if k != 'test_vit')}")  # the other encoder still reads
        with pytest.raises(CacheError) as e:
            c.image("test_vit")
    assert str(shard) in str(e.value) and "corrupt" in str(e.value)
    # a shard whose header is destroyed does not open at all
    data = bytearray(shard.read_bytes())
    data[:64] = b"\0" * 64
    shard.write_bytes(bytes(data))
    with open_cache(out) as c, pytest.raises(CacheError, match="corrupt shard files"):
        c.image("test_vit", rows=np.arange(3))


def test_second_writer_refused_by_the_library_too(tmp_path, images):
    out = tmp_path / "c.h5"
    ready = tmp_path / "paused"
    p = start_child(config(out, images), "batch_written:1:pause", ready)
    wait_paused(p, ready)
    try:
        with pytest.raises(ZsError, match="being written by another"):
            extract(config(out, images))
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.join(30)


def test_resuming_with_a_changed_encoder_is_refused(tmp_path, images):
    plugin = tmp_path / "plug.py"
    plugin.write_text(RESIZABLE_PLUGIN_SRC.format(dim=8))
    cfg = ExtractConfig(out=str(tmp_path / "c.h5"), encoders=[f"py:{plugin}:make"], images=str(images),
                        batch_size=4, shard_rows=6, workers=0, progress=False)
    join_killed(start_child(cfg, "batch_written:2"))
    plugin.write_text(RESIZABLE_PLUGIN_SRC.format(dim=9))
    with pytest.raises(CacheError, match="dim=8"):
        extract(cfg)
    plugin.write_text(RESIZABLE_PLUGIN_SRC.format(dim=8))
    assert extract(cfg).entry_written

