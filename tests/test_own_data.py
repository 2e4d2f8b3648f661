"""A dataset of one's own, declared in an experiment file only, and a download that comes split
(Kermany's), each through the experiment loader, the preflight, and the runner with Snakemake."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from helpers import data, runner
from helpers import experiment as ex
from helpers.data import specs

ROOT = Path(__file__).resolve().parents[1]


def own_folder(src: Path, dest: Path, classes: dict[str, str], per_class: int, ext: str = ".png",
               split: bool = False) -> Path:
    """A folder of one's own: ``dest/<class>/*`` (or ``dest/{train,val,test}/<class>/*``) from
    the images of ``src/<source class>`` (any depth), saved as ``ext``."""
    for cls, source in classes.items():
        files = sorted(p for p in (src / source).rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg")
                       and "mask" not in p.parent.name)[:per_class]
        assert len(files) == per_class, (src / source, len(files))
        for i, f in enumerate(files):
            part = ("train", "train", "train", "val", "test")[i % 5] if split else ""
            out = dest / part / cls / f"{cls.lower()}_{i}{ext}"
            out.parent.mkdir(parents=True, exist_ok=True)
            Image.open(f).convert("L").save(out)
    return dest


@pytest.fixture
def xrays(tiny_synthetic, tmp_path):
    return own_folder(tiny_synthetic("covid_radiography", 8) / "COVID-19_Radiography_Dataset", tmp_path / "mine",
                      {"healthy": "Normal", "sick": "COVID"}, 8)


def experiment_file(tmp_path: Path, name: str, datasets: dict, grid: list | None = None, **more) -> Path:
    first = next(iter(datasets))
    body = {"name": name, "synthetic": False, "datasets": datasets,
            "defaults": {"epochs": 1, "batch_size": 4, "lr": 1.0e-3, "early_stopping_patience": 0},
            "grid": grid or [{"dataset": first, "archs": ["resnet18"], "arms": ["scratch"], "seeds": [0]}], **more}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def test_an_experiment_declares_a_dataset_of_its_own(xrays, tmp_path, data_root):
    path = experiment_file(tmp_path, "own", {"my_xrays": {"ext": ".png", "title": "my X-rays", "image_size": 32}})
    exp = ex.load_experiment(str(path), str(xrays))
    spec = data.get_spec("my_xrays")
    assert spec.classes == ("healthy", "sick") and spec.title == "my X-rays" and spec.phantom is None
    assert [rid.dataset for rid in ex.runs(exp)] == ["my_xrays"]
    runner.check_data_dirs(exp)
    folder = data.prepare(**ex.prep_of(exp, "my_xrays", "random"), progress=False)
    info = json.loads((folder / "info.json").read_text())
    assert sorted(info["counts"]) == ["healthy", "sick"], info["counts"]
    assert all(sum(n.values()) == 8 and min(n.values()) > 0 for n in info["counts"].values()), info["counts"]
    # another process on the same data root (a papermill kernel, a cluster job) knows it too
    specs._OWN.clear()
    out = subprocess.run([sys.executable, "-c", "from helpers import data; print(data.get_spec('my_xrays').classes)"],
                         env={**os.environ, "PYTHONPATH": str(ROOT / "src")}, capture_output=True, text=True)
    assert out.stdout.strip() == "('healthy', 'sick')", out.stderr
    # without its folder, a later step reads what the loading found; on a fresh data root it asks for it
    assert ex.load_experiment(str(path), "", need_data=False)["datasets"]["my_xrays"]["ext"] == ".png"
    os.environ["HELPERS_DATA_ROOT"] = str(tmp_path / "elsewhere")
    specs._OWN.clear()
    with pytest.raises(ex.ExperimentError, match="my_xrays is a dataset of your own.*needs DATA_DIR"):
        ex.load_experiment(str(path), "", need_data=False)
    with pytest.raises(ValueError, match="a dataset of your own declared in an experiment file"):
        data.get_spec("my_xrays")


@pytest.mark.parametrize("damage, message", [
    ("one class", r"'.*mine' holds 1 class folder\(s\) \('healthy'\); a classifier needs at least two"),
    ("empty class", r"class folder '.*sick' holds 0 .png image\(s\); at least 5 are needed"),
    ("too few", r"class folder '.*sick' holds 3 .png image\(s\); at least 5 are needed for a train/validation/test"),
    ("mixed kinds", r"class folder '.*sick' holds 2 .jpg image\(s\) beside 6 .png; the experiment's ext is .png"),
    ("no folder", r"DATA_DIR '.*nowhere' is not a folder; expected a folder with one subfolder of .png images"),
])
def test_a_bad_folder_of_ones_own_is_named_with_what_was_expected(xrays, tmp_path, data_root, damage, message):
    path = experiment_file(tmp_path, "own", {"my_xrays": {"ext": ".png", "image_size": 32}})
    folder = xrays
    sick = sorted((xrays / "sick").iterdir())
    if damage == "one class":
        shutil.rmtree(xrays / "sick")
    elif damage == "empty class":
        for f in sick:
            f.unlink()
    elif damage == "too few":
        for f in sick[3:]:
            f.unlink()
    elif damage == "mixed kinds":
        for f in sick[:2]:
            Image.open(f).save(f.with_suffix(".jpg"))
            f.unlink()
    else:
        folder = tmp_path / "nowhere"
    with pytest.raises(ex.ExperimentError, match=f"DATA_DIR for my_xrays: my_xrays: {message}"):
        ex.load_experiment(str(path), str(folder))


def test_an_experiment_file_says_what_a_dataset_of_ones_own_needs(tmp_path, xrays):
    no_ext = experiment_file(tmp_path, "a", {"my_xrays": {"image_size": 32}})
    with pytest.raises(ex.ExperimentError, match=r"datasets.my_xrays: not in the dataset table .*names its image "
                                                 r"kind, e.g. ext: .png"):
        ex.load_experiment(str(no_ext), str(xrays))
    table = experiment_file(tmp_path, "b", {"covid_radiography": {"ext": ".png"}})
    with pytest.raises(ex.ExperimentError, match="ext and title are the dataset table's for covid_radiography"):
        ex.load_experiment(str(table), str(xrays))
    synthetic = experiment_file(tmp_path, "c", {"my_xrays": {"ext": ".png"}})
    synthetic.write_text(synthetic.read_text().replace("synthetic: false", "synthetic: true"))
    with pytest.raises(ex.ExperimentError, match="runs on its real folder only"):
        ex.load_experiment(str(synthetic), "")


def test_a_folder_of_ones_own_that_comes_split_keeps_its_split(tiny_synthetic, tmp_path, data_root):
    src = tiny_synthetic("covid_radiography", 10) / "COVID-19_Radiography_Dataset"
    mine = own_folder(src, tmp_path / "mine", {"a": "Normal", "b": "COVID"}, 10, ext=".jpg", split=True)
    path = experiment_file(tmp_path, "own", {"my_xrays": {"ext": ".jpg", "image_size": 32, "split": "given"}})
    exp = ex.load_experiment(str(path), str(mine))
    assert data.get_spec("my_xrays").split_dirs == {"train": "train", "val": "val", "test": "test"}
    folder = data.prepare(**ex.prep_of(exp, "my_xrays", "given"), progress=False)
    counts = json.loads((folder / "info.json").read_text())["counts"]
    assert counts == {c: {"train": 6, "val": 2, "test": 2} for c in ("a", "b")}, counts
    shutil.rmtree(mine / "val")
    with pytest.raises(ex.ExperimentError, match=r"split 'given' needs DATA_DIR to hold train, val, test folders"):
        ex.load_experiment(str(path), str(mine))


def test_make_report_runs_a_split_download_and_a_folder_of_ones_own_end_to_end(tiny_synthetic, tmp_path):
    """Kermany's download as Kaggle serves it (train/val/test folders) and a folder of one's own,
    in one experiment, through make report: the preflight, Snakemake, every step and the book."""
    from test_data import kermany_download
    from workspace import workflow_copy

    kermany = kermany_download(tiny_synthetic, tmp_path / "kermany")
    mine = own_folder(tiny_synthetic("covid_radiography", 8) / "COVID-19_Radiography_Dataset", tmp_path / "mine",
                      {"clear": "Normal", "covid": "COVID"}, 8)
    exp = {"name": "own", "synthetic": False,
           "datasets": {"chest_xray_pneumonia": {"image_size": 32, "balance": False, "split": "given"},
                        "my_xrays": {"ext": ".png", "title": "my chest X-rays", "image_size": 32, "split": "random"}},
           "defaults": {"epochs": 1, "batch_size": 4, "lr": 1.0e-3, "early_stopping_patience": 0},
           "grid": [{"dataset": d, "archs": ["resnet18"], "arms": ["scratch"], "seeds": [0]}
                    for d in ("chest_xray_pneumonia", "my_xrays")],
           "explain": {"my_xrays": {"arch": "resnet18", "n_per_class": 1}},
           "audit": ["chest_xray_pneumonia", "my_xrays"]}
    work = workflow_copy(tmp_path / "work", exp)
    for name in ("requirements.txt", "pyproject.toml"):  # make's venv target: up to date, kept
        shutil.copy2(ROOT / name, work / name)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PATH": f"{Path(sys.executable).parent}{os.pathsep}"
           f"{os.environ['PATH']}", "HELPERS_DATA_ROOT": str(work / "data"), "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["make", "-f", str(ROOT / "Makefile"), "report", f"BIN={Path(sys.executable).parent}",
                           "EXPERIMENT=own", "CORES=2", f"DATA_DIR=chest_xray_pneumonia={kermany},my_xrays={mine}"],
                          cwd=work, env=env, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for d, run in (("chest_xray_pneumonia", "resnet18-scratch-given-s0"), ("my_xrays", "resnet18-scratch-s0")):
        assert json.loads((work / f"runs/own/{d}/{run}/status.json").read_text())["state"] == "complete"
        for step in ("evaluate", "audit"):
            assert (work / f"results/own/notebooks/{step}_{d}.ipynb").is_file(), (d, step)
    assert (work / "results/own/notebooks/explain_my_xrays.ipynb").is_file()
    # the split the download came with, kept; the audit measured it (no random folder was drawn)
    prepared = sorted(p.name for p in (work / "data/prepared/chest_xray_pneumonia").iterdir() if p.is_dir())
    assert prepared == ["real-32px-given-all-s0"], prepared
    info = json.loads((work / "data/prepared/my_xrays/real-32px-random-bal-s0/info.json").read_text())
    assert sorted(info["counts"]) == ["clear", "covid"]
    page = (work / "_build/html/generated/evaluate_my_xrays.html").read_text()
    assert "Traceback" not in page and "clear" in page
