"""`zs sweep`: fit every (method, epochs, fraction) cell from one in-memory load of each training
cache, score each fitted mapping on every evaluation cache as it finishes, and write the report
with an epochs × fractions heatmap."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from zoomshot.errors import ZsError
from zoomshot.mapping import Mapping, save_mapping

from .report import check_out_dir, write_report
from .scoring import EvalSet, _resolved, _unique, mapping_id


@dataclass
class SweepConfig:
    train_caches: list[str]
    eval_caches: list[str]
    epochs: list[int]
    fractions: list[float]
    out_dir: str
    methods: list[str] | None = None  # None: the fit configuration's method
    vocab: str | None = None  # the evaluation caches' vocabulary, when they hold several
    fit: Any = None  # a zoomshot.fit.FitConfig; None: its defaults
    per_class: bool = False
    save_mappings: bool = True  # write each fitted mapping under OUT/mappings/


@dataclass
class SweepResult:
    records: list[dict]
    skipped: list[dict]
    paths: dict
    mappings: list[str] = field(default_factory=list)


def parse_list(text: str, kind: type, what: str) -> list:
    """'1,5,20' -> [1, 5, 20]; a one-line ZsError for anything else."""
    try:
        vals = [kind(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise ZsError(f"{what} must be a comma-separated list of {kind.__name__}s, got {text!r}") from None
    if not vals:
        raise ZsError(f"{what} is empty; give e.g. {'1,5,20' if kind is int else '0.01,0.05,0.2'}")
    return list(dict.fromkeys(vals))


def check_grid(epochs: list[int], fractions: list[float]) -> None:
    bad_e = [e for e in epochs if e < 1]
    if bad_e:
        raise ZsError(f"epochs must be >= 1, got {bad_e}")
    bad_f = [f for f in fractions if not 0 < f <= 1]
    if bad_f:
        raise ZsError(f"fractions must lie in (0, 1], got {bad_f}")


def _cell_name(train_cache: str, m: Mapping) -> str:
    return f"{Path(train_cache).stem}-{m.method}-e{m.run.get('epochs')}-f{_g(m.run.get('fraction'))}"


def _g(x) -> str:
    return f"{x:g}" if isinstance(x, (int, float)) else str(x)


def run_sweep(cfg: SweepConfig, progress: Callable[[str], None] = print) -> SweepResult:
    """Fit the grid on each training cache, score every cell on every evaluation cache, write the report."""
    from zoomshot.fit import METHOD_DEFAULTS, FitConfig, fit_grid

    check_grid(cfg.epochs, cfg.fractions)
    if not cfg.train_caches or not cfg.eval_caches:
        raise ZsError("a sweep needs at least one --cache (training) and one --eval cache")
    for p in [*cfg.train_caches, *cfg.eval_caches]:
        if not Path(p).is_file():
            raise ZsError(f"no cache at {p}")
    fit_cfg = cfg.fit if cfg.fit is not None else FitConfig()
    methods = list(cfg.methods or [fit_cfg.method])
    for m in methods:  # an unknown method fails here, before any cache is read
        replace(fit_cfg, method=m).validate()
    # closed-form methods have no epochs: one cell per fraction
    n_cells = sum(len(cfg.fractions) * (1 if METHOD_DEFAULTS[m]["epochs"] == 0 else len(cfg.epochs))
                  for m in methods)
    out = check_out_dir(cfg.out_dir)
    records: list[dict] = []
    skipped: list[dict] = []
    saved: list[str] = []
    eval_sets = [EvalSet(p, cfg.vocab, preload=True) for p in _unique(cfg.eval_caches, _resolved)]
    try:
        usable = [t for es in eval_sets for t in es.targets.values() if t.problem is None and t.vocab is not None]
        if not usable:  # refuse before fitting anything, as `zs evaluate` refuses "nothing to report"
            reasons = "; ".join(f"{es.name}: {t.problem or 'no vocabulary'}" for es in eval_sets
                                for t in es.targets.values()) or "no CLIP encoder in any --eval cache"
            raise ZsError(f"no --eval cache can score a mapping ({reasons})")
        for es in eval_sets:
            for t in es.targets.values():
                if t.problem is None and t.vocab is not None and es.has_image_features(t.key):
                    ref = es.clip_reference(t, cfg.per_class)
                    records.append(ref)
                    progress(f"CLIP {t.entry.spec} on {es.name}: acc1 {100 * ref['metrics']['acc1']:.1f}%")
                elif t.problem:
                    progress(f"note: CLIP {t.entry.spec} on {es.name}: {t.problem}")
        for train in cfg.train_caches:
            done = 0

            def on_result(m: Mapping, train=train) -> None:
                nonlocal done
                done += 1
                if cfg.save_mappings:
                    save_mapping(m, out / "mappings" / _cell_name(train, m))
                    saved.append(str(m.path))
                accs = []
                for es in eval_sets:
                    why = es.why_not(m)
                    if why:
                        skipped.append({"mapping": mapping_id(m), "cache": es.path, "reason": why})
                        accs.append(f"{es.name} skipped")
                        continue
                    (rec,) = es.score([m], cfg.per_class)
                    records.append(rec)
                    accs.append(f"{es.name} {100 * rec['metrics']['acc1']:.1f}%")
                progress(f"[{Path(train).stem} {done}/{n_cells}] {m.method} epochs={m.run.get('epochs')} "
                         f"fraction={_g(m.run.get('fraction'))}: acc1 " + ", ".join(accs))

            fit_grid(train, fit_cfg, list(cfg.epochs), list(cfg.fractions), methods, on_result=on_result)
    finally:
        for es in eval_sets:
            es.close()
    paths = write_report(records, out, skipped, heatmap=True)
    return SweepResult(records, skipped, paths, saved)

