"""The reference study's page pieces (helpers.reference), on the committed records."""

from pathlib import Path

import pandas as pd
import pytest

from helpers import experiment as ex
from helpers import designs, protocols, records, reference, report, robustness, study

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def at_root(monkeypatch):
    monkeypatch.chdir(ROOT)


def _reference():
    return ex.load_experiment(records.REFERENCE, need_data=False)


def test_the_stage_note_counts_what_is_not_recorded_and_vanishes_when_all_is():
    exp, manifest = {"name": "x", "path": "experiments/x.yaml"}, {"report_command": "make report EXPERIMENT=x"}
    late = pd.DataFrame({"stage": [1, 2], "runs": [5, 10], "recorded": [5, 4]})
    note = reference.check_notes(exp, manifest, [], late)
    assert "complete so far: 1" in note and "6 of 15 runs are not recorded yet (stages 2: 4/10)" in note
    assert reference.check_notes(exp, manifest, [], late.assign(recorded=late["runs"])) == ""
    assert "Records out of date" in reference.check_notes(exp, manifest, ["lr differs"], late.assign(recorded=late["runs"]))


def test_every_split_has_one_name_in_prose_and_one_in_a_table_cell():
    from helpers.params import SPLITS

    assert set(study.SPLIT_TITLES) == set(study.SPLIT_CELLS) == {*SPLITS, designs.POOLED}
    assert study.SPLIT_TITLES["given"] == "the download's own split"
    assert reference.SHORT_SPLITS["random"] == "" and reference.SHORT_SPLITS["block"] == f", {study.SPLIT_CELLS['block']}"


def test_every_dataset_of_the_study_has_a_row_of_the_answer_recorded_or_not_yet():
    exp = ex.load_experiment(records.REFERENCE, need_data=False)
    runsets = study.load(exp)
    arms, diffs = study.arm_table(runsets), study.differences(runsets)
    table = reference.answer_table(exp, arms, diffs, {})
    for ds in exp["datasets"]:
        title = reference.dataset_title(ds)
        rows = table[table["data"].str.contains(f'"wrap">{title}', regex=False)]
        assert len(rows), ds
        if ds not in set(arms["dataset"]):
            assert rows["data"].str.contains("not recorded yet (stage", regex=False).all()
    # it fits the page: the data and protocol share a column, ImageNet − linear probe is in the text
    assert list(table.columns) == ["data", "ImageNet (%)", "linear probe (%)", "scratch (%)", "ImageNet − scratch (pp)"]
    text = reference.answer_text(exp, arms, diffs, None, {})
    assert all(f"**{reference.dataset_title(d)}" in text for d in exp["datasets"])


def test_the_run_list_hides_the_test_score_of_a_rate_not_chosen():
    exp = _reference()
    runsets = study.load(exp)
    every = study.load(exp, answer=False)
    runs = reference.run_list(every, runsets)
    hidden = runs[runs["note"].str.startswith("not in the answer")]
    assert len(hidden) and hidden["test accuracy"].isna().all()
    assert runs.loc[runs["note"] == "", "test accuracy"].notna().all()


def test_imagenet_is_set_against_the_best_network_from_scratch_at_its_chosen_rate():
    exp = _reference()
    runsets = study.load(exp)
    best = study.best_scratch(runsets).set_index(["dataset", "split"])
    chest = best.loc[("covid_radiography", "random")]
    fair_scratch = [r for r in runsets["covid_radiography"].runs
                    if r.arm == "scratch" and r.id.protocol == "" and r.id.train_fraction == 1]
    val, test = {}, {}
    for r in fair_scratch:
        val.setdefault(r.arch, []).append(r.metrics["best_val_acc"])
        test.setdefault(r.arch, []).append(r.metrics["test_accuracy"])
    mean = lambda v: sum(v) / len(v)
    assert chest.networks == len(val) > 1
    # chosen on validation, reported on test: the test scores never pick the network
    assert chest.arch == max(val, key=lambda a: mean(val[a]))
    assert chest.accuracy == pytest.approx(mean(test[chest.arch]))
    imagenet = [r.metrics["test_accuracy"] for r in runsets["covid_radiography"].runs
                if r.arch == "efficientnet_lite0" and r.arm == "imagenet" and r.id.protocol == ""
                and r.id.train_fraction == 1]
    # paired over the same test images, the mean difference is the difference of the accuracies
    assert chest.difference == pytest.approx(sum(imagenet) / len(imagenet) - chest.accuracy)
    assert chest.ci_low <= chest.difference <= chest.ci_high
    arms, diffs = study.arm_table(runsets), study.differences(runsets)
    text = reference.answer_text(exp, arms, diffs, None, {}, study.best_scratch(runsets))
    assert text.count("*Against the best network from scratch*") == int((best["networks"] > 1).sum())
    assert study.arch_label(chest.arch) in text


