"""Figures, tables, files, banners and glue names of the evaluation, from hand-made run folders."""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from test_metrics import write_run  # noqa: E402

from helpers import evaluation as evaluate_page  # noqa: E402  (a fixture is named evaluation)
from helpers import metrics, papers, report  # noqa: E402



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


def test_banner_is_short_and_actionable_however_many_runs_are_missing(grid):
    rs = metrics.load_runs("covid_radiography", root=grid)
    html = report.banner(rs, expected=["mobilenet_v3_large-imagenet-s0", "resnet18-imagenet-s0"],
                         link="reproducibility.html#missing-runs")
    assert "Synthetic data" in html and "admonition warning" in html
    assert "2 runs did not run" in html  # vgg11 (missing.json) and mobilenet (not found); resnet18 is there
    assert "vgg11-imagenet-s0" in html and "no ImageNet weights" in html
    assert 'href="reproducibility.html#missing-runs"' in html
    why = "MissingWeightsError: ImageNet weights for {} are not cached: expected the file /x/{}.pth " + "(...) " * 50
    archs = ["resnet18", "vgg11", "vgg16", "alexnet", "mobilenet_v3_large", "mobilenet_v3_small"]
    many = report.banner(synthetic=True, missing=[(f"runs/x/{a}-imagenet-s{s}", why.format(a, a))
                                                  for a in archs for s in range(5)], total=60)
    assert "30 of 60 runs did not run" in many and "python -m helpers.weights fetch" in many
    assert "Incomplete" not in many and "Synthetic data" in many
    assert "resnet18, vgg11, vgg16, alexnet and 2 more" in many
    assert len(many) < 1000  # one short box, not one paragraph per run
    myst = report.banner(rs, fmt="myst")
    assert myst.startswith(":::{warning}") and "did not run" in myst
    assert report.banner(synthetic=False) == ""
    assert "1 run did not run" in report.banner(synthetic=False, missing=[("runs/x/a-imagenet-s0", "failed")])


def test_styled_tables_read_like_tables():
    df = pd.DataFrame({"arm": ["imagenet", "scratch"], "test_accuracy": [0.91234, float("nan")], "n": [3, 1]})
    html = report.styled(df).data
    assert "report-table" in html and "ImageNet" in html and "0.912" in html and "—" in html
    assert "nan" not in html.lower().replace("nan-", "") and "0.91234" not in html
    assert 'class="row_heading' not in html  # no index column
    # a column rounded upstream (images per second to 0.1) is not padded with zeros
    rounded = report.styled(pd.DataFrame({"img/s": [177.3, 40.0], "acc": [0.95, 0.9533]})).data
    assert ">177.3<" in rounded and ">40.0<" in rounded and "177.300" not in rounded
    assert ">0.950<" in rounded and ">0.953<" in rounded
    # a measure/value table: counts stay integers, a share shows as it was rounded, not to 3 decimals
    mixed = report.styled(pd.DataFrame({"measure": ["images", "% with a copy", "none"],
                                        "value": pd.Series([400, 18.2, float("nan")], dtype=object)})).data
    assert ">400<" in mixed and ">18.2<" in mixed and "18.200" not in mixed and ">—<" in mixed
    long = report.styled(pd.DataFrame({"x": range(500)})).data
    assert ">499<" in long and "..." not in long  # every row, no truncation


@pytest.fixture(scope="module")
def evaluation(grid, tmp_path_factory):
    return evaluate_page.evaluate("covid_radiography", root=grid, out_dir=tmp_path_factory.mktemp("evaluate"))


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


