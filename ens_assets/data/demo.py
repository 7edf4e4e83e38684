"""Synthetic camera-trap demo in the Conser-vision layout, with a simulated MegaDetector output.

Deterministic from the seed (numpy Generator + PIL drawing). What makes it a useful demo:
- every site has its own background, clutter and lighting, so a split that ignores sites leaks;
- classes differ in shape, texture and size: rodents and birds are small and often hidden behind
  foreground vegetation, leopards are large and spotted, hogs dark and stocky, and so on;
- the simulated detector loses confidence on small or occluded animals, misses some entirely, fires
  low-confidence boxes on rocks and plants (blanks included) and keeps everything >= 0.005, so the
  crop threshold is a real lever: 0.05 crops more small animals than 0.2, plus more noise on blanks;
- about 1% of the images are MegaDetector `failure` entries.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ens_assets.atomic import building_dir, replace_dir
from ens_assets.plan import CLASSES_CONSERVISION, DemoConfig

GENERATOR_VERSION = "1"

DETECTION_CATEGORIES = {"1": "animal", "2": "person", "3": "vehicle"}
FAILURE_FRACTION = 0.01
MIN_KEPT_CONF = 0.005  # MegaDetector batch runs keep everything above this

# Typical animal width as a fraction of the frame width (min, max).
_WIDTH_RANGE = {
    "rodent": (0.07, 0.13),
    "bird": (0.06, 0.12),
    "leopard": (0.38, 0.6),
    "hog": (0.26, 0.4),
    "antelope_duiker": (0.22, 0.36),
    "civet_genet": (0.22, 0.34),
    "monkey_prosimian": (0.2, 0.32),
}
_OCCLUSION_PROB = {"rodent": 0.55, "bird": 0.45}


@dataclass
class _Site:
    name: str
    background: Image.Image
    clutter: list[tuple[float, float, float, float]]  # normalized x, y, w, h of rocks and plants
    brightness: float
    tint: np.ndarray
    night_prob: float
    false_positive_rate: float


@dataclass
class _Animal:
    bbox: tuple[float, float, float, float]  # normalized x, y, w, h
    occlusion: float


class _Shapes:
    """ImageDraw wrapper that records the pixel extent of everything it draws (the animal's box)."""

    def __init__(self, draw: ImageDraw.ImageDraw):
        self.draw = draw
        self.x0 = self.y0 = math.inf
        self.x1 = self.y1 = -math.inf

    def _extend(self, xs, ys):
        self.x0, self.x1 = min(self.x0, *xs), max(self.x1, *xs)
        self.y0, self.y1 = min(self.y0, *ys), max(self.y1, *ys)

    def ellipse(self, box, fill):
        self._extend((box[0], box[2]), (box[1], box[3]))
        self.draw.ellipse(box, fill=fill)

    def line(self, points, fill, width):
        self._extend([p[0] for p in points], [p[1] for p in points])
        self.draw.line(points, fill=fill, width=max(1, int(width)))

    def polygon(self, points, fill):
        self._extend([p[0] for p in points], [p[1] for p in points])
        self.draw.polygon(points, fill=fill)


def _color(rng: np.random.Generator, base, spread=18) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.normal(0, spread), 0, 255)) for c in base)


