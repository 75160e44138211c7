"""Write evaluation records as results.json, results.csv, report.md, skipped.json and PNG plots, each
to a temporary name then renamed, so a reader never finds a half-written file. Tables have a column
per dataset (evaluation cache) and rows for CLIP, each method (its best mapping) and each mapping;
`--per-class` adds per-class recall (report.md, `recall[CLASS]` columns, per_class.csv), `--retrieval`
the k-NN and text-to-image recall metrics. results.json keeps every record as computed; the cells of
results.csv and report.md are portable (`labels.py`): never an absolute path.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from zoomshot.errors import ZsError
from zoomshot.fileutil import check_writable, json_default, write_text_atomic

from .clip_benchmark import write_clip_benchmark
from .labels import dataset_labels, encoder_label, portable_path, portable_weights, row_label
from .plots import write_plots

CSV_COLUMNS = [
    "mapping", "dataset", "cache", "vocab", "classes", "encoder", "weights", "target", "target_weights",
    "method", "epochs", "fraction", "seed", "train_cache", "rows_total", "rows_scored", "rows_unreadable",
    "rows_not_done", "rows_unlabelled", "acc1", "acc5", "mean_per_class_recall", "agreement",
    "clip_share", "gap_centroid_distance", "gap_mean_cosine", "holdout_agreement", "fit_warnings",
]
PER_CLASS_COLUMNS = ["dataset", "row", "mapping", "class", "support", "correct", "recall"]
RETRIEVAL_PREFIXES = ("knn", "t2i_")
SCORES = ("acc1", "acc5", "mean_per_class_recall", "agreement", "clip_share")  # in CSV and markdown order
ROW_COUNTS = ("total", "scored", "unreadable", "not_done", "unlabelled")
REPORT_FORMATS = ("clip_benchmark",)


def retrieval_columns(records: list[dict]) -> list[str]:
    """The retrieval metrics some record has (`--retrieval`), in order of appearance."""
    return list(dict.fromkeys(k for r in records for k in r["metrics"] if k.startswith(RETRIEVAL_PREFIXES)))


def per_class_columns(records: list[dict]) -> list[str]:
    """`recall[CLASS]` columns of results.csv for the classes of records with a per-class table."""
    return list(dict.fromkeys(f"recall[{c['class']}]" for r in records for c in r.get("per_class") or ()))


def csv_row(rec: dict, extra: list[str] = ()) -> dict:
    m, rows = rec["metrics"], rec.get("rows") or {}
    gap = m.get("modality_gap") or {}
    row = {k: rec.get(k) for k in CSV_COLUMNS}
    row.update(mapping=portable_path(rec.get("mapping")), cache=portable_path(rec.get("cache")),
               train_cache=portable_path(rec.get("train_cache")), encoder=encoder_label(rec),
               target=encoder_label(rec, "target"), weights=portable_weights(rec.get("weights")),
               target_weights=portable_weights(rec.get("target_weights")),
               gap_centroid_distance=gap.get("centroid_distance"), gap_mean_cosine=gap.get("mean_cosine"),
               holdout_agreement=(rec.get("holdout") or {}).get("agreement"),
               fit_warnings="; ".join(rec.get("fit_warnings") or []) or None)
    row.update({k: m.get(k) for k in (*SCORES, *extra)})  # extra's recall[] columns: filled below, if known
    row.update({f"recall[{c['class']}]": c["recall"] for c in rec.get("per_class") or ()})
    row.update({f"rows_{k}": rows.get(k) for k in ROW_COUNTS})
    return {k: "" if v is None else v for k, v in row.items()}


def best_per_method(records: list[dict]) -> dict[tuple[str, str], dict]:
    """The record with the highest acc1 per (method row, cache); CLIP rows are keyed by encoder and
    come first, then methods, each in order of appearance."""
    best: dict[tuple[str, str], dict] = {}
    for r in records:
        row = row_label(r) if r["mapping"] is None else r["method"]
        acc = r["metrics"].get("acc1")
        have = best.get((row, r["cache"]))
        if have is None or (acc is not None and acc > (have["metrics"].get("acc1") or -1)):
            best[(row, r["cache"])] = r
    return dict(sorted(best.items(), key=lambda item: not item[0][0].startswith("CLIP ")))


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


def markdown_report(records: list[dict], best: dict, skipped=(), plots: dict | None = None) -> str:
    """report.md; best: `best_per_method(records)`."""
    cols = dataset_labels(records)
    lines = ["# zoomshot evaluation report", "",
             f"{len(records)} records on {len(cols)} evaluation cache(s). Accuracies are top-1 in %, "
             f"zero-shot with each cache's own CLIP text vocabulary.", ""]
    if not records:
        lines += ["No records.", ""]
    else:
        lines += (_method_table(best, cols) + _mapping_table(records, cols) + _metrics_table(records, cols)
                  + _retrieval_table(records, cols) + per_class_tables(records, cols))
    if skipped:
        lines += ["## Skipped pairs", ""]
        lines += [f"- `{portable_path(s['mapping'])}` on `{portable_path(s['cache'])}`: {s['reason']}"
                  for s in skipped] + [""]
    if plots:
        lines += ["## Plots", ""] + [f"![{name}]({Path(p).name})" for name, p in plots.items()] + [""]
    return "\n".join(lines)


def _method_table(best: dict, cols: dict[str, str]) -> list[str]:
    """Top-1 per method and dataset: CLIP, then each method's best mapping."""
    body = []
    for name in dict.fromkeys(row for row, _ in best):
        cells = []
        for p in cols:
            r = best.get((name, p))
            agree = r["metrics"].get("agreement") if r and r["mapping"] else None
            cells.append("–" if r is None else _pct(r["metrics"].get("acc1"))
                         + (f" ({_pct(agree)})" if agree is not None else ""))
        body.append([name] + cells)
    return (["## Top-1 accuracy per method", "",
             "CLIP is the teacher itself; a method's cell is its best mapping on that dataset "
             "(agreement with CLIP's predictions in brackets).", ""]
            + _table([""] + list(cols.values()), body) + [""])


