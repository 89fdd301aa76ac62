"""Interactions -> CSR + id maps; MovieLens and generic readers; preprocessing; seeded splits."""

from aerec.data.catalogue import UnknownIdsWarning, align_to_catalogue
from aerec.data.datasets import DATASETS, ChecksumError, find_dataset_dir, verify_file
from aerec.data.interactions import Interactions
from aerec.data.preprocess import binarize, filter_min_counts
from aerec.data.readers import load_item_titles, load_movielens, read_csv, read_parquet
from aerec.data.splits import (
    HoldoutSplit,
    StrongSplit,
    cold_start_split,
    per_user_holdout,
    random_holdout,
    strong_generalization,
    temporal_holdout,
)

__all__ = [
    "DATASETS", "ChecksumError", "HoldoutSplit", "Interactions", "StrongSplit", "UnknownIdsWarning",
    "align_to_catalogue", "binarize", "cold_start_split", "filter_min_counts",
    "find_dataset_dir", "load_item_titles", "load_movielens", "per_user_holdout", "random_holdout", "read_csv",
    "read_parquet", "strong_generalization", "temporal_holdout", "verify_file",
]
