"""Ensemble combiners: scikit-learn shaped estimators over stacked member probabilities.

Every combiner takes `P` of shape (members, images, classes) with rows summing to 1, `fit(P, y)` learns
member weights from OOF predictions, `predict_proba(P)` returns (images, classes) rows summing to 1, and
`spec()` is a JSON-able record of what was learned (enough to rebuild it with `combiner_from_spec`).

Log loss of an arithmetic mixture depends only on the probability each member gives the true class, so
the weighted and greedy fits work on that (members, images) matrix: 50 members x 100k images is cheap.
"""

from __future__ import annotations

import inspect
import warnings
from typing import Any, Sequence

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit, softmax
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

# Probabilities are clipped here before taking logs (sklearn's log_loss clips at float64 eps too).
LOG_EPS = 1e-15


class CombinerError(ValueError):
    """Inputs a combiner cannot use; the message says what shape/labels were expected."""


def check_probs(P: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
    P = np.asarray(P)
    if P.ndim != 3:
        raise CombinerError(f"expected member probabilities of shape (members, images, classes), got {P.shape}")
    if P.shape[0] == 0 or P.shape[1] == 0:
        raise CombinerError(f"need at least one member and one image, got shape {P.shape}")
    if y is not None:
        y = np.asarray(y)
        if y.shape != (P.shape[1],):
            raise CombinerError(f"labels have shape {y.shape}; expected ({P.shape[1]},) to match P {P.shape}")
        if y.min() < 0 or y.max() >= P.shape[2]:
            raise CombinerError(f"labels must be class indices in 0..{P.shape[2] - 1}, got {y.min()}..{y.max()}")
    return P


def true_class_probs(P: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(M, N) probability each member gives each image's true class."""
    return np.take_along_axis(P, np.asarray(y)[None, :, None], axis=2)[:, :, 0].astype(np.float64)


def mixture_log_loss(q_true: np.ndarray, axis: int = -1) -> np.ndarray:
    """Mean negative log of true-class probabilities (vectorized multiclass log loss)."""
    return -np.log(np.clip(q_true, LOG_EPS, None)).mean(axis=axis)


def _normalize_rows(q: np.ndarray) -> np.ndarray:
    q = np.asarray(q, dtype=np.float64)
    return q / q.sum(axis=1, keepdims=True)


class Combiner(BaseEstimator):
    """Shared fit bookkeeping; subclasses implement `_fit` and `_predict`."""

    method: str = ""

    def fit(self, P: np.ndarray, y: np.ndarray, members: Sequence[str] | None = None,
            classes: Sequence[str] | None = None) -> "Combiner":
        P = check_probs(P, y)
        self.members_ = list(members) if members is not None else [f"member_{i}" for i in range(P.shape[0])]
        if len(self.members_) != P.shape[0]:
            raise CombinerError(f"{len(self.members_)} member names for {P.shape[0]} members in P")
        self.classes_ = list(classes) if classes is not None else [str(c) for c in range(P.shape[2])]
        self.n_classes_ = P.shape[2]
        self._fit(P, np.asarray(y, dtype=np.int64))
        return self

    def predict_proba(self, P: np.ndarray) -> np.ndarray:
        P = check_probs(P)
        if P.shape[0] != len(self.members_) or P.shape[2] != self.n_classes_:
            raise CombinerError(
                f"fitted on {len(self.members_)} members x {self.n_classes_} classes, got P of shape {P.shape}"
            )
        return _normalize_rows(self._predict(P))

    def spec(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "members": list(self.members_),
            "classes": list(self.classes_),
            "weights": {m: float(w) for m, w in zip(self.members_, self.weights_)},
            "params": {**self.get_params(), **self._learned_params()},
        }

    def _learned_params(self) -> dict[str, Any]:
        return {}

    def _restore(self, spec: dict[str, Any]) -> None:
        self.weights_ = np.array([spec["weights"][m] for m in self.members_], dtype=np.float64)

    # --- shared helpers ---------------------------------------------------------------------
    def _weighted_mean(self, P: np.ndarray) -> np.ndarray:
        used = np.flatnonzero(self.weights_ > 0)  # skip zero-weight members: cheaper and exact
        return np.tensordot(self.weights_[used], P[used].astype(np.float64, copy=False), axes=(0, 0))


class MeanEnsemble(Combiner):
    """Soft voting: the plain average of member probabilities."""

    method = "mean"

    def _fit(self, P, y):
        self.weights_ = np.full(P.shape[0], 1.0 / P.shape[0])

    def _predict(self, P):
        return self._weighted_mean(P)


class GeometricMeanEnsemble(Combiner):
    """Normalized exp(mean log p), as Kondratyuk et al. (2020); clipping keeps one zero from vetoing a class."""

    method = "geometric"

    def __init__(self, eps: float = 1e-6):
        self.eps = eps

    def _fit(self, P, y):
        self.weights_ = np.full(P.shape[0], 1.0 / P.shape[0])

    def _predict(self, P):
        used = np.flatnonzero(self.weights_ > 0)
        logs = np.log(np.clip(P[used].astype(np.float64, copy=False), self.eps, 1.0))
        log_q = np.tensordot(self.weights_[used], logs, axes=(0, 0))
        return np.exp(log_q - log_q.max(axis=1, keepdims=True))


class WeightedEnsemble(Combiner):
    """Arithmetic mixture with weights on the simplex minimizing OOF log loss (softmax parametrization)."""

    method = "weighted"

    def __init__(self, prune: float = 1e-4, max_iter: int = 500):
        self.prune = prune
        self.max_iter = max_iter

    def _fit(self, P, y):
        T = true_class_probs(P, y)

        def loss_and_grad(z):
            w = softmax(z)
            q = np.clip(w @ T, LOG_EPS, None)
            grad_w = -(T / q).mean(axis=1)
            return -np.log(q).mean(), w * (grad_w - w @ grad_w)

        result = minimize(loss_and_grad, np.zeros(P.shape[0]), jac=True, method="L-BFGS-B",
                          options={"maxiter": self.max_iter})
        w = softmax(result.x)
        # Tiny weights only add compute (FLOPs of a member that barely counts); drop them.
        w[w < self.prune] = 0.0
        self.weights_ = w / w.sum()
        self.train_log_loss_ = float(mixture_log_loss(self.weights_ @ T))
        self.n_iter_ = int(result.nit)

    def _predict(self, P):
        return self._weighted_mean(P)

    def _learned_params(self):
        return {"train_log_loss": self.train_log_loss_, "n_iter": self.n_iter_}


class GreedyEnsemble(Combiner):
    """Caruana et al. (2004) forward selection with replacement on OOF log loss.

    Each round scores adding every member to the running average at once (one (M, N) array op) and
    takes the best; ties go to the lowest member index (np.argmin). The best prefix of rounds is kept
    (the earliest one on ties), and weights are selection counts over that prefix.
    """

    method = "greedy"

    def __init__(self, rounds: int = 25):
        self.rounds = rounds

    def _fit(self, P, y):
        if self.rounds < 1:
            raise CombinerError(f"greedy rounds must be >= 1, got {self.rounds}")
        T = true_class_probs(P, y)
        running = np.zeros(T.shape[1])
        picks: list[int] = []
        losses: list[float] = []
        for r in range(self.rounds):
            candidate_losses = mixture_log_loss((running[None, :] + T) / (r + 1), axis=1)
            best = int(np.argmin(candidate_losses))
            running += T[best]
            picks.append(best)
            losses.append(float(candidate_losses[best]))
        keep = int(np.argmin(losses)) + 1
        counts = np.bincount(picks[:keep], minlength=P.shape[0])
        self.weights_ = counts / keep
        self.picks_ = picks
        self.round_losses_ = losses
        self.best_prefix_ = keep

    def _predict(self, P):
        return self._weighted_mean(P)

    def _learned_params(self):
        return {
            "best_prefix": self.best_prefix_,
            "picks": [self.members_[i] for i in self.picks_],
            "round_log_losses": self.round_losses_,
        }


class PerClassWeightedEnsemble(Combiner):
    """Per-class member weights: a member counts more for the classes it predicts well.

    w[m, c] is proportional to member m's one-vs-rest log loss for class c raised to -power (so both
    missed and false-positive predictions of c count against it); the power is chosen from `powers` by
    OOF log loss (power 0 = plain mean). Combined rows are renormalized.
    """

    method = "per_class"

    def __init__(self, powers: Sequence[float] = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)):
        self.powers = powers

    def _fit(self, P, y):
        onehot = np.eye(P.shape[2], dtype=bool)[y]  # (N, C)
        p = np.clip(P.astype(np.float64), LOG_EPS, 1 - 1e-12)
        ovr_loss = -np.where(onehot[None], np.log(p), np.log1p(-p)).mean(axis=1)  # (M, C)
        self.class_losses_ = ovr_loss
        best = None
        for power in self.powers:
            W = self._weights_for(ovr_loss, power)
            q = _normalize_rows(np.einsum("mnc,mc->nc", P, W))
            loss = float(mixture_log_loss(q[np.arange(len(y)), y]))
            if best is None or loss < best[0] - 1e-12:
                best = (loss, power, W)
        self.train_log_loss_, self.power_, self.class_weights_ = best
        self.weights_ = self.class_weights_.mean(axis=1)

    @staticmethod
    def _weights_for(ovr_loss: np.ndarray, power: float) -> np.ndarray:
        score = np.clip(ovr_loss, 1e-6, None) ** -float(power)
        return score / score.sum(axis=0, keepdims=True)

    def _predict(self, P):
        return np.einsum("mnc,mc->nc", P.astype(np.float64, copy=False), self.class_weights_)

    def _learned_params(self):
        return {
            "power": self.power_,
            "train_log_loss": self.train_log_loss_,
            "class_weights": {m: dict(zip(self.classes_, map(float, row)))
                              for m, row in zip(self.members_, self.class_weights_)},
        }

    def _restore(self, spec):
        super()._restore(spec)
        cw = spec["params"]["class_weights"]
        self.class_weights_ = np.array([[cw[m][c] for c in self.classes_] for m in self.members_])


class StackingEnsemble(Combiner):
    """A multinomial LogisticRegression meta-learner on the members' concatenated log-probabilities."""

    method = "stacking"

    def __init__(self, C: float = 1.0, eps: float = 1e-6, max_iter: int = 300):
        self.C = C
        self.eps = eps
        self.max_iter = max_iter

    def _features(self, P):
        logs = np.log(np.clip(P.astype(np.float64, copy=False), self.eps, 1.0))
        return logs.transpose(1, 0, 2).reshape(P.shape[1], -1)  # (N, M*C): member-major blocks

    def _fit(self, P, y):
        seen = np.unique(y)
        if len(seen) < 2:
            raise CombinerError(f"stacking needs OOF labels of at least 2 classes, got only class {seen.tolist()}")
        model = LogisticRegression(C=self.C, max_iter=self.max_iter)
        with warnings.catch_warnings():
            # An unconverged meta-learner is still a valid model; n_iter goes in the spec instead.
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(self._features(P), y)
        self.coef_ = model.coef_
        self.intercept_ = model.intercept_
        self.seen_classes_ = seen
        self.n_iter_ = int(np.max(model.n_iter_))
        share = np.abs(self.coef_).reshape(self.coef_.shape[0], P.shape[0], P.shape[2]).sum(axis=(0, 2))
        self.weights_ = share / share.sum() if share.sum() > 0 else np.full(P.shape[0], 1.0 / P.shape[0])

    def _predict(self, P):
        logits = self._features(P) @ self.coef_.T + self.intercept_
        if self.coef_.shape[0] == 1:  # sklearn's binary form: one logit for the second class
            p1 = expit(logits[:, 0])
            seen_probs = np.stack([1 - p1, p1], axis=1)
        else:
            seen_probs = softmax(logits, axis=1)
        # A class absent from the training labels gets a floor, not zero: log loss stays finite.
        out = np.full((P.shape[1], self.n_classes_), self.eps)
        out[:, self.seen_classes_] = seen_probs
        return out

    def _learned_params(self):
        return {
            "coef": self.coef_.tolist(),
            "intercept": self.intercept_.tolist(),
            "seen_classes": self.seen_classes_.tolist(),
            "n_iter": self.n_iter_,
            "features": "log(clip(p, eps, 1)) per member, member-major",
        }

    def _restore(self, spec):
        super()._restore(spec)
        params = spec["params"]
        self.coef_ = np.array(params["coef"])
        self.intercept_ = np.array(params["intercept"])
        self.seen_classes_ = np.array(params["seen_classes"], dtype=np.int64)


COMBINERS: dict[str, type[Combiner]] = {
    cls.method: cls
    for cls in (MeanEnsemble, GeometricMeanEnsemble, WeightedEnsemble, GreedyEnsemble, PerClassWeightedEnsemble,
                StackingEnsemble)
}
METHODS = tuple(COMBINERS)


def _init_params(cls: type[Combiner]) -> set[str]:
    if cls.__init__ is object.__init__:
        return set()
    return {p.name for p in inspect.signature(cls.__init__).parameters.values()
            if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def make_combiner(method: str, **kw: Any) -> Combiner:
    """Build a combiner by name; options another method would use (e.g. `rounds` for mean) are ignored."""
    if method not in COMBINERS:
        raise CombinerError(f"unknown ensemble method '{method}'; choose one of {list(METHODS)}")
    known = set().union(*(_init_params(c) for c in COMBINERS.values()))
    unknown = set(kw) - known
    if unknown:
        raise CombinerError(f"unknown combiner options {sorted(unknown)}; known options: {sorted(known)}")
    cls = COMBINERS[method]
    return cls(**{k: v for k, v in kw.items() if k in _init_params(cls)})


def combiner_from_spec(spec: dict[str, Any]) -> Combiner:
    """Rebuild a fitted combiner from `spec()` output (e.g. spec.json) without refitting."""
    init = {k: v for k, v in spec["params"].items() if k in _init_params(COMBINERS[spec["method"]])}
    combiner = make_combiner(spec["method"], **init)
    combiner.members_ = list(spec["members"])
    combiner.classes_ = list(spec["classes"])
    combiner.n_classes_ = len(combiner.classes_)
    combiner._restore(spec)
    return combiner
