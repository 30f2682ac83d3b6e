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
    for a in np.atleast_1d(ax):
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
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


def pose_errors(scored: list[dict], path: Path) -> Path:
    """Loop closures' translation and rotation errors against their published 1-sigma (the
    covariance's trace per axis): points below the 2-sigma line are where an honest covariance
    puts about 95% of them."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    panels = (("translation", "translation_error", slice(0, 3), 100.0, "cm"),
              ("rotation", "rotation_error", slice(3, 6), float(np.degrees(1.0)), "deg"))
    for ax, (name, key, part, unit, label) in zip(axes, panels, strict=True):
        err = np.array([s[key] for s in scored]) * unit
        sig = np.array([np.sqrt(np.trace(s["cov"][part, part])) for s in scored]) * unit
        ax.scatter(sig, err, s=12, label=f"{len(err)} closures")
        top = float(max(sig.max(initial=0), err.max(initial=0)) * 1.1 or 1.0)
        ax.plot([0, top], [0, 2 * top], "r--", lw=1, label="error = 2 sigma")
        ax.set_xlim(0, top)
        ax.set_ylim(0, top)
        ax.set_xlabel(f"published sigma ({label})")
        ax.set_ylabel(f"{name} error ({label})")
    return _save(plt, fig, axes, path)
