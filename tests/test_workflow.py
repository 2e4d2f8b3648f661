"""Experiment files, grid expansion, notebook parameter cells and the Snakemake dry runs."""

import ast
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import papermill
import pytest
import yaml

from helpers import params as P
from helpers import book
from helpers import experiment as ex
from helpers import workflow as wf

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def at_root(monkeypatch):
    monkeypatch.chdir(ROOT)


def write_exp(tmp_path, **changes):
    exp = yaml.safe_load((ROOT / "experiments" / "demo.yaml").read_text())
    exp.update(changes)
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(exp))
    return path


def demo_entry(**changes):
    entry = {"dataset": "covid_radiography", "archs": ["resnet18"], "arms": ["imagenet"], "seeds": [0]}
    return {**entry, **changes}


@pytest.mark.parametrize("name, data_dir, n_runs", [
    ("demo", "", 22),
    ("paper_a", "/data/covid", 8),
    ("paper_b", "/data/kidney", 2),
    ("full", "covid_radiography=/a,ct_kidney=/b", 140),
    ("cross_domain", "covid_radiography=/a,ct_kidney=/b", 24),
    ("pneumonia", "/data/chest_xray", 10),
])
def test_every_experiment_file_expands(name, data_dir, n_runs):
    exp = ex.load_experiment(name, data_dir)
    grid = ex.runs(exp)
    assert len(grid) == n_runs
    assert len({rid.key for rid in grid}) == n_runs
    for rid, p in grid.items():
        assert rid.experiment == p["experiment"] == exp["name"] and "run_dir" not in p
        assert rid.run_dir() == Path("runs", exp["name"], rid.dataset, rid.name)
        assert p["pretrained"] is (rid.arm in ("imagenet", "linear_probe"))
        assert p["data_dir"] == exp["data_dirs"][rid.dataset]
        assert set(p) <= set(P.TrainParams.model_fields)


def test_the_grid_names_each_run_as_training_does():
    grid = ex.runs(ex.load_experiment("demo"))
    for rid, p in grid.items():
        assert P.check(P.TrainParams, p).run_id() == rid
    assert Path("runs/demo/ct_kidney/efficientnet_lite0_dense1024-scratch-s0") in {r.run_dir() for r in grid}


def test_arms_set_the_training_fields(tmp_path):
    path = write_exp(tmp_path, grid=[demo_entry(arms=["imagenet", "linear_probe", "scratch"])])
    grid = {rid.arm: p for rid, p in ex.runs(ex.load_experiment(path)).items()}
    assert {arm: (p["pretrained"], p["freeze_backbone"]) for arm, p in grid.items()} == {
        "imagenet": (True, False), "linear_probe": (True, True), "scratch": (False, False)}


def test_a_sweep_and_a_protocol_are_part_of_each_run_identity(tmp_path):
    path = write_exp(tmp_path, explain={}, audit=[], datasets={"covid_radiography": {}},
                     protocols={"paper_a": {"epochs": 20, "lr": 1.0e-4, "early_stopping_patience": 0}},
                     defaults={"epochs": 40, "early_stopping_patience": 5},
                     grid=[demo_entry(arms=["scratch"], seeds=[0, 1], tune={"lr": [1.0e-3, 3.0e-3]}),
                           demo_entry(arms=["scratch"], seeds=[0], tune={"lr": [1.0e-3, 3.0e-3]},
                                      train={"train_fraction": 0.1}),
                           demo_entry(arms=["scratch"], seeds=[0], protocol="paper_a")])
    exp = ex.load_experiment(path)
    grid, sweeps = ex.runs(exp), ex.sweeps(exp)
    names = {rid.name: p for rid, p in grid.items()}
    assert list(names) == ["resnet18-scratch-lr0.001-s0", "resnet18-scratch-lr0.003-s0", "resnet18-scratch-tuned-s1",
                           "resnet18-scratch-f0.1-tuned-s0", "resnet18-scratch-paper_a-s0"]
    assert names["resnet18-scratch-lr0.003-s0"]["lr"] == 3e-3 and names["resnet18-scratch-tuned-s1"]["lr"] is None
    assert (names["resnet18-scratch-paper_a-s0"]["epochs"], names["resnet18-scratch-paper_a-s0"]["lr"],
            names["resnet18-scratch-paper_a-s0"]["early_stopping_patience"]) == (20, 1e-4, 0)
    assert names["resnet18-scratch-lr0.001-s0"]["epochs"] == 40
    # both tuned runs take their rate from the same full-data sweep on seed 0
    tuned = [rid for rid in grid if rid.tuning == "tuned"]
    assert set(sweeps) == set(tuned) and len({id(sweeps[r]) for r in tuned}) == 1
    assert {lr: r.name for lr, r in sweeps[tuned[0]].candidates.items()} == {
        1e-3: "resnet18-scratch-lr0.001-s0", 3e-3: "resnet18-scratch-lr0.003-s0"}
    for rid, p in grid.items():  # training names each run as the grid does
        assert P.check(P.TrainParams, {**p, "lr": p["lr"] or 1e-3}).run_id() == rid


