"""`zs evaluate` as one library call: score, merge with an earlier results.json if asked, write the report."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from zoomshot.errors import ZsError
from zoomshot.fileutil import resolved_path

from .labels import dataset_labels, row_label
from .report import check_formats, check_out_dir, read_results, write_report
from .scoring import evaluate, record_key, record_place


@dataclass
class EvaluateResult:
    records: list[dict]  # everything in the report: kept earlier records, then new ones
    new: list[dict]  # the records computed by this run
    kept: int  # earlier records kept by --skip-existing
    skipped: list[dict]  # mapping × cache pairs that do not fit, with reasons
    paths: dict  # files written
    failed: str | None = None  # why the run did not do its whole job (a mapping that fits no cache)


@dataclass
class EvaluateConfig:
    """What `zs evaluate` scores and where the report goes."""

    mappings: list[str]
    caches: list[str]
    out_dir: str
    vocab: str | None = None  # the caches' vocabulary, when a CLIP encoder holds several
    per_class: bool = False
    skip_existing: bool = False
    retrieval: bool = False
    progress: bool = True
    formats: tuple[str, ...] = ()


def run_evaluate(cfg: EvaluateConfig) -> EvaluateResult:
    if not cfg.caches:
        raise ZsError("give at least one --cache to evaluate on")
    for c in cfg.caches:
        if not Path(c).is_file():
            raise ZsError(f"no cache at {c}")
    check_out_dir(cfg.out_dir)
    check_formats(cfg.formats)  # before any work
    earlier = read_results(cfg.out_dir) if cfg.skip_existing else []
    new, skipped = evaluate(cfg.mappings, cfg.caches, vocab=cfg.vocab, skip={record_key(r) for r in earlier},
                            per_class=cfg.per_class, retrieval=cfg.retrieval, progress=cfg.progress)
    if not new and not earlier:
        reasons = "; ".join(f"{Path(s['mapping']).name} on {Path(s['cache']).name}: {s['reason']}"
                            for s in skipped[:3])
        raise ZsError("nothing to report: no mapping fits any cache and no cache has CLIP image features "
                      f"with a usable vocabulary{' (' + reasons + ')' if reasons else ''}")
    replaced = {record_place(r) for r in new}
    earlier = [r for r in earlier if record_place(r) not in replaced]  # stale: refit or re-extracted since
    records = earlier + new
    paths = write_report(records, cfg.out_dir, skipped, formats=tuple(cfg.formats))
    scored = {resolved_path(r["mapping"]) for r in records if r.get("mapping")}
    unmatched = [sk for sk in skipped if resolved_path(sk["mapping"]) not in scored]
    failed = None
    if unmatched:  # the report of the rest is written; the run still did not do its whole job
        failed = (f"{len({sk['mapping'] for sk in unmatched})} mapping(s) fit no --cache, "
                  f"e.g. {unmatched[0]['mapping']}: {unmatched[0]['reason']}")
    return EvaluateResult(records, new, len(earlier), skipped, paths, failed)


def summary_lines(records: list[dict]) -> list[str]:
    """One line per record: dataset, row, acc1, acc5, agreement with CLIP."""
    cols = dataset_labels(records)

    def pct(x):
        return "    –" if x is None else f"{100 * x:5.1f}"

    width = max([len(row_label(r)) for r in records] + [4])
    dw = max([len(v) for v in cols.values()] + [7])
    lines = [f"{'dataset':<{dw}}  {'row':<{width}}   acc1   acc5  agree"]
    for r in records:
        m = r["metrics"]
        lines.append(f"{cols[r['cache']]:<{dw}}  {row_label(r):<{width}}  {pct(m.get('acc1'))}  "
                     f"{pct(m.get('acc5'))}  {pct(m.get('agreement'))}")
    return lines
