"""Entry points the Dagster layer calls: build the ensemble + submission, and diagnose it (mlflow_store logs both).

Every file is written atomically, so a killed step leaves the previous outputs or the new ones.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import polars as pl

from ens_assets.atomic import atomic_path, write_bytes, write_json, write_parquet, write_text
from ens_assets.ensemble.calibration import apply_temperature, reliability_bins
from ens_assets.ensemble.combiners import METHODS, combiner_from_spec
from ens_assets.ensemble.compute import accuracy_vs_compute
from ens_assets.ensemble.held_out import held_out_scores, site_shift, site_shift_markdown, with_test_columns
from ens_assets.ensemble.diagnostics import (
    all_fail_classes,
    never_selected,
    per_class_recall,
    roadmap_markdown,
    single_win_classes,
    top_confusions,
)
from ens_assets.ensemble.plots import confusion_grid_png, pareto_png, recall_matrix_png, reliability_png
from ens_assets.ensemble.scoring import AUTO, BEST_SINGLE, score_methods
from ens_assets.ensemble.tables import PredictionTableError, stack_members, stack_test
from ens_assets.plan import EnsembleConfig

SUBMISSION_FORMATS = ("conservision",)
NO_TEST_SPLIT = ("no test split: the ensemble and its diagnostics stand on OOF scores alone and submission.csv "
                 "is empty (hold sites out with data.test_site_fraction or data.test_sites for a held-out score)")
NESTED_OOF_FILE = "nested_oof.parquet"
SPEC_FILE, SCORES_FILE, METRICS_FILE = "spec.json", "scores.parquet", "metrics.json"  # in the ensemble folder
ROADMAP_FILE, RECALL_FILE = "roadmap.md", "per_class_recall.csv"  # in the diagnostics folder
# Prefixes of the probability columns in nested_oof.parquet (the morning report pairs nights on them).
ENSEMBLE_PREFIX, CALIBRATED_PREFIX, BEST_PREFIX = "ensemble/", "calibrated/", "best_member/"


@dataclass
class EnsembleResult:
    spec: dict[str, Any]  # what spec.json holds
    scores: pl.DataFrame  # honest comparison table (scoring.SCORE_COLUMNS)
    compute: pl.DataFrame  # accuracy vs FLOPs with a pareto column
    submission_path: Path
    paths: dict[str, Path] = field(default_factory=dict)  # every file written, by short name
    pngs: dict[str, bytes] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)  # what metrics.json holds
    test_recall: pl.DataFrame | None = None  # per-class recall on labelled test images (test_recall.csv)

    @property
    def test_split_note(self) -> str:
        """One line for summaries: how many test images the submission covers, or that there are none."""
        n, labelled = self.spec.get("test_images", 0), self.spec.get("test_labelled_images", 0)
        if not n:
            return NO_TEST_SPLIT
        return f"test split: {n} images" + (f", {labelled} labelled: test scores beside the OOF scores" if labelled else "")


@dataclass
class DiagnosticsResult:
    recall: pl.DataFrame  # members (+ "ensemble") x classes
    all_fail: list[str]
    single_win: list[tuple[str, str, float, float]]
    confusions: pl.DataFrame
    never_selected: list[str]
    roadmap: str  # markdown
    pngs: dict[str, bytes] = field(default_factory=dict)
    paths: dict[str, Path] = field(default_factory=dict)
    site_shift: list[tuple[str, float, float]] = field(default_factory=list)  # (member, OOF, test log loss)


def _member_flops(member_info: dict[str, dict], members: Sequence[str]) -> dict[str, int]:
    missing = [m for m in members if m not in member_info or member_info[m].get("flops_per_image") is None]
    if missing:
        raise PredictionTableError(
            f"member_info lacks flops_per_image for {missing}; the training stage records it per member "
            "(torch.utils.flop_counter) and the ensemble needs it for the accuracy-vs-compute table"
        )
    # FLOPs-true: a member predicts with all its fold models, so its inference cost is per-model FLOPs x models.
    return {m: int(member_info[m].get("inference_flops_per_image") or member_info[m]["flops_per_image"]) for m in members}


def build_ensemble(
    oof: dict[str, pl.DataFrame],
    test: dict[str, pl.DataFrame],
    classes: Sequence[str],
    member_info: dict[str, dict],
    cfg: EnsembleConfig,
    out_dir: Path,
    submission_format: str = "conservision",
    compare_methods: Sequence[str] | None = None,
    groups: dict[str, str] | None = None,
    test_labels: dict[str, str] | None = None,
) -> EnsembleResult:
    """Fit `cfg.method` on all OOF rows, score every method honestly, write spec/scores/metrics/submission.

    `compare_methods` (default: all methods) are scored beside the configured one for the comparison table.
    `groups` maps image_id to its site: the bootstrap intervals resample sites (images when None).
    `test_labels` (image_id -> label of held-out test images) adds test scores of every member and combiner.
    """
    if submission_format not in SUBMISSION_FORMATS:
        raise ValueError(f"submission_format '{submission_format}' is not supported; use one of {SUBMISSION_FORMATS}")
    out_dir = Path(out_dir)
    classes = list(classes)
    stack, test_stack = _stacks(oof, test, classes)
    member_flops = _member_flops(member_info, stack.members)
    n_test = len(test_stack.image_ids)

    methods = [cfg.method] + [m for m in (compare_methods or METHODS) if m != cfg.method]
    site_of = [groups.get(i) for i in stack.image_ids] if groups else None
    if site_of is not None and any(s is None for s in site_of):
        site_of = None  # a partial site map would mix units; resample images instead
    scored = score_methods(stack, methods, rounds=cfg.greedy_rounds, groups=site_of,
                           replicates=cfg.bootstrap_replicates)
    combiner = scored.fitted[cfg.method]
    temperature = scored.temperatures[cfg.method]
    # No test split (every image labelled and in the folds): the ensemble stands on its OOF scores alone and
    # the submission is a valid, empty table.
    test_probs = combiner.predict_proba(test_stack.probs) if n_test else np.zeros((0, len(classes)))
    if cfg.calibrate and n_test:
        test_probs = apply_temperature(test_probs, temperature)

    spec = {
        **combiner.spec(),
        "selected_by": AUTO if cfg.method == AUTO else "config",
        "auto": scored.auto,
        # Fitted on the nested OOF predictions (out-of-sample), applied to the submission when calibrate is on.
        "temperature": temperature,
        "calibrated": cfg.calibrate,
        "member_temperatures": {m: scored.temperatures[m] for m in stack.members},
        "bootstrap_unit": scored.resampler.unit,
        "nested": scored.nested,
        "oof_images": len(stack.image_ids),
        "oof_folds": sorted(int(f) for f in np.unique(stack.folds)),
        "dropped_oof_rows": stack.dropped,
        "test_images": n_test,
        "member_info": {m: member_info.get(m, {}) for m in stack.members},
    }
    ensemble_members = {m: c.spec()["weights"] for m, c in scored.fitted.items() if m in methods}
    compute = accuracy_vs_compute(scored.table, member_flops, ensemble_members)
    # Combiners as fitted on all OOF rows, applied to the members' test predictions: test rows only.
    held_out = held_out_scores(scored.table, scored.fitted, test_stack, test_labels or {})
    table = with_test_columns(scored.table, held_out)
    spec["test_labelled_images"] = held_out.n_labelled if held_out else 0
    metrics = _ensemble_metrics(scored, stack, cfg, methods, compute, member_flops, held_out, table, n_test)
    nested_oof = _nested_oof_table(stack, site_of, scored.nested_probs[cfg.method],
                                   scored.calibrated_probs[cfg.method], scored.nested_probs[BEST_SINGLE])
    curves = reliability_curves(nested_oof, classes)
    metrics["ensemble"]["ece"] = curves["ensemble"]["ece"]
    metrics["ensemble"]["calibrated_ece"] = curves["ensemble, temperature-scaled"]["ece"]
    metrics["best_member"]["ece"] = curves["best member"]["ece"]

    submission = pl.DataFrame({"id": test_stack.image_ids}, schema={"id": pl.String}).with_columns(
        [pl.Series(c, test_probs[:, i]) for i, c in enumerate(classes)]
    )
    pareto = pareto_png(compute)
    paths = _write_outputs(out_dir, spec, table, metrics, compute, pareto, nested_oof, held_out, submission)
    return EnsembleResult(spec, table, compute, paths["submission"], paths, {"pareto": pareto}, metrics,
                          held_out.recall if held_out is not None else None)


def _stacks(oof: dict[str, pl.DataFrame], test: dict[str, pl.DataFrame], classes: list[str]):
    """The members' OOF and test predictions stacked; every member needs test rows for the same images."""
    stack = stack_members(oof, classes)
    no_test = [m for m in stack.members if m not in test]
    if no_test:
        raise PredictionTableError(f"members {no_test} have OOF but no test predictions; predict the test set "
                                   "with every member before building the ensemble")
    test_stack = stack_test({m: test[m] for m in stack.members}, classes)
    partial = {m: n for m, n in test_stack.dropped.items() if n}
    if partial:
        raise PredictionTableError(
            f"test predictions cover different images: members {partial} have rows the others lack "
            f"(only {len(test_stack.image_ids)} images are shared); a submission needs every test image, so "
            "re-run prediction for the members that miss images"
        )
    return stack, test_stack


