"""Data-leakage and shortcut audit: duplicates across classes and splits, a global-statistics baseline.

The near-duplicate test (phash, Hamming threshold) and the grouped split live in
``helpers.data.splits``, because data prep needs them too; this module reports what they find.
The baselines it scores (an intensity-only model, the slice view alone, both fold by fold of a
cross-validation) live in ``helpers.baselines``; the frozen-feature probe and the audit step's
driver (``run_audit``) live here.
"""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

from . import atomic, models
from .intervals import binomial_ci
from .params import AuditParams, check
from .data import get_spec, load_prepared, prepare
from .data.splits import (
    HAMMING_THRESHOLD,
    HASH_SIZE,
    SPLIT_NAMES as SPLITS,
    SplitRefusedError,
    check_images,
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




# the baselines the audit scores (helpers.baselines)
from .baselines import (fold_baselines, shortcut_baseline, shortcut_choice, slice_views, view_balanced_blocks,
                        view_baseline, view_table)


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
