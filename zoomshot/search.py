"""Text-to-image search over a cache: the source encoder's cached features, mapped into CLIP space,
in a faiss inner-product index; the query embedded by the mapping's target CLIP text tower (or
taken from the cache's stored vocabulary, so no model loads).

The index is built once per (mapping, cache state) and saved beside the cache as
`NAME.h5.<fingerprint>.faiss`, written atomically. The fingerprint hashes the mapping's tensors and
encoders, the index kind and the cache's identity (creation time, rows, which rows are usable),
so an index is reused exactly when it would be rebuilt the same. Up to IVF_THRESHOLD rows the
index is exact (IndexFlatIP); above, an IVF index (inner product) searched with IVF_NPROBE lists.
faiss ids are cache row numbers.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zoomshot.cache import open_cache
from zoomshot.errors import ZsError, did_you_mean
from zoomshot.mapping import Mapping, load_mapping

IVF_THRESHOLD = 100_000
IVF_NPROBE = 32
BUILD_CHUNK = 65536
TRAIN_POINTS_PER_LIST = 64  # faiss wants >= 39 training points per list


@dataclass
class Hit:
    rank: int
    score: float  # cosine between the query and the mapped image embedding
    row: int
    id: str
    label: int


@dataclass
class SearchResult:
    hits: list[Hit]
    index_path: Path
    built: bool  # False when an existing index was reused
    kind: str  # "flat" or "ivf"


def index_fingerprint(mapping: Mapping, cache, source_key: str, rows: np.ndarray, kind: str) -> str:
    """16 hex digits naming the index (of `kind`) of `mapping` over `rows` of `cache`."""
    h = hashlib.sha256(kind.encode())
    for t in (mapping.W, mapping.b, mapping.mean, mapping.std):
        h.update(np.ascontiguousarray(t, np.float32).tobytes())
    h.update(json.dumps([mapping.source, mapping.target], sort_keys=True, default=str).encode())
    cache_state = {"created": cache.created, "n": cache.n, "source": source_key}
    state = hashlib.sha256(json.dumps(cache_state).encode())
    state.update(np.ascontiguousarray(rows, np.int64).tobytes())
    h.update(state.hexdigest().encode())  # the cache's state hashed apart, as index files already saved were
    return h.hexdigest()[:16]


def build_index(mapping: Mapping, cache, source_key: str, rows: np.ndarray, kind: str):
    """A faiss index of the mapped, L2-normalised features of `rows`, with row numbers as ids."""
    import faiss

    d = mapping.W.shape[0]
    n = len(rows)
    if kind == "ivf":
        nlist = max(1, min(int(math.sqrt(n)), n // TRAIN_POINTS_PER_LIST))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(0)
        sample = np.sort(rng.choice(rows, size=min(n, nlist * TRAIN_POINTS_PER_LIST), replace=False))
        index.train(np.ascontiguousarray(mapping.forward(cache.image(source_key, sample)), np.float32))
        index.nprobe = min(nlist, IVF_NPROBE)
    else:
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(d))
    for lo in range(0, n, BUILD_CHUNK):
        part = rows[lo:lo + BUILD_CHUNK]
        z = np.ascontiguousarray(mapping.forward(cache.image(source_key, part)), np.float32)
        index.add_with_ids(z, np.ascontiguousarray(part, np.int64))
    return index


def open_or_build_index(mapping: Mapping, cache, ivf_threshold: int = IVF_THRESHOLD):
    """(index, path, built, kind) for `mapping` over the usable rows of `cache`."""
    import faiss

    from zoomshot.fileutil import atomic_path

    why = mapping.mismatch(cache.encoders)
    if why:
        raise ZsError(f"mapping {mapping.name} does not fit {cache.path}: {why}")
    key = mapping.source_key(cache.encoders)
    rows = cache.usable_rows(key)
    if len(rows) == 0:
        raise ZsError(f"{cache.path} has no usable rows for encoder {key!r} to search")
    kind = "ivf" if len(rows) > ivf_threshold else "flat"
    path = cache.path.with_name(f"{cache.path.name}.{index_fingerprint(mapping, cache, key, rows, kind)}.faiss")
    if path.is_file():
        try:
            index = faiss.read_index(str(path))
            if index.ntotal == len(rows):
                if hasattr(index, "nprobe"):
                    index.nprobe = min(index.nlist, IVF_NPROBE)
                return index, path, False, kind
        except RuntimeError:
            pass  # a damaged index file is rebuilt below
    index = build_index(mapping, cache, key, rows, kind)
    with atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))
    return index, path, True, kind


def query_embedding(mapping: Mapping, cache_path, query: str, vocab_query: bool = False, vocab: str | None = None,
                    text_weights: str | None = None, device: str = "auto") -> np.ndarray:
    """The query as a unit vector (1, d): with vocab_query the stored class embedding of class name
    `query` in the cache's vocabulary (no model loads), else the query as written (no template)
    embedded by the mapping's target CLIP text tower."""
    if vocab_query:
        from zoomshot.model import cache_classifier

        names, classifier = cache_classifier(cache_path, mapping.target, vocab)
        if query not in names:
            raise ZsError(f"class {query!r} is not in the cache's vocabulary{did_you_mean(query, names)}; "
                          f"it has {len(names)} classes, e.g. {', '.join(names[:5])}")
        q = classifier[names.index(query)]
    else:
        import torch

        from zoomshot.devices import resolve_device
        from zoomshot.model import build_role_encoder

        enc = build_role_encoder(mapping.target, text_weights, resolve_device(device), "target (CLIP)")
        if enc.family != "clip":
            raise ZsError(f"the mapping's target {enc.spec!r} is not a CLIP encoder; it has no text tower")
        with torch.inference_mode():
            q = enc.encode_text([query]).float().cpu().numpy()[0]
    q = np.asarray(q, np.float32)[None, :]
    return q / max(float(np.linalg.norm(q)), 1e-12)


def search_cache(cache_path: str | os.PathLike, mapping_dir: str | os.PathLike, query: str, top_k: int = 10,
                 ivf_threshold: int = IVF_THRESHOLD, **query_options) -> SearchResult:
    """The top_k cache images for a text query (see the module docstring); query_options are
    `query_embedding`'s (vocab_query, vocab, text_weights, device)."""
    if top_k < 1:
        raise ZsError(f"--top-k must be at least 1 (got {top_k})")
    if not query.strip():
        raise ZsError("the query is empty")
    mapping = load_mapping(mapping_dir)
    with open_cache(cache_path) as cache:
        index, path, built, kind = open_or_build_index(mapping, cache, ivf_threshold)
        q = query_embedding(mapping, cache_path, query, **query_options)
        scores, rows = index.search(q, min(top_k, index.ntotal))
        found = [(float(s), int(row)) for s, row in zip(scores[0], rows[0]) if row >= 0]
        hits = [Hit(r + 1, s, row, *cache.row(row)) for r, (s, row) in enumerate(found)]
    return SearchResult(hits, path, built, kind)
