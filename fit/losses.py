"""The Zoom-shot losses and the linear aligner's, as small functions of one mapping pair.

x (B, dv) standardised source features, c (B, d) L2-normalised CLIP image features, T (K, d) the
normalised text classifier; h and g are `nn.Linear`s. The formulas, the per-coordinate mean of
every squared norm and the exact text-cycle term from T's moments are in docs/method.md. The text
term is computed whichever way is cheaper: through the moments (many classes) or by pushing the K
texts through g and h (few classes); both are exact.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def text_moments(T):
    """(S, t̄) of a (K, d) text classifier: S = TᵀT / K, t̄ = mean of the rows."""
    return (T.T @ T) / T.shape[0], T.mean(0)


def text_cycle(W, b, U, e, S, tbar):
    """mean_k ‖h(g(t_k)) − t_k‖², per coordinate, from the text moments (module docstring)."""
    M = W @ U - torch.eye(W.shape[0], dtype=W.dtype, device=W.device)
    r = W @ e + b
    return (((M @ S) * M).sum() + 2 * (r * (M @ tbar)).sum() + r.square().sum()) / W.shape[0]


def text_cycle_by_moments(K: int, d: int, dv: int) -> bool:
    """Whether the moments form of the text term costs fewer multiply-adds than pushing the K texts
    through g and h: d·dv·d + d³ (W U, M S) against 2·K·d·dv."""
    return d * dv * d + d ** 3 < 2 * K * d * dv


def student_logits(h, T):
    """Cosine logits of the mapped features against the vocabulary."""
    return F.normalize(h, dim=-1) @ T.T


def kd_soft(s, t, tau: float):
    """τ² KL(softmax(t/τ) ‖ softmax(s/τ)), mean over rows."""
    return tau * tau * F.kl_div(F.log_softmax(s / tau, -1), F.log_softmax(t / tau, -1),
                                log_target=True, reduction="batchmean")


def kd_hard(s, t, tau: float):
    """τ² CE(s/τ, argmax t), mean over rows."""
    return tau * tau * F.cross_entropy(s / tau, t.argmax(-1))


def kd_lm(s, t, tau: float):
    """τ² mean_k ((s_k − t_k)/τ)² = the MSE of the cosine logits, mean over rows and classes."""
    return F.mse_loss(s, t)


KD = {"soft": kd_soft, "hard": kd_hard, "lm": kd_lm}


def zoomshot_loss(h_map, g_map, x, c, text, cfg):
    """(total, {align, cycle, kd}) for one batch. text: (T, S, t̄) or None; cfg: λ's, τ and kd."""
    h = h_map(x)
    align = cycle = kd = h.new_zeros(())
    if cfg.lambda_align > 0 or cfg.lambda_cycle > 0:
        gc = g_map(c)
        align = F.mse_loss(h, c) + F.mse_loss(gc, x)
        if cfg.lambda_cycle > 0:
            T, S, tbar = text
            if text_cycle_by_moments(*T.shape, x.shape[1]):
                text_term = text_cycle(h_map.weight, h_map.bias, g_map.weight, g_map.bias, S, tbar)
            else:
                text_term = F.mse_loss(h_map(g_map(T)), T)
            cycle = F.mse_loss(g_map(h), x) + F.mse_loss(h_map(gc), c) + text_term
    if cfg.lambda_kd > 0:
        T = text[0]  # the teacher's logits c Tᵀ need no gradient: c and T are data
        kd = KD[cfg.kd](student_logits(h, T), c @ T.T, cfg.tau)
    total = cfg.lambda_align * align + cfg.lambda_cycle * cycle + cfg.lambda_kd * kd
    return total, {"align": align, "cycle": cycle, "kd": kd}


def aligner_loss(h_map, x, c):
    """The linear aligner's MSE of h(x) against its (scaled) target."""
    align = F.mse_loss(h_map(x), c)
    return align, {"align": align}


def zoomshot_step_flops(B: int, dv: int, d: int, K: int, inverse: bool = True, kd: bool = True) -> float:
    """Matmul FLOPs of one zoomshot training step (forward + backward) for one mapping."""
    f = 2 * B * dv * d * 2  # h: forward, grad W
    if inverse:
        f += 2 * B * dv * d * 2  # g(c): forward, grad U
        f += 2 * B * dv * d * 3 * 2  # g(h(v)), h(g(c)): forward, grad weight, grad input
        if text_cycle_by_moments(K, d, dv):
            f += 2 * d * dv * d * 3 + 2 * d * d * d * 3  # W U, (W U − I) S: forward + two grads
        else:
            f += 2 * K * dv * d * 3 * 2  # h(g(T)): forward, grad weight, grad input
    if kd:
        f += 2 * B * d * K  # teacher logits
        f += 2 * B * d * K * 2  # student logits: forward, grad input
    return float(f)
