"""The one home for choosing a device and a precision: `auto` means CUDA when torch sees it, else
the CPU; precision `auto` means bf16 autocast on CUDA, fp32 elsewhere.

Every command that computes (extract, fit, sweep, predict, search, demo) defaults to `auto` and
resolves it here, so the same command line uses the GPU wherever there is one and records which
device it ran on.
"""
from __future__ import annotations

import contextlib

from zoomshot.errors import ZsError

DEVICE_HELP = "auto (CUDA when present, else CPU), cpu, cuda or cuda:N."
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_device(device: str = "auto", local_rank: int = 0) -> str:
    """`auto` -> cuda:LOCAL_RANK when CUDA is there, else cpu; `cuda` -> cuda:LOCAL_RANK (torchrun)."""
    import torch

    device = (device or "auto").strip()
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ZsError(f"--device {device}: CUDA is not available here; use --device cpu or auto")
        if device == "cuda":
            device = f"cuda:{local_rank % torch.cuda.device_count()}"
        try:
            index = torch.device(device).index
        except (RuntimeError, ValueError):
            raise ZsError(f"--device {device!r}: expected auto, cpu, cuda or cuda:N") from None
        if index is not None and index >= torch.cuda.device_count():
            raise ZsError(f"--device {device}: torch sees {torch.cuda.device_count()} CUDA device(s)")
        torch.cuda.set_device(torch.device(device))
    elif device not in ("cpu", "mps"):
        raise ZsError(f"--device {device!r}: expected auto, cpu, cuda or cuda:N")
    return device


def precision_name(precision: str, device: str) -> str:
    """The precision a run computes in: fp32, bf16 or fp16 (auto resolved for the device)."""
    if precision not in PRECISIONS:
        raise ZsError(f"--precision {precision!r}: choose from {', '.join(PRECISIONS)}")
    return ("bf16" if device.startswith("cuda") else "fp32") if precision == "auto" else precision


def autocast_dtype(precision: str, device: str):
    """The torch autocast dtype of a precision on a device; None for fp32."""
    import torch

    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision_name(precision, device)]


def autocast(device: str, precision: str = "auto"):
    """torch.autocast for the precision on the device, or a no-op for fp32."""
    import torch

    dtype = autocast_dtype(precision, device)
    return torch.autocast(device.split(":")[0], dtype=dtype) if dtype is not None else contextlib.nullcontext()
