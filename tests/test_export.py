"""`zs export`: a TorchScript file that gives the Python module's logits, runs without zoomshot,
timm or open_clip, carries its labels, and is never left half-written."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import USE_CLASSES as CLASSES
from conftest import pil_images
from typer.testing import CliRunner

import zoomshot
from zoomshot.cli import app
from zoomshot.errors import ZsError


@pytest.fixture(scope="module")
def world(use_world):
    return use_world


@pytest.fixture(scope="module")
def exported(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "model.pt"
    r = CliRunner().invoke(app, ["export", "--mapping", str(world.mapping), "--out", str(out),
                                 "--from-cache", str(world.cache)])
    assert r.exit_code == 0, r.output
    assert "torchscript" in r.stdout
    return out


@pytest.fixture(scope="module")
def batch_and_logits(world):
    clf = zoomshot.load(world.mapping).set_labels_from_cache(world.cache)
    batch = clf.as_batch(pil_images(world.paths[:5]))  # 5: not the batch size it was traced with
    with torch.inference_mode():
        return batch, clf(batch)


def test_exported_model_gives_the_modules_logits(exported, batch_and_logits):
    batch, logits = batch_and_logits
    extra = {"zoomshot.json": ""}
    model = torch.jit.load(str(exported), _extra_files=extra)
    meta = json.loads(extra["zoomshot.json"])
    assert meta["labels"] == list(CLASSES) and meta["logit_scale"] == 100.0
    assert meta["input_shape"] == list(batch.shape[1:]) and meta["preprocess"]["input_size"] == list(batch.shape[1:])
    with torch.inference_mode():
        torch.testing.assert_close(model(batch), logits, atol=1e-4, rtol=0)
        torch.testing.assert_close(model(batch[:1]), logits[:1], atol=1e-4, rtol=0)
    assert not list(exported.parent.glob(".*tmp*"))


def test_exported_model_runs_without_zoomshot_timm_or_open_clip(exported, batch_and_logits, tmp_path):
    batch, logits = batch_and_logits
    torch.save(batch, tmp_path / "batch.pt")
    code = f"""
import sys
for name in ("zoomshot", "timm", "open_clip"):
    sys.modules[name] = None  # any import of these fails
import torch
model = torch.jit.load({str(exported)!r})
torch.save(model(torch.load({str(tmp_path / 'batch.pt')!r})), {str(tmp_path / 'out.pt')!r})
"""
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=120)
    torch.testing.assert_close(torch.load(tmp_path / "out.pt"), logits, atol=1e-4, rtol=0)


def test_export_with_labels_uses_clips_text_tower(world, tmp_path):
    from zoomshot.export import export_model

    res = export_model(world.mapping, tmp_path / "m.pt", labels=["red", "blue"], templates=["a {c} thing."])
    assert res.method == "torchscript" and res.labels == ["red", "blue"]
    clf = zoomshot.load(world.mapping).set_labels(["red", "blue"], templates=["a {c} thing."])
    batch = clf.as_batch(pil_images(world.paths[:3]))
    with torch.inference_mode():
        torch.testing.assert_close(torch.jit.load(str(res.path))(batch), clf(batch), atol=1e-4, rtol=0)


def test_falls_back_to_torch_export_when_tracing_fails_and_says_so(world, batch_and_logits, tmp_path, monkeypatch):
    from zoomshot.export import export_classifier

    def broken_trace(*a, **k):
        raise RuntimeError("pretend tracing is unsupported")

    monkeypatch.setattr(torch.jit, "trace", broken_trace)
    clf = zoomshot.load(world.mapping).set_labels_from_cache(world.cache)
    res = export_classifier(clf, tmp_path / "m.pt2")
    assert res.method == "torch.export" and "pretend tracing is unsupported" in res.note
    batch, logits = batch_and_logits
    with torch.inference_mode():
        torch.testing.assert_close(torch.export.load(str(res.path)).module()(batch), logits, atol=1e-4, rtol=0)


def test_failed_export_writes_nothing(world, tmp_path, monkeypatch):
    from zoomshot.export import export_classifier

    def broken(*a, **k):
        raise RuntimeError("unsupported")

    monkeypatch.setattr(torch.jit, "trace", broken)
    monkeypatch.setattr(torch.export, "export", broken)
    clf = zoomshot.load(world.mapping).set_labels_from_cache(world.cache)
    with pytest.raises(ZsError, match="torch.jit.trace failed .* torch.export failed too .* nothing was written"):
        export_classifier(clf, tmp_path / "m.pt")
    assert list(tmp_path.iterdir()) == []


def test_export_without_a_label_source_is_a_one_line_error(world, tmp_path):
    r = CliRunner().invoke(app, ["export", "--mapping", str(world.mapping), "--out", str(tmp_path / "m.pt")])
    assert r.exit_code == 2 and "exactly one of --labels" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "m.pt").exists()
