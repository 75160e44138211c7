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


def write_plots(records: list[dict], out: Path, labels: dict[str, str], best: dict,
                heatmap: bool = False) -> dict:
    """Write the plots for records into out; returns {name: path}. best: the report's best record per
    (row, cache), in row order."""
    plt = _pyplot()
    groups = list(labels.values())
    rows = list(dict.fromkeys(row for row, _ in best))
    methods = [r for r in rows if not r.startswith("CLIP ")]
    paths: dict[str, str] = {}

    def bars(name: str, width: float, panels: list[tuple], percent: bool = True, line_at_100: bool = False):
        """One figure of grouped-bar panels: (rows, the value of a record's metrics, y label, title)."""
        fig, axes = plt.subplots(1, len(panels), figsize=(width, 4), squeeze=False)
        x = np.arange(len(groups))
        for ax, (rows_, value, ylabel, title) in zip(axes[0], panels):
            bar = 0.8 / max(len(rows_), 1)
            for i, row in enumerate(rows_):
                vals = [value(best[(row, c)]["metrics"]) if (row, c) in best else None for c in labels]
                ys = [np.nan if v is None else (100 * v if percent else v) for v in vals]
                ax.bar(x + (i - (len(rows_) - 1) / 2) * bar, ys, bar, label=row)
            ax.set_xticks(x)
            ax.set_xticklabels(groups, rotation=20, ha="right")
            ax.set_ylabel(ylabel)
            ax.grid(axis="y", alpha=0.3)
            if line_at_100:
                ax.axhline(100, color="k", lw=0.8, ls="--")
            ax.set_title(title)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
        paths[name] = _save(fig, out / name)

    def gap(key):
        return lambda m: (m.get("modality_gap") or {}).get(key)

    width = max(5, 1.6 * len(groups) + 2)
    bars("accuracy.png", width, [(rows, lambda m: m.get("acc1"), "top-1 accuracy (%)",
                                  "Zero-shot accuracy per dataset (best mapping per method)")])
    if methods:
        bars("clip_share.png", width, [(methods, lambda m: m.get("clip_share"), "share of CLIP's top-1 (%)",
                                        "Share of CLIP's accuracy recovered")], line_at_100=True)
    bars("modality_gap.png", max(8, 2.8 * len(groups) + 3), [
        (rows, gap("centroid_distance"), "‖μ_image − μ_text‖", "Modality gap: centroid distance"),
        (rows, gap("mean_cosine"), "mean cosine image·text", "Modality gap: mean image–text cosine")],
         percent=False)
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
    return epochs, fractions, np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _heatmap(plt, records, labels, path: Path) -> str | None:
    methods = list(dict.fromkeys(r["method"] for r in records if r["mapping"] is not None))
    grids = [(m, c, heatmap_grid(records, m, c)) for m in methods for c in labels]
    panels = [p for p in grids if p[2][0]]
    if not panels:
        return None
    ncol = min(3, len(panels))
    nrow = (len(panels) + ncol - 1) // ncol
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.0 * ncol + 1, 3.4 * nrow), squeeze=False,
                             layout="constrained")
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (method, cache, (epochs, fractions, grid)) in zip(axes.flat, panels):
        im = ax.imshow(grid, cmap="viridis", aspect="auto", vmin=0, vmax=100)
        ax.set_xticks(range(len(fractions)))
        ax.set_xticklabels([f"{f:g}" for f in fractions])
        ax.set_yticks(range(len(epochs)))
        ax.set_yticklabels([str(e) for e in epochs])
        ax.set_xlabel("fraction of training cache")
        ax.set_ylabel("epochs")
        ax.set_title(f"{method} on {labels[cache]}", fontsize=9)
        for i, j in zip(*np.nonzero(np.isfinite(grid))):
            ax.text(j, i, f"{grid[i, j]:.1f}", ha="center", va="center", fontsize=8,
                    color="white" if grid[i, j] < 60 else "black")
    fig.colorbar(im, ax=axes, label="top-1 accuracy (%)", shrink=0.8)
    return _save(fig, path)
