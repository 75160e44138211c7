"""Decoding: each image is read and decoded once per batch, then every preprocessing group
(encoders with the same transform share one) gets its own tensor. Batches are planned on
shard-aligned row ranges, so the same rows always meet in the same batch, whichever process,
rerun or resume computes them.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from zoomshot.sources import ImageSource, decode_rgb


@dataclass(frozen=True)
class Batch:
    shard: int
    start: int
    stop: int
    keys: tuple[str, ...]  # the encoders that still need these rows


def plan_batches(shard_bounds: dict[int, tuple[int, int]], resume: dict[str, dict[int, int]],
                 batch_size: int) -> list[Batch]:
    """Batches over the shards of this process.

    resume[key][s] is the first row of shard s that encoder key still needs. Batch boundaries
    are start + j·batch_size within each shard, plus any resume point that falls between them
    (only when a rerun changed the batch size).
    """
    out = []
    for s, (a, b) in sorted(shard_bounds.items()):
        pending = {k: r[s] for k, r in resume.items() if r[s] < b}
        if not pending:
            continue
        lo = min(pending.values())
        points = {x for x in range(a, b, batch_size) if x > lo} | set(pending.values()) | {lo, b}
        points = sorted(points)
        for x, y in zip(points, points[1:]):
            out.append(Batch(s, x, y, tuple(k for k in pending if pending[k] <= x)))
    return out


def decode_failure(e: BaseException) -> str:
    """The one-line reason stored for an image that does not decode."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if type(e).__name__ == "UnidentifiedImageError":
        text = "not an image in a format PIL reads"
    return f"{type(e).__name__}: {text}"[:300]


class PreprocessGroups:
    """Encoders that share a preprocessing transform (same library and config) share one tensor."""

    def __init__(self, encoders):
        self.transforms: list = []
        self.keys: list[str] = []  # the first encoder of each group, to name the group
        self.group_of: dict[str, int] = {}
        seen: dict[str, int] = {}
        for enc in encoders:
            cfg = enc.preprocess_config or {}
            # a plug-in's transform is shared with no other encoder: its key for a signature
            sig = json.dumps(cfg, sort_keys=True, default=str) if cfg.get("library") in ("timm", "open_clip") else enc.key
            if sig not in seen:
                seen[sig] = len(self.transforms)
                self.transforms.append(enc.preprocess)
                self.keys.append(enc.key)
            self.group_of[enc.key] = seen[sig]


# The RGB conversions timm and open_clip put in an eval transform; decoding already gives RGB.
RGB_CONVERSIONS = ("MaybeConvertMode", "_convert_to_rgb", "convert_to_rgb")


def transform_steps(tf) -> list:
    """The steps of a torchvision Compose (or the one transform itself)."""
    from torchvision import transforms as T

    return list(tf.transforms) if isinstance(tf, T.Compose) else [tf]


def is_rgb_conversion(t) -> bool:
    return type(t).__name__ in RGB_CONVERSIONS or getattr(t, "__name__", "") in RGB_CONVERSIONS


def draft_side(transforms) -> int | None:
    """The short side every preprocessing group needs the decoded image to keep: each transform
    must begin with a Resize to a known size (after RGB conversions). None (decode at full size)
    for anything else, e.g. a plug-in's own callable."""
    from torchvision import transforms as T

    need = 0
    for tf in transforms:
        first = next((t for t in transform_steps(tf) if not is_rgb_conversion(t)), None)
        if not isinstance(first, T.Resize) or first.max_size is not None:
            return None
        size = [first.size] if isinstance(first.size, int) else list(first.size)
        need = max(need, *size)
    return need or None


def batch_steps(tf):
    """(PIL steps, Normalize or None) for a transform of Resize / CenterCrop / RGB conversions, then
    ToTensor, then at most one Normalize: its tensor steps then run once on the batch (see
    `_to_tensor_batch`), not as small ops per image that each wait for torch's threads while the
    forward threads hold the cores (CPU). None for anything else (run whole, per image)."""
    from torchvision import transforms as T

    steps = transform_steps(tf)
    at = next((i for i, t in enumerate(steps) if type(t).__name__ in ("ToTensor", "MaybeToTensor")), None)
    if at is None or not all(isinstance(t, (T.Resize, T.CenterCrop)) or is_rgb_conversion(t) for t in steps[:at]):
        return None
    rest = steps[at + 1:]
    if rest and (len(rest) > 1 or not isinstance(rest[0], T.Normalize) or not all(rest[0].std)):
        return None
    return T.Compose(steps[:at]), (rest[0] if rest else None)


def _to_tensor_batch(arrays, norm):
    """What ToTensor then Normalize give each image, for uint8 HWC arrays of one size: the same
    float ops in the same order, so the same bits, in a contiguous (B, C, H, W) tensor."""
    import torch

    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    out = torch.empty(x.shape, dtype=torch.get_default_dtype()).copy_(x).div_(255)
    if norm is not None:
        out.sub_(torch.as_tensor(norm.mean, dtype=out.dtype).view(1, -1, 1, 1))
        out.div_(torch.as_tensor(norm.std, dtype=out.dtype).view(1, -1, 1, 1))
    return out


class DecodedBatches:
    """A map-style dataset whose item i is planned batch i, decoded and preprocessed.

    With gpu=True the images are not decoded here: JPEG bytes come back as 1-D uint8 tensors,
    other images as decoded uint8 (3, H, W) tensors, for `devices.gpu_decode`.
    """

    def __init__(self, source: ImageSource, batches: list[Batch], transforms: list, gpu: bool = False):
        self.source = source
        self.batches = batches
        self.transforms = transforms
        self.gpu = gpu
        self.min_side = None if gpu else draft_side(transforms)
        self.splits = [batch_steps(t) for t in transforms]

    def __len__(self) -> int:
        return len(self.batches)

    def _prepare(self, row: int):
        """One image -> its raw tensor (gpu) or one item per preprocessing group (the uint8 HWC array
        of its PIL steps where `batch_steps` split the transform, else its tensor); or the error."""
        try:
            data = self.source.read(row)
            if self.gpu:
                return _raw_tensor(data), ""
            img = decode_rgb(data, self.min_side)
            return [np.asarray(split[0](img)) if split else t(img)
                    for t, split in zip(self.transforms, self.splits)], ""
        except Exception as e:  # any decoder failure marks the row unreadable; the run goes on
            return None, decode_failure(e)

    def __getitem__(self, i: int) -> dict:
        import torch

        b = self.batches[i]
        prepared = [self._prepare(row) for row in range(b.start, b.stop)]
        values = [value for value, _ in prepared]
        good = [v for v in values if v is not None]  # one item per group, none with gpu (no transforms)
        tensors = [None if not good else _to_tensor_batch([v[g] for v in good], split[1]) if split
                   else torch.stack([v[g] for v in good]) for g, split in enumerate(self.splits)]
        return {"index": i, "ok": np.array([v is not None for v in values], bool), "errors": [e for _, e in prepared],
                "tensors": tensors, "raw": values if self.gpu else []}


def _raw_tensor(data):
    """JPEG bytes stay bytes (decoded on the GPU); anything else is decoded here to uint8 CHW."""
    import torch
    from torchvision.transforms.functional import pil_to_tensor

    if isinstance(data, (bytes, bytearray)) and data[:3] == b"\xff\xd8\xff":
        return torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return pil_to_tensor(decode_rgb(data))


def identity_collate(x):
    return x
