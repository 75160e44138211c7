"""zoomshot.fit: the Zoom-shot mapping, its losses and trainer, the baselines, and sweeps over cached tensors.

    fit_cache(cache_path, FitConfig(...))                 one mapping (not saved; see save_mapping)
    fit_grid(cache_path, cfg, epochs, fractions, methods) a sweep (methods × epochs × fractions)
    fit_configs(cache_path, [FitConfig, ...])             any list sharing one cache read

The fitting functions load numpy, h5py and torch on first use, so the CLI reads defaults cheaply.
"""
from .config import METHOD_DEFAULTS, METHODS, FitConfig

__all__ = ["FitConfig", "METHODS", "METHOD_DEFAULTS", "fit_cache", "fit_grid", "fit_configs"]
_LAZY = ("fit_cache", "fit_grid", "fit_configs")


def __getattr__(name):
    if name in _LAZY:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'zoomshot.fit' has no attribute {name!r}")
