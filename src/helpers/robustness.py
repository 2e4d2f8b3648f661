"""Beside the reference answer: whether the gain is about disease (the arms on the test images an
intensity-only model gets wrong and right, and on shortcut-reduced images) and whether the
networks' confidence can be believed (calibration), as the reference page shows them, each under
the converged protocol or a named one."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from . import calibration, data, designs, models, protocols, records, report, study
from .reference import dataset_title, gap_row, other_networks, two_lines


# ---------------------------------------------------------------- calibration

def calibration_arms(runsets: dict, dataset: str = "covid_radiography", split: str = "random",
                     arch: str = models.REFERENCE_ARCH, best: pd.DataFrame | None = None,
                     protocol: str = "") -> dict[str, tuple[str, list]]:
    """The runs whose calibration the page shows, label -> (arm, runs): ``arch`` fine-tuned from
    ImageNet, as a linear probe and from scratch (under ``protocol``, "" the converged one, whole
    training split), and the best network from scratch on validation under it (``best``:
    :func:`study.best_scratch`) where it is another network."""
    if dataset not in runsets:
        return {}
    groups = {k: v for k, v in study._groups(runsets[dataset]).items()
              if k[3] == 1 and k[4] == protocol and k[2] == split}
    out = {}
    for (a, head, _, _, _, arm), runs in sorted(groups.items(), key=lambda kv: study._order(kv[0][5])):
        if a == arch:
            out[report.arm_title(arm)] = (arm, runs)
    b = None if best is None else best[(best["dataset"] == dataset) & (best["split"] == split) & (best["protocol"] == protocol)]
    if b is not None and len(b) and b.iloc[0]["arch"] != arch:
        key = (b.iloc[0]["arch"], b.iloc[0]["head"], split, 1.0, protocol, "scratch")
        if key in groups:
            out[f"best from scratch ({study.arch_label(key[0], key[1])})"] = ("scratch", groups[key])
    return out


def _aligned(runs: list) -> tuple[list[str], "np.ndarray", list]:
    paths = list(runs[0].predictions["path"])
    labels = runs[0].predictions.set_index("path").loc[paths, "label"].to_numpy(dtype=int)
    cols = [f"prob_{k}" for k in range(len(runs[0].class_names))]
    probs = [r.predictions.set_index("path").loc[paths, cols].to_numpy(dtype=float) for r in sorted(runs, key=lambda r: r.seed)]
    return paths, labels, probs


def calibration_results(runsets: dict, dataset: str = "covid_radiography", split: str = "random",
                        best: pd.DataFrame | None = None, protocol: str = "") -> dict:
    """Per arm of :func:`calibration_arms`: ECE (15 bins, interval over seeds and test images),
    NLL and Brier (seed means, with intervals), accuracy and mean confidence (``scores``), its
    reliability bins pooled over seeds (``bins``), and ImageNet − scratch paired by image and by
    seed (``imagenet_vs_scratch``, None without both arms)."""
    arms = calibration_arms(runsets, dataset, split, best=best, protocol=protocol)
    rows, bins, probs_of, labels0 = [], {}, {}, None
    for label, (arm, runs) in arms.items():
        paths, labels, probs = _aligned(runs)
        if labels0 is None:
            paths0, labels0 = paths, labels
        probs = [p[pd.Index(paths).get_indexer(paths0)] for p in probs]   # every arm in the first arm's order
        groups = designs.groups_of(dataset, paths0, labels0)
        rows.append({"arm": label, "colour arm": arm, **calibration.arm_scores(labels0, probs, groups)})
        bins[label] = (calibration.reliability(np.tile(labels0, len(probs)), np.concatenate(probs)),
                       report.arm_color(arm), "--" if label.startswith("best") else "-")
        probs_of[label] = (arm, [r.seed for r in sorted(runs, key=lambda r: r.seed)], probs)
    versus = None
    by_arm = {v[0]: (k, v) for k, v in probs_of.items() if not k.startswith("best")}
    if "imagenet" in by_arm and "scratch" in by_arm:
        (_, (_, seeds_i, pi)), (_, (_, seeds_s, ps)) = by_arm["imagenet"], by_arm["scratch"]
        versus = calibration.compare(labels0, pi, ps, designs.groups_of(dataset, paths0, labels0),
                                     paired_seeds=seeds_i == seeds_s and len(seeds_i) > 1)
    return {"scores": pd.DataFrame(rows), "bins": bins, "imagenet_vs_scratch": versus, "protocol": protocol}


def calibration_display(exp: dict, results: list[dict]) -> pd.DataFrame:
    """The calibration table as a reader sees it: one row per network of each protocol's
    :func:`calibration_results` (the protocol under the network where there are several)."""
    results = [r for r in results if len(r["scores"])]
    if not results:
        return pd.DataFrame({"note": ["no run of the answer is recorded yet"]})
    scores = pd.concat([r["scores"].assign(protocol=r["protocol"]) for r in results], ignore_index=True)
    names = scores["arm"]
    if len(results) > 1:
        names = [two_lines(n, "converged" if not p else protocols.short_title(exp, p), split_value=False)
                 for n, p in zip(scores["arm"], scores["protocol"])]
    pct = lambda v, lo, hi: f"{100 * v:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"
    num = lambda v, lo, hi: f"{v:.3f} [{lo:.3f}, {hi:.3f}]"
    return pd.DataFrame({
        "network": names, "seeds": scores["seeds"],
        "accuracy (%)": [f"{100 * v:.1f}" for v in scores["accuracy"]],
        "mean confidence (%)": [f"{100 * v:.1f}" for v in scores["confidence"]],
        "ECE, 15 bins (%)": [pct(r.ece, r.ece_low, r.ece_high) for r in scores.itertuples()],
        "NLL": [num(r.nll, r.nll_low, r.nll_high) for r in scores.itertuples()],
        "Brier": [num(r.brier, r.brier_low, r.brier_high) for r in scores.itertuples()]})


def calibration_text(results: dict, exp: dict | None = None) -> str:
    """One sentence: whether ImageNet weights change calibration, from the ECE difference's
    interval (and NLL and Brier, which also reward accuracy); under a named protocol, led by its
    title (``exp`` names it)."""
    v, scores = results["imagenet_vs_scratch"], results["scores"]
    lead = f"With {protocols.short_title(exp, results['protocol'])}, " if results.get("protocol") and exp else ""
    if v is None:
        return (f"{lead}calibration needs both ImageNet and scratch runs of it; one is not recorded yet." if lead else
                "Calibration needs both ImageNet and scratch runs of the answer; one is not recorded yet.")
    s = scores.set_index("colour arm")
    i, sc = s.loc["imagenet"], s.loc["scratch"]
    i, sc = (i.iloc[0] if isinstance(i, pd.DataFrame) else i), (sc.iloc[0] if isinstance(sc, pd.DataFrame) else sc)
    verb = ("improve" if v["ece_high"] < 0 else "worsen" if v["ece_low"] > 0 else "do not clearly change")
    moves = lambda name: ("falls" if v[f"{name}_high"] < 0 else "rises" if v[f"{name}_low"] > 0 else "does not clearly move")
    side = lambda r: "overconfident" if r.confidence > r.accuracy else "underconfident"
    loss = (f"the negative log-likelihood {moves('nll')} ({i.nll:.3f} against {sc.nll:.3f}) and the Brier score "
            f"{moves('brier')} ({i.brier:.3f} against {sc.brier:.3f}), though both also reward accuracy")
    # a one-seed arm has no seed variance to resample: say the interval covers images only
    over = "over seeds and test images" if min(i.seeds, sc.seeds) > 1 else "over test images only: one seed"
    return (f"{lead}ImageNet weights {verb} calibration: the expected calibration error is {100 * i.ece:.1f}% against "
            f"{100 * sc.ece:.1f}% from scratch ({100 * v['ece']:+.1f} points [{100 * v['ece_low']:+.1f}, "
            f"{100 * v['ece_high']:+.1f}] {over}; from scratch the network is {side(sc)}, "
            f"{100 * sc.confidence:.1f}% sure on average and {100 * sc.accuracy:.1f}% right), and {loss}.")


def calibration_figure(results: dict, title: str = ""):
    return calibration.reliability_figure(results["bins"], title)


def top_bin_shares(results: dict) -> str:
    """The share of each arm's predictions in the top confidence bin, lowest to highest:
    "78% (linear probe) to 97% (ImageNet)"."""
    shares = {label: float(bins["count"].iloc[-1] / bins["count"].sum()) for label, (bins, _, _) in results["bins"].items()}
    if not shares:
        return "—"
    low, high = min(shares, key=shares.get), max(shares, key=shares.get)
    return f"{100 * shares[low]:.0f}% ({low}) to {100 * shares[high]:.0f}% ({high})"


# ---------------------------------------------------------------- shortcut-hard images

def shortcut_results(exp: dict, runsets: dict, dataset: str = "covid_radiography", protocol: str = "",
                     root: str | Path = records.ROOT) -> dict:
    """The intensity-only model's score on ``dataset``'s test images and the arms' accuracy and
    gap on the images it gets wrong and right (``table``: helpers.shortcut.hard_easy); an empty
    table where its predictions or the runs are not recorded yet."""
    from . import shortcut

    correct = shortcut.intensity_correct(exp, dataset, root)
    if correct is None or dataset not in runsets:
        return {"table": pd.DataFrame(), "accuracy": None, "model": None}
    table = shortcut.hard_easy(runsets[dataset], correct, protocol=protocol)
    return {"table": table, "accuracy": float(correct.mean()), "model": correct.name, "protocol": protocol}


def shortcut_text(results: dict, exp: dict | None = None) -> str:
    """The shortcut sentence; under a named protocol (``exp`` names it), only its gaps, or ""."""
    from . import shortcut

    if results.get("protocol") and exp:
        gaps = shortcut.gaps_clause(results["table"])
        return f"With {protocols.short_title(exp, results['protocol'])}, {gaps}." if gaps else ""
    if results["table"].empty:
        return "The intensity-only model's test predictions are not recorded yet (the audit step records them)."
    return shortcut.sentence(results["table"], results["accuracy"], results["model"])


def shortcut_display(results: dict) -> pd.DataFrame:
    """helpers.shortcut's table, each value over its interval so that it fits the page."""
    from . import shortcut

    if results["table"].empty:
        return pd.DataFrame()
    shown = shortcut.shown(results["table"])
    out = pd.DataFrame({"test images": [two_lines(c, t, split_value=False)
                                        for c, t in zip(shown["classes"], shown["test images"])]})
    for col in shown.columns[2:]:
        out[col + (" (pp)" if "−" in col else " (%)")] = [two_lines(v.replace("%", "").replace(" pp", ""))
                                                           for v in shown[col]]
    return out


