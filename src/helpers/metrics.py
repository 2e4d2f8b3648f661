"""Run folders read and checked: every metric recomputed from their predictions and history.

Everything here is computed again from ``predictions.csv`` and ``history.csv``
(see CONTRACTS.md, "Run folder") with scikit-learn and scipy. ``metrics.json``
is only read to be *checked* against the recomputation: a disagreement raises
:class:`MetricsMismatch` (or is flagged on the run with ``on_mismatch="flag"``),
and no number is ever copied from it.

Definitions (also in :data:`METRIC_NOTES`, which the evaluation page prints):

* accuracy: ``sklearn.metrics.accuracy_score``;
* confusion matrix: ``sklearn.metrics.confusion_matrix`` (rows = true class);
* AUC: ``sklearn.metrics.roc_auc_score``, one-vs-rest per class; macro = unweighted mean
  of the per-class AUCs (:func:`auc_scores`, the one AUC function, also used for metrics.json
  through :func:`test_scores`);
* precision/recall/F1: ``sklearn.metrics.precision_recall_fscore_support`` with
  ``zero_division=0`` (a class never predicted gets precision 0);
* mean ± 95% CI over seeds: Student t-interval (``scipy.stats.t``);
* arms compared (every arm against scratch, then each other pair;
  :func:`helpers.tables.arm_comparisons`)
  across seeds: paired t-test (``scipy.stats.ttest_rel``),
  Wilcoxon signed-rank when there are at least 6 pairs, effect = mean
  difference with its t-interval and Cohen's d_z;
* one seed: McNemar's exact test on the same test images
  (``scipy.stats.binomtest`` on the discordant counts);
* single-run test accuracy: Wilson and Clopper-Pearson intervals
  (:func:`helpers.intervals.binomial_ci`, ``scipy.stats.binomtest(...).proportion_ci``).

The tables of a RunSet are :mod:`helpers.tables`'s; the intervals and tests :mod:`helpers.intervals`'s.

The papers' published values live in ``published.yaml`` beside this module (:data:`PAPER_VALUES`).
"""

from __future__ import annotations

import glob as globlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

from . import models
from .params import PAIR, RunId, TrainSettings, read_run_id, role_fields, stopped_by

ZERO_DIVISION = 0.0
ATOL = 1e-4  # tolerance for metrics.json vs recomputation (CSV round trip, float32)

# What makes a configuration, stated positively: the run identity and the training settings,
# less the replicate (seed), the arm (compared within a configuration) and where or how fast it
# ran; plus the data it saw. Runs that differ only in seed and arm are compared with each other.
CONFIG_FIELDS = tuple(dict.fromkeys(
    [f for f in RunId.model_fields if f not in ("experiment", "seed", "arm", "init_source")]
    + [f for f in TrainSettings.model_fields if f not in role_fields(TrainSettings, "machine")]
    + ["image_size", "balance", "split_seed", "n_per_class"]))

TABLE1_ROWS = {
    "first_epoch_train_loss": "Training loss of the first epoch",
    "first_epoch_val_acc": "Validation accuracy of the first epoch",
    "final_train_loss": "Training loss (final epoch)",
    "final_val_loss": "Validation loss (final epoch)",
    "best_val_acc": "Highest validation accuracy",
    "test_accuracy": "Testing accuracy",
}

PUBLISHED_FILE = Path(__file__).with_name("published.yaml")


