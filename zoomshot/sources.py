"""Image sources: the images of an extraction as ids in sorted order, labels and readers.

`open_source` recognises an ImageFolder tree, a flat folder, a `path[,label]` file list, WebDataset
tar shards, parquet files (img2dataset's and Hugging Face datasets' layouts) and a local copy of a
torchvision dataset (`--dataset`). Listing decodes nothing; `decode_rgb` decodes one image and raises
on bad data, so the caller records the row as unreadable. Readers pickle without their open files.
"""
from __future__ import annotations

import csv
import glob
import io
import json
import os
import re
import tarfile
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from zoomshot.cache import ids_sha256
from zoomshot.errors import ZsError, did_you_mean, first_line
from zoomshot.vocab import load_vocabulary

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
# Members of a WebDataset sample that hold the image / the class index, by extension.
TAR_IMAGE_EXTS = tuple(e[1:] for e in IMAGE_EXTENSIONS) + ("img",)
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
        self._files: dict = {}

    def __getstate__(self):  # open files stay behind
        return {"tars": self.tars, "_files": {}}

    def read(self, item) -> bytes:
        tar_index, offset, size = item
        if tar_index not in self._files:
            self._files[tar_index] = open(self.tars[tar_index], "rb")
        # pread shares no file offset, so a forked worker can use its parent's open files; it may
        # return fewer bytes than asked (network file systems, reads over 2 GiB): read on
        parts, got = [], 0
        while got < size:
            part = os.pread(self._files[tar_index].fileno(), size - got, offset + got)
            if not part:
                raise OSError(f"{self.tars[tar_index]} ends inside a member")
            parts.append(part)
            got += len(part)
        return b"".join(parts)


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

    def __len__(self) -> int:
        return len(self.ids)

    def read(self, row: int):
        """Raw bytes of image `row` (or a PIL image for array-backed datasets); raises OSError."""
        return self.reader_pool[self.readers[row]].read(self.items[row])

    def subset(self, rows: Sequence[int]) -> "ImageSource":
        rows = [int(r) for r in rows]
        return replace(self, ids=[self.ids[r] for r in rows], items=[self.items[r] for r in rows],
                       readers=[self.readers[r] for r in rows],
                       labels=None if self.labels is None else self.labels[rows])

    def labels_or_unknown(self) -> np.ndarray:
        return np.full(len(self), -1, np.int32) if self.labels is None else self.labels

    def ids_digest(self) -> str:
        return ids_sha256(self.ids)


def decode_rgb(data, min_side: int | None = None):
    """Decode raw bytes (or pass a PIL image) fully into an RGB PIL image; raise on bad data.

    min_side: the short side the caller resizes to; a JPEG at least twice that is decoded at 1/2,
    1/4 or 1/8 scale (PIL's draft mode) keeping both sides >= min_side: several times cheaper."""
    if isinstance(data, Image.Image):
        img = data
    else:
        if not data:
            raise OSError("empty file")
        img = Image.open(io.BytesIO(data))
        if min_side and img.format == "JPEG" and min(img.size) >= 2 * min_side:
            img.draft("RGB", (min_side, min_side))
        img.load()  # decode now, so a truncated file fails here and not inside a transform
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        img = _wide_to_8bit(img)
    return img.convert("RGB")


def _wide_to_8bit(img):
    """16-bit (I;16*) and 32-bit (I, F) greyscale to 8 bits: PIL's convert clips these to 255, which
    turns a 16-bit image all white. 16-bit data keep their top byte; others scale by their range."""
    a = np.asarray(img)
    if img.mode == "I" and a.min() >= 0 and a.max() <= 255:
        a8 = a.astype(np.uint8)
    elif img.mode.startswith("I;16") or (img.mode == "I" and a.min() >= 0 and a.max() <= 65535):
        a8 = (a.astype(np.uint32) >> 8).astype(np.uint8)
    else:
        a = a.astype(np.float64)
        lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
        a8 = np.zeros(a.shape, np.uint8) if hi <= lo else ((a - lo) * (255.0 / (hi - lo))).astype(np.uint8)
    return Image.fromarray(a8, "L")


