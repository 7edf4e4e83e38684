"""Index subsets for subset ensembles: a random k% subset for the base, difficulty strata for copies.

Copies are diversified by *what* they see: examples are ranked by a difficulty score (EL2N or GraNd)
and cut into `n_copies` quantile strata, easiest to hardest; copy j trains on a k% subset drawn from
stratum j. With labels, strata are cut within each class and every copy takes its class share from its
own stratum of each class: global strata would hand a whole easy class to copy 0 and a whole hard
class to the last copy, which trains classifiers that never saw some classes.
"""

from __future__ import annotations

import numpy as np


def subset_size(n: int, fraction: float) -> int:
    """Number of examples in a `fraction` subset of n: rounded, at least 1 when n > 0."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction {fraction} is outside (0, 1]; it is the share of training images per subset")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return 0 if n == 0 else max(1, int(round(fraction * n)))


def random_subset(n: int, fraction: float, seed: int, labels: np.ndarray | None = None) -> np.ndarray:
    """Sorted indices of a random `fraction` subset of range(n); class-proportional when labels are given."""
    rng = np.random.default_rng(seed)
    size = subset_size(n, fraction)
    if labels is None:
        return np.sort(rng.choice(n, size=size, replace=False))
    labels = _check_labels(labels, n)
    picked = []
    for cls, quota in _class_quotas(labels, size).items():
        members = np.flatnonzero(labels == cls)
        picked.append(rng.choice(members, size=quota, replace=False))
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)


def stratified_difficulty_subsets(
    scores: np.ndarray, n_copies: int, fraction: float, seed: int, labels: np.ndarray | None = None,
) -> list[np.ndarray]:
    """One sorted index array per copy, copy j drawn from difficulty stratum j (0 = easiest).

    Each subset holds round(fraction * n) examples. When a stratum is smaller than a copy's quota
    (fraction > 1 / n_copies), the copy tops up with the examples nearest to its stratum in difficulty
    rank. With `labels` the quota is split over classes in proportion to their frequency and strata
    are cut per class.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1:
        raise ValueError(f"scores: expected a 1-D array (one score per example), got shape {scores.shape}")
    bad = np.flatnonzero(~np.isfinite(scores))
    if len(bad):
        raise ValueError(f"scores[{int(bad[0])}] = {scores[bad[0]]} is not finite ({len(bad)} such rows); "
                         "recompute the difficulty scores (a diverged model gives NaN losses)")
    if n_copies < 1:
        raise ValueError(f"n_copies must be >= 1, got {n_copies}")
    n = len(scores)
    size = subset_size(n, fraction)
    if labels is None:
        labels = np.zeros(n, dtype=np.int64)
    labels = _check_labels(labels, n)
    rng = np.random.default_rng(seed)
    subsets: list[list[np.ndarray]] = [[] for _ in range(n_copies)]
    for cls, quota in _class_quotas(labels, size).items():
        members = np.flatnonzero(labels == cls)
        # Random tie-break first, then a stable sort: equal scores land in a seeded, not index, order.
        members = members[rng.permutation(len(members))]
        ranked = members[np.argsort(scores[members], kind="stable")]
        bounds = np.linspace(0, len(ranked), n_copies + 1).round().astype(int)
        for copy in range(n_copies):
            subsets[copy].append(_draw_near_stratum(ranked, bounds[copy], bounds[copy + 1], quota, rng))
    return [np.sort(np.concatenate(parts)) for parts in subsets]


def _draw_near_stratum(ranked: np.ndarray, lo: int, hi: int, quota: int, rng: np.random.Generator) -> np.ndarray:
    """`quota` of ranked[lo:hi] at random; if it is too small, add the nearest ranks outside it."""
    ranks = np.arange(len(ranked))
    distance = np.where(ranks < lo, lo - ranks, np.where(ranks >= hi, ranks - hi + 1, 0))
    # Inside the stratum all distances are 0, so a random key decides who is drawn; outside, nearest first.
    order = np.lexsort((rng.random(len(ranked)), distance))
    return ranked[order[:quota]]


def _check_labels(labels: np.ndarray, n: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != n or (n and not np.issubdtype(labels.dtype, np.integer)):
        raise ValueError(f"labels: expected {n} integer class indices (one per score), got dtype {labels.dtype} "
                         f"shape {labels.shape}")
    return labels


def _class_quotas(labels: np.ndarray, size: int) -> dict[int, int]:
    """Split `size` over classes: one each first (when size allows), the rest in proportion to counts."""
    classes, counts = np.unique(labels, return_counts=True)
    base = np.ones_like(counts) if size >= len(classes) else np.zeros_like(counts)
    spare, room = size - int(base.sum()), counts - base
    exact = spare * room / max(int(room.sum()), 1)
    quotas = base + np.floor(exact).astype(int)
    # Largest remainder; floor(exact) < exact <= room wherever a remainder exists, so no class overflows.
    for i in np.argsort(-(exact - np.floor(exact)), kind="stable"):
        if quotas.sum() >= size:
            break
        quotas[i] += 1
    return {int(c): int(q) for c, q in zip(classes, quotas) if q > 0}
