"""Bootstrap intervals for scores and paired differences, resampling camera sites (or images).

Two `make demo` runs of one commit on two machines differed by 0.026 in best-member log loss, so a delta of
0.02 can be noise. Images of one site are correlated (same background, same animals), so the resampling
unit is the site: each replicate draws sites with replacement and scores every image of a drawn site. A
difference is called real only when its paired interval (the same replicates for both sides) excludes zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ens_assets.ensemble.combiners import LOG_EPS

DEFAULT_REPLICATES = 200
DEFAULT_LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    value: float
    lo: float
    hi: float

    def excludes_zero(self) -> bool:
        return self.lo > 0 or self.hi < 0

    def to_dict(self) -> dict[str, float]:
        return {"value": self.value, "lo": self.lo, "hi": self.hi}


class Resampler:
    """Cluster bootstrap replicates over groups (sites); one instance gives every score the same draws.

    `groups`: one label per image (its site), or None to resample images. The replicates are fixed by
    `seed`, so paired differences use identical draws and reruns give identical intervals.
    """

    def __init__(self, groups: Sequence | np.ndarray | None, n_images: int, *,
                 replicates: int = DEFAULT_REPLICATES, level: float = DEFAULT_LEVEL, seed: int = 0):
        if groups is None:
            codes = np.arange(n_images)
            self.unit = "images"
        else:
            groups = np.asarray(groups)
            if len(groups) != n_images:
                raise ValueError(f"{len(groups)} group labels for {n_images} images; give one site per image")
            _, codes = np.unique(groups.astype(str), return_inverse=True)
            # One site cannot be resampled meaningfully: fall back to images.
            self.unit = "sites" if codes.max(initial=0) >= 1 else "images"
            if self.unit == "images":
                codes = np.arange(n_images)
        self.codes = codes
        self.n_groups = int(codes.max(initial=-1)) + 1
        self.level = level
        rng = np.random.default_rng(seed)
        # (B, G) how often each group is drawn in each replicate.
        self.counts = rng.multinomial(self.n_groups, np.full(self.n_groups, 1.0 / self.n_groups), size=replicates)

    def _group_sums(self, values: np.ndarray) -> np.ndarray:
        return np.bincount(self.codes, weights=values, minlength=self.n_groups)

    def mean(self, values: np.ndarray, mask: np.ndarray | None = None) -> Interval:
        """Mean of per-image `values` (over the images in `mask`) with its percentile interval."""
        values = np.asarray(values, dtype=np.float64)
        weight = np.ones_like(values) if mask is None else np.asarray(mask, dtype=np.float64)
        point = float((values * weight).sum() / weight.sum()) if weight.sum() else float("nan")
        num = self.counts @ self._group_sums(values * weight)
        den = self.counts @ self._group_sums(weight)
        with np.errstate(invalid="ignore", divide="ignore"):
            replicates = num / den
        replicates = replicates[np.isfinite(replicates)]
        if not len(replicates):
            return Interval(point, float("nan"), float("nan"))
        tail = (1 - self.level) / 2 * 100
        lo, hi = np.percentile(replicates, [tail, 100 - tail])
        return Interval(point, float(lo), float(hi))

    def paired(self, a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> Interval:
        """Mean of a - b per image (same images, same replicates): the paired difference and its interval."""
        return self.mean(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64), mask)


def image_log_losses(probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-image negative log probability of the true class (their mean is the multiclass log loss)."""
    p = np.clip(np.asarray(probs, dtype=np.float64)[np.arange(len(y)), y], LOG_EPS, None)
    return -np.log(p)


def image_correct(probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (np.asarray(probs).argmax(axis=1) == y).astype(np.float64)


def score_intervals(probs: np.ndarray, y: np.ndarray, resampler: Resampler) -> dict[str, Interval]:
    """Log loss and accuracy with bootstrap intervals."""
    return {"log_loss": resampler.mean(image_log_losses(probs, y)), "accuracy": resampler.mean(image_correct(probs, y))}


def compare(new_probs: np.ndarray, old_probs: np.ndarray, y: np.ndarray, resampler: Resampler,
            classes: Sequence[str]) -> dict[str, dict]:
    """Paired deltas new - old: log loss, accuracy and recall per class, each with its interval and verdict.

    `better` is True only when the interval excludes zero in the improving direction (lower log loss,
    higher accuracy/recall); `worse` likewise; otherwise the change is within the noise.
    """
    out: dict[str, dict] = {}

    def verdict(interval: Interval, lower_is_better: bool) -> dict:
        improving = interval.hi < 0 if lower_is_better else interval.lo > 0
        worsening = interval.lo > 0 if lower_is_better else interval.hi < 0
        return {**interval.to_dict(), "better": bool(improving), "worse": bool(worsening)}

    out["log_loss"] = verdict(resampler.paired(image_log_losses(new_probs, y), image_log_losses(old_probs, y)), True)
    new_correct, old_correct = image_correct(new_probs, y), image_correct(old_probs, y)
    out["accuracy"] = verdict(resampler.paired(new_correct, old_correct), False)
    for c, name in enumerate(classes):
        mask = y == c
        if mask.any():
            out[f"recall/{name}"] = verdict(resampler.paired(new_correct, old_correct, mask), False)
    return out
