"""The study's tables over a :class:`~helpers.metrics.RunSet`: Table 1 beside the published
values, seeds with their intervals, per-class scores, and the arms compared run by run (paired
t and Wilcoxon over seeds, McNemar over test images)."""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from .intervals import CONFIDENCE, accuracy_ci, binomial_ci, mcnemar_exact, mean_ci, paired_test
from .metrics import TABLE1_ROWS, Run, RunSet, arch_order, paper_values
from .models import ARCHS
from .params import arm_order, arm_title

REFERENCE_ARM = "scratch"  # paired comparisons: every other arm against this one, and each pair



def run_table(runset: RunSet) -> pd.DataFrame:
    """One row per complete run: identity and every scalar metric."""
    rows = []
    for r in runset.runs:
        m = r.metrics
        row = {"run": r.name, "label": r.label, "arch": r.arch, "head": r.head, "arm": r.arm,
               "seed": r.seed, **{k: m[k] for k in TABLE1_ROWS}, "test_auc_macro": m["test_auc_macro"],
               "best_epoch": m["best_epoch"], "epochs_run": m["epochs_run"], "stopped_by": r.stopped_by,
               "test_n": m["test_n"], "test_correct": m["test_correct"]}
        for c, name in enumerate(r.class_names):
            row[f"auc[{name}]"] = m["test_auc_per_class"][c]
        rows.append(row)
    return pd.DataFrame(rows)


SUMMARY_METRICS = (*TABLE1_ROWS, "test_auc_macro")


