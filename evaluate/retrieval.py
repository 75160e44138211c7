"""Retrieval metrics with faiss: k-NN classification accuracy and text-to-image recall, on cosine
similarity (L2-normalised features in an exact inner-product index, IndexFlatIP, so no index
approximation changes a result). `zs evaluate --retrieval` adds `knn20_acc` (leave-one-out on the
evaluation cache) and `t2i_recall@1/5/10` (queries: the cache's class text embeddings) to each
record's metrics: on the mapped features for a mapping, on CLIP's own image features for CLIP.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .metrics import normalize_rows

SEARCH_CHUNK = 8192


def _flat_index(feats: np.ndarray):
    import faiss

    index = faiss.IndexFlatIP(feats.shape[1])
    index.add(feats)
    return index


def knn_accuracy(train_feats, train_labels, test_feats, test_labels, k: int = 20,
                 exclude_self: bool = False) -> float:
    """Top-1 accuracy of cosine k-NN majority voting: each test image takes the majority label of its
    k most similar training images; a tie in votes goes to the class whose tied neighbours have the
    larger summed similarity.

    exclude_self: the test set is the training set (leave-one-out); each row's own entry is left out
    of its neighbours, by row number, so duplicate features do not matter."""
    train = normalize_rows(train_feats)
    test = normalize_rows(test_feats)
    train_labels = np.asarray(train_labels)
    test_labels = np.asarray(test_labels)
    if train.ndim != 2 or test.ndim != 2 or train.shape[1] != test.shape[1]:
        raise ValueError(f"train features {train.shape} and test features {test.shape} must be (N, d) of one d")
    if len(train) != len(train_labels) or len(test) != len(test_labels):
        raise ValueError("features and labels must have the same number of rows")
    if k < 1 or len(train) == 0:
        raise ValueError(f"k-NN needs k >= 1 and at least one training row (k={k}, rows={len(train)})")
    if len(test) == 0:
        raise ValueError("k-NN accuracy needs at least one test row")
    if exclude_self and len(train) != len(test):
        raise ValueError("exclude_self needs the same rows as training and test set")
    k = min(k, len(train) - 1 if exclude_self else len(train))
    if k < 1:
        raise ValueError("leave-one-out k-NN needs at least two rows")
    classes, train_idx = np.unique(train_labels, return_inverse=True)
    index = _flat_index(train)
    correct = 0
    for lo in range(0, len(test), SEARCH_CHUNK):
        sims, nbrs = index.search(test[lo:lo + SEARCH_CHUNK], k + 1 if exclude_self else k)
        n = len(nbrs)
        if exclude_self:
            sims, nbrs = _drop_self(sims, nbrs, np.arange(lo, lo + n))
        votes = np.zeros((n, len(classes)), np.float64)
        sim_sum = np.zeros((n, len(classes)), np.float64)
        rows = np.repeat(np.arange(n), k)
        cls = train_idx[nbrs.ravel()]
        np.add.at(votes, (rows, cls), 1.0)
        np.add.at(sim_sum, (rows, cls), sims.ravel())
        # one more vote always outweighs any difference of summed similarities (at most 2k)
        pred = classes[np.argmax(votes * (2 * k + 1) + sim_sum, axis=1)]
        correct += int((pred == test_labels[lo:lo + SEARCH_CHUNK]).sum())
    return correct / len(test)


def _drop_self(sims: np.ndarray, nbrs: np.ndarray, own: np.ndarray):
    """Remove each row's own id from its k+1 neighbours (or its last neighbour, if absent)."""
    is_self = nbrs == own[:, None]
    drop = np.where(is_self.any(axis=1), is_self.argmax(axis=1), nbrs.shape[1] - 1)
    keep = np.ones(nbrs.shape, bool)
    keep[np.arange(len(nbrs)), drop] = False
    k = nbrs.shape[1] - 1
    return sims[keep].reshape(-1, k), nbrs[keep].reshape(-1, k)


def text_to_image_recall(image_feats, labels, classifier, ks: Sequence[int] = (1, 5, 10)) -> dict:
    """recall@K and precision@K of class-name queries over images: each class present in labels is
    one query (its classifier row); recall@K is the share of queries with at least one image of
    their class among the top K images, precision@K the mean share of the top K that are of it.

    classifier: (C, d) text embeddings, row c for class c; labels: (N,) class indices (< 0: unlabelled,
    still searchable, never relevant)."""
    feats = normalize_rows(image_feats)
    labels = np.asarray(labels, np.int64)
    text = normalize_rows(classifier)
    if feats.shape[1] != text.shape[1] or len(feats) != len(labels):
        raise ValueError(f"image features {feats.shape}, labels {labels.shape} and classifier {text.shape} do not fit")
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive integers (got {ks})")
    if (labels >= len(text)).any():
        raise ValueError(f"labels reach {int(labels.max())} but the classifier has {len(text)} classes")
    queries = np.unique(labels[labels >= 0])
    if len(queries) == 0:
        raise ValueError("text-to-image recall needs labelled images")
    depth = min(ks[-1], len(feats))
    _, top = _flat_index(feats).search(np.ascontiguousarray(text[queries]), depth)
    relevant = labels[top] == queries[:, None]  # (Q, depth)
    out: dict = {"queries": int(len(queries))}
    for k in ks:
        hit = relevant[:, :min(k, depth)]
        out[f"recall@{k}"] = float(hit.any(axis=1).mean())
        out[f"precision@{k}"] = float(hit.sum(axis=1).mean() / k)
    return out


KNN_K = 20
RECALL_KS = (1, 5, 10)


def retrieval_metrics(feats: np.ndarray, labels: np.ndarray, classifier: np.ndarray) -> dict:
    """`zs evaluate --retrieval`'s metrics of embedded images: leave-one-out k-NN accuracy and
    class-name text-to-image recall@K."""
    labels = np.asarray(labels)
    out: dict = {f"knn{KNN_K}_acc": knn_accuracy(feats, labels, feats, labels, KNN_K, exclude_self=True)
                 if len(feats) > 1 else None}
    recall = text_to_image_recall(feats, labels, classifier, RECALL_KS)
    out.update({f"t2i_recall@{x}": recall[f"recall@{x}"] for x in RECALL_KS})
    return out
