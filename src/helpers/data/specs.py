"""The dataset table: every fact about a dataset lives in its ``DatasetSpec`` entry.

Adding a dataset is one entry here (with the phantom that draws its synthetic stand-in and the
finding each class shows) and an experiment file; no other module branches on a dataset's name.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

from ..augment import Augmentation
from ..params import MIN_PER_CLASS, SPLITS  # noqa: F401  (every parameter choice lives in params)
from . import phantoms

ENV_DATA_ROOT = "HELPERS_DATA_ROOT"
OWN_SPECS = "specs"   # <data root>/specs/<name>.json: the datasets of one's own that an experiment declared


@dataclass(frozen=True)
class Reduction:
    """A shortcut-reduced version of a dataset: what data prep does to each image (and mask)."""

    border: float = 0.1      # share of each side cropped away: markers, text, collimation edges
    equalize: bool = True    # grey levels equalised to one flat histogram


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    classes: tuple[str, ...]         # label order
    native_size: int                 # side of the Kaggle images (and of the phantoms)
    ext: str                         # image file extension in the Kaggle download
    kaggle_slug: str
    layout: tuple[str, ...]          # folders from the download root to the class folders
    file_name: str                   # Kaggle file naming, e.g. "{cls}-{index}" -> "COVID-12"
    phantom: Callable[..., phantoms.Phantom] | None   # draws the synthetic stand-in of one image
    title: str = ""                  # its name in the pages' prose and tables ("chest X-ray")
    image_dir: str = ""              # images sit in <class>/<image_dir>/ ("" = the class folder)
    mask_dir: str | None = None      # companion mask folder inside a class folder
    mask_outline: str | None = None  # what the real masks outline ("lung"); synthetic masks: lesions
    mask_size: int | None = None     # side of the real masks (the phantoms' are saved this size)
    index_csv: str | None = None     # the download's file index beside the class tree
    # Numbered CT slices: consecutive file numbers are neighbouring slices of one scan, so
    # intervals resample blocks of them (helpers.study), and slices are cut in more than one
    # plane, so the audit measures each slice's view (helpers.baselines.slice_views)
    ct_slices: bool = False
    # What the phantom draws for each class (its finding); a class not named is drawn normal.
    findings: dict[str, str] | None = None
    # A download that comes split: split name -> its folder, each holding every class folder
    # (``train/NORMAL/...``). Its split is honoured (``split: given``), never redrawn.
    split_dirs: dict[str, str] | None = None
    # What a training image may undergo where a run augments (TrainParams.augment). No
    # horizontal flip by default: a chest X-ray's heart is on the left, a CT's liver on the right.
    augment: Augmentation = Augmentation()
    # A version of another dataset (its name): the same download and files, prepared otherwise
    # (``reduce``); its DATA_DIR defaults to that dataset's, and its split draws the same images.
    derived_from: str | None = None
    reduce: Reduction | None = None
    # Another copy of a download a paper used (its dataset's name): that paper's published values
    # stand beside this dataset's results (helpers.metrics.paper_values)
    published_as: str | None = None

    @property
    def splits(self) -> tuple[str, ...]:
        """The ``split`` values this dataset accepts."""
        return ("given",) if self.split_dirs else tuple(s for s in SPLITS if s != "given")

    @property
    def audit_split(self) -> str:
        """The split the audit measures: ``random``, or ``given`` for a download that comes split."""
        return self.splits[0]

    def class_dirs(self) -> list[tuple[str | None, str, str]]:
        """(given split or None, class, folder relative to the class root) of every class folder."""
        if not self.split_dirs:
            return [(None, c, c) for c in self.classes]
        return [(s, c, f"{d}/{c}") for s, d in self.split_dirs.items() for c in self.classes]

    def finding(self, cls: str) -> str:
        return (self.findings or {}).get(cls, "") if self.findings is not None else cls

    @property
    def kaggle_url(self) -> str:
        return f"https://www.kaggle.com/datasets/{self.kaggle_slug}"


DATASETS: dict[str, DatasetSpec] = {
    "covid_radiography": DatasetSpec(
        name="covid_radiography",
        title="chest X-ray",
        classes=("COVID", "Normal", "Viral Pneumonia"),
        native_size=299,
        ext=".png",
        kaggle_slug="tawsifurrahman/covid19-radiography-database",
        layout=("COVID-19_Radiography_Dataset",),
        file_name="{cls}-{index}",
        phantom=phantoms.chest_xray,
        findings={"COVID": "ground_glass", "Viral Pneumonia": "pneumonia"},
        image_dir="images",
        mask_dir="masks",
        mask_outline="lung",
        mask_size=256,
    ),
    "ct_kidney": DatasetSpec(
        name="ct_kidney",
        title="kidney CT",
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
    # Kermany et al. 2018 (Cell), pediatric chest X-rays as Kaggle serves them: split by the
    # authors into train/val/test folders, JPEGs of varying size (about 1,000-2,000 px).
    "chest_xray_pneumonia": DatasetSpec(
        name="chest_xray_pneumonia",
        title="pediatric chest X-ray",
        classes=("NORMAL", "PNEUMONIA"),
        native_size=512,
        ext=".jpeg",
        kaggle_slug="paultimothymooney/chest-xray-pneumonia",
        layout=("chest_xray",),
        file_name="{cls}-{index}",
        phantom=phantoms.chest_xray,
        findings={"PNEUMONIA": "pneumonia"},
        split_dirs={"train": "train", "val": "val", "test": "test"},
    ),
}


def _reduced(name: str, source: str) -> DatasetSpec:
    spec = DATASETS[source]
    return replace(spec, name=name, title=f"{spec.title}, shortcut-reduced", derived_from=source,
                   reduce=Reduction())


# The kidney download's original slices from another copy (../shared/real-kidney: about five times
# the small set's slices, from far more scans), for a cross-validation over whole blocks. A
# dataset of its own so that the two copies never share a split: some slices are in both.
DATASETS["ct_kidney_originals"] = replace(DATASETS["ct_kidney"], name="ct_kidney_originals",
                                          title="kidney CT, original slices", published_as="ct_kidney")

# The chest X-rays with borders cropped and grey levels equalised: how much of an answer rests on
# intensity and marker cues that say where an image was taken rather than what it shows
DATASETS["covid_radiography_reduced"] = _reduced("covid_radiography_reduced", "covid_radiography")


# A dataset of one's own: declared in an experiment file (``ext``, ``title``), its classes read
# from its folder (helpers.data.discover.folder_spec). It has no phantom and no Kaggle download.
# Registered in this process and written beside the prepared data, so that every step's process
# (a papermill kernel, a cluster job, the book) finds the classes the experiment's loading found.
_OWN: dict[str, DatasetSpec] = {}
_OWN_FIELDS = ("name", "title", "classes", "ext", "split_dirs")


def own_spec(name: str, classes, ext: str, title: str = "", split_dirs: dict | None = None) -> DatasetSpec:
    return DatasetSpec(name=name, title=title or name.replace("_", " "), classes=tuple(classes), native_size=0,
                       ext=ext, kaggle_slug="", layout=(), file_name="{cls}-{index}", phantom=None,
                       split_dirs=split_dirs)


def register(spec: DatasetSpec) -> None:
    """Make a dataset of one's own known here and to every later process on this data root."""
    if spec.name in DATASETS:
        raise ValueError(f"{spec.name!r} is in the dataset table; a dataset of your own needs another name")
    from .. import atomic

    _OWN[spec.name] = spec
    path = data_root() / OWN_SPECS / f"{spec.name}.json"
    text = json.dumps({k: v for k, v in asdict(spec).items() if k in _OWN_FIELDS}, indent=1, sort_keys=True)
    try:
        if path.read_text() == text:
            return
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(path, text)


