"""Faults a user meets with `make report` (issue 24): a changed data folder reruns data prep and
training; a stale lock is cleared and a live one refused; a wrong data folder fails before any
job; a failed run (a full disk) fails the exit status with its reason, and leaves the previous
checkpoint whole for the next run to resume from."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from helpers import atomic, checkpoints, runner, training
from helpers import params as P
from helpers import experiment as ex
from helpers import workflow as wf

from workspace import workflow_copy

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RUN = "runs/tiny/covid_radiography/mobilenet_v3_small-scratch-s0"
TINY_EXP = {
    "name": "tiny", "description": "issue 24", "synthetic": False,
    "datasets": {"covid_radiography": {"image_size": 32, "balance": True, "split": "random", "split_seed": 0}},
    "defaults": {"epochs": 1, "batch_size": 8, "lr": 1e-3},
    "grid": [{"dataset": "covid_radiography", "archs": ["mobilenet_v3_small"], "arms": ["scratch"], "seeds": [0]}],
    "explain": {}, "audit": [],
}


def _env(work: Path) -> dict:
    path = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
            "HELPERS_DATA_ROOT": str(work / "data"), "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}


def _snakemake(work: Path, data_dir: Path, *args, dry=False) -> tuple[dict, str]:
    cmd = [str(BIN / "snakemake"), "--cores", "1", *(["-n"] if dry else []), *args,
           "--config", "experiment=tiny", f"data_dir={data_dir}"]
    out = subprocess.run(cmd, cwd=work, env=_env(work), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    counts = {k: int(v) for k, v in re.findall(r"^(\w+)\s+(\d+)$", out.stdout + out.stderr, flags=re.M)}
    return counts, out.stdout + out.stderr


@pytest.fixture(scope="module")
def study(tmp_path_factory, tiny_synthetic):
    """A workflow copy with a one-run experiment on a 'downloaded' chest X-ray folder, its data
    prep and its one training run (32 px, 6 images per class, one epoch) done by Snakemake."""
    work = workflow_copy(tmp_path_factory.mktemp("faults") / "work", TINY_EXP)
    download = work.parent / "download"
    shutil.copytree(tiny_synthetic("covid_radiography", 6), download)
    counts, log = _snakemake(work, download, f"{RUN}/status.json")
    assert counts.get("data_prep") == 1 and counts.get("train") == 1, log
    assert json.loads((work / RUN / "status.json").read_text())["state"] == "complete", log
    return work, download


# ---------------------------------------------------------------- 2. a crash leaves no lock

HOLDER = textwrap.dedent("""
    import sys, time
    from helpers import runner
    with runner.ReportLock("make report EXPERIMENT=tiny (the live one)"):
        print("held", flush=True)
        time.sleep(60)
