"""Fetching a Kaggle dataset with kagglehub, or saying how to download it by hand."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from .specs import get_spec


class DownloadError(RuntimeError):
    pass


def manual_download_help(dataset: str) -> str:
    spec = get_spec(dataset)
    if not spec.kaggle_slug:
        return f"{dataset} is a dataset of your own, with no download: pass its folder as DATA_DIR."
    return (f"Manual download: open {spec.kaggle_url} in a browser, download and unzip it anywhere "
            f"(for example data/raw/{dataset}/), then pass that folder as data_dir: "
            f"prepare('{dataset}', data_dir=...), papermill ... -p data_dir <folder>, "
            f"or make report DATA_DIR=<folder>. Any parent of the class folders works.")


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def download(dataset: str, to: str | os.PathLike | None = None) -> Path:
    """Fetch the Kaggle dataset with kagglehub (needs network and Kaggle credentials).

    Returns the download folder, or ``to`` after linking/copying the files there.
    """
    spec = get_spec(dataset)
    if not spec.kaggle_slug:
        raise DownloadError(manual_download_help(dataset))
    try:
        import kagglehub
    except ImportError as e:
        raise DownloadError(f"kagglehub is not installed ({e}). {manual_download_help(dataset)}") from e
    try:
        path = Path(kagglehub.dataset_download(spec.kaggle_slug))
    except Exception as e:  # kagglehub raises requests/HTTP/credential errors of many types
        raise DownloadError(
            f"could not download {dataset} ({spec.kaggle_slug}) from Kaggle: {type(e).__name__}: {e}. "
            "This needs network access and Kaggle credentials (~/.kaggle/kaggle.json or "
            f"KAGGLE_USERNAME/KAGGLE_KEY). {manual_download_help(dataset)}") from e
    if to:
        dest = Path(to)
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copytree(path, dest, dirs_exist_ok=True, copy_function=_link_or_copy)
        return dest
    return path
