"""Vocabularies: class names plus prompt templates, built in as data files or given as JSON, and the
one zero-shot classifier builder (`prompt_classifier`: prompts embedded, then ensembled per class).

A vocabulary file is JSON: {"classnames": [...], "templates": ["a photo of a {c}.", ...]}.
Templates use `{c}` (or `{}`) for the class name, as in clip_benchmark.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from zoomshot.errors import ZsError, did_you_mean

_DATA = "vocabularies"


@dataclass
class Vocabulary:
    name: str
    classnames: list[str]
    templates: list[str]

    def prompts(self, classname: str) -> list[str]:
        return [t.replace("{c}", classname).replace("{}", classname) for t in self.templates]


def builtin_vocabularies() -> list[str]:
    root = resources.files("zoomshot").joinpath(_DATA)
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".json") and p.name != "templates.json")


def default_templates() -> list[str]:
    """The 80 OpenAI ImageNet templates: the default for a source's own class names."""
    return _read_builtin("imagenet1k")["templates"]


def _read_builtin(name: str) -> dict:
    return json.loads(resources.files("zoomshot").joinpath(_DATA, f"{name}.json").read_text())


def load_vocabulary(name_or_file: str) -> Vocabulary:
    """A built-in vocabulary by name, or a JSON file (see module docstring)."""
    p = Path(name_or_file)
    if name_or_file.endswith(".json") or p.is_file():
        if not p.is_file():
            raise ZsError(f"vocabulary file {p} does not exist")
        try:
            d = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ZsError(f"vocabulary file {p} is not valid JSON: {e}") from None
        if not isinstance(d, dict):
            raise ZsError(f"vocabulary file {p} must hold an object with classnames and templates")
        d.setdefault("templates", default_templates())
        for field in ("classnames", "templates"):
            v = d.get(field)
            if not isinstance(v, list) or not v or not all(isinstance(x, str) for x in v):
                raise ZsError(f"{p}: {field!r} must be a non-empty list of strings")
        if len(set(d["classnames"])) != len(d["classnames"]):
            raise ZsError(f"{p}: class names are not unique")
        return Vocabulary(p.stem, list(d["classnames"]), list(d["templates"]))
    have = builtin_vocabularies()
    if name_or_file not in have:
        raise ZsError(f"unknown vocabulary {name_or_file!r}{did_you_mean(name_or_file, have)}; "
                      f"built in: {', '.join(have)}; or pass a .json file")
    d = _read_builtin(name_or_file)
    return Vocabulary(name_or_file, list(d["classnames"]), list(d["templates"]))


TEXT_BATCH = 1024


def embed_prompts(text_encoder, vocab: Vocabulary, batch: int = TEXT_BATCH) -> np.ndarray:
    """(K, T, dim) float32 embeddings of every class × template prompt, in the text encoder's device's
    `auto` precision: the one prompt-embedding path (extract's stored vocabularies, the Python API's
    and predict's labels)."""
    import torch

    from zoomshot.devices import autocast

    prompts = [p for c in vocab.classnames for p in vocab.prompts(c)]
    device = str(getattr(text_encoder, "device", "cpu"))
    parts = []
    with torch.inference_mode(), autocast(device):
        for lo in range(0, len(prompts), batch):
            parts.append(text_encoder.encode_text(prompts[lo:lo + batch]).float().cpu().numpy())
    return np.concatenate(parts).reshape(len(vocab.classnames), len(vocab.templates), -1)


def prompt_classifier(text_encoder, vocab: Vocabulary) -> np.ndarray:
    """The zero-shot classifier (K, d): prompt embeddings ensembled per class as the cache stores them
    (`zoomshot.cache.ensemble_classifier`)."""
    from zoomshot.cache import ensemble_classifier

    return ensemble_classifier(embed_prompts(text_encoder, vocab))
