"""The evaluate page: every table and figure of both papers, recomputed from run folders.

Glued by ``notebooks/evaluate.ipynb`` (:func:`glue_evaluation`): ``banner``, ``notes``,
``table1``, ``split_comparison``, ``per_class``, ``test_accuracy``, ``seed_summary``,
``comparisons`` (paired tests and McNemar), ``inventory`` (tables); ``loss_curves``, ``confusion``, ``roc``
(figures); ``n_runs``, ``n_missing``; ``headline_imagenet``, ``headline_scratch``,
``headline_difference`` (the paper's headline comparison in words, see :func:`headline`).
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.ticker import MaxNLocator

from . import intervals, metrics, tables
from .params import PAIR, arm_order, arm_title
from .report import (ARCH_TITLES, MISSING_LINK, NOT_RUN, arm_color, banner, figure_image, glue, markdown_html,
                     save_figure, styled, synthetic_suffix, write_table, write_text)


def _panels(n: int, ncols: int, size: tuple[float, float]) -> tuple[plt.Figure, np.ndarray]:
    ncols = max(1, min(ncols, n))
    nrows = max(1, math.ceil(n / ncols))
    # constrained layout makes room for multi-line panel titles and the suptitle
    fig, axes = plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows + 0.6), squeeze=False,
                             layout="constrained")
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
    for r in sorted(runset.runs, key=lambda r: (r.label, arm_order(r.arm), r.seed)):
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
                stats = long.groupby("epoch")[col].apply(lambda v: intervals.mean_ci(v)).apply(pd.Series)
                stats.columns = list(intervals.Interval._fields)
                name = f"{arm_title(arm)} {'train' if col == 'train_loss' else 'val'}"
                ax.plot(stats.index, stats["mean"], style, color=arm_color(arm), label=name, marker=".")
                band = stats["n"] > 1
                if band.any():
                    ax.fill_between(stats.index[band], stats["low"][band], stats["high"][band],
                                    color=arm_color(arm), alpha=0.15, linewidth=0)
        seeds = sorted({r.seed for rs in arms.values() for r in rs})
        ax.set_title(f"{label} (seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))})", fontsize=9)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("loss (mean cross-entropy per image)")
        ax.legend(fontsize=7)
    fig.suptitle(f"{runset.dataset}: training and validation loss{synthetic_suffix(runset.synthetic)}")
    return fig


def _wrapped(label: str, width: int = 30) -> str:
    """A configuration label on as many lines as a small panel's title needs."""
    return "\n".join(textwrap.wrap(label, width, break_on_hyphens=False))


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
        ax.set_title(f"{_wrapped(label)}\n{arm_title(arm)} · {pooled}, accuracy {acc:.3f}", fontsize=9)
    fig.suptitle(f"{runset.dataset}: confusion matrices (count, row share){synthetic_suffix(runset.synthetic)}")
    return fig


