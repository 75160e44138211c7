"""The iterative methods' set-up around the training loop: initial maps, inputs, loss, validation.

zoomshot starts from the ridge solution or small random weights and trains on standardised features,
each tensor's step relative to its size in the ridge solution (docs/method.md); the linear aligner
(Text-to-Concept) scales each side to a per-entry variance, starts from nn.Linear's init and trains
on raw features, its scales folded into the standardised form after.
"""
from __future__ import annotations

import math

import torch

from zoomshot.progress import progress_bar

from .closed_form import ridge_solution
from .data import epoch_batches
from .holdout import holdout_metrics
from .losses import aligner_loss, text_moments, zoomshot_loss
from .trainer import threads_for, train


def _linear(W, b):
    lin = torch.nn.Linear(W.shape[1], W.shape[0])
    with torch.no_grad():
        lin.weight.copy_(W)
        lin.bias.copy_(b)
    return lin


def _zoomshot_maps(c, st, sh, extra: dict):
    """(h, g) as nn.Linear on the device, at the ridge solution or small random weights, and the
    learning-rate scale of each of their parameters: its RMS in the ridge solution."""
    gen = torch.Generator().manual_seed(int(c.seed))
    info, ridge = ridge_solution(c, st, sh)
    # Adam's steps are about lr per entry whatever the weights' size, and the ridge solution's W
    # ranges over 20x across worlds (3e-4 for a wide source and a narrow teacher cone), U is ~1
    W_rms, b_rms, U_rms, e_rms = (float(t.square().mean().sqrt()) for t in ridge)
    scales = [W_rms, max(b_rms, W_rms), U_rms, max(e_rms, U_rms)]  # a zero bias still moves
    extra["step_scale"] = {**dict(zip(("W", "b", "U", "e"), scales)), "ridge_lambda": info["lambda"]}
    if c.init == "ridge":
        extra["ridge_start"] = info
        W, b, U, e = (t.float().cpu() for t in ridge)
    else:
        W = torch.randn(sh.d, sh.dv, generator=gen) * (0.01 / sh.dv ** 0.5)
        U = torch.randn(sh.dv, sh.d, generator=gen) * (0.01 / sh.d ** 0.5)
        b, e = st.mean_c.float().cpu().clone(), torch.zeros(sh.dv)
    return _linear(W, b).to(sh.device), _linear(U, e).to(sh.device), scales


def _aligner_map(c, st, sh, extra: dict):
    s_in = (c.la_variance / st.entry_variance("v")) ** 0.5
    s_out = (c.la_variance / st.entry_variance("c")) ** 0.5
    extra["scales"] = {"source": s_in, "target": s_out}
    gen = torch.Generator().manual_seed(int(c.seed))
    bound = 1.0 / sh.dv ** 0.5
    W = (torch.rand(sh.d, sh.dv, generator=gen) * 2 - 1) * bound
    b = (torch.rand(sh.d, generator=gen) * 2 - 1) * bound
    return _linear(W, b).to(sh.device), s_in, s_out


def train_config(c, st, sh, progress=None, bar: bool = False, on_state=None):
    """Train one iterative configuration. Returns (the scheduled config, (W, b, U, e) in the
    standardised form, run-record extras). on_state(epoch, config, (W, b, U, e)) is called with
    the start and each epoch's state."""

    c = c.scheduled(st.n)
    extra: dict = {}
    mean, std = st.mean_v.float().to(sh.device), st.std_v().float().to(sh.device)
    if c.method == "zoomshot":
        h, g, scales = _zoomshot_maps(c, st, sh, extra)
        text = None if sh.T is None else (sh.T, *text_moments(sh.T))
        groups = [{"params": [p], "scale": s, "average": True}
                  for p, s in zip([*h.parameters(), *g.parameters()], scales)]
        loss_fn = lambda v, cc: zoomshot_loss(h, g, (v - mean) / std, cc, text, c)  # noqa: E731
        predict = lambda v: h((v - mean) / std)  # noqa: E731
    else:
        h, s_in, s_out = _aligner_map(c, st, sh, extra)
        groups = [{"params": list(h.parameters()), "scale": 1.0, "average": False}]  # the published recipe
        loss_fn = lambda v, cc: aligner_loss(h, v * s_in, cc * s_out)  # noqa: E731
        predict = lambda v: h(v * s_in) / s_out  # noqa: E731
    validate = None
    if sh.held is not None:  # zoomshot keeps its best epoch (per-row hits); the aligner its last
        hits = c.method == "zoomshot"
        validate = lambda: holdout_metrics(predict(sh.held.v), sh.held.c, sh.T, hits=hits)  # noqa: E731
    per_epoch = math.ceil(st.n / c.batch_size)
    total = per_epoch * c.epochs

    def maps():  # the current state in the standardised form (W, b, U, e)
        W, b = h.weight.detach().double().cpu(), h.bias.detach().double().cpu()
        if c.method == "linear-aligner":  # trained on (s_in · v) -> (s_out · ĉ): fold the scales back
            W_raw, b_raw = W * (s_in / s_out), b / s_out
            return W_raw * std.double().cpu()[None, :], b_raw + W_raw @ mean.double().cpu(), None, None
        return W, b, g.weight.detach().double().cpu(), g.bias.detach().double().cpu()

    def on_epoch(rec):
        if progress is not None:
            progress({**rec, "epochs": c.epochs})
        if on_state is not None:
            on_state(rec["epoch"], c, maps())
    pbar = progress_bar(total, f"fit {c.method}", unit="step", enabled=bar, delay=2)  # shown after 2 s
    with pbar, threads_for(sh.device, c.batch_size * sh.dv * sh.d):
        res = train(groups, loss_fn, lambda ep: epoch_batches(sh.feed, st.n, c.batch_size, c.seed, ep),
                    c, total, validate=validate, on_epoch=on_epoch, bar=pbar)
    extra.update(history=res.history, warnings=res.warnings, diverged=bool(res.warnings),
                 schedule={"batch_size": c.batch_size, "epochs": c.epochs, "steps_per_epoch": per_epoch,
                           "steps": res.steps, "best_epoch": res.best_epoch})
    return c, maps(), extra

