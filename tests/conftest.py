"""Shared test setup and helpers, the one home of what tests share (no test imports another):

- no test may reach a network hub;
- the one tiny CLIP config (`TINY_CLIP`), and tiny plug-in encoders (`VISION_PLUGIN`, `CLIP_PLUGIN`:
  `py:` specs of this very file, which is how subprocess tests get a CLIP-family encoder without
  registering an open_clip config in the child; heavy imports stay inside functions, since the
  `py:` loader executes this file);
- the one image generator (`image_bytes`) and the folders, tars and corrupt files built from it;
- the toy evaluation world (`make_world`, `make_mapping`) and the session's use-the-model world
  (fixture `use_world`).
"""
from __future__ import annotations

import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

TINY_CLIP_NAME = "tiny-clip"
TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
THIS_FILE = Path(__file__).resolve()
VISION_PLUGIN = f"py:{THIS_FILE}:tiny_vision"
CLIP_PLUGIN = f"py:{THIS_FILE}:tiny_clip"


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
def image_bytes(seed: int, fmt: str = "JPEG", size: tuple[int, int] | None = None, tint=None) -> bytes:
    """The one test image generator: a deterministic image, 32-64 px a side, with class-free structure
    (gradients plus noise), or with `tint` an (R, G, B) colour plus strong noise (a class you can see)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size or (int(rng.integers(32, 65)), int(rng.integers(32, 65)))
    yy, xx = np.mgrid[0:h, 0:w]
    if tint is None:
        base = np.stack([(xx * (3 + seed % 5)) % 256, (yy * (2 + seed % 7)) % 256, (xx + yy + 17 * seed) % 256], -1)
        arr = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    else:
        arr = np.clip(np.array(tint) + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    img = Image.fromarray(arr, "RGB")
    if fmt == "PNG" and seed % 3 == 0 and tint is None:
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


# ------------------------------------------------------------------------------ toy evaluation world
TOY_CLIP_SPEC = "toy:clip"
TOY_VISION_SPEC = "toy:vision"


def make_world(path, *, n=150, classes=6, d=16, dv=20, seed=0, sample_seed=None, clip_image=True, vocabs=None,
               class_names=True, unreadable=(), not_done=(), unlabelled=(), vision_spec=TOY_VISION_SPEC,
               clip_spec=TOY_CLIP_SPEC, weights="random", clip_noise=0.6):
    """A toy evaluation cache at path, written with CacheWriter (so evaluate is checked on any
    conforming cache): a vision feature v maps exactly onto the clean CLIP direction z = W v, CLIP's
    stored image feature is n(z + clip-only noise). Returns the ground truth (W, classifier, labels,
    key names). `seed` fixes the world (W, class texts, offset); `sample_seed` (default: seed) the images."""
    from zoomshot.cache import CacheWriter, EncoderEntry, ensemble_classifier, safe_key

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
                 vision_spec=TOY_VISION_SPEC, clip_spec=TOY_CLIP_SPEC, weights="random", save=True):
    """A mapping of the toy world with the given W, saved to out_dir unless save is False."""
    from zoomshot.cache import safe_key
    from zoomshot.mapping import Mapping, save_mapping

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


# ------------------------------------------------------------------------------ use-the-model world
USE_CLASSES = ("blue", "green", "red")  # sorted, as ImageFolder labels them
USE_TEMPLATES = ("a photo of a {c}.", "a {c} thing.")
USE_VOCAB = "colors"
USE_PER_CLASS = 4


@dataclass
class UseWorld:
    """Images, a cache `zs extract` wrote from them with a tiny ViT and the tiny CLIP (random weights
    saved to files, so `zoomshot.load` rebuilds the very models), and a ridge mapping fitted on it."""

    root: Path
    images: Path  # ImageFolder: images/CLASS/NAME.{png,jpg}
    paths: list[Path]  # in cache row order
    labels: np.ndarray
    cache: Path
    mapping: Path
    vision_spec: str  # with @weights-file
    clip_spec: str
    vision_key: str
    clip_key: str


def write_images(root: Path, classes=USE_CLASSES, per_class: int = USE_PER_CLASS) -> None:
    """Images tinted by class, of varied sizes, half PNG half JPEG."""
    tints = {"red": (200, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 200)}
    seed = 0
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            fmt = "PNG" if i % 2 else "JPEG"
            (root / c / f"{c}_{i}.{fmt.lower().replace('jpeg', 'jpg')}").write_bytes(
                image_bytes(seed, fmt, tint=tints.get(c, (128, 128, 128))))
            seed += 1


def extract_cache(path: Path, images: Path, specs: list[str], vocab_file: Path) -> None:
    """`zs extract` over the image folder, on the CPU, in this process."""
    from typer.testing import CliRunner

    from zoomshot.cli import app

    args = ["extract", "--images", str(images), "--out", str(path), "--vocab", str(vocab_file),
            "--device", "cpu", "--workers", "0", "--quiet"]
    for spec in specs:
        args += ["--encoder", spec]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output


def build_use_world(root: Path) -> UseWorld:
    from safetensors.torch import save_file

    from zoomshot.cache import open_cache
    from zoomshot.encoders import build_encoder
    from zoomshot.fit import FitConfig, fit_cache
    from zoomshot.mapping import save_mapping

    import torch

    register_tiny_clip()
    torch.manual_seed(0)
    vit = build_encoder("timm:test_vit@random")
    save_file({k: t.contiguous() for k, t in vit.model.state_dict().items()}, str(root / "test_vit.safetensors"))
    clip = build_encoder(f"open_clip:{TINY_CLIP_NAME}@random")
    torch.save(clip.model.state_dict(), root / "tiny_clip.pt")
    vit = build_encoder(f"timm:test_vit@{root / 'test_vit.safetensors'}")
    clip = build_encoder(f"open_clip:{TINY_CLIP_NAME}@{root / 'tiny_clip.pt'}")

    write_images(root / "images")
    vocab_file = root / f"{USE_VOCAB}.json"
    vocab_file.write_text(json.dumps({"classnames": list(USE_CLASSES), "templates": list(USE_TEMPLATES)}))
    cache = root / "world.h5"
    extract_cache(cache, root / "images", [f"{e.spec}@{e.weights}" for e in (vit, clip)], vocab_file)
    with open_cache(cache) as c:
        assert c.class_names == list(USE_CLASSES)  # ImageFolder labels: sorted class folders
        paths, labels = [root / "images" / i for i in c.ids], c.labels
    mapping = save_mapping(fit_cache(cache, FitConfig(method="ridge")), root / "mapping")
    return UseWorld(root, root / "images", paths, labels, cache, mapping,
                 f"{vit.spec}@{vit.weights}", f"{clip.spec}@{clip.weights}", vit.key, clip.key)


def pil_images(paths):
    from PIL import Image

    return [Image.open(p) for p in paths]


@pytest.fixture(scope="session")
def use_world(tmp_path_factory) -> UseWorld:
    """The session's one use-the-model world (built on first use)."""
    return build_use_world(tmp_path_factory.mktemp("use-world"))
