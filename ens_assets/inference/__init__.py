"""Inference: apply a fitted ensemble to new camera-trap photos (a layer above data, ensemble and training;
the Dagster layer and the CLI call it, nothing below imports it)."""