""")


@pytest.mark.slow
def test_a_stale_lock_is_cleared_and_a_live_one_refused(study, capfd, monkeypatch):
    work, download = study
    for key, value in _env(work).items():
        monkeypatch.setenv(key, value)
    os.chdir(work)
    try:
        # kill -9 of a run leaves Snakemake's locks, and nobody holds the lock file
        locks = work / ".snakemake" / "locks"
        locks.mkdir(parents=True, exist_ok=True)
        (locks / "0.input.lock").write_text(str(work / RUN / "status.json"))
        status = runner.report(str(work / "experiments/tiny.yaml"), str(download), 1, [f"{RUN}/status.json"])
        err = capfd.readouterr().err
        assert status == 0, err
        assert "stale Snakemake lock" in err and "cannot be locked" not in err
        assert "Nothing to be done" in err or "steps (100%) done" in err, err   # and the run went on
        assert not locks.exists() or not any(locks.iterdir())
        # a live run holds the lock file: refused in one line naming it; its locks untouched
        holder = subprocess.Popen([sys.executable, "-c", HOLDER], cwd=work, env=_env(work),
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout.readline().strip() == "held"
            locks.mkdir(parents=True, exist_ok=True)
            (locks / "0.input.lock").write_text("held by the live run")
            status = runner.report(str(work / "experiments/tiny.yaml"), str(download), 1, [f"{RUN}/status.json"])
            err = capfd.readouterr().err.strip().splitlines()
            assert status == 1
            assert len(err) == 1 and f"pid {holder.pid}" in err[0] and "the live one" in err[0], err
            assert (locks / "0.input.lock").read_text() == "held by the live run"
        finally:
            holder.kill()
            holder.wait()
        shutil.rmtree(locks)
    finally:
        os.chdir(ROOT)


# ---------------------------------------------------------------- 1. changed images rerun

@pytest.mark.slow
def test_a_changed_data_folder_reruns_data_prep_and_training(study):
    work, download = study
    target = f"{RUN}/status.json"
    counts, log = _snakemake(work, download, target, dry=True)
    assert "Nothing to be done" in log, log                      # unchanged: a listing, no job
    images = sorted(download.rglob("Normal/images/*.png"))
    for image in images:                                         # unzipped again: new times, same bytes
        os.utime(image, (1, 1))
    runner._listing.cache_clear()
    counts, log = _snakemake(work, download, target, dry=True)
    assert "Nothing to be done" in log, log
    for change in ("added", "removed", "replaced"):
        if change == "added":
            shutil.copy2(images[0], images[0].with_name("new-1.png"))
        elif change == "removed":
            images[1].unlink()
        else:
            images[2].write_bytes(images[2].read_bytes() + b"\0")
        counts, log = _snakemake(work, download, target, dry=True)
        assert counts.get("data_prep") == 1 and counts.get("train") == 1, (change, log)
        assert "Params have changed" in log, (change, log)
    # the fingerprint Snakemake compares is the one data prep records and the run traces
    exp = ex.load_experiment(str(work / "experiments/tiny.yaml"), str(download))
    (prep,) = ex.preps(exp)
    os.chdir(work)
    try:
        info = json.loads((ex.prepared_dir(prep) / "info.json").read_text())
    finally:
        os.chdir(ROOT)
    params = json.loads((work / RUN / "params.json").read_text())
    assert params["prepared_fingerprint"] == info["fingerprint"]
    runner._listing.cache_clear()
    assert runner.data_fingerprint(prep) != info["fingerprint"]     # the folder changed since
    assert runner.data_fingerprint({**prep, "data_dir": ""}) == ""  # synthetic: no listing


# ---------------------------------------------------------------- 3. a wrong folder fails early

def test_a_wrong_data_folder_fails_before_any_job(tmp_path, real_or_tiny_kidney, monkeypatch, capfd):
    work = workflow_copy(tmp_path / "work", TINY_EXP)
    for name in ("requirements.txt", "pyproject.toml"):  # make's venv target: up to date, kept
        shutil.copy2(ROOT / name, work / name)
    before = sorted(p.relative_to(work) for p in work.rglob("*"))
    missing = tmp_path / "no-such-folder"
    started = time.monotonic()
    done = subprocess.run(["make", "-f", str(ROOT / "Makefile"), "report", f"BIN={BIN}", "EXPERIMENT=tiny",
                           f"DATA_DIR={missing}"], cwd=work, env=_env(work), capture_output=True, text=True)
    assert done.returncode != 0
    # make's own last word ("make: ***", or "make[1]: ***" under `make test`) follows the reason
    lines = [ln for ln in done.stderr.splitlines() if not re.match(r"make(\[\d+\])?: \*\*\*", ln)]
    assert "DATA_DIR for covid_radiography" in lines[-1] and f"{missing}' does not exist" in lines[-1], done.stderr
    assert time.monotonic() - started < 60
    assert sorted(p.relative_to(work) for p in work.rglob("*")) == before   # nothing written, no .snakemake
    # the kidney download given for the chest X-rays: refused, and recognised
    monkeypatch.chdir(work)
    assert runner.report("tiny", str(real_or_tiny_kidney), 1) == 2
    last = capfd.readouterr().err.strip().splitlines()[-1]
    assert "ct_kidney class folders instead" in last and str(real_or_tiny_kidney) in last, last
    assert sorted(p.relative_to(work) for p in work.rglob("*")) == before
    # an empty class folder is named too
    empty = tmp_path / "empty"
    for cls in ("COVID", "Normal", "Viral Pneumonia"):
        (empty / cls).mkdir(parents=True)
        (empty / cls / "notes.txt").write_text("no images here")
    exp = ex.load_experiment(str(work / "experiments/tiny.yaml"), str(empty))
    with pytest.raises(runner.PreflightError, match=r"COVID' holds no image files; expected .png images"):
        runner.check_data_dirs(exp)


@pytest.fixture
def real_or_tiny_kidney(tmp_path, tiny_synthetic):
    real = Path(__file__).resolve().parents[2] / "shared" / "real-sample" / "ct_kidney"
    return real if real.is_dir() else tiny_synthetic("ct_kidney", 6)


# ---------------------------------------------------------------- 4. a failed run fails make report

TINY_RUN = dict(dataset="covid_radiography", arch="mobilenet_v3_small", pretrained=False, image_size=32,
                epochs=2, batch_size=4, n_per_class=6, device="cpu")


def test_a_full_disk_is_named_keeps_the_previous_checkpoint_and_resumes(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HELPERS_DATA_ROOT", str(tmp_path / "data"))
    monkeypatch.setenv("TQDM_DISABLE", "1")
    run_dir = tmp_path / "run"
    real_save, seen = torch.save, {}

    def save(obj, path, *a, **k):  # epoch 2's last.pt meets a full disk, as torch reports one
        if isinstance(obj, dict) and obj.get("epoch") == 2 and "optimizer" in obj:
            Path(path).write_bytes(b"half a checkpoint")
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1024 vs 896")
        return real_save(obj, path, *a, **k)

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=4096))
    with pytest.raises(atomic.DiskFullError) as err:
        training.train(**TINY_RUN, run_dir=str(run_dir))
    message = str(err.value)
    assert message.startswith("disk full: could not write") and str(run_dir / "last.pt") in message and "4.0 KiB free" in message
    seen["epoch"] = checkpoints.read_checkpoint(run_dir / "last.pt")["epoch"]
    assert seen["epoch"] == 1                                    # the previous checkpoint, whole
    assert not list(run_dir.glob(".*.tmp*")) and not (run_dir / "metrics.json").exists()
    monkeypatch.setattr(torch, "save", real_save)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage)
    capsys.readouterr()
    training.train(**TINY_RUN, run_dir=str(run_dir))              # the next try resumes from it
    assert "resuming after epoch 1" in capsys.readouterr().out
    assert json.loads((run_dir / "metrics.json").read_text())["epochs_run"] == 2


class _NotebookError(Exception):
    """What papermill raises for an exception in a cell: its name and message as ename/evalue."""

    def __init__(self, ename, evalue):
        super().__init__(f"{ename}: {evalue}")
        self.ename, self.evalue = ename, evalue


def test_a_failed_run_fails_make_report_an_absent_one_does_not(tmp_path, monkeypatch, capfd):
    exp_file = tmp_path / "experiments" / "tiny.yaml"
    exp_file.parent.mkdir(parents=True)
    exp_file.write_text(json.dumps({**TINY_EXP, "synthetic": True, "grid": [
        {"dataset": "covid_radiography", "archs": ["resnet18"], "arms": ["imagenet", "scratch"], "seeds": [0]}]}))
    monkeypatch.chdir(tmp_path)
    errors = {"imagenet": _NotebookError("MissingWeightsError", "ImageNet weights for resnet18 are not cached"),
              "scratch": _NotebookError("DiskFullError", "disk full: could not write runs/x/last.pt (0 B free)")}
    state = {"fail": True}

    def execute(notebook, out, params):
        if state["fail"] or params["pretrained"]:
            raise errors["imagenet" if params["pretrained"] else "scratch"]
        folder = P.check(P.TrainParams, params).resolved_run_dir()
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "metrics.json").write_text("{}")

    monkeypatch.setattr(wf, "execute", execute)

    def snakemake(cmd):  # stands in for Snakemake: the train jobs, then the book
        for rid in ex.runs(ex.load_experiment(str(exp_file))):
            wf.train_one(str(exp_file), rid.key)
        return 0, "6 of 6 steps (100%) done\n", None

    monkeypatch.setattr(runner, "_run_teed", snakemake)
    assert runner.report(str(exp_file), "", 1) == 1
    err = capfd.readouterr().err.strip().splitlines()
    assert err[-1].startswith("make report: FAILED") and "1 run(s) failed" in err[-1]
    assert "failed: covid_radiography/resnet18-scratch-s0: DiskFullError: disk full" in "\n".join(err[-4:])
    assert "absent: covid_radiography/resnet18-imagenet-s0: MissingWeightsError" in "\n".join(err[-4:])
    kinds = {r["key"].split("/")[1]: r["kind"] for r in runner.runs_not_complete(ex.load_experiment(str(exp_file)))}
    assert kinds == {"resnet18-imagenet-s0": "absent", "resnet18-scratch-s0": "failed"}
    scratch = next(r for r in ex.runs(ex.load_experiment(str(exp_file))) if r.arm == "scratch")
    asked = runner.runs_not_complete(ex.load_experiment(str(exp_file)), {str(wf.status_file(scratch))})
    assert [r["key"] for r in asked] == [scratch.key]   # one stage's targets: only its runs
    state["fail"] = False      # the disk has room again: only the absent run remains, exit 0
    assert runner.report(str(exp_file), "", 1) == 0
    err = capfd.readouterr().err.strip().splitlines()
    assert "absent: covid_radiography/resnet18-imagenet-s0" in err[-1] and "FAILED" not in "\n".join(err)


def test_a_failed_step_is_named_with_its_reason_and_notebook(tmp_path):
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("prepare()")])
    nb.cells[0].outputs = [nbformat.v4.new_output("error", ename="FileNotFoundError",
                                                  evalue="class folder 'COVID' holds no image files",
                                                  traceback=[])]
    executed = tmp_path / "results/tiny/notebooks/data_prep/covid_radiography/real-32px.ipynb"
    executed.parent.mkdir(parents=True)
    nbformat.write(nb, executed)
    folder = tmp_path / "results/tiny/failed"
    assert runner.main(["failed", "--to", str(folder), "data_prep", "data/prepared/covid_radiography/real-32px",
                        str(executed)]) == 1
    (record,) = [json.loads(p.read_text()) for p in folder.glob("*.json")]
    text = (f"Error in rule data_prep:\n    message: None\n    jobid: 2\n"
            f"    output: data/prepared/covid_radiography/real-32px, {executed}\n    shell:\n        papermill ...\n\n"
            "Complete log(s): /w/.snakemake/log/x.snakemake.log\n")
    (step,) = runner.failed_steps(text, [record])
    assert step["step"] == "data_prep" and step["reason"].startswith("FileNotFoundError: class folder 'COVID'")
    assert Path(step["open"]).is_file() and Path(step["open"]).parent == folder   # kept: Snakemake deletes the output
    # a step without a notebook: the last exception line of its output, and Snakemake's log
    (book,) = runner.failed_steps("Traceback ...\nsphinx.errors.SphinxWarning: toc.yml: missing page\n" + text.replace(
        "data_prep", "book"), [])
    assert book["reason"] == "sphinx.errors.SphinxWarning: toc.yml: missing page"
    assert book["open"] == "/w/.snakemake/log/x.snakemake.log"
    lines = runner.closing_lines([step, book], [])
    assert lines[0] == "make report: 2 step(s) failed:" and lines[1].startswith("  data_prep (data/prepared")
