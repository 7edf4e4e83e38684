"""One batch of new photos in, predictions.csv + MegaDetector JSON out: what the CLI and the predictions asset call."""

from __future__ import annotations

import sys
from pathlib import Path

from ens_assets.inference.artefact import EnsembleArtefact, resolve_artefact
from ens_assets.inference.inputs import list_images
from ens_assets.inference.outputs import PredictOutputs, write_outputs
from ens_assets.inference.predict import predict_photos
from ens_assets.plan import Plan


def predict_batch(
    images: str | Path,
    out_dir: str | Path,
    *,
    detections: str | Path | None = None,
    ensemble: str | EnsembleArtefact = "latest",
    plan: Plan | None = None,
    workers: int | None = None,
    batch_images: int | None = None,
    progress: bool = False,
    expected_files: set[str] = frozenset(),
) -> PredictOutputs:
    """Predict every photo of a folder (recursive) or CSV of paths and write the outputs into out_dir.

    `expected_files`: names in the folder that are known not to be photos (a marker, the detections JSON):
    not mentioned among the skipped files."""
    artefact = ensemble if isinstance(ensemble, EnsembleArtefact) else resolve_artefact(ensemble, plan)
    listing = list_images(images)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(listing.images), unit="img", desc="predict", file=sys.stderr, dynamic_ncols=True)
    try:
        result = predict_photos(artefact, listing.images, detections, workers=workers,
                                **({"batch_images": batch_images} if batch_images else {}),
                                progress=bar.update if bar else None)
    finally:
        if bar is not None:
            bar.close()
    skipped = [name for name in listing.skipped if name not in expected_files]
    if skipped:
        result.notes.append(f"{len(skipped)} files in {listing.root} are not photos by their suffix and were "
                            f"not read: {skipped[:5]}")
    return write_outputs(result, out_dir)
