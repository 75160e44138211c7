"""The `zs-cache` v1 format: the one contract between the stages (specified in cache/README.md).

A cache is an HDF5 file readable with plain h5py. Row i of every per-image dataset is the same
image. `CacheWriter` creates and appends to caches, refusing any append whose image list, spec
or dim does not match; `open_cache` reads any conforming file, whoever wrote it.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np

from zoomshot.version import __version__
from zoomshot.errors import ZsError, first_line
from zoomshot.shards import shard_dir, shard_report

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


IDENTITY = ("spec", "family", "dim", "weights")  # what an encoder is
COMPUTE = ("precision", "decode")  # how its rows were computed ("" = not recorded, not compared)


@dataclass
class EncoderEntry:
    """An encoder's identity and record: the attributes of one `encoders/KEY` group (and of a shard
    folder's KEY/encoder.json). `mismatch` is the one encoder-identity comparison of the package."""

    key: str
    spec: str
    family: str
    dim: int
    normalized: bool = False
    weights: str = "default"
    preprocess: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    precision: str = ""  # fp32 | bf16 | fp16 the rows were computed in; "" when not recorded
    decode: str = ""  # cpu | gpu image decoder; "" when not recorded

    def mismatch(self, other: "EncoderEntry", fields: Sequence[str] = IDENTITY + COMPUTE) -> str | None:
        """The first of `fields` in which `other` differs from this entry, or None. A compute field
        (precision, decode) left unrecorded on either side is not compared."""
        for name in fields:
            mine, theirs = getattr(self, name), getattr(other, name)
            if name in COMPUTE and not (mine and theirs):
                continue
            if mine != theirs:
                return name
        return None

    def record(self) -> dict:
        """The JSON-able attributes (no key); unrecorded compute fields are left out."""
        return {k: v for k, v in asdict(self).items() if k != "key" and (v or k not in COMPUTE)}

    def attrs(self) -> dict:
        """The record as HDF5 attributes (dicts as sorted JSON)."""
        return {k: json.dumps(v, sort_keys=True) if isinstance(v, dict) else v for k, v in self.record().items()}

    @classmethod
    def from_record(cls, key: str, a, where: str = "") -> "EncoderEntry":
        """From `record()` or `attrs()` output (a dict, or an HDF5 group's attrs)."""
        def plain(name, default):
            v = _s(a[name]) if name in a and isinstance(a[name], (str, bytes)) else a.get(name, default)
            return json.loads(v) if isinstance(default, dict) and isinstance(v, str) else v

        try:
            return cls(key=key, spec=_s(a["spec"]), family=_s(a["family"]), dim=int(a["dim"]),
                       normalized=bool(a.get("normalized", False)), weights=plain("weights", "default"),
                       preprocess=plain("preprocess", {}), versions=plain("versions", {}),
                       precision=plain("precision", ""), decode=plain("decode", ""))
        except KeyError as e:
            raise CacheError(f"{where or 'encoders/' + key} lacks attribute {e.args[0]!r}") from None


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


def read_strings(ds) -> list[str]:
    """A string dataset as a list of str."""
    return [_s(x) for x in ds[()]]


def ensemble_classifier(emb: np.ndarray) -> np.ndarray:
    """Mean of the L2-normalised prompt embeddings per class, renormalised: (K, T, d) -> (K, d)."""
    e = emb.astype(np.float32)
    e /= np.linalg.norm(e, axis=-1, keepdims=True).clip(1e-12)
    c = e.mean(axis=1)
    return c / np.linalg.norm(c, axis=-1, keepdims=True).clip(1e-12)


