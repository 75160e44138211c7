"""zoomshot: CLIP's zero-shot ability for any vision encoder through a linear map (Zoom-shot).

Stages: `zoomshot.extract` (images -> cache), `zoomshot.fit` (cache -> mapping),
`zoomshot.evaluate` (mappings x caches -> reports). They meet only in this package's core
modules: the cache format (`zoomshot.cache`), the mapping format (`zoomshot.mapping`),
encoder specs (`zoomshot.encoders`) and vocabularies (`zoomshot.vocab`).
"""
from zoomshot.version import __version__

__all__ = ["__version__", "load"]


def load(mapping_dir, **kwargs):
    """A zero-shot classifier (torch.nn.Module) from a mapping folder; see `zoomshot.model.load`.

    Imported lazily, so `import zoomshot` stays light."""
    from zoomshot.model import load as _load

    return _load(mapping_dir, **kwargs)
