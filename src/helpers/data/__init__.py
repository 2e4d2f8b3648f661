"""Datasets: the spec table, synthetic phantoms, Kaggle-layout discovery, the prepared folder,
downloads (see CONTRACTS.md).

Modules, one concern each: ``specs`` (the dataset table), ``phantoms`` (drawing),
``synthetic`` (phantoms in the Kaggle layout), ``discover`` (finding a download's files),
``decode`` (one file -> arrays), ``splits`` (random and near-duplicate-grouped 6:2:2),
``prepared`` (name, build and read the prepared folder), ``summary`` (its tables and figure),
``build`` (process pool, locked folder publishing), ``kaggle`` (downloads with kagglehub), ``cli``.
Command line: ``python -m helpers.data {download,synthesize,prepare} DATASET ...``.

``HELPERS_DATA_ROOT`` (environment) replaces the ``data/`` base folder, which tests use to stay
out of the repository.
"""
from .cli import main
from .discover import find_class_root, folder_spec
from .kaggle import DownloadError, download, manual_download_help
from .prepared import PREPARED_FILES, Prepared, load_prepared, prepare, prepared_dir, validate_prep_params
from .specs import (DATASETS, ENV_DATA_ROOT, MIN_PER_CLASS, SPLITS, DatasetSpec, check_split, data_root, get_spec,
                    known_datasets, register)
from .splits import SPLIT_NAMES
from .summary import counts_table, skipped_summary, source_note, stats_table
from .synthetic import synthesize

__all__ = [
    "DATASETS", "DatasetSpec", "get_spec", "known_datasets", "register", "folder_spec", "check_split", "SPLITS",
    "SPLIT_NAMES", "MIN_PER_CLASS", "ENV_DATA_ROOT", "data_root", "synthesize", "find_class_root",
    "validate_prep_params", "prepared_dir", "prepare", "PREPARED_FILES", "Prepared", "load_prepared", "source_note",
    "counts_table", "stats_table", "skipped_summary", "DownloadError", "download", "manual_download_help", "main",
]
