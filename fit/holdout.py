"""Label-free validation: how well a mapping stands in for CLIP on rows it was not trained on.

On the held-out rows (`data.holdout_size`): agreement and top-5 overlap with the CLIP teacher on the
training vocabulary (None without one), mean cosine and R² against ĉ (docs/method.md). No labels
are read.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .losses import student_logits


@torch.no_grad()
def holdout_metrics(h, c, T=None, hits: bool = False) -> dict:
    """The metrics above for mapped rows h (n, d) against normalised CLIP rows c (n, d)."""
    h, c = h.float(), c.float()
    out = {"rows": int(len(h))}
    if T is not None:
        s, t = student_logits(h, T), c @ T.T
        k = min(5, T.shape[0])
        same = s.argmax(1) == t.argmax(1)
        out["agreement"] = float(same.float().mean())
        if hits:
            out["hits"] = same
        top_s, top_t = s.topk(k, dim=1).indices, t.topk(k, dim=1).indices
        out["top5_overlap"] = float((top_s[:, :, None] == top_t[:, None, :]).any(2).float().mean())
    else:
        out["agreement"] = out["top5_overlap"] = None
    out["cosine"] = float(F.cosine_similarity(h, c, dim=1).mean())
    out["r2"] = float(1.0 - (h - c).square().sum() / (c - c.mean(0)).square().sum().clamp_min(1e-30))
    return out
