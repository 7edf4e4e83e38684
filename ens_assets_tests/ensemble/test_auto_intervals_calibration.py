"""The combiner the data prefers (chosen inside the outer folds), bootstrap intervals, temperature scaling."""

import numpy as np
import polars as pl
import pytest

from ens_assets.ensemble.calibration import TemperatureScaler, apply_temperature, nested_temperature, reliability_bins
from ens_assets.ensemble.intervals import Resampler, compare
from ens_assets.ensemble.scoring import AUTO, BEST_SINGLE, score_methods
from ens_assets.ensemble.tables import stack_members
from ens_assets_tests.ensemble.synthetic import CLASSES, labels_and_folds, member_probs, oof_table, planted_members


def _overconfident(probs, power=3.0):
    sharp = probs ** power
    return sharp / sharp.sum(axis=1, keepdims=True)


def test_auto_picks_inside_each_outer_fold_and_its_score_is_one_of_the_nested_candidates():
    oof, _ = planted_members(n=300)
    scored = score_methods(stack_members(oof, CLASSES), [AUTO, "mean", "geometric", "weighted"], rounds=5,
                           auto_candidates=["mean", "geometric", "weighted"])
    table = {r["name"]: r for r in scored.table.iter_rows(named=True)}
    per_fold = scored.auto["per_fold"]
    assert set(per_fold) == {"0", "1", "2"} and set(per_fold.values()) <= set(scored.auto["candidates"])
    # The final fit is the method with the best outer nested score; its combiner is the one fitted for auto.
    losses = {m: table[m]["log_loss"] for m in ("mean", "geometric", "weighted")}
    assert scored.fitted[AUTO] is scored.fitted[scored.auto["chosen"]]
    assert losses[scored.auto["chosen"]] == min(losses.values())
    # Each fold's reported rows are those of the method picked without that fold's labels.
    stack = stack_members(oof, CLASSES)
    for fold, method in per_fold.items():
        rows = stack.folds == int(fold)
        np.testing.assert_array_equal(scored.nested_probs[AUTO][rows], scored.nested_probs[method][rows])
    assert "inner nested" in table[AUTO]["note"]


def test_auto_agrees_with_the_data_not_with_the_configured_default():
    y, folds = labels_and_folds(300, seed=4)
    tables = {f"m{i}": oof_table(_overconfident(member_probs(y, 1.5, seed=i)), y, folds) for i in range(4)}
    candidates = ["greedy", "geometric", "mean"]
    scored = score_methods(stack_members(tables, CLASSES), [AUTO, *candidates], rounds=10, auto_candidates=candidates)
    nested = {r["name"]: r["log_loss"] for r in scored.table.iter_rows(named=True)}
    assert scored.auto["chosen"] == min(candidates, key=nested.get)
    assert nested[AUTO] <= max(nested[m] for m in candidates)


def test_intervals_cover_the_point_and_resample_sites():
    oof, _ = planted_members(n=300)
    stack = stack_members(oof, CLASSES)
    sites = [f"site{i % 10}" for i in range(len(stack.image_ids))]
    table = score_methods(stack, ["mean"], groups=sites).table
    for row in table.iter_rows(named=True):
        assert row["log_loss_lo"] <= row["log_loss"] <= row["log_loss_hi"], row
        assert row["accuracy_lo"] <= row["accuracy"] <= row["accuracy_hi"], row
    assert Resampler(sites, len(sites)).unit == "sites" and Resampler(None, 5).unit == "images"
    # Ten sites give wider intervals than 300 independent images would: the unit matters.
    by_site = table.filter(pl.col("name") == "a").row(0, named=True)
    by_image = score_methods(stack, ["mean"]).table.filter(pl.col("name") == "a").row(0, named=True)
    assert by_site["log_loss_hi"] - by_site["log_loss_lo"] > 0
    assert by_image["log_loss_hi"] - by_image["log_loss_lo"] > 0