def load_published(path: str | Path = PUBLISHED_FILE) -> dict[str, dict]:
    """The papers' published values: {dataset: {"name", "headline": (arch, head),
    "values": {(arch, head, arm): {metric: value}}, "settings": {name: value}}}, checked
    against TABLE1_ROWS; ``settings`` is the paper's design as printed (sizes, budget)."""
    import yaml

    raw = yaml.safe_load(Path(path).read_text()) or {}
    out = {}
    for dataset, paper in raw.items():
        values = {}
        for i, col in enumerate(paper.get("columns") or []):
            col = dict(col)
            try:
                key = (col.pop("arch"), col.pop("head"), col.pop("arm"))
            except KeyError as err:
                raise ValueError(f"{path}: {dataset} column {i} lacks {err}; each column needs arch, head, arm") from None
            unknown = sorted(set(col) - set(TABLE1_ROWS))
            if unknown:
                raise ValueError(f"{path}: {dataset} column {i} has unknown metrics {unknown}; "
                                 f"expected some of {list(TABLE1_ROWS)}")
            values[key] = {m: float(v) for m, v in col.items()}
        head = paper.get("headline") or {}
        out[dataset] = {"name": str(paper["name"]), "values": values, "settings": dict(paper.get("settings") or {}),
                        "headline": (head.get("arch"), head.get("head", "replace")) if head else None}
    return out


# {dataset: {"name": ..., "headline": (arch, head), "values": {(arch, head, arm): {metric: value}}}}
PAPER_VALUES: dict[str, dict] = load_published()


def paper_values(dataset: str) -> dict:
    """:data:`PAPER_VALUES` of the paper that ran on ``dataset``, or on the download it is another
    copy of (its spec's ``published_as``); {} where no paper did."""
    from .data import DATASETS

    spec = DATASETS.get(dataset)
    return PAPER_VALUES.get(dataset) or PAPER_VALUES.get(getattr(spec, "published_as", None) or "", {})


def arch_order() -> tuple[str, ...]:
    """Archs in display order: the order of the arch table."""
    return tuple(models.ARCHS)


METRIC_NOTES = (
    "Metrics follow scikit-learn's definitions: accuracy_score; confusion_matrix (rows = true "
    "class, columns = predicted); roc_auc_score one-vs-rest per class, macro = unweighted mean "
    "of the per-class AUCs; precision_recall_fscore_support with zero_division=0 (a class that "
    "is never predicted has precision 0). Losses are per-image mean cross-entropy (nats) from "
    "history.csv; 'final' is the last epoch run, 'highest validation accuracy' the best epoch. "
    "Test metrics use the best-validation-accuracy checkpoint. Over seeds: mean ± half-width of "
    "the 95% Student t-interval (scipy.stats.t). ImageNet vs scratch: paired t-test over seeds "
    "(scipy.stats.ttest_rel), Wilcoxon signed-rank when there are at least 6 pairs, effect = "
    "mean difference (ImageNet − scratch) with its 95% t-interval and Cohen's d_z; with one seed, "
    "McNemar's exact test on the same test images (scipy.stats.binomtest on the discordant "
    "counts b, c). Single-run test accuracy: Wilson and Clopper-Pearson 95% intervals."
)


class MetricsMismatch(ValueError):
    """metrics.json disagrees with the recomputation from predictions/history."""


# --------------------------------------------------------------------------- runs


@dataclass
class Run:
    """One complete run folder, with its metrics recomputed."""

    path: Path
    id: RunId                 # who the run is, as training wrote it into params.json
    params: dict
    history: pd.DataFrame
    predictions: pd.DataFrame
    stored: dict
    class_names: list[str]
    metrics: dict = field(default_factory=dict)
    mismatches: list[str] = field(default_factory=list)
    synthetic: bool | None = None
    label: str = ""  # configuration label, set by load_runs (see config_label)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def dataset(self) -> str:
        return self.id.dataset

    @property
    def arch(self) -> str:
        return self.id.arch

    @property
    def head(self) -> str:
        return self.id.head

    @property
    def arm(self) -> str:
        return self.id.arm

    @property
    def seed(self) -> int:
        return self.id.seed

    @property
    def split(self) -> str:
        return self.id.split

    @property
    def stopped_by(self) -> str:
        """metrics.json's ``stopped_by``; for older runs, derived from ``stopped_early``."""
        return self.stored.get("stopped_by") or stopped_by(self.params, bool(self.stored.get("stopped_early")))

    @property
    def converged(self) -> bool:
        return self.stopped_by == "early_stopping"

    @property
    def papers_design(self) -> bool:
        """Trained as the papers did: their random split, from ImageNet or scratch only."""
        return self.split == "random" and self.arm in PAIR

    @property
    def labels(self) -> np.ndarray:
        return self.predictions["label"].to_numpy(dtype=int)

    @property
    def preds(self) -> np.ndarray:
        return self.predictions["pred"].to_numpy(dtype=int)

    @property
    def probs(self) -> np.ndarray:
        cols = [f"prob_{k}" for k in range(len(self.class_names))]
        return self.predictions[cols].to_numpy(dtype=float)

    def config(self, with_arm: bool = True) -> str:
        """Stable key of the configuration: CONFIG_FIELDS, with the arm unless ``with_arm`` is False."""
        record = {**self.params, **self.id.model_dump()}
        cfg = {k: record[k] for k in CONFIG_FIELDS if k in record}
        if with_arm:
            cfg["arm"] = self.arm
        return json.dumps(cfg, sort_keys=True, default=str)


