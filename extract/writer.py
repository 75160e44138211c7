"""A writer thread: HDF5 writes (and waiting for device-to-host copies) overlap the next batch's compute.

The main loop hands over (encoder key, shard, rows, features) in order; the thread appends them
to the shard's partial file and renames the shard when its last row is written. An error in the
thread is raised in the main loop at the next hand-over or at `close`.
"""
from __future__ import annotations

import contextlib
import queue
import threading
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .layout import Layout, Manifest
from .shardfile import ShardFile, write_failed


@dataclass
class Rows:
    key: str
    shard: int
    start: int
    stop: int
    feats: Callable[[], np.ndarray]  # waits for the host copy; (n_ok, dim)
    ok: np.ndarray
    errors: list[str]


class ShardWriterThread:
    def __init__(self, layout: Layout, m: Manifest, specs: dict[str, tuple[str, int]], depth: int = 4):
        self.layout, self.m, self.specs = layout, m, specs
        self.q: queue.Queue = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.open: dict[tuple[str, int], ShardFile] = {}
        self.thread = threading.Thread(target=self._run, name="zs-shard-writer", daemon=True)
        self.thread.start()

    def put(self, rows: Rows) -> None:
        self._raise()
        while True:
            try:
                self.q.put(rows, timeout=0.5)
                return
            except queue.Full:
                self._raise()

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        for item in iter(self.q.get, None):
            if self.error is not None:
                continue  # drain after a failure; the main loop raises it
            try:
                self._write(item)
            except (OSError, RuntimeError) as e:  # h5py's write errors: full disk, size limit, I/O
                self.error = self._drop_damaged(item, e)
            except BaseException as e:  # handed to the main thread
                self.error = e

    def _write(self, r: Rows) -> None:
        sf = self.open.get((r.key, r.shard))
        if sf is None:
            a, b = self.m.bounds(r.shard)
            spec, dim = self.specs[r.key]
            sf = ShardFile.open(self.layout.shard_path(r.key, r.shard), a, b, r.key, spec, dim)
            self.open[(r.key, r.shard)] = sf
        sf.write(r.start, r.stop, r.feats(), r.ok, r.errors)
        if r.stop == sf.stop:
            sf.finalize()
            del self.open[(r.key, r.shard)]

    def _drop_damaged(self, r: Rows, err: BaseException) -> BaseException:
        """After a failed write the partial file's HDF5 metadata cannot be trusted (a later append
        fails or lands beyond its end): remove it, so the rerun writes this shard again."""
        with contextlib.suppress(Exception):  # KeyError: the open itself failed
            self.open.pop((r.key, r.shard)).close()
        with contextlib.suppress(OSError):
            self.layout.partial_path(r.key, r.shard).unlink()
        return write_failed(self.layout.shard_path(r.key, r.shard), err)

    def close(self) -> None:
        """Wait for every queued write; partial shards stay on disk for a rerun to resume."""
        self.q.put(None)
        self.thread.join()
        for sf in self.open.values():
            sf.close()
        self.open.clear()
        self._raise()

    def abort(self) -> None:
        """After an error in the main loop: stop, keep what was flushed, close the files."""
        with contextlib.suppress(queue.Full):
            self.q.put(None, timeout=5)
            self.thread.join(timeout=30)
        if self.thread.is_alive():  # stuck in a write: leave its files to the OS
            return
        for sf in self.open.values():
            with contextlib.suppress(Exception):
                sf.close()
        self.open.clear()
