"""Reports people merge: per-class and retrieval in report.md and the CSVs, clip_benchmark JSON
files its `build` command reads back unchanged, and no absolute path in any cell."""
from __future__ import annotations

import csv
import json

from typer.testing import CliRunner

from conftest import make_mapping, make_world
from zoomshot.cli import app
from zoomshot.evaluate.clip_benchmark import model_and_pretrained

runner = CliRunner()


def clip_benchmark_build(files, output):
    """clip_benchmark's `build` (cli.main_build), step for step: metrics first, then the other keys."""
    rows, fieldnames = [], set()
    for path in files:
        data = json.load(open(path))
        row = {}
        row.update(data["metrics"])
        row.update(data)
        del row["metrics"]
        row["model_fullname"] = row["model"] + " " + row["pretrained"]
        fieldnames.update(row)
        rows.append(row)
    with open(output, "w") as f:
        w = csv.DictWriter(f, fieldnames=sorted(fieldnames))
        w.writeheader()
        for row in rows:
            w.writerow(row)


def evaluate(tmp_path, out, *flags):
    weights = str(tmp_path / "weights" / "vision.safetensors")  # a local weights file, recorded in full
    world = make_world(tmp_path / "evalA.h5", classes=6, weights=weights)
    make_mapping(tmp_path / "true_map", world["W"], mean=world["offset"], weights=weights)
    res = runner.invoke(app, ["evaluate", "--mapping", str(tmp_path / "true_map"), "--cache", str(world["path"]),
                              "--out", str(out), "--quiet", *flags])
    assert res.exit_code == 0, res.output
    return json.loads((out / "results.json").read_text())


def test_per_class_and_retrieval_reach_report_md_and_csv_without_absolute_paths(tmp_path):
    plain = tmp_path / "plain"
    evaluate(tmp_path, plain)
    out = tmp_path / "full"
    records = evaluate(tmp_path, out, "--per-class", "--retrieval")
    md = (out / "report.md").read_text()
    assert "## Per-class recall" in md and "## Retrieval" in md and "knn20_acc" in md
    assert "## Per-class recall" not in (plain / "report.md").read_text()
    assert not (plain / "per_class.csv").exists()

    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert {"knn20_acc", "t2i_recall@1", "t2i_recall@5", "t2i_recall@10"} <= set(rows[0])
    for row, rec in zip(rows, records):
        assert float(row["knn20_acc"]) == rec["metrics"]["knn20_acc"]
    rec = next(r for r in records if r["mapping"])
    row = next(r for r in rows if r["mapping"])
    assert [float(row[f"recall[{c['class']}]"]) for c in rec["per_class"]] == [c["recall"] for c in rec["per_class"]]
    assert (plain / "results.csv").read_text() != (out / "results.csv").read_text()
    with open(out / "per_class.csv") as f:
        per_class = list(csv.DictReader(f))
    assert len(per_class) == len(records) * 6
    mapped = [r for r in per_class if r["mapping"]]
    rec = next(r for r in records if r["mapping"])
    assert [(r["class"], int(r["support"]), int(r["correct"])) for r in mapped] == [
        (c["class"], c["support"], c["correct"]) for c in rec["per_class"]]

    # The records keep full paths; no cell of the files people read or merge does.
    assert str(tmp_path) in json.dumps(records)
    for name in ("results.csv", "per_class.csv", "report.md"):
        text = (out / name).read_text()
        assert str(tmp_path) not in text, name
    for row in rows:
        assert not any(v.startswith("/") for v in row.values()), row
        assert row["weights"] in ("vision.safetensors", "random", "default")


def test_clip_benchmark_files_join_a_clip_benchmark_table(tmp_path):
    out = tmp_path / "rep"
    records = evaluate(tmp_path, out, "--format", "clip_benchmark")
    ours = sorted((out / "clip_benchmark").glob("*.json"))
    assert len(ours) == len(records) == 2
    # a file as clip_benchmark's own `eval` writes it
    theirs = tmp_path / "cifar10_openai_ViT-B-32_en_zeroshot_classification.json"
    theirs.write_text(json.dumps({"dataset": "cifar10", "model": "ViT-B-32", "pretrained": "openai",
                                  "task": "zeroshot_classification", "metrics": {
                                      "acc1": 0.9, "acc5": 0.99, "mean_per_class_recall": 0.9}, "language": "en"}))
    clip_benchmark_build([*ours, theirs], tmp_path / "benchmark.csv")
    with open(tmp_path / "benchmark.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 3
    assert all(all(v != "" for k, v in row.items() if k != "acc5") for row in table)  # same columns, all filled
    by_model = {(r["model"], r["pretrained"]): r for r in table}
    for rec in records:
        row = by_model[model_and_pretrained(rec)]
        assert row["task"] == "zeroshot_classification" and row["dataset"] == "evalA"
        assert float(row["acc1"]) == rec["metrics"]["acc1"]
        assert float(row["mean_per_class_recall"]) == rec["metrics"]["mean_per_class_recall"]
    mapped = next(r for r in records if r["mapping"])
    assert model_and_pretrained(mapped) == (f"{mapped['encoder_key']}+zoomshot", "true_map")


def test_a_clip_reference_is_named_as_clip_benchmark_names_that_model():
    rec = {"mapping": None, "encoder": "open_clip:ViT-B-32:openai", "encoder_key": "clip_vit_b32",
           "target": "open_clip:ViT-B-32:openai", "weights": "default"}
    assert model_and_pretrained(rec) == ("ViT-B-32", "openai")
    assert model_and_pretrained({**rec, "weights": "random"}) == ("clip_vit_b32", "random")


def test_an_unknown_format_is_refused_before_any_work(tmp_path):
    world = make_world(tmp_path / "e.h5")
    res = runner.invoke(app, ["evaluate", "--cache", str(world["path"]), "--out", str(tmp_path / "r"),
                              "--format", "mlflow"])
    assert res.exit_code == 2 and "clip_benchmark" in res.output
    assert not (tmp_path / "r").exists()
