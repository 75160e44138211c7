"""`zs search` over a planted world (the queried class's images come first), the saved faiss index
(reused, rebuilt when the mapping or the cache changes, IVF equal to exact when it probes every
list), text queries through CLIP's text tower, and the retrieval metrics of evaluate/retrieval.py."""
from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from zoomshot.cache import CacheWriter, open_cache
from zoomshot.cli import app
from zoomshot.errors import ZsError
from zoomshot.evaluate.retrieval import knn_accuracy, text_to_image_recall
from zoomshot.mapping import load_mapping, save_mapping
from zoomshot.search import search_cache

CLASSES = 6


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """A planted world with little vision noise, and a mapping fitted on its train split (zs fit's ridge)."""
    from zoomshot.fit import FitConfig, fit_cache
    from zoomshot.synth import write_synth_world

    root = tmp_path_factory.mktemp("search-synth")
    w = write_synth_world(root / "w", rows=600, test_rows=300, classes=CLASSES, dv=24, d=16, seed=0,
                          noise=0.1, spread=0.0, clip_noise=0.0, mismatch=0.0)  # a clean world, whatever the defaults
    save_mapping(fit_cache(w["train"], FitConfig(method="ridge")), root / "mapping")
    return {"train": w["train"], "test": w["test"], "mapping": root / "mapping", "root": root}


def labels_of(path):
    with open_cache(path) as c:
        return c.labels, c.text("synth_clip")


def test_planted_class_images_come_first(synth):
    labels, tv = labels_of(synth["test"])
    for k in range(CLASSES):
        n = int((labels == k).sum())
        res = search_cache(synth["test"], synth["mapping"], tv.names[k], top_k=n, vocab_query=True)
        assert [h.label for h in res.hits] == [k] * n, tv.names[k]
        assert [h.rank for h in res.hits] == list(range(1, n + 1))
        scores = [h.score for h in res.hits]
        assert scores == sorted(scores, reverse=True)


def test_hits_are_the_exact_inner_product_ranking(synth):
    labels, tv = labels_of(synth["test"])
    m = load_mapping(synth["mapping"])
    with open_cache(synth["test"]) as c:
        z = m.forward(c.image("synth_vision"))
        ids = c.ids
    q = tv.classifier[2] / np.linalg.norm(tv.classifier[2])
    want = np.argsort(-(z @ q), kind="stable")[:20]
    res = search_cache(synth["test"], synth["mapping"], tv.names[2], top_k=20, vocab_query=True)
    assert [h.row for h in res.hits] == want.tolist()
    assert [h.id for h in res.hits] == [ids[r] for r in want]
    np.testing.assert_allclose([h.score for h in res.hits], (z @ q)[want], atol=1e-5)


def test_index_is_saved_reused_and_rebuilt_when_mapping_or_cache_change(synth, tmp_path):
    import shutil

    cache = tmp_path / "copy.h5"
    shutil.copy(synth["test"], cache)
    _, tv = labels_of(cache)
    first = search_cache(cache, synth["mapping"], tv.names[0], top_k=3, vocab_query=True)
    assert first.built and first.kind == "flat" and first.index_path.is_file()
    assert first.index_path.parent == cache.parent and first.index_path.name.startswith("copy.h5.")
    again = search_cache(cache, synth["mapping"], tv.names[0], top_k=3, vocab_query=True)
    assert not again.built and again.index_path == first.index_path and again.hits == first.hits
    assert not list(tmp_path.glob(".*tmp*"))  # written atomically: no temporary left behind

    m = load_mapping(synth["mapping"])
    m.W = m.W * 1.01
    save_mapping(m, tmp_path / "other-mapping")
    other = search_cache(cache, tmp_path / "other-mapping", tv.names[0], top_k=3, vocab_query=True)
    assert other.built and other.index_path != first.index_path

    top_row = first.hits[0].row
    with open_cache(cache) as c:
        ids, lab, names = c.ids, c.labels, c.class_names
    with CacheWriter(cache, ids, lab, names) as w:
        w.mark_unreadable([top_row], ["test: pretend it failed"])
    after = search_cache(cache, synth["mapping"], tv.names[0], top_k=3, vocab_query=True)
    assert after.built and after.index_path != first.index_path
    assert top_row not in [h.row for h in after.hits]
    assert [h.row for h in after.hits[:2]] == [h.row for h in first.hits[1:]]


