"""Benchmark of `zs fit`, measured against references taken in the same run.

1. One epoch of zoomshot (default losses and hyper-parameters, ridge init) on a planted world of
   128,000 rows (dv 768, d 512, 1,000 classes): the tool's trainer against a plain PyTorch loop of
   the same losses — DataLoader(TensorDataset, batch 256, shuffle), two nn.Linear maps, the text
   cycle pushed through g and h, Adam with the same per-tensor rates and cosine schedule, same init. Before
   timing, both compute the loss of one batch and must agree. Prints the time ratio and each
   one's achieved matmul FLOP rate as a share of this machine's matmul rate (fp32 torch.mm,
   measured here).
2. Time per epoch at N = 32k, 128k, 512k rows (fractions of a 512k world): the cost per row must
   stay flat (linear growth).
3. The 512k world fitted streamed, under a memory budget a quarter of what its rows need: the
   epoch's throughput as a share of the in-memory fit's. (The cache file was just written, so the
   reads come mostly from the OS page cache; the background reader's checksum + decode +
   float16 conversion is what is measured, not the disk.)

Usage: python bench/fit.py [--workdir DIR] [--quick]   (--quick: 1/16 sizes, a smoke run)
"""
from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import replace
from pathlib import Path


def world(workdir: Path, name: str, rows: int, classes=1000, dv=768, d=512) -> dict:
    from zoomshot.synth import read_synth_attrs, write_synth_world

    prefix = workdir / name
    train = Path(f"{prefix}-train.h5")
    if train.exists():
        meta = read_synth_attrs(train) or {}
        if (meta.get("rows"), meta.get("classes"), meta.get("dv"), meta.get("d")) == (rows, classes, dv, d):
            return {"train": str(train), "cached": True}
    t = time.perf_counter()
    w = write_synth_world(prefix, rows=rows, test_rows=1000, classes=classes, dv=dv, d=d)
    w["synth_s"] = time.perf_counter() - t
    print(f"  wrote {train.name}: {rows} rows in {w['synth_s']:.1f} s", flush=True)
    return w


def matmul_rates(B: int, dv: int, d: int, K: int) -> dict:
    import torch

    def rate(m, k, n, reps=10):
        a, b = torch.randn(m, k), torch.randn(k, n)
        for _ in range(2):
            a @ b
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        return 2 * m * k * n * reps / (time.perf_counter() - t)

    return {"square_2048": rate(2048, 2048, 2048), f"{B}x{dv}x{d}": rate(B, dv, d),
            f"{B}x{d}x{K}": rate(B, d, K)}


def epoch_flops(n: int, B: int, dv: int, d: int, K: int) -> float:
    """Matmul FLOPs the tool executes for one zoomshot epoch (full batches, then the partial one)."""
    from zoomshot.fit.losses import zoomshot_step_flops

    full, rest = divmod(n, B)
    return full * zoomshot_step_flops(B, dv, d, K) + (zoomshot_step_flops(rest, dv, d, K) if rest else 0.0)


def reference_flops(n: int, B: int, dv: int, d: int, K: int) -> float:
    """Matmul FLOPs of the reference loop: the same per-row work, and per step the K texts through
    g and h instead of the tool's text moments."""
    moments = 2 * d * dv * d * 3 + 2 * d * d * d * 3
    texts = 2 * K * d * dv * 2 + 2 * K * d * dv * 3  # g(T): fwd + grad U; h(g(T)): fwd + both grads
    steps = math.ceil(n / B)
    return epoch_flops(n, B, dv, d, K) - steps * moments + steps * texts


def load_rows(train: str):
    """Standardised source rows, normalised CLIP rows and the text classifier, as the tool sees them."""
    import numpy as np
    import torch

    from zoomshot.cache import open_cache

    with open_cache(train) as cache:
        v = torch.from_numpy(cache.image("synth_vision"))
        c = torch.from_numpy(cache.image("synth_clip"))
        T = torch.from_numpy(cache.text("synth_clip").classifier.astype(np.float32))
    c = c / c.norm(dim=1, keepdim=True)
    x = (v - v.mean(0)) / v.std(0, unbiased=False)
    return x, c, T / T.norm(dim=1, keepdim=True)