def test_a_sweep_and_the_seeds_it_tunes_may_sit_in_different_stages(tmp_path):
    tune = {"lr": [1.0e-3, 3.0e-3]}
    path = write_exp(tmp_path, explain={}, audit=[], datasets={"covid_radiography": {}},
                     grid=[demo_entry(arms=["scratch"], seeds=[0], tune=tune),
                           demo_entry(arms=["scratch"], seeds=[1, 2], tune={**tune, "seed": 0}, stage=2)])
    exp = ex.load_experiment(path)
    assert {rid.name: n for rid, n in ex.stages(exp).items()} == {
        "resnet18-scratch-lr0.001-s0": 1, "resnet18-scratch-lr0.003-s0": 1,
        "resnet18-scratch-tuned-s1": 2, "resnet18-scratch-tuned-s2": 2}
    with pytest.raises(ex.ExperimentError, match="on seed 1"):
        ex.load_experiment(write_exp(tmp_path, explain={}, audit=[], datasets={"covid_radiography": {}},
                                     grid=[demo_entry(arms=["scratch"], seeds=[0], tune=tune),
                                           demo_entry(arms=["scratch"], seeds=[2], tune={**tune, "seed": 1})]))


def test_a_longer_budget_takes_the_rate_another_protocols_sweep_chose(tmp_path):
    tune = {"lr": [1.0e-3, 3.0e-3], "seed": 0}
    path = write_exp(tmp_path, explain={}, audit=[], datasets={"covid_radiography": {}},
                     protocols={"recipe": {"epochs": 30}, "recipe_long": {"epochs": 60}},
                     grid=[demo_entry(arms=["scratch"], seeds=[0], tune=tune, protocol="recipe"),
                           demo_entry(arms=["scratch"], seeds=[0], protocol="recipe_long",
                                      tune={**tune, "protocol": "recipe"}, stage=2)])
    exp = ex.load_experiment(path)
    grid, sweeps = ex.runs(exp), ex.sweeps(exp)
    longer = {rid.name: rid for rid in grid}["resnet18-scratch-recipe_long-tuned-s0"]   # seed 0, no sweep of its own
    assert grid[longer]["epochs"] == 60 and grid[longer]["lr"] is None
    assert {r.name for r in sweeps[longer].candidates.values()} == {
        "resnet18-scratch-recipe-lr0.001-s0", "resnet18-scratch-recipe-lr0.003-s0"}
    assert len(grid) == 3
    # a shortcut-reduced version of a dataset trains at the rate its source's sweep chose
    path = write_exp(tmp_path, explain={}, audit=[], datasets={"covid_radiography": {}, "covid_radiography_reduced": {}},
                     grid=[demo_entry(arms=["scratch"], seeds=[0], tune=tune),
                           demo_entry(dataset="covid_radiography_reduced", arms=["scratch"], seeds=[0, 1],
                                      tune={**tune, "dataset": "covid_radiography"})])
    exp = ex.load_experiment(path)
    reduced = [rid for rid in ex.runs(exp) if rid.dataset == "covid_radiography_reduced"]
    assert [r.name for r in reduced] == ["resnet18-scratch-tuned-s0", "resnet18-scratch-tuned-s1"]
    assert {r.key for r in ex.sweeps(exp)[reduced[0]].candidates.values()} == {
        "covid_radiography/resnet18-scratch-lr0.001-s0", "covid_radiography/resnet18-scratch-lr0.003-s0"}
    with pytest.raises(ex.ExperimentError, match="protocol 'nope'"):
        ex.load_experiment(write_exp(tmp_path, explain={}, audit=[], datasets={"covid_radiography": {}},
                                     protocols={"recipe": {"epochs": 30}},
                                     grid=[demo_entry(arms=["scratch"], seeds=[0], tune={**tune, "protocol": "nope"})]))


def test_a_stages_targets_print_on_one_line_without_the_images(capsys):
    # one line: `make report SNAKE_ARGS="$(... targets ...)"` breaks a recipe at each newline
    assert wf.main(["targets", "real_study", "--stage", "1"]) in (0, None)
    out = capsys.readouterr().out
    exp = ex.load_experiment("real_study", need_data=False)
    wanted = [str(wf.status_file(r)) for r, n in ex.stages(exp).items() if n == 1]
    assert out.count("\n") == 1 and out.split() == wanted and len(wanted) > 1


def test_one_kidney_fold_trains_exactly_as_the_reference_studys_fold_0():
    # kidney_fold.yaml promises real_study's fold-0 runs from the kidney download alone
    fold = ex.runs(ex.load_experiment("kidney_fold", need_data=False))
    study = ex.runs(ex.load_experiment("real_study", need_data=False))
    same = lambda p: {k: v for k, v in p.items() if k != "experiment"}
    ref = {rid.model_copy(update={"experiment": "kidney_fold"}): same(p) for rid, p in study.items()}
    assert fold and {rid.split for rid in fold} == {"fold0"}
    assert all(ref.get(rid) == same(p) for rid, p in fold.items())
    # every arm of fold 0 that real_study sweeps or tunes there
    assert {(r.arm, r.tuning) for r in fold} == {(r.arm, r.tuning) for r in study
                                                  if r.dataset == "ct_kidney_originals" and r.split == "fold0"
                                                  and r.arch == "efficientnet_lite0" and r.protocol == ""}


def test_the_audit_of_a_cross_validated_dataset_measures_every_fold():
    # the audit scores its baselines on all five folds, even where the grid trains fold 0 only,
    # and the Snakefile's audit rule declares each fold's prepared folder (ex.preps lists them)
    for name in ("real_study", "kidney_fold"):
        exp = ex.load_experiment(name, need_data=False)
        assert wf.notebook_params(exp, "audit", "ct_kidney_originals")["folds"] == list(P.FOLD_SPLITS)
        prepared = {(p["dataset"], p["split"]) for p in ex.preps(exp)}
        assert {("ct_kidney_originals", f) for f in P.FOLD_SPLITS} <= prepared
    exp = ex.load_experiment("real_study", need_data=False)
    assert wf.notebook_params(exp, "audit", "covid_radiography")["folds"] == []
    assert wf.notebook_params(exp, "audit", "ct_kidney")["folds"] == []   # its split is not a fold