def test_ivf_index_probing_every_list_equals_the_exact_one(synth, tmp_path):
    import shutil

    cache = tmp_path / "ivf.h5"
    shutil.copy(synth["train"], cache)
    _, tv = labels_of(cache)
    exact = search_cache(cache, synth["mapping"], tv.names[4], top_k=15, vocab_query=True)
    ivf = search_cache(cache, synth["mapping"], tv.names[4], top_k=15, vocab_query=True, ivf_threshold=10)
    assert ivf.kind == "ivf" and exact.kind == "flat" and ivf.built and ivf.index_path != exact.index_path
    # 600 rows give 9 lists, all probed (IVF_NPROBE = 32): the search is exhaustive
    assert [h.row for h in ivf.hits] == [h.row for h in exact.hits]
    np.testing.assert_allclose([h.score for h in ivf.hits], [h.score for h in exact.hits], atol=1e-5)
    reused = search_cache(cache, synth["mapping"], tv.names[4], top_k=15, vocab_query=True, ivf_threshold=10)
    assert not reused.built and reused.kind == "ivf" and reused.hits == ivf.hits


def test_cli_search_prints_rank_score_id(synth):
    labels, tv = labels_of(synth["test"])
    r = CliRunner().invoke(app, ["search", "--cache", str(synth["test"]), "--mapping", str(synth["mapping"]),
                                 tv.names[1], "--vocab-query", "--top-k", "5"])
    assert r.exit_code == 0, r.output
    header, *rows = r.stdout.splitlines()
    assert header.split() == ["rank", "score", "id"]
    with open_cache(synth["test"]) as c:
        row_of = {i: n for n, i in enumerate(c.ids)}
    assert [int(x.split()[0]) for x in rows] == [1, 2, 3, 4, 5]
    assert all(labels[row_of[x.split()[2]]] == 1 for x in rows)
    assert "index:" in r.stderr


@pytest.mark.parametrize("args,needle", [
    (["class_9999", "--vocab-query"], "did you mean"),
    (["a photo of a thing"], "cannot build the mapping's target"),  # synth:clip has no text tower to load
    (["class_0001", "--vocab-query", "--top-k", "0"], "--top-k"),
])
def test_cli_search_errors_are_one_line(synth, args, needle):
    r = CliRunner().invoke(app, ["search", "--cache", str(synth["test"]), "--mapping", str(synth["mapping"]), *args])
    assert r.exit_code == 2 and needle in r.output and "Traceback" not in r.output, r.output


def test_mapping_that_does_not_fit_the_cache_is_refused(synth, tmp_path):
    m = load_mapping(synth["mapping"])
    m.run["source"]["weights"] = "other"
    save_mapping(m, tmp_path / "other-weights")
    with pytest.raises(ZsError, match="does not fit .* weights 'planted' in the cache, 'other' in the mapping"):
        search_cache(synth["test"], tmp_path / "other-weights", "class_0001", vocab_query=True)


def test_text_query_through_clips_text_tower(use_world):
    import torch

    from zoomshot.encoders import build_encoder

    world = use_world
    clip = build_encoder(world.clip_spec)
    with torch.inference_mode():
        q = clip.encode_text(["a red thing"]).numpy()[0]
    with open_cache(world.cache) as c:
        z = load_mapping(world.mapping).forward(c.image(world.vision_key))
    want = np.argsort(-(z @ q), kind="stable")[:5]
    res = search_cache(world.cache, world.mapping, "a red thing", top_k=5)
    assert [h.row for h in res.hits] == want.tolist()
    np.testing.assert_allclose([h.score for h in res.hits], (z @ q)[want], atol=1e-5)


# ------------------------------------------------------------------------------ retrieval ------
def test_knn_accuracy_matches_sklearn_brute_force_cosine():
    from sklearn.neighbors import KNeighborsClassifier

    rng = np.random.default_rng(0)
    centers = rng.normal(size=(2, 8))
    ytr, yte = rng.integers(0, 2, 300), rng.integers(0, 2, 100)
    xtr = centers[ytr] + 1.5 * rng.normal(size=(300, 8))
    xte = centers[yte] + 1.5 * rng.normal(size=(100, 8))
    for k in (1, 5, 15):  # two classes, odd k: no tied votes, so any correct k-NN agrees
        ref = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute").fit(xtr, ytr).score(xte, yte)
        assert knn_accuracy(xtr, ytr, xte, yte, k=k) == pytest.approx(ref)


