"""What `ens-assets check` says about the data, in seconds and without training anything: the files the
plan names exist, images found/missing, classes and counts, how folds would be grouped, the test split and
how much of the data the detections file covers.

Problems (a missing file, a manifest that cannot be read, folds that cannot be made) name the params field
and the path; everything else is a fact or a warning for the user to judge.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from ens_assets.plan import Plan

# Files each layout reads from data.root, with the params field that names each (None: a fixed name).
_LAYOUT_FILES = {
    "zamba": [("data.labels_file", "labels.csv")],
    "coco": [("data.labels_file", None)],
    "conservision": [(None, "train_features.csv"), ("data.labels_file", "train_labels.csv")],
}


@dataclass
class DataCheck:
    facts: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    summary: dict = field(default_factory=dict)  # numbers, for tests and callers (init)

    @property
    def ok(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        return ([f"  {f}" for f in self.facts] + [f"  warning: {w}" for w in self.warnings]
                + [f"  PROBLEM: {p}" for p in self.problems])


def _required_files(plan: Plan) -> list[tuple[str, Path]]:
    """(params field, path) of every input file the plan names; the layout's fixed names too."""
    files = []
    for field_name, default in _LAYOUT_FILES.get(plan.data.layout, []):
        name = getattr(plan.data, field_name.split(".")[1]) if field_name else None
        name = name or default
        if name is None:
            files.append((field_name, None))
            continue
        files.append((field_name or f"data.root (the {plan.data.layout} layout's {default})", plan.data_root / name))
    if plan.data.detections:
        files.append(("data.detections", plan.path(plan.data.detections)))
    return files


def check_data(plan: Plan) -> DataCheck:
    """Look at the plan's data: see the module docstring. Reads labels and image headers, never pixels."""
    from ens_assets.data.folds import FoldError, choose_grouping
    from ens_assets.data.ingest import ManifestError, ingest

    report = DataCheck()
    if plan.data.layout == "demo" and not plan.data_root.is_dir():
        report.facts.append(f"demo data not generated yet at {plan.data_root}: `ens-assets materialize data` makes it")
        return report
    if not plan.data_root.is_dir():
        report.problems.append(f"data.root: {plan.data_root} is not a folder; point data.root (relative to "
                               f"{plan.base_dir}) at the folder holding your images")
        return report
    for field_name, path in _required_files(plan):
        if path is None:
            report.problems.append(f"{field_name}: not set; the {plan.data.layout} layout needs it (relative to data.root)")
        elif not path.is_file():
            report.problems.append(f"{field_name}: {path} does not exist")
    if report.problems:
        return report

    try:
        ingested = ingest(plan)
    except (ManifestError, OSError) as exc:
        report.problems.append(f"data ({plan.data.layout} layout): {exc}")
        return report
    manifest = ingested.manifest
    _images(report, manifest, ingested.quarantine)
    report.warnings.extend(ingested.notes)
    train = manifest.filter(pl.col("split") == "train")
    _classes(report, train, plan, ingested.small_classes)
    _test_split(report, manifest, plan)
    try:
        _, grouping = choose_grouping(train, plan.folds)
        report.facts.append(f"folds: {plan.folds.k} folds grouped by {grouping.group_by} ({grouping.n_groups} groups; "
                            f"{grouping.reason})")
        report.summary["group_by"], report.summary["n_groups"] = grouping.group_by, grouping.n_groups
        if grouping.warning:
            report.warnings.append(grouping.warning)
    except FoldError as exc:
        report.problems.append(f"folds: {exc}")
    _detections(report, plan, manifest)
    return report


