"""`extract(ExtractConfig)`: images -> a zs-cache, one code path for one process or many.

Everything the run needs (specs, weights, --vocab names, the image list, the fit of an existing entry
file and shard folder, free space) is checked before a row is computed. Each process locks its range
of shards and decodes each image once per batch for every encoder; a writer thread fills the shards.
Global rank 0 then writes the entry file if every shard is final; the run fails when a readable row
is missing or every row is unreadable. A rerun recomputes nothing; a first run that fails before its
first row leaves no shard folder behind.
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
from .devices import (DECODERS, DevicePrefetcher, cancel_cpu_forwards, gpu_decode, make_forward, tensor_transform,
                      to_host)
from .layout import Layout, Manifest, refuse_mismatch
from .loader import DecodedBatches, PreprocessGroups, identity_collate, plan_batches
from .shardfile import keep_sound_final, resume_point
from .stitch import write_entry
from .text import is_stored, resolve_vocabularies, save_text
from .writer import Rows, ShardWriterThread

# float16 features plus per-row done/status/errors and HDF5's chunk overhead, per row and dim
SHARD_BYTES_PER_VALUE, SHARD_BYTES_PER_ROW = 2.1, 64


@dataclass
class ExtractSummary:
    out: Path
    rows: int
    encoders: list[str]
    shards: tuple[int, int, int]  # this process's [first, last) of the total
    device: str  # what --device resolved to
    computed: dict[str, int]  # rows newly computed per encoder by this process
    decoded: int = 0
    unreadable: int = 0  # among the images this process decoded
    seconds: float = 0.0  # the whole run, model loading included
    images_per_s: float = 0.0  # decoded images per second of the batch loop
    entry_written: bool = False
    cache_unreadable: int | None = None  # in the whole cache, when the entry was written
    unfinished: dict[str, str] = field(default_factory=dict)
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
    """Decode worker processes: with an accelerator, this process's share of the cores less one. On
    the CPU none: each batch is decoded here while earlier batches' forwards run on devices.to_host's
    threads (a worker process beside the forward took a core from it mid-operator: end to end was
    0.69 of model-only on 2 cores)."""
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
    with D.process_group(procs, device):  # left once every process is done: then rank 0 stitches
        started = time.perf_counter()
        plan = plan_run(cfg, procs, device)
        created = not plan.layout.root.exists() and procs.world == 1
        try:
            plan.open_manifest()
            summary = compute_rows(plan, build_encoders(plan))
        except BaseException:
            if created and not plan.layout.any_rows_written():
                shutil.rmtree(plan.layout.root, ignore_errors=True)
            raise
        summary.seconds = time.perf_counter() - started
    return finish(plan, summary)


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
    in_entry: dict[str, EncoderEntry]  # the existing entry file's encoders
    run_keys: list[str]  # encoders this run is responsible for
    vocabs: list  # the vocabularies to embed for CLIP encoders (only global rank 0 writes them)
    manifest: Manifest | None = None  # the shard folder's, once opened
    mine: dict[int, tuple[int, int]] = field(default_factory=dict)  # this process's shards -> row bounds

    def open_manifest(self) -> None:
        src = self.source
        self.manifest = self.layout.open_or_create(src.ids, src.labels_or_unknown(), src.class_names,
                                                   self.ids_digest, self.cfg.shard_rows, self.procs.world)
        self.mine = {s: self.manifest.bounds(s) for s in range(*self.procs.span(self.manifest.shards))}

    def vocabs_left(self, key: str, family: str) -> list:
        """The vocabularies CLIP encoder KEY has left to embed (only global rank 0 writes them)."""
        if family != "clip":
            return []
        return [v for v in self.vocabs if not is_stored(self.layout.text_path(key, v.name), v)]


def plan_run(cfg: ExtractConfig, procs: D.Processes, device: str) -> RunPlan:
    """Resolve and check everything the run needs before any byte is written (see the module docstring)."""
    from zoomshot.encoders import check_loadable, parse_spec
    from zoomshot.fileutil import check_writable

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
    vocabs = resolve_vocabularies(cfg.vocabs, source) if procs.rank == 0 else []
    layout = Layout(cfg.out)
    digest = source.ids_digest()
    in_entry, complete = _check_entry(layout.entry, digest, source.ids, parsed, compute)
    # An encoder the entry holds complete without shards (written by another tool) needs nothing.
    run_keys = [k for k in keys if k not in complete or k in layout.encoder_keys()]
    return RunPlan(cfg, procs, device, source, digest, parsed, compute, layout, in_entry, run_keys, vocabs)


def _check_entry(entry: Path, digest: str, ids: list[str], parsed, compute: dict) -> tuple[dict, set]:
    """Refuse a run that does not fit an existing entry file; returns its encoders and the complete ones."""
    if not entry.exists():
        return {}, set()
    with open_cache(entry) as c:
        check_image_list(str(entry), c.n, c.ids_digest, ids, digest)
        encs = c.encoders
        complete = {k for k in encs if bool(np.all(c.done(k) | (c.status != STATUS_OK)))}
    for p in parsed:
        if p.key in encs:
            e = encs[p.key]
            want = replace(e, spec=p.spec, weights=p.weights, **compute)
            refuse_mismatch(f"{entry}: encoders/{p.key}", e, want,
                            ("spec", "weights") + (COMPUTE if p.key not in complete else ()))
    return encs, complete


def build_encoders(plan: RunPlan) -> dict:
    """Build only the encoders with work left here; a finished rerun loads no model at all."""
    from zoomshot.encoders import build_encoder

    layout, encoders = plan.layout, {}
    for p, spec in zip(plan.parsed, plan.cfg.encoders):
        if p.key not in plan.run_keys:
            continue
        for s in plan.mine:
            keep_sound_final(layout.shard_path(p.key, s))
        compute = plan.compute
        have = layout.encoder(p.key)
        if have is not None:  # refuse a mismatch before loading any model
            rows_done = all(layout.shard_path(p.key, s).exists() for s in plan.mine)
            if rows_done:  # only text left to compute: nothing is mixed
                compute = {"precision": have.precision, "decode": have.decode}
            want = replace(have, spec=p.spec, weights=p.weights, **compute)
            refuse_mismatch(f"{layout.root}/{p.key}", have, want)
            if rows_done and not plan.vocabs_left(p.key, have.family):
                continue
        # SPEC@random is seeded by its spec inside build_encoder: the same draw in every process and resume.
        enc = build_encoder(spec, device=plan.device)
        e = plan.in_entry.get(p.key)
        if e is not None and e.mismatch(enc.entry(), ("dim", "family")):
            raise CacheError(f"{layout.entry}: encoders/{p.key} has dim {e.dim} ({e.family}), "
                             f"this run has {enc.dim} ({enc.family}); write to another --out")
        layout.write_encoder(replace(enc.entry(), **compute))
        encoders[p.key] = enc
    return encoders


def compute_rows(plan: RunPlan, encoders: dict) -> ExtractSummary:
    """Claim this process's shards, write pending vocabularies, finish interrupted shards, check the
    free space, then run the batches left; the summary counts what this process computed."""
    layout, m, mine = plan.layout, plan.manifest, plan.mine
    first, last = plan.procs.span(m.shards)
    summary = ExtractSummary(layout.entry, m.rows, [p.key for p in plan.parsed], (first, last, m.shards),
                             plan.device, {k: 0 for k in plan.run_keys})
    with contextlib.ExitStack() as claims:
        for key in encoders:
            claims.enter_context(layout.claim_shards(key, first, last))
        for key, enc in encoders.items():
            for v in plan.vocabs_left(key, enc.family):
                save_text(layout.text_path(key, v.name), v, embed_prompts(enc, v))
        resume = {key: {s: resume_point(layout.shard_path(key, s), a, b, key, enc.spec, enc.dim)
                        for s, (a, b) in mine.items()}
                  for key, enc in encoders.items()}
        need = sum((b - resume[key][s]) * (enc.dim * SHARD_BYTES_PER_VALUE + SHARD_BYTES_PER_ROW)
                   for key, enc in encoders.items() for s, (_, b) in mine.items())
        free = shutil.disk_usage(layout.root).free
        if need > free:  # refused before the first batch
            raise ZsError(f"{layout.root} needs about {need / 1e9:.2f} GB for the rows left to compute and "
                          f"its disk has {free / 1e9:.2f} GB free; free space or write to another --out")
        batches = plan_batches(mine, resume, plan.cfg.batch_size)
        if batches:
            t_loop = time.perf_counter()
            _run_batches(plan, batches, encoders, summary)
            loop_s = time.perf_counter() - t_loop
            summary.images_per_s = summary.decoded / loop_s if loop_s > 0 else 0.0
    return summary


def finish(plan: RunPlan, s: ExtractSummary) -> ExtractSummary:
    """Stitch the entry file (global rank 0) and say whether the run did its job."""
    layout, m = plan.layout, plan.manifest
    if plan.procs.dist_rank == 0:
        written = write_entry(layout, m, require=plan.run_keys)
        s.entry_written = written is not None
        if written is not None:
            status, errors, done = written
            bad = status != STATUS_OK
            s.cache_unreadable = int(bad.sum())
            missing = {k: int((~done[k] & ~bad).sum()) for k in plan.run_keys}
            if any(missing.values()):
                s.failed = (f"{layout.entry}: readable rows missing: "
                            + ", ".join(f"{k} {v}" for k, v in missing.items() if v)
                            + "; rerun the same zs extract to compute them")
            elif bad.all():
                s.failed = (f"every one of the {m.rows} images is unreadable (first reason: "
                            f"{errors[0] or '?'}); the cache holds no features — check the image source")
        else:
            counts_of = {k: layout.shard_counts(k) for k in plan.run_keys}
            s.unfinished = {k: f"{final} of {m.shards} shards final, {partial} partial"
                            for k, (final, partial) in counts_of.items() if final < m.shards}
    return s


def _run_batches(plan: RunPlan, batches, encoders: dict, summary: ExtractSummary) -> None:
    """Decode each image once per batch, feed every encoder, hand the rows to the writer thread."""
    import torch

    cfg, device, procs = plan.cfg, plan.device, plan.procs
    groups = PreprocessGroups(encoders.values())
    gpu = cfg.decode == "gpu"
    tensor_tfs = [tensor_transform(t, k) for k, t in zip(groups.keys, groups.transforms)] if gpu else None
    workers = min(default_workers(device) if cfg.workers is None else cfg.workers, len(batches))
    dataset = DecodedBatches(plan.source, batches, [] if gpu else groups.transforms, gpu=gpu)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=None, num_workers=workers, collate_fn=identity_collate,
        pin_memory=device.startswith("cuda"), prefetch_factor=4 if workers else None)
    forwards = {k: make_forward(e, device, cfg.precision, cfg.channels_last, cfg.compile) for k, e in encoders.items()}
    progress = progress_bar(sum(b.stop - b.start for b in batches),
                            f"extract {procs.rank}/{procs.world}" if procs.world > 1 else "extract",
                            enabled=cfg.progress and procs.local_rank == 0)
    batches_iter = DevicePrefetcher(iter(loader), device)  # forks the decode workers before the writer thread starts
    writer = ShardWriterThread(plan.layout, plan.manifest, {k: (e.spec, e.dim) for k, e in encoders.items()})
    try:
        with torch.inference_mode(), progress:
            for item in batches_iter:
                b = batches[item["index"]]
                ok, errors, tensors = item["ok"], item["errors"], item["tensors"]
                if gpu:
                    ok, errors, tensors = _gpu_tensors(item, tensor_tfs, device)
                for key in b.keys:
                    x = tensors[groups.group_of[key]]
                    if x is None:
                        feats = (lambda d=encoders[key].dim: np.zeros((0, d), np.float32))
                    else:
                        feats = to_host(forwards[key], x, device)
                    writer.put(Rows(key, b.shard, b.start, b.stop, feats, ok, errors))
                    summary.computed[key] += int(ok.sum())
                summary.decoded += b.stop - b.start
                summary.unreadable += int((~ok).sum())
                progress.update(b.stop - b.start)
        writer.close()
    except BaseException:
        cancel_cpu_forwards()
        writer.abort()
        raise


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