def reduced_text(exp: dict, diffs: pd.DataFrame, best: pd.DataFrame,
                 root: str | Path = records.ROOT) -> str:
    """Per dataset of the study that is a shortcut-reduced version of another: how far the
    intensity-only model falls on it, and the ImageNet − scratch gap there beside the gap on the
    original images (the same test images, each arm at the rate chosen on the originals), under
    the fair protocol and under each recipe that trains on them."""
    from . import experiment as ex
    from . import shortcut

    parts = []
    for ds in exp["datasets"]:
        source = data.get_spec(ds).derived_from
        if not source or source not in exp["datasets"]:
            continue
        before, after = (shortcut.intensity_correct(exp, d, root) for d in (source, ds))
        reduction = data.get_spec(ds).reduce
        text = (f"**Shortcut-reduced images** ({100 * reduction.border:.0f}% of each border cropped away"
                + (", grey levels equalised" if reduction.equalize else "") + "): ")
        if before is not None and after is not None:
            text += (f"the intensity-only model falls from {before.mean():.1%} to {after.mean():.1%} "
                     f"(chance {1 / len(data.get_spec(ds).classes):.1%}). ")
        trained: dict = {}   # protocol -> the first stage that trains on these images
        for rid, n in ex.stages(exp).items():
            if rid.dataset == ds:
                trained[rid.protocol] = min(n, trained.get(rid.protocol, n))
        for protocol in ["", *[p for p in protocols.answer_protocols(exp) if p in trained]]:
            lead = "There, " if not protocol else f" With {protocols.short_title(exp, protocol)}, "
            clause = _reduced_gaps(diffs, best, ds, source, protocol)
            text += lead + (clause or "the networks trained on them are not recorded yet (stage "
                            f"{trained.get(protocol, '?')}).")
        parts.append(text)
    return " ".join(parts)


