"""The Zoom-shot losses (DESIGN.md, "The method"), computed for a stack of G mappings at once.

Shapes: x (G, B, dv) standardised source features, c (G, B, d) L2-normalised CLIP image features,
w (G, B) row weights (0 for padding), W (G, d, dv), b (G, d), U (G, dv, d), e (G, dv).
h(v) = W v + b, g(c) = U c + e. Every squared norm ‖a − y‖² is taken as the mean over the
coordinates of its space (torch's MSELoss): a constant 1/d or 1/dv per term, absorbed in the λ's,
that puts the terms on one scale. Batch means are weighted means over the non-padding rows.

  L_align = ‖h(v) − ĉ‖² + ‖g(ĉ) − v‖²
  L_cycle = ‖g(h(v)) − v‖² + ‖h(g(ĉ)) − ĉ‖² + mean_k ‖h(g(t_k)) − t_k‖²
  L_kd    = τ² KL(softmax(ĉ Tᵀ/τ) ‖ softmax(n(h(v)) Tᵀ/τ))       (soft)
          = τ² CE(n(h(v)) Tᵀ/τ, argmax_k ĉ Tᵀ)                   (hard)
The hard variant carries τ² too, so one λ_kd gives both variants gradients of one scale.

The text-cycle term is exact but computed from the text classifier's second moments
S = mean_k t_k t_kᵀ and t̄ = mean_k t_k: with M = W U − I and r = W e + b,
mean_k ‖M t_k + r‖² = tr(M S Mᵀ) + 2 rᵀ M t̄ + ‖r‖², which costs O(d²·dv) per step instead of
O(K·d·dv) for pushing all K texts through g and h.
"""
from __future__ import annotations

TERMS = ("loss", "align", "cycle", "kd")


# Batched kernels over the stack (baddbmm/bmm): on by default on a GPU. Tests switch them on for the
# CPU to check that path's arithmetic without a GPU.
FORCE_BATCHED = False


def batched_kernels(device) -> bool:
    return FORCE_BATCHED or getattr(device, "type", device) == "cuda"


def _affine(bias, x, Wt):
    """bias[:, None, :] + x @ Wt for each mapping of the stack: (G, B, n) @ (G, n, m) -> (G, B, m).

    On a GPU one batched kernel (baddbmm); on a CPU one GEMM per mapping, which MKL runs faster
    than its batched GEMM at these shapes (measured: bench/sweep.py)."""
    import torch

    if batched_kernels(x.device):
        return torch.baddbmm(bias[:, None, :], x, Wt)
    if x.shape[0] == 1:
        return torch.addmm(bias[0], x[0], Wt[0])[None]
    return torch.stack([torch.addmm(bias[i], x[i], Wt[i]) for i in range(x.shape[0])])


def _matmul(A, B):
    """A @ B per mapping of the stack, batched on a GPU, one GEMM each on a CPU."""
    import torch

    if batched_kernels(A.device):
        return torch.bmm(A, B)
    if A.shape[0] == 1:
        return (A[0] @ B[0])[None]
    return torch.stack([A[i] @ B[i] for i in range(A.shape[0])])


def _wmean(per_row, w, wn):
    return (per_row * w).sum(1) / wn


def _sq(a, y):
    return (a - y).square().mean(-1)


def text_moments(T):
    """(S, t̄) of a (K, d) text classifier: S = TᵀT / K, t̄ = mean of the rows."""
    K = T.shape[0]
    return (T.T @ T) / K, T.mean(0)


def teacher_targets(c, T, tau, need_soft: bool, need_hard: bool) -> dict:
    """What the distillation needs from the teacher for batches c (U, B, d) at temperatures tau (U,):
    the soft targets' probabilities and negative entropy, and/or the hard targets (argmax)."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        t_logits = (c @ T.T) * (1.0 / tau)[:, None, None]
        out = {}
        if need_soft:
            log_pt = F.log_softmax(t_logits, dim=-1)
            out["pt"] = log_pt.exp()
            out["neg_entropy"] = (out["pt"] * log_pt).sum(-1)
        if need_hard:
            out["argmax"] = t_logits.argmax(-1, keepdim=True)
    return out


def zoomshot_losses(W, b, U, e, x, c, w, T, S, tbar, lam_align, lam_cycle, lam_kd, tau, soft_mask,
                    need_inverse: bool, need_kd: bool, need_soft: bool, need_hard: bool, teacher=None):
    """Per-mapping (G,) tensors: total loss and the three terms (unweighted). `teacher`: the output
    of teacher_targets for these batches, when computed already."""
    import torch
    import torch.nn.functional as F

    wn = w.sum(1).clamp_min(1.0)
    h = _affine(b, x, W.transpose(1, 2))
    zero = x.new_zeros(x.shape[0])
    align = _wmean(_sq(h, c), w, wn)
    cycle = zero
    if need_inverse:
        Ut = U.transpose(1, 2)
        Wt = W.transpose(1, 2)
        gc = _affine(e, c, Ut)
        align = align + _wmean(_sq(gc, x), w, wn)
        ghx = _affine(e, h, Ut)
        hgc = _affine(b, gc, Wt)
        M = _matmul(W, U)
        M = M - torch.eye(M.shape[-1], device=M.device, dtype=M.dtype)
        r = _matmul(W, e[:, :, None])[:, :, 0] + b
        text = ((M @ S) * M).sum((1, 2)) + 2 * (r * (M @ tbar)).sum(1) + r.square().sum(1)
        cycle = _wmean(_sq(ghx, x), w, wn) + _wmean(_sq(hgc, c), w, wn) + text / S.shape[0]
    kd = zero
    if need_kd:
        inv_tau = (1.0 / tau)[:, None, None]
        hn = h / h.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        log_ps = F.log_softmax((hn @ T.T) * inv_tau, dim=-1)
        if teacher is None:
            teacher = teacher_targets(c, T, tau, need_soft, need_hard)
        rows = []
        tau2 = (tau * tau)[:, None]
        if need_soft:
            rows.append((teacher["neg_entropy"] - (teacher["pt"] * log_ps).sum(-1)) * tau2)
        if need_hard:
            rows.append(-log_ps.gather(-1, teacher["argmax"])[..., 0] * tau2)
        if need_soft and need_hard:
            per_row = torch.where(soft_mask[:, None], rows[0], rows[1])
        else:
            per_row = rows[0]
        kd = _wmean(per_row, w, wn)
    total = lam_align * align + lam_cycle * cycle + lam_kd * kd
    return total, align, cycle, kd


def aligner_loss(W, b, x, c, w):
    """The linear aligner's MSE (mean over coordinates and non-padding rows), per mapping (G,)."""
    import torch

    wn = w.sum(1).clamp_min(1.0)
    h = _affine(b, x, W.transpose(1, 2))
    align = _wmean(_sq(h, c), w, wn)
    return align, align


def zoomshot_step_flops(B: int, dv: int, d: int, K: int, inverse: bool = True, kd: bool = True) -> float:
    """Matmul FLOPs of one zoomshot training step (forward + backward) for one mapping."""
    f = 2 * B * dv * d * 2  # h: forward, grad W
    if inverse:
        f += 2 * B * dv * d * 2  # g(c): forward, grad U
        f += 2 * B * dv * d * 3 * 2  # g(h(v)), h(g(c)): forward, grad weight, grad input
        f += 2 * d * dv * d * 3 + 2 * d * d * d * 3  # W U, (W U − I) S: forward + two grads
    if kd:
        f += 2 * B * d * K  # teacher logits
        f += 2 * B * d * K * 2  # student logits: forward, grad input
    return float(f)
