"""Label-free validation and selection: held-out rows, the ridge penalty by leave-one-out, early
stopping on held-out agreement, and the schedule set from the row count."""
import numpy as np
import pytest
import torch

from zoomshot.cache import open_cache
from zoomshot.fit import FitConfig, fit_cache, fit_configs
from zoomshot.fit.closed_form import ridge_loo
from zoomshot.fit.config import schedule
from zoomshot.fit.data import Moments, plan_rows, resolve_encoders
from zoomshot.synth import write_synth_world

WORLD = dict(rows=2000, test_rows=500, classes=12, dv=40, d=24, seed=7)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return write_synth_world(tmp_path_factory.mktemp("select") / "w", **WORLD)


def _plan(path, seed, fractions=(0.3, 1.0), holdout=0.05):
    with open_cache(path) as c:
        src, tgt = resolve_encoders(c, None, None)
        return plan_rows(c, src, tgt, fractions, seed, bytes_per_row=256, memory_budget=1 << 30,
                         holdout=holdout)


def test_held_out_rows_are_disjoint_from_trained_rows_and_fixed_by_the_seed(world):
    a, same, other = _plan(world["train"], 0), _plan(world["train"], 0), _plan(world["train"], 1)
    assert a.holdout == 256  # 5% of 2000 is 100; at least 256
    held = set(a.rows[a.ranks >= a.holdout_from])
    assert len(held) == 256
    for size in a.sizes:  # every fraction's training rows
        assert not held & set(a.rows[a.ranks < size])
    assert held == set(same.rows[same.ranks >= same.holdout_from])
    assert held != set(other.rows[other.ranks >= other.holdout_from])
    assert _plan(world["train"], 0, holdout=0.0).holdout == 0
    # a fit's statistics come from its training rows only: the held-out rows change nothing
    m = fit_cache(world["train"], FitConfig(method="ridge", ridge_lambda=1e-2))
    with open_cache(world["train"]) as c:
        v = c.image("synth_vision")
    train_rows = sorted(set(range(WORLD["rows"])) - held)
    np.testing.assert_allclose(m.mean, v[train_rows].mean(0), rtol=1e-4, atol=1e-4)
    assert m.run["holdout"]["final"]["rows"] == 256


def _stats(x, y):
    chunk = type("C", (), {})()
    chunk.v, chunk.c, chunk.ranks = x.float(), y.float(), torch.zeros(len(x), dtype=torch.long)
    mom = Moments([len(x)], x.shape[1], y.shape[1], full=True, device="cpu")
    mom.add(chunk)
    return mom.stats(len(x))


def test_leave_one_out_ridge_equals_brute_force_refits():
    g = torch.Generator().manual_seed(0)
    n, p, d = 40, 6, 3
    x = torch.randn(n, p, generator=g) * torch.linspace(0.5, 3, p) + 1.0
    y = x[:, :d] @ torch.randn(d, d, generator=g) + 0.5 * torch.randn(n, d, generator=g)
    x, y = x.float().double(), y.float().double()  # values exact in float32, as the moments see them
    st = _stats(x, y)
    lambdas = (1e-3, 0.1, 1.0, 10.0)
    T = torch.randn(5, d, generator=g, dtype=torch.float64)
    ours, agree = ridge_loo(st, x, y, lambdas, T)
    xs = (x - st.mean_v) / st.std_v()  # standardisation fixed, as the fit has it
    for lam, score, share in zip(lambdas, ours, agree):
        errs, hits = [], []
        for i in range(n):
            keep = torch.arange(n) != i
            xk, yk = xs[keep], y[keep]
            xm, ym = xk.mean(0), yk.mean(0)
            A = (xk - xm).T @ (xk - xm) + n * lam * torch.eye(p, dtype=torch.float64)
            W = torch.linalg.solve(A, (xk - xm).T @ (yk - ym))
            pred = ym + (xs[i] - xm) @ W
            errs.append(((y[i] - pred) ** 2).mean())
            hits.append(int((pred @ T.T).argmax() == (y[i] @ T.T).argmax()))
        assert score == pytest.approx(float(torch.stack(errs).mean()), rel=1e-6)
        assert share == pytest.approx(sum(hits) / n)
    assert len(set(np.round(ours, 12))) == len(lambdas)


