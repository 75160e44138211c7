"""Closed-form maps from row statistics: ridge regression and whitened Procrustes (docs/method.md).

Both work on standardised source features and L2-normalised CLIP features, from the float64
population covariances in `RowStats`, so they depend on the rows only through sums. The ridge
penalty, unless given, is chosen over `LAMBDAS` by exact leave-one-out (`ridge_loo`).
"""
from __future__ import annotations

import numpy as np


def _standardised_cov(st):
    std = st.std_v()
    return st.cov_vv / std[:, None] / std[None, :], st.cov_vc / std[:, None]


# The ridge penalties tried (relative to the unit variance of the standardised features).
LAMBDAS = tuple(10.0 ** (k / 2) for k in range(-8, 7))  # 1e-4 .. 1e3


def ridge_loo(st, x, y, lambdas=LAMBDAS, T=None):
    """Exact leave-one-out scores of the forward ridge map per λ: the mean squared error (per
    coordinate) and, with a text classifier T (K, d), the agreement with the teacher (else None).

    x (m, dv) raw source rows and y (m, d) their normalised CLIP rows, among the rows `st` sums (a
    sample is enough). One eigendecomposition of Σ_xx serves every λ; the intercept is unpenalised
    and the standardisation fixed; the residual (y − ŷ) / (1 − leverage) is what refitting without
    the row gives (docs/method.md)."""
    import torch

    cxx, cxc = _standardised_cov(st)
    s, Q = torch.linalg.eigh(cxx)
    s = s.clamp_min(0)
    z = Q.T @ cxc
    a = ((x.double() - st.mean_v) / st.std_v()) @ Q
    yd = y.double()
    yc = yd - st.mean_c
    Td = None if T is None else T.double().to(yc.device)
    teacher = None if Td is None else (yd @ Td.T).argmax(1)
    mse, agree = [], []
    for lam in lambdas:
        inv = 1.0 / (s + lam)
        resid = yc - (a * inv) @ z
        lev = 1.0 / st.n + (a * a * inv).sum(1) / st.n
        loo = resid / (1.0 - lev)[:, None]
        mse.append(float(loo.square().mean()))
        if teacher is not None:  # the left-out prediction is y − loo; its direction decides the class
            agree.append(float((((yd - loo) @ Td.T).argmax(1) == teacher).double().mean()))
    return mse, (agree if teacher is not None else None)


def ridge_maps(st, lam: float):
    """(W, b, U, e) in float64: forward x -> ĉ and inverse ĉ -> x ridge regressions."""
    import torch

    def solve(cov, cross, penalty):  # ((cov + penalty I)⁻¹ cross)ᵀ
        eye = torch.eye(len(cov), dtype=cov.dtype, device=cov.device)
        return torch.linalg.solve(cov + penalty * eye, cross).T

    cxx, cxc = _standardised_cov(st)
    W = solve(cxx, cxc, lam)  # (d, dv)
    lam_c = lam * float(torch.diagonal(st.cov_cc).sum()) / cxc.shape[1]
    U = solve(st.cov_cc, cxc.T, max(lam_c, 1e-12))  # (dv, d)
    return W, st.mean_c.clone(), U, -U @ st.mean_c


def procrustes_map(st, floor: float = 1e-6):
    """(W, b) in float64: whitened orthogonal Procrustes (docs/method.md)."""
    import torch

    cxx, cxc = _standardised_cov(st)
    dv, d = cxc.shape
    k = min(dv, d)
    lx, Ex = torch.linalg.eigh(cxx)
    lx, Ex = lx.flip(0)[:k], Ex.flip(1)[:, :k]
    lx = lx.clamp_min(floor * float(lx[0]))
    P = Ex.T / lx.sqrt()[:, None]  # (k, dv)
    lc, Ec = torch.linalg.eigh(st.cov_cc)
    lc = lc.clamp_min(floor * float(lc.max()))
    c_white = (Ec / lc.sqrt()) @ Ec.T
    c_colour = (Ec * lc.sqrt()) @ Ec.T
    M = c_white @ cxc.T @ P.T  # (d, k) whitened cross-covariance
    A, _, Bt = torch.linalg.svd(M, full_matrices=False)
    R = A @ Bt
    W = c_colour @ R @ P
    return W, st.mean_c.clone()


def ridge_solution(c, st, sh):
    """(λ's record, (W, b, U, e)) for FitConfig c on the rows st summarises, solved once per training
    size and given penalty (a sweep's cells of one fraction share it) in sh.ridge_solutions. λ: as
    given, or by exact leave-one-out on the in-memory sample's training rows: the most agreement with
    the teacher on the classifier sh.T, ties broken by the least error (the least error without T)."""
    key = (st.n, c.ridge_lambda)
    if key not in sh.ridge_solutions:
        if c.ridge_lambda is not None:
            info = {"lambda": c.ridge_lambda, "chosen_by": "--ridge-lambda"}
        else:
            keep = sh.sample.ranks < st.n  # the sample's held-out rows (ranks >= st.n) left out
            mse, agree = ridge_loo(st, sh.sample.v[keep], sh.sample.c[keep], LAMBDAS, sh.T)
            if agree is None:
                best, rule = int(np.argmin(mse)), "leave-one-out error"
            else:
                best = max(range(len(LAMBDAS)), key=lambda i: (agree[i], -mse[i]))
                rule = "leave-one-out agreement"
            info = {"lambda": LAMBDAS[best], "chosen_by": rule, "loo_rows": int(keep.sum()),
                    "tried": list(LAMBDAS), "loo_mse": mse, "loo_agreement": agree}
        sh.ridge_solutions[key] = (info, ridge_maps(st, info["lambda"]))
    info, maps = sh.ridge_solutions[key]
    return dict(info), maps
