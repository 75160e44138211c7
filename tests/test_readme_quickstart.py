"""The README's quick start, run as written on generated data.

The commands are read from the README's "Quick start on real data" block itself, so the test
fails when the README shows a command that does not work. Only what a test machine cannot have is
substituted, each substitution listed in ADAPT: the real encoders become tiny random-init plug-ins,
the local ImageNet and CIFAR-10 copies become generated ImageFolder trees given with `--images`
(with `--dataset imagenet1k` the CLIP encoder would embed 1000 classes × 80 prompts, minutes on a
CPU; `--dataset` itself is tested in test_sources/test_extract), and the data fractions are raised
so a few dozen images leave rows to fit on.
"""
from __future__ import annotations

import shlex
from pathlib import Path

from typer.testing import CliRunner

from conftest import CLIP_PLUGIN, VISION_PLUGIN, image_bytes, make_image_folder
from zoomshot.cli import app

README = Path(__file__).resolve().parents[1] / "README.md"
CLASSES = ("bird", "cat", "dog")

ADAPT = [  # (what the README says, what the test runs)
    ("--check vit_b16 clip_vit_b16", f"--check {VISION_PLUGIN}@random {CLIP_PLUGIN}@random"),
    ("--encoder vit_b16", f"--encoder {VISION_PLUGIN}@random"),
    ("--encoder clip_vit_b16", f"--encoder {CLIP_PLUGIN}@random"),
    ("--dataset imagenet1k --root /data/imagenet --split train", "--images data/train"),
    ("--dataset cifar10 --root /data/cifar --split test", "--images data/test"),
    ("--fraction 0.05", "--fraction 0.5"),
    ("--fractions 0.01,0.05,0.2", "--fractions 0.25,0.5,1"),
]


def quickstart_commands() -> list[str]:
    text = README.read_text()
    block = text.split("## Quick start on real data", 1)[1].split("```", 2)[1]
    lines, cur = [], ""
    for raw in block.splitlines():
        line = raw.split(" # ", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if line.endswith("\\"):
            cur += line[:-1] + " "
            continue
        cur += line
        if cur.strip():
            lines.append(" ".join(cur.split()))
        cur = ""
    return [c for c in lines if c.startswith("zs ")]


def test_the_quick_start_runs_as_written(tmp_path, monkeypatch):
    commands = quickstart_commands()
    assert [c.split()[1] for c in commands] == ["encoders", "encoders", "extract", "extract", "fit", "evaluate", "sweep",
                                                 "predict", "export", "predict"]
    for said, _ in ADAPT:
        assert any(said in c for c in commands), f"the README no longer says {said!r}: update ADAPT"
    monkeypatch.chdir(tmp_path)
    make_image_folder(tmp_path / "data" / "train", classes=CLASSES, per_class=16)
    make_image_folder(tmp_path / "data" / "test", classes=CLASSES, per_class=4)
    (tmp_path / "photo.jpg").write_bytes(image_bytes(7))
    runner = CliRunner()
    for cmd in commands:
        for said, run in ADAPT:
            cmd = cmd.replace(said, run)
        res = runner.invoke(app, shlex.split(cmd)[1:])
        assert res.exit_code == 0, f"{cmd}\n{res.output}"
        if cmd.startswith("zs predict") and "--from-cache" in cmd:
            assert "photo.jpg" in res.output and any(c in res.output for c in CLASSES), res.output
    assert (tmp_path / "runs" / "vit_b16-zoomshot" / "run.json").is_file()
    assert (tmp_path / "reports" / "report.md").is_file() and (tmp_path / "reports" / "sweep" / "heatmap.png").is_file()
    assert (tmp_path / "model.pt").stat().st_size > 0
