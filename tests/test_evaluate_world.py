"""A tiny hand-built evaluation world for the evaluate tests: caches written with CacheWriter and
mappings saved with save_mapping, so evaluate is checked on any conforming cache, not only synth's.

In this world a vision feature v maps exactly onto the clean CLIP direction z = W v; CLIP's stored
image feature is n(z + clip-only noise), so a mapping with the true W agrees with CLIP often but not
always, and a random W does not.
"""
from __future__ import annotations

import numpy as np

from zoomshot.cache import CacheWriter, EncoderEntry, ensemble_classifier, safe_key
from zoomshot.mapping import Mapping, save_mapping

CLIP_SPEC = "toy:clip"
VISION_SPEC = "toy:vision"


def make_world(path, *, n=150, classes=6, d=16, dv=20, seed=0, sample_seed=None, clip_image=True, vocabs=None,
               class_names=True, unreadable=(), not_done=(), unlabelled=(), vision_spec=VISION_SPEC,
               clip_spec=CLIP_SPEC, weights="random", clip_noise=0.6):
    """Write a cache at path; return its ground truth (W, classifier, labels, key names).

    `seed` fixes the world (W, class texts, offset); `sample_seed` (default: seed) the images."""
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(d, dv))
    emb = rng.normal(size=(classes, 3, d))
    classifier = ensemble_classifier(emb)
    offset = 3 * rng.normal(size=dv)  # the mapping's mean removes it
    rng = np.random.default_rng(seed if sample_seed is None else (seed, sample_seed))
    labels = rng.integers(0, classes, n).astype(np.int32)
    labels[list(unlabelled)] = -1
    z = 2.0 * classifier[np.maximum(labels, 0)] + 0.9 * rng.normal(size=(n, d))
    null = rng.normal(size=(n, dv))
    null -= null @ np.linalg.pinv(W) @ W  # parts of v that W does not see
    v = z @ np.linalg.pinv(W).T + 0.5 * null + offset
    c = z + clip_noise * rng.normal(size=(n, d))
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    names = [f"class {k}" for k in range(classes)]
    vkey, ckey = safe_key(vision_spec), safe_key(clip_spec)
    skip = set(not_done)
    with CacheWriter(path, [f"img{i:05d}" for i in range(n)], labels, names if class_names else None) as w:
        w.add_encoder(EncoderEntry(vkey, vision_spec, "vision", dv, weights=weights))
        w.add_encoder(EncoderEntry(ckey, clip_spec, "clip", d, normalized=True, weights=weights))
        for lo, hi in _runs_without(n, skip):
            w.write_rows(vkey, lo, v[lo:hi])
            if clip_image:
                w.write_rows(ckey, lo, c[lo:hi])
        for vname, vnames in (vocabs or {"toy": names}).items():
            w.write_text(ckey, vname, vnames, ["a {c}.", "the {c}.", "a photo of {c}."], emb[:len(vnames)])
        if unreadable:
            w.mark_unreadable(list(unreadable), ["broken"] * len(unreadable))
    return {"path": str(path), "W": W, "classifier": classifier, "labels": labels, "vision_key": vkey,
            "clip_key": ckey, "offset": offset, "d": d, "dv": dv, "classes": classes}


def _runs_without(n, skip):
    """Contiguous [lo, hi) row ranges of range(n) that leave out the rows in skip."""
    runs, lo = [], 0
    for i in sorted(skip) + [n]:
        if i > lo:
            runs.append((lo, i))
        lo = i + 1
    return runs


def make_mapping(out_dir, W, *, method="zoomshot", epochs=5, fraction=0.1, seed=0, mean=None,
                 vision_spec=VISION_SPEC, clip_spec=CLIP_SPEC, weights="random", save=True):
    d, dv = W.shape
    run = {
        "method": method, "epochs": epochs, "fraction": fraction, "seed": seed, "hyper": {"lr": 0.01},
        "source": {"key": safe_key(vision_spec), "spec": vision_spec, "dim": dv, "weights": weights},
        "target": {"key": safe_key(clip_spec), "spec": clip_spec, "dim": d, "weights": weights},
        "vocab": "toy", "cache": {"path": "train.h5", "rows": 100}, "history": [], "wall_time_s": 0.5,
    }
    m = Mapping(W=np.asarray(W, np.float32), b=np.zeros(d, np.float32),
                mean=np.zeros(dv, np.float32) if mean is None else np.asarray(mean, np.float32),
                std=np.ones(dv, np.float32), run=run)
    if save:
        save_mapping(m, out_dir)
    return m


def test_toy_world_has_a_mapping_that_mostly_agrees_with_clip(tmp_path):
    from zoomshot.cache import open_cache

    world = make_world(tmp_path / "w.h5")
    with open_cache(world["path"]) as c:
        v = c.image(world["vision_key"])
        clip = c.image(world["clip_key"])
    mapped = (v - world["offset"]) @ world["W"].T
    same = ((mapped @ world["classifier"].T).argmax(1) == (clip @ world["classifier"].T).argmax(1)).mean()
    assert 0.5 < same < 1.0
