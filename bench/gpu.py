"""The accelerator benchmark: one command, a few minutes on one GPU, one table and one JSON file.

    make bench-gpu                      # = python bench/gpu.py (needs CUDA)
    python bench/gpu.py --smoke         # every step at toy sizes on the CPU (what the test suite runs)

Steps (each one is reported, a failed step does not stop the others; the exit code is non-zero
when any step failed):
  images            ~500x375 generated JPEGs (ImageNet-like size), written once to --workdir
  B/L model-only    ViT-B/16 and ViT-L/14 (timm, random init) forward alone on device tensors,
                    bf16 autocast, channels_last, eager and --compile
  B/L extract       `zs extract` end to end on the JPEGs: CPU-decoding workers (--decode cpu) and
                    --decode gpu, eager and --compile; ratio = end-to-end / model-only
  two encoders      B and L in one pass (each image decoded once) against two passes
  fit               `zs fit` (zoomshot, 5 epochs) of a planted world of 1M rows, 768 -> 512, on the GPU
  sweep             a 3x3 epochs x fractions grid: fit_grid (one shared read) against nine fit_cache calls
Peak GPU memory is reported per step. Weights are random: nothing is downloaded.

Full mode runs every step in its own process (--isolate, the default there) with a timeout, so a
crash or a hang costs one row, not the run; steps stop being started when --budget runs out.
Compile steps come last: they are the slow ones. `--only NAME` reruns some steps (substring match).

--smoke: toy sizes on the CPU (timm test_vit models, 48 small JPEGs, a 2,000-row world). Steps
that need CUDA run their CPU stand-in: --decode gpu runs the same byte-tensor -> decode_jpeg ->
tensor-transform path with decode_jpeg on the CPU, and --compile uses dynamo's eager backend
(tracing only, no code generation) to stay fast.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


@dataclass(frozen=True)
class Sizes:
    images: int
    image_size: tuple[int, int]
    batch: int
    models: dict  # short name -> encoder spec
    fit_rows: int
    fit_dims: tuple[int, int, int]  # dv, d, classes
    fit_epochs: int
    sweep_rows: int
    sweep_epochs: tuple[int, ...]
    sweep_fractions: tuple[float, ...]


FULL = Sizes(images=4096, image_size=(500, 375), batch=256,
             models={"ViT-B/16": "timm:vit_base_patch16_224@random",
                     "ViT-L/14": "timm:vit_large_patch14_clip_224@random"},
             fit_rows=1_000_000, fit_dims=(768, 512, 1000), fit_epochs=5,
             sweep_rows=1_000_000, sweep_epochs=(1, 2, 3), sweep_fractions=(0.05, 0.1, 0.2))
SMOKE = Sizes(images=48, image_size=(120, 90), batch=16,
              models={"ViT-B/16": "timm:test_vit@random", "ViT-L/14": "timm:test_vit2@random"},
              fit_rows=2000, fit_dims=(32, 16, 10), fit_epochs=2,
              sweep_rows=2000, sweep_epochs=(1, 2, 3), sweep_fractions=(0.25, 0.5, 1.0))


class Ctx:
    """What every step sees: sizes, device, the work folder, and the test's failure injection."""

    def __init__(self, args, sizes: Sizes):
        self.args, self.sizes = args, sizes
        self.smoke = args.smoke
        self.device = "cpu" if args.smoke else "cuda"
        self.work = Path(args.workdir)
        self.images = self.work / f"jpegs-{sizes.images}-{sizes.image_size[0]}x{sizes.image_size[1]}"

    def spec(self, short: str) -> str:
        return self.sizes.models[short]


# ------------------------------------------------------------------------------ steps ----------
def step_images(ctx: Ctx) -> dict:
    """Write the JPEGs once (reused by later runs with the same --workdir)."""
    done = ctx.images / ".complete"
    if done.exists():
        return {"images": ctx.sizes.images, "note": "reused"}
    t = time.perf_counter()
    tmp = ctx.images.with_name(ctx.images.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    jobs = [(tmp, i, ctx.sizes.image_size) for i in range(ctx.sizes.images)]
    if ctx.smoke:
        for j in jobs:
            _write_jpeg(j)
    else:
        from multiprocessing import Pool

        with Pool(min(16, os.cpu_count() or 1)) as pool:
            pool.map(_write_jpeg, jobs, chunksize=64)
    if ctx.images.exists():
        import shutil

        shutil.rmtree(ctx.images)
    tmp.rename(ctx.images)
    done.write_text("")
    return {"images": ctx.sizes.images, "s": time.perf_counter() - t}


def _write_jpeg(job) -> None:
    import numpy as np
    from PIL import Image

    root, i, (w, h) = job
    rng = np.random.default_rng(i)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * (1 + i % 7)) % 256, (yy * (1 + i % 5)) % 256, (xx + yy + 13 * i) % 256], -1)
    arr = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
    d = root / f"class_{i % 10}"
    d.mkdir(exist_ok=True)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    (d / f"{i:06d}.jpg").write_bytes(buf.getvalue())


