"""The mapping folder `zs fit` writes and `zs evaluate` / `zs predict` / `zoomshot.load` read (its
format in docs/design.md): mapping.safetensors (W, b, mean, std; U, e for methods with an inverse map)
and run.json, whose `tensors_sha256` names the tensors: a damaged or mismatched tensors file is refused.

Saving into an existing mapping folder replaces only these two files, by a journal that leaves a
loadable mapping at every instant: new tensors to `.mapping.safetensors.next`, then run.json (the
commit point), then `.next` renamed onto mapping.safetensors; a loader finding run.json ahead reads `.next`.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from zoomshot.errors import ZsError, first_line
from zoomshot.fileutil import atomic_path, check_writable, fsync_path, json_default

MAPPING_FORMAT = "zs-mapping"
MAPPING_VERSION = 1
TENSORS_FILE = "mapping.safetensors"
RUN_FILE = "run.json"
NEXT_TENSORS = ".mapping.safetensors.next"  # a save's new tensors, before they are renamed into place


class MappingError(ZsError):
    """A mapping folder that is missing, malformed, or does not fit a cache."""


@dataclass
class Mapping:
    W: np.ndarray
    b: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    run: dict = field(default_factory=dict)
    U: np.ndarray | None = None
    e: np.ndarray | None = None
    path: Path | None = None

    @property
    def source(self) -> dict:
        return self.run["source"]

    @property
    def target(self) -> dict:
        return self.run["target"]

    @property
    def method(self) -> str:
        return self.run.get("method", "?")

    @property
    def name(self) -> str:
        return self.path.name if self.path else self.method

    def forward(self, v: np.ndarray, normalize: bool = True) -> np.ndarray:
        """Map vision features (N, dv) into CLIP space (N, d), L2-normalised unless told not to."""
        v = np.asarray(v, np.float32)
        if v.ndim != 2 or v.shape[1] != self.W.shape[1]:
            raise MappingError(f"mapping {self.name} takes features of dim {self.W.shape[1]}, got {v.shape}")
        z = ((v - self.mean) / self.std) @ self.W.T + self.b
        if normalize:
            z /= np.linalg.norm(z, axis=1, keepdims=True).clip(1e-12)
        return z

    def folded(self) -> tuple[np.ndarray, np.ndarray]:
        """(W / std, b - (W / std) mean) in float32, folded in float64: h(v) = W' v + b'."""
        w = self.W.astype(np.float64) / self.std.astype(np.float64)[None, :]
        b = self.b.astype(np.float64) - w @ self.mean.astype(np.float64)
        return w.astype(np.float32), b.astype(np.float32)

    def mismatch(self, encoders: dict) -> str | None:
        """Why this mapping cannot be used with a cache's encoders (key -> EncoderEntry), or None: the
        source must be there with the same spec, dim and weights; the target too, if it is there."""
        for role in ("source", "target"):
            want = self.run[role]
            entry = next((e for e in encoders.values() if e.spec == want["spec"]), None)
            if entry is None and role == "source":
                return f"cache has no encoder with spec {want['spec']!r} (the mapping's {role})"
            why = entry and role_mismatch(role, want, entry)
            if why:
                return why
        return None

    def source_key(self, encoders: dict) -> str:
        """The cache key of this mapping's source encoder (after `mismatch` said None)."""
        return next(k for k, e in encoders.items() if e.spec == self.source["spec"])


def role_mismatch(name: str, role: dict, entry) -> str | None:
    """Why a cache's EncoderEntry is not the run role `name` ({spec, dim, weights}) of a mapping, or None;
    a role without recorded weights takes any."""
    want = replace(entry, spec=role["spec"], dim=int(role["dim"]), weights=role.get("weights", entry.weights))
    what = entry.mismatch(want, ("dim", "weights"))
    if what is None:
        return None
    return (f"{name} {role['spec']!r} has {what} {getattr(entry, what)!r} in the cache, "
            f"{getattr(want, what)!r} in the mapping")


def stack_forward(mappings: list[Mapping], v: np.ndarray) -> np.ndarray:
    """Map features (N, dv) through several mappings of one source and one target dim with one
    matmul: (N, M, d), each row L2-normalised. The standardisation is folded into W and b."""
    v = np.asarray(v, np.float32)
    ws, bs = zip(*(m.folded() for m in mappings))
    z = (v @ np.concatenate(ws).T + np.concatenate(bs)).reshape(len(v), len(mappings), -1)
    z /= np.linalg.norm(z, axis=2, keepdims=True).clip(1e-12)
    return z