def reference_epoch(x, c, T, init, cfg, batch_size: int = 256) -> dict:
    """The plain PyTorch loop; returns its epoch time and its first batch's loss at the init."""
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, TensorDataset

    dv, d = x.shape[1], c.shape[1]
    h, g = torch.nn.Linear(dv, d), torch.nn.Linear(d, dv)
    with torch.no_grad():
        h.weight.copy_(init["W"]), h.bias.copy_(init["b"]), g.weight.copy_(init["U"]), g.bias.copy_(init["e"])
    loader = DataLoader(TensorDataset(x, c), batch_size=batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    total = len(loader)
    # zoomshot's relative rate: each tensor steps by lr times its RMS at the (ridge) start
    rms = {k: float(t.square().mean().sqrt()) for k, t in init.items()}
    scales = [rms["W"], max(rms["b"], rms["W"]), rms["U"], max(rms["e"], rms["U"])]
    opt = torch.optim.Adam([{"params": [p], "lr": cfg.lr * s}
                            for p, s in zip([*h.parameters(), *g.parameters()], scales)])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
    tau = cfg.tau

    def loss_of(xb, cb):
        hx, gc = h(xb), g(cb)
        align = F.mse_loss(hx, cb) + F.mse_loss(gc, xb)
        cycle = F.mse_loss(g(hx), xb) + F.mse_loss(h(gc), cb) + F.mse_loss(h(g(T)), T)
        s = F.normalize(hx, dim=1) @ T.T / tau
        t = cb @ T.T / tau
        kd = tau ** 2 * F.kl_div(F.log_softmax(s, 1), F.log_softmax(t, 1), log_target=True, reduction="batchmean")
        return cfg.lambda_align * align + cfg.lambda_cycle * cycle + cfg.lambda_kd * kd

    xb, cb = x[:batch_size], c[:batch_size]
    with torch.no_grad():
        first = float(loss_of(xb, cb))
    t0 = time.perf_counter()
    for xb, cb in loader:
        loss = loss_of(xb, cb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return {"epoch_s": time.perf_counter() - t0, "first_loss": first, "final_loss": loss.item()}


def tool_loss(x, c, T, init, cfg, batch_size: int = 256) -> float:
    """The tool's loss function on the same batch and init (the check that both loops train one thing)."""
    import torch

    from zoomshot.fit.losses import text_moments, zoomshot_loss

    h, g = torch.nn.Linear(x.shape[1], c.shape[1]), torch.nn.Linear(c.shape[1], x.shape[1])
    with torch.no_grad():
        h.weight.copy_(init["W"]), h.bias.copy_(init["b"]), g.weight.copy_(init["U"]), g.bias.copy_(init["e"])
        total, _ = zoomshot_loss(h, g, x[:batch_size], c[:batch_size], (T, *text_moments(T)), cfg)
    return float(total)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", default="/tmp/zs-bench-fit")
    ap.add_argument("--quick", action="store_true", help="1/16 sizes: a smoke run of the script")
    ap.add_argument("--out", default=None, help="also write the figures as JSON here")
    args = ap.parse_args()

    import torch

    from zoomshot.fit import FitConfig, fit_cache

    scale = 16 if args.quick else 1
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    dv, d, K = 768, 512, 1000
    # batch 4096 (the schedule's choice from 131,072 rows up), no held-out rows, a fixed ridge start:
    # what is timed is the training epoch
    cfg = FitConfig(epochs=1, batch_size=4096, holdout=0.0, ridge_lambda=1e-3).resolved()
    res: dict = {"threads": torch.get_num_threads(), "defaults": {k: getattr(cfg, k) for k in (
        "batch_size", "lr", "optimizer", "lambda_align", "lambda_cycle", "lambda_kd", "tau", "kd")}}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; zoomshot defaults {res['defaults']}")

    rates = matmul_rates(cfg.batch_size, dv, d, K)
    peak = rates["square_2048"]
    res["matmul_gflops"] = {k: v / 1e9 for k, v in rates.items()}
    print("matmul rate (fp32 torch.mm): " + ", ".join(f"{k} {v / 1e9:.1f} GFLOP/s" for k, v in rates.items()))

    # 1. one epoch: the tool against the plain loop
    n1 = 128_000 // scale
    w = world(work, f"w{n1}", n1)
    m = fit_cache(w["train"], cfg)
    ours_s = m.run["train_time_s"]
    ours_flops = epoch_flops(n1, cfg.batch_size, dv, d, K)
    # the same start as the tool's: its ridge solution (W, b forward; U, e inverse)
    ridge = fit_cache(w["train"], FitConfig(method="ridge", holdout=0.0, ridge_lambda=1e-3))
    init = {k: torch.from_numpy(getattr(ridge, k)) for k in "WbUe"}
    x, c, T = load_rows(w["train"])
    ref = reference_epoch(x, c, T, init, cfg)
    mine = tool_loss(x, c, T, init, cfg)
    agree = abs(mine - ref["first_loss"]) / abs(ref["first_loss"])
    ref_flops = reference_flops(n1, 256, dv, d, K)
    res["epoch"] = {"rows": n1, "tool_s": ours_s, "reference_s": ref["epoch_s"], "speedup": ref["epoch_s"] / ours_s,
                    "tool_gflops": ours_flops / ours_s / 1e9, "tool_share_of_matmul": ours_flops / ours_s / peak,
                    "reference_gflops": ref_flops / ref["epoch_s"] / 1e9,
                    "reference_share_of_matmul": ref_flops / ref["epoch_s"] / peak,
                    "same_loss_rel_diff": agree, "tool_stats_s": m.run["stats_time_s"]}
    print(f"\n1. one zoomshot epoch on {n1} rows (dv {dv}, d {d}, {K} classes)")
    print(f"   loss of one batch at the init: tool {mine:.6g}, reference {ref['first_loss']:.6g} "
          f"(relative difference {agree:.1e})")
    print(f"   tool      {ours_s:7.2f} s  batch {cfg.batch_size}, {ours_flops / ours_s / 1e9:6.1f} GFLOP/s "
          f"= {ours_flops / ours_s / peak:.2f} of the matmul rate")
    print(f"   reference {ref['epoch_s']:7.2f} s  batch 256, {ref_flops / ref['epoch_s'] / 1e9:6.1f} GFLOP/s "
          f"= {ref_flops / ref['epoch_s'] / peak:.2f} of the matmul rate")
    print(f"   tool is {ref['epoch_s'] / ours_s:.2f}x faster per epoch (statistics pass + ridge init, "
          f"once per fit: {m.run['stats_time_s']:.1f} s)")
    if agree > 1e-4:
        raise SystemExit("the tool and the reference disagree on the loss: the comparison is void")
    del x, c

    # 2. scaling with N
    nbig = 512_000 // scale
    wb = world(work, f"w{nbig}", nbig)
    res["scaling"] = []
    print(f"\n2. time per epoch against N (fractions of a {nbig}-row world)")
    base_per_row = None
    for f in (1 / 16, 1 / 4, 1.0):
        mm = fit_cache(wb["train"], replace(cfg, fraction=f))
        n, s = mm.run["rows"]["used"], mm.run["train_time_s"]
        base_per_row = base_per_row or s / n
        res["scaling"].append({"rows": n, "epoch_s": s, "us_per_row": 1e6 * s / n,
                               "per_row_vs_smallest": (s / n) / base_per_row, "stats_s": mm.run["stats_time_s"]})
        print(f"   N = {n:7d}: {s:7.2f} s per epoch, {1e6 * s / n:6.1f} us per row "
              f"({(s / n) / base_per_row:.2f}x the smallest N's cost per row)")
    in_memory = res["scaling"][-1]

    # 3. streamed beyond the memory budget
    need = nbig * 4 * (dv + d)
    budget = need // 4
    ms = fit_cache(wb["train"], replace(cfg, memory_budget=budget))
    s = ms.run["train_time_s"]
    res["streamed"] = {"rows": nbig, "budget_bytes": budget, "need_bytes": need, "chunks": ms.run["rows"]["blocks"],
                       "epoch_s": s, "in_memory_epoch_s": in_memory["epoch_s"],
                       "throughput_share": in_memory["epoch_s"] / s, "read_wait_s": ms.run["rows"].get("read_wait_s"),
                       "stats_s": ms.run["stats_time_s"]}
    print(f"\n3. streamed: {nbig} rows need {need / 2**20:.0f} MiB; budget {budget / 2**20:.0f} MiB -> "
          f"{ms.run['rows']['blocks']} blocks")
    print(f"   epoch {s:.2f} s streamed vs {in_memory['epoch_s']:.2f} s in memory: throughput "
          f"{in_memory['epoch_s'] / s:.2f} of in-memory (trainer waited {ms.run['rows'].get('read_wait_s', 0):.1f} s "
          f"for the reader; statistics pass {ms.run['stats_time_s']:.1f} s)")
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
