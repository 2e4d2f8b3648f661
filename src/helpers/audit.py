"""Data-leakage and shortcut audit: duplicates across classes and splits, a global-statistics baseline.

The near-duplicate test (phash, Hamming threshold) and the grouped split live in
``helpers.data.splits``, because data prep needs them too; this module reports what they find.
``shortcut_baseline`` trains scikit-learn models on intensity histograms only, on the same
splits as the CNNs, to show how much a model can score without anatomy.
"""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

from . import atomic, metrics, models
from .intervals import binomial_ci
from .params import FOLD_SPLITS, AuditParams, check
from .data import get_spec, load_prepared, prepare
from .data.splits import (
    BLOCK_SIZE,
    HAMMING_THRESHOLD,
    HASH_SIZE,
    SPLIT_NAMES as SPLITS,
    SplitRefusedError,
    check_images,
    file_number,
    components,
    groups_per_class,
    hamming_pairs,
    perceptual_hashes,
)

# --------------------------------------------------------------------------- duplicate audit

PAIR_COLUMNS = ["i", "j", "path_i", "path_j", "class_i", "class_j", "split_i", "split_j", "distance", "exact"]


def duplicate_pairs(images, paths, classes, splits, sha256=None, threshold: int = HAMMING_THRESHOLD, progress=False, hashes=None):
    """Pairs DataFrame (columns ``PAIR_COLUMNS``) of exact and near duplicates, from arrays.

    ``exact`` is True when the sha256 values match (file bytes, from the manifest); without
    ``sha256`` the decoded pixels are hashed instead. Exact pairs are added even if their
    perceptual distance were over the threshold, so none can be missed.
    """
    images = check_images(images)
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
    groups = components(len(prepared.images), pairs["i"].to_numpy(), pairs["j"].to_numpy())
    return pairs, summary, groups




# --------------------------------------------------------------------------- shortcut baseline


def intensity_features(images: np.ndarray, bins: int = 32) -> np.ndarray:
    """(N, bins + 2): grayscale histogram (fractions of pixels), mean and std (0-1 scale)."""
    images = check_images(images)
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


def shortcut_baseline(prepared, split=None, bins: int = 32, seed: int = 0,
                      predictions: dict | None = None) -> pd.DataFrame:
    """Histogram + mean + std models on the prepared splits: one row per model.

    Trains on train, picks the hyper-parameter with the best val accuracy (first on ties),
    reports test accuracy with a 95% Wilson CI, balanced accuracy, macro one-vs-rest AUC
    and per-class recall. ``split`` overrides ``prepared.split`` (same length). A dict passed
    as ``predictions`` receives each model's test predictions (model name -> labels).
    """
    from sklearn.metrics import balanced_accuracy_score
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
        if predictions is not None:
            predictions[model_name] = pred
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
            "test_auc_macro": _auc_macro(y[te], model, X[te], class_names),
        }
        for k, name in enumerate(class_names):
            mask = y[te] == k
            row[f"recall_{name}"] = float((pred[mask] == k).mean()) if mask.any() else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


BASELINES = ("intensity-only", "view alone", "majority class")   # fold_baselines' scores


