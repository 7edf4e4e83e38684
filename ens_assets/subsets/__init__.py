"""Subset ensembles (Ro et al., CVPR-W 2023): difficulty scores, difficulty strata, parameter soups.

Pure core: no Dagster here. `strategy.train_subset_ensemble` is the entry point; the other modules are
its parts and are usable on their own (difficulty scores for data diagnostics, soups for any set of
fine-tuned copies of one base model). `member_training.train_subset_member` runs one checkpoint partition
of a plan member with `strategy: subset` (called by ens_assets.member_runs.train_member_fold).
"""