def _images(report: DataCheck, manifest: pl.DataFrame, quarantine: pl.DataFrame) -> None:
    missing = [rel for path, rel in manifest.select("path", "rel_path").iter_rows() if not os.path.isfile(path)]
    report.summary.update(n_images=manifest.height, n_missing=len(missing), n_label_rows_quarantined=quarantine.height)
    report.facts.append(f"images: {manifest.height} listed, {manifest.height - len(missing)} found, {len(missing)} missing")
    if missing:
        report.warnings.append(f"{len(missing)} listed image(s) are not on disk (e.g. {missing[:3]}); they will be "
                               "quarantined with the reason, not trained on")
    if quarantine.height:
        reasons = quarantine.group_by("reason").len().sort("len", descending=True).head(3)
        report.warnings.append(f"{quarantine.height} label row(s) quarantined: "
                               + "; ".join(f"{n} x {r}" for r, n in reasons.iter_rows()))


def _classes(report: DataCheck, train: pl.DataFrame, plan: Plan, small: dict[str, int]) -> None:
    counts = train.group_by("label").len().sort("len", descending=True)
    report.summary["classes"] = dict(counts.iter_rows())
    report.facts.append(f"classes: {counts.height} in train: " + ", ".join(f"{c} {n}" for c, n in counts.iter_rows()))
    sites = train["site"].n_unique()
    report.facts.append(f"sites: {sites} in train" + (" (no site information)" if train["site"].unique().to_list() == ["unknown"] else ""))
    if counts.height < 2:
        report.problems.append(f"data: the train split has {counts.height} class(es); a classifier needs at least 2")
    if small:
        report.warnings.append(f"classes with fewer images than folds.k = {plan.folds.k}: {small}; some fold's "
                               "validation part lacks them. Add images, or drop/merge them with data.min_class_images")


def _test_split(report: DataCheck, manifest: pl.DataFrame, plan: Plan) -> None:
    test = manifest.filter(pl.col("split") == "test")
    labelled = test["label"].drop_nulls().len()
    report.summary.update(n_test=test.height, n_test_labelled=labelled)
    if not test.height:
        report.facts.append("test split: none (every image is labelled and in the folds); the ensemble is scored on "
                            "OOF alone. data.test_site_fraction or data.test_sites hold sites out for a held-out score")
        return
    how = "labelled: every member and combiner gets a test score" if labelled == test.height else (
        "unlabelled: predictions for a submission" if not labelled else f"{labelled} labelled")
    report.facts.append(f"test split: {test.height} images from {test['site'].n_unique()} site(s), {how}")
    unseen = sorted(set(test["label"].drop_nulls().to_list()) - set(manifest.filter(pl.col("split") == "train")["label"]))
    if unseen:
        report.warnings.append(f"test classes never seen in train: {unseen}; their images cannot be scored")


def _detections(report: DataCheck, plan: Plan, manifest: pl.DataFrame) -> None:
    from ens_assets.data.detections import DetectionsError, read_detections

    json_path = plan.detections_json
    if json_path is None:
        report.facts.append("detections: none (data.detections not set): one crops partition 'full', whole frames")
        return
    try:
        loaded = read_detections(json_path, manifest)
    except DetectionsError as exc:
        report.problems.append(f"data.detections: {exc}")
        return
    summary = loaded.summary()
    by_status = summary["images_by_status"]
    covered = by_status.get("ok", 0)
    report.summary.update(n_detections_covered=covered, n_unmatched_entries=summary["n_unmatched_entries"])
    report.facts.append(f"detections: {json_path.name} (format {summary['format_version']}) covers {covered} of "
                        f"{manifest.height} images; {by_status.get('failure', 0)} failed, "
                        f"{by_status.get('not_in_json', 0)} not in the file (those fall back to the full frame)")
    animals = loaded.table.filter((pl.col("category") == "animal") & pl.col("problem").is_null())
    for key in plan.threshold_keys:
        try:
            threshold = float(key)
        except ValueError:
            continue
        n = animals.filter(pl.col("conf") >= threshold)["image_id"].n_unique()
        report.facts.append(f"  threshold {key}: {n} images with an animal box (the rest fall back to the full frame)")
    if summary["n_unmatched_entries"]:
        report.warnings.append(f"{summary['n_unmatched_entries']} detections entries match no listed image "
                               f"(e.g. {[e['file'] for e in summary['unmatched_entries'][:3]]})")