def fold_baselines(folds: dict, views: dict | None = None, seed: int = 0) -> pd.DataFrame:
    """The baselines fold by fold of a cross-validation over blocks (``folds``: split name ->
    its prepared data, the same images in each), and pooled over the folds once every fold is
    there (each slice tested once): the intensity-only model (the one chosen on each fold's
    validation blocks), the majority class of the fold's training slices and, with ``views``
    (path -> "axial"/"coronal"), the view alone. The pooled
    interval resamples blocks of consecutive slices within each class, as the networks' pooled
    accuracy does; a fold's own row gives a Wilson interval over its slices."""
    from .data.splits import block_groups
    from .intervals import percentile_interval, unit_weights

    rows, tested = [], []
    for k, fold in enumerate(FOLD_SPLITS):
        if fold not in folds:
            continue
        prepared = folds[fold]
        test = np.asarray(prepared.split) == "test"
        y = np.asarray(prepared.labels)[test]
        preds: dict = {}
        table = shortcut_baseline(prepared, seed=seed, predictions=preds)
        chosen = shortcut_choice(table)
        row = {"fold": k + 1, "test slices": int(test.sum()),
               "near-copy share": prepared.info.get("near_copy_share", {}).get("test", float("nan")),
               "intensity-only model": chosen, "intensity-only": float((preds[chosen] == y).mean())}
        per_image = {"path": np.asarray(prepared.paths)[test], "label": y, "intensity-only": preds[chosen] == y,
                     "majority class": preds["majority class"] == y}
        row["majority class"] = float(per_image["majority class"].mean())
        if views is not None:
            by_view = view_baseline(prepared, np.array([views[p] for p in prepared.paths]))
            row["view alone"] = by_view["test_accuracy"]
            per_image["view alone"] = by_view["pred"] == y
        for name in BASELINES:
            if name in row:
                hits = int(per_image[name].sum())
                row[f"{name} low"], row[f"{name} high"] = binomial_ci(hits, len(y))
        rows.append(row)
        tested.append(pd.DataFrame(per_image))
    if len(rows) == len(FOLD_SPLITS):
        every = pd.concat(tested, ignore_index=True)
        if every["path"].duplicated().any():
            raise ValueError("fold_baselines: a slice is tested in more than one fold")
        weights = unit_weights(len(every), groups=block_groups(every["path"], every["label"]), strata=every["label"])
        pooled = {"fold": "pooled", "test slices": len(every),
                  "near-copy share": float(np.average([r["near-copy share"] for r in rows],
                                                      weights=[r["test slices"] for r in rows])),
                  "intensity-only model": "chosen per fold"}
        for name in BASELINES:
            if name in every:
                hit = every[name].to_numpy(dtype=float)
                ci = percentile_interval(hit.mean(), weights @ hit / weights.sum(axis=1), len(hit))
                pooled.update({name: ci.mean, f"{name} low": ci.low, f"{name} high": ci.high})
        rows.append(pooled)
    return pd.DataFrame(rows)


