"""The fit stage's data path: which encoders and rows to use, and getting those rows onto the device.

Rows are read from the cache as float16 in row-range chunks and become float32 on the device. When
every needed row fits in the memory budget there is one chunk, read once and kept resident; when
not, the rows are split into fixed file-row ranges that are streamed each epoch (chunk order and
order within a chunk shuffled) by a background reader that keeps the next chunk ready.

Subsets: `--fraction f` keeps the first round(f·n) rows of a seeded permutation of the usable rows,
so fractions with one seed are nested. A row's *rank* is its place in that permutation; a fit with
fraction f uses the rows with rank < round(f·n). Several fits over one cache (a sweep) read the rows
once and tell their rows apart by rank.
"""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass

import numpy as np

from zoomshot.cache import Cache, CacheError
from zoomshot.errors import ZsError


def resolve_encoders(cache: Cache, source: str | None, target: str | None) -> tuple[str, str]:
    """The (source, target) keys: as given, or inferred when the cache holds one of each family."""
    encs = cache.encoders
    if not encs:
        raise ZsError(f"{cache.path} holds no encoders; run `zs extract` first")
    for role, key in (("--source", source), ("--target", target)):
        if key is not None and key not in encs:
            raise ZsError(f"{cache.path} has no encoder {key!r} ({role}); it has: {', '.join(encs)}")
    clips = [k for k, e in encs.items() if e.family == "clip"]
    listing = ", ".join(f"{k} ({e.family})" for k, e in encs.items())
    if target is None:
        cands = [k for k in clips if k != source]
        if not cands:
            other = f" other than the --source {source!r}" if source in clips else ""
            raise ZsError(f"{cache.path} has no CLIP encoder{other} to map into; encoders: {listing}")
        if len(cands) > 1:
            raise ZsError(f"{cache.path} has several CLIP encoders; name the target with --target "
                          f"(encoders: {listing})")
        target = cands[0]
    if encs[target].family != "clip":
        raise ZsError(f"--target {target!r} is a {encs[target].family} encoder; the target must be a "
                      f"CLIP encoder (family 'clip'): {', '.join(clips) or 'none in this cache'}")
    if source is None:
        cands = [k for k, e in encs.items() if e.family == "vision" and k != target]
        if not cands:
            raise ZsError(f"{cache.path} has no vision encoder to map from; name a --source "
                          f"(encoders: {listing})")
        if len(cands) > 1:
            raise ZsError(f"{cache.path} has several vision encoders; name the source with --source "
                          f"(encoders: {listing})")
        source = cands[0]
    if source == target:
        raise ZsError(f"--source and --target are both {source!r}; they must differ")
    return source, target


def subset_sizes(n: int, fractions) -> list[int]:
    """Rows kept for each fraction (at least one row)."""
    return [max(1, int(round(f * n))) for f in fractions]


def row_ranks(usable: np.ndarray, seed: int) -> np.ndarray:
    """rank[i] = place of usable[i] in the seeded permutation of the usable rows."""
    perm = np.random.default_rng(seed).permutation(len(usable))
    rank = np.empty(len(usable), np.int64)
    rank[perm] = np.arange(len(usable))
    return rank


@dataclass
class RowPlan:
    """The rows one or several fits read: global row indices (sorted) and their ranks."""

    rows: np.ndarray  # (n,) int64, sorted global row indices of the union of all fits' rows
    ranks: np.ndarray  # (n,) int64, rank of each row; fit g uses rows with rank < sizes[g]
    usable: int  # how many usable rows the cache has
    sizes: list[int]  # per fraction asked for
    chunk_rows: int  # file rows per chunk; >= cache rows when everything is resident
    n_file: int

    @property
    def resident(self) -> bool:
        return self.chunk_rows >= self.n_file

    def chunks(self) -> list[tuple[int, int]]:
        """(start, stop) index ranges into `rows` per chunk, empty chunks dropped."""
        edges = np.arange(0, self.n_file + self.chunk_rows, self.chunk_rows)
        cut = np.searchsorted(self.rows, edges)
        return [(int(a), int(b)) for a, b in zip(cut[:-1], cut[1:]) if b > a]


