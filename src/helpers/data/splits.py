"""The 6:2:2 train/val/test split: stratified at random, or grouped so that no near-duplicate
crosses splits.

Near-duplicates are found with a 256-bit perceptual hash (``imagehash.phash`` with
``hash_size=16``) and a Hamming threshold; groups of near-duplicates are the connected
components of the "distance <= threshold" graph. ``grouped_split`` keeps each group in one
split. ``helpers.audit`` reports the same pairs and groups.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

HASH_SIZE = 16
"""Side of the phash DCT block: 16 -> 256-bit hashes (imagehash's default of 8 gives 64 bits)."""

HAMMING_THRESHOLD = 20
"""Two images are near-duplicates when their 256-bit phashes differ in at most 20 bits (7.8%).

phash distances here are always even (each hash has as many bits above the median as
below), so 20 is the same cut as 21. Chosen by measurement, phash with hash_size=16 on
images resized as prepared (64-256 px give the same picture within 2-4 bits):

* Near-copies. Real kidney CT sample (``../shared/real-sample/ct_kidney``, slices 1-40 of
  each class): slices whose numbers differ by 1 are 0-14 bits apart at 128 px (at most 16
  at 200 px, 18 at 256 px), except the 8 places where the sample jumps to another scan
  (120-132 bits). Planted copies of real and synthetic images: Gaussian noise sigma 4-12
  -> at most 14 bits; JPEG quality 30-75 -> at most 14; brightness +25 -> 8, +40 -> 20,
  contrast x1.2 -> 20; noise + brightness + JPEG combined -> 18. Only darkening dark CT
  slices by 25 grey levels, which clips much of the image to black, went further (up to 26).
* Distinct images. Different kidney classes: at least 88 bits apart. 120 real chest
  X-rays of different patients (aligned frontal views): at least 68 bits, 1% under 90.
  Synthetic phantoms (100 per class, 64-128 px), which share one drawing template: chest
  at least 22 bits (0.1% of pairs under 40), kidney at least 34.

So 20 sits above every realistic copy seen and below the closest pair of distinct images
(synthetic chest phantoms at 22); real distinct images are 3x further. The 64-bit default
hash (hash_size=8) was rejected: there near-copies reach 4 bits while distinct real chest
X-rays come as close as 6. Adding dhash did not separate better (it is more sensitive to
noise: planted copies up to 53 of 256 bits, distinct chest X-rays from 18).
"""

SPLIT_NAMES = ("train", "val", "test")
RATIOS = (0.6, 0.2, 0.2)   # train, val, test: paper A's 6:2:2, for every split this package draws

BLOCK_SIZE = 25
BLOCK_KIND = f"block of {BLOCK_SIZE} consecutive file numbers"
"""The block split keeps files numbered 0-24, 25-49, ... of a class together. Kidney CT slices
of one scan carry consecutive numbers (``Cyst- (301).jpg``); neighbours 1-2 numbers apart are
near-copies, and blocks of 25 leave about 12% of test slices with a near-copy in train on the
Kaggle set, against 96% for a random split (measured on 1,914 real slices)."""


# --------------------------------------------------------------------------- hashing


def perceptual_hashes(images: np.ndarray, hash_size: int = HASH_SIZE, progress: bool = False) -> np.ndarray:
    """(N, 3, S, S) uint8 images -> (N, hash_size**2 // 64) uint64 packed phash bits."""
    import imagehash
    from PIL import Image
    from tqdm.auto import tqdm

    images = check_images(images)
    if (hash_size * hash_size) % 64:
        raise ValueError(f"hash_size={hash_size}: hash_size**2 must be a multiple of 64 (e.g. 8 or 16)")
    words = hash_size * hash_size // 64
    out = np.zeros((len(images), words), dtype=np.uint64)
    for k in tqdm(range(len(images)), desc="perceptual hashes", disable=not progress):
        bits = imagehash.phash(Image.fromarray(images[k].transpose(1, 2, 0)), hash_size=hash_size).hash
        out[k] = np.packbits(bits.ravel()).view(">u8").astype(np.uint64)
    return out


def hamming_pairs(hashes: np.ndarray, threshold: int = HAMMING_THRESHOLD, max_block_elements: int = 4_000_000):
    """All pairs i < j with Hamming distance <= threshold, as (i, j, distance) int arrays.

    Vectorised over blocks of rows so memory stays near ``max_block_elements`` * 8 bytes
    whatever N (12.5k images = 78M pairs run in a few seconds).
    """
    hashes = np.ascontiguousarray(hashes, dtype=np.uint64)
    n = len(hashes)
    block = max(1, max_block_elements // max(n, 1))
    found_i, found_j, found_d = [], [], []
    for start in range(0, n, block):
        rows = hashes[start : start + block]
        cols = hashes[start:]  # only the upper triangle: j >= start
        dist = np.zeros((len(rows), len(cols)), dtype=np.uint16)
        for w in range(hashes.shape[1]):
            dist += np.bitwise_count(rows[:, None, w] ^ cols[None, :, w])
        ii, jj = np.nonzero(dist <= threshold)
        keep = jj > ii  # row r is image start+r, column c is image start+c: keep c > r
        ii, jj = ii[keep], jj[keep]
        found_i.append(ii + start)
        found_j.append(jj + start)
        found_d.append(dist[ii, jj])
    cat = lambda parts, dt: np.concatenate(parts).astype(dt) if parts else np.zeros(0, dt)  # noqa: E731
    return cat(found_i, np.int64), cat(found_j, np.int64), cat(found_d, np.int64)


def components(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(i), dtype=np.int8), (i, j)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return labels.astype(np.int64)


def near_duplicate_groups(images: np.ndarray, threshold: int = HAMMING_THRESHOLD) -> np.ndarray:
    """Group id per image: connected components of phash pairs with distance <= threshold.

    Exact copies have distance 0, so they always share a group. Singletons get their own id.
    """
    images = check_images(images)
    hashes = perceptual_hashes(images)
    i, j, _ = hamming_pairs(hashes, threshold)
    return components(len(images), i, j)


def check_images(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images: expected a uint8 array (N, 3, S, S), got {images.dtype} {images.shape}")
    return images


def groups_per_class(labels, groups, class_names) -> pd.DataFrame:
    """Per class: images, independent groups (counted by majority class), largest group, singletons."""
    labels, groups = np.asarray(labels), np.asarray(groups)
    majority = _group_majority(labels, groups)
    rows = []
    for k, name in enumerate(class_names):
        own = np.unique(groups[majority[groups] == k])
        sizes = np.bincount(groups)[own] if len(own) else np.zeros(0, int)
        rows.append(
            {
                "class": name,
                "images": int((labels == k).sum()),
                "groups": len(own),
                "largest group": int(sizes.max()) if len(sizes) else 0,
                "singletons": int((sizes == 1).sum()),
            }
        )
    return pd.DataFrame(rows)


def _group_majority(labels: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Majority label per group id (ties -> lowest label); index with a group id."""
    n_groups = int(groups.max()) + 1 if len(groups) else 0
    n_classes = int(labels.max()) + 1 if len(labels) else 0
    counts = np.zeros((n_groups, n_classes), dtype=np.int64)
    np.add.at(counts, (groups, labels), 1)
    return counts.argmax(axis=1)


# --------------------------------------------------------------------------- grouped split


def grouped_split(labels, groups, class_names, seed, ratios=RATIOS,
                  group_kind: str = "near-duplicate group") -> np.ndarray:
    """'train'/'val'/'test' per image, every group wholly in one split, classes stratified.

    Each group counts for its majority class (ties: the first in ``class_names`` order); a
    group mixing classes goes whole to one split, its minority images with it. Per class,
    its groups are shuffled with ``seed``, sorted largest first, and each is given to the
    split furthest below its target share (``ratios`` of the class's images; ties: train,
    val, test). If that leaves a split without the class, the smallest group of the split
    holding most groups moves there. Deterministic for a seed; with only singleton groups it
    is a stratified random split.

    Why not scikit-learn's ``StratifiedGroupKFold`` (5 folds -> 3/1/1): it balances all
    classes at once fold by fold, and with 3-6 groups per class it left some split without
    a class in 39% of random trials where a valid split existed. Groups have a single
    (majority) class here, so stratifying class by class is exact up to group sizes.

    Raises ValueError, naming the class and its number of groups, when a class has fewer
    independent groups than there are splits to fill. Nothing is leaked to fill a split.
    """
    labels, groups = np.asarray(labels), np.asarray(groups)
    if labels.shape != groups.shape or labels.ndim != 1:
        raise ValueError(f"labels and groups: expected two 1-D arrays of equal length, got {labels.shape} and {groups.shape}")
    n_classes = len(class_names)
    if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"labels: expected integers in 0..{n_classes - 1} for class_names={list(class_names)}")
    target_share = _check_ratios(ratios)
    used = [k for k in range(len(SPLIT_NAMES)) if target_share[k] > 0]

    groups = np.unique(groups, return_inverse=True)[1].reshape(-1)  # dense ids 0..G-1
    majority = _group_majority(labels, groups)
    sizes = np.bincount(groups)
    table = groups_per_class(labels, groups, class_names)
    for row in table.to_dict("records"):
        if row["groups"] < len(used):
            raise SplitRefusedError(_too_few_message(row["class"], row["groups"], row["images"], len(used), group_kind))

    rng = np.random.default_rng(seed)
    split_of_group = np.full(len(sizes), -1)
    for k in range(n_classes):
        own = np.flatnonzero(majority == k)
        own = own[rng.permutation(len(own))]
        own = own[np.argsort(-sizes[own], kind="stable")]  # largest first, shuffled among equals
        target = target_share * sizes[own].sum()
        filled = np.zeros(len(SPLIT_NAMES))
        for g in own:
            deficit = np.where(target_share > 0, target - filled, -np.inf)
            s = int(np.argmax(deficit))
            split_of_group[g] = s
            filled[s] += sizes[g]
        for s in used:  # every split gets the class: move a smallest group from the fullest split
            if not np.any(split_of_group[own] == s):
                donor = max(used, key=lambda d: (np.sum(split_of_group[own] == d), -d))
                candidates = own[split_of_group[own] == donor]
                split_of_group[candidates[np.argmin(sizes[candidates])]] = s
    return np.asarray(SPLIT_NAMES)[split_of_group[groups]].astype(str)


def fold_split(labels, groups, class_names, fold: int, folds: int, seed: int,
               group_kind: str = "near-duplicate group") -> np.ndarray:
    """'train'/'val'/'test' per image for fold ``fold`` of a ``folds``-fold cross-validation
    over groups, every group wholly in one fold, classes stratified: per class, its groups
    (each counted for its majority class) are shuffled with ``seed``, sorted largest first and
    dealt each to the fold with the fewest images of the class so far. The dealing does not
    depend on ``fold``, so the folds partition the images: fold ``fold`` is tested, the next
    fold validates, the others train (with 5 folds, 3:1:1 by groups). Raises
    SplitRefusedError, naming the class, when a class has fewer groups than folds."""
    labels, groups = np.asarray(labels), np.asarray(groups)
    if labels.shape != groups.shape or labels.ndim != 1:
        raise ValueError(f"labels and groups: expected two 1-D arrays of equal length, got {labels.shape} and {groups.shape}")
    if not 0 <= fold < folds or folds < 3:
        raise ValueError(f"fold: expected 0..{folds - 1} of at least 3 folds, got fold {fold} of {folds}")
    groups = np.unique(groups, return_inverse=True)[1].reshape(-1)
    majority, sizes = _group_majority(labels, groups), np.bincount(groups)
    for row in groups_per_class(labels, groups, class_names).to_dict("records"):
        if row["groups"] < folds:
            raise SplitRefusedError(
                f"fold split: class '{row['class']}' has only {row['groups']} independent {group_kind}(s) "
                f"({row['images']} images), fewer than the {folds} folds of the cross-validation; use "
                f"split='block' (one {ratio_text()} split over the same groups) or more data")
    rng = np.random.default_rng(seed)
    fold_of_group = np.full(len(sizes), -1)
    for k in range(len(class_names)):
        own = np.flatnonzero(majority == k)
        own = own[rng.permutation(len(own))]
        filled = np.zeros(folds)
        for g in own[np.argsort(-sizes[own], kind="stable")]:
            fold_of_group[g] = int(np.argmin(filled))
            filled[fold_of_group[g]] += sizes[g]
    of_image = fold_of_group[groups]
    return np.where(of_image == fold, "test", np.where(of_image == (fold + 1) % folds, "val", "train")).astype(str)


def file_number(path: str) -> int:
    """The last run of digits in a file's stem: ``Tumor- (1203).jpg`` -> 1203."""
    import re
    from pathlib import PurePath

    found = re.findall(r"\d+", PurePath(path).stem)
    if not found:
        raise ValueError(f"block split: {path!r} has no number in its name; the block split needs "
                         "files numbered in acquisition order (e.g. 'Cyst- (12).jpg'); use "
                         "split='random' or 'grouped'")
    return int(found[-1])


def block_groups(paths, labels, block: int = BLOCK_SIZE) -> np.ndarray:
    """Group id per image: (class, file number // block)."""
    keys = [(int(k), file_number(p) // block) for p, k in zip(paths, labels)]
    return np.unique(np.asarray(keys, dtype=np.int64).reshape(-1, 2), axis=0, return_inverse=True)[1].reshape(-1)


def near_copy_share(hashes: np.ndarray, split, threshold: int = HAMMING_THRESHOLD) -> dict:
    """Per val/test: the share of its images with a near-copy (phash distance <= threshold) in train."""
    split = np.asarray(split)
    i, j, _ = hamming_pairs(hashes, threshold)
    out = {}
    for part in ("val", "test"):
        own = split == part
        linked = np.zeros(len(split), bool)
        cross = (own[i] & (split[j] == "train")) | (own[j] & (split[i] == "train"))
        linked[np.where(own[i[cross]], i[cross], j[cross])] = True
        out[part] = float(linked[own].mean()) if own.any() else 0.0
    return out


class SplitRefusedError(ValueError):
    """A grouped or block split that cannot keep every class in every split: the data's
    documented refusal (the audit reports it), not a bug."""


def _too_few_message(name: str, n_groups: int, n_images: int, needed: int, kind: str) -> str:
    split = "block split" if kind.startswith("block") else "grouped split"
    if n_groups != 1:   # "near-duplicate groups", "blocks of 25 ..."
        kind = kind.replace(" of ", "s of ", 1) if " of " in kind else kind + "s"
    return (
        f"{split}: class '{name}' has only {n_groups} independent {kind} ({n_images} images), fewer than the {needed} needed to put "
        f"it in every split without a near-copy crossing splits; use split='random' "
        f"knowingly (near-copies will leak across splits), or more data (more independent "
        f"scans/patients of '{name}')"
    )


def _check_ratios(ratios) -> np.ndarray:
    """(train, val, test) shares summing to 1; train and test must be > 0."""
    try:
        shares = np.asarray(ratios, dtype=float)
    except (TypeError, ValueError):
        shares = np.zeros(0)
    if shares.shape != (3,) or not np.isfinite(shares).all() or (shares < 0).any() or shares[0] <= 0 or shares[2] <= 0:
        raise ValueError(f"ratios: expected (train, val, test) shares with train and test > 0, got {ratios!r}")
    return shares / shares.sum()


def ratio_text(ratios=RATIOS) -> str:
    """'6:2:2': the shares as the pages write them."""
    return ":".join(f"{10 * r:g}" for r in ratios)


def random_split(labels: np.ndarray, seed: int) -> np.ndarray:
    """'train'/'val'/'test' per image: stratified by RATIOS, deterministic for a seed."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    trainval, test = train_test_split(idx, test_size=RATIOS[2], stratify=labels, random_state=seed)
    train, val = train_test_split(trainval, test_size=RATIOS[1] / (1 - RATIOS[2]), stratify=labels[trainval],
                                  random_state=seed)
    split = np.empty(len(labels), dtype=object)
    split[train], split[val], split[test] = "train", "val", "test"
    return split.astype(str)