def test_the_fit_records_the_penalties_it_tried(world):
    m = fit_cache(world["train"], FitConfig(method="ridge"))
    r = m.run["ridge"]
    agree, mse = r["loo_agreement"], r["loo_mse"]
    best = max(range(len(agree)), key=lambda i: (agree[i], -mse[i]))
    assert r["chosen_by"] == "leave-one-out agreement" and r["lambda"] == r["tried"][best]
    assert len(agree) == len(mse) == len(r["tried"]) and all(0.0 <= a <= 1.0 for a in agree)
    z = fit_cache(world["train"], FitConfig(epochs=1))
    assert z.run["ridge_start"]["lambda"] == r["lambda"]
    fixed = fit_cache(world["train"], FitConfig(method="ridge", ridge_lambda=0.5))
    assert fixed.run["ridge"] == {"lambda": 0.5, "chosen_by": "--ridge-lambda"}


def test_early_stopping_returns_the_start_when_training_only_hurts(world):
    # lr 5 steps each weight by five times its size in the ridge solution: every epoch leaves the
    # start for worse, and the fit must hand back the start itself.
    cfgs = [FitConfig(method="ridge"), FitConfig(lr=5.0, epochs=3, batch_size=64)]
    ridge, zs = fit_configs(world["train"], cfgs)
    hist = zs.run["history"]
    assert all(h["holdout"]["agreement"] < hist[0]["holdout"]["agreement"] for h in hist[1:])
    assert zs.run["schedule"]["best_epoch"] == 0
    np.testing.assert_allclose(zs.W, ridge.W, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(zs.b, ridge.b, rtol=1e-5, atol=1e-6)
    assert zs.run["holdout"]["final"]["agreement"] == pytest.approx(hist[0]["holdout"]["agreement"], abs=1e-6)
    # without a held-out share there is nothing to stop on: the last epoch is kept
    last = fit_cache(world["train"], FitConfig(lr=5.0, epochs=3, batch_size=64, holdout=0))
    assert last.run["schedule"]["best_epoch"] == 3 and not np.allclose(last.W, ridge.W, atol=1e-3)


def test_each_tensor_steps_relative_to_its_size_in_the_ridge_solution(world):
    # One full-batch step at the peak rate. Adam's first step is lr_tensor * g / (|g| + eps), so the
    # largest entry moved is the tensor's own rate: lr times its RMS in the ridge solution.
    lr, seen = 0.1, []
    m = fit_cache(world["train"], FitConfig(lr=lr, epochs=1, batch_size=4096, holdout=0),
                  on_state=lambda ep, s: seen.append(s))
    start, after = seen
    ridge = fit_cache(world["train"], FitConfig(method="ridge", holdout=0))
    rms = {k: float(np.sqrt(np.mean(getattr(ridge, k).astype(np.float64) ** 2))) for k in "WbUe"}
    scale = m.run["step_scale"]
    assert scale["W"] == pytest.approx(rms["W"], rel=1e-4) and scale["U"] == pytest.approx(rms["U"], rel=1e-4)
    assert scale["b"] == pytest.approx(max(rms["b"], rms["W"]), rel=1e-4)
    assert 5 * scale["W"] < scale["b"]  # the tensors' sizes differ: one absolute rate could not fit both
    for k in "WbUe":
        moved = float(np.abs(getattr(after, k).astype(np.float64) - getattr(start, k)).max())
        assert moved == pytest.approx(lr * scale[k], rel=1e-2), k


@pytest.mark.parametrize("average", [True, False])
def test_an_epochs_state_is_the_mean_of_its_steps_and_training_goes_on_from_the_last(average):
    from types import SimpleNamespace

    from zoomshot.fit.trainer import cosine_lr, train

    # loss -p: each SGD step adds that step's learning rate to p, so every iterate is known
    p = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    cfg = SimpleNamespace(optimizer="sgd", lr=1.0, momentum=0.0, weight_decay=0.0, epochs=2)
    seen = []
    train([{"params": [p], "scale": 1.0, "average": average}], lambda v, c: (-p.sum(), {}),
          lambda epoch: [(None, None)] * 3, cfg, 6, validate=None, on_epoch=lambda rec: seen.append(p.item()),
          bar=SimpleNamespace(update=lambda n: None))
    iterates = np.cumsum([cosine_lr(s, 6, 1.0) for s in range(6)])
    states = [iterates[:3].mean(), iterates[3:].mean()] if average else [iterates[2], iterates[5]]
    assert seen == pytest.approx([0.0, *states])
    assert p.item() == pytest.approx(states[-1])  # nothing held out: the last epoch's state


def _toy_train(groups, cfg, loss_fn, steps=1, validate=None):
    from types import SimpleNamespace

    from zoomshot.fit.trainer import train

    return train(groups, loss_fn, lambda epoch: [(None, None)] * steps, cfg, steps * cfg.epochs,
                 validate=validate, on_epoch=lambda rec: None, bar=SimpleNamespace(update=lambda n: None))


def test_a_later_epoch_must_beat_the_start_by_over_one_standard_error():
    from types import SimpleNamespace

    # 100 held-out rows, 16 of them changing between the start and each epoch (SE of the gain: 4):
    # epoch 1 gains exactly 4 rows (not kept), epoch 2 gains 6 (kept; two SE, 8, would not)
    start = np.arange(100) < 50
    epochs = [start.copy(), start.copy()]
    epochs[0][50:60], epochs[0][:6] = True, False
    epochs[1][50:61], epochs[1][:5] = True, False
    seq = iter([start, *epochs])
    p = torch.nn.Parameter(torch.zeros(1))
    cfg = SimpleNamespace(optimizer="sgd", lr=0.0, momentum=0.0, weight_decay=0.0, epochs=2)
    res = _toy_train([{"params": [p], "scale": 1.0, "average": True}], cfg, lambda v, c: (p.sum(), {}),
                     validate=lambda: {"hits": torch.from_numpy(next(seq))})
    assert res.best_epoch == 2


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_weight_decay_shrinks_every_tensor_alike_whatever_its_scale(optimizer):
    from types import SimpleNamespace

    # no gradient: a step is the decay alone, lr x wd of each weight whatever the group's scale
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    cfg = SimpleNamespace(optimizer=optimizer, lr=0.1, momentum=0.0, weight_decay=0.5, epochs=1)
    groups = [{"params": [a], "scale": 1e-3, "average": False},
              {"params": [b], "scale": 2.0, "average": False}]
    _toy_train(groups, cfg, lambda v, c: ((a + b).sum() * 0.0, {}))
    torch.testing.assert_close(a.detach(), torch.full((3,), 1 - 0.1 * 0.5))
    torch.testing.assert_close(b.detach(), torch.full((3,), 1 - 0.1 * 0.5))


def test_zoomshot_averages_its_epochs_at_relative_rates_and_the_aligner_does_not(world, monkeypatch):
    import zoomshot.fit.iterative as iterative

    seen = []
    real = iterative.train
    monkeypatch.setattr(iterative, "train",
                        lambda groups, *a, **k: seen.append(groups) or real(groups, *a, **k))
    zs = fit_cache(world["train"], FitConfig(epochs=1))
    fit_cache(world["train"], FitConfig(method="linear-aligner", epochs=1))
    scale = zs.run["step_scale"]
    assert [(g["scale"], g["average"]) for g in seen[0]] == [(scale[k], True) for k in "WbUe"]
    assert [(g["scale"], g["average"]) for g in seen[1]] == [(1.0, False)]


def test_a_random_start_steps_relative_to_the_ridge_solution_too(world):
    ridge = fit_cache(world["train"], FitConfig(method="ridge", holdout=0))
    m = fit_cache(world["train"], FitConfig(init="random", epochs=2, holdout=0))
    assert m.run["step_scale"]["W"] == pytest.approx(float(np.sqrt(np.mean(ridge.W.astype(np.float64) ** 2))),
                                                     rel=1e-4)
    assert "ridge_start" not in m.run and np.isfinite(m.W).all()


@pytest.mark.parametrize("holdout", [0.05, 0.0])
def test_on_state_sees_every_epoch_and_the_kept_one_is_the_returned_mapping(world, holdout):
    seen = []
    m = fit_cache(world["train"], FitConfig(epochs=4, holdout=holdout), on_state=lambda ep, s: seen.append((ep, s)))
    assert [ep for ep, _ in seen] == [0, 1, 2, 3, 4]
    kept = m.run["schedule"]["best_epoch"]
    if holdout == 0:  # nothing to stop on: the last epoch is kept
        assert kept == 4
    state = seen[kept][1]
    for name in ("W", "b", "U", "e", "mean", "std"):
        np.testing.assert_array_equal(getattr(state, name), getattr(m, name))
    assert not np.allclose(seen[0][1].W, seen[4][1].W)  # the states differ: each is its own epoch's
    assert state.run["method"] == "zoomshot" and not state.mismatch(_encoders(world["train"]))


def _encoders(path):
    with open_cache(path) as c:
        return c.encoders


@pytest.mark.parametrize("n, batch, epochs", [(2_000, 64, 19), (1_280_000, 4096, 5), (300, 32, 60)])
def test_the_schedule_gives_enough_steps_at_any_size(n, batch, epochs):
    b, e = schedule(n, None, None)
    assert (b, e) == (batch, epochs)
    assert -(-n // b) * e >= 600
    assert schedule(n, 100, 3) == (100, 3)  # given values are kept