def _sorted_source(ids, items, readers, pool, labels, **kw) -> ImageSource:
    if len(set(ids)) != len(ids):
        dup = next(i for i, count in Counter(ids).items() if count > 1)
        raise SourceError(f"image id {dup!r} occurs twice in {kw.get('description', 'the source')}; ids must be unique")
    labels = None if labels is None else np.asarray(labels, np.int32)
    order = sorted(range(len(ids)), key=ids.__getitem__)
    return ImageSource(ids, items, readers, pool, labels, **kw).subset(order)


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def walk_images(top: Path, seen: set | None = None, blocked: frozenset = frozenset()) -> list[Path]:
    """Image files below top, following directory links but entering each real folder once (`seen`
    may be shared across calls) and never one in `blocked`: a link loop, or a link into the tree's
    root or another class, cannot list an image twice or under another label. A folder that cannot
    be read is an error, not an empty class."""
    out = []
    seen = set() if seen is None else seen

    def fail(err: OSError):
        raise SourceError(f"cannot list {err.filename}: {err.strerror or err}")

    for dirpath, dirnames, filenames in os.walk(top, followlinks=True, onerror=fail):
        real = os.path.realpath(dirpath)
        if real in seen or real in blocked:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out.extend(Path(dirpath) / f for f in filenames if _is_image_name(f))
    return out


def list_image_files(paths: Sequence[str | os.PathLike]) -> list[tuple[Path, str | None]]:
    """(path, problem) per image for `zs predict`: files as given, folders searched recursively for
    image files (sorted); a missing path or an empty folder comes back with its problem."""
    out: list[tuple[Path, str | None]] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += [(f, None) for f in sorted(walk_images(p))] or [(p, "folder holds no image files")]
        elif p.is_file():
            out.append((p, None))
        else:
            out.append((p, "no such file or folder"))
    return out


# ------------------------------------------------------------------------------ folders --------
def folder_source(root: str | os.PathLike) -> ImageSource:
    """An ImageFolder tree (class subfolders) or a flat folder of images (no labels)."""
    root = Path(root)
    top_images = sorted(p.name for p in root.iterdir() if p.is_file() and _is_image_name(p.name))
    # Every class subfolder counts, an empty one too: dropping it would shift every later label.
    class_dirs = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    tops = {name: os.path.realpath(root / name) for name in class_dirs}
    blocked = {os.path.realpath(root), *tops.values()}
    seen: set = set()
    listed = {name: walk_images(root / name, seen, frozenset(blocked - {tops[name]})) for name in class_dirs}
    if top_images or not any(listed.values()):  # a flat folder may have subfolders without images
        class_dirs = [name for name in class_dirs if listed[name]]
    if top_images and class_dirs:
        raise SourceError(f"{root} holds both images and class subfolders ({', '.join(class_dirs[:3])}); "
                          f"use a folder of class subfolders, or a flat folder of images")
    pool = [FileReader(root)]
    if class_dirs:
        ids = [p.relative_to(root).as_posix() for name in class_dirs for p in listed[name]]
        labels = [c for c, name in enumerate(class_dirs) for _ in listed[name]]
        return _sorted_source(ids, list(ids), [0] * len(ids), pool, labels, class_names=class_dirs,
                              kind="imagefolder", description=f"{root} (ImageFolder, {len(class_dirs)} classes)")
    if not top_images:
        raise SourceError(f"{root} holds no images (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return _sorted_source(top_images, list(top_images), [0] * len(top_images), pool, None,
                          kind="flat", description=f"{root} (flat folder, no labels)")


def _label_indices(raw_labels: list) -> tuple[list[int], list[str] | None]:
    """(labels, class names): integer labels as given (no names), other values as names numbered in
    sorted order; a missing label (None) is -1."""
    given = [x for x in raw_labels if x is not None]
    if all(isinstance(x, (int, np.integer)) for x in given):
        return [-1 if x is None else int(x) for x in raw_labels], None
    class_names = sorted({str(x) for x in given})
    index = {c: i for i, c in enumerate(class_names)}
    return [-1 if x is None else index[str(x)] for x in raw_labels], class_names


# ------------------------------------------------------------------------------ file lists -----
def list_source(list_file: str | os.PathLike) -> ImageSource:
    """A .txt/.csv/.tsv file of `path[,label]` lines, paths relative to its folder; labels are integers
    or class names (numbered in sorted order). A first line starting with `path` is a header."""
    list_file = Path(list_file)
    paths, raw_labels = [], []
    with open(list_file, newline="") as fh:
        for n, row in enumerate(csv.reader(fh, delimiter="\t" if list_file.suffix.lower() == ".tsv" else ",")):
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
    if any(x is not None for x in raw_labels):
        if all(x is None or re.fullmatch(r"-?\d+", x) for x in raw_labels):
            raw_labels = [x if x is None else int(x) for x in raw_labels]
        labels, class_names = _label_indices(raw_labels)
    ids = [Path(p).as_posix() for p in paths]
    return _sorted_source(ids, list(paths), [0] * len(ids), [FileReader(list_file.parent)], labels,
                          class_names=class_names, kind="list", description=f"{list_file} (file list)")


