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
import importlib

# Loaded on first use (PEP 562), so that importing one module of the package (helpers.params
# reads the dataset table in ``specs``) does not import the rest, which imports helpers.params.
_EXPORTS = {
    "main": "cli", "find_class_root": "discover", "folder_spec": "discover",
    "DownloadError": "kaggle", "download": "kaggle", "manual_download_help": "kaggle",
    **dict.fromkeys(("PREPARED_FILES", "Prepared", "load_prepared", "prepare", "prepared_dir",
                     "validate_prep_params"), "prepared"),
    **dict.fromkeys(("DATASETS", "ENV_DATA_ROOT", "MIN_PER_CLASS", "SPLITS", "DatasetSpec", "check_split",
                     "data_root", "get_spec", "known_datasets", "register"), "specs"),
    "SPLIT_NAMES": "splits",
    **dict.fromkeys(("counts_table", "skipped_summary", "source_note", "stats_table"), "summary"),
    "synthesize": "synthetic",
}
_MODULES = ("build", "cli", "decode", "discover", "kaggle", "phantoms", "prepared", "specs", "splits", "summary",
            "synthetic")
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    if name in _MODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_EXPORTS, *_MODULES])
