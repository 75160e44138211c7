"""Write evaluation records as results.json, results.csv, report.md, skipped.json and PNG plots.

Every file is written to a temporary name and renamed, so a reader never finds a half-written one.
In the tables, datasets (evaluation caches) are columns; CLIP, each method (its best mapping)
and each mapping are rows.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path


from zoomshot.fileutil import json_default, write_text_atomic

CSV_COLUMNS = [
    "mapping", "dataset", "cache", "vocab", "classes", "encoder", "weights", "target", "target_weights",
    "method", "epochs",
    "fraction", "seed", "train_cache", "rows_total", "rows_scored", "rows_unreadable",
    "rows_not_done", "rows_unlabelled", "acc1", "acc5", "mean_per_class_recall", "agreement",
    "clip_share", "gap_centroid_distance", "gap_mean_cosine", "holdout_agreement", "fit_warnings",
]


def csv_row(rec: dict) -> dict:
    m, rows = rec["metrics"], rec.get("rows") or {}
    gap = m.get("modality_gap") or {}
    row = {k: rec.get(k) for k in CSV_COLUMNS}
    row.update({f"rows_{k}": rows.get(k) for k in ("total", "scored", "unreadable", "not_done", "unlabelled")})
    row.update({k: m.get(k) for k in ("acc1", "acc5", "mean_per_class_recall", "agreement", "clip_share")})
    row["gap_centroid_distance"] = gap.get("centroid_distance")
    row["gap_mean_cosine"] = gap.get("mean_cosine")
    row["holdout_agreement"] = (rec.get("holdout") or {}).get("agreement")
    row["fit_warnings"] = "; ".join(rec.get("fit_warnings") or []) or None
    return {k: "" if v is None else v for k, v in row.items()}


def dataset_labels(records: list[dict]) -> dict[str, str]:
    """Column label per evaluation cache path: its file stem, or parent/stem where stems collide."""
    paths = list(dict.fromkeys(r["cache"] for r in records))
    stems = [Path(p).stem for p in paths]
    return {p: (s if stems.count(s) == 1 else f"{Path(p).parent.name}/{s}") for p, s in zip(paths, stems)}


def row_label(rec: dict) -> str:
    if rec["mapping"] is not None:
        return rec.get("mapping_name") or rec["mapping"]
    # a CLIP row at random (or local-file) weights must not read as the pretrained model
    w = rec.get("weights", "default")
    return f"CLIP {rec['encoder']}" + ("" if w == "default" else f" @{w}")


def best_per_method(records: list[dict]) -> dict[tuple[str, str], dict]:
    """The record with the highest acc1 per (method row, cache); CLIP rows are keyed by encoder."""
    best: dict[tuple[str, str], dict] = {}
    for r in records:
        row = row_label(r) if r["mapping"] is None else r["method"]
        acc = r["metrics"].get("acc1")
        have = best.get((row, r["cache"]))
        if have is None or (acc is not None and acc > (have["metrics"].get("acc1") or -1)):
            best[(row, r["cache"])] = r
    return best


def row_order(best: dict) -> list[str]:
    """Row names of `best_per_method`: CLIP rows first, then methods in order of appearance."""
    names = list(dict.fromkeys(k[0] for k in best))
    return [n for n in names if n.startswith("CLIP ")] + [n for n in names if not n.startswith("CLIP ")]


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _fmt(x) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:g}"
    return str(x)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return out


def markdown_report(records: list[dict], skipped=(), plots: dict | None = None) -> str:
    cols = dataset_labels(records)
    paths = list(cols)
    lines = ["# zoomshot evaluation report", "",
             f"{len(records)} records on {len(paths)} evaluation cache(s). Accuracies are top-1 in %, "
             f"zero-shot with each cache's own CLIP text vocabulary.", ""]
    if not records:
        lines += ["No records.", ""]

    best = best_per_method(records)
    row_names = row_order(best)
    if records:
        lines += ["## Top-1 accuracy per method", "",
                  "CLIP is the teacher itself; a method's cell is its best mapping on that dataset "
                  "(agreement with CLIP's predictions in brackets).", ""]
        body = []
        for name in row_names:
            cells = []
            for p in paths:
                r = best.get((name, p))
                agree = r["metrics"].get("agreement") if r and r["mapping"] else None
                cells.append("–" if r is None else _pct(r["metrics"].get("acc1"))
                             + (f" ({_pct(agree)})" if agree is not None else ""))
            body.append([name] + cells)
        lines += _table([""] + [cols[p] for p in paths], body) + [""]

    mapped = [r for r in records if r["mapping"] is not None]
    if mapped:
        lines += ["## Every mapping", "", "With the setup each mapping was trained with. Held-out: "
                  "label-free top-1 agreement with CLIP on rows of the training cache the fit did not "
                  "train on. A fit marked ⚠ warned that it cannot be trusted (see results.json).", ""]
        by_mapping: dict[str, dict] = {}
        for r in mapped:
            by_mapping.setdefault(r["mapping"], {})[r["cache"]] = r
        body = []
        for mid, per_cache in by_mapping.items():
            r0 = next(iter(per_cache.values()))
            setup = [row_label(r0), r0["method"], r0["encoder"], _fmt(r0.get("train_cache") and
                                                                      Path(r0["train_cache"]).name),
                     _fmt(r0.get("epochs")), _fmt(r0.get("fraction")), _fmt(r0.get("seed")),
                     _pct((r0.get("holdout") or {}).get("agreement"))
                     + (" ⚠" if r0.get("fit_warnings") else "")]
            body.append(setup + [_pct(per_cache[p]["metrics"].get("acc1")) if p in per_cache else "–"
                                 for p in paths])
        lines += _table(["mapping", "method", "encoder", "trained on", "epochs", "fraction", "seed", "held-out"]
                        + [cols[p] for p in paths], body) + [""]

    if records:
        lines += ["## All metrics", "",
                  "acc5 is empty below 5 classes. Share of CLIP = acc1 / CLIP's acc1 on the same cache. "
                  "Gap: distance between the image and text centroids, and their mean cosine.", ""]
        body = []
        for r in records:
            m, rows = r["metrics"], r.get("rows") or {}
            gap = m.get("modality_gap") or {}
            left = sum(rows.get(k, 0) for k in ("unreadable", "not_done", "unlabelled"))
            body.append([cols[r["cache"]], row_label(r), _pct(m.get("acc1")), _pct(m.get("acc5")),
                         _pct(m.get("mean_per_class_recall")), _pct(m.get("agreement")),
                         _pct(m.get("clip_share")), _fmt(gap.get("centroid_distance") and
                                                          round(gap["centroid_distance"], 3)),
                         _fmt(gap.get("mean_cosine") and round(gap["mean_cosine"], 3)),
                         str(rows.get("scored", "")), str(left)])
        lines += _table(["dataset", "row", "acc1", "acc5", "mean per-class recall", "agreement",
                         "share of CLIP", "gap distance", "gap mean cos", "rows scored", "rows left out"],
                        body) + [""]

    if skipped:
        lines += ["## Skipped pairs", ""]
        lines += [f"- `{s['mapping']}` on `{s['cache']}`: {s['reason']}" for s in skipped] + [""]
    if plots:
        lines += ["## Plots", ""] + [f"![{name}]({Path(p).name})" for name, p in plots.items()] + [""]
    return "\n".join(lines)


def check_out_dir(out_dir) -> Path:
    """out_dir as a Path; a ZsError when a file stands where it or a folder above it would be."""
    from zoomshot.errors import ZsError

    out = Path(out_dir)
    for p in (out, *out.parents):
        if p.exists():
            if not p.is_dir():
                raise ZsError(f"--out {out} cannot be a folder: {p} is a file")
            break
    return out


def write_report(records: list[dict], out_dir, skipped: list[dict] = (), heatmap: bool = False) -> dict:
    """Write results.json, results.csv, skipped.json, report.md and the plots into out_dir.

    Returns {name: path} of the files written."""
    from .plots import write_plots

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, str] = {}

    write_text_atomic(out / "results.json", json.dumps(list(records), indent=2, default=json_default))
    paths["results.json"] = str(out / "results.json")

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in records:
        w.writerow(csv_row(r))
    write_text_atomic(out / "results.csv", buf.getvalue())
    paths["results.csv"] = str(out / "results.csv")

    write_text_atomic(out / "skipped.json", json.dumps(list(skipped), indent=2, default=json_default))
    paths["skipped.json"] = str(out / "skipped.json")

    plots = write_plots(records, out, labels=dataset_labels(records), heatmap=heatmap) if records else {}
    paths.update(plots)

    write_text_atomic(out / "report.md", markdown_report(records, skipped, plots))
    paths["report.md"] = str(out / "report.md")
    return paths


def read_results(out_dir) -> list[dict]:
    """The records of an earlier run's results.json in out_dir (empty when there is none)."""
    from zoomshot.errors import ZsError

    p = Path(out_dir) / "results.json"
    if not p.is_file():
        return []
    try:
        recs = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ZsError(f"{p} is not valid JSON ({e}); remove it or drop --skip-existing") from None
    if not isinstance(recs, list) or not all(isinstance(r, dict) and "cache" in r for r in recs):
        raise ZsError(f"{p} is not a list of evaluation records; remove it or drop --skip-existing")
    return recs

