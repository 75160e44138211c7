"""The entry file: one zs-cache v1 file whose encoders/KEY/image are virtual datasets over final shards.

Written only when every shard of an encoder is final, under the entry lock, to a temporary
name that is renamed into place; encoders with unfinished shards are left out (and reported).
Encoders an earlier entry file holds without shards (written by another tool) are copied over.
"""
from __future__ import annotations

import contextlib

import h5py
import numpy as np

from zoomshot.cache import CacheError, CacheWriter, check_image_list, checksummed, open_cache, read_strings
from zoomshot.fileutil import atomic_path

from .faults import fault_point
from .layout import Layout, Manifest
from .shardfile import read_shard_rows


def write_entry(layout: Layout, m: Manifest, require: list[str]):
    """Write the entry file when every encoder in `require` has all shards final: what it holds per row
    (status, first error, each encoder's done rows), or None when it was not written."""
    with layout.lock_file(layout.lock_path("entry")), contextlib.ExitStack() as stack:
        keys = [k for k in layout.encoder_keys() if layout.shard_counts(k)[0] == m.shards]
        if not set(require) <= set(keys):
            return None
        ids, labels, class_names = layout.read_images()
        per_key = {}
        status = np.zeros(m.rows, np.uint8)
        errors = [""] * m.rows
        for key in keys:
            done = np.zeros(m.rows, bool)
            for s in range(m.shards):
                a, b = m.bounds(s)
                d, st, er = read_shard_rows(layout.shard_path(key, s))
                if len(d) != b - a:
                    raise CacheError(f"{layout.shard_path(key, s)} holds {len(d)} rows, the layout says {b - a}")
                done[a:b] = d
                status[a:b] = np.maximum(status[a:b], st)
                _keep_first_errors(errors, a, er)
            per_key[key] = done
        old = None
        if layout.entry.exists():  # open_cache refuses a file that is not a readable zs-cache of this version
            old = stack.enter_context(open_cache(layout.entry))
            check_image_list(str(layout.entry), old.n, old.ids_digest, ids, m.ids_sha256, than="its shards")
        with atomic_path(layout.entry) as tmp:
            with CacheWriter(tmp, ids, labels, class_names) as w:
                encs = w.f.require_group("encoders")
                for key in keys:
                    _write_encoder(w, encs, layout, m, key, per_key[key])
                if old is not None:
                    for key in old.encoders:
                        if key not in encs:
                            old.f.copy(old.f[f"encoders/{key}"], encs, name=key)
                    status = np.maximum(status, old.status)
                    _keep_first_errors(errors, 0, old.errors)
                    per_key.update({k: old.done(k) for k in old.encoders if k not in per_key})
                w.f["images/status"][...] = status
                w.f["images/errors"][...] = np.array(errors, dtype=object)
            fault_point("entry_written")
        return status, errors, per_key


def _keep_first_errors(errors: list[str], offset: int, new: list[str]) -> None:
    """Fill errors[offset:] from new where a row has no reason yet (the first reason found wins)."""
    for i, e in enumerate(new):
        if e and not errors[offset + i]:
            errors[offset + i] = e


def _write_encoder(w: CacheWriter, encs: h5py.Group, layout: Layout, m: Manifest, key: str, done: np.ndarray):
    entry = layout.encoder(key)
    g = encs.create_group(key)
    g.attrs.update(entry.attrs())
    lay = h5py.VirtualLayout(shape=(m.rows, entry.dim), dtype=np.float16)
    for s in range(m.shards):
        a, b = m.bounds(s)
        src = layout.relative_to_entry(layout.shard_path(key, s))
        lay[a:b] = h5py.VirtualSource(src, "image", shape=(b - a, entry.dim))
    # NaN where a source is unreadable, so a missing shard can never pass for features.
    g.create_virtual_dataset("image", lay, fillvalue=np.float16(np.nan))
    g.create_dataset("done", data=done, **checksummed(len(done)))
    for vocab in layout.vocabularies(key):
        with h5py.File(layout.text_path(key, vocab), "r") as t:
            w.write_text(key, vocab, read_strings(t["names"]), read_strings(t["templates"]), t["emb"][()])
