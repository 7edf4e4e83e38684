"""data.test_site_fraction / data.test_sites hold whole sites out as a labelled test split."""

import polars as pl
import pytest

from ens_assets.data.ingest import ManifestError, hold_out_test_sites, load_manifest
from ens_assets.plan import PlanError, plan_from_dict
from ens_assets_tests import own_data

MEMBERS = [{"backbone": "test_resnet", "recipe": "geo"}]  # no detector: one crops partition "full"


@pytest.fixture(scope="module")
def zamba(tmp_path_factory):
    root = tmp_path_factory.mktemp("held_out_sites") / "images"
    frames = own_data.write_images(root, sites=4)
    own_data.write_zamba_csv(root, frames, with_site=True)
    return root


def _plan(root, **data):
    return plan_from_dict({"data": {"layout": "zamba", "root": str(root), **data},
                           "members": MEMBERS}, root.parent, check_backbones=False)


def test_test_site_fraction_keeps_the_labels_of_held_out_sites(zamba):
    manifest = load_manifest(_plan(zamba, test_site_fraction=0.25))
    test = manifest.filter(pl.col("split") == "test")
    assert test["site"].n_unique() == 1 and test.height == 9
    assert test["label"].null_count() == 0
    assert not set(test["site"]) & set(manifest.filter(pl.col("split") == "train")["site"])


def test_explicit_test_sites(zamba):
    manifest = load_manifest(_plan(zamba, test_sites=["cam02", "cam04"]))
    assert sorted(manifest.filter(pl.col("split") == "test")["site"].unique().to_list()) == ["cam02", "cam04"]
    assert manifest["label"].null_count() == 0


def test_unknown_or_all_test_sites_are_clear_errors(zamba):
    with pytest.raises(ManifestError, match=r"data.test_sites names \['cam9'\].*cam01"):
        load_manifest(_plan(zamba, test_sites=["cam9"]))
    manifest = load_manifest(_plan(zamba))
    with pytest.raises(ManifestError, match="no training site"):
        hold_out_test_sites(manifest, 0.0, ["cam01", "cam02", "cam03", "cam04"])
    with pytest.raises(PlanError, match="keep one of them"):
        _plan(zamba, test_sites=["cam01"], test_site_fraction=0.25)