@dataclass
class RunSet:
    """Complete runs plus every folder that could not be used, with its reason."""

    dataset: str
    runs: list[Run]
    missing: list[tuple[str, str]] = field(default_factory=list)  # (folder, missing.json reason)
    incomplete: list[tuple[str, str]] = field(default_factory=list)  # (folder, why unusable)

    @property
    def synthetic(self) -> bool | None:
        flags = [r.synthetic for r in self.runs]
        if any(f is True for f in flags):
            return True
        if flags and all(f is False for f in flags):
            return False
        return None

    @property
    def mismatched(self) -> list[Run]:
        return [r for r in self.runs if r.mismatches]

    def inventory(self) -> pd.DataFrame:
        """Every folder considered, with its status: nothing is dropped silently."""
        rows = [{"run": r.name, "path": str(r.path), "status": "mismatch" if r.mismatches else "complete",
                 "reason": "; ".join(r.mismatches)} for r in self.runs]
        rows += [{"run": Path(p).name, "path": p, "status": "missing", "reason": why}
                 for p, why in self.missing]
        rows += [{"run": Path(p).name, "path": p, "status": "incomplete", "reason": why}
                 for p, why in self.incomplete]
        return pd.DataFrame(rows, columns=["run", "path", "status", "reason"])


def find_run_dirs(dataset: str, runs: str | Sequence[str | Path] = "", root: str | Path = "runs") -> list[Path]:
    """Run folders to evaluate: ``""`` = every folder under ``root/<dataset>``, a glob string, or a list."""
    if isinstance(runs, (str, Path)) and str(runs) == "":
        base = Path(root) / dataset
        if not base.is_dir():
            raise FileNotFoundError(f"no run folder {base}/ for dataset {dataset!r}: train runs first "
                                    f"or pass runs= (a glob or a list of run folders)")
        found = sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not found:
            raise FileNotFoundError(f"{base}/ holds no run folders")
        return found
    if isinstance(runs, (str, Path)):
        matches = sorted(Path(p) for p in globlib.glob(str(runs)))
        found = [p for p in matches if p.is_dir()]
        if not found:
            raise FileNotFoundError(f"runs={str(runs)!r} matches no run folder")
        return found
    found = [Path(p) for p in runs]
    if not found:
        raise ValueError("runs is an empty list: expected run folders, a glob, or '' for every run")
    for p in found:
        if not p.is_dir():
            raise FileNotFoundError(f"run folder {p} does not exist (from runs=)")
    return found


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err


def _is_synthetic(params: dict) -> bool | None:
    if isinstance(params.get("synthetic"), bool):
        return params["synthetic"]
    prepared = params.get("prepared_dir")
    if prepared:
        info = Path(prepared) / "info.json"
        if info.is_file():
            return bool(_read_json(info).get("synthetic"))
        if Path(prepared).name.startswith("synthetic-"):
            return True
        if Path(prepared).name.startswith("real-"):
            return False
    if "data_dir" in params:
        return params["data_dir"] in ("", None)
    return None


