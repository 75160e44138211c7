"""`zs sweep`, where the fit and evaluate stages meet (neither imports the other): every (method,
epochs, fraction) cell is fitted from one read of each training cache, scored on every evaluation
cache as it finishes and reported with an epochs × fractions heatmap; with select=True the report
names the cell with the best held-out (label-free) agreement beside the best labelled one, so a user
sees whether the label-free choice was right. `zero_shot_accuracy` and `teacher_accuracy` score one
mapping / the CLIP teacher on a labelled cache (tests and bench/ use them)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from zoomshot.errors import ZsError
from zoomshot.fileutil import write_text_atomic
from zoomshot.progress import progress_bar

if TYPE_CHECKING:  # the CLI reads SweepConfig's defaults without loading numpy
    from zoomshot.mapping import Mapping


@dataclass
class SweepConfig:
    train_caches: list[str]
    eval_caches: list[str]
    out_dir: str
    epochs: list[int] = field(default_factory=lambda: [1, 5, 20])
    fractions: list[float] = field(default_factory=lambda: [0.01, 0.05, 0.2])
    methods: list[str] | None = None  # None: the fit configuration's method
    vocab: str | None = None  # the evaluation caches' vocabulary, when they hold several
    fit: Any = None  # a zoomshot.fit.FitConfig; None: its defaults
    save_mappings: bool = True  # write each fitted mapping under OUT/mappings/
    select: bool = False  # name the best cell by held-out agreement in the report
    quiet: bool = False  # no progress bar over the cells


@dataclass
class SweepResult:
    records: list[dict]
    skipped: list[dict]
    paths: dict
    selection: dict | None = None


def parse_list(text: str, kind: type, what: str) -> list:
    """'1,5,20' -> [1, 5, 20]; a one-line ZsError for anything else."""
    try:
        vals = [kind(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise ZsError(f"{what} must be a comma-separated list of {kind.__name__}s, got {text!r}") from None
    if not vals:
        raise ZsError(f"{what} is empty; give e.g. {'1,5,20' if kind is int else '0.01,0.05,0.2'}")
    return list(dict.fromkeys(vals))


def _cell_name(train_cache: str, m: Mapping) -> str:
    return f"{Path(train_cache).stem}-{m.method}-e{m.run.get('epochs')}-f{_g(m.run.get('fraction'))}"


def _g(x) -> str:
    return f"{x:g}" if isinstance(x, (int, float)) else str(x)


def run_sweep(cfg: SweepConfig, progress: Callable[[str], None] = print) -> SweepResult:
    """Fit the grid on each training cache, score every cell on every evaluation cache, write the report."""
    from zoomshot.evaluate.report import check_out_dir, write_report
    from zoomshot.evaluate.scoring import EvalSet
    from zoomshot.fit import FitConfig

    if any(e < 1 for e in cfg.epochs):
        raise ZsError(f"epochs must be >= 1, got {[e for e in cfg.epochs if e < 1]}")
    if any(not 0 < f <= 1 for f in cfg.fractions):
        raise ZsError(f"fractions must lie in (0, 1], got {[f for f in cfg.fractions if not 0 < f <= 1]}")
    if not cfg.train_caches or not cfg.eval_caches:
        raise ZsError("a sweep needs at least one --cache (training) and one --eval cache")
    for p in [*cfg.train_caches, *cfg.eval_caches]:
        if not Path(p).is_file():
            raise ZsError(f"no cache at {p}")
    fit_cfg = cfg.fit if cfg.fit is not None else FitConfig()
    methods = list(cfg.methods or [fit_cfg.method])
    for m in methods:  # an unknown method fails here, before any cache is read
        replace(fit_cfg, method=m).validate()
    out = check_out_dir(cfg.out_dir)
    res = SweepResult([], [], {})
    eval_paths: dict[str, str] = {}  # each cache once, under the name it was first given
    for p in cfg.eval_caches:
        eval_paths.setdefault(os.path.realpath(p), p)
    eval_sets = [EvalSet(p, cfg.vocab, preload=True) for p in eval_paths.values()]
    try:
        _reference_records(eval_sets, res, progress)
        _fit_and_score(cfg, fit_cfg, methods, eval_sets, out, res, progress)
    finally:
        for es in eval_sets:
            es.close()
    res.paths = write_report(res.records, out, res.skipped, heatmap=True)
    if cfg.select:
        res.selection = select_cell(res.records)
        _append_selection(out / "report.md", res.selection)
    return res


def _reference_records(eval_sets, res: SweepResult, progress) -> None:
    """CLIP's own records; refuse before fitting anything when no eval cache can score a mapping."""
    usable = [t for es in eval_sets for t in es.targets.values() if t.problem is None and t.vocab is not None]
    if not usable:  # refuse before fitting anything, as `zs evaluate` refuses "nothing to report"
        reasons = "; ".join(f"{es.name}: {t.problem or 'no vocabulary'}" for es in eval_sets
                            for t in es.targets.values()) or "no CLIP encoder in any --eval cache"
        raise ZsError(f"no --eval cache can score a mapping ({reasons})")
    for es in eval_sets:
        for t in es.targets.values():
            if t.problem is None and t.vocab is not None and es.has_image_features(t.key):
                ref = es.clip_reference(t)
                res.records.append(ref)
                progress(f"CLIP {t.entry.spec} on {es.name}: acc1 {100 * ref['metrics']['acc1']:.1f}%")
            elif t.problem:
                progress(f"note: CLIP {t.entry.spec} on {es.name}: {t.problem}")