def fold_baselines_display(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`fold_baselines` for readers: each accuracy over its interval."""
    pct = lambda v, lo, hi: f"{100 * v:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"
    out = pd.DataFrame({"fold": table["fold"].astype(str), "test slices": table["test slices"],
                        "near-copy in training (%)": [f"{100 * v:.0f}" for v in table["near-copy share"]],
                        "intensity-only model": table["intensity-only model"]})
    for name in BASELINES:
        if name in table:
            out[f"{name} (%)"] = [pct(r[name], r[f"{name} low"], r[f"{name} high"]) for _, r in table.iterrows()]
    return out


def shortcut_choice(rows: pd.DataFrame) -> str:
    """The intensity-only model a user would pick from ``shortcut_baseline``'s rows: the best
    validation accuracy (first on ties) among the learned ones, never the best test."""
    learned = rows[rows["model"].isin(["logistic regression", "gradient boosting"])]
    return str(learned.loc[learned["val_accuracy"].fillna(-1).idxmax(), "model"])


# --------------------------------------------------------------------------- slice view (CT)

# Not every kidney slice is axial: some are coronal (the whole trunk, top to bottom). A coronal
# body silhouette is taller than it is wide; an axial one is wider. Height over width of the
# largest bright region above this value reads as coronal. On ../shared/real-study/ct_kidney at
# 256 px it gives the counts its README reports: 36 of 120 Cyst, 69 of 200 Normal, 89 of 200
# Tumor, none of 194 Stone (axial slices reach 1.05, coronal ones start at 1.4); at 128 px one
# Tumor slice of 714 reads otherwise (88 of 200).
CORONAL_ASPECT = 1.2
BODY_LEVEL = 40          # grey level (0-255) above which a pixel is body rather than air


def body_aspect(image: np.ndarray) -> float:
    """Height / width of the bounding box of the largest bright region of one image
    (``(3, S, S)`` or ``(S, S)`` uint8); nan for an image with no bright region."""
    from scipy import ndimage

    gray = image.mean(axis=0) if image.ndim == 3 else image
    # drop specks and the couch edge: 2 px at 256 px, 1 px at 128 px
    body = ndimage.binary_opening(gray > BODY_LEVEL, iterations=max(1, round(gray.shape[-1] / 128)))
    labels, n = ndimage.label(body)
    if n == 0:
        return float("nan")
    largest = labels == (np.bincount(labels.ravel())[1:].argmax() + 1)
    rows, cols = np.flatnonzero(largest.any(axis=1)), np.flatnonzero(largest.any(axis=0))
    return float((rows[-1] - rows[0] + 1) / (cols[-1] - cols[0] + 1))


def slice_views(images: np.ndarray) -> np.ndarray:
    """"coronal" or "axial" per image, from :func:`body_aspect`."""
    return np.array(["coronal" if body_aspect(im) > CORONAL_ASPECT else "axial" for im in images])


def view_table(prepared, views: np.ndarray | None = None) -> pd.DataFrame:
    """Per class and split: images, how many are coronal, and the coronal share."""
    views = slice_views(prepared.images) if views is None else views
    frame = pd.DataFrame({"class": np.asarray(prepared.class_names)[np.asarray(prepared.labels)],
                          "split": np.asarray(prepared.split), "coronal": views == "coronal"})
    out = frame.groupby(["class", "split"]).agg(images=("coronal", "size"), coronal=("coronal", "sum")).reset_index()
    total = frame.groupby("class").agg(images=("coronal", "size"), coronal=("coronal", "sum")).reset_index()
    out = pd.concat([total.assign(split="all"), out], ignore_index=True)
    out["coronal_share"] = out["coronal"] / out["images"]
    return out


def view_baseline(prepared, views: np.ndarray | None = None, split=None) -> dict:
    """How well the view alone predicts the class: each view's most common training class,
    scored on the test split (with a 95% Wilson interval), beside the majority class."""
    views = slice_views(prepared.images) if views is None else views
    split = np.asarray(prepared.split if split is None else split, dtype=object)
    y = np.asarray(prepared.labels)
    tr, te = split == "train", split == "test"
    majority = np.bincount(y[tr]).argmax()
    rule = {v: (np.bincount(y[tr & (views == v)]).argmax() if (tr & (views == v)).any() else majority)
            for v in ("axial", "coronal")}
    pred = np.array([rule[v] for v in views[te]])
    correct = int((pred == y[te]).sum())
    low, high = binomial_ci(correct, int(te.sum()))
    return {"model": "view alone (axial or coronal)", "n_test": int(te.sum()),
            "test_accuracy": correct / int(te.sum()), "ci_low": low, "ci_high": high,
            "rule": {v: prepared.class_names[k] for v, k in rule.items()}, "pred": pred,
            "majority_accuracy": float((y[te] == majority).mean())}


def view_balanced_blocks(paths, labels, class_names, split, views, block: int = BLOCK_SIZE,
                         test_share: tuple[float, float] = (0.15, 0.25)) -> pd.DataFrame:
    """Could a block split keep each class's views in proportion? Per class: its coronal share,
    the block split's test share, and the closest share any test set of whole blocks holding
    ``test_share`` of the class's slices reaches (every subset of blocks, by subset sums)."""
    views = np.asarray(views)
    rows = []
    for k, name in enumerate(class_names):
        own = np.flatnonzero(np.asarray(labels) == k)
        frame = pd.DataFrame({"block": [file_number(paths[i]) // block for i in own],
                              "coronal": views[own] == "coronal"})
        sizes = frame.groupby("block")["coronal"].agg(["size", "sum"]).to_numpy()
        n_all, share = len(own), float(frame["coronal"].mean())
        lo, hi = int(np.ceil(test_share[0] * n_all)), int(np.floor(test_share[1] * n_all))
        reach = np.zeros((hi + 1, hi + 1), bool)          # reach[slices, coronal] by some blocks
        reach[0, 0] = True
        for n, c in sizes:
            if n <= hi:
                reach[n:, c:] |= reach[:hi + 1 - n, :hi + 1 - c].copy()
        n_idx, c_idx = np.nonzero(reach[lo:])
        closest = (c_idx / (n_idx + lo))[np.argmin(np.abs(c_idx / (n_idx + lo) - share))] if len(n_idx) else np.nan
        test = np.asarray(split)[own] == "test"
        rows.append({"class": name, "slices": n_all, "blocks": len(sizes), "coronal (%)": 100 * share,
                     "block split test (%)": 100 * float(frame["coronal"][test].mean()) if test.any() else np.nan,
                     "closest possible test (%)": 100 * closest})
    out = pd.DataFrame(rows)
    out["closest minus all (pp)"] = out["closest possible test (%)"] - out["coronal (%)"]
    return out.round(1)


def view_blocks_verdict(table: pd.DataFrame, tolerance: float = 10.0) -> str:
    """Sentences from :func:`view_balanced_blocks`: which classes the block split tests on a
    different mix of views, and for which of them no choice of whole blocks does better."""
    def pct(v) -> str:
        return f"{v:.0f} %"

    def listed(items) -> str:
        items = list(items)
        return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]

    gap = table["block split test (%)"] - table["coronal (%)"]
    shifted = table[gap.abs() > tolerance]
    stuck = table[table["closest minus all (pp)"].abs() > tolerance]
    if shifted.empty and stuck.empty:
        return f"The block split keeps every class's coronal share within {tolerance:g} points."
    out = []
    if len(shifted):
        out.append("The block split tests " + "; ".join(
            f"{r['class']} on {pct(r['block split test (%)'])} coronal slices (all {r['class']}: {pct(r['coronal (%)'])})"
            for _, r in shifted.iterrows()) + ".")
    if len(stuck):
        out.append("No test set of whole blocks keeps the views of " + listed(stuck["class"]) + " in proportion (at best "
                   + listed(pct(v) for v in stuck["closest possible test (%)"]) + "): their coronal slices lie together in a few blocks.")
    better = shifted[~shifted["class"].isin(stuck["class"])]
    if len(better):
        out.append("For " + listed(better["class"]) + " a choice of blocks closer in view exists ("
                   + listed(pct(v) for v in better["closest possible test (%)"]) + " coronal).")
    return " ".join(out)


def _auc_macro(y_true, model, X, class_names) -> float:
    if len(model.classes_) < len(class_names):
        return float("nan")  # a class absent from train has no probability column
    return metrics.auc_scores(y_true, model.predict_proba(X), class_names)[0]


# --------------------------------------------------------------------------- frozen-feature probe

def frozen_features(images: np.ndarray, arch: str = models.REFERENCE_ARCH, imagenet: bool = True,
                    batch: int = 64, seed: int = 0) -> np.ndarray:
    """(N, D) globally pooled features of a frozen backbone: ImageNet weights, or random ones."""
    import torch

    from . import training

    torch.manual_seed(seed)
    size = images.shape[-1]
    model = models.get_model(arch, weights=imagenet, num_classes=2, image_size=size)
    model.get_submodule(models.spec(arch).classifier)  # the replace head: drop it
    parent, _, name = models.spec(arch).classifier.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, torch.nn.Identity())
    mean, std = models.spec(arch).stats  # the weights' own preprocessing, for both arms
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch):
            x = torch.from_numpy(np.ascontiguousarray(images[start:start + batch]))
            out.append(model(training.normalize(x, mean, std)).flatten(1).numpy())
    return np.concatenate(out)


