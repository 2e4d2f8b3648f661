"""Metrics recomputed from hand-made run folders, checked against independent computations."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import (accuracy_score, confusion_matrix, precision_recall_fscore_support,
                             roc_auc_score)

from helpers import intervals, metrics, tables
from helpers.params import RunId, arm_order

CLASSES = ["COVID", "Normal", "Viral Pneumonia"]


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def fake_predictions(n=30, seed=0, k=3, never_predict=None, acc=0.7):
    """Labels balanced over k classes; probabilities whose argmax is right about `acc` of the time."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % k
    logits = rng.normal(0, 1, (n, k))
    right = rng.random(n) < acc
    logits[np.arange(n), labels] += np.where(right, 3.0, -1.0)
    if never_predict is not None:
        logits[:, never_predict] = -10.0
    probs = softmax(logits)
    return labels, probs.argmax(axis=1), probs


def write_run(folder: Path, *, arch="resnet18", pretrained=True, seed=0, labels=None, preds=None, probs=None,
              history=None, class_names=CLASSES, dataset="covid_radiography", head="replace",
              paths=None, stored_overrides=None, extra_params=None, synthetic_prepared=None):
    """A run folder per CONTRACTS.md, with metrics.json computed here independently of helpers.metrics."""
    folder.mkdir(parents=True, exist_ok=True)
    k = len(class_names)
    if labels is None:
        labels, preds, probs = fake_predictions(seed=seed + (0 if pretrained else 100), k=k,
                                                acc=0.85 if pretrained else 0.6)
    if history is None:
        e = np.arange(1, 4)
        history = pd.DataFrame({"epoch": e, "train_loss": 1.1 / e, "val_loss": 1.0 / e + 0.1,
                                "val_acc": [0.5, 0.7, 0.65], "seconds": 1.0, "lr": 1e-4})
    history.to_csv(folder / "history.csv", index=False)
    paths = paths or [f"{class_names[l]}/images/img_{i:03d}.png" for i, l in enumerate(labels)]
    pred_df = pd.DataFrame({"path": paths, "label": labels, "pred": preds})
    for c in range(k):
        pred_df[f"prob_{c}"] = probs[:, c]
    pred_df.to_csv(folder / "predictions.csv", index=False)
    params = {"dataset": dataset, "arch": arch, "pretrained": pretrained, "head": head, "seed": seed,
              "image_size": 64, "epochs": 3, "batch_size": 16, "lr": 1e-4, "data_dir": "",
              "device": "cpu", "run_dir": str(folder), "force": False, "class_names": list(class_names),
              "prepared_dir": str(synthetic_prepared or folder.parent / "synthetic-64px-random-bal-s0"),
              **(extra_params or {})}
    if "run" not in params:  # the identity training writes (CONTRACTS.md); None = an old run without one
        arm = params.get("arm") or ("imagenet" if pretrained else "scratch")
        params["run"] = RunId(dataset=dataset, arch=arch, head=head, arm=arm, seed=seed,
                              split=params.get("split", "random")).as_record()
        params["arm"] = arm
    elif params["run"] is None:
        del params["run"]
    (folder / "params.json").write_text(json.dumps(params))
    best = int(np.argmax(history["val_acc"].to_numpy()))
    stored = {
        "class_names": list(class_names),
        "test_accuracy": float(np.mean(labels == preds)),
        "test_auc_macro": float(roc_auc_score(labels, probs, multi_class="ovr")),
        "test_auc_per_class": [float(roc_auc_score(labels == c, probs[:, c])) for c in range(k)],
        "confusion_matrix": confusion_matrix(labels, preds, labels=range(k)).tolist(),
        "first_epoch_train_loss": float(history["train_loss"].iloc[0]),
        "first_epoch_val_acc": float(history["val_acc"].iloc[0]),
        "final_train_loss": float(history["train_loss"].iloc[-1]),
        "final_val_loss": float(history["val_loss"].iloc[-1]),
        "best_val_acc": float(history["val_acc"].iloc[best]),
        "best_epoch": best + 1, "epochs_run": len(history), "train_seconds": 3.0, "device": "cpu",
        "torch_version": "x", "git_commit": "unknown",
    }
    stored.update(stored_overrides or {})
    (folder / "metrics.json").write_text(json.dumps(stored))
    return folder


# ------------------------------------------------------------ recomputation


