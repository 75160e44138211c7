"""zoomshot.fit: the Zoom-shot mapping, its losses and trainer, the baselines, and sweeps over cached tensors."""
