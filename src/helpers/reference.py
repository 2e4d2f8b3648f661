"""The reference study's pages: the tables and sentences ``notebooks/reference.ipynb`` glues,
each computed from the committed records (:mod:`helpers.study` reads and compares them). The
shortcut and calibration pieces beside the answer are :mod:`helpers.robustness`."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from . import experiment as ex
from . import data, designs, models, protocols, records, report, study
from .data.splits import ratio_text
from .params import FOLDS, STOPPED_BY


def dataset_title(ds: str) -> str:
    """Its name in the pages' prose and tables: the spec's (the table's, or one's own)."""
    return data.get_spec(ds).title


def resampled_text(exp: dict) -> str:
    """What the intervals resample, per kind of image: "test images (chest X-ray) and blocks of
    25 consecutive slices (kidney CT)"; a derived dataset or a second copy counts as its source."""
    kinds: dict[str, list[str]] = {}
    for ds in exp["datasets"]:
        spec = data.get_spec(ds)
        title = dataset_title(spec.derived_from or spec.published_as or ds)
        kinds.setdefault(designs.resampled_unit(ds), [])
        if title not in kinds[designs.resampled_unit(ds)]:
            kinds[designs.resampled_unit(ds)].append(title)
    parts = [f"{unit} ({', '.join(titles)})" for unit, titles in kinds.items()]
    return " and ".join([", ".join(parts[:-1]), parts[-1]] if len(parts) > 2 else parts)


# after a run's dataset in a label: the usual split goes unnamed
SHORT_SPLITS = {split: "" if split == "random" else f", {cell}" for split, cell in study.SPLIT_CELLS.items()}


def _several_splits(exp: dict, ds: str) -> bool:
    return len({rid.split for rid in ex.runs(exp) if rid.dataset == ds}) > 1


def _where(exp: dict, ds: str, split: str, names: dict = study.SPLIT_CELLS) -> str:
    """A dataset's name, with the split where the study splits it more than one way."""
    return dataset_title(ds) + (f", {names[split]}" if _several_splits(exp, ds) else "")


def check_notes(exp: dict, manifest: dict, problems: list[str], stages: pd.DataFrame) -> str:
    """HTML boxes: records out of date, and the stages not recorded yet ("" when neither)."""
    late = stages[stages["recorded"] < stages["runs"]]
    notes = []
    if problems:
        notes.append('<div class="admonition warning"><p class="admonition-title">Records out of date</p><p>'
                     f"{len(problems)} run(s) of {exp['path']} differ from the committed records, "
                     f"e.g. {problems[0]}. Regenerate them with <code>{manifest['report_command']}</code>.</p></div>")
    if len(late):
        done = ", ".join(str(s) for s in stages[stages["recorded"] == stages["runs"]]["stage"]) or "none"
        notes.append('<div class="admonition note"><p class="admonition-title">A study in stages</p><p>'
                     f"The study runs in {len(stages)} stages on a 2-core CPU; complete so far: {done}. "
                     f"{int(late['runs'].sum() - late['recorded'].sum())} of {int(stages['runs'].sum())} runs are not "
                     "recorded yet (stages " + ", ".join(f"{r.stage}: {r.recorded}/{r.runs}" for r in late.itertuples())
                     + "). Numbers below use what is recorded; a learning-rate sweep enters the answer only once "
                     "all of its rates are recorded.</p></div>")
    return "".join(notes)


def near_copies(data_info: dict, ds: str, split: str) -> str:
    share = data_info.get(f"{ds}-{split}", {}).get("near_copy_share", {}).get("test")
    return "—" if share is None else f"{100 * share:.0f}%"


def tested_on_text(arm, near_copy: str = "—") -> str:
    """What a test set rests on: "600 test images, 0% of them with a near-copy in train", and for
    CT slices "; from 128 blocks of 25 consecutive slices: Cyst 36, ...", the blocks being the
    independent units an interval resamples."""
    blocks = arm.test_blocks
    unit = "slices" if blocks else "images"
    text = f"{arm.n_test:,} test {unit}, {near_copy} of them with a near-copy in train"
    if not blocks:
        return text
    per_class = ", ".join(f"{name} {n}" for name, n in blocks.items())
    return f"{text}; from {sum(blocks.values())} {arm.resampled}: {per_class}"


def _later_stages(exp: dict, ds: str) -> list[int]:
    return sorted({n for rid, n in ex.stages(exp).items() if rid.dataset == ds})


