"""Data-leakage and shortcut audit: duplicates, duplicate-aware splits, a global-statistics baseline.

Near-duplicates are found with a 256-bit perceptual hash (``imagehash.phash`` with
``hash_size=16``) and a Hamming threshold; groups of near-duplicates are the connected
components of the "distance <= threshold" graph. ``grouped_split`` keeps each group in
one split. ``shortcut_baseline`` trains scikit-learn models on intensity histograms only,
on the same splits as the CNNs, to show how much a model can score without anatomy.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import tempfile
from pathlib import Path

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

SPLITS = ("train", "val", "test")


# --------------------------------------------------------------------------- hashing


def perceptual_hashes(images: np.ndarray, hash_size: int = HASH_SIZE, progress: bool = False) -> np.ndarray:
    """(N, 3, S, S) uint8 images -> (N, hash_size**2 // 64) uint64 packed phash bits."""
    import imagehash
    from PIL import Image
    from tqdm.auto import tqdm

    images = _check_images(images)
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


def _components(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(i), dtype=np.int8), (i, j)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return labels.astype(np.int64)


def near_duplicate_groups(images: np.ndarray, threshold: int = HAMMING_THRESHOLD) -> np.ndarray:
    """Group id per image: connected components of phash pairs with distance <= threshold.

    Exact copies have distance 0, so they always share a group. Singletons get their own id.
    """
    images = _check_images(images)
    hashes = perceptual_hashes(images)
    i, j, _ = hamming_pairs(hashes, threshold)
    return _components(len(images), i, j)


def _check_images(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images: expected a uint8 array (N, 3, S, S), got {images.dtype} {images.shape}")
    return images


# --------------------------------------------------------------------------- duplicate audit

PAIR_COLUMNS = ["i", "j", "path_i", "path_j", "class_i", "class_j", "split_i", "split_j", "distance", "exact"]


def duplicate_pairs(images, paths, classes, splits, sha256=None, threshold: int = HAMMING_THRESHOLD, progress=False, hashes=None):
    """Pairs DataFrame (columns ``PAIR_COLUMNS``) of exact and near duplicates, from arrays.

    ``exact`` is True when the sha256 values match (file bytes, from the manifest); without
    ``sha256`` the decoded pixels are hashed instead. Exact pairs are added even if their
    perceptual distance were over the threshold, so none can be missed.
    """
    images = _check_images(images)
    n = len(images)
    paths, classes, splits = (np.asarray(a, dtype=object) for a in (paths, classes, splits))
    for name, arr in (("paths", paths), ("classes", classes), ("splits", splits)):
        if len(arr) != n:
            raise ValueError(f"{name}: expected {n} entries (one per image), got {len(arr)}")
    if sha256 is None:
        sha256 = [hashlib.sha256(im.tobytes()).hexdigest() for im in images]
    sha256 = np.asarray(sha256, dtype=object)
    if hashes is None:
        hashes = perceptual_hashes(images, progress=progress)
    i, j, d = hamming_pairs(hashes, threshold)

    # Exact copies by content hash, whatever their phash distance.
    by_sha = pd.Series(np.arange(n)).groupby(sha256).agg(list)
    exact = {(a, b) for members in by_sha if len(members) > 1 for a, b in itertools.combinations(sorted(members), 2)}
    near = set(zip(i.tolist(), j.tolist()))
    for a, b in sorted(exact - near):
        dist = int(sum(int(x).bit_count() for x in hashes[a] ^ hashes[b]))
        i, j, d = np.append(i, a), np.append(j, b), np.append(d, dist)

    pairs = pd.DataFrame(
        {
            "i": i,
            "j": j,
            "path_i": paths[i],
            "path_j": paths[j],
            "class_i": classes[i],
            "class_j": classes[j],
            "split_i": splits[i],
            "split_j": splits[j],
            "distance": d,
            "exact": sha256[i] == sha256[j] if len(i) else np.zeros(0, bool),
        },
        columns=PAIR_COLUMNS,
    )
    return pairs.sort_values(["distance", "i", "j"], kind="stable").reset_index(drop=True)


def find_duplicates(prepared, threshold: int = HAMMING_THRESHOLD, split=None, progress: bool = True) -> pd.DataFrame:
    """Pairs DataFrame for a ``helpers.data.Prepared``; ``split`` overrides ``prepared.split``."""
    manifest = getattr(prepared, "manifest", None)
    sha = manifest["sha256"].to_numpy() if manifest is not None and "sha256" in manifest else None
    classes = np.asarray(prepared.class_names, dtype=object)[np.asarray(prepared.labels)]
    return duplicate_pairs(
        prepared.images,
        prepared.paths,
        classes,
        prepared.split if split is None else split,
        sha256=sha,
        threshold=threshold,
        progress=progress,
    )


def duplicate_summary(pairs: pd.DataFrame, splits) -> pd.DataFrame:
    """Counts table (measure, value) for a pairs DataFrame; ``splits`` is the split per image."""
    splits = np.asarray(splits, dtype=object)
    same_class = pairs["class_i"] == pairs["class_j"]
    same_split = pairs["split_i"] == pairs["split_j"]

    def with_copy_in(target: str, other: str) -> int:
        a = pairs.loc[(pairs["split_i"] == target) & (pairs["split_j"] == other), "i"]
        b = pairs.loc[(pairs["split_j"] == target) & (pairs["split_i"] == other), "j"]
        return int(pd.concat([a, b]).nunique())

    n_test = int((splits == "test").sum())
    test_copies = with_copy_in("test", "train")
    rows = [
        ("images", len(splits)),
        ("near-duplicate pairs (incl. exact)", len(pairs)),
        ("exact duplicate pairs (sha256)", int(pairs["exact"].sum())),
        ("pairs within a class", int(same_class.sum())),
        ("pairs across classes", int((~same_class).sum())),
        ("pairs within a split", int(same_split.sum())),
        ("pairs across splits", int((~same_split).sum())),
        ("train-test pairs", int(_split_pair_mask(pairs, "train", "test").sum())),
        ("train-val pairs", int(_split_pair_mask(pairs, "train", "val").sum())),
        ("val-test pairs", int(_split_pair_mask(pairs, "val", "test").sum())),
        ("test images", n_test),
        ("test images with a near-copy in train", test_copies),
        ("% of test images with a near-copy in train", round(100 * test_copies / n_test, 1) if n_test else float("nan")),
        ("val images with a near-copy in train", with_copy_in("val", "train")),
    ]
    measures, values = zip(*rows)
    return pd.DataFrame({"measure": measures, "value": pd.Series(values, dtype=object)})  # counts stay ints


def _split_pair_mask(pairs: pd.DataFrame, a: str, b: str) -> pd.Series:
    return ((pairs["split_i"] == a) & (pairs["split_j"] == b)) | ((pairs["split_i"] == b) & (pairs["split_j"] == a))


def pairs_crosstab(pairs: pd.DataFrame, by: str = "split") -> pd.DataFrame:
    """Pair counts by unordered (split or class) pair, e.g. rows 'test-train'."""
    a, b = pairs[f"{by}_i"].astype(str), pairs[f"{by}_j"].astype(str)
    key = [" - ".join(sorted(x)) for x in zip(a, b)]
    return pd.Series(key, dtype=object).value_counts().rename_axis(f"{by} pair").reset_index(name="pairs")


def audit_duplicates(prepared, threshold: int = HAMMING_THRESHOLD, progress: bool = True):
    """(pairs, summary, groups) for a Prepared: pairs DataFrame, counts table, group id per image."""
    pairs = find_duplicates(prepared, threshold, progress=progress)
    summary = duplicate_summary(pairs, prepared.split)
    groups = _components(len(prepared.images), pairs["i"].to_numpy(), pairs["j"].to_numpy())
    return pairs, summary, groups


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


def grouped_split(labels, groups, class_names, seed, ratios=(0.6, 0.2, 0.2)) -> np.ndarray:
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
    used = [k for k in range(len(SPLITS)) if target_share[k] > 0]

    groups = np.unique(groups, return_inverse=True)[1].reshape(-1)  # dense ids 0..G-1
    majority = _group_majority(labels, groups)
    sizes = np.bincount(groups)
    table = groups_per_class(labels, groups, class_names)
    for row in table.to_dict("records"):
        if row["groups"] < len(used):
            raise ValueError(_too_few_message(row["class"], row["groups"], row["images"], len(used)))

    rng = np.random.default_rng(seed)
    split_of_group = np.full(len(sizes), -1)
    for k in range(n_classes):
        own = np.flatnonzero(majority == k)
        own = own[rng.permutation(len(own))]
        own = own[np.argsort(-sizes[own], kind="stable")]  # largest first, shuffled among equals
        target = target_share * sizes[own].sum()
        filled = np.zeros(len(SPLITS))
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
    return np.asarray(SPLITS)[split_of_group[groups]].astype(str)


def _too_few_message(name: str, n_groups: int, n_images: int, needed: int) -> str:
    return (
        f"grouped split: class '{name}' has only {n_groups} independent near-duplicate group"
        f"{'s' if n_groups != 1 else ''} ({n_images} images), fewer than the {needed} needed to put "
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


# --------------------------------------------------------------------------- shortcut baseline


def intensity_features(images: np.ndarray, bins: int = 32) -> np.ndarray:
    """(N, bins + 2): grayscale histogram (fractions of pixels), mean and std (0-1 scale)."""
    images = _check_images(images)
    feats = np.zeros((len(images), bins + 2), dtype=np.float64)
    weights = np.array([0.299, 0.587, 0.114])[:, None, None]
    for k, im in enumerate(images):
        gray = (im * weights).sum(axis=0)  # ITU-R 601 luma, as PIL's "L"
        feats[k, :bins] = np.histogram(gray, bins=bins, range=(0, 256))[0] / gray.size
        feats[k, bins] = gray.mean() / 255
        feats[k, bins + 1] = gray.std() / 255
    return feats


def _shortcut_models(seed: int):
    from sklearn.dummy import DummyClassifier
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    yield "majority class", [("-", DummyClassifier(strategy="most_frequent"))]
    yield "logistic regression", [
        (f"C={c:g}", make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000))) for c in (0.01, 0.1, 1, 10, 100)
    ]
    yield "gradient boosting", [
        (
            f"max_leaf_nodes={m}",
            HistGradientBoostingClassifier(max_leaf_nodes=m, max_iter=100, learning_rate=0.1, early_stopping=False, random_state=seed),
        )
        for m in (7, 31)
    ]


def binomial_ci(correct: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for an accuracy of ``correct`` out of ``n``."""
    from scipy.stats import binomtest

    if n == 0:
        return float("nan"), float("nan")
    ci = binomtest(int(correct), int(n)).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


def shortcut_baseline(prepared, split=None, bins: int = 32, seed: int = 0) -> pd.DataFrame:
    """Histogram + mean + std models on the prepared splits: one row per model.

    Trains on train, picks the hyper-parameter with the best val accuracy (first on ties),
    reports test accuracy with a 95% Wilson CI, balanced accuracy, macro one-vs-rest AUC
    and per-class recall. ``split`` overrides ``prepared.split`` (same length).
    """
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score
    from threadpoolctl import threadpool_limits

    split = np.asarray(prepared.split if split is None else split, dtype=object)
    y = np.asarray(prepared.labels)
    class_names = list(prepared.class_names)
    if len(split) != len(y):
        raise ValueError(f"split: expected {len(y)} entries (one per image), got {len(split)}")
    tr, va, te = (split == s for s in SPLITS)
    if not tr.any() or not te.any() or len(np.unique(y[tr])) < 2:
        raise ValueError("shortcut_baseline: needs a train split with at least 2 classes and a non-empty test split")
    X = intensity_features(prepared.images, bins)
    rows = []
    for model_name, candidates in _shortcut_models(seed):
        best = None  # (val accuracy, label, model): best val accuracy, first on ties or without val
        for label, model in candidates:
            # One thread: OpenMP in gradient boosting runs ~10x slower on a busy machine than
            # single-threaded, and these models are small (34 features).
            with threadpool_limits(1):
                model.fit(X[tr], y[tr])
            acc = float((model.predict(X[va]) == y[va]).mean()) if va.any() else float("nan")
            if best is None or acc > best[0]:
                best = (acc, label, model)
        val_acc, label, model = best
        pred = model.predict(X[te])
        correct = int((pred == y[te]).sum())
        low, high = binomial_ci(correct, int(te.sum()))
        row = {
            "model": model_name,
            "selected": label,
            "n_train": int(tr.sum()),
            "n_val": int(va.sum()),
            "n_test": int(te.sum()),
            "val_accuracy": val_acc,
            "test_accuracy": correct / int(te.sum()),
            "ci_low": low,
            "ci_high": high,
            "test_balanced_accuracy": float(balanced_accuracy_score(y[te], pred)),
            "test_auc_macro": _auc_macro(roc_auc_score, y[te], model, X[te], len(class_names)),
        }
        for k, name in enumerate(class_names):
            mask = y[te] == k
            row[f"recall_{name}"] = float((pred[mask] == k).mean()) if mask.any() else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def _auc_macro(roc_auc_score, y_true, model, X, n_classes) -> float:
    if len(np.unique(y_true)) < n_classes or len(model.classes_) < n_classes:
        return float("nan")  # AUC per class needs every class present
    proba = model.predict_proba(X)
    return float(roc_auc_score(y_true, proba, multi_class="ovr", average="macro", labels=list(range(n_classes))))


# --------------------------------------------------------------------------- figures and the notebook's driver


def plot_closest_pairs(pairs: pd.DataFrame, images: np.ndarray, n: int = 6, cross_split: bool = True, synthetic: bool = False, title: str = ""):
    """Side-by-side figure of the ``n`` closest pairs (across splits by default): one column per pair."""
    from matplotlib.figure import Figure  # not pyplot: no global state, no double display in notebooks

    chosen = pairs[pairs["split_i"] != pairs["split_j"]] if cross_split else pairs
    chosen = chosen.head(n)
    cols = max(len(chosen), 1)
    fig = Figure(figsize=(max(2.3 * cols, 6.0), 5.4))
    axes = fig.subplots(2, cols, squeeze=False)
    for c, row in enumerate(chosen.itertuples(index=False)):
        for r, (idx, path, cls, spl) in enumerate(
            [(row.i, row.path_i, row.class_i, row.split_i), (row.j, row.path_j, row.class_j, row.split_j)]
        ):
            ax = axes[r, c]
            ax.imshow(images[idx].transpose(1, 2, 0))
            ax.set_xticks([])
            ax.set_yticks([])
            name = Path(str(path)).name
            label = f"{spl} | {cls}\n{name if len(name) <= 24 else name[:21] + '...'}"
            if r == 0:  # top image: label above; bottom image: label below
                ax.set_title(f"distance {row.distance}{' (exact)' if row.exact else ''}\n{label}", fontsize=7)
            else:
                ax.set_xlabel(label, fontsize=7)
    for c in range(len(chosen), cols):
        axes[0, c].axis("off")
        axes[1, c].axis("off")
    if chosen.empty:
        axes[0, 0].text(0.5, 0.5, "no near-duplicate pairs\nacross splits", ha="center", va="center")
    kind = "across splits" if cross_split else "overall"
    head = ("SYNTHETIC DATA - " if synthetic else "") + (title or f"Closest near-duplicate pairs {kind}")
    fig.suptitle(f"{head} (phash distance of {HASH_SIZE**2} bits, threshold {HAMMING_THRESHOLD})", fontsize=9)
    fig.tight_layout()
    return fig


def try_grouped_prepare(**prepare_kwargs):
    """``helpers.data.prepare(split="grouped", ...)`` -> (folder, None), or (None, message) when it refuses.

    Only the documented refusal (a ValueError from ``grouped_split``) is caught; anything
    else propagates.
    """
    from helpers.data import prepare

    try:
        return prepare(split="grouped", **prepare_kwargs), None
    except ValueError as err:
        if "grouped split" not in str(err):
            raise
        return None, str(err)


def write_csv(df: pd.DataFrame, path) -> Path:
    """Atomic CSV write (tmp file in the same folder, then os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="") as fh:
            df.to_csv(fh, index=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_figure(fig, path) -> Path:
    """Atomic PNG write."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def run_audit(dataset: str, data_dir: str = "", image_size: int = 128, seed: int = 0, balance: bool = False, n_per_class: int = 100, out_dir: str = "", progress: bool = True) -> dict:
    """Whole audit for the notebook: prepares the data, writes CSV/PNG to out_dir, returns the results.

    out_dir "" = results/<dataset>/audit. Returned keys: out_dir, prepared (random split),
    synthetic, pairs, summary, split_pairs, class_pairs, groups_table, grouped_counts
    (None if refused), grouped_error (None or the refusal message), shortcut (random and
    grouped rows, column ``split``), figure.
    """
    from helpers.data import load_prepared, prepare

    out = Path(out_dir or Path("results") / dataset / "audit")
    common = dict(dataset=dataset, data_dir=data_dir, image_size=image_size, balance=balance, seed=seed, n_per_class=n_per_class, progress=progress)
    prepared = load_prepared(prepare(split="random", **common))
    pairs, summary, groups = audit_duplicates(prepared, progress=progress)
    groups_table = groups_per_class(prepared.labels, groups, prepared.class_names)

    grouped_dir, grouped_error = try_grouped_prepare(**common)
    shortcut = shortcut_baseline(prepared, seed=seed).assign(split="random")
    grouped_counts = None
    if grouped_dir is not None:
        grouped = load_prepared(grouped_dir)
        grouped_counts = pd.crosstab(
            pd.Series(np.asarray(grouped.class_names)[grouped.labels], name="class"), pd.Series(grouped.split, name="split")
        ).reindex(columns=list(SPLITS), fill_value=0)
        grouped_pairs = find_duplicates(grouped, progress=False)
        # Leakage check on the split the CNNs train on: must be zero.
        leaked = int((grouped_pairs["split_i"] != grouped_pairs["split_j"]).sum())
        grouped_counts.attrs["cross_split_pairs"] = leaked
        shortcut = pd.concat([shortcut, shortcut_baseline(grouped, seed=seed).assign(split="grouped")], ignore_index=True)
    shortcut = shortcut[["split"] + [c for c in shortcut.columns if c != "split"]]

    fig = plot_closest_pairs(pairs, prepared.images, synthetic=bool(prepared.synthetic))
    write_csv(pairs, out / "duplicate_pairs.csv")
    write_csv(summary, out / "duplicate_summary.csv")
    write_csv(groups_table, out / "groups_per_class.csv")
    write_csv(shortcut, out / "shortcut_baseline.csv")
    if grouped_counts is not None:
        write_csv(grouped_counts.reset_index(), out / "grouped_split_counts.csv")
    else:
        write_csv(pd.DataFrame({"error": [grouped_error]}), out / "grouped_split_counts.csv")
    save_figure(fig, out / "closest_pairs.png")
    return {
        "out_dir": out,
        "prepared": prepared,
        "synthetic": bool(prepared.synthetic),
        "pairs": pairs,
        "summary": summary,
        "split_pairs": pairs_crosstab(pairs, "split"),
        "class_pairs": pairs_crosstab(pairs, "class"),
        "groups_table": groups_table,
        "grouped_counts": grouped_counts,
        "grouped_error": grouped_error,
        "shortcut": shortcut,
        "figure": fig,
    }


def headline(res: dict) -> dict:
    """Scalars and short texts worth gluing from a ``run_audit`` result (keys are glue suffixes)."""
    s = res["summary"].set_index("measure")["value"]
    groups = res["groups_table"]
    out = {
        "synthetic": res["synthetic"],
        "hamming_threshold": HAMMING_THRESHOLD,
        "hash_bits": HASH_SIZE * HASH_SIZE,
        "n_images": int(s["images"]),
        "n_pairs": int(s["near-duplicate pairs (incl. exact)"]),
        "n_exact_pairs": int(s["exact duplicate pairs (sha256)"]),
        "n_cross_class_pairs": int(s["pairs across classes"]),
        "n_cross_split_pairs": int(s["pairs across splits"]),
        "n_train_test_pairs": int(s["train-test pairs"]),
        "n_test": int(s["test images"]),
        "test_with_train_copy": int(s["test images with a near-copy in train"]),
        "test_with_train_copy_pct": float(s["% of test images with a near-copy in train"]),
        "groups_per_class": ", ".join(f"{r['class']} {r['groups']}" for r in groups.to_dict("records")),
        "min_groups": int(groups["groups"].min()),
        "grouped_ok": res["grouped_error"] is None,
        "grouped_status": "grouped split made" if res["grouped_error"] is None else res["grouped_error"],
    }
    if res["grouped_counts"] is not None:
        out["grouped_cross_split_pairs"] = int(res["grouped_counts"].attrs.get("cross_split_pairs", -1))
    for split_kind, rows in res["shortcut"].groupby("split"):
        learned = rows[rows["model"] != "majority class"]
        # The model a user would pick: best validation accuracy (first on ties), never best test.
        best = learned.loc[learned["val_accuracy"].fillna(-1).idxmax()]
        chance = rows[rows["model"] == "majority class"].iloc[0]
        out[f"shortcut_{split_kind}_model"] = best["model"]
        out[f"shortcut_{split_kind}_acc"] = round(100 * float(best["test_accuracy"]), 1)
        out[f"shortcut_{split_kind}_ci"] = f"{100 * best['ci_low']:.1f}-{100 * best['ci_high']:.1f}%"
        out[f"shortcut_{split_kind}_chance"] = round(100 * float(chance["test_accuracy"]), 1)
    return out