def test_knn_tied_votes_go_to_the_more_similar_class():
    train = np.array([[1.0, 0.1], [1.0, -0.5]])  # class 7 nearer to the query than class 3
    test = np.array([[1.0, 0.0]])
    assert knn_accuracy(train, [7, 3], test, [7], k=2) == 1.0
    assert knn_accuracy(train, [3, 7], test, [7], k=2) == 0.0


def test_knn_on_mapped_planted_world_beats_chance_by_far(synth):
    m = load_mapping(synth["mapping"])
    with open_cache(synth["train"]) as tr, open_cache(synth["test"]) as te:
        acc = knn_accuracy(m.forward(tr.image("synth_vision")), tr.labels,
                           m.forward(te.image("synth_vision")), te.labels, k=10)
    assert acc > 0.95  # noise 0.1 on well-separated classes: the teacher itself is perfect


def test_text_to_image_recall_counts_hits_by_construction():
    eye = np.eye(3, dtype=np.float32)
    per_class = 2
    labels = np.repeat(np.arange(3), per_class)
    feats = eye[labels] + 0.01 * np.random.default_rng(0).normal(size=(len(labels), 3))
    out = text_to_image_recall(feats, labels, eye, ks=(1, 5))
    assert out["queries"] == 3
    assert out["recall@1"] == 1.0 and out["precision@1"] == 1.0
    assert out["precision@5"] == pytest.approx(per_class / 5)
    wrong = eye.copy()
    wrong[2] = eye[0]  # class 2's text points at class 0's images
    out = text_to_image_recall(feats, labels, wrong, ks=(1, 5))
    assert out["recall@1"] == pytest.approx(2 / 3)
    assert out["recall@5"] == 1.0  # after the 2 class-0 images, 3 of the 4 others: at least one of class 2
    with pytest.raises(ValueError, match="labels reach"):
        text_to_image_recall(feats, labels + 1, eye)


def test_leave_one_out_knn_equals_leaving_each_row_out():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 40)
    x = rng.normal(size=(3, 6))[y] + rng.normal(size=(40, 6))
    x[10], y[10] = x[11], y[11]  # an exact duplicate: only the row itself is left out, not its twin
    want = np.mean([knn_accuracy(np.delete(x, i, 0), np.delete(y, i), x[i:i + 1], y[i:i + 1], k=5)
                    for i in range(len(x))])
    assert knn_accuracy(x, y, x, y, k=5, exclude_self=True) == pytest.approx(want)


def test_zs_evaluate_retrieval_adds_the_metrics_to_each_record(synth, tmp_path):
    import json

    from zoomshot.evaluate.retrieval import retrieval_metrics

    args = ["evaluate", "--mapping", str(synth["mapping"]), "--cache", str(synth["test"])]
    r = CliRunner().invoke(app, [*args, "--retrieval", "--out", str(tmp_path / "with")])
    assert r.exit_code == 0, r.output
    assert "retrieval" in r.stdout and "knn20_acc" in r.stdout
    records = json.loads((tmp_path / "with" / "results.json").read_text())
    m = load_mapping(synth["mapping"])
    with open_cache(synth["test"]) as c:
        labels, classifier = c.labels, c.text("synth_clip").classifier
        feats = {None: c.image("synth_clip"), "mapping": m.forward(c.image("synth_vision"))}
    assert sorted(r["mapping"] is None for r in records) == [False, True]
    for rec in records:
        want = retrieval_metrics(feats[None if rec["mapping"] is None else "mapping"], labels, classifier)
        assert {k: rec["metrics"][k] for k in want} == pytest.approx(want)
    assert all(rec["metrics"]["t2i_recall@1"] == 1.0 for rec in records)  # teacher and mapping find each class

    r = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "without")])
    assert r.exit_code == 0, r.output
    assert all("knn20_acc" not in rec["metrics"]
               for rec in json.loads((tmp_path / "without" / "results.json").read_text()))
