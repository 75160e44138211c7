"""The one home for choosing a device: `auto` means CUDA when torch sees it, else the CPU.

Every command that computes (extract, fit, sweep, predict, search, demo) defaults to `auto` and
resolves it here, so the same command line uses the GPU wherever there is one and records which
device it ran on.
"""
from __future__ import annotations

from zoomshot.errors import ZsError

DEVICE_HELP = "auto (CUDA when present, else CPU), cpu, cuda or cuda:N."


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
