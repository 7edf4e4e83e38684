"""Honest (nested) scores of ensemble methods against their members, with intervals and calibration.

Weights fitted on the same OOF rows they are scored on are optimistic. The honest score fits each
combiner on all folds but f, predicts fold f, and scores the assembled nested OOF predictions.

Anything chosen from the data is chosen inside the outer folds the same way: `auto` picks, for each outer
fold f, the method with the best inner nested score on the other folds (so fold f never votes for the
method that scores it), and the ensemble's temperature for fold f is fitted on those inner predictions.
Every score carries a bootstrap interval over sites (ensemble.intervals) and a paired comparison with the
best single member: `better_than_best` only when that paired interval excludes zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import polars as pl
from sklearn.base import clone
from sklearn.metrics import accuracy_score, log_loss

from ens_assets.ensemble.calibration import TemperatureScaler, nested_temperature
from ens_assets.ensemble.combiners import METHODS, Combiner, make_combiner
from ens_assets.ensemble.intervals import Resampler, image_log_losses, score_intervals
from ens_assets.ensemble.tables import MemberStack

BEST_SINGLE = "best_single_member"
AUTO = "auto"
NESTED_NOTE = "ensembles fitted on the other folds and scored on each held-out fold (nested); members scored on their OOF"
SCORE_COLUMNS = ["name", "kind", "log_loss", "log_loss_lo", "log_loss_hi", "accuracy", "accuracy_lo", "accuracy_hi",
                 "calibrated_log_loss", "temperature", "delta_vs_best", "delta_lo", "delta_hi", "better_than_best",
                 "in_sample_log_loss", "in_sample_accuracy", "members_used", "nested", "note"]
SCORE_SCHEMA = {"name": pl.String, "kind": pl.String, **{c: pl.Float64 for c in SCORE_COLUMNS[2:14]},
                "better_than_best": pl.Boolean, "in_sample_log_loss": pl.Float64, "in_sample_accuracy": pl.Float64,
                "members_used": pl.String, "nested": pl.Boolean, "note": pl.String}


@dataclass
class MethodScores:
    """The comparison table plus what produced it (for build_ensemble and the diagnostics)."""

    table: pl.DataFrame
    fitted: dict[str, Combiner]  # method -> combiner fitted on all OOF rows (auto -> the method it picked)
    nested_probs: dict[str, np.ndarray] = field(default_factory=dict)  # row name -> (N, C) probs it is scored on
    calibrated_probs: dict[str, np.ndarray] = field(default_factory=dict)  # row name -> nested-calibrated probs
    temperatures: dict[str, float] = field(default_factory=dict)  # row name -> temperature fitted on all its rows
    nested: bool = True
    auto: dict[str, Any] = field(default_factory=dict)  # what `auto` picked per outer fold and overall
    resampler: Resampler | None = None


def score_probs(probs: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(log loss, accuracy) with every class counted, even ones absent from y."""
    labels = list(range(probs.shape[1]))
    return float(log_loss(y, probs, labels=labels)), float(accuracy_score(y, probs.argmax(axis=1)))


def _members_used(combiner: Combiner) -> str:
    return ",".join(m for m, w in zip(combiner.members_, combiner.weights_) if w > 0)


def _held_out(template: Combiner, P: np.ndarray, y: np.ndarray, folds: np.ndarray, members, classes) -> np.ndarray:
    """Each fold predicted by a clone fitted on the other folds; in-sample when only one fold is present."""
    unique = np.unique(folds)
    if len(unique) < 2:
        return clone(template).fit(P, y, members=members, classes=classes).predict_proba(P)
    out = np.empty(P.shape[1:], dtype=np.float64)
    for f in unique:
        test = folds == f
        inner = clone(template).fit(P[:, ~test], y[~test], members=members, classes=classes)
        out[test] = inner.predict_proba(P[:, test])
    return out


