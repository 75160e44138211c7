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

from .shardfile import write_failed

MANIFEST_FORMAT = "zs-shards"
MANIFEST_VERSION = 1
DEFAULT_SHARD_ROWS = 10_000


def refuse_mismatch(holder: str, have: EncoderEntry, want: EncoderEntry, fields=IDENTITY + COMPUTE) -> None:
    """Refuse a run whose encoder `want` differs from `have`, recorded in `holder`, in one of `fields`:
    identity (spec, family, dim, weights) or the precision and decoder its rows were computed with."""
    name = have.mismatch(want, fields)
    if name in IDENTITY:
        raise CacheError(f"{holder} has {name}={getattr(have, name)!r}, this run has "
                         f"{getattr(want, name)!r}; write to another --out")
    if name in COMPUTE:
        was, now = getattr(have, name), getattr(want, name)
        raise CacheError(f"{holder} holds rows computed with --{name} {was}, this run uses {now}; rerun with "
                         f"--{name} {was} (rows computed differently are not mixed in one encoder) or write "
                         f"to another --out")


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
            m = Manifest(rows=n, shard_rows=rows, shards=math.ceil(n / rows), ids_sha256=ids_sha256)
            try:
                with atomic_path(self.images_path) as tmp, h5py.File(tmp, "w") as f:
                    write_ids(f, ids, ids_sha256)
                    f.create_dataset("labels", data=np.asarray(labels, np.int32), **checksummed(len(ids)))
                    if class_names is not None:
                        f.create_dataset("class_names", data=np.array(list(class_names), dtype=object), dtype=STR)
            except (OSError, RuntimeError) as e:
                raise write_failed(self.images_path, e) from None
            write_text_atomic(self.manifest_path, json.dumps(asdict(m), indent=1))
            return m

    def read_images(self) -> tuple[list[str], np.ndarray, list[str] | None]:
        with h5py.File(self.images_path, "r") as f:
            names = read_strings(f["class_names"]) if "class_names" in f else None
            return read_ids(f["ids"], self.images_path), f["labels"][()], names

    def write_encoder(self, entry: EncoderEntry) -> None:
        """Record (or check against the record) an encoder's identity in its shard folder."""
        path = self.encoder_record_path(entry.key)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            self.check_encoder(entry)
            return
        write_text_atomic(path, json.dumps(entry.record(), indent=1, sort_keys=True))

    def check_encoder(self, entry: EncoderEntry) -> None:
        """Refuse a run whose encoder differs from the one recorded for the shards (`refuse_mismatch`)."""
        have = self.encoder(entry.key)
        if have is not None:
            refuse_mismatch(f"{self.root}/{entry.key}", have, entry)

    def encoder(self, key: str) -> EncoderEntry | None:
        """The encoder recorded in KEY/encoder.json, or None."""
        path = self.encoder_record_path(key)
        return EncoderEntry.from_record(key, json.loads(path.read_text()), str(path)) if path.exists() else None

    @contextlib.contextmanager
    def lock_file(self, path: Path):
        """A blocking exclusive lock for short critical sections (manifest, entry file)."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    @contextlib.contextmanager
    def claim_shards(self, key: str, first: int, last: int):
        """Lock shards [first, last) of encoder KEY for this process, or refuse with a clear message:
        a byte-range lock on KEY/.lock, released when the process dies (a killed run leaves none)."""
        if last <= first:  # nothing to claim (a zero length would lock the whole file)
            yield
            return
        path = self.claim_lock_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, last - first, first, os.SEEK_SET)
            except OSError:
                raise CacheError(
                    f"{self.entry} is being written by another zs extract (shards {first}..{last - 1} of "
                    f"encoder {key} are locked in {self.root}); wait for it to finish, or write to "
                    f"another --out") from None
            yield
        finally:
            os.close(fd)