def feature_probe(prepared, arch: str = models.REFERENCE_ARCH, folds: int = 5, seed: int = 0,
                  groups: np.ndarray | None = None) -> pd.DataFrame:
    """Does ImageNet help through reusable features? Logistic regression on frozen features,
    ImageNet vs random-init, ``folds``-fold stratified CV over all prepared images.

    With ``groups`` (near-duplicate groups) the folds keep each group together
    (StratifiedGroupKFold), so no fold tests on near-copies of its training images.
    One row per (features, folds): out-of-fold accuracy with a Wilson 95% interval.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    y = np.asarray(prepared.labels)
    rows = []
    for features in ("ImageNet", "random init"):
        X = frozen_features(prepared.images, arch, imagenet=features == "ImageNet", seed=seed)
        schemes = [("images (random folds)", StratifiedKFold(folds, shuffle=True, random_state=seed), None)]
        if groups is not None:
            schemes.append(("near-duplicate groups", StratifiedGroupKFold(folds, shuffle=True, random_state=seed), groups))
        for scheme, cv, g in schemes:
            if g is not None:
                per_class = {name: len(np.unique(g[y == k])) for k, name in enumerate(prepared.class_names)}
                scarce = {name: n for name, n in per_class.items() if n < folds}
                if scarce:  # a class whose every image sits in a few groups cannot be in every fold
                    rows.append({"features": features, "folds": scheme, "n": len(y), "accuracy": float("nan"),
                                 "ci_low": float("nan"), "ci_high": float("nan"),
                                 "note": "not possible: fewer near-duplicate groups than folds in "
                                         + ", ".join(f"{k} ({n})" for k, n in scarce.items())})
                    continue
            model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=5000))
            with threadpool_limits(1):
                pred = cross_val_predict(model, X, y, cv=cv, groups=g)
            correct = int((pred == y).sum())
            low, high = binomial_ci(correct, len(y))
            rows.append({"features": features, "folds": scheme, "n": len(y), "accuracy": correct / len(y),
                         "ci_low": low, "ci_high": high, "note": ""})
    return pd.DataFrame(rows).assign(arch=arch)


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

    Only the documented refusal (:class:`SplitRefusedError`) is caught; anything else propagates.
    """
    try:
        return prepare(split="grouped", **prepare_kwargs), None
    except SplitRefusedError as err:
        return None, str(err)



