"""`zs fit`, `zs evaluate` and `zs sweep` import only what they use: no encoder library (open_clip,
timm) in any of them, and no matplotlib in a fit, which draws nothing. Run in a fresh interpreter,
since this test process has imported everything already."""
import json
import subprocess
import sys

from zoomshot.synth import write_synth_world

HEAVY = ("open_clip", "timm", "matplotlib", "torchvision", "faiss")

CHILD = r"""
import json, sys
from zoomshot.cli import app
heavy = {heavy!r}
seen = {{}}
for name, args in json.loads(sys.argv[1]):
    try:
        app(args, standalone_mode=False)
    except SystemExit as e:
        if e.code:
            raise
    seen[name] = sorted(m for m in heavy if m in sys.modules)
print(json.dumps(seen))
"""


def test_fit_evaluate_and_sweep_import_no_encoder_library(tmp_path):
    w = write_synth_world(tmp_path / "w", rows=1000, test_rows=200, classes=10, dv=24, d=16)
    commands = [
        ("fit", ["fit", "--cache", w["train"], "--out", str(tmp_path / "m"), "--epochs", "1"]),
        ("evaluate", ["evaluate", "--mapping", str(tmp_path / "m"), "--cache", w["test"],
                      "--out", str(tmp_path / "rep")]),
        ("sweep", ["sweep", "--cache", w["train"], "--eval", w["test"], "--epochs", "1",
                   "--fractions", "0.5,1", "--out", str(tmp_path / "sw")]),
    ]
    p = subprocess.run([sys.executable, "-c", CHILD.format(heavy=HEAVY), json.dumps(commands)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    seen = json.loads(p.stdout.strip().splitlines()[-1])
    assert (tmp_path / "m").is_dir() and (tmp_path / "rep" / "results.json").is_file()
    assert seen["fit"] == []  # checked right after the fit, before evaluate draws its plots
    # evaluate and sweep write PNG plots: matplotlib is theirs to import, encoder libraries are not
    assert [m for m in seen["evaluate"] if m != "matplotlib"] == []
    assert [m for m in seen["sweep"] if m != "matplotlib"] == []
