"""`zoomshot.load`: the zero-shot classifier gives the logits `zs evaluate` computes from a cache.

The world: generated PNG/JPEG images in class folders, a tiny random ViT (timm test_vit) and a tiny
open_clip model whose random weights are saved to files (so `load` rebuilds the very models the
cache was extracted with), a cache written by `zs extract` with both encoders' features and a
vocabulary, and a mapping fitted on it by `zoomshot.fit` (closed-form ridge, the fastest method).
conftest's `use_world` builds it once per test session for every use-the-model test.
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

import zoomshot
from conftest import USE_CLASSES, USE_TEMPLATES, USE_VOCAB, UseWorld, pil_images
from zoomshot.errors import ZsError

CLASSES, TEMPLATES, VOCAB = USE_CLASSES, USE_TEMPLATES, USE_VOCAB


@pytest.fixture(scope="module")
def world(use_world) -> UseWorld:
    return use_world


@pytest.fixture(scope="module")
def clf(world):
    return zoomshot.load(world.mapping).set_labels(CLASSES, templates=TEMPLATES)


def cached_logits(world: UseWorld) -> np.ndarray:
    """What `zs evaluate` scores: the cache's vision features, mapped, against the cache's classifier."""
    from zoomshot.cache import open_cache
    from zoomshot.evaluate import zero_shot_logits
    from zoomshot.mapping import load_mapping

    with open_cache(world.cache) as c:
        feats, tv = c.image(world.vision_key), c.text(world.clip_key, VOCAB)
    return zero_shot_logits(load_mapping(world.mapping).forward(feats), tv.classifier)


def test_set_labels_rebuilds_the_cache_classifier_with_clips_text_tower(world, clf):
    from zoomshot.cache import open_cache

    with open_cache(world.cache) as c:
        tv = c.text(world.clip_key, VOCAB)
    assert clf.labels == list(CLASSES) == tv.names
    np.testing.assert_allclose(clf.text_classifier.numpy(), tv.classifier, atol=1e-5)


def test_forward_gives_the_logits_zs_evaluate_computes_from_the_cache(world, clf):
    from zoomshot.evaluate import evaluate

    with torch.inference_mode():
        logits = clf(pil_images(world.paths)).numpy()
    assert logits.shape == (len(world.paths), len(CLASSES))
    cos = logits / clf.logit_scale
    ref = cached_logits(world)
    # The cache stores features in float16 (relative error 2^-11 ~ 5e-4 per feature); allow twice that.
    np.testing.assert_allclose(cos, ref, atol=1e-3)
    srt = np.sort(ref, axis=1)
    clear = srt[:, -1] - srt[:, -2] > 2e-3  # rows whose top-1 the tolerance above cannot flip
    assert clear.sum() >= len(ref) // 2
    assert (cos.argmax(1)[clear] == ref.argmax(1)[clear]).all()

    records, skipped = evaluate([str(world.mapping)], [str(world.cache)])
    assert skipped == []
    rec = next(r for r in records if r["mapping"] is not None)
    live_acc = float((cos.argmax(1) == world.labels).mean())
    assert abs(rec["metrics"]["acc1"] - live_acc) <= (~clear).sum() / len(ref)


def test_folded_mapping_matches_mapping_forward_in_float32(world, clf):
    from zoomshot.evaluate import zero_shot_logits
    from zoomshot.mapping import load_mapping

    batch = clf.as_batch(pil_images(world.paths))
    with torch.inference_mode():
        feats = clf.encoder.encode_image(batch).numpy()
        logits = clf(batch).numpy()
        emb = clf.embed(batch).numpy()
    m = load_mapping(world.mapping)
    np.testing.assert_allclose(emb, m.forward(feats), atol=2e-5)
    np.testing.assert_allclose(logits / 100.0, zero_shot_logits(m.forward(feats), clf.text_classifier.numpy()),
                               atol=2e-5)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_tensor_pil_and_single_image_inputs_agree(world, clf):
    imgs = pil_images(world.paths[:3])
    with torch.inference_mode():
        a = clf(imgs)
        b = clf(torch.stack([clf.preprocess(im.convert("RGB")) for im in imgs]))
        c = clf(imgs[0])
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(c, a[:1])
    top = clf.top_k(imgs, k=2)
    assert len(top) == 3 and all(len(t) == 2 for t in top)
    assert top[0][0][0] == CLASSES[int(a[0].argmax())]
    assert top[0][0][1] == pytest.approx(float(a[0].softmax(-1).max()), abs=1e-6)


def test_labels_from_cache_need_no_clip_model(world, monkeypatch):
    from zoomshot import model as model_mod

    clf = zoomshot.load(world.mapping)
    monkeypatch.setattr(model_mod, "build_role_encoder", lambda *a, **k: pytest.fail("a model was built"))
    clf.set_labels_from_cache(world.cache)
    assert clf.labels == list(CLASSES)
    with torch.inference_mode():
        cos = clf(pil_images(world.paths)).numpy() / clf.logit_scale
    np.testing.assert_allclose(cos, cached_logits(world), atol=1e-3)


def test_weights_override_and_random_weights_rebuild_the_same_draw(world, tmp_path):
    from zoomshot.mapping import load_mapping, save_mapping

    m = load_mapping(world.mapping)
    m.run["source"]["weights"] = "random"
    save_mapping(m, tmp_path / "random-source")
    x = torch.randn(2, 3, 160, 160)
    with torch.inference_mode():
        ref = zoomshot.load(world.mapping).embed(x)  # the world's weights file holds the test_vit@random draw
        torch.testing.assert_close(zoomshot.load(tmp_path / "random-source").embed(x), ref)
        same = zoomshot.load(tmp_path / "random-source", weights=str(world.root / "test_vit.safetensors"))
        torch.testing.assert_close(same.embed(x), ref)
    from safetensors.torch import load_file, save_file

    state = {k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v
             for k, v in load_file(str(world.root / "test_vit.safetensors")).items()}
    save_file(state, str(tmp_path / "other.safetensors"))
    with torch.inference_mode():
        other = zoomshot.load(tmp_path / "random-source", weights=str(tmp_path / "other.safetensors")).embed(x)
    assert not torch.allclose(other, ref, atol=1e-3)


def test_errors_are_one_line(world, tmp_path):
    from zoomshot.mapping import load_mapping, save_mapping

    clf = zoomshot.load(world.mapping)
    with pytest.raises(ZsError, match="no labels yet"):
        clf(torch.zeros(1, 3, 160, 160))
    with pytest.raises(ZsError, match="not unique"):
        clf.set_labels(["cat", "cat"])
    with pytest.raises(ZsError, match="no vocabulary 'nope'"):
        clf.set_labels_from_cache(world.cache, vocab="nope")
    m = load_mapping(world.mapping)
    m.run["source"] = {"key": "synth_vision", "spec": "synth:vision", "dim": 64, "weights": "planted"}
    save_mapping(m, tmp_path / "unbuildable")
    with pytest.raises(ZsError, match="cannot build the mapping's source") as e:
        zoomshot.load(tmp_path / "unbuildable")
    assert "\n" not in str(e.value)
    with pytest.raises(ZsError, match="not a mapping folder"):
        zoomshot.load(tmp_path)


def test_import_zoomshot_stays_light():
    code = "import sys, zoomshot; assert callable(zoomshot.load); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
