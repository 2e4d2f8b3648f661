"""Audit and the near-duplicate split (helpers.data.splits): duplicate detection, leakage-free
grouped split, shortcut baseline, real kidney slices, notebook."""

from __future__ import annotations

import io
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from helpers import audit, baselines
from helpers.data import splits as data_splits


REPO = Path(__file__).resolve().parents[1]
REAL = Path(__file__).resolve().parents[2] / "shared" / "real-sample"
N_PER_CLASS = 25  # one synthetic set per dataset, shared by every test here


@pytest.fixture(scope="module", autouse=True)
def module_data_root(tmp_path_factory):
    """Synthetic and prepared data under one temporary root for the module (never ./data)."""
    root = tmp_path_factory.mktemp("audit-data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HELPERS_DATA_ROOT", str(root))
        yield root


@pytest.fixture(scope="module")
def synthetic(module_data_root):
    """dataset -> Prepared synthetic set at 64 px (random split), made once per module.

    Default prepared folder under the module's data root, so the notebook test reuses it.
    """
    from helpers.data import load_prepared, prepare

    cache = {}

    def get(dataset):
        if dataset not in cache:
            cache[dataset] = load_prepared(prepare(dataset, image_size=64, balance=False, seed=0, n_per_class=N_PER_CLASS, progress=False))
        return cache[dataset]

    return get


