"""The fit stage's entry points: one fit (`fit_cache`), a sweep grid (`fit_grid`), any list (`fit_configs`).

All of them read the cache once: one statistics pass (standardisation, closed-form moments, NaN/Inf
check) that also loads the rows when they fit in the memory budget, then the closed-form methods
are solved and the iterative methods trained — several configurations with one method, batch size
and optimizer together as one stacked job. The result is a `Mapping` per configuration with its
run record filled in; nothing is written (see `zoomshot.mapping.save_mapping`).
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from zoomshot import __version__
from zoomshot.cache import Cache
from zoomshot.errors import ZsError
from zoomshot.mapping import Mapping

from .closed_form import procrustes_map, ridge_maps
from .config import ITERATIVE, FitConfig
from .data import ChunkFeed, Moments, check_dims, plan_rows, resolve_encoders
from .trainer import Job, train_jobs

SHARED = ("source", "target", "vocab", "seed", "device", "memory_budget")


def fit_cache(cache_path, cfg: FitConfig, progress=None) -> Mapping:
    """Fit one mapping on a cache. progress(record) is called after each epoch with
    {"epoch", "epochs", "loss", "align", "cycle", "kd"}."""
    return fit_configs(cache_path, [cfg], progress=progress)[0]


def fit_grid(cache_path, cfg: FitConfig, epochs: list[int], fractions: list[float],
             methods: list[str] | None = None, on_result=None) -> list[Mapping]:
    """Fit every (method, epochs, fraction) of a sweep from one read of the cache, training the
    iterative configurations of each method together. Closed-form methods have no epochs: they
    give one mapping per fraction, with run["epochs"] = 0. Returned in the order
    methods × epochs × fractions; on_result(mapping) is called as each one is finished."""
    methods = list(methods or [cfg.method])
    if not epochs or not fractions:
        raise ZsError("a sweep needs at least one epochs value and one fraction")
    cfgs = []
    for m in methods:
        if m in ITERATIVE:
            cfgs += [replace(cfg, method=m, epochs=int(e), fraction=float(f))
                     for e in epochs for f in fractions]
        else:
            cfgs += [replace(cfg, method=m, epochs=None, fraction=float(f)) for f in fractions]
    return fit_configs(cache_path, cfgs, on_result=on_result)


def fit_configs(cache_path, cfgs: list[FitConfig], on_result=None, progress=None,
                batched: bool = True) -> list[Mapping]:
    """Fit each configuration (they must share source, target, vocab, seed, device and memory
    budget) over one read of the cache. batched=False trains one configuration at a time (the
    reference a sweep's batched training is measured against)."""
    t0 = time.perf_counter()
    if not cfgs:
        return []
    cfgs = [c.resolved() for c in cfgs]
    for name in SHARED:
        vals = {repr(getattr(c, name)) for c in cfgs}
        if len(vals) > 1:
            raise ZsError(f"configurations fitted together must share {name}; got {sorted(vals)}")
    base = cfgs[0]
    device = _device(base.device)
    path = Path(cache_path).resolve()
    with Cache(path) as cache:
        src, tgt = resolve_encoders(cache, base.source, base.target)
        dv, d = check_dims(cache, src, tgt)
        encs = cache.encoders
        T, vocab = _text(cache, tgt, base.vocab, cfgs)
        fingerprint = cache.fingerprint()
        plan = plan_rows(cache, src, tgt, [c.fraction for c in cfgs], base.seed,
                         bytes_per_row=4 * (dv + d), memory_budget=base.memory_budget)
    feed = ChunkFeed(path, src, tgt, plan, device)
    return _fit(cfgs, dict(src=src, tgt=tgt, dv=dv, d=d, encs=encs, T=T, vocab=vocab,
                           fingerprint=fingerprint, plan=plan, feed=feed, device=device, t0=t0),
                on_result, progress, batched)


def _fit(cfgs: list[FitConfig], ctx: dict, on_result, progress, batched: bool) -> list[Mapping]:
    """The statistics pass, the closed forms, the batched training: fit_configs after the set-up."""
    import torch

    plan, feed, device, encs = ctx["plan"], ctx["feed"], ctx["device"], ctx["encs"]
    dv, d, T = ctx["dv"], ctx["d"], ctx["T"]
    full = any(c.method in ("ridge", "procrustes") or (c.method == "zoomshot" and c.init == "ridge")
               for c in cfgs)
    moments = Moments(plan.sizes, dv, d, full=full, device=device)
    block = min(len(plan.rows), Moments.BLOCK)
    with torch.no_grad(), threads_for(device, block * dv * (dv + d if full else 1)):
        for _, _, chunk in feed.passes([range(len(feed))]):
            moments.add(chunk)
    ctx["stats_s"] = time.perf_counter() - ctx["t0"]
    results: list[Mapping | None] = [None] * len(cfgs)

    def finish(i: int, mapping: Mapping) -> None:
        why = mapping.mismatch(encs)
        if why:  # a fit must produce a mapping that fits its own cache
            raise ZsError(f"internal: fitted mapping does not match its cache: {why}")
        results[i] = mapping
        if on_result:
            on_result(mapping)

    for i, c in enumerate(cfgs):
        if c.method not in ITERATIVE:
            st = moments.stats(plan.sizes[i])
            if c.method == "ridge":
                W, b, U, e = ridge_maps(st, c.ridge_lambda)
            else:
                (W, b), U, e = procrustes_map(st), None, None
            finish(i, _mapping(c, st, W, b, U, e, history=[], extra={}, ctx=ctx,
                               batched_with=1))

    groups: dict[tuple, list[int]] = {}
    for i, c in enumerate(cfgs):
        if c.method in ITERATIVE:
            key = (c.method, c.batch_size, c.optimizer) if batched else (i,)
            groups.setdefault(key, []).append(i)
    for members in groups.values():
        stats = [moments.stats(plan.sizes[i]) for i in members]
        jobs = [_job(i, cfgs[i], st, dv, d, device) for i, st in zip(members, stats)]
        where = {id(j): k for k, j in enumerate(jobs)}

        def on_epoch(job, rec, _n=len(jobs)):
            if progress:
                progress({**rec, "epochs": job.epochs, "job": job.name})

        def on_done(job, _n=len(jobs), _members=members, _stats=stats, _where=where):
            k = _where[id(job)]
            extra = {**job.extra, "train_time_s": round(job.finished_s, 4)}
            finish(_members[k], _mapping(cfgs[_members[k]], _stats[k], job.W, job.b, job.U, job.e,
                                         job.history, extra=extra, ctx=ctx, batched_with=_n))

        c0 = cfgs[members[0]]
        with threads_for(device, c0.batch_size * dv * d * len(jobs)):
            train_jobs(feed, jobs, c0.batch_size, c0.optimizer, T=T, device=device,
                       chunk_order_seed=c0.seed, on_epoch=on_epoch, on_done=on_done)
    return results  # type: ignore[return-value]


# Below this many multiply-adds per step, one thread beats a team: tiny matmuls gain nothing from
# splitting, and a second thread that waits for a busy core makes every op wait with it.
SMALL_STEP_MACS = 1 << 22


@contextlib.contextmanager
def threads_for(device, step_macs: int):
    """Run small CPU problems single-threaded (torch's thread count is process-wide; restored after)."""
    import torch

    n = torch.get_num_threads()
    small = device.type == "cpu" and step_macs < SMALL_STEP_MACS and n > 1
    if small:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if small:
            torch.set_num_threads(n)


def _device(name: str):
    import torch

    from zoomshot.devices import resolve_device

    return torch.device(resolve_device(name))


def _text(cache: Cache, target: str, vocab: str | None, cfgs):
    """The (K, d) text classifier when some configuration needs it, and the vocabulary's name."""
    import torch

    needs = [c for c in cfgs if c.method == "zoomshot" and (c.lambda_kd > 0 or c.lambda_cycle > 0)]
    have = cache.vocabularies(target)
    if vocab is not None and vocab not in have:
        raise ZsError(f"{cache.path}: encoders/{target} has no vocabulary {vocab!r}; it has: "
                      f"{', '.join(have) or 'none'}")
    if not needs:
        return None, vocab
    if not have:
        raise ZsError(f"{cache.path}: the CLIP encoder {target!r} has no text vocabulary, which "
                      f"zoomshot's distillation and text-cycle losses need; extract with --vocab "
                      f"NAME, or use --method ridge|linear-aligner|procrustes")
    tv = cache.text(target, vocab, embeddings=False)
    T = torch.from_numpy(tv.classifier.astype(np.float32))
    if not torch.isfinite(T).all():
        raise ZsError(f"{cache.path}: encoders/{target}/text/{tv.name}/classifier has NaN/Inf values")
    T = T / T.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return T, tv.name


def _job(i: int, c: FitConfig, st, dv: int, d: int, device) -> Job:
    import torch

    f32 = dict(dtype=torch.float32, device=device)
    gen = torch.Generator().manual_seed(int(c.seed))
    name = f"{c.method} (epochs {c.epochs}, fraction {c.fraction:g}, #{i})"
    if c.method == "linear-aligner":
        # The published recipe: each side scaled by one scalar to per-entry variance la_variance,
        # nn.Linear's default init, trained on raw (unstandardised) features.
        s_in = (c.la_variance / st.entry_variance("v")) ** 0.5
        s_out = (c.la_variance / st.entry_variance("c")) ** 0.5
        bound = 1.0 / dv ** 0.5
        W = (torch.rand(d, dv, generator=gen) * 2 - 1) * bound
        b = (torch.rand(d, generator=gen) * 2 - 1) * bound
        job = Job(name, c.method, st.n, c.epochs, c.lr, c.momentum, c.weight_decay, c.seed,
                  in_shift=torch.zeros(dv, **f32), in_scale=torch.full((dv,), s_in, **f32),
                  out_scale=s_out, W=W, b=b)
        job.extra = {"scales": {"source": s_in, "target": s_out}}
        return job
    if c.init == "ridge":
        W, b, U, e = (t.float() for t in ridge_maps(st, c.ridge_lambda))
    else:
        W = torch.randn(d, dv, generator=gen) * (0.01 / dv ** 0.5)
        U = torch.randn(dv, d, generator=gen) * (0.01 / d ** 0.5)
        b = st.mean_c.float().clone()
        e = torch.zeros(dv)
    job = Job(name, c.method, st.n, c.epochs, c.lr, c.momentum, c.weight_decay, c.seed,
              in_shift=st.mean_v.to(**f32), in_scale=(1.0 / st.std_v()).to(**f32), out_scale=1.0,
              W=W, b=b, U=U, e=e, lambda_align=c.lambda_align, lambda_cycle=c.lambda_cycle,
              lambda_kd=c.lambda_kd, tau=c.tau, kd=c.kd)
    job.extra = {"init": c.init}
    return job


def _mapping(c: FitConfig, st, W, b, U, e, history, extra: dict, ctx: dict, batched_with: int) -> Mapping:
    """A Mapping in the standardised form h(v) = W ((v − mean) / std) + b, with its run record."""
    import torch

    mean = st.mean_v.double().cpu()
    std = st.std_v().double().cpu()
    W = W.double().cpu()
    b = b.double().cpu()
    if c.method == "linear-aligner":
        # trained on (s_in · v) -> (s_out · ĉ): fold the scales back, then into standardised form
        s_in, s_out = extra["scales"]["source"], extra["scales"]["target"]
        W_raw, b_raw = W * (s_in / s_out), b / s_out
        W, b = W_raw * std[None, :], b_raw + W_raw @ mean
    encs, plan = ctx["encs"], ctx["plan"]
    now = time.perf_counter()
    run = {
        "method": c.method,
        "epochs": int(c.epochs) if c.method in ITERATIVE else 0,
        "fraction": float(c.fraction),
        "seed": int(c.seed),
        "hyper": c.hyper(),
        "device": str(ctx["device"]),  # what --device (default auto) resolved to
        "source": _enc(encs[ctx["src"]]),
        "target": _enc(encs[ctx["tgt"]]),
        "vocab": ctx["vocab"],
        "cache": ctx["fingerprint"],
        "rows": {"usable": int(plan.usable), "used": int(st.n), "streamed": not plan.resident,
                 "chunks": len(ctx["feed"]), "read_wait_s": round(ctx["feed"].read_wait_s, 4)},
        "standardization": {"tensors": ["mean", "std"], "form": "h(v) = W ((v - mean) / std) + b"},
        **extra,
        "history": history,
        "stats_time_s": round(ctx["stats_s"], 4),
        "wall_time_s": round(now - ctx["t0"], 4),
        "batched_with": batched_with,
        "zoomshot_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    f32 = lambda t: None if t is None else t.detach().double().cpu().numpy().astype(np.float32)  # noqa: E731
    return Mapping(W=f32(W), b=f32(b), mean=f32(mean), std=f32(std), run=run, U=f32(U), e=f32(e))


def _enc(e) -> dict:
    return {"key": e.key, "spec": e.spec, "dim": int(e.dim), "weights": e.weights, "family": e.family}
