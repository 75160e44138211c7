"""Score mappings, and CLIP itself, on evaluation caches: the records behind `zs evaluate`.

Each evaluation cache brings its own classifier: the text vocabulary its CLIP encoder stored. Only
rows with status 0, written by the encoder scored, and a label ≥ 0 count; each record says how many
rows were left out and why. Features are read in row chunks: no encoder is loaded, memory stays bounded.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from zoomshot.cache import STATUS_OK, Cache, EncoderEntry, TextVocab, open_cache
from zoomshot.fileutil import resolved_path
from zoomshot.mapping import Mapping, load_mapping, mapping_fingerprint, stack_forward

from .metrics import ScoreAccumulator, normalize_rows
from .retrieval import retrieval_metrics

CHUNK_ROWS = 16384
STACK_LOGITS = 1 << 24  # float32 logits per stacked block (64 MiB)


def _norm_names(names: list[str]) -> list[str]:
    return [s.replace("_", " ").strip().lower() for s in names]


def mapping_id(m: Mapping) -> str:
    """How a record names its mapping: the folder it was loaded from, else its name."""
    return str(m.path) if m.path is not None else m.name


def record_place(record: dict) -> tuple:
    """Where a record came from (mapping folder, cache path, encoder, vocabulary): a new record
    replaces an earlier one from the same place."""
    mapping = record.get("mapping")
    return (resolved_path(mapping) if mapping else None, resolved_path(record["cache"]), record["encoder"],
            record.get("vocab"))


def record_key(record: dict) -> tuple:
    """Identity of a record for --skip-existing: mapping and evaluation cache by content (a refit
    mapping or a re-extracted cache is scored again), encoder, vocabulary. Records written before
    fingerprints were stored fall back to paths, which never match a fingerprinted key."""
    mapping, cache, encoder, vocab = record_place(record)
    return record.get("mapping_sha256") or mapping, record.get("cache_sha256") or cache, encoder, vocab


@dataclass
class ClipTarget:
    """A CLIP encoder of an evaluation cache, with the vocabulary it classifies with."""

    key: str
    entry: EncoderEntry
    vocab: TextVocab | None = None
    problem: str | None = None  # why it cannot classify this cache's labels
    pred: np.ndarray | None = None  # CLIP's top-1 per cache row, -1 where not scored
    reference: dict | None = None  # CLIP's own record, once computed


@dataclass
class RowAccount:
    rows: np.ndarray  # the scored row indices
    counts: dict  # total, scored, unreadable, not_done, unlabelled


class EvalSet:
    """One evaluation cache opened for scoring. `preload` keeps each encoder's scored features in
    memory after the first read (for sweeps that score many mappings on the same cache)."""

    def __init__(self, path: str | os.PathLike, vocab: str | None = None, preload: bool = False,
                 progress: bool = False):
        self.path = str(path)
        self.progress = progress  # a progress bar for reads of more than one chunk
        self.name = Path(path).stem
        self.cache: Cache = open_cache(path)
        self.fingerprint = self.cache.content_fingerprint()
        self.preload = preload
        self._features: dict[str, np.ndarray] = {}
        self._accounts: dict[str, RowAccount] = {}
        self.labels = self.cache.labels
        self.encoders = self.cache.encoders
        self.targets = {k: self._target(k, e, vocab) for k, e in self.encoders.items() if e.family == "clip"}

    # -- setup ----------------------------------------------------------------------------
    def _target(self, key: str, entry: EncoderEntry, vocab: str | None) -> ClipTarget:
        t = ClipTarget(key, entry)
        name, t.problem = self._choose_vocab(key, vocab)
        if name is None:
            return t
        t.vocab = self.cache.text(key, name, embeddings=False)
        t.problem = self._label_problem(t.vocab)
        return t

    def _choose_vocab(self, key: str, vocab: str | None) -> tuple[str | None, str | None]:
        have = self.cache.vocabularies(key)
        where = f"encoders/{key}"
        if not have:
            return None, f"{where} has no text vocabulary (extract with --vocab to store one)"
        if vocab is not None:
            if vocab in have:
                return vocab, None
            return None, f"{where} has no vocabulary {vocab!r}; it has: {', '.join(have)}"
        if len(have) == 1:
            return have[0], None
        classes = self.cache.class_names
        if classes is not None:
            names = {v: self.cache.text(key, v, embeddings=False).names for v in have}
            match = ([v for v in have if names[v] == classes]
                     or [v for v in have if _norm_names(names[v]) == _norm_names(classes)])
            if match:
                return match[0], None
        return None, (f"{where} has vocabularies {', '.join(have)} and none has this cache's class "
                      f"names; name one with --vocab")

    def _label_problem(self, tv: TextVocab) -> str | None:
        k = len(tv.names)
        classes = self.cache.class_names
        if classes is not None:
            if len(classes) != k:
                return f"vocabulary {tv.name!r} has {k} classes, the cache's classes/names has {len(classes)}"
            a, b = _norm_names(tv.names), _norm_names(classes)
            if a != b and sorted(a) == sorted(b):
                return f"vocabulary {tv.name!r} lists the cache's classes in another order than its labels"
        labelled = self.labels[self.labels >= 0]
        if len(labelled) and int(labelled.max()) >= k:
            return f"labels reach {int(labelled.max())} but vocabulary {tv.name!r} has only {k} classes"
        return None

    # -- rows and features ----------------------------------------------------------------
    def account(self, key: str) -> RowAccount:
        """Which rows encoder KEY is scored on, and how many were left out and why."""
        if key not in self._accounts:
            ok = self.cache.status == STATUS_OK
            done = self.cache.done(key)
            labelled = self.labels >= 0
            scored = ok & done & labelled
            self._accounts[key] = RowAccount(np.flatnonzero(scored), {
                "total": int(self.cache.n),
                "scored": int(scored.sum()),
                "unreadable": int((~ok).sum()),
                "not_done": int((ok & ~done).sum()),
                "unlabelled": int((ok & done & ~labelled).sum()),
            })
        return self._accounts[key]

    def chunks(self, key: str) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(rows, features) of encoder KEY's scored rows, CHUNK_ROWS at a time."""
        from zoomshot.progress import progress_bar

        rows = self.account(key).rows
        if self.preload and key not in self._features:
            self._features[key] = self.cache.image(key, rows)
        held = self._features.get(key)
        with progress_bar(len(rows), f"evaluate {self.name} {key}", unit="row",
                          enabled=self.progress and held is None and len(rows) > CHUNK_ROWS) as bar:
            for lo in range(0, len(rows), CHUNK_ROWS):
                part = rows[lo:lo + CHUNK_ROWS]
                yield part, self.cache.image(key, part) if held is None else held[lo:lo + CHUNK_ROWS]
                bar.update(len(part))

    def has_image_features(self, key: str) -> bool:
        return self.account(key).counts["scored"] > 0

    # -- CLIP -----------------------------------------------------------------------------
    def clip_reference(self, target: ClipTarget, per_class: bool = False) -> dict | None:
        """CLIP's own zero-shot record on this cache (and its predictions, kept for agreement)."""
        if (target.reference is not None or target.vocab is None or target.problem
                or not self.has_image_features(target.key)):
            return target.reference
        acc = ScoreAccumulator(len(target.vocab.names), target.entry.dim)
        classifier = normalize_rows(target.vocab.classifier)
        target.pred = np.full(self.cache.n, -1, np.int64)
        for rows, feats in self.chunks(target.key):
            unit = normalize_rows(feats)
            target.pred[rows] = acc.add(unit, unit @ classifier.T, self.labels[rows])
        rec = target.reference = self._record(None, target, target.key, acc, per_class)
        rec["metrics"].update(agreement=1.0, agreement_rows=rec["rows"]["scored"])  # CLIP agrees with itself
        return rec

    def target_for(self, m: Mapping) -> ClipTarget | None:
        return next((t for t in self.targets.values() if t.entry.spec == m.target["spec"]), None)

    # -- mappings -------------------------------------------------------------------------
    def why_not(self, m: Mapping) -> str | None:
        """Why mapping m cannot be scored on this cache, or None."""
        why = m.mismatch(self.encoders)
        if why:
            return why
        t = self.target_for(m)
        if t is None:
            return (f"cache has no CLIP encoder {m.target['spec']!r} (the mapping's target), "
                    f"so it has no text classifier to score with")
        if t.problem:
            return t.problem
        n = self.account(m.source_key(self.encoders)).counts
        if not n["scored"]:
            return (f"no rows to score for source {m.source['spec']!r} ({n['unreadable']} unreadable, "
                    f"{n['not_done']} not written, {n['unlabelled']} unlabelled of {n['total']})")
        return None

    def score(self, mappings: Iterable[Mapping], per_class: bool = False) -> list[dict]:
        """Records for mappings that fit this cache (check `why_not` first). Mappings sharing a
        source encoder share each read of its features."""
        by_source: dict[str, list[tuple[Mapping, ClipTarget, ScoreAccumulator]]] = {}
        for m in mappings:
            t = self.target_for(m)
            self.clip_reference(t)  # CLIP's predictions, for agreement
            by_source.setdefault(m.source_key(self.encoders), []).append(
                (m, t, ScoreAccumulator(len(t.vocab.names), t.entry.dim)))
        records = []
        for key, group in by_source.items():
            # Mappings of one source into one target are scored together: one matmul maps the
            # features through all of them, one more gives every mapping's logits.
            by_target: dict[int, list] = {}
            for item in group:
                by_target.setdefault(id(item[1]), []).append(item)
            for rows, feats in self.chunks(key):
                labels = self.labels[rows]
                for stack in by_target.values():
                    self._score_stack(stack, rows, feats, labels)
            records += [self._record(m, t, key, acc, per_class) for m, t, acc in group]
        return records

    def _score_stack(self, stack: list, rows: np.ndarray, feats: np.ndarray, labels: np.ndarray) -> None:
        t = stack[0][1]
        classifier = normalize_rows(t.vocab.classifier)
        k, n_maps = len(classifier), len(stack)
        step = max(1, STACK_LOGITS // (n_maps * k))  # bounds the (rows, mappings, classes) block
        for lo in range(0, len(rows), step):
            hi = min(lo + step, len(rows))
            z = stack_forward([m for m, _, _ in stack], feats[lo:hi])
            logits = (z.reshape(-1, z.shape[2]) @ classifier.T).reshape(hi - lo, n_maps, k)
            ref = t.pred[rows[lo:hi]] if t.pred is not None else None
            for i, (_, _, acc) in enumerate(stack):
                acc.add(z[:, i], logits[:, i], labels[lo:hi], ref)

    def _record(self, m: Mapping | None, t: ClipTarget, key: str, acc: ScoreAccumulator,
                per_class: bool) -> dict:
        """The record of mapping m (None: CLIP) on encoder KEY's features, scored into acc."""
        run, entry = m.run if m is not None else {}, self.encoders[key]
        metrics = acc.metrics(t.vocab.classifier)
        clip_acc1 = metrics["acc1"] if m is None else t.reference and t.reference["metrics"]["acc1"]
        known = clip_acc1 and metrics["acc1"] is not None
        metrics["clip_share"] = metrics["acc1"] / clip_acc1 if known else None  # CLIP's own: 1.0
        rec = {
            "mapping": mapping_id(m) if m is not None else None,
            "mapping_name": m.name if m is not None else None,
            "mapping_sha256": mapping_fingerprint(m) if m is not None else None,
            "cache": self.path,
            "cache_sha256": self.fingerprint,
            "dataset": self.name,
            "vocab": t.vocab.name,
            "classes": len(t.vocab.names),
            "encoder": entry.spec,
            "encoder_key": entry.key,
            "weights": entry.weights,
            "target": t.entry.spec,
            "target_key": t.entry.key,
            "target_weights": t.entry.weights,
            "method": m.method if m is not None else "clip",
            **{k: run.get(k) for k in ("epochs", "fraction", "seed")},
            "train_cache": (run.get("cache") or {}).get("path"),
            "train_vocab": run.get("vocab"),
            "hyper": run.get("hyper"),
            "fit_wall_time_s": run.get("wall_time_s"),
            "holdout": (run.get("holdout") or {}).get("final"),  # label-free, on the training cache
            "fit_warnings": run.get("warnings") or [],
            "rows": self.account(key).counts,
            "metrics": metrics,
        }
        if per_class:
            rec["per_class"] = acc.per_class(t.vocab.names)
        return rec

    def close(self) -> None:
        self.cache.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _unique(items, key):
    first = {}
    for x in items:
        first.setdefault(key(x), x)
    return list(first.values())


def evaluate(mappings: list[Mapping | str], caches: list[str], vocab: str | None = None,
             skip: set | None = None, per_class: bool = False,
             retrieval: bool = False, progress: bool = False) -> tuple[list[dict], list[dict]]:
    """Score every mapping on every evaluation cache whose encoders match, plus CLIP's own record per
    CLIP encoder with image features in each cache. Returns (records, skipped: dicts of mapping, cache
    and reason); records whose `record_key` is in `skip` are neither computed nor returned. `retrieval`
    adds `retrieval_metrics`; `progress` shows a bar on stderr for reads of more than one chunk."""
    skip = skip or set()
    ms = _unique([m if isinstance(m, Mapping) else load_mapping(m) for m in mappings],
                 lambda m: resolved_path(mapping_id(m)))
    records: list[dict] = []
    skipped: list[dict] = []
    for path in _unique([str(c) for c in caches], resolved_path):
        with EvalSet(path, vocab, progress=progress) as es:
            first = len(records)
            todo = []
            for m in ms:
                why = es.why_not(m)
                if why:
                    skipped.append({"mapping": mapping_id(m), "cache": path, "reason": why})
                elif (mapping_fingerprint(m), es.fingerprint, m.source["spec"],
                      es.target_for(m).vocab.name) not in skip:
                    todo.append(m)
            for t in es.targets.values():
                if t.vocab is not None and (None, es.fingerprint, t.entry.spec, t.vocab.name) not in skip:
                    ref = es.clip_reference(t, per_class)
                    if ref is not None:  # None: no image features of this CLIP encoder to score
                        records.append(ref)
            records.extend(es.score(todo, per_class))
            if retrieval:
                add_retrieval_metrics(es, records[first:], ms)
    return records, skipped


def add_retrieval_metrics(es, records: list[dict], mappings: list) -> None:
    """Add `retrieval_metrics` to the metrics of records scored on one EvalSet: a mapping's record
    on its mapped source features, CLIP's on its own image features, each with the record's text
    classifier. The scored rows' features are held in memory (rows × dim float32)."""
    by_id = {mapping_id(m): m for m in mappings}
    by_key: dict[str, list] = {}  # records on one encoder's features share one read of them
    for rec in records:
        m = by_id.get(rec["mapping"])
        if m is not None:
            key, target = m.source_key(es.encoders), es.target_for(m)
        else:
            target = next(t for t in es.targets.values() if t.entry.spec == rec["encoder"])
            key = target.key
        by_key.setdefault(key, []).append((rec, m, target))
    for key, group in by_key.items():
        feats = np.concatenate([f for _, f in es.chunks(key)])
        labels = es.labels[es.account(key).rows]
        for rec, m, target in group:
            mapped = m.forward(feats) if m is not None else feats
            rec["metrics"].update(retrieval_metrics(mapped, labels, target.vocab.classifier))
