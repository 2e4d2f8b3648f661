"""Finding a dataset in a download: the class-folder root at any depth, and every file in it,
each either a candidate image (with its mask, if any) or skipped with a reason."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .specs import MIN_PER_CLASS, DatasetSpec, get_spec, own_spec
from .synthetic import LESION_DIR

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")
SYSTEM_FILES = {"thumbs.db", "desktop.ini", "ehthumbs.db"}


def natural_key(text: str):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


def find_class_root(data_dir: str | os.PathLike, dataset: str, max_depth: int = 6) -> Path:
    """The shallowest folder at or below ``data_dir`` that holds every class folder of ``dataset``.

    Accepts the class-folder parent itself or any parent of it (e.g. the unzipped Kaggle download,
    which nests ``CT-KIDNEY-DATASET-Normal-Cyst-Tumor-Stone/`` twice for ct_kidney).
    """
    spec = get_spec(dataset)
    root = Path(data_dir).expanduser()
    wanted = [rel for _, _, rel in spec.class_dirs()]   # "COVID", or "train/NORMAL" when split
    expected = ", ".join(repr(c) for c in wanted)
    containers = {c.split("/")[0] for c in wanted}
    if not root.exists():
        raise FileNotFoundError(
            f"data_dir {str(root)!r} does not exist; expected a folder holding the {dataset} class "
            f"folders {expected} (or any parent of it, e.g. the unzipped Kaggle download)")
    if not root.is_dir():
        raise NotADirectoryError(f"data_dir {str(root)!r} is not a folder; expected a folder holding "
                                 f"the {dataset} class folders {expected}")
    level, partial = [root], None
    for _depth in range(max_depth + 1):
        hits, below = [], []
        for folder in level:
            try:
                subdirs = sorted(e.name for e in os.scandir(folder) if e.is_dir())
            except OSError:
                continue
            present = [c for c in wanted if c.split("/")[0] in subdirs and (folder / c).is_dir()]
            if len(present) == len(wanted):
                hits.append(folder)
            elif present and (partial is None or len(present) > len(partial[1])):
                partial = (folder, present)
            below += [folder / n for n in subdirs
                      if not n.startswith(".") and n not in (LESION_DIR, spec.mask_dir, *containers)]
        if len(hits) > 1:
            raise ValueError(f"data_dir {str(root)!r} holds several {dataset} datasets at the same depth: "
                             + ", ".join(str(h) for h in hits) + "; pass one of them as data_dir")
        if hits:
            return hits[0]
        level = below
    if partial is not None:
        folder, present = partial
        missing = [c for c in wanted if c not in present]
        raise FileNotFoundError(
            f"{str(folder)!r} is missing the class folder(s) {', '.join(map(repr, missing))} of {dataset}; "
            f"expected all of {expected}")
    raise FileNotFoundError(
        f"no folder at or below data_dir {str(root)!r} holds the {dataset} class folders {expected} "
        f"(searched {max_depth} levels deep)")


GIVEN_SPLITS = ("train", "val", "test")   # a folder of one's own that comes split: these subfolders


def folder_spec(name: str, folder: str | os.PathLike, ext: str, title: str = "", given: bool = False) -> DatasetSpec:
    """The spec of a dataset of one's own: its classes are the folder's subfolders (those of
    ``train/`` when it comes split into ``train/``, ``val/`` and ``test/``), each holding images
    of kind ``ext``. Raises ValueError naming the folder and what was expected."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{name}: DATA_DIR {str(root)!r} is not a folder; expected a folder with one "
                                f"subfolder of {ext} images per class")
    ext = ext.lower()
    parts = [root / s for s in GIVEN_SPLITS] if given else [root]
    for part in parts:
        if not part.is_dir():
            raise FileNotFoundError(f"{name}: split 'given' needs DATA_DIR to hold {', '.join(GIVEN_SPLITS)} "
                                    f"folders, each with one subfolder per class; {str(part)!r} is missing")
    classes = sorted((e.name for e in os.scandir(parts[0]) if e.is_dir() and not e.name.startswith(".")),
                     key=natural_key)
    if len(classes) < 2:
        raise ValueError(f"{name}: {str(parts[0])!r} holds {len(classes)} class folder(s) "
                         f"({', '.join(map(repr, classes)) or 'none'}); a classifier needs at least two, one "
                         f"subfolder of {ext} images per class")
    for part in parts:
        for cls in classes:
            kinds: dict[str, int] = {}
            for dirpath, dirnames, filenames in os.walk(part / cls):
                dirnames[:] = [d for d in dirnames if not d.startswith(".")]
                for f in filenames:
                    kind = os.path.splitext(f)[1].lower()
                    if not f.startswith(".") and kind in IMAGE_EXTENSIONS:
                        kinds[kind] = kinds.get(kind, 0) + 1
            where = f"{name}: class folder {str(part / cls)!r}"
            if not (part / cls).is_dir():
                raise FileNotFoundError(f"{where} is missing; the classes (from {str(parts[0])!r}) are "
                                        f"{', '.join(map(repr, classes))}")
            others = {k: n for k, n in kinds.items() if k != ext}
            if others:
                raise ValueError(f"{where} holds " + ", ".join(f"{n} {k}" for k, n in others.items())
                                 + f" image(s) beside {kinds.get(ext, 0)} {ext}; the experiment's ext is {ext}: "
                                 "convert them, move them out, or change ext")
            least = MIN_PER_CLASS if not given else 1
            if kinds.get(ext, 0) < least:
                raise ValueError(f"{where} holds {kinds.get(ext, 0)} {ext} image(s); at least {least} "
                                 "are needed" + ("" if given else " for a train/validation/test split"))
    return own_spec(name, classes, ext, title, split_dirs={s: s for s in GIVEN_SPLITS} if given else None)