def check_mapping_out(out_dir: str | os.PathLike) -> Path:
    """Refuse, before any work, an output path that is a file or a folder other than a mapping:
    saving replaces an earlier mapping folder, and nothing else."""
    out = Path(out_dir)
    check_writable(out, folder=True)
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise MappingError(f"--out {out} is a file; give a folder for the mapping")
        if any(out.iterdir()) and not (out / RUN_FILE).is_file():
            raise MappingError(f"--out {out} is a folder that holds no mapping; saving would replace it, "
                               f"so give a new or empty folder, or an earlier mapping folder")
    return out


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_mapping(mapping: Mapping, out_dir: str | os.PathLike) -> Path:
    """Write a mapping folder: a new one appears complete or not at all; in an existing one only the
    two files are replaced, by the journal the module docstring describes."""
    out = check_mapping_out(out_dir)
    names = ("W", "b", "mean", "std") + (("U", "e") if mapping.U is not None else ())
    tensors = {k: np.ascontiguousarray(getattr(mapping, k), np.float32) for k in names}

    def run_text(sha: str) -> str:
        run = {"format": MAPPING_FORMAT, "format_version": MAPPING_VERSION, **mapping.run, "tensors_sha256": sha}
        return json.dumps(run, indent=2, default=json_default)

    if out.is_dir() and (out / RUN_FILE).is_file():
        nxt = out / NEXT_TENSORS
        save_file(tensors, str(nxt))
        fsync_path(nxt)
        sha = file_sha256(nxt)
        with atomic_path(out / RUN_FILE) as tmp:  # the commit point
            tmp.write_text(run_text(sha))
            fsync_path(tmp)
        os.replace(nxt, out / TENSORS_FILE)
    else:
        with atomic_path(out, folder=True) as tmp:
            if tmp.exists():  # left by a crashed run of this pid
                shutil.rmtree(tmp)
            tmp.mkdir()
            save_file(tensors, str(tmp / TENSORS_FILE))
            sha = file_sha256(tmp / TENSORS_FILE)
            (tmp / RUN_FILE).write_text(run_text(sha))
    mapping.path = out
    mapping.run["tensors_sha256"] = sha  # so scoring it next does not hash the file again
    return out


def mapping_fingerprint(m: Mapping) -> str:
    """What a mapping is, by content: its tensors' sha256 (from run.json, or hashed for older folders)."""
    sha = m.run.get("tensors_sha256")
    if sha:
        return sha
    return file_sha256(m.path / TENSORS_FILE) if m.path is not None else ""


def load_mapping(path: str | os.PathLike) -> Mapping:
    p = Path(path)
    if not (p / RUN_FILE).is_file() or not (p / TENSORS_FILE).is_file():
        raise MappingError(f"{p} is not a mapping folder (it needs {RUN_FILE} and {TENSORS_FILE}; "
                           f"`zs fit --out DIR` writes one)")
    try:
        run = json.loads((p / RUN_FILE).read_text())
    except json.JSONDecodeError as err:
        raise MappingError(f"{p / RUN_FILE} is not valid JSON: {err}") from None
    if run.get("format") != MAPPING_FORMAT or run.get("format_version") != MAPPING_VERSION:
        raise MappingError(f"{p} has format {run.get('format')!r} v{run.get('format_version')}; "
                           f"this zoomshot reads {MAPPING_FORMAT} v{MAPPING_VERSION}")
    tensors = p / TENSORS_FILE
    want = run.get("tensors_sha256")
    if want and file_sha256(tensors) != want:
        nxt = p / NEXT_TENSORS
        if nxt.is_file() and file_sha256(nxt) == want:  # a save stopped between its last two renames
            tensors = nxt
        else:
            raise MappingError(f"{p / TENSORS_FILE} does not match the checksum in {RUN_FILE} (the file is damaged "
                               f"or from another fit); fit again with --out {p}")
    try:
        t = load_file(str(tensors))
    except Exception as e:  # safetensors raises its own error types for a cut or garbled file
        raise MappingError(f"{tensors} does not read as safetensors ({first_line(e)}); "
                           f"fit again with --out {p}") from None
    missing = {"W", "b", "mean", "std"} - set(t)
    if missing:
        raise MappingError(f"{p / TENSORS_FILE} lacks tensors {sorted(missing)}")
    return Mapping(W=t["W"], b=t["b"], mean=t["mean"], std=t["std"], run=run,
                   U=t.get("U"), e=t.get("e"), path=p)
