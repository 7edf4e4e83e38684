"""Data core (no Dagster): demo -> manifest (ingest) -> detections -> crops[threshold] -> folds.

demo.generate_demo          synthetic Conser-vision dataset + simulated MegaDetector JSON
ingest.load_manifest        four layouts -> one manifest table (ManifestError on bad input)
images.load_rgb             safe decoding (ImageProblem reason -> quarantine row)
detections.load_detections  MegaDetector 1.x JSON -> one row per detection (DetectionsError)
crops.build_crop_cache      per-threshold crop cache: images.npy memmap + index/quarantine/summary
folds.assign_folds          StratifiedGroupKFold by site; folds.check_folds reports leakage
"""
