"""Figures, tables, glue helpers and synthetic/incomplete banners.

Book pages cite notebook outputs by glue name (myst-nb ``{glue:}``, ``{glue:text}``,
``{glue:figure}``). Names are built by :func:`glue_name`: lower case, every run of characters
other than ``a-z0-9`` replaced by ``_``. ``<label>`` is a configuration label from
:func:`helpers.metrics.config_labels` (``resnet18``, ``vgg16-dense1024`` -> ``vgg16_dense1024``),
``<arm>`` is ``imagenet`` or ``scratch``.

Glued by ``notebooks/evaluate.ipynb`` (:func:`glue_evaluation`):

==========================================  ===================================================
``<dataset>_banner``                        HTML admonition (synthetic data / incomplete grid), "" if none
``<dataset>_notes``                         HTML: metric definitions and the loss-scale note
``<dataset>_split_comparison``              test accuracy by arch, split and start (mean, 95% CI over seeds)
``<dataset>_table1``                        Table 1, ours beside the paper's (DataFrame)
``<dataset>_loss_curves``                   figure: train/val loss per arch, both arms (paper A Fig 3)
``<dataset>_confusion``                     figure: confusion matrices of every config × arm (A Fig 4, B Figs 3-4)
``<dataset>_roc``                           figure: one-vs-rest ROC per class (paper A Fig 5)
``<dataset>_per_class``                     per-class precision/recall/F1 of every run (DataFrame)
``<dataset>_test_accuracy``                 per-run test accuracy with Wilson/Clopper-Pearson CIs
``<dataset>_seed_summary``                  mean ± 95% CI over seeds of every number
``<dataset>_paired_tests``                  ImageNet vs scratch paired across seeds
``<dataset>_mcnemar``                       McNemar's exact test per seed
``<dataset>_inventory``                     every run folder considered and its status
``<dataset>_n_runs`` / ``_n_missing``       counts of complete and missing/incomplete runs
``<dataset>_test_acc_<label>_<arm>``        mean test accuracy over seeds (float, 0-1); for the papers'
                                            designs (PAPER_DESIGNS) always glued, NaN when not run
``..._ci_low`` / ``..._ci_high`` / ``..._n``  its 95% t-interval (nan for one seed) and seed count
``<dataset>_paper_test_acc_<label>_<arm>``  the paper's published test accuracy (float, 0-1)
``<dataset>_acc_diff_<label>``              ImageNet − scratch test accuracy (mean over paired seeds)
``<dataset>_acc_diff_<label>_p``            its p-value: paired t-test (≥ 2 seeds) or McNemar (1 seed)
``<dataset>_acc_diff_<label>_test``         which test gave that p-value
==========================================  ===================================================

Glued by ``notebooks/explain.ipynb`` (:func:`glue_explain`), with ``<a>`` = the arch:

==============================================  ===============================================
``<dataset>_<a>_explain_banner``                HTML admonition (synthetic data / missing arm), "" if none
``<dataset>_<a>_explain``                       figure: original | saliency | Grad-CAM per arm (B Figs 5-6)
``<dataset>_<a>_explain_summary``               explanation-quality table (DataFrame)
``<dataset>_<a>_explain_note``                  HTML note (missing arm, no masks), empty if none
``<dataset>_explain``, ``_explain_summary``, ``_explain_note``, ``_explain_arch``  the same, arch-free
``<dataset>_<a>_<arm>_<method>_energy``         mean energy share inside the mask
``<dataset>_<a>_<arm>_<method>_pointing``       pointing-game hit rate
``<dataset>_<a>_random_energy`` / ``_area``     random-map energy share / analytic mask area fraction
``<dataset>_<a>_random_pointing``               random-map pointing hit rate
==============================================  ===============================================
"""

from __future__ import annotations

import html
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.ticker import MaxNLocator

from . import metrics

SYNTHETIC_SUFFIX = " — SYNTHETIC DATA"
ARM_TITLES = {"imagenet": "ImageNet", "scratch": "scratch"}
ARM_COLORS = {"imagenet": "#1f77b4", "scratch": "#d62728"}


# ------------------------------------------------------------------------- glue


