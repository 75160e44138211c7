"""Fit configuration: every hyper-parameter of every method, its documented default, validation.

Fields left None take the method's default (`METHOD_DEFAULTS`); `resolved()` fills them in, and
the resolved values are what a mapping's run.json records. zoomshot's batch size and epochs
depend on the training rows (`schedule`): every cache size gets enough optimizer steps.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from zoomshot.errors import ZsError, did_you_mean

METHODS = ("zoomshot", "linear-aligner", "ridge", "procrustes")
ITERATIVE = ("zoomshot", "linear-aligner")
KD_MODES = ("soft", "hard", "lm")
INITS = ("ridge", "random")
OPTIMIZERS = ("adam", "sgd")

CLOSED_FORM_DEFAULTS = dict(epochs=0, batch_size=0, lr=0.0, optimizer="none", momentum=0.0, weight_decay=0.0)
# Per-method defaults for the fields a user may leave unset. The linear-aligner row is the
# published Text-to-Concept recipe; the zoomshot row is ours, chosen on planted worlds (README).
METHOD_DEFAULTS = {
    # lr: relative, a share of each tensor's RMS in the ridge solution (docs/method.md); epochs and
    # batch size: from the row count (schedule)
    "zoomshot": dict(epochs=None, batch_size=None, lr=0.1, optimizer="adam", momentum=0.9, weight_decay=0.0),
    "linear-aligner": dict(epochs=6, batch_size=100, lr=0.01, optimizer="sgd", momentum=0.9,
                           weight_decay=5e-4),
    "ridge": CLOSED_FORM_DEFAULTS,
    "procrustes": CLOSED_FORM_DEFAULTS,
}


@dataclass
class FitConfig:
    """All knobs of `zs fit`. None means: the method's default (see METHOD_DEFAULTS)."""

    method: str = "zoomshot"
    epochs: int | None = None
    fraction: float = 1.0
    seed: int = 0
    source: str | None = None
    target: str | None = None
    vocab: str | None = None
    # zoomshot loss weights and distillation
    lambda_align: float = 1.0
    lambda_cycle: float = 0.1
    lambda_kd: float = 1000.0  # L_kd carries τ² (= 0.0009 at τ 0.03): λ_kd·τ² = 0.9 on the KL
    tau: float = 0.03
    kd: str = "soft"
    # optimisation
    batch_size: int | None = None
    lr: float | None = None
    optimizer: str | None = None
    momentum: float | None = None
    weight_decay: float | None = None
    init: str = "ridge"  # zoomshot start: the closed-form ridge solution, or small random weights
    ridge_lambda: float | None = None  # ridge penalty relative to the standardised feature
    # variance; None: chosen by exact leave-one-out agreement over closed_form.LAMBDAS
    holdout: float = 0.05  # share of the rows held out for label-free validation (0: none)
    la_variance: float = 4.5  # linear-aligner: per-entry variance each side is scaled to
    # resources
    device: str = "auto"  # zoomshot.devices.resolve_device: CUDA when present
    memory_budget: int = 4 << 30  # bytes of float32 training rows held in memory at once

    def resolved(self) -> "FitConfig":
        """A copy with method defaults filled in, after validation."""
        self.validate()
        d = METHOD_DEFAULTS[self.method]
        return replace(self, **{k: (getattr(self, k) if getattr(self, k) is not None else v)
                                for k, v in d.items()})

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ZsError(f"unknown method {self.method!r}{did_you_mean(self.method, METHODS)}; "
                          f"choose one of: {', '.join(METHODS)}")
        if self.kd not in KD_MODES:
            raise ZsError(f"--kd must be one of {', '.join(KD_MODES)}, got {self.kd!r}")
        if self.init not in INITS:
            raise ZsError(f"--init must be one of {', '.join(INITS)}, got {self.init!r}")
        if self.optimizer is not None and self.optimizer not in OPTIMIZERS:
            raise ZsError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if not 0.0 < self.fraction <= 1.0:
            raise ZsError(f"--fraction must be in (0, 1], got {self.fraction}")
        if self.epochs is not None and self.epochs < 1 and self.method in ITERATIVE:
            raise ZsError(f"--epochs must be at least 1 for {self.method}, got {self.epochs}")
        if not 0.0 <= self.holdout < 1.0:
            raise ZsError(f"--holdout must be in [0, 1), got {self.holdout}")
        for name in ("lambda_align", "lambda_cycle", "lambda_kd", "ridge_lambda"):
            v = getattr(self, name)
            if v is not None and not v >= 0.0:
                raise ZsError(f"--{name.replace('_', '-')} must be >= 0, got {v}")
        if not self.tau > 0:
            raise ZsError(f"--tau must be > 0, got {self.tau}")
        if self.batch_size is not None and self.batch_size < 1 and self.method in ITERATIVE:
            raise ZsError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.lr is not None and not self.lr > 0 and self.method in ITERATIVE:
            raise ZsError(f"--lr must be > 0, got {self.lr}")
        if not self.la_variance > 0:
            raise ZsError(f"--la-variance must be > 0, got {self.la_variance}")
        if self.memory_budget < 1:
            raise ZsError(f"--memory-budget must be a positive number of bytes, got {self.memory_budget}")
        if self.method == "zoomshot" and self.lambda_align + self.lambda_cycle + self.lambda_kd == 0:
            raise ZsError("all loss weights are 0: set at least one of --lambda-align, "
                          "--lambda-cycle, --lambda-kd above 0")

    def scheduled(self, rows: int) -> "FitConfig":
        """A resolved copy with zoomshot's batch size and epochs set from the training rows."""
        batch, epochs = schedule(rows, self.batch_size, self.epochs)
        return replace(self, batch_size=batch, epochs=epochs)


# zoomshot's schedule from the row count n: batches of about n/32 rows (a power of two, 32 to
# 4096), and enough epochs for MIN_STEPS optimizer steps (at least 5, at most 100). A 2,000-row
# cache gets batch 64 and 19 epochs (608 steps); 1.28M rows get batch 4096 and 5 epochs (1,565).
MIN_STEPS = 600


def schedule(n: int, batch_size: int | None, epochs: int | None) -> tuple[int, int]:
    """(batch size, epochs) for n training rows; given values are kept."""
    import math

    if batch_size is None:
        batch_size = int(min(max(2 ** round(math.log2(max(n, 1) / 32)), 32), 4096))
    if epochs is None:
        per_epoch = math.ceil(n / batch_size)
        epochs = int(min(max(math.ceil(MIN_STEPS / per_epoch), 5), 100))
    return batch_size, epochs

