"""One default device: `auto` (CUDA when torch sees it, else the CPU) for every command that computes,
resolved in one place, and recorded in the run record."""
from __future__ import annotations

import json
import re

import pytest
import torch
from typer.testing import CliRunner

from zoomshot.cli import app
from zoomshot.devices import resolve_device
from zoomshot.errors import ZsError
from zoomshot.synth import write_synth_world

runner = CliRunner()


def test_auto_is_cuda_when_present_else_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu" and resolve_device("cpu") == "cpu"
    with pytest.raises(ZsError, match="CUDA is not available here"):
        resolve_device("cuda")
    with pytest.raises(ZsError, match="expected auto, cpu, cuda or cuda:N"):
        resolve_device("tpu")


@pytest.mark.parametrize("command", ["extract", "fit", "sweep", "predict", "search", "demo"])
def test_every_computing_command_defaults_to_auto(command):
    res = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200", "TERM": "dumb"})
    assert res.exit_code == 0
    text = re.sub(r"\s+", " ", res.output)
    assert re.search(r"--device <str> .*auto \(CUDA when present", text), text
    assert re.search(r"[\[(]default: auto[\])]", text), text  # typer's [default] or the config's (default)


def test_the_fit_record_says_which_device_ran(tmp_path):
    w = write_synth_world(tmp_path / "w", rows=600, test_rows=50, classes=5, dv=12, d=8)
    res = runner.invoke(app, ["fit", "--cache", str(w["train"]), "--method", "ridge", "--out", str(tmp_path / "m")])
    assert res.exit_code == 0, res.output
    run = json.loads((tmp_path / "m" / "run.json").read_text())
    assert run["device"] == ("cuda:0" if torch.cuda.is_available() else "cpu")
    assert run["hyper"]["device"] == "auto"