# ------------------------------------------------------------------------------ WebDataset -----
def expand_braces(pattern: str) -> list[str]:
    """`a-{000..002}.tar` -> a-000.tar, a-001.tar, a-002.tar; `{x,y}` lists work too (braceexpand,
    which the webdataset package uses for its shard lists)."""
    try:
        from braceexpand import braceexpand
    except ImportError:
        if "{" not in pattern:
            return [pattern]
        raise SourceError("brace patterns need the braceexpand package: pip install 'zoomshot[webdataset]'") from None
    return list(braceexpand(pattern))


def _split_member(name: str) -> tuple[str, str]:
    """WebDataset's convention (webdataset.tariterators.base_plus_ext): key = the path up to the
    first dot of the file name, ext = the rest, lower-cased."""
    try:
        from webdataset.tariterators import base_plus_ext
    except ImportError:
        raise SourceError("reading WebDataset tars needs the webdataset package: "
                          "pip install 'zoomshot[webdataset]'") from None
    key, ext = base_plus_ext(name)
    return (name, "") if key is None else (key, ext.lower())


def _expand_shards(pattern: str, what: str) -> list[str]:
    """Brace patterns and globs -> the existing files, in order; one-line errors otherwise."""
    files = [t for p in expand_braces(pattern) for t in (sorted(glob.glob(p)) if glob.has_magic(p) else [p])]
    if not files:
        raise SourceError(f"{pattern} matches no {what} files")
    missing = [t for t in files if not Path(t).is_file()]
    if missing:
        raise SourceError(f"{what} shard {missing[0]} does not exist"
                          + (f" (nor {len(missing) - 1} more)" if len(missing) > 1 else ""))
    return files


def webdataset_source(pattern: str) -> ImageSource:
    """Samples of uncompressed WebDataset tar shards (brace pattern or glob), keyed by webdataset's
    convention; members are read by byte offset, so any row can be read (and resumed) on its own."""
    tars = _expand_shards(pattern, "WebDataset")
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
    items = [s.get("image", f"sample {key} in {tars[s['tar']]} has no image member")
             for key, s in samples.items()]
    readers = [0 if "image" in s else 1 for s in samples.values()]  # 1: MissingImageReader
    labels = [s.get("label", -1) for s in samples.values()]
    return _sorted_source(list(samples), items, readers, [TarReader(tars), MissingImageReader()],
                          labels if any(x >= 0 for x in labels) else None, kind="webdataset",
                          description=f"{pattern} (WebDataset, {len(tars)} shard{'s' * (len(tars) > 1)})")


# ------------------------------------------------------------------------------ parquet --------
# Default columns, by layout: img2dataset writes the image bytes as `jpg` (or png/webp) and a `key`;
# Hugging Face `datasets` writes `image` as a struct {bytes, path} and the class as `label`.
PARQUET_IMAGE_COLUMNS = ("jpg", "png", "webp", "image", "img")
PARQUET_LABEL_COLUMNS = ("label", "labels", "cls")
PARQUET_ID_COLUMNS = ("key", "id")


class ParquetReader:
    """Reads image cells of parquet files; items are (file, row group, row in the group).

    A row group is streamed in slices of SLICE_ROWS rows (pyarrow's iter_batches): reading rows in
    order reads each slice once and holds one slice in memory, however large the row group."""

    SLICE_ROWS = 256

    def __init__(self, files: Sequence[str], column: str):
        self.files, self.column = [str(f) for f in files], column
        self._pid = None

    def __getstate__(self):  # open files and streams stay behind
        return {"files": self.files, "column": self.column, "_pid": None}

    def _cell(self, fi: int, gi: int, ri: int):
        if self._pid != os.getpid():  # a forked worker opens its own files
            self._files, self._at, self._pid = {}, None, os.getpid()
        if self._at != (fi, gi) or ri < self._slice_start:
            import pyarrow.parquet as pq

            pf = self._files.get(fi)
            if pf is None:
                pf = self._files[fi] = pq.ParquetFile(self.files[fi])
            self._at, self._slice, self._slice_start = (fi, gi), [], 0  # _slice starts at row _slice_start
            self._stream = pf.iter_batches(batch_size=self.SLICE_ROWS, row_groups=[gi], columns=[self.column])
        while ri >= self._slice_start + len(self._slice):
            self._slice_start += len(self._slice)
            try:
                self._slice = next(self._stream).column(0).to_pylist()
            except StopIteration:
                raise OSError(f"{self.files[fi]}: row group {gi} has no row {ri}") from None
        return self._slice[ri - self._slice_start]

    def read(self, item) -> bytes:
        fi, gi, ri = item
        cell = self._cell(fi, gi, ri)
        if isinstance(cell, dict):  # Hugging Face's Image feature: bytes, or a path beside the file
            if cell.get("bytes"):
                return cell["bytes"]
            if cell.get("path"):
                return (Path(self.files[fi]).parent / cell["path"]).read_bytes()
            cell = None
        if cell is None:
            raise OSError(f"no image in column {self.column!r} of this row")
        if isinstance(cell, str):
            raise OSError(f"column {self.column!r} holds text, not image bytes")
        return bytes(cell)


