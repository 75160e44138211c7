"""PNG plots of evaluation records (matplotlib, Agg backend): accuracy per dataset and method,
share of CLIP's accuracy recovered, the modality gap, and a sweep's epochs × fractions heatmap."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from zoomshot.fileutil import atomic_path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> str:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return str(path)


def _grouped_bars(ax, groups: list[str], series: dict[str, list], ylabel: str, percent: bool = True):
    n = max(len(series), 1)
    width = 0.8 / n
    x = np.arange(len(groups))
    for i, (name, vals) in enumerate(series.items()):
        ys = [np.nan if v is None else (100 * v if percent else v) for v in vals]
        ax.bar(x + (i - (n - 1) / 2) * width, ys, width, label=name)
    ax.set_xticks(x)
    ax.set_xticklabels(groups, rotation=20, ha="right")
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)


def write_plots(records: list[dict], out: Path, labels: dict[str, str], best: dict, rows: list[str],
                heatmap: bool = False) -> dict:
    """Write the plots for records into out; returns {name: path}. best: the report's best record per
    (row, cache), rows: its row names in order."""
    plt = _pyplot()
    caches = list(labels)
    groups = [labels[c] for c in caches]
    paths: dict[str, str] = {}

    def series(metric, rows_, pick=lambda m, k: m.get(k)):
        return {row: [pick(best[(row, c)]["metrics"], metric) if (row, c) in best else None for c in caches]
                for row in rows_}

    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(groups) + 2), 4))
    _grouped_bars(ax, groups, series("acc1", rows), "top-1 accuracy (%)")
    ax.set_title("Zero-shot accuracy per dataset (best mapping per method)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    paths["accuracy.png"] = _save(fig, out / "accuracy.png")

    methods = [r for r in rows if not r.startswith("CLIP ")]
    if methods:
        fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(groups) + 2), 4))
        _grouped_bars(ax, groups, series("clip_share", methods), "share of CLIP's top-1 (%)")
        ax.axhline(100, color="k", lw=0.8, ls="--")
        ax.set_title("Share of CLIP's accuracy recovered")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
        paths["clip_share.png"] = _save(fig, out / "clip_share.png")

    def gap(key):
        return lambda m, _k: (m.get("modality_gap") or {}).get(key)

    fig, axes = plt.subplots(1, 2, figsize=(max(8, 2.8 * len(groups) + 3), 4))
    _grouped_bars(axes[0], groups, series(None, rows, gap("centroid_distance")), "‖μ_image − μ_text‖",
                  percent=False)
    axes[0].set_title("Modality gap: centroid distance")
    _grouped_bars(axes[1], groups, series(None, rows, gap("mean_cosine")), "mean cosine image·text",
                  percent=False)
    axes[1].set_title("Modality gap: mean image–text cosine")
    axes[1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    paths["modality_gap.png"] = _save(fig, out / "modality_gap.png")

    if heatmap:
        p = _heatmap(plt, records, labels, out / "heatmap.png")
        if p:
            paths["heatmap.png"] = p
    return paths


def heatmap_grid(records: list[dict], method: str, cache: str) -> tuple[list, list, np.ndarray]:
    """(epochs, fractions, acc1 grid in %) for one method on one cache; cells with several
    mappings (e.g. several training caches) hold their mean, missing cells NaN."""
    rs = [r for r in records if r["mapping"] is not None and r["method"] == method and r["cache"] == cache
          and r.get("epochs") is not None and r.get("fraction") is not None]
    epochs = sorted({r["epochs"] for r in rs})
    fractions = sorted({r["fraction"] for r in rs})
    total = np.zeros((len(epochs), len(fractions)))
    count = np.zeros_like(total)
    for r in rs:
        acc = r["metrics"].get("acc1")
        if acc is not None:
            i, j = epochs.index(r["epochs"]), fractions.index(r["fraction"])
            total[i, j] += 100 * acc
            count[i, j] += 1
    with np.errstate(invalid="ignore"):
        return epochs, fractions, np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _heatmap(plt, records, labels, path: Path) -> str | None:
    methods = list(dict.fromkeys(r["method"] for r in records if r["mapping"] is not None))
    panels = [(m, c) for m in methods for c in labels if heatmap_grid(records, m, c)[0]]
    if not panels:
        return None
    ncol = min(3, len(panels))
    nrow = (len(panels) + ncol - 1) // ncol
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.0 * ncol + 1, 3.4 * nrow), squeeze=False,
                             layout="constrained")
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (method, cache) in zip(axes.flat, panels):
        epochs, fractions, grid = heatmap_grid(records, method, cache)
        im = ax.imshow(grid, cmap="viridis", aspect="auto", vmin=0, vmax=100)
        ax.set_xticks(range(len(fractions)))
        ax.set_xticklabels([f"{f:g}" for f in fractions])
        ax.set_yticks(range(len(epochs)))
        ax.set_yticklabels([str(e) for e in epochs])
        ax.set_xlabel("fraction of training cache")
        ax.set_ylabel("epochs")
        ax.set_title(f"{method} on {labels[cache]}", fontsize=9)
        for i in range(len(epochs)):
            for j in range(len(fractions)):
                if np.isfinite(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:.1f}", ha="center", va="center", fontsize=8,
                            color="white" if grid[i, j] < 60 else "black")
    fig.colorbar(im, ax=axes, label="top-1 accuracy (%)", shrink=0.8)
    return _save(fig, path)
