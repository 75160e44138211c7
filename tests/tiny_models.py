"""Shared test helpers: generated images (JPEG, PNG and corrupt ones) and tiny models.

Nothing here downloads anything. The factories `tiny_vision` and `tiny_clip` are also `py:`
plug-ins (`py:tests/tiny_models.py:tiny_clip`), which is how subprocess tests (torchrun, killed
runs) get a CLIP-family encoder without registering an open_clip config in the child.
Heavy imports stay inside functions: the `py:` loader executes this file.
"""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np

TINY_CLIP_NAME = "tiny-clip"
TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
THIS_FILE = Path(__file__).resolve()
VISION_PLUGIN = f"py:{THIS_FILE}:tiny_vision"
CLIP_PLUGIN = f"py:{THIS_FILE}:tiny_clip"
CORRUPT_KINDS = ("truncated", "empty", "notimage")


# A plug-in source whose dim a test can change between runs (to provoke a mismatch refusal).
RESIZABLE_PLUGIN_SRC = '''
from torchvision import transforms as T

class P:
    name, family, dim = "plug", "vision", {dim}
    preprocess = T.Compose([T.Resize(32), T.CenterCrop(32), T.ToTensor()])
    def encode_image(self, x):
        return x.mean(dim=(2, 3)).repeat(1, 3)[:, :self.dim]

def make(weights="default"):
    return P()
'''


# ------------------------------------------------------------------------------ images ---------
def image_bytes(seed: int, fmt: str = "JPEG", size: tuple[int, int] | None = None) -> bytes:
    """A deterministic image with class-free structure (gradients plus noise), 32-64 px a side."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size or (int(rng.integers(32, 65)), int(rng.integers(32, 65)))
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * (3 + seed % 5)) % 256, (yy * (2 + seed % 7)) % 256, (xx + yy + 17 * seed) % 256], -1)
    arr = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    img = Image.fromarray(arr, "RGB")
    if fmt == "PNG" and seed % 3 == 0:
        img = img.convert("L")  # a grayscale PNG: decoding must still give RGB
    img.save(buf, format=fmt, quality=90) if fmt == "JPEG" else img.save(buf, format=fmt)
    return buf.getvalue()


def corrupt_bytes(kind: str, seed: int = 0) -> bytes:
    if kind == "truncated":
        return image_bytes(seed, "JPEG", (64, 64))[:300]
    if kind == "empty":
        return b""
    if kind == "notimage":
        return b"this is not an image, only text with a .jpg name\n" * 3
    raise ValueError(kind)


def make_image_folder(root, classes=("cat", "dog", "fish"), per_class: int = 4,
                      corrupt: dict | None = None) -> Path:
    """An ImageFolder tree; corrupt maps class name -> list of corrupt kinds placed in it."""
    root = Path(root)
    seed = 0
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            fmt = "PNG" if i % 2 else "JPEG"
            (root / c / f"{c}_{i:03d}.{'png' if fmt == 'PNG' else 'jpg'}").write_bytes(image_bytes(seed, fmt))
            seed += 1
    for c, kinds in (corrupt or {}).items():
        for k in kinds:
            (root / c / f"bad_{k}.jpg").write_bytes(corrupt_bytes(k))
    return root


def make_flat_folder(root, n: int = 6, corrupt=()) -> Path:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        fmt = "PNG" if i % 2 else "JPEG"
        (root / f"img_{i:03d}.{'png' if fmt == 'PNG' else 'jpg'}").write_bytes(image_bytes(100 + i, fmt))
    for k in corrupt:
        (root / f"bad_{k}.jpg").write_bytes(corrupt_bytes(k))
    (root / "notes.txt").write_text("not listed: not an image extension")
    return root


def folder_to_webdataset(folder, tar_pattern: str, shards: int = 2) -> list[Path]:
    """Write an ImageFolder tree as WebDataset shards: key = class/stem, members .jpg/.png and .cls."""
    folder = Path(folder)
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    out = [Path(tar_pattern.format(i)) for i in range(shards)]
    for i, tar in enumerate(out):
        tar.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(tar, "w") as tf:
            for f in files[i::shards]:
                rel = f.relative_to(folder)
                key = rel.with_suffix("").as_posix()
                ext = "jpg" if f.suffix == ".jpg" else f.suffix[1:]
                for name, data in ((f"{key}.{ext}", f.read_bytes()),
                                   (f"{key}.cls", str(classes.index(rel.parts[0])).encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
    return out


# ------------------------------------------------------------------------------ models ---------
def register_tiny_clip(name: str = TINY_CLIP_NAME) -> str:
    """Register the tiny open_clip config; returns the spec `open_clip:NAME@random`."""
    from zoomshot.encoders import register_open_clip_config

    register_open_clip_config(name, TINY_CLIP)
    return f"open_clip:{name}@random"


class _TinyVision:
    """A plug-in vision encoder: a seeded two-layer conv net, 16-d features."""

    name = "tiny-vision"
    family = "vision"
    dim = 16

    def __init__(self, seed: int = 0):
        import torch
        from torchvision import transforms as T

        g = torch.Generator().manual_seed(seed)
        self.model = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.ReLU(), torch.nn.Conv2d(8, 16, 3, stride=2),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()
        with torch.no_grad():
            for p in self.model.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        self.preprocess = T.Compose([T.Resize(40), T.CenterCrop(32), T.ToTensor(),
                                     T.Normalize([0.5] * 3, [0.25] * 3)])
        self.preprocess_config = {"library": "py", "name": self.name, "size": 32}

    def to(self, device):
        self.model.to(device)
        return self

    def encode_image(self, batch):
        return self.model(batch)


def tiny_vision(weights: str = "default"):
    return _TinyVision(seed=0 if weights == "default" else 1)


class _TinyClip:
    """A plug-in CLIP encoder: the tiny open_clip model with seeded random weights."""

    name = "tiny-clip-plugin"
    family = "clip"
    normalized = True

    def __init__(self, seed: int = 0):
        import open_clip
        import torch

        register_tiny_clip()
        torch.manual_seed(seed)
        self.model, _, self.preprocess = open_clip.create_model_and_transforms(TINY_CLIP_NAME, pretrained=None)
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(TINY_CLIP_NAME)
        self.dim = TINY_CLIP["embed_dim"]
        self.preprocess_config = {"library": "py", "name": self.name, "size": 32}

    def to(self, device):
        self.model.to(device)
        return self

    def encode_image(self, batch):
        return self.model.encode_image(batch, normalize=True)

    def encode_text(self, texts):
        return self.model.encode_text(self.tokenizer(list(texts)), normalize=True)


def tiny_clip(weights: str = "default"):
    return _TinyClip(seed=0 if weights == "default" else 1)