def _ensemble_metrics(scored, stack, cfg: EnsembleConfig, methods, compute, member_flops, held_out, table,
                      n_test: int) -> dict[str, Any]:  # fmt: skip
    """metrics.json without the ECE figures: the configured ensemble and the best member with intervals,
    every method paired with the configured one, and the test split's scores when it is labelled."""
    combiner, temperature = scored.fitted[cfg.method], scored.temperatures[cfg.method]
    rows = {r["name"]: r for r in scored.table.iter_rows(named=True)}
    chosen, best = rows[cfg.method], rows[BEST_SINGLE]
    interval_keys = ("log_loss", "log_loss_lo", "log_loss_hi", "accuracy", "accuracy_lo", "accuracy_hi",
                     "calibrated_log_loss", "in_sample_log_loss", "in_sample_accuracy")
    metrics = {
        "ensemble": {k: chosen[k] for k in interval_keys}
        | {"method": combiner.method, "temperature": temperature, "better_than_best": chosen["better_than_best"],
           "delta_vs_best": chosen["delta_vs_best"], "delta_lo": chosen["delta_lo"], "delta_hi": chosen["delta_hi"]}
        | {"members_used": len([w for w in combiner.weights_ if w > 0]),
           "flops_per_image": int(compute.filter(pl.col("name") == cfg.method)["flops_per_image"][0])},
        "best_member": {k: best[k] for k in interval_keys} | {"name": best["members_used"],
                        "flops_per_image": member_flops[best["members_used"]]},
        "methods": {m: {"log_loss": rows[m]["log_loss"], "accuracy": rows[m]["accuracy"],
                        "log_loss_lo": rows[m]["log_loss_lo"], "log_loss_hi": rows[m]["log_loss_hi"],
                        # Paired with the configured method on the same images and bootstrap draws.
                        **_paired_vs(scored, stack.y, m, cfg.method)} for m in methods},
        "test_split": {"images": n_test, "labelled": held_out.n_labelled if held_out else 0,
                       **({"unknown_class": held_out.unknown_class} if held_out and held_out.unknown_class else {})},
    }
    if held_out is not None:
        recall = {r.pop("name"): r for r in held_out.recall.to_dicts()}
        metrics["test"] = {r["name"]: {"log_loss": r["test_log_loss"], "accuracy": r["test_accuracy"],
                                       "recall": recall[r["name"]]} for r in held_out.scores.to_dicts()}
        metrics["test_split"]["site_shift"] = [m for m, _, _ in site_shift(table, cfg.site_shift_ratio)]
    return metrics