def test_metrics_equal_independent_sklearn_with_a_class_never_predicted():
    labels, preds, probs = fake_predictions(n=45, seed=3, never_predict=2)
    assert 2 not in preds and 2 in labels
    m = metrics.compute_metrics(labels, preds, probs, CLASSES)
    assert m["test_accuracy"] == pytest.approx(accuracy_score(labels, preds))
    assert m["confusion_matrix"] == confusion_matrix(labels, preds, labels=[0, 1, 2]).tolist()
    # hand count of the confusion matrix
    hand = np.zeros((3, 3), int)
    for t, p in zip(labels, preds):
        hand[t, p] += 1
    assert m["confusion_matrix"] == hand.tolist()
    per_class = [roc_auc_score((labels == c).astype(int), probs[:, c]) for c in range(3)]
    assert m["test_auc_per_class"] == pytest.approx(per_class)
    assert m["test_auc_macro"] == pytest.approx(np.mean(per_class))
    p, r, f, s = precision_recall_fscore_support(labels, preds, labels=[0, 1, 2], zero_division=0)
    assert m["precision"] == pytest.approx(p.tolist())
    assert m["recall"] == pytest.approx(r.tolist())
    assert m["f1"] == pytest.approx(f.tolist())
    # the never-predicted class: precision 0 by the stated convention, recall 0, F1 0
    assert m["precision"][2] == 0 and m["recall"][2] == 0 and m["f1"][2] == 0
    assert m["n_predicted"][2] == 0
    # recall by hand for class 0
    assert m["recall"][0] == pytest.approx(np.mean(preds[labels == 0] == 0))


def test_auc_undefined_when_a_class_is_absent_from_labels():
    labels = np.array([0, 0, 1, 1])
    probs = softmax(np.array([[2, 0, 0], [1, 0, 0], [0, 2, 0], [0, 1, 0.5]], float))
    m = metrics.compute_metrics(labels, probs.argmax(1), probs, CLASSES)
    assert math.isnan(m["test_auc_macro"]) and math.isnan(m["test_auc_per_class"][2])
    assert m["test_auc_per_class"][0] == 1.0


def test_arch_order_is_the_models_table():
    from helpers.models import ARCHS
    assert metrics.arch_order() == tuple(ARCHS)


def test_test_scores_are_the_metrics_json_fields():
    labels, _, probs = fake_predictions(n=60, seed=3)
    got = metrics.test_scores(labels, probs, CLASSES)
    preds = probs.argmax(1)
    assert set(got) == {"test_accuracy", "test_auc_macro", "test_auc_per_class", "confusion_matrix", "notes"}
    assert got["test_accuracy"] == pytest.approx(accuracy_score(labels, preds))
    assert got["test_auc_macro"] == pytest.approx(roc_auc_score(labels, probs, multi_class="ovr", average="macro"))
    assert got["test_auc_per_class"] == pytest.approx([roc_auc_score(labels == c, probs[:, c]) for c in range(3)])
    assert got["confusion_matrix"] == confusion_matrix(labels, preds, labels=[0, 1, 2]).tolist()
    assert got["notes"] == []
    # a class absent from the test labels: its AUC and the macro are undefined, and a note names it
    absent = metrics.test_scores(labels[labels != 2], probs[labels != 2], CLASSES)
    assert math.isnan(absent["test_auc_macro"]) and math.isnan(absent["test_auc_per_class"][2])
    assert any("Viral Pneumonia" in n for n in absent["notes"])
    with pytest.raises(ValueError, match="probs"):
        metrics.auc_scores(labels, probs[:, :2], CLASSES)


def test_binomial_ci_wilson_and_exact():
    low, high = intervals.binomial_ci(18, 20)
    ci = stats.binomtest(18, 20).proportion_ci(0.95, method="wilson")
    assert (low, high) == pytest.approx((ci.low, ci.high))
    assert intervals.binomial_ci(18, 20, method="exact")[0] < low  # Clopper-Pearson is wider here
    assert all(math.isnan(v) for v in intervals.binomial_ci(0, 0))


