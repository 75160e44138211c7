"""`zs fit` from the command line: it writes a mapping folder that rebuilds the run, streams under a
small --memory-budget, and turns bad input into one line and exit code 2."""
import json

import pytest
from typer.testing import CliRunner

from zoomshot.cli import app
from zoomshot.mapping import load_mapping
from zoomshot.synth import write_synth_world

runner = CliRunner()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return write_synth_world(tmp_path_factory.mktemp("cli") / "w", rows=1500, test_rows=100, classes=10,
                             dv=24, d=16, seed=2)


def test_fit_writes_a_mapping_folder(world, tmp_path):
    out = tmp_path / "m"
    res = runner.invoke(app, ["fit", "--cache", world["train"], "--epochs", "2", "--batch-size", "256",
                              "--lambda-cycle", "0", "--kd", "hard", "--seed", "3", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "epoch 1/2: loss" in res.stdout and "epoch 2/2: loss" in res.stdout
    assert f"wrote {out}: zoomshot synth_vision -> synth_clip, 1244 rows" in res.stdout
    assert "epoch 0/2 (start); held-out (256 rows): agreement" in res.stdout
    run = json.loads((out / "run.json").read_text())
    assert run["format"] == "zs-mapping" and run["method"] == "zoomshot" and run["seed"] == 3
    assert run["hyper"]["lambda_cycle"] == 0 and run["hyper"]["kd"] == "hard" and run["hyper"]["batch_size"] == 256
    last = run["history"][-1]  # terms are recorded unweighted; the loss weighs them
    assert len(run["history"]) == 3  # the start and two epochs
    assert last["loss"] == pytest.approx(last["align"] + 1000 * last["kd"], rel=1e-4)
    m = load_mapping(out)
    assert m.W.shape == (16, 24) and m.mean.shape == (24,) and m.std.shape == (24,)


def test_fit_streams_under_a_small_budget_and_takes_other_methods(world, tmp_path):
    res = runner.invoke(app, ["fit", "--cache", world["train"], "--method", "linear-aligner", "--epochs", "1",
                              "--memory-budget", "1M", "--fraction", "0.5", "--out", str(tmp_path / "la")])
    assert res.exit_code == 0, res.output
    run = json.loads((tmp_path / "la" / "run.json").read_text())
    assert run["rows"]["used"] == 622 and run["hyper"]["memory_budget"] == 1 << 20  # half of 1500 − 256
    res = runner.invoke(app, ["fit", "--cache", world["train"], "--method", "procrustes",
                              "--out", str(tmp_path / "p")])
    assert res.exit_code == 0 and "procrustes" in res.stdout and "0 epochs" in res.stdout


@pytest.mark.parametrize("args, words", [
    (["--method", "ridgee"], "unknown method 'ridgee' (did you mean: ridge?)"),
    (["--kd", "warm"], "--kd must be one of soft, hard"),
    (["--memory-budget", "512"], "is under 1 MB"),
    (["--memory-budget", "lots"], "is not a size"),
    (["--source", "synth_clip"], "no CLIP encoder other than the --source 'synth_clip' to map into"),
    (["--source", "synth_clip", "--target", "synth_clip"], "must differ"),
])
def test_bad_options_are_one_line_errors(world, tmp_path, args, words):
    res = runner.invoke(app, ["fit", "--cache", world["train"], "--out", str(tmp_path / "x"), *args])
    assert res.exit_code == 2, res.output
    assert words in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_missing_cache_is_a_one_line_error(tmp_path):
    res = runner.invoke(app, ["fit", "--cache", str(tmp_path / "none.h5"), "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "no cache at" in res.stderr


def test_out_that_is_a_file_or_a_foreign_folder_is_refused_before_fitting(world, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("keep me too")
    for out, words in ((afile, "is a file"), (precious, "holds no mapping"), (afile / "sub", "is a file")):
        res = runner.invoke(app, ["fit", "--cache", world["train"], "--method", "ridge", "--out", str(out)])
        assert res.exit_code == 2 and words in res.stderr, res.output
        assert "epoch" not in res.output  # refused before any fitting
    assert afile.read_text() == "keep me" and (precious / "thesis.tex").read_text() == "keep me too"
    ok = tmp_path / "m"
    for _ in range(2):  # an earlier mapping folder is replaced
        res = runner.invoke(app, ["fit", "--cache", world["train"], "--method", "ridge", "--out", str(ok)])
        assert res.exit_code == 0, res.output
    assert sorted(p.name for p in ok.iterdir()) == ["mapping.safetensors", "run.json"]