@pytest.mark.parametrize("changes, named", [
    ({"grid": [demo_entry(seeds=[0], train={"train_fraction": 0.5}, tune={"lr": [1e-3, 3e-3]})]},
     "no grid entry"),
    ({"grid": [demo_entry(protocol="paper_b")]}, "protocol 'paper_b'"),
    ({"grid": [demo_entry(tune={"lr": [1e-3, 3e-3]}, train={"lr": 1e-3})]}, "keep one"),
    ({"grid": [demo_entry(tune={"lr": [1e-3]})]}, "grid[0].tune.lr"),
    ({"grid": [demo_entry(tune={"lr": [1e-3, 3e-3], "by": "test_accuracy"})]}, "best_val_acc"),
])
def test_a_bad_sweep_or_protocol_is_refused_naming_the_entry(tmp_path, changes, named):
    path = write_exp(tmp_path, explain={}, audit=[], datasets={"covid_radiography": {}}, **changes)
    with pytest.raises(ex.ExperimentError, match=re.escape(named)):
        ex.load_experiment(path)


def test_a_sweep_chooses_on_validation_never_on_test():
    scores = {1e-4: {"best_val_acc": 0.80, "min_val_loss": 0.5},
              1e-3: {"best_val_acc": 0.90, "min_val_loss": 0.4},
              3e-3: {"best_val_acc": 0.90, "min_val_loss": 0.3}}
    assert ex.choose_lr(scores) == 3e-3                     # a tie on accuracy: the lower loss
    assert ex.choose_lr({**scores, 3e-3: {**scores[3e-3], "min_val_loss": 0.4}}) == 1e-3  # then the smaller rate
    assert ex.choose_lr(scores, "min_val_loss") == 3e-3
    with pytest.raises(ValueError, match="no finished runs"):
        ex.choose_lr({})


def test_a_tuned_run_waits_for_its_sweep_then_trains_at_the_rate_chosen(tmp_path, monkeypatch):
    path = write_exp(tmp_path, explain={}, audit=[], datasets={"covid_radiography": {}},
                     grid=[demo_entry(arms=["scratch"], seeds=[0, 1], tune={"lr": [1.0e-3, 3.0e-3]})])
    monkeypatch.chdir(tmp_path)
    ran = []

    def fake_execute(notebook, out, params):
        ran.append(params)
        folder = P.check(P.TrainParams, params).resolved_run_dir()
        folder.mkdir(parents=True, exist_ok=True)
        acc = {1e-3: 0.7, 3e-3: 0.8}.get(params["lr"], 0.5)
        (folder / "metrics.json").write_text(json.dumps({"best_val_acc": acc, "best_epoch": 3, "test_accuracy": 1 - acc}))
        (folder / "history.csv").write_text("epoch,val_loss\n1,0.9\n2,0.6\n")

    monkeypatch.setattr(wf, "execute", fake_execute)
    early = wf.train_one(str(path), "covid_radiography/resnet18-scratch-tuned-s1")
    assert early["state"] == "missing" and "sweep is not complete" in early["reason"] and not ran
    for lr in ("0.001", "0.003"):
        assert wf.train_one(str(path), f"covid_radiography/resnet18-scratch-lr{lr}-s0")["state"] == "complete"
    assert wf.train_one(str(path), "covid_radiography/resnet18-scratch-tuned-s1")["state"] == "complete"
    assert ran[-1]["lr"] == 3e-3 and ran[-1]["seed"] == 1 and ran[-1]["tuning"] == "tuned"


def test_evaluate_reads_the_rate_a_sweep_chose_never_the_ones_it_passed_over(tmp_path, monkeypatch):
    path = write_exp(tmp_path, explain={}, audit=[], datasets={"covid_radiography": {}},
                     grid=[demo_entry(arms=["scratch"], seeds=[0, 1], tune={"lr": [1.0e-3, 3.0e-3]})])
    monkeypatch.chdir(tmp_path)
    exp = ex.load_experiment(path)
    names = lambda: [Path(r).name for r in wf.notebook_params(exp, "evaluate", "covid_radiography")["runs"]]
    every = ["resnet18-scratch-lr0.001-s0", "resnet18-scratch-lr0.003-s0", "resnet18-scratch-tuned-s1"]
    assert names() == every   # the sweep has not run: a staged study shows what it has
    for name, acc in (("resnet18-scratch-lr0.001-s0", 0.9), ("resnet18-scratch-lr0.003-s0", 0.6)):
        folder = Path("runs/demo/covid_radiography") / name
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(json.dumps({"best_val_acc": acc, "best_epoch": 1}))
        (folder / "history.csv").write_text("epoch,val_loss\n1,0.5\n")
    assert names() == ["resnet18-scratch-lr0.001-s0", "resnet18-scratch-tuned-s1"]


def test_a_download_that_comes_split_is_never_split_again(tmp_path):
    path = write_exp(tmp_path, datasets={"chest_xray_pneumonia": {}}, explain={}, audit=[],
                     grid=[demo_entry(dataset="chest_xray_pneumonia")])
    with pytest.raises(ex.ExperimentError, match=r"datasets\.chest_xray_pneumonia\.split: .*'given'.*got 'random'"):
        ex.load_experiment(path)
    path = write_exp(tmp_path, datasets={"chest_xray_pneumonia": {"split": "given"}}, explain={}, audit=[],
                     grid=[demo_entry(dataset="chest_xray_pneumonia", split="block")])
    with pytest.raises(ex.ExperimentError, match=r"grid\[0\]\.split"):
        ex.load_experiment(path)