def plan_rows(cache: Cache, source: str, target: str, fractions, seed: int, bytes_per_row: int,
              memory_budget: int) -> RowPlan:
    usable = cache.usable_rows(source, target)
    if len(usable) == 0:
        raise ZsError(f"{cache.path} has no usable rows for {source} and {target} (status 0 and done "
                      f"for both); finish the extraction first (`zs cache info {cache.path}`)")
    sizes = subset_sizes(len(usable), fractions)
    rank = row_ranks(usable, seed)
    keep = rank < max(sizes)
    rows, ranks = usable[keep], rank[keep]
    need = len(rows) * bytes_per_row
    if need <= memory_budget:
        chunk_rows = cache.n
    else:
        # Three chunks live at once: the one trained on, the one read ahead, the one being read.
        # Chunks are file-row ranges sized by the density of usable rows (not of this fit's
        # subset), so every fit on a cache and budget sees the same chunks, alone or in a sweep.
        density = len(usable) / cache.n
        chunk_rows = max(1, int(memory_budget // (3 * bytes_per_row * density)))
    return RowPlan(rows, ranks, len(usable), sizes, chunk_rows, cache.n)


class Chunk:
    """One chunk on the device: source features v (raw), target features c (L2-normalised), ranks."""

    def __init__(self, v, c, ranks, rows):
        self.v, self.c, self.ranks, self.rows = v, c, ranks, rows


def read_arrays(cache: Cache, source: str, target: str, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of both encoders as float16 numpy arrays; NaN/Inf rows refused with the first row's id.

    Numpy only: this runs in the reader thread, and torch ops there would contend with the trainer's
    thread pool."""
    v16 = cache.image(source, rows, dtype=np.float16)
    c16 = cache.image(target, rows, dtype=np.float16)
    for key, a in ((source, v16), (target, c16)):
        bad = ~np.isfinite(a).all(axis=1)
        if bad.any():
            row = int(rows[int(np.flatnonzero(bad)[0])])
            image_id = cache.f["images/ids"][row]
            image_id = image_id.decode() if isinstance(image_id, bytes) else str(image_id)
            raise ZsError(f"{cache.path}: encoders/{key}/image has NaN/Inf in {int(bad.sum())} of the "
                          f"rows read (first: row {row}, id {image_id!r}); "
                          f"re-extract those images or mark them unreadable")
    return v16, c16


def to_device(v16: np.ndarray, c16: np.ndarray, rows: np.ndarray, ranks: np.ndarray, device,
              cache_path, target: str) -> "Chunk":
    """Float16 rows onto the device, float32 there; the CLIP rows L2-normalised."""
    import torch

    v = torch.from_numpy(v16).to(device).float()
    c = torch.from_numpy(c16).to(device).float()
    norms = c.norm(dim=1, keepdim=True)
    if bool((norms == 0).any()):
        row = int(rows[int((norms[:, 0] == 0).nonzero()[0, 0])])
        raise ZsError(f"{cache_path}: encoders/{target}/image row {row} is all zeros; it cannot be "
                      f"L2-normalised (re-extract it or mark it unreadable)")
    c /= norms
    return Chunk(v, c, torch.from_numpy(ranks).to(device), rows)


class ChunkFeed:
    """The chunks of a plan, on the device: resident (read once) or streamed with read-ahead.

    `passes(orders)` yields (pass_index, chunk_index, Chunk) for each chunk order in `orders`;
    a streamed feed reads in a background thread, at most `ahead` chunks before the trainer.
    """

    def __init__(self, cache_path, source: str, target: str, plan: RowPlan, device, ahead: int = 1):
        self.cache_path, self.source, self.target = cache_path, source, target
        self.plan, self.device, self.ahead = plan, device, ahead
        self.ranges = plan.chunks()
        self._resident: Chunk | None = None
        self.read_wait_s = 0.0  # time the trainer spent waiting for the reader

    def __len__(self):
        return len(self.ranges)

    def _read(self, cache: Cache, i: int):
        a, b = self.ranges[i]
        return read_arrays(cache, self.source, self.target, self.plan.rows[a:b])

    def _chunk(self, i: int, arrays) -> Chunk:
        a, b = self.ranges[i]
        return to_device(*arrays, self.plan.rows[a:b], self.plan.ranks[a:b], self.device,
                         self.cache_path, self.target)

    def passes(self, orders):
        import time

        if self.plan.resident:
            if self._resident is None:
                with Cache(self.cache_path) as cache:
                    self._resident = self._chunk(0, self._read(cache, 0))
            for p, order in enumerate(orders):
                for i in order:
                    yield p, i, self._resident
            return
        jobs = [(p, i) for p, order in enumerate(orders) for i in order]
        q: queue.Queue = queue.Queue(maxsize=self.ahead)
        stop = threading.Event()

        def reader():
            try:
                with Cache(self.cache_path) as cache:
                    for p, i in jobs:
                        if stop.is_set():
                            return
                        item = (p, i, self._read(cache, i))
                        while not stop.is_set():
                            try:
                                q.put(item, timeout=0.1)
                                break
                            except queue.Full:
                                continue
            except BaseException as err:  # handed to the trainer, raised there
                q.put(err)
                return
            q.put(None)

        t = threading.Thread(target=reader, name="zs-fit-reader", daemon=True)
        t.start()
        try:
            while True:
                t0 = time.perf_counter()
                item = q.get()
                self.read_wait_s += time.perf_counter() - t0
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                p, i, arrays = item
                yield p, i, self._chunk(i, arrays)
        finally:
            stop.set()
            t.join(timeout=10)


class Moments:
    """Sums over rows for standardisation and the closed-form methods, split by rank tier.

    Tier j holds the rows with sizes[j-1] <= rank < sizes[j]; a fit with size sizes[g] sums tiers
    0..g. Products and sums are float64, so the statistics (and the ridge start computed from
    them) come out the same, to float32 precision, whichever other fits share the pass and however
    the rows are chunked: a fit in a sweep starts exactly where it starts alone. `full=False` keeps
    only per-dimension sums (enough for standardisation).
    """

    BLOCK = 16384  # rows per product

    def __init__(self, sizes: list[int], dv: int, d: int, full: bool, device):
        import torch

        self.bounds = sorted(set(sizes))
        self.full = full
        nt = len(self.bounds)
        f64 = dict(dtype=torch.float64, device=device)
        self.n = torch.zeros(nt, **f64)
        self.sv = torch.zeros(nt, dv, **f64)
        self.svv_diag = torch.zeros(nt, dv, **f64)
        self.sc = torch.zeros(nt, d, **f64)
        self.scc_diag = torch.zeros(nt, d, **f64)
        if full:
            self.svv = torch.zeros(nt, dv, dv, **f64)
            self.svc = torch.zeros(nt, dv, d, **f64)
            self.scc = torch.zeros(nt, d, d, **f64)

    def add(self, chunk: Chunk) -> None:
        import torch

        bounds = torch.tensor(self.bounds, device=chunk.ranks.device)
        tier = torch.bucketize(chunk.ranks, bounds, right=True)
        for j in range(len(self.bounds)):
            idx = (tier == j).nonzero()[:, 0]
            for lo in range(0, len(idx), self.BLOCK):
                sel = idx[lo:lo + self.BLOCK]
                v = chunk.v.index_select(0, sel).double()
                c = chunk.c.index_select(0, sel).double()
                self.n[j] += len(sel)
                self.sv[j] += v.sum(0)
                self.sc[j] += c.sum(0)
                self.svv_diag[j] += (v * v).sum(0)
                self.scc_diag[j] += (c * c).sum(0)
                if self.full:
                    self.svv[j] += v.T @ v
                    self.svc[j] += v.T @ c
                    self.scc[j] += c.T @ c

    def stats(self, size: int) -> "RowStats":
        """Means, std and (when full) centred covariances of the rows with rank < size."""
        j = self.bounds.index(size)
        cum = lambda t: t[: j + 1].sum(0)  # noqa: E731
        n = float(cum(self.n))
        mv, mc = cum(self.sv) / n, cum(self.sc) / n
        var_v = (cum(self.svv_diag) / n - mv * mv).clamp_min(0)
        var_c = (cum(self.scc_diag) / n - mc * mc).clamp_min(0)
        st = RowStats(n=int(n), mean_v=mv, mean_c=mc, var_v=var_v, var_c=var_c)
        if self.full:
            st.cov_vv = cum(self.svv) / n - torch_outer(mv, mv)
            st.cov_vc = cum(self.svc) / n - torch_outer(mv, mc)
            st.cov_cc = cum(self.scc) / n - torch_outer(mc, mc)
        return st


def torch_outer(a, b):
    return a[:, None] * b[None, :]


@dataclass
class RowStats:
    """Population statistics (float64) of one fit's rows; covariances only from full moments."""

    n: int
    mean_v: object
    mean_c: object
    var_v: object
    var_c: object
    cov_vv: object = None
    cov_vc: object = None
    cov_cc: object = None

    def std_v(self):
        """Per-dimension std of the source features; constant dimensions get std 1 (left unscaled)."""
        s = self.var_v.sqrt()
        return s.where(s > 1e-6 * max(float(s.max()), 1e-30), s.new_ones(()))

    def entry_variance(self, which: str) -> float:
        """Variance of all entries pooled (the Text-to-Concept `get_variance`)."""
        if which == "v":
            m = float(self.mean_v.mean())
            ex2 = float((self.var_v + self.mean_v ** 2).mean())
        else:
            m = float(self.mean_c.mean())
            ex2 = float((self.var_c + self.mean_c ** 2).mean())
        return max(ex2 - m * m, 1e-30)


def check_dims(cache: Cache, source: str, target: str) -> tuple[int, int]:
    es, et = cache.encoder(source), cache.encoder(target)
    ds = cache.f[f"encoders/{source}/image"].shape[1]
    dt = cache.f[f"encoders/{target}/image"].shape[1]
    if ds != es.dim or dt != et.dim:
        raise CacheError(f"{cache.path}: an image dataset's width disagrees with its dim attribute")
    return es.dim, et.dim
