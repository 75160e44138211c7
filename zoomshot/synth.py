"""Planted worlds: train/test cache pairs whose CLIP teacher accuracy is known by construction.

Written with `CacheWriter` like any extracted cache, so every stage reads them unchanged: encoders
`synth_clip` (spec "synth:clip", normalized, text vocabulary "synth": class names × templates) and
`synth_vision` ("synth:vision"), both weights "planted"; the file attribute `synth` (JSON) holds the
parameters and the teacher accuracy, argmax_k c_i · t_k against y_i on the written rows.

A world (d = CLIP dim, dv = vision dim, K classes, all directions random):
  - CLIP space: a text-cone axis m_t, an image-cone axis m_i (the modality gap) and a semantic
    subspace S (d-2 dims); class k has a code u_k in S (unit norm on average).
  - text prompt (k, j) = n(gap·m_t + u_k + template_noise); the cache stores the ensembled classifier.
  - image i of class y: s_i = u_y + spread·ζ_i, CLIP feature c_i = n(gap·m_i + s_i + clip_noise·ε_i).
  - generator "offset" (default): v_i = A [coords of s_i ; ν_i] + mismatch·R r_y + noise·η_i + μ_v,
    A random, invertible, anisotropic (singular values log-spaced in [1/cond, 1]), ν_i a nuisance
    subspace CLIP never sees, r_y a per-class offset only the vision encoder has (so no linear map
    is exact, and distillation pays).
  - generator "warped": no offsets; the vision side sees a share `overlap` of the semantic
    coordinates (vision-only latent noise in the others), v_i = h_i + warp·σ·tanh(M h_i / σ) +
    noise·η_i + μ_v with h_i = A [masked s_i ; ν_i], M random orthogonal, σ the typical size of h.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from zoomshot.errors import ZsError

if TYPE_CHECKING:
    import numpy as np

CLIP_SPEC = "synth:clip"
VISION_SPEC = "synth:vision"
WEIGHTS = "planted"
VOCAB = "synth"
TEMPLATES = ("a photo of a {c}.", "a picture of a {c}.", "an image of the {c}.", "a {c} in the wild.")
BLOCK_ROWS = 32768
OFFSET_SCALE = 3.0  # length of a class's private vision offset at mismatch 1, in vision-noise units

# Defaults chosen so that the teacher is good but not perfect (~0.7-0.8 top-1 with 1,000 classes)
# and a linear map from the vision features can nearly, but not trivially, reach it.
DEFAULTS = dict(spread=5.0, clip_noise=2.0, gap=1.0, mismatch=2.0, cond=10.0, template_noise=0.3)
GENERATORS = ("offset", "warped")
WARPED_DEFAULTS = dict(overlap=0.8, warp=1.0)


class _World:
    """The fixed parameters of one world (class codes, bases, maps); `sample` draws images from it.

    Noise knobs are in reference units: at d = 512 and 1,000 classes they are used as given; other
    sizes scale them by kappa = sqrt((d - 2) / (2 ln K)) / kappa_ref, the spread of the nearest
    wrong class, so a knob setting gives a similar teacher accuracy at any size."""

    def __init__(self, p: "SynthParams"):
        import torch

        classes, dv, d, seed = p.classes, p.dv, p.d, p.seed
        spread, clip_noise, gap, mismatch, cond = p.spread, p.clip_noise, p.gap, p.mismatch, p.cond

        if d < 8 or dv < 4:
            raise ZsError(f"synth needs d >= 8 and dv >= 4 (got d={d}, dv={dv})")
        if classes < 2:
            raise ZsError(f"synth needs at least 2 classes (got {classes})")
        self.dv, self.d = dv, d
        ds = self.ds = d - 2  # semantic subspace
        kappa = math.sqrt(ds / (2 * math.log(classes))) / math.sqrt(510 / (2 * math.log(1000)))
        self.spread, self.clip_noise = spread * kappa, clip_noise * kappa
        self.noise, self.mismatch = p.noise * kappa, mismatch * kappa
        self.gap_img = gap * math.sqrt(1 + self.spread ** 2 + self.clip_noise ** 2)
        g = self.gen = torch.Generator().manual_seed(int(seed))
        # CLIP space in its own coordinates: axis 0 is the text cone m_t, axis 1 the image cone m_i,
        # axes 2.. the semantic subspace S. (Any rotation of it is the same world for every method.)
        self.z = torch.randn(classes, ds, generator=g, dtype=torch.float64) / math.sqrt(ds)  # class codes
        # text prompts: text cone m_t, the class code, a little per-template noise
        T = len(TEMPLATES)
        tz = self.z[:, None, :] + p.template_noise * torch.randn(classes, T, ds, generator=g,
                                                               dtype=torch.float64) / math.sqrt(ds)
        self.text = torch.cat([torch.full((classes, T, 1), float(gap), dtype=torch.float64),
                               torch.zeros(classes, T, 1, dtype=torch.float64), tz], 2)  # (K, T, d)
        # vision map: latent = [semantic coords (ds) ; nuisance (dn)]
        self.dn = max(dv - ds, 0)
        latent = ds + self.dn
        qa, _ = torch.linalg.qr(torch.randn(dv, dv, generator=g, dtype=torch.float64))
        qb, _ = torch.linalg.qr(torch.randn(latent, latent, generator=g, dtype=torch.float64))
        sv = torch.logspace(0, -math.log10(cond), min(dv, latent), dtype=torch.float64)
        self.A = (qa[:, : len(sv)] * sv) @ qb[:, : len(sv)].T * math.sqrt(ds)  # (dv, latent)
        # per-class offsets: a random unit direction each, OFFSET_SCALE · kappa long (reference units)
        R = torch.randn(classes, dv, generator=g, dtype=torch.float64)
        self.offsets32 = (self.mismatch * (R * (OFFSET_SCALE / R.norm(dim=1, keepdim=True)))).float()
        self.mu_v32 = torch.randn(dv, generator=g, dtype=torch.float64).float()
        self.A32 = self.A.float()
        self.warped = p.generator == "warped"
        if self.warped:  # p.mismatch is 0 for this generator: the offsets above are zero
            # The warped parts draw from their own generator, and `sample` draws from self.gen in the
            # same order and shapes as the offset world: both generators share the CLIP side exactly.
            vg = self.vgen = torch.Generator().manual_seed(int(seed) + 7919)
            keep = torch.randperm(ds, generator=vg)[: max(1, round(p.overlap * ds))]
            self.seen = torch.zeros(ds, dtype=torch.bool)
            self.seen[keep] = True
            self.warp = float(p.warp)
            self.M = torch.linalg.qr(torch.randn(dv, dv, generator=vg, dtype=torch.float64))[0].float()
            # σ: the per-entry scale of h = A [s ; ν] for a typical image (class code + spread)
            latent_var = (1.0 + self.spread ** 2) / ds
            self.sigma = float((self.A ** 2).sum(1).mean().sqrt()) * math.sqrt(latent_var)

    def sample(self, labels: np.ndarray):
        """CLIP image features (n, d) normalised and vision features (n, dv), float32 tensors."""
        import torch

        g = self.gen
        n = len(labels)
        y = torch.from_numpy(labels).long()
        zc = self.z.float()[y] + self.spread * torch.randn(n, self.ds, generator=g) / math.sqrt(self.ds)
        c = self.clip_noise * torch.randn(n, self.d, generator=g) / math.sqrt(self.d)
        c[:, 1] += self.gap_img
        c[:, 2:] += zc
        c /= c.norm(dim=1, keepdim=True).clamp_min(1e-12)
        lat = zc  # the semantic coordinates the vision encoder sees
        if self.warped:  # the kept ones; vision-only latent noise of the same scale elsewhere
            scale = math.sqrt(1.0 + self.spread ** 2)
            own = scale * torch.randn(n, self.ds, generator=self.vgen) / math.sqrt(self.ds)
            lat = torch.where(self.seen, zc, own)
        if self.dn:
            lat = torch.cat([lat, torch.randn(n, self.dn, generator=g) / math.sqrt(self.ds)], 1)
        h = lat @ self.A32.T
        if self.warped:  # no offsets: h warped by a smooth nonlinearity
            v = h + self.warp * self.sigma * torch.tanh((h @ self.M.T) / self.sigma)
        else:
            v = h + self.offsets32[y]
        v += self.noise * torch.randn(n, self.dv, generator=g)
        v += self.mu_v32
        return c, v


@dataclass
class SynthParams:
    """A world's size and knobs (None knobs take DEFAULTS)."""

    rows: int = 50_000
    test_rows: int = 10_000
    classes: int = 1000
    dv: int = 768
    d: int = 512
    noise: float = 0.7
    seed: int = 0
    spread: float | None = None
    clip_noise: float | None = None
    gap: float | None = None
    mismatch: float | None = None
    cond: float | None = None
    template_noise: float | None = None
    generator: str = "offset"  # "offset" or "warped" (module docstring)
    overlap: float | None = None  # warped only
    warp: float | None = None  # warped only

    def __post_init__(self):
        self.noise = float(self.noise)
        if self.generator not in GENERATORS:
            raise ZsError(f"unknown synth generator {self.generator!r}; choose one of: {', '.join(GENERATORS)}")
        warped = self.generator == "warped"
        if warped and self.mismatch is not None and float(self.mismatch) != 0.0:
            raise ZsError("the warped generator has no class offsets: --mismatch applies to "
                          "--generator offset only")
        if not warped and (self.overlap is not None or self.warp is not None):
            raise ZsError("--overlap and --warp apply to --generator warped only")
        defaults = {**DEFAULTS, "mismatch": 0.0, **WARPED_DEFAULTS} if warped else DEFAULTS
        for k, default in defaults.items():
            setattr(self, k, default if getattr(self, k) is None else float(getattr(self, k)))
        if warped and not 0.0 < self.overlap <= 1.0:
            raise ZsError(f"synth --overlap must be in (0, 1], got {self.overlap}")
        if warped and self.warp < 0:
            raise ZsError(f"synth --warp must be >= 0, got {self.warp}")


