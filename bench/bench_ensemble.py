"""Ensemble fitting speed: 50 members x 100k images x 10 classes, and vectorized vs naive greedy.

Run: .venv/bin/python -m bench.bench_ensemble [--members 50 --rows 100000 --classes 10]
Prints seconds per fit and the speed-up of the vectorized Caruana selection over a naive
per-candidate Python loop (sklearn log_loss per candidate) measured in the same run.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.metrics import log_loss

from ens_assets.ensemble.combiners import GreedyEnsemble, StackingEnsemble, WeightedEnsemble


def synthetic_members(members: int, rows: int, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """float32 (M, N, C) softmax outputs of members of varied skill, like real OOF predictions."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, rows)
    P = rng.standard_normal((members, rows, classes), dtype=np.float32)
    skill = rng.uniform(0.5, 3.0, members).astype(np.float32)
    P[:, np.arange(rows), y] += skill[:, None]
    P -= P.max(axis=2, keepdims=True)
    np.exp(P, out=P)
    P /= P.sum(axis=2, keepdims=True)
    return P, y


def naive_greedy(P: np.ndarray, y: np.ndarray, rounds: int) -> list[int]:
    """The textbook loop: rebuild each candidate's averaged (N, C) table and score it with sklearn."""
    labels = list(range(P.shape[2]))
    running = np.zeros(P.shape[1:])
    picks = []
    for r in range(rounds):
        losses = [log_loss(y, (running + P[m]) / (r + 1), labels=labels) for m in range(P.shape[0])]
        best = int(np.argmin(losses))
        running += P[best]
        picks.append(best)
    return picks


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--members", type=int, default=50)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--skip-stacking", action="store_true")
    args = parser.parse_args(argv or [])  # run_all calls main() with no arguments

    # Baseline first, on a case small enough for the naive loop.
    small_P, small_y = synthetic_members(20, 20_000, args.classes, seed=1)
    small_P = small_P.astype(np.float64)  # float32 row sums drift enough to make sklearn warn per candidate
    small_P /= small_P.sum(axis=2, keepdims=True)
    naive_s, naive_picks = _timed(lambda: naive_greedy(small_P, small_y, 10))
    fast_s, fast = _timed(lambda: GreedyEnsemble(rounds=10).fit(small_P, small_y))
    same = fast.picks_ == naive_picks
    print(f"greedy 20 members x 20k rows x {args.classes} classes, 10 rounds: naive loop {naive_s:.2f}s, "
          f"vectorized {fast_s:.3f}s -> {naive_s / fast_s:.0f}x faster (same picks: {same})")

    P, y = synthetic_members(args.members, args.rows, args.classes)
    shape = f"{args.members} members x {args.rows} rows x {args.classes} classes"
    greedy_s, greedy = _timed(lambda: GreedyEnsemble(rounds=args.rounds).fit(P, y))
    print(f"greedy ({args.rounds} rounds) fit, {shape}: {greedy_s:.2f}s "
          f"(prefix {greedy.best_prefix_}, {int((greedy.weights_ > 0).sum())} members used)")
    weighted_s, weighted = _timed(lambda: WeightedEnsemble().fit(P, y))
    print(f"weighted (L-BFGS on the simplex) fit, {shape}: {weighted_s:.2f}s "
          f"({weighted.n_iter_} iterations, {int((weighted.weights_ > 0).sum())} members used)")
    predict_s, _ = _timed(lambda: greedy.predict_proba(P))
    print(f"greedy predict_proba, {shape}: {predict_s:.2f}s")
    if not args.skip_stacking:
        stacking_s, stacking = _timed(lambda: StackingEnsemble().fit(P, y))
        print(f"stacking (LogisticRegression on {args.members * args.classes} log-prob features) fit, {shape}: "
              f"{stacking_s:.2f}s ({stacking.n_iter_} iterations)")
    # Same unit of work for both: one candidate scored on one row in one round.
    naive_unit = naive_s / (20 * 20_000 * 10)
    full_unit = greedy_s / (args.members * args.rows * args.rounds)
    print(f"greedy full case vs naive loop, per candidate-row-round: {naive_unit / full_unit:.0f}x faster "
          f"(full case wall time / naive small case wall time = {greedy_s / naive_s:.2f})")


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