def _write_outputs(out_dir: Path, spec, table, metrics, compute, pareto, nested_oof, held_out, submission) -> dict[str, Path]:
    """Every file of the ensemble folder, each written atomically."""
    paths = {
        "spec": write_json(out_dir / SPEC_FILE, spec),
        "scores": write_parquet(out_dir / SCORES_FILE, table),
        "metrics": write_json(out_dir / METRICS_FILE, metrics),
        "compute": write_parquet(out_dir / "compute.parquet", compute),
        "pareto": write_bytes(out_dir / "pareto.png", pareto),
        "nested_oof": write_parquet(out_dir / NESTED_OOF_FILE, nested_oof),
    }
    with atomic_path(out_dir / "scores.csv", suffix=".csv") as tmp:
        table.write_csv(tmp)
    paths["scores_csv"] = out_dir / "scores.csv"
    if held_out is not None:
        with atomic_path(out_dir / "test_recall.csv", suffix=".csv") as tmp:
            held_out.recall.write_csv(tmp)
        paths["test_recall"] = out_dir / "test_recall.csv"
    with atomic_path(out_dir / "submission.csv", suffix=".csv") as tmp:
        submission.write_csv(tmp)
    paths["submission"] = out_dir / "submission.csv"
    return paths


def diagnose_built_ensemble(
    oof: dict[str, pl.DataFrame], classes: Sequence[str], cfg: EnsembleConfig, ensemble_dir: Path, out_dir: Path
) -> DiagnosticsResult:
    """build_diagnostics of the ensemble build_ensemble wrote to `ensemble_dir` (its spec, nested OOF, scores)."""
    ensemble_dir = Path(ensemble_dir)
    spec = read_spec(ensemble_dir)
    if spec is None:
        raise FileNotFoundError(f"{ensemble_dir / SPEC_FILE}: no fitted ensemble; materialize the ensemble asset first")
    return build_diagnostics(oof, classes, spec, cfg, out_dir, nested_oof=pl.read_parquet(ensemble_dir / NESTED_OOF_FILE),
                             scores=pl.read_parquet(ensemble_dir / SCORES_FILE))  # fmt: skip


