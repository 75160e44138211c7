"""Benchmark of batch evaluation: nine mappings scored on a planted world's test cache (50,000 rows,
dv 768, d 512, 1,000 classes), measured two ways in the same run:

  stacked  one `evaluate()` call: each chunk of features is read once and mapped through all nine
           mappings with one matmul, and all nine mappings' logits come from one more;
  alone    nine `evaluate()` calls, one mapping each (the reference).

Both give the same records (checked); the ratio is printed.

Usage: python bench/evaluate.py [--workdir DIR] [--quick]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", default="/tmp/zs-bench-evaluate")
    ap.add_argument("--quick", action="store_true", help="1/10 of the rows: a smoke run of the script")
    args = ap.parse_args()

    import numpy as np

    from zoomshot.evaluate import evaluate
    from zoomshot.fit import FitConfig, fit_grid
    from zoomshot.mapping import save_mapping
    from zoomshot.synth import write_synth_world

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    test_rows = 50_000 // (10 if args.quick else 1)
    world = write_synth_world(work / "world", rows=20_000, test_rows=test_rows, classes=1000, dv=768, d=512)
    maps = fit_grid(world["train"], FitConfig(method="ridge"), epochs=[0], fractions=[0.2, 0.4, 0.6, 0.8, 1.0],
                    methods=["ridge", "procrustes"])[:9]
    dirs = [str(save_mapping(m, work / f"m{i}")) for i, m in enumerate(maps)]
    print(f"{len(dirs)} mappings, test cache of {test_rows} rows, 1,000 classes")

    evaluate(dirs[:1], [world["test"]])  # warm-up: page cache, BLAS threads
    t0 = time.perf_counter()
    together, _ = evaluate(dirs, [world["test"]])
    t_stacked = time.perf_counter() - t0
    t0 = time.perf_counter()
    alone = [r for d in dirs for r in evaluate([d], [world["test"]])[0] if r["mapping"] is not None]
    t_alone = time.perf_counter() - t0

    together = [r for r in together if r["mapping"] is not None]
    same = all(a["metrics"]["acc1"] == b["metrics"]["acc1"] for a, b in zip(together, alone))
    acc = np.array([r["metrics"]["acc1"] for r in together])
    print(f"stacked: {t_stacked:6.2f} s   alone: {t_alone:6.2f} s   ratio alone/stacked: {t_alone / t_stacked:.2f}x"
          f"   same acc1: {same}   (acc1 {acc.min():.3f}..{acc.max():.3f})")


if __name__ == "__main__":
    main()
