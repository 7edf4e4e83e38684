"""Temperature scaling (Guo et al., 2017) of probability tables, and the expected calibration error.

Log loss, the Conser-vision metric, punishes over-confidence; one temperature per model (p ** (1/T),
renormalized: softmax of log p / T) fixes most of it without changing any argmax. Temperatures are fitted
out-of-fold like the combiner weights: the temperature applied to fold f was fitted on other folds.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax
from sklearn.base import BaseEstimator

from ens_assets.ensemble.combiners import LOG_EPS

# log T is searched in this range (T from 0.05 to 20): wide enough for any sane model, bounded for stability.
LOG_T_BOUNDS = (-3.0, 3.0)
ECE_BINS = 10


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    logs = np.log(np.clip(np.asarray(probs, dtype=np.float64), LOG_EPS, 1.0))
    return np.exp(log_softmax(logs / float(temperature), axis=1))


def _log_loss(probs: np.ndarray, y: np.ndarray, temperature: float) -> float:
    logs = np.log(np.clip(np.asarray(probs, dtype=np.float64), LOG_EPS, 1.0))
    return float(-log_softmax(logs / temperature, axis=1)[np.arange(len(y)), y].mean())


class TemperatureScaler(BaseEstimator):
    """sklearn-shaped: fit(probs, y) learns one temperature; predict_proba(probs) applies it."""

    def fit(self, probs: np.ndarray, y: np.ndarray) -> "TemperatureScaler":
        probs, y = np.asarray(probs), np.asarray(y, dtype=np.int64)
        if probs.ndim != 2 or len(probs) != len(y) or len(y) == 0:
            raise ValueError(f"expected probabilities (images, classes) and one label per image, got {probs.shape}, {y.shape}")
        result = minimize_scalar(lambda t: _log_loss(probs, y, float(np.exp(t))), bounds=LOG_T_BOUNDS, method="bounded")
        self.temperature_ = float(np.exp(result.x))
        return self

    def predict_proba(self, probs: np.ndarray) -> np.ndarray:
        return apply_temperature(probs, self.temperature_)


def nested_temperature(probs: np.ndarray, y: np.ndarray, folds: np.ndarray) -> tuple[np.ndarray, dict[int, float]]:
    """Calibrated OOF probabilities where fold f's rows use a temperature fitted on the other folds' rows.

    `probs` are already out-of-fold (a member's OOF, or an ensemble's nested OOF). Returns the calibrated
    rows and the temperature used per fold. With one fold, the temperature is fitted in-sample.
    """
    out = np.empty_like(np.asarray(probs, dtype=np.float64))
    temperatures: dict[int, float] = {}
    unique = np.unique(folds)
    for f in unique:
        test = folds == f
        train = ~test if len(unique) > 1 else test
        scaler = TemperatureScaler().fit(probs[train], y[train])
        out[test] = scaler.predict_proba(probs[test])
        temperatures[int(f)] = scaler.temperature_
    return out, temperatures


def reliability_bins(probs: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> dict[str, np.ndarray | float]:
    """Top-label confidence vs accuracy in equal-width bins, and the expected calibration error.

    ECE = sum over bins of |accuracy - confidence| weighted by the share of images in the bin.
    """
    probs = np.asarray(probs, dtype=np.float64)
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    count = np.bincount(which, minlength=bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.bincount(which, weights=correct, minlength=bins) / count
        mean_conf = np.bincount(which, weights=confidence, minlength=bins) / count
    filled = count > 0
    ece = float((np.abs(accuracy[filled] - mean_conf[filled]) * count[filled]).sum() / count.sum())
    return {"edges": edges, "count": count, "accuracy": accuracy, "confidence": mean_conf, "ece": ece}