class CacheWriter(contextlib.AbstractContextManager):
    """Create a cache, or append encoders / rows / vocabularies to one that holds the same ids in order."""

    def __init__(self, path: str | os.PathLike, ids: Sequence[str], labels: Sequence[int] | None = None,
                 class_names: Sequence[str] | None = None):
        self.path = Path(path)
        exists = self.path.exists()
        if not exists:  # check the image list before anything is written, so a refusal leaves no file
            if len(set(ids)) != len(ids):
                raise CacheError("image ids must be unique")
            if labels is not None and np.shape(labels) != (len(ids),):
                raise CacheError(f"labels has shape {np.shape(labels)}, expected ({len(ids)},)")
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
            have = read_ids(self.f["images/ids"], self.path)
            check_image_list(str(self.path), len(have), ids_digest_of(self.f["images/ids"], have), ids)
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
        write_ids(img, [str(i) for i in ids])
        lab = np.full(n, -1, np.int32) if labels is None else np.asarray(labels, np.int32)
        img.create_dataset("labels", data=lab, **checksummed(n))
        img.create_dataset("status", data=np.zeros(n, np.uint8), **checksummed(n))
        img.create_dataset("errors", data=np.array([""] * n, dtype=object), dtype=STR)
        if class_names is not None:
            f.require_group("classes").create_dataset("names", data=np.array(list(class_names), dtype=object),
                                                      dtype=STR)
        self.n = n

    # -- encoders -------------------------------------------------------------------------
    def add_encoder(self, entry: EncoderEntry) -> None:
        """Create encoders/KEY, or check that an existing one has the same spec, family, dim, weights."""
        if entry.family not in FAMILIES:
            raise CacheError(f"family must be one of {FAMILIES}, got {entry.family!r}")
        grp = self.f.require_group("encoders")
        if entry.key in grp:
            have = EncoderEntry.from_record(entry.key, grp[entry.key].attrs)
            name = have.mismatch(entry, IDENTITY)
            if name:
                raise CacheError(f"{self.path}: encoders/{entry.key} has {name}={getattr(have, name)!r}, "
                                 f"this run has {getattr(entry, name)!r}; write to another --out")
            return
        g = grp.create_group(entry.key)
        g.attrs.update(entry.attrs())
        g.create_dataset("image", shape=(self.n, entry.dim), dtype=np.float16, fletcher32=bool(self.n),
                         chunks=(chunk_rows(entry.dim, self.n), entry.dim) if self.n else None)
        g.create_dataset("done", data=np.zeros(self.n, bool), **checksummed(self.n))

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
        emb = emb / np.linalg.norm(emb, axis=-1, keepdims=True).clip(1e-12)  # a copy, not the caller's
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

    def close(self) -> None:
        if self.f:
            self.f.close()
            self.f = None

    def __exit__(self, *exc):
        self.close()


def checksummed(n: int) -> dict:
    """create_dataset options for a per-row dataset: one chunk-wise fletcher32 checksum, so a flipped
    bit fails the read instead of changing a label or a status silently."""
    return {"chunks": (min(n, 1 << 20),), "fletcher32": True} if n else {}


def ids_sha256(ids: Sequence[str]) -> str:
    h = hashlib.sha256()
    for i in ids:
        h.update(str(i).encode())
        h.update(b"\n")
    return h.hexdigest()


def check_image_list(holder: str, have_rows: int, have_digest: str, ids: Sequence[str],
                     digest: str | None = None, than: str = "this run") -> None:
    """The one image-list identity check: refuse ids (digest: their ids_sha256, when known) that are not
    the rows a cache or shard folder holds (have_rows rows of digest have_digest), in order."""
    if have_rows != len(ids) or have_digest != (digest or ids_sha256(ids)):
        raise CacheError(f"{holder} holds a different image list ({have_rows} rows) than {than} ({len(ids)} rows); "
                         f"use another --out or the same images, fraction and seed")


def write_ids(group: h5py.Group, ids: Sequence[str], digest: str | None = None) -> None:
    """images/ids with a sha256 attribute (strings cannot carry HDF5's checksum filter); digest: their
    ids_sha256, when the caller has it."""
    ds = group.create_dataset("ids", data=np.array(list(ids), dtype=object), dtype=STR)
    ds.attrs["sha256"] = digest or ids_sha256(ids)


def read_ids(ds, where) -> list[str]:
    ids = read_strings(ds)
    want = ds.attrs.get("sha256")
    if want is not None and _s(want) != ids_sha256(ids):
        raise CacheError(f"{where}: images/ids does not match its checksum (the file is damaged); "
                         f"re-extract it or restore a copy")
    return ids


def ids_digest_of(ds, ids: list[str]) -> str:
    """ids_sha256 of ids read (and so checked) from dataset ds: its stored checksum, else hashed."""
    stored = ds.attrs.get("sha256")
    return _s(stored) if stored is not None else ids_sha256(ids)


def _check_version(f: h5py.File, path) -> None:
    fmt = _s(f.attrs.get("format", ""))
    if fmt != FORMAT:
        raise CacheError(f"{path} is not a zs-cache file (format={fmt!r})")
    ver = int(f.attrs.get("format_version", -1))
    if ver != FORMAT_VERSION:
        raise CacheError(f"{path} has zs-cache format_version {ver}; this zoomshot reads {FORMAT_VERSION}")


