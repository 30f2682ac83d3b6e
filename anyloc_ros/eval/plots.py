"""Plots of evaluation results (PNG, matplotlib Agg): one format for every command."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, ax, path: Path) -> Path:
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def recall_curve(results: list[dict], path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 4))
    for r in results:
        ks = sorted(int(k.split("@")[1]) for k in r if k.startswith("recall@"))
        ax.plot(ks, [r[f"recall@{k}"] for k in ks], marker="o", label=r.get("label", "anyloc"))
    ax.set(xlabel="K", ylabel="Recall@K", ylim=(0, 1.02), xscale="log", title="Recall@K")
    return _save(plt, fig, ax, path)


def pr_curve(curves: list[tuple[str, np.ndarray, np.ndarray]], path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 4))
    for label, recall, precision in curves:
        ax.step(recall, precision, where="post", label=label)
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02), title="Best-match precision-recall")
    return _save(plt, fig, ax, path)


def similarity_matrix(similarity: np.ndarray, positives: list[set[int]], path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 5))
    im = ax.imshow(similarity, cmap="viridis", aspect="auto", interpolation="nearest")
    qs = [q for q, p in enumerate(positives) for _ in p]
    ds = [d for p in positives for d in p]
    ax.scatter(ds, qs, s=1, c="red", marker="s", label="ground truth")
    best = similarity.argmax(axis=1)
    ax.scatter(best, np.arange(len(best)), s=4, c="white", marker="x", label="best match")
    ax.set(xlabel="database image", ylabel="query image", title="Similarity (cosine)")
    ax.legend(fontsize=7, loc="upper right")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
