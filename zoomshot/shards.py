"""The shard layout: the one home of the names an extraction gives its files (drawn in cache/README.md,
'The shard folder'). The cache reads through these names (a virtual dataset's shards, unfinished
extractions) and `zoomshot.extract.layout` writes through them; nothing else spells a shard file name.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

PARTIAL = ".partial"


def shard_dir(entry: str | os.PathLike) -> Path:
    """NAME.shards/ beside the entry file NAME.h5: where extraction writes its shard files."""
    entry = Path(entry)
    return entry.with_name(entry.stem + ".shards")


def partial_of(final: Path) -> Path:
    """The name a shard has while it is written."""
    return Path(str(final) + PARTIAL)


class ShardPaths:
    """The paths of one cache's shard folder."""

    def __init__(self, entry: str | os.PathLike):
        self.entry = Path(entry)
        self.root = shard_dir(self.entry)
        self.manifest_path, self.images_path = self.root / "manifest.json", self.root / "images.h5"

    def lock_path(self, what: str) -> Path:
        """The lock file of a short critical section: "manifest" or "entry"."""
        return self.root / f".{what}.lock"

    def encoder_record_path(self, key: str) -> Path:
        return self.root / key / "encoder.json"

    def claim_lock_path(self, key: str) -> Path:
        return self.root / key / ".lock"

    def shard_path(self, key: str, s: int) -> Path:
        return self.root / key / f"{s:05d}.h5"

    def partial_path(self, key: str, s: int) -> Path:
        return partial_of(self.shard_path(key, s))

    def text_path(self, key: str, vocab: str) -> Path:
        return self.root / key / "text" / f"{vocab}.h5"

    def vocabularies(self, key: str) -> list[str]:
        d = self.root / key / "text"
        return sorted(p.stem for p in d.glob("*.h5")) if d.is_dir() else []

    def relative_to_entry(self, p: Path) -> str:
        return Path(os.path.relpath(p, self.entry.parent)).as_posix()

    def encoder_keys(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if self.encoder_record_path(p.name).exists())

    def shard_counts(self, key: str) -> tuple[int, int]:
        """(final, partial) shard files of encoder KEY."""
        d = self.root / key
        return len(list(d.glob("[0-9]*.h5"))), len(list(d.glob(f"[0-9]*.h5{PARTIAL}")))

    def any_rows_written(self) -> bool:
        """Whether any shard file (final or partial) exists: then a failed run leaves rows to resume."""
        return any(self.root.glob("*/[0-9]*.h5*"))


def shard_report(entry: str | os.PathLike, skip_complete: set[str] = frozenset()) -> list[str]:
    """Lines on the encoders in NAME.shards/ beside an entry file with fewer final shards than the
    manifest counts, or partial ones; complete encoders in skip_complete are not reported."""
    paths = ShardPaths(entry)
    if not paths.manifest_path.exists():
        return []
    try:
        total = int(json.loads(paths.manifest_path.read_text())["shards"])
    except (ValueError, KeyError):
        return [f"{paths.manifest_path} is unreadable"]
    out = []
    for key in paths.encoder_keys():
        final, partial = paths.shard_counts(key)
        if final == total and key in skip_complete:
            continue
        if final < total or partial:
            out.append(f"encoder {key}: unfinished in {paths.root}: {final} of {total} shards final, "
                       f"{partial} partial (rerun the same zs extract to finish)")
    return out
