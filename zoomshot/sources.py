"""Image sources: where the images of an extraction come from, as sorted ids, labels and readers.

`open_source` recognises an ImageFolder tree (class subfolders give labels and class names), a
flat folder (no labels), a text/CSV file list (`path[,label]`), WebDataset tar shards
(`data/shard-{00000..00099}.tar`; a `cls` member gives the label) and, through `--dataset`,
a local copy of a torchvision dataset. Every source lists its images in a deterministic order
(sorted ids) without decoding anything; `ImageSource.read(i)` returns the raw bytes of image i
(or a PIL image for array-backed datasets) and `decode_rgb` turns that into a PIL RGB image,
raising on truncated, empty or non-image data so the caller can record the row as unreadable.
Readers are picklable and open files lazily, so DataLoader workers can use them.
"""
from __future__ import annotations

import csv
import glob
import hashlib
import io
import os
import re
import tarfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from zoomshot.errors import ZsError, did_you_mean

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
# Members of a WebDataset sample that hold the image / the class index, by extension.
TAR_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "ppm", "bmp", "pgm", "tif", "tiff", "gif", "img")
TAR_LABEL_EXTS = ("cls", "cls.txt", "label", "class")


class SourceError(ZsError):
    """An image source that cannot be listed (missing path, bad list file, dataset copy absent)."""