def test_the_best_network_from_scratch_is_picked_on_validation_not_on_test():
    import dataclasses

    runsets = study.load(_reference())
    chest = runsets["covid_radiography"]
    fair = [r for r in chest.runs if r.arm == "scratch" and r.id.protocol == "" and r.id.train_fraction == 1]
    test = {}
    for r in fair:
        test.setdefault(r.arch, []).append(r.metrics["test_accuracy"])
    test = {a: sum(v) / len(v) for a, v in test.items()}
    # give the network with the lowest test accuracy the highest validation accuracy
    worst, fair_ids = min(test, key=test.get), {id(r) for r in fair}
    runs = [dataclasses.replace(r, metrics={**r.metrics, "best_val_acc": 1.0}) if id(r) in fair_ids and r.arch == worst
            else r for r in chest.runs]
    best = study.best_scratch({"covid_radiography": dataclasses.replace(chest, runs=runs)}).iloc[0]
    assert best.arch == worst != max(test, key=test.get)
    assert best.accuracy == pytest.approx(test[worst])


def test_the_best_network_from_scratch_is_picked_within_each_protocol():
    exp = _reference()
    runsets = study.load(exp)
    recipe = [p for p in exp["protocols"] if protocols.kind(exp, p) == "recipe"]
    best = study.best_scratch(runsets, protocols=("", *recipe))
    chest = best[best["dataset"] == "covid_radiography"].set_index("protocol")
    for protocol, b in chest.iterrows():
        scratch = [r for r in runsets["covid_radiography"].runs
                   if r.arm == "scratch" and r.id.protocol == protocol and r.id.train_fraction == 1]
        # never a network trained under another protocol, whatever its validation score
        assert {r.arch for r in scratch} >= {b.arch} and len({r.arch for r in scratch}) == b.networks
        assert b.accuracy == pytest.approx(sum(r.metrics["test_accuracy"] for r in scratch if r.arch == b.arch)
                                           / sum(r.arch == b.arch for r in scratch))
    shown = [p for p, b in chest.iterrows() if b.networks > 1 or b.arch != "efficientnet_lite0"]
    arms, diffs = study.arm_table(runsets), study.differences(runsets)
    text = reference.answer_text(exp, arms, diffs, None, {}, best)
    assert text.count("*Against the best network from scratch") == len(shown) + int(
        ((best["dataset"] != "covid_radiography") & ((best["networks"] > 1) | (best["arch"] != "efficientnet_lite0"))).sum())
    if any(shown_p for shown_p in shown):   # a recipe's comparison names its protocol
        assert "*Against the best network from scratch* under it" in text


def test_a_sweep_that_chose_an_end_of_its_grid_is_named(monkeypatch):
    exp = ex.load_experiment(records.REFERENCE, need_data=False)
    base = {"dataset": "covid_radiography", "split": "random", "head": "replace", "protocol": "",
            "by": "best_val_acc", "best_val_acc": 0.9, "min_val_loss": 0.3, "best_epoch": 3,
            "stopped_by": "early_stopping"}
    rows = ([{**base, "arch": "resnet18", "arm": "scratch", "lr": lr, "chosen": lr == 3e-3} for lr in (3e-4, 1e-3, 3e-3)]
            + [{**base, "arch": "alexnet", "arm": "scratch", "lr": lr, "chosen": lr == 3e-4} for lr in (1e-4, 3e-4, 1e-3)]
            + [{**base, "arch": "efficientnet_lite0", "arm": "imagenet", "lr": lr, "chosen": lr == 1e-4} for lr in (1e-4, 1e-3)])
    monkeypatch.setattr(study, "lr_table", lambda exp, root=None: pd.DataFrame(rows))
    text = reference.lr_edges(exp)
    assert text.startswith("1 of the 2 finished sweeps of three or more rates chose an end")
    assert "ResNet-18" in text and "the highest of 0.0003, 0.001, 0.003" in text and "AlexNet" not in text
    assert "The one sweep of two rates chooses an end" in text


