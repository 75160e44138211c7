"""The on-disk layout of an extraction: shard files beside the entry file, a manifest, locks.

```
NAME.h5                      the entry file: written last, stitches final shards (virtual datasets)
NAME.shards/
  manifest.json              rows, shard_rows, shards, digest of the ids: fixed by the first run
  images.h5                  ids, labels, class names of the rows (written once, atomically)
  .manifest.lock .entry.lock
  KEY/encoder.json           the encoder's cache attributes (spec, family, dim, weights, ...)
  KEY/00003.h5               shard 3 of encoder KEY, final (renamed into place when complete)
  KEY/00003.h5.partial       shard 3 being written; a rerun resumes it from its done rows
  KEY/.lock                  byte-range locks: a process holds bytes [first, last) of its shards
  KEY/text/VOCAB.h5          a CLIP encoder's prompt embeddings of one vocabulary
```

Shards have a fixed row count chosen by the first run, so later runs with another number of
processes reuse every finished shard.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import h5py
import numpy as np

from zoomshot.cache import STR, CacheError, _strs, checksummed, read_ids, shard_dir, write_ids
from zoomshot.fileutil import atomic_path, write_text_atomic

from .shardfile import partial_of

MANIFEST_FORMAT = "zs-shards"
MANIFEST_VERSION = 1
DEFAULT_SHARD_ROWS = 10_000


@contextlib.contextmanager
def _one_line_write_errors(path: Path):
    from .shardfile import write_failed

    try:
        yield
    except (OSError, RuntimeError) as e:
        raise write_failed(path, e) from None


class LockedError(CacheError):
    """Another process is writing the same part of the same cache."""


@dataclass
class Manifest:
    rows: int
    shard_rows: int
    shards: int
    ids_sha256: str
    format: str = MANIFEST_FORMAT
    version: int = MANIFEST_VERSION

    def bounds(self, s: int) -> tuple[int, int]:
        return s * self.shard_rows, min((s + 1) * self.shard_rows, self.rows)


class Layout:
    """Paths and bookkeeping of one cache's shard folder."""

    def __init__(self, entry: str | os.PathLike):
        self.entry = Path(entry)
        self.root = shard_dir(self.entry)

    # -- paths ----------------------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    @property
    def images_path(self) -> Path:
        return self.root / "images.h5"

    def encoder_dir(self, key: str) -> Path:
        return self.root / key

    def shard_path(self, key: str, s: int) -> Path:
        return self.root / key / f"{s:05d}.h5"

    def partial_path(self, key: str, s: int) -> Path:
        return partial_of(self.shard_path(key, s))

    def text_path(self, key: str, vocab: str) -> Path:
        return self.root / key / "text" / f"{vocab}.h5"

    def relative_to_entry(self, p: Path) -> str:
        return Path(os.path.relpath(p, self.entry.parent)).as_posix()

    # -- manifest and image list ----------------------------------------------------------------
    def read_manifest(self) -> Manifest | None:
        if not self.manifest_path.exists():
            return None
        d = json.loads(self.manifest_path.read_text())
        if d.get("format") != MANIFEST_FORMAT or d.get("version") != MANIFEST_VERSION:
            raise CacheError(f"{self.manifest_path} is not a {MANIFEST_FORMAT} v{MANIFEST_VERSION} manifest")
        return Manifest(**d)

    def open_or_create(self, ids: list[str], labels: np.ndarray, class_names: list[str] | None,
                       ids_sha256: str, shard_rows: int | None, world: int) -> Manifest:
        """The manifest of this shard folder, created by the first run and checked by later ones."""
        self.root.mkdir(parents=True, exist_ok=True)
        with self.lock_file(self.root / ".manifest.lock"):
            have = self.read_manifest()
            if have is not None:
                if have.rows != len(ids) or have.ids_sha256 != ids_sha256:
                    raise CacheError(
                        f"{self.root} holds shards of a different image list ({have.rows} rows) than this run "
                        f"({len(ids)} rows); use another --out or the same images, fraction and seed")
                if shard_rows is not None and shard_rows != have.shard_rows:
                    raise CacheError(f"{self.root} was started with --shard-rows {have.shard_rows}; "
                                     f"rerun with that value or without --shard-rows")
                return have
            n = len(ids)
            rows = shard_rows or max(1, min(DEFAULT_SHARD_ROWS, math.ceil(n / max(world, 1))))
            m = Manifest(rows=n, shard_rows=rows, shards=max(1, math.ceil(n / rows)) if n else 0,
                         ids_sha256=ids_sha256)
            with atomic_path(self.images_path) as tmp, _one_line_write_errors(self.images_path):
                with h5py.File(tmp, "w") as f:
                    write_ids(f, ids)
                    f.create_dataset("labels", data=np.asarray(labels, np.int32), **checksummed(len(ids)))
                    if class_names is not None:
                        f.create_dataset("class_names", data=np.array(list(class_names), dtype=object), dtype=STR)
            write_text_atomic(self.manifest_path, json.dumps(asdict(m), indent=1))
            return m

    def read_images(self) -> tuple[list[str], np.ndarray, list[str] | None]:
        with h5py.File(self.images_path, "r") as f:
            names = _strs(f["class_names"]) if "class_names" in f else None
            return read_ids(f["ids"], self.images_path), f["labels"][()], names

    # -- encoders -------------------------------------------------------------------------------
    def write_encoder_attrs(self, key: str, attrs: dict) -> None:
        """Record (or check against the record) an encoder's attributes in its shard folder."""
        path = self.encoder_dir(key) / "encoder.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            self.check_encoder_attrs(key, attrs)
            return
        write_text_atomic(path, json.dumps(attrs, indent=1, sort_keys=True))

    def check_encoder_attrs(self, key: str, attrs: dict) -> None:
        """Refuse a run whose encoder identity differs from the shards': spec, family, dim, weights, and
        the precision and decoder the rows were computed with (folders written before these were
        recorded are not checked on them)."""
        have = self.encoder_attrs(key)
        if have is None:
            return
        for name in ("spec", "family", "dim", "weights"):
            if have.get(name) != attrs.get(name):
                raise CacheError(f"{self.root}/{key} holds shards with {name}={have.get(name)!r}, this run has "
                                 f"{attrs.get(name)!r}; write to another --out")
        for name in ("precision", "decode"):
            if name in have and name in attrs and have[name] != attrs[name]:
                raise CacheError(f"{self.root}/{key} holds rows computed with --{name} {have[name]}, this run "
                                 f"uses {attrs[name]}; rerun with --{name} {have[name]} (rows computed differently "
                                 f"are not mixed in one encoder) or write to another --out")

    def encoder_attrs(self, key: str) -> dict | None:
        path = self.encoder_dir(key) / "encoder.json"
        return json.loads(path.read_text()) if path.exists() else None

    def encoder_keys(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / "encoder.json").exists())

    def final_shards(self, key: str, m: Manifest) -> list[bool]:
        return [self.shard_path(key, s).exists() for s in range(m.shards)]

    def vocabularies(self, key: str) -> list[str]:
        d = self.encoder_dir(key) / "text"
        return sorted(p.stem for p in d.glob("*.h5")) if d.is_dir() else []

    # -- locks ----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock_file(self, path: Path):
        """A blocking exclusive lock for short critical sections (manifest, entry file)."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def claim_shards(self, key: str, first: int, last: int) -> "ShardClaim":
        """Lock shards [first, last) of encoder KEY for this process, or refuse with a clear message."""
        return ShardClaim(self, key, first, last)


class ShardClaim:
    """Byte-range lock on KEY/.lock: bytes [first, last) stand for shards [first, last).

    POSIX record locks are released when the process dies, so a killed run leaves no stale lock.
    """

    def __init__(self, layout: Layout, key: str, first: int, last: int):
        self.path = layout.encoder_dir(key) / ".lock"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.first, self.last = first, last
        self.fd = None
        if last <= first:  # nothing to claim (a zero length would lock the whole file)
            return
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB, last - first, first, os.SEEK_SET)
        except OSError:
            os.close(self.fd)
            self.fd = None
            raise LockedError(
                f"{layout.entry} is being written by another zs extract (shards {first}..{last - 1} of "
                f"encoder {key} are locked in {layout.root}); wait for it to finish, or write to another --out"
            ) from None

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