class Cache(contextlib.AbstractContextManager):
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
        self._sharded: dict[str, ShardedRows] = {}  # encoder key -> reader of its shard files
        self._arrays: dict[str, np.ndarray] = {}  # dataset name -> its content, as read

    # -- images ---------------------------------------------------------------------------
    def _read(self, name: str) -> np.ndarray:
        """A whole dataset, read once per open (callers copy it); a failed checksum or an unreadable
        block is a one-line CacheError."""
        if name not in self._arrays:
            try:
                self._arrays[name] = self.f[name][()]
            except (OSError, KeyError) as e:
                raise CacheError(f"{self.path}: {name} does not read back ({first_line(e)}); "
                                 f"the file is damaged: re-extract it or restore a copy") from None
        return self._arrays[name]

    # Metadata is read once per open (a Cache is read-only): the properties below are cached.
    @cached_property
    def ids(self) -> list[str]:
        try:
            return read_ids(self.f["images/ids"], self.path)
        except (OSError, KeyError) as e:
            raise CacheError(f"{self.path}: images/ids does not read back ({e}); the file is damaged") from None

    @cached_property
    def ids_digest(self) -> str:
        """ids_sha256 of the image list: the stored checksum once reading the ids has checked it
        (older files have none: hashed here)."""
        return ids_digest_of(self.f["images/ids"], self.ids)

    @property
    def labels(self) -> np.ndarray:
        return self._read("images/labels").astype(np.int64)

    @property
    def status(self) -> np.ndarray:
        return self._read("images/status").copy()

    @cached_property
    def created(self) -> str:
        """When the file was written (ISO 8601, UTC); "" when not recorded."""
        return _s(self.f.attrs.get("created", ""))

    def row(self, i: int) -> tuple[str, int]:
        """(id, label) of one row, read alone (no whole-list read for a few rows)."""
        return _s(self.f["images/ids"][i]), int(self.f["images/labels"][i])

    @cached_property
    def errors(self) -> list[str]:
        return read_strings(self.f["images/errors"]) if "images/errors" in self.f else [""] * self.n

    @cached_property
    def class_names(self) -> list[str] | None:
        return read_strings(self.f["classes/names"]) if "classes/names" in self.f else None

    # -- encoders -------------------------------------------------------------------------
    @cached_property
    def encoders(self) -> dict[str, EncoderEntry]:
        g = self.f.get("encoders")
        return {k: EncoderEntry.from_record(k, g[k].attrs) for k in g} if g is not None else {}

    def encoder(self, key: str) -> EncoderEntry:
        encs = self.encoders
        if key not in encs:
            raise CacheError(f"{self.path} has no encoder {key!r}; it has: {', '.join(encs) or 'none'}")
        return encs[key]

    def done(self, key: str) -> np.ndarray:
        self.encoder(key)
        return self._read(f"encoders/{key}/done").astype(bool)

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
        try:
            return self._read_rows(self._shards(key) if ds.is_virtual else ds, rows, dtype)
        except (OSError, KeyError) as e:
            raise CacheError(f"{self.path}: reading encoders/{key}/image failed: {first_line(e)}") from None

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
        """Where a virtual dataset's shard file is for THIS entry file: a stored `OLD.shards/...` name
        resolves into this file's own NAME.shards/, so a copied or renamed cache reads its own shards."""
        p = Path(name)
        if p.is_absolute():
            return p
        if p.parts and p.parts[0].endswith(".shards"):
            return shard_dir(self.path).joinpath(*p.parts[1:])
        return self.path.parent / p

    def _shards(self, key: str) -> "ShardedRows":
        """The shard reader of a virtual encoders/KEY/image, built (and its files checked) once per open."""
        if key not in self._sharded:
            name = f"encoders/{key}/image"
            self._sharded[key] = ShardedRows(self.f[name], self._source_path, self.path, name)
        return self._sharded[key]

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
        return TextVocab(vocab, read_strings(g["names"]), read_strings(g["templates"]), g["emb"][()] if embeddings else None,
                         g["classifier"][()].astype(np.float32))

    # -- summary --------------------------------------------------------------------------
    def fingerprint(self) -> dict:
        encs = {k: {"spec": e.spec, "dim": e.dim, "weights": e.weights} for k, e in self.encoders.items()}
        return {"path": str(self.path), "format_version": FORMAT_VERSION, "rows": self.n, "encoders": encs}

    def content_fingerprint(self) -> str:
        """sha256 naming what this cache holds (when written, ids, labels, status, each encoder's
        identity and done rows), not where it lies: a re-extracted or replaced file gets a new one."""
        h = hashlib.sha256()
        h.update(self.created.encode())
        ids = self.f["images/ids"]
        h.update((_s(ids.attrs["sha256"]) if "sha256" in ids.attrs else self.ids_digest).encode())
        h.update(np.ascontiguousarray(self.labels).tobytes())
        h.update(np.ascontiguousarray(self.status).tobytes())
        for k, e in sorted(self.encoders.items()):
            h.update(json.dumps([k, e.attrs()], sort_keys=True).encode())
            h.update(np.packbits(self.done(k)).tobytes())
        return h.hexdigest()

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
            shard_note = ""
            if self.f[f"encoders/{k}/image"].is_virtual:
                try:
                    self._shards(k)
                    shard_note = ", virtual over shards"
                except CacheError as err:
                    shard_note = f", INCOMPLETE: {err}"
            vocabs = self.vocabularies(k)
            lines.append(f"encoder {k}: {e.spec} [{e.family}] dim {e.dim}, weights {e.weights}, "
                         f"{int(self.done(k).sum())}/{self.n} rows done{shard_note}"
                         + (f", vocabularies: {', '.join(vocabs)}" if vocabs else ""))
        lines.extend(shard_report(self.path, skip_complete=set(self.encoders)))
        return "\n".join(lines)

    def close(self) -> None:
        for sharded in self._sharded.values():
            sharded.close()
        self.f.close()

    def __exit__(self, *exc):
        self.close()


