"""One shard of one encoder: rows [start, stop) written batch by batch, renamed into place when complete.

A shard is written as `NNNNN.h5.partial`: each batch's rows are flushed before the `rows_done`
attribute that claims them, so a process killed at any moment leaves whole rows, which a rerun
checks (fletcher32 checksums) and continues after, or starts the shard again when they do not read
back. A complete shard is read back whole (`verify_shard`) before it is renamed final, so a write
the disk lost (full disk, I/O error) never becomes a final shard.
"""
from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

import h5py
import numpy as np

from zoomshot.cache import STATUS_OK, STATUS_UNREADABLE, STR, CacheError, chunk_rows, read_strings
from zoomshot.errors import first_line
from zoomshot.fileutil import fsync_path
from zoomshot.shards import partial_of

from .faults import fault_point

SHARD_FORMAT = "zs-shard"
# A chunk cache that holds a whole ~1 MiB chunk, so batch writes smaller than a chunk do not re-read it.
CHUNK_CACHE_BYTES = 8 << 20
FLOAT16_MAX = float(np.finfo(np.float16).max)


class ShardFile:
    """An open partial shard. Use `resume_point` first, then `open` to append."""

    def __init__(self, final: Path, f: h5py.File):
        self.final = Path(final)
        self.partial = partial_of(final)
        self.f = f
        self.start, self.stop, self.dim = (int(f.attrs[k]) for k in ("start", "stop", "dim"))

    @property
    def rows_done(self) -> int:
        return int(self.f.attrs["rows_done"])

    @classmethod
    def open(cls, final: Path, start: int, stop: int, key: str, spec: str, dim: int) -> "ShardFile":
        """Open the partial shard for appending, creating it when absent."""
        partial = partial_of(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        if partial.exists():
            return cls(final, h5py.File(partial, "a", rdcc_nbytes=CHUNK_CACHE_BYTES))
        f = h5py.File(partial, "w", rdcc_nbytes=CHUNK_CACHE_BYTES)
        n = stop - start
        f.attrs.update({"format": SHARD_FORMAT, "key": key, "spec": spec, "dim": dim,
                        "start": start, "stop": stop, "rows_done": start, "complete": False})
        f.create_dataset("image", shape=(n, dim), dtype=np.float16, chunks=(chunk_rows(dim, n), dim),
                         fletcher32=True, fillvalue=np.float16(np.nan))
        f.create_dataset("done", shape=(n,), dtype=bool, fillvalue=False, chunks=(n,), fletcher32=True)
        f.create_dataset("status", shape=(n,), dtype=np.uint8, fillvalue=STATUS_OK, chunks=(n,), fletcher32=True)
        f.create_dataset("errors", shape=(n,), dtype=STR)
        f.flush()
        return cls(final, f)

    def write(self, a: int, b: int, feats: np.ndarray, ok: np.ndarray, errors: list[str]) -> None:
        """Rows [a, b): feats holds the rows where ok is True, in order; errors the reasons of the others."""
        if a != self.rows_done or not self.start <= a < b <= self.stop:
            raise CacheError(f"{self.partial}: rows [{a}, {b}) do not continue rows_done={self.rows_done}")
        ok = np.asarray(ok, bool)
        feats = np.asarray(feats)
        if feats.shape != (int(ok.sum()), self.dim):
            raise CacheError(f"{self.partial}: features of shape {feats.shape} for {int(ok.sum())} readable rows, dim {self.dim}")
        block = np.full((b - a, self.dim), np.nan, np.float16)
        block[ok] = _to_float16(feats, str(self.f.attrs["key"]))
        i, j = a - self.start, b - self.start
        self.f["image"][i:j] = block
        self.f["done"][i:j] = ok
        self.f["status"][i:j] = np.where(ok, STATUS_OK, STATUS_UNREADABLE).astype(np.uint8)
        self.f["errors"][i:j] = np.array([("" if o else e) for o, e in zip(ok, errors)], dtype=object)
        self.f.flush()  # the rows first ...
        self.f.attrs["rows_done"] = b
        self.f.flush()  # ... then the claim that they are there
        fault_point("batch_written")

    def finalize(self) -> None:
        """Close a complete shard and rename it to its final name (visible to readers only now)."""
        if self.rows_done != self.stop:
            raise CacheError(f"{self.partial}: finalize with {self.rows_done - self.start} of {self.stop - self.start} rows")
        self.f.attrs["complete"] = True
        self.close()
        fsync_path(self.partial)
        verify_shard(self.partial, self.start, self.stop)
        fault_point("shard_complete")
        os.replace(self.partial, self.final)
        with contextlib.suppress(OSError):
            fsync_path(self.final.parent)
        fault_point("shard_final")

    def close(self) -> None:
        if self.f is not None:
            self.f.close()
            self.f = None


def resume_point(final: Path, start: int, stop: int, key: str, spec: str, dim: int) -> int:
    """The first row of shard `final` still to write: stop for a final shard, rows_done of a sound
    partial, else start. Final shards are trusted (the run removed unsound ones with
    `keep_sound_final`); a partial file that does not open, belongs to another encoder or range, or
    fails its checksums is removed, so the shard is written again from its first row. A complete
    partial (killed between its last write and its rename) is renamed final now."""
    if final.exists():
        return stop
    partial = partial_of(final)
    if not partial.exists():
        return start
    try:
        with h5py.File(partial, "r") as f:
            a = f.attrs
            if (a.get("format") != SHARD_FORMAT or int(a["start"]) != start or int(a["stop"]) != stop
                    or a["key"] != key or a["spec"] != spec or int(a["dim"]) != dim):
                raise ValueError("written for another shard layout or encoder")
            done = int(a["rows_done"])
            if not start <= done <= stop:
                raise ValueError(f"rows_done {done} outside [{start}, {stop}]")
            _check_rows(f, done - start, start)
    except Exception:  # a file cut off mid-flush: its rows are not trusted, write the shard again
        partial.unlink()
        return start
    if done == stop:
        ShardFile.open(final, start, stop, key, spec, dim).finalize()
    return done


def write_failed(path, err: BaseException) -> CacheError:
    """One line for an HDF5 write that failed (full disk, file-size limit, I/O error): HDF5's own
    message spans lines and carries a time stamp and buffer address."""
    m = re.search(r"error message = '([^']*)'", str(err))
    why = m.group(1) if m else first_line(err)
    return CacheError(f"cannot write {path}: {why}; nothing half-written was kept: free space (or fix "
                      f"the disk) and rerun the same zs extract")


def _to_float16(feats: np.ndarray, key: str) -> np.ndarray:
    """The cache stores float16: features beyond its range would become inf, so they are refused."""
    with np.errstate(over="ignore"):
        out = feats.astype(np.float16)
    if not np.isfinite(out).all():
        finite = np.isfinite(feats)
        if not finite.all():
            raise CacheError(f"encoder {key} gave non-finite features (NaN or inf) for "
                             f"{int((~finite.all(axis=1)).sum())} images; fix the encoder, nothing of them was stored")
        raise CacheError(f"encoder {key} gives features up to {float(np.abs(feats).max()):.3g}, beyond float16's "
                         f"range (±{FLOAT16_MAX:.0f}) that the cache stores; scale them down inside the encoder "
                         f"(e.g. a plug-in dividing by a constant) — they are refused rather than stored as inf")
    return out


def _check_rows(f: h5py.File, n: int, start: int) -> None:
    """Raise CacheError unless the first n rows of shard file f read back whole: every readable row
    done, status 0 or 1, done rows finite, every chunk's fletcher32 checksum good."""
    done, status = f["done"][:n], f["status"][:n]
    if not np.all(done | (status != STATUS_OK)):
        raise CacheError(f"{int((~done & (status == STATUS_OK)).sum())} readable rows are not done")
    if not np.all(np.isin(status, (STATUS_OK, STATUS_UNREADABLE))):
        raise CacheError("status holds values other than 0 and 1")
    img, step = f["image"], f["image"].chunks[0]
    for lo in range(0, n, step):  # reading checks every chunk's fletcher32 checksum
        if not np.isfinite(img[lo:min(lo + step, n)][done[lo:lo + step]]).all():
            raise CacheError(f"non-finite features in done rows near row {start + lo}")
    read_strings(f["errors"])


def verify_shard(path: Path, start: int, stop: int) -> None:
    """Read a complete shard back whole before it may become final; raise CacheError when it is not sound."""
    try:
        with h5py.File(path, "r") as f:
            if int(f.attrs["rows_done"]) != stop or not bool(f.attrs.get("complete", False)):
                raise CacheError("rows_done or complete did not reach the file")
            if len(f["done"]) != stop - start or len(f["status"]) != stop - start:
                raise CacheError("row count does not match the shard range")
            _check_rows(f, stop - start, start)
    except (OSError, KeyError, ValueError, CacheError) as e:
        raise CacheError(f"shard {path} did not read back after writing ({first_line(e)}); the disk may be "
                         f"full or failing. It was not made final: free space and rerun the same "
                         f"zs extract") from None


def keep_sound_final(final: Path) -> None:
    """Remove final shard `final` when it is not sound (not marked complete, or readable rows not done:
    left by a run that lost writes before shards were verified), so it is written again."""
    try:
        if final.exists():
            read_shard_rows(final)
    except CacheError:
        final.unlink(missing_ok=True)  # another process of the run may have removed it first


def read_shard_rows(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """done, status and errors of a final shard (cheap: no feature data)."""
    try:
        with h5py.File(path, "r") as f:
            if not bool(f.attrs.get("complete", False)):
                raise CacheError(f"{path} is not marked complete")
            if "image" not in f:
                raise CacheError(f"shard file {path} has no image dataset; delete it and rerun zs extract")
            done, status = f["done"][()], f["status"][()]
            if not np.all(done | (status != STATUS_OK)):
                raise CacheError(f"shard file {path} is final but {int((~done & (status == STATUS_OK)).sum())} of its "
                                 f"readable rows are not done (written by a run that lost writes); delete it and "
                                 f"rerun zs extract")
            return done, status, read_strings(f["errors"])
    except (OSError, KeyError) as e:
        raise CacheError(f"shard file {path} does not read back ({e}); delete it and rerun zs extract") from None
