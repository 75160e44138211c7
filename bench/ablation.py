"""The ablation table of the README, produced by the tool on a planted world.

Writes a planted world (`zoomshot.synth`), fits every row below on its train split — each zoomshot
loss term off in turn, soft vs hard vs logit-matching distillation, random vs ridge init, and each
baseline method, all from the default FitConfig in one `fit_configs` call (one read of the cache)
— scores each on the test split (top-1 zero-shot accuracy, its share of the CLIP teacher's, and
the label-free held-out agreement), and prints the Markdown table. With --readme it also replaces the table between the markers
`<!-- ablation:begin -->` and `<!-- ablation:end -->` in that file.

Usage: python bench/ablation.py [--rows 32000] [--classes 200] [--dv 384] [--d 256] [--seed 0]
                                [--workdir DIR] [--readme README.md] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import re
import time
from dataclasses import replace
from pathlib import Path

BEGIN, END = "<!-- ablation:begin -->", "<!-- ablation:end -->"


def ablation_configs(base):
    """(row label, config) for the ablation table, all derived from `base` (a zoomshot FitConfig)."""
    z = replace(base, method="zoomshot")
    return [
        ("zoomshot (all terms, soft KD)", z),
        ("zoomshot, hard KD", replace(z, kd="hard")),
        ("zoomshot, logit matching (--kd lm)", replace(z, kd="lm")),
        ("zoomshot without L_align", replace(z, lambda_align=0.0)),
        ("zoomshot without L_cycle", replace(z, lambda_cycle=0.0)),
        ("zoomshot without L_kd", replace(z, lambda_kd=0.0)),
        ("zoomshot, L_kd only", replace(z, lambda_align=0.0, lambda_cycle=0.0)),
        ("zoomshot, random init", replace(z, init="random")),
        ("linear-aligner (Text-to-Concept recipe)", replace(base, method="linear-aligner")),
        ("ridge (closed form, λ by leave-one-out)", replace(base, method="ridge")),
        ("procrustes (whitened, closed form)", replace(base, method="procrustes")),
    ]


def run_ablation(train_cache, test_cache, base, on_row=None) -> list[dict]:
    from zoomshot.fit import fit_configs
    from zoomshot.sweep import teacher_accuracy, zero_shot_accuracy

    labelled = ablation_configs(base)
    teacher = teacher_accuracy(test_cache)
    rows = []
    for (label, _), m in zip(labelled, fit_configs(train_cache, [c for _, c in labelled])):
        acc = zero_shot_accuracy(m, test_cache)
        held = (m.run["holdout"]["final"] or {}).get("agreement")
        rows.append({"row": label, "method": m.method, "epochs": m.run["epochs"], "acc1": acc,
                     "share_of_teacher": acc / teacher, "teacher_acc1": teacher, "holdout_agreement": held,
                     "fit_time_s": m.run["train_time_s"]})
        if on_row:
            on_row(rows[-1])
    return rows


def markdown_table(rows: list[dict]) -> str:
    lines = ["| configuration | method | epochs | top-1 | share of teacher | held-out agreement |",
             "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        held = "–" if r["holdout_agreement"] is None else f"{r['holdout_agreement']:.4f}"
        lines.append(f"| {r['row']} | {r['method']} | {r['epochs']} | {r['acc1']:.4f} | "
                     f"{r['share_of_teacher']:.3f} | {held} |")
    lines.append(f"| CLIP teacher (the target's own image features) | — | — | {rows[0]['teacher_acc1']:.4f} "
                 f"| 1.000 | — |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=32000)
    ap.add_argument("--test-rows", type=int, default=10000)
    ap.add_argument("--classes", type=int, default=200)
    ap.add_argument("--dv", type=int, default=384)
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default="/tmp/zs-ablation")
    ap.add_argument("--readme", default=None, help="replace the table between the ablation markers here")
    ap.add_argument("--json", default=None, help="also write the rows as JSON here")
    args = ap.parse_args()

    from zoomshot.fit import FitConfig
    from zoomshot.synth import write_synth_world

    t0 = time.perf_counter()
    world = write_synth_world(Path(args.workdir) / "world", rows=args.rows, test_rows=args.test_rows,
                              classes=args.classes, dv=args.dv, d=args.d, seed=args.seed)
    print(f"planted world: {args.rows} train / {args.test_rows} test rows, {args.classes} classes, "
          f"dv {args.dv}, d {args.d}, seed {args.seed}; teacher top-1 on test {world['teacher_acc_test']:.4f}",
          flush=True)
    rows = run_ablation(world["train"], world["test"], FitConfig(),
                        on_row=lambda r: print(f"  {r['row']}: {r['acc1']:.4f}", flush=True))
    took = time.perf_counter() - t0
    command = (f"python bench/ablation.py --rows {args.rows} --classes {args.classes} --dv {args.dv} "
               f"--d {args.d} --seed {args.seed}")
    table = (markdown_table(rows) + f"\n\n_Generated by `{command}` in {took:.0f} s "
             f"(planted world: {args.rows} train / {args.test_rows} test rows; scored on the test split)._")
    print()
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    if args.readme:
        path = Path(args.readme)
        text = path.read_text()
        block = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)
        if not block.search(text):
            raise SystemExit(f"{path} has no {BEGIN} ... {END} block to replace")
        path.write_text(block.sub(lambda _: f"{BEGIN}\n{table}\n{END}", text, count=1))
        print(f"\nreplaced the ablation table in {path}")


if __name__ == "__main__":
    main()