def glue_name(*parts: Any) -> str:
    """Stable glue key from parts: lower case, non-alphanumerics collapsed to '_'."""
    text = "_".join(str(p) for p in parts if str(p) != "")
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def glue(name: str, value: Any, display: bool = False) -> None:
    """myst_nb.glue under a name checked to be stable."""
    from myst_nb import glue as myst_glue

    if name != glue_name(name):
        raise ValueError(f"glue name {name!r} is not normalised; use glue_name(...) -> {glue_name(name)!r}")
    if isinstance(value, (float, np.floating)):
        value = float(value)
    myst_glue(name, value, display=display)


# ------------------------------------------------------------------------ files


def _atomic_write(path: Path, write) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_text(path: str | Path, text: str) -> Path:
    return _atomic_write(Path(path), lambda p: p.write_text(text, encoding="utf-8"))


def save_figure(fig: plt.Figure, out_dir: str | Path, stem: str, dpi: int = 130) -> list[Path]:
    """Save a figure as PNG and SVG (atomically)."""
    out = []
    for ext in ("png", "svg"):
        out.append(_atomic_write(Path(out_dir) / f"{stem}.{ext}",
                                 lambda p, ext=ext: fig.savefig(p, format=ext, dpi=dpi, bbox_inches="tight")))
    return out


def _flat_columns(df: pd.DataFrame) -> pd.DataFrame:
    if isinstance(df.columns, pd.MultiIndex):
        df = df.copy()
        df.columns = [" | ".join(str(c) for c in col) for col in df.columns]
    return df


def write_table(df: pd.DataFrame, out_dir: str | Path, stem: str, markdown: bool = True,
                index: bool = False) -> list[Path]:
    """Write a table as CSV (and Markdown), atomically."""
    flat = _flat_columns(df)
    out = [_atomic_write(Path(out_dir) / f"{stem}.csv", lambda p: flat.to_csv(p, index=index))]
    if markdown:
        out.append(write_text(Path(out_dir) / f"{stem}.md", flat.to_markdown(index=index) + "\n"))
    return out


# ---------------------------------------------------------------------- banners


def synthetic_suffix(synthetic: bool | None) -> str:
    if synthetic is True:
        return SYNTHETIC_SUFFIX
    if synthetic is None:
        return " — DATA SOURCE NOT RECORDED"
    return ""


def banner(runset: metrics.RunSet | None = None, *, synthetic: bool | None = None,
           missing: Sequence[tuple[str, str]] = (), expected: Sequence[str] = (),
           fmt: str = "html") -> str:
    """Admonition saying the data are synthetic and/or the grid is incomplete, listing what is missing.

    ``expected``: run folder names the grid should have (any not among the runset's complete runs
    is listed as missing). Returns "" when there is nothing to warn about. ``fmt``: "html" (renders
    in Jupyter and in the book) or "myst" (a ``{warning}`` directive for Markdown pages).
    """
    if fmt not in ("html", "myst"):
        raise ValueError(f"fmt must be 'html' or 'myst'; got {fmt!r}")
    gaps = list(missing)
    if runset is not None:
        synthetic = runset.synthetic if synthetic is None else synthetic
        gaps += list(runset.missing) + list(runset.incomplete)
        gaps += [(str(r.path), "metrics.json disagrees with the recomputation: " + "; ".join(r.mismatches))
                 for r in runset.mismatched]
        have = {r.name for r in runset.runs} | {Path(p).name for p, _ in gaps}
        gaps += [(name, "not found") for name in expected if name not in have]
    paragraphs = []
    if synthetic is True:
        paragraphs.append("Synthetic data: every number and figure here comes from the embedded synthetic "
                          "phantoms, not from the Kaggle images. They test the pipeline; they say nothing "
                          "about chest X-rays or kidney CT.")
    elif synthetic is None and runset is not None and runset.runs:
        paragraphs.append("The data source (synthetic or real) of some runs is not recorded.")
    if gaps:
        paragraphs.append(f"Incomplete grid: {len(gaps)} run(s) missing or unusable:")
    if not paragraphs:
        return ""
    title = "Synthetic data" if synthetic else "Incomplete results"
    if synthetic and gaps:
        title = "Synthetic data, incomplete grid"
    items = [f"{Path(p).name}: {why}" for p, why in gaps]
    if fmt == "myst":
        body = "\n\n".join(paragraphs) + ("\n\n" + "\n".join(f"- {i}" for i in items) if items else "")
        return f":::{{warning}} {title}\n{body}\n:::\n"
    body = "".join(f"<p>{html.escape(p)}</p>" for p in paragraphs)
    if items:
        body += "<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>"
    return (f'<div class="admonition warning"><p class="admonition-title">{html.escape(title)}</p>'
            f"{body}</div>")


