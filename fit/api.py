"""The fit stage's entry points: one fit (`fit_cache`), a sweep grid (`fit_grid`), any list (`fit_configs`).

All of them read the cache once (one statistics pass, which also loads the rows when they fit in
the memory budget), then solve or train each configuration in turn and score it on the held-out
rows. Each gives a `Mapping` with its run record; nothing is written (`zoomshot.mapping.save_mapping`).
"""
from __future__ import annotations

import datetime as _dt
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from zoomshot.cache import Cache
from zoomshot.errors import ZsError
from zoomshot.mapping import Mapping
from zoomshot.version import __version__

from .closed_form import procrustes_map, ridge_solution
from .config import ITERATIVE, FitConfig
from .data import Chunk, ChunkFeed, Moments, check_dims, plan_rows, release_freed_memory, resolve_encoders

SHARED = ("source", "target", "vocab", "seed", "device", "memory_budget", "holdout")
LOO_ROWS = 2048  # rows whose exact leave-one-out agreement and error score each ridge penalty


def fit_cache(cache_path, cfg: FitConfig, progress=None, bar: bool = False, on_state=None) -> Mapping:
    """Fit one mapping on a cache. progress(record) is called at the start and after each epoch
    with {"epoch", "epochs", "loss", "align", "cycle", "kd", "holdout"}; bar: a tqdm step bar.
    on_state(epoch, mapping), iterative methods only: called at the start (epoch 0) and after each
    epoch with the Mapping of that state, so a caller with labels can score every epoch (zs never
    does; the fit itself keeps its epoch by held-out agreement)."""
    return fit_configs(cache_path, [cfg], progress=progress, bar=bar, on_state=on_state)[0]


def fit_grid(cache_path, cfg: FitConfig, epochs: list[int], fractions: list[float],
             methods: list[str] | None = None, on_result=None) -> list[Mapping]:
    """Fit every (method, epochs, fraction) of a sweep from one read of the cache. Closed-form
    methods have no epochs: they give one mapping per fraction, with run["epochs"] = 0. Returned
    in the order methods × epochs × fractions; on_result(mapping) is called as each one is finished."""
    if not epochs or not fractions:
        raise ZsError("a sweep needs at least one epochs value and one fraction")
    cfgs = []
    for m in methods or [cfg.method]:
        for e in (epochs if m in ITERATIVE else [None]):  # a closed form: one mapping per fraction
            cfgs += [replace(cfg, method=m, epochs=None if e is None else int(e), fraction=float(f))
                     for f in fractions]
    return fit_configs(cache_path, cfgs, on_result=on_result)


@dataclass
class Shared:
    """What the configurations of one fit_configs call share: the cache's encoders, text, rows."""

    dv: int
    d: int
    encs: dict
    record: dict  # the run record's source, target, vocab and cache
    T: object  # (K, d) normalised text classifier, or None
    plan: object
    feed: ChunkFeed
    device: object
    t0: float
    moments: Moments
    held: Chunk | None  # the held-out rows
    sample: Chunk | None  # the rows with rank < LOO_ROWS
    stats_s: float
    ridge_solutions: dict = field(default_factory=dict)  # closed_form.ridge_solution's


def fit_configs(cache_path, cfgs: list[FitConfig], on_result=None, progress=None,
                bar: bool = False, on_state=None) -> list[Mapping]:
    """Fit each configuration (they must share source, target, vocab, seed, device, memory budget
    and holdout) over one read of the cache, one after another."""
    t0 = time.perf_counter()
    if not cfgs:
        return []
    cfgs = [c.resolved() for c in cfgs]
    for name in SHARED:
        vals = {repr(getattr(c, name)) for c in cfgs}
        if len(vals) > 1:
            raise ZsError(f"configurations fitted together must share {name}; got {sorted(vals)}")
    release_freed_memory()
    sh = _setup(Path(cache_path).resolve(), cfgs, t0)
    results = []
    for i, c in enumerate(cfgs):
        mapping = _fit_one(c, sh, sh.plan.sizes[i], progress, bar, on_state)
        why = mapping.mismatch(sh.encs)
        if why:  # a fit must produce a mapping that fits its own cache
            raise ZsError(f"internal: fitted mapping does not match its cache: {why}")
        results.append(mapping)
        if on_result:
            on_result(mapping)
    return results


def _setup(path: Path, cfgs: list[FitConfig], t0: float) -> Shared:
    """Encoders, text and row plan, then the one pass over every block: moments per rank tier, the
    held-out rows, the leave-one-out sample."""
    import torch

    from zoomshot.devices import resolve_device

    from .trainer import threads_for

    base = cfgs[0]
    device = torch.device(resolve_device(base.device))
    with Cache(path) as cache:
        src, tgt = resolve_encoders(cache, base.source, base.target)
        dv, d = check_dims(cache, src, tgt)
        T, vocab = _text(cache, tgt, base.vocab, cfgs)
        plan = plan_rows(cache, src, tgt, [c.fraction for c in cfgs], base.seed,
                         bytes_per_row=4 * (dv + d), memory_budget=base.memory_budget,
                         holdout=base.holdout)
        encs = cache.encoders
        record = {role: {"key": e.key, "spec": e.spec, "dim": int(e.dim), "weights": e.weights,
                         "family": e.family} for role, e in (("source", encs[src]), ("target", encs[tgt]))}
        record.update(vocab=vocab, cache=cache.fingerprint())
    small = [s for s in plan.sizes if s < 2]
    if small:
        raise ZsError(f"{path}: a fit needs at least 2 training rows, and --fraction leaves {small[0]} "
                      f"of the {plan.usable - plan.holdout} (after {plan.holdout} held out); "
                      f"raise --fraction or extract more images")
    # zoomshot needs the ridge solution for its start or, from a random start, its step scales
    full = any(c.method in ("ridge", "procrustes", "zoomshot") for c in cfgs)
    feed = ChunkFeed(path, src, tgt, plan, device)
    moments = Moments(plan.sizes, dv, d, full=full, device=device)
    held, sample = [], []
    with torch.no_grad(), threads_for(device, plan.block_rows * dv * (dv + d if full else 1)):
        for blk in feed.blocks(range(len(feed))):
            moments.add(blk)
            held.append(blk.take(blk.ranks >= plan.holdout_from))
            sample.append(blk.take(blk.ranks < LOO_ROWS))
    held, sample = (Chunk(*map(torch.cat, zip(*parts))) if sum(len(p.v) for p in parts) else None
                    for parts in (held, sample))
    return Shared(dv, d, encs, record, None if T is None else T.to(device), plan, feed, device, t0,
                  moments, held, sample, stats_s=time.perf_counter() - t0)


