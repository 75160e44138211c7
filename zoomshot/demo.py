"""`zs demo`: the whole pipeline, offline, on built-in data, in a few minutes on a laptop CPU.

1. generated shape images -> `extract` with a vision encoder and a CLIP encoder (random weights
   offline; `--pretrained` switches to real weights from the local hub cache);
2. a planted world (`synth`) whose teacher accuracy is known by construction -> `fit` with every
   method -> `evaluate` next to CLIP itself;
3. a small `sweep` over epochs × data fractions.
Every step calls the same library functions as the commands do.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

RANDOM_ENCODERS = ("resnet18@random", "clip_vit_b32@random")
PRETRAINED_ENCODERS = ("resnet50", "clip_vit_b16")


def run_demo(out_dir: str | Path = "demo-out", pretrained: bool = False, device: str = "auto",
             world_rows: int = 20_000, progress: Callable[[str], None] = print) -> None:
    from zoomshot.evaluate.run import EvaluateConfig, run_evaluate, summary_lines
    from zoomshot.sweep import SweepConfig, run_sweep
    from zoomshot.extract.runner import ExtractConfig, extract
    from zoomshot.fit import METHODS, FitConfig, fit_cache
    from zoomshot.mapping import save_mapping
    from zoomshot.shapes import write_shape_folder
    from zoomshot.synth import write_synth_world

    out = Path(out_dir)
    encoders = PRETRAINED_ENCODERS if pretrained else RANDOM_ENCODERS

    weights = "real pretrained weights (local hub cache)" if pretrained else "RANDOM weights"
    progress(f"[1/4] extract: generated shape images -> {', '.join(encoders)} ({weights})")
    images = write_shape_folder(out / "images", classes=6, per_class=16, size=96, seed=0, corrupt=1)
    shapes_cache = out / "cache" / "shapes.h5"
    summary = extract(ExtractConfig(out=str(shapes_cache), encoders=list(encoders), images=str(images),
                                    batch_size=32, device=device, progress=False))
    progress("      " + summary.text().replace("\n", "\n      "))

    progress(f"[2/4] synth: a planted world of {world_rows} train rows (dv 384, d 256, 100 classes)")
    world = write_synth_world(out / "cache" / "world", rows=world_rows, test_rows=world_rows // 4,
                              classes=100, dv=384, d=256, seed=0)
    progress(f"      teacher (CLIP) accuracy on the test split, known by construction: "
        f"{world['teacher_acc_test']:.3f}")

    progress("[3/4] fit every method on the planted world, and zoomshot on the shape images; evaluate")
    mappings = []
    for method in METHODS:
        m = fit_cache(world["train"], FitConfig(method=method))
        mappings.append(save_mapping(m, out / "mappings" / f"world-{method}"))
        progress(f"      fit {method:<15} {m.run['wall_time_s']:.2f}s")
    m = fit_cache(shapes_cache, FitConfig(method="zoomshot", epochs=20))
    mappings.append(save_mapping(m, out / "mappings" / "shapes-zoomshot"))
    ev = run_evaluate(EvaluateConfig([str(p) for p in mappings], [world["test"], str(shapes_cache)], out / "report"))
    for line in summary_lines(ev.records):
        progress("      " + line)
    progress(f"      ({len(ev.skipped)} mapping × cache pairs skipped: their encoders differ)")

    progress("[4/4] sweep: zoomshot over epochs 1,3,10 × fractions 0.01,0.05,0.25 on the planted world")
    sw = run_sweep(SweepConfig(train_caches=[world["train"]], eval_caches=[world["test"]],
                               epochs=[1, 3, 10], fractions=[0.01, 0.05, 0.25], out_dir=str(out / "sweep"),
                               save_mappings=False), progress=lambda s: None)
    progress(f"      {len(sw.records)} records; heatmap and report in {out / 'sweep'}")

    progress("")
    progress(f"Reports: {Path(ev.paths['report.md'])} and {out / 'sweep' / 'report.md'}")
    if pretrained:
        progress("The shape-image cache used real pretrained weights; the planted world is synthetic by "
                 "design.")
        return
    progress("What is real and what is not: the shape-image step ran real architectures with RANDOM "
             "weights (no download here), so its accuracies say nothing about real encoders and only show "
             "the pipeline works; the fit/evaluate/sweep numbers come from a PLANTED world whose teacher "
             "accuracy is known by construction. Run `zs demo --pretrained` (weights from the local hub "
             "cache) for real encoders.")