def _make_site(name: str, rng: np.random.Generator, width: int, height: int) -> _Site:
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    xx /= width
    yy /= height
    base = rng.uniform(50, 190, size=3)
    angle = rng.uniform(0, 2 * math.pi)
    gradient = (math.cos(angle) * xx + math.sin(angle) * yy)[..., None] * rng.uniform(-60, 60, size=3)
    # Low-frequency texture (ground, leaf litter): a small random grid upsampled smoothly.
    grid = rng.normal(0, rng.uniform(10, 30), size=(rng.integers(3, 8), rng.integers(4, 10), 3))
    texture = np.stack(
        [
            np.asarray(Image.fromarray(grid[..., c].astype(np.float32), mode="F").resize((width, height), Image.BICUBIC))
            for c in range(3)
        ],
        axis=-1,
    )
    fine = rng.normal(0, rng.uniform(2, 10), size=(height, width, 1))
    array = np.clip(base + gradient + texture + fine, 0, 255).astype(np.uint8)
    image = Image.fromarray(array, mode="RGB")
    draw = ImageDraw.Draw(image)
    clutter: list[tuple[float, float, float, float]] = []
    for _ in range(rng.integers(1, 4)):  # rocks
        w, h = rng.uniform(0.06, 0.18) * width, rng.uniform(0.05, 0.12) * height
        x, y = rng.uniform(0, width - w), rng.uniform(0.45 * height, height - h)
        draw.ellipse((x, y, x + w, y + h), fill=_color(rng, (120, 115, 110), 25))
        clutter.append((x / width, y / height, w / width, h / height))
    for _ in range(rng.integers(2, 6)):  # plants
        x, y0 = rng.uniform(0, width), rng.uniform(0.5, 1.0) * height
        tall = rng.uniform(0.15, 0.4) * height
        green = _color(rng, (50, 110, 40), 20)
        for _blade in range(rng.integers(3, 7)):
            dx = rng.normal(0, 0.04 * width)
            draw.line([(x, y0), (x + dx, y0 - tall * rng.uniform(0.6, 1.0))], fill=green, width=2)
        clutter.append(
            (max(0.0, (x - 0.08 * width) / width), max(0.0, (y0 - tall) / height), 0.16, min(1.0, tall / height))
        )
    return _Site(
        name=name,
        background=image,
        clutter=clutter,
        brightness=float(rng.uniform(0.65, 1.2)),
        tint=rng.uniform(0.85, 1.15, size=3),
        night_prob=float(rng.choice([0.0, 0.2, 0.45])),
        false_positive_rate=float(rng.uniform(0.3, 1.3)),
    )


def _draw_animal(label: str, image: Image.Image, rng: np.random.Generator) -> _Animal:
    width, height = image.size
    draw = ImageDraw.Draw(image)
    shapes = _Shapes(draw)
    lo, hi = _WIDTH_RANGE[label]
    w = rng.uniform(lo, hi) * width
    facing = 1 if rng.random() < 0.5 else -1
    small = label in ("rodent", "bird")
    cx = rng.uniform(0.1, 0.9) * width
    cy = rng.uniform(0.6, 0.92) * height if small else rng.uniform(0.4, 0.75) * height

    draw_class = _DRAW_CLASS.get(label)
    if draw_class is None:  # pragma: no cover - CLASSES_CONSERVISION is fixed
        raise ValueError(f"no drawing for class {label!r}")
    draw_class(shapes, draw, rng, cx, cy, w, facing)

    occlusion = _occlude(label, shapes, draw, rng, width, height)
    x0, y0 = max(0.0, shapes.x0), max(0.0, shapes.y0)
    x1, y1 = min(float(width), shapes.x1), min(float(height), shapes.y1)
    return _Animal(bbox=(x0 / width, y0 / height, (x1 - x0) / width, (y1 - y0) / height), occlusion=occlusion)


def _draw_rodent(shapes: "_Shapes", draw: ImageDraw.ImageDraw, rng: np.random.Generator, cx: float, cy: float,
                 w: float, facing: int) -> None:
    h = w * rng.uniform(0.45, 0.6)
    fur = _color(rng, (115, 95, 75))
    shapes.ellipse((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), fur)
    hx = cx + facing * w * 0.45
    shapes.ellipse((hx - h * 0.35, cy - h * 0.55, hx + h * 0.35, cy + h * 0.05), fur)
    shapes.line([(cx - facing * w / 2, cy), (cx - facing * w * 1.0, cy + h * 0.3)], fur, max(1, w / 14))


def _draw_bird(shapes: "_Shapes", draw: ImageDraw.ImageDraw, rng: np.random.Generator, cx: float, cy: float,
               w: float, facing: int) -> None:
    h = w * rng.uniform(0.6, 0.8)
    plumage = _color(rng, rng.choice([(40, 50, 110), (150, 40, 40), (30, 30, 30), (200, 190, 160)]), 25)
    shapes.ellipse((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), plumage)
    hx, hy = cx + facing * w * 0.45, cy - h * 0.45
    shapes.ellipse((hx - h * 0.25, hy - h * 0.25, hx + h * 0.25, hy + h * 0.25), plumage)
    shapes.polygon([(hx + facing * h * 0.2, hy - 2), (hx + facing * h * 0.6, hy), (hx + facing * h * 0.2, hy + 2)], (220, 180, 40))
    shapes.line([(cx, cy + h / 2), (cx, cy + h * 0.9)], (90, 70, 40), 1)


