"""Classification metrics of a checkpoint or a member's OOF predictions (sklearn does the arithmetic)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from sklearn.metrics import confusion_matrix, log_loss, precision_recall_fscore_support

from ens_assets.atomic import atomic_path, write_json


def per_class_metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str]) -> dict[str, float]:
    """precision_<class>, recall_<class>, f1_<class> for every class (0 where a class is never predicted/present)."""
    labels = list(range(len(classes)))
    precision, recall, f1, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    out: dict[str, float] = {}
    for i, name in enumerate(classes):
        out[f"precision_{name}"] = float(precision[i])
        out[f"recall_{name}"] = float(recall[i])
        out[f"f1_{name}"] = float(f1[i])
    return out


def probability_metrics(y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> dict[str, float]:
    """log_loss (sklearn, over all classes), accuracy and per-class recall of probability predictions."""
    y_true = np.asarray(y_true)
    probs = np.asarray(probs, dtype=np.float64)
    labels = list(range(len(classes)))
    y_pred = probs.argmax(axis=1)
    _, recall, _, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    return {
        "log_loss": float(log_loss(y_true, probs / probs.sum(axis=1, keepdims=True), labels=labels)),
        "accuracy": float(np.mean(y_pred == y_true)),
        **{f"recall_{name}": float(recall[i]) for i, name in enumerate(classes)},
    }


def write_confusion_matrix(
    directory: str | Path, y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str]
) -> tuple[Path, Path]:
    """confusion_matrix.json (rows = true class) and a PNG heat map, both written atomically."""
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on training machines
    import matplotlib.pyplot as plt

    directory = Path(directory)
    matrix = confusion_matrix(y_true, y_pred, labels=list(range(len(classes))))
    json_path = write_json(directory / "confusion_matrix.json", {"classes": list(classes), "matrix": matrix.tolist()})

    size = 1.0 + 0.55 * len(classes)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (row, col), count in np.ndenumerate(matrix):
        ax.text(col, row, str(count), ha="center", va="center", fontsize=8,
                color="white" if count > matrix.max() / 2 else "black")  # fmt: skip
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    png_path = directory / "confusion_matrix.png"
    with atomic_path(png_path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return json_path, png_path
