"""Keeping the accelerator fed: device choice, autocast, channels_last, torch.compile,
host-to-device prefetch on a side stream, and GPU JPEG decoding with tensor transforms.

On the CPU, float32 forwards run on a forward thread while the caller decodes the next batch
(`to_host`); the CUDA paths switch on only when the device is a CUDA device.
"""
from __future__ import annotations

import functools
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from zoomshot.devices import autocast
from zoomshot.errors import ZsError, first_line

from .loader import is_rgb_conversion, transform_steps

DECODERS = ("cpu", "gpu")


def make_forward(encoder, device: str, precision: str = "auto", channels_last: bool | None = None,
                 compile: bool = False) -> Callable:
    """A function (B,3,H,W) on device -> (B, dim) float32 for one encoder, with the speed options applied."""
    import torch

    channels_last = device.startswith("cuda") if channels_last is None else channels_last
    model = getattr(encoder, "model", None)
    if channels_last and isinstance(model, torch.nn.Module):
        model.to(memory_format=torch.channels_last)
    fn = torch.compile(encoder.encode_image) if compile else encoder.encode_image

    def forward(x):
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, precision):
            return fn(x).float()

    forward.on_thread = device == "cpu" and not compile  # see to_host
    return forward


class DevicePrefetcher:
    """Iterate batches with their tensors already on the device; on CUDA the copy of batch i+1
    runs on a side stream while batch i computes (needs pinned host memory)."""

    def __init__(self, batches, device: str):
        import torch

        self.batches = batches  # an iterator over the DataLoader (its workers already started)
        self.device = torch.device(device)
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

    def _to_device(self, item):
        import torch

        def move(t):
            return t.to(self.device, non_blocking=True) if isinstance(t, torch.Tensor) else t

        if self.stream is None:
            item["tensors"] = [move(t) for t in item["tensors"]]
            return item
        with torch.cuda.stream(self.stream):
            item["tensors"] = [move(t) for t in item["tensors"]]
            ready = torch.cuda.Event()
            ready.record(self.stream)
        item["_ready"] = ready
        return item

    def _ready(self, item):
        import torch

        if self.stream is not None:
            main = torch.cuda.current_stream(self.device)
            main.wait_event(item.pop("_ready"))
            for t in item["tensors"]:
                if isinstance(t, torch.Tensor):
                    t.record_stream(main)  # memory made on the side stream is used on the main one
        return item

    def __iter__(self):
        prev = None
        for item in self.batches:
            cur = self._to_device(item)  # batch i+1 copies while batch i computes
            if prev is not None:
                yield self._ready(prev)
            prev = cur
        if prev is not None:
            yield self._ready(prev)


def to_host(forward, x, device: str):
    """Run forward(x) and start copying its (B, dim) features to host memory; returns a function that
    waits and gives numpy. On the CPU the forward runs on one forward thread with all the torch
    threads (`_cpu_forward_thread`) while the caller decodes the next batch: decoding between
    forwards on the same thread left the cores idle, and a decode worker process beside the forward
    took a core from one of its threads mid-operator."""
    import torch

    if getattr(forward, "on_thread", False):
        future = _cpu_forward_thread(torch.get_num_threads()).submit(_forward_numpy, forward, x)
        _queued.add(future)
        return future.result
    feats = forward(x)
    if not device.startswith("cuda"):
        return lambda arr=feats.numpy(): arr
    host = torch.empty(feats.shape, dtype=feats.dtype, pin_memory=True)
    host.copy_(feats, non_blocking=True)
    done = torch.cuda.Event()
    done.record()

    def wait():
        done.synchronize()
        return host.numpy()

    return wait


def _forward_numpy(forward, x):
    import torch

    try:
        with torch.inference_mode():
            return forward(x).numpy()
    except Exception as e:  # the writer thread hands a ZsError to the main loop, not taken for a failed write
        raise ZsError(f"the forward failed: {type(e).__name__}: {first_line(e)}") from e


_queued: weakref.WeakSet = weakref.WeakSet()  # CPU forwards submitted, for cancel_cpu_forwards


def cancel_cpu_forwards() -> None:
    """After an error or Ctrl-C: drop the CPU forwards not yet started (the running one finishes)."""
    for future in list(_queued):
        future.cancel()


@functools.lru_cache(maxsize=None)
def _cpu_forward_thread(threads: int) -> ThreadPoolExecutor:
    """The process's forward thread, running on `threads` torch threads."""
    import torch

    # get_num_threads first: torch's lazy per-thread setup would later undo set_num_threads
    return ThreadPoolExecutor(1, "zs-forward", lambda: (torch.get_num_threads(), torch.set_num_threads(threads)))


# ------------------------------------------------------------------------------ GPU decode -----
def tensor_transform(preprocess, what: str) -> Callable:
    """The encoder's PIL eval transform, rebuilt for float CHW tensors in [0, 1] on any device.

    Supports torchvision Compose of Resize / CenterCrop / ToTensor-like / Normalize and RGB
    conversions (what timm and open_clip build for evaluation); anything else is refused.
    """
    from torchvision import transforms as T

    ops = []
    for t in transform_steps(preprocess):
        name = type(t).__name__
        if isinstance(t, (T.Resize, T.CenterCrop, T.Normalize)):
            ops.append(t)
            if isinstance(t, T.Resize):
                ops.append(lambda x: x.clamp_(0, 1))  # bicubic overshoots; PIL clamps too
        elif name in ("ToTensor", "MaybeToTensor", "PILToTensor", "ConvertImageDtype") or is_rgb_conversion(t):
            continue  # the decoded tensor is already RGB float in [0, 1]
        else:
            raise ZsError(f"--decode gpu cannot run the transform {name} of encoder {what} on tensors; "
                          f"use --decode cpu")
    return T.Compose(ops)  # on (3, H, W) float in [0, 1]


def gpu_decode(raw: list, device: str) -> tuple[list, list[str]]:
    """Decode a list of JPEG byte tensors (or already decoded uint8 CHW tensors) on the GPU.

    Returns float (3, H, W) tensors in [0, 1] (None where decoding failed) and error strings.
    """
    import warnings

    from torchvision.io import ImageReadMode, decode_jpeg
    from torchvision.transforms.functional import pil_to_tensor

    from zoomshot.sources import decode_rgb

    from .loader import decode_failure

    out: list = [None] * len(raw)
    errors = [""] * len(raw)
    jpeg_idx = [i for i, r in enumerate(raw) if r is not None and r.dim() == 1]
    datas = [raw[i].cpu() for i in jpeg_idx]
    with warnings.catch_warnings():  # torchvision 0.29 points to TorchCodec; decode_jpeg still works
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            imgs = decode_jpeg(datas, mode=ImageReadMode.RGB, device=device) if datas else []
        except RuntimeError:  # one bad file fails the batch call: decode one by one to find it
            imgs = []
            for d in datas:
                try:
                    imgs.append(decode_jpeg(d, mode=ImageReadMode.RGB, device=device))
                except RuntimeError as e:
                    imgs.append(e)
    for i, d, img in zip(jpeg_idx, datas, imgs):
        if isinstance(img, Exception):  # nvjpeg refuses some valid files (CMYK ...): try PIL
            try:
                img = pil_to_tensor(decode_rgb(d.numpy().tobytes())).to(device)
            except Exception as e:
                errors[i] = decode_failure(e)
                continue
        out[i] = img.float().div_(255)
    for i, r in enumerate(raw):
        if r is not None and r.dim() == 3:
            out[i] = r.to(device, non_blocking=True).float().div_(255)
    return out, errors