# ------------------------------------------------------------------------------ readers --------
class FileReader:
    """Reads files below a root directory; items are relative paths (absolute ones pass through)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def read(self, item: str) -> bytes:
        return (self.root / item).read_bytes()


class TarReader:
    """Reads members of uncompressed tar files by byte offset; items are (tar index, offset, size)."""

    def __init__(self, tars: Sequence[str]):
        self.tars = [str(t) for t in tars]
        self._handles: dict[int, object] = {}
        self._pid = None

    def __getstate__(self):
        return {"tars": self.tars}

    def __setstate__(self, state):
        self.tars = state["tars"]
        self._handles, self._pid = {}, None

    def read(self, item) -> bytes:
        tar_index, offset, size = item
        if self._pid != os.getpid():  # a forked worker must not share its parent's file offsets
            self._handles, self._pid = {}, os.getpid()
        fh = self._handles.get(tar_index)
        if fh is None:
            fh = self._handles[tar_index] = open(self.tars[tar_index], "rb")
        fh.seek(offset)
        data = fh.read(size)
        if len(data) != size:
            raise OSError(f"{self.tars[tar_index]} ends inside a member")
        return data


class MissingImageReader:
    """Stands for a WebDataset sample without an image member: reading it fails with the reason."""

    def read(self, item) -> bytes:
        raise OSError(item)


class DatasetReader:
    """Reads items (indices) of a torchvision dataset object built without transforms."""

    def __init__(self, dataset):
        self.dataset = dataset

    def read(self, item: int):
        return self.dataset[item][0]


# ------------------------------------------------------------------------------ the source -----
@dataclass
class ImageSource:
    """The images of one extraction, in row order (sorted ids)."""

    ids: list[str]
    items: list  # reader-specific locator per row
    readers: list  # per row: index into reader_pool
    reader_pool: list
    labels: np.ndarray | None = None  # int32, -1 unknown; None when the source has no labels
    class_names: list[str] | None = None
    kind: str = "folder"
    description: str = ""
    vocab_name: str | None = None  # the built-in vocabulary named after a --dataset
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def read(self, row: int):
        """Raw bytes of image `row` (or a PIL image for array-backed datasets); raises OSError."""
        return self.reader_pool[self.readers[row]].read(self.items[row])

    def load(self, row: int):
        return decode_rgb(self.read(row))

    def subset(self, rows: Sequence[int]) -> "ImageSource":
        rows = [int(r) for r in rows]
        return replace(
            self,
            ids=[self.ids[r] for r in rows],
            items=[self.items[r] for r in rows],
            readers=[self.readers[r] for r in rows],
            labels=None if self.labels is None else self.labels[rows],
        )

    def labels_or_unknown(self) -> np.ndarray:
        return np.full(len(self), -1, np.int32) if self.labels is None else self.labels

    def ids_digest(self) -> str:
        h = hashlib.sha256()
        for i in self.ids:
            h.update(i.encode())
            h.update(b"\n")
        return h.hexdigest()


def decode_rgb(data, min_side: int | None = None):
    """Decode raw bytes (or pass a PIL image) fully into an RGB PIL image; raise on bad data.

    min_side: the caller resizes the image so that its short side is at most this; a JPEG may then
    be decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling, PIL's draft mode) as long as both
    sides stay >= min_side, which makes large photos several times cheaper to decode and resize."""
    from PIL import Image

    if isinstance(data, Image.Image):
        img = data
    else:
        if not data:
            raise OSError("empty file")
        img = Image.open(io.BytesIO(data))
        if min_side and img.format == "JPEG" and min(img.size) >= 2 * min_side:
            img.draft("RGB", (min_side, min_side))
        img.load()  # decode now, so a truncated file fails here and not inside a transform
    return img if img.mode == "RGB" else img.convert("RGB")


def _sorted_source(ids, items, readers, pool, labels, **kw) -> ImageSource:
    if len(set(ids)) != len(ids):
        seen, dup = set(), None
        for i in ids:
            if i in seen:
                dup = i
                break
            seen.add(i)
        raise SourceError(f"image id {dup!r} occurs twice in {kw.get('description', 'the source')}; ids must be unique")
    order = sorted(range(len(ids)), key=lambda r: ids[r])
    lab = None if labels is None else np.asarray(labels, np.int32)[order] if len(order) else np.zeros(0, np.int32)
    return ImageSource(
        ids=[ids[r] for r in order],
        items=[items[r] for r in order],
        readers=[readers[r] for r in order],
        reader_pool=pool,
        labels=lab,
        **kw,
    )


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def _walk_images(top: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out.extend(Path(dirpath) / f for f in filenames if _is_image_name(f))
    return out


# ------------------------------------------------------------------------------ folders --------
def folder_source(root: str | os.PathLike) -> ImageSource:
    """An ImageFolder tree (class subfolders) or a flat folder of images (no labels)."""
    root = Path(root)
    top_images = sorted(p.name for p in root.iterdir() if p.is_file() and _is_image_name(p.name))
    class_dirs = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                        and _walk_images(p))
    if top_images and class_dirs:
        raise SourceError(f"{root} holds both images and class subfolders ({', '.join(class_dirs[:3])}); "
                          f"use a folder of class subfolders, or a flat folder of images")
    pool = [FileReader(root)]
    if class_dirs:
        ids, labels = [], []
        for c, name in enumerate(class_dirs):
            for p in _walk_images(root / name):
                ids.append(p.relative_to(root).as_posix())
                labels.append(c)
        return _sorted_source(ids, list(ids), [0] * len(ids), pool, labels, class_names=class_dirs,
                              kind="imagefolder", description=f"{root} (ImageFolder, {len(class_dirs)} classes)")
    if not top_images:
        raise SourceError(f"{root} holds no images (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return _sorted_source(top_images, list(top_images), [0] * len(top_images), pool, None,
                          kind="flat", description=f"{root} (flat folder, no labels)")


# ------------------------------------------------------------------------------ file lists -----
def list_source(list_file: str | os.PathLike) -> ImageSource:
    """A .txt/.csv file of `path[,label]` lines; paths relative to the list file's folder.

    Labels are integers or class names (then class names are their sorted set). A first line
    starting with `path` is a header. Blank lines and lines starting with `#` are skipped.
    """
    list_file = Path(list_file)
    paths, raw_labels = [], []
    with open(list_file, newline="") as fh:
        for n, row in enumerate(csv.reader(fh)):
            row = [x.strip() for x in row]
            if not row or not row[0] or row[0].startswith("#"):
                continue
            if n == 0 and row[0].lower() in ("path", "file", "filename", "image"):
                continue
            if len(row) > 2:
                raise SourceError(f"{list_file}:{n + 1}: expected 'path' or 'path,label', got {len(row)} fields")
            paths.append(row[0])
            raw_labels.append(row[1] if len(row) == 2 and row[1] != "" else None)
    if not paths:
        raise SourceError(f"{list_file} lists no images")
    labels, class_names = None, None
    given = [x for x in raw_labels if x is not None]
    if given:
        if all(re.fullmatch(r"-?\d+", x) for x in given):
            labels = [int(x) if x is not None else -1 for x in raw_labels]
        else:
            class_names = sorted(set(given))
            index = {c: i for i, c in enumerate(class_names)}
            labels = [index[x] if x is not None else -1 for x in raw_labels]
    ids = [Path(p).as_posix() for p in paths]
    return _sorted_source(ids, list(paths), [0] * len(ids), [FileReader(list_file.parent)], labels,
                          class_names=class_names, kind="list", description=f"{list_file} (file list)")


# ------------------------------------------------------------------------------ WebDataset -----
def expand_braces(pattern: str) -> list[str]:
    """`a-{000..002}.tar` -> a-000.tar, a-001.tar, a-002.tar; `{x,y}` lists work too."""
    m = re.search(r"\{([^{}]*)\}", pattern)
    if not m:
        return [pattern]
    body = m.group(1)
    rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if rng:
        lo, hi = rng.group(1), rng.group(2)
        width = len(lo) if lo.startswith("0") or len(lo) == len(hi) else 0
        step = 1 if int(hi) >= int(lo) else -1
        choices = [str(i).zfill(width) for i in range(int(lo), int(hi) + step, step)]
    else:
        choices = body.split(",")
    head, tail = pattern[: m.start()], pattern[m.end():]
    return [x for c in choices for x in expand_braces(head + c + tail)]


def _split_member(name: str) -> tuple[str, str]:
    """WebDataset convention: key = path up to the first dot of the file name, ext = the rest."""
    d, base = os.path.split(name)
    if "." not in base:
        return name, ""
    stem, ext = base.split(".", 1)
    return (f"{d}/{stem}" if d else stem), ext.lower()


def webdataset_source(pattern: str) -> ImageSource:
    """Samples of uncompressed WebDataset tar shards (brace pattern or glob); the sample key is the image id."""
    tars = [t for p in expand_braces(pattern) for t in (sorted(glob.glob(p)) if glob.has_magic(p) else [p])]
    if not tars:
        raise SourceError(f"{pattern} matches no tar files")
    missing = [t for t in tars if not Path(t).is_file()]
    if missing:
        raise SourceError(f"WebDataset shard {missing[0]} does not exist"
                          + (f" (nor {len(missing) - 1} more)" if len(missing) > 1 else ""))
    samples: dict[str, dict] = {}
    for ti, tar in enumerate(tars):
        try:
            tf = tarfile.open(tar, "r:")
        except tarfile.ReadError as e:
            raise SourceError(f"{tar} is not an uncompressed tar file ({e}); WebDataset shards "
                              f"must be plain .tar") from None
        with tf:
            for m in tf:
                if not m.isfile():
                    continue
                key, ext = _split_member(m.name)
                s = samples.setdefault(key, {"tar": ti})
                if s["tar"] != ti:
                    raise SourceError(f"sample key {key!r} occurs in {tars[s['tar']]} and in {tar}; "
                                      f"keys must be unique across shards")
                if ext.rsplit(".", 1)[-1] in TAR_IMAGE_EXTS and "image" not in s:
                    s["image"] = (ti, m.offset_data, m.size)
                elif ext in TAR_LABEL_EXTS:
                    text = tf.extractfile(m).read().decode().strip()
                    try:
                        s["label"] = int(text)
                    except ValueError:
                        raise SourceError(f"{tar}: {m.name} holds {text!r}, not a class index") from None
    if not samples:
        raise SourceError(f"{pattern} holds no samples")
    ids, items, readers, labels = [], [], [], []
    for key, s in samples.items():
        ids.append(key)
        if "image" in s:
            items.append(s["image"])
            readers.append(0)
        else:
            items.append(f"sample {key} in {tars[s['tar']]} has no image member")
            readers.append(1)
        labels.append(s.get("label", -1))
    has_labels = any(x >= 0 for x in labels)
    return _sorted_source(ids, items, readers, [TarReader(tars), MissingImageReader()],
                          labels if has_labels else None, kind="webdataset",
                          description=f"{pattern} (WebDataset, {len(tars)} shard{'s' * (len(tars) > 1)})")


# ------------------------------------------------------------------------------ torchvision ----
# name -> (torchvision class, where the copy must be below --root, split -> constructor kwargs)
_SPLIT_TRAIN_TEST = {"train": {"train": True}, "test": {"train": False}}
DATASETS: dict[str, tuple[str, str, dict]] = {
    "cifar10": ("CIFAR10", "cifar-10-batches-py", _SPLIT_TRAIN_TEST),
    "cifar100": ("CIFAR100", "cifar-100-python", _SPLIT_TRAIN_TEST),
    "stl10": ("STL10", "stl10_binary", {s: {"split": s} for s in ("train", "test", "unlabeled")}),
    "food101": ("Food101", "food-101", {s: {"split": s} for s in ("train", "test")}),
    "pets": ("OxfordIIITPet", "oxford-iiit-pet", {"train": {"split": "trainval"}, "test": {"split": "test"}}),
    "flowers102": ("Flowers102", "flowers-102", {s: {"split": s} for s in ("train", "val", "test")}),
    "caltech101": ("Caltech101", "caltech101", {"all": {"target_type": "category"}}),
    "dtd": ("DTD", "dtd", {s: {"split": s} for s in ("train", "val", "test")}),
    "eurosat": ("EuroSAT", "eurosat/2750", {"all": {}}),
    "imagenet1k": ("ImageFolder", "{split}", {"train": {}, "val": {}, "test": {}}),
}
# The built-in caltech101 vocabulary (clip_benchmark's) puts "background" first; torchvision's
# Caltech101 leaves BACKGROUND_Google out, so its label i is vocabulary class i + 1.
LABEL_OFFSET = {"caltech101": 1}


def dataset_source(name: str, root: str | os.PathLike, split: str | None = None) -> ImageSource:
    """A local copy of a torchvision dataset (never downloaded); class names from the built-in vocabulary."""
    from zoomshot.vocab import builtin_vocabularies, load_vocabulary

    if name not in DATASETS:
        raise SourceError(f"unknown dataset {name!r}{did_you_mean(name, DATASETS)}; choose from: {', '.join(DATASETS)}")
    cls_name, below, splits = DATASETS[name]
    if split is None:
        split = "test" if "test" in splits else next(iter(splits))
    if split not in splits:
        raise SourceError(f"dataset {name} has splits {', '.join(splits)}, not {split!r}")
    root = Path(root)
    if name == "imagenet1k":
        split_dir = "val" if split == "test" else split
        expected = root / split_dir
    else:
        expected = root / below
    import torchvision.datasets as tvd

    try:
        if name == "imagenet1k":
            if not expected.is_dir():
                raise RuntimeError("not found")
            ds = tvd.ImageFolder(str(expected))
        else:
            ds = getattr(tvd, cls_name)(root=str(root), download=False, **splits[split])
    except (RuntimeError, FileNotFoundError, OSError) as e:
        raise SourceError(f"no local copy of {name} (split {split}) at {expected} ({str(e).splitlines()[0]}); "
                          f"zs never downloads: place the dataset there or pass another --root") from None
    labels = None
    for attr in ("targets", "labels", "_labels", "y"):
        if getattr(ds, attr, None) is not None:
            labels = np.asarray(getattr(ds, attr), np.int64)
            break
    if labels is None:
        raise SourceError(f"cannot read the labels of torchvision's {cls_name} without decoding its images")
    labels = labels + LABEL_OFFSET.get(name, 0)
    if name not in builtin_vocabularies():
        raise SourceError(f"no built-in vocabulary {name!r} for the class names of dataset {name}")
    vocab = load_vocabulary(name)
    if len(labels) and labels.max() >= len(vocab.classnames):
        raise SourceError(f"dataset {name} at {expected} has class index {int(labels.max())}, but the "
                          f"{name} vocabulary names {len(vocab.classnames)} classes")
    paths = _dataset_paths(ds)
    n = len(labels)
    if paths is not None and len(paths) == n:
        base = Path(ds.root if name != "imagenet1k" else expected)
        ids = [_rel(p, base) for p in paths]
        items, pool = [str(p) for p in paths], [FileReader("/")]
    else:
        width = len(str(max(n - 1, 0)))
        ids = [f"{split}/{i:0{width}d}" for i in range(n)]
        items, pool = list(range(n)), [DatasetReader(ds)]
    return _sorted_source(ids, items, [0] * n, pool, labels.astype(np.int32), class_names=vocab.classnames,
                          kind="dataset", description=f"{name} {split} at {expected}", vocab_name=name,
                          meta={"dataset": name, "split": split})


def _dataset_paths(ds) -> list | None:
    if getattr(ds, "samples", None) is not None:
        return [Path(p) for p, _ in ds.samples]
    for attr in ("_image_files", "_images"):
        if getattr(ds, attr, None) is not None:
            return [Path(p) for p in getattr(ds, attr)]
    return None


def _rel(p: Path, base: Path) -> str:
    try:
        return Path(p).resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return Path(p).as_posix()


# ------------------------------------------------------------------------------ entry points ---
def open_source(images: str | None = None, dataset: str | None = None, root: str | None = None,
                split: str | None = None) -> ImageSource:
    """The source named by `--images PATH` or by `--dataset NAME --root DIR [--split S]`."""
    if dataset is not None:
        if images is not None:
            raise SourceError("give either --images or --dataset (with --root), not both")
        if root is None:
            raise SourceError("--dataset needs --root DIR, the folder holding the local copy")
        return dataset_source(dataset, root, split)
    if images is None:
        raise SourceError("give --images PATH (folder, file list or WebDataset tars) or --dataset NAME --root DIR")
    if images.endswith(".tar"):  # one shard, a brace pattern, or a glob
        return webdataset_source(images)
    p = Path(images)
    if p.is_dir():
        return folder_source(p)
    if p.is_file():
        if p.suffix.lower() in (".txt", ".csv", ".lst", ".tsv"):
            return list_source(p)
        raise SourceError(f"{p} is a file but not a .txt/.csv list of images or a .tar shard")
    raise SourceError(f"--images {images}: no such folder, file list or tar shard")


def subset_fraction(source: ImageSource, fraction: float, seed: int = 0) -> ImageSource:
    """A seeded random subset of about `fraction` of the rows, stratified by label when there are labels.

    Each class keeps round(fraction × its size) rows, at least one; rows stay in id order.
    """
    if not 0 < fraction <= 1:
        raise SourceError(f"--fraction must be in (0, 1], got {fraction}")
    n = len(source)
    if fraction == 1 or n == 0:
        return source
    rng = np.random.default_rng(seed)
    labels = source.labels_or_unknown()
    keep = []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        k = max(1, int(round(fraction * len(rows))))
        keep.append(rng.choice(rows, size=min(k, len(rows)), replace=False))
    return source.subset(np.sort(np.concatenate(keep)))