def _sync(ctx: Ctx) -> None:
    import torch

    if ctx.device.startswith("cuda"):
        torch.cuda.synchronize()


def _use_eager_compile_backend() -> None:
    """Smoke: torch.compile traces with dynamo but generates no code (seconds instead of minutes)."""
    import functools

    import torch

    if not getattr(torch.compile, "_zs_smoke", False):
        fn = functools.partial(torch.compile, backend="eager")
        fn._zs_smoke = True
        torch.compile = fn


def model_only(ctx: Ctx, short: str, compile: bool) -> dict:
    """Forward alone on random device tensors of the model's input size, timed after warm-up."""
    import torch

    from zoomshot.encoders import build_encoder
    from zoomshot.extract.devices import make_forward

    enc = build_encoder(ctx.spec(short), device=ctx.device)
    size = (enc.preprocess_config or {}).get("input_size") or [3, 224, 224]
    fwd = make_forward(enc, ctx.device, "bf16", compile=compile)
    b = ctx.sizes.batch
    x = torch.randn(b, *size, device=ctx.device)
    with torch.inference_mode():
        t = time.perf_counter()
        for _ in range(2):  # warm-up: kernel choice, lazy init, compilation
            out = fwd(x).cpu()
        _sync(ctx)
        warm = time.perf_counter() - t
        n = max(1, ctx.sizes.images // b)
        t = time.perf_counter()
        for _ in range(n):
            out = fwd(x).cpu()
        _sync(ctx)
        dt = time.perf_counter() - t
    if out.shape != (b, enc.dim) or not torch.isfinite(out).all():
        raise RuntimeError(f"forward gave {tuple(out.shape)} (finite: {bool(torch.isfinite(out).all())}), "
                           f"expected ({b}, {enc.dim})")
    return {"img_s": n * b / dt, "warmup_s": warm, "input": list(size)}


def run_extract(ctx: Ctx, specs: list[str], out: Path, decode: str = "cpu", compile: bool = False,
                images: Path | None = None):
    import shutil

    from zoomshot.extract.runner import ExtractConfig, extract

    shutil.rmtree(out.with_suffix(".shards"), ignore_errors=True)
    out.unlink(missing_ok=True)
    t = time.perf_counter()
    s = extract(ExtractConfig(out=str(out), encoders=specs, images=str(images or ctx.images), progress=False,
                              batch_size=ctx.sizes.batch, device=ctx.device, precision="bf16", decode=decode,
                              compile=compile, workers=ctx.args.workers))
    wall = time.perf_counter() - t
    if not s.entry_written or s.unreadable or s.decoded != len(list((images or ctx.images).rglob("*.jpg"))):
        raise RuntimeError(f"extract did not finish cleanly: {s.text()}")
    return s, wall


def end_to_end(ctx: Ctx, short: str, decode: str, compile: bool) -> dict:
    """`zs extract` on the JPEGs; with --compile a short run first warms the compiler's caches."""
    if decode == "gpu" and ctx.smoke:
        return _decode_gpu_standin(ctx, short, compile)
    work = ctx.work / "extract"
    work.mkdir(parents=True, exist_ok=True)
    extra = {}
    if compile:
        t = time.perf_counter()
        warm = _subset_images(ctx, 2 * ctx.sizes.batch)
        run_extract(ctx, [ctx.spec(short)], work / "warm.h5", decode, compile, images=warm)
        extra["warm_run_s"] = time.perf_counter() - t
    s, wall = run_extract(ctx, [ctx.spec(short)], work / "one.h5", decode, compile)
    return {"img_s": s.images_per_s, "run_s": wall, **extra}


def _subset_images(ctx: Ctx, n: int) -> Path:
    """A folder of links to the first n JPEGs (a short warm-up run)."""
    d = ctx.work / f"warm-{n}"
    if not d.exists():
        tmp = d.with_name(d.name + ".tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        for p in sorted(ctx.images.rglob("*.jpg"))[:n]:
            (tmp / p.name).symlink_to(p)
        tmp.rename(d)
    return d


def _decode_gpu_standin(ctx: Ctx, short: str, compile: bool) -> dict:
    """Smoke only: the --decode gpu data path (JPEG byte tensors from the loader, decode_jpeg, the
    encoder's transforms rebuilt for tensors, the forward) with decode_jpeg on the CPU."""
    import torch

    from zoomshot.encoders import build_encoder
    from zoomshot.extract.devices import gpu_decode, make_forward, tensor_transform
    from zoomshot.extract.loader import Batch, DecodedBatches
    from zoomshot.sources import open_source

    enc = build_encoder(ctx.spec(short), device=ctx.device)
    src = open_source(str(ctx.images))
    b = ctx.sizes.batch
    batches = [Batch(0, a, min(a + b, len(src)), (enc.key,)) for a in range(0, len(src), b)]
    data = DecodedBatches(src, batches, [], gpu=True)
    tf = tensor_transform(enc.preprocess, enc.key)
    fwd = make_forward(enc, ctx.device, "bf16", compile=compile)
    n = 0
    t = time.perf_counter()
    with torch.inference_mode():
        for i in range(len(data)):
            imgs, errors = gpu_decode(data[i]["raw"], ctx.device)
            if any(errors) or any(x is None for x in imgs):
                raise RuntimeError(f"decode_jpeg failed: {[e for e in errors if e][:1]}")
            feats = fwd(torch.stack([tf(x) for x in imgs]))
            if feats.shape != (len(imgs), enc.dim):
                raise RuntimeError(f"forward gave {tuple(feats.shape)}")
            n += len(imgs)
    return {"img_s": n / (time.perf_counter() - t), "note": "CPU stand-in (decode_jpeg on cpu)"}


def two_encoders(ctx: Ctx) -> dict:
    """B and L in one extract (decoded once) against one extract each, CPU-decoding workers, eager."""
    work = ctx.work / "extract"
    work.mkdir(parents=True, exist_ok=True)
    specs = [ctx.spec(s) for s in ctx.sizes.models]
    _, one = run_extract(ctx, specs, work / "both.h5")
    two = sum(run_extract(ctx, [s], work / "sep.h5")[1] for s in specs)
    return {"one_pass_s": one, "two_passes_s": two, "speedup": two / one}


def _world(ctx: Ctx, rows: int, create: bool = False) -> str:
    """The planted world's training cache; only the `world` step writes it (a fit step that wrote
    it after a timed-out world step would time out the same way)."""
    from zoomshot.synth import read_synth_attrs, write_synth_world

    dv, d, classes = ctx.sizes.fit_dims
    prefix = ctx.work / f"world-{rows}-{dv}-{d}"
    train = Path(f"{prefix}-train.h5")
    meta = read_synth_attrs(train) if train.exists() else None
    if not meta or (meta.get("rows"), meta.get("dv"), meta.get("d")) != (rows, dv, d):
        if not create:
            raise RuntimeError(f"no planted world at {train}: run the 'world' step first (same --workdir)")
        write_synth_world(prefix, rows=rows, test_rows=1000, classes=classes, dv=dv, d=d)
    return str(train)


def step_world(ctx: Ctx) -> dict:
    t = time.perf_counter()
    for rows in {ctx.sizes.fit_rows, ctx.sizes.sweep_rows}:
        _world(ctx, rows, create=True)
    return {"rows": ctx.sizes.fit_rows, "s": time.perf_counter() - t}


def fit_step(ctx: Ctx) -> dict:
    from zoomshot.fit import FitConfig, fit_cache

    cache = _world(ctx, ctx.sizes.fit_rows)
    cfg = FitConfig(epochs=ctx.sizes.fit_epochs, device=ctx.device, memory_budget=32 << 30)
    t = time.perf_counter()
    m = fit_cache(cache, cfg)
    dt = time.perf_counter() - t
    rows = m.run["rows"]["used"]  # trained on; the held-out rows are scored every epoch
    return {"fit_s": dt, "rows": rows + m.run["rows"]["held_out"], "trained_rows": rows,
            "rows_epochs_per_s": rows * ctx.sizes.fit_epochs / dt,
            "streamed": bool(m.run["rows"]["streamed"])}


def sweep_step(ctx: Ctx) -> dict:
    from zoomshot.fit import FitConfig, fit_cache, fit_grid

    cache = _world(ctx, ctx.sizes.sweep_rows)
    cfg = FitConfig(device=ctx.device, memory_budget=32 << 30)
    ep, fr = list(ctx.sizes.sweep_epochs), list(ctx.sizes.sweep_fractions)
    t = time.perf_counter()
    grid = fit_grid(cache, cfg, ep, fr)
    shared = time.perf_counter() - t
    if len(grid) != len(ep) * len(fr):
        raise RuntimeError(f"fit_grid returned {len(grid)} mappings for a {len(ep)}x{len(fr)} grid")
    t = time.perf_counter()
    for e in ep:
        for f in fr:
            fit_cache(cache, replace(cfg, epochs=e, fraction=f))
    separate = time.perf_counter() - t
    return {"fit_grid_s": shared, "separate_s": separate, "speedup": separate / shared}


def build_steps(ctx: Ctx) -> list[tuple[str, Callable[[Ctx], dict]]]:
    """In the order they run: what is needed and cheap first, compilation last."""
    steps: list = [("images", step_images)]
    for short in ctx.sizes.models:
        steps.append((f"{short} model-only", lambda c, s=short: model_only(c, s, False)))
        for decode in ("cpu", "gpu"):
            steps.append((f"{short} extract --decode {decode}",
                          lambda c, s=short, d=decode: end_to_end(c, s, d, False)))
    steps += [("two encoders", two_encoders), ("world", step_world), ("fit", fit_step), ("sweep 3x3", sweep_step)]
    for short in ctx.sizes.models:
        steps.append((f"{short} model-only --compile", lambda c, s=short: model_only(c, s, True)))
        for decode in ("cpu", "gpu"):
            steps.append((f"{short} extract --decode {decode} --compile",
                          lambda c, s=short, d=decode: end_to_end(c, s, d, True)))
    return steps


# ------------------------------------------------------------------------------ running --------
def run_step(ctx: Ctx, name: str, fn) -> dict:
    """Run one step in this process; an exception becomes a FAILED row with its last line."""
    import torch

    cuda = ctx.device.startswith("cuda")
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    try:
        if ctx.args.inject_failure and ctx.args.inject_failure == name:
            raise RuntimeError("failure injected by --inject-failure (tests the harness)")
        res = {"status": "ok", **fn(ctx)}
    except BaseException as e:  # noqa: BLE001 - every failure is a row, the run goes on
        if isinstance(e, KeyboardInterrupt):
            raise
        res = {"status": "FAILED", "error": f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:300],
               "traceback": traceback.format_exc()[-4000:]}
    res["step_s"] = time.perf_counter() - t
    if cuda:
        res["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return res


def run_isolated(name: str, argv: list[str], timeout: float) -> dict:
    """Run one step in a child process (`--step NAME`), which writes its row as JSON."""
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "row.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--step", name, "--row-out", str(out)]
        t = time.perf_counter()
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"status": "FAILED", "error": f"timed out after {timeout:.0f}s", "step_s": time.perf_counter() - t}
        if out.exists():
            return json.loads(out.read_text())
        tail = (p.stderr or p.stdout or "").strip().splitlines()[-1:] or [""]
        return {"status": "FAILED", "error": f"step process exited {p.returncode}: {tail[0][:300]}",
                "stderr_tail": (p.stderr or "")[-4000:], "step_s": time.perf_counter() - t}