# ---------------------------------------------------------------------- figures


def _panels(n: int, ncols: int, size: tuple[float, float]) -> tuple[plt.Figure, np.ndarray]:
    ncols = max(1, min(ncols, n))
    nrows = max(1, math.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows + 0.6), squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    return fig, axes.ravel()


def _empty_figure(runset: metrics.RunSet, what: str) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(6, 2))
    ax.axis("off")
    ax.text(0.5, 0.5, f"No complete runs of {runset.dataset}: no {what} to show.",
            ha="center", va="center")
    fig.suptitle(f"{runset.dataset}: {what}{synthetic_suffix(runset.synthetic)}")
    return fig


def _by_config(runset: metrics.RunSet) -> dict[str, dict[str, list[metrics.Run]]]:
    out: dict[str, dict[str, list[metrics.Run]]] = {}
    for r in sorted(runset.runs, key=lambda r: (r.label, metrics.ARMS.index(r.arm), r.seed)):
        out.setdefault(r.label, {}).setdefault(r.arm, []).append(r)
    return out


def _cells(runset: metrics.RunSet) -> list[tuple[str, str, list[metrics.Run]]]:
    """One panel per configuration and arm: ``(label, arm, runs over seeds)``."""
    return [(label, arm, runs) for label, arms in _by_config(runset).items() for arm, runs in arms.items()]


def loss_curves_figure(runset: metrics.RunSet) -> plt.Figure:
    """Train (solid) and validation (dashed) loss per arch, ImageNet vs scratch on the same axes.
    Several seeds: mean per epoch with a 95% t-interval band."""
    configs = _by_config(runset)
    if not configs:
        return _empty_figure(runset, "loss curves")
    sns.set_theme(style="whitegrid", context="paper")
    fig, axes = _panels(len(configs), 3, (4.2, 3.2))
    for ax, (label, arms) in zip(axes, configs.items()):
        for arm, runs in arms.items():
            long = pd.concat([r.history.assign(seed=r.seed) for r in runs])
            for col, style in (("train_loss", "-"), ("val_loss", "--")):
                stats = long.groupby("epoch")[col].apply(lambda v: metrics.mean_ci(v)).apply(pd.Series)
                stats.columns = list(metrics.CI._fields)
                name = f"{ARM_TITLES[arm]} {'train' if col == 'train_loss' else 'val'}"
                ax.plot(stats.index, stats["mean"], style, color=ARM_COLORS[arm], label=name, marker=".")
                band = stats["n"] > 1
                if band.any():
                    ax.fill_between(stats.index[band], stats["low"][band], stats["high"][band],
                                    color=ARM_COLORS[arm], alpha=0.15, linewidth=0)
        seeds = sorted({r.seed for rs in arms.values() for r in rs})
        ax.set_title(f"{label} (seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))})", fontsize=9)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("loss (mean cross-entropy per image)")
        ax.legend(fontsize=7)
    fig.suptitle(f"{runset.dataset}: training and validation loss{synthetic_suffix(runset.synthetic)}")
    fig.tight_layout()
    return fig