def write_synth_world(prefix: str | os.PathLike, **params) -> dict:
    """Write PREFIX-train.h5 and PREFIX-test.h5 from one planted world (params: the fields of
    SynthParams); return their paths and the teacher's accuracy on each (also stored as the file
    attribute `synth`, JSON)."""
    p = SynthParams(**params)
    if p.rows < 1 or p.test_rows < 1:
        raise ZsError(f"synth needs rows >= 1 and test rows >= 1 (got {p.rows}, {p.test_rows})")
    world = _World(p)
    names = [f"class_{k:04d}" for k in range(p.classes)]
    prefix = Path(prefix)
    out = {"params": {k: v for k, v in asdict(p).items() if v is not None}}
    import numpy as np  # here, not at import: the CLI reads SynthParams without numpy

    label_rng = np.random.default_rng(p.seed + 1)
    for split, n in (("train", p.rows), ("test", p.test_rows)):
        path = prefix.with_name(f"{prefix.name}-{split}.h5")
        labels = label_rng.integers(0, p.classes, n).astype(np.int32)
        out[split] = str(path)
        out[f"teacher_acc_{split}"] = _write_split(world, path, split, labels, names, out["params"])
    return out


def _write_split(world: _World, path: Path, split: str, labels: np.ndarray, names: list[str], params: dict) -> float:
    """One split's cache, written atomically; returns the teacher's accuracy on it."""
    import torch

    from zoomshot.cache import CacheWriter, EncoderEntry, safe_key
    from zoomshot.fileutil import atomic_path

    clip_key, vis_key = safe_key(CLIP_SPEC), safe_key(VISION_SPEC)
    n, correct = len(labels), 0
    with atomic_path(path) as tmp:
        with CacheWriter(tmp, [f"{split}/{i:08d}" for i in range(n)], labels, names) as w:
            w.add_encoder(EncoderEntry(clip_key, CLIP_SPEC, "clip", world.d, normalized=True,
                                       weights=WEIGHTS, preprocess={"synth": params}))
            w.add_encoder(EncoderEntry(vis_key, VISION_SPEC, "vision", world.dv, normalized=False,
                                       weights=WEIGHTS, preprocess={"synth": params}))
            w.write_text(clip_key, VOCAB, names, list(TEMPLATES), world.text.numpy())
            classifier = torch.from_numpy(w.f[f"encoders/{clip_key}/text/{VOCAB}/classifier"][()])
            for lo in range(0, n, BLOCK_ROWS):
                lab = labels[lo:lo + BLOCK_ROWS]
                c, v = world.sample(lab)
                c16 = c.half()
                w.write_rows(clip_key, lo, c16.numpy())
                w.write_rows(vis_key, lo, v.half().numpy())
                # the teacher sees the features as stored (float16)
                pred = (c16.float() @ classifier.T).argmax(1).numpy()
                correct += int((pred == lab).sum())
            acc = correct / n
            w.f.attrs["synth"] = json.dumps({**params, "split": split, "teacher_acc": acc})
    return acc


def read_synth_attrs(path: str | os.PathLike) -> dict | None:
    """The `synth` attribute of a planted-world cache (parameters, split, teacher_acc), or None."""
    import h5py

    with h5py.File(path, "r") as f:
        raw = f.attrs.get("synth")
    return None if raw is None else json.loads(raw)  # str, or bytes from older h5py