def _fit_one(c: FitConfig, sh: Shared, size: int, progress, bar: bool, on_state=None) -> Mapping:
    """One configuration: solved (closed forms) or trained, scored on the held-out rows."""
    import torch

    from .holdout import holdout_metrics

    st = sh.moments.stats(size)
    extra: dict = {"warnings": []}
    if st.n < sh.dv:
        extra["warnings"].append(f"trained on {st.n} rows, fewer than the source's {sh.dv} dimensions: "
                                 f"the map is underdetermined and may not generalise; use more rows")
    t_start = time.perf_counter()
    U = e = None
    if c.method == "procrustes":
        W, b = procrustes_map(st)
    elif c.method == "ridge":
        extra["ridge"], (W, b, U, e) = ridge_solution(c, st, sh)
    else:
        from .iterative import train_config

        state = None if on_state is None else (  # each visited state as a Mapping (bare run record)
            lambda epoch, cs, maps: on_state(epoch, _mapping(cs, st, *maps, {}, sh)))
        c, (W, b, U, e), more = train_config(c, st, sh, progress, bar, state)
        extra.update(more, warnings=extra["warnings"] + more.get("warnings", []))
    extra["train_time_s"] = round(time.perf_counter() - t_start, 4)
    m = _mapping(c, st, W, b, U, e, extra, sh)
    if sh.held is not None:  # the saved float32 map, scored as a user would apply it
        W, b, mean, std = (torch.from_numpy(t).to(sh.device) for t in (m.W, m.b, m.mean, m.std))
        m.run["holdout"]["final"] = holdout_metrics(((sh.held.v - mean) / std) @ W.T + b, sh.held.c, sh.T)
    return m


def _text(cache: Cache, target: str, vocab: str | None, cfgs):
    """The (K, d) normalised text classifier and the vocabulary's name: needed by zoomshot's KD and
    text cycle, used by the held-out agreement when the cache has a vocabulary."""
    import torch

    needs = [c for c in cfgs if c.method == "zoomshot" and (c.lambda_kd > 0 or c.lambda_cycle > 0)]
    have = cache.vocabularies(target)
    if vocab is not None and vocab not in have:
        raise ZsError(f"{cache.path}: encoders/{target} has no vocabulary {vocab!r}; it has: "
                      f"{', '.join(have) or 'none'}")
    if not have and needs:
        raise ZsError(f"{cache.path}: the CLIP encoder {target!r} has no text vocabulary, which "
                      f"zoomshot's distillation and text-cycle losses need; extract with --vocab "
                      f"NAME, or use --method ridge|linear-aligner|procrustes")
    if not have or (vocab is None and len(have) > 1 and not needs):
        return None, None  # no vocabulary, or several and none named: no held-out agreement
    tv = cache.text(target, vocab, embeddings=False)
    T = torch.from_numpy(tv.classifier.astype(np.float32))
    if not torch.isfinite(T).all():
        raise ZsError(f"{cache.path}: encoders/{target}/text/{tv.name}/classifier has NaN/Inf values")
    T = T / T.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return T, tv.name


def _mapping(c: FitConfig, st, W, b, U, e, extra: dict, sh: Shared) -> Mapping:
    """A Mapping in the standardised form h(v) = W ((v − mean) / std) + b, with its run record."""
    f32 = lambda t: None if t is None else t.detach().double().cpu().numpy().astype(np.float32)  # noqa: E731
    plan = sh.plan
    history = extra.pop("history", [])
    run = {
        "method": c.method,
        "epochs": int(c.epochs) if c.method in ITERATIVE else 0,
        "fraction": float(c.fraction),
        "seed": int(c.seed),
        "hyper": asdict(c),  # device and memory budget say how, not what
        "device": str(sh.device),  # what --device (default auto) resolved to
        **sh.record,
        "rows": {"usable": int(plan.usable), "used": int(st.n), "held_out": int(plan.holdout),
                 "streamed": not plan.resident, "blocks": len(sh.feed),
                 "read_wait_s": round(sh.feed.read_wait_s, 4)},
        "standardization": {"tensors": ["mean", "std"], "form": "h(v) = W ((v - mean) / std) + b"},
        "holdout": {"share": c.holdout, "rows": int(plan.holdout), "final": None},
        **extra,
        "history": history,
        "stats_time_s": round(sh.stats_s, 4),
        "wall_time_s": round(time.perf_counter() - sh.t0, 4),
        "zoomshot_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    return Mapping(W=f32(W), b=f32(b), mean=f32(st.mean_v), std=f32(st.std_v()), run=run, U=f32(U),
                   e=f32(e))