def test_glue_evaluation_names(evaluation, monkeypatch):
    glued = {}
    monkeypatch.setattr(evaluate_page, "glue", lambda name, value, display=False: glued.setdefault(name, value))
    names = evaluate_page.glue_evaluation(evaluation)
    assert {"table1", "loss_curves", "confusion", "roc", "banner", "headline_imagenet",
            "headline_scratch", "headline_difference"} <= set(names)
    assert all(n == report.glue_name(n) for n in names) and len(names) == len(set(names))
    # figures are pasted as images, never as a Figure's text form
    for fig in ("loss_curves", "confusion", "roc"):
        assert glued[fig].format == "png" and glued[fig].width >= 300
    assert "Figure size" not in repr(glued["roc"])
    # what the notebook shows and what it glues are the same bytes (myst-nb writes a pasted
    # image's file only where the notebook shows it), however often a figure is drawn
    for fig in ("loss_curves", "confusion", "roc"):
        assert report.figure_image(evaluation.figures[fig]).data == glued[fig].data
    # the grid has no vgg11 runs: the paper's headline comparison says so in words, never nan
    assert glued["headline_imagenet"] == report.NOT_RUN and glued["headline_scratch"] == report.NOT_RUN
    assert "nan" not in glued["headline_difference"] and report.NOT_RUN in glued["headline_difference"]
    # Table 1: metrics as rows, weights x backbone as columns, the published values marked beside ours
    table1 = glued["table1"].data
    assert "Testing accuracy" in table1 and "ResNet-18" in table1 and "paper A (published)" in table1
    assert "0.971" in table1 and "font-style: italic" in table1


def test_headline_with_both_arms_gives_numbers(tmp_path):
    ds = tmp_path / "runs" / "covid_radiography"
    for pre in (True, False):
        write_run(ds / f"vgg11-{'imagenet' if pre else 'scratch'}-s0", arch="vgg11", pretrained=pre)
    ev = evaluate_page.evaluate("covid_radiography", root=tmp_path / "runs", out_dir=tmp_path / "out")
    hl = evaluate_page.headline(ev)
    accs = {r.arm: r.metrics["test_accuracy"] for r in ev.runset.runs}
    assert hl["imagenet"] == f"{accs['imagenet']:.3f}" and hl["scratch"] == f"{accs['scratch']:.3f}"
    assert f"{accs['imagenet'] - accs['scratch']:+.3f}" in hl["difference"] and "McNemar" in hl["difference"]


def test_published_values_for_the_pages():
    assert papers.paper_value("covid_radiography", "vgg11", "replace", "imagenet") == \
        metrics.PAPER_VALUES["covid_radiography"]["values"][("vgg11", "replace", "imagenet")]["test_accuracy"]
    with pytest.raises(KeyError, match="published.yaml"):
        papers.paper_value("ct_kidney", "resnet18", "replace", "imagenet")
    values = metrics.PAPER_VALUES["covid_radiography"]["values"]
    gains = [values[(a, "replace", "imagenet")]["test_accuracy"] - values[(a, "replace", "scratch")]["test_accuracy"]
             for a in ("resnet18", "vgg11", "alexnet", "mobilenet_v3_large")]
    assert papers.paper_gain_range("covid_radiography") == f"{100 * min(gains):.1f}–{100 * max(gains):.1f} points"


def test_empty_grid_still_gives_figures(tmp_path):
    ds = tmp_path / "runs" / "ct_kidney"
    (ds / "vgg16-imagenet-s0").mkdir(parents=True)
    (ds / "vgg16-imagenet-s0" / "missing.json").write_text(json.dumps({"reason": "no weights"}))
    ev = evaluate_page.evaluate("ct_kidney", root=tmp_path / "runs", out_dir=tmp_path / "out")
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
    try:
        planted = weights.expected_path(models.spec("resnet18").weights)
        planted.parent.mkdir(parents=True, exist_ok=True)
        torch.save(models.get_model("resnet18", weights=False, num_classes=1000, image_size=224).state_dict(), planted)
        for seed in (0, 1):
            for pretrained in (True, False):
                training.train(dataset="covid_radiography", arch="resnet18", pretrained=pretrained, image_size=32,
                               epochs=2, batch_size=8, n_per_class=8, seed=seed, device="cpu",
                               run_dir=str(runs / f"resnet18-{'imagenet' if pretrained else 'scratch'}-s{seed}"))
    finally:
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