def write_csv(df: pd.DataFrame, path) -> Path:
    return atomic.write(path, lambda tmp: df.to_csv(tmp, index=False))


def run_audit(progress: bool = True, **step) -> dict:
    """Whole audit for the notebook: prepares the data, writes CSV/PNG to out_dir, returns the results.

    ``step``: the audit step's parameters (``dataset``, ``data_dir``, ``image_size``, ``seed``,
    ``balance``, ``n_per_class``, ``out_dir``), checked by :class:`helpers.params.AuditParams`,
    where their defaults live. out_dir "" = results/<dataset>/audit. Returned keys: out_dir,
    prepared (random split),
    synthetic, pairs, summary, split_pairs, class_pairs, groups_table, grouped_counts
    (None if refused), grouped_error (None or the refusal message), shortcut (random and
    grouped rows, column ``split``; with the view-alone row for slice datasets), figure, views
    view_counts and view_blocks (None unless the dataset's spec has ``ct_slices``; then also
    views.csv, view_counts.csv and view_blocks.csv), fold_baselines (None unless ``folds`` names
    a cross-validation's folds; then also fold_baselines.csv).
    """
    p = check(AuditParams, {k: str(v) if isinstance(v, Path) else v for k, v in step.items()})
    dataset, data_dir, image_size, seed = p.dataset, p.data_dir, p.image_size, p.seed
    balance, n_per_class, out_dir = p.balance, p.n_per_class, p.out_dir
    out = Path(out_dir or Path("results") / dataset / "audit")
    common = dict(dataset=dataset, data_dir=data_dir, image_size=image_size, balance=balance, seed=seed, n_per_class=n_per_class, progress=progress)
    own = get_spec(dataset).audit_split   # "random"; "given" for a download that comes split
    prepared = load_prepared(prepare(split=own, **common))
    pairs, summary, groups = audit_duplicates(prepared, progress=progress)
    groups_table = groups_per_class(prepared.labels, groups, prepared.class_names)

    if own == "given":
        grouped_dir, grouped_error = None, ("the download comes split into its own train/val/test folders, "
                                            "which are kept: no grouped split is drawn")
    else:
        grouped_dir, grouped_error = try_grouped_prepare(**common)
    own_predictions: dict = {}
    shortcut = shortcut_baseline(prepared, seed=seed, predictions=own_predictions).assign(split=own)
    # which test images the intensity-only model gets right: the CNNs' accuracy on the ones it
    # gets wrong (shortcut-hard) is read beside their accuracy on the rest (helpers.shortcut)
    chosen = shortcut_choice(shortcut)
    test = np.asarray(prepared.split) == "test"
    write_csv(pd.DataFrame({"path": np.asarray(prepared.paths)[test], "label": np.asarray(prepared.labels)[test],
                            "pred": own_predictions[chosen], "model": chosen}), out / "shortcut_predictions.csv")
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

    views = view_counts = view_blocks = None
    if get_spec(dataset).ct_slices:
        views = slice_views(prepared.images)
        view_counts = view_table(prepared, views)
        by_view = view_baseline(prepared, views)
        shortcut = pd.concat([shortcut, pd.DataFrame([{
            "split": own, "model": by_view["model"],
            "selected": ", ".join(f"{v} -> {c}" for v, c in by_view["rule"].items()),
            **{k: by_view[k] for k in ("n_test", "test_accuracy", "ci_low", "ci_high")}}])], ignore_index=True)
        write_csv(pd.DataFrame({"path": prepared.paths, "split": prepared.split, "view": views,
                                "class": np.asarray(prepared.class_names)[np.asarray(prepared.labels)]}),
                  out / "views.csv")
        write_csv(view_counts, out / "view_counts.csv")
        try:   # the block split's own test share, where the data allow a block split
            blocked = load_prepared(prepare(split="block", **common))
        except SplitRefusedError:
            blocked = SimpleNamespace(paths=prepared.paths, labels=prepared.labels, split=[""] * len(views))
        by_path = dict(zip(prepared.paths, views))
        view_blocks = view_balanced_blocks(blocked.paths, blocked.labels, prepared.class_names, blocked.split,
                                           [by_path[p] for p in blocked.paths])
        write_csv(view_blocks, out / "view_blocks.csv")

    folds = None
    if p.folds:   # the cross-validation's folds: the same baselines fold by fold, then pooled
        by_path = dict(zip(prepared.paths, views)) if views is not None else None
        folds = fold_baselines({f: load_prepared(prepare(split=f, **common)) for f in p.folds}, by_path, seed)
        write_csv(folds, out / "fold_baselines.csv")

    probe = feature_probe(prepared, seed=seed, groups=groups)
    fig = plot_closest_pairs(pairs, prepared.images, synthetic=bool(prepared.synthetic))
    write_csv(probe, out / "feature_probe.csv")
    write_csv(pairs, out / "duplicate_pairs.csv")
    write_csv(summary, out / "duplicate_summary.csv")
    write_csv(groups_table, out / "groups_per_class.csv")
    write_csv(shortcut, out / "shortcut_baseline.csv")
    if grouped_counts is not None:
        write_csv(grouped_counts.reset_index(), out / "grouped_split_counts.csv")
    else:
        write_csv(pd.DataFrame({"error": [grouped_error]}), out / "grouped_split_counts.csv")
    atomic.save_figure(fig, out / "closest_pairs.png", dpi=110)
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
        "probe": probe,
        "figure": fig,
        "views": views,              # "axial"/"coronal" per image (datasets with ct_slices), else None
        "view_counts": view_counts,
        "view_blocks": view_blocks,  # could a block split keep the views in proportion (view_balanced_blocks)
        "fold_baselines": folds,     # per fold of a cross-validation (fold_baselines), None without folds
    }


