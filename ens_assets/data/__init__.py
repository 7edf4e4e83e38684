"""Data core (no Dagster): demo -> manifest (ingest) -> detections -> crops[threshold] -> folds.

demo.generate_demo          synthetic Conser-vision dataset + simulated MegaDetector JSON
ingest.ingest               five layouts -> one manifest table + quarantined label rows (ManifestError on bad input)
camtrap_dp                  Camtrap DP 1.x packages (offline frictionless validation), observation boxes
quarantine                  the quarantine table (bad label rows and bad images, with reasons)
images.load_rgb             safe decoding (ImageProblem reason -> quarantine row)
detections.read_detections  MegaDetector 1.0-1.5 JSON -> one row per detection + unmatched entries (DetectionsError)
crops.build_crop_cache      per-threshold crop cache: images.npy memmap + index/quarantine/summary
folds.make_folds            StratifiedGroupKFold by site / sequence / EXIF burst (bursts.py) / image; check_folds: leakage
"""
