"""The zero-shot model `zoomshot.load` returns (README: "Using a mapping as a zero-shot model"): a
vision encoder, its mapping into CLIP space and a text classifier as one `torch.nn.Module`. Logits
(B, K) are LOGIT_SCALE × the cosine to each label's text embedding; LOGIT_SCALE is 100, CLIP's trained
temperature, so `logits.softmax(-1)` gives CLIP-like probabilities; `zs evaluate` ranks by the plain
cosine, `logits / LOGIT_SCALE`.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch
from torch import nn

from zoomshot.cache import open_cache
from zoomshot.devices import resolve_device
from zoomshot.encoders import build_encoder
from zoomshot.errors import ZsError
from zoomshot.mapping import Mapping, load_mapping, role_mismatch
from zoomshot.sources import decode_rgb, list_image_files
from zoomshot.vocab import Vocabulary, default_templates, load_vocabulary, prompt_classifier

LOGIT_SCALE = 100.0


def build_role_encoder(role: dict, weights: str | None, device: str, role_name: str):
    """Rebuild a mapping's source or target encoder from its run.json role, weights overridable
    ("random" rebuilds the same model: build_encoder seeds SPEC@random by its spec)."""
    chosen = weights if weights is not None else role.get("weights", "default")
    try:
        return build_encoder(role["spec"] if chosen == "default" else f"{role['spec']}@{chosen}", device)
    except ZsError as e:
        raise ZsError(f"cannot build the mapping's {role_name} encoder: {e}") from None


# Caches written before the built-in ImageNet list was fixed hold CLIP's two repeated names;
# the second of each pair is renamed as open_clip's list does.
_KNOWN_REPEATS = {"missile": "projectile, missile", "sunglasses": "sunglass"}


def disambiguate_labels(labels: Sequence[str]) -> list[str]:
    """Names stored in a cache, made unique: a known repeat gets its open_clip name, any other
    repeat a ' (2)', ' (3)' ... suffix; unique names pass unchanged."""
    out, seen = [], set()
    for x in labels:
        name = x
        if name in seen and _KNOWN_REPEATS.get(x) not in (None, *seen):
            name = _KNOWN_REPEATS[x]
        k = 2
        while name in seen:
            name, k = f"{x} ({k})", k + 1
        seen.add(name)
        out.append(name)
    return out


def check_labels(labels: Sequence[str]) -> list[str]:
    labels = [str(x).strip() for x in labels]
    if not labels or any(not x for x in labels):
        raise ZsError("labels must be a non-empty list of non-empty class names")
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise ZsError(f"labels are not unique: {', '.join(dup)}")
    return labels


class ZeroShotClassifier(nn.Module):
    """Vision encoder -> mapping -> cosine against class text embeddings, times LOGIT_SCALE.

    Only the vision encoder (`visual`), the folded mapping (`mapping`) and the class embeddings
    (buffer `text_classifier`) are part of the module; the CLIP text tower used by `set_labels` is
    built on first use and kept outside it, so exporting traces the vision path alone."""

    def __init__(self, encoder, mapping: Mapping, logit_scale: float = LOGIT_SCALE, text_weights: str | None = None):
        super().__init__()
        if encoder.dim != mapping.W.shape[1]:
            raise ZsError(f"encoder {encoder.spec!r} gives features of dim {encoder.dim}; the mapping takes "
                          f"{mapping.W.shape[1]}")
        self.encoder = encoder
        if isinstance(encoder.model, nn.Module):
            self.visual = encoder.model
        W, b = mapping.folded()  # one nn.Linear computing W ((v - mean) / std) + b
        self.mapping = nn.Linear(W.shape[1], W.shape[0])
        with torch.no_grad():
            self.mapping.weight.copy_(torch.from_numpy(W))
            self.mapping.bias.copy_(torch.from_numpy(b))
        self.run = mapping.run
        self.logit_scale = float(logit_scale)
        self.text_weights = text_weights
        self.labels: list[str] = []
        self.register_buffer("text_classifier", torch.zeros(0, mapping.W.shape[0]))
        self._text_encoder = None

    @property
    def device(self) -> torch.device:
        return self.mapping.weight.device

    @property
    def preprocess(self):
        """The vision encoder's own transform: PIL image -> (3, H, W) tensor."""
        return self.encoder.preprocess

    def _apply(self, fn, *args, **kwargs):
        out = super()._apply(fn, *args, **kwargs)
        self.encoder.device = str(self.device)
        return out

    # -- labels ---------------------------------------------------------------------------
    def set_classifier(self, labels: Sequence[str], classifier) -> "ZeroShotClassifier":
        """Use given class embeddings (K, d), one per label; they are L2-normalised here."""
        labels = check_labels(labels)
        c = torch.as_tensor(np.asarray(classifier, np.float32))
        if c.shape != (len(labels), self.mapping.out_features):
            raise ZsError(f"classifier of shape {tuple(c.shape)} does not fit {len(labels)} labels × "
                          f"dim {self.mapping.out_features}")
        self.text_classifier = nn.functional.normalize(c, dim=-1).to(self.device)
        self.labels = labels
        return self

    def text_encoder(self):
        """The mapping's target CLIP encoder (built once; weights from run.json or `text_weights`)."""
        if self._text_encoder is None:
            enc = build_role_encoder(self.run["target"], self.text_weights, str(self.device), "target (CLIP)")
            if enc.family != "clip" or enc.dim != self.mapping.out_features:
                raise ZsError(f"the mapping's target {enc.spec!r} is a {enc.family} encoder of dim {enc.dim}; "
                              f"it needs a CLIP text tower of dim {self.mapping.out_features}")
            self._text_encoder = enc
        return self._text_encoder

    def set_labels(self, labels: Sequence[str], templates: Sequence[str] | None = None) -> "ZeroShotClassifier":
        """Class embeddings from CLIP's text tower: each label in every template ({c} is the class
        name; default: the 80 OpenAI ImageNet templates), ensembled."""
        labels = check_labels(labels)
        templates = list(templates) if templates is not None else default_templates()
        if not templates:
            raise ZsError("templates must be a non-empty list such as ['a photo of a {c}.']")
        return self.set_classifier(labels, prompt_classifier(self.text_encoder(), Vocabulary("labels", labels, templates)))

    def set_vocab(self, name_or_file: str) -> "ZeroShotClassifier":
        """Labels and templates of a built-in vocabulary or a vocabulary JSON file."""
        v = load_vocabulary(name_or_file)
        return self.set_labels(v.classnames, v.templates)

    def set_labels_from_cache(self, cache_path: str | os.PathLike, vocab: str | None = None) -> "ZeroShotClassifier":
        """Class names and embeddings stored in a cache by the mapping's target CLIP encoder (no CLIP loads)."""
        names, classifier = cache_classifier(cache_path, self.run["target"], vocab)
        return self.set_classifier(disambiguate_labels(names), classifier)

    # -- forward --------------------------------------------------------------------------
    def as_batch(self, images) -> torch.Tensor:
        """A preprocessed batch tensor from a tensor (B, 3, H, W) / (3, H, W), a PIL image or a list of them."""
        if isinstance(images, torch.Tensor):
            x = images.unsqueeze(0) if images.ndim == 3 else images
        else:
            if not isinstance(images, (list, tuple)):
                images = [images]
            if not images:
                raise ZsError("no images given")
            x = torch.stack([self.encoder.preprocess(img.convert("RGB")) for img in images])
        return x.to(self.device, torch.float32)

    def embed(self, images) -> torch.Tensor:
        """Mapped image embeddings (B, d) in CLIP's image space, L2-normalised."""
        feats = self.encoder.encode_image(self.as_batch(images)).float()
        return nn.functional.normalize(self.mapping(feats), dim=-1)

    def forward(self, images) -> torch.Tensor:
        """Logits (B, K): LOGIT_SCALE × cosine to each label's text embedding."""
        if not self.labels:
            raise ZsError("the classifier has no labels yet: call set_labels([...]), set_vocab(NAME) or "
                          "set_labels_from_cache(PATH)")
        return self.logit_scale * self.embed(images) @ self.text_classifier.T

    def top_k(self, images, k: int = 5) -> list[list[tuple[str, float]]]:
        """Per image, the k most probable labels with their softmax probabilities."""
        with torch.inference_mode():
            probs = self(images).softmax(-1)
        p, i = probs.topk(min(k, len(self.labels)), dim=-1)
        return [[(self.labels[j], float(q)) for q, j in zip(pr.tolist(), ix.tolist())] for pr, ix in zip(p, i)]


