"""Ingest a dataset in one of four layouts into one manifest table.

Manifest columns (in this order): image_id, path (absolute), rel_path (posix, relative to the data
root; what MegaDetector's JSON "file" matches), label (null for a layout's own unlabelled test rows), site, split ("train" |
"test"), sequence (the layout's sequence/event id, null when it has none; folds may group by it).

Layouts:
- demo / conservision: DrivenData Conser-vision files (train_features.csv, train_labels.csv one-hot,
  test_features.csv); the test split comes with the data.
- zamba: a CSV `filepath,label[,site][,sequence]`; image_id = rel_path.
- imagefolder: root/<class>/<image> (site "unknown") or root/<class>/<site>/<image>; image_id = rel_path.
  Hidden files are skipped; every other file is an image row (a stray non-image is quarantined at crop
  time with a reason rather than dropped silently).
- coco: COCO Camera Traps JSON; location -> site, seq_id -> sequence, category 0 or "empty" -> label "blank".
- camtrap-dp: a Camtrap DP 1.x package (see camtrap_dp.py); image_id = mediaID.
Layouts without a test split send whole sites to "test" by data.test_site_fraction or data.test_sites,
keeping their labels (only a layout's own test file is unlabelled).

Missing image files are not manifest errors: they are quarantined at crop time, so every image stays
accounted for.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import polars as pl

from ens_assets.atomic import write_json, write_parquet
from ens_assets.data.quarantine import RowQuarantine
from ens_assets.plan import CLASSES_CONSERVISION, Plan

MANIFEST_SCHEMA = pl.Schema(
    {
        "image_id": pl.String,
        "path": pl.String,
        "rel_path": pl.String,
        "label": pl.String,
        "site": pl.String,
        "split": pl.String,
        # Sequence / event id from the layout (COCO CT seq_id, zamba 'sequence' column); null when absent.
        "sequence": pl.String,
    }
)
UNKNOWN_SITE = "unknown"
BLANK_LABEL = "blank"


class ManifestError(ValueError):
    """A dataset description that cannot be ingested; names the file, the row and the fix."""


# --- shared checks -------------------------------------------------------------------------------


# Text encodings tried, in order, when data.encoding is not set: a spreadsheet saved "as CSV" on Windows
# is cp1252 (latin-1 with curly quotes and the euro sign); latin-1 itself decodes any byte.
_FALLBACK_ENCODINGS = ("cp1252", "latin-1")


def _decode_csv(path: Path, encoding: str | None, notes: list[str]) -> str:
    raw = path.read_bytes()
    if encoding:
        try:
            return raw.decode(encoding)
        except (UnicodeDecodeError, LookupError) as exc:
            raise ManifestError(f"{path}: {_decode_problem(raw, exc, encoding)}; re-save the file as UTF-8 or set "
                                "data.encoding to its encoding (e.g. latin-1, cp1252, utf-16)") from None
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return raw.decode("utf-16")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        problem = _decode_problem(raw, exc, "UTF-8")
    for fallback in _FALLBACK_ENCODINGS:
        try:
            text = raw.decode(fallback)
        except UnicodeDecodeError:
            continue
        notes.append(f"{path}: {problem}; read it as {fallback}. Set data.encoding to say so, or re-save as UTF-8")
        return text
    raise AssertionError("latin-1 decodes every byte")  # pragma: no cover


def _decode_problem(raw: bytes, exc: Exception, encoding: str) -> str:
    if not isinstance(exc, UnicodeDecodeError):
        return f"unknown encoding {encoding!r}"
    line = raw[: exc.start].count(b"\n") + 1  # line 1 is the header, so line n is the CSV's row n
    return f"row {line} is not valid {encoding} (byte 0x{raw[exc.start]:02x} at offset {exc.start})"


def _read_csv(path: Path, required: list[str], rows: RowQuarantine) -> pl.DataFrame:
    """Read a CSV as strings; undecodable text either names the row (data.encoding set) or is read as
    cp1252/latin-1 with a note in rows.notes."""
    if path.is_dir():
        raise ManifestError(f"{path}: is a folder, not a CSV file; point the layout's labels file at the CSV")
    if not path.is_file():
        raise ManifestError(f"{path}: file not found; check data.root and the layout's file names")
    text = _decode_csv(path, rows.encoding, rows.notes)
    try:
        # everything as strings: ids like 007 stay intact
        frame = pl.read_csv(io.BytesIO(text.encode("utf-8")), infer_schema=False)
    except Exception as exc:  # polars raises several error types for malformed CSV
        raise ManifestError(f"{path}: not a readable CSV ({exc}); re-export it as comma-separated UTF-8") from None
    frame = frame.rename({c: c.strip() for c in frame.columns})
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise ManifestError(
            f"{path}: missing required column(s) {missing}; found {frame.columns}. Add the column(s) to the header"
        )
    return frame


def _relative_path(root: Path, raw: object, where: str) -> tuple[str, str]:
    """Resolve a filepath cell against the data root: (absolute path, posix rel_path)."""
    if raw is None or str(raw).strip() == "":
        raise ManifestError(f"{where}: empty file path; fill it in or delete the row")
    text = str(raw).strip().replace("\\", "/")
    candidate = Path(text)
    absolute = Path(os.path.normpath(candidate if candidate.is_absolute() else root / candidate))
    if not absolute.exists():  # the labels may spell a name in NFC and the disk in NFD (macOS), or the reverse
        for form in ("NFC", "NFD"):
            variant = Path(unicodedata.normalize(form, str(absolute)))
            if variant.exists():
                absolute = variant
                break
    try:
        rel = absolute.relative_to(root)
    except ValueError:
        raise ManifestError(
            f"{where}: path '{text}' escapes the data root {root}; move the image under the root "
            "or point data.root at a folder that contains it"
        ) from None
    return str(absolute), PurePosixPath(*rel.parts).as_posix()


def _claim_id(seen: dict[str, str], image_id: str, where: str) -> None:
    """Fail on a repeated image id, naming both places it appears."""
    if image_id in seen:
        raise ManifestError(
            f"{where}: duplicate image id '{image_id}' (first seen at {seen[image_id]}); every image needs a "
            "unique id. Remove the repeated row or give it its own id"
        )
    seen[image_id] = where


def _finish(rows: list[dict], source: str) -> pl.DataFrame:
    frame = pl.DataFrame(rows, schema=MANIFEST_SCHEMA, orient="row") if rows else pl.DataFrame(schema=MANIFEST_SCHEMA)
    if frame.height == 0:
        raise ManifestError(f"{source}: no images found; check data.root and data.layout")
    return frame


# --- layouts -------------------------------------------------------------------------------------


def ingest_conservision(
    root: Path, labels_file: str | None = None, test_file: str | None = None, rows_out: RowQuarantine | None = None
) -> pl.DataFrame:
    """Conser-vision layout: train_features.csv + one-hot train_labels.csv (+ test_features.csv)."""
    quarantine = rows_out or RowQuarantine(strict=True)
    root = Path(os.path.abspath(root))
    features_path = root / "train_features.csv"
    labels_path = root / (labels_file or "train_labels.csv")
    test_path = root / (test_file or "test_features.csv")
    features = _read_csv(features_path, ["id", "filepath", "site"], quarantine)
    one_hot = _read_csv(labels_path, ["id", *CLASSES_CONSERVISION], quarantine)
    unknown = [c for c in one_hot.columns if c not in ("id", *CLASSES_CONSERVISION)]
    if unknown:
        raise ManifestError(
            f"{labels_path}: unknown label column(s) {unknown}; the Conser-vision classes are "
            f"{list(CLASSES_CONSERVISION)}. Rename or drop the column(s)"
        )

    labels: dict[str, str] = {}
    unlabelled: dict[str, str] = {}  # id -> why its labels row was quarantined
    for i, row in enumerate(one_hot.iter_rows(named=True)):
        where = f"{labels_path} row {i + 2} (id {row['id']})"
        try:
            labels[row["id"]] = _one_hot_label(row, where, labels)
        except ManifestError as exc:
            quarantine.reject(exc, row_ref=f"{labels_path.name}:{i + 2}")
            unlabelled[row["id"]] = str(exc)

    rows: list[dict] = []
    seen: dict[str, str] = {}
    for i, row in enumerate(features.iter_rows(named=True)):
        where = f"{features_path} row {i + 2} (id {row['id']})"
        try:
            _claim_id(seen, row["id"], where)
            if row["id"] in unlabelled:
                raise ManifestError(f"{where}: its labels row was quarantined ({unlabelled[row['id']]})")
            if row["id"] not in labels:
                raise ManifestError(f"{where}: image has no row in {labels_path.name}; add its one-hot label or drop it")
            rows.append(_conservision_row(root, row, where, labels[row["id"]], "train"))
        except ManifestError as exc:
            quarantine.reject(exc, row_ref=f"{features_path.name}:{i + 2}", rel_path=row["filepath"])
    train_ids = {r["image_id"] for r in rows}
    orphans = sorted(set(labels) - train_ids - set(seen))
    if orphans and quarantine.strict:
        raise ManifestError(
            f"{labels_path}: {len(orphans)} labelled id(s) have no row in {features_path.name} (e.g. {orphans[:3]}); "
            "add their filepath and site or remove the labels"
        )
    for image_id in orphans:
        error = ManifestError(f"{labels_path} (id {image_id}): labelled but has no row in {features_path.name}; "
                              "add its filepath and site or remove the label")
        quarantine.reject(error, row_ref=f"{labels_path.name}:id {image_id}")
    if test_path.is_file() or test_file is not None:
        test = _read_csv(test_path, ["id", "filepath", "site"], quarantine)
        for i, row in enumerate(test.iter_rows(named=True)):
            where = f"{test_path} row {i + 2} (id {row['id']})"
            try:
                _claim_id(seen, row["id"], where)
                rows.append(_conservision_row(root, row, where, None, "test"))
            except ManifestError as exc:
                quarantine.reject(exc, row_ref=f"{test_path.name}:{i + 2}", rel_path=row["filepath"], split="test")
    return _finish(rows, f"{features_path} / {test_path.name}")


def _one_hot_label(row: dict, where: str, labels: dict[str, str]) -> str:
    hot = []
    for c in CLASSES_CONSERVISION:
        cell = (row[c] or "").strip()
        try:
            value = float(cell)
        except ValueError:
            raise ManifestError(f"{where}: column '{c}' holds '{cell}', expected 0 or 1") from None
        if value not in (0.0, 1.0):
            raise ManifestError(f"{where}: column '{c}' holds {cell}, expected 0 or 1")
        if value == 1.0:
            hot.append(c)
    if len(hot) != 1:
        raise ManifestError(f"{where}: one-hot row has {len(hot)} ones ({hot}); each image needs exactly one class set to 1")
    if row["id"] in labels:
        raise ManifestError(f"{where}: duplicate image id '{row['id']}' in the labels; keep one row per id")
    return hot[0]


def _conservision_row(root: Path, row: dict, where: str, label: str | None, split: str) -> dict:
    if not row["id"]:
        raise ManifestError(f"{where}: empty id; give every image an id")
    if not row["site"]:
        raise ManifestError(f"{where}: empty site; Conser-vision rows need a site (folds split by site)")
    path, rel = _relative_path(root, row["filepath"], where)
    return {"image_id": row["id"], "path": path, "rel_path": rel, "label": label, "site": row["site"], "split": split}


def ingest_zamba(root: Path, labels_file: str = "labels.csv", rows_out: RowQuarantine | None = None) -> pl.DataFrame:
    """Zamba-style CSV `filepath,label` with optional `site` and `sequence` columns; image_id = rel_path."""
    quarantine = rows_out or RowQuarantine(strict=True)
    root = Path(os.path.abspath(root))
    labels_path = root / labels_file
    frame = _read_csv(labels_path, ["filepath", "label"], quarantine)
    has_site = "site" in frame.columns
    has_sequence = "sequence" in frame.columns
    rows = []
    seen: dict[str, str] = {}
    for i, row in enumerate(frame.iter_rows(named=True)):
        where = f"{labels_path} row {i + 2}"
        try:
            label = (row["label"] or "").strip()
            if not label:
                raise ManifestError(f"{where}: empty label; every training image needs a label (use 'blank' for empty frames)")
            path, rel = _relative_path(root, row["filepath"], where)
            _claim_id(seen, rel, where)
        except ManifestError as exc:
            quarantine.reject(exc, row_ref=f"{labels_path.name}:{i + 2}", rel_path=row["filepath"])
            continue
        site = ((row["site"] or "").strip() if has_site else "") or UNKNOWN_SITE
        sequence = ((row["sequence"] or "").strip() if has_sequence else "") or None
        rows.append(
            {"image_id": rel, "path": path, "rel_path": rel, "label": label, "site": site, "split": "train", "sequence": sequence}
        )
    return _finish(rows, str(labels_path))


def ingest_imagefolder(root: Path, rows_out: RowQuarantine | None = None) -> pl.DataFrame:
    """root/<class>/<image> (site "unknown") or root/<class>/<site>/<image>; image_id = rel_path."""
    quarantine = rows_out or RowQuarantine(strict=True)
    root = Path(os.path.abspath(root))
    if not root.is_dir():
        raise ManifestError(f"{root}: not a folder; set data.root to the folder holding one sub-folder per class")
    rows = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        parts = Path(dirpath).relative_to(root).parts
        for name in sorted(f for f in filenames if not f.startswith(".")):
            rel = PurePosixPath(*parts, name).as_posix()
            if len(parts) == 0:
                continue  # files beside the class folders (a README, a labels CSV) are not images of a class
            if len(parts) > 2:
                error = ManifestError(
                    f"{root / rel}: nested too deep; the imagefolder layout is root/<class>/<image> or "
                    "root/<class>/<site>/<image>. Flatten the folders"
                )
                quarantine.reject(error, row_ref=rel, rel_path=rel)
                continue
            site = parts[1] if len(parts) == 2 else UNKNOWN_SITE
            rows.append(
                {"image_id": rel, "path": str(root / rel), "rel_path": rel, "label": parts[0], "site": site, "split": "train"}
            )
    return _finish(rows, str(root))


def ingest_coco(root: Path, json_file: str, rows_out: RowQuarantine | None = None) -> pl.DataFrame:
    """COCO Camera Traps: location -> site; category 0 or named "empty" -> label "blank"."""
    quarantine = rows_out or RowQuarantine(strict=True)
    root = Path(os.path.abspath(root))
    json_path = root / json_file
    if not json_path.is_file():
        raise ManifestError(f"{json_path}: file not found; set data.labels_file to the COCO Camera Traps JSON")
    try:
        data = json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{json_path}: not valid JSON ({exc}); re-export the COCO Camera Traps file") from None
    for key in ("images", "categories", "annotations"):
        if not isinstance(data, dict) or not isinstance(data.get(key), list):
            raise ManifestError(f"{json_path}: missing required list '{key}'; a COCO Camera Traps file has images, categories, annotations")
    categories: dict[object, str] = {}
    for i, cat in enumerate(data["categories"]):
        if "id" not in cat or "name" not in cat:
            raise ManifestError(f"{json_path}: categories[{i}] lacks 'id' or 'name'")
        name = str(cat["name"]).strip()
        categories[cat["id"]] = BLANK_LABEL if cat["id"] == 0 or name.lower() == "empty" else name
    labels: dict[object, set[str]] = {}
    bad_annotations: dict[object, str] = {}  # image id -> why one of its annotations cannot be used
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or ann.get("category_id") not in categories:
            problem = (
                f"{json_path}: annotations[{i}] (id {ann.get('id') if isinstance(ann, dict) else None}) has unknown "
                f"category_id {ann.get('category_id') if isinstance(ann, dict) else None!r}; known ids: "
                f"{sorted(categories, key=str)}. Add the category or fix the annotation"
            )
            if quarantine.strict or not isinstance(ann, dict):
                raise ManifestError(problem)
            bad_annotations.setdefault(ann.get("image_id"), problem)
            continue
        labels.setdefault(ann.get("image_id"), set()).add(categories[ann["category_id"]])
    rows = []
    seen: dict[str, str] = {}
    for i, image in enumerate(data["images"]):
        where = f"{json_path} images[{i}] (id {image.get('id')})"
        try:
            if "id" not in image or "file_name" not in image:
                raise ManifestError(f"{where}: lacks 'id' or 'file_name'")
            if image["id"] in bad_annotations:
                raise ManifestError(bad_annotations[image["id"]])
            _claim_id(seen, str(image["id"]), where)
            found = labels.get(image["id"], set())
            animals = found - {BLANK_LABEL}
            if not found:
                raise ManifestError(f"{where}: no annotation; add one (category 0 'empty' for a blank frame)")
            if len(animals) > 1:
                raise ManifestError(
                    f"{where}: labelled with several species {sorted(animals)}; this platform trains single-label "
                    "classifiers, so keep one species per image (or drop the image)"
                )
            label = next(iter(animals)) if animals else BLANK_LABEL
            path, rel = _relative_path(root, image["file_name"], where)
        except ManifestError as exc:
            quarantine.reject(exc, row_ref=f"{json_path.name}:images[{i}]", rel_path=image.get("file_name"))
            continue
        location = image.get("location")
        site = str(location) if location not in (None, "") else UNKNOWN_SITE
        seq_id = image.get("seq_id")
        sequence = str(seq_id) if seq_id not in (None, "") else None
        rows.append(
            {"image_id": str(image["id"]), "path": path, "rel_path": rel, "label": label, "site": site, "split": "train", "sequence": sequence}
        )
    return _finish(rows, str(json_path))


# --- splits and the plan entry point ---------------------------------------------------------------


def hold_out_test_sites(manifest: pl.DataFrame, fraction: float, sites: tuple[str, ...] | list[str] = ()) -> pl.DataFrame:
    """Move whole sites to split "test", keeping their labels (a held-out score on sites never trained on).

    `sites` names them (data.test_sites); else `fraction` of the sites, ordered by a hash of their name so
    the choice is stable and independent of row order. Neither keeps every site in train.
    """
    known = sorted(manifest.filter(pl.col("split") == "train")["site"].unique().to_list())
    if sites:
        unknown = sorted(set(sites) - set(known))
        if unknown:
            raise ManifestError(
                f"data.test_sites names {unknown}, which no training image has; the sites are {known[:20]}"
                f"{' ...' if len(known) > 20 else ''}. Fix the names or remove them"
            )
        test_sites = set(sites)
        if test_sites >= set(known):
            raise ManifestError(f"data.test_sites {sorted(test_sites)} would leave no training site; keep at least one out of it")
    elif fraction > 0:
        ordered = sorted(known, key=lambda s: hashlib.sha256(s.encode()).hexdigest())
        n_test = math.ceil(fraction * len(ordered))
        if n_test >= len(ordered):
            raise ManifestError(
                f"data.test_site_fraction = {fraction} would leave no training site ({len(ordered)} site(s): {ordered[:5]}); "
                "lower the fraction or add site information (zamba: a 'site' column; imagefolder: root/<class>/<site>/)"
            )
        test_sites = set(ordered[:n_test])
    else:
        return manifest
    is_test = (pl.col("split") == "train") & pl.col("site").is_in(sorted(test_sites))
    return manifest.with_columns(pl.when(is_test).then(pl.lit("test")).otherwise(pl.col("split")).alias("split"))


@dataclass
class Ingested:
    """The manifest, the label rows quarantined on the way (QUARANTINE_SCHEMA), and notes for the user."""

    manifest: pl.DataFrame
    quarantine: pl.DataFrame
    notes: list[str] = field(default_factory=list)
    # train classes with fewer images than folds.k (kept unless data.min_class_images says otherwise)
    small_classes: dict[str, int] = field(default_factory=dict)


def ingest(plan: Plan) -> Ingested:
    """The plan's dataset as a manifest, dispatching on data.layout; bad label rows are quarantined
    (data.strict: raised), classes below data.min_class_images dropped or merged."""
    layout, root = plan.data.layout, plan.data_root
    rows = RowQuarantine(strict=plan.data.strict, encoding=plan.data.encoding)
    if layout in ("demo", "conservision"):
        manifest = ingest_conservision(root, plan.data.labels_file, plan.data.test_file, rows)
    elif layout == "zamba":
        manifest = ingest_zamba(root, plan.data.labels_file or "labels.csv", rows)
    elif layout == "imagefolder":
        manifest = ingest_imagefolder(root, rows)
    elif layout == "coco":
        if not plan.data.labels_file:
            raise ManifestError("data.labels_file: set it to the COCO Camera Traps JSON (relative to data.root)")
        manifest = ingest_coco(root, plan.data.labels_file, rows)
    elif layout == "camtrap-dp":
        from ens_assets.data.camtrap_dp import ingest_camtrap_dp  # a sibling module built on this one's helpers

        manifest = ingest_camtrap_dp(root, rows)
    else:  # pragma: no cover - the plan's Literal type rejects other layouts
        raise ManifestError(f"data.layout: unknown layout {layout!r}")
    if layout not in ("demo", "conservision"):
        manifest = hold_out_test_sites(manifest, plan.data.test_site_fraction, plan.data.test_sites)
    manifest = _apply_min_class_images(manifest, plan, rows)
    return Ingested(manifest, rows.frame(), rows.notes, classes_below(manifest, plan.folds.k))


def load_manifest(plan: Plan) -> pl.DataFrame:
    """The manifest of the plan's dataset (ingest(plan) without the quarantine and notes)."""
    return ingest(plan).manifest


