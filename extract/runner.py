"""`extract(ExtractConfig)`: images -> a zs-cache, one code path for one process or many.

Steps: resolve everything the run needs before listing or writing anything (output path, specs,
weights, --vocab names); list the source (sorted ids, optional seeded subset); check any existing
entry file and shard folder against this run (spec, weights, dim, and for rows left to compute the
precision and decoder); refuse rows that cannot fit on the disk; take this process's contiguous range of shards and lock it;
CLIP encoders' vocabularies (global rank 0); decode each image once per batch and feed every
encoder; a writer thread appends to partial shards, reads each back whole when complete and only
then renames it final; finally (after a barrier under torchrun) the entry file is written if every
shard of the run is final, and the run fails when a readable row is missing or every row is
unreadable. A rerun finds final shards, resumes partial ones from their done rows, and recomputes
nothing; a first run that fails before its first row leaves no shard folder behind.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from zoomshot.cache import COMPUTE, STATUS_OK, CacheError, EncoderEntry, check_image_list, open_cache
from zoomshot.devices import autocast_dtype, precision_name, resolve_device
from zoomshot.errors import ZsError
from zoomshot.progress import progress_bar
from zoomshot.sources import ImageSource, open_source, subset_fraction
from zoomshot.vocab import embed_prompts

from . import distributed as D
from .config import ExtractConfig  # noqa: F401  (re-exported: extract(ExtractConfig(...)))
from .devices import DECODERS, DevicePrefetcher, gpu_decode, make_forward, tensor_transform, to_host
from .layout import Layout, Manifest
from .loader import DecodedBatches, PreprocessGroups, identity_collate, plan_batches
from .shardfile import ShardFile, keep_sound_final
from .stitch import shard_progress, write_entry
from .text import resolve_vocabularies, save_text, stored_digest
from .text import digest as vocab_digest
from .writer import Rows, ShardWriterThread


@dataclass
class ExtractSummary:
    out: Path
    rows: int
    encoders: list[str]
    shards: tuple[int, int, int]  # this process's [first, last) of the total
    computed: dict[str, int]  # rows newly computed per encoder by this process
    decoded: int
    unreadable: int  # among the images this process decoded
    seconds: float  # the whole run, model loading included
    images_per_s: float  # decoded images per second of the batch loop
    entry_written: bool
    cache_unreadable: int | None = None  # in the whole cache, when the entry was written
    unfinished: dict[str, str] = field(default_factory=dict)
    device: str = ""  # what --device resolved to
    failed: str | None = None  # why the run did not do its job (the CLI exits non-zero with it)

    def text(self) -> str:
        first, last, total = self.shards
        lines = [f"{'wrote' if self.entry_written else 'did not write yet'} {self.out}: {self.rows} rows, "
                 f"encoders {', '.join(self.encoders)}"
                 + (f", {self.cache_unreadable} unreadable" if self.cache_unreadable is not None else "")]
        lines.append(f"this process: shards {first}..{last - 1} of {total}, decoded {self.decoded} images "
                     f"({self.unreadable} unreadable), {self.images_per_s:.1f} images/s on {self.device or '?'}, "
                     f"{self.seconds:.1f}s in all; "
                     f"computed rows: " + ", ".join(f"{k} {v}" for k, v in self.computed.items())
                     if last > first else f"this process: no shards (there are {total})")
        for k, why in self.unfinished.items():
            lines.append(f"encoder {k}: {why}; the entry file is written when every shard is final "
                         f"(rerun the same command to finish)")
        return "\n".join(lines)


def default_workers(device: str) -> int:
    """Decode worker processes, from the cores this process can have (shared among torchrun's local ranks).

    An accelerator leaves the cores to decoding: all of them less one for this process. On the CPU
    the forward needs every core, and a worker process decoding beside it takes a core from one
    of the forward's threads in the middle of an operator, which then waits for that thread
    (end to end was 0.69 of model-only for mobilenetv3_large on 2 cores). So a CPU run has no
    worker processes: it decodes each batch in this process while the forwards of earlier batches
    run on devices.to_host's threads."""
    if device == "cpu":
        return 0
    cores = (os.cpu_count() or 1) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(0, min(16 if device.startswith("cuda") else 4, cores - 1))


def extract(cfg: ExtractConfig) -> ExtractSummary:
    """Run (or continue) an extraction; see the module docstring."""
    if cfg.batch_size < 1:
        raise ZsError(f"--batch-size must be at least 1, got {cfg.batch_size}")
    if cfg.decode not in DECODERS:
        raise ZsError(f"--decode {cfg.decode!r}: choose from {', '.join(DECODERS)}")
    if not cfg.encoders:
        raise ZsError("give at least one --encoder SPEC")
    if cfg.shard_rows is not None and cfg.shard_rows < 1:
        raise ZsError(f"--shard-rows must be at least 1, got {cfg.shard_rows}")
    if cfg.workers is not None and cfg.workers < 0:
        raise ZsError(f"--workers must be 0 (decode in this process) or more, got {cfg.workers}")
    if Path(cfg.out).suffix not in (".h5", ".hdf5"):
        raise ZsError(f"--out {cfg.out}: a cache file name ends in .h5")
    procs = D.from_environment(cfg.num_shards, cfg.shard_index)
    device = resolve_device(cfg.device, procs.local_rank)
    autocast_dtype(cfg.precision, device)  # refuse a bad --precision before any file is written
    if cfg.decode == "gpu" and not device.startswith("cuda"):
        raise ZsError("--decode gpu needs a CUDA device; use --decode cpu")
    D.init_group(procs, device)
    try:
        return _extract(cfg, procs, device)
    finally:
        D.shutdown(procs)


@dataclass
class RunPlan:
    """What a run decided before loading any model: planned in one pass by `plan_run`."""

    cfg: ExtractConfig
    procs: D.Processes
    device: str
    source: ImageSource
    ids_digest: str  # the source's ids_sha256, computed once
    parsed: list  # one ParsedSpec per --encoder
    compute: dict  # the precision and decoder rows computed now are recorded with
    layout: Layout
    in_entry: dict[str, tuple[EncoderEntry, bool]]  # the existing entry file's encoders: (entry, complete)
    started: float
    manifest: Manifest | None = None  # the shard folder's, once opened
    mine: dict[int, tuple[int, int]] = field(default_factory=dict)  # this process's shards -> row bounds
    run_keys: list[str] = field(default_factory=list)  # encoders this run is responsible for
    vocabs: list | None = None  # resolved on first need (global rank 0 only)

    @property
    def keys(self) -> list[str]:
        return [p.key for p in self.parsed]

    def open_manifest(self) -> None:
        src, layout = self.source, self.layout
        self.manifest = layout.open_or_create(src.ids, src.labels_or_unknown(), src.class_names, self.ids_digest,
                                              self.cfg.shard_rows, self.procs.world)
        first, last = self.procs.span(self.manifest.shards)
        self.mine = {s: self.manifest.bounds(s) for s in range(first, last)}
        # An encoder the entry holds complete without shards (written by another tool) needs nothing.
        self.run_keys = [p.key for p in self.parsed if not (p.key in self.in_entry and self.in_entry[p.key][1]
                                                            and p.key not in layout.encoder_keys())]

    def text_pending(self, key: str, family: str) -> bool:
        """Whether CLIP encoder KEY has a vocabulary left to embed (only global rank 0 writes them)."""
        if family != "clip" or self.procs.rank != 0:
            return False
        if self.vocabs is None:
            self.vocabs = resolve_vocabularies(self.cfg.vocabs, self.source)
        return any(stored_digest(self.layout.text_path(key, v.name)) != vocab_digest(v) for v in self.vocabs)


def plan_run(cfg: ExtractConfig, procs: D.Processes, device: str) -> RunPlan:
    """Resolve everything the run needs before any byte is written: the output location, the specs,
    the weights (in the local hub cache, or the hub reachable), the image list, --vocab names, and
    the fit of an existing entry file."""
    from zoomshot.encoders import check_loadable, parse_spec
    from zoomshot.fileutil import check_writable

    started = time.perf_counter()
    check_writable(cfg.out)
    parsed = [parse_spec(s) for s in cfg.encoders]
    keys = [p.key for p in parsed]
    if len(set(keys)) != len(keys):
        raise ZsError(f"an encoder is given twice: {', '.join(keys)}")
    for p in parsed:
        check_loadable(p)
    compute = {"precision": precision_name(cfg.precision, device), "decode": cfg.decode}
    source: ImageSource = subset_fraction(open_source(cfg.images, cfg.dataset, cfg.root, cfg.split,
                                                        cfg.image_column, cfg.label_column),
                                          cfg.fraction, cfg.seed)
    if len(source) == 0:
        raise ZsError(f"{source.description} holds no images")
    # a bad --vocab is refused before any file is written
    vocabs = resolve_vocabularies(cfg.vocabs, source) if cfg.vocabs and procs.rank == 0 else None
    layout = Layout(cfg.out)
    digest = source.ids_digest()
    in_entry = _check_entry(layout.entry, digest, source.ids, parsed, compute)
    return RunPlan(cfg, procs, device, source, digest, parsed, compute, layout, in_entry, started, vocabs=vocabs)


def _check_entry(entry: Path, digest: str, ids: list[str], parsed, compute: dict) -> dict:
    """Refuse a run that does not fit an existing entry file; returns its encoders as (entry, complete)."""
    if not entry.exists():
        return {}
    with open_cache(entry) as c:
        check_image_list(str(entry), c.n, c.ids_digest, ids, digest)
        encs = c.encoders
        complete = {k for k in encs if bool(np.all(c.done(k) | (c.status != STATUS_OK)))}
    for p in parsed:
        e = encs.get(p.key)
        if e is None:
            continue
        want = replace(e, spec=p.spec, weights=p.weights, **compute)
        what = e.mismatch(want, ("spec", "weights"))
        if what:
            raise CacheError(f"{entry}: encoders/{p.key} has {what}={getattr(e, what)!r}, this run has "
                             f"{getattr(want, what)!r}; write to another --out")
        what = e.mismatch(want, COMPUTE) if p.key not in complete else None
        if what:
            raise CacheError(f"{entry}: encoders/{p.key} holds rows computed with --{what} {getattr(e, what)}, "
                             f"this run uses {getattr(want, what)}; rerun with --{what} {getattr(e, what)} or "
                             f"write to another --out")
    return {k: (e, k in complete) for k, e in encs.items()}


def _extract(cfg: ExtractConfig, procs: D.Processes, device: str) -> ExtractSummary:
    plan = plan_run(cfg, procs, device)
    # A first run that fails before its first row (a model, plug-in or vocabulary that does not
    # load) removes the shard folder it created, so the corrected rerun starts clean.
    created = not plan.layout.root.exists() and procs.world == 1
    with _removed_on_failure(plan.layout if created else None):
        plan.open_manifest()
        encoders = build_encoders(plan)
        counts = compute_rows(plan, encoders)
    seconds = time.perf_counter() - plan.started
    D.barrier(procs, device)
    return finish(plan, counts, seconds)


@contextlib.contextmanager
def _removed_on_failure(layout: Layout | None):
    try:
        yield
    except BaseException:
        if layout is not None and not layout.any_rows_written():  # no row written: nothing to resume
            shutil.rmtree(layout.root, ignore_errors=True)
        raise


def build_encoders(plan: RunPlan) -> dict:
    """Build only the encoders with work left here; a finished rerun loads no model at all."""
    from zoomshot.encoders import build_encoder

    layout, encoders = plan.layout, {}
    for p, spec in zip(plan.parsed, plan.cfg.encoders):
        if p.key not in plan.run_keys:
            continue
        for s in plan.mine:
            if layout.shard_path(p.key, s).exists():
                keep_sound_final(layout.shard_path(p.key, s))
        compute = plan.compute
        have = layout.encoder(p.key)
        if have is not None:  # refuse a mismatch before loading any model
            layout.check_encoder(replace(have, spec=p.spec, weights=p.weights))
            finals = layout.final_shards(p.key, plan.manifest)
            if all(finals[s] for s in plan.mine):
                if not plan.text_pending(p.key, have.family):
                    continue
                compute = {"precision": have.precision, "decode": have.decode}  # only text to compute
            else:  # rows left: computed as the earlier ones were
                layout.check_encoder(replace(have, spec=p.spec, weights=p.weights, **compute))
        # SPEC@random is seeded by its spec inside build_encoder: the same draw in every process and resume.
        enc = build_encoder(spec, device=plan.device)
        in_entry = plan.in_entry.get(p.key)
        if in_entry is not None and in_entry[0].mismatch(enc.entry(), ("dim", "family")):
            e = in_entry[0]
            raise CacheError(f"{layout.entry}: encoders/{p.key} has dim {e.dim} ({e.family}), "
                             f"this run has {enc.dim} ({enc.family}); write to another --out")
        layout.write_encoder(replace(enc.entry(), **compute))
        encoders[p.key] = enc
    return encoders


@dataclass
class RowCounts:
    computed: dict[str, int]  # rows newly computed per encoder
    decoded: int = 0
    unreadable: int = 0
    loop_seconds: float = 0.0


def compute_rows(plan: RunPlan, encoders: dict) -> RowCounts:
    """Claim this process's shards, write pending vocabularies, finish interrupted shards, then run
    the batches left."""
    layout, mine = plan.layout, plan.mine
    first, last = plan.procs.span(plan.manifest.shards)
    counts = RowCounts({k: 0 for k in plan.run_keys})
    claims = []
    try:
        for key in encoders:
            claims.append(layout.claim_shards(key, first, last))
        for key, enc in encoders.items():
            if plan.text_pending(key, enc.family):
                _write_vocabularies(enc, plan.vocabs, layout)
        resume = {key: {s: ShardFile.resume_point(layout.shard_path(key, s), a, b, key, enc.spec, enc.dim)
                        for s, (a, b) in mine.items()}
                  for key, enc in encoders.items()}
        for key, enc in encoders.items():  # killed between its last write and its rename: rename now
            for s, (a, b) in mine.items():
                if resume[key][s] == b and layout.partial_path(key, s).exists():
                    ShardFile.open(layout.shard_path(key, s), a, b, key, enc.spec, enc.dim).finalize()
        _check_free_space(layout, {key: (enc.dim, sum(b - resume[key][s] for s, (_, b) in mine.items()))
                                   for key, enc in encoders.items()})
        batches = plan_batches(mine, resume, plan.cfg.batch_size)
        if batches:
            t_loop = time.perf_counter()
            _run_batches(plan, batches, encoders, counts)
            counts.loop_seconds = time.perf_counter() - t_loop
    finally:
        for c in claims:
            c.release()
    return counts


def finish(plan: RunPlan, counts: RowCounts, seconds: float) -> ExtractSummary:
    """Stitch the entry file (global rank 0) and say whether the run did its job."""
    layout, m = plan.layout, plan.manifest
    written, cache_bad, unfinished, failed = None, None, {}, None
    if plan.procs.dist_rank == 0:
        written = write_entry(layout, m, require=plan.run_keys)
        if written is not None:
            bad = written.status != STATUS_OK
            cache_bad = int(bad.sum())
            missing = {k: int((~written.done[k] & ~bad).sum()) for k in plan.run_keys}
            if any(missing.values()):
                failed = (f"{layout.entry}: readable rows missing: "
                          + ", ".join(f"{k} {v}" for k, v in missing.items() if v)
                          + "; rerun the same zs extract to compute them")
            elif bad.all():
                failed = (f"every one of the {m.rows} images is unreadable (first reason: "
                          f"{written.errors[0] or '?'}); the cache holds no features — check the image source")
        else:
            prog = shard_progress(layout, m)
            unfinished = {k: f"{prog.final.get(k, 0)} of {m.shards} shards final, {prog.partial.get(k, 0)} partial"
                          for k in plan.run_keys if not prog.complete(k)}
    first, last = plan.procs.span(m.shards)
    return ExtractSummary(out=layout.entry, rows=m.rows, encoders=plan.keys, shards=(first, last, m.shards),
                          computed=counts.computed, decoded=counts.decoded, unreadable=counts.unreadable,
                          seconds=seconds, entry_written=written is not None,
                          images_per_s=counts.decoded / counts.loop_seconds if counts.loop_seconds > 0 else 0.0,
                          cache_unreadable=cache_bad, unfinished=unfinished, device=plan.device, failed=failed)


# float16 features plus per-row done/status/errors and HDF5's chunk overhead, per row and dim
SHARD_BYTES_PER_VALUE, SHARD_BYTES_PER_ROW = 2.1, 64


def _check_free_space(layout: Layout, left: dict[str, tuple[int, int]]) -> None:
    """Refuse, before the first batch, a run whose rows left cannot fit on the disk of the shard folder."""
    need = sum(rows * (dim * SHARD_BYTES_PER_VALUE + SHARD_BYTES_PER_ROW) for dim, rows in left.values())
    free = shutil.disk_usage(layout.root).free
    if need > free:
        raise ZsError(f"{layout.root} needs about {need / 1e9:.2f} GB for the rows left to compute and its disk has "
                      f"{free / 1e9:.2f} GB free; free space or write to another --out")


def _write_vocabularies(enc, vocabs, layout: Layout) -> None:
    for v in vocabs:
        path = layout.text_path(enc.key, v.name)
        if stored_digest(path) != vocab_digest(v):
            save_text(path, v, embed_prompts(enc, v))


def _run_batches(plan: RunPlan, batches, encoders: dict, counts: RowCounts) -> None:
    """Decode each image once per batch, feed every encoder, hand the rows to the writer thread."""
    import torch

    cfg, device, procs = plan.cfg, plan.device, plan.procs

    cuda = device.startswith("cuda")
    groups = PreprocessGroups(encoders.values())
    gpu = cfg.decode == "gpu"
    tensor_tfs = [tensor_transform(t, k) for k, t in zip(groups.keys, groups.transforms)] if gpu else None
    workers = default_workers(device) if cfg.workers is None else cfg.workers
    workers = min(workers, len(batches))
    dataset = DecodedBatches(plan.source, batches, [] if gpu else groups.transforms, gpu=gpu)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=None, shuffle=False, num_workers=workers, collate_fn=identity_collate,
        pin_memory=cuda, prefetch_factor=4 if workers else None, persistent_workers=False)
    forwards = {k: make_forward(e, device, cfg.precision, cfg.channels_last, cfg.compile) for k, e in encoders.items()}
    rows_total = sum(b.stop - b.start for b in batches)
    progress = progress_bar(rows_total, f"extract {procs.rank}/{procs.world}" if procs.world > 1 else "extract",
                            enabled=cfg.progress and procs.local_rank == 0)
    batches_iter = DevicePrefetcher(iter(loader), device)  # forks the decode workers before the writer thread starts
    writer = ShardWriterThread(plan.layout, plan.manifest, {k: (e.spec, e.dim) for k, e in encoders.items()})
    try:
        with torch.inference_mode():
            for item in batches_iter:
                b = batches[item["index"]]
                ok, errors, tensors = item["ok"], item["errors"], item["tensors"]
                if gpu:
                    ok, errors, tensors = _gpu_tensors(item, tensor_tfs, device)
                for key in b.keys:
                    x = tensors[groups.group_of[key]]
                    if x is None:
                        dim = encoders[key].dim
                        feats = (lambda d=dim: np.zeros((0, d), np.float32))
                    else:
                        feats = to_host(forwards[key], x, device)
                    writer.put(Rows(key, b.shard, b.start, b.stop, feats, ok, errors))
                    counts.computed[key] += int(ok.sum())
                counts.decoded += b.stop - b.start
                counts.unreadable += int((~ok).sum())
                progress.update(b.stop - b.start)
        writer.close()
    except BaseException:
        writer.abort()
        raise
    finally:
        progress.close()


def _gpu_tensors(item, tensor_tfs, device):
    import torch

    imgs, errs = gpu_decode(item["raw"], device)
    ok = item["ok"].copy()
    errors = list(item["errors"])
    for j, (img, e) in enumerate(zip(imgs, errs)):
        if ok[j] and img is None:
            ok[j], errors[j] = False, e or "decode failed"
    good = [img for img in imgs if img is not None]
    tensors = [torch.stack([tf(img) for img in good]) if good else None for tf in tensor_tfs]
    return ok, errors, tensors
