"""Vocabularies for CLIP-family encoders: which ones a run writes, and their prompt embeddings.

A run writes the vocabularies named by `--vocab` (a built-in name, `classes` for the source's own
class names, or a JSON file); without `--vocab`, a `--dataset` writes its own built-in vocabulary,
a labelled source its class names (as `classes`, with the 80 OpenAI templates) and an
unlabelled source `imagenet1k`. Embeddings are stored per encoder in the shard folder
(`KEY/text/VOCAB.h5`, atomically) and copied into the entry file by `CacheWriter.write_text`.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import h5py
import numpy as np

from zoomshot.cache import STR
from zoomshot.errors import ZsError
from zoomshot.fileutil import atomic_path
from zoomshot.sources import ImageSource
from zoomshot.vocab import Vocabulary, default_templates, load_vocabulary

CLASSES = "classes"


def resolve_vocabularies(names: list[str], source: ImageSource) -> list[Vocabulary]:
    """The --vocab names as vocabularies; without any, the source's default (see the module docstring)."""
    names = names or [source.vocab_name or (CLASSES if source.class_names else "imagenet1k")]
    out: dict[str, Vocabulary] = {}
    for n in names:
        if n == CLASSES:
            if not source.class_names:
                raise ZsError(f"--vocab {CLASSES} needs a labelled source (class subfolders, labels in the "
                              f"list, or --dataset); {source.description} has no class names")
            v = Vocabulary(CLASSES, list(source.class_names), default_templates())
        else:
            v = load_vocabulary(n)
        if v.name in out:
            raise ZsError(f"vocabulary {v.name!r} given twice")
        out[v.name] = v
    return list(out.values())


def digest(v: Vocabulary) -> str:
    return hashlib.sha256(json.dumps([v.classnames, v.templates]).encode()).hexdigest()


def is_stored(path: Path, v: Vocabulary) -> bool:
    """Whether `path` holds the embeddings of v's names and templates (a file `save_text` wrote)."""
    try:
        with h5py.File(path, "r") as f:
            return str(f.attrs.get("digest", "")) == digest(v)
    except OSError:  # absent or unreadable: embed again
        return False


def save_text(path: Path, v: Vocabulary, emb: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["digest"] = digest(v)
            f.create_dataset("names", data=np.array(v.classnames, dtype=object), dtype=STR)
            f.create_dataset("templates", data=np.array(v.templates, dtype=object), dtype=STR)
            f.create_dataset("emb", data=emb.astype(np.float32))
