"""Generated images: coloured shapes on noisy backgrounds, written as an ImageFolder tree.

The built-in data of `zs demo` and of the tests and benchmarks; no download needed. Class
names read as captions ("red circle"), so a real CLIP can classify them zero-shot.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (230, 210, 40)}
SHAPES = ("circle", "square", "triangle")


def shape_classes(n: int) -> list[str]:
    names = [f"{c} {s}" for s in SHAPES for c in COLOURS]
    if not 1 <= n <= len(names):
        raise ValueError(f"between 1 and {len(names)} shape classes, got {n}")
    return names[:n]


def draw_shape(name: str, size: int, rng: np.random.Generator):
    from PIL import Image, ImageDraw

    colour, shape = name.split()
    bg = rng.integers(0, 90, size=(size, size, 3), dtype=np.uint8)
    img = Image.fromarray(bg)
    d = ImageDraw.Draw(img)
    r = size * rng.uniform(0.22, 0.4)
    cx, cy = rng.uniform(r, size - r, size=2)
    fill = tuple(int(np.clip(v + rng.integers(-25, 26), 0, 255)) for v in COLOURS[colour])
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return img


def write_shape_folder(root: str | Path, classes: int = 6, per_class: int = 16, size: int = 96,
                       seed: int = 0, corrupt: int = 0) -> Path:
    """Write root/<class name>/<i>.{png,jpg}; `corrupt` extra files per tree that are not images."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for ci, name in enumerate(shape_classes(classes)):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = draw_shape(name, size, rng)
            ext = "png" if (i + ci) % 2 else "jpg"
            img.save(folder / f"{i:04d}.{ext}")
    for j in range(corrupt):
        bad = root / shape_classes(classes)[j % classes] / f"corrupt{j}.jpg"
        bad.write_bytes(b"" if j % 2 == 0 else b"\xff\xd8\xff\xe0 not really a jpeg")
    return root
