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


# ------------------------------------------------------- end to end on tiny runs

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


_TINY: dict = {}  # test_explain imports this fixture; the cache makes both modules share one build


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory):
    """Tiny resnet18 runs (ImageNet arm from planted weights, scratch arm), seeds 0 and 1, trained
    with helpers.training.train; plus one folder recorded as missing. Environment restored before use."""
    if "root" not in _TINY:
        _TINY["root"] = _make_tiny_runs(tmp_path_factory)
    return _TINY["root"]


def _make_tiny_runs(tmp_path_factory):
    import torch

    from helpers import models, training, weights

    root = tmp_path_factory.mktemp("tiny_runs")
    runs = root / "runs" / "covid_radiography"
    patch = pytest.MonkeyPatch()
    patch.setenv("HELPERS_DATA_ROOT", str(root / "data"))
    patch.setenv("TORCH_HOME", str(root / "torch_home"))
    patch.setenv("TQDM_DISABLE", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        planted = weights.expected_path("resnet18")
        planted.parent.mkdir(parents=True, exist_ok=True)
        torch.save(models.get_model("resnet18", weights=False, num_classes=1000).state_dict(), planted)
        for seed in (0, 1):
            for pretrained in (True, False):
                training.train(dataset="covid_radiography", arch="resnet18", pretrained=pretrained, image_size=32,
                               epochs=2, batch_size=8, n_per_class=8, seed=seed, device="cpu",
                               run_dir=str(runs / f"resnet18-{'imagenet' if pretrained else 'scratch'}-s{seed}"))
    finally:
        torch.set_num_threads(threads)
        patch.undo()
    (runs / "vgg11-imagenet-s0").mkdir()
    (runs / "vgg11-imagenet-s0" / "missing.json").write_text(json.dumps({"reason": "no ImageNet weights"}))
    return root


def papermill(notebook: str, out, params: dict, yaml: str = ""):
    """The command a user types, from the repo root, with the venv's papermill."""
    import subprocess
    import sys
    from pathlib import Path

    args = [str(Path(sys.executable).parent / "papermill"), f"notebooks/{notebook}", str(out), "-k", "python3"]
    for name, value in params.items():
        args += ["-p", name, str(value)]
    if yaml:
        args += ["-y", yaml]
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_evaluate_notebook_on_tiny_runs(tiny_runs, tmp_path):
    out = tmp_path / "evaluate"
    done = papermill("evaluate.ipynb", tmp_path / "evaluate.ipynb",
                     {"dataset": "covid_radiography", "runs": f"{tiny_runs}/runs/covid_radiography/*",
                      "out_dir": out})
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("table1.csv", "table1.md", "per_class.csv", "seed_summary.csv", "paired_tests.csv",
                 "mcnemar.csv", "test_accuracy.csv", "loss_curves.png", "loss_curves.svg", "confusion.png",
                 "confusion.svg", "roc.png", "roc.svg"):
        assert (out / name).is_file(), name
    nb = json.loads((tmp_path / "evaluate.ipynb").read_text())
    glued = {o.get("metadata", {}).get("scrapbook", {}).get("name") for c in nb["cells"]
             for o in c.get("outputs", [])}
    assert {"covid_radiography_table1", "covid_radiography_loss_curves", "covid_radiography_confusion",
            "covid_radiography_roc", "covid_radiography_test_acc_resnet18_imagenet"} <= glued
    assert "vgg11-imagenet-s0: no ImageNet weights" in json.dumps(nb)  # the banner lists the missing run
    summary = pd.read_csv(out / "seed_summary.csv")
    acc = summary[(summary.metric == "test_accuracy") & (summary.arm == "scratch")].iloc[0]
    assert acc["n"] == 2  # two seeds pooled into mean and CI
    paired = pd.read_csv(out / "paired_tests.csv")
    assert (paired["n_pairs"] == 2).all()