def confusion_figure(runset: metrics.RunSet) -> plt.Figure:
    """Confusion matrix per configuration and arm: counts and row-normalised shares (seeds pooled)."""
    cells = _cells(runset)
    if not cells:
        return _empty_figure(runset, "confusion matrices")
    sns.set_theme(style="white", context="paper")
    k = len(cells[0][2][0].class_names)
    side = max(3.2, 0.9 * k + 1.4)
    fig, axes = _panels(len(cells), 4 if k <= 3 else 3, (side, side * 0.9))
    for ax, (label, arm, runs) in zip(axes, cells):
        names = runs[0].class_names
        counts = np.sum([np.asarray(r.metrics["confusion_matrix"]) for r in runs], axis=0)
        rows = counts.sum(axis=1, keepdims=True)
        share = np.divide(counts, rows, out=np.zeros(counts.shape, float), where=rows > 0)
        annot = np.array([[f"{counts[i, j]}\n{share[i, j]:.0%}" for j in range(k)] for i in range(k)])
        sns.heatmap(share, annot=annot, fmt="", cmap="Blues", vmin=0, vmax=1, cbar=False, ax=ax,
                    xticklabels=names, yticklabels=names, annot_kws={"fontsize": 8}, square=True)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.tick_params(axis="x", labelrotation=30, labelsize=7)
        ax.tick_params(axis="y", labelrotation=0, labelsize=7)
        pooled = f"{len(runs)} seeds pooled" if len(runs) > 1 else f"seed {runs[0].seed}"
        acc = np.trace(counts) / counts.sum()
        ax.set_title(f"{label} · {ARM_TITLES[arm]}\n{pooled}, accuracy {acc:.3f}", fontsize=9)
    fig.suptitle(f"{runset.dataset}: confusion matrices (count, row share){synthetic_suffix(runset.synthetic)}")
    fig.tight_layout()
    return fig


def roc_figure(runset: metrics.RunSet) -> plt.Figure:
    """One-vs-rest ROC curves per class for each configuration and arm (lowest seed), AUC in legend."""
    cells = _cells(runset)
    if not cells:
        return _empty_figure(runset, "ROC curves")
    sns.set_theme(style="whitegrid", context="paper")
    fig, axes = _panels(len(cells), 4, (3.4, 3.3))
    palette = sns.color_palette("colorblind")
    for ax, (label, arm, runs) in zip(axes, cells):
        run = runs[0]
        for c, (name, (fpr, tpr, auc)) in enumerate(metrics.roc_curves(run).items()):
            ax.plot(fpr, tpr, color=palette[c % len(palette)], label=f"{name} (AUC {auc:.3f})")
        ax.plot([0, 1], [0, 1], ":", color="grey", linewidth=0.8)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.set_aspect("equal")
        more = f" of {len(runs)}" if len(runs) > 1 else ""
        ax.set_title(f"{label} · {ARM_TITLES[arm]} · seed {run.seed}{more}\n"
                     f"macro AUC {run.metrics['test_auc_macro']:.3f}", fontsize=9)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(f"{runset.dataset}: one-vs-rest ROC curves{synthetic_suffix(runset.synthetic)}")
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------- evaluation


@dataclass
class Evaluation:
    dataset: str
    runset: metrics.RunSet
    out_dir: Path
    table1: pd.DataFrame  # formatted, MultiIndex columns
    table1_values: pd.DataFrame  # numeric means
    table1_long: pd.DataFrame
    runs: pd.DataFrame
    per_class: pd.DataFrame
    test_accuracy: pd.DataFrame
    seed_summary: pd.DataFrame
    paired_tests: pd.DataFrame
    mcnemar: pd.DataFrame
    inventory: pd.DataFrame
    notes: str
    banner: str
    figures: dict[str, plt.Figure] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)


def evaluate(dataset: str, runs: str | Sequence[str] = "", out_dir: str | Path = "", root: str | Path = "runs",
             on_mismatch: str = "raise", expected: Sequence[str] = ()) -> Evaluation:
    """Everything of the evaluation page: tables, figures and files under ``out_dir``
    ("" = ``results/<dataset>/evaluate``)."""
    runset = metrics.load_runs(dataset, runs, root=root, on_mismatch=on_mismatch)
    out = Path(out_dir) if str(out_dir) else Path("results") / dataset / "evaluate"
    notes = "\n\n".join(t for t in (metrics.METRIC_NOTES, metrics.loss_scale_note(runset)) if t)
    ev = Evaluation(
        dataset=dataset, runset=runset, out_dir=out,
        table1=metrics.table1(runset), table1_values=metrics.table1(runset, formatted=False),
        table1_long=metrics.table1_long(runset), runs=metrics.run_table(runset),
        per_class=metrics.per_class_table(runset), test_accuracy=metrics.test_accuracy_table(runset),
        seed_summary=metrics.seed_summary(runset), paired_tests=metrics.paired_tests(runset),
        mcnemar=metrics.mcnemar_tests(runset), inventory=runset.inventory(), notes=notes,
        banner=banner(runset, expected=expected),
    )
    ev.files += write_table(ev.table1, out, "table1", index=True)
    ev.files += write_table(ev.table1_values, out, "table1_values", markdown=False, index=True)
    for stem in ("table1_long", "runs", "per_class", "test_accuracy", "seed_summary", "paired_tests",
                 "mcnemar", "inventory"):
        ev.files += write_table(getattr(ev, stem), out, stem)
    ev.files.append(write_text(out / "notes.md", notes + "\n"))
    ev.files.append(write_text(out / "banner.html", ev.banner))
    ev.figures = {"loss_curves": loss_curves_figure(runset), "confusion": confusion_figure(runset),
                  "roc": roc_figure(runset)}
    for stem, fig in ev.figures.items():
        ev.files += save_figure(fig, out, stem)
        plt.close(fig)  # shown by display(fig) where wanted, not by the inline backend at cell end
    return ev


