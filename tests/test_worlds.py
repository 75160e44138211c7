"""The warped planted-world generator (`zs synth --generator warped`) and the worlds benchmark's
smoke run: a valid cache pair whose stored teacher accuracy is what `zs evaluate` computes."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from zoomshot.cache import open_cache
from zoomshot.cli import app
from zoomshot.evaluate.scoring import evaluate
from zoomshot.synth import read_synth_attrs, write_synth_world

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(rows=600, test_rows=300, classes=10, dv=24, d=16)


def test_warped_world_is_a_cache_whose_teacher_accuracy_evaluate_reproduces(tmp_path):
    res = runner.invoke(app, ["synth", "--out", str(tmp_path / "w"), "--generator", "warped", "--overlap", "0.6",
                              "--warp", "2", "--rows", "600", "--test-rows", "300", "--classes", "10",
                              "--dv", "24", "--d", "16", "--seed", "4"])
    assert res.exit_code == 0, res.output
    for split in ("train", "test"):
        path = tmp_path / f"w-{split}.h5"
        meta = read_synth_attrs(path)
        assert meta["generator"] == "warped" and meta["split"] == split
        assert (meta["overlap"], meta["warp"], meta["mismatch"]) == (0.6, 2.0, 0.0)
        with open_cache(path) as c:
            assert c.n == meta["rows" if split == "train" else "test_rows"]
            assert c.labels.min() >= 0 and c.labels.max() < 10 and len(c.class_names) == 10
            assert {e.family for e in c.encoders.values()} == {"clip", "vision"}
        records, skipped = evaluate([], [str(path)])
        assert not skipped and len(records) == 1
        assert records[0]["metrics"]["acc1"] == meta["teacher_acc"]


def test_warped_world_differs_from_offset_world_only_on_the_vision_side(tmp_path):
    a = write_synth_world(tmp_path / "a", seed=2, **SMALL)
    b = write_synth_world(tmp_path / "b", seed=2, generator="warped", **SMALL)
    with open_cache(a["test"]) as ca, open_cache(b["test"]) as cb:
        assert np.array_equal(ca.labels, cb.labels)
        assert np.array_equal(ca.image("synth_clip"), cb.image("synth_clip"))  # same teacher
        assert not np.allclose(ca.image("synth_vision"), cb.image("synth_vision"))
    assert a["teacher_acc_test"] == b["teacher_acc_test"]


def test_warped_knobs_are_checked(tmp_path):
    for args, msg in ((["--generator", "warped", "--mismatch", "1"], "no class offsets"),
                      (["--warp", "1"], "warped only"),
                      (["--generator", "warped", "--overlap", "0"], "overlap"),
                      (["--generator", "bent"], "unknown synth generator")):
        res = runner.invoke(app, ["synth", "--out", str(tmp_path / "x"), "--rows", "50", "--test-rows", "20",
                                  "--classes", "4", "--dv", "8", "--d", "8", *args])
        assert res.exit_code != 0 and msg in res.output, res.output
        assert not list(tmp_path.glob("x-*.h5"))


def test_worlds_benchmark_smoke_run(tmp_path):
    out = tmp_path / "worlds.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "worlds.py"), "--smoke", "--only", "offset-200",
                           "warped-50", "--workdir", str(tmp_path), "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(out.read_text())
    assert [w["world"] for w in res["worlds"]] == ["offset-200", "warped-50"]
    for w in res["worlds"]:
        stored = read_synth_attrs(tmp_path / "smoke" / f"{w['world']}-test.h5")["teacher_acc"]
        assert w["teacher_acc1"] == stored
        assert 0.0 <= w["lr_bound"]["agreement"] <= 1.0
        methods = {m["method"]: m for m in w["methods"]}
        assert {"zoomshot (default)", "linear-aligner", "ridge", "procrustes"} <= set(methods)
        for m in methods.values():
            assert 0.0 <= m["acc1"] <= 1.0 and 0.0 <= m["agreement"] <= 1.0 and m["fit_time_s"] >= 0
        lam, ep = w["selection"]["lambda"], w["selection"]["epoch"]
        assert lam["chosen"] in lam["tried"] and len(lam["acc1"]) == len(lam["tried"]) > 1
        assert lam["best_acc1"] == max(lam["acc1"]) >= lam["chosen_acc1"]
        # the selection's default fit is the table's: the same kept epoch, and its top-1 there
        assert len(ep["acc1"]) == methods["zoomshot (default)"]["schedule"]["epochs"] + 1
        assert ep["kept"] == methods["zoomshot (default)"]["schedule"]["best_epoch"]
        assert ep["kept_acc1"] == methods["zoomshot (default)"]["acc1"]
        assert ep["best_acc1"] == max(ep["acc1"]) and ep["gap_points"] >= 0
    assert "| offset-200 |" in proc.stdout and "Agreement with the teacher" in proc.stdout
    assert "Label-free choices vs labelled best" in proc.stdout
    # --selection-only reruns just the check on the results file's worlds and keeps the other tables
    readme = tmp_path / "README.md"
    readme.write_text("before\n<!-- worlds:begin -->\nSTALE TABLE\n<!-- worlds:end -->\nafter\n")
    for w in res["worlds"]:
        w.pop("selection")
    out.write_text(json.dumps(res))
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "worlds.py"), "--smoke", "--selection-only", "--only",
                           "warped-50", "--workdir", str(tmp_path), "--json", str(out), "--readme", str(readme)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    again = json.loads(out.read_text())
    assert "selection" not in again["worlds"][0] and again["worlds"][1]["selection"]["epoch"]["kept"] >= 0
    text = readme.read_text()
    assert text.startswith("before\n") and text.endswith("after\n") and "STALE TABLE" not in text
    assert "Top-1 accuracy" in text and "| offset-200 |" in text and "--selection-only" in text
    chosen = text.split("Label-free choices vs labelled best")[1]
    assert "| warped-50 |" in chosen and "| offset-200 |" not in chosen
