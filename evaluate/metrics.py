"""Zero-shot metrics from features and a text classifier, accumulated batch by batch.

Logits are cosine similarities between L2-normalised image features and the classifier's
(normalised) class embeddings; a CLIP logit scale would not change any ranking, so none is applied.
`ScoreAccumulator` keeps only counts and sums, so a cache of any size is scored in bounded memory.
"""
from __future__ import annotations

import numpy as np

TOP_K = 5


def normalize_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)


def zero_shot_logits(features: np.ndarray, classifier: np.ndarray, batch_size: int = 65536) -> np.ndarray:
    """Cosine logits (N, K) of features (N, d) against a classifier (K, d), computed in row batches."""
    features = np.asarray(features)
    classifier = normalize_rows(classifier)
    if features.ndim != 2 or features.shape[1] != classifier.shape[1]:
        raise ValueError(f"features of shape {features.shape} do not fit a classifier of shape {classifier.shape}")
    out = np.empty((len(features), len(classifier)), np.float32)
    for lo in range(0, len(features), max(1, batch_size)):
        hi = lo + batch_size
        out[lo:hi] = normalize_rows(features[lo:hi]) @ classifier.T
    return out


def label_ranks(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """0-based rank of each row's true label: how many classes score strictly higher.

    The label is in the top k when its rank is below k; one comparison pass, far cheaper than a
    partial sort over K classes."""
    true = np.take_along_axis(logits, labels[:, None], axis=1)
    return (logits > true).sum(axis=1)


class ScoreAccumulator:
    """Counts for acc1, acc5, per-class recall, agreement with reference predictions, and the
    image-feature centroid (for the modality gap), added one batch at a time."""

    def __init__(self, num_classes: int, dim: int):
        self.num_classes = num_classes
        self.n = 0
        self.correct1 = 0
        self.correct5 = 0
        self.support = np.zeros(num_classes, np.int64)
        self.hits = np.zeros(num_classes, np.int64)
        self.agree = 0
        self.agree_rows = 0
        self.feature_sum = np.zeros(dim, np.float64)

    def add(self, features: np.ndarray, labels: np.ndarray, classifier: np.ndarray,
            reference_pred: np.ndarray | None = None) -> np.ndarray:
        """Score one batch; returns its top-1 predictions. reference_pred < 0 means 'no reference'."""
        feats = normalize_rows(features)
        return self.add_logits(feats, feats @ normalize_rows(classifier).T, labels, reference_pred)

    def add_logits(self, unit_features: np.ndarray, logits: np.ndarray, labels: np.ndarray,
                   reference_pred: np.ndarray | None = None) -> np.ndarray:
        """`add` for a batch whose L2-normalised features and cosine logits are already computed."""
        self.feature_sum += unit_features.sum(axis=0, dtype=np.float64)
        pred = logits.argmax(axis=1)
        labels = np.asarray(labels, np.int64)
        right = pred == labels
        self.n += len(labels)
        self.correct1 += int(right.sum())
        self.correct5 += int((label_ranks(logits, labels) < TOP_K).sum())
        self.support += np.bincount(labels, minlength=self.num_classes)
        self.hits += np.bincount(labels[right], minlength=self.num_classes)
        if reference_pred is not None:
            have = reference_pred >= 0
            self.agree_rows += int(have.sum())
            self.agree += int((pred[have] == reference_pred[have]).sum())
        return pred

    def metrics(self, text_centroid: np.ndarray) -> dict:
        present = self.support > 0
        recall = self.hits[present] / self.support[present]
        img_centroid = self.feature_sum / max(self.n, 1)
        return {
            "acc1": self.correct1 / self.n if self.n else None,
            "acc5": self.correct5 / self.n if self.n and self.num_classes >= TOP_K else None,
            "mean_per_class_recall": float(recall.mean()) if present.any() else None,
            "agreement": self.agree / self.agree_rows if self.agree_rows else None,
            "agreement_rows": self.agree_rows,
            "modality_gap": modality_gap(img_centroid, text_centroid) if self.n else None,
        }

    def per_class(self, names: list[str]) -> list[dict]:
        return [{"class": name, "support": int(s), "correct": int(h), "recall": h / s if s else None}
                for name, s, h in zip(names, self.support, self.hits)]


def text_centroid(classifier: np.ndarray) -> np.ndarray:
    return normalize_rows(classifier).mean(axis=0).astype(np.float64)


def modality_gap(image_centroid: np.ndarray, text_centroid: np.ndarray) -> dict:
    """The gap between the centroids of L2-normalised image and class-text embeddings.

    `centroid_distance` is ‖μ_img − μ_text‖; `mean_cosine` is the mean cosine over all
    image × class-text pairs, which for unit vectors equals μ_img · μ_text."""
    return {
        "centroid_distance": float(np.linalg.norm(image_centroid - text_centroid)),
        "mean_cosine": float(image_centroid @ text_centroid),
    }