def _mapping_table(records: list[dict], cols: dict[str, str]) -> list[str]:
    """Each mapping's training setup and top-1 per dataset."""
    by_mapping: dict[str, dict] = {}
    for r in records:
        if r["mapping"] is not None:
            by_mapping.setdefault(r["mapping"], {})[r["cache"]] = r
    if not by_mapping:
        return []
    body = []
    for per_cache in by_mapping.values():
        r0 = next(iter(per_cache.values()))
        setup = [row_label(r0), r0["method"], encoder_label(r0),
                 _fmt(r0.get("train_cache") and Path(r0["train_cache"]).name),
                 _fmt(r0.get("epochs")), _fmt(r0.get("fraction")), _fmt(r0.get("seed")),
                 _pct((r0.get("holdout") or {}).get("agreement"))
                 + (" ⚠" if r0.get("fit_warnings") else "")]
        body.append(setup + [_pct(per_cache[p]["metrics"].get("acc1")) if p in per_cache else "–"
                             for p in cols])
    return (["## Every mapping", "", "With the setup each mapping was trained with. Held-out: "
             "label-free top-1 agreement with CLIP on rows of the training cache the fit did not "
             "train on. A fit marked ⚠ warned that it cannot be trusted (see results.json).", ""]
            + _table(["mapping", "method", "encoder", "trained on", "epochs", "fraction", "seed", "held-out"]
                     + list(cols.values()), body) + [""])


def _metrics_table(records: list[dict], cols: dict[str, str]) -> list[str]:
    """Every metric of every record."""
    body = []
    for r in records:
        m, rows = r["metrics"], r.get("rows") or {}
        gap = m.get("modality_gap") or {}
        left = sum(rows.get(k, 0) for k in ("unreadable", "not_done", "unlabelled"))
        body.append([cols[r["cache"]], row_label(r)]
                    + [_pct(m.get(k)) for k in SCORES]
                    + [_fmt(gap.get(k) and round(gap[k], 3)) for k in ("centroid_distance", "mean_cosine")]
                    + [str(rows.get("scored", "")), str(left)])
    return (["## All metrics", "",
             "acc5 is empty below 5 classes. Share of CLIP = acc1 / CLIP's acc1 on the same cache. "
             "Gap: distance between the image and text centroids, and their mean cosine.", ""]
            + _table(["dataset", "row", "acc1", "acc5", "mean per-class recall", "agreement",
                      "share of CLIP", "gap distance", "gap mean cos", "rows scored", "rows left out"], body)
            + [""])


