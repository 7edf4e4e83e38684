"""A small Camtrap DP 1.0 package with real JPEGs: two deployments at two locations, events labelled at
event level and at media level (with boxes), plus a video, a remote URL and an unclassified media."""

from __future__ import annotations

import csv
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

from .exif_photos import write_photo

BASE = "https://raw.githubusercontent.com/tdwg/camtrap-dp/1.0.2"
DEPLOYMENTS = ["deploymentID", "locationID", "locationName", "latitude", "longitude", "deploymentStart", "deploymentEnd"]
MEDIA = ["mediaID", "deploymentID", "captureMethod", "timestamp", "filePath", "filePublic", "fileName", "fileMediatype"]
OBSERVATIONS = [
    "observationID", "deploymentID", "mediaID", "eventID", "eventStart", "eventEnd", "observationLevel",
    "observationType", "scientificName", "count", "bboxX", "bboxY", "bboxWidth", "bboxHeight", "classificationMethod",
]  # fmt: skip
SPECIES = ["Vulpes vulpes", "Capreolus capreolus", "Sus scrofa"]


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S%z").replace("+0000", "Z")


def _write(path: Path, header: list[str], rows: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, header)
        writer.writeheader()
        writer.writerows(rows)


def write_camtrap_package(root: Path, events_per_deployment: int = 6, frames: int = 3, observation_type: str | None = None) -> dict:
    """Returns {"labels": mediaID -> expected label, "events": mediaID -> eventID, "boxed": mediaIDs with a box,
    "skipped": mediaIDs that must be quarantined}."""
    root.mkdir(parents=True, exist_ok=True)
    start = datetime(2024, 6, 1, 20, 0, 0, tzinfo=timezone.utc)
    deployments, media, observations = [], [], []
    truth: dict = {"labels": {}, "events": {}, "boxed": set(), "skipped": set()}
    n = 0
    for d in range(2):
        dep = f"dep{d}"
        deployments.append({"deploymentID": dep, "locationID": f"loc{d}", "locationName": f"Forest {d}", "latitude": 50.1 + d,
                            "longitude": 4.2, "deploymentStart": _iso(start), "deploymentEnd": _iso(start + timedelta(days=2))})  # fmt: skip
        for e in range(events_per_deployment):
            event = f"{dep}-ev{e}"
            t0 = start + timedelta(hours=e)
            species = SPECIES[(d + e) % len(SPECIES)]
            event_level = e % 2 == 0  # even events are labelled once for the whole event
            if e == 1:
                species = None  # a blank event
            if event_level:
                observations.append({"observationID": f"o{event}", "deploymentID": dep, "mediaID": "", "eventID": event,
                                     "eventStart": _iso(t0), "eventEnd": _iso(t0 + timedelta(seconds=2 * (frames - 1))),
                                     "observationLevel": "event", "observationType": "animal" if species else "blank",
                                     "scientificName": species or "", "count": 1 if species else "", "classificationMethod": "human"})  # fmt: skip
            for f in range(frames):
                media_id = f"m{n:03d}"
                rel = f"media/{dep}/{media_id}.jpg"
                stamp = t0 + timedelta(seconds=2 * f)
                write_photo(root / rel, n, size=(48, 36), taken=stamp.replace(tzinfo=None))
                media.append({"mediaID": media_id, "deploymentID": dep, "captureMethod": "activityDetection",
                              "timestamp": _iso(stamp), "filePath": rel, "filePublic": "false", "fileName": f"{media_id}.jpg",
                              "fileMediatype": "image/jpeg"})  # fmt: skip
                truth["labels"][media_id] = species or "blank"
                truth["events"][media_id] = event
                if not event_level:
                    boxed = bool(species) and f == 0
                    observations.append({"observationID": f"o{media_id}", "deploymentID": dep, "mediaID": media_id,
                                         "eventID": event, "eventStart": _iso(stamp), "eventEnd": _iso(stamp),
                                         "observationLevel": "media", "observationType": "animal" if species else "blank",
                                         "scientificName": species or "", "count": 1 if species else "",
                                         "bboxX": 0.2 if boxed else "", "bboxY": 0.3 if boxed else "",
                                         "bboxWidth": 0.4 if boxed else "", "bboxHeight": 0.5 if boxed else "",
                                         "classificationMethod": "human"})  # fmt: skip
                    if boxed:
                        truth["boxed"].add(media_id)
                n += 1
    stamp = _iso(start + timedelta(hours=30))
    extra = [
        ("mvid", "media/dep0/clip.mp4", "video/mp4"),
        ("murl", "https://multimedia.agouti.eu/assets/abc/file", "image/jpeg"),
        ("munk", "media/dep0/unknown.jpg", "image/jpeg"),
    ]
    write_photo(root / "media/dep0/unknown.jpg", 999)
    for media_id, path, mediatype in extra:
        media.append({"mediaID": media_id, "deploymentID": "dep0", "captureMethod": "activityDetection", "timestamp": stamp,
                      "filePath": path, "filePublic": "false", "fileName": Path(path).name, "fileMediatype": mediatype})  # fmt: skip
        truth["skipped"].add(media_id)
    observations.append({"observationID": "ounk", "deploymentID": "dep0", "mediaID": "munk", "eventID": "dep0-late",
                         "eventStart": stamp, "eventEnd": stamp, "observationLevel": "media",
                         "observationType": observation_type or "unclassified", "scientificName": "", "count": "",
                         "classificationMethod": ""})  # fmt: skip
    _write(root / "deployments.csv", DEPLOYMENTS, deployments)
    _write(root / "media.csv", MEDIA, media)
    _write(root / "observations.csv", OBSERVATIONS, observations)
    descriptor = {
        "profile": f"{BASE}/camtrap-dp-profile.json",
        "name": "test-package",
        "created": "2024-07-01T00:00:00Z",
        "contributors": [{"title": "Test", "role": "contact"}],
        "project": {"title": "Test", "samplingDesign": "opportunistic", "captureMethod": ["activityDetection"],
                    "individualAnimals": False, "observationLevel": ["media", "event"]},  # fmt: skip
        "resources": [
            {"name": name, "path": f"{name}.csv", "profile": "tabular-data-resource", "format": "csv",
             "mediatype": "text/csv", "encoding": "utf-8", "schema": f"{BASE}/{name}-table-schema.json"}  # fmt: skip
            for name in ("deployments", "media", "observations")
        ],
    }
    (root / "datapackage.json").write_text(json.dumps(descriptor, indent=2))
    return truth
