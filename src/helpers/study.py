"""The reference study's answer, read from its committed records (``helpers.records``).

Per dataset and split: each arm's test accuracy and the differences between arms, with 95%
intervals from a two-level bootstrap over seeds and test images together
(:func:`intervals.two_level_ci`: each resample draws the seeds with replacement and the test
images, or blocks of consecutive CT slices, with replacement), so an interval holds both the
test set's sampling error and the seed-to-seed variation of training. A difference between two
arms with the same seeds pairs them by seed (seed k of one arm beside seed k of the other: both
train on the same seed-drawn batch order) and by image; the per-seed gaps, with a t-interval
over them, sit beside it. A side with one seed has no seed variance to resample, and its
interval says so (``interval`` column). Data efficiency: accuracy against the share of the
training split with the same intervals, and the ImageNet − scratch gap per share, paired by image
and seed (each seed draws its own subset). The papers' published numbers sit beside ours.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from . import experiment as ex
from . import intervals, metrics, models, records
from .designs import POOLED, blocks_per_class, groups_of, pool_folds, resampled_unit
from .params import ARMS, FOLD_SPLITS, FOLDS, PAIR, arm_title, same_training
from .report import arm_color
from .intervals import CONFIDENCE
from .data.splits import BLOCK_SIZE

COMPARISONS = (PAIR, ("imagenet", "linear_probe"))
# Each split as the pages name it, in the pages' order: (in prose, in a narrow table cell). The
# one table of them: the pages' other names are derived from it.
SPLIT_NAMES = {"random": ("random split", "random"),
               "block": (f"blocks of {BLOCK_SIZE} consecutive slices", "blocks"),
               "grouped": ("near-duplicate groups", "groups"),
               "given": ("the download's own split", "given split"),
               **{f: (f"fold {k + 1} of {FOLDS} over blocks of {BLOCK_SIZE} consecutive slices", f"blocks, fold {k + 1}")
                  for k, f in enumerate(FOLD_SPLITS)},
               POOLED: (f"{FOLDS}-fold cross-validation over blocks of {BLOCK_SIZE} consecutive slices",
                      f"blocks, {FOLDS} folds")}
SPLIT_TITLES = {split: prose for split, (prose, _) in SPLIT_NAMES.items()}
SPLIT_CELLS = {split: cell for split, (_, cell) in SPLIT_NAMES.items()}


def load(exp: dict, root: str | Path = records.ROOT, answer: bool = True, pool: bool = True) -> dict[str, metrics.RunSet]:
    """dataset -> the RunSet of its records (missing runs listed in ``.missing``). With
    ``answer``, each learning-rate sweep keeps only the rate it chose on validation, which joins
    the runs it tuned (RunId.tuning "tuned"); the other rates' test scores are never read. With
    ``pool``, the folds of a cross-validation, once all are recorded, become one run (:func:`pool_folds`)."""
    out = {}
    for ds in exp["datasets"]:
        dirs = records.record_dirs(exp, ds, root)
        if dirs:
            out[ds] = metrics.load_runs(ds, runs=dirs)
    if not answer:
        return out
    out = {ds: _borrow(_answer(rs, exp, root), exp) for ds, rs in out.items()}
    return {ds: pool_folds(rs) for ds, rs in out.items()} if pool else out


def _borrow(runset: metrics.RunSet, exp: dict) -> metrics.RunSet:
    """A protocol that trains an arm exactly as the defaults do (``params.same_training``; own
    input normalisation leaves scratch arms as they were) takes that arm's runs from the
    defaults, for the networks it trains, rather than training them again."""
    import dataclasses

    extra = []
    for protocol, settings in exp["protocols"].items():
        archs = {(rid.arch, rid.head, rid.split) for rid in ex.runs(exp)
                 if rid.protocol == protocol and rid.dataset == runset.dataset}
        mine = {(r.arch, r.head, r.split, r.arm) for r in runset.runs if r.id.protocol == protocol}
        for r in runset.runs:
            if (r.id.protocol == "" and r.id.train_fraction == 1 and (r.arch, r.head, r.split) in archs
                    and r.arm in ARMS and (r.arch, r.head, r.split, r.arm) not in mine
                    and same_training(exp["defaults"], settings, r.arm)):
                extra.append(dataclasses.replace(r, id=r.id.model_copy(update={"protocol": protocol})))
    return dataclasses.replace(runset, runs=runset.runs + extra) if extra else runset


def sweep_choices(exp: dict, root: str | Path = records.ROOT) -> list[dict]:
    """Each learning-rate sweep with its rates' validation scores and the rate it chose (None
    while one of its runs is not recorded): the rows of the learning-rate table."""
    rows = []
    for sweep in ex.all_sweeps(exp):
        scores, chosen = records.recorded_sweep(sweep, root)
        first = next(iter(sweep.candidates.values()))
        rows.append({"dataset": first.dataset, "arch": first.arch, "head": first.head, "arm": first.arm,
                     "split": first.split, "protocol": first.protocol, "by": sweep.by, "chosen": chosen,
                     "scores": scores, "keys": {lr: r.key for lr, r in sweep.candidates.items()}})
    return rows


def lr_table(exp: dict, root: str | Path = records.ROOT) -> pd.DataFrame:
    """Validation accuracy per learning rate, per arch and arm (long format; ``chosen`` marks
    the rate each sweep picked)."""
    rows = []
    for sw in sweep_choices(exp, root):
        for lr in sorted(sw["keys"]):
            sc = sw["scores"].get(lr)
            rows.append({**{k: sw[k] for k in ("dataset", "arch", "head", "arm", "split", "protocol", "by")},
                         "lr": lr, "best_val_acc": sc["best_val_acc"] if sc else math.nan,
                         "min_val_loss": sc["min_val_loss"] if sc else math.nan,
                         "best_epoch": sc["best_epoch"] if sc else None,
                         "stopped_by": sc["stopped_by"] if sc else "not recorded",
                         "chosen": sw["chosen"] == lr})
    return pd.DataFrame(rows, columns=["dataset", "arch", "head", "arm", "split", "protocol", "by", "lr",
                                       "best_val_acc", "min_val_loss", "best_epoch", "stopped_by", "chosen"])


def _answer(runset: metrics.RunSet, exp: dict, root) -> metrics.RunSet:
    import dataclasses

    chosen, dropped = {}, set()
    for sw in sweep_choices(exp, root):
        if sw["dataset"] != runset.dataset:
            continue
        for lr, key in sw["keys"].items():
            if lr == sw["chosen"]:
                chosen[key] = lr
            else:   # not chosen, or its sweep is not complete yet
                dropped.add(key)
    kept = []
    for r in runset.runs:
        if r.id.key in dropped:
            continue
        if r.id.key in chosen:
            r = dataclasses.replace(r, id=r.id.model_copy(update={"tuning": "tuned"}))
        kept.append(r)
    return dataclasses.replace(runset, runs=kept)


def correctness(runs: list[metrics.Run]) -> pd.DataFrame:
    """Test images x seeds: 1 where the run of that seed got the image right."""
    cols = {}
    for r in sorted(runs, key=lambda r: r.seed):
        p = r.predictions.set_index("path")
        cols[r.seed] = (p["label"] == p["pred"]).astype(float)
    frame = pd.DataFrame(cols)
    if frame.isna().any().any():
        raise ValueError(f"runs {[str(r.path) for r in runs]} were tested on different images")
    return frame


def bootstrap_ci(values: np.ndarray, confidence: float = CONFIDENCE, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-image values."""
    ci = intervals.bootstrap_ci(values, confidence, seed=np.random.default_rng(seed), method="percentile")
    return ci.low, ci.high