def test_a_papers_network_recorded_only_at_its_papers_budget_is_shown_and_says_so():
    exp = ex.load_experiment(records.REFERENCE, need_data=False)
    runsets = study.load(exp)
    vgg = [r for r in runsets["ct_kidney"].runs if r.arch == "vgg16" and r.arm == "scratch"]
    assert vgg and {r.id.protocol for r in vgg} == {"paper_b"}   # no fair-protocol VGG-16 run
    shown = reference.paper_display(exp, runsets, "ct_kidney")
    shown = shown.assign(model=shown["model"].str.replace(r"<[^>]+>", "", regex=True)).set_index(["model", "arm"])
    row = shown.loc[(study.arch_label("vgg16", "dense1024"), "scratch")]
    for r in vgg:
        cell = row[f"ours, {study.SPLIT_TITLES[r.split]}"]
        assert cell.startswith(f"{100 * r.metrics['test_accuracy']:.1f}%<br>") and cell.endswith("paper B's budget</span>")
    # a configuration with a fair-protocol run shows that one, unmarked
    lite = shown.loc[(study.arch_label("efficientnet_lite0", "dense1024"), "scratch")]
    assert "budget" not in lite[f"ours, {study.SPLIT_TITLES['random']}"]
    # every configuration of the grid has a row, a number or the first stage that will record it
    originals = reference.paper_display(exp, runsets, "ct_kidney_originals")
    originals = originals.assign(model=originals["model"].str.replace(r"<[^>]+>", "", regex=True)).set_index(["model", "arm"])
    first: dict = {}
    for rid, n in ex.stages(exp).items():
        if rid.dataset == "ct_kidney_originals":
            key = (study.arch_label(rid.arch, rid.head), report.arm_title(rid.arm))
            first[key] = min(n, first.get(key, n))
    assert set(first) <= set(originals.index)
    for key, n in first.items():
        cells = " ".join(str(v) for v in originals.loc[key].drop("seeds"))
        assert "%<br>" in cells or f"not recorded yet (stage {n})" in cells


def test_each_difference_has_an_interval_over_seeds_and_images_and_its_per_seed_gaps():
    exp = ex.load_experiment(records.REFERENCE, need_data=False)
    runsets = study.load(exp)
    diffs = study.differences(runsets)
    for d in diffs.itertuples():
        assert d.ci_low <= d.difference <= d.ci_high
        if d.seeds > 1:
            assert d.interval == "seeds+images, paired seeds" and len(d.seed_gaps.split(", ")) == d.seeds
            gaps = [float(g) / 100 for g in d.seed_gaps.split(", ")]
            assert sum(gaps) / len(gaps) == pytest.approx(d.difference, abs=1e-3)   # rounded to 0.1 pp
        else:
            assert d.interval == "images" and (d.ci_low, d.ci_high) == pytest.approx((d.image_ci_low, d.image_ci_high), abs=0.01)
    chest = diffs[(diffs["dataset"] == "covid_radiography") & (diffs["protocol"] == "")
                  & (diffs["arm_b"] == "scratch")].iloc[0]
    # seed k of ImageNet minus seed k of scratch, on the same 600 test images
    by_seed = {}
    for r in runsets["covid_radiography"].runs:
        if r.arch == "efficientnet_lite0" and r.id.protocol == "" and r.id.train_fraction == 1:
            by_seed.setdefault(r.arm, {})[r.seed] = r.metrics["test_accuracy"]
    expected = [by_seed["imagenet"][s] - by_seed["scratch"][s] for s in sorted(by_seed["imagenet"])]
    assert chest.seed_gaps == study.fmt_gaps(expected)
    # the seeds' disagreement widens the interval beyond the one over images alone
    assert chest.ci_high - chest.ci_low > chest.image_ci_high - chest.image_ci_low
    shown = reference.differences_display(exp, diffs, study.best_scratch(runsets))
    assert shown["resampled"].str.contains("seeds").any() and shown["resampled"].str.contains("only").any()
    text = reference.answer_text(exp, study.arm_table(runsets), diffs, None, {})
    assert f"per-seed gaps {chest.seed_gaps} pp" in text