def _reduced_gaps(diffs: pd.DataFrame, best: pd.DataFrame | None, ds: str, source: str, protocol: str) -> str:
    """"ImageNet − scratch (Lite0) is ..., against ... on the original images; against the best
    network from scratch ..." under ``protocol``, or "" while its runs are not recorded."""
    g, o = gap_row(diffs, ds, "random", protocol), gap_row(diffs, source, "random", protocol)
    if g is None:
        return ""
    text = (f"ImageNet − scratch ({study.arch_label(models.REFERENCE_ARCH)}) is "
            f"{study.fmt_diff(g.difference, g.ci_low, g.ci_high)}")
    if o is not None:
        text += f", against {study.fmt_diff(o.difference, o.ci_low, o.ci_high)} on the original images"
    b = best[(best["dataset"] == ds) & (best["protocol"] == protocol) & other_networks(best)] if best is not None else best
    if b is not None and len(b):
        b = b.iloc[0]
        text += (f"; against the best network from scratch on validation ({study.arch_label(b.arch, b.head)}), "
                 f"{study.fmt_diff(b.difference, b.ci_low, b.ci_high)}")
    return text + "."


# ------------------------------------------------- the baselines of a cross-validation

def fold_baselines(exp: dict, root: str | Path = records.ROOT) -> dict[str, pd.DataFrame]:
    """Per cross-validated dataset of the study: the audit's baselines fold by fold and pooled
    (``data/<dataset>-fold-baselines.csv``: helpers.baselines.fold_baselines), where recorded."""
    folder = records.folder(exp, root) / "data"
    return {ds: pd.read_csv(folder / f"{ds}-fold-baselines.csv") for ds in exp["datasets"]
            if (folder / f"{ds}-fold-baselines.csv").is_file()}