def _ratio_of(rows: dict, name: str) -> float | None:
    """End-to-end img/s as a share of the same model's model-only figure (same compile mode)."""
    short = name.split(" ")[0]
    ref = rows.get(f"{short} model-only" + (" --compile" if name.endswith("--compile") else ""), {})
    if "extract" in name and rows[name].get("img_s") and ref.get("img_s"):
        return rows[name]["img_s"] / ref["img_s"]
    return None


def table(rows: dict) -> str:
    head = f"{'step':<38} {'status':<7} {'img/s':>9} {'e2e/model':>9} {'peak GPU MB':>11} {'step s':>7}  detail"
    lines = [head, "-" * len(head)]
    for name, r in rows.items():
        ratio = _ratio_of(rows, name)
        detail = r.get("error") or ", ".join(
            f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()
            if k not in ("status", "img_s", "step_s", "peak_gpu_mb", "traceback", "stderr_tail"))
        lines.append(f"{name:<38} {r['status']:<7} "
                     f"{(format(r['img_s'], '.1f') if r.get('img_s') else '-'):>9} "
                     f"{(format(ratio, '.2f') if ratio else '-'):>9} "
                     f"{(format(r['peak_gpu_mb'], '.0f') if 'peak_gpu_mb' in r else '-'):>11} "
                     f"{r.get('step_s', 0):>7.1f}  {detail}")
    return "\n".join(lines)


