"""Camtrap DP 1.x (TDWG Camera Trap Data Package) -> manifest, and its observation boxes -> detections.

A package is a folder with datapackage.json, deployments.csv, media.csv and observations.csv.
- label: scientificName of animal observations, else the observationType (blank, human, vehicle);
  media-level observations win over event-level ones, which apply to every media of the event (same
  deployment, timestamp within eventStart..eventEnd);
- site: the deployment's locationID (locationName, then deploymentID when it has none);
- sequence: the eventID (folds may group by it);
- observation boxes (bboxX/bboxY/bboxWidth/bboxHeight, normalised, top-left) become detections with
  confidence 1.0 when no MegaDetector file is given (crops partition 'boxes').
Videos, remote URLs, unclassified media and media with several species are quarantined with the reason.

The tables are validated with frictionless against the Camtrap DP 1.0.2 table schemas shipped in
camtrap_dp_schemas/ (MIT, tdwg/camtrap-dp): the package's own profile/schema URLs point to the internet
and are never fetched.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

import polars as pl

from ens_assets.data.detections import DETECTIONS_SCHEMA
from ens_assets.data.ingest import ManifestError, _finish, _read_csv, _relative_path
from ens_assets.data.quarantine import RowQuarantine

SCHEMAS_DIR = Path(__file__).with_name("camtrap_dp_schemas")
TABLES = ("deployments", "media", "observations")
_NOT_A_LABEL = {"unknown", "unclassified"}
_BOX_CATEGORY = {"animal": "animal", "human": "person", "vehicle": "vehicle"}
_MAX_VALIDATION_ERRORS = 5


def _descriptor(root: Path) -> dict:
    path = root / "datapackage.json"
    if not path.is_file():
        raise ManifestError(f"{path}: file not found; a Camtrap DP package has datapackage.json beside its CSV files")
    try:
        descriptor = json.loads(path.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: not valid JSON ({exc}); re-export the package") from None
    profile = str(descriptor.get("profile", "")) if isinstance(descriptor, dict) else ""
    if "camtrap-dp" in profile and "/1." not in profile and "/main/" not in profile:
        raise ManifestError(f"{path}: profile {profile} is not Camtrap DP 1.x; re-export the package as Camtrap DP 1.0")
    return descriptor


def _table_paths(root: Path, descriptor: dict) -> dict[str, Path]:
    """File of each of the three tables (the resource's path, else <name>.csv)."""
    declared = {r.get("name"): r.get("path") for r in descriptor.get("resources", []) if isinstance(r, dict)}
    paths = {}
    for name in TABLES:
        path = declared.get(name) or f"{name}.csv"
        if not isinstance(path, str):
            raise ManifestError(f"{root / 'datapackage.json'}: resource '{name}' has path {path!r}; give one relative CSV path")
        paths[name] = root / path
    return paths


def validate_package(root: Path, paths: dict[str, Path]) -> list[str]:
    """Problems frictionless finds in the three tables (schema types, constraints, foreign keys), offline."""
    import frictionless  # deferred: only Camtrap DP ingest needs it

    resources = []
    for name, path in paths.items():
        schema = json.loads((SCHEMAS_DIR / f"{name}-table-schema.json").read_text())
        schema.pop("$schema", None)
        resources.append(
            {"name": name, "path": os.path.relpath(path, root), "profile": "tabular-data-resource", "format": "csv",
             "encoding": "utf-8", "schema": schema}  # fmt: skip
        )
    # schema_sync: match columns by name, so an export that leaves out optional columns still validates
    # (the columns this module reads are checked by _read_tables).
    package = frictionless.Package(
        {"name": "camtrap-dp", "resources": resources}, basepath=str(root), detector=frictionless.Detector(schema_sync=True)
    )
    report = package.validate()
    problems = []
    for task in report.tasks:
        for error in task.errors:
            row = getattr(error, "row_number", None)
            field = getattr(error, "field_name", None)
            where = f"{paths[task.name].name}" + (f" row {row}" if row else "") + (f" field {field}" if field else "")
            problems.append(f"{where}: {error.message}")
    return problems


def _timestamp(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _observation_label(obs: dict) -> str | None:
    kind = (obs.get("observationType") or "").strip()
    if kind == "animal":
        return (obs.get("scientificName") or "").strip() or None
    return None if kind in _NOT_A_LABEL or not kind else kind


def _observations_per_media(media: pl.DataFrame, observations: pl.DataFrame) -> dict[str, tuple[list[dict], list[dict]]]:
    """mediaID -> (media-level observations, event-level observations covering it)."""
    per_media: dict[str, tuple[list[dict], list[dict]]] = {m: ([], []) for m in media["mediaID"]}
    by_deployment: dict[str, list[tuple[datetime | None, str]]] = {}
    for media_id, deployment, stamp in media.select("mediaID", "deploymentID", "timestamp").iter_rows():
        by_deployment.setdefault(deployment, []).append((_timestamp(stamp), media_id))
    for obs in observations.iter_rows(named=True):
        level = (obs.get("observationLevel") or "media").strip()
        if level == "media" and obs.get("mediaID") in per_media:
            per_media[obs["mediaID"]][0].append(obs)
        elif level == "event":
            start, end = _timestamp(obs.get("eventStart")), _timestamp(obs.get("eventEnd"))
            for stamp, media_id in by_deployment.get(obs.get("deploymentID"), []):
                if stamp is not None and start is not None and end is not None and start <= stamp <= end:
                    per_media[media_id][1].append(obs)
    return per_media


def _read_tables(root: Path, rows: RowQuarantine) -> tuple[dict[str, Path], dict[str, pl.DataFrame]]:
    descriptor = _descriptor(root)
    paths = _table_paths(root, descriptor)
    tables = {
        "deployments": _read_csv(paths["deployments"], ["deploymentID"], rows),
        "media": _read_csv(paths["media"], ["mediaID", "deploymentID", "filePath"], rows),
        "observations": _read_csv(paths["observations"], ["observationID", "deploymentID", "observationType"], rows),
    }
    for column in ("timestamp", "fileMediatype"):
        if column not in tables["media"].columns:
            tables["media"] = tables["media"].with_columns(pl.lit(None, dtype=pl.String).alias(column))
    for column in ("mediaID", "eventID", "observationLevel", "eventStart", "eventEnd", "scientificName"):
        if column not in tables["observations"].columns:
            tables["observations"] = tables["observations"].with_columns(pl.lit(None, dtype=pl.String).alias(column))
    return paths, tables


def ingest_camtrap_dp(root: Path, rows_out: RowQuarantine | None = None, *, validate: bool = True) -> pl.DataFrame:
    """The manifest of a Camtrap DP package (see the module docstring); image_id = mediaID."""
    rows = rows_out or RowQuarantine(strict=True)
    root = Path(os.path.abspath(root))
    paths, tables = _read_tables(root, rows)
    if validate:
        problems = validate_package(root, paths)
        if problems and rows.strict:
            raise ManifestError(
                f"{root}: the Camtrap DP package does not validate ({len(problems)} problem(s)): "
                + "; ".join(problems[:_MAX_VALIDATION_ERRORS]) + ". Fix the rows or set data.strict: false"
            )
        if problems:
            rows.notes.append(
                f"{root}: Camtrap DP validation found {len(problems)} problem(s), e.g. "
                + "; ".join(problems[:_MAX_VALIDATION_ERRORS])
            )
    sites = {
        d["deploymentID"]: (d.get("locationID") or d.get("locationName") or d["deploymentID"])
        for d in tables["deployments"].iter_rows(named=True)
    }
    per_media = _observations_per_media(tables["media"], tables["observations"])
    manifest_rows = []
    seen: set[str] = set()
    media_csv = paths["media"].name
    for i, media in enumerate(tables["media"].iter_rows(named=True)):
        where = f"{paths['media']} row {i + 2} (mediaID {media['mediaID']})"
        ref = f"{media_csv}:{i + 2}"
        try:
            manifest_rows.append(_media_row(root, media, where, sites, per_media.get(media["mediaID"], ([], [])), seen))
        except ManifestError as exc:
            rows.reject(exc, row_ref=ref, rel_path=media.get("filePath"))
    return _finish(manifest_rows, str(paths["media"]))


def _media_row(root: Path, media: dict, where: str, sites: dict, observations: tuple[list[dict], list[dict]], seen: set) -> dict:
    media_id, file_path = media["mediaID"], (media.get("filePath") or "").strip()
    if not media_id:
        raise ManifestError(f"{where}: empty mediaID; give every media an id")
    if media_id in seen:
        raise ManifestError(f"{where}: duplicate mediaID '{media_id}'; keep one row per media")
    seen.add(media_id)
    mediatype = (media.get("fileMediatype") or "").strip().lower()
    if mediatype.startswith("video/"):
        raise ManifestError(f"{where}: video ({mediatype}); only still images are trained on, so it is skipped")
    if file_path.lower().startswith(("http://", "https://", "ftp://")):
        raise ManifestError(
            f"{where}: filePath is a remote URL ({file_path}); download the media into the package folder and set "
            "filePath to its relative path"
        )
    if media.get("deploymentID") not in sites:
        raise ManifestError(f"{where}: deploymentID '{media.get('deploymentID')}' is not in deployments.csv")
    own, of_event = observations
    # media-level observations are more specific than the event's; fall back to the event's
    labels = {label for label in map(_observation_label, own) if label} or {
        label for label in map(_observation_label, of_event) if label
    }
    animals = labels - {"blank", "human", "vehicle"}
    if not labels:
        raise ManifestError(f"{where}: no observation classifies this media (none, or only unknown/unclassified); "
                            "classify it or drop the row")
    if len(animals) > 1:
        raise ManifestError(
            f"{where}: observations name several species {sorted(animals)}; this platform trains single-label "
            "classifiers, so keep one species per media (or drop it)"
        )
    label = next(iter(animals)) if animals else sorted(labels)[0]
    event = next((o.get("eventID") for o in (*own, *of_event) if o.get("eventID")), None)
    path, rel = _relative_path(root, file_path, where)
    return {"image_id": media_id, "path": path, "rel_path": rel, "label": label, "site": str(sites[media["deploymentID"]]),
            "split": "train", "sequence": event}  # fmt: skip


def observation_detections(root: Path, manifest: pl.DataFrame) -> pl.DataFrame:
    """Observation boxes of the manifest's media as detections (confidence 1.0; 'ok' with no box when
    a media has none, so it falls back to the full frame)."""
    root = Path(os.path.abspath(root))
    _, tables = _read_tables(root, RowQuarantine(strict=False))
    observations = tables["observations"]
    boxes: dict[str, list[tuple]] = {}
    if {"bboxX", "bboxY", "bboxWidth", "bboxHeight"} <= set(observations.columns):
        for obs in observations.filter(pl.col("mediaID").is_not_null()).iter_rows(named=True):
            try:
                x, y, w, h = (float(obs[c]) for c in ("bboxX", "bboxY", "bboxWidth", "bboxHeight"))
            except (TypeError, ValueError):
                continue  # no box (or an unparsable one) on this observation
            category = _BOX_CATEGORY.get((obs.get("observationType") or "").strip(), "animal")
            problem = None if 0 <= x <= 1 and 0 <= y <= 1 and 0 < w <= 1 and 0 < h <= 1 else "bbox outside [0,1]"
            boxes.setdefault(obs["mediaID"], []).append((category, x, y, w, h, problem))
    rows = []
    empty = {"failure": None, "category": None, "conf": None, "x": None, "y": None, "w": None, "h": None, "problem": None}
    for image_id, rel_path in manifest.select("image_id", "rel_path").iter_rows():
        base = {"image_id": image_id, "rel_path": rel_path, "status": "ok"}
        found = boxes.get(image_id)
        if not found:
            rows.append({**base, **empty})
        for category, x, y, w, h, problem in found or []:
            rows.append({**base, "failure": None, "category": category, "conf": 1.0, "x": x, "y": y, "w": w, "h": h, "problem": problem})
    return pl.DataFrame(rows, schema=DETECTIONS_SCHEMA) if rows else pl.DataFrame(schema=DETECTIONS_SCHEMA)