class ShardedRows:
    """Row-range reads of a virtual dataset straight from its shard files, found through `resolve`
    (not through the names HDF5 stored, which point at the shards of the name the cache had when
    it was written). Rows no shard covers read as NaN, like the virtual dataset's fill value.

    Every shard file is checked up front (opened, its dataset found, closed): HDF5 fills the rows of
    a missing or unopenable source file with the fill value, silently, so such rows could pass for
    features. Reads then open the shard they need, keeping only the last one open: a cache of many
    shards and encoders must not hold a file handle and a chunk cache per shard."""

    def __init__(self, ds, resolve, entry: Path, name: str):
        self.shape, self.dtype, self.entry, self.name = ds.shape, ds.dtype, entry, name
        sources = [(vs, resolve(vs.file_name)) for vs in ds.virtual_sources()]
        missing = sorted({str(p) for _, p in sources if not p.exists()})
        if missing:
            raise CacheError(f"{entry}: {name} is missing shard files: {', '.join(missing)}")
        self.parts = []  # (first row, stop row, shard path, shard dataset name, first source row)
        self._last: tuple | None = None  # (path, open h5py.File) of the last shard read
        unreadable = set()
        for vs, path in sources:
            if vs.vspace.get_select_type() == h5py.h5s.SEL_ALL:
                a, b = 0, ds.shape[0] - 1
            else:
                (a, _), (b, _) = vs.vspace.get_select_bounds()
            src = vs.src_space
            sa = 0 if src.get_select_type() == h5py.h5s.SEL_ALL else src.get_select_bounds()[0][0]
            try:
                with h5py.File(path, "r") as f:
                    f[vs.dset_name]
                self.parts.append((int(a), int(b) + 1, path, vs.dset_name, int(sa)))
            except (OSError, KeyError):
                unreadable.add(str(path))
        if unreadable:
            raise CacheError(f"{entry}: {name} has corrupt shard files (they do not open or lack their "
                             f"dataset; delete them and rerun zs extract): {', '.join(sorted(unreadable))}")
        self.parts.sort(key=lambda x: x[0])

    def _file(self, path: Path):
        if self._last is None or self._last[0] != path:
            self.close()
            self._last = (path, h5py.File(path, "r"))
        return self._last[1]

    def __getitem__(self, index):
        lo, hi = (0, self.shape[0]) if index == () else index.indices(self.shape[0])[:2]
        out = np.full((max(0, hi - lo), self.shape[1]), np.nan, self.dtype)
        for a, b, path, dset, sa in self.parts:
            x, y = max(a, lo), min(b, hi)
            if x >= y:
                continue
            try:
                out[x - lo:y - lo] = self._file(path)[dset][sa + x - a:sa + y - a]
            except OSError as e:
                raise CacheError(f"shard file {path} of {self.entry} ({self.name}) is corrupt: "
                                 f"{first_line(e)} (checksum); delete it and rerun zs extract") from None
        return out

    def close(self) -> None:
        if self._last is not None:
            self._last[1].close()
            self._last = None


def open_cache(path: str | os.PathLike) -> Cache:
    return Cache(path)