def environment(ctx: Ctx) -> dict:
    import torch

    env = {"python": platform.python_version(), "torch": torch.__version__, "host": platform.node(),
           "cpus": os.cpu_count(), "device": ctx.device}
    if ctx.device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name()
    return env


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="toy sizes on the CPU (the test suite's run)")
    ap.add_argument("--workdir", default=None, help="where the JPEGs and worlds go (kept; default: a temp folder)")
    ap.add_argument("--results-dir", default=str(RESULTS), help="the JSON goes here")
    ap.add_argument("--only", action="append", default=[], help="run only steps whose name contains this")
    ap.add_argument("--workers", type=int, default=None, help="zs extract --workers (default: its own)")
    ap.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=None,
                    help="each step in its own process (default: on, off with --smoke)")
    ap.add_argument("--budget", type=float, default=480.0, help="seconds; steps are not started past it")
    ap.add_argument("--step-timeout", type=float, default=240.0, help="seconds per isolated step")
    ap.add_argument("--inject-failure", default=None, metavar="STEP", help="make STEP fail (tests the harness)")
    ap.add_argument("--step", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--row-out", default=None, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    sizes = SMOKE if args.smoke else FULL
    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="zs-bench-gpu-")
        args.workdir = tmp.name
        argv += ["--workdir", args.workdir]
    ctx = Ctx(args, sizes)
    if args.smoke:
        import torch

        torch.set_num_threads(1)  # toy sizes: a thread team only waits, and on a busy machine it spins
        _use_eager_compile_backend()
    steps = build_steps(ctx)

    if args.step is not None:  # a child of an isolated run: one step, its row as JSON
        fn = dict(steps)[args.step]
        row = run_step(ctx, args.step, fn)
        Path(args.row_out).write_text(json.dumps(row, default=str))
        return 0

    import torch

    if not args.smoke and not torch.cuda.is_available():
        print("bench/gpu.py: no CUDA device here; run it on a GPU machine, or --smoke for the CPU check",
              file=sys.stderr)
        return 2
    isolate = (not args.smoke) if args.isolate is None else args.isolate
    selected = [(n, f) for n, f in steps if not args.only or any(o in n for o in args.only)]
    if args.only and not selected:
        print(f"bench/gpu.py: no step matches --only {args.only}; steps: {[n for n, _ in steps]}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    rows: dict = {}
    for name, fn in selected:
        left = args.budget - (time.perf_counter() - t0)
        if left < 5:
            rows[name] = {"status": "SKIPPED", "error": f"--budget {args.budget:.0f}s spent"}
        elif isolate:
            rows[name] = run_isolated(name, [a for a in argv if a != "--isolate"], min(args.step_timeout, left))
        else:
            rows[name] = run_step(ctx, name, fn)
        r = rows[name]
        print(f"[{time.perf_counter() - t0:6.1f}s] {name}: {r['status']}"
              + (f" ({r['error']})" if r.get("error") else ""), flush=True)
    print()
    print(table(rows))
    failed = [n for n, r in rows.items() if r["status"] != "ok"]
    report = {"smoke": args.smoke, "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "environment": environment(ctx), "sizes": {k: v for k, v in sizes.__dict__.items()},
              "rows": rows, "failed": failed, "total_s": time.perf_counter() - t0}
    res_dir = Path(args.results_dir)
    res_dir.mkdir(parents=True, exist_ok=True)
    kind = "smoke" if args.smoke else torch.cuda.get_device_name().replace(" ", "_")
    path = res_dir / f"gpu-{kind}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}.json"
    path.write_text(json.dumps(report, indent=1, default=str))
    print(f"\nwrote {path}")
    if failed:
        print(f"{len(failed)} step(s) did not succeed: {', '.join(failed)}; rerun them with "
              + " ".join(f"--only '{n}'" for n in failed) + " (and the same --workdir to reuse the data)",
              file=sys.stderr)
        return 1
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
