"""`zs extract`: the cache contract, decode-once for several encoders, plug-ins, vocabularies,
refusals, adding encoders, WebDataset input, --dataset, and the GPU decode path's pieces on CPU."""
from __future__ import annotations

import json
import threading
import zlib

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import (CLIP_PLUGIN, RESIZABLE_PLUGIN_SRC, VISION_PLUGIN, folder_to_webdataset, make_flat_folder,
                         make_image_folder, register_tiny_clip)
from zoomshot.cache import STATUS_OK, STATUS_UNREADABLE, open_cache
from zoomshot.cli import app
from zoomshot.encoders import build_encoder
from zoomshot.errors import ZsError
from zoomshot.extract.runner import ExtractConfig, extract
from zoomshot.sources import decode_rgb
from zoomshot.vocab import default_templates

VIT = "timm:test_vit@random"
runner = CliRunner()


@pytest.fixture(scope="module")
def clip_spec():
    return register_tiny_clip()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("images") / "imgs"
    return make_image_folder(root, classes=("cat", "dog", "fish"), per_class=3,
                             corrupt={"cat": ["truncated", "empty"], "fish": ["notimage"]})


def zs(*args):
    res = runner.invoke(app, [str(a) for a in args])
    return res


def same_encoder(spec):
    """The encoder extract builds for spec: @random weights come from a seed fixed by the spec."""
    base = spec.split("@")[0]
    torch.manual_seed(zlib.crc32(base.encode()))
    return build_encoder(spec)


def test_round_trip_two_encoders_follow_the_cache_contract(tmp_path, images, clip_spec):
    out = tmp_path / "c.h5"
    res = zs("extract", "--images", images, "--encoder", VIT, "--encoder", clip_spec, "--out", out,
             "--batch-size", 4, "--workers", 1)
    assert res.exit_code == 0, res.output
    assert "wrote" in res.output and "3 unreadable" in res.output
    with open_cache(out) as c:
        ids = c.ids
        assert ids == sorted(ids) and len(ids) == 12
        assert c.class_names == ["cat", "dog", "fish"]
        assert c.labels.tolist() == [0] * 5 + [1] * 3 + [2] * 4
        bad = {i for i, x in enumerate(ids) if "bad_" in x}
        assert {i for i, s in enumerate(c.status) if s != STATUS_OK} == bad
        assert all(c.status[i] == STATUS_UNREADABLE and c.errors[i] for i in bad)
        assert all(not c.errors[i] for i in range(12) if i not in bad)
        encs = c.encoders
        assert set(encs) == {"test_vit", "tiny-clip"}
        vit, clip = encs["test_vit"], encs["tiny-clip"]
        assert (vit.family, vit.weights, vit.normalized, vit.spec) == ("vision", "random", False, "timm:test_vit")
        assert (clip.family, clip.dim, clip.normalized) == ("clip", 16, True)
        assert vit.preprocess["library"] == "timm" and "torch" in vit.versions
        good = sorted(set(range(12)) - bad)
        assert c.usable_rows("test_vit", "tiny-clip").tolist() == good
        assert c.f["encoders/test_vit/image"].is_virtual
        assert c.f["encoders/test_vit/image"].dtype == np.float16
        fv = c.image("test_vit")
        fc = c.image("tiny-clip")
        assert np.isnan(fv[sorted(bad)]).all() and not np.isnan(fv[good]).any()
        t = c.text("tiny-clip", "classes")
        assert t.names == ["cat", "dog", "fish"] and t.templates == default_templates()
        assert t.emb.shape == (3, len(default_templates()), 16) and t.classifier.shape == (3, 16)
    # Features are the encoder's own outputs for those images (float16 on disk).
    for spec, feats in ((VIT, fv), (clip_spec, fc)):
        enc = same_encoder(spec)
        x = torch.stack([enc.preprocess(decode_rgb((images / ids[i]).read_bytes())) for i in good])
        with torch.inference_mode():
            ref = enc.encode_image(x).numpy()
        np.testing.assert_allclose(feats[good], ref, atol=2e-3 * np.abs(ref).max(), rtol=2e-3)
    # The text tower's embeddings of the prompts.
    enc = same_encoder(clip_spec)
    with torch.inference_mode():
        ref = enc.encode_text([default_templates()[0].replace("{c}", "dog").replace("{}", "dog")]).numpy()
    np.testing.assert_allclose(t.emb[1, 0], ref[0], atol=2e-3)


