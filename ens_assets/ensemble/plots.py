"""PNG figures for Dagster markdown metadata and MLflow artifacts (matplotlib, Agg backend)."""

from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")  # headless: Dagster steps and CI have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
from sklearn.metrics import confusion_matrix  # noqa: E402

from ens_assets.ensemble.tables import MemberStack  # noqa: E402


def _to_png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def png_markdown(png_bytes: bytes, alt: str) -> str:
    """Inline PNG for Dagster `MetadataValue.md`."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png_bytes).decode()})"


def confusion_grid_png(stack: MemberStack, ensemble_probs: np.ndarray | None = None,
                       ensemble_name: str = "ensemble", max_cols: int = 3) -> bytes:
    """One row-normalized confusion heatmap per member (+ the ensemble), sharing one colour scale."""
    panels = list(zip(stack.members, stack.probs))
    if ensemble_probs is not None:
        panels.append((ensemble_name, ensemble_probs))
    cols = min(max_cols, len(panels))
    rows = -(-len(panels) // cols)
    size = 1.6 + 0.35 * len(stack.classes)
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows), squeeze=False)
    labels = list(range(len(stack.classes)))
    for ax, (name, probs) in zip(axes.flat, panels):
        cm = confusion_matrix(stack.y, probs.argmax(axis=1), labels=labels).astype(float)
        cm = cm / np.clip(cm.sum(axis=1, keepdims=True), 1, None)
        ax.imshow(cm, vmin=0, vmax=1, cmap="Blues")
        ax.set_title(name, fontsize=8)
        ax.set_xticks(labels, stack.classes, rotation=90, fontsize=6)
        ax.set_yticks(labels, stack.classes, fontsize=6)
        ax.set_xlabel("predicted", fontsize=7)
        ax.set_ylabel("true", fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    return _to_png(fig)


def recall_matrix_png(recall_df: pl.DataFrame) -> bytes:
    """Members x classes recall heatmap with the values written in (null = no images of that class)."""
    classes = [c for c in recall_df.columns if c != "member"]
    values = recall_df.select(classes).to_numpy().astype(float)
    fig, ax = plt.subplots(figsize=(1.5 + 0.6 * len(classes), 0.8 + 0.4 * recall_df.height))
    ax.imshow(np.nan_to_num(values, nan=0.0), vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
    for (i, j), v in np.ndenumerate(values):
        ax.text(j, i, "-" if np.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(recall_df.height), recall_df["member"].to_list(), fontsize=7)
    ax.set_title("per-class recall (OOF)", fontsize=9)
    return _to_png(fig)


def pareto_png(compute_df: pl.DataFrame) -> bytes:
    """Honest log loss against FLOPs per image; the Pareto front is drawn as a line."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for kind, marker in (("member", "o"), ("ensemble", "s")):
        part = compute_df.filter(pl.col("kind") == kind)
        ax.scatter(part["flops_per_image"].to_numpy(), part["log_loss"].to_numpy(), marker=marker, label=kind)
        for row in part.iter_rows(named=True):
            ax.annotate(row["name"], (row["flops_per_image"], row["log_loss"]), fontsize=6,
                        xytext=(3, 3), textcoords="offset points")
    front = compute_df.filter(pl.col("pareto")).sort("flops_per_image")
    ax.plot(front["flops_per_image"].to_numpy(), front["log_loss"].to_numpy(), "k--", lw=1, label="Pareto front")
    ax.set_xscale("log")
    ax.set_xlabel("FLOPs per image (sum over members with weight)")
    ax.set_ylabel("honest log loss")
    ax.legend(fontsize=7)
    return _to_png(fig)


def reliability_png(curves: dict[str, dict]) -> bytes:
    """Reliability diagram: top-label confidence vs accuracy per bin, one line per model, ECE in the legend.

    `curves` maps a name to `calibration.reliability_bins` output.
    """
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls=":", label="perfectly calibrated")
    for name, bins in curves.items():
        filled = bins["count"] > 0
        ax.plot(bins["confidence"][filled], bins["accuracy"][filled], marker="o", ms=3,
                label=f"{name} (ECE {bins['ece']:.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top class)")
    ax.set_ylabel("accuracy")
    ax.set_title("reliability (nested OOF)", fontsize=9)
    ax.legend(fontsize=6, loc="upper left")
    return _to_png(fig)
