"""Synthetic stand-ins of the datasets: phantoms written in each dataset's Kaggle layout.

Beside the Kaggle tree, ``lesion_masks/<Class>/<stem>.png`` holds each phantom's lesion mask
(outside the class tree, so never read as an image), and ``SYNTHETIC.json`` marks the folder
as synthetic; it is written last, so its presence means the folder is complete.
"""
from __future__ import annotations

import csv
import json
import os
from numbers import Integral
from pathlib import Path
from typing import Mapping

import numpy as np
from PIL import Image

from .. import atomic
from .build import pool_map, publish_dir
from .specs import DATASETS, DatasetSpec, data_root, get_spec

MARKER = "SYNTHETIC.json"
LESION_DIR = "lesion_masks"
GENERATOR_VERSION = 2   # 2: lesions conspicuous at 64 px
SAVE_OPTIONS = {".png": {"compress_level": 1}, ".jpg": {"quality": 92}, ".jpeg": {"quality": 92}}   # by file extension


def synthesize(dataset: str, root: str | os.PathLike | None = None, n_per_class: int | Mapping[str, int] = 100,
               seed: int = 0, progress: bool = True) -> Path:
    """Write phantoms for ``dataset`` in its Kaggle layout under ``root``; return ``root``.

    Idempotent: a root whose ``SYNTHETIC.json`` records the same counts, seed and generator
    version is reused. Otherwise everything is generated in a hidden sibling folder that replaces
    ``root`` only when complete. ``n_per_class`` is an int or a mapping class -> count.
    """
    spec = get_spec(dataset)
    root = Path(root) if root else data_root() / "synthetic" / dataset
    counts = (dict(n_per_class) if isinstance(n_per_class, Mapping)
              else {c: n_per_class for c in spec.classes})
    if set(counts) != set(spec.classes) or not all(is_int(v) and v >= 1 for v in counts.values()):
        raise ValueError(f"n_per_class must be a positive int or a mapping of every class of {dataset} "
                         f"({', '.join(spec.classes)}) to a positive int; got {n_per_class!r}")
    counts = {c: int(counts[c]) for c in spec.classes}
    wanted = {"dataset": dataset, "counts": counts, "seed": int(seed),
              "generator_version": GENERATOR_VERSION}
    marker = {**wanted, "n_per_class": n_per_class if isinstance(n_per_class, int) else counts,
              "classes": list(spec.classes), "class_root": "/".join(spec.layout),
              "note": "SYNTHETIC DATA: phantoms drawn by helpers.data, not patient images"}
    publish_dir(root, lambda tmp: _generate(tmp, spec, counts, int(seed), marker, progress),
                lambda: _marker_matches(root, wanted))
    return root


def is_int(v) -> bool:
    return isinstance(v, Integral) and not isinstance(v, bool)


def file_name(spec: DatasetSpec, cls: str, index: int) -> str:
    """The Kaggle name of image ``index`` of ``cls``, e.g. "COVID-12.png", "Cyst- (7).jpg"."""
    return spec.file_name.format(cls=cls, index=index) + spec.ext


def class_folder(spec: DatasetSpec, cls: str, index: int, count: int) -> str:
    """The class folder of phantom ``index`` (1..count): ``cls``, or in a download that comes
    split, ``<split folder>/cls`` with the first 60 % in train, the next 20 % in val."""
    if not spec.split_dirs:
        return cls
    share = (index - 1) / count
    split = "train" if share < 0.6 else "val" if share < 0.8 else "test"
    return f"{spec.split_dirs[split]}/{cls}"


def find_synthetic_root(class_root: Path) -> Path | None:
    """The synthetic root (folder with SYNTHETIC.json) at or up to 3 levels above the class root."""
    for folder in [class_root, *list(class_root.parents)[:3]]:
        if (folder / MARKER).is_file():
            return folder
    return None


def _marker_matches(root: Path, wanted: dict) -> bool:
    try:
        found = json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return all(found.get(k) == v for k, v in wanted.items())


def _generate(tmp: Path, spec: DatasetSpec, counts: dict[str, int], seed: int, marker: dict,
              progress: bool) -> None:
    class_root = tmp.joinpath(*spec.layout)
    jobs = []
    for cls in spec.classes:
        (tmp / LESION_DIR / cls).mkdir(parents=True, exist_ok=True)
        for i in range(1, counts[cls] + 1):
            name = file_name(spec, cls, i)
            stem = Path(name).stem
            folder = class_root / class_folder(spec, cls, i, counts[cls])
            (folder / spec.image_dir).mkdir(parents=True, exist_ok=True)
            outline = None
            if spec.mask_dir:
                (folder / spec.mask_dir).mkdir(parents=True, exist_ok=True)
                outline = folder / spec.mask_dir / f"{stem}.png"
            jobs.append((spec.name, cls, i, seed, folder / spec.image_dir / name,
                         tmp / LESION_DIR / cls / f"{stem}.png", outline))
    for _ in pool_map(_synth_one, jobs, desc=f"synthesize {spec.name}", progress=progress):
        pass
    if spec.index_csv:
        _write_index_csv(tmp / spec.index_csv, spec, counts)
    atomic.write_json(tmp / MARKER, marker)          # last: marks the folder complete


def _synth_one(job: tuple) -> None:
    """Draw and write one phantom with its masks (run in worker processes)."""
    dataset, cls, index, seed, image_path, lesion_path, outline_path = job
    spec = DATASETS[dataset]
    rng = np.random.default_rng([seed, spec.classes.index(cls), index, GENERATOR_VERSION])
    drawn = spec.phantom(spec.finding(cls), rng, spec.native_size)
    Image.fromarray(drawn.image, "L").save(image_path, **SAVE_OPTIONS[spec.ext])
    if outline_path is not None and drawn.outline is not None:
        outline = Image.fromarray(drawn.outline.astype(np.uint8) * 255, "L")
        size = spec.mask_size or spec.native_size
        outline.resize((size, size), Image.NEAREST).save(outline_path, **SAVE_OPTIONS[".png"])
    Image.fromarray(drawn.lesion.astype(np.uint8) * 255, "L").save(lesion_path, **SAVE_OPTIONS[".png"])


def _write_index_csv(path: Path, spec: DatasetSpec, counts: dict[str, int]) -> None:
    """The download's file index, in kidneyData.csv's columns."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["", "image_id", "path", "diag", "target", "Class"])
        row = 0
        for target, cls in enumerate(spec.classes):
            for i in range(1, counts[cls] + 1):
                name = file_name(spec, cls, i)
                w.writerow([row, Path(name).stem, "/".join([*spec.layout, cls, name]), cls, target, cls])
                row += 1