def test_a_training_job_expands_the_grid_once(tmp_path, monkeypatch):
    path = write_exp(tmp_path, explain={}, audit=[], datasets={"covid_radiography": {}},
                     grid=[demo_entry(arms=["scratch"], seeds=[0, 1], tune={"lr": [1.0e-3, 3.0e-3]})])
    monkeypatch.chdir(tmp_path)
    built = []
    build = ex._build_plan
    monkeypatch.setattr(ex, "_build_plan", lambda exp: built.append(1) or build(exp))
    monkeypatch.setattr(wf, "execute", lambda *a: None)
    wf.train_one(str(path), "covid_radiography/resnet18-scratch-tuned-s1")
    assert len(built) == 1
    exp = ex.load_experiment(path)
    ex.runs(exp), ex.sweeps(exp), ex.stages(exp), ex.preps(exp), ex.all_sweeps(exp)
    assert len(built) == 2


def test_paper_settings_are_the_papers():
    a = ex.runs(ex.load_experiment("paper_a", "/d"))
    assert {r.arch for r in a} == {"resnet18", "vgg11", "alexnet", "mobilenet_v3_large"}
    assert all(p["image_size"] == 128 and p["batch_size"] == 16 and p["epochs"] == 20
               and p["lr"] == 1e-4 and p["balance"] is True for p in a.values())
    b = ex.runs(ex.load_experiment("paper_b", "/d"))
    assert {(r.arch, r.head, r.arm) for r in b} == {
        ("vgg16", "dense1024", "imagenet"), ("vgg16", "dense1024", "scratch")}
    assert all(p["image_size"] == 200 and p["batch_size"] == 100 and p["epochs"] == 30
               and p["early_stopping_patience"] > 0 for p in b.values())


@pytest.mark.parametrize("changes, named", [
    ({"epochz": 3}, ["epochz", "allowed", "grid"]),
    ({"grid": [demo_entry(archs=["resnet19"])]}, ["grid[0].archs[0]", "resnet19", "resnet18"]),
    ({"grid": [demo_entry(arms=["imagenett"])]}, ["grid[0].arms[0]", "imagenett", "linear_probe"]),
    ({"grid": [demo_entry(arms=[{"init_from": {"dataset": "ct_kidney", "arm": "imagenett"}}])]},
     ["grid[0].arms[0]", "imagenett"]),
    ({"grid": [demo_entry(seeds=[-1])]}, ["grid[0].seeds[0]", "-1"]),
    ({"grid": [demo_entry(train={"epochz": 1})]}, ["grid[0].train", "epochz", "batch_size"]),
    ({"grid": [demo_entry(head="dense")]}, ["grid[0].head", "dense", "dense1024"]),
    ({"defaults": {"lr": "1e-4"}}, ["defaults", "lr", "'1e-4'"]),
    ({"defaults": {"normalize": "imagenett"}}, ["defaults", "normalize", "paper_a"]),
    ({"datasets": {"covid_radiography": {"image_size": 8}}}, ["datasets.covid_radiography.image_size", "8", "16"]),
    ({"datasets": {"covid_radiography": {}, "chest_ct": {}}}, ["chest_ct", "ct_kidney"]),
    ({"grid": [demo_entry(dataset="ct_kidney")], "datasets": {"covid_radiography": {}}},
     ["grid[0]", "ct_kidney", "not listed"]),
    ({"audit": ["ct_kidney"], "datasets": {"covid_radiography": {}}, "grid": [demo_entry()],
      "explain": {}}, ["audit[0]", "ct_kidney"]),
])
def test_a_bad_experiment_file_is_refused_naming_file_key_value_and_choices(tmp_path, changes, named):
    path = write_exp(tmp_path, **changes)
    with pytest.raises(ex.ExperimentError) as err:
        ex.load_experiment(path)
    message = str(err.value)
    assert str(path) in message
    for part in named:
        assert part in message, (part, message)


def test_a_size_below_the_arch_minimum_is_refused_before_any_work(tmp_path):
    # needs the lead's models.py (ARCHS as a table with min_image_size)
    path = write_exp(tmp_path, datasets={"covid_radiography": {"image_size": 32}},
                     grid=[demo_entry(archs=["alexnet"])], explain={}, audit=[])
    with pytest.raises(ex.ExperimentError, match=r"grid\[0\].*image_size.*63"):
        ex.load_experiment(path)


def test_unknown_experiment_lists_known_ones():
    with pytest.raises(ex.ExperimentError, match="paper_a"):
        ex.load_experiment("no_such_study")


def test_data_dir_rules():
    with pytest.raises(ex.ExperimentError, match="synthetic"):
        ex.load_experiment("demo", "/some/path")
    with pytest.raises(ex.ExperimentError, match="DATA_DIR"):
        ex.load_experiment("paper_a", "")
    with pytest.raises(ex.ExperimentError, match="covid_radiography=/path/a"):
        ex.load_experiment("full", "/one/path")
    with pytest.raises(ex.ExperimentError, match="does not use"):
        ex.load_experiment("paper_a", "ct_kidney=/x")
    assert len(ex.runs(ex.load_experiment("paper_a", need_data=False))) == 8