def _draw_leopard(shapes: "_Shapes", draw: ImageDraw.ImageDraw, rng: np.random.Generator, cx: float, cy: float,
                  w: float, facing: int) -> None:
    h = w * rng.uniform(0.35, 0.45)
    coat = _color(rng, (205, 160, 70))
    for lx in (-0.35, -0.2, 0.2, 0.35):
        x = cx + lx * w
        shapes.line([(x, cy), (x, cy + h * 1.0)], coat, w / 14)
    shapes.ellipse((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), coat)
    hx = cx + facing * w * 0.55
    shapes.ellipse((hx - h * 0.35, cy - h * 0.75, hx + h * 0.35, cy - h * 0.05), coat)
    shapes.line([(cx - facing * w / 2, cy - h * 0.1), (cx - facing * w * 0.85, cy + h * 0.5)], coat, w / 20)
    spot = (35, 25, 15)
    for _ in range(int(rng.integers(18, 30))):
        sx = cx + rng.uniform(-0.45, 0.45) * w
        sy = cy + rng.uniform(-0.35, 0.35) * h
        r = rng.uniform(0.02, 0.035) * w
        draw.ellipse((sx - r, sy - r, sx + r, sy + r), fill=spot)


def _draw_hog(shapes: "_Shapes", draw: ImageDraw.ImageDraw, rng: np.random.Generator, cx: float, cy: float,
              w: float, facing: int) -> None:
    h = w * rng.uniform(0.55, 0.7)
    skin = _color(rng, (55, 42, 36), 10)
    for lx in (-0.3, -0.15, 0.15, 0.3):
        x = cx + lx * w
        shapes.line([(x, cy), (x, cy + h * 0.75)], skin, w / 9)
    shapes.ellipse((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), skin)
    hx = cx + facing * w * 0.5
    shapes.polygon([(hx, cy - h * 0.3), (hx + facing * w * 0.25, cy + h * 0.05), (hx, cy + h * 0.25)], skin)
    for _ in range(8):
        bx = cx + rng.uniform(-0.4, 0.4) * w
        draw.line([(bx, cy - h * 0.45), (bx + rng.normal(0, 2), cy - h * 0.62)], fill=(25, 20, 18), width=1)


def _draw_antelope_duiker(shapes: "_Shapes", draw: ImageDraw.ImageDraw, rng: np.random.Generator, cx: float, cy: float,
                          w: float, facing: int) -> None:
    h = w * rng.uniform(0.32, 0.42)
    coat = _color(rng, (150, 88, 48))
    for lx in (-0.32, -0.2, 0.22, 0.34):
        x = cx + lx * w
        shapes.line([(x, cy), (x + rng.normal(0, 1), cy + h * 1.5)], coat, max(1, w / 30))
    shapes.ellipse((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), coat)
    nx = cx + facing * w * 0.45
    shapes.line([(nx, cy - h * 0.2), (nx + facing * w * 0.12, cy - h * 1.0)], coat, max(1, w / 18))
    hx, hy = nx + facing * w * 0.14, cy - h * 1.05
    shapes.ellipse((hx - h * 0.22, hy - h * 0.18, hx + h * 0.22, hy + h * 0.18), coat)
    shapes.line([(hx, hy - h * 0.15), (hx - facing * h * 0.1, hy - h * 0.5)], (40, 30, 20), 1)


