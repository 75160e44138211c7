"""Benchmark of `zs extract`, measured against references taken in the same run.

1. End-to-end extraction throughput of each encoder (decode, preprocess, forward, HDF5 writes)
   as a ratio of the same encoder's model-only forward throughput on pre-decoded tensors.
2. Two encoders in one run (each image decoded once) against two separate runs.
The GPU path (bf16, channels_last, --decode gpu, --compile) is bench/gpu.py's (`make bench-gpu`).

Images are generated JPEGs (no downloads); models use random weights.
Usage: python bench/extract.py [--images 192] [--size 384x288] [--encoders SPEC SPEC] [--repeat 3] [--workers W] [--threads T]
"""
from __future__ import annotations

import argparse
import io
import shutil
import sys
import tempfile
import time
from pathlib import Path


def make_images(root: Path, n: int, size=(384, 288)) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    for i in range(n):
        d = root / f"class_{i % 10}"
        d.mkdir(parents=True, exist_ok=True)
        base = np.stack([(xx * (1 + i % 7)) % 256, (yy * (1 + i % 5)) % 256, (xx + yy + 13 * i) % 256], -1)
        arr = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=90)
        (d / f"{i:05d}.jpg").write_bytes(buf.getvalue())
    return root


def model_only(spec: str, images: Path, batch_size: int) -> float:
    """Images/s of the CPU forward alone on tensors decoded and preprocessed beforehand, run as
    `zs extract` runs it (devices.to_host: on the forward thread, all torch threads)."""
    import torch

    from zoomshot.encoders import build_encoder
    from zoomshot.extract.devices import make_forward, to_host
    from zoomshot.sources import decode_rgb, open_source

    enc = build_encoder(spec, device="cpu")
    src = open_source(str(images))
    x = torch.stack([enc.preprocess(decode_rgb(src.read(i))) for i in range(len(src))])
    fwd = make_forward(enc, "cpu")
    with torch.inference_mode():
        to_host(fwd, x[:batch_size], "cpu")()  # warm-up (kernel selection, lazy init, the threads)
        t = time.perf_counter()
        waits = [to_host(fwd, x[i:i + batch_size], "cpu") for i in range(0, len(x), batch_size)]
        for wait in waits:
            wait()
    return len(x) / (time.perf_counter() - t)


def run_extract(encoders: list[str], images: Path, out: Path, **kw):
    from zoomshot.extract.runner import ExtractConfig, extract

    shutil.rmtree(out.with_suffix(".shards"), ignore_errors=True)
    out.unlink(missing_ok=True)
    t = time.perf_counter()
    s = extract(ExtractConfig(out=str(out), encoders=encoders, images=str(images), progress=False, **kw))
    return s, time.perf_counter() - t


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=192)
    ap.add_argument("--encoders", nargs=2, default=["timm:resnet18@random", "timm:mobilenetv3_large_100@random"])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--size", default="384x288", help="generated JPEG size WxH")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=None)
    args = ap.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="zs-bench-extract-"))
    try:
        size = tuple(int(v) for v in args.size.lower().split("x"))
        images = make_images(tmp / "images", args.images, size)
        print(f"{args.images} generated JPEGs ({size[0]}x{size[1]}), batch {args.batch_size}, "
              f"{torch.get_num_threads()} torch thread(s), workers {args.workers if args.workers is not None else 'default'}, CPU")
        kw = dict(batch_size=args.batch_size, workers=args.workers, device="cpu")
        a, b = args.encoders
        # Each figure is the best of --repeat runs, taken in alternation, so drift on a shared
        # machine hits the compared figures alike.
        ref = {spec: 0.0 for spec in (a, b)}
        e2e = {spec: 0.0 for spec in (a, b)}
        wall = {spec: float("inf") for spec in (a, b)}
        loop = {spec: float("inf") for spec in (a, b)}
        both = both_loop = float("inf")
        for _ in range(args.repeat):
            for spec in (a, b):
                ref[spec] = max(ref[spec], model_only(spec, images, args.batch_size))
                s, w = run_extract([spec], images, tmp / "one.h5", **kw)
                e2e[spec] = max(e2e[spec], s.images_per_s)
                wall[spec] = min(wall[spec], w)
                loop[spec] = min(loop[spec], s.decoded / s.images_per_s)
            s, w = run_extract([a, b], images, tmp / "two.h5", **kw)
            both = min(both, w)
            both_loop = min(both_loop, s.decoded / s.images_per_s)
        print(f"\n{'encoder':<40} {'model-only img/s':>17} {'zs extract img/s':>17} {'ratio':>6} {'whole run s':>12}")
        for spec in (a, b):
            print(f"{spec:<40} {ref[spec]:>17.1f} {e2e[spec]:>17.1f} {e2e[spec] / ref[spec]:>6.2f} {wall[spec]:>12.1f}")
        sep, sep_loop = wall[a] + wall[b], loop[a] + loop[b]
        print(f"\ntwo encoders in one run: {both:.1f}s ({both_loop:.1f}s in the batch loop); two separate runs: "
              f"{sep:.1f}s ({sep_loop:.1f}s); ratio separate/one run {sep / both:.2f} ({sep_loop / both_loop:.2f} "
              f"for the loops); the one run decoded {s.decoded} images once for both")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
