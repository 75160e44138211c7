"""Export a zero-shot classifier (vision encoder + mapping + a fixed label set) as one self-contained
TorchScript file, for deployment without zoomshot, open_clip or timm installed.

    model = torch.jit.load("model.pt", _extra_files=(extra := {"zoomshot.json": ""}))
    meta = json.loads(extra["zoomshot.json"])     # labels, logit_scale, preprocess, source, target
    logits = model(batch)                         # batch: float32 (B, 3, H, W), preprocessed as meta says

The model is made with torch.jit.trace on a batch of two; the traced model is checked against the
Python module on a batch of another size, and the export fails loudly if they differ. Only if
tracing fails does it fall back to torch.export (load with `torch.export.load(path).module()`); the
result says which method was used. The file is written atomically.
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from zoomshot.errors import ZsError

META_FILE = "zoomshot.json"
CHECK_ATOL = 1e-3  # on logits of scale 100: tracing must reproduce the module, not approximate it


@dataclass
class ExportResult:
    path: Path
    method: str  # "torchscript" or "torch.export"
    labels: list[str]
    input_shape: tuple  # (3, H, W)
    note: str = ""  # why the fallback was used, when it was


def example_batch(classifier, n: int, seed: int):
    """n generated images preprocessed with the encoder's own transform: (n, 3, H, W)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    imgs = [Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)) for _ in range(n)]
    return classifier.as_batch(imgs)


def _trace(classifier, example, check):
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings from timm/open_clip shape checks; we verify below
        traced = torch.jit.trace(classifier, example, check_trace=False)
    with torch.inference_mode():
        got, want = traced(check), classifier(check)
    if got.shape != want.shape or not torch.allclose(got, want, atol=CHECK_ATOL, rtol=0):
        diff = (got - want).abs().max().item() if got.shape == want.shape else f"shape {tuple(got.shape)}"
        raise RuntimeError(f"the traced model differs from the module on a batch of {len(check)} ({diff})")
    return traced


def _export(classifier, example, check):
    import torch

    batch = torch.export.Dim("batch", min=1)
    ep = torch.export.export(classifier, (example,), dynamic_shapes=({0: batch},))
    with torch.inference_mode():
        got, want = ep.module()(check), classifier(check)
    if not torch.allclose(got, want, atol=CHECK_ATOL, rtol=0):
        raise ZsError("torch.export produced a model that differs from the Python module; nothing was written")
    return ep


def export_classifier(classifier, out: str | os.PathLike) -> ExportResult:
    """Write `classifier` (with its labels set) to `out` as TorchScript, atomically."""
    import torch

    from zoomshot.fileutil import atomic_path

    if not classifier.labels:
        raise ZsError("the classifier has no labels; set them before exporting")
    classifier = classifier.eval()
    example, check = example_batch(classifier, 2, 0), example_batch(classifier, 3, 1)
    input_shape = tuple(example.shape[1:])
    meta = {"format": "zs-export", "labels": classifier.labels, "logit_scale": classifier.logit_scale,
            "input_shape": list(input_shape), "preprocess": classifier.encoder.preprocess_config,
            "source": classifier.run.get("source"), "target": classifier.run.get("target"),
            "output": "logits (B, K) = logit_scale * cosine(mapped image embedding, label text embedding)"}
    extra = {META_FILE: json.dumps(meta, indent=2)}
    out = Path(out)
    try:
        with torch.no_grad():
            traced = _trace(classifier, example, check)
    except Exception as e:  # any tracing failure: fall back, and say why
        note = f"torch.jit.trace failed ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})"
    else:
        with atomic_path(out) as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated but still the portable format
            torch.jit.save(traced, str(tmp), _extra_files=extra)
        return ExportResult(out, "torchscript", list(classifier.labels), input_shape)
    try:
        ep = _export(classifier, example, check)
    except ZsError:
        raise
    except Exception as e:
        raise ZsError(f"{note}; torch.export failed too ({type(e).__name__}: "
                      f"{str(e).splitlines()[0][:200] if str(e) else ''}); nothing was written") from None
    with atomic_path(out) as tmp:
        torch.export.save(ep, str(tmp), extra_files=extra)
    return ExportResult(out, "torch.export", list(classifier.labels), input_shape,
                        note + "; exported with torch.export instead (load with torch.export.load(PATH).module())")


def export_model(mapping_dir: str | os.PathLike, out: str | os.PathLike, weights: str | None = None,
                 text_weights: str | None = None, **label_source) -> ExportResult:
    """`zs export`: load the mapping's classifier, set its labels from exactly one source (label_source:
    `zoomshot.model.choose_labels`' labels, vocab, from_cache, cache_vocab, templates), export it."""
    from zoomshot.fileutil import check_writable
    from zoomshot.model import choose_labels, load

    check_writable(out)  # before the minutes of loading and tracing
    # Traced on the CPU whatever the machine has: a trace records its device, and the file must
    # load anywhere (move it with .to("cuda") after torch.jit.load).
    clf = load(mapping_dir, weights=weights, text_weights=text_weights, device="cpu")
    choose_labels(clf, **label_source)
    return export_classifier(clf, out)