def _draw_civet_genet(shapes: "_Shapes", draw: ImageDraw.ImageDraw, rng: np.random.Generator, cx: float, cy: float,
                      w: float, facing: int) -> None:
    h = w * rng.uniform(0.28, 0.36)
    coat = _color(rng, (180, 170, 140))
    for lx in (-0.3, 0.3):
        x = cx + lx * w
        shapes.line([(x, cy), (x, cy + h * 0.8)], (30, 30, 30), w / 16)
    shapes.ellipse((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), coat)
    tail_end = (cx - facing * w * 1.05, cy + h * 0.2)
    shapes.line([(cx - facing * w * 0.45, cy), tail_end], coat, max(2, w / 14))
    for i in range(6):  # bands across the body and the tail
        bx = cx + (i / 5 - 0.5) * w * 0.8
        draw.line([(bx, cy - h * 0.45), (bx + rng.normal(0, 1), cy + h * 0.45)], fill=(25, 25, 25), width=max(1, int(w / 25)))
        tx = cx - facing * w * (0.5 + 0.1 * i)
        draw.line([(tx, cy - h * 0.1 + i * 0.04 * h), (tx, cy + h * 0.2 + i * 0.04 * h)], fill=(25, 25, 25), width=2)
    hx = cx + facing * w * 0.5
    shapes.ellipse((hx - h * 0.3, cy - h * 0.5, hx + h * 0.3, cy + h * 0.1), coat)


def _draw_monkey_prosimian(shapes: "_Shapes", draw: ImageDraw.ImageDraw, rng: np.random.Generator, cx: float, cy: float,
                           w: float, facing: int) -> None:
    h = w * rng.uniform(0.5, 0.7)
    fur = _color(rng, (85, 72, 60))
    shapes.ellipse((cx - w * 0.3, cy - h / 2, cx + w * 0.3, cy + h / 2), fur)
    limb = max(2, w / 16)
    for sx, sy in ((-0.3, -0.2), (0.3, -0.2), (-0.25, 0.4), (0.25, 0.4)):
        shapes.line([(cx + sx * w, cy + sy * h), (cx + sx * w * 1.8, cy + sy * h + h * 0.7)], fur, limb)
    shapes.line(
        [(cx - facing * w * 0.25, cy + h * 0.3), (cx - facing * w * 0.7, cy + h * 0.1), (cx - facing * w * 0.9, cy - h * 0.6)],
        fur,
        limb,
    )
    hy = cy - h * 0.7
    shapes.ellipse((cx - h * 0.3, hy - h * 0.3, cx + h * 0.3, hy + h * 0.3), fur)
    shapes.ellipse((cx - h * 0.15, hy - h * 0.1, cx + h * 0.15, hy + h * 0.2), (190, 170, 150))


_DRAW_CLASS = {
    "rodent": _draw_rodent,
    "bird": _draw_bird,
    "leopard": _draw_leopard,
    "hog": _draw_hog,
    "antelope_duiker": _draw_antelope_duiker,
    "civet_genet": _draw_civet_genet,
    "monkey_prosimian": _draw_monkey_prosimian,
}


def _occlude(label: str, shapes: "_Shapes", draw: ImageDraw.ImageDraw, rng: np.random.Generator, width: int,
             height: int) -> float:
    """Sometimes foreground vegetation in front of the animal; the share of it hidden (0 when none)."""
    occlusion = 0.0
    if rng.random() < _OCCLUSION_PROB.get(label, 0.08):
        # Foreground vegetation in front of the animal: each blade hides a slice of it.
        n_blades = int(rng.integers(3, 9))
        green = _color(rng, (45, 105, 35), 20)
        span = shapes.x1 - shapes.x0
        for _ in range(n_blades):
            bx = rng.uniform(shapes.x0 - 0.1 * span, shapes.x1 + 0.1 * span)
            draw.line([(bx, height), (bx + rng.normal(0, 0.05 * width), shapes.y0 - 0.2 * (shapes.y1 - shapes.y0))],
                      fill=green, width=max(2, int(span / 7)))
        occlusion = min(0.75, n_blades * 0.09)
    return occlusion


def _apply_lighting(image: Image.Image, site: _Site, night: bool, rng: np.random.Generator) -> Image.Image:
    array = np.asarray(image, dtype=np.float32)
    array = array * site.tint * site.brightness * rng.uniform(0.85, 1.15)
    if night:  # infrared frames: grey, darker, noisier
        grey = array.mean(axis=-1, keepdims=True) * 0.7
        array = np.repeat(grey, 3, axis=-1) + rng.normal(0, 9, size=array.shape[:2] + (1,))
    else:
        array = array + rng.normal(0, 4, size=array.shape)
    out = Image.fromarray(np.clip(array, 0, 255).astype(np.uint8), mode="RGB")
    return out.filter(ImageFilter.GaussianBlur(0.6)) if night else out