# --- the manifest's files: written by the manifest asset, read by every later stage ----------------
def manifest_report(plan: Plan, ingested: Ingested) -> dict:
    """What manifest.json holds: counts, quarantined label rows (the first 200), small classes, notes."""
    return {
        "n_images": ingested.manifest.height,
        "n_quarantined_label_rows": ingested.quarantine.height,
        "quarantined_label_rows": ingested.quarantine.head(200).to_dicts(),
        "folds_k": plan.folds.k,
        "small_classes": ingested.small_classes,
        "notes": ingested.notes,
    }


def write_ingested(plan: Plan, ingested: Ingested) -> None:
    """manifest.parquet, manifest_quarantine.parquet and manifest.json, each written atomically."""
    write_parquet(plan.manifest_path, ingested.manifest)
    write_parquet(plan.manifest_quarantine_path, ingested.quarantine)
    write_json(plan.manifest_report_path, manifest_report(plan, ingested))


def read_manifest(plan: Plan) -> pl.DataFrame:
    """The manifest the manifest asset wrote; a clear error when it has not run."""
    if not plan.manifest_path.is_file():
        raise FileNotFoundError(f"{plan.manifest_path}: no manifest; materialize the manifest asset first")
    return pl.read_parquet(plan.manifest_path)


def read_label_quarantine(plan: Plan) -> pl.DataFrame | None:
    """The label rows ingest quarantined (QUARANTINE_SCHEMA); None before the manifest asset has run."""
    return pl.read_parquet(plan.manifest_quarantine_path) if plan.manifest_quarantine_path.is_file() else None


