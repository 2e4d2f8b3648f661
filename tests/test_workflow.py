"""Experiment files, grid expansion and the Snakemake dry runs."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

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


@pytest.mark.parametrize("name, data_dir, n_runs", [
    ("demo", "", 16),
    ("paper_a", "/data/covid", 8),
    ("paper_b", "/data/kidney", 2),
    ("full", "covid_radiography=/a,ct_kidney=/b", 140),
])
def test_every_experiment_file_expands(name, data_dir, n_runs):
    exp = wf.load_experiment(name, data_dir)
    specs = wf.runs(exp)
    assert len(specs) == n_runs
    assert len({s.key for s in specs}) == n_runs
    for spec in specs:
        assert spec.params["run_dir"] == str(spec.run_dir)
        assert spec.params["pretrained"] is (spec.arm == "imagenet")
        assert spec.params["data_dir"] == exp["data_dirs"][spec.dataset]


def test_paper_settings_are_the_papers():
    a = wf.runs(wf.load_experiment("paper_a", "/d"))
    assert {s.arch for s in a} == {"resnet18", "vgg11", "alexnet", "mobilenet_v3_large"}
    assert all(s.params["image_size"] == 128 and s.params["batch_size"] == 16
               and s.params["epochs"] == 20 and s.params["lr"] == 1e-4 and s.params["balance"] is True
               for s in a)
    b = wf.runs(wf.load_experiment("paper_b", "/d"))
    assert {(s.arch, s.head, s.arm) for s in b} == {
        ("vgg16", "dense1024", "imagenet"), ("vgg16", "dense1024", "scratch")}
    assert all(s.params["image_size"] == 200 and s.params["batch_size"] == 100
               and s.params["epochs"] == 30 and s.params["early_stopping_patience"] > 0 for s in b)


def test_run_names_are_stable():
    assert wf.run_name("resnet18", "replace", "imagenet", 0) == "resnet18-imagenet-s0"
    assert wf.run_name("vgg16", "dense1024", "scratch", 3, "grouped") == "vgg16_dense1024-scratch-grouped-s3"


def test_unknown_key_is_named(tmp_path):
    path = write_exp(tmp_path, epochz=3)
    with pytest.raises(wf.ExperimentError, match="epochz"):
        wf.load_experiment(path)


def test_unknown_experiment_lists_known_ones():
    with pytest.raises(wf.ExperimentError, match="paper_a"):
        wf.load_experiment("no_such_study")


def test_data_dir_rules():
    with pytest.raises(wf.ExperimentError, match="synthetic"):
        wf.load_experiment("demo", "/some/path")
    with pytest.raises(wf.ExperimentError, match="DATA_DIR"):
        wf.load_experiment("paper_a", "")
    with pytest.raises(wf.ExperimentError, match="covid_radiography=/path/a"):
        wf.load_experiment("full", "/one/path")
    with pytest.raises(wf.ExperimentError, match="does not use"):
        wf.load_experiment("paper_a", "ct_kidney=/x")


def test_init_from_needs_a_trained_source(tmp_path):
    path = write_exp(tmp_path, grid=[{
        "dataset": "ct_kidney", "archs": ["resnet18"],
        "arms": [{"init_from": {"dataset": "covid_radiography", "arm": "imagenet"}}], "seeds": [0]}])
    with pytest.raises(wf.ExperimentError, match="does not train"):
        wf.runs(wf.load_experiment(path))


def test_init_from_points_at_the_source_best_checkpoint(tmp_path):
    path = write_exp(tmp_path, grid=[
        {"dataset": "covid_radiography", "archs": ["resnet18"], "arms": ["imagenet"], "seeds": [0]},
        {"dataset": "ct_kidney", "archs": ["resnet18"],
         "arms": [{"init_from": {"dataset": "covid_radiography", "arm": "imagenet"}}], "seeds": [0]}])
    specs = {s.key: s for s in wf.runs(wf.load_experiment(path))}
    target = specs["ct_kidney/resnet18-from-covid_radiography-imagenet-s0"]
    assert target.depends_on == ["covid_radiography/resnet18-imagenet-s0"]
    assert target.params["init_from"].endswith("covid_radiography/resnet18-imagenet-s0/best.pt")
    assert target.params["pretrained"] is False


def test_page_keys_are_read_from_the_pages(tmp_path):
    (tmp_path / "p.md").write_text(
        "```{glue} fig_a\n:doc: generated/evaluate_ct_kidney.ipynb\n```\n"
        "Accuracy {glue:text}`generated/evaluate_ct_kidney.ipynb::acc:.1%`.\n"
        "```{glue} other\n:doc: generated/summary.ipynb\n```\n")
    keys = wf.page_keys("generated/evaluate_ct_kidney.ipynb", pages=tmp_path)
    assert keys == {"fig_a": "block", "acc": "number"}


def _dry_run(experiment, data_dir, *extra):
    snakemake = shutil.which("snakemake") or str(Path(sys.executable).parent / "snakemake")
    out = subprocess.run(
        [snakemake, "-n", "--cores", "1", *extra,
         "--config", f"experiment={experiment}", f"data_dir={data_dir}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", out.stdout, flags=re.M))
    return {k: int(v) for k, v in counts.items()}, out.stdout


@pytest.mark.slow
def test_slurm_profile_sends_each_training_run_to_a_gpu_job(tmp_path):
    # Parsed by snakemake-executor-plugin-slurm itself; a dry run submits nothing.
    counts, log = _dry_run("paper_b", str(tmp_path / "download"), "--profile", "profiles/slurm")
    assert counts.get("train") == 2, log
    jobs = re.findall(r"^rule (\w+):.*?^\s+resources: (.*?)$", log, flags=re.M | re.S)
    resources = {rule: res for rule, res in jobs}
    assert "slurm_partition=gpu" in resources["train"] and "gpu=1" in resources["train"]
    assert "slurm_partition=cpu" in resources["data_prep"] and "gpu=" not in resources["data_prep"]


@pytest.mark.slow
@pytest.mark.parametrize("experiment, dataset, n_train", [
    ("paper_a", "covid_radiography", 8),
    ("paper_b", "ct_kidney", 2),
])
def test_snakemake_dry_run_lists_the_papers_jobs(tmp_path, experiment, dataset, n_train):
    # A fresh results name so that nothing is up to date.
    counts, log = _dry_run(experiment, str(tmp_path / "download"))
    assert counts.get("train") == n_train, log
    for rule in ("data_prep", "evaluate", "explain", "audit", "book"):
        assert counts.get(rule) == 1, (rule, log)
    assert dataset in log
