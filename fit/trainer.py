"""The trainer for the iterative methods: G mappings trained together as one stacked job.

Each mapping (a `Job`) keeps its own rows (rank < size), epochs, learning rate, loss weights and
random stream (a generator seeded from its seed alone), so training it in a stack gives what
training it alone gives, up to float rounding. Every step gathers each active job's batch from
the chunk on the device by index (no collation; jobs that draw the same batch share it and the
teacher's targets for it), computes all jobs' losses over the stacked weights (one batched
computation on a GPU; job by job over views of the stacks on a CPU, where that is faster: see
step_losses), and updates the stacked weights with a hand-written, stacked SGD or Adam. Jobs whose epochs are done drop out of the stack; a job that
has fewer rows in a chunk than another idles for the steps it lacks; jobs whose batches differ in
width (a last, partial batch) step in separate stacks, so nothing is padded.

Schedule: cosine from lr to 0 over the job's steps. A job's loss history is its mean loss terms
per epoch. A non-finite loss stops the fit with a ZsError naming the job and the epoch.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from zoomshot.errors import ZsError

from .losses import TERMS, aligner_loss, text_moments, zoomshot_losses

NAN_CHECK_STEPS = 32


@dataclass
class Job:
    """One mapping to train. x = (v − in_shift) · in_scale is its input, c · out_scale its target."""

    name: str
    method: str  # "zoomshot" | "linear-aligner"
    size: int  # trains on rows with rank < size
    epochs: int
    lr: float
    momentum: float
    weight_decay: float
    seed: int
    in_shift: object  # (dv,) tensor
    in_scale: object  # (dv,) tensor
    out_scale: float
    W: object  # (d, dv) initial
    b: object
    U: object = None  # (dv, d) initial, zoomshot only
    e: object = None
    lambda_align: float = 1.0
    lambda_cycle: float = 0.0
    lambda_kd: float = 0.0
    tau: float = 1.0
    kd: str = "soft"
    history: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)  # method details for the run record
    steps_done: int = 0
    total_steps: int = 0
    finished_s: float = 0.0


class StackedOptimizer:
    """SGD with momentum (torch semantics, L2 weight decay) or Adam (decoupled weight decay),
    over tensors whose first dimension is the job; `step(active, lrs)` updates the active jobs only."""

    def __init__(self, kind: str, params: list, momentum, weight_decay, betas=(0.9, 0.999), eps=1e-8):
        import torch

        self.kind, self.params = kind, params
        self.momentum, self.wd = momentum, weight_decay  # (G,) tensors
        self.betas, self.eps = betas, eps
        self.state = [dict(m=torch.zeros_like(p), v=torch.zeros_like(p) if kind == "adam" else None)
                      for p in params]
        self.t = torch.zeros(params[0].shape[0], dtype=torch.float64)

    def step(self, active, lrs) -> None:
        import torch

        full = active.numel() == self.params[0].shape[0]
        self.t[active.cpu()] += 1
        for p, st in zip(self.params, self.state):
            g = p.grad if full else p.grad.index_select(0, active)
            pa = p.detach() if full else p.detach().index_select(0, active)
            shape = (-1,) + (1,) * (p.dim() - 1)
            lr = lrs.view(shape).to(p.dtype)
            wd = self.wd.index_select(0, active).view(shape).to(p.dtype)
            m = st["m"] if full else st["m"].index_select(0, active)
            if self.kind == "sgd":
                mom = self.momentum.index_select(0, active).view(shape).to(p.dtype)
                m = mom * m + (g + wd * pa)  # the buffer starts at 0, so step 1 gives torch's buf = d_p
                new_p = pa - lr * m
            else:
                b1, b2 = self.betas
                v = st["v"] if full else st["v"].index_select(0, active)
                m = b1 * m + (1 - b1) * g
                v = b2 * v + (1 - b2) * g * g
                t = self.t.index_select(0, active.cpu()).to(p.device)
                bc1 = (1 - b1 ** t).view(shape).to(p.dtype)
                bc2 = (1 - b2 ** t).view(shape).to(p.dtype)
                new_p = pa * (1 - lr * wd) - lr * (m / bc1) / ((v / bc2).sqrt() + self.eps)
                if full:
                    st["v"] = v
                else:
                    st["v"].index_copy_(0, active, v)
            if full:
                st["m"] = m
                p.data.copy_(new_p)
            else:
                st["m"].index_copy_(0, active, m)
                p.data.index_copy_(0, active, new_p)
            p.grad = None


def _cosine(lr: float, t: int, total: int) -> float:
    return lr * 0.5 * (1.0 + math.cos(math.pi * min(t, total) / max(total, 1)))


def train_jobs(feed, jobs: list[Job], batch_size: int, optimizer: str, T=None, device="cpu",
               chunk_order_seed: int = 0, on_epoch=None, on_done=None) -> list[Job]:
    """Train `jobs` (same method family, batch size and optimizer) together over `feed`'s chunks.

    T: (K, d) text classifier, needed when a zoomshot job has λ_kd or λ_cycle > 0.
    on_epoch(job, record) after each of a job's epochs; on_done(job) when a job is finished.
    """
    import numpy as np
    import torch

    G = len(jobs)
    B = int(batch_size)
    dev = torch.device(device)
    zoom = jobs[0].method == "zoomshot"
    need_inverse = zoom and any(j.lambda_align > 0 or j.lambda_cycle > 0 for j in jobs)
    need_kd = zoom and any(j.lambda_kd > 0 for j in jobs)
    need_soft = need_kd and any(j.kd == "soft" and j.lambda_kd > 0 for j in jobs)
    need_hard = need_kd and any(j.kd == "hard" and j.lambda_kd > 0 for j in jobs)
    if zoom and (need_kd or need_inverse) and T is None:
        raise ZsError("internal: zoomshot losses need the text classifier")
    S = tbar = None
    if T is not None:
        T = T.to(dev, torch.float32)
        S, tbar = text_moments(T)

    def stack(attr):
        return torch.stack([getattr(j, attr).to(dev, torch.float32) for j in jobs]).contiguous()

    W = stack("W").requires_grad_()
    b = stack("b").requires_grad_()
    params = [W, b]
    if need_inverse:
        U = stack("U").requires_grad_()
        e = stack("e").requires_grad_()
        params += [U, e]
    shift, scale = stack("in_shift"), stack("in_scale")
    out_scale = torch.tensor([j.out_scale for j in jobs], device=dev)
    vec = lambda xs: torch.tensor(xs, device=dev, dtype=torch.float32)  # noqa: E731
    lam_a, lam_c, lam_k = (vec([getattr(j, n) for j in jobs])
                           for n in ("lambda_align", "lambda_cycle", "lambda_kd"))
    tau = vec([j.tau for j in jobs])
    soft_mask = torch.tensor([j.kd == "soft" for j in jobs], device=dev)
    opt = StackedOptimizer(optimizer, params, vec([j.momentum for j in jobs]),
                           vec([j.weight_decay for j in jobs]))
    gens = [torch.Generator().manual_seed(int(j.seed)) for j in jobs]

    # Steps per job: per epoch, the sum over chunks of ceil(rows of the job in the chunk / B).
    sizes_t = torch.tensor([j.size for j in jobs])
    per_chunk = np.array([[math.ceil(int(n) / B) for n in counts]
                          for counts in _rows_per_chunk(feed, sizes_t)])  # (chunks, G)
    steps_per_epoch = per_chunk.sum(0)
    for g, j in enumerate(jobs):
        j.total_steps = int(steps_per_epoch[g]) * j.epochs
        j.steps_done, j.history = 0, []
    max_epochs = max(j.epochs for j in jobs)
    rng = np.random.default_rng(chunk_order_seed)
    orders = [rng.permutation(len(feed)) if len(feed) > 1 else np.arange(1) for _ in range(max_epochs)]

    sums = torch.zeros(G, len(TERMS), device=dev, dtype=torch.float64)
    counts = np.zeros(G, np.int64)
    t_start = time.perf_counter()
    since_check = 0
    epoch_chunks_left = None

    for epoch, ci, chunk in feed.passes(orders):
        if epoch_chunks_left is None or epoch_chunks_left == 0:
            epoch_chunks_left = len(orders[epoch])
        epoch_chunks_left -= 1
        alive = [g for g, j in enumerate(jobs) if epoch < j.epochs]
        perms = {}
        for g in alive:
            pos = (chunk.ranks < jobs[g].size).nonzero()[:, 0]
            if len(pos):
                perm = torch.randperm(len(pos), generator=gens[g]).to(dev)
                perms[g] = pos[perm]
        nsteps = max((math.ceil(len(p) / B) for p in perms.values()), default=0)
        for s in range(nsteps):
            act = [g for g in alive if g in perms and s * B < len(perms[g])]
            act_t = torch.tensor(act, device=dev)
            parts = {g: perms[g][s * B:(s + 1) * B] for g in act}
            # Jobs step together in stacks of equal batch width, so a job's partial last batch is
            # not padded to another's full one.
            by_width: dict[int, list[int]] = {}
            for g in act:
                by_width.setdefault(len(parts[g]), []).append(g)
            total_sum = 0.0
            terms = torch.zeros(len(act), len(TERMS), device=dev)
            for width, members in by_width.items():
                sub_total, sub_terms = step_losses(
                    members, parts, width, chunk, jobs, dev, G, zoom, need_inverse, need_kd, need_soft,
                    need_hard, W, b, U if need_inverse else None, e if need_inverse else None, shift, scale,
                    out_scale, lam_a, lam_c, lam_k, tau, soft_mask, T, S, tbar)
                total_sum = total_sum + sub_total.sum()
                where = torch.tensor([act.index(g) for g in members], device=dev)
                terms.index_copy_(0, where, sub_terms.detach())
            total = total_sum
            total.backward()
            lrs = torch.tensor([_cosine(jobs[g].lr, jobs[g].steps_done, jobs[g].total_steps)
                                for g in act], device=dev)
            opt.step(act_t, lrs)
            with torch.no_grad():
                sums.index_add_(0, act_t, terms.double())
            for g in act:
                jobs[g].steps_done += 1
                counts[g] += 1
            since_check += 1
            if since_check >= NAN_CHECK_STEPS:
                since_check = 0
                _check_finite(sums, jobs, epoch)
        if epoch_chunks_left == 0:  # end of this epoch for every alive job
            _check_finite(sums, jobs, epoch)
            cpu = sums.cpu().numpy()
            for g in alive:
                rec = {"epoch": epoch + 1, **{t: float(cpu[g, k] / max(counts[g], 1))
                                              for k, t in enumerate(TERMS)}}
                jobs[g].history.append(rec)
                if on_epoch:
                    on_epoch(jobs[g], rec)
                if epoch + 1 == jobs[g].epochs:
                    _store(jobs[g], g, W, b, U if need_inverse else None, e if need_inverse else None)
                    jobs[g].finished_s = time.perf_counter() - t_start
                    if on_done:
                        on_done(jobs[g])
            sums.zero_()
            counts[:] = 0
    return jobs


def step_losses(members, parts, width, chunk, jobs, dev, G, zoom, need_inverse, need_kd, need_soft,
                need_hard, W, b, U, e, shift, scale, out_scale, lam_a, lam_c, lam_k, tau, soft_mask, T, S,
                tbar):
    """Losses (per job, in `members` order) of one step for jobs whose batches all have `width` rows.

    Jobs with the same rows and seed draw the same batches (their generators are in step), so their
    inputs and the teacher's targets are gathered and computed once and shared. On a GPU the jobs'
    losses are one stacked computation; on a CPU one job at a time (views into the stacks), since
    stacked element-wise work overflows the caches there and runs slower than job by job."""
    import torch

    from .losses import batched_kernels, teacher_targets

    keys: dict[tuple, int] = {}
    owner = []  # for each distinct batch, the first job that draws it
    for g in members:
        keys.setdefault((jobs[g].size, jobs[g].seed), len(owner))
        if len(owner) < len(keys):
            owner.append(g)
    share = [keys[(jobs[g].size, jobs[g].seed)] for g in members]
    idx = torch.stack([parts[g] for g in owner]).view(-1)
    o_t = torch.tensor(owner, device=dev)
    x_u = (chunk.v.index_select(0, idx).view(len(owner), width, -1) - shift.index_select(0, o_t)[:, None, :]) \
        * scale.index_select(0, o_t)[:, None, :]
    c_u = chunk.c.index_select(0, idx).view(len(owner), width, -1)
    teacher_u, pick = None, None
    if zoom and need_kd:  # the teacher's targets depend on the batch and τ: once per (batch, τ)
        pairs: dict[tuple, int] = {}
        first = []
        for i, g in enumerate(members):
            k = (share[i], jobs[g].tau)
            if k not in pairs:
                pairs[k] = len(first)
                first.append(i)
        pick = [pairs[(share[i], jobs[g].tau)] for i, g in enumerate(members)]
        teacher_u = teacher_targets(c_u[[share[i] for i in first]], T,
                                    tau[[members[i] for i in first]], need_soft, need_hard)

    units = [members] if batched_kernels(dev) else [[g] for g in members]
    totals, terms = [], []
    for unit in units:
        pos = [members.index(g) for g in unit]
        if len(unit) == 1:  # views, no copies
            g = unit[0]
            sel = lambda t, g=g: t[g:g + 1]  # noqa: E731
            x, c = x_u[share[pos[0]]:share[pos[0]] + 1], c_u[share[pos[0]]:share[pos[0]] + 1]
            teacher = None if teacher_u is None else {
                k: v[pick[pos[0]]:pick[pos[0]] + 1] for k, v in teacher_u.items()}
        else:
            u_t = torch.tensor(unit, device=dev)
            sel = (lambda t: t) if len(unit) == G else (lambda t, u_t=u_t: t.index_select(0, u_t))  # noqa: E731
            s_t = torch.tensor([share[i] for i in pos], device=dev)
            x, c = x_u.index_select(0, s_t), c_u.index_select(0, s_t)
            teacher = None if teacher_u is None else {
                k: v.index_select(0, torch.tensor([pick[i] for i in pos], device=dev)) for k, v in teacher_u.items()}
        wts = torch.ones(len(unit), width, device=dev)
        if not zoom:
            total, align = aligner_loss(sel(W), sel(b), x, c * sel(out_scale)[:, None, None], wts)
            zero = torch.zeros_like(total)
            totals.append(total)
            terms.append(torch.stack([total, align, zero, zero], 1))
            continue
        total, align, cycle, kd = zoomshot_losses(
            sel(W), sel(b), sel(U) if need_inverse else None, sel(e) if need_inverse else None,
            x, c, wts, T, S, tbar, sel(lam_a), sel(lam_c), sel(lam_k), sel(tau),
            sel(soft_mask), need_inverse, need_kd, need_soft, need_hard, teacher=teacher)
        totals.append(total)
        terms.append(torch.stack([total, align, cycle, kd], 1))
    return torch.cat(totals), torch.cat(terms)


def _rows_per_chunk(feed, sizes_t):
    """Per chunk of the feed, how many rows each job has in it (from ranks, without reading)."""
    import numpy as np

    plan = feed.plan
    out = []
    for a, bnd in feed.ranges:
        r = plan.ranks[a:bnd]
        out.append([int((r < int(s)).sum()) for s in sizes_t])
    return np.array(out, dtype=np.int64)


def _store(job: Job, g: int, W, b, U, e) -> None:
    job.W = W.detach()[g].clone()
    job.b = b.detach()[g].clone()
    if U is not None:
        job.U = U.detach()[g].clone()
        job.e = e.detach()[g].clone()


def _check_finite(sums, jobs, epoch) -> None:
    import torch

    bad = ~torch.isfinite(sums[:, 0])
    if bool(bad.any()):
        g = int(bad.nonzero()[0, 0])
        j = jobs[g]
        raise ZsError(f"the training loss of {j.name} became NaN/Inf in epoch {epoch + 1}; "
                      f"lower the learning rate (--lr, now {j.lr:g}) or check the features "
                      f"(`zs cache info`)")