def test_published_values_come_from_the_data_file(tmp_path):
    assert metrics.PAPER_VALUES == metrics.load_published(metrics.PUBLISHED_FILE)
    assert set(metrics.PAPER_VALUES) == {"covid_radiography", "ct_kidney"}
    bad = tmp_path / "published.yaml"
    bad.write_text("ct_kidney:\n  name: paper B\n  columns:\n    - {arch: vgg16, head: dense1024, arm: imagenet, test_acc: 0.9}\n")
    with pytest.raises(ValueError, match="test_acc"):
        metrics.load_published(bad)


def test_arm_read_from_params_and_every_arm_compared(tmp_path):
    ds = tmp_path / "runs" / "covid_radiography"
    for seed in (0, 1):
        write_run(ds / f"imagenet-s{seed}", seed=seed, extra_params={"arm": "imagenet"})
        write_run(ds / f"probe-s{seed}", seed=seed, extra_params={"arm": "linear_probe"})
        write_run(ds / f"scratch-s{seed}", pretrained=False, seed=seed, extra_params={"arm": "scratch"})
        write_run(ds / f"from-s{seed}", pretrained=False, seed=seed,
                  extra_params={"arm": "from-ct_kidney-imagenet", "init_from": "runs/x/ct_kidney/r/best.pt"})
    rs = metrics.load_runs("covid_radiography", root=tmp_path / "runs")
    assert {r.label for r in rs.runs} == {"resnet18"}  # the arm's parameters are not the configuration's
    assert sorted({r.arm for r in rs.runs}, key=arm_order) == [
        "imagenet", "linear_probe", "scratch", "from-ct_kidney-imagenet"]
    paired = tables.paired_tests(rs)
    pairs = list(dict.fromkeys(zip(paired.arm_a, paired.arm_b)))
    assert pairs[:3] == [("imagenet", "scratch"), ("linear_probe", "scratch"), ("from-ct_kidney-imagenet", "scratch")]
    assert len(pairs) == 6 and (paired.n_pairs == 2).all()
    assert len(tables.mcnemar_tests(rs)) == 12  # 6 pairs x 2 seeds


def test_a_run_without_an_identity_is_reported_never_guessed_from_its_folder_name(tmp_path):
    ds = tmp_path / "runs" / "covid_radiography"
    write_run(ds / "resnet18-imagenet-s0", pretrained=True, extra_params={"run": None})
    write_run(ds / "b", pretrained=False)
    rs = metrics.load_runs("covid_radiography", root=tmp_path / "runs")
    assert [r.arm for r in rs.runs] == ["scratch"]
    (folder, why), = rs.incomplete
    assert folder.endswith("resnet18-imagenet-s0") and "no run identity" in why and "retrain" in why


def test_history_metrics():
    h = pd.DataFrame({"epoch": [2, 1, 3], "train_loss": [0.5, 1.2, 0.3], "val_loss": [0.6, 1.0, 0.7],
                      "val_acc": [0.8, 0.6, 0.8]})
    m = metrics.history_metrics(h)
    assert m == {"first_epoch_train_loss": 1.2, "first_epoch_val_acc": 0.6, "final_train_loss": 0.3,
                 "final_val_loss": 0.7, "best_val_acc": 0.8, "best_epoch": 2, "epochs_run": 3}


def test_load_run_recomputes_and_agrees(tmp_path):
    run = metrics.load_run(write_run(tmp_path / "resnet18-imagenet-s0"))
    assert run.mismatches == []
    assert run.arm == "imagenet" and run.arch == "resnet18" and run.seed == 0
    assert run.synthetic is True  # data_dir "" and a synthetic-* prepared folder


def test_mismatched_metrics_json_is_flagged(tmp_path):
    folder = write_run(tmp_path / "resnet18-imagenet-s0", stored_overrides={"test_accuracy": 0.999})
    with pytest.raises(metrics.MetricsMismatch, match="test_accuracy"):
        metrics.load_run(folder)
    run = metrics.load_run(folder, on_mismatch="flag")
    assert any("test_accuracy" in m for m in run.mismatches)
    # the recomputed value is used, never the stored one
    assert run.metrics["test_accuracy"] != 0.999
    folder2 = write_run(tmp_path / "b", stored_overrides={"confusion_matrix": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]})
    with pytest.raises(metrics.MetricsMismatch, match="confusion_matrix"):
        metrics.load_run(folder2)


def test_missing_key_is_flagged(tmp_path):
    folder = write_run(tmp_path / "r")
    stored = json.loads((folder / "metrics.json").read_text())
    del stored["best_val_acc"]
    (folder / "metrics.json").write_text(json.dumps(stored))
    with pytest.raises(metrics.MetricsMismatch, match="best_val_acc missing"):
        metrics.load_run(folder)