def markdown_html(text: str):
    """Markdown as an HTML display object: myst-nb pastes text/html across pages, not text/markdown."""
    from IPython.display import HTML
    from markdown_it import MarkdownIt

    return HTML(MarkdownIt("commonmark").enable("table").render(text or ""))


# The papers' designs: their numbers are cited in the text of the book, so their keys are glued
# for every build, as NaN / "not run" where this grid lacks the run.
PAPER_DESIGNS = {
    "covid_radiography": [("resnet18", "replace"), ("vgg11", "replace"), ("alexnet", "replace"),
                          ("mobilenet_v3_large", "replace")],
    "ct_kidney": [("vgg16", "dense1024")],
}


def _paper_design_items(ev: Evaluation) -> dict[str, Any]:
    """Headline numbers of the papers' designs (random split, ImageNet or scratch init only)."""
    ds, items = ev.dataset, {}
    acc = ev.table1_long[ev.table1_long["metric"] == "test_accuracy"]
    paired = ev.paired_tests[ev.paired_tests["metric"] == "test_accuracy"]
    for arch, head in PAPER_DESIGNS.get(ds, []):
        base = arch if head == "replace" else f"{arch}_{head}"
        labels = sorted({r.label for r in ev.runset.runs
                         if r.arch == arch and r.head == head and not r.params.get("init_from")
                         and r.params.get("split", "random") == "random"})
        label = labels[0] if labels else None
        for arm in ("imagenet", "scratch"):
            row = acc[(acc["label"] == label) & (acc["arm"] == arm)] if label else acc.iloc[0:0]
            ok = len(row) and row.iloc[0]["n"]
            items[glue_name(ds, "test_acc", base, arm)] = float(row.iloc[0]["mean"]) if ok else float("nan")
            items[glue_name(ds, "test_acc", base, arm, "n")] = int(row.iloc[0]["n"]) if ok else 0
        key = glue_name(ds, "acc_diff", base)
        row = paired[paired["label"] == label] if label else paired.iloc[0:0]
        if len(row):
            r = row.iloc[0]
            items[key] = float(r["mean_diff"])
            if r["n_pairs"] >= 2:
                items[key + "_p"], items[key + "_test"] = float(r["p_ttest"]), "paired t-test over seeds"
            else:
                mc = ev.mcnemar[ev.mcnemar["label"] == label].iloc[0]
                items[key + "_p"], items[key + "_test"] = float(mc["p_mcnemar"]), "McNemar's exact test"
        else:
            items[key], items[key + "_p"] = float("nan"), float("nan")
            items[key + "_test"] = "not run: this build lacks one or both arms"
    return items


def split_comparison(ev: Evaluation) -> pd.DataFrame:
    """Test accuracy (mean and 95% CI over seeds) of every configuration, by split and arm."""
    rows = []
    groups: dict[tuple, list] = {}
    for r in ev.runset.runs:
        key = (r.arch, r.head, r.params.get("split", "random"), r.arm,
               Path(str(r.params.get("init_from") or "")).parent.name)
        groups.setdefault(key, []).append(r.metrics["test_accuracy"])
    for (arch, head, split, arm, source), accs in sorted(groups.items()):
        ci = metrics.mean_ci(accs)
        rows.append({"arch": arch, "head": head, "split": split,
                     "start": f"init from {source}" if source else ARM_TITLES.get(arm, arm),
                     "seeds": ci.n, "test accuracy": ci.mean, "95% CI low": ci.low, "95% CI high": ci.high})
    return pd.DataFrame(rows, columns=["arch", "head", "split", "start", "seeds", "test accuracy",
                                       "95% CI low", "95% CI high"])


