"""The `zs-cache` v1 format: the one contract between the stages (see ../shared/DESIGN.md).

A cache is an HDF5 file readable with plain h5py. Row i of every per-image dataset is the same
image. `CacheWriter` creates and appends to caches, refusing any append whose image list, spec
or dim does not match; `open_cache` reads any conforming file, whoever wrote it.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np

from zoomshot import __version__
from zoomshot.errors import ZsError

FORMAT = "zs-cache"
FORMAT_VERSION = 1
FAMILIES = ("clip", "vision")
STR = h5py.string_dtype("utf-8")
# Rows per HDF5 chunk aim at ~1 MiB of float16, so row-range reads touch few chunks.
CHUNK_BYTES = 1 << 20
READ_BLOCK_ROWS = 65536

STATUS_OK = 0
STATUS_UNREADABLE = 1


class CacheError(ZsError):
    """A cache that is missing, malformed, of another version, or does not match an append."""


def safe_key(spec: str) -> str:
    """A filesystem- and HDF5-safe key for an encoder spec (aliases pass unchanged)."""
    key = re.sub(r"[^A-Za-z0-9_.\-]+", "_", spec).strip("_.")
    return key or "encoder"


def chunk_rows(dim: int, n: int) -> int:
    return max(1, min(n, CHUNK_BYTES // (2 * max(dim, 1))))


@dataclass
class EncoderEntry:
    """The attributes of one `encoders/KEY` group."""

    key: str
    spec: str
    family: str
    dim: int
    normalized: bool = False
    weights: str = "default"
    preprocess: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)

    def attrs(self) -> dict:
        return {
            "spec": self.spec,
            "family": self.family,
            "dim": int(self.dim),
            "normalized": bool(self.normalized),
            "weights": self.weights,
            "preprocess": json.dumps(self.preprocess, sort_keys=True),
            "versions": json.dumps(self.versions, sort_keys=True),
        }

    @classmethod
    def from_group(cls, key: str, g: h5py.Group) -> "EncoderEntry":
        a = g.attrs
        try:
            return cls(
                key=key,
                spec=_s(a["spec"]),
                family=_s(a["family"]),
                dim=int(a["dim"]),
                normalized=bool(a.get("normalized", False)),
                weights=_s(a.get("weights", "default")),
                preprocess=json.loads(_s(a.get("preprocess", "{}"))),
                versions=json.loads(_s(a.get("versions", "{}"))),
            )
        except KeyError as e:
            raise CacheError(f"encoders/{key} lacks attribute {e.args[0]!r}") from None


@dataclass
class TextVocab:
    """A CLIP encoder's prompt embeddings for one vocabulary."""

    name: str
    names: list[str]
    templates: list[str]
    emb: np.ndarray | None  # (K, T, dim) float16, L2-normalised per prompt; None when not read
    classifier: np.ndarray  # (K, dim) float32, prompt-ensembled


def _s(x) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def _strs(ds) -> list[str]:
    return [_s(x) for x in ds[()]]


def ensemble_classifier(emb: np.ndarray) -> np.ndarray:
    """Mean of the L2-normalised prompt embeddings per class, renormalised: (K, T, d) -> (K, d)."""
    e = emb.astype(np.float32)
    e /= np.linalg.norm(e, axis=-1, keepdims=True).clip(1e-12)
    c = e.mean(axis=1)
    return c / np.linalg.norm(c, axis=-1, keepdims=True).clip(1e-12)


