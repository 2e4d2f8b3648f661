"""What a study's design can estimate: the units its intervals resample (test images, or blocks
of CT slices), the folds of a cross-validation pooled into one answer with a table per fold, and
the limits under which a difference between arms cannot be estimated at all (the pages then say
"cannot be estimated, because ...")."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from . import metrics, models
from .data import get_spec
from .data.splits import BLOCK_SIZE, block_groups
from .params import ARMS, FOLD_SPLITS, FOLDS, PAIR

POOLED = "cv"   # the split of a cross-validation's folds pooled into one run (pool_folds)


def resampled_unit(dataset: str) -> str:
    """What the intervals resample: images, or blocks of consecutive slices (CT: one scan's
    slices are not independent)."""
    return f"blocks of {BLOCK_SIZE} consecutive slices" if get_spec(dataset).ct_slices else "test images"


def groups_of(dataset: str, paths, labels) -> np.ndarray | None:
    """What the bootstrap draws: None (single images), or a group id per image (blocks of
    consecutive slices, where the dataset is CT slices)."""
    return block_groups(list(paths), np.asarray(labels)) if get_spec(dataset).ct_slices else None


# What a design must hold for a difference between arms to be estimated at all. With fewer test
# blocks of a class than this, a bootstrap over blocks draws that class's whole test set or none
# of it, so the interval measures the class mix, not skill. With more test images having a
# near-copy in training than not, the test asks for recall of scans seen in training.
MIN_TEST_BLOCKS = 5
MAX_NEAR_COPY_SHARE = 0.5


def design_limit(runset: metrics.RunSet, split: str, near_copy_share: float | None) -> str:
    """Why this dataset's ``split`` cannot estimate a difference between arms ("" when it can),
    as the end of a sentence that starts "cannot be estimated, because"."""
    if near_copy_share is not None and near_copy_share > MAX_NEAR_COPY_SHARE:
        return (f"{near_copy_share:.0%} of its test images have a near-copy in training: it measures recall "
                "of scans seen in training, not accuracy on new ones")
    run = next((r for r in runset.runs if r.split == split), None)
    blocks = blocks_per_class(run) if run is not None else None
    if blocks is None:
        return ""
    few = {name: n for name, n in blocks.items() if n < MIN_TEST_BLOCKS}
    if not few:
        return ""
    listed = ", ".join(f"{n} of {name}" for name, n in few.items())
    return (f"its test split holds too few blocks of slices ({listed}; at least {MIN_TEST_BLOCKS} per class are "
            "needed): a resample of blocks holds a class's whole test set or none of it, so an interval "
            "measures the class mix, not the difference between arms")


def blocks_per_class(run: metrics.Run) -> dict[str, int] | None:
    """Class -> the number of blocks of consecutive slices its test images come from (the
    independent units an interval resamples), or None where the dataset is not CT slices."""
    groups = groups_of(run.dataset, run.predictions["path"], run.labels)
    if groups is None:
        return None
    blocks = pd.Series(groups).groupby(run.labels).nunique()
    return {run.class_names[k]: int(blocks.get(k, 0)) for k in range(len(run.class_names))}


def with_pooled(data_info: dict) -> dict:
    """``data_info`` (the records' prepared-folder infos by "<dataset>-<split>") with one more
    entry per cross-validation, "<dataset>-cv": its folds' test near-copy shares pooled, each
    fold weighted by its test images (every image is tested in one fold), once every fold is there."""
    out = dict(data_info)
    for ds in {key.rsplit("-", 1)[0] for key in data_info}:
        folds = [data_info.get(f"{ds}-{split}") for split in FOLD_SPLITS]
        if any(f is None or "test" not in f.get("near_copy_share", {}) for f in folds):
            continue
        n_test = [sum(c["test"] for c in f["counts"].values()) for f in folds]
        share = sum(f["near_copy_share"]["test"] * n for f, n in zip(folds, n_test)) / sum(n_test)
        out[f"{ds}-{POOLED}"] = {"near_copy_share": {"test": share}}
    return out


def design_limits(runsets: dict[str, metrics.RunSet], data_info: dict) -> dict[tuple[str, str], str]:
    """(dataset, split) -> :func:`design_limit` ("" where the design can estimate), for every
    split a dataset's runs used; ``data_info``: the records' prepared-folder infos by stem."""
    out = {}
    for ds, runset in runsets.items():
        for split in sorted({r.split for r in runset.runs}):
            share = data_info.get(f"{ds}-{split}", {}).get("near_copy_share", {}).get("test")
            out[(ds, split)] = design_limit(runset, split, share)
    return out


def with_limits(diffs: pd.DataFrame, limits: dict[tuple[str, str], str]) -> pd.DataFrame:
    """``diffs`` with a ``limit`` column: why each row's design cannot estimate it, or ""."""
    return diffs.assign(limit=[limits.get((d, s), "") for d, s in zip(diffs["dataset"], diffs["split"])])


def pool_folds(runset: metrics.RunSet) -> metrics.RunSet:
    """Each configuration and seed whose every fold (``params.FOLD_SPLITS``) is recorded becomes
    one run with split ``cv``: its test predictions are all the folds' together, each image
    tested once, so accuracy is pooled over the folds and an interval resamples the blocks of
    the whole set. Folds of a configuration not yet complete stay as they are."""
    import dataclasses

    folds: dict = {}
    for r in runset.runs:
        if r.split in FOLD_SPLITS:
            folds.setdefault(r.id.model_copy(update={"split": POOLED}), {})[r.split] = r
    pooled, used = [], set()
    for rid, by_fold in folds.items():
        if len(by_fold) == FOLDS:
            runs = [by_fold[f] for f in FOLD_SPLITS]
            predictions = pd.concat([r.predictions for r in runs], ignore_index=True)
            if predictions["path"].duplicated().any():
                raise ValueError(f"{rid.key}: an image is tested in more than one fold")
            pooled.append(dataclasses.replace(runs[0], id=rid, predictions=predictions))
            used |= {id(r) for r in runs}
    if not pooled:
        return runset
    return dataclasses.replace(runset, runs=[r for r in runset.runs if id(r) not in used] + pooled)


def fold_table(runset: metrics.RunSet, data_info: dict, arch: str = models.REFERENCE_ARCH) -> pd.DataFrame:
    """Per fold of a cross-validation (the unpooled runs): each arm's test accuracy, ImageNet −
    scratch on the fold's test images, and the share of them with a near-copy in training."""
    rows = {}
    for r in runset.runs:
        if r.split in FOLD_SPLITS and r.arch == arch and r.id.protocol == "" and r.arm in ARMS:
            row = rows.setdefault(r.split, {"fold": FOLD_SPLITS.index(r.split) + 1, "test images": len(r.predictions)})
            row[r.arm] = float((r.labels == r.preds).mean())
    for split, row in rows.items():
        if PAIR[0] in row and PAIR[1] in row:
            row["gap"] = row[PAIR[0]] - row[PAIR[1]]
        share = data_info.get(f"{runset.dataset}-{split}", {}).get("near_copy_share", {}).get("test")
        row["near-copy share"] = share if share is not None else math.nan
    return pd.DataFrame(sorted(rows.values(), key=lambda r: r["fold"]))
