"""Figures, tables, files, banners and glue names of the evaluation, from hand-made run folders."""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from test_metrics import write_run  # noqa: E402

from helpers import metrics, report  # noqa: E402


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    root = tmp_path_factory.mktemp("report") / "runs"
    ds = root / "covid_radiography"
    for seed in (0, 1):
        for arch in ("resnet18", "alexnet"):
            for pre in (True, False):
                write_run(ds / f"{arch}-{'imagenet' if pre else 'scratch'}-s{seed}", arch=arch,
                          pretrained=pre, seed=seed)
    (ds / "vgg11-imagenet-s0").mkdir()
    (ds / "vgg11-imagenet-s0" / "missing.json").write_text(json.dumps({"reason": "no ImageNet weights"}))
    return root


def test_glue_name_is_stable():
    assert report.glue_name("ct_kidney", "test_acc", "vgg16-dense1024", "imagenet") == \
        "ct_kidney_test_acc_vgg16_dense1024_imagenet"
    assert report.glue_name("covid_radiography", "table1") == "covid_radiography_table1"
    assert report.glue_name("A", "resnet18 (image_size=64)") == "a_resnet18_image_size_64"
    with pytest.raises(ValueError, match="not normalised"):
        report.glue("Bad Name", 1.0)


def test_banner_lists_what_is_missing(grid):
    rs = metrics.load_runs("covid_radiography", root=grid)
    html = report.banner(rs, expected=["mobilenet_v3_large-imagenet-s0", "resnet18-imagenet-s0"])
    assert "Synthetic data" in html and "admonition warning" in html
    assert "vgg11-imagenet-s0: no ImageNet weights" in html
    assert "mobilenet_v3_large-imagenet-s0: not found" in html
    assert "resnet18-imagenet-s0" not in html  # present, so not listed
    myst = report.banner(rs, fmt="myst")
    assert myst.startswith(":::{warning}") and "- vgg11-imagenet-s0: no ImageNet weights" in myst
    assert report.banner(synthetic=False) == ""
    assert "Incomplete" in report.banner(synthetic=False, missing=[("runs/x/a-imagenet-s0", "failed")])


@pytest.fixture(scope="module")
def evaluation(grid, tmp_path_factory):
    return report.evaluate("covid_radiography", root=grid, out_dir=tmp_path_factory.mktemp("evaluate"))


def test_evaluate_writes_every_file(evaluation):
    ev, out = evaluation, evaluation.out_dir
    for name in ("table1.csv", "table1.md", "table1_values.csv", "table1_long.csv", "per_class.csv",
                 "test_accuracy.csv", "seed_summary.csv", "paired_tests.csv", "mcnemar.csv", "inventory.csv",
                 "notes.md", "banner.html", "loss_curves.png", "loss_curves.svg", "confusion.png",
                 "confusion.svg", "roc.png", "roc.svg"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert not list(out.glob(".*tmp*"))  # no leftovers of the atomic writes
    # every figure says the data are synthetic
    for fig in ev.figures.values():
        assert fig._suptitle.get_text().endswith(report.SYNTHETIC_SUFFIX)
    # numbers in the written table are the recomputed ones
    values = pd.read_csv(out / "table1_values.csv", index_col=0)
    accs = [r.metrics["test_accuracy"] for r in ev.runset.runs if r.label == "resnet18" and r.arm == "imagenet"]
    assert values.loc["Testing accuracy", "resnet18 | imagenet | ours"] == pytest.approx(np.mean(accs))
    assert values.loc["Testing accuracy", "resnet18 | imagenet | paper A (published)"] == 0.971
    assert "Loss scale" in (out / "notes.md").read_text()
    inv = pd.read_csv(out / "inventory.csv")
    assert (inv["status"] == "missing").sum() == 1 and (inv["status"] == "complete").sum() == 8
    assert len(pd.read_csv(out / "mcnemar.csv")) == 4  # 2 archs x 2 seeds


def test_glue_evaluation_names(evaluation):
    names = report.glue_evaluation(evaluation)
    for key in ("covid_radiography_table1", "covid_radiography_loss_curves", "covid_radiography_confusion",
                "covid_radiography_roc", "covid_radiography_banner", "covid_radiography_test_acc_resnet18_imagenet",
                "covid_radiography_test_acc_resnet18_imagenet_ci_low", "covid_radiography_acc_diff_alexnet_p",
                "covid_radiography_paper_test_acc_vgg11_scratch"):
        assert key in names
    assert all(n == report.glue_name(n) for n in names)
    assert len(names) == len(set(names))


def test_empty_grid_still_gives_figures(tmp_path):
    ds = tmp_path / "runs" / "ct_kidney"
    (ds / "vgg16-imagenet-s0").mkdir(parents=True)
    (ds / "vgg16-imagenet-s0" / "missing.json").write_text(json.dumps({"reason": "no weights"}))
    ev = report.evaluate("ct_kidney", root=tmp_path / "runs", out_dir=tmp_path / "out")
    assert (tmp_path / "out" / "roc.png").is_file()
    assert ev.table1.loc["Testing accuracy", ("vgg16-dense1024", "imagenet", "paper B (published)")] == "0.9896"
    assert ev.table1.loc["Testing accuracy", ("vgg16-dense1024", "imagenet", "ours")] == "—"
    assert "no weights" in ev.banner