def test_init_from_needs_a_trained_source(tmp_path):
    path = write_exp(tmp_path, grid=[{
        "dataset": "ct_kidney", "archs": ["resnet18"],
        "arms": [{"init_from": {"dataset": "covid_radiography", "arm": "imagenet"}}], "seeds": [0]}])
    with pytest.raises(ex.ExperimentError, match="does not train"):
        ex.load_experiment(path)


def test_init_from_points_at_the_source_best_checkpoint(tmp_path):
    path = write_exp(tmp_path, grid=[
        {"dataset": "covid_radiography", "archs": ["resnet18"], "arms": ["imagenet"], "seeds": [0]},
        {"dataset": "ct_kidney", "archs": ["resnet18"],
         "arms": [{"init_from": {"dataset": "covid_radiography", "arm": "imagenet"}}], "seeds": [0]}])
    grid = ex.runs(ex.load_experiment(path))
    by_key = {rid.key: rid for rid in grid}
    target = by_key["ct_kidney/resnet18-from-covid_radiography-imagenet-s0"]
    assert target.init_source == "covid_radiography/resnet18-imagenet-s0"
    assert ex.source_of(grid, target) == by_key["covid_radiography/resnet18-imagenet-s0"]
    assert grid[target]["init_from"] == "runs/demo/covid_radiography/resnet18-imagenet-s0/best.pt"
    assert grid[target]["pretrained"] is False


def test_every_prepared_folder_the_grid_reads_is_planned():
    exp = ex.load_experiment("demo")
    planned = {ex.prepared_dir(p) for p in ex.preps(exp)}
    for rid, p in ex.runs(exp).items():
        prep = {"dataset": rid.dataset, "data_dir": p["data_dir"], "image_size": p["image_size"],
                "balance": p["balance"], "seed": p["split_seed"], "split": rid.split,
                "n_per_class": p["n_per_class"]}
        assert ex.prepared_dir(prep) in planned
    assert {d.name for d in planned} == {"synthetic-n100-64px-random-bal-s0", "synthetic-n100-64px-random-all-s0"}


def _parameter_cell(notebook: Path) -> dict:
    """Names and default values of a notebook's parameter cell, as papermill reads them."""
    return {p["name"]: ast.literal_eval(p["default"]) for p in papermill.inspect_notebook(str(notebook)).values()}


@pytest.mark.parametrize("step", sorted(P.NOTEBOOK_PARAMS))
def test_each_notebook_declares_exactly_its_parameter_model(step):
    model = P.NOTEBOOK_PARAMS[step]
    cell = _parameter_cell(ROOT / "notebooks" / f"{step}.ipynb")
    fields = {name: f.default for name, f in model.model_fields.items()}
    assert sorted(cell) == sorted(fields), f"{step}.ipynb declares {sorted(cell)}; {model.__name__} has {sorted(fields)}"
    assert cell == fields


def test_step_parameters_are_the_step_models():
    exp = ex.load_experiment("demo")
    for step in P.BOOK_STEPS:
        for ds in exp["datasets"]:
            values = wf.notebook_params(exp, step, ds)
            P.check(P.NOTEBOOK_PARAMS[step], values)
    assert wf.notebook_params(exp, "data_prep", "ct_kidney", "grouped")["split"] == "grouped"
    explain = wf.notebook_params(exp, "explain", "ct_kidney")
    assert explain["runs"] == ["runs/demo/ct_kidney/efficientnet_lite0_dense1024-imagenet-s0",
                               "runs/demo/ct_kidney/efficientnet_lite0_dense1024-scratch-s0"]
    paper_a = ex.load_experiment("paper_a", "/d")
    with pytest.raises(ex.ExperimentError, match="does not use ct_kidney"):
        wf.notebook_params(paper_a, "evaluate", "ct_kidney")
    assert wf.gap_params(paper_a, "audit", "ct_kidney")["reason"] == "experiment paper_a does not use ct_kidney"


def _run(root, experiment, dataset, name, state):
    folder = root / "runs" / experiment / dataset / name
    folder.mkdir(parents=True)
    (folder / ("metrics.json" if state == "complete" else "missing.json")).write_text(
        json.dumps({} if state == "complete" else {"reason": "no weights"}))
    (folder / "status.json").write_text(json.dumps({"state": state}))
    return folder


def test_missing_runs_are_forgotten_completed_ones_kept(tmp_path, monkeypatch):
    path = write_exp(tmp_path, grid=[demo_entry(arms=["imagenet", "scratch"])],
                     explain={}, audit=[], datasets={"covid_radiography": {}})
    monkeypatch.chdir(tmp_path)
    exp = ex.load_experiment(path)
    missing = _run(tmp_path, "demo", "covid_radiography", "resnet18-imagenet-s0", "missing")
    done = _run(tmp_path, "demo", "covid_radiography", "resnet18-scratch-s0", "complete")
    status = wf.grid_status(exp).set_index("run")
    assert status.loc["resnet18-imagenet-s0", "state"] == "missing"
    assert status.loc["resnet18-imagenet-s0", "reason"] == "no weights"
    assert status.loc["resnet18-scratch-s0", "state"] == "complete"
    assert wf.forget_missing(exp) == [str(Path("runs/demo/covid_radiography/resnet18-imagenet-s0/status.json"))]
    assert not (missing / "status.json").exists() and (missing / "missing.json").exists()
    assert (done / "status.json").exists()
    # the reason stays visible between invocations: it lives in the run folder
    assert wf.grid_status(exp).set_index("run").loc["resnet18-imagenet-s0", "state"] == "missing"