def test_several_encoders_decode_each_image_once(tmp_path, images, monkeypatch, clip_spec):
    import zoomshot.extract.loader as loader

    calls = []
    real = loader.decode_rgb
    monkeypatch.setattr(loader, "decode_rgb", lambda data, *a: calls.append(1) or real(data, *a))
    s = extract(ExtractConfig(out=str(tmp_path / "c.h5"), encoders=[VIT, clip_spec, VISION_PLUGIN],
                              images=str(images), batch_size=5, workers=0, progress=False))
    assert len(calls) == 12 and s.decoded == 12
    assert s.computed == {"test_vit": 9, "tiny-clip": 9, s.encoders[2]: 9}


def test_plugins_from_a_test_file_flat_folder_and_custom_vocabulary(tmp_path):
    flat = make_flat_folder(tmp_path / "flat", n=5, corrupt=("truncated",))
    vocab = tmp_path / "animals.json"
    vocab.write_text(json.dumps({"classnames": ["cat", "dog"], "templates": ["a {c}.", "the {c}!"]}))
    out = tmp_path / "c.h5"
    res = zs("extract", "--images", flat, "--encoder", VISION_PLUGIN, "--encoder", CLIP_PLUGIN,
             "--vocab", vocab, "--out", out, "--batch-size", 2, "--workers", 0)
    assert res.exit_code == 0, res.output
    with open_cache(out) as c:
        assert c.labels.tolist() == [-1] * 6 and c.class_names is None
        assert c.status.tolist() == [1, 0, 0, 0, 0, 0]  # bad_truncated.jpg sorts first
        keys = list(c.encoders)
        clip_key = [k for k in keys if c.encoder(k).family == "clip"][0]
        assert c.vocabularies(clip_key) == ["animals"]
        t = c.text(clip_key)
        assert t.templates == ["a {c}.", "the {c}!"] and t.emb.shape == (2, 2, 16)
        assert not np.isnan(c.image(keys[0], c.usable_rows(*keys))).any()
    res = zs("extract", "--images", flat, "--encoder", CLIP_PLUGIN, "--vocab", "classes", "--out", tmp_path / "d.h5")
    assert res.exit_code == 2 and "needs a labelled source" in res.output


def test_mismatches_are_refused_through_extract(tmp_path, images):
    out = tmp_path / "c.h5"
    plugin = tmp_path / "plug.py"
    plugin.write_text(RESIZABLE_PLUGIN_SRC.format(dim=8))
    spec = f"py:{plugin}:make"
    assert zs("extract", "--images", images, "--encoder", spec, "--out", out, "--workers", 0).exit_code == 0
    # another image list
    res = zs("extract", "--images", images, "--fraction", 0.5, "--encoder", spec, "--out", out)
    assert res.exit_code == 2 and "different image list" in res.output
    # same key, other weights
    res = zs("extract", "--images", images, "--encoder", spec + "@random", "--out", out)
    assert res.exit_code == 2 and "weights" in res.output
    res = zs("extract", "--images", images, "--encoder", "vit_b61", "--out", tmp_path / "x.h5")
    assert res.exit_code == 2 and "did you mean" in res.output
    res = zs("extract", "--images", images, "--encoder", VIT, "--out", tmp_path / "x.txt")
    assert res.exit_code == 2 and ".h5" in res.output
    # A cache another tool wrote (CacheWriter) with this key at dim 8, no rows yet; the plug-in now gives 9.
    from zoomshot.cache import CacheWriter, EncoderEntry
    from zoomshot.sources import open_source

    other = tmp_path / "other.h5"
    src = open_source(str(images))
    with CacheWriter(other, src.ids, src.labels, src.class_names) as w:
        w.add_encoder(EncoderEntry(key="plug", spec=spec, family="vision", dim=8))  # the plug-in's name
    plugin.write_text(RESIZABLE_PLUGIN_SRC.format(dim=9))
    res = zs("extract", "--images", images, "--encoder", spec, "--out", other)
    assert res.exit_code == 2 and "dim 8" in res.output and "9" in res.output
    assert len(res.output.strip().splitlines()) == 1
    with open_cache(other) as c:  # the refused run changed nothing
        assert c.encoder("plug").dim == 8 and not c.done("plug").any()



