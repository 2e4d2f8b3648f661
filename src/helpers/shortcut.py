"""Is the gain about disease? The CNNs' accuracy on the test images an intensity-only model gets
wrong (shortcut-hard) beside the ones it gets right (shortcut-easy).

The intensity-only model (``baselines.shortcut_baseline``: a 32-bin grey-level histogram, mean and
SD, the model chosen on validation) sees no shape at all; where it is right, the image's
intensities alone give its class away (an acquisition source, an exposure, a collection), and
a CNN may be right for the same reason. The gain that survives on the images it gets wrong is
the part that no intensity cue explains. Both subsets are read from the committed records: the
runs' ``predictions.csv`` and the audit's ``data/<dataset>-shortcut.csv``.
"""
from __future__ import annotations

import itertools
import re
from pathlib import Path

import pandas as pd

from . import metrics, models, records, study
from .params import ARMS, PAIR, arm_title

SUBSETS = {"hard": "the intensity-only model is wrong", "easy": "the intensity-only model is right"}


def intensity_correct(exp: dict, dataset: str, root: str | Path = records.ROOT) -> pd.Series | None:
    """Test image path -> whether the intensity-only model got it right (None if not recorded)."""
    path = records.folder(exp, root) / "data" / f"{dataset}-shortcut.csv"
    if not path.is_file():
        return None
    frame = pd.read_csv(path)
    return pd.Series((frame["label"] == frame["pred"]).to_numpy(), index=frame["path"], name=str(frame["model"].iloc[0]))


def _subsets(class_names: list[str], labels: pd.Series, correct: pd.Series):
    """(classes shown, subset, image mask) for every class and every pair of classes."""
    groups = [("all classes", list(range(len(class_names))))]
    if len(class_names) > 2:
        groups += [(f"{class_names[i]} and {class_names[j]}", [i, j])
                   for i, j in itertools.combinations(range(len(class_names)), 2)]
    for title, members in groups:
        of_classes = labels.isin(members).to_numpy()
        for subset in SUBSETS:
            yield title, subset, of_classes & (correct.to_numpy() == (subset == "easy"))


def hard_easy(runset: metrics.RunSet, correct: pd.Series, arch: str = models.REFERENCE_ARCH,
              protocol: str = "", pairs: tuple = (PAIR,)) -> pd.DataFrame:
    """Per class group (all classes, each pair) and subset (hard, easy): the number of test
    images, each arm's accuracy and each pair's difference, with the headline interval
    (``study.seed_interval``: seeds and images), for ``arch`` under ``protocol``."""
    groups = {k[5]: v for k, v in study._groups(runset, arch).items()
              if k[2] == (runset.runs[0].split if runset.runs else "random") and k[3] == 1 and k[4] == protocol}
    if not groups:
        return pd.DataFrame()
    frames = {arm: study.correctness(runs) for arm, runs in groups.items()}
    first = next(iter(groups.values()))
    index = next(iter(frames.values())).index
    missing = index.difference(correct.index)
    if len(missing):
        raise ValueError(f"the intensity-only model's predictions lack {len(missing)} test images of "
                         f"{runset.dataset} (e.g. {missing[0]}): the audit ran on another split")
    labels = first[0].predictions.set_index("path").loc[index, "label"]
    rows = []
    for title, subset, mask in _subsets(first[0].class_names, labels, correct.loc[index]):
        row = {"classes": title, "subset": subset, "n_test": int(mask.sum())}
        for arm, frame in frames.items():
            ci, _ = study.seed_interval(runset.dataset, frame[mask], None, groups[arm])
            row.update({f"{arm}": ci.mean, f"{arm}_low": ci.low, f"{arm}_high": ci.high})
        for a, b in pairs:
            if a in frames and b in frames:
                ci, method = study.seed_interval(runset.dataset, frames[a][mask], frames[b][mask], groups[a])
                row.update({f"{a}-{b}": ci.mean, f"{a}-{b}_low": ci.low, f"{a}-{b}_high": ci.high,
                            "interval": method})
        rows.append(row)
    return pd.DataFrame(rows)


def shown(table: pd.DataFrame, pairs: tuple = (PAIR,)) -> pd.DataFrame:
    """The page's table: one row per class group and subset, accuracies and gaps with intervals."""
    out = []
    for row in table.to_dict("records"):
        line = {"classes": row["classes"], "test images": f"shortcut-{row['subset']}: {row['n_test']}"}
        for arm in [k for k in ARMS if k in row]:
            line[arm_title(arm)] = study.fmt_ci(row[arm], row[f"{arm}_low"], row[f"{arm}_high"])
        for a, b in pairs:
            if f"{a}-{b}" in row:
                line[f"{arm_title(a)} − {arm_title(b)}"] = study.fmt_diff(
                    row[f"{a}-{b}"], row[f"{a}-{b}_low"], row[f"{a}-{b}_high"])
        out.append(line)
    return pd.DataFrame(out)


def sentence(table: pd.DataFrame, baseline_acc: float, model: str, a: str = "imagenet", b: str = "scratch") -> str:
    """One sentence: what the intensity-only model scores, and the gap on the images it gets
    wrong and right (all classes)."""
    gaps = gaps_clause(table, a, b)
    if not gaps:
        return ""
    return (f"An intensity-only model ({model} on a grey-level histogram, mean and SD) classifies "
            f"{baseline_acc:.1%} of these test images correctly. {gaps[0].upper()}{gaps[1:]}.")


def gaps_clause(table: pd.DataFrame, a: str = "imagenet", b: str = "scratch") -> str:
    """"on the N it gets wrong (shortcut-hard), A − B is ...; on the M it gets right, ...: the gain
    survives on them" (all classes); "" without both arms."""
    rows = table[table["classes"] == "all classes"].set_index("subset") if len(table) else table
    if f"{a}-{b}" not in rows or not {"hard", "easy"} <= set(rows.index):
        return ""
    hard, easy = rows.loc["hard"], rows.loc["easy"]

    def gap(r) -> str:
        return study.fmt_diff(r[f"{a}-{b}"], r[f"{a}-{b}_low"], r[f"{a}-{b}_high"])

    survives = ("survives on them" if hard[f"{a}-{b}_low"] > 0 else
                "cannot be told from zero on them" if hard[f"{a}-{b}_high"] > 0 else "reverses on them")
    # an interval without both sides' seed variance says what it resamples
    method = str(hard.get("interval", "seeds"))
    over = re.sub(r" \((.*?)\)", r", \1", study.INTERVAL_METHODS.get(method, "").format(unit="test images"))
    seeds = "" if method.startswith("seeds") else f" (intervals over {over})"
    return (f"on the {int(hard['n_test'])} it gets wrong (shortcut-hard), {arm_title(a)} − {arm_title(b)} is "
            f"{gap(hard)}; on the {int(easy['n_test'])} it gets right, {gap(easy)}{seeds}: the gain {survives}")
