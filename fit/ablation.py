"""The ablation study behind the README's table: each loss term on and off, soft vs hard KD, each
method, fitted on a planted world's train cache and scored on its test cache.

Scoring here is plain top-1 zero-shot accuracy against the cache's labels (argmax_k n(h(v)) · t_k
with the test cache's own classifier); the evaluate stage owns the full metrics and reports.
"""
from __future__ import annotations

from dataclasses import replace

from zoomshot.cache import Cache
from zoomshot.errors import ZsError

from .config import FitConfig


def zero_shot_accuracy(mapping, cache_path, vocab: str | None = None) -> float:
    """Top-1 accuracy of the mapped source features of a labelled cache (labels read here only)."""
    with Cache(cache_path) as cache:
        why = mapping.mismatch(cache.encoders)
        if why:
            raise ZsError(f"mapping {mapping.name} does not fit {cache_path}: {why}")
        src = mapping.source_key(cache.encoders)
        tgt = next((k for k, e in cache.encoders.items() if e.spec == mapping.target["spec"]), None)
        if tgt is None:
            raise ZsError(f"{cache_path} has no CLIP encoder {mapping.target['spec']!r} with a classifier")
        rows = cache.usable_rows(src)
        labels = cache.labels[rows]
        keep = labels >= 0
        if not keep.any():
            raise ZsError(f"{cache_path} has no labelled rows")
        T = cache.text(tgt, vocab).classifier
        z = mapping.forward(cache.image(src, rows[keep]))
    pred = (z @ T.T).argmax(1)
    return float((pred == labels[keep]).mean())


def teacher_accuracy(cache_path, vocab: str | None = None) -> float:
    """Top-1 zero-shot accuracy of the CLIP image features themselves."""
    with Cache(cache_path) as cache:
        tgt = next(k for k, e in cache.encoders.items() if e.family == "clip")
        rows = cache.usable_rows(tgt)
        labels = cache.labels[rows]
        keep = labels >= 0
        c = cache.image(tgt, rows[keep])
        T = cache.text(tgt, vocab).classifier
    return float(((c @ T.T).argmax(1) == labels[keep]).mean())


def ablation_configs(base: FitConfig) -> list[tuple[str, FitConfig]]:
    """(row label, config) for the ablation table, all derived from `base` (a zoomshot config)."""
    z = replace(base, method="zoomshot")
    rows = [
        ("zoomshot (all terms, soft KD)", z),
        ("zoomshot, hard KD", replace(z, kd="hard")),
        ("zoomshot without L_align", replace(z, lambda_align=0.0)),
        ("zoomshot without L_cycle", replace(z, lambda_cycle=0.0)),
        ("zoomshot without L_kd", replace(z, lambda_kd=0.0)),
        ("zoomshot, L_kd only", replace(z, lambda_align=0.0, lambda_cycle=0.0)),
        ("zoomshot, random init", replace(z, init="random")),
        ("linear-aligner (Text-to-Concept recipe)", replace(base, method="linear-aligner", epochs=None,
                                                            batch_size=None, lr=None, optimizer=None,
                                                            momentum=None, weight_decay=None)),
        ("ridge (closed form)", replace(base, method="ridge")),
        ("procrustes (whitened, closed form)", replace(base, method="procrustes")),
    ]
    return rows


def run_ablation(train_cache, test_cache, base: FitConfig, on_row=None) -> list[dict]:
    """Fit every ablation row on train_cache (one cache read, batched) and score it on test_cache."""
    from .api import fit_configs

    labelled = ablation_configs(base)
    maps = fit_configs(train_cache, [c for _, c in labelled])
    teacher = teacher_accuracy(test_cache)
    out = []
    for (label, cfg), m in zip(labelled, maps):
        acc = zero_shot_accuracy(m, test_cache)
        row = {"row": label, "method": m.method, "epochs": m.run["epochs"], "acc1": acc,
               "share_of_teacher": acc / teacher if teacher > 0 else float("nan"),
               "teacher_acc1": teacher, "fit_time_s": m.run["wall_time_s"],
               "final_loss": m.run["history"][-1]["loss"] if m.run["history"] else None}
        out.append(row)
        if on_row:
            on_row(row)
    return out


def markdown_table(rows: list[dict]) -> str:
    lines = ["| configuration | method | epochs | top-1 | share of teacher |",
             "|---|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['row']} | {r['method']} | {r['epochs']} | {r['acc1']:.4f} | "
                     f"{r['share_of_teacher']:.3f} |")
    if rows:
        lines.append(f"| CLIP teacher (the target's own image features) | — | — | "
                     f"{rows[0]['teacher_acc1']:.4f} | 1.000 |")
    return "\n".join(lines)