def read_manifest_report(plan: Plan) -> dict:
    """manifest.json (manifest_report); {} before the manifest asset has run."""
    return json.loads(plan.manifest_report_path.read_text()) if plan.manifest_report_path.is_file() else {}


def classes_below(manifest: pl.DataFrame, n: int) -> dict[str, int]:
    """Train classes with fewer than n images: with n = folds.k some fold's validation part lacks them."""
    counts = manifest.filter(pl.col("split") == "train").group_by("label").len().filter(pl.col("len") < n).sort("label")
    return dict(counts.iter_rows())


def _apply_min_class_images(manifest: pl.DataFrame, plan: Plan, rows: RowQuarantine) -> pl.DataFrame:
    """Drop (quarantine, with the reason) or merge into data.merged_class the train classes below
    data.min_class_images; 0 keeps every class."""
    minimum = plan.data.min_class_images
    small = classes_below(manifest, minimum) if minimum else {}
    if not small:
        return manifest
    is_small = (pl.col("split") == "train") & pl.col("label").is_in(list(small))
    if plan.data.small_classes == "merge":
        rows.notes.append(f"classes {small} have fewer than data.min_class_images = {minimum} images; merged into "
                          f"'{plan.data.merged_class}'")
        return manifest.with_columns(pl.when(is_small).then(pl.lit(plan.data.merged_class)).otherwise(pl.col("label")).alias("label"))
    for image_id, rel_path, label in manifest.filter(is_small).select("image_id", "rel_path", "label").iter_rows():
        reason = (f"class '{label}' has {small[label]} image(s) < data.min_class_images = {minimum}; dropped. Add images, "
                  "lower data.min_class_images, or set data.small_classes: merge")
        rows.rows.append({"image_id": image_id, "rel_path": rel_path, "split": "train", "reason": reason})
    return manifest.filter(~is_small)


def class_names(manifest: pl.DataFrame) -> list[str]:
    """Sorted labels of the train split: the classifier's output order."""
    return sorted(manifest.filter(pl.col("split") == "train")["label"].drop_nulls().unique().to_list())


def manifest_summary(manifest: pl.DataFrame) -> dict:
    """Counts for Dagster metadata: images per split, class counts per split and per site."""
    labelled = manifest.with_columns(pl.col("label").fill_null("(unlabelled)"))

    def nested(key: str) -> dict[str, dict[str, int]]:
        counts = labelled.group_by(key, "label").len().sort(key, "label")
        out: dict[str, dict[str, int]] = {}
        for k, label, n in counts.iter_rows():
            out.setdefault(k, {})[label] = n
        return out

    return {
        "n_images": manifest.height,
        "n_per_split": dict(manifest.group_by("split").len().sort("split").iter_rows()),
        "n_sites_per_split": dict(manifest.group_by("split").agg(pl.col("site").n_unique()).sort("split").iter_rows()),
        "classes": class_names(manifest),
        "per_split": nested("split"),
        "per_site": nested("site"),
    }