INTERVAL_METHODS = {   # key -> what the bootstrap resamples ({unit}: images, or blocks of CT slices)
    "seeds+images": "seeds and {unit}",
    "seeds+images, paired seeds": "seeds (paired by seed) and {unit}",
    "images": "{unit} only (one seed)",
    "images, seeds of one side": "{unit}, and seeds on the side with several (not the one-seed side's)",
}


def interval_method(n_a: int, n_b: int | None = None, paired: bool = False) -> str:
    """The key of :data:`INTERVAL_METHODS` that an interval of ``n_a`` seeds (against ``n_b``)
    used."""
    if n_b is None:
        return "seeds+images" if n_a > 1 else "images"
    if n_a > 1 and n_b > 1:
        return "seeds+images, paired seeds" if paired else "seeds+images"
    return "images" if n_a == n_b == 1 else "images, seeds of one side"


def describe_interval(method: str, dataset: str, short: bool = False) -> str:
    """An interval's method in a reader's words, with what it resamples for ``dataset``:
    "two-level bootstrap over seeds and test images" (``short``: "seeds and test images")."""
    over = INTERVAL_METHODS[method].format(unit=resampled_unit(dataset))
    if short:
        return over
    return ("two-level bootstrap over " if method.startswith("seeds") else "bootstrap over ") + over