class CacheWriter:
    """Create a cache or append encoders / rows / vocabularies to an existing one.

    Opening an existing cache with an image list checks that the ids are the same, in order.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        ids: Sequence[str],
        labels: Sequence[int] | None = None,
        class_names: Sequence[str] | None = None,
    ):
        self.path = Path(path)
        exists = self.path.exists()
        if not exists:
            # check the image list before anything is written, so a refusal leaves no file behind
            _check_new_images(ids, labels)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.f = h5py.File(self.path, "a")
        except OSError as e:
            raise CacheError(f"cannot open {self.path} for writing: {e}") from None
        if not exists:
            self._create(ids, labels, class_names)
            return
        try:
            if _s(self.f.attrs.get("format", "")) != FORMAT:
                raise CacheError(f"{self.path} exists and is not a zs-cache file; choose another --out")
            _check_version(self.f, self.path)
            have = _strs(self.f["images/ids"])
            if have != [str(i) for i in ids]:
                raise CacheError(
                    f"{self.path} holds a different image list ({len(have)} rows) than this run "
                    f"({len(ids)} rows); use another --out or the same images, fraction and seed"
                )
        except CacheError:
            self.f.close()
            raise
        self.n = len(have)

    def _create(self, ids, labels, class_names) -> None:
        f = self.f
        n = len(ids)
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["zoomshot_version"] = __version__
        f.attrs["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        img = f.require_group("images")
        img.create_dataset("ids", data=np.array([str(i) for i in ids], dtype=object), dtype=STR)
        lab = np.full(n, -1, np.int32) if labels is None else np.asarray(labels, np.int32)
        img.create_dataset("labels", data=lab)
        img.create_dataset("status", data=np.zeros(n, np.uint8))
        img.create_dataset("errors", data=np.array([""] * n, dtype=object), dtype=STR)
        if class_names is not None:
            f.require_group("classes").create_dataset(
                "names", data=np.array(list(class_names), dtype=object), dtype=STR
            )
        self.n = n

    # -- encoders -------------------------------------------------------------------------
    def add_encoder(self, entry: EncoderEntry) -> None:
        """Create encoders/KEY, or check that an existing one has the same spec, family, dim, weights."""
        if entry.family not in FAMILIES:
            raise CacheError(f"family must be one of {FAMILIES}, got {entry.family!r}")
        grp = self.f.require_group("encoders")
        if entry.key in grp:
            have = EncoderEntry.from_group(entry.key, grp[entry.key])
            for name in ("spec", "family", "dim", "weights"):
                if getattr(have, name) != getattr(entry, name):
                    raise CacheError(
                        f"{self.path}: encoders/{entry.key} has {name}={getattr(have, name)!r}, "
                        f"this run has {getattr(entry, name)!r}; write to another --out"
                    )
            return
        g = grp.create_group(entry.key)
        for k, v in entry.attrs().items():
            g.attrs[k] = v
        g.create_dataset(
            "image",
            shape=(self.n, entry.dim),
            dtype=np.float16,
            chunks=(chunk_rows(entry.dim, self.n), entry.dim) if self.n else None,
            fletcher32=bool(self.n),
        )
        g.create_dataset("done", data=np.zeros(self.n, bool))

    def done(self, key: str) -> np.ndarray:
        return self.f[f"encoders/{key}/done"][()]

    def write_rows(self, key: str, start: int, feats: np.ndarray) -> None:
        """Write feats into rows [start, start+len) of encoders/KEY/image and mark them done."""
        g = self.f[f"encoders/{key}"]
        feats = np.asarray(feats)
        if feats.ndim != 2 or feats.shape[1] != g["image"].shape[1]:
            raise CacheError(f"encoders/{key}: rows of shape {feats.shape}, dim is {g['image'].shape[1]}")
        end = start + len(feats)
        g["image"][start:end] = feats.astype(np.float16)
        g["done"][start:end] = True

    def mark_unreadable(self, rows: Sequence[int], reasons: Sequence[str]) -> None:
        st = self.f["images/status"]
        er = self.f["images/errors"]
        for r, why in zip(rows, reasons):
            st[r] = STATUS_UNREADABLE
            er[r] = why

    def write_text(self, key: str, vocab: str, names, templates, emb: np.ndarray) -> None:
        """Store a vocabulary's prompt embeddings (K, T, dim) and its ensembled classifier."""
        g = self.f[f"encoders/{key}"]
        if _s(g.attrs["family"]) != "clip":
            raise CacheError(f"encoders/{key} is not a CLIP encoder; it has no text tower")
        emb = np.asarray(emb, np.float32)
        emb /= np.linalg.norm(emb, axis=-1, keepdims=True).clip(1e-12)
        if emb.shape[:2] != (len(names), len(templates)) or emb.shape[2] != int(g.attrs["dim"]):
            raise CacheError(f"text embeddings of shape {emb.shape} do not fit {len(names)} names × "
                             f"{len(templates)} templates × dim {int(g.attrs['dim'])}")
        t = g.require_group("text")
        if vocab in t:
            del t[vocab]
        v = t.create_group(vocab)
        v.create_dataset("names", data=np.array(list(names), dtype=object), dtype=STR)
        v.create_dataset("templates", data=np.array(list(templates), dtype=object), dtype=STR)
        v.create_dataset("emb", data=emb.astype(np.float16))
        v.create_dataset("classifier", data=ensemble_classifier(emb))

    def flush(self) -> None:
        self.f.flush()

    def close(self) -> None:
        if self.f:
            self.f.close()
            self.f = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _check_new_images(ids, labels) -> None:
    n = len(ids)
    if len(set(ids)) != n:
        raise CacheError("image ids must be unique")
    if labels is not None and np.shape(labels) != (n,):
        raise CacheError(f"labels has shape {np.shape(labels)}, expected ({n},)")