def read_predictions(path: Path, n_classes: int) -> pd.DataFrame:
    """predictions.csv with its columns and values checked."""
    df = pd.read_csv(path)
    want = ["path", "label", "pred"] + [f"prob_{k}" for k in range(n_classes)]
    absent = [c for c in want if c not in df.columns]
    if absent:
        raise ValueError(f"{path}: missing columns {absent}; expected {want}")
    if df.empty:
        raise ValueError(f"{path} has no rows: the test split is empty")
    for col in ("label", "pred"):
        bad = ~df[col].isin(range(n_classes))
        if bad.any():
            raise ValueError(f"{path}: column {col!r} must hold class indices 0..{n_classes - 1}; "
                             f"found {sorted(df.loc[bad, col].unique())[:5]}")
    if df["path"].duplicated().any():
        raise ValueError(f"{path}: duplicate test image paths {df.loc[df['path'].duplicated(), 'path'].head(3).tolist()}")
    probs = df[want[3:]].to_numpy(dtype=float)
    if not np.isfinite(probs).all() or (probs < 0).any():
        raise ValueError(f"{path}: probabilities must be finite and non-negative")
    return df


def read_history(path: Path) -> pd.DataFrame:
    """history.csv sorted by epoch, with epochs 1..n checked."""
    df = pd.read_csv(path)
    want = ["epoch", "train_loss", "val_loss", "val_acc"]
    absent = [c for c in want if c not in df.columns]
    if absent:
        raise ValueError(f"{path}: missing columns {absent}; expected at least {want}")
    df = df.sort_values("epoch").reset_index(drop=True)
    if df.empty or df["epoch"].tolist() != list(range(1, len(df) + 1)):
        raise ValueError(f"{path}: epochs must run 1..n without gaps; found {df['epoch'].tolist()}")
    return df


def load_run(run_dir: str | Path, on_mismatch: str = "raise") -> Run:
    """Read one complete run folder, recompute its metrics and check metrics.json."""
    if on_mismatch not in ("raise", "flag"):
        raise ValueError(f"on_mismatch must be 'raise' or 'flag', got {on_mismatch!r}")
    run_dir = Path(run_dir)
    for name in ("params.json", "history.csv", "predictions.csv", "metrics.json"):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(f"{run_dir / name} not found: not a complete run folder")
    params = _read_json(run_dir / "params.json")
    run_id = read_run_id(run_dir)
    stored = _read_json(run_dir / "metrics.json")
    class_names = list(params.get("class_names") or stored.get("class_names") or [])
    if not class_names:
        raise ValueError(f"{run_dir}: neither params.json nor metrics.json names class_names")
    run = Run(
        path=run_dir,
        id=run_id,
        params=params,
        history=read_history(run_dir / "history.csv"),
        predictions=read_predictions(run_dir / "predictions.csv", len(class_names)),
        stored=stored,
        class_names=class_names,
        synthetic=_is_synthetic(params),
    )
    run.metrics = {**compute_metrics(run.labels, run.preds, run.probs, class_names),
                   **history_metrics(run.history)}
    run.mismatches = check_stored(run.metrics, stored, class_names)
    argmax_disagree = int((run.probs.argmax(axis=1) != run.preds).sum())
    if argmax_disagree:
        run.mismatches.append(f"pred differs from argmax(prob_*) on {argmax_disagree} rows")
    if run.mismatches and on_mismatch == "raise":
        raise MetricsMismatch(f"{run_dir}: metrics.json disagrees with predictions.csv/history.csv: "
                              + "; ".join(run.mismatches))
    return run