def test_calibration_per_arm_is_computed_from_the_recorded_predictions():
    from helpers import calibration

    runsets = study.load(_reference())
    results = robustness.calibration_results(runsets, best=study.best_scratch(runsets))
    scores = results["scores"].set_index("arm")
    assert {"ImageNet", "linear probe", "scratch"} <= set(scores.index)
    scratch = [r for r in runsets["covid_radiography"].runs if r.arch == "efficientnet_lite0" and r.arm == "scratch"
               and r.id.protocol == "" and r.id.train_fraction == 1]
    # the seed mean of each run's own scores, read from its predictions.csv
    assert scores.loc["scratch", "ece"] == pytest.approx(sum(calibration.ece(r.labels, r.probs) for r in scratch) / len(scratch))
    assert scores.loc["scratch", "brier"] == pytest.approx(sum(calibration.brier(r.labels, r.probs) for r in scratch) / len(scratch))
    assert scores.loc["scratch", "accuracy"] == pytest.approx(sum(r.metrics["test_accuracy"] for r in scratch) / len(scratch))
    assert ((scores["ece_low"] <= scores["ece"]) & (scores["ece"] <= scores["ece_high"])).all()
    text = robustness.calibration_text(results)
    v = results["imagenet_vs_scratch"]
    verdict = "improve" if v["ece_high"] < 0 else "worsen" if v["ece_low"] > 0 else "do not clearly change"
    assert text.startswith(f"ImageNet weights {verdict} calibration")
    assert f"{100 * scores.loc['ImageNet', 'ece']:.1f}% against {100 * scores.loc['scratch', 'ece']:.1f}%" in text
    exp = _reference()
    assert len(robustness.calibration_display(exp, [results])) == len(scores)
    # under the recipe: its own runs only, each row naming its protocol
    recipe = robustness.calibration_results(runsets, best=study.best_scratch(runsets, protocols=("", "recipe")),
                                           protocol="recipe")
    own = {r.path for r in runsets["covid_radiography"].runs if r.id.protocol == "recipe" and r.id.train_fraction == 1}
    arms = robustness.calibration_arms(runsets, best=study.best_scratch(runsets, protocols=("", "recipe")), protocol="recipe")
    assert arms and all(r.path in own for _, runs in arms.values() for r in runs)
    both = robustness.calibration_display(exp, [results, recipe])
    assert len(both) == len(scores) + len(recipe["scores"])
    assert both["network"].str.contains("the standard recipe").sum() == len(recipe["scores"])
    assert robustness.calibration_text(recipe, exp).startswith("With the standard recipe, ")
    # the interval's words follow the seeds each side holds: one seed has no seed variance to resample
    for res in (results, recipe):
        first = res["scores"].drop_duplicates("colour arm").set_index("colour arm")   # the arch's own arms
        several = min(int(first.loc["imagenet", "seeds"]), int(first.loc["scratch", "seeds"])) > 1
        assert ("over seeds and test images" in robustness.calibration_text(res, exp)) == several


