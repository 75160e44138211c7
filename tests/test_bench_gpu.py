"""bench/gpu.py --smoke: every step of the accelerator benchmark runs at toy sizes on the CPU, so the
script cannot rot while no GPU is lent; a failing step is reported and fails the run."""
import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "gpu.py"


def _run(tmp_path, *args):
    res = tmp_path / "results"
    p = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--workdir", str(tmp_path / "work"),
                        "--results-dir", str(res), *args], capture_output=True, text=True, timeout=300)
    files = sorted(res.glob("gpu-smoke-*.json"))
    return p, (json.loads(files[-1].read_text()) if files else None)


def test_smoke_runs_every_step(tmp_path):
    p, report = _run(tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    rows = report["rows"]
    assert report["failed"] == [] and all(r["status"] == "ok" for r in rows.values())
    for short in ("ViT-B/16", "ViT-L/14"):
        for suffix in ("", " --compile"):
            assert rows[f"{short} model-only{suffix}"]["img_s"] > 0
            for decode in ("cpu", "gpu"):
                assert rows[f"{short} extract --decode {decode}{suffix}"]["img_s"] > 0
    assert rows["two encoders"]["one_pass_s"] > 0 and rows["two encoders"]["two_passes_s"] > 0
    assert rows["fit"]["rows"] == 2000
    assert rows["sweep 3x3"]["fit_grid_s"] > 0 and rows["sweep 3x3"]["separate_s"] > 0
    assert "e2e/model" in p.stdout and "sweep 3x3" in p.stdout  # the table


def test_a_failed_step_is_reported_and_the_others_still_run(tmp_path):
    p, report = _run(tmp_path, "--isolate", "--only", "world", "--only", "fit", "--only", "sweep",
                     "--inject-failure", "fit")
    assert p.returncode == 1, p.stdout + p.stderr
    rows = report["rows"]
    assert report["failed"] == ["fit"] and rows["fit"]["status"] == "FAILED" and "injected" in rows["fit"]["error"]
    assert rows["world"]["status"] == "ok" and rows["sweep 3x3"]["status"] == "ok"  # each in its own process
    assert "FAILED" in p.stdout and "--only 'fit'" in p.stderr


def test_a_fit_step_without_its_world_fails_loudly(tmp_path):
    p, report = _run(tmp_path, "--only", "fit")
    assert p.returncode == 1 and report["rows"]["fit"]["status"] == "FAILED"
    assert "run the 'world' step first" in report["rows"]["fit"]["error"]