def read_spec(ensemble_dir: Path) -> dict[str, Any] | None:
    """The fitted ensemble's spec.json (members, weights, temperature, test split); None before it is built."""
    path = Path(ensemble_dir) / SPEC_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def read_scores(ensemble_dir: Path) -> pl.DataFrame | None:
    """The honest comparison table (scores.parquet: scoring.SCORE_COLUMNS + test columns); None before it is built."""
    path = Path(ensemble_dir) / SCORES_FILE
    return pl.read_parquet(path) if path.is_file() else None


def read_metrics(ensemble_dir: Path) -> dict[str, Any] | None:
    """metrics.json (the configured ensemble and the best member with intervals, per method, test split); None
    before the ensemble is built."""
    path = Path(ensemble_dir) / METRICS_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def read_nested_oof(ensemble_dir: Path) -> pl.DataFrame | None:
    """The nested OOF probabilities (nested_oof.parquet: ensemble, calibrated, best member); None before it is built."""
    path = Path(ensemble_dir) / NESTED_OOF_FILE
    return pl.read_parquet(path) if path.is_file() else None


def read_roadmap(diagnostics_dir: Path) -> str | None:
    """The diagnostics roadmap (markdown); None before the diagnostics are built."""
    path = Path(diagnostics_dir) / ROADMAP_FILE
    return path.read_text() if path.is_file() else None


def read_per_class_recall(diagnostics_dir: Path) -> pl.DataFrame | None:
    """Members (+ "ensemble") x classes recall (per_class_recall.csv); None before the diagnostics are built."""
    path = Path(diagnostics_dir) / RECALL_FILE
    return pl.read_csv(path) if path.is_file() else None


