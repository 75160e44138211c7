"""zoomshot.evaluate: metrics against independent computations, CLIP's reference on a planted world,
reports, mismatched pairs, vocabulary choice, and the `zs evaluate` command."""
from __future__ import annotations

import csv
import json

import h5py
import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, recall_score
from conftest import make_mapping, make_world
from typer.testing import CliRunner

from zoomshot.cli import app
from zoomshot.evaluate import evaluate, write_report, zero_shot_logits
from zoomshot.evaluate.report import CSV_COLUMNS
from zoomshot.mapping import load_mapping, save_mapping

runner = CliRunner()


def _independent(world, mapping_dir):
    """acc1, acc5, mean per-class recall and agreement, computed straight from the HDF5 file."""
    m = load_mapping(mapping_dir)
    with h5py.File(world["path"], "r") as f:
        status = f["images/status"][()]
        labels = f["images/labels"][()].astype(int)
        v_done = f[f"encoders/{world['vision_key']}/done"][()]
        c_done = f[f"encoders/{world['clip_key']}/done"][()]
        v = f[f"encoders/{world['vision_key']}/image"][()].astype(np.float32)
        c = f[f"encoders/{world['clip_key']}/image"][()].astype(np.float32)
        classifier = f[f"encoders/{world['clip_key']}/text/toy/classifier"][()]
    rows = [i for i in range(len(labels)) if status[i] == 0 and v_done[i] and labels[i] >= 0]
    mapped = ((v - m.mean) / m.std) @ m.W.T + m.b
    preds, top5_hits, agree, agree_rows = [], 0, 0, 0
    for i in rows:
        scores = [float(mapped[i] @ classifier[k]) for k in range(len(classifier))]
        ranked = sorted(range(len(scores)), key=lambda k: -scores[k])
        preds.append(ranked[0])
        top5_hits += labels[i] in ranked[:5]
        if c_done[i]:
            clip_pred = max(range(len(classifier)), key=lambda k: float(c[i] @ classifier[k]))
            agree_rows += 1
            agree += clip_pred == ranked[0]
    y = [labels[i] for i in rows]
    return {
        "rows": len(rows),
        "acc1": sum(p == t for p, t in zip(preds, y)) / len(rows),
        "acc5": top5_hits / len(rows),
        "mean_per_class_recall": balanced_accuracy_score(y, preds),
        "agreement": agree / agree_rows,
        "recall": recall_score(y, preds, labels=list(range(len(classifier))), average=None, zero_division=0),
        "support": np.bincount(y, minlength=len(classifier)),
    }


@pytest.fixture
def world(tmp_path):
    w = make_world(tmp_path / "evalA.h5", classes=12, unreadable=(3, 4), not_done=(10, 11, 12),
                   unlabelled=(20, 21, 22, 23))
    make_mapping(tmp_path / "true_map", w["W"], mean=w["offset"])
    return w


def test_zero_shot_logits_are_cosines_in_any_batch_size():
    rng = np.random.default_rng(1)
    feats, cls = rng.normal(size=(37, 8)), rng.normal(size=(5, 8))
    plain = np.array([[f @ t / np.linalg.norm(f) / np.linalg.norm(t) for t in cls] for f in feats])
    for bs in (1, 7, 65536):
        np.testing.assert_allclose(zero_shot_logits(feats, cls, batch_size=bs), plain, rtol=1e-5, atol=1e-6)


def test_metrics_match_an_independent_computation(world, tmp_path):
    records, skipped = evaluate([str(tmp_path / "true_map")], [world["path"]], per_class=True)
    assert skipped == []
    mapped = [r for r in records if r["mapping"] is not None]
    assert len(mapped) == 1
    rec, want = mapped[0], _independent(world, tmp_path / "true_map")
    m = rec["metrics"]
    assert rec["rows"] == {"total": 150, "scored": want["rows"], "unreadable": 2, "not_done": 3, "unlabelled": 4}
    assert m["acc1"] == pytest.approx(want["acc1"])
    assert m["acc5"] == pytest.approx(want["acc5"])
    assert m["acc5"] < 1.0 and m["acc1"] < m["acc5"]  # the world is hard enough to tell them apart
    assert m["mean_per_class_recall"] == pytest.approx(want["mean_per_class_recall"])
    assert m["agreement"] == pytest.approx(want["agreement"])
    assert 0.3 < m["agreement"] < 1.0
    assert [c["recall"] or 0.0 for c in rec["per_class"]] == pytest.approx(list(want["recall"]))
    assert [c["support"] for c in rec["per_class"]] == list(want["support"])


