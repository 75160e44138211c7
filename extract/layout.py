"""Writing an extraction's shard folder: the manifest, the image list, encoder records and locks.

The file names are `zoomshot.shards`'. Shards have a fixed row count chosen by the first run, so
later runs with another number of processes reuse every finished shard.
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

from zoomshot.cache import (COMPUTE, IDENTITY, STR, CacheError, EncoderEntry, check_image_list, checksummed,
                            read_ids, read_strings, write_ids)
from zoomshot.fileutil import atomic_path, write_text_atomic
from zoomshot.shards import ShardPaths

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


class Layout(ShardPaths):
    """The bookkeeping of one cache's shard folder."""

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
        with self.lock_file(self.lock_path("manifest")):
            have = self.read_manifest()
            if have is not None:
                check_image_list(f"{self.root} (shards)", have.rows, have.ids_sha256, ids, ids_sha256)
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
            names = read_strings(f["class_names"]) if "class_names" in f else None
            return read_ids(f["ids"], self.images_path), f["labels"][()], names

    # -- encoders -------------------------------------------------------------------------------
    def write_encoder(self, entry: EncoderEntry) -> None:
        """Record (or check against the record) an encoder's identity in its shard folder."""
        path = self.encoder_record_path(entry.key)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            self.check_encoder(entry)
            return
        write_text_atomic(path, json.dumps(entry.record(), indent=1, sort_keys=True))

    def check_encoder(self, entry: EncoderEntry) -> None:
        """Refuse a run whose encoder identity differs from the shards': spec, family, dim, weights, and
        the precision and decoder the rows were computed with (folders written before these were
        recorded are not checked on them)."""
        have = self.encoder(entry.key)
        name = have.mismatch(entry) if have is not None else None
        if name in IDENTITY:
            raise CacheError(f"{self.root}/{entry.key} holds shards with {name}={getattr(have, name)!r}, this run "
                             f"has {getattr(entry, name)!r}; write to another --out")
        if name in COMPUTE:
            was, now = getattr(have, name), getattr(entry, name)
            raise CacheError(f"{self.root}/{entry.key} holds rows computed with --{name} {was}, this run "
                             f"uses {now}; rerun with --{name} {was} (rows computed differently "
                             f"are not mixed in one encoder) or write to another --out")

    def encoder(self, key: str) -> EncoderEntry | None:
        """The encoder recorded in KEY/encoder.json, or None."""
        path = self.encoder_record_path(key)
        return EncoderEntry.from_record(key, json.loads(path.read_text()), str(path)) if path.exists() else None

    def final_shards(self, key: str, m: Manifest) -> list[bool]:
        return [self.shard_path(key, s).exists() for s in range(m.shards)]

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
        self.path = layout.claim_lock_path(key)
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
