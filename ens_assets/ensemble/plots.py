"""PNG figures for Dagster markdown metadata and MLflow artifacts (matplotlib, Agg backend)."""

from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")  # headless: Dagster steps and CI have no display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.text import Text  # noqa: E402
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
    """One confusion heatmap per member (+ the ensemble): cells coloured by the share of the true class
    (one colour bar for all panels), the image counts written in."""
    panels = list(zip(stack.members, stack.probs))
    if ensemble_probs is not None:
        panels.append((ensemble_name, ensemble_probs))
    cols = min(max_cols, len(panels))
    rows = -(-len(panels) // cols)
    n = len(stack.classes)
    size = 1.8 + 0.42 * n
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols + 0.8, size * rows), squeeze=False)
    labels = list(range(n))
    image = None
    for index, (ax, (name, probs)) in enumerate(zip(axes.flat, panels)):
        counts = confusion_matrix(stack.y, probs.argmax(axis=1), labels=labels)
        share = counts / np.clip(counts.sum(axis=1, keepdims=True), 1, None)
        image = ax.imshow(share, vmin=0, vmax=1, cmap="Blues")
        for (i, j), count in np.ndenumerate(counts):
            if count:
                ax.text(j, i, str(count), ha="center", va="center", fontsize=6,
                        color="white" if share[i, j] > 0.5 else "black")
        ax.set_title(name, fontsize=8)
        ax.set_xticks(labels, stack.classes, rotation=90, fontsize=6)
        # Class names on the left column only: they would run into the neighbouring panel.
        ax.set_yticks(labels, stack.classes if index % cols == 0 else [], fontsize=6)
        ax.set_xlabel("predicted", fontsize=7)
        if index % cols == 0:
            ax.set_ylabel("true", fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    if image is not None:
        bar = fig.colorbar(image, ax=list(axes.flat), shrink=0.8, pad=0.02)
        bar.set_label("share of the true class (numbers: images)", fontsize=7)
        bar.ax.tick_params(labelsize=6)
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
    """Accuracy and honest log loss against inference FLOPs per image (see pareto_figure)."""
    return _to_png(pareto_figure(compute_df))


def pareto_figure(compute_df: pl.DataFrame):
    """Members, ensembles and the 'one bigger model' point against FLOPs-true cost, one panel for accuracy
    and one for log loss, each with its Pareto front; point labels are moved apart until none overlap."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    panels = ((axes[0], "accuracy", "pareto_accuracy", "honest accuracy"), (axes[1], "log_loss", "pareto", "honest log loss"))
    bigger = compute_df["bigger_model"] if "bigger_model" in compute_df.columns else pl.Series([False] * compute_df.height)
    for ax, metric, front_col, label in panels:
        styles = (("member", "o", "C0", ~bigger), ("ensemble", "s", "C1", ~bigger), ("one bigger model", "*", "C3", bigger))
        for kind, marker, color, mask in styles:
            part = compute_df.filter(mask & (pl.col("kind") == kind) if kind != "one bigger model" else mask)
            if part.height:
                ax.scatter(part["flops_per_image"].to_numpy(), part[metric].to_numpy(), marker=marker, color=color,
                           s=90 if marker == "*" else 30, label=kind, zorder=3)  # fmt: skip
        if front_col in compute_df.columns:
            front = compute_df.filter(pl.col(front_col)).sort("flops_per_image")
            ax.plot(front["flops_per_image"].to_numpy(), front[metric].to_numpy(), "k--", lw=1, label="Pareto front")
        ax.set_xscale("log")
        ax.set_xlabel("inference FLOPs per image (per model x fold models, summed over weighted members)", fontsize=7)
        ax.set_ylabel(label)
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()  # before placing labels: a later layout change would move points under fixed offsets
    names = [f"{n} (bigger model)" if b else n for n, b in zip(compute_df["name"].to_list(), bigger.to_list())]
    for ax, metric, _, _ in panels:
        place_labels(ax, compute_df["flops_per_image"].to_numpy(), compute_df[metric].to_numpy(), names)
    return fig


def place_labels(ax, xs, ys, names, fontsize: int = 6, max_moves: int = 60) -> list:
    """Annotate each point; a label that would overlap one placed before moves up (then down) in small
    steps, with a leader line back to its point. Returns the annotations."""
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    placed, annotations = [], []
    order = np.lexsort((np.asarray(ys, dtype=float), np.asarray(xs, dtype=float)))
    for i in order:
        note = ax.annotate(names[i], (xs[i], ys[i]), xytext=(4, 4), textcoords="offset points", fontsize=fontsize,
                           arrowprops=dict(arrowstyle="-", lw=0.4, color="grey", shrinkA=0, shrinkB=2))  # fmt: skip
        step = fontsize + 2
        for move in range(max_moves):
            box = _text_box(note, renderer).expanded(1.02, 1.1)
            if not any(box.overlaps(other) for other in placed):
                break
            # Alternate above and below, further each time: 4+s, 4-s, 4+2s, 4-2s ...
            k = move // 2 + 1
            note.set_position((4, 4 + (k if move % 2 == 0 else -k) * step))
        placed.append(_text_box(note, renderer))
        annotations.append(note)
    return annotations


def _text_box(annotation, renderer):
    """The label's own text box (an Annotation's extent also spans its leader line)."""
    return Text.get_window_extent(annotation, renderer)


def overlapping_labels(annotations, renderer) -> list[tuple[str, str]]:
    """Pairs of annotation texts whose boxes overlap (what place_labels avoids)."""
    boxes = [(a.get_text(), _text_box(a, renderer)) for a in annotations]
    return [(n1, n2) for i, (n1, b1) in enumerate(boxes) for n2, b2 in boxes[i + 1:] if b1.overlaps(b2)]


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
