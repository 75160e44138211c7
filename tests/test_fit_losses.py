"""Each loss of the trainer against a plain PyTorch formula of the same thing, and --kd lm's gradient
against autograd of its plain formula."""
import pytest
import torch
import torch.nn.functional as F

from zoomshot.fit.losses import (aligner_loss, kd_hard, kd_lm, kd_soft, student_logits, text_cycle,
                                 text_cycle_by_moments, text_moments, zoomshot_loss)

torch.manual_seed(0)
B, DV, D, K, TAU = 16, 10, 6, 7, 0.07


def _data(k=K):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, DV, generator=g, dtype=torch.float64)
    c = F.normalize(torch.randn(B, D, generator=g, dtype=torch.float64), dim=1)
    T = F.normalize(torch.randn(k, D, generator=g, dtype=torch.float64), dim=1)
    h = torch.nn.Linear(DV, D).double()
    gm = torch.nn.Linear(D, DV).double()
    return x, c, T, h, gm


def _plain_rows(h_out):
    """n(h) row by row, the slow obvious way."""
    return torch.stack([r / r.norm() for r in h_out])


def test_kd_variants_equal_their_plain_formulas():
    x, c, T, h, _ = _data()
    s = student_logits(h(x), T)
    t = c @ T.T
    ps, pt = torch.softmax(s / TAU, 1), torch.softmax(t / TAU, 1)
    plain_soft = TAU ** 2 * (pt * (pt.log() - ps.log())).sum(1).mean()
    plain_hard = TAU ** 2 * -ps.log()[torch.arange(B), t.argmax(1)].mean()
    torch.testing.assert_close(kd_soft(s, t, TAU), plain_soft)
    torch.testing.assert_close(kd_hard(s, t, TAU), plain_hard)


def test_kd_lm_gradient_matches_autograd_of_the_plain_formula():
    x, c, T, h, _ = _data()
    t = c @ T.T
    loss = kd_lm(student_logits(h(x), T), t, TAU)
    loss.backward()
    ours = h.weight.grad.clone()
    h.weight.grad = None
    # plain: τ² · mean over rows and classes of the squared difference of the logits s/τ and t/τ
    s_plain = (_plain_rows(h(x)) @ T.T) / TAU
    plain = TAU ** 2 * ((s_plain - t / TAU) ** 2).sum() / (B * K)
    plain.backward()
    torch.testing.assert_close(loss, plain)
    torch.testing.assert_close(ours, h.weight.grad)
    assert ours.abs().max() > 0


def test_text_cycle_from_moments_equals_pushing_every_text_through():
    _, _, T, h, gm = _data()
    S, tbar = text_moments(T)
    ours = text_cycle(h.weight, h.bias, gm.weight, gm.bias, S, tbar)
    plain = F.mse_loss(h(gm(T)), T)
    torch.testing.assert_close(ours, plain)


@pytest.mark.parametrize("k, by_moments", [(K, True), (2, False)])  # the text term either way
@pytest.mark.parametrize("kd", ["soft", "hard", "lm"])
def test_zoomshot_loss_is_the_weighted_sum_of_plain_terms(kd, k, by_moments):
    from types import SimpleNamespace

    assert text_cycle_by_moments(k, D, DV) is by_moments
    x, c, T, h, gm = _data(k)
    cfg = SimpleNamespace(lambda_align=1.0, lambda_cycle=0.1, lambda_kd=1000.0, tau=TAU, kd=kd)
    total, terms = zoomshot_loss(h, gm, x, c, (T, *text_moments(T)), cfg)
    mse = torch.nn.MSELoss()
    align = mse(h(x), c) + mse(gm(c), x)
    cycle = mse(gm(h(x)), x) + mse(h(gm(c)), c) + mse(h(gm(T)), T)
    kd_fn = {"soft": kd_soft, "hard": kd_hard, "lm": kd_lm}[kd]
    kd_val = kd_fn(_plain_rows(h(x)) @ T.T, c @ T.T, TAU)
    torch.testing.assert_close(terms["align"], align)
    torch.testing.assert_close(terms["cycle"], cycle)
    torch.testing.assert_close(terms["kd"], kd_val)
    torch.testing.assert_close(total, align + 0.1 * cycle + 1000.0 * kd_val)


def test_aligner_loss_is_mse():
    x, c, _, h, _ = _data()
    total, terms = aligner_loss(h, x, c)
    torch.testing.assert_close(total, ((h(x) - c) ** 2).mean())