def test_train_one_writes_the_status_snakemake_waits_for(tmp_path, monkeypatch):
    path = write_exp(tmp_path, explain={}, audit=[], datasets={"covid_radiography": {}, "ct_kidney": {}},
                     grid=[demo_entry(arms=["imagenet", "scratch"]),
                           demo_entry(dataset="ct_kidney", arms=[{"init_from": {"dataset": "covid_radiography"}}])])
    monkeypatch.chdir(tmp_path)
    ran = []

    def fake_execute(notebook, out, params):
        ran.append(params)
        if params["pretrained"]:
            raise RuntimeError("no ImageNet weights for resnet18")
        folder = P.check(P.TrainParams, params).resolved_run_dir()
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "metrics.json").write_text("{}")

    monkeypatch.setattr(wf, "execute", fake_execute)
    done = wf.train_one(str(path), "covid_radiography/resnet18-scratch-s0")
    assert done["state"] == "complete"
    assert json.loads(Path("runs/demo/covid_radiography/resnet18-scratch-s0/status.json").read_text()) == done
    assert ran[-1]["experiment"] == "demo" and "run_dir" not in ran[-1]
    lost = wf.train_one(str(path), "runs/demo/covid_radiography/resnet18-imagenet-s0")
    assert lost["state"] == "missing" and "no ImageNet weights" in lost["reason"]
    folder = Path("runs/demo/covid_radiography/resnet18-imagenet-s0")
    assert json.loads((folder / "missing.json").read_text())["reason"] == lost["reason"]
    # a run that starts from a missing run is missing too, with the source's reason, without running
    n = len(ran)
    target = wf.train_one(str(path), "ct_kidney/resnet18-from-covid_radiography-imagenet-s0")
    assert target["state"] == "missing" and "no ImageNet weights" in target["reason"] and len(ran) == n
    # an edited experiment file: Snakemake reruns the job and the old run is replaced, not refused
    (Path("runs/demo/covid_radiography/resnet18-scratch-s0") / "params.json").write_text("{}")
    import helpers.training as training

    monkeypatch.setattr(training, "stale", lambda values: "lr: 0.001 there, 0.0001 now")
    assert wf.train_one(str(path), "covid_radiography/resnet18-scratch-s0")["state"] == "complete"
    assert ran[-1]["force"] is True and ran[-1]["arch"] == "resnet18" and not ran[-1]["pretrained"]
    monkeypatch.setattr(training, "stale", lambda values: "")  # same run: resumed or skipped, kept
    wf.train_one(str(path), "covid_radiography/resnet18-scratch-s0")
    assert "force" not in ran[-1] or ran[-1]["force"] is False
    # the weights arrive: the retry completes and the missing record goes
    monkeypatch.setattr(wf, "execute", lambda nb, out, params: (folder / "metrics.json").write_text("{}"))
    assert wf.train_one(str(path), "covid_radiography/resnet18-imagenet-s0")["state"] == "complete"
    assert not (folder / "missing.json").exists()


def test_the_book_gathers_the_snakemake_notebooks_and_executes_none(tmp_path, monkeypatch):
    import subprocess as sp

    import nbformat

    path = write_exp(tmp_path, datasets={"covid_radiography": {}}, explain={}, audit=[],
                     grid=[demo_entry(arms=["scratch"])])
    (tmp_path / "experiments").mkdir()
    shutil.copy(ROOT / "experiments" / "real_study.yaml", tmp_path / "experiments")   # the reference's datasets
    monkeypatch.chdir(tmp_path)
    exp = ex.load_experiment(path)
    with pytest.raises(ex.ExperimentError, match="run the workflow first"):
        book.build_book(str(path))
    shown = wf.book_datasets(exp)   # the papers' datasets: no page for one neither uses
    assert shown == ["covid_radiography", "ct_kidney"] and "chest_xray_pneumonia" in ex.DATASET_NAMES
    reference = list(ex.load_experiment("real_study", need_data=False)["datasets"])
    made = [wf.step_notebook(exp, step, ds) for step in P.BOOK_STEPS for ds in shown]
    made += [wf.summary_notebook(exp), wf.train_notebook(exp, next(iter(ex.runs(exp)))), wf.reference_notebook(exp)]
    made += [tmp_path / "records" / "real_study" / "notebooks" / f"{step}_{ds}.ipynb"
             for step in book.REAL_NOTEBOOKS for ds in reference]   # the committed real-data ones
    for nb in made:
        nb.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# Step")]), nb)
    assert sum(nb.parent.name == "gap" for nb in made) == 6      # ct_kidney: 4 steps; explain, audit
    commands = []
    monkeypatch.setattr(sp, "run", lambda cmd, **kw: commands.append(cmd))
    book.build_book(str(path))
    generated = tmp_path / "book" / "generated"
    assert sorted(p.name for p in generated.glob("*.ipynb")) == sorted(
        [f"{step}_{ds}.ipynb" for step in P.BOOK_STEPS for ds in shown] + ["summary.ipynb", "reference.ipynb"])
    assert sorted(p.name for p in (generated / "real").glob("*.ipynb")) == sorted(
        f"{step}_{ds}.ipynb" for step in book.REAL_NOTEBOOKS for ds in reference)
    assert nbformat.read(generated / "real" / "explain_ct_kidney.ipynb", 4).cells[0].source.strip() == \
        "# Step: kidney CT, real images"   # the spec's title
    title = nbformat.read(generated / "data_prep_covid_radiography.ipynb", 4).cells[0].source
    assert title.strip() == "# Step: chest X-ray"
    assert [p.name for p in (generated / "train").iterdir()] == ["covid_radiography__resnet18-scratch-s0.ipynb"]
    assert commands == [["jupyter-book", "build", "book", "-W", "--keep-going"]]


