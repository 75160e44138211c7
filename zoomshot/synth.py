"""Planted worlds: train/test cache pairs whose CLIP teacher accuracy is known by construction.

A planted world is the ground truth for tests, the demo and the benchmarks. It is written with
`CacheWriter` like any extracted cache, so every stage reads it unchanged:

  encoders/synth_clip    spec "synth:clip",   family "clip",   weights "planted", normalized
                         with a text vocabulary "synth" (class names × templates)
  encoders/synth_vision  spec "synth:vision", family "vision", weights "planted"
  images/labels, classes/names, and a file attribute `synth` (JSON: parameters + teacher accuracy)

How a world is made (d = CLIP dim, dv = vision dim, K classes, all directions random):
  - CLIP space splits into a text-cone axis m_t, an image-cone axis m_i and a semantic subspace S
    (d-2 dims). Class k has a semantic code u_k in S (unit norm on average).
  - text prompt (k, j) = n(gap·m_t + u_k + template_noise); the cache stores the prompt-ensembled
    classifier. Images and texts sit in different cones: that is the modality gap.
  - image i of class y: semantics s_i = u_y + spread·ζ_i, CLIP image feature
    c_i = n(gap·m_i + s_i + clip_noise·ε_i); CLIP-only noise ε_i is what the teacher gets wrong alone.
  - the vision feature holds the same semantics in another basis: v_i = A [coords of s_i ; ν_i]
    + mismatch·R r_y + noise·η_i + μ_v, with A a random invertible, anisotropic map (singular values
    log-spaced in [1/cond, 1]), ν_i a nuisance subspace CLIP never sees, r_y a per-class offset the
    vision encoder adds on its own (so no linear map is exact), η_i vision-only noise.

That is generator "offset" (the default): the vision features carry class offsets CLIP lacks, which
rewards distillation. Generator "warped" keeps CLIP, the texts and the class codes, but gives the
vision encoder no class offsets (mismatch 0) and makes it see the semantics differently instead:
  - it sees only a share `overlap` of the semantic coordinates; the others are replaced by
    vision-only latent noise of the same scale (teacher and student see partly different things);
  - v_i = h_i + warp·σ·tanh(M h_i / σ) + noise·η_i + μ_v with h_i = A [masked s_i ; ν_i] and M a
    random orthogonal map (σ: the typical size of h): a smooth nonlinear function of what it sees,
    so no linear map is exact and there is nothing class-specific for distillation to pick up
    that CLIP's own features lack.
Teacher accuracy is argmax_k c_i · t_k against y_i, computed on the written rows of each split.
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
        self.K, self.dv, self.d = classes, dv, d
        ds = d - 2  # semantic subspace
        self.ds = ds
        kappa = math.sqrt(ds / (2 * math.log(classes))) / math.sqrt(510 / (2 * math.log(1000)))
        self.spread, self.clip_noise = spread * kappa, clip_noise * kappa
        self.noise, self.mismatch = p.noise * kappa, mismatch * kappa
        self.gap_img = gap * math.sqrt(1 + self.spread ** 2 + self.clip_noise ** 2)
        g = torch.Generator().manual_seed(int(seed))
        self.gen = g
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
        self.R = torch.randn(classes, dv, generator=g, dtype=torch.float64)
        self.R *= OFFSET_SCALE / self.R.norm(dim=1, keepdim=True)
        self.mu_v = torch.randn(dv, generator=g, dtype=torch.float64)
        self.A32 = self.A.float()
        self.offsets32 = (self.mismatch * self.R).float()
        self.mu_v32 = self.mu_v.float()

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
        return c, self.vision(y, zc)

    def vision(self, y, zc):
        """The vision features of images with labels y and semantic codes zc: the class offsets."""
        import torch

        lat = zc
        if self.dn:
            lat = torch.cat([zc, torch.randn(len(y), self.dn, generator=self.gen) / math.sqrt(self.ds)], 1)
        v = lat @ self.A32.T
        v += self.offsets32[y]
        v += self.noise * torch.randn(len(y), self.dv, generator=self.gen)
        v += self.mu_v32
        return v


class _WarpedWorld(_World):
    """Generator "warped": no class offsets; the vision side sees a share of the semantics, warped."""

    def __init__(self, p: "SynthParams"):
        import torch

        super().__init__(p)  # p.mismatch is 0 for this generator
        # The warped parts draw from their own generator, and `sample` draws from self.gen in the
        # same order and shapes as the offset world: both generators share the CLIP side exactly.
        g = self.vgen = torch.Generator().manual_seed(int(p.seed) + 7919)
        keep = torch.randperm(self.ds, generator=g)[: max(1, round(p.overlap * self.ds))]
        self.seen = torch.zeros(self.ds, dtype=torch.bool)
        self.seen[keep] = True
        self.warp = float(p.warp)
        self.M = torch.linalg.qr(torch.randn(p.dv, p.dv, generator=g, dtype=torch.float64))[0].float()
        # σ: the per-entry scale of h = A [s ; ν] for a typical image (class code + spread)
        latent_var = (1.0 + self.spread ** 2) / self.ds
        self.sigma = float((self.A ** 2).sum(1).mean().sqrt()) * math.sqrt(latent_var)

    def vision(self, y, zc):
        """No offsets: the kept semantic coordinates, vision-only noise elsewhere, warped."""
        import torch

        g, n = self.gen, len(y)
        own = math.sqrt(1.0 + self.spread ** 2) * torch.randn(n, self.ds, generator=self.vgen) / math.sqrt(self.ds)
        lat = torch.where(self.seen, zc, own)
        if self.dn:
            lat = torch.cat([lat, torch.randn(n, self.dn, generator=g) / math.sqrt(self.ds)], 1)
        h = lat @ self.A32.T
        v = h + self.warp * self.sigma * torch.tanh((h @ self.M.T) / self.sigma)
        v += self.noise * torch.randn(n, self.dv, generator=g)
        v += self.mu_v32
        return v


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
        if self.generator == "warped":
            if self.mismatch is not None and float(self.mismatch) != 0.0:
                raise ZsError("the warped generator has no class offsets: --mismatch applies to "
                              "--generator offset only")
            self.mismatch = 0.0
            for k, default in WARPED_DEFAULTS.items():
                setattr(self, k, default if getattr(self, k) is None else float(getattr(self, k)))
            if not 0.0 < self.overlap <= 1.0:
                raise ZsError(f"synth --overlap must be in (0, 1], got {self.overlap}")
            if self.warp < 0:
                raise ZsError(f"synth --warp must be >= 0, got {self.warp}")
        elif self.overlap is not None or self.warp is not None:
            raise ZsError("--overlap and --warp apply to --generator warped only")
        for k, default in DEFAULTS.items():
            setattr(self, k, default if getattr(self, k) is None else float(getattr(self, k)))


def write_synth_world(prefix: str | os.PathLike, **params) -> dict:
    """Write PREFIX-train.h5 and PREFIX-test.h5 from one planted world (params: the fields of
    SynthParams); return their paths and the teacher's accuracy on each (also stored as the file
    attribute `synth`, JSON)."""
    p = SynthParams(**params)
    if p.rows < 1 or p.test_rows < 1:
        raise ZsError(f"synth needs rows >= 1 and test rows >= 1 (got {p.rows}, {p.test_rows})")
    world = (_WarpedWorld if p.generator == "warped" else _World)(p)
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
    if raw is None:
        return None
    return json.loads(raw.decode() if isinstance(raw, bytes) else raw)