def test_bad_predictions_named(tmp_path):
    folder = write_run(tmp_path / "r")
    df = pd.read_csv(folder / "predictions.csv").drop(columns=["prob_2"])
    df.to_csv(folder / "predictions.csv", index=False)
    with pytest.raises(ValueError, match=r"predictions.csv.*prob_2"):
        metrics.load_run(folder)


def test_load_runs_reports_missing_and_incomplete(tmp_path):
    root = tmp_path / "runs"
    ds = root / "covid_radiography"
    write_run(ds / "resnet18-imagenet-s0")
    write_run(ds / "resnet18-scratch-s0", pretrained=False)
    (ds / "vgg11-imagenet-s0").mkdir()
    (ds / "vgg11-imagenet-s0" / "missing.json").write_text(json.dumps({"reason": "no ImageNet weights"}))
    (ds / "vgg11-scratch-s0").mkdir()
    (ds / "vgg11-scratch-s0" / "history.csv").write_text("epoch,train_loss,val_loss,val_acc\n")
    rs = metrics.load_runs("covid_radiography", root=root)
    assert [r.name for r in rs.runs] == ["resnet18-imagenet-s0", "resnet18-scratch-s0"]
    assert rs.missing == [(str(ds / "vgg11-imagenet-s0"), "no ImageNet weights")]
    assert rs.incomplete[0][0] == str(ds / "vgg11-scratch-s0")
    inv = rs.inventory()
    assert sorted(inv["status"]) == ["complete", "complete", "incomplete", "missing"]
    # a glob and a list select the same way
    assert len(metrics.load_runs("covid_radiography", str(ds / "resnet18-*")).runs) == 2
    assert len(metrics.load_runs("covid_radiography", [ds / "resnet18-scratch-s0"]).runs) == 1
    with pytest.raises(FileNotFoundError, match="matches no run folder"):
        metrics.load_runs("covid_radiography", str(ds / "nothing-*"))
    with pytest.raises(ValueError, match="not 'ct_kidney'"):
        metrics.load_runs("ct_kidney", str(ds / "resnet18-*"))


# --------------------------------------------------------------- statistics


def test_t_interval_by_formula():
    ci = intervals.mean_ci([1, 2, 3])
    # mean 2, sd 1, sem 1/sqrt(3), t_{0.975, 2} = 4.302652729...
    half = 4.302652729749464 / math.sqrt(3)
    assert ci.mean == 2 and ci.sd == 1 and ci.n == 3
    assert ci.low == pytest.approx(2 - half, rel=1e-12)
    assert ci.high == pytest.approx(2 + half, rel=1e-12)
    one = intervals.mean_ci([0.9])
    assert one.mean == 0.9 and math.isnan(one.low) and one.n == 1
    assert intervals.mean_ci([0.5, 0.5]).low == 0.5
    # two seeds far apart: t's factor 12.7 runs past an accuracy's range, which the bounds stop
    free, bounded = intervals.mean_ci([0.90, 0.99]), intervals.mean_ci([0.90, 0.99], bounds=(0.0, 1.0))
    assert free.high > 1 and bounded.high == 1.0 and bounded.low == pytest.approx(free.low)


def test_paired_test_known_answer():
    a = [0.9, 0.8, 0.7]
    b = [0.8, 0.6, 0.4]  # differences 0.1, 0.2, 0.3: mean 0.2, sd 0.1
    res = intervals.paired_test(a, b)
    t = 0.2 / (0.1 / math.sqrt(3))
    assert res["mean_diff"] == pytest.approx(0.2)
    assert res["t"] == pytest.approx(t)
    assert res["p_ttest"] == pytest.approx(2 * stats.t.sf(t, 2))
    assert res["cohens_dz"] == pytest.approx(2.0)
    half = stats.t.ppf(0.975, 2) * 0.1 / math.sqrt(3)
    assert (res["diff_ci_low"], res["diff_ci_high"]) == pytest.approx((0.2 - half, 0.2 + half))
    assert math.isnan(res["p_wilcoxon"]) and "Wilcoxon not run" in res["note"]
    six = intervals.paired_test([1, 2, 3, 4, 5, 6], [0, 0, 0, 0, 0, 0])
    assert six["p_wilcoxon"] == pytest.approx(2 / 2 ** 6)  # all six signs positive, exact two-sided