def cache_classifier(cache_path: str | os.PathLike, target: dict, vocab: str | None = None):
    """(names, classifier (K, d)) of a cache's vocabulary stored by the CLIP encoder `target` (a run role)."""
    with open_cache(cache_path) as c:
        clips = [e for e in c.encoders.values() if e.family == "clip"]
        e = next((e for e in clips if e.spec == target["spec"]), None)
        if e is None:
            raise ZsError(f"{cache_path} holds no CLIP encoder {target['spec']!r} (the mapping's target); "
                          f"it has: {', '.join(x.spec for x in clips) or 'no CLIP encoder'}")
        why = role_mismatch("target", target, e)
        if why:
            raise ZsError(f"{cache_path}: {why}")
        tv = c.text(e.key, vocab, embeddings=False)
        return tv.names, tv.classifier


def choose_labels(classifier: ZeroShotClassifier, labels: Sequence[str] | None = None, vocab: str | None = None,
                  from_cache: str | os.PathLike | None = None, cache_vocab: str | None = None,
                  templates: Sequence[str] | None = None) -> ZeroShotClassifier:
    """Set the classifier's labels from exactly one of: a label list, a vocabulary, a cache."""
    given = [name for name, v in (("--labels", labels), ("--vocab", vocab), ("--from-cache", from_cache))
             if v is not None]
    if len(given) != 1:
        raise ZsError(f"give exactly one of --labels \"cat,dog,...\", --vocab NAME or --from-cache PATH"
                      f"{' (got ' + ', '.join(given) + ')' if given else ''}")
    if cache_vocab is not None and from_cache is None:
        raise ZsError("--cache-vocab names a vocabulary stored in the --from-cache cache; give --from-cache too")
    if labels is not None:
        return classifier.set_labels(labels, templates)
    if vocab is not None:
        return classifier.set_vocab(vocab)
    return classifier.set_labels_from_cache(from_cache, cache_vocab)