def seed_summary(runset: RunSet, confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Mean ± t-interval over seeds of every number, per configuration and arm (long format)."""
    rows = []
    groups: dict[tuple[str, str], list[Run]] = {}
    for r in runset.runs:
        groups.setdefault((r.label, r.arm), []).append(r)
    for (label, arm), runs in sorted(groups.items()):
        runs = sorted(runs, key=lambda r: r.seed)
        values: dict[str, list[float]] = {m: [r.metrics[m] for r in runs] for m in SUMMARY_METRICS}
        for c, name in enumerate(runs[0].class_names):
            values[f"auc[{name}]"] = [r.metrics["test_auc_per_class"][c] for r in runs]
            for part in ("precision", "recall", "f1"):
                values[f"{part}[{name}]"] = [r.metrics[part][c] for r in runs]
        for metric, vals in values.items():
            ci = mean_ci(vals, confidence)
            rows.append({"label": label, "arch": runs[0].arch, "head": runs[0].head, "arm": arm,
                         "metric": metric, "n": ci.n, "mean": ci.mean, "sd": ci.sd,
                         "ci_low": ci.low, "ci_high": ci.high,
                         "seeds": " ".join(str(r.seed) for r in runs)})
    return pd.DataFrame(rows, columns=["label", "arch", "head", "arm", "metric", "n", "mean", "sd",
                                       "ci_low", "ci_high", "seeds"])


def per_class_table(runset: RunSet) -> pd.DataFrame:
    """Per-class precision, recall, F1, support and number predicted, for every run."""
    rows = []
    for r in runset.runs:
        m = r.metrics
        for c, name in enumerate(r.class_names):
            rows.append({"run": r.name, "label": r.label, "arm": r.arm, "seed": r.seed, "class": name,
                         "precision": m["precision"][c], "recall": m["recall"][c], "f1": m["f1"][c],
                         "support": m["support"][c], "n_predicted": m["n_predicted"][c],
                         "auc": m["test_auc_per_class"][c]})
    return pd.DataFrame(rows, columns=["run", "label", "arm", "seed", "class", "precision", "recall",
                                       "f1", "support", "n_predicted", "auc"])


def test_accuracy_table(runset: RunSet, confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Single-run test accuracy with Wilson and Clopper-Pearson intervals."""
    rows = []
    for r in runset.runs:
        m = r.metrics
        rows.append({"run": r.name, "label": r.label, "arm": r.arm, "seed": r.seed, "n_test": m["test_n"],
                     "correct": m["test_correct"], "accuracy": m["test_accuracy"],
                     **accuracy_ci(m["test_correct"], m["test_n"], confidence)})
    return pd.DataFrame(rows, columns=["run", "label", "arm", "seed", "n_test", "correct", "accuracy",
                                       "wilson_low", "wilson_high", "exact_low", "exact_high"])


def above_chance(runset: RunSet, confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Per configuration and arm, all seeds' test images pooled: did it learn? "above chance"
    when the Wilson interval of the pooled accuracy lies above 1/K (K classes)."""
    rows = []
    groups: dict[tuple[str, str], list[Run]] = {}
    for r in runset.runs:
        groups.setdefault((r.label, r.arm), []).append(r)
    for (label, arm), group in sorted(groups.items(), key=lambda kv: (kv[0][0], arm_order(kv[0][1]))):
        correct = sum(r.metrics["test_correct"] for r in group)
        n = sum(r.metrics["test_n"] for r in group)
        chance = 1 / len(group[0].class_names)
        low, high = binomial_ci(correct, n, confidence)
        rows.append({"configuration": label, "arm": arm, "seeds": len(group), "accuracy": correct / n,
                     "ci_low": low, "ci_high": high, "chance": chance, "learned": bool(low > chance)})
    return pd.DataFrame(rows, columns=["configuration", "arm", "seeds", "accuracy", "ci_low", "ci_high",
                                       "chance", "learned"])


def arm_comparisons(arms: Iterable[str]) -> list[tuple[str, str]]:
    """Which arms are compared, as (a, b) with difference a − b: every arm against
    REFERENCE_ARM first, then each other pair in display order."""
    arms = sorted(set(arms), key=arm_order)
    others = [a for a in arms if a != REFERENCE_ARM]
    pairs = [(a, REFERENCE_ARM) for a in others] if REFERENCE_ARM in arms else []
    return pairs + [(a, b) for i, a in enumerate(others) for b in others[i + 1:]]


def arm_pairs(runset: RunSet) -> dict[tuple[str, str, str], dict[int, tuple[Run, Run]]]:
    """{(label, arm_a, arm_b): {seed: (run_a, run_b)}} for every compared pair of arms
    (see arm_comparisons) and the seeds that have both."""
    by: dict[str, dict[int, dict[str, Run]]] = {}
    for r in runset.runs:
        slot = by.setdefault(r.label, {}).setdefault(r.seed, {})
        if r.arm in slot:
            raise ValueError(f"two {r.arm} runs of {r.label} seed {r.seed}: {slot[r.arm].path} and {r.path}")
        slot[r.arm] = r
    out = {}
    for label, seeds in sorted(by.items()):
        arms = {a for runs in seeds.values() for a in runs}
        for a, b in arm_comparisons(arms):
            both = {s: (runs[a], runs[b]) for s, runs in sorted(seeds.items()) if a in runs and b in runs}
            if both:
                out[(label, a, b)] = both
    return out


def aligned_correct(a: Run, b: Run) -> tuple[np.ndarray, np.ndarray]:
    """Per-image correctness of two runs on identical test images (matched by path)."""
    pa, pb = set(a.predictions["path"]), set(b.predictions["path"])
    if pa != pb:
        raise ValueError(
            f"{a.path} and {b.path} were tested on different images ({len(pa - pb)} only in the first, "
            f"{len(pb - pa)} only in the second), so they cannot be paired image by image. Both arms of "
            f"a comparison must use the same prepared data (prepared_dir {a.params.get('prepared_dir')!r} "
            f"vs {b.params.get('prepared_dir')!r}).")
    da = a.predictions.set_index("path")
    db = b.predictions.set_index("path").loc[da.index]
    if not (da["label"].to_numpy() == db["label"].to_numpy()).all():
        raise ValueError(f"{a.path} and {b.path} disagree on the true labels of the same test images")
    return (da["label"] == da["pred"]).to_numpy(), (db["label"] == db["pred"]).to_numpy()


PAIRED_METRICS = ("test_accuracy", "test_auc_macro", "best_val_acc", "first_epoch_val_acc",
                  "first_epoch_train_loss")


def paired_tests(runset: RunSet, metrics: Sequence[str] = PAIRED_METRICS,
                 confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Each compared pair of arms (see arm_comparisons) paired across seeds, per configuration
    and metric (difference = arm_a − arm_b)."""
    rows = []
    for (label, arm_a, arm_b), seeds in arm_pairs(runset).items():
        for ra, rb in seeds.values():
            aligned_correct(ra, rb)  # same test set, or a clear error
        for metric in metrics:
            res = paired_test([ra.metrics[metric] for ra, _ in seeds.values()],
                              [rb.metrics[metric] for _, rb in seeds.values()], confidence)
            rows.append({"label": label, "arm_a": arm_a, "arm_b": arm_b, "metric": metric,
                         "seeds": " ".join(map(str, seeds)), "n_pairs": res["n_pairs"],
                         **{k: res[k] for k in PAIRED_COLUMNS[6:]}})
    return pd.DataFrame(rows, columns=list(PAIRED_COLUMNS))


PAIRED_COLUMNS = ("label", "arm_a", "arm_b", "metric", "seeds", "n_pairs", "mean_a", "mean_b", "mean_diff",
                  "diff_ci_low", "diff_ci_high", "t", "p_ttest", "cohens_dz", "wilcoxon_stat", "p_wilcoxon",
                  "note")


def mcnemar_tests(runset: RunSet) -> pd.DataFrame:
    """McNemar's exact test of each compared pair of arms, per seed, on the same test images."""
    rows = []
    for (label, arm_a, arm_b), seeds in arm_pairs(runset).items():
        for seed, (ra, rb) in seeds.items():
            res = mcnemar_exact(*aligned_correct(ra, rb))
            rows.append({"label": label, "arm_a": arm_a, "arm_b": arm_b, "seed": seed, **res})
    return pd.DataFrame(rows, columns=["label", "arm_a", "arm_b", "seed", "n_test", "acc_a", "acc_b",
                                       "acc_diff", "b", "c", "p_mcnemar"])


def table1_long(runset: RunSet, confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Table 1 in long form: one row per (configuration, arm, metric), ours and the paper's value."""
    paper = paper_values(runset.dataset) or {"name": "", "values": {}}
    ours, comparable = {}, set()
    for r in runset.runs:
        ours.setdefault((r.label, r.arch, r.head, r.arm), []).append(r)
        if r.papers_design:
            comparable.add((r.label, r.arch, r.head, r.arm))
    keys = set(ours)
    for arch, head, arm in paper["values"]:
        if not any(k[1] == arch and k[2] == head and k[3] == arm for k in keys):
            label = arch + ("" if head == "replace" else f"-{head}")
            keys.add((label, arch, head, arm))
            comparable.add((label, arch, head, arm))

    archs = arch_order()

    def order(k):
        label, arch, head, arm = k
        return (archs.index(arch) if arch in archs else len(archs), label, arm_order(arm))

    rows = []
    for key in sorted(keys, key=order):
        label, arch, head, arm = key
        runs = ours.get(key, [])
        # A published value sits only beside runs of the paper's own design (not grouped splits).
        pv = paper["values"].get((arch, head, arm), {}) if key in comparable else {}
        for metric, title in TABLE1_ROWS.items():
            ci = mean_ci([r.metrics[metric] for r in runs], confidence)
            rows.append({"label": label, "arch": arch, "head": head, "arm": arm, "metric": metric,
                         "row": title, "n": ci.n, "mean": ci.mean, "ci_low": ci.low, "ci_high": ci.high,
                         "paper": paper["name"] if pv else "", "paper_value": pv.get(metric, math.nan)})
    return pd.DataFrame(rows, columns=["label", "arch", "head", "arm", "metric", "row", "n", "mean",
                                       "ci_low", "ci_high", "paper", "paper_value"])


def _fmt(mean: float, low: float, high: float, n: int, digits: int = 3) -> str:
    if n == 0 or not np.isfinite(mean):
        return "—"
    if n == 1 or not np.isfinite(low):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {(high - low) / 2:.{digits}f} (n={n})"


def table1(runset: RunSet, confidence: float = CONFIDENCE, formatted: bool = True) -> pd.DataFrame:
    """Paper A's Table 1 for the runs at hand: rows = metrics, columns = (config, arm, source).

    ``source`` is "ours" (mean ± 95% CI half-width over seeds, n seeds) or the paper's name;
    the paper's columns appear only where the paper reports that arch/head.
    """
    long = table1_long(runset, confidence)
    columns, data = [], {}
    for (label, arm), part in long.groupby(["label", "arm"], sort=False):
        part = part.set_index("metric").loc[list(TABLE1_ROWS)]
        col = (label, arm, "ours")
        columns.append(col)
        data[col] = [_fmt(r.mean, r.ci_low, r.ci_high, r.n) if formatted else r.mean
                     for r in part.itertuples()]
        if part["paper"].iloc[0]:
            pcol = (label, arm, f"{part['paper'].iloc[0]} (published)")
            columns.append(pcol)
            data[pcol] = [("—" if not np.isfinite(v) else f"{v:g}") if formatted else v
                          for v in part["paper_value"]]
    df = pd.DataFrame(data, index=list(TABLE1_ROWS.values()), columns=pd.MultiIndex.from_tuples(
        columns, names=["model", "weights", "source"]) if columns else None)
    df.index.name = "metric"
    return df


def loss_scale_note(runset: RunSet) -> str:
    """Say plainly when the paper's losses are on another scale than ours (per-image means)."""
    paper = paper_values(runset.dataset)
    if not paper:
        return ""
    val_losses = [v["final_val_loss"] for v in paper["values"].values() if "final_val_loss" in v]
    if not val_losses:
        return (f"{paper['name']} reports no losses for {runset.dataset}; only test accuracy is compared.")
    k = len(runset.runs[0].class_names) if runset.runs else 3
    first = [v["first_epoch_train_loss"] for v in paper["values"].values() if "first_epoch_train_loss" in v]
    ours = [r.metrics["first_epoch_train_loss"] for r in runset.runs]
    ours_txt = (f"Ours are per-image mean cross-entropies (first-epoch training loss "
                f"{min(ours):.3f}–{max(ours):.3f} here). " if ours else "Ours are per-image mean cross-entropies. ")
    return (
        f"Loss scale: {paper['name']} reports first-epoch training losses of {min(first):g}–{max(first):g} "
        f"and final validation losses up to {max(val_losses):g}. These cannot be per-image mean cross-entropies: "
        f"guessing uniformly over {k} classes costs ln {k} ≈ {math.log(k):.2f} nats per image, and a model "
        f"that reaches {min(v['first_epoch_val_acc'] for v in paper['values'].values()):.0%}+ validation "
        f"accuracy after one epoch cannot average {min(first):g}+ nats. The paper does not say how its losses "
        f"were summed, so they are likely sums over batches or a different reduction. {ours_txt}"
        f"Compare accuracies directly; compare losses only by their ordering (ImageNet vs scratch, "
        f"first vs final epoch), not by value."
    )


def split_comparison(runset: RunSet) -> pd.DataFrame:
    """Test accuracy (mean and 95% CI over seeds) of every configuration, by split and arm."""
    rows = []
    groups: dict[tuple, list] = {}
    for r in runset.runs:
        groups.setdefault((r.arch, r.head, r.split, r.arm), []).append(
            r.metrics["test_accuracy"])
    arch_pos = {a: i for i, a in enumerate(arch_order())}
    for (arch, head, split, arm), accs in sorted(
            groups.items(), key=lambda kv: (arch_pos.get(kv[0][0], len(arch_pos)), kv[0][1], kv[0][2],
                                            arm_order(kv[0][3]))):
        ci = mean_ci(accs, bounds=(0.0, 1.0))
        rows.append({"backbone": ARCHS[arch].label if arch in ARCHS else arch, "head": head, "split": split,
                     "start": arm_title(arm), "seeds": ci.n, "test accuracy": ci.mean,
                     "95% CI low": ci.low, "95% CI high": ci.high})
    return pd.DataFrame(rows, columns=["backbone", "head", "split", "start", "seeds", "test accuracy",
                                       "95% CI low", "95% CI high"])