def test_better_only_when_the_paired_interval_excludes_zero():
    y, folds = labels_and_folds(400, seed=1)
    good = member_probs(y, 3.0, seed=1)
    rs = Resampler(None, len(y), replicates=300)
    real = compare(good, member_probs(y, 0.5, seed=2), y, rs, CLASSES)
    assert real["log_loss"]["better"] and real["log_loss"]["hi"] < 0
    same = compare(good, good.copy(), y, rs, CLASSES)
    assert not same["log_loss"]["better"] and not same["log_loss"]["worse"]
    assert same["log_loss"]["value"] == 0.0 and "recall/rodent" in same
    # Two independent draws of one model quality: a nonzero delta that is noise, not "better".
    noisy = compare(member_probs(y, 3.0, seed=7), good, y, rs, CLASSES)
    assert noisy["log_loss"]["value"] != 0.0
    assert noisy["log_loss"]["lo"] < 0 < noisy["log_loss"]["hi"] and not noisy["log_loss"]["better"]


def test_temperature_scaling_fixes_overconfidence_out_of_fold():
    y, folds = labels_and_folds(900, seed=2)
    sharp = _overconfident(member_probs(y, 1.0, seed=3), 4.0)
    scaler = TemperatureScaler().fit(sharp, y)
    assert scaler.temperature_ > 2.0  # sharpened by 4: it must soften
    np.testing.assert_array_equal(scaler.predict_proba(sharp).argmax(1), sharp.argmax(1))
    calibrated, temps = nested_temperature(sharp, y, folds)
    assert set(temps) == {0, 1, 2}

    def ll(p):
        return -np.log(p[np.arange(len(y)), y]).mean()

    assert ll(calibrated) < ll(sharp) - 0.1
    assert reliability_bins(calibrated, y)["ece"] < reliability_bins(sharp, y)["ece"]
    np.testing.assert_allclose(apply_temperature(sharp, 1.0), sharp, atol=1e-9)


def test_table_shows_log_loss_before_and_after_nested_calibration():
    y, folds = labels_and_folds(600, seed=5)
    tables = {f"m{i}": oof_table(_overconfident(member_probs(y, 1.0, seed=10 + i), 3.0), y, folds) for i in range(2)}
    table = score_methods(stack_members(tables, CLASSES), ["mean", "geometric"]).table
    for row in table.iter_rows(named=True):
        assert row["calibrated_log_loss"] < row["log_loss"], row
        assert row["temperature"] > 1.0
    best = table.filter(pl.col("name") == BEST_SINGLE).row(0, named=True)
    assert best["delta_vs_best"] == 0.0 and best["better_than_best"] is False


def test_build_with_auto_writes_the_pick_the_temperature_nested_oof_and_a_reliability_diagram(tmp_path):
    import json

    from ens_assets.ensemble.build import NESTED_OOF_FILE, build_diagnostics, build_ensemble
    from ens_assets.plan import EnsembleConfig

    oof, test = planted_members(n=240)
    info = {m: {"flops_per_image": 10} for m in oof}
    cfg = EnsembleConfig(method="auto", greedy_rounds=5, bootstrap_replicates=50)
    sites = {i: f"s{n % 6}" for n, i in enumerate(oof["a"]["image_id"].to_list())}
    result = build_ensemble(oof, test, CLASSES, info, cfg, tmp_path, compare_methods=["mean", "geometric"],
                            groups=sites)
    spec = json.loads((tmp_path / "spec.json").read_text())
    assert spec["selected_by"] == "auto" and spec["method"] == result.spec["auto"]["chosen"]
    assert spec["bootstrap_unit"] == "sites" and spec["temperature"] > 0 and spec["calibrated"] is True
    assert set(spec["member_temperatures"]) == {"a", "b", "c"}
    metrics = json.loads((tmp_path / "metrics.json").read_text())["ensemble"]
    assert metrics["log_loss_lo"] <= metrics["log_loss"] <= metrics["log_loss_hi"]
    assert {"calibrated_log_loss", "ece", "calibrated_ece"} <= set(metrics)
    nested = pl.read_parquet(tmp_path / NESTED_OOF_FILE)
    assert nested.height == 240 and nested["site"].n_unique() == 6
    diagnostics = build_diagnostics(oof, CLASSES, spec, cfg, tmp_path / "diagnostics", nested_oof=nested)
    assert (tmp_path / "diagnostics" / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "reliability" in diagnostics.pngs