def _check_version(f: h5py.File, path) -> None:
    fmt = _s(f.attrs.get("format", ""))
    if fmt != FORMAT:
        raise CacheError(f"{path} is not a zs-cache file (format={fmt!r})")
    ver = int(f.attrs.get("format_version", -1))
    if ver != FORMAT_VERSION:
        raise CacheError(f"{path} has zs-cache format_version {ver}; this zoomshot reads {FORMAT_VERSION}")


class Cache:
    """Read access to a zs-cache v1 file. Use `open_cache(path)`."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.exists():
            unfinished = shard_report(self.path)
            raise CacheError(f"no cache at {self.path}"
                             + (f"; {'; '.join(unfinished)}" if unfinished else ""))
        try:
            self.f = h5py.File(self.path, "r")
        except OSError as e:
            raise CacheError(f"{self.path} is not a readable HDF5 file: {e}") from None
        _check_version(self.f, self.path)
        for name in ("images/ids", "images/labels", "images/status"):
            if name not in self.f:
                raise CacheError(f"{self.path} lacks {name}")
        self.n = int(self.f["images/ids"].shape[0])
        self._sources_ok: set[str] = set()  # encoder keys whose shard files all opened

    # -- images ---------------------------------------------------------------------------
    @property
    def ids(self) -> list[str]:
        return _strs(self.f["images/ids"])

    @property
    def labels(self) -> np.ndarray:
        return self.f["images/labels"][()].astype(np.int64)

    @property
    def status(self) -> np.ndarray:
        return self.f["images/status"][()]

    @property
    def errors(self) -> list[str]:
        return _strs(self.f["images/errors"]) if "images/errors" in self.f else [""] * self.n

    @property
    def class_names(self) -> list[str] | None:
        return _strs(self.f["classes/names"]) if "classes/names" in self.f else None

    # -- encoders -------------------------------------------------------------------------
    @property
    def encoders(self) -> dict[str, EncoderEntry]:
        g = self.f.get("encoders")
        return {k: EncoderEntry.from_group(k, g[k]) for k in g} if g is not None else {}

    def encoder(self, key: str) -> EncoderEntry:
        encs = self.encoders
        if key not in encs:
            raise CacheError(f"{self.path} has no encoder {key!r}; it has: {', '.join(encs) or 'none'}")
        return encs[key]

    def done(self, key: str) -> np.ndarray:
        self.encoder(key)
        return self.f[f"encoders/{key}/done"][()].astype(bool)

    def usable_rows(self, *keys: str) -> np.ndarray:
        """Indices of rows that were read fine and written by every named encoder."""
        ok = self.status == STATUS_OK
        for k in keys:
            ok &= self.done(k)
        return np.flatnonzero(ok)

    def image(self, key: str, rows: np.ndarray | None = None, dtype=np.float32) -> np.ndarray:
        """Features of encoders/KEY for `rows` (all rows when None), in the order given."""
        self.encoder(key)
        ds = self.f[f"encoders/{key}/image"]
        self._check_sources(ds, key)
        try:
            return self._read_rows(ds, rows, dtype)
        except OSError as e:
            raise CacheError(self._read_error(ds, key, e)) from None

    def _read_rows(self, ds, rows, dtype) -> np.ndarray:
        if rows is None:
            return ds[()].astype(dtype)
        rows = np.asarray(rows, np.int64)
        out = np.empty((len(rows), ds.shape[1]), dtype)
        if len(rows) == 0:
            return out
        order = np.argsort(rows, kind="stable")
        srt = rows[order]
        # Read contiguous row blocks and select within them: far faster than h5py fancy indexing.
        i = 0
        while i < len(srt):
            lo = int(srt[i])
            hi = min(lo + READ_BLOCK_ROWS, self.n, int(srt[-1]) + 1)  # never past the last row asked for
            j = int(np.searchsorted(srt, hi, side="left"))
            block = ds[lo:hi]
            out[order[i:j]] = block[srt[i:j] - lo]
            i = j
        return out

    def _source_path(self, name: str) -> Path:
        p = self.path.parent / name
        return p if p.exists() or Path(name).is_absolute() else Path(name)

    def _check_sources(self, ds, key: str) -> None:
        # HDF5 fills the rows of a missing or unopenable source file with the fill value, silently:
        # check every shard file once, so such rows never pass for features.
        if not ds.is_virtual or key in self._sources_ok:
            return
        missing, unreadable = [], []
        for name in sorted({vs.file_name for vs in ds.virtual_sources()}):
            p = self._source_path(name)
            if not p.exists():
                missing.append(name)
                continue
            try:
                with h5py.File(p, "r"):
                    pass
            except OSError:
                unreadable.append(str(p))
        if missing:
            raise CacheError(f"{self.path}: encoders/{key}/image is missing shard files: {', '.join(missing)}")
        if unreadable:
            raise CacheError(f"{self.path}: encoders/{key}/image has corrupt shard files (they do not open): "
                             f"{', '.join(unreadable)}")
        self._sources_ok.add(key)

    def _read_error(self, ds, key: str, err: OSError) -> str:
        """Which file a failed read came from: a virtual dataset's read error does not say."""
        if ds.is_virtual:
            for vs in ds.virtual_sources():
                p = self._source_path(vs.file_name)
                try:
                    with h5py.File(p, "r") as f:
                        f[vs.dset_name][()]
                except OSError as e:
                    return (f"shard file {p} of {self.path} (encoders/{key}/image) is corrupt: "
                            f"{str(e).splitlines()[0]} (checksum); delete it and rerun zs extract")
        return f"{self.path}: reading encoders/{key}/image failed: {str(err).splitlines()[0]}"

    # -- text -----------------------------------------------------------------------------
    def vocabularies(self, key: str) -> list[str]:
        g = self.f.get(f"encoders/{key}/text")
        return list(g) if g is not None else []

    def text(self, key: str, vocab: str | None = None, embeddings: bool = True) -> TextVocab:
        """A vocabulary of CLIP encoder KEY; with vocab None, the only one there is. With
        embeddings=False the (K, T, dim) per-prompt embeddings are not read (emb is None)."""
        have = self.vocabularies(key)
        if vocab is None:
            if len(have) != 1:
                raise CacheError(f"{self.path}: encoders/{key} has vocabularies {have or 'none'}; "
                                 f"name one with --vocab")
            vocab = have[0]
        if vocab not in have:
            raise CacheError(f"{self.path}: encoders/{key} has no vocabulary {vocab!r}; "
                             f"it has: {', '.join(have) or 'none'}")
        g = self.f[f"encoders/{key}/text/{vocab}"]
        return TextVocab(vocab, _strs(g["names"]), _strs(g["templates"]), g["emb"][()] if embeddings else None,
                         g["classifier"][()].astype(np.float32))

    # -- summary --------------------------------------------------------------------------
    def fingerprint(self) -> dict:
        return {
            "path": str(self.path),
            "format_version": FORMAT_VERSION,
            "rows": self.n,
            "encoders": {k: {"spec": e.spec, "dim": e.dim, "weights": e.weights}
                         for k, e in self.encoders.items()},
        }

    def info(self) -> str:
        st = self.status
        lines = [
            f"{self.path}  zs-cache v{FORMAT_VERSION}, written by zoomshot "
            f"{_s(self.f.attrs.get('zoomshot_version', '?'))} on {_s(self.f.attrs.get('created', '?'))}",
            f"images: {self.n} rows, {int((st != STATUS_OK).sum())} unreadable",
        ]
        lab = self.labels
        names = self.class_names
        if names is not None or (lab >= 0).any():
            lines.append(f"classes: {len(names) if names else len(np.unique(lab[lab >= 0]))}"
                         f"{' (' + ', '.join(names[:5]) + (', ...' if len(names) > 5 else '') + ')' if names else ''}")
        for k, e in self.encoders.items():
            done = self.done(k)
            ds = self.f[f"encoders/{k}/image"]
            shard_note = ""
            if ds.is_virtual:
                try:
                    self._check_sources(ds, k)
                    shard_note = ", virtual over shards"
                except CacheError as err:
                    shard_note = f", INCOMPLETE: {err}"
            vocabs = self.vocabularies(k)
            lines.append(
                f"encoder {k}: {e.spec} [{e.family}] dim {e.dim}, weights {e.weights}, "
                f"{int(done.sum())}/{self.n} rows done{shard_note}"
                + (f", vocabularies: {', '.join(vocabs)}" if vocabs else "")
            )
        lines.extend(shard_report(self.path, skip_complete=set(self.encoders)))
        return "\n".join(lines)

    def close(self) -> None:
        self.f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_cache(path: str | os.PathLike) -> Cache:
    return Cache(path)