def seed_interval(dataset: str, a: pd.DataFrame, b: pd.DataFrame | None, runs: list[metrics.Run],
                  confidence: float = CONFIDENCE) -> tuple[intervals.Interval, str]:
    """The headline interval of an accuracy (``a``: images x seeds correctness) or of a
    difference (``a`` − ``b``, the same images): :func:`intervals.two_level_ci`, paired by seed
    where both sides have the same seeds, and the method key it used."""
    labels = runs[0].predictions.set_index("path").loc[a.index, "label"]
    groups = groups_of(dataset, a.index, labels)
    paired = b is not None and list(a.columns) == list(b.columns) and a.shape[1] > 1
    # blocks of slices are drawn within each class: a resample keeps every class's share of the test set
    ci = intervals.two_level_ci(a.to_numpy(), None if b is None else b.loc[a.index].to_numpy(), groups,
                                paired_seeds=paired, confidence=confidence,
                                strata=None if groups is None else labels.to_numpy())
    return ci, interval_method(a.shape[1], None if b is None else b.shape[1], paired)


def fmt_gaps(gaps) -> str:
    """Per-seed gaps in percentage points: "+4.3, +6.8, +6.0"."""
    return ", ".join(f"{100 * g:+.1f}" for g in gaps)


def interval(dataset: str, per_image: pd.Series, runs: list[metrics.Run], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The 95% interval of a mean over test images (indexed by path): a percentile bootstrap
    over images, or over blocks of consecutive slices where the dataset is CT slices. Test
    images only: the headline intervals are :func:`seed_interval`'s; this one stays beside them
    (``image_ci_*``) to show what the seeds add."""
    from .data import get_spec
    from .data.splits import block_groups

    if not get_spec(dataset).ct_slices:
        return bootstrap_ci(per_image.to_numpy(), confidence)
    labels = runs[0].predictions.set_index("path").loc[per_image.index, "label"].to_numpy()
    ci = intervals.cluster_bootstrap_ci(per_image.to_numpy(), block_groups(list(per_image.index), labels), confidence)
    return ci.low, ci.high


def per_class_accuracy(runs: list[metrics.Run]) -> dict[str, float]:
    """Test accuracy within each true class, averaged over the runs' seeds."""
    names = runs[0].class_names
    out = {}
    for k, name in enumerate(names):
        accs = [float((r.preds[r.labels == k] == k).mean()) for r in runs if (r.labels == k).any()]
        out[name] = float(np.mean(accs)) if accs else math.nan
    return out

def _groups(runset: metrics.RunSet, arch: str | None = None) -> dict[tuple, list[metrics.Run]]:
    """(arch, head, split, fraction, protocol, arm) -> runs (one per seed)."""
    out: dict[tuple, list[metrics.Run]] = {}
    for r in runset.runs:
        if arch is None or r.arch == arch:
            out.setdefault((r.arch, r.head, r.split, r.id.train_fraction, r.id.protocol, r.arm), []).append(r)
    return out


def arm_table(runsets: dict[str, metrics.RunSet], arch: str = models.REFERENCE_ARCH) -> pd.DataFrame:
    """Per dataset, split and arm (whole training split): accuracy, its interval over seeds and
    test images (``interval``: the method, see :data:`INTERVAL_METHODS`), seeds, and for CT
    slices the test blocks per class (``test_blocks``, :func:`designs.blocks_per_class`)."""
    rows = []
    for ds, runset in runsets.items():
        for (a, head, split, fraction, protocol, arm), runs in _groups(runset, arch).items():
            if fraction != 1:
                continue
            right = correctness(runs)
            per_image = right.mean(axis=1)
            ci, method = seed_interval(ds, right, None, runs)
            low, high = ci.low, ci.high
            accs = [r.metrics["test_accuracy"] for r in runs]
            rows.append({"dataset": ds, "split": split, "protocol": protocol, "arch": a, "head": head, "arm": arm,
                         "seeds": len(runs), "n_test": len(per_image), "accuracy": float(np.mean(accs)),
                         "ci_low": low, "ci_high": high,
                         "seed_sd": float(np.std(accs, ddof=1)) if len(accs) > 1 else math.nan,
                         "epochs": runs[0].params.get("epochs"),
                         "lr": sorted({r.params.get("lr") for r in runs}),
                         "converged": sum(r.converged for r in runs),
                         "per_class": per_class_accuracy(runs), "resampled": resampled_unit(ds),
                         "interval": method, "test_blocks": blocks_per_class(runs[0])})
    frame = pd.DataFrame(rows, columns=["dataset", "split", "protocol", "arch", "head", "arm", "seeds", "n_test",
                                        "accuracy", "ci_low", "ci_high", "seed_sd", "epochs", "lr", "converged",
                                        "per_class", "resampled", "interval", "test_blocks"])
    if len(frame):
        frame = frame.sort_values(["dataset", "split", "protocol", "arm"], key=lambda c: c.map(_order)
                                  ).reset_index(drop=True)
    return frame


def _order(value):
    order = {"covid_radiography": 0, "ct_kidney": 1, **{split: k for k, split in enumerate(SPLIT_NAMES)},
             "imagenet": 0, "linear_probe": 1, "scratch": 2, "": 0}
    return order.get(value, 9)


def differences(runsets: dict[str, metrics.RunSet], arch: str = models.REFERENCE_ARCH) -> pd.DataFrame:
    """ImageNet − scratch and ImageNet − linear probe per dataset and split, on the seeds both
    arms have: the difference in accuracy with its interval over seeds and test images
    (:func:`seed_interval`: a two-level bootstrap, paired by image and by seed; ``interval``
    names the method), the per-seed gaps (seed k of one arm minus seed k of the other, on the same
    test images) with a t-interval over them (``gap_t_low``/``gap_t_high``; nan with one seed),
    the interval over test images alone (``image_ci_*``: seeds averaged first, as the first
    editions computed it), and McNemar's exact p on the seed-0 pair."""
    rows = []
    for ds, runset in runsets.items():
        groups = _groups(runset, arch)
        for key in sorted({k[:5] for k in groups if k[3] == 1}, key=lambda k: (_order(k[2]), _order(k[4]))):
            for a, b in COMPARISONS:
                if key + (a,) not in groups or key + (b,) not in groups:
                    continue
                ca, cb = correctness(groups[key + (a,)]), correctness(groups[key + (b,)])
                seeds = sorted(set(ca.columns) & set(cb.columns))
                ca, cb = ca[seeds], cb.loc[ca.index, seeds]
                diff = ca.mean(axis=1) - cb.mean(axis=1)
                ci, method = seed_interval(ds, ca, cb, groups[key + (a,)])
                img_low, img_high = interval(ds, diff, groups[key + (a,)])
                gaps = intervals.seed_gaps(ca.to_numpy(), cb.to_numpy())
                t = intervals.mean_ci(gaps)
                s0 = seeds[0]
                mc = intervals.mcnemar_exact(ca[s0].to_numpy() > 0, cb[s0].to_numpy() > 0)
                rows.append({"dataset": ds, "split": key[2], "protocol": key[4],
                             "comparison": f"{arm_title(a)} − {arm_title(b)}",
                             "arm_a": a, "arm_b": b, "seeds": len(seeds), "difference": float(diff.mean()),
                             "resampled": resampled_unit(ds), "interval": method,
                             "ci_low": ci.low, "ci_high": ci.high, "seed_gaps": fmt_gaps(gaps),
                             "gap_t_low": t.low, "gap_t_high": t.high,
                             "image_ci_low": img_low, "image_ci_high": img_high,
                             "p_mcnemar_seed0": mc["p_mcnemar"]})
    return pd.DataFrame(rows, columns=DIFFERENCE_COLUMNS)


DIFFERENCE_COLUMNS = ["dataset", "split", "protocol", "comparison", "arm_a", "arm_b", "seeds", "difference",
                      "resampled", "interval", "ci_low", "ci_high", "seed_gaps", "gap_t_low", "gap_t_high",
                      "image_ci_low", "image_ci_high", "p_mcnemar_seed0"]


def best_scratch(runsets: dict[str, metrics.RunSet], arch: str = models.REFERENCE_ARCH,
                 protocols: tuple[str, ...] = ("",)) -> pd.DataFrame:
    """Per dataset, split and protocol (of ``protocols``; "" is the fair one): the network trained
    from scratch (any arch, whole training split) with the highest mean best-epoch *validation*
    accuracy (picking on test would flatter it), and ImageNet ``arch`` under the same protocol
    against it on the test images, paired image by image, with the interval over seeds and
    images of :func:`seed_interval` (each side draws its own seeds, unless both have the same
    ones; ``interval`` names the method: with one seed on a side, that side's seed variance is
    not covered) and the interval over images alone (``image_ci_*``)."""
    rows = []
    for ds, runset in runsets.items():
        groups = {k: v for k, v in _groups(runset).items() if k[3] == 1 and k[4] in protocols}
        for split, protocol in sorted({(k[2], k[4]) for k in groups}, key=lambda sp: (_order(sp[0]), protocols.index(sp[1]))):
            scratch = {k: v for k, v in groups.items() if k[2] == split and k[4] == protocol and k[5] == "scratch"}
            ours = [v for k, v in groups.items()
                    if k[2] == split and k[4] == protocol and k[0] == arch and k[5] == "imagenet"]
            if not scratch or not ours:
                continue
            key, best = max(scratch.items(), key=lambda kv: np.mean([r.metrics["best_val_acc"] for r in kv[1]]))
            right_i, right_b = correctness(ours[0]), correctness(best)
            ci, cb = right_i.mean(axis=1), right_b.mean(axis=1)
            diff = ci - cb.loc[ci.index]
            two, method = seed_interval(ds, right_i, right_b, ours[0])
            img_low, img_high = interval(ds, diff, ours[0])
            # the per-seed gaps where both sides trained the same seeds (two or more)
            shared = sorted(set(right_i.columns) & set(right_b.columns))
            gaps = (intervals.seed_gaps(right_i[shared].to_numpy(), right_b.loc[right_i.index, shared].to_numpy())
                    if len(shared) > 1 else np.array([]))
            t = intervals.mean_ci(gaps) if len(gaps) else intervals.Interval(math.nan, math.nan, math.nan, 0)
            rows.append({"dataset": ds, "split": split, "protocol": protocol, "arch": key[0], "head": key[1],
                         "seeds": len(best), "networks": len({k[:2] for k in scratch}), "accuracy": float(cb.mean()),
                         "imagenet_seeds": len(ours[0]), "difference": float(diff.mean()), "interval": method,
                         "ci_low": two.low, "ci_high": two.high, "image_ci_low": img_low, "image_ci_high": img_high,
                         "seed_gaps": fmt_gaps(gaps) if len(gaps) else "", "gap_t_low": t.low, "gap_t_high": t.high})
    return pd.DataFrame(rows, columns=["dataset", "split", "protocol", "arch", "head", "seeds", "networks", "accuracy",
                                       "imagenet_seeds", "difference", "interval", "ci_low", "ci_high",
                                       "image_ci_low", "image_ci_high", "seed_gaps", "gap_t_low", "gap_t_high"])


def efficiency(runset: metrics.RunSet, train_counts: list[int] | None = None,
               arch: str = models.REFERENCE_ARCH, head: str = "replace", split: str = "random",
               confidence: float = CONFIDENCE, protocol: str = "",
               pairs: tuple = (PAIR,)) -> pd.DataFrame:
    """Test accuracy against the share of the training split, per arm: the mean over seeds with
    the two-level interval over seeds and test images (a t factor of 12.7 for two seeds made the
    t-interval uninformative); and per share, each pair's difference (``arm`` "imagenet −
    scratch"), paired by image and by seed. ``train_counts`` (training images per class) gives
    the images each share trains on."""
    rows = []
    groups = {k: v for k, v in _groups(runset, arch).items() if k[1] == head and k[2] == split and k[4] == protocol}
    for (a, h, s, fraction, proto, arm), runs in groups.items():
        ci, method = seed_interval(runset.dataset, correctness(runs), None, runs, confidence)
        rows.append({"arm": arm, "fraction": fraction, "seeds": len(runs), "accuracy": ci.mean,
                     "ci_low": ci.low, "ci_high": ci.high, "interval": method})
    for (a, h, s, fraction, proto, arm), runs in groups.items():
        for first, second in pairs:
            other = groups.get((a, h, s, fraction, proto, second))
            if arm != first or not other:
                continue
            ca, cb = correctness(runs), correctness(other)
            seeds = sorted(set(ca.columns) & set(cb.columns))
            ci, method = seed_interval(runset.dataset, ca[seeds], cb.loc[ca.index, seeds], runs, confidence)
            rows.append({"arm": f"{first} − {second}", "fraction": fraction, "seeds": len(seeds),
                         "accuracy": ci.mean, "ci_low": ci.low, "ci_high": ci.high, "interval": method})
    frame = pd.DataFrame(rows, columns=["arm", "fraction", "seeds", "accuracy", "ci_low", "ci_high", "interval"])
    frame.insert(2, "n_train_images", [sum(max(1, math.ceil(f * c - 1e-9)) for c in train_counts)
                                       if train_counts else None for f in frame["fraction"]])
    return frame.sort_values(["arm", "fraction"], key=lambda c: c.map(_order) if c.name == "arm" else c
                             ).reset_index(drop=True) if len(frame) else frame


def train_counts(exp: dict, dataset: str, split: str = "random", root: str | Path = records.ROOT) -> list[int]:
    """Training images per class of a prepared folder, from its record."""
    import json

    info = json.loads((records.folder(exp, root) / "data" / f"{dataset}-{split}.json").read_text())
    return [info["counts"][c]["train"] for c in info["class_names"]]


def efficiency_figure(table: pd.DataFrame, n_train_full: int | None = None):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.8), layout="constrained")
    for arm, part in table[table["arm"].isin(ARMS)].groupby("arm", sort=False):
        part = part.sort_values("fraction")
        x = part["fraction"] * 100
        ax.plot(x, part["accuracy"], marker="o", color=arm_color(arm), label=arm_title(arm))
        ok = part["ci_low"].notna()
        ax.fill_between(x[ok], part["ci_low"][ok], part["ci_high"][ok], color=arm_color(arm), alpha=0.18)
    ax.set_xscale("log")
    ticks = sorted(table["fraction"].unique() * 100)
    ax.set_xticks(ticks, [f"{t:g}%" + (f"\n({round(t / 100 * n_train_full)})" if n_train_full else "")
                          for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("share of the training split (images)")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return fig


def published(dataset: str) -> dict[tuple[str, str, str], dict]:
    return metrics.paper_values(dataset).get("values", {})


def arch_label(arch: str, head: str = "replace") -> str:
    label = models.ARCHS[arch].label
    return label + (" + Dense 1024" if head == "dense1024" else "")


def paper_table(runset: metrics.RunSet | None, dataset: str, missing: dict | None = None,
                protocol: str = "") -> pd.DataFrame:
    """The papers' design beside ours on real images: per arch, head and arm, the published test
    accuracy and ours on the whole training split under ``protocol`` (or, for a configuration
    that ran only under another protocol, such as paper B's VGG-16 at paper B's budget, under
    that one: column ``protocol``), one ``ours|<split>`` column (with ``ci_low|<split>``,
    ``ci_high|<split>``) per split, or why ours is absent."""
    pub = published(dataset)
    by_protocol: dict[tuple, dict[str, dict[str, list[metrics.Run]]]] = {}
    for r in (runset.runs if runset else []):
        if r.id.train_fraction == 1:
            by_protocol.setdefault((r.arch, r.head, r.arm), {}).setdefault(r.id.protocol, {}).setdefault(
                r.split, []).append(r)
    used = {k: protocol if protocol in v else sorted(v)[0] for k, v in by_protocol.items()}
    ours = {k: v[used[k]] for k, v in by_protocol.items()}
    splits = sorted({s for by in ours.values() for s in by}, key=_order) or ["random"]
    archs = metrics.arch_order()    # the arch table's order
    # ours, and the grid's configurations with no result yet (``missing`` says why)
    mine = sorted({*ours, *(missing or {})}, key=lambda k: (archs.index(k[0]), k[1], _order(k[2])))
    rows = []
    for arch, head, arm in dict.fromkeys([*pub, *mine]):
        by_split = ours.get((arch, head, arm), {})
        row = {"model": arch_label(arch, head), "arm": arm_title(arm), "protocol": used.get((arch, head, arm), ""),
               "published": pub.get((arch, head, arm), {}).get("test_accuracy", math.nan),
               "seeds": max((len(v) for v in by_split.values()), default=0),
               "note": "" if by_split else (missing or {}).get((arch, head, arm), "not in this study")}
        for split in splits:
            runs = by_split.get(split, [])
            value = low = high = math.nan
            if runs:
                value = float(np.mean([r.metrics["test_accuracy"] for r in runs]))
                ci, _ = seed_interval(dataset, correctness(runs), None, runs)
                low, high = ci.low, ci.high
            row.update({f"ours|{split}": value, f"ci_low|{split}": low, f"ci_high|{split}": high})
        rows.append(row)
    return pd.DataFrame(rows)


def missing_reasons(exp: dict, dataset: str, root: str | Path = records.ROOT) -> dict[tuple[str, str, str], str]:
    """(arch, head, arm) -> why a run of the grid has no result (its missing.json, shortened)."""
    import json

    out = {}
    for rid in ex.runs(exp):
        path = records.run_record(rid, root) / "missing.json"
        if rid.dataset == dataset and path.is_file():
            out[(rid.arch, rid.head, rid.arm)] = short_reason(str(json.loads(path.read_text()).get("reason", "")))
    return out


def short_reason(reason: str) -> str:
    if "ImageNet" in reason or "weights" in reason.lower():
        return "not run: no ImageNet weights on this machine"
    return "not run: " + reason.split(";")[0][:120]


def fmt_ci(value: float, low: float, high: float, unit: bool = True) -> str:
    """An accuracy in percent with its interval: "97.2% [95.8, 98.5]" ("—" when absent)."""
    if value is None or math.isnan(value):
        return "—"
    text = f"{100 * value:.1f}" + ("%" if unit else "")
    if low is None or math.isnan(low):
        return text
    return f"{text} [{100 * low:.1f}, {100 * high:.1f}]"


def fmt_diff(value: float, low: float, high: float, unit: bool = True) -> str:
    """A difference in percentage points with its interval: "+14.2 pp [+11.0, +17.5]"."""
    return f"{100 * value:+.1f}{' pp' if unit else ''} [{100 * low:+.1f}, {100 * high:+.1f}]"


# ---------------------------------------------------------------- protocols, stages, curves

def stage_table(exp: dict, root: str | Path = records.ROOT) -> pd.DataFrame:
    """Per stage of the experiment file: its runs, how many are recorded (complete or missing
    with a reason), which are not recorded yet, what it trains (datasets, protocols, networks)
    and what its recorded runs cost (epochs trained; hours, each run's notebook wall time summed)."""
    try:
        timed = records.load_manifest(exp, root)["runs"]
    except FileNotFoundError:
        timed = {}
    rows = []
    for rid, stage in ex.stages(exp).items():
        record = records.run_record(rid, root)
        history = record / "history.csv"
        cost = timed.get(rid.key, {})
        rows.append({"stage": stage, "key": rid.key, "recorded": record.is_dir(), "dataset": rid.dataset,
                     "protocol": rid.protocol, "arch": rid.arch, "head": rid.head,
                     "epochs": len(pd.read_csv(history)) if history.is_file() else 0,
                     "seconds": cost.get("notebook_seconds") or cost.get("train_seconds") or 0.0})
    frame = pd.DataFrame(rows, columns=["stage", "key", "recorded", "dataset", "protocol", "arch", "head",
                                        "epochs", "seconds"])
    out = frame.groupby("stage").agg(runs=("key", "size"), recorded=("recorded", "sum"),
                                     datasets=("dataset", _each_once), protocols=("protocol", _each_once),
                                     epochs=("epochs", "sum"), hours=("seconds", lambda v: v.sum() / 3600)).reset_index()
    out["networks"] = [_each_once(arch_label(a, h) for a, h in
                                  frame[frame["stage"] == s][["arch", "head"]].itertuples(index=False))
                       for s in out["stage"]]
    out["pending"] = [", ".join(frame[(frame["stage"] == s) & ~frame["recorded"]]["key"]) for s in out["stage"]]
    return out


def _each_once(values) -> list:
    return list(dict.fromkeys(values))   # in first-seen order


def curves(runset: metrics.RunSet, arch: str = models.REFERENCE_ARCH, head: str = "replace",
           split: str = "random", protocol: str = "") -> pd.DataFrame:
    """Validation accuracy by epoch of every run of the answer (whole training split), one row
    per run and epoch."""
    rows = []
    for (a, h, s, fraction, proto, arm), runs in _groups(runset, arch).items():
        if (h, s, fraction, proto) != (head, split, 1, protocol):
            continue
        for r in runs:
            for e in r.history.itertuples():
                rows.append({"arm": arm, "seed": r.seed, "lr": r.params.get("lr"), "epoch": int(e.epoch),
                             "val_acc": float(e.val_acc), "stopped_by": r.stopped_by})
    return pd.DataFrame(rows, columns=["arm", "seed", "lr", "epoch", "val_acc", "stopped_by"])


def epochs_to_reach(table: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """Per arm: the first epoch each seed's validation accuracy reached ``threshold`` (NaN: never)."""
    rows = []
    for (arm, seed), part in table.groupby(["arm", "seed"], sort=False):
        hit = part[part["val_acc"] >= threshold]["epoch"]
        rows.append({"arm": arm, "seed": seed, "epoch": float(hit.min()) if len(hit) else math.nan,
                     "epochs_run": int(part["epoch"].max())})
    return pd.DataFrame(rows, columns=["arm", "seed", "epoch", "epochs_run"])


def curves_figure(table: pd.DataFrame, threshold: float | None = None, title: str = ""):
    """Validation accuracy by epoch, one line per seed, coloured by arm."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.8), layout="constrained")
    for (arm, seed), part in table.groupby(["arm", "seed"], sort=False):
        ax.plot(part["epoch"], part["val_acc"], color=arm_color(arm), alpha=0.85, marker=".",
                label=f"{arm_title(arm)}" if seed == table[table["arm"] == arm]["seed"].min() else None)
    if threshold is not None:
        ax.axhline(threshold, color="grey", lw=0.8, ls="--")
    ax.set(xlabel="epoch", ylabel="validation accuracy", title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return fig


# ---------------------------------------------------------------- the previous edition

PREVIOUS = "previous_edition.json"


def archive(exp: dict, root: str | Path = records.ROOT, note: str = "") -> Path:
    """Keep the current records' answer (arms and differences, with intervals) in
    ``records/<experiment>/previous_edition.json`` before a new protocol replaces them, so the
    book can say how much of the old answer survived. Records the commit they came from."""
    from . import atomic
    from .training import git_state

    runsets = load(exp, root)
    commit, _ = git_state()
    out = records.folder(exp, root) / PREVIOUS
    atomic.write_json(out, {"commit": commit, "note": note,
                            "run_commits": records.load_manifest(exp, root).get("run_commits"),
                            "arms": arm_table(runsets).to_dict(orient="records"),
                            "differences": differences(runsets).to_dict(orient="records")})
    return out


def previous(exp: dict, root: str | Path = records.ROOT) -> dict | None:
    path = records.folder(exp, root) / PREVIOUS
    if not path.is_file():
        return None
    import json

    data = json.loads(path.read_text())
    return {**data, "arms": pd.DataFrame(data["arms"]), "differences": pd.DataFrame(data["differences"])}


if __name__ == "__main__":
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="python -m helpers.study")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("archive", help="keep the records' answer before a new protocol replaces it")
    p.add_argument("experiment")
    p.add_argument("--note", default="")
    args = ap.parse_args()
    print(f"wrote {archive(ex.load_experiment(args.experiment, need_data=False), note=args.note)}")
    sys.exit(0)


# ---------------------------------------------------------------- kidney: per class, per view

def per_class_table(arms: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """Per split, protocol and arm of ``dataset``: test accuracy within each class (seed mean)."""
    rows = []
    for r in arms[arms["dataset"] == dataset].itertuples():
        rows.append({"split": r.split, "protocol": r.protocol, "arm": r.arm, "seeds": r.seeds, **r.per_class})
    return pd.DataFrame(rows)


def views(exp: dict, dataset: str, root: str | Path = records.ROOT) -> pd.Series | None:
    """path -> "axial" or "coronal" for a CT dataset's images (the audit's record), or None."""
    path = records.folder(exp, root) / "data" / f"{dataset}-views.csv"
    return pd.read_csv(path).set_index("path")["view"] if path.is_file() else None


def view_accuracy(runset: metrics.RunSet, view_of: pd.Series, arch: str = models.REFERENCE_ARCH) -> pd.DataFrame:
    """Test accuracy on axial and on coronal test slices, per split, protocol and arm (whole
    training split), with the slices of each view counted."""
    rows = []
    for (a, head, split, fraction, protocol, arm), runs in _groups(runset, arch).items():
        if fraction != 1:
            continue
        per_image = correctness(runs).mean(axis=1)
        seen = view_of.reindex(per_image.index)
        for view in ("axial", "coronal"):
            own = per_image[seen == view]
            rows.append({"split": split, "protocol": protocol, "arm": arm, "view": view, "n_test": len(own),
                         "accuracy": float(own.mean()) if len(own) else math.nan})
    return pd.DataFrame(rows, columns=["split", "protocol", "arm", "view", "n_test", "accuracy"])