def build_diagnostics(
    oof: dict[str, pl.DataFrame],
    classes: Sequence[str],
    spec: dict[str, Any],
    cfg: EnsembleConfig,
    out_dir: Path,
    nested_oof: pl.DataFrame | None = None,
    scores: pl.DataFrame | None = None,
) -> DiagnosticsResult:
    """Recall matrix, all-fail and single-win classes, shared confusions and the roadmap, from OOF + spec.

    The `ensemble` row uses the spec's weights, fitted on all OOF rows (in-sample). `nested_oof` (the
    ensemble's nested_oof.parquet) adds the reliability diagram of best member and ensemble, before/after
    temperature scaling. `scores` (the ensemble's scores.parquet) adds the site-shift section: members much
    worse on the held-out test sites than on their OOF folds.
    """
    out_dir = Path(out_dir)
    stack = stack_members(oof, list(classes))
    absent = [m for m in spec["members"] if m not in stack.members]
    if absent:
        raise PredictionTableError(f"spec members {absent} have no OOF table; pass the OOF of every ensemble member")
    ensemble_probs = combiner_from_spec(spec).predict_proba(stack.subset(spec["members"]).probs)
    recall = per_class_recall(stack, ensemble_probs)
    all_fail = all_fail_classes(recall, cfg.fail_recall)
    single_win = single_win_classes(recall, cfg.win_margin)
    confusions = top_confusions(stack, cfg.top_confusions)
    unused = never_selected(spec, stack.members)
    roadmap = roadmap_markdown(recall, all_fail, single_win, confusions, unused,
                               fail_recall=cfg.fail_recall, win_margin=cfg.win_margin)
    shifted: list[tuple[str, float, float]] = []
    if scores is not None:
        shifted = site_shift(scores, cfg.site_shift_ratio)
        roadmap = roadmap.rstrip("\n") + "\n\n" + site_shift_markdown(scores, cfg.site_shift_ratio)
    pngs = {
        "recall_matrix": recall_matrix_png(recall),
        "confusion_grid": confusion_grid_png(stack, ensemble_probs, ensemble_name=f"ensemble ({spec['method']})"),
    }
    if nested_oof is not None:
        pngs["reliability"] = reliability_png(reliability_curves(nested_oof, list(classes)))
    paths = {
        "roadmap": write_text(out_dir / ROADMAP_FILE, roadmap),
        "confusions": write_parquet(out_dir / "confusions.parquet", confusions),
        **{name: write_bytes(out_dir / f"{name}.png", png) for name, png in pngs.items()},
    }
    with atomic_path(out_dir / RECALL_FILE, suffix=".csv") as tmp:
        recall.write_csv(tmp)
    paths["per_class_recall"] = out_dir / RECALL_FILE
    return DiagnosticsResult(recall, all_fail, single_win, confusions, unused, roadmap, pngs, paths, shifted)


def _paired_vs(scored, y: np.ndarray, method: str, reference: str) -> dict[str, float]:
    from ens_assets.ensemble.intervals import image_log_losses

    delta = scored.resampler.paired(image_log_losses(scored.nested_probs[method], y),
                                    image_log_losses(scored.nested_probs[reference], y))
    return {"delta_vs_configured": delta.value, "delta_lo": delta.lo, "delta_hi": delta.hi}


def _nested_oof_table(stack, sites, ensemble_probs: np.ndarray, calibrated_probs: np.ndarray,
                      best_probs: np.ndarray) -> pl.DataFrame:
    """The probabilities the reported scores come from, per image: what a later night is paired against."""
    frame = pl.DataFrame({
        "image_id": stack.image_ids, "fold": stack.folds.astype(np.int64), "label": [stack.classes[i] for i in stack.y],
        "site": sites if sites is not None else stack.image_ids,
    })
    columns = [pl.Series(f"{prefix}{c}", probs[:, i]) for prefix, probs in
               ((ENSEMBLE_PREFIX, ensemble_probs), (CALIBRATED_PREFIX, calibrated_probs), (BEST_PREFIX, best_probs))
               for i, c in enumerate(stack.classes)]
    return frame.with_columns(columns)


def nested_probs(nested_oof: pl.DataFrame, prefix: str, classes: Sequence[str]) -> np.ndarray:
    return nested_oof.select([f"{prefix}{c}" for c in classes]).to_numpy().astype(np.float64)


def reliability_curves(nested_oof: pl.DataFrame, classes: list[str]) -> dict[str, dict]:
    y = np.array([classes.index(v) for v in nested_oof["label"].to_list()])
    return {name: reliability_bins(nested_probs(nested_oof, prefix, classes), y)
            for name, prefix in (("best member", BEST_PREFIX), ("ensemble", ENSEMBLE_PREFIX),
                                 ("ensemble, temperature-scaled", CALIBRATED_PREFIX))}