def answer_table(exp: dict, arms: pd.DataFrame, diffs: pd.DataFrame, data_info: dict) -> pd.DataFrame:
    """One row per (dataset, split, protocol): each arm's accuracy and ImageNet − scratch, each
    value over its interval, the protocol under the data, so that it fits the page (ImageNet −
    linear probe is in the sentences and the differences table)."""
    rows = []
    for (ds, split, protocol), part in arms.groupby(["dataset", "split", "protocol"], sort=False):
        # narrow enough for the page: test counts and near-copy shares are in the sentences
        row = {"data": two_lines(_where(exp, ds, split), protocol_cell(exp, protocol), split_value=False)}
        gap = gap_row(diffs, ds, split, protocol)
        limited = gap is not None and getattr(gap, "limit", "")
        for r in part.itertuples():
            seeds = f"{r.seeds} seed{'s' if r.seeds > 1 else ''}"
            row[f"{report.arm_title(r.arm)} (%)"] = (   # an interval over too few blocks measures the class mix
                two_lines(f"{100 * r.accuracy:.1f}", f"{seeds}; no interval", split_value=False) if limited
                else two_lines(study.fmt_ci(r.accuracy, r.ci_low, r.ci_high, unit=False), seeds))
        for d in diffs[(diffs["dataset"] == ds) & (diffs["split"] == split) & (diffs["protocol"] == protocol)
                       & (diffs["arm_b"] == "scratch")].itertuples():
            row[f"{d.comparison} (pp)"] = (two_lines("cannot be estimated", "the design: see the text", split_value=False)
                                           if getattr(d, "limit", "") else
                                           two_lines(study.fmt_diff(d.difference, d.ci_low, d.ci_high, unit=False)))
        rows.append(row)
    for ds in exp["datasets"]:  # a dataset of a later stage: a row that says so
        if ds not in set(arms["dataset"]):
            later = ", ".join(map(str, _later_stages(exp, ds)))
            rows.append({"data": two_lines(dataset_title(ds), f"not recorded yet (stage {later})", split_value=False)})
    return pd.DataFrame(rows).fillna("—")


def two_lines(text: str, note: str = "", split_value: bool = True) -> str:
    """ "97.8 [96.6, 98.9]" as the value over its interval (and a note), so that the answer's
    columns fit the page without scrolling sideways; ``split_value=False``: ``text`` over ``note``."""
    if not split_value:
        return f'<span class="wrap">{text}</span><br><span class="ci">{note}</span>'
    value, _, interval = text.partition(" ")
    first = f'{value}&nbsp;<span class="ci">({note.replace(" ", "&nbsp;")})</span>' if note else value
    return f'{first}<br><span class="ci">{interval}</span>' if interval else first


def gap_row(diffs: pd.DataFrame, ds: str, split: str, protocol: str):
    d = diffs[(diffs["dataset"] == ds) & (diffs["split"] == split) & (diffs["protocol"] == protocol)
              & (diffs["arm_b"] == "scratch")]
    return None if d.empty else d.iloc[0]


def _seeds_note(d) -> str:
    """How many seeds a difference rests on, its per-seed gaps, and, with one seed, that its
    interval covers the test images only."""
    if d.seeds > 1:
        return f"{int(d.seeds)} seeds, per-seed gaps {d.seed_gaps} pp"
    return "one seed: the interval covers the test images only"


def _sentence(arms: pd.DataFrame, diffs: pd.DataFrame, ds: str, split: str, protocol: str) -> str:
    s = gap_row(diffs, ds, split, protocol)
    a = arms[(arms["dataset"] == ds) & (arms["split"] == split) & (arms["protocol"] == protocol)].set_index("arm")
    if s is None:
        return ""
    if getattr(s, "limit", ""):   # the design cannot say: the numbers as measured, and why they answer nothing
        return (f"whether ImageNet weights help cannot be estimated, because {s.limit} (as measured: "
                f"{100 * a.loc['imagenet', 'accuracy']:.1f}% against {100 * a.loc['scratch', 'accuracy']:.1f}% from "
                f"scratch, {100 * s.difference:+.1f} pp)")
    verdict = ("help" if s.ci_low > 0 else "hurt" if s.ci_high < 0 else "make no clear difference")
    text = (f"ImageNet weights {verdict}: {100 * a.loc['imagenet', 'accuracy']:.1f}% against "
            f"{100 * a.loc['scratch', 'accuracy']:.1f}% from scratch ({study.fmt_diff(s.difference, s.ci_low, s.ci_high)}; "
            + _seeds_note(s) + ")")
    if not protocol and "linear_probe" in a.index:
        p = diffs[(diffs["dataset"] == ds) & (diffs["split"] == split) & (diffs["protocol"] == "") & (diffs["arm_b"] == "linear_probe")]
        if len(p):
            p = p.iloc[0]
            text += (f"; frozen ImageNet features with a trained head reach {100 * a.loc['linear_probe', 'accuracy']:.1f}% "
                     f"(fine-tuning adds {study.fmt_diff(p.difference, p.ci_low, p.ci_high)})")
    return text