def test_a_slow_kernel_gets_a_generous_configurable_start_timeout(monkeypatch, tmp_path):
    import papermill as pm

    monkeypatch.delenv(wf.KERNEL_START_ENV, raising=False)
    assert wf.kernel_start_timeout() >= 600
    monkeypatch.setenv(wf.KERNEL_START_ENV, "1200")
    seen = {}
    monkeypatch.setattr(pm, "execute_notebook", lambda *a, **k: seen.update(k))
    wf.execute("notebooks/gap.ipynb", tmp_path / "out.ipynb", {})
    assert seen["start_timeout"] == 1200
    monkeypatch.setenv(wf.KERNEL_START_ENV, "soon")
    with pytest.raises(ex.ExperimentError, match=wf.KERNEL_START_ENV):
        wf.kernel_start_timeout()


def test_page_keys_are_read_from_the_pages(tmp_path):
    (tmp_path / "p.md").write_text(
        "```{glue} fig_a\n:doc: generated/evaluate_ct_kidney.ipynb\n```\n"
        "Accuracy {glue:text}`generated/evaluate_ct_kidney.ipynb::acc:.1%`.\n"
        "```{glue} other\n:doc: generated/summary.ipynb\n```\n")
    keys = book.page_keys("generated/evaluate_ct_kidney.ipynb", pages=tmp_path)
    assert keys == {"fig_a": "block", "acc": "number"}


def _snakemake_bin() -> str:
    return shutil.which("snakemake") or str(Path(sys.executable).parent / "snakemake")