def load_runs(dataset: str, runs: str | Sequence[str | Path] = "", root: str | Path = "runs",
              on_mismatch: str = "raise") -> RunSet:
    """Load run folders; folders with missing.json or without metrics.json are reported, not used."""
    complete, missing, incomplete = [], [], []
    for folder in find_run_dirs(dataset, runs, root):
        if (folder / "missing.json").is_file():
            reason = _read_json(folder / "missing.json").get("reason", "no reason given")
            missing.append((str(folder), str(reason)))
            continue
        if not (folder / "metrics.json").is_file():
            incomplete.append((str(folder), "no metrics.json: the run has not finished"))
            continue
        absent = [n for n in ("params.json", "history.csv", "predictions.csv") if not (folder / n).is_file()]
        if absent:
            incomplete.append((str(folder), f"metrics.json present but {', '.join(absent)} missing"))
            continue
        if not isinstance(_read_json(folder / "params.json").get("run"), dict):
            incomplete.append((str(folder), "params.json records no run identity (written by an "
                                            "older version): retrain it"))
            continue
        run = load_run(folder, on_mismatch=on_mismatch)
        if run.dataset and run.dataset != dataset:
            raise ValueError(f"{folder} is a run of dataset {run.dataset!r}, not {dataset!r}")
        complete.append(run)
    names = {tuple(r.class_names) for r in complete}
    if len(names) > 1:
        raise ValueError(f"runs of {dataset} disagree on class_names: {sorted(names)}")
    labels = config_labels(complete)
    for run in complete:
        run.label = labels[run.config(with_arm=False)]
    return RunSet(dataset=dataset, runs=complete, missing=missing, incomplete=incomplete)


def config_labels(runs: Iterable[Run]) -> dict[str, str]:
    """Readable, stable label per configuration (arms together): arch, '-head' unless 'replace',
    then any other parameter that differs between configurations as key=value."""
    runs = list(runs)
    cfgs = {r.config(with_arm=False): json.loads(r.config(with_arm=False)) for r in runs}
    keys = set().union(*[c.keys() for c in cfgs.values()]) if cfgs else set()
    varying = sorted(
        k for k in keys - {"arch", "head", "dataset"}
        if len({json.dumps(c.get(k), sort_keys=True, default=str) for c in cfgs.values()}) > 1
    )
    labels = {}
    for key, c in cfgs.items():
        label = str(c.get("arch", "?"))
        if c.get("head", "replace") != "replace":
            label += f"-{c['head']}"
        extras = [f"{k}={c.get(k)}" for k in varying]
        if extras:
            label += " (" + ", ".join(extras) + ")"
        labels[key] = label
    return labels


# ----------------------------------------------------------------- recomputation


def auc_scores(labels: np.ndarray, probs: np.ndarray, class_names: Sequence[str]) -> tuple[float, list[float], list[str]]:
    """One-vs-rest ROC AUC: (macro, per class, notes). The one AUC of the project.

    ``probs`` is (n, K), one column per class in ``class_names`` order. A class with no test
    images, or only those, has no ROC curve: its AUC is nan and a note says why; the macro
    AUC (unweighted mean of the per-class AUCs, sklearn's ``average="macro"``) is then nan too.
    """
    labels, probs = np.asarray(labels), np.asarray(probs, dtype=float)
    if probs.ndim != 2 or probs.shape != (len(labels), len(class_names)):
        raise ValueError(f"probs: expected shape ({len(labels)}, {len(class_names)}) (images x classes), "
                         f"got {probs.shape}")
    notes, per_class = [], []
    for k, name in enumerate(class_names):
        positives = labels == k
        if positives.all() or not positives.any():
            per_class.append(math.nan)
            notes.append(f"AUC for class {name!r} is undefined: the test split has "
                         f"{'only' if positives.all() else 'no'} images of it")
        else:
            per_class.append(float(roc_auc_score(positives, probs[:, k])))
    macro = float(np.mean(per_class)) if all(math.isfinite(v) for v in per_class) else math.nan
    if not math.isfinite(macro):
        notes.append("test_auc_macro is undefined because a per-class AUC is")
    return macro, per_class, notes


def test_scores(labels: np.ndarray, probs: np.ndarray, class_names: Sequence[str], preds=None) -> dict:
    """The test fields of metrics.json, from the test labels and class probabilities:
    ``test_accuracy, test_auc_macro, test_auc_per_class, confusion_matrix, notes``
    (prediction = argmax of probs unless ``preds`` is given; notes say which AUCs are undefined
    and why)."""
    labels = np.asarray(labels)
    preds = np.asarray(probs).argmax(axis=1) if preds is None else np.asarray(preds)
    macro, per_class, notes = auc_scores(labels, probs, class_names)
    return {
        "test_accuracy": float(accuracy_score(labels, preds)),
        "test_auc_macro": macro,
        "test_auc_per_class": per_class,
        "confusion_matrix": confusion_matrix(labels, preds, labels=np.arange(len(class_names))).tolist(),
        "notes": notes,
    }


