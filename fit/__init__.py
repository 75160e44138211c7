"""zoomshot.fit: the Zoom-shot mapping, its losses and trainer, the baselines, and sweeps over cached tensors.

    fit_cache(cache_path, FitConfig(...))                 one mapping (not saved; see save_mapping)
    fit_grid(cache_path, cfg, epochs, fractions, methods) a sweep, trained as batched jobs
    fit_configs(cache_path, [FitConfig, ...])             any list sharing one cache read
"""
from .api import fit_cache, fit_configs, fit_grid
from .config import METHOD_DEFAULTS, METHODS, FitConfig

__all__ = ["FitConfig", "METHODS", "METHOD_DEFAULTS", "fit_cache", "fit_grid", "fit_configs"]
