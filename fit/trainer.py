"""The training loop of the iterative methods: one mapping, torch.optim, a cosine schedule.

    for epoch: for batch: lr = cosine(step); loss = loss_fn(batch); backward; optimizer step
    after each epoch: an averaged group's state is the mean of the epoch's steps (Polyak averaging);
    mean loss terms, held-out metrics of that state, keep the best state (early stopping)

`train` knows nothing of the method: it gets parameter groups, each with a learning-rate scale and
whether its epoch state is averaged (zoomshot's relative step and averaging, and the early-stopping
rule: docs/method.md). A loss that turns NaN/Inf stops the fit with a ZsError; one that rises a
hundredfold is a warning in the record.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import torch

from zoomshot.errors import ZsError

RISE_WARN = 100.0  # an epoch's mean loss this many times the first step's: the fit diverged


@dataclass
class TrainResult:
    history: list = field(default_factory=list)  # per epoch: loss terms, lr, steps, held-out metrics
    best_epoch: int = 0  # the epoch whose state was kept (0: the start)
    steps: int = 0
    warnings: list = field(default_factory=list)


def cosine_lr(step: int, total: int, peak: float) -> float:
    """Cosine from peak to 0 over total steps."""
    return peak * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / max(total, 1)))


def _better(cand, start) -> bool:
    """Per-row held-out hits cand beat those of the start by over one standard error of the paired
    difference (the margin: docs/method.md)."""
    gain = float(cand.float().sum() - start.float().sum())
    return gain > math.sqrt(float((cand != start).sum()))


def _load(params, values) -> list:
    """Copy values into params in place; returns what the params held."""
    with torch.no_grad():
        held = [p.detach().clone() for p in params]
        for p, v in zip(params, values):
            p.copy_(v)
    return held


def _add_terms(sums: dict, loss, terms: dict, epoch: int, lr: float) -> float:
    """Add a step's loss and terms to the epoch's sums; returns the loss (NaN/Inf: a ZsError)."""
    value = float(loss.detach())
    if not math.isfinite(value):
        raise ZsError(f"the training loss became NaN/Inf in epoch {epoch}; lower the learning "
                      f"rate (--lr, now {lr:g}) or check the features (`zs cache info`)")
    sums["loss"] = sums.get("loss", 0.0) + value
    for k, t in terms.items():
        sums[k] = sums.get(k, 0.0) + float(t.detach())
    return value


def _optimizer(groups, cfg):
    """AdamW (decoupled weight decay) or SGD (momentum, L2 decay) over the groups, each group's decay
    divided by its scale: the decay per step stays lr × wd."""
    groups = [{**g, "weight_decay": cfg.weight_decay / g["scale"]} for g in groups]
    if cfg.optimizer == "adam":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)


def train(groups, loss_fn, batches, cfg, total_steps: int, validate, on_epoch, bar) -> TrainResult:
    """Train the parameters of `groups` in place for cfg.epochs epochs; returns what happened.

    groups: torch parameter groups [{"params": [...], "scale": s, "average": a}], each stepped at
    lr × s (its weight decay divided by s, so the decay per step stays lr × wd), its epoch state the
    mean of the epoch's steps when a (else the last step's);
    loss_fn(v, c) -> (total, {term: value}); batches(epoch) -> iterable of (v, c); validate() ->
    held-out metrics or None, with per-row "hits" when the best state is to be kept (early
    stopping); on_epoch(record) at the start and after each epoch; bar: a tqdm bar advanced per step.
    Training goes on from the last step's weights; the weights left in place are the kept state."""
    params = [p for g in groups for p in g["params"]]
    averaged = [p for g in groups if g["average"] for p in g["params"]]
    opt = _optimizer(groups, cfg)
    res = TrainResult()
    start = validate() if validate else None
    best = first_hits = (start or {}).pop("hits", None)
    keep_best = best is not None
    best_state = [p.detach().clone() for p in params] if keep_best else None
    res.history.append({"epoch": 0, "holdout": start})
    on_epoch(res.history[0])
    first = None
    for epoch in range(1, cfg.epochs + 1):
        sums: dict[str, float] = {}
        nb, mean_w = 0, [torch.zeros_like(p) for p in averaged]
        for v, c in batches(epoch):
            lr = cosine_lr(res.steps, total_steps, cfg.lr)
            for group in opt.param_groups:
                group["lr"] = lr * group["scale"]
            loss, terms = loss_fn(v, c)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            value = _add_terms(sums, loss, terms, epoch, cfg.lr)
            first = value if first is None else first
            nb += 1
            with torch.no_grad():
                for m, p in zip(mean_w, averaged):
                    m.add_(p)
            res.steps += 1
            bar.update(1)
        last = _load(averaged, [m / nb for m in mean_w] if nb else averaged)  # the epoch's state
        rec = {"epoch": epoch, **{k: s / max(nb, 1) for k, s in sums.items()}, "steps": res.steps}
        rec["holdout"] = validate() if validate else None
        hits = (rec["holdout"] or {}).pop("hits", None)
        res.history.append(rec)
        if first and rec.get("loss", 0.0) > RISE_WARN * max(first, 1e-30) and not res.warnings:
            res.warnings.append(f"the training loss rose from {first:.3g} to {rec['loss']:.3g} by epoch "
                                f"{epoch}: the fit diverged; lower the learning rate (--lr, now {cfg.lr:g})")
        on_epoch(rec)
        if keep_best and _better(hits, first_hits) and int(hits.sum()) > int(best.sum()):
            best, best_state, res.best_epoch = hits, [p.detach().clone() for p in params], epoch
        if epoch < cfg.epochs:
            _load(averaged, last)
    if keep_best:
        _load(params, best_state)
    else:
        res.best_epoch = cfg.epochs
    return res


# Below this many multiply-adds per step, one thread beats a team: tiny matmuls gain nothing from
# splitting, and a second thread that waits for a busy core makes every op wait with it.
SMALL_STEP_MACS = 1 << 22


@contextlib.contextmanager
def threads_for(device, step_macs: int):
    """Run small CPU problems single-threaded (torch's thread count is process-wide; restored after)."""
    n = torch.get_num_threads()
    if device.type == "cpu" and step_macs < SMALL_STEP_MACS:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)