def test_mcnemar_known_answers():
    # b = 0, c = 10: p = 2 * 0.5**10
    ca = np.array([True] * 20 + [False] * 10)
    cb = np.array([True] * 30)
    res = intervals.mcnemar_exact(ca, cb)
    assert (res["b"], res["c"]) == (0, 10)
    assert res["p_mcnemar"] == pytest.approx(2 * 0.5 ** 10)
    assert res["acc_diff"] == pytest.approx(-10 / 30)
    assert intervals.mcnemar_exact([True, False], [True, False])["p_mcnemar"] == 1.0
    # b = 3, c = 1: p = 2 * P(X <= 1 | n=4) = 2 * 5/16
    res = intervals.mcnemar_exact([1, 1, 1, 0, 1], [0, 0, 0, 1, 1])
    assert (res["b"], res["c"]) == (3, 1) and res["p_mcnemar"] == pytest.approx(10 / 16)


def test_accuracy_ci_wilson_by_formula():
    k, n, z = 45, 50, stats.norm.ppf(0.975)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    ci = intervals.accuracy_ci(k, n)
    assert (ci["wilson_low"], ci["wilson_high"]) == pytest.approx((centre - half, centre + half))
    assert ci["exact_low"] == pytest.approx(stats.beta.ppf(0.025, k, n - k + 1))
    assert ci["exact_high"] == pytest.approx(stats.beta.ppf(0.975, k + 1, n - k))


# ---------------------------------------------------------------- tables


def _grid(tmp_path, seeds=(0, 1, 2)):
    ds = tmp_path / "runs" / "covid_radiography"
    for s in seeds:
        for pre in (True, False):
            write_run(ds / f"resnet18-{'imagenet' if pre else 'scratch'}-s{s}", pretrained=pre, seed=s)
    return metrics.load_runs("covid_radiography", root=tmp_path / "runs")


def test_seed_summary_and_paired_tests(tmp_path):
    rs = _grid(tmp_path)
    summary = tables.seed_summary(rs)
    row = summary[(summary.arm == "imagenet") & (summary.metric == "test_accuracy")].iloc[0]
    accs = [r.metrics["test_accuracy"] for r in rs.runs if r.arm == "imagenet"]
    ci = intervals.mean_ci(accs)
    assert row["n"] == 3 and row["mean"] == pytest.approx(np.mean(accs))
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((ci.low, ci.high))
    assert {"precision[COVID]", "recall[Normal]", "f1[Viral Pneumonia]", "auc[COVID]"} <= set(summary.metric)
    paired = tables.paired_tests(rs)
    acc = paired[paired.metric == "test_accuracy"].iloc[0]
    a = [r.metrics["test_accuracy"] for r in sorted(rs.runs, key=lambda r: r.seed) if r.arm == "imagenet"]
    b = [r.metrics["test_accuracy"] for r in sorted(rs.runs, key=lambda r: r.seed) if r.arm == "scratch"]
    assert acc["n_pairs"] == 3 and acc["p_ttest"] == pytest.approx(stats.ttest_rel(a, b).pvalue)
    mc = tables.mcnemar_tests(rs)
    assert len(mc) == 3 and set(mc.seed) == {0, 1, 2}


def test_table1_beside_paper_a(tmp_path):
    rs = _grid(tmp_path, seeds=(0,))
    t = tables.table1(rs)
    assert ("resnet18", "imagenet", "ours") in t.columns
    assert t.loc["Testing accuracy", ("resnet18", "imagenet", "paper A (published)")] == "0.971"
    assert t.loc["Validation loss (final epoch)", ("alexnet", "imagenet", "paper A (published)")] == "5.0975"
    assert t.loc["Training loss of the first epoch", ("vgg11", "scratch", "paper A (published)")] == "12.714"
    # a paper arch we did not run shows a dash for ours, never a made-up number
    assert t.loc["Testing accuracy", ("vgg11", "scratch", "ours")] == "—"
    ours = rs.runs[0].metrics["test_accuracy"]
    assert t.loc["Testing accuracy", ("resnet18", rs.runs[0].arm, "ours")] == f"{ours:.3f}"
    note = tables.loss_scale_note(rs)
    assert "4.228–13.931" in note and "ln 3" in note


