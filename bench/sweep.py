"""Benchmark of sweep fitting: a 3 × 3 epochs × fractions grid of zoomshot fits on a planted world of
256,000 rows (dv 768, d 512, 1,000 classes), measured two ways in the same run:

  shared    `fit_grid`: one read of the cache and one statistics pass (moments per fraction tier,
            the held-out rows, the leave-one-out sample), then the nine fits trained one after
            another from the rows in memory;
  separate  nine `fit_cache` calls, each reading the cache and making its own statistics pass:
            what nine `zs fit` runs cost.

Both give the same mappings (each fit's rows, batch order and start depend on its seed and
fraction only); the largest difference is printed.

Usage: python bench/sweep.py [--workdir DIR] [--quick] [--epochs 1,2,3] [--fractions 0.05,0.1,0.25]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", default="/tmp/zs-bench-sweep")
    ap.add_argument("--quick", action="store_true", help="1/16 of the rows: a smoke run of the script")
    ap.add_argument("--epochs", default="1,2,3")
    ap.add_argument("--fractions", default="0.05,0.1,0.25")
    ap.add_argument("--out", default=None, help="also write the figures as JSON here")
    args = ap.parse_args()

    import numpy as np
    import torch

    from zoomshot.fit import FitConfig, fit_cache, fit_grid
    from zoomshot.synth import read_synth_attrs, write_synth_world

    rows = 256_000 // (16 if args.quick else 1)
    epochs = [int(e) for e in args.epochs.split(",")]
    fractions = [float(f) for f in args.fractions.split(",")]
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    train = work / f"w{rows}-train.h5"
    if not train.exists() or (read_synth_attrs(train) or {}).get("rows") != rows:
        t = time.perf_counter()
        write_synth_world(work / f"w{rows}", rows=rows, test_rows=1000, classes=1000, dv=768, d=512)
        print(f"wrote {train.name}: {rows} rows in {time.perf_counter() - t:.1f} s")
    cfg = FitConfig(batch_size=4096)
    cfgs = [FitConfig(epochs=e, fraction=f, batch_size=4096) for e in epochs for f in fractions]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; grid epochs {epochs} × fractions "
          f"{fractions} of {rows} rows, zoomshot defaults")

    t = time.perf_counter()
    shared = fit_grid(train, cfg, epochs, fractions)
    t_shared = time.perf_counter() - t
    t = time.perf_counter()
    separate = [fit_cache(train, c) for c in cfgs]
    t_separate = time.perf_counter() - t

    diff = max(float(np.abs(x.W - y.W).max() / np.abs(y.W).max()) for x, y in zip(shared, separate))
    res = {"rows": rows, "epochs": epochs, "fractions": fractions, "shared_s": t_shared,
           "separate_s": t_separate, "speedup_vs_separate": t_separate / t_shared,
           "max_rel_diff_W": diff, "stats_s": shared[0].run["stats_time_s"]}
    print(f"shared   {t_shared:8.1f} s  (one read and statistics pass: {res['stats_s']:.1f} s)")
    print(f"separate {t_separate:8.1f} s  -> the shared read is {t_separate / t_shared:.2f}x faster "
          f"(largest |ΔW| / max|W| = {diff:.1e})")
    if diff > 1e-3:
        raise SystemExit("shared-read and separate fits disagree beyond float tolerance")
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