def parse_labels(text: str) -> list[str]:
    """Comma-separated class names -> a checked list."""
    return check_labels(text.split(",") if text.strip() else [])


def load(mapping_dir: str | os.PathLike, weights: str | None = None, device: str = "auto",
         text_weights: str | None = None, logit_scale: float = LOGIT_SCALE) -> ZeroShotClassifier:
    """A zero-shot classifier from a mapping folder (see the module docstring).

    weights: the vision encoder's weights ("default", "random" or a local file) instead of the
    ones in run.json; text_weights: the same for the CLIP text tower `set_labels` uses."""
    device = resolve_device(device)  # "auto": CUDA when present
    m = load_mapping(mapping_dir)
    encoder = build_role_encoder(m.source, weights, device, "source (vision)")
    clf = ZeroShotClassifier(encoder, m, logit_scale=logit_scale, text_weights=text_weights)
    return clf.to(device).eval()


# ------------------------------------------------------------------------------ predict -------
def predict_files(classifier: ZeroShotClassifier, paths: Sequence[str | os.PathLike], top_k: int = 5,
                  batch_size: int = 32) -> list[dict]:
    """Per image, in order: {"image", "top": [{"label", "prob"}, ...]} or {"image", "error"}."""
    if top_k < 1:
        raise ZsError(f"--top-k must be at least 1 (got {top_k})")
    results: list[dict] = []
    batch: list[tuple[int, object]] = []

    def flush():
        if batch:
            tops = classifier.top_k([img for _, img in batch], top_k)
            for (i, _), top in zip(batch, tops):
                results[i]["top"] = [{"label": lab, "prob": p} for lab, p in top]
            batch.clear()

    for path, problem in list_image_files(paths):
        results.append({"image": str(path)})
        if problem is None:
            try:
                batch.append((len(results) - 1, decode_rgb(path.read_bytes())))
            except Exception as e:  # PIL raises many types for bad files; each is one unreadable image
                problem = f"unreadable ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})"
        if problem is not None:
            results[-1]["error"] = problem
        if len(batch) >= batch_size:
            flush()
    flush()
    return results