@dataclass
class Listing:
    candidates: list[tuple[str, str, str | None]]   # (relative path, class, mask path)
    skipped: list[tuple[str, str]]                  # (relative path, reason)
    files: list[tuple[str, int, str]]               # (relative path, size, path) to fingerprint
    given_split: dict[str, str] = field(default_factory=dict)   # relative path -> the download's split


def _skip_reason_by_name(name: str) -> str | None:
    if name.startswith("."):
        return f"hidden/system file ({name})"
    if name.lower() in SYSTEM_FILES:
        return f"system file ({name})"
    ext = os.path.splitext(name)[1].lower()
    if ext not in IMAGE_EXTENSIONS:
        return f"not an image file extension ({ext or 'none'})"
    return None


def scan(class_root: Path, spec: DatasetSpec, synthetic_root: Path | None) -> Listing:
    """List images per class; record every other file with a reason; stat everything."""
    listing = Listing([], [], [])

    def stat(path: Path, rel: str) -> None:
        listing.files.append((rel, path.stat().st_size, str(path)))

    dirs = spec.class_dirs()
    expected = {rel.split("/")[0] for _, _, rel in dirs}
    for entry in sorted(os.scandir(class_root), key=lambda e: e.name):
        if entry.name in expected:
            continue
        kind = "folder" if entry.is_dir() else "file"
        listing.skipped.append((entry.name + ("/" if kind == "folder" else ""),
                                f"ignored: {kind} is not one of the {spec.name} "
                                f"{'split' if spec.split_dirs else 'class'} folders"))
        listing.files.append((entry.name, 0, ""))
    for given, cls, rel_dir in dirs:
        cls_dir = class_root / rel_dir
        found = 0
        masks: set[str] = set()
        per_class = []
        for dirpath, dirnames, filenames in os.walk(cls_dir):
            here = Path(dirpath)
            rel_here = here.relative_to(class_root).as_posix()
            for d in sorted(dirnames):
                if d.startswith("."):
                    listing.skipped.append((f"{rel_here}/{d}/", f"hidden folder ({d})"))
                    listing.files.append((f"{rel_here}/{d}/", 0, ""))
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            is_mask_dir = spec.mask_dir is not None and here.name == spec.mask_dir
            for name in sorted(filenames):
                rel = f"{rel_here}/{name}"
                stat(here / name, rel)
                if is_mask_dir:
                    masks.add(rel)
                    continue
                reason = _skip_reason_by_name(name)
                if reason:
                    listing.skipped.append((rel, reason))
                else:
                    per_class.append(rel)
                    found += 1
        if found == 0:
            raise FileNotFoundError(
                f"class folder {str(cls_dir)!r} holds no image files; expected {spec.ext} images of "
                f"class {cls!r} (directly or in a subfolder)")
        for rel in per_class:
            mask = None
            if synthetic_root is not None:
                lesion = synthetic_root / LESION_DIR / cls / (Path(rel).stem + ".png")
                if lesion.is_file():
                    mask = str(lesion)
                    stat(lesion, lesion.relative_to(synthetic_root).as_posix())
            elif spec.mask_dir is not None:
                parent = Path(rel).parent
                base = parent.parent if spec.image_dir and parent.name == spec.image_dir else parent
                guess = (base / spec.mask_dir / Path(rel).name).as_posix()
                if guess in masks:
                    mask = str(class_root / guess)
            listing.candidates.append((rel, cls, mask))
            if given:
                listing.given_split[rel] = given
    listing.candidates.sort(key=lambda c: (spec.classes.index(c[1]), natural_key(c[0])))
    return listing