def shard_dir(entry: str | os.PathLike) -> Path:
    """NAME.shards/ beside the entry file NAME.h5: where extraction writes its shard files."""
    entry = Path(entry)
    return entry.with_name(entry.stem + ".shards")


def shard_report(entry: str | os.PathLike, skip_complete: set[str] = frozenset()) -> list[str]:
    """Lines on unfinished extractions in NAME.shards/ beside an entry file (see zoomshot.extract.layout).

    An encoder folder counts its final shards (`NNNNN.h5`) against the manifest's shard count and
    its partial ones (`NNNNN.h5.partial`); complete encoders in skip_complete are not reported.
    """
    root = shard_dir(entry)
    man = root / "manifest.json"
    if not man.exists():
        return []
    try:
        total = int(json.loads(man.read_text())["shards"])
    except (ValueError, KeyError):
        return [f"{man} is unreadable"]
    out = []
    for d in sorted(p for p in root.iterdir() if (p / "encoder.json").exists()):
        final = len(list(d.glob("[0-9]*.h5")))
        partial = len(list(d.glob("[0-9]*.h5.partial")))
        if final == total and d.name in skip_complete:
            continue
        if final < total or partial:
            out.append(f"encoder {d.name}: unfinished in {root}: {final} of {total} shards final, "
                       f"{partial} partial (rerun the same zs extract to finish)")
    return out