def glue_evaluation(ev: Evaluation) -> list[str]:
    """Glue every table, figure and headline number of an evaluation; returns the names glued."""
    from IPython.display import HTML, Markdown

    ds = ev.dataset
    items: dict[str, Any] = {
        glue_name(ds, "banner"): HTML(ev.banner),
        glue_name(ds, "notes"): markdown_html(ev.notes),
        glue_name(ds, "split_comparison"): split_comparison(ev),
        glue_name(ds, "table1"): ev.table1,
        glue_name(ds, "per_class"): ev.per_class,
        glue_name(ds, "test_accuracy"): ev.test_accuracy,
        glue_name(ds, "seed_summary"): ev.seed_summary,
        glue_name(ds, "paired_tests"): ev.paired_tests,
        glue_name(ds, "mcnemar"): ev.mcnemar,
        glue_name(ds, "inventory"): ev.inventory,
        glue_name(ds, "n_runs"): len(ev.runset.runs),
        glue_name(ds, "n_missing"): len(ev.runset.missing) + len(ev.runset.incomplete),
    }
    for stem, fig in ev.figures.items():
        items[glue_name(ds, stem)] = fig
    acc = ev.table1_long[ev.table1_long["metric"] == "test_accuracy"]
    for row in acc.itertuples():
        key = glue_name(ds, "test_acc", row.label, row.arm)
        if row.n:
            items[key] = row.mean
            items[key + "_ci_low"] = row.ci_low
            items[key + "_ci_high"] = row.ci_high
            items[key + "_n"] = int(row.n)
        if row.paper:
            items[glue_name(ds, "paper_test_acc", row.label, row.arm)] = row.paper_value
    paired = ev.paired_tests[ev.paired_tests["metric"] == "test_accuracy"]
    for row in paired.itertuples():
        key = glue_name(ds, "acc_diff", row.label)
        items[key] = row.mean_diff
        if row.n_pairs >= 2:
            items[key + "_p"], items[key + "_test"] = row.p_ttest, "paired t-test over seeds"
        else:
            mc = ev.mcnemar[ev.mcnemar["label"] == row.label].iloc[0]
            items[key + "_p"], items[key + "_test"] = mc["p_mcnemar"], "McNemar's exact test"
    items.update(_paper_design_items(ev))
    for name, value in items.items():
        glue(name, value, display=False)
    return list(items)


def glue_explain(res) -> list[str]:
    """Glue the explanation figure, its summary and headline scores (see the module docstring)."""
    from IPython.display import HTML, Markdown

    ds, arch = res.dataset, res.arch
    items: dict[str, Any] = {glue_name(ds, arch, "explain_banner"): HTML(res.banner()),
                             glue_name(ds, arch, "explain"): res.figure,
                             glue_name(ds, arch, "explain_summary"): res.summary,
                             glue_name(ds, arch, "explain_note"): markdown_html(res.note)}
    # Arch-free names too, so a page can cite whichever arch the experiment explains.
    items.update({glue_name(ds, "explain"): res.figure, glue_name(ds, "explain_summary"): res.summary,
                  glue_name(ds, "explain_note"): markdown_html(res.note),
                  glue_name(ds, "explain_arch"): arch})
    for row in res.summary.itertuples() if len(res.summary) else []:
        items[glue_name(ds, arch, row.arm, row.method, "energy")] = row.energy_share
        items[glue_name(ds, arch, row.arm, row.method, "pointing")] = row.pointing_hit_rate
        items[glue_name(ds, arch, "random_energy")] = row.random_energy_share
        items[glue_name(ds, arch, "area")] = row.mask_area_fraction
        items[glue_name(ds, arch, "random_pointing")] = row.random_pointing
    for name, value in items.items():
        glue(name, value, display=False)
    return list(items)