def _imagenet_only(arms: pd.DataFrame, ds: str, split: str, protocol: str) -> str:
    """The ImageNet arm of a protocol whose own scratch arm is not recorded yet."""
    i = arms[(arms["dataset"] == ds) & (arms["split"] == split) & (arms["protocol"] == protocol)
             & (arms["arm"] == "imagenet")].iloc[0]
    seeds = f"{int(i.seeds)} seed{'s' if i.seeds > 1 else ''}"
    return (f"ImageNet weights reach {study.fmt_ci(i.accuracy, i.ci_low, i.ci_high)} ({seeds}); "
            f"{study.arch_label(i.arch, i.head)} from scratch under it is not recorded yet")


def other_networks(best: pd.DataFrame) -> pd.Series:
    """Rows of :func:`study.best_scratch` that compare against another network than the answer's own
    scratch arm: several networks trained from scratch, or one of another arch."""
    return (best["networks"] > 1) | (best["arch"] != models.REFERENCE_ARCH)


def _best_scratch_sentence(best: pd.DataFrame | None, ds: str, split: str, limit: str = "", protocol: str = "") -> str:
    """ImageNet against the best network from scratch under ``protocol``, where that is another
    network than the arch's own scratch arm (:func:`other_networks`)."""
    if best is None:
        return ""
    b = best[(best["dataset"] == ds) & (best["split"] == split) & (best["protocol"] == protocol) & other_networks(best)]
    if b.empty:
        return ""
    b = b.iloc[0]
    if limit:
        return (f" *Against the best network from scratch* ({study.arch_label(b.arch, b.head)}, {100 * b.accuracy:.1f}%): "
                "cannot be estimated either, for the same reason.")
    verdict = ("still win" if b.ci_low > 0 else "lose" if b.ci_high < 0 else "make no clear difference")
    covers = {"images, seeds of one side": f"; with one seed of {study.arch_label(b.arch, b.head)}, the interval "
                                           "leaves its seed-to-seed variation out",
              "images": "; one seed on each side: the interval covers the test images only"}.get(b.interval, "")
    how = "to convergence" if not protocol else "with the same recipe"
    return (f" *Against the best network from scratch*{' under it' if protocol else ''} ({study.arch_label(b.arch, b.head)}, "
            f"{100 * b.accuracy:.1f}%, {int(b.seeds)} seed{'s' if b.seeds > 1 else ''}; "
            + (f"of {int(b.networks)} networks trained from scratch {how}, each at its chosen rate, the best on validation"
               if b.networks > 1 else f"so far the only network trained from scratch {how}, at its chosen rate")
            + f"): ImageNet weights {verdict} "
            f"({study.fmt_diff(b.difference, b.ci_low, b.ci_high)}{covers}).")


def answer_text(exp: dict, arms: pd.DataFrame, diffs: pd.DataFrame, old: dict | None, data_info: dict,
                best: pd.DataFrame | None = None, datasets: list[str] | None = None) -> str:
    """Markdown: the answer per dataset (of ``datasets``, by default the study's) and split, at
    convergence and at paper A's budget, against the best network from scratch (``best``:
    :func:`study.best_scratch`), and how much of the first edition's gap survives."""
    parts, datasets = [], datasets or list(exp["datasets"])
    arms = arms[arms["dataset"].isin(datasets)]
    for (ds, split) in arms[["dataset", "split"]].drop_duplicates().itertuples(index=False):
        where = _where(exp, ds, split, study.SPLIT_TITLES)
        fair = _sentence(arms, diffs, ds, split, "")
        budgets = {p: _sentence(arms, diffs, ds, split, p) for p in protocols.answer_protocols(exp)}
        first = arms[(arms["dataset"] == ds) & (arms["split"] == split)].iloc[0]
        text = f"**{where}** ({tested_on_text(first, near_copies(data_info, ds, split))}). "
        fair_title = protocols.protocol_title(exp, "")
        text += (f"*{fair_title[0].upper() + fair_title[1:]}:* {fair}." if fair
                 else f"*{fair_title[0].upper() + fair_title[1:]}:* not recorded yet (a later stage).")
        gap = gap_row(diffs, ds, split, "")
        text += _best_scratch_sentence(best, ds, split, getattr(gap, "limit", "") if gap is not None else "")
        for p, budget in budgets.items():
            against_best = _best_scratch_sentence(best, ds, split, protocol=p)
            if budget or against_best:   # the best network from scratch may come before the arch's own scratch arm
                title, _, detail = protocols.protocol_title(exp, p).partition(": ")
                lead = "At" if title.endswith("budget") else "With"
                text += f" *{lead} {title}* ({detail}): {budget or _imagenet_only(arms, ds, split, p)}." + against_best
        now, then = gap_row(diffs, ds, split, ""), gap_row(old["differences"], ds, split, "") if old else None
        if now is not None and then is not None and not getattr(now, "limit", ""):   # no gap to compare against
            text += f" The first edition ({old['note']}) measured {study.fmt_diff(then.difference, then.ci_low, then.ci_high)}"
            if "interval" not in old["differences"].columns:   # archived before intervals covered the seeds
                text += " (an interval over test images only)"
            text += (f": {max(0.0, now.difference) / then.difference:.0%} of that gap survives." if then.ci_low > 0 else ".")
        parts.append(text)
    for ds in datasets:
        if ds not in set(arms["dataset"]):
            later = _later_stages(exp, ds)
            parts.append(f"**{dataset_title(ds)}**: not recorded yet; its runs are stage{'s' if len(later) > 1 else ''} "
                         f"{', '.join(map(str, later))} of the study.")
    return "\n\n".join(parts)


