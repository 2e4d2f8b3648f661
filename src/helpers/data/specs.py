"""The dataset table: every fact about a dataset lives in its ``DatasetSpec`` entry.

Adding a dataset is one entry here (plus a phantom drawing function for its synthetic stand-in);
no other module branches on a dataset's name.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..params import MIN_PER_CLASS, SPLITS  # noqa: F401  (every parameter choice lives in params)
from . import phantoms

ENV_DATA_ROOT = "HELPERS_DATA_ROOT"


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    classes: tuple[str, ...]         # label order
    native_size: int                 # side of the Kaggle images (and of the phantoms)
    ext: str                         # image file extension in the Kaggle download
    kaggle_slug: str
    layout: tuple[str, ...]          # folders from the download root to the class folders
    file_name: str                   # Kaggle file naming, e.g. "{cls}-{index}" -> "COVID-12"
    phantom: Callable[..., phantoms.Phantom]   # draws the synthetic stand-in of one image
    image_dir: str = ""              # images sit in <class>/<image_dir>/ ("" = the class folder)
    mask_dir: str | None = None      # companion mask folder inside a class folder
    mask_outline: str | None = None  # what the real masks outline ("lung"); synthetic masks: lesions
    mask_size: int | None = None     # side of the real masks (the phantoms' are saved this size)
    index_csv: str | None = None     # the download's file index beside the class tree
    # Numbered CT slices: consecutive file numbers are neighbouring slices of one scan, so
    # intervals resample blocks of them (helpers.study), and slices are cut in more than one
    # plane, so the audit measures each slice's view (helpers.audit.slice_views)
    ct_slices: bool = False

    @property
    def kaggle_url(self) -> str:
        return f"https://www.kaggle.com/datasets/{self.kaggle_slug}"


DATASETS: dict[str, DatasetSpec] = {
    "covid_radiography": DatasetSpec(
        name="covid_radiography",
        classes=("COVID", "Normal", "Viral Pneumonia"),
        native_size=299,
        ext=".png",
        kaggle_slug="tawsifurrahman/covid19-radiography-database",
        layout=("COVID-19_Radiography_Dataset",),
        file_name="{cls}-{index}",
        phantom=phantoms.chest_xray,
        image_dir="images",
        mask_dir="masks",
        mask_outline="lung",
        mask_size=256,
    ),
    "ct_kidney": DatasetSpec(
        name="ct_kidney",
        classes=("Cyst", "Normal", "Stone", "Tumor"),
        native_size=512,
        ext=".jpg",
        kaggle_slug="nazmul0087/ct-kidney-dataset-normal-cyst-tumor-and-stone",
        layout=("CT-KIDNEY-DATASET-Normal-Cyst-Tumor-Stone",) * 2,
        file_name="{cls}- ({index})",
        phantom=phantoms.kidney_ct,
        index_csv="kidneyData.csv",
        ct_slices=True,
    ),
}


def get_spec(dataset: str) -> DatasetSpec:
    """The spec of ``dataset``; an unknown name is a ValueError naming the known ones."""
    if not isinstance(dataset, str) or dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {', '.join(DATASETS)}; got {dataset!r}")
    return DATASETS[dataset]


def data_root() -> Path:
    """Base folder for synthetic and prepared data: $HELPERS_DATA_ROOT or ./data."""
    return Path(os.environ.get(ENV_DATA_ROOT) or "data")
