"""Label-free validation: how well a mapping stands in for CLIP on rows it was not trained on.

On the held-out rows (see `data.holdout_size`), with the training vocabulary's classifier T:
  agreement     share of rows where argmax_k n(h(v))·t_k equals the CLIP teacher's argmax_k ĉ·t_k
  top5_overlap  mean |top-5 of the mapped source ∩ top-5 of the teacher| / 5
  cosine        mean cosine of h(v) and ĉ
  r2            1 − Σ‖h(v) − ĉ‖² / Σ‖ĉ − mean ĉ‖²
No labels are read; agreement and top-5 overlap need a vocabulary (None without one). With
hits=True the dict also carries "hits", the per-row agreement (a bool tensor), for paired
comparisons of two states on the same rows (early stopping).
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