def models_label(arch: str) -> str:
    from . import models

    return models.spec(arch).label


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
    probe = res["probe"].set_index(["features", "folds"])
    for features, key in (("ImageNet", "imagenet"), ("random init", "random")):
        row = probe.loc[(features, "images (random folds)")]
        out[f"probe_{key}_acc"] = round(100 * float(row["accuracy"]), 1)
        out[f"probe_{key}_ci"] = f"{100 * row['ci_low']:.1f}-{100 * row['ci_high']:.1f}%"
    out["probe_arch"] = models_label(res["probe"]["arch"].iloc[0])
    if res["grouped_counts"] is not None:
        out["grouped_cross_split_pairs"] = int(res["grouped_counts"].attrs.get("cross_split_pairs", -1))
    for split_kind, rows in res["shortcut"].groupby("split"):
        best = rows.set_index("model").loc[shortcut_choice(rows)]
        chance = rows[rows["model"] == "majority class"].iloc[0]
        out[f"shortcut_{split_kind}_model"] = best.name
        out[f"shortcut_{split_kind}_acc"] = round(100 * float(best["test_accuracy"]), 1)
        out[f"shortcut_{split_kind}_ci"] = f"{100 * best['ci_low']:.1f}-{100 * best['ci_high']:.1f}%"
        out[f"shortcut_{split_kind}_chance"] = round(100 * float(chance["test_accuracy"]), 1)
    return out
