"""The ablation study behind the README's table: each loss term on and off, soft vs hard KD, each
method, fitted on a planted world's train cache and scored on its test cache.

Scoring is top-1 zero-shot accuracy as `zs evaluate` computes it (`zoomshot.evaluate.scoring.EvalSet`):
argmax_k n(h(v)) · t_k with the test cache's own classifier, over its labelled rows.
"""
from __future__ import annotations

from dataclasses import replace

from zoomshot.errors import ZsError

from .config import FitConfig


def _eval_set(cache_path, vocab: str | None):
    from zoomshot.evaluate.scoring import EvalSet

    return EvalSet(cache_path, vocab)


def _mapped_acc1(es, mappings) -> list[float]:
    """Top-1 accuracy of each mapping on an open EvalSet, scored together (one read of the features)."""
    for m in mappings:
        why = es.why_not(m)
        if why:
            raise ZsError(f"mapping {m.name} does not fit {es.path}: {why}")
    by_source: dict[str, list[int]] = {}  # EvalSet.score returns its records grouped by source
    for i, m in enumerate(mappings):
        by_source.setdefault(m.source_key(es.encoders), []).append(i)
    acc1 = [0.0] * len(mappings)
    for idx in by_source.values():
        for i, rec in zip(idx, es.score([mappings[i] for i in idx])):
            acc1[i] = rec["metrics"]["acc1"]
    return acc1


def _teacher_acc1(es) -> float:
    """Top-1 accuracy of the first CLIP encoder's own image features on an open EvalSet."""
    for t in es.targets.values():
        ref = es.clip_reference(t)
        if ref is None:
            raise ZsError(f"{es.path}: CLIP encoder {t.key!r} cannot be scored: "
                          f"{t.problem or 'it has no image features on labelled rows'}")
        return ref["metrics"]["acc1"]
    raise ZsError(f"{es.path} has no CLIP encoder to score")


def zero_shot_accuracy(mapping, cache_path, vocab: str | None = None) -> float:
    """Top-1 accuracy of the mapped source features of a labelled cache (labels read here only)."""
    with _eval_set(cache_path, vocab) as es:
        return _mapped_acc1(es, [mapping])[0]


def teacher_accuracy(cache_path, vocab: str | None = None) -> float:
    """Top-1 zero-shot accuracy of the CLIP image features themselves."""
    with _eval_set(cache_path, vocab) as es:
        return _teacher_acc1(es)


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
    """Fit every ablation row on train_cache (one cache read, batched) and score them all on test_cache
    (one read of its features)."""
    from .api import fit_configs

    labelled = ablation_configs(base)
    maps = fit_configs(train_cache, [c for _, c in labelled])
    with _eval_set(test_cache, None) as es:
        teacher = _teacher_acc1(es)
        accs = _mapped_acc1(es, maps)
    out = []
    for (label, cfg), m, acc in zip(labelled, maps, accs):
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