def test_adding_an_encoder_keeps_the_first_and_a_finished_rerun_loads_no_model(tmp_path, images, monkeypatch):
    out = tmp_path / "c.h5"
    first = extract(ExtractConfig(out=str(out), encoders=[VISION_PLUGIN], images=str(images), workers=0,
                                  progress=False))
    with open_cache(out) as c:
        before = c.image(first.encoders[0])
    s = extract(ExtractConfig(out=str(out), encoders=[VISION_PLUGIN, VIT], images=str(images), workers=0,
                              progress=False))
    assert s.computed == {first.encoders[0]: 0, "test_vit": 9}
    with open_cache(out) as c:
        assert set(c.encoders) == {first.encoders[0], "test_vit"}
        np.testing.assert_array_equal(c.image(first.encoders[0]), before)

    import zoomshot.encoders

    def no_build(*a, **k):
        raise AssertionError("a finished rerun must not build a model")

    monkeypatch.setattr(zoomshot.encoders, "build_encoder", no_build)
    s = extract(ExtractConfig(out=str(out), encoders=[VISION_PLUGIN, VIT], images=str(images), progress=False))
    assert s.entry_written and s.decoded == 0 and sum(s.computed.values()) == 0


def test_fraction_and_seed_select_the_same_subset(tmp_path, images):
    a = extract(ExtractConfig(out=str(tmp_path / "a.h5"), encoders=[VISION_PLUGIN], images=str(images),
                              fraction=0.5, seed=3, workers=0, progress=False))
    assert a.rows < 12
    with open_cache(tmp_path / "a.h5") as c:
        from zoomshot.sources import open_source, subset_fraction

        assert c.ids == subset_fraction(open_source(str(images)), 0.5, 3).ids


def test_webdataset_gives_the_same_features_as_the_folder(tmp_path, images):
    folder_to_webdataset(images, str(tmp_path / "wds" / "part-{:03d}.tar"), shards=3)
    kw = dict(encoders=[VIT], workers=0, progress=False, batch_size=4)
    extract(ExtractConfig(out=str(tmp_path / "f.h5"), images=str(images), **kw))
    extract(ExtractConfig(out=str(tmp_path / "w.h5"), images=str(tmp_path / "wds" / "part-{000..002}.tar"), **kw))
    with open_cache(tmp_path / "f.h5") as f, open_cache(tmp_path / "w.h5") as w:
        assert w.ids == [i.rsplit(".", 1)[0] for i in f.ids]
        assert w.labels.tolist() == f.labels.tolist() and w.status.tolist() == f.status.tolist()
        np.testing.assert_array_equal(w.image("test_vit"), f.image("test_vit"))