def test_clip_reference_record_and_modality_gap(world):
    records, _ = evaluate([], [world["path"]])
    (ref,) = records
    assert ref["mapping"] is None and ref["method"] == "clip" and ref["encoder"] == "toy:clip"
    with h5py.File(world["path"], "r") as f:
        c = f[f"encoders/{world['clip_key']}/image"][()].astype(np.float32)
        done = f[f"encoders/{world['clip_key']}/done"][()]
        classifier = f[f"encoders/{world['clip_key']}/text/toy/classifier"][()]
        status = f["images/status"][()]
    rows = (status == 0) & done & (world["labels"] >= 0)
    assert rows.sum() == 150 - 2 - 3 - 4
    cn = c[rows] / np.linalg.norm(c[rows], axis=1, keepdims=True)
    acc = ((cn @ classifier.T).argmax(1) == world["labels"][rows]).mean()
    assert ref["metrics"]["acc1"] == pytest.approx(acc)
    mu_i, mu_t = cn.mean(0), classifier.mean(0)
    gap = ref["metrics"]["modality_gap"]
    assert gap["centroid_distance"] == pytest.approx(np.linalg.norm(mu_i - mu_t), rel=1e-5)
    assert gap["mean_cosine"] == pytest.approx(float((cn @ classifier.T).mean()), rel=1e-5)


def test_acc5_is_null_below_five_classes(tmp_path):
    w = make_world(tmp_path / "small.h5", classes=4)
    make_mapping(tmp_path / "m", w["W"], mean=w["offset"])
    records, _ = evaluate([str(tmp_path / "m")], [w["path"]])
    assert len(records) == 2
    assert all(r["metrics"]["acc5"] is None and r["metrics"]["acc1"] is not None for r in records)


def test_clip_reference_equals_the_planted_teacher_accuracy(tmp_path):
    synth = pytest.importorskip("zoomshot.synth")
    world = synth.write_synth_world(tmp_path / "world", rows=50, test_rows=600, classes=40, dv=24, d=16,
                                    seed=3, clip_noise=0.6)
    records, skipped = evaluate([], [world["test"]])
    (ref,) = records
    assert skipped == [] and ref["rows"]["scored"] == 600
    assert 0.05 < world["teacher_acc_test"] < 0.99  # a teacher that is neither perfect nor blind
    assert ref["metrics"]["acc1"] == pytest.approx(world["teacher_acc_test"], abs=1e-12)


def test_report_from_two_mappings_on_two_caches(tmp_path):
    a = make_world(tmp_path / "dataA.h5", seed=1)
    b = make_world(tmp_path / "dataB.h5", seed=2, classes=7)
    # Both caches share a source spec; each mapping is the true map of one world, so it does well on it.
    make_mapping(tmp_path / "map_a", a["W"], mean=a["offset"], method="zoomshot", epochs=5, fraction=0.1)
    make_mapping(tmp_path / "map_b", b["W"], mean=b["offset"], method="linear-aligner", epochs=6, fraction=0.2)
    records, skipped = evaluate([str(tmp_path / "map_a"), str(tmp_path / "map_b")], [a["path"], b["path"]])
    assert skipped == []
    assert len(records) == 2 + 2 * 2  # a CLIP reference per cache, every mapping × every cache
    by = {(r["mapping_name"], r["dataset"]): r for r in records}
    assert by[("map_a", "dataA")]["metrics"]["acc1"] > by[("map_a", "dataB")]["metrics"]["acc1"]
    assert by[("map_b", "dataB")]["method"] == "linear-aligner" and by[("map_b", "dataB")]["epochs"] == 6
    ref_a = by[(None, "dataA")]["metrics"]["acc1"]
    assert by[("map_a", "dataA")]["metrics"]["clip_share"] == pytest.approx(
        by[("map_a", "dataA")]["metrics"]["acc1"] / ref_a)

    out = tmp_path / "report"
    paths = write_report(records, out, skipped)
    for name in ("results.json", "results.csv", "report.md", "skipped.json", "accuracy.png",
                 "clip_share.png", "modality_gap.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
        assert paths[name] == str(out / name)
    assert not (out / "heatmap.png").exists()
    assert not list(out.glob(".*tmp*"))  # no temporary file left behind
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(records))
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == CSV_COLUMNS and len(rows) == len(records)
    assert {(r["mapping"].split("/")[-1] if r["mapping"] else "", r["dataset"]) for r in rows} == {
        ("", "dataA"), ("", "dataB"), ("map_a", "dataA"), ("map_a", "dataB"), ("map_b", "dataA"),
        ("map_b", "dataB")}
    md = (out / "report.md").read_text()
    per_method = md.split("## Top-1 accuracy per method")[1].split("##")[0]
    table = [line for line in per_method.splitlines() if line.startswith("|")]
    assert table[0].split("|")[2:4] == [" dataA ", " dataB "]
    assert [line.split("|")[1].strip() for line in table[2:]] == ["CLIP toy_clip @random", "zoomshot", "linear-aligner"]
    every = md.split("## Every mapping")[1].split("##")[0]
    assert "| map_a | zoomshot | toy_vision | train.h5 | 5 | 0.1 | 0 |" in every
    assert "| map_b | linear-aligner | toy_vision | train.h5 | 6 | 0.2 | 0 |" in every


