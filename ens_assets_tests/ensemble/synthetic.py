"""Synthetic member prediction tables of the training stage's shape, with plantable behaviour."""

from __future__ import annotations

import numpy as np
import polars as pl

CLASSES = ["antelope_duiker", "bird", "hog", "rodent"]


def labels_and_folds(n: int, n_classes: int = len(CLASSES), k: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % n_classes  # balanced, every class present in every fold
    rng.shuffle(y)
    return y, np.arange(n) % k


def member_probs(y: np.ndarray, strength, seed: int, n_classes: int = len(CLASSES),
                 confuse: dict[int, tuple[int, float]] | None = None) -> np.ndarray:
    """Softmax of noise plus `strength[true class]` on the true class; `confuse` {true: (pred, boost)}."""
    rng = np.random.default_rng(seed)
    strength = np.broadcast_to(np.asarray(strength, dtype=float), (n_classes,))
    logits = rng.normal(0.0, 1.0, (len(y), n_classes))
    logits[np.arange(len(y)), y] += strength[y]
    for true, (pred, boost) in (confuse or {}).items():
        logits[y == true, pred] += boost
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def oof_table(probs: np.ndarray, y: np.ndarray, folds: np.ndarray, classes=CLASSES, ids=None) -> pl.DataFrame:
    ids = ids if ids is not None else [f"img{i:05d}" for i in range(len(y))]
    return pl.DataFrame({"image_id": ids, "fold": folds, "label": [classes[i] for i in y],
                         **{c: probs[:, j] for j, c in enumerate(classes)}})


def unlabelled_table(probs: np.ndarray, classes=CLASSES, prefix: str = "test") -> pl.DataFrame:
    return pl.DataFrame({"image_id": [f"{prefix}{i:05d}" for i in range(len(probs))],
                         **{c: probs[:, j] for j, c in enumerate(classes)}})


def planted_members(n: int = 600, seed: int = 0) -> tuple[dict[str, pl.DataFrame], dict[str, pl.DataFrame]]:
    """Three members: 'rodent' fails everywhere (confused with 'hog'); only member 'a' gets 'bird' right."""
    y, folds = labels_and_folds(n, seed=seed)
    y_test, _ = labels_and_folds(80, seed=seed + 1)
    bird, hog, rodent = CLASSES.index("bird"), CLASSES.index("hog"), CLASSES.index("rodent")
    specs = {
        "a": ([2.5, 4.0, 2.5, 0.0], {rodent: (hog, 3.0)}),
        "b": ([2.5, -1.0, 2.5, 0.0], {rodent: (hog, 3.0), bird: (0, 2.0)}),
        "c": ([2.0, -1.0, 2.0, 0.0], {rodent: (hog, 3.0), bird: (0, 2.0)}),
    }
    oof, test = {}, {}
    for i, (name, (strength, confuse)) in enumerate(specs.items()):
        oof[name] = oof_table(member_probs(y, strength, seed * 10 + i, confuse=confuse), y, folds)
        test[name] = unlabelled_table(member_probs(y_test, strength, seed * 10 + i + 5, confuse=confuse))
    return oof, test