def test_dataset_option_reads_a_local_copy_and_names_its_vocabulary(tmp_path):
    make_image_folder(tmp_path / "eurosat" / "2750", classes=("AnnualCrop", "Forest"), per_class=2)
    out = tmp_path / "e.h5"
    res = zs("extract", "--dataset", "eurosat", "--root", tmp_path, "--encoder", CLIP_PLUGIN, "--out", out,
             "--workers", 0)
    assert res.exit_code == 0, res.output
    with open_cache(out) as c:
        key = next(iter(c.encoders))
        assert c.vocabularies(key) == ["eurosat"] and c.labels.tolist() == [0, 0, 1, 1]
    res = zs("extract", "--dataset", "cifar10", "--root", tmp_path, "--encoder", VIT, "--out", tmp_path / "x.h5")
    assert res.exit_code == 2 and "cifar-10-batches-py" in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_gpu_decode_path_pieces_match_the_pil_path_on_cpu(images):
    """--decode gpu needs CUDA; its parts (raw bytes from workers, batched JPEG decode with per-image
    fallback, the encoder's transform rebuilt for tensors) run on CPU tensors here."""
    from zoomshot.extract.devices import gpu_decode, tensor_transform
    from zoomshot.extract.loader import Batch, DecodedBatches
    from zoomshot.sources import open_source

    src = open_source(str(images))
    enc = same_encoder(VIT)
    batch = [Batch(0, 0, len(src), ("k",))]
    cpu = DecodedBatches(src, batch, [enc.preprocess])[0]
    raw = DecodedBatches(src, batch, [], gpu=True)[0]
    imgs, errs = gpu_decode(raw["raw"], "cpu")
    ok = raw["ok"] & np.array([i is not None for i in imgs])
    assert ok.tolist() == cpu["ok"].tolist()
    assert all(errs[j] or raw["errors"][j] for j in np.flatnonzero(~ok))
    fallback = [j for j in np.flatnonzero(~ok) if raw["ok"][j]]  # JPEG bytes that failed in decode_jpeg and PIL
    assert fallback and all(errs[j] == cpu["errors"][j] for j in fallback)  # told as the CPU path tells them
    tf = tensor_transform(enc.preprocess, "test_vit")
    x = torch.stack([tf(i) for i in imgs if i is not None])
    assert x.shape == cpu["tensors"][0].shape
    with torch.inference_mode():
        a, b = enc.encode_image(x), enc.encode_image(cpu["tensors"][0])
    cos = torch.nn.functional.cosine_similarity(a, b)
    assert cos.min() > 0.97, cos
    with pytest.raises(ZsError, match="--decode cpu"):
        tensor_transform(lambda img: img, "odd")


def test_gpu_only_options_are_refused_on_cpu(tmp_path, images):
    res = zs("extract", "--images", images, "--encoder", VIT, "--out", tmp_path / "c.h5", "--decode", "gpu",
             "--device", "cpu")
    assert res.exit_code == 2 and "CUDA" in res.output


@pytest.mark.parametrize("option, value, message", [("--shard-rows", 0, "--shard-rows must be at least 1"),
                                                    ("--shard-rows", -3, "--shard-rows must be at least 1"),
                                                    ("--workers", -1, "--workers must be 0"),
                                                    ("--precision", "fp8", "--precision 'fp8'")])
def test_bad_numbers_are_refused_before_any_file_is_written(tmp_path, images, option, value, message):
    out = tmp_path / "c.h5"
    res = zs("extract", "--images", images, "--encoder", VIT, "--out", out, option, value)
    assert res.exit_code == 2 and message in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1
    assert not out.exists() and not (tmp_path / "c.shards").exists()


def test_an_encoder_another_tool_wrote_is_kept_when_extract_adds_one(tmp_path, images):
    from zoomshot.cache import CacheWriter, EncoderEntry
    from zoomshot.sources import open_source

    out = tmp_path / "c.h5"
    src = open_source(str(images))
    row = next(i for i, k in enumerate(src.ids) if k.startswith("dog/"))  # a readable image
    feats = np.random.default_rng(0).normal(size=(len(src), 4)).astype(np.float16)
    with CacheWriter(out, src.ids, src.labels, src.class_names) as w:
        w.add_encoder(EncoderEntry(key="other", spec="other", family="vision", dim=4))
        w.write_rows("other", 0, feats)
        w.mark_unreadable([row], ["judged unreadable by the other tool"])
    s = extract(ExtractConfig(out=str(out), encoders=[VIT], images=str(images), workers=0, progress=False))
    assert s.entry_written
    with open_cache(out) as c:
        assert set(c.encoders) == {"other", "test_vit"}
        np.testing.assert_array_equal(c.image("other").astype(np.float16), feats)
        assert c.status[row] == STATUS_UNREADABLE and c.errors[row] == "judged unreadable by the other tool"
        bad = [i for i, e in enumerate(c.errors) if e and i != row]
        assert len(bad) == 3 and all(c.status[i] == STATUS_UNREADABLE for i in bad)


