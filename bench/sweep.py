"""Benchmark of sweep fitting: a 3 × 3 epochs × fractions grid of zoomshot fits on a planted world of
256,000 rows (dv 768, d 512, 1,000 classes), measured three ways in the same run:

  batched     `fit_grid`: one read of the cache, one statistics pass, the nine fits trained together
              as one stacked job (batched matmuls over stacked weights);
  sequential  the same single read and statistics pass, the nine fits trained one after another
              (`fit_configs(..., batched=False)`): isolates what stacking the training gains;
  separate    nine `fit_cache` calls, each reading the cache and making its own statistics pass:
              what nine `zs fit` runs cost.

Each fit is trained alone as it would be in the stack (its own rows, batch order and schedule), so
all three must give the same mappings up to float rounding; the largest difference is printed.

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

    from zoomshot.fit import FitConfig, fit_cache, fit_configs, fit_grid
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
    cfg = FitConfig()
    cfgs = [FitConfig(epochs=e, fraction=f) for e in epochs for f in fractions]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; grid epochs {epochs} × fractions "
          f"{fractions} of {rows} rows, zoomshot defaults")

    t = time.perf_counter()
    batched = fit_grid(train, cfg, epochs, fractions)
    t_batched = time.perf_counter() - t
    t = time.perf_counter()
    sequential = fit_configs(train, cfgs, batched=False)
    t_sequential = time.perf_counter() - t
    t = time.perf_counter()
    separate = [fit_cache(train, c) for c in cfgs]
    t_separate = time.perf_counter() - t

    def max_rel_diff(a, b):
        return max(float(np.abs(x.W - y.W).max() / np.abs(y.W).max()) for x, y in zip(a, b))

    d_seq, d_sep = max_rel_diff(batched, sequential), max_rel_diff(batched, separate)
    res = {"rows": rows, "epochs": epochs, "fractions": fractions, "batched_s": t_batched,
           "sequential_s": t_sequential, "separate_s": t_separate,
           "speedup_vs_sequential": t_sequential / t_batched, "speedup_vs_separate": t_separate / t_batched,
           "max_rel_diff_W_vs_sequential": d_seq, "max_rel_diff_W_vs_separate": d_sep,
           "stats_s": batched[0].run["stats_time_s"]}
    print(f"batched    {t_batched:8.1f} s  (statistics pass {res['stats_s']:.1f} s, once)")
    print(f"sequential {t_sequential:8.1f} s  -> batched is {t_sequential / t_batched:.2f}x faster "
          f"(largest |ΔW| / max|W| = {d_seq:.1e})")
    print(f"separate   {t_separate:8.1f} s  -> batched is {t_separate / t_batched:.2f}x faster "
          f"(largest |ΔW| / max|W| = {d_sep:.1e})")
    if max(d_seq, d_sep) > 1e-3:
        raise SystemExit("batched and one-at-a-time fits disagree beyond float tolerance")
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