def _retrieval_table(records: list[dict], cols: dict[str, str]) -> list[str]:
    extra = retrieval_columns(records)
    if not extra:
        return []
    body = [[cols[r["cache"]], row_label(r)] + [_pct(r["metrics"].get(k)) for k in extra]
            for r in records if any(k in r["metrics"] for k in extra)]
    return (["## Retrieval", "",
             "knn20_acc: leave-one-out 20-NN accuracy on the evaluation cache; t2i_recall@K: share of "
             "classes whose text embedding finds an image of the class among the top K.", ""]
            + _table(["dataset", "row"] + extra, body) + [""])


def per_class_tables(records: list[dict], cols: dict[str, str]) -> list[str]:
    """Markdown: per evaluation cache, one row per class and one recall column per record."""
    lines: list[str] = []
    for path, label in cols.items():
        recs = [r for r in records if r["cache"] == path and r.get("per_class")]
        if not recs:
            continue
        if not lines:
            lines += ["## Per-class recall", "", "Recall in % per class (images of the class predicted as "
                      "it); support is the number of scored images of the class.", ""]
        lines += [f"### {label}", ""]
        classes = recs[0]["per_class"]
        body = [[c["class"], str(c["support"])] + [_pct(r["per_class"][i]["recall"]) if i < len(r["per_class"])
                                                   else "–" for r in recs] for i, c in enumerate(classes)]
        lines += _table(["class", "support"] + [row_label(r) for r in recs], body) + [""]
    return lines


def _csv_text(fieldnames: list[str], rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fieldnames, lineterminator="\n", restval="")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def per_class_csv(records: list[dict]) -> str | None:
    """per_class.csv: one row per (record, class) of the records that have a per-class table."""
    cols = dataset_labels(records)
    rows = [{"dataset": cols[r["cache"]], "row": row_label(r), "mapping": portable_path(r["mapping"]) or "",
             "class": c["class"], "support": c["support"], "correct": c["correct"],
             "recall": "" if c["recall"] is None else c["recall"]}
            for r in records for c in r.get("per_class") or ()]
    return _csv_text(PER_CLASS_COLUMNS, rows) if rows else None


def check_out_dir(out_dir) -> Path:
    """out_dir as a Path; a ZsError when a file stands where it or a folder above it would be."""
    out = Path(out_dir)
    for p in (out, *out.parents):
        if p.exists():
            if not p.is_dir():
                raise ZsError(f"--out {out} cannot be a folder: {p} is a file")
            break
    return check_writable(out, folder=True)


def check_formats(formats) -> None:
    """Refuse an unknown extra report format in one line, naming the valid ones."""
    bad = [f for f in formats if f not in REPORT_FORMATS]
    if bad:
        raise ZsError(f"--format {bad[0]!r}: choose from {', '.join(REPORT_FORMATS)}")


def write_report(records: list[dict], out_dir, skipped: list[dict] = (), heatmap: bool = False,
                 formats: tuple[str, ...] | list[str] = ()) -> dict:
    """Write results.json, results.csv, skipped.json, report.md and the plots into out_dir (plus
    per_class.csv when records have per-class tables, and for `formats` "clip_benchmark" one
    clip_benchmark JSON per (dataset, model) under out_dir/clip_benchmark/).

    Returns {name: path} of the files written."""
    check_formats(formats)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, str] = {}

    def put(name: str, text: str | None) -> None:
        if text is not None:
            write_text_atomic(out / name, text)
            paths[name] = str(out / name)

    put("results.json", json.dumps(list(records), indent=2, default=json_default))
    extra = retrieval_columns(records) + per_class_columns(records)
    put("results.csv", _csv_text(CSV_COLUMNS + extra, [csv_row(r, extra) for r in records]))
    put("per_class.csv", per_class_csv(records))
    if "clip_benchmark" in formats:
        paths.update(write_clip_benchmark(records, out / "clip_benchmark"))
    put("skipped.json", json.dumps(list(skipped), indent=2, default=json_default))
    best = best_per_method(records)
    plots = write_plots(records, out, dataset_labels(records), best, heatmap=heatmap) if records else {}
    paths.update(plots)
    put("report.md", markdown_report(records, best, skipped, plots))
    return paths


def read_results(out_dir) -> list[dict]:
    """The records of an earlier run's results.json in out_dir (empty when there is none)."""
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
