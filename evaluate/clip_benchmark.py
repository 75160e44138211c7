"""Evaluation records as clip_benchmark (LAION-AI/CLIP_benchmark) result files: one JSON per
(dataset, model), `{"dataset", "model", "pretrained", "task", "metrics", "language"}` with the metrics
it reports for zero-shot classification, so its `build` command merges ours next to its own unchanged.

`dataset` is the vocabulary when built in (built-in names are clip_benchmark's: cifar10, imagenet1k,
...), else the cache's file stem. A CLIP row is `model` = its open_clip architecture and `pretrained` =
its tag (lining up with clip_benchmark's own row of that model), else its encoder key and weights; a
mapping row is source encoder key + "+" + method, and the mapping's folder name.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from zoomshot.fileutil import write_text_atomic

from .labels import encoder_label, portable_weights

TASK = "zeroshot_classification"
METRICS = ("acc1", "acc5", "mean_per_class_recall")


def model_and_pretrained(rec: dict) -> tuple[str, str]:
    """(model, pretrained) of a record, as clip_benchmark names them (see the module docstring)."""
    if rec["mapping"] is None:
        spec, w = rec.get("target") or rec["encoder"], rec.get("weights", "default")
        if spec.startswith("open_clip:") and w == "default":
            arch, _, tag = spec[len("open_clip:"):].partition(":")
            if not arch.startswith("hf-hub:"):
                return arch, tag or "default"
        return rec.get("encoder_key") or spec, portable_weights(w)
    return f"{encoder_label(rec)}+{rec['method']}", rec.get("mapping_name") or Path(rec["mapping"]).name


def clip_benchmark_record(rec: dict) -> dict:
    from zoomshot.vocab import builtin_vocabularies

    model, pretrained = model_and_pretrained(rec)
    dataset = rec["vocab"] if rec.get("vocab") in builtin_vocabularies() else rec["dataset"]
    return {"dataset": dataset, "model": model, "pretrained": pretrained, "task": TASK,
            "metrics": {k: rec["metrics"].get(k) for k in METRICS}, "language": "en"}


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+\-]+", "_", s).strip("_") or "x"


def write_clip_benchmark(records: list[dict], out_dir) -> dict[str, str]:
    """One `{dataset}_{pretrained}_{model}_en_zeroshot_classification.json` per record (clip_benchmark's
    default output template) in out_dir; returns {relative name: path}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, str] = {}
    for rec in records:
        cb = clip_benchmark_record(rec)
        name = f"{_slug(cb['dataset'])}_{_slug(cb['pretrained'])}_{_slug(cb['model'])}_en_{TASK}.json"
        if f"clip_benchmark/{name}" in paths:  # the same dataset stem from two folders
            name = f"{_slug(rec['dataset'])}-{len(paths)}_{name}"
        write_text_atomic(out / name, json.dumps(cb))
        paths[f"clip_benchmark/{name}"] = str(out / name)
    return paths