def test_the_efficiency_curve_gives_each_share_a_paired_gap_over_seeds_and_images():
    exp = _reference()
    runsets = study.load(exp)
    eff = study.efficiency(runsets["covid_radiography"], study.train_counts(exp, "covid_radiography"))
    arms = eff[eff["arm"].isin(["imagenet", "scratch"])].pivot(index="fraction", columns="arm", values="accuracy")
    gaps = eff[eff["arm"] == "imagenet − scratch"].set_index("fraction")
    assert len(gaps) == len(arms) > 2
    assert gaps["accuracy"].to_numpy() == pytest.approx((arms["imagenet"] - arms["scratch"]).loc[gaps.index].to_numpy())
    assert (gaps["ci_low"] < gaps["accuracy"]).all() and (gaps["accuracy"] < gaps["ci_high"]).all()
    # two seeds: the paired bootstrap is far narrower than a t-interval's factor of 12.7 allows
    assert ((gaps["ci_high"] - gaps["ci_low"]) < 0.15).all()
    assert set(gaps["interval"]) <= {"seeds+images, paired seeds"}
    assert (eff["ci_low"] >= -1).all() and (eff[eff["arm"] != "imagenet − scratch"]["ci_high"] <= 1).all()
    shown = reference.efficiency_display(eff)
    assert "ImageNet − scratch (pp)" in shown.columns and len(shown) == len(arms)


def test_a_protocol_borrows_the_defaults_scratch_runs_only_where_it_trains_itself():
    runsets = study.load(_reference())
    arms = study.arm_table(runsets)
    own = arms[arms["protocol"] == "own_norm"]
    assert set(own["dataset"]) == {"covid_radiography"}        # not the datasets it never trained on
    scratch = own.set_index("arm").loc["scratch"]
    fair = arms[(arms["protocol"] == "") & (arms["dataset"] == "covid_radiography") & (arms["arm"] == "scratch")].iloc[0]
    assert scratch["accuracy"] == fair["accuracy"] and scratch["seeds"] == fair["seeds"]


def test_a_kidney_difference_the_design_cannot_estimate_says_so_and_why():
    """The small kidney set: its block split tests 1-2 blocks per class, its random split tests
    near-copies of training slices. Neither gets a verdict or an interval; chest X-rays do."""
    import json

    exp = _reference()
    runsets = study.load(exp)
    info = {p.stem: json.loads(p.read_text()) for p in (records.folder(exp) / "data").glob("*.json")}
    limits = designs.design_limits(runsets, info)
    assert limits[("covid_radiography", "random")] == ""
    assert "too few blocks of slices" in limits[("ct_kidney", "block")]
    assert "near-copy in training" in limits[("ct_kidney", "random")]
    diffs = designs.with_limits(study.differences(runsets), limits)
    arms = study.arm_table(runsets)
    text = reference.answer_text(exp, arms, diffs, None, info)
    kidney = [p for p in text.split("\n\n") if p.startswith("**kidney CT") and "not recorded yet" not in p]
    assert len(kidney) == 2 and all("cannot be estimated, because" in p for p in kidney), kidney
    assert not any(w in p for p in kidney for w in ("help:", "hurt:", "no clear difference"))
    table = reference.answer_table(exp, arms, diffs, info)
    rows = table[table["data"].str.contains("kidney CT") & ~table["data"].str.contains("not recorded yet")]
    assert len(rows) == 2
    assert rows["ImageNet − scratch (pp)"].str.contains("cannot be estimated").all()
    # with five blocks of every class in its test split, the same runs can be estimated
    block = next(r for r in runsets["ct_kidney"].runs if r.split == "block")
    assert designs.design_limit(runsets["ct_kidney"], "block", 0.2) == limits[("ct_kidney", "block")]
    many = [f"{c}- ({25 * b + 1}).jpg" for c in block.class_names for b in range(5)]
    fake = type(block)(**{**block.__dict__, "predictions": pd.DataFrame(
        {"path": many, "label": [k for k in range(len(block.class_names)) for _ in range(5)]})})
    assert designs.design_limit(type(runsets["ct_kidney"])(**{**runsets["ct_kidney"].__dict__, "runs": [fake]}),
                              "block", 0.2) == ""