def score_methods(stack: MemberStack, methods: Sequence[str], *, groups: Sequence | None = None,
                  replicates: int = 200, auto_candidates: Sequence[str] = METHODS, **kw: Any) -> MethodScores:
    """Score each method nested (or in-sample when one fold is present) next to every single member.

    `methods` may include "auto", which chooses among `auto_candidates` (all of them are then fitted).
    `groups`: the site of each image (stack order) for the bootstrap; None resamples images.
    """
    folds = np.unique(stack.folds)
    nested = len(folds) >= 2
    note = NESTED_NOTE if nested else (
        f"only fold {folds.tolist()} present (e.g. smoke-stage members): nested scoring is impossible, so "
        "ensemble scores are in-sample and optimistic; train members on all folds for honest scores"
    )
    concrete = [m for m in methods if m != AUTO]
    if AUTO in methods:
        concrete += [m for m in auto_candidates if m not in concrete]
    P, y, F = stack.probs, stack.y, stack.folds
    names = dict(members=stack.members, classes=stack.classes)
    templates = {m: make_combiner(m, **kw) for m in concrete}
    fitted = {m: clone(t).fit(P, y, **names) for m, t in templates.items()}
    held_out = {m: _held_out(t, P, y, F, **names) for m, t in templates.items()}
    # inner[m][f]: rows outside fold f, each predicted by a combiner that saw neither fold f nor its own fold.
    inner = {m: {f: _held_out(t, P[:, F != f], y[F != f], F[F != f], **names) for f in folds} for m, t in templates.items()} \
        if nested else {}

    def calibrated(method: str, probs: np.ndarray, pick: dict | None = None) -> np.ndarray:
        if not nested:
            return TemperatureScaler().fit(probs, y).predict_proba(probs)
        out = np.empty_like(probs)
        for f in folds:
            source = (pick or {}).get(f, method)
            scaler = TemperatureScaler().fit(inner[source][f], y[F != f])
            out[F == f] = scaler.predict_proba(probs[F == f])
        return out

    rows_probs: dict[str, np.ndarray] = {}
    rows_calibrated: dict[str, np.ndarray] = {}
    rows: list[dict[str, Any]] = []
    auto_info: dict[str, Any] = {}
    for method in methods:
        if method == AUTO:
            probs, per_fold, overall = _auto_pick(concrete, held_out, inner, y, F, folds, nested)
            fitted[AUTO] = fitted[overall]
            auto_info = {"chosen": overall, "per_fold": {str(int(f)): m for f, m in per_fold.items()},
                         "candidates": concrete}
            rows_calibrated[AUTO] = calibrated(AUTO, probs, per_fold)
            row_note = (f"picked by inner nested log loss in each outer fold ({auto_info['per_fold'] or 'in-sample'}); "
                        f"fitted on all folds: {overall}")
        else:
            probs = held_out[method]
            rows_calibrated[method] = calibrated(method, probs)
            row_note = note
        rows_probs[method] = probs
        in_ll, in_acc = score_probs(fitted[method].predict_proba(P), y)
        rows.append(dict(name=method, kind="ensemble", in_sample_log_loss=in_ll, in_sample_accuracy=in_acc,
                         members_used=_members_used(fitted[method]), nested=nested, note=row_note))

    best_name = _add_member_rows(stack, y, F, rows, rows_probs, rows_calibrated)
    resampler = Resampler(groups, len(y), replicates=replicates)
    # The temperature of "auto" and of the best member is the one of what they stand for.
    sources = {AUTO: auto_info.get("chosen"), BEST_SINGLE: best_name}
    temperatures = _add_intervals(rows, rows_probs, rows_calibrated, {**held_out, **rows_probs}, sources, y, resampler)
    table = pl.DataFrame([{c: r[c] for c in SCORE_COLUMNS} for r in rows], schema=SCORE_SCHEMA)
    return MethodScores(table, fitted, rows_probs, rows_calibrated, temperatures, nested, auto_info, resampler)


def _auto_pick(concrete, held_out, inner, y, F, folds, nested) -> tuple[np.ndarray, dict, str]:
    """"auto": fold f scored with the method the other folds' inner log loss preferred; and the overall pick."""
    per_fold = ({f: min(concrete, key=lambda m: score_probs(inner[m][f], y[F != f])[0]) for f in folds}
                if nested else {})  # fmt: skip
    probs = np.empty_like(held_out[concrete[0]])
    for f, m in per_fold.items():
        probs[F == f] = held_out[m][F == f]
    overall = min(concrete, key=lambda m: score_probs(held_out[m], y)[0])
    if not nested:
        probs = held_out[overall]
    return probs, per_fold, overall


def _add_member_rows(stack: MemberStack, y, F, rows: list, rows_probs: dict, rows_calibrated: dict) -> str:
    """A row per member and one for the best single member (lowest OOF log loss); returns the best's name."""
    member_rows = []
    for name, probs in zip(stack.members, stack.probs):
        ll, acc = score_probs(probs, y)
        rows_probs[name] = np.asarray(probs, dtype=np.float64)
        rows_calibrated[name] = nested_temperature(rows_probs[name], y, F)[0]
        member_rows.append(dict(name=name, kind="member", in_sample_log_loss=ll, in_sample_accuracy=acc,
                                members_used=name, nested=True, note="the member's own OOF predictions"))
    member_losses = [score_probs(rows_probs[m], y)[0] for m in stack.members]
    # Chosen on the OOF log loss it is then reported with: ties go to the first member.
    best = int(np.argmin(member_losses))
    best_name = stack.members[best]
    rows_probs[BEST_SINGLE], rows_calibrated[BEST_SINGLE] = rows_probs[best_name], rows_calibrated[best_name]
    rows.append({**member_rows[best], "name": BEST_SINGLE, "note": f"{best_name}: lowest OOF log loss among the members"})
    rows.extend(member_rows)
    return best_name


def _add_intervals(rows: list, rows_probs: dict, rows_calibrated: dict, temperature_probs: dict, sources: dict, y,
                   resampler: Resampler) -> dict[str, float]:  # fmt: skip
    """Each row's scores with bootstrap intervals, its paired delta against the best member and its temperature."""
    best_losses = image_log_losses(rows_probs[BEST_SINGLE], y)
    temperatures = {}
    for row in rows:
        probs = rows_probs[row["name"]]
        scored = score_intervals(probs, y, resampler)
        delta = resampler.paired(image_log_losses(probs, y), best_losses)
        source = sources.get(row["name"], row["name"])
        temperatures[row["name"]] = TemperatureScaler().fit(temperature_probs[source], y).temperature_
        row.update(
            log_loss=score_probs(probs, y)[0], log_loss_lo=scored["log_loss"].lo, log_loss_hi=scored["log_loss"].hi,
            accuracy=scored["accuracy"].value, accuracy_lo=scored["accuracy"].lo, accuracy_hi=scored["accuracy"].hi,
            calibrated_log_loss=score_probs(rows_calibrated[row["name"]], y)[0], temperature=temperatures[row["name"]],
            delta_vs_best=delta.value, delta_lo=delta.lo, delta_hi=delta.hi, better_than_best=bool(delta.hi < 0),
        )
    return temperatures


def honest_scores(stack: MemberStack, methods: list[str], **kw: Any) -> pl.DataFrame:
    """One row per method, `best_single_member` and each member; columns in SCORE_COLUMNS.

    `kw` are combiner options (e.g. rounds=25, C=1.0), passed to every method that takes them.
    """
    return score_methods(stack, methods, **kw).table
