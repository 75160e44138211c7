"""`zs predict`: a table or JSON lines of top-k labels per image, unreadable images reported and counted."""
from __future__ import annotations

import json
import shutil

import pytest
from conftest import USE_CLASSES as CLASSES
from conftest import pil_images
from typer.testing import CliRunner

import zoomshot
from zoomshot.cli import app


@pytest.fixture(scope="module")
def world(use_world):
    return use_world


@pytest.fixture(scope="module")
def expected(world):
    """Top-2 labels per image from the Python API, keyed by path."""
    clf = zoomshot.load(world.mapping).set_labels_from_cache(world.cache)
    tops = clf.top_k(pil_images(world.paths), k=2)
    return {str(p): t for p, t in zip(world.paths, tops)}


def run(*args):
    return CliRunner().invoke(app, ["predict", *map(str, args)])


def test_predict_folder_as_json_lines_matches_the_python_api(world, expected):
    r = run(world.images, "--mapping", world.mapping, "--from-cache", world.cache, "--top-k", "2", "--json")
    assert r.exit_code == 0, r.output
    lines = [json.loads(x) for x in r.output.splitlines()]
    assert [x["image"] for x in lines] == sorted(expected)
    for x in lines:
        want = expected[x["image"]]
        assert [t["label"] for t in x["top"]] == [lab for lab, _ in want]
        assert [t["prob"] for t in x["top"]] == pytest.approx([p for _, p in want], abs=1e-5)
        assert x["top"][0]["prob"] >= x["top"][1]["prob"]


def test_predict_table_with_labels_through_clips_text_tower(world, expected):
    one = world.paths[0]
    r = run(one, world.paths[5], "--mapping", world.mapping, "--labels", ",".join(CLASSES), "--top-k", "3")
    assert r.exit_code == 0, r.output
    header, *rows = r.output.splitlines()
    assert header.split()[:4] == ["image", "top-1", "p", "top-2"]
    assert len(rows) == 2
    # --labels uses the default 80 templates, not the cache's two, so only the shape is compared here;
    # with the cache's templates the text tower reproduces the cache's classifier (test_model).
    cells = rows[0].split()
    assert cells[0] == str(one) and sorted(cells[1::2]) == sorted(CLASSES)
    probs = [float(p) for p in cells[2::2]]
    assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1, abs=2e-3)


def test_unreadable_images_are_reported_and_the_rest_go_on(world, expected, tmp_path):
    folder = tmp_path / "mixed"
    shutil.copytree(world.images / "red", folder)
    (folder / "broken.jpg").write_bytes(b"not an image at all")
    (folder / "truncated.png").write_bytes(world.paths[1].read_bytes()[:60])
    r = run(folder, tmp_path / "missing.png", "--mapping", world.mapping, "--from-cache", world.cache, "--json")
    assert r.exit_code == 1
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    errors = {x["image"]: x["error"] for x in lines if "error" in x}
    assert set(errors) == {str(folder / "broken.jpg"), str(folder / "truncated.png"), str(tmp_path / "missing.png")}
    assert "unreadable" in errors[str(folder / "broken.jpg")]
    good = [x for x in lines if "top" in x]
    assert len(good) == len(list((world.images / "red").iterdir()))
    for x in good:  # the images read fine are classified as when alone
        assert x["top"][0]["label"] == expected[str(world.images / "red" / x["image"].split("/")[-1])][0][0]
    assert "3 of" in r.stderr

    r = run(folder, "--mapping", world.mapping, "--from-cache", world.cache)  # table mode says so too
    assert r.exit_code == 1 and "broken.jpg" in r.stdout and "error: unreadable" in r.stdout


@pytest.mark.parametrize("args,needle", [
    ([], "exactly one of --labels"),
    (["--labels", "a,b", "--vocab", "cifar10"], "got --labels, --vocab"),
    (["--labels", "cat,,dog"], "non-empty"),
    (["--vocab", "cifar1O"], "did you mean: cifar10"),
    (["--labels", "a,b", "--top-k", "0"], "--top-k"),
])
def test_bad_options_are_one_line_errors(world, args, needle):
    r = run(world.paths[0], "--mapping", world.mapping, *args)
    assert r.exit_code == 2, r.output
    assert needle in r.output and "Traceback" not in r.output


def test_weights_override_reaches_the_encoder(world, expected, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    state = {k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v
             for k, v in load_file(str(world.root / "test_vit.safetensors")).items()}
    save_file(state, str(tmp_path / "other.safetensors"))
    args = [world.paths[0], "--mapping", world.mapping, "--from-cache", world.cache, "--json", "--top-k", "2"]
    same = run(*args, "--weights", world.root / "test_vit.safetensors")
    other = run(*args, "--weights", tmp_path / "other.safetensors")
    assert same.exit_code == 0 and other.exit_code == 0, same.output + other.output
    want = [p for _, p in expected[str(world.paths[0])]]
    assert [t["prob"] for t in json.loads(same.output)["top"]] == pytest.approx(want, abs=1e-5)
    assert [t["prob"] for t in json.loads(other.output)["top"]] != pytest.approx(want, abs=1e-3)
    bad = run(*args, "--weights", "/no/such/weights.pt")
    assert bad.exit_code == 2 and "does not exist" in bad.output