test_scores.__test__ = False  # a function, not a pytest test


def compute_metrics(labels: np.ndarray, preds: np.ndarray, probs: np.ndarray,
                    class_names: Sequence[str]) -> dict:
    """metrics.json's test fields (:func:`test_scores`, from the predictions as written) and the
    per-class scores beyond them (scikit-learn)."""
    labels, preds, probs = np.asarray(labels), np.asarray(preds), np.asarray(probs, dtype=float)
    k = len(class_names)
    scores = test_scores(labels, probs, class_names, preds=preds)
    del scores["notes"]
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, preds, labels=np.arange(k), zero_division=ZERO_DIVISION)
    return {
        **scores,
        "test_correct": int((labels == preds).sum()),
        "test_n": int(len(labels)),
        "precision": precision.tolist(),
        "recall": recall.tolist(),
        "f1": f1.tolist(),
        "support": support.tolist(),
        "n_predicted": np.bincount(preds, minlength=k).tolist(),
    }


def history_metrics(history: pd.DataFrame) -> dict:
    """Table 1's training numbers from history.csv (epochs from 1)."""
    h = history.sort_values("epoch").reset_index(drop=True)
    best = int(h["val_acc"].to_numpy().argmax())  # first epoch reaching the maximum
    return {
        "first_epoch_train_loss": float(h["train_loss"].iloc[0]),
        "first_epoch_val_acc": float(h["val_acc"].iloc[0]),
        "final_train_loss": float(h["train_loss"].iloc[-1]),
        "final_val_loss": float(h["val_loss"].iloc[-1]),
        "best_val_acc": float(h["val_acc"].iloc[best]),
        "best_epoch": int(h["epoch"].iloc[best]),
        "epochs_run": int(len(h)),
    }


CHECKED_KEYS = ("test_accuracy", "test_auc_macro", "test_auc_per_class", "confusion_matrix",
                "first_epoch_train_loss", "first_epoch_val_acc", "final_train_loss",
                "final_val_loss", "best_val_acc", "best_epoch", "epochs_run")


def _close(a, b, atol: float) -> bool:
    a = np.asarray([np.nan if v is None else v for v in np.ravel(a)], dtype=float)
    b = np.asarray([np.nan if v is None else v for v in np.ravel(b)], dtype=float)
    return a.shape == b.shape and bool(np.allclose(a, b, atol=atol, rtol=0, equal_nan=True))


def check_stored(recomputed: dict, stored: dict, class_names: Sequence[str], atol: float = ATOL) -> list[str]:
    """Differences between metrics.json and the recomputation, as readable strings ([] = agree)."""
    problems = []
    if list(stored.get("class_names", class_names)) != list(class_names):
        problems.append(f"class_names {stored.get('class_names')} != {list(class_names)}")
    for key in CHECKED_KEYS:
        if key not in stored:
            problems.append(f"{key} missing from metrics.json")
        elif not _close(stored[key], recomputed[key], atol):
            problems.append(f"{key}: metrics.json {stored[key]} vs recomputed {recomputed[key]}")
    return problems


def roc_curves(run: Run) -> dict[str, tuple[np.ndarray, np.ndarray, float]]:
    """One-vs-rest ROC curve (fpr, tpr, auc) per class of one run."""
    out = {}
    labels, probs = run.labels, run.probs
    for c, name in enumerate(run.class_names):
        positive = labels == c
        if positive.all() or not positive.any():
            continue  # undefined without both positives and negatives
        fpr, tpr, _ = roc_curve(positive, probs[:, c])
        out[name] = (fpr, tpr, run.metrics["test_auc_per_class"][c])
    return out