def test_mismatched_pairs_are_skipped_with_a_reason(tmp_path):
    good = make_world(tmp_path / "good.h5")
    other_src = make_world(tmp_path / "other.h5", vision_spec="toy:other")
    no_text = make_world(tmp_path / "notext.h5", clip_spec="toy:clip2")
    make_mapping(tmp_path / "m", good["W"], mean=good["offset"])
    make_mapping(tmp_path / "wide", np.zeros((16, 30)))  # source dim 30, the caches have 20
    records, skipped = evaluate([str(tmp_path / "m"), str(tmp_path / "wide")],
                                [good["path"], other_src["path"], no_text["path"]])
    reasons = {(s["mapping"].split("/")[-1], s["cache"].split("/")[-1]): s["reason"] for s in skipped}
    assert "no encoder with spec 'toy:vision'" in reasons[("m", "other.h5")]
    assert "no CLIP encoder 'toy:clip'" in reasons[("m", "notext.h5")]
    assert "dim 20 in the cache, 30 in the mapping" in reasons[("wide", "good.h5")]
    assert len(skipped) == 6 - 1  # only m on good.h5 fits
    assert [(r["mapping_name"], r["dataset"]) for r in records if r["mapping"]] == [("m", "good")]
    assert sum(r["mapping"] is None for r in records) == 3  # each cache still gets CLIP's reference


def test_vocabulary_choice_prefers_the_cache_class_names(tmp_path):
    names = [f"class {k}" for k in range(6)]
    w = make_world(tmp_path / "v.h5", vocabs={"other": [f"thing {k}" for k in range(6)], "mine": names})
    records, _ = evaluate([], [w["path"]])
    assert records[0]["vocab"] == "mine"
    records, _ = evaluate([], [w["path"]], vocab="other")
    assert records[0]["vocab"] == "other"
    make_mapping(tmp_path / "m", w["W"], mean=w["offset"])
    records, skipped = evaluate([str(tmp_path / "m")], [w["path"]], vocab="nope")
    assert records == [] and "no vocabulary 'nope'; it has: mine, other" in skipped[0]["reason"]


def test_vocabulary_that_does_not_fit_the_labels_is_a_stated_skip(tmp_path):
    w = make_world(tmp_path / "v.h5", classes=6, vocabs={"short": [f"class {k}" for k in range(4)]})
    make_mapping(tmp_path / "m", w["W"], mean=w["offset"])
    records, skipped = evaluate([str(tmp_path / "m")], [w["path"]])
    assert records == []
    assert "vocabulary 'short' has 4 classes, the cache's classes/names has 6" in skipped[0]["reason"]


def test_cli_evaluate_writes_the_report_and_skips_existing(world, tmp_path):
    out = tmp_path / "rep"
    args = ["evaluate", "--mapping", str(tmp_path / "true_map"), "--cache", world["path"], "--out", str(out)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "true_map" in res.output and (out / "report.md").is_file()
    first = json.loads((out / "results.json").read_text())
    assert len(first) == 2

    other = make_world(tmp_path / "evalB.h5", seed=5)
    res = runner.invoke(app, args + ["--cache", other["path"], "--skip-existing"])
    assert res.exit_code == 0, res.output
    assert "kept 2 records" in res.output
    second = json.loads((out / "results.json").read_text())
    assert second[:2] == first and len(second) == 4
    assert {r["dataset"] for r in second[2:]} == {"evalB"}


def test_cli_evaluate_reports_skipped_pairs_on_stderr(world, tmp_path):
    make_mapping(tmp_path / "wide", np.zeros((16, 30)))
    res = runner.invoke(app, ["evaluate", "--mapping", str(tmp_path / "wide"), "--cache", world["path"],
                              "--out", str(tmp_path / "rep")])
    # the report (CLIP's reference row, the skipped pair) is written, but the only mapping was not scored
    assert res.exit_code == 2, res.output
    assert "fit no --cache" in res.stderr
    assert "skipped:" in res.stderr and "30 in the mapping" in res.stderr
    assert "Skipped pairs" in (tmp_path / "rep" / "report.md").read_text()


@pytest.mark.parametrize("args,message", [
    (["--cache", "missing.h5"], "no cache at missing.h5"),
    (["--cache", "{world}", "--mapping", "not_a_mapping"], "is not a mapping folder"),
])
def test_cli_evaluate_bad_input_is_one_line_error(world, tmp_path, args, message):
    args = [a.replace("{world}", world["path"]) for a in args]
    res = runner.invoke(app, ["evaluate", *args, "--out", str(tmp_path / "rep")])
    assert res.exit_code == 2
    assert message in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "rep" / "results.json").exists()


