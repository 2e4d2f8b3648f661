"""The SLURM profile on a real single-node SLURM cluster (tests/slurm_cluster.py), end to end.

One tiny synthetic study runs in two copies of the workflow: locally (``snakemake --cores 1``)
and with ``snakemake --profile profiles/slurm`` against the cluster, up to the evaluation
notebook (a local rule, like the book; tests/test_book.py builds the book end to end). During
the SLURM run one training job is cancelled with ``scancel`` once it has saved a checkpoint;
the next invocation resumes it and completes the grid and the evaluation. The SLURM run
folders must then equal the local ones (same predictions on CPU, same seeds), the resumed run
included.

Needs root and the Debian packages that .ci/run installs; elsewhere every test here is skipped
with the reason.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

import slurm_cluster
from workspace import workflow_copy

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# One dataset, two training runs. The run that gets cancelled needs epochs to spare after its
# first checkpoint: an epoch on 36 images at 32 px takes about half a second here.
EPOCHS = 12
RUNS = ("resnet18-scratch-s0", "resnet18-scratch-s1")
CANCELLED = RUNS[1]
TINY = {
    "name": "tiny",
    "description": "The SLURM test's study: two ResNet-18 runs from scratch on 32 px chest phantoms.",
    "synthetic": True,
    "datasets": {"covid_radiography": {"image_size": 32, "balance": True, "split": "random", "split_seed": 0,
                                       "n_per_class": 12}},
    "defaults": {"epochs": EPOCHS, "batch_size": 8, "lr": 1.0e-3, "normalize": "dataset",
                 "early_stopping_patience": 0},
    "grid": [{"dataset": "covid_radiography", "archs": ["resnet18"], "head": "replace", "arms": ["scratch"],
              "seeds": [0, 1]}],
    "explain": {},
    "audit": [],
}


def environment(root: Path, base: dict) -> dict:
    # One torch thread in both copies: the order of float sums, hence the predictions, depends on it.
    env = {k: v for k, v in base.items() if not k.startswith("HELPERS_SLURM_")}
    return {**env, "PATH": f"{BIN}{os.pathsep}{base.get('PATH', '')}", "PYTHONPATH": str(ROOT / "src"),
            "HELPERS_DATA_ROOT": str(root / "data"), "TORCH_HOME": str(root / "torch"),
            "HELPERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


class Snakemake:
    """One snakemake invocation in the background, its output in a log file."""

    def __init__(self, root: Path, env: dict, *args: str, name: str):
        self.log = root / f"{name}.log"
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen([str(BIN / "snakemake"), *args, "--config", "experiment=tiny"],
                                         cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)

    def wait(self, timeout: float) -> tuple[int, str]:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(f"snakemake ran past {timeout} s:\n{self.log.read_text()[-4000:]}")
        return self.proc.returncode, self.log.read_text()

    def stop(self) -> None:
        self.proc.terminate()            # snakemake cancels its SLURM jobs on the way out
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def slurm_args() -> list[str]:
    """`--profile profiles/slurm`, with the profile's job sizes shrunk to the one test node (one
    CPU, a little memory each); every other setting is the profile's own."""
    profile = yaml.safe_load((ROOT / "profiles" / "slurm" / "config.yaml").read_text())
    small = {"cpus_per_task": 1, "mem_mb": 500}
    default = [f"{k}={small.get(k, v)}" for k, v in profile["default-resources"].items()]
    per_rule = [f"{rule}:{k}={small.get(k, v)}" for rule, res in profile["set-resources"].items()
                for k, v in res.items()]
    # the plugin's first status check comes after 40 s by default: fine for hours-long jobs
    return ["--profile", "profiles/slurm", "--default-resources", *default, "--set-resources", *per_rule,
            "--slurm-init-seconds-before-status-checks", "1"]


EVALUATE = "results/tiny/notebooks/evaluate_covid_radiography.ipynb"   # the SLURM copy's target


def run_dir(root: Path, name: str) -> Path:
    return root / "runs" / "tiny" / "covid_radiography" / name