def _convert_to_rgb(img):  # named as open_clip names its RGB conversion
    return img.convert("RGB")


def test_cpu_batches_are_bitwise_the_per_image_transform(images):
    """The CPU path runs ToTensor and Normalize once per batch: the tensors are the per-image
    transform's, bit for bit, for timm's and an open_clip-like transform; a plug-in's callable runs whole."""
    from torchvision import transforms as T

    from zoomshot.extract.loader import Batch, DecodedBatches, batch_steps
    from zoomshot.sources import open_source

    src = open_source(str(images))
    clip_like = T.Compose([T.Resize(40, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(40), _convert_to_rgb,
                           T.ToTensor(), T.Normalize((0.48, 0.46, 0.41), (0.27, 0.26, 0.28))])
    plugin = T.Compose([T.Resize(24), T.CenterCrop(24), T.ToTensor(), T.Lambda(lambda x: x * 2)])
    tfs = [same_encoder(VIT).preprocess, clip_like, plugin]
    assert [batch_steps(t) is not None for t in tfs] == [True, True, False]
    item = DecodedBatches(src, [Batch(0, 0, len(src), ("k",))], tfs)[0]
    good = np.flatnonzero(item["ok"])
    assert 0 < len(good) < len(src)
    for tf, x in zip(tfs, item["tensors"]):
        ref = torch.stack([tf(decode_rgb(src.read(int(i)))) for i in good])
        assert x.is_contiguous() and x.dtype == ref.dtype and torch.equal(x, ref)


def test_a_failing_cpu_forward_is_a_one_line_error_and_keeps_the_written_rows(tmp_path, images):
    plugin = tmp_path / "failing.py"
    plugin.write_text(RESIZABLE_PLUGIN_SRC.format(dim=4).replace(
        "    def encode_image(self, x):\n",
        "    calls = 0\n    def encode_image(self, x):\n        P.calls += 1\n"
        "        if P.calls == 3:\n            raise RuntimeError('boom')\n"))
    out = tmp_path / "f.h5"
    res = zs("extract", "--images", images, "--encoder", f"py:{plugin}:make", "--out", out, "--batch-size", 2,
             "--quiet")
    assert res.exit_code != 0 and "the forward failed: RuntimeError: boom" in res.output
    assert "Traceback" not in res.output
    assert list(out.with_suffix(".shards").rglob("*.partial*")), list(out.with_suffix(".shards").rglob("*"))
    seen = []  # the forward threads' torch thread count did not leak into threads started later
    t = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    t.start()
    t.join()
    assert seen == [torch.get_num_threads()]


def test_a_cache_of_many_shards_reads_under_a_low_open_file_limit(tmp_path):
    """Reads open one shard file at a time: a cache of more shards than free file handles reads."""
    import os
    import resource

    images = make_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=20)
    out = tmp_path / "c.h5"
    s = extract(ExtractConfig(out=str(out), encoders=[VISION_PLUGIN], images=str(images), batch_size=4,
                              shard_rows=1, workers=0, progress=False))
    assert s.shards[2] == 40
    with open_cache(out) as c:
        whole = c.image(s.encoders[0])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 12, hard))
    try:
        with open_cache(out) as c:
            assert "virtual over shards" in c.info()
            np.testing.assert_array_equal(c.image(s.encoders[0]), whole)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
