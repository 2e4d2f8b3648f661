"""The prepared folder: name it (``prepared_dir``), build it (``prepare``), read it
(``load_prepared``). Its files are listed in CONTRACTS.md.

``prepare`` reuses a folder whose ``info.json`` fingerprint (parameters, and every input
file's path and content) matches, so a hand-run repeats no work; the workflow
names the same folder with ``prepared_dir`` as the output of its data-prep step.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import atomic
from .. import params as params_mod
from .build import pool_map, publish_dir
from .decode import decode_one
from .discover import Listing, find_class_root, scan
from ..params import FOLD_SPLITS, FOLDS
from .specs import MIN_PER_CLASS, DatasetSpec, check_split, data_root, get_spec
from .splits import (BLOCK_KIND, SPLIT_NAMES, block_groups, components, fold_split, grouped_split, hamming_pairs,
                     near_copy_share, perceptual_hashes, random_split)
from .summary import print_summary, reason_counts, save_samples
from .synthetic import find_synthetic_root, synthesize

PREP_VERSION = 2  # 2: near_copy_share in info.json, the block split
PREPARED_FILES = ("manifest.csv", "images.npy", "masks.npy", "skipped.csv", "samples.png", "info.json")


def validate_prep_params(dataset, data_dir="", image_size=128, balance=True, seed=0, out_dir="",
                         split="random", n_per_class=100, progress=True) -> dict:
    """Check the data-prep parameters against :class:`helpers.params.PrepParams`; raise
    ValueError (or FileNotFoundError when ``data_dir`` lacks the class folders) naming the
    parameter and what was expected. Returns them normalised."""
    values = {"dataset": dataset, "data_dir": os.fspath(data_dir) if isinstance(data_dir, os.PathLike) else data_dir,
              "image_size": image_size, "balance": balance, "seed": seed,
              "out_dir": os.fspath(out_dir) if isinstance(out_dir, os.PathLike) else out_dir,
              "split": split, "n_per_class": n_per_class, "progress": progress}
    values = {k: ("" if v is None and k in ("data_dir", "out_dir") else v) for k, v in values.items()}
    get_spec(dataset)
    params = params_mod.check(params_mod.PrepParams, values).model_dump()
    check_split(dataset, params["split"])
    if params["data_dir"]:
        find_class_root(params["data_dir"], dataset)      # missing folders fail here, before work
    return params


def prepared_dir(dataset: str, data_dir: str | os.PathLike = "", image_size: int = 128, balance: bool = True,
                 seed: int = 0, split: str = "random", n_per_class: int = 100) -> Path:
    """The folder ``prepare`` writes for these parameters (without ``out_dir``), computed from
    the parameters alone: nothing is read, checked or written.

    ``data/prepared/<dataset>/<source>-<size>px-<split>-<bal|all>-s<seed>``, where source is
    ``real`` when ``data_dir`` is given and ``synthetic-n<N>`` for the embedded phantoms
    (synthetic sets of different sizes must not share a folder).
    """
    get_spec(dataset)
    source = "real" if data_dir else f"synthetic-n{n_per_class}"
    name = f"{source}-{image_size}px-{split}-{'bal' if balance else 'all'}-s{seed}"
    return data_root() / "prepared" / dataset / name


def prepare(dataset: str, data_dir: str | os.PathLike = "", image_size: int = 128, balance: bool = True,
            seed: int = 0, out_dir: str | os.PathLike = "", split: str = "random", n_per_class: int = 100,
            progress: bool = True) -> Path:
    """Decode, balance, split and cache a dataset; return the prepared folder (see CONTRACTS.md).

    ``data_dir`` "" uses the synthetic phantoms (``n_per_class`` per class, generator seed 0, so
    that ``seed`` only changes the balance and the split). ``out_dir`` "" is ``prepared_dir(...)``.
    A folder whose info.json fingerprint matches the inputs and parameters is reused without
    decoding anything.
    """
    p = validate_prep_params(dataset, data_dir, image_size, balance, seed, out_dir, split,
                             n_per_class, progress)
    spec = get_spec(dataset)
    source = Path(p["data_dir"]) if p["data_dir"] else synthesize(
        dataset, root=data_root() / "synthetic" / f"{dataset}-n{p['n_per_class']}",
        n_per_class=p["n_per_class"], seed=0, progress=p["progress"])
    class_root = find_class_root(source, dataset)
    synthetic_root = find_synthetic_root(class_root)
    listing = scan(class_root, spec, synthetic_root)
    out = Path(p["out_dir"]) if p["out_dir"] else prepared_dir(
        dataset, p["data_dir"], p["image_size"], p["balance"], p["seed"], p["split"], p["n_per_class"])
    digest = fingerprint(p, class_root, listing)
    synthetic = synthetic_root is not None
    built = publish_dir(out, lambda tmp: _build(tmp, p, spec, class_root, synthetic, listing, digest),
                        lambda: _cache_valid(out, digest))
    info = json.loads((out / "info.json").read_text())
    if built:
        print_summary(info, out)
    else:
        tag = "SYNTHETIC DATA" if synthetic else "real data"
        print(f"[data] {dataset} ({tag}): inputs unchanged, reusing {out}")
    return out


def fingerprint(params: dict, class_root: Path, listing: Listing) -> str:
    """SHA-256 of the parameters and of every input file's path and bytes. Not of where the
    folder lies or of modification times: a dataset copied, moved or unzipped again is the same
    data, and the runs trained on it stay valid."""
    h = hashlib.sha256()
    h.update(json.dumps({"prep_version": PREP_VERSION,
                         **{k: params[k] for k in ("dataset", "image_size", "balance", "seed", "split")}},
                        sort_keys=True).encode())
    for rel, size, path in sorted(listing.files):
        content = ""
        if size:
            with open(path, "rb") as f:
                content = hashlib.file_digest(f, "sha256").hexdigest()
        h.update(f"{rel}\0{size}\0{content}\n".encode())
    return h.hexdigest()


def _cache_valid(out: Path, fingerprint: str) -> bool:
    try:
        info = json.loads((out / "info.json").read_text())
    except (OSError, ValueError):
        return False
    return info.get("fingerprint") == fingerprint and all((out / f).is_file() for f in PREPARED_FILES)


def _channel_stats(images: np.ndarray, chunk: int = 512) -> tuple[list[float], list[float]]:
    """Per-channel mean/std on the [0, 1] scale, in chunks to bound memory."""
    n_px = 0
    s = np.zeros(images.shape[1])
    ss = np.zeros(images.shape[1])
    for i in range(0, len(images), chunk):
        block = images[i:i + chunk].astype(np.float64) / 255.0
        s += block.sum(axis=(0, 2, 3))
        ss += (block ** 2).sum(axis=(0, 2, 3))
        n_px += block.shape[0] * block.shape[2] * block.shape[3]
    mean = s / max(n_px, 1)
    std = np.sqrt(np.maximum(ss / max(n_px, 1) - mean ** 2, 0))
    return [float(v) for v in mean], [float(v) for v in std]


def _build(tmp: Path, p: dict, spec: DatasetSpec, class_root: Path, synthetic: bool,
           listing: Listing, fingerprint: str) -> None:
    import pandas as pd

    size, seed = p["image_size"], p["seed"]
    cands = listing.candidates
    mask_kind = "lesion" if synthetic else spec.mask_outline
    reduce = (spec.reduce.border, spec.reduce.equalize) if spec.reduce else None
    jobs = [(str(class_root / rel), size, mask, mask_kind, reduce) for rel, _cls, mask in cands]
    images = np.zeros((len(cands), 3, size, size), np.uint8)
    masks = np.zeros((len(cands), size, size), np.uint8)
    has_mask = np.zeros(len(cands), bool)
    shas = [""] * len(cands)
    ok = np.zeros(len(cands), bool)
    skipped = list(listing.skipped)
    results = pool_map(decode_one, jobs, desc=f"decode {spec.name}", progress=p["progress"])
    for i, (reason, sha, image, mask) in enumerate(results):
        if reason is not None:
            skipped.append((cands[i][0], reason))
            continue
        ok[i], shas[i], images[i] = True, sha, image
        if mask is not None and mask.any():
            masks[i], has_mask[i] = mask, True
    labels_all = np.array([spec.classes.index(c) for _, c, _ in cands], dtype=np.int64)
    for k, cls in enumerate(spec.classes):
        n_ok = int((ok & (labels_all == k)).sum())
        if n_ok < MIN_PER_CLASS:
            raise ValueError(f"class {cls!r} in {str(class_root)!r} has {n_ok} usable images after "
                             f"skipping unreadable files; at least {MIN_PER_CLASS} are needed for a "
                             "stratified 6:2:2 split")
    given = np.array([listing.given_split.get(rel, "") for rel, _, _ in cands])
    if p["split"] == "given":
        for s_name in SPLIT_NAMES:
            for k, cls in enumerate(spec.classes):
                if not (ok & (labels_all == k) & (given == s_name)).any():
                    raise ValueError(f"the {spec.split_dirs[s_name]!r} folder in {str(class_root)!r} holds no "
                                     f"usable {cls!r} image; the download's own split needs every class "
                                     f"in each of {', '.join(spec.split_dirs.values())}")
    n_skipped = len(skipped)

    keep = ok.copy()
    if p["balance"]:   # per class; within each of the download's own splits when it has them
        rng = np.random.default_rng(seed)
        for part in sorted(set(given)):
            here = ok & (given == part)
            smallest = min(int((here & (labels_all == k)).sum()) for k in range(len(spec.classes)))
            for k in range(len(spec.classes)):
                idx = np.flatnonzero(here & (labels_all == k))
                drop = rng.choice(idx, size=len(idx) - smallest, replace=False)
                keep[drop] = False
                skipped += [(cands[i][0], f"discarded to balance classes ({smallest} per class"
                             f"{' in ' + part if part else ''}, seed {seed})") for i in sorted(drop)]
    sel = np.flatnonzero(keep)
    images, masks, has_mask, labels = images[sel], masks[sel], has_mask[sel], labels_all[sel]

    hashes = perceptual_hashes(images, progress=p["progress"])
    if p["split"] == "grouped":
        groups = components(len(images), *hamming_pairs(hashes)[:2])
        split = np.asarray(grouped_split(labels, groups, list(spec.classes), seed)).astype(str)
    elif p["split"] == "block":
        groups = block_groups([cands[i][0] for i in sel], labels)
        split = np.asarray(grouped_split(labels, groups, list(spec.classes), seed, group_kind=BLOCK_KIND)).astype(str)
    elif p["split"] in FOLD_SPLITS:   # a fold of the cross-validation over the same blocks
        groups = block_groups([cands[i][0] for i in sel], labels)
        split = fold_split(labels, groups, list(spec.classes), FOLD_SPLITS.index(p["split"]), FOLDS, seed,
                           group_kind=BLOCK_KIND)
    elif p["split"] == "given":
        split = given[sel]
    else:
        split = random_split(labels, seed)

    mean, std = _channel_stats(images[split == "train"])
    manifest = pd.DataFrame({
        "path": [cands[i][0] for i in sel],
        "class": [cands[i][1] for i in sel],
        "label": labels,
        "split": split,
        "sha256": [shas[i] for i in sel],
        "has_mask": has_mask.astype(int),
    })
    counts = {cls: {s: int(((labels == k) & (split == s)).sum()) for s in SPLIT_NAMES}
              for k, cls in enumerate(spec.classes)}
    np.save(tmp / "images.npy", images)
    np.save(tmp / "masks.npy", masks)
    manifest.to_csv(tmp / "manifest.csv", index=False)
    pd.DataFrame(skipped, columns=["path", "reason"]).to_csv(tmp / "skipped.csv", index=False)
    title = (f"{spec.name}: {len(labels)} images, {size} px, {p['split']} split, seed {seed}"
             + (", balanced" if p["balance"] else ""))
    save_samples(tmp / "samples.png", images, labels, split, spec.classes, mean, std, synthetic,
                  title, seed)
    info = {
        "dataset": spec.name,
        "class_names": list(spec.classes),
        "image_size": size,
        "split": p["split"],
        "balance": p["balance"],
        "seed": seed,
        "synthetic": synthetic,
        "source_dir": str(class_root.resolve()),
        "mean": mean,
        "std": std,
        "counts": counts,
        "n_skipped": n_skipped,
        "fingerprint": fingerprint,
        # extensions
        "n_images": int(len(labels)),
        "n_discarded_by_balance": len(skipped) - n_skipped,
        "skipped_reasons": reason_counts(skipped),
        "n_per_class_synthetic": p["n_per_class"] if synthetic else None,
        "prep_version": PREP_VERSION,
        # share of val/test images with a near-copy in train (phash, see data.splits)
        "near_copy_share": near_copy_share(hashes, split),
    }
    atomic.write_json(tmp / "info.json", info)        # last: marks the folder complete


@dataclass
class Prepared:
    images: np.ndarray          # uint8 (N, 3, S, S)
    labels: np.ndarray          # int64 (N,)
    split: np.ndarray           # str (N,): train/val/test
    paths: list[str]
    class_names: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    masks: np.ndarray           # uint8 (N, S, S), 0/1
    has_mask: np.ndarray        # bool (N,)
    synthetic: bool
    info: dict
    manifest: Any               # pandas.DataFrame
    folder: Path = field(default=Path("."))

    def indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == split)


def load_prepared(folder: str | os.PathLike, mmap: bool = False) -> Prepared:
    """Load a folder written by ``prepare``; refuses incomplete folders (no info.json)."""
    import pandas as pd

    folder = Path(folder)
    if not (folder / "info.json").is_file():
        raise FileNotFoundError(f"{str(folder)!r} is not a complete prepared folder (no info.json); "
                                "run helpers.data.prepare first")
    info = json.loads((folder / "info.json").read_text())
    manifest = pd.read_csv(folder / "manifest.csv", dtype={"path": str, "class": str, "split": str,
                                                             "sha256": str}, keep_default_na=False)
    images = np.load(folder / "images.npy", mmap_mode="r" if mmap else None)
    masks = np.load(folder / "masks.npy", mmap_mode="r" if mmap else None)
    if not (len(images) == len(masks) == len(manifest)):
        raise ValueError(f"{str(folder)!r} is inconsistent: {len(images)} images, {len(masks)} masks, "
                         f"{len(manifest)} manifest rows")
    return Prepared(
        images=images,
        labels=manifest["label"].to_numpy(np.int64, copy=True),
        split=manifest["split"].to_numpy(str, copy=True),
        paths=manifest["path"].tolist(),
        class_names=list(info["class_names"]),
        mean=tuple(info["mean"]),
        std=tuple(info["std"]),
        masks=masks,
        has_mask=manifest["has_mask"].to_numpy(bool, copy=True),
        synthetic=bool(info["synthetic"]),
        info=info,
        manifest=manifest,
        folder=folder,
    )