def _parquet_class_names(schema, column: str) -> list[str] | None:
    """Class names of a Hugging Face ClassLabel column, from the file's `huggingface` metadata."""
    try:
        names = json.loads(schema.metadata[b"huggingface"])["info"]["features"][column]["names"]
    except (KeyError, TypeError, ValueError):
        return None
    return [str(n) for n in names] if names else None


def _parquet_rows(files, handles, id_col: str | None, label_col: str | None):
    """(ids, items (file, row group, row), raw labels) of every row, reading only the id and label columns."""
    ids, items, raw_labels = [], [], []
    for fi, (f, h) in enumerate(zip(files, handles)):
        sizes = [h.metadata.row_group(gi).num_rows for gi in range(h.num_row_groups)]
        items.extend((fi, gi, r) for gi, n in enumerate(sizes) for r in range(n))
        if id_col:
            ids.extend(str(x) for x in h.read(columns=[id_col]).column(0).to_pylist())
        else:
            width = len(str(max(h.metadata.num_rows - 1, 0)))
            ids.extend(f"{Path(f).stem}/{r:0{width}d}" for r in range(h.metadata.num_rows))
        if label_col:
            raw_labels.extend(h.read(columns=[label_col]).column(0).to_pylist())
    return ids, items, raw_labels


def parquet_source(pattern: str, image_column: str | None = None, label_column: str | None = None) -> ImageSource:
    """Rows of parquet files (brace pattern or glob), listed row group by row group without reading
    the images. Ids: a `key`/`id` column when there is one, else FILE_STEM/ROW."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise SourceError("reading parquet needs pyarrow: pip install 'zoomshot[parquet]'") from None
    files = _expand_shards(pattern, "parquet")
    handles = []
    for f in files:
        try:
            handles.append(pq.ParquetFile(f))
        except Exception as e:  # pyarrow raises ArrowInvalid and others on a non-parquet file
            raise SourceError(f"{f} is not a parquet file ({first_line(e)[:200]})") from None
    schema = handles[0].schema_arrow
    names = list(schema.names)

    def pick(given, defaults, what, option):
        if given is not None:
            if given not in names:
                raise SourceError(f"{files[0]} has no column {given!r} for {option}; its columns: {', '.join(names)}")
            return given
        found = next((c for c in defaults if c in names), None)
        if found is None and what == "image":
            raise SourceError(f"{files[0]} has none of the image columns {', '.join(defaults)}; name yours with "
                              f"--image-column (its columns: {', '.join(names)})")
        return found

    image_col = pick(image_column, PARQUET_IMAGE_COLUMNS, "image", "--image-column")
    label_col = pick(label_column, PARQUET_LABEL_COLUMNS, "label", "--label-column")
    id_col = next((c for c in PARQUET_ID_COLUMNS if c in names), None)
    for f, h in zip(files[1:], handles[1:]):
        lacking = [c for c in (image_col, label_col, id_col) if c and c not in h.schema_arrow.names]
        if lacking:
            raise SourceError(f"{f} has no column {lacking[0]!r}, which {files[0]} has; the files must share a layout")
    ids, items, raw_labels = _parquet_rows(files, handles, id_col, label_col)
    if not ids:
        raise SourceError(f"{pattern} holds no rows")
    labels, class_names = _label_indices(raw_labels) if label_col else (None, None)
    if label_col and class_names is None:
        class_names = _parquet_class_names(schema, label_col)
    return _sorted_source(ids, items, [0] * len(ids), [ParquetReader(files, image_col)], labels,
                          class_names=class_names, kind="parquet",
                          description=f"{pattern} (parquet, {len(files)} file{'s' * (len(files) > 1)}, "
                                      f"images in {image_col!r}{f', labels in {label_col!r}' if label_col else ''})")


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
    if name not in DATASETS:
        raise SourceError(f"unknown dataset {name!r}{did_you_mean(name, DATASETS)}; choose from: {', '.join(DATASETS)}")
    cls_name, below, splits = DATASETS[name]
    if split is None:
        split = "test" if "test" in splits else next(iter(splits))
    if split not in splits:
        raise SourceError(f"dataset {name} has splits {', '.join(splits)}, not {split!r}")
    root = Path(root)
    expected = root / below.format(split="val" if split == "test" else split)
    import torchvision.datasets as tvd

    try:
        if cls_name == "ImageFolder":
            if not expected.is_dir():
                raise RuntimeError("not found")
            ds = tvd.ImageFolder(str(expected))
        else:
            ds = getattr(tvd, cls_name)(root=str(root), download=False, **splits[split])
    except (RuntimeError, FileNotFoundError, OSError) as e:
        raise SourceError(f"no local copy of {name} (split {split}) at {expected} ({first_line(e)}); "
                          f"zs never downloads: place the dataset there or pass another --root") from None
    labels = _first_attr(ds, ("targets", "labels", "_labels", "y"))
    if labels is None:
        raise SourceError(f"cannot read the labels of torchvision's {cls_name} without decoding its images")
    labels = np.asarray(labels, np.int64) + LABEL_OFFSET.get(name, 0)
    vocab = load_vocabulary(name)
    if len(labels) and labels.max() >= len(vocab.classnames):
        raise SourceError(f"dataset {name} at {expected} has class index {int(labels.max())}, but the "
                          f"{name} vocabulary names {len(vocab.classnames)} classes")
    samples = getattr(ds, "samples", None)
    paths = [p for p, _ in samples] if samples is not None else _first_attr(ds, ("_image_files", "_images"))
    n = len(labels)
    if paths is not None and len(paths) == n:
        ids = [_rel(p, Path(ds.root)) for p in paths]
        items, pool = [str(Path(p).absolute()) for p in paths], [FileReader("/")]  # a relative --root too
    else:
        width = len(str(max(n - 1, 0)))
        ids = [f"{split}/{i:0{width}d}" for i in range(n)]
        items, pool = list(range(n)), [DatasetReader(ds)]
    return _sorted_source(ids, items, [0] * n, pool, labels.astype(np.int32), class_names=vocab.classnames,
                          kind="dataset", description=f"{name} {split} at {expected}", vocab_name=name)


def _first_attr(ds, names: Sequence[str]):
    """The first of the attributes `names` that ds has and that is not None, or None."""
    return next((getattr(ds, a) for a in names if getattr(ds, a, None) is not None), None)


def _rel(p: Path, base: Path) -> str:
    try:
        return Path(p).resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return Path(p).as_posix()


# ------------------------------------------------------------------------------ entry points ---
def open_source(images: str | None = None, dataset: str | None = None, root: str | None = None,
                split: str | None = None, image_column: str | None = None,
                label_column: str | None = None) -> ImageSource:
    """The source named by `--images PATH` or by `--dataset NAME --root DIR [--split S]`;
    `image_column`/`label_column` name the columns of parquet input."""
    if dataset is not None:
        if images is not None:
            raise SourceError("give either --images or --dataset (with --root), not both")
        if root is None:
            raise SourceError("--dataset needs --root DIR, the folder holding the local copy")
        return dataset_source(dataset, root, split)
    if images is None:
        raise SourceError("give --images PATH (folder, file list, WebDataset tars or parquet files) "
                          "or --dataset NAME --root DIR")
    if (image_column or label_column) and not images.endswith(".parquet"):
        raise SourceError("--image-column and --label-column are for parquet input (--images 'data/*.parquet')")
    if images.endswith(".tar"):  # one shard, a brace pattern, or a glob
        return webdataset_source(images)
    if images.endswith(".parquet"):
        return parquet_source(images, image_column, label_column)
    p = Path(images)
    if p.is_dir():
        return folder_source(p)
    if p.is_file():
        if p.suffix.lower() in (".txt", ".csv", ".lst", ".tsv"):
            return list_source(p)
        raise SourceError(f"{p} is a file but not a .txt/.csv list of images or a .tar shard")
    raise SourceError(f"--images {images}: no such folder, file list, tar shard or parquet file")


def subset_fraction(source: ImageSource, fraction: float, seed: int = 0) -> ImageSource:
    """A seeded random subset in id order: each label keeps round(fraction × its rows), at least one."""
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
