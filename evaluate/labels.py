"""How report cells name things: paths and weights files in a short portable form, encoders by key,
rows (CLIP or a mapping) and datasets (evaluation caches) by readable labels."""
from __future__ import annotations

import os
from pathlib import Path


def portable_path(p) -> str | None:
    """A path for a report cell: as given when relative, else relative to the working folder
    when under it, else its last two parts — never an absolute path."""
    if p is None:
        return None
    p = str(p)
    if not os.path.isabs(p):
        return p
    try:
        rel = os.path.relpath(p)
    except ValueError:  # another drive
        rel = ".."
    return rel if not rel.startswith("..") else str(Path(*Path(p).parts[-2:]))


def portable_weights(w) -> str | None:
    """default / random as they are; a local weights file by its file name."""
    return w if w in (None, "default", "random") else Path(str(w)).name


def encoder_label(rec: dict, role: str = "encoder") -> str:
    """An encoder as report cells show it: its key (records before keys were stored: the spec)."""
    return rec.get(f"{role}_key") or rec.get(role)


def dataset_labels(records: list[dict]) -> dict[str, str]:
    """Column label per evaluation cache path: its file stem, or parent/stem where stems collide."""
    paths = list(dict.fromkeys(r["cache"] for r in records))
    stems = [Path(p).stem for p in paths]
    return {p: (s if stems.count(s) == 1 else f"{Path(p).parent.name}/{s}") for p, s in zip(paths, stems)}


def row_label(rec: dict) -> str:
    if rec["mapping"] is not None:
        return rec.get("mapping_name") or portable_path(rec["mapping"])
    # a CLIP row at random (or local-file) weights must not read as the pretrained model
    w = rec.get("weights", "default")
    return f"CLIP {encoder_label(rec)}" + ("" if w == "default" else f" @{portable_weights(w)}")