def _round_box(box) -> list[float]:
    return [round(float(v), 4) for v in box]


def _jitter_box(box, rng: np.random.Generator, spread: float) -> list[float]:
    x, y, w, h = box
    x = float(np.clip(x + rng.normal(0, spread * w), 0, 1))
    y = float(np.clip(y + rng.normal(0, spread * h), 0, 1))
    w = float(np.clip(w * rng.uniform(1 - spread, 1 + spread), 0.002, 1 - x))
    h = float(np.clip(h * rng.uniform(1 - spread, 1 + spread), 0.002, 1 - y))
    return _round_box((x, y, w, h))


def _simulate_detector(animal: _Animal | None, site: _Site, night: bool, rng: np.random.Generator) -> list[dict]:
    detections: list[dict] = []
    if animal is not None:
        _, _, w, h = animal.bbox
        size = math.sqrt(max(w * h, 0.0))
        quality = float(np.clip((size - 0.03) / 0.22, 0, 1)) * (1 - animal.occlusion) * (0.85 if night else 1.0)
        miss_prob = 0.03 + 0.25 * (1 - quality)
        if rng.random() >= miss_prob:
            conf = 0.03 + 0.95 * quality**1.3 + rng.normal(0, 0.04)
            conf = float(np.clip(conf, 0.0, 0.99))
            if conf >= MIN_KEPT_CONF:
                detections.append({"category": "1", "conf": round(conf, 3), "bbox": _jitter_box(animal.bbox, rng, 0.05)})
                if size > 0.2 and rng.random() < 0.15:  # a partial duplicate box, as MD often emits
                    x, y, bw, bh = animal.bbox
                    part = (x + bw * 0.5 * rng.random(), y, bw * 0.5, bh * 0.6)
                    detections.append({"category": "1", "conf": round(conf * rng.uniform(0.1, 0.4), 3), "bbox": _jitter_box(part, rng, 0.05)})
    for _ in range(rng.poisson(site.false_positive_rate)):
        clutter = site.clutter[int(rng.integers(len(site.clutter)))]
        category = "2" if rng.random() < 0.05 else "1"
        conf = round(float(rng.uniform(0.01, 0.15)), 3)
        detections.append({"category": category, "conf": conf, "bbox": _jitter_box(clutter, rng, 0.15)})
    return sorted(detections, key=lambda d: -d["conf"])


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    path.write_text(buffer.getvalue())


def _site_names(cfg: DemoConfig) -> tuple[list[str], list[str]]:
    names = [f"S{i:02d}" for i in range(1, cfg.train_sites + cfg.test_sites + 1)]
    return names[: cfg.train_sites], names[cfg.train_sites :]


def _demo_info(cfg: DemoConfig, counts: dict | None = None) -> dict:
    info = {"seed": cfg.seed, "generator_version": GENERATOR_VERSION, "cfg": cfg.model_dump(mode="json")}
    if counts is not None:
        info["counts"] = counts
    return info