def test_the_folds_of_a_cross_validation_pool_into_one_answer_and_a_table_per_fold():
    """Five fold runs per arm (here the small set's random-split test slices dealt to five folds
    by block) pool into one run per arm whose accuracy is over every slice once; the per-fold
    table keeps each fold's accuracies and gap. A fold missing keeps the folds apart."""
    import dataclasses

    from helpers.data.splits import block_groups
    from helpers.params import FOLD_SPLITS

    exp = _reference()
    kidney = study.load(exp, pool=False)["ct_kidney"]
    runs = {r.arm: r for r in kidney.runs if r.split == "random" and r.seed == 0 and r.id.protocol == ""
            and r.arch == "efficientnet_lite0" and r.arm in ("imagenet", "scratch")}
    blocks = block_groups(list(runs["imagenet"].predictions["path"]), runs["imagenet"].labels)
    folds = []
    for arm, r in runs.items():
        fold_of = pd.Series(blocks % 5, index=r.predictions["path"]).loc[r.predictions["path"]].to_numpy()
        for k, split in enumerate(FOLD_SPLITS):
            folds.append(dataclasses.replace(r, id=r.id.model_copy(update={"split": split}),
                                             predictions=r.predictions[fold_of == k].reset_index(drop=True)))
    runset = dataclasses.replace(kidney, runs=folds)
    pooled = designs.pool_folds(runset)
    assert sorted((r.arm, r.split) for r in pooled.runs) == [("imagenet", "cv"), ("scratch", "cv")]
    arms = study.arm_table({"ct_kidney": pooled}).set_index("arm")
    for arm, r in runs.items():
        assert arms.loc[arm, "accuracy"] == pytest.approx(float((r.labels == r.preds).mean()))
    per_fold = designs.fold_table(runset, {"ct_kidney-fold0": {"near_copy_share": {"test": 0.2}}})
    assert list(per_fold["fold"]) == [1, 2, 3, 4, 5] and per_fold["test images"].sum() == len(runs["imagenet"].predictions)
    assert per_fold.loc[0, "near-copy share"] == 0.2 and per_fold["gap"].notna().all()
    partial = dataclasses.replace(runset, runs=[r for r in folds if r.split != "fold4"])
    assert {r.split for r in designs.pool_folds(partial).runs} == set(FOLD_SPLITS[:4])


def test_the_shortcut_reduced_sentence_gives_each_protocols_gap_beside_the_originals():
    exp = _reference()
    runsets = study.load(exp)
    diffs = study.differences(runsets)
    best = study.best_scratch(runsets, protocols=("", *protocols.answer_protocols(exp)))
    text = robustness.reduced_text(exp, diffs, best)
    fmt = lambda g: study.fmt_diff(g.difference, g.ci_low, g.ci_high)
    for protocol in ("", "recipe"):
        reduced = reference.gap_row(diffs, "covid_radiography_reduced", "random", protocol)
        original = reference.gap_row(diffs, "covid_radiography", "random", protocol)
        lead = "There, " if not protocol else "With the standard recipe, "
        if reduced is None:   # its runs are a later stage: the sentence names it
            stage = min(n for rid, n in ex.stages(exp).items()
                        if rid.dataset == "covid_radiography_reduced" and rid.protocol == protocol)
            assert f"{lead}the networks trained on them are not recorded yet (stage {stage})" in text
        else:
            assert f"{lead}ImageNet − scratch (EfficientNet-Lite0) is {fmt(reduced)}, against {fmt(original)}" in text


def test_the_rate_table_gives_each_sweep_its_own_row_under_its_protocol():
    # one row per sweep: a protocol's sweep never shares a row with another protocol's rates
    exp = _reference()
    lr = study.lr_table(exp)
    shown = reference.lr_display(exp)
    sweeps = list(lr.groupby(["dataset", "split", "arch", "arm", "protocol"], sort=False))
    assert len(shown) == len(sweeps)
    for (key, g), (_, row) in zip(sweeps, shown.iterrows()):
        protocol = key[-1]
        assert (protocols.short_title(exp, protocol) if protocol else "converged") in row["data"]
        cell = row["rate: validation % (best epoch)"]
        assert cell.count("·") == len(g) - 1 and cell.count("✔") == int(g["chosen"].sum())
        for r in g.itertuples():
            assert f"{r.lr:g}: " + ("—" if pd.isna(r.best_val_acc) else f"{100 * r.best_val_acc:.1f}") in cell