def _fit_and_score(cfg: SweepConfig, fit_cfg, methods, eval_sets, out: Path, res: SweepResult,
                   progress) -> None:
    from zoomshot.evaluate.scoring import mapping_id
    from zoomshot.fit import METHOD_DEFAULTS, fit_grid

    # closed-form methods have no epochs: one cell per fraction
    n_cells = sum(len(cfg.fractions) * (1 if METHOD_DEFAULTS[m]["epochs"] == 0 else len(cfg.epochs))
                  for m in methods)
    total = n_cells * len(cfg.train_caches)
    bar = progress_bar(total, "sweep", unit="cell", enabled=not cfg.quiet, delay=2)
    done = 0
    for train in cfg.train_caches:
        def on_result(m: Mapping, train=train) -> None:
            nonlocal done
            done += 1
            bar.update(1)
            if cfg.save_mappings:
                from zoomshot.mapping import save_mapping

                save_mapping(m, out / "mappings" / _cell_name(train, m))
            accs = []
            for es in eval_sets:
                why = es.why_not(m)
                if why:
                    res.skipped.append({"mapping": mapping_id(m), "cache": es.path, "reason": why})
                    accs.append(f"{es.name} skipped")
                    continue
                (rec,) = es.score([m])
                res.records.append(rec)
                accs.append(f"{es.name} {100 * rec['metrics']['acc1']:.1f}%")
            held = (m.run.get("holdout") or {}).get("final") or {}
            note = f", held-out agreement {100 * held['agreement']:.1f}%" if held.get("agreement") is not None else ""
            warn = "".join(f"\n  warning: {w}" for w in m.run.get("warnings") or [])
            progress(f"[{Path(train).stem} {done}/{total}] {m.method} epochs={m.run.get('epochs')} "
                     f"fraction={_g(m.run.get('fraction'))}: acc1 " + ", ".join(accs) + note + warn)

        fit_grid(train, fit_cfg, list(cfg.epochs), list(cfg.fractions), methods, on_result=on_result)
    bar.close()


def select_cell(records: list[dict]) -> dict | None:
    """Per evaluation cache, the mapped record with the best held-out agreement (label-free) and the
    one with the best labelled top-1, side by side; None when no record has a held-out score."""
    out = {}
    mapped = [r for r in records if r.get("mapping") is not None]
    for cache in dict.fromkeys(r["cache"] for r in mapped):
        cells = [r for r in mapped if r["cache"] == cache]
        held = [r for r in cells if (r.get("holdout") or {}).get("agreement") is not None]
        if held:
            out[cache] = {"dataset": cells[0]["dataset"],
                          "by_holdout": max(held, key=lambda r: r["holdout"]["agreement"]),
                          "by_label": max(cells, key=lambda r: r["metrics"]["acc1"])}
    return out or None


def _append_selection(report: Path, selection: dict | None) -> None:
    lines = ["", "## Label-free selection", ""]
    if not selection:
        lines.append("No cell has a held-out score (fitted with --holdout 0, or no training vocabulary).")
    for v in (selection or {}).values():
        pick, best = v["by_holdout"], v["by_label"]
        lines.append(f"- {v['dataset']}: best held-out agreement: `{pick['mapping_name']}` "
                     f"({100 * pick['holdout']['agreement']:.1f}% agreement) with top-1 "
                     f"{100 * pick['metrics']['acc1']:.1f}%; best labelled top-1 among the cells: "
                     f"`{best['mapping_name']}` {100 * best['metrics']['acc1']:.1f}% "
                     f"(the label-free pick is {100 * (best['metrics']['acc1'] - pick['metrics']['acc1']):.1f} "
                     f"points below it)")
    write_text_atomic(report, report.read_text() + "\n".join(lines) + "\n")


def zero_shot_accuracy(mapping, cache_path, vocab: str | None = None) -> float:
    """Top-1 accuracy of the mapped source features of a labelled cache (labels read here only)."""
    from zoomshot.evaluate.scoring import EvalSet

    with EvalSet(cache_path, vocab) as es:
        why = es.why_not(mapping)
        if why:
            raise ZsError(f"mapping {mapping.name} does not fit {es.path}: {why}")
        return es.score([mapping])[0]["metrics"]["acc1"]


def teacher_accuracy(cache_path, vocab: str | None = None) -> float:
    """Top-1 zero-shot accuracy of the first CLIP encoder's own image features on a labelled cache."""
    from zoomshot.evaluate.scoring import EvalSet

    with EvalSet(cache_path, vocab) as es:
        for t in es.targets.values():
            ref = es.clip_reference(t)
            if ref is None:
                raise ZsError(f"{es.path}: CLIP encoder {t.key!r} cannot be scored: "
                              f"{t.problem or 'it has no image features on labelled rows'}")
            return ref["metrics"]["acc1"]
    raise ZsError(f"{cache_path} has no CLIP encoder to score")