def test_cache_without_clip_image_features_scores_mappings_without_agreement(tmp_path):
    w = make_world(tmp_path / "textonly.h5", clip_image=False)
    make_mapping(tmp_path / "m", w["W"], mean=w["offset"])
    records, skipped = evaluate([str(tmp_path / "m")], [w["path"]])
    assert skipped == [] and len(records) == 1  # no CLIP reference without CLIP image features
    m = records[0]["metrics"]
    assert m["acc1"] > 0.5 and m["agreement"] is None and m["clip_share"] is None


def test_scoring_in_small_chunks_gives_the_same_records(world, tmp_path, monkeypatch):
    import zoomshot.evaluate.scoring as scoring

    whole, _ = evaluate([str(tmp_path / "true_map")], [world["path"]], per_class=True)
    monkeypatch.setattr(scoring, "CHUNK_ROWS", 7)
    chunked, _ = evaluate([str(tmp_path / "true_map")], [world["path"]], per_class=True)
    for a, b in zip(chunked, whole):
        gap_a, gap_b = a["metrics"].pop("modality_gap"), b["metrics"].pop("modality_gap")
        assert gap_a == pytest.approx(gap_b, rel=1e-6)  # float32 sums in another order
    assert chunked == whole and len(whole) == 2


def test_source_with_no_written_rows_is_a_stated_skip(tmp_path):
    w = make_world(tmp_path / "empty.h5", n=20, not_done=range(20))
    make_mapping(tmp_path / "m", w["W"], mean=w["offset"])
    records, skipped = evaluate([str(tmp_path / "m")], [w["path"]])
    assert records == []
    assert "no rows to score for source 'toy:vision' (0 unreadable, 20 not written, 0 unlabelled of 20)" \
        == skipped[0]["reason"]


def test_mappings_scored_together_equal_each_scored_alone(tmp_path):
    """Mappings of one source and target run as one stacked matmul; the records must not change."""
    from zoomshot.mapping import stack_forward

    w = make_world(tmp_path / "w.h5", n=60)
    rng = np.random.default_rng(3)
    dirs = []
    for i in range(3):
        W = np.asarray(w["W"]) + 0.3 * rng.normal(size=np.shape(w["W"]))
        m = make_mapping(tmp_path / f"m{i}", W, mean=w["offset"], seed=i, save=False)
        m.std = rng.uniform(0.5, 2.0, size=m.std.shape).astype(np.float32)
        m.b = rng.normal(size=m.b.shape).astype(np.float32)
        dirs.append(str(save_mapping(m, tmp_path / f"m{i}")))
    ms = [load_mapping(d) for d in dirs]
    v = rng.normal(size=(5, ms[0].W.shape[1])).astype(np.float32)
    z = stack_forward(ms, v)
    for i, m in enumerate(ms):
        np.testing.assert_allclose(z[:, i], m.forward(v), atol=1e-5)
    together, _ = evaluate(dirs, [w["path"]])
    alone = [r for d in dirs for r in evaluate([d], [w["path"]])[0] if r["mapping"] is not None]
    together = [r for r in together if r["mapping"] is not None]
    assert len(together) == 3
    for a, b in zip(together, alone):
        assert a["mapping"] == b["mapping"]
        assert a["metrics"]["acc1"] == b["metrics"]["acc1"] and a["metrics"]["agreement"] == b["metrics"]["agreement"]
        assert a["metrics"]["modality_gap"] == pytest.approx(b["metrics"]["modality_gap"], rel=1e-6)
    assert len({r["metrics"]["acc1"] for r in together}) > 1  # the three mappings really differ


def test_cli_evaluate_out_that_is_a_file_is_one_line_error(world, tmp_path):
    (tmp_path / "taken").write_text("not a folder")
    res = runner.invoke(app, ["evaluate", "--cache", world["path"], "--out", str(tmp_path / "taken" / "rep")])
    assert res.exit_code == 2, res.output
    assert "is a file" in res.stderr and len(res.stderr.strip().splitlines()) == 1