def test_table1_paper_b_and_heads(tmp_path):
    ds = tmp_path / "runs" / "ct_kidney"
    classes = ["Cyst", "Normal", "Stone", "Tumor"]
    for pre in (True, False):
        labels, preds, probs = fake_predictions(n=40, k=4, seed=int(pre))
        write_run(ds / f"vgg16-{'imagenet' if pre else 'scratch'}-s0", arch="vgg16", head="dense1024",
                  pretrained=pre, labels=labels, preds=preds, probs=probs, class_names=classes,
                  dataset="ct_kidney")
    rs = metrics.load_runs("ct_kidney", root=tmp_path / "runs")
    assert {r.label for r in rs.runs} == {"vgg16-dense1024"}
    t = tables.table1(rs)
    assert t.loc["Testing accuracy", ("vgg16-dense1024", "imagenet", "paper B (published)")] == "0.9896"
    assert t.loc["Testing accuracy", ("vgg16-dense1024", "scratch", "paper B (published)")] == "0.6894"
    assert t.loc["Highest validation accuracy", ("vgg16-dense1024", "scratch", "paper B (published)")] == "—"


def test_published_values_sit_only_beside_the_papers_own_split(tmp_path):
    ds = tmp_path / "runs" / "ct_kidney"
    classes = ["Cyst", "Normal", "Stone", "Tumor"]
    for split in ("random", "grouped"):
        for pre in (True, False):
            labels, preds, probs = fake_predictions(n=40, k=4, seed=int(pre))
            write_run(ds / f"vgg16-{pre}-{split}", arch="vgg16", head="dense1024", pretrained=pre,
                      labels=labels, preds=preds, probs=probs, class_names=classes,
                      dataset="ct_kidney", extra_params={"split": split})
    t = tables.table1(metrics.load_runs("ct_kidney", root=tmp_path / "runs"))
    published = [c for c in t.columns if c[2] == "paper B (published)"]
    assert sorted(published) == [("vgg16-dense1024 (split=random)", "imagenet", "paper B (published)"),
                                 ("vgg16-dense1024 (split=random)", "scratch", "paper B (published)")]
    assert ("vgg16-dense1024 (split=grouped)", "scratch", "ours") in t.columns


def test_pairing_requires_identical_test_images(tmp_path):
    ds = tmp_path / "runs" / "covid_radiography"
    write_run(ds / "resnet18-imagenet-s0")
    labels, preds, probs = fake_predictions(seed=5)
    write_run(ds / "resnet18-scratch-s0", pretrained=False, labels=labels, preds=preds, probs=probs,
              paths=[f"other/{i}.png" for i in range(len(labels))])
    rs = metrics.load_runs("covid_radiography", root=tmp_path / "runs")
    with pytest.raises(ValueError, match="different images"):
        tables.mcnemar_tests(rs)


def test_config_labels_separate_differing_params(tmp_path):
    ds = tmp_path / "runs" / "covid_radiography"
    write_run(ds / "a", extra_params={"image_size": 64})
    write_run(ds / "b", extra_params={"image_size": 128})
    rs = metrics.load_runs("covid_radiography", root=tmp_path / "runs")
    assert sorted(r.label for r in rs.runs) == ["resnet18 (image_size=128)", "resnet18 (image_size=64)"]


def test_above_chance_pools_seeds_and_compares_the_interval_with_one_over_k():
    import types

    def run(label, arm, seed, correct, n=40, k=4):
        return types.SimpleNamespace(label=label, arm=arm, seed=seed, class_names=list("abcd")[:k],
                                     metrics={"test_correct": correct, "test_n": n})

    runset = types.SimpleNamespace(runs=[run("net", "imagenet", 0, 30), run("net", "imagenet", 1, 28),
                                         run("net", "scratch", 0, 11), run("net", "scratch", 1, 9)])
    table = tables.above_chance(runset).set_index("arm")
    assert table.loc["imagenet", "seeds"] == 2 and table.loc["imagenet", "accuracy"] == 58 / 80
    assert table.loc["imagenet", "learned"] and not table.loc["scratch", "learned"]  # 20/80 = chance
    assert table.loc["scratch", "ci_low"] < 0.25 < table.loc["scratch", "ci_high"]
    assert list(table.index) == ["imagenet", "scratch"]