def roc_figure(runset: metrics.RunSet) -> plt.Figure:
    """One-vs-rest ROC curves per class for each configuration and arm (lowest seed), AUC in legend."""
    cells = _cells(runset)
    if not cells:
        return _empty_figure(runset, "ROC curves")
    sns.set_theme(style="whitegrid", context="paper")
    fig, axes = _panels(len(cells), 4, (3.4, 4.2))
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
        ax.set_title(f"{_wrapped(label)}\n{arm_title(arm)} · seed {run.seed}{more}\n"
                     f"macro AUC {run.metrics['test_auc_macro']:.3f}", fontsize=9)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(f"{runset.dataset}: one-vs-rest ROC curves{synthetic_suffix(runset.synthetic)}")
    return fig


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
    notes = "\n\n".join(t for t in (metrics.METRIC_NOTES, tables.loss_scale_note(runset)) if t)
    ev = Evaluation(
        dataset=dataset, runset=runset, out_dir=out,
        table1=tables.table1(runset), table1_values=tables.table1(runset, formatted=False),
        table1_long=tables.table1_long(runset), runs=tables.run_table(runset),
        per_class=tables.per_class_table(runset), test_accuracy=tables.test_accuracy_table(runset),
        seed_summary=tables.seed_summary(runset), paired_tests=tables.paired_tests(runset),
        mcnemar=tables.mcnemar_tests(runset), inventory=runset.inventory(), notes=notes,
        banner=banner(runset, expected=expected, link="../" + MISSING_LINK),  # shown in generated/
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


def _cell(mean: float, low: float, high: float, n: int) -> str:
    if n == 0 or not np.isfinite(mean):
        return "—"
    return f"{mean:.3f}" if n == 1 or not np.isfinite(low) else f"{mean:.3f} ± {(high - low) / 2:.3f}"


def table1_display(ev: "Evaluation"):
    """Table 1 laid out as in paper A: metrics as rows; weights × backbone as columns; the
    published values in their own shaded columns beside ours."""
    long = ev.table1_long
    if long.empty:
        return markdown_html("No complete runs: Table 1 is empty.")
    cols, data, published = [], {}, []
    arch_pos = {a: i for i, a in enumerate(metrics.arch_order())}
    keys = sorted({(r.arm, r.label, r.arch) for r in long.itertuples()},
                  key=lambda k: (arm_order(k[0]), arch_pos.get(k[2], len(arch_pos)), k[1]))
    for arm, label, arch in keys:
        part = long[(long["arm"] == arm) & (long["label"] == label)].set_index("metric").loc[list(metrics.TABLE1_ROWS)]
        name = ARCH_TITLES.get(arch, arch) + label[len(arch):]
        col = (arm_title(arm), name, "ours")
        cols.append(col)
        data[col] = [_cell(r.mean, r.ci_low, r.ci_high, r.n) for r in part.itertuples()] + [int(part["n"].iloc[0])]
        if part["paper"].iloc[0]:
            pcol = (arm_title(arm), name, f"{part['paper'].iloc[0]} (published)")
            cols.append(pcol)
            published.append(pcol)
            data[pcol] = [f"{v:g}" if np.isfinite(v) else "—" for v in part["paper_value"]] + ["1"]
    index = list(metrics.TABLE1_ROWS.values()) + ["Seeds (runs)"]
    df = pd.DataFrame(data, index=index, columns=pd.MultiIndex.from_tuples(cols, names=["weights", "backbone", ""]))
    styler = (df.style.set_table_attributes('class="table1"')
              .set_properties(subset=published, **{"background-color": "#fdf3e1", "font-style": "italic"})
              .set_table_styles([{"selector": "th.col_heading.level2", "props": "font-weight: normal;"}]))
    paper = next((p for p in long["paper"] if p), "")
    caption = ("Ours: mean ± half-width of the 95 % t-interval over seeds (one seed: the value). "
               + (f"Shaded, italic columns: the values published in {paper}; losses are on its own scale "
                  "(see the note below)." if paper else ""))
    return styled(df, styler=styler, caption=caption)


def _config_title(label: str, arch: str) -> str:
    """'resnet18 (split=grouped)' -> 'ResNet-18 (split=grouped)'."""
    return ARCH_TITLES.get(arch, arch) + label[len(arch):] if label.startswith(arch) else label


SEED_SUMMARY_COLUMNS = {"test_accuracy": "test accuracy", "test_auc_macro": "macro AUC",
                        "best_val_acc": "best val. accuracy", "first_epoch_val_acc": "val. accuracy, epoch 1"}


def seed_summary_display(ev: "Evaluation"):
    """One row per configuration and arm; the headline numbers as mean ± 95 % CI half-width over
    seeds (every number, per class too, is in seed_summary.csv and the evaluation notebook)."""
    s = ev.seed_summary
    if s.empty:
        return markdown_html("No complete runs: nothing to summarise.")
    arch_pos = {a: i for i, a in enumerate(metrics.arch_order())}
    rows = []
    for (label, arch, arm), part in s.groupby(["label", "arch", "arm"]):
        part = part.set_index("metric")
        row = {"configuration": _config_title(label, arch), "weights": arm_title(arm),
               "seed(s)": part["seeds"].iloc[0]}
        for metric, title in SEED_SUMMARY_COLUMNS.items():
            r = part.loc[metric]
            row[title] = _cell(r["mean"], r["ci_low"], r["ci_high"], r["n"])
        rows.append(((arch_pos.get(arch, len(arch_pos)), label, arm_order(arm)), row))
    df = pd.DataFrame([r for _, r in sorted(rows, key=lambda kv: kv[0])])
    return styled(df, caption="Mean ± half-width of the 95 % t-interval over the seeds listed "
                              "(one seed: the value).")


def comparisons_display(ev: "Evaluation"):
    """Arms compared: paired across seeds where there are two or more, McNemar per seed."""
    p, m = ev.paired_tests, ev.mcnemar
    if p.empty:
        return markdown_html("No configuration of this build has two arms with a shared seed: "
                             "nothing to compare.")
    title = {label: _config_title(label, arch) for label, arch in
             {(r.label, r.arch) for r in ev.runset.runs}}
    df = pd.DataFrame({
        "configuration": p["label"].map(title), "comparison": [f"{arm_title(a)} − {arm_title(b)}"
                                                               for a, b in zip(p["arm_a"], p["arm_b"])],
        "metric": p["metric"].str.replace("_", " "), "seeds": p["seeds"], "first": p["mean_a"],
        "second": p["mean_b"], "difference": p["mean_diff"],
        "95 % CI": [f"{lo:+.3f} to {hi:+.3f}" if np.isfinite(lo) else None
                    for lo, hi in zip(p["diff_ci_low"], p["diff_ci_high"])],
        "p (paired t)": p["p_ttest"], "Cohen's dz": p["cohens_dz"], "p (Wilcoxon)": p["p_wilcoxon"],
        "note": p["note"].where(p["note"] != "", None)})
    tables = [styled(df, caption="Paired across seeds; difference = first arm − second.")]
    if len(m):
        mc = pd.DataFrame({
            "configuration": m["label"].map(title),
            "comparison": [f"{arm_title(a)} − {arm_title(b)}" for a, b in zip(m["arm_a"], m["arm_b"])],
            "seed": m["seed"], "test images": m["n_test"], "first": m["acc_a"], "second": m["acc_b"],
            "difference": m["acc_diff"], "only first right": m["b"], "only second right": m["c"],
            "p (McNemar)": m["p_mcnemar"]})
        tables.append(styled(mc, caption="Test accuracy per seed on the same test images: McNemar's exact test."))
    from IPython.display import HTML

    return HTML("".join(t.data for t in tables))


def _number(value: float, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if value is not None and np.isfinite(value) else NOT_RUN


def headline(ev: "Evaluation") -> dict[str, str]:
    """The paper's headline comparison (published.yaml ``headline``) in this build: ImageNet and
    scratch test accuracy and their difference, as text; "not run on this machine" where the
    runs are missing, never nan."""
    paper = metrics.paper_values(ev.dataset)
    arch, head = paper.get("headline") or (None, None)
    runs = [r for r in ev.runset.runs if r.arch == arch and r.head == head and r.papers_design]
    label = min((r.label for r in runs), key=len, default=None)
    out = {}
    for arm in PAIR:
        accs = [r.metrics["test_accuracy"] for r in runs if r.label == label and r.arm == arm]
        ci = intervals.mean_ci(accs)
        seeds = f" (mean of {ci.n} seeds)" if ci.n > 1 else ""
        out[arm] = _number(ci.mean) + (seeds if ci.n else "")
    row = ev.paired_tests[(ev.paired_tests["label"] == label) & (ev.paired_tests["metric"] == "test_accuracy")
                          & (ev.paired_tests["arm_a"] == "imagenet") & (ev.paired_tests["arm_b"] == "scratch")]
    if len(row):
        r = row.iloc[0]
        if r["n_pairs"] >= 2:
            p, test = r["p_ttest"], "paired t-test over seeds"
        else:
            mc = ev.mcnemar[(ev.mcnemar["label"] == label) & (ev.mcnemar["arm_a"] == "imagenet")
                            & (ev.mcnemar["arm_b"] == "scratch")].iloc[0]
            p, test = mc["p_mcnemar"], "McNemar's exact test"
        p_text = f"p = {p:.3g}" if np.isfinite(p) else "p undefined: the differences do not vary"
        diff = f"The difference, ImageNet minus scratch, is {r['mean_diff']:+.3f} ({p_text}, {test})."
    else:
        absent = [arm_title(a) for a in PAIR if out[a] == NOT_RUN]
        diff = (f"The difference cannot be computed here: the {' and '.join(absent)} run"
                f"{'s were' if len(absent) > 1 else ' was'} {NOT_RUN}." if absent else
                "The difference cannot be computed here: the two arms share no seed.")
    out["difference"] = diff
    return out


def learned_sentence(ev: Evaluation) -> str:
    """One sentence: which configurations of this build stayed at chance (their pooled test
    accuracy's 95% interval reaches 1/K), so a reader knows which comparisons show something."""
    table = tables.above_chance(ev.runset)
    if table.empty:
        return "No run of this dataset completed on this machine."
    chance = f"{table['chance'].iloc[0]:.0%}"
    stuck = table[~table["learned"]]
    if stuck.empty:
        return f"Every configuration that ran learned above chance ({chance}; 95% interval of the test accuracy)."
    names = "; ".join(f"{r.configuration} {arm_title(r.arm)} ({r.accuracy:.0%})"
                      for r in stuck.itertuples())
    return (f"At chance ({chance}) in this build, within the 95% interval of their test accuracy: {names}. "
            f"These networks did not learn at this data size; every other configuration did.")


def glue_evaluation(ev: Evaluation) -> list[str]:
    """Glue every table, figure and headline of an evaluation; returns the names glued.

    Names are per notebook (pages cite ``generated/evaluate_<dataset>.ipynb::<name>``)."""
    from IPython.display import HTML

    hl = headline(ev)
    inventory = ev.inventory.drop(columns=["path"])
    items: dict[str, Any] = {
        "banner": HTML(ev.banner),
        "notes": markdown_html(ev.notes),
        "split_comparison": styled(tables.split_comparison(ev.runset)),
        "table1": table1_display(ev),
        "per_class": styled(ev.per_class),
        "test_accuracy": styled(ev.test_accuracy),
        "seed_summary": seed_summary_display(ev),
        "comparisons": comparisons_display(ev),
        "inventory": styled(inventory),
        "n_runs": len(ev.runset.runs),
        "n_missing": len(ev.runset.missing) + len(ev.runset.incomplete),
        "loss_curves": figure_image(ev.figures["loss_curves"]),
        "confusion": figure_image(ev.figures["confusion"]),
        "roc": figure_image(ev.figures["roc"]),
        "headline_imagenet": hl["imagenet"],
        "headline_scratch": hl["scratch"],
        "headline_difference": hl["difference"],
        "learned": learned_sentence(ev),
    }
    for name, value in items.items():
        glue(name, value, display=False)
    return list(items)