def test_the_best_network_from_scratch_shows_its_per_seed_gaps_where_the_seeds_match():
    exp = _reference()
    runsets = study.load(exp)
    best = study.best_scratch(runsets, protocols=("", "recipe"))
    row = best[(best["dataset"] == "covid_radiography") & (best["protocol"] == "")].iloc[0]
    runs = runsets["covid_radiography"].runs
    acc = lambda arch, arm, seed: next(r.metrics["test_accuracy"] for r in runs if r.arch == arch and r.arm == arm
                                        and r.seed == seed and r.id.protocol == "" and r.id.train_fraction == 1
                                        and r.split == "random")
    seeds = sorted({r.seed for r in runs if r.arch == row.arch and r.arm == "scratch" and r.id.protocol == ""
                    and r.id.train_fraction == 1})
    assert len(seeds) > 1   # ResNet-18 and Lite0 ImageNet both trained seeds 0-2
    expected = ", ".join(f"{100 * (acc('efficientnet_lite0', 'imagenet', s) - acc(row.arch, 'scratch', s)):+.1f}" for s in seeds)
    assert row.seed_gaps == expected
    shown = reference.differences_display(exp, study.differences(runsets), best)
    assert shown["per-seed gaps (pp)"].str.contains(expected, regex=False).any()


def test_the_intervals_name_what_they_resample_once_per_kind_of_image():
    exp = ex.load_experiment("real_study", need_data=False)
    text = reference.resampled_text(exp)
    # four datasets, two kinds: the reduced chest X-rays and the original slices count as their sources
    assert text == "test images (chest X-ray) and blocks of 25 consecutive slices (kidney CT)"
    assert reference.resampled_text(ex.load_experiment("pneumonia", need_data=False)) == \
        "test images (pediatric chest X-ray)"


def test_the_stage_table_gives_what_each_stage_trains_and_what_its_recorded_runs_cost():
    exp = ex.load_experiment("real_study", need_data=False)
    stages = study.stage_table(exp).set_index("stage")
    manifest = records.load_manifest(exp)["runs"]
    by_stage: dict[int, list] = {}
    for rid, stage in ex.stages(exp).items():
        by_stage.setdefault(stage, []).append(rid)
    for stage, rids in by_stage.items():
        recorded = [rid for rid in rids if records.run_record(rid).is_dir()]
        epochs = sum(len(pd.read_csv(records.run_record(rid) / "history.csv")) for rid in recorded
                     if (records.run_record(rid) / "history.csv").is_file())
        seconds = [manifest[rid.key].get("notebook_seconds") or manifest[rid.key].get("train_seconds") or 0
                   for rid in recorded]
        assert (stages.loc[stage, "runs"], stages.loc[stage, "recorded"]) == (len(rids), len(recorded))
        assert stages.loc[stage, "epochs"] == epochs and stages.loc[stage, "hours"] == pytest.approx(sum(seconds) / 3600)
    shown = reference.stage_display(exp, stages.reset_index()).set_index("stage")
    assert shown.loc[1].iloc[0] == reference.two_lines("EfficientNet-Lite0", "chest X-ray; converged, tuned lr",
                                                        split_value=False)
    assert all(shown.loc[s, "hours"] == "—" for s in stages[stages["recorded"] == 0].index)


def test_a_kidney_test_set_names_the_blocks_it_rests_on_per_class():
    exp = _reference()
    arms = study.arm_table(study.load(exp)).set_index(["dataset", "split", "protocol", "arm"])
    chest = arms.loc[("covid_radiography", "random", "", "imagenet")]
    assert chest.test_blocks is None
    assert reference.tested_on_text(chest, "0%") == "600 test images, 0% of them with a near-copy in train"
    block = arms.loc[("ct_kidney", "block", "", "imagenet")]
    # the small set's block split: the design limit lists the same counts as too few
    assert block.test_blocks == {"Cyst": 1, "Normal": 2, "Stone": 2, "Tumor": 2}
    assert reference.tested_on_text(block, "22%") == (
        f"{block.n_test} test slices, 22% of them with a near-copy in train; from 7 blocks of 25 consecutive "
        "slices: Cyst 1, Normal 2, Stone 2, Tumor 2")