def _registered(name: str) -> DatasetSpec | None:
    if name not in _OWN:
        try:
            _OWN[name] = own_spec(**json.loads((data_root() / OWN_SPECS / f"{name}.json").read_text()))
        except (OSError, ValueError, TypeError):
            return None
    return _OWN[name]


def get_spec(dataset: str) -> DatasetSpec:
    """The spec of ``dataset``; an unknown name is a ValueError naming the known ones."""
    spec = DATASETS.get(dataset) or (_registered(dataset) if isinstance(dataset, str) else None)
    if spec is None:
        raise ValueError(f"dataset must be one of {', '.join(DATASETS)}, or a dataset of your own declared in "
                         f"an experiment file (datasets: {{<name>: {{ext: .png, ...}}}}, README 'Your own "
                         f"images') and loaded with its DATA_DIR; got {dataset!r}")
    return spec


def known_datasets() -> tuple[str, ...]:
    """The table's datasets, then the ones of one's own registered in this process."""
    return (*DATASETS, *(n for n in _OWN if n not in DATASETS))


def check_split(dataset: str, split: str) -> None:
    """A ValueError unless ``dataset`` can be split this way (a pre-split download only as given)."""
    spec = get_spec(dataset)
    if split not in spec.splits:
        why = (f"its download comes split into {', '.join(spec.split_dirs.values())} folders, which are kept"
               if spec.split_dirs else "only a download that comes split has a given split")
        raise ValueError(f"parameter 'split' of {dataset} must be one of {', '.join(map(repr, spec.splits))} "
                         f"({why}); got {split!r}")


def data_root() -> Path:
    """Base folder for synthetic and prepared data: $HELPERS_DATA_ROOT or ./data."""
    return Path(os.environ.get(ENV_DATA_ROOT) or "data")