def _dry_run(experiment, data_dir, *extra, cwd=ROOT, env=None, config=()):
    out = subprocess.run(
        [_snakemake_bin(), "-n", "-p", "--cores", "1", *extra,
         "--config", f"experiment={experiment}", f"data_dir={data_dir}", *config],
        cwd=cwd, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", out.stdout, flags=re.M))
    return {k: int(v) for k, v in counts.items()}, out.stdout


def _tree_digest(root: Path) -> dict[str, str]:
    """Every file and folder under root (Snakemake's own .snakemake/ aside), with content hashes."""
    digest = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if rel.parts[0] == ".snakemake":
            continue
        digest[str(rel)] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
    return digest


@pytest.mark.slow
def test_a_dry_run_changes_no_file(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    for name in ("Snakefile", "_config.yml", "_toc.yml"):
        shutil.copy2(ROOT / name, work / name)
    for name in ("notebooks", "experiments", "records"):
        shutil.copytree(ROOT / name, work / name)
    shutil.copytree(ROOT / "book", work / "book", symlinks=True,
                    ignore=shutil.ignore_patterns("generated*", "_build"))
    # A missing run (its status would be dropped before a retry) and a complete one.
    _run(work, "demo", "covid_radiography", "resnet18-imagenet-s0", "missing")
    _run(work, "demo", "covid_radiography", "resnet18-scratch-s0", "complete")
    path = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "HELPERS_DATA_ROOT": str(work / "data"), "PYTHONPATH": path}
    before = _tree_digest(work)
    counts, log = _dry_run("demo", "", cwd=work, env=env)
    assert counts.get("train") == len(ex.runs(ex.load_experiment("demo"))), log  # no prepared data yet: every run is planned
    assert _tree_digest(work) == before            # ... and the missing run's status.json is still there
    assert (work / "runs/demo/covid_radiography/resnet18-imagenet-s0/status.json").is_file()


@pytest.mark.slow
def test_slurm_profile_sends_each_training_run_to_a_gpu_job(tmp_path):
    # Parsed by snakemake-executor-plugin-slurm itself; a dry run submits nothing.
    # The account and partitions come from --config (or HELPERS_SLURM_*), GPUs only when asked for.
    counts, log = _dry_run("paper_b", str(tmp_path / "download"), "--profile", "profiles/slurm", config=(
        "slurm_account=lab", "slurm_partition=cpu", "slurm_gpu_partition=gpu", "slurm_gpus=1"))
    assert counts.get("train") == 2, log
    jobs = re.findall(r"^rule (\w+):.*?^\s+resources: (.*?)$", log, flags=re.M | re.S)
    resources = {rule: res for rule, res in jobs}
    assert "slurm_partition=gpu" in resources["train"] and "gpu=1" in resources["train"]
    assert "slurm_account=lab" in resources["train"] and "slurm_account=lab" in resources["data_prep"]
    assert "slurm_partition=cpu" in resources["data_prep"] and "gpu=" not in resources["data_prep"]
    assert "slurm_partition" not in resources["book"]          # a local rule


@pytest.mark.slow
@pytest.mark.parametrize("experiment, dataset, n_train", [
    ("paper_a", "covid_radiography", 8),
    ("paper_b", "ct_kidney", 2),
])
def test_snakemake_dry_run_lists_the_papers_jobs(tmp_path, experiment, dataset, n_train):
    # A fresh download folder, so that nothing is up to date.
    counts, log = _dry_run(experiment, str(tmp_path / "download"))
    assert counts.get("train") == n_train, log
    for rule in ("data_prep", "evaluate", "explain", "audit", "summary", "book"):
        assert counts.get(rule) == 1, (rule, log)
    assert counts.get("gap") == 4, log             # the other dataset's four book steps
    # The prepared folder is data prep's output and every training run's input.
    exp = ex.load_experiment(experiment, str(tmp_path / "download"))
    (prep,) = ex.preps(exp)
    folder = str(ex.prepared_dir(prep))
    assert re.search(rf"rule data_prep:\n\s+input: .*\n\s+output: {re.escape(folder)},", log), log
    assert len(re.findall(rf"rule train:\n\s+input: .*{re.escape(folder)}", log)) == n_train
    # every papermill call waits generously for its kernel
    calls = re.findall(r"^Shell command: papermill .*$", log, flags=re.M)
    assert calls and all("--start-timeout" in c for c in calls)


@pytest.mark.slow
def test_a_dry_run_imports_no_torch(tmp_path):
    # Parsing the Snakefile (every `snakemake -n`, every cluster job) reads the experiment layer
    # only: a torch that refuses to import must not stop it.
    for name in ("torch", "torchvision", "timm"):
        (tmp_path / "shadow" / name).mkdir(parents=True)
        (tmp_path / "shadow" / name / "__init__.py").write_text(
            f"raise ImportError('{name} imported while parsing the Snakefile')\n")
    path = os.pathsep.join([str(tmp_path / "shadow"), str(ROOT / "src")])
    counts, log = _dry_run("paper_a", str(tmp_path / "download"), env={**os.environ, "PYTHONPATH": path})
    assert counts.get("train") == 8, log


def test_a_real_experiment_without_data_dir_fetches_with_kagglehub(monkeypatch, tiny_synthetic, capsys):
    """`make report EXPERIMENT=full` with one DATA_DIR: the other dataset comes from kagglehub's
    cache (patched here to hand back a folder in the Kaggle layout), the given one is kept."""
    import kagglehub

    from helpers import data

    kidney = tiny_synthetic("ct_kidney")
    asked = []

    def dataset_download(slug, *args, **kwargs):
        asked.append(slug)
        return str(kidney)

    monkeypatch.setattr(kagglehub, "dataset_download", dataset_download)
    dirs = wf.fetch_data_dirs("full", "covid_radiography=/data/covid")
    assert dirs == f"covid_radiography=/data/covid,ct_kidney={kidney}"
    assert asked == [data.get_spec("ct_kidney").kaggle_slug]
    exp = ex.load_experiment("full", dirs)  # what snakemake is then given
    assert exp["data_dirs"] == {"covid_radiography": "/data/covid", "ct_kidney": str(kidney)}
    data.find_class_root(str(kidney), "ct_kidney")  # the handed-back folder is usable as is
    assert wf.fetch_data_dirs("demo", "") == ""  # synthetic: nothing to fetch

    def offline(slug, *args, **kwargs):
        raise ConnectionError("Failed to resolve 'api.kaggle.com'")

    monkeypatch.setattr(kagglehub, "dataset_download", offline)
    assert wf.main(["data-dirs", "paper_b"]) == 2
    err = capsys.readouterr().err
    assert "could not download ct_kidney" in err and "Manual download" in err and "DATA_DIR" in err


def test_explain_waits_for_a_swept_arms_sweep_and_reads_the_rate_it_chose(tmp_path, monkeypatch):
    tune = {"lr": [1.0e-3, 3.0e-3]}
    path = write_exp(tmp_path, audit=[], datasets={"covid_radiography": {}},
                     explain={"covid_radiography": {"arch": "resnet18"}},
                     grid=[demo_entry(arms=["imagenet"]), demo_entry(arms=["scratch"], tune=tune)])
    monkeypatch.chdir(tmp_path)
    exp = ex.load_experiment(path)
    assert [r.name for r in wf.explained_inputs(exp, "covid_radiography")] == [
        "resnet18-imagenet-s0", "resnet18-scratch-lr0.001-s0", "resnet18-scratch-lr0.003-s0"]
    with pytest.raises(ex.ExperimentError, match="sweep is not complete"):
        wf.explained_runs(exp, "covid_radiography")
    for name, acc in (("resnet18-scratch-lr0.001-s0", 0.9), ("resnet18-scratch-lr0.003-s0", 0.6)):
        folder = Path("runs/demo/covid_radiography") / name
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(json.dumps({"best_val_acc": acc, "best_epoch": 1}))
        (folder / "history.csv").write_text("epoch,val_loss\n1,0.5\n")
    assert [r.name for r in wf.explained_runs(exp, "covid_radiography")] == [
        "resnet18-imagenet-s0", "resnet18-scratch-lr0.001-s0"]
    assert wf.notebook_params(exp, "explain", "covid_radiography")["runs"][1].endswith("resnet18-scratch-lr0.001-s0")


def test_the_folds_of_a_cross_validation_take_fold_0s_rate():
    """tune.split: folds 1-4 (and the random split beside them) wait for fold 0's sweep and take
    the rate it chose; a split the dataset does not accept is refused naming the entry."""
    exp = ex.load_experiment("real_study", need_data=False)
    sweeps = ex.sweeps(exp)
    tuned = [rid for rid in ex.runs(exp) if rid.dataset == "ct_kidney_originals" and rid.tuning == "tuned"]
    assert {rid.split for rid in tuned} == {"random", "fold1", "fold2", "fold3", "fold4"}
    for rid in tuned:
        assert {c.split for c in sweeps[rid].candidates.values()} == {"fold0"}
        assert all(c.arm == rid.arm for c in sweeps[rid].candidates.values())
    raw = yaml.safe_load(open("experiments/pneumonia.yaml"))
    raw["grid"][0]["tune"]["split"] = "fold0"
    path = Path(tempfile.mkdtemp()) / "p.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ex.ExperimentError, match=r"grid\[0\].tune.split: parameter 'split' of chest_xray_pneumonia must be one of 'given'"):
        ex.load_experiment(str(path), "/d")
