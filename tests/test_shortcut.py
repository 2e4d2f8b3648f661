"""Shortcut-hard and shortcut-easy test images (helpers.shortcut), on the committed records."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers import experiment as ex
from helpers import records, shortcut, study

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def at_root(monkeypatch):
    monkeypatch.chdir(ROOT)


def _reference():
    return ex.load_experiment(records.REFERENCE, need_data=False)


@pytest.fixture(scope="module")
def chest():
    return study.load(_reference())["covid_radiography"]


def _accuracy(runs):
    return np.mean([r.metrics["test_accuracy"] for r in runs])


def test_the_hard_and_easy_images_split_each_arms_accuracy_and_gap(chest):
    fair = {r.arm: [] for r in chest.runs}
    for r in chest.runs:
        if r.arch == "efficientnet_lite0" and r.id.protocol == "" and r.id.train_fraction == 1:
            fair[r.arm].append(r)
    paths = study.correctness(fair["scratch"]).index
    # any split of the test images will do: every third image "wrong" for the intensity model
    correct = pd.Series(np.arange(len(paths)) % 3 != 0, index=paths)
    table = shortcut.hard_easy(chest, correct)
    whole = table[table["classes"] == "all classes"].set_index("subset")
    assert whole["n_test"].sum() == len(paths) and whole.loc["hard", "n_test"] == (~correct).sum()
    for arm in ("imagenet", "linear_probe", "scratch"):
        pooled = (whole[arm] * whole["n_test"]).sum() / len(paths)
        assert pooled == pytest.approx(_accuracy(fair[arm]))
        assert (whole[f"{arm}_low"] <= whole[arm]).all() and (whole[arm] <= whole[f"{arm}_high"]).all()
    gap = (whole["imagenet-scratch"] * whole["n_test"]).sum() / len(paths)
    assert gap == pytest.approx(_accuracy(fair["imagenet"]) - _accuracy(fair["scratch"]))
    assert set(whole["interval"]) == {"seeds+images, paired seeds"}
    # a pair of classes holds only the images of those two classes
    labels = fair["scratch"][0].predictions.set_index("path").loc[paths, "label"]
    names = fair["scratch"][0].class_names
    pair = table[table["classes"] == f"{names[0]} and {names[1]}"]
    assert pair["n_test"].sum() == labels.isin([0, 1]).sum()
    shown = shortcut.shown(table)
    assert list(shown.columns) == ["classes", "test images", "ImageNet", "linear probe", "scratch", "ImageNet − scratch"]
    text = shortcut.sentence(table, float(correct.mean()), "gradient boosting")
    assert f"On the {int((~correct).sum())} it gets wrong" in text and "66.7%" in text
    # under a named protocol: only its gaps, from that protocol's own runs
    from helpers import robustness

    exp = _reference()
    recipe = {"table": shortcut.hard_easy(chest, correct, protocol="recipe"), "protocol": "recipe",
              "accuracy": float(correct.mean()), "model": "gradient boosting"}
    said = robustness.shortcut_text(recipe, exp)
    if "imagenet-scratch" in recipe["table"]:
        assert said.startswith("With the standard recipe, on the") and said.endswith(".")
        seeds = {r.seed for r in chest.runs if r.id.protocol == "recipe" and r.arch == "efficientnet_lite0"
                 and r.arm in ("imagenet", "scratch") and r.id.train_fraction == 1}
        assert ("one seed" in said) == (len(seeds) == 1)   # an interval without seed variance says so
    else:   # its scratch arm is not recorded yet: nothing to say
        assert said == "" and "imagenet" in recipe["table"]


def test_predictions_of_another_split_are_refused_naming_the_dataset(chest):
    with pytest.raises(ValueError, match="covid_radiography"):
        shortcut.hard_easy(chest, pd.Series([True], index=["elsewhere.png"]))


def test_the_recorded_intensity_model_predicts_exactly_the_runs_test_images(chest):
    exp = _reference()
    for dataset in ("covid_radiography", "covid_radiography_reduced"):
        correct = shortcut.intensity_correct(exp, dataset)
        assert correct is not None, f"{dataset}: the audit's predictions are recorded"
        assert correct.name in ("logistic regression", "gradient boosting")
        assert 1 / 3 < correct.mean() < 1
    test_paths = set(study.correctness([r for r in chest.runs if r.arm == "scratch"][:1]).index)
    assert set(shortcut.intensity_correct(exp, "covid_radiography").index) == test_paths
    # the reduced images keep less of the intensity cue
    assert (shortcut.intensity_correct(exp, "covid_radiography_reduced").mean()
            < shortcut.intensity_correct(exp, "covid_radiography").mean())
