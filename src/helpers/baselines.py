"""What a model scores without anatomy: the intensity-only models (a grey-level histogram, mean
and SD), the slice view alone (axial or coronal CT), and both fold by fold of a cross-validation.

Split from ``helpers.audit`` at its seam: the audit finds duplicates and runs the steps; these
are the baselines it scores (``helpers.audit`` re-exports them).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import metrics
from .data.splits import BLOCK_SIZE, SPLIT_NAMES as SPLITS, check_images, file_number
from .intervals import binomial_ci
from .params import FOLD_SPLITS


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
