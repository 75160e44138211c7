"""The fit stage's data path: which encoders and rows to use, and getting those rows onto the device.

Rows are read as float16 in fixed file-row blocks (`BLOCK_BYTES`) and become float32 on the device;
they stay resident when they fit in the memory budget, else are streamed each epoch. The batch
order depends on the seed, the epoch and the rows' ranks only, so a fit gives the same mapping
under any budget. A row's rank is its place in a seeded permutation of the usable rows: a fraction
f trains on the ranks < round(f·n'), the held-out rows are the highest ranks (README, Fit).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

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


BLOCK_BYTES = 16 << 20  # bytes of float32 rows per block, the unit of reading and of shuffling
HOLDOUT_MIN = 256  # held-out rows at least (when the cache has 5x as many)
HOLDOUT_MAX = 10_000  # held-out rows at most: enough to measure agreement to ±0.5 points


def holdout_size(n: int, share: float) -> int:
    """Rows held out for label-free validation: share·n, at least HOLDOUT_MIN, at most HOLDOUT_MAX,
    never more than a fifth of the rows; 0 when share is 0."""
    if share <= 0 or n < 10:
        return 0
    return int(min(max(round(share * n), HOLDOUT_MIN), HOLDOUT_MAX, n // 5))


@dataclass
class RowPlan:
    """The rows one or several fits read: fit g trains on the ranks < sizes[g], the held-out rows
    are the ranks >= usable - holdout (disjoint from every fit's rows, fixed by the seed)."""

    rows: np.ndarray  # (n,) int64, sorted global row indices of the union of all fits' rows
    ranks: np.ndarray  # (n,) int64, rank of each row
    usable: int  # how many usable rows the cache has
    sizes: list[int]  # training rows per fraction asked for
    holdout: int  # held-out rows
    block_rows: int  # file rows per block
    blocks: list[tuple[int, int]]  # (start, stop) index ranges into `rows` per block, none empty
    resident: bool  # every row held in memory (read once) rather than streamed per epoch

    @property
    def holdout_from(self) -> int:
        return self.usable - self.holdout


def plan_rows(cache: Cache, source: str, target: str, fractions, seed: int, bytes_per_row: int,
              memory_budget: int, holdout: float = 0.0) -> RowPlan:
    usable = cache.usable_rows(source, target)
    n = len(usable)
    if n == 0:
        raise ZsError(f"{cache.path} has no usable rows for {source} and {target} (status 0 and done "
                      f"for both); finish the extraction first (`zs cache info {cache.path}`)")
    n_hold = holdout_size(n, holdout)
    sizes = [max(1, int(round(f * (n - n_hold)))) for f in fractions]  # at least one row each
    rank = np.random.default_rng(seed).permutation(n).argsort()  # place of each row in the permutation
    keep = (rank < max(sizes)) | (rank >= n - n_hold)
    rows, ranks = usable[keep], rank[keep]
    block_rows = max(1, BLOCK_BYTES // bytes_per_row)
    cut = np.searchsorted(rows, np.arange(0, cache.n + block_rows, block_rows))
    blocks = [(int(a), int(b)) for a, b in zip(cut[:-1], cut[1:]) if b > a]
    resident = len(rows) * bytes_per_row <= memory_budget
    return RowPlan(rows, ranks, n, sizes, n_hold, block_rows, blocks, resident)


class Chunk(NamedTuple):
    """Rows on the device: source features v (raw), target features c (L2-normalised), ranks."""

    v: object
    c: object
    ranks: object

    def take(self, idx) -> "Chunk":
        return Chunk(self.v[idx], self.c[idx], self.ranks[idx])


class ChunkFeed:
    """The blocks of a plan on the device: `blocks(order)` yields the Chunk of each block index in
    order, read once and kept (resident) or streamed, the next block read in a background thread
    while the trainer works on the current one (a few blocks in memory at once)."""

    def __init__(self, cache_path, source: str, target: str, plan: RowPlan, device):
        self.cache_path, self.source, self.target = cache_path, source, target
        self.plan, self.device = plan, device
        self._resident: list[Chunk] | None = None
        self.read_wait_s = 0.0  # time the trainer spent waiting for the reader

    def __len__(self):
        return len(self.plan.blocks)

    def _read(self, cache: Cache, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Block i of both encoders as float16 arrays; NaN/Inf rows refused with the first row's id.

        Numpy only: this runs in the reader thread, and torch ops there would contend with the
        trainer's thread pool."""
        rows = self.plan.rows[slice(*self.plan.blocks[i])]
        v16 = cache.image(self.source, rows, dtype=np.float16)
        c16 = cache.image(self.target, rows, dtype=np.float16)
        for key, arr in ((self.source, v16), (self.target, c16)):
            bad = ~np.isfinite(arr).all(axis=1)
            if bad.any():
                row = int(rows[int(np.flatnonzero(bad)[0])])
                raise ZsError(f"{cache.path}: encoders/{key}/image has NaN/Inf in {int(bad.sum())} of the "
                              f"rows read (first: row {row}, id {cache.row(row)[0]!r}); "
                              f"re-extract those images or mark them unreadable")
        return v16, c16

    def _chunk(self, i: int, arrays) -> Chunk:
        """Float16 rows onto the device, float32 there; the CLIP rows L2-normalised."""
        import torch

        a, b = self.plan.blocks[i]
        v, c = (torch.from_numpy(x).to(self.device).float() for x in arrays)
        norms = c.norm(dim=1, keepdim=True)
        if bool((norms == 0).any()):
            row = int(self.plan.rows[a + int((norms[:, 0] == 0).nonzero()[0, 0])])
            raise ZsError(f"{self.cache_path}: encoders/{self.target}/image row {row} is all zeros; it "
                          f"cannot be L2-normalised (re-extract it or mark it unreadable)")
        c /= norms
        return Chunk(v, c, torch.from_numpy(self.plan.ranks[a:b]).to(self.device))

    def blocks(self, order):
        if not self.plan.resident:
            return self._stream(list(order))
        if self._resident is None:  # the first pass reads every block, as a streamed one does
            self._resident = list(self._stream(range(len(self))))
        return (self._resident[i] for i in order)

    def _stream(self, order):
        import time
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(1, thread_name_prefix="zs-fit-reader")
        with Cache(self.cache_path) as cache, pool:  # the pool's read ends before the cache closes
            pending = pool.submit(self._read, cache, order[0]) if order else None
            for k, i in enumerate(order):
                t0 = time.perf_counter()
                arrays = pending.result()  # a reader's error is raised here, in the trainer
                self.read_wait_s += time.perf_counter() - t0
                if k + 1 < len(order):
                    pending = pool.submit(self._read, cache, order[k + 1])
                yield self._chunk(i, arrays)


def release_freed_memory() -> None:
    """Have glibc return freed blocks of 1 MiB and more to the system at once (Linux; no-op elsewhere).

    Its default threshold rises as large buffers are freed, after which each block's buffers come
    from the heap and fragment it: a streamed fit then grows by hundreds of MB over the budget."""
    import ctypes
    import sys

    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None).mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD, in the process's own libc
        except (OSError, AttributeError):
            pass


def epoch_batches(feed: ChunkFeed, size: int, batch_size: int, seed: int, epoch: int):
    """The (v, c) batches of one epoch of a fit on the rows with rank < size.

    Block order and the order within each block come from a generator seeded by (seed, epoch);
    batches run across block boundaries, so every batch but the last has batch_size rows."""
    import torch

    rng = np.random.default_rng([int(seed), int(epoch)])
    order = rng.permutation(len(feed))
    carry_v = carry_c = None
    for blk in feed.blocks(order):
        pos = np.flatnonzero(blk.ranks.cpu().numpy() < size)
        if len(pos) == 0:
            continue
        idx = torch.from_numpy(pos[rng.permutation(len(pos))]).to(blk.v.device)
        v, c = blk.v.index_select(0, idx), blk.c.index_select(0, idx)
        if carry_v is not None:
            v, c = torch.cat([carry_v, v]), torch.cat([carry_c, c])
        full = len(v) - len(v) % batch_size
        for s in range(0, full, batch_size):
            yield v[s:s + batch_size], c[s:s + batch_size]
        carry_v, carry_c = (v[full:], c[full:]) if full < len(v) else (None, None)
    if carry_v is not None:
        yield carry_v, carry_c


class Moments:
    """Float64 sums over rows for standardisation and the closed forms, per rank tier: tier j holds
    the ranks sizes[j-1] .. sizes[j]-1, and a fit of size sizes[g] sums tiers 0..g, so a fit in a
    sweep gets the statistics it gets alone. `full=False` keeps only per-dimension sums."""

    BLOCK_BYTES = 8 << 20  # float64 rows per product (a bound on the pass's transient memory)

    def __init__(self, sizes: list[int], dv: int, d: int, full: bool, device):
        import torch

        self.bounds, self.dv, self.full = sorted(set(sizes)), dv, full
        nt, w = len(self.bounds), dv + d
        f64 = dict(dtype=torch.float64, device=device)
        self.n = torch.zeros(nt, **f64)
        self.sums = torch.zeros(nt, w, **f64)  # of the rows z = [v, c]
        self.products = torch.zeros(nt, w, w, **f64) if full else torch.zeros(nt, w, **f64)  # zᵀz or z²

    def add(self, chunk: Chunk) -> None:
        import torch

        bounds = torch.tensor(self.bounds, device=chunk.ranks.device)
        tier = torch.bucketize(chunk.ranks, bounds, right=True)
        step = max(64, self.BLOCK_BYTES // (8 * self.sums.shape[1]))
        for j in range(len(self.bounds)):
            idx = (tier == j).nonzero()[:, 0]
            for lo in range(0, len(idx), step):
                sel = idx[lo:lo + step]
                z = torch.cat([chunk.v.index_select(0, sel), chunk.c.index_select(0, sel)], 1).double()
                self.n[j] += len(sel)
                self.sums[j] += z.sum(0)
                self.products[j] += z.T @ z if self.full else (z * z).sum(0)

    def stats(self, size: int) -> "RowStats":
        """Means, std and (when full) centred covariances of the rows with rank < size."""
        j = self.bounds.index(size)
        n = float(self.n[: j + 1].sum())
        mean, products = self.sums[: j + 1].sum(0) / n, self.products[: j + 1].sum(0) / n
        var = ((products.diagonal() if self.full else products) - mean * mean).clamp_min(0)
        dv = self.dv
        st = RowStats(n=int(n), mean_v=mean[:dv], mean_c=mean[dv:], var_v=var[:dv], var_c=var[dv:])
        if self.full:
            cov = products - mean.outer(mean)
            st.cov_vv, st.cov_vc, st.cov_cc = cov[:dv, :dv], cov[:dv, dv:], cov[dv:, dv:]
        return st


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
        mean, var = (self.mean_v, self.var_v) if which == "v" else (self.mean_c, self.var_c)
        m, ex2 = float(mean.mean()), float((var + mean ** 2).mean())
        return max(ex2 - m * m, 1e-30)


def check_dims(cache: Cache, source: str, target: str) -> tuple[int, int]:
    es, et = cache.encoder(source), cache.encoder(target)
    ds = cache.f[f"encoders/{source}/image"].shape[1]
    dt = cache.f[f"encoders/{target}/image"].shape[1]
    if ds != es.dim or dt != et.dim:
        raise CacheError(f"{cache.path}: an image dataset's width disagrees with its dim attribute")
    return es.dim, et.dim