def test_a_cross_validations_near_copy_share_pools_its_folds_weighted_by_test_images():
    from helpers.params import FOLD_SPLITS

    info = {f"k-{split}": {"counts": {"a": {"test": n}}, "near_copy_share": {"test": share}}
            for split, n, share in zip(FOLD_SPLITS, [10, 30, 20, 20, 20], [0.5, 0.1, 0.0, 0.0, 0.2])}
    pooled = designs.with_pooled(info)
    assert pooled["k-cv"]["near_copy_share"]["test"] == pytest.approx((5 + 3 + 4) / 100)
    del info["k-fold4"]
    assert "k-cv" not in designs.with_pooled(info)


def test_paper_as_table_shows_each_configuration_under_the_recipe_beside_the_fair_protocol():
    import numpy as np

    exp = _reference()
    runsets = study.load(exp)
    shown = reference.paper_display(exp, runsets, "covid_radiography")
    shown = shown.assign(model=shown["model"].str.replace(r"<[^>]+>", "", regex=True)).set_index(["model", "arm"])
    column = f"ours, {protocols.short_title(exp, 'recipe')}"
    recipe = [r for r in runsets["covid_radiography"].runs if r.id.protocol == "recipe" and r.id.train_fraction == 1]
    for (arch, arm), runs in pd.Series(recipe).groupby(lambda i: (recipe[i].arch, recipe[i].arm)):
        cell = shown.loc[(study.arch_label(arch), report.arm_title(arm)), column]
        accuracy = np.mean([r.metrics["test_accuracy"] for r in runs])
        assert cell.startswith(f"{100 * accuracy:.1f}%<br>") and f">{len(runs)} seed" in cell
    # a network never trained with the recipe shows a dash, not its fair-protocol number
    assert shown.loc[("AlexNet", "scratch"), column] == "—"
    assert not any(c.startswith("ours, the standard") for c in reference.paper_display(exp, runsets, "ct_kidney"))


def test_the_budget_doubling_check_compares_seed_0_at_the_budget_and_at_twice_it():
    exp = _reference()
    runsets = study.load(exp)
    checks = protocols.budget_checks(exp, runsets)
    assert set(zip(checks["arch"], checks["arm"])) == {("efficientnet_lite0", "imagenet"), ("efficientnet_lite0", "linear_probe"),
                                                       ("efficientnet_lite0", "scratch"), ("resnet18", "scratch")}
    runs = {(r.arch, r.arm, r.id.protocol): r for r in runsets["covid_radiography"].runs
            if r.seed == 0 and r.id.protocol in ("recipe", "recipe_long") and r.id.train_fraction == 1}
    shown = reference.budget_display(checks)
    for c, (_, row) in zip(checks.itertuples(), shown.iterrows()):
        short, long = runs[(c.arch, c.arm, "recipe")], runs.get((c.arch, c.arm, "recipe_long"))
        assert c.best_val_acc == short.metrics["best_val_acc"] and c.epochs == short.params["epochs"]
        if long is None:
            assert row["at twice the budget"] == "not recorded yet (stage 10)" and row["budget enough"] == "—"
        else:
            gain = long.metrics["best_val_acc"] - short.metrics["best_val_acc"]
            assert long.params["epochs"] == 2 * short.params["epochs"] and c.gain == pytest.approx(gain)
            assert row["budget enough"] == ("yes" if gain <= 0.01 else "no: longer needed")
    # a doubling that gains more than the noise says the budget was short
    more = checks.head(1).assign(long_best_val_acc=checks["best_val_acc"].iloc[0] + 0.02, long_best_epoch=50,
                                 long_epochs=60, gain=0.02, enough=False)
    assert reference.budget_display(more)["budget enough"].iloc[0] == "no: longer needed"


def test_a_budget_checks_runs_are_not_an_answer_row():
    exp = _reference()
    runsets = study.load(exp)
    arms, diffs = study.arm_table(runsets), study.differences(runsets)
    assert "recipe_long" in set(arms["protocol"])   # recorded (stage 10) ...
    answer = reference.answer_table(exp, protocols.answering(exp, arms), protocols.answering(exp, diffs), {})
    assert not answer["data"].str.contains("twice the budget").any()   # ... but no answer row
    assert set(protocols.answering(exp, diffs)["protocol"]) == {"", *protocols.answer_protocols(exp)} & set(diffs["protocol"])