def _is_current(root: Path, cfg: DemoConfig) -> dict | None:
    info_path = root / "demo_info.json"
    if not info_path.is_file():
        return None
    try:
        info = json.loads(info_path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    wanted = _demo_info(cfg)
    if all(info.get(key) == value for key, value in wanted.items()):
        return info
    return None


def generate_demo(root: Path, cfg: DemoConfig) -> dict:
    """Write the demo dataset under `root`; a no-op when demo_info.json already matches cfg."""
    root = Path(root)
    current = _is_current(root, cfg)
    if current is not None:
        return current
    if root.exists() and any(root.iterdir()) and not (root / "demo_info.json").exists():
        raise FileExistsError(
            f"{root}: exists, is not empty and holds no demo_info.json, so it is not a demo folder; "
            "remove it or point data.root at another folder"
        )
    if cfg.train_sites < 1 or cfg.test_sites < 1:
        raise ValueError(f"demo needs at least one train and one test site (got {cfg.train_sites}, {cfg.test_sites})")

    with building_dir(root) as building:
        info = _generate_into(building, cfg)
        replace_dir(building, root)
    return info


def _generate_into(out: Path, cfg: DemoConfig) -> dict:
    width, height = cfg.frame_width, cfg.frame_height
    seeds = np.random.SeedSequence(cfg.seed)
    site_seed, layout_seed, image_seed, failure_seed = seeds.spawn(4)
    train_sites, test_sites = _site_names(cfg)
    all_sites = train_sites + test_sites
    sites = {
        name: _make_site(name, np.random.default_rng(s), width, height)
        for name, s in zip(all_sites, site_seed.spawn(len(all_sites)))
    }

    layout_rng = np.random.default_rng(layout_seed)
    # Each site favours some classes (habitat), so class and site are correlated as in real data.
    affinity = layout_rng.gamma(0.8, size=(len(all_sites), len(CLASSES_CONSERVISION))) + 0.05
    plan: list[tuple[str, str, str]] = []  # (split, label, site)
    for split, names, per_class in (
        ("train", train_sites, cfg.train_images_per_class),
        ("test", test_sites, cfg.test_images_per_class),
    ):
        rows = [all_sites.index(n) for n in names]
        for c, label in enumerate(CLASSES_CONSERVISION):
            weights = affinity[rows, c] / affinity[rows, c].sum()
            for site_index in layout_rng.choice(len(names), size=per_class, p=weights):
                plan.append((split, label, names[int(site_index)]))
    ids = [f"ZJ{n:06d}" for n in layout_rng.permutation(len(plan))]
    n_failures = max(1, round(FAILURE_FRACTION * len(plan))) if plan else 0
    failures = set(np.random.default_rng(failure_seed).choice(len(plan), size=n_failures, replace=False).tolist())

    (out / "images").mkdir()
    md_images: list[dict] = []
    features = {"train": [], "test": []}
    labels: list[list] = []
    for i, ((split, label, site_name), image_id, rng_seed) in enumerate(zip(plan, ids, image_seed.spawn(len(plan)))):
        rng = np.random.default_rng(rng_seed)
        site = sites[site_name]
        image = site.background.copy()
        animal = None if label == "blank" else _draw_animal(label, image, rng)
        night = bool(rng.random() < site.night_prob)
        image = _apply_lighting(image, site, night, rng)
        rel_path = f"images/{image_id}.jpg"
        image.save(out / rel_path, format="JPEG", quality=88)
        features[split].append([image_id, rel_path, site_name])
        if split == "train":
            labels.append([image_id] + [1 if c == label else 0 for c in CLASSES_CONSERVISION])
        detections = _simulate_detector(animal, site, night, rng)
        if i in failures:
            md_images.append({"file": rel_path, "failure": "Failure image access", "detections": None})
        else:
            md_images.append({"file": rel_path, "detections": detections})

    features = {split: sorted(rows) for split, rows in features.items()}
    _write_csv(out / "train_features.csv", ["id", "filepath", "site"], features["train"])
    _write_csv(out / "test_features.csv", ["id", "filepath", "site"], features["test"])
    _write_csv(out / "train_labels.csv", ["id", *CLASSES_CONSERVISION], sorted(labels))
    megadetector = {
        "info": {
            "format_version": "1.4",
            "detector": f"ens-assets simulated detector v{GENERATOR_VERSION}",
            "detection_completion_time": "1970-01-01 00:00:00",
        },
        "detection_categories": DETECTION_CATEGORIES,
        "images": sorted(md_images, key=lambda entry: entry["file"]),
    }
    (out / "megadetector.json").write_text(json.dumps(megadetector, indent=1) + "\n")
    counts = {
        "train_images": len(features["train"]),
        "test_images": len(features["test"]),
        "train_sites": train_sites,
        "test_sites": test_sites,
        "md_failures": n_failures,
        "per_class_train": {c: sum(1 for s, lab, _ in plan if s == "train" and lab == c) for c in CLASSES_CONSERVISION},
    }
    info = _demo_info(cfg, counts)
    (out / "demo_info.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return info
