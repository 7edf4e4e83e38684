"""Camtrap DP layout: labels, sites, sequences, event-level observations, skipped media, offline
validation with frictionless, observation boxes as detections."""

from __future__ import annotations

import socket

import polars as pl
import pytest

from ens_assets.data.camtrap_dp import observation_detections
from ens_assets.data.crops import build_crop_cache
from ens_assets.data.folds import make_folds
from ens_assets.data.ingest import ManifestError, ingest
from ens_assets.plan import CropConfig, PlanError, plan_from_dict

from .camtrap_package import write_camtrap_package


def _plan(tmp_path, members=None, **data):
    raw = {
        "data": {"layout": "camtrap-dp", "root": "package", **data},
        "members": members or [{"backbone": "test_resnet", "recipe": "geo"}],
    }
    return plan_from_dict(raw, tmp_path, check_backbones=False)


@pytest.fixture
def offline(monkeypatch):
    """Any attempt to open a network connection fails the test (profile/schema URLs must never be fetched)."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_camtrap_dp_manifest(tmp_path, offline):
    truth = write_camtrap_package(tmp_path / "package")
    ingested = ingest(_plan(tmp_path))
    manifest = ingested.manifest
    assert ingested.notes == []  # the package validates against the shipped 1.0.2 schemas, offline
    assert dict(manifest.select("image_id", "label").iter_rows()) == truth["labels"]
    assert dict(manifest.select("image_id", "sequence").iter_rows()) == truth["events"]
    assert set(manifest["site"]) == {"loc0", "loc1"}  # locationID of the deployment
    assert manifest.filter(pl.col("label") == "blank").height == 6  # the blank events, one event-level
    reasons = dict(ingested.quarantine.select("rel_path", "reason").iter_rows())
    assert len(reasons) == len(truth["skipped"]) == 3
    assert "video (video/mp4)" in reasons["media/dep0/clip.mp4"]
    assert "filePath is a remote URL" in reasons["https://multimedia.agouti.eu/assets/abc/file"]
    assert "no observation classifies this media" in reasons["media/dep0/unknown.jpg"]


def test_human_observations_label_the_media(tmp_path):
    write_camtrap_package(tmp_path / "package", observation_type="human")
    manifest = ingest(_plan(tmp_path)).manifest
    assert manifest.filter(pl.col("image_id") == "munk")["label"].to_list() == ["human"]


def test_sequences_from_event_ids_group_the_folds(tmp_path):
    write_camtrap_package(tmp_path / "package")
    plan = _plan(tmp_path)
    folds, grouping = make_folds(ingest(plan).manifest, plan.folds)  # 2 locations < k = 3
    assert grouping.group_by == "sequence" and grouping.n_groups == 12
    assert folds.join(ingest(plan).manifest.select("image_id", "sequence"), on="image_id").group_by("sequence").agg(
        pl.col("fold").n_unique()
    )["fold"].max() == 1


def test_invalid_package_is_named_by_frictionless(tmp_path, offline):
    root = tmp_path / "package"
    write_camtrap_package(root)
    text = (root / "observations.csv").read_text().replace(",media,blank,", ",media,nothing,", 1)
    (root / "observations.csv").write_text(text)
    with pytest.raises(ManifestError, match=r"does not validate.*observations.csv row \d+ field observationType"):
        ingest(_plan(tmp_path, strict=True))
    (note,) = ingest(_plan(tmp_path)).notes
    assert "observations.csv row" in note and "observationType" in note


def test_observation_boxes_serve_as_detections(tmp_path):
    truth = write_camtrap_package(tmp_path / "package")
    plan = _plan(tmp_path)
    assert plan.detection_source == "observations" and plan.threshold_keys == ["boxes"]
    assert plan.member_keys == ["test_resnet.boxes.geo"]
    manifest = ingest(plan).manifest
    detections = observation_detections(plan.data_root, manifest)
    boxed = detections.filter(pl.col("conf").is_not_null())
    assert set(boxed["image_id"]) == truth["boxed"] and boxed["conf"].unique().to_list() == [1.0]
    summary = build_crop_cache(manifest, detections, "boxes", CropConfig(image_size=16), tmp_path / "crops", workers=1)
    assert summary["n_used"] == len(truth["boxed"]) and summary["n_fallback_only"] == manifest.height - len(truth["boxed"])
    with pytest.raises(PlanError, match=r"only crops partition is 'boxes'"):
        _plan(tmp_path, members=[{"backbone": "test_resnet", "recipe": "geo", "threshold": 0.2}])
    with_md = _plan(tmp_path, detections="md.json", members=[{"backbone": "test_resnet", "recipe": "geo", "threshold": 0.2}])
    assert with_md.detection_source == "megadetector"