def sacct(cluster: slurm_cluster.Cluster) -> pd.DataFrame:
    """Every job the cluster's accounting database knows: id, state and the plugin's comment
    (rule_<rule>_wildcards_<wildcards>), with account, partition and requested TRES."""
    columns = {"job": "JobIDRaw", "state": "State", "account": "Account", "partition": "Partition",
               "tres": "ReqTRES", "comment": "Comment"}
    out = cluster.run("sacct", "-a", "-X", "-n", "-P", "--starttime", "2000-01-01",
                      "-o", ",".join(columns.values())).stdout
    rows = [line.split("|", len(columns) - 1) for line in out.splitlines() if line.strip()]
    return pd.DataFrame(rows, columns=list(columns))


def _poll(what: str, check, run: Snakemake, timeout: float, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        assert run.proc.poll() is None, (f"snakemake ended ({run.proc.returncode}) before {what}:\n"
                                         f"{run.log.read_text()[-4000:]}")
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="session")
def cluster():
    reason = slurm_cluster.unavailable()
    if reason and os.environ.get("HELPERS_REQUIRE_SLURM") == "1":  # set by .ci/run: CI must run it
        pytest.fail(f"HELPERS_REQUIRE_SLURM=1 but {reason}")
    if reason:
        pytest.skip(reason)
    started = slurm_cluster.Cluster().start()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def study(cluster, tmp_path_factory):
    """Runs everything once and hands the tests what happened."""
    from helpers.checkpoints import read_checkpoint

    t0 = time.monotonic()
    base = tmp_path_factory.mktemp("slurm-study")
    local, remote = workflow_copy(base / "local", TINY), workflow_copy(base / "slurm", TINY)
    started: list[Snakemake] = []

    def snakemake(root, env, *args, name):
        started.append(Snakemake(root, env, *args, name=name))
        return started[-1]

    try:
        # The local reference trains alongside (its two runs only), with one thread per training
        # job like the one-CPU SLURM jobs: torch's float sums, hence the predictions, depend on
        # the thread count.
        local_run = snakemake(local, environment(local, os.environ), "--cores", "1",
                              *[str(run_dir(Path(), r) / "status.json") for r in RUNS], name="local")
        env = environment(remote, cluster.env)
        args = slurm_args()
        facts = {"sacct_before": sacct(cluster)}
        # No account or partition: stopped with a message that names what to set, before any sbatch.
        facts["no_account"] = snakemake(remote, env, EVALUATE, *args, name="no-account").wait(120)
        facts["sacct_after_no_account"] = sacct(cluster)

        env.update(HELPERS_SLURM_ACCOUNT=cluster.account, HELPERS_SLURM_PARTITION=cluster.partition)
        first = snakemake(remote, env, EVALUATE, *args, name="first")
        # Cancel the second run's job as soon as it has saved an epoch (history.csv is written last).
        def job_of_cancelled_run():
            jobs = cluster.run("squeue", "-h", "-o", "%i|%k").stdout.splitlines()
            return next((j.split("|")[0] for j in jobs if "rule_train" in j and CANCELLED in j), None)

        facts["cancelled_job"] = _poll("the training job in squeue", job_of_cancelled_run, first, 300,
                                        every=0.5)
        saved = run_dir(remote, CANCELLED) / "history.csv"
        _poll(f"{saved}", saved.exists, first, 300)
        cluster.run("scancel", facts["cancelled_job"])
        facts["first"] = first.wait(300)
        # What the cancelled run left behind, before the rerun touches it.
        folder = run_dir(remote, CANCELLED)
        facts["left"] = sorted(p.name for p in folder.iterdir())
        facts["saved_epoch"] = read_checkpoint(folder / "last.pt")["epoch"]
        facts["history_at_cancel"] = pd.read_csv(folder / "history.csv")

        facts["second"] = snakemake(remote, env, EVALUATE, *args, name="second").wait(300)
        facts["sacct"] = sacct(cluster)
        facts["local"] = local_run.wait(300)
    finally:
        for run in started:
            if run.proc.poll() is None:
                run.stop()
    facts["seconds"] = time.monotonic() - t0
    print(f"\nSLURM study: {facts['seconds']:.0f} s, {len(facts['sacct']) - len(facts['sacct_before'])} "
          f"sbatch jobs, cancelled run resumed after epoch {facts['saved_epoch']} of {EPOCHS}")
    return local, remote, facts


@pytest.mark.slow
def test_without_an_account_the_profile_stops_before_submitting_and_says_what_to_set(study):
    _, _, facts = study
    code, log = facts["no_account"]
    assert code != 0, log
    assert "slurm_account" in log and "HELPERS_SLURM_ACCOUNT" in log, log[-3000:]
    assert len(facts["sacct_after_no_account"]) == len(facts["sacct_before"])