def textured(n: int, size: int = 64, seed: int = 0) -> np.ndarray:
    """n distinct grayscale images with edges and texture, (n, 3, size, size) uint8 in 20..220.

    Sharp-edged ellipses on a coarse random background: like medical images, they carry
    detail at many scales. (Perfectly smooth images hash unstably: most of their DCT
    coefficients sit near the median, so noise flips many bits.)
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = np.zeros((n, 3, size, size), dtype=np.uint8)
    for k in range(n):
        coarse = (rng.uniform(0, 1, (8, 8)) * 255).astype(np.uint8)
        img = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC), dtype=float) * 0.4
        for _ in range(10):
            (cy, cx), (ry, rx) = rng.uniform(0.1, 0.9, 2), rng.uniform(0.04, 0.25, 2)
            img += rng.uniform(-90, 90) * ((((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2) < 1)
        out[k] = ((img - img.min()) / (np.ptp(img) + 1e-9) * 200 + 20).astype(np.uint8)[None]
    return out


def noised(img, sigma=6.0, seed=1):
    rng = np.random.default_rng(seed)
    return np.clip(img + rng.normal(0, sigma, img.shape), 0, 255).astype(np.uint8)


def brightened(img, delta=20):
    return np.clip(img.astype(int) + delta, 0, 255).astype(np.uint8)


def jpeg_recompressed(img, quality=60):
    buf = io.BytesIO()
    Image.fromarray(img.transpose(1, 2, 0)).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")).transpose(2, 0, 1).copy()


def planted(images: np.ndarray):
    """Originals plus an exact, a noised, a brightened and a JPEG copy of images 0..3.

    Returns (images, sha256-like ids, expected pairs as a set of (i, j)).
    """
    n = len(images)
    copies = [images[0].copy(), noised(images[1]), brightened(images[2]), jpeg_recompressed(images[3])]
    allimg = np.concatenate([images, np.stack(copies)])
    ids = [f"file{k}" for k in range(n)] + ["file0", "noised1", "bright2", "jpeg3"]
    expected = {(0, n), (1, n + 1), (2, n + 2), (3, n + 3)}
    return allimg, ids, expected


# --------------------------------------------------------------------------- duplicates


def test_hamming_pairs_matches_bitwise_brute_force():
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**63, size=(37, 4), dtype=np.int64).astype(np.uint64)
    hashes[5] = hashes[2]
    hashes[5, 1] ^= np.uint64(0b1011)  # 3 bits from image 2
    i, j, d = data_splits.hamming_pairs(hashes, threshold=256, max_block_elements=50)  # many blocks
    assert len(i) == 37 * 36 // 2 and (i < j).all()
    for a, b, dist in zip(i, j, d):
        assert dist == sum(bin(int(x)).count("1") for x in hashes[a] ^ hashes[b])
    i, j, d = data_splits.hamming_pairs(hashes, threshold=3)
    assert list(zip(i, j, d)) == [(2, 5, 3)]


def test_planted_exact_and_near_copies_are_found_and_nothing_else():
    images, ids, expected = planted(textured(40, 64))
    n = len(images)
    classes = np.array(["A", "B"] * (n // 2))
    splits = np.array(["train", "val", "test", "train"] * (n // 4))
    pairs = audit.duplicate_pairs(images, [f"{c}/{k}.png" for k, c in enumerate(classes)], classes, splits, sha256=ids)
    assert list(pairs.columns) == audit.PAIR_COLUMNS
    assert set(zip(pairs["i"], pairs["j"])) == expected
    assert pairs.set_index(["i", "j"]).loc[(0, 40), "exact"] and pairs["exact"].sum() == 1
    assert (pairs["distance"] <= data_splits.HAMMING_THRESHOLD).all()

    groups = data_splits.near_duplicate_groups(images)
    assert len(np.unique(groups)) == n - 4
    for a, b in expected:
        assert groups[a] == groups[b]

    summary = audit.duplicate_summary(pairs, splits).set_index("measure")["value"]
    assert summary["near-duplicate pairs (incl. exact)"] == 4
    assert summary["exact duplicate pairs (sha256)"] == 1
    assert summary["pairs across splits"] == int((pairs["split_i"] != pairs["split_j"]).sum())


def test_exact_duplicates_found_without_sha256_by_pixels():
    images = textured(6, 32)
    images = np.concatenate([images, images[2:3]])
    pairs = audit.duplicate_pairs(images, list("abcdefg"), ["x"] * 7, ["train"] * 7)
    assert pairs[["i", "j", "exact", "distance"]].values.tolist() == [[2, 6, True, 0]]


@pytest.mark.parametrize("dataset", ["covid_radiography", "ct_kidney"])
def test_no_false_pairs_among_distinct_synthetic_images(dataset, synthetic):
    """The embedded synthetic phantoms are all distinct images: none may pair."""
    prepared = synthetic(dataset)
    assert prepared.manifest["sha256"].nunique() == len(prepared.images)
    pairs = audit.find_duplicates(prepared, progress=False)
    assert pairs.empty, pairs.head()
    # The planted copies of four phantoms are still found among them.
    images, ids, expected = planted(prepared.images)
    found = audit.duplicate_pairs(images, ids, ids, ["train"] * len(ids), sha256=ids)
    assert set(zip(found["i"], found["j"])) == expected


# --------------------------------------------------------------------------- grouped split


def clustered(n_groups_per_class=(8, 7, 9), copies=(1, 4), size=64, seed=0):
    """Images in groups of near-copies (noised), returns (images, labels, true group ids)."""
    rng = np.random.default_rng(seed)
    base = textured(sum(n_groups_per_class), size, seed)
    images, labels, truth = [], [], []
    g = 0
    for label, n_groups in enumerate(n_groups_per_class):
        for _ in range(n_groups):
            for c in range(int(rng.integers(*copies, endpoint=True))):
                images.append(base[g] if c == 0 else noised(base[g], 4, seed=g * 10 + c))
                labels.append(label)
                truth.append(g)
            g += 1
    return np.stack(images), np.array(labels), np.array(truth)


def test_grouped_split_is_leakage_free_stratified_and_deterministic():
    class_names = ["A", "B", "C"]
    images, labels, truth = clustered((10, 10, 12))
    groups = data_splits.near_duplicate_groups(images)
    # The detector recovers the planted groups exactly.
    assert pd.crosstab(groups, truth).astype(bool).sum(axis=1).max() == 1
    assert len(np.unique(groups)) == len(np.unique(truth))

    split = data_splits.grouped_split(labels, groups, class_names, seed=0)
    assert set(split) == {"train", "val", "test"}
    for g in np.unique(groups):
        assert len(set(split[groups == g])) == 1, f"group {g} spans splits"
    # Leakage check through the audit itself: no near-duplicate pair crosses splits.
    pairs = audit.duplicate_pairs(images, [str(k) for k in range(len(images))], labels, split)
    assert len(pairs) > 0
    assert (pairs["split_i"] == pairs["split_j"]).all()
    # Stratified: every class in every split, train the largest share of each class.
    counts = pd.crosstab(labels, split)
    assert (counts > 0).all().all()
    share = counts.div(counts.sum(axis=1), axis=0)
    assert (share["train"] > 0.4).all() and (share["train"] < 0.8).all()
    assert (data_splits.grouped_split(labels, groups, class_names, seed=0) == split).all()


def test_random_split_of_the_same_images_leaks():
    """Control for the test above: the audit does see leakage when the split ignores groups."""
    images, labels, _ = clustered((10, 10, 12))
    split = np.random.default_rng(0).choice(["train", "val", "test"], size=len(labels), p=[0.6, 0.2, 0.2])
    pairs = audit.duplicate_pairs(images, [str(k) for k in range(len(images))], labels, split)
    assert (pairs["split_i"] != pairs["split_j"]).any()


def test_grouped_split_fills_every_split_from_three_unequal_groups():
    # Like the real kidney 'Tumor' sample: one scan of 38 slices and two single slices.
    labels = np.array([0] * 40 + [1] * 30)
    groups = np.array([0] * 38 + [1, 2] + list(range(3, 33)))
    for seed in range(5):
        split = data_splits.grouped_split(labels, groups, ["Tumor", "Other"], seed=seed)
        assert (split[:38] == "train").all()
        assert sorted(split[38:40]) == ["test", "val"]
        assert pd.Series(split[40:]).value_counts().to_dict() == {"train": 18, "val": 6, "test": 6}


def test_grouped_split_mixed_group_goes_whole_and_counts_for_its_majority():
    labels = np.array([0] * 30 + [1] * 30)
    groups = np.arange(60) // 3  # groups of 3, each a single class
    groups[28:32] = 100  # one group mixing 2 images of class 0 and 2 of class 1 (tie -> class 0)
    split = data_splits.grouped_split(labels, groups, ["A", "B"], seed=1)
    assert len(set(split[groups == 100])) == 1
    table = data_splits.groups_per_class(labels, groups, ["A", "B"]).set_index("class")
    assert table.loc["A", "groups"] + table.loc["B", "groups"] == len(np.unique(groups))


def test_too_few_groups_is_refused_naming_class_and_count():
    labels = np.array([0] * 20 + [1] * 20 + [2] * 20)
    groups = np.arange(60)  # classes A and C: 20 singleton groups each
    groups[20:30], groups[30:40] = 500, 501  # class B: 2 groups (two scans)
    with pytest.raises(ValueError, match=r"class 'B' has only 2 independent near-duplicate groups \(20 images\).*split='random' knowingly.*more data"):
        data_splits.grouped_split(labels, groups, ["A", "B", "C"], seed=0)
    groups[20:40] = 500
    with pytest.raises(ValueError, match=r"class 'B' has only 1 independent near-duplicate group \("):
        data_splits.grouped_split(labels, groups, ["A", "B", "C"], seed=0)


def test_grouped_split_rejects_bad_ratios_and_shapes():
    with pytest.raises(ValueError, match="ratios"):
        data_splits.grouped_split(np.zeros(10, int), np.arange(10), ["A"], 0, ratios=(0.5, 0.5, 0))
    with pytest.raises(ValueError, match="labels and groups"):
        data_splits.grouped_split(np.zeros(10, int), np.arange(9), ["A"], 0)


# --------------------------------------------------------------------------- shortcut baseline


def test_shortcut_baseline_learns_brightness_and_reports_ci():
    """Classes that differ only in brightness: the histogram model must find it."""
    rng = np.random.default_rng(0)
    base = textured(120, 32)
    labels = np.repeat([0, 1, 2], 40)
    images = np.clip(base.astype(int) // 2 + labels[:, None, None, None] * 60, 0, 255).astype(np.uint8)
    split = rng.choice(["train", "val", "test"], size=120, p=[0.6, 0.2, 0.2])
    prepared = SimpleNamespace(images=images, labels=labels, split=split, class_names=["dark", "mid", "bright"])
    table = baselines.shortcut_baseline(prepared).set_index("model")
    assert list(table.index) == ["majority class", "logistic regression", "gradient boosting"]
    assert table.loc["logistic regression", "test_accuracy"] > 0.9
    assert table.loc["majority class", "test_accuracy"] < 0.6
    assert (table["ci_low"] <= table["test_accuracy"]).all() and (table["test_accuracy"] <= table["ci_high"]).all()
    assert {"recall_dark", "recall_mid", "recall_bright", "test_auc_macro", "selected"} <= set(table.columns)


@pytest.mark.parametrize("dataset", ["covid_radiography", "ct_kidney"])
def test_shortcut_baseline_runs_on_both_synthetic_datasets(dataset, synthetic):
    prepared = synthetic(dataset)
    table = baselines.shortcut_baseline(prepared)
    assert len(table) == 3
    assert table["n_test"].iloc[0] == int((np.asarray(prepared.split) == "test").sum())
    assert table["test_accuracy"].between(0, 1).all()
    assert {f"recall_{c}" for c in prepared.class_names} <= set(table.columns)


# --------------------------------------------------------------------------- real kidney CT sample

needs_real = pytest.mark.skipif(not (REAL / "ct_kidney").is_dir(), reason=f"real-image sample not found at {REAL}")


@needs_real
@pytest.mark.real
def test_real_kidney_sample_neighbouring_slices_are_near_duplicates(tmp_path):
    res = audit.run_audit(dataset="ct_kidney", data_dir=str(REAL / "ct_kidney"), image_size=128, out_dir=str(tmp_path / "audit"), progress=False)
    prepared, pairs = res["prepared"], res["pairs"]
    slice_no = np.array([int(re.search(r"\((\d+)\)", Path(p).name).group(1)) for p in prepared.paths])
    classes = np.asarray(prepared.class_names)[prepared.labels]

    # Pairs of neighbouring slices (numbers 1 or 2 apart, same class folder) found as near-duplicates.
    found = set(zip(pairs["i"], pairs["j"]))
    neighbours = [
        (a, b)
        for a in range(len(slice_no))
        for b in range(a + 1, len(slice_no))
        if classes[a] == classes[b] and abs(slice_no[a] - slice_no[b]) <= 2
    ]
    hit = np.mean([pair in found for pair in neighbours])
    assert hit > 0.8, f"only {hit:.0%} of neighbouring-slice pairs detected"
    gap = np.abs(slice_no[pairs["i"]] - slice_no[pairs["j"]])
    assert (gap <= 2).sum() >= 200
    # With near-copies in every fold even random convolutional features separate the classes,
    # and folds that keep groups together are impossible (too few groups per class).
    probe = res["probe"].set_index(["features", "folds"])
    for features in ("ImageNet", "random init"):
        assert probe.loc[(features, "images (random folds)"), "accuracy"] > 0.9
        assert "not possible" in probe.loc[(features, "near-duplicate groups"), "note"]
    assert (pairs["class_i"] == pairs["class_j"]).all(), "a near-duplicate pair spans kidney classes"

    # Random split leaks: most test slices have a neighbour in train.
    s = res["summary"].set_index("measure")["value"]
    assert s["test images with a near-copy in train"] > 0.5 * s["test images"]
    # Few scans per class: prepare(split="grouped") refuses, naming the class with fewest groups,
    # and the audit reports that instead of crashing.
    table = res["groups_table"].set_index("class")
    assert (table["groups"] <= 6).all()
    worst = table["groups"].idxmin()
    assert res["grouped_counts"] is None
    assert f"class '{worst}' has only {table.loc[worst, 'groups']} " in res["grouped_error"]
    assert set(res["shortcut"]["split"]) == {"random"}
    assert (tmp_path / "audit" / "closest_pairs.png").stat().st_size > 0


@pytest.mark.skipif(not (REAL / "covid_radiography").is_dir(), reason=f"real-image sample not found at {REAL}")
@pytest.mark.real
def test_real_chest_xrays_of_different_patients_do_not_pair(tmp_path):
    from helpers.data import load_prepared, prepare

    prepared = load_prepared(
        prepare("covid_radiography", data_dir=str(REAL / "covid_radiography"), image_size=128, balance=False, seed=0, out_dir=str(tmp_path / "c"), progress=False)
    )
    pairs = audit.find_duplicates(prepared, progress=False)
    assert pairs.empty, pairs.head()


# --------------------------------------------------------------------------- notebook


@pytest.mark.skipif(not (REAL / "covid_radiography").is_dir(), reason=f"real-image sample not found at {REAL}")
@pytest.mark.real
def test_frozen_imagenet_features_beat_random_features_on_real_chest_xrays(tmp_path, monkeypatch):
    """The feature probe on the 120 real chest X-rays: ImageNet features separate the classes
    better than random convolutional features of the same network (a wrong weight mapping
    or normalisation would make the two alike)."""
    from helpers import data

    monkeypatch.setenv("HELPERS_DATA_ROOT", str(tmp_path))
    prepared = data.load_prepared(data.prepare("covid_radiography", data_dir=str(REAL / "covid_radiography"),
                                               image_size=96, progress=False))
    from helpers.data.splits import near_duplicate_groups

    probe = audit.feature_probe(prepared, groups=near_duplicate_groups(prepared.images)).set_index(["features", "folds"])
    imagenet = probe.loc[("ImageNet", "images (random folds)")]
    random = probe.loc[("random init", "images (random folds)")]
    assert imagenet["n"] == 120 and imagenet["ci_low"] <= imagenet["accuracy"] <= imagenet["ci_high"]
    assert imagenet["accuracy"] > random["accuracy"] > 1 / 3


# ---------------------------------------------------------------- slice view (CT)

def _silhouette(height: int, width: int, size: int = 128) -> np.ndarray:
    image = np.zeros((3, size, size), dtype=np.uint8)
    top, left = (size - height) // 2, (size - width) // 2
    image[:, top:top + height, left:left + width] = 120
    image[:, 5, 5] = 255                                   # a speck the opening removes
    return image


def test_a_tall_body_reads_as_coronal_a_wide_one_as_axial():
    tall, wide, empty = _silhouette(110, 60), _silhouette(70, 110), np.zeros((3, 128, 128), np.uint8)
    assert baselines.body_aspect(tall) == pytest.approx(110 / 60) and baselines.body_aspect(wide) == pytest.approx(70 / 110)
    assert list(baselines.slice_views(np.stack([tall, wide, empty]))) == ["coronal", "axial", "axial"]


def test_the_view_alone_predicts_what_it_can():
    views = np.array(["coronal", "axial", "axial", "coronal", "axial", "axial"] * 3)
    labels = np.array([0, 1, 2, 0, 1, 1] * 3)
    split = np.array(["train"] * 6 + ["val"] * 6 + ["test"] * 6)
    prepared = SimpleNamespace(labels=labels, split=split, class_names=["Cyst", "Normal", "Stone"],
                               images=np.zeros((18, 3, 8, 8), np.uint8))
    res = baselines.view_baseline(prepared, views)
    assert res["rule"] == {"axial": "Normal", "coronal": "Cyst"}
    assert res["test_accuracy"] == pytest.approx(5 / 6) and res["ci_low"] < 5 / 6 < res["ci_high"]
    table = baselines.view_table(prepared, views).set_index(["class", "split"])
    assert table.loc[("Cyst", "all"), "coronal_share"] == 1 and table.loc[("Stone", "test"), "coronal"] == 0


def test_a_class_whose_coronal_slices_fill_whole_blocks_has_no_proportional_block_test_set():
    # Cyst: 4 blocks of 10, the last one all coronal (25 %); a 15-25 % test set is one block:
    # 0 % or 100 % coronal. Normal: one coronal slice in each block, so any block keeps 10 %.
    paths = [f"Cyst/Cyst- ({i}).jpg" for i in range(40)] + [f"Normal/Normal- ({i}).jpg" for i in range(40)]
    labels = [0] * 40 + [1] * 40
    views = ["axial"] * 30 + ["coronal"] * 10 + ["coronal" if i % 10 == 0 else "axial" for i in range(40)]
    split = (["train"] * 30 + ["test"] * 10) * 2
    table = baselines.view_balanced_blocks(paths, labels, ["Cyst", "Normal"], split, views, block=10).set_index("class")
    assert table.loc["Cyst", "coronal (%)"] == 25 and table.loc["Cyst", "block split test (%)"] == 100
    assert table.loc["Cyst", "closest possible test (%)"] == 0 and table.loc["Normal", "closest minus all (pp)"] == 0
    verdict = baselines.view_blocks_verdict(table.reset_index())
    assert "tests Cyst on 100 % coronal slices (all Cyst: 25 %)" in verdict
    assert "keeps the views of Cyst in proportion (at best 0 %)" in verdict and "Normal" not in verdict
    shifted = table.reset_index().assign(**{"block split test (%)": [25.0, 40.0]})   # Normal's test: 40 %
    assert "For Normal a choice of blocks closer in view exists (10 % coronal)" in baselines.view_blocks_verdict(shifted)


REAL_STUDY_KIDNEY = REPO.parent / "shared" / "real-study" / "ct_kidney"


@pytest.mark.skipif(not REAL_STUDY_KIDNEY.is_dir(), reason=f"{REAL_STUDY_KIDNEY} not here")
def test_the_view_measure_finds_the_coronal_slices_the_real_study_readme_counts():
    counts = {}
    for folder in sorted(p for p in REAL_STUDY_KIDNEY.iterdir() if p.is_dir()):
        images = np.stack([np.asarray(Image.open(f).convert("L")) for f in sorted(folder.glob("*.jpg"))])
        counts[folder.name] = (len(images), int((baselines.slice_views(images) == "coronal").sum()))
    assert counts == {"Cyst": (120, 36), "Normal": (200, 69), "Stone": (194, 0), "Tumor": (200, 89)}


def test_the_baselines_fold_by_fold_pool_every_slice_once_with_a_block_interval():
    """Brightness that gives the class away, over a 5-fold cross-validation of whole blocks: each
    fold's row scores its own test blocks; the pooled row tests every slice once, and its
    accuracy is the folds' weighted by their test slices."""
    from helpers.params import FOLD_SPLITS

    per_class, classes = 150, ["Cyst", "Normal", "Stone"]
    labels = np.repeat(np.arange(3), per_class)
    paths = [f"{classes[k]}/{classes[k]}- ({n}).jpg" for k in range(3) for n in range(per_class)]
    rng = np.random.default_rng(0)
    images = np.clip(textured(len(labels), 32).astype(int) // 2 + labels[:, None, None, None] * 40
                     + rng.integers(-10, 10, len(labels))[:, None, None, None], 0, 255).astype(np.uint8)
    groups = data_splits.block_groups(paths, labels)
    folds = {f: SimpleNamespace(images=images, labels=labels, paths=paths, class_names=classes, info={},
                                split=data_splits.fold_split(labels, groups, classes, k, len(FOLD_SPLITS), seed=0,
                                                             group_kind="block"))
             for k, f in enumerate(FOLD_SPLITS)}
    views = {p: ("coronal" if k == 0 else "axial") for p, k in zip(paths, labels)}
    table = baselines.fold_baselines(folds, views)
    per_fold, pooled = table.iloc[:-1], table.iloc[-1]
    assert list(per_fold["fold"]) == [1, 2, 3, 4, 5] and pooled["fold"] == "pooled"
    assert pooled["test slices"] == len(labels) == per_fold["test slices"].sum()
    for name in ("intensity-only", "view alone", "majority class"):
        assert pooled[name] == pytest.approx((per_fold[name] * per_fold["test slices"]).sum() / len(labels))
        assert (table[f"{name} low"] <= table[name]).all() and (table[name] <= table[f"{name} high"]).all()
    assert pooled["intensity-only"] > 0.8 and pooled["majority class"] == pytest.approx(1 / 3, abs=0.05)
    # the view gives Cyst away and nothing else: Normal or Stone by the training majority
    assert 0.5 < pooled["view alone"] < 0.75
    shown = baselines.fold_baselines_display(table)
    assert list(shown["fold"]) == ["1", "2", "3", "4", "5", "pooled"]
    # the pages: the pooled score with its interval and the folds' spread, beside the networks
    from helpers import robustness

    text = robustness.fold_baselines_text({"ct_kidney_originals": table})
    assert f"{100 * pooled['intensity-only']:.1f}% [{100 * pooled['intensity-only low']:.1f}, " in text
    assert f"{100 * per_fold['intensity-only'].min():.1f}% to {100 * per_fold['intensity-only'].max():.1f}%" in text
    arms = pd.DataFrame([{"dataset": "ct_kidney_originals", "split": "cv", "protocol": "", "arch": "efficientnet_lite0",
                          "arm": "imagenet", "accuracy": 0.9612}])
    assert "ImageNet 96.1%" in robustness.fold_baselines_text({"ct_kidney_originals": table}, arms)
    assert "no pooled score" in robustness.fold_baselines_text({"ct_kidney_originals": per_fold})
    assert list(robustness.fold_baselines_table({"ct_kidney_originals": table})["data"].unique()) == ["kidney CT, original slices"]
    # four folds cannot be pooled; a slice tested twice is refused
    assert "pooled" not in set(baselines.fold_baselines({f: folds[f] for f in FOLD_SPLITS[:4]})["fold"])
    with pytest.raises(ValueError, match="more than one fold"):
        baselines.fold_baselines({**folds, FOLD_SPLITS[1]: folds[FOLD_SPLITS[0]]})
