"""Many processes: `torchrun --nproc-per-node 2 -m zoomshot extract` on CPU (gloo) and a job array
(`--num-shards 2 --shard-index I`) give the same cache as one process."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import CLIP_PLUGIN, make_image_folder
from zoomshot.cache import open_cache
from zoomshot.cli import app
from zoomshot.extract.layout import Layout
from zoomshot.extract.runner import ExtractConfig, extract

VIT = "timm:test_vit@random"
runner = CliRunner()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    # 16 images (2 unreadable): 2 shards of 8 rows when two processes start the extraction.
    return make_image_folder(tmp_path_factory.mktemp("img") / "imgs", classes=("a", "b"), per_class=7,
                             corrupt={"a": ["truncated"], "b": ["empty"]})


@pytest.fixture(scope="module")
def single(tmp_path_factory, images):
    out = tmp_path_factory.mktemp("single") / "c.h5"
    s = extract(ExtractConfig(out=str(out), encoders=[VIT, CLIP_PLUGIN], images=str(images), batch_size=4,
                              workers=0, progress=False))
    assert s.entry_written and s.shards == (0, 1, 1)
    return out


def assert_same_features(a, b):
    with open_cache(a) as x, open_cache(b) as y:
        assert x.ids == y.ids and x.labels.tolist() == y.labels.tolist()
        assert x.status.tolist() == y.status.tolist() and x.errors == y.errors
        assert set(x.encoders) == set(y.encoders)
        for k in x.encoders:
            assert x.done(k).tolist() == y.done(k).tolist()
            fa, fb = x.image(k, dtype=np.float16), y.image(k, dtype=np.float16)
            assert np.array_equal(fa, fb, equal_nan=True), k  # bitwise, float16 on disk
            for v in x.vocabularies(k):
                assert np.array_equal(x.text(k, v).emb, y.text(k, v).emb)


def test_torchrun_two_cpu_processes_equal_one_process(tmp_path, images, single):
    out = tmp_path / "c.h5"
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "zoomshot", "extract",
           "--images", str(images), "--encoder", VIT, "--encoder", CLIP_PLUGIN, "--out", str(out),
           "--batch-size", "4", "--workers", "0", "--device", "cpu", "--quiet"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "shards 0..0 of 2" in res.stderr and "shards 1..1 of 2" in res.stderr
    lay = Layout(out)
    assert lay.read_manifest().shards == 2
    assert sorted(p.name for p in (lay.root / "test_vit").glob("*.h5")) == ["00000.h5", "00001.h5"]
    assert_same_features(out, single)


def test_job_array_writes_the_entry_when_the_last_task_finishes(tmp_path, images, single):
    out = tmp_path / "c.h5"
    args = ["extract", "--images", str(images), "--encoder", VIT, "--encoder", CLIP_PLUGIN, "--out", str(out),
            "--batch-size", "4", "--workers", "0", "--num-shards", "2"]
    res = runner.invoke(app, args + ["--shard-index", "1"])
    assert res.exit_code == 0, res.output
    assert not out.exists() and "1 of 2 shards final" in res.output
    res = runner.invoke(app, ["cache", "info", str(out)])
    assert res.exit_code == 2 and "unfinished" in res.output
    res = runner.invoke(app, args + ["--shard-index", "0"])
    assert res.exit_code == 0 and out.exists(), res.output
    assert_same_features(out, single)
    res = runner.invoke(app, args + ["--shard-index", "2"])
    assert res.exit_code == 2 and "--shard-index must be in 0..1" in res.output