@pytest.mark.slow
def test_a_cancelled_training_job_fails_the_workflow_and_keeps_its_checkpoint(study):
    _, _, facts = study
    code, log = facts["first"]
    job = facts["cancelled_job"]
    assert code != 0, log[-4000:]
    assert f"SLURM-job '{job}' failed, SLURM status is: 'CANCELLED'" in log, log[-4000:]
    assert {"params.json", "last.pt", "history.csv"} <= set(facts["left"])
    assert "metrics.json" not in facts["left"] and "status.json" not in facts["left"]
    assert 1 <= facts["saved_epoch"] < EPOCHS
    assert list(facts["history_at_cancel"]["epoch"]) == list(range(1, facts["saved_epoch"] + 1))
    states = facts["sacct"].set_index("job")["state"]
    assert states[job].startswith("CANCELLED")


@pytest.mark.slow
def test_the_rerun_resumes_the_cancelled_run_where_it_stopped(study):
    _, remote, facts = study
    code, log = facts["second"]
    assert code == 0, log[-4000:]
    k = facts["saved_epoch"]
    notebook = remote / "results/tiny/notebooks/train" / f"covid_radiography__{CANCELLED}.ipynb"
    assert f"resuming after epoch {k}" in notebook.read_text()
    history = pd.read_csv(run_dir(remote, CANCELLED) / "history.csv")
    assert list(history["epoch"]) == list(range(1, EPOCHS + 1))
    # the first k epochs are the saved ones, timings included: they were not trained again
    pd.testing.assert_frame_equal(history.iloc[:k].reset_index(drop=True), facts["history_at_cancel"])


@pytest.mark.slow
def test_every_training_run_went_through_sbatch_and_the_local_steps_ran_here(study):
    _, remote, facts = study
    new = facts["sacct"].iloc[len(facts["sacct_before"]):]
    rules = new["comment"].str.extract(r"^rule_(\w+?)_wildcards_(.*)$")
    train = new[rules[0] == "train"]
    # each run once, the cancelled one twice (cancelled, then resumed), all through sbatch
    for name in RUNS:
        states = list(train[train["comment"].str.contains(re.escape(name))]["state"])
        assert states.count("COMPLETED") == 1, (name, new)
    assert len(train) == len(RUNS) + 1
    # the light steps ran where snakemake ran, never as cluster jobs
    assert set(rules[0]) == {"data_prep", "train"}, new
    # account and partition from HELPERS_SLURM_*; no GPU was asked for, none requested
    assert set(new["account"]) == {slurm_cluster.ACCOUNT} and set(new["partition"]) == {slurm_cluster.PARTITION}
    assert not new["tres"].str.contains("gpu").any(), new
    assert all(state == "COMPLETED" or job == facts["cancelled_job"]
               for job, state in zip(new["job"], new["state"]))
    for name in RUNS:
        assert json.loads((run_dir(remote, name) / "status.json").read_text())["state"] == "complete"
    assert (remote / EVALUATE).is_file()          # a local rule, after the cluster's jobs


@pytest.mark.slow
def test_the_slurm_run_folders_equal_the_local_ones(study):
    local, remote, facts = study
    code, log = facts["local"]
    assert code == 0, log[-4000:]
    for name in RUNS:
        here, there = run_dir(local, name), run_dir(remote, name)
        assert sorted(p.name for p in here.iterdir()) == sorted(p.name for p in there.iterdir())
        assert (here / "predictions.csv").read_bytes() == (there / "predictions.csv").read_bytes(), name
        # the prepared data's fingerprint is the source files' paths and bytes: two copies agree
        params = [json.loads((d / "params.json").read_text()) for d in (here, there)]
        assert params[0] == params[1], name
        columns = ["epoch", "train_loss", "val_loss", "val_acc"]       # not the timings
        pd.testing.assert_frame_equal(pd.read_csv(here / "history.csv")[columns],
                                      pd.read_csv(there / "history.csv")[columns])
        timings = ("train_seconds",)
        metrics = [{k: v for k, v in json.loads((d / "metrics.json").read_text()).items() if k not in timings}
                   for d in (here, there)]
        assert metrics[0] == metrics[1], name
