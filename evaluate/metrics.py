"""Zero-shot metrics from features and a text classifier, accumulated batch by batch.

Logits are cosine similarities between L2-normalised image features and the classifier's
(normalised) class embeddings; a CLIP logit scale would not change any ranking, so none is applied.
`ScoreAccumulator` keeps only counts and sums, so a cache of any size is scored in bounded memory.
"""
from __future__ import annotations

import numpy as np

TOP_K = 5


def normalize_rows(x) -> np.ndarray:
    """L2-normalised float32 rows, C-contiguous (as faiss needs them)."""
    x = np.ascontiguousarray(x, np.float32)
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


class ScoreAccumulator:
    """Counts for acc1, acc5, per-class recall, agreement with reference predictions, and the
    image-feature centroid (for the modality gap), added one batch at a time."""

    def __init__(self, num_classes: int, dim: int):
        self.num_classes = num_classes
        self.correct5 = 0
        self.support = np.zeros(num_classes, np.int64)
        self.hits = np.zeros(num_classes, np.int64)
        self.agree = 0
        self.agree_rows = 0
        self.feature_sum = np.zeros(dim, np.float64)

    def add(self, unit_features: np.ndarray, logits: np.ndarray, labels: np.ndarray,
            reference_pred: np.ndarray | None = None) -> np.ndarray:
        """Score one batch of L2-normalised features and their cosine logits; returns its top-1
        predictions. reference_pred < 0 means 'no reference'."""
        self.feature_sum += unit_features.sum(axis=0, dtype=np.float64)
        pred = logits.argmax(axis=1)
        labels = np.asarray(labels, np.int64)
        right = pred == labels
        # in the top k when fewer than k classes score strictly higher: cheaper than a partial sort
        true = np.take_along_axis(logits, labels[:, None], axis=1)
        self.correct5 += int(((logits > true).sum(axis=1) < TOP_K).sum())
        self.support += np.bincount(labels, minlength=self.num_classes)
        self.hits += np.bincount(labels[right], minlength=self.num_classes)
        if reference_pred is not None:
            have = reference_pred >= 0
            self.agree_rows += int(have.sum())
            self.agree += int((pred[have] == reference_pred[have]).sum())
        return pred

    def metrics(self, classifier: np.ndarray) -> dict:
        """The metrics of a record. The modality gap compares the centroids of the unit image features
        and of the classifier's unit class embeddings: their distance, and the mean image × class-text
        cosine (for unit vectors, the dot product of the centroids)."""
        n, present = int(self.support.sum()), self.support > 0
        recall = self.hits[present] / self.support[present]
        img = self.feature_sum / max(n, 1)
        text = normalize_rows(classifier).mean(axis=0).astype(np.float64)
        gap = {"centroid_distance": float(np.linalg.norm(img - text)), "mean_cosine": float(img @ text)}
        return {
            "acc1": int(self.hits.sum()) / n if n else None,
            "acc5": self.correct5 / n if n and self.num_classes >= TOP_K else None,
            "mean_per_class_recall": float(recall.mean()) if present.any() else None,
            "agreement": self.agree / self.agree_rows if self.agree_rows else None,
            "agreement_rows": self.agree_rows,
            "modality_gap": gap if n else None,
        }

    def per_class(self, names: list[str]) -> list[dict]:
        return [{"class": name, "support": int(s), "correct": int(h), "recall": h / s if s else None}
                for name, s, h in zip(names, self.support, self.hits)]