SHORT_METHODS = {"seeds+images": "seeds and {unit}", "seeds+images, paired seeds": "seeds (paired) and {unit}",
                 "images": "{unit} only (one seed)", "images, seeds of one side": "{unit}; seeds of the side with several"}


def _short_method(method: str, dataset: str) -> str:
    """A narrow cell: what an interval resampled ("seeds (paired) and images")."""
    unit = "slice blocks" if designs.resampled_unit(dataset).startswith("blocks") else "images"
    return SHORT_METHODS[method].format(unit=unit)


def differences_display(exp: dict, diffs: pd.DataFrame, best: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every difference of the answer with how its interval was made: the headline interval
    (over seeds and test images where both arms have several seeds), the per-seed gaps with a
    t-interval over them, and the interval over test images alone (seeds averaged first)."""
    rows = []
    for d in diffs.itertuples():
        rows.append({"data": _where(exp, d.dataset, d.split, study.SPLIT_CELLS),
                     "protocol": "converged" if not d.protocol else protocols.short_title(exp, d.protocol),
                     "comparison": d.comparison,
                     "difference (pp)": (two_lines("cannot be estimated", "as measured: " + study.fmt_diff(
                                             d.difference, d.ci_low, d.ci_high, unit=False), split_value=False)
                                         if getattr(d, "limit", "") else
                                         two_lines(study.fmt_diff(d.difference, d.ci_low, d.ci_high, unit=False))),
                     "resampled": _short_method(d.interval, d.dataset),
                     "per-seed gaps (pp)": d.seed_gaps if d.seeds > 1 else "—",
                     "t-interval over the gaps": ("—" if pd.isna(d.gap_t_low) else
                                                  f"[{100 * d.gap_t_low:+.1f}, {100 * d.gap_t_high:+.1f}]"),
                     "images only": f"[{100 * d.image_ci_low:+.1f}, {100 * d.image_ci_high:+.1f}]"})
    for b in ([] if best is None else best[other_networks(best)].itertuples()):
        rows.append({"data": _where(exp, b.dataset, b.split, study.SPLIT_CELLS),
                     "protocol": "converged" if not b.protocol else protocols.short_title(exp, b.protocol),
                     "comparison": f"ImageNet − {study.arch_label(b.arch, b.head)} from scratch ({int(b.seeds)}s; best on validation)",
                     "difference (pp)": two_lines(study.fmt_diff(b.difference, b.ci_low, b.ci_high, unit=False)),
                     "resampled": _short_method(b.interval, b.dataset),
                     "per-seed gaps (pp)": b.seed_gaps or "—",
                     "t-interval over the gaps": ("—" if pd.isna(b.gap_t_low) else
                                                  f"[{100 * b.gap_t_low:+.1f}, {100 * b.gap_t_high:+.1f}]"),
                     "images only": f"[{100 * b.image_ci_low:+.1f}, {100 * b.image_ci_high:+.1f}]"})
    frame = pd.DataFrame(rows)
    if len(frame):   # narrow enough for the page: the protocol under the data, long cells may wrap
        frame.insert(0, "data ", [two_lines(d, p, split_value=False) for d, p in zip(frame.pop("data"), frame.pop("protocol"))])
        frame = frame.rename(columns={"data ": "data"})
        frame["comparison"] = [f'<span class="wrap">{c}</span>' for c in frame["comparison"]]
        for col in ("per-seed gaps (pp)", "resampled"):
            frame[col] = [f'<span class="wrap">{v}</span>' for v in frame[col]]
    return frame


def folds_display(exp: dict, by_fold: dict, data_info: dict | None = None):
    """The cross-validation fold by fold (each arm's accuracy, ImageNet − scratch, the near-copy
    share of the fold's test slices; ``by_fold``: study.load(..., pool=False)), or a note saying
    which stages will record it."""
    shown = []
    for ds, runset in by_fold.items():
        table = designs.fold_table(runset, data_info or {})
        if table.empty:
            continue
        table.insert(0, "data", dataset_title(ds))
        shown.append(table.rename(columns={a: f"{report.arm_title(a)} (%)" for a in study.ARMS} | {
            "gap": "ImageNet − scratch (pp)", "near-copy share": "near-copies in train (%)"}))
    if not shown:
        cv = sorted({ds for ds in exp["datasets"] for rid in ex.runs(exp) if rid.dataset == ds
                     and rid.split.startswith("fold")})
        later = sorted({n for rid, n in ex.stages(exp).items() if rid.dataset in cv})
        return report.markdown_html(f"No fold is recorded yet; the cross-validation's runs are stages "
                                    f"{', '.join(map(str, later))} of the study." if later else
                                    "The study runs no cross-validation.")
    frame = pd.concat(shown, ignore_index=True)
    percent = [c for c in frame.columns if c.endswith("(%)") or c.endswith("(pp)")]
    frame[percent] = 100 * frame[percent]
    return report.styled(frame, digits=1)


def kidney_table(exp: dict, runsets: dict, arms: pd.DataFrame, root: str | Path = records.ROOT) -> pd.DataFrame:
    """Kidney CT: accuracy within each class (a high total can hide a class the network never
    gets right) and, where the audit recorded each slice's view, on axial and on coronal slices."""
    rows = []
    view_of = study.views(exp, "ct_kidney", root)
    by_view = (study.view_accuracy(runsets["ct_kidney"], view_of)
               if view_of is not None and "ct_kidney" in runsets else None)
    for r in study.per_class_table(arms, "ct_kidney").itertuples(index=False):
        row = r._asdict()
        split = row.pop("split")
        shown = {"split": study.SPLIT_CELLS[split], "protocol": row.pop("protocol") or "fair",
                 "arm": report.arm_title(row["arm"]), "seeds": row.pop("seeds")}
        arm = row.pop("arm")
        shown.update({f"{c} (%)": f"{100 * v:.0f}" for c, v in row.items()})
        if by_view is not None:
            for v in by_view[(by_view["arm"] == arm) & (by_view["split"] == split)].itertuples():
                shown[f"{v.view} (%)"] = "—" if pd.isna(v.accuracy) else f"{100 * v.accuracy:.0f} (n={v.n_test})"
        rows.append(shown)
    if not rows:
        return pd.DataFrame({"note": ["no kidney run of the answer is recorded yet"]})
    out = pd.DataFrame(rows)
    return out.drop(columns="protocol") if (out["protocol"] == "fair").all() else out


def lr_display(exp: dict, root: str | Path = records.ROOT) -> pd.DataFrame:
    """One row per sweep (its data and protocol, network and arm): the best validation accuracy
    at each rate with its epoch (✔: the rate chosen; "—": not recorded yet). The rates share one
    cell, so that sweeps of different grids fit the page without a column per rate."""
    lr = study.lr_table(exp, root)
    if not len(lr):
        return pd.DataFrame({"note": ["no learning-rate sweep is recorded yet"]})
    cell = lambda r: (f"{r.lr:g}: " + ("—" if pd.isna(r.best_val_acc) else
                      f"{100 * r.best_val_acc:.1f} ({int(r.best_epoch)}{', cap' if r.stopped_by == 'epoch_cap' else ''})")
                      + (" ✔" if r.chosen else ""))
    rows = []
    for (d, s, a, arm, p), g in lr.groupby(["dataset", "split", "arch", "arm", "protocol"], sort=False):
        rows.append({"data": two_lines(f"{dataset_title(d)}{SHORT_SPLITS[s]}",
                                       protocols.short_title(exp, p) if p else "converged", split_value=False),
                     "network": f'{models.ARCHS[a].label}<br><span class="ci">{report.arm_title(arm)}</span>',
                     "rate: validation % (best epoch)": '<span class="wrap">' + " · ".join(
                         cell(r) for r in g.sort_values("lr").itertuples()) + "</span>"})
    return pd.DataFrame(rows)


def lr_edges(exp: dict, root: str | Path = records.ROOT) -> str:
    """Markdown: which finished sweeps of three or more rates chose an end of their grid (the
    best rate may lie beyond it); "" before any has finished."""
    lr = study.lr_table(exp, root)
    done = [g for _, g in lr.groupby(["dataset", "split", "arch", "head", "arm", "protocol"], sort=False)
            if g["chosen"].any()]
    wide, edges = [g for g in done if len(g) >= 3], []
    for g in wide:
        rates, pick, r = sorted(g["lr"]), float(g.loc[g["chosen"], "lr"].iloc[0]), g.iloc[0]
        if pick in (rates[0], rates[-1]):
            edges.append(f"{_where(exp, r.dataset, r.split)}, {models.ARCHS[r.arch].label} "
                         f"{report.arm_title(r.arm)} chose {pick:g}, the {'lowest' if pick == rates[0] else 'highest'} "
                         f"of {', '.join(f'{v:g}' for v in rates)}")
    if not wide:
        return ""
    two = len(done) - len(wide)
    text = (f"{len(edges)} of the {len(wide)} finished sweeps of three or more rates chose an end of their grid, "
            f"so a better rate may lie beyond it: {'; '.join(edges)}." if edges else
            f"Each of the {len(wide)} finished sweeps of three or more rates chose a rate inside its grid.")
    return text + ("" if not two else " The one sweep of two rates chooses an end by construction." if two == 1
                   else f" The {two} sweeps of two rates choose an end by construction.")


def reach_table(curve: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """Per arm: the first epoch each seed reached ``threshold`` validation accuracy."""
    reach = study.epochs_to_reach(curve, threshold)
    if not len(reach):
        return pd.DataFrame({"note": ["no run recorded yet"]})
    out = (reach.groupby("arm", sort=False)
           .apply(lambda g: pd.Series({"seeds": len(g),
                                       f"first epoch at ≥ {threshold:.0%} validation accuracy": ", ".join(
                                           "never" if pd.isna(e) else str(int(e)) for e in g["epoch"]),
                                       "epochs run": ", ".join(str(e) for e in g["epochs_run"])}), include_groups=False)
           .reset_index())
    out["arm"] = out["arm"].map(report.arm_title)
    return out


def image_count(manifest: dict, ds: str) -> str:
    im = manifest["images"].get(ds)
    return f"{im['n_files']:,}" if im else "0"


def settings(exp: dict, every_run: dict, ds: str) -> str:
    """The recorded runs' size, batch and protocols, and how many stopped by themselves."""
    runs = [r for r in every_run.get(ds, study.metrics.RunSet(ds, [], [], [])).runs]
    if not runs:
        return "not run yet"
    p = runs[0].params
    names = sorted({r.id.protocol for r in runs}, key=lambda q: (q != "", q))
    optimizer = {q: {**exp["defaults"], **exp["protocols"].get(q, {})}.get("optimizer", "adam") for q in names}
    parts = {q: ("Adam, " if optimizer[q] == "adam" else "") + protocols.protocol_title(exp, q) for q in names}
    converged = [r for r in runs if not r.id.protocol and r.params.get("early_stopping_patience")]
    if converged:   # said of the converged protocol, beside its title
        n_cap = sum(not r.converged for r in converged)
        parts[""] += (f" ({len(converged) - n_cap} of {len(converged)} such runs stopped by themselves"
                      + (f"; {n_cap} hit the cap" if n_cap else "") + ")")
    return f"{p['image_size']} px, batch {p['batch_size']}; " + "; ".join(parts.values())


def provenance(exp: dict, manifest: dict, every_run: dict, stages: pd.DataFrame) -> str:
    """Markdown: the data, settings, machine, commit and run counts behind the real-data pages."""
    m = manifest["machine"]
    device = m["gpu"] or f"CPU only ({m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB)"
    train_s = sum(v.get("train_seconds") or 0 for v in manifest["runs"].values())
    step_s = (sum(v or 0 for v in manifest["step_seconds"].values())
              + sum(v.get("notebook_seconds") or 0 for v in manifest["runs"].values()))
    states = pd.Series([v["state"] for v in manifest["runs"].values()]).value_counts()
    commit = manifest.get("run_commits") or [manifest["commit"]]
    sources = [ds for ds in exp["datasets"] if not data.get_spec(ds).derived_from]   # a derived set: the same images
    images = {ds: manifest["images"].get(ds, {}) for ds in sources}
    folds = [dataset_title(ds) for ds in sources if exp["datasets"][ds].get("split", "").startswith("fold")]
    return (
        "**Data** (image-set fingerprint, folder): " + "; ".join(
            f"{image_count(manifest, ds)} images of {dataset_title(ds)} (`{im.get('sha256', 'not recorded')[:12]}`, "
            f"`{im.get('data_dir', 'not recorded')}`)" for ds, im in images.items()) + ", in the Kaggle layouts. "
        "**Settings**: " + "; ".join(f"{dataset_title(ds)} {settings(exp, every_run, ds)}" for ds in sources)
        + f"; stratified {ratio_text()} splits" + (f" ({', '.join(folds)}: {FOLDS} folds of whole blocks)" if folds else "")
        + f", split seed {', '.join(sorted({str(st['split_seed']) for st in exp['datasets'].values()}))}. "
        f"**Machine**: {device}; torch {manifest['versions']['torch']}, timm {manifest['versions']['timm']}. "
        f"**Commit**: `{', '.join(c[:10] for c in commit)}`. "
        f"**Runs**: {states.get('complete', 0)} complete, {states.get('missing', 0)} could not run, "
        f"{int(stages['runs'].sum() - stages['recorded'].sum())} not recorded yet; the runs trained for {train_s / 60:.0f} min and the "
        f"notebook steps took {step_s / 60:.0f} min (each summed over runs, some of which ran side by side). Every number here is read from `records/{exp['name']}/`; "
        f"`{manifest['report_command']}` regenerates them.")


def paper_display(exp: dict, runsets: dict, ds: str, root: str | Path = records.ROOT,
                  limits: dict | None = None) -> pd.DataFrame:
    """A paper's published accuracies beside ours on each split, with the reason where ours is
    missing; no interval on a split whose design cannot give one (``limits``: designs.design_limits);
    and, where the dataset trained under a recipe protocol, ours under it (random split) beside."""
    first: dict = {}   # each configuration's first stage with a run not recorded yet
    for rid, n in ex.stages(exp).items():
        if rid.dataset == ds and not records.run_record(rid, root).is_dir():
            key = (rid.arch, rid.head, rid.arm)
            first[key] = min(n, first.get(key, n))
    later = {key: f"not recorded yet (stage {n})" for key, n in first.items()}
    table = study.paper_table(runsets.get(ds), ds, {**later, **study.missing_reasons(exp, ds, root)})
    shown = {"model": table["model"], "arm": table["arm"],
             "published": [("—" if pd.isna(v) else f"{100 * v:.2f}%") for v in table["published"]]}
    # a configuration recorded only at a paper's budget says so beside its number
    budget = {p: protocols.protocol_title(exp, p).partition(':')[0] for p in set(table["protocol"]) if p}
    for col in [c for c in table.columns if c.startswith("ours|")]:
        split = col.split("|")[1]
        cells = []
        for _, r in table.iterrows():   # the value over its interval or note, so that the table fits the page
            if pd.isna(r[col]):
                cells.append(f'<span class="wrap">{r["note"] or "—"}</span>')
                continue
            notes = (["no interval"] if (limits or {}).get((ds, split)) else []) + (
                [budget[r["protocol"]]] if r["protocol"] else [])
            value = (f"{100 * r[col]:.1f}%" if notes and notes[0] == "no interval"
                     else study.fmt_ci(r[col], r[f"ci_low|{split}"], r[f"ci_high|{split}"]))
            first, _, interval = value.partition(" ")
            cells.append(f"{first}<br>" + "<br>".join(f'<span class="ci">{t}</span>' for t in [interval, *notes] if t))
        shown[f"ours, {study.SPLIT_TITLES[split]}"] = cells
    shown["seeds"] = table["seeds"]
    # beside the fair protocol, each recipe the dataset trained under (its configurations only)
    for p in [p for p in protocols.answer_protocols(exp) if protocols.kind(exp, p) == "recipe"]:
        under = study.paper_table(runsets.get(ds), ds, protocol=p).set_index(["model", "arm"])
        cells = []
        for model, arm in zip(table["model"], table["arm"]):
            r = under.loc[(model, arm)] if (model, arm) in under.index else None
            if r is None or r["protocol"] != p or pd.isna(r["ours|random"]):
                cells.append("—")
                continue
            first, _, interval = study.fmt_ci(r["ours|random"], r["ci_low|random"], r["ci_high|random"]).partition(" ")
            seeds = f"{r['seeds']} seed{'s' if r['seeds'] > 1 else ''}"
            cells.append(f'{first}<br><span class="ci">{interval}</span><br><span class="ci">{seeds}</span>')
        if any(c != "—" for c in cells):
            shown[f"ours, {protocols.short_title(exp, p)}"] = cells
    frame = pd.DataFrame(shown)
    frame["model"] = [f'<span class="wrap">{m}</span>' for m in frame["model"]]
    return frame


def efficiency_display(eff: pd.DataFrame) -> pd.DataFrame:
    """Per share of the training split: each arm's accuracy and the ImageNet − scratch gap, each
    with its interval over seeds and test images (paired by image and seed for the gap)."""
    if eff.empty:
        return pd.DataFrame()
    rows = {}
    for r in eff.itertuples():
        row = rows.setdefault(r.fraction, {"share of training split": f"{100 * r.fraction:g}%",
                                           "training images": r.n_train_images, "seeds": r.seeds})
        if r.arm in study.ARMS:
            row[f"{report.arm_title(r.arm)} (%)"] = study.fmt_ci(r.accuracy, r.ci_low, r.ci_high, unit=False)
        else:
            a, _, b = r.arm.partition(" − ")
            row[f"{report.arm_title(a)} − {report.arm_title(b)} (pp)"] = study.fmt_diff(r.accuracy, r.ci_low, r.ci_high, unit=False)
    return pd.DataFrame([rows[f] for f in sorted(rows)]).fillna("—")


def run_list(every_run: dict, runsets: dict) -> pd.DataFrame:
    """Every recorded run; the test accuracy only of the runs in the answer."""
    rows = []
    for ds, rs in every_run.items():
        in_answer = {r.path for r in runsets.get(ds, rs).runs}
        for r in sorted(rs.runs, key=lambda r: r.name):
            rows.append({"dataset": ds, "run": r.name, "protocol": r.id.protocol or "fair",
                         "train share": r.params.get("train_fraction", 1.0), "lr": f"{r.params.get('lr'):g}",
                         "epochs run": r.metrics["epochs_run"], "best epoch": r.metrics["best_epoch"],
                         "stopped": STOPPED_BY[r.stopped_by],
                         "val accuracy": r.metrics["best_val_acc"],
                         "test accuracy": r.metrics["test_accuracy"] if r.path in in_answer else None,
                         "train seconds": round(float(r.stored.get("train_seconds") or 0)),
                         "note": "" if r.path in in_answer else "not in the answer (a rate its sweep did not choose, "
                                                                 "or a sweep not complete yet): test not shown"})
        for folder, reason in rs.missing:
            rows.append({"dataset": ds, "run": Path(folder).name, "note": study.short_reason(reason)})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- what a protocol changed

def _over(interval: str, dataset: str) -> str:
    return study.describe_interval(interval, dataset, short=True)


def shift_text(exp: dict, shift: pd.DataFrame, protocol: str) -> str:
    """One sentence per dataset: how each arm ``protocol`` trained itself moved against the
    defaults ("" when nothing is recorded yet)."""
    if shift.empty:
        return ""
    title = protocols.short_title(exp, protocol)
    parts = []
    for (ds, split), rows in shift.groupby(["dataset", "split"], sort=False):
        moves = [f"{report.arm_title(r.arm)} {100 * r.before:.1f}% → {100 * r.after:.1f}% "
                 f"({study.fmt_diff(r.difference, r.ci_low, r.ci_high)}, {int(r.seeds)} seed{'s' if r.seeds > 1 else ''}"
                 f"{'' if r.seeds > 1 else ', an interval over test images only'}"
                 f"{'' if r.lr_before == r.lr_after else f'; lr {_rates(r.lr_before)} → {_rates(r.lr_after)}'})"
                 for r in rows.itertuples()]
        parts.append(f"**{_where(exp, ds, split, study.SPLIT_TITLES)}**, with {title}: " + "; ".join(moves) + ".")
    return " ".join(parts)


def _rates(lrs) -> str:
    return "/".join(f"{lr:g}" for lr in lrs)


def protocol_cell(exp: dict, protocol: str) -> str:
    """A protocol in a narrow cell: "converged, tuned lr" (the default), "the standard recipe"."""
    return "converged, tuned lr" if not protocol else protocols.short_title(exp, protocol)


def stage_display(exp: dict, stages: pd.DataFrame) -> pd.DataFrame:
    """What each stage trains and what its recorded runs cost, for a reader planning a re-run."""
    rows = []
    for s in stages.itertuples():
        data_protocols = (", ".join(dataset_title(d) for d in s.datasets) + "; "
                          + ", ".join(protocol_cell(exp, p) for p in s.protocols))
        rows.append({"stage": s.stage, "what it trains": two_lines(", ".join(s.networks), data_protocols, split_value=False),
                     "runs recorded": f"{s.recorded} of {s.runs}",
                     "epochs": f"{s.epochs:,}" if s.recorded else "—",
                     "hours": f"{s.hours:.1f}" if s.recorded else "—"})
    return pd.DataFrame(rows)


def budget_display(checks: pd.DataFrame) -> pd.DataFrame:
    """The budget-doubling check for readers: each network and arm at its budget and at twice it."""
    rows = []
    for c in checks.itertuples():
        doubled = (f"not recorded yet (stage {c.long_stage})" if c.long_best_val_acc is None or pd.isna(c.long_best_val_acc) else
                   f"{100 * c.long_best_val_acc:.1f} (epoch {int(c.long_best_epoch)} of {int(c.long_epochs)})")
        rows.append({"network": study.arch_label(c.arch, c.head), "arm": report.arm_title(c.arm), "lr": f"{c.lr:g}",
                     "best validation % (epoch of budget)": f"{100 * c.best_val_acc:.1f} (epoch {int(c.best_epoch)} of {int(c.epochs)})",
                     "at twice the budget": doubled,
                     "gain (pp)": "—" if c.gain is None or pd.isna(c.gain) else f"{100 * c.gain:+.1f}",
                     "budget enough": "—" if c.enough is None or pd.isna(c.enough) else ("yes" if c.enough else "no: longer needed")})
    return pd.DataFrame(rows)