def fold_baselines_text(baselines: dict[str, pd.DataFrame], arms: pd.DataFrame | None = None) -> str:
    """Per cross-validated dataset: what the intensity-only model and the view alone score on the
    same folds as the networks, pooled with its block interval and fold by fold, beside the
    networks' pooled accuracy where recorded (``arms``: study.arm_table)."""
    pct = lambda r, name: f"{100 * r[name]:.1f}% [{100 * r[f'{name} low']:.1f}, {100 * r[f'{name} high']:.1f}]"
    parts = []
    for ds, table in baselines.items():
        per_fold = table[table["fold"].astype(str) != "pooled"]
        pooled = table[table["fold"].astype(str) == "pooled"]
        spread = (f"{100 * per_fold['intensity-only'].min():.1f}% to {100 * per_fold['intensity-only'].max():.1f}% "
                  f"fold by fold")
        if pooled.empty:
            parts.append(f"**{dataset_title(ds)}, beside the shortcut baselines:** an intensity-only model scores "
                         f"{spread} on {len(per_fold)} of {designs.FOLDS} folds (no pooled score until every fold is audited).")
            continue
        p = pooled.iloc[0]
        text = (f"**{dataset_title(ds)}, beside the shortcut baselines:** on the same {designs.FOLDS} folds of whole "
                f"blocks, an intensity-only model (a grey-level histogram, mean and SD, the model chosen on each "
                f"fold's validation blocks) classifies {pct(p, 'intensity-only')} of the slices ({spread})")
        if "view alone" in p and pd.notna(p["view alone"]):
            text += f", and the view alone (axial or coronal) {pct(p, 'view alone')}"
        if "majority class" in p and pd.notna(p["majority class"]):
            text += f", against {100 * p['majority class']:.1f}% for the training folds' majority class"
        text += f"; {100 * p['near-copy share']:.0f}% of the test slices have a near-copy in training."
        nets = arms[(arms["dataset"] == ds) & (arms["split"] == designs.POOLED) & (arms["protocol"] == "")
                    & (arms["arch"] == models.REFERENCE_ARCH)] if arms is not None else pd.DataFrame()
        if len(nets):
            text += " The networks, pooled the same way: " + ", ".join(
                f"{report.arm_title(r.arm)} {100 * r.accuracy:.1f}%" for r in nets.itertuples()) + "."
        parts.append(text)
    return " ".join(parts)


def fold_baselines_table(baselines: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The baselines fold by fold for readers (helpers.baselines.fold_baselines_display), each
    cross-validated dataset's rows under its title; empty where none is recorded."""
    from .baselines import fold_baselines_display

    shown = [fold_baselines_display(t).assign(data=dataset_title(ds)) for ds, t in baselines.items()]
    return pd.concat(shown, ignore_index=True).pipe(lambda f: f[["data", *f.columns[:-1]]]) if shown else pd.DataFrame()
