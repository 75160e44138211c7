"""The toy evaluation world (conftest.make_world): caches written with CacheWriter and
mappings saved with save_mapping, so evaluate is checked on any conforming cache, not only synth's.

In this world a vision feature v maps exactly onto the clean CLIP direction z = W v; CLIP's stored
image feature is n(z + clip-only noise), so a mapping with the true W agrees with CLIP often but not
always, and a random W does not.
"""
from __future__ import annotations

from conftest import make_world


def test_toy_world_has_a_mapping_that_mostly_agrees_with_clip(tmp_path):
    from zoomshot.cache import open_cache

    world = make_world(tmp_path / "w.h5")
    with open_cache(world["path"]) as c:
        v = c.image(world["vision_key"])
        clip = c.image(world["clip_key"])
    mapped = (v - world["offset"]) @ world["W"].T
    same = ((mapped @ world["classifier"].T).argmax(1) == (clip @ world["classifier"].T).argmax(1)).mean()
    assert 0.5 < same < 1.0
