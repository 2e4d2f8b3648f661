"""The reference study's committed records: they agree with its experiment file, their image
fingerprint matches the images where those are here, and the book's real-data numbers are
computed from them."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from helpers import data, designs, intervals, records, study
from helpers import experiment as ex
from helpers.params import RunId

ROOT = Path(__file__).resolve().parents[1]
REAL_STUDY = ROOT.parent / "shared" / "real-study"


@pytest.fixture(autouse=True)
def _repo_root(monkeypatch):
    monkeypatch.chdir(ROOT)


def test_the_committed_records_agree_with_the_experiment_file():
    exp = ex.load_experiment(records.REFERENCE, need_data=False)
    assert records.check(exp) == []
    manifest = records.load_manifest(exp)
    grid = ex.runs(exp)
    assert set(manifest["runs"]) == {rid.key for rid in grid}
    complete = [k for k, v in manifest["runs"].items() if v["state"] == "complete"]
    assert complete, "at least one stage of the study is recorded"
    # the study runs in stages: what is not recorded yet is exactly what the manifest says did not run
    assert sorted(records.pending(exp)) == sorted(k for k, v in manifest["runs"].items()
                                                                if v["state"] == "not run")
    for key in complete:
        folder = records.ROOT / records.REFERENCE / "runs" / key
        assert {p.name for p in folder.iterdir()} == {"params.json", "history.csv", "metrics.json", "predictions.csv"}
        assert json.loads((folder / "metrics.json").read_text())["stopped_by"] in ("early_stopping", "epoch_cap", "fixed_budget")
    assert not list((records.ROOT / records.REFERENCE).rglob("*.pt")), "no checkpoints are committed"


def test_changed_settings_without_new_records_are_caught(tmp_path):
    raw = yaml.safe_load((ROOT / "experiments" / f"{records.REFERENCE}.yaml").read_text())
    raw["defaults"]["epochs"] += 1
    raw["grid"].append({"dataset": "covid_radiography", "archs": ["vgg11"], "arms": ["scratch"], "seeds": [0]})
    changed = tmp_path / f"{records.REFERENCE}.yaml"
    changed.write_text(yaml.safe_dump(raw))
    exp = ex.load_experiment(str(changed), need_data=False)
    problems = records.check(exp)
    assert any("epochs" in p and "recorded" in p for p in problems), problems
    assert not any("vgg11" in p for p in problems), "a run not recorded yet is a later stage, not a disagreement"
    assert "covid_radiography/vgg11-scratch-s0" in records.pending(exp)
    reference = ex.load_experiment(records.REFERENCE, need_data=False)
    assert set(records.pending(exp)) - set(records.pending(reference)) == {"covid_radiography/vgg11-scratch-s0"}


def test_a_tuned_record_is_checked_against_the_rate_its_recorded_sweep_chose(tmp_path):
    raw = {"name": "sweep", "synthetic": True, "datasets": {"covid_radiography": {}},
           "grid": [{"dataset": "covid_radiography", "archs": ["resnet18"], "arms": ["scratch"], "seeds": [0, 1],
                     "tune": {"lr": [1.0e-3, 3.0e-3]}}]}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw))
    exp = ex.load_experiment(str(path), need_data=False)
    root = tmp_path / "records"
    (root / "sweep").mkdir(parents=True)
    (root / "sweep" / "manifest.json").write_text(json.dumps({"runs": {}}))
    for rid, values in ex.runs(exp).items():
        folder = records.run_record(rid, root)
        folder.mkdir(parents=True)
        lr = values["lr"] or 1e-3                         # the tuned run was trained at 1e-3
        (folder / "params.json").write_text(json.dumps({**values, "lr": lr}))
        (folder / "metrics.json").write_text(json.dumps({"best_val_acc": {1e-3: 0.6, 3e-3: 0.9}[lr] if values["lr"] else 0.7,
                                                         "best_epoch": 2}))
        (folder / "history.csv").write_text("epoch,val_loss\n1,0.5\n")
    problems = records.check(exp, root)
    assert len(problems) == 1 and "resnet18-scratch-tuned-s1" in problems[0] and "lr 0.001 recorded, 0.003" in problems[0]


@pytest.mark.skipif(not REAL_STUDY.is_dir(), reason=f"{REAL_STUDY} not here")
def test_the_manifest_fingerprints_the_images_in_shared_real_study():
    manifest = records.load_manifest(ex.load_experiment(records.REFERENCE, need_data=False))
    for dataset, recorded in manifest["images"].items():
        folder = ROOT / recorded["data_dir"]   # as the export read it, from the repository root
        if not folder.is_dir():
            pytest.skip(f"{folder} not here")
        now = records.image_fingerprint(folder, dataset)
        assert now["per_class"] == recorded["per_class"], dataset
        assert now["sha256"] == recorded["sha256"], f"{dataset}: the images differ from those the records came from"


def test_a_changed_image_changes_the_fingerprint(tmp_path):
    sample = ROOT.parent / "shared" / "real-sample" / "ct_kidney"
    if not sample.is_dir():
        pytest.skip(f"{sample} not here")
    copy = tmp_path / "ct_kidney"
    shutil.copytree(sample, copy)
    before = records.image_fingerprint(copy, "ct_kidney")
    victim = next((copy / "Stone").iterdir())
    victim.write_bytes(victim.read_bytes()[:-10] + b"0123456789")
    after = records.image_fingerprint(copy, "ct_kidney")
    assert before["n_files"] == after["n_files"] == 160 and before["sha256"] != after["sha256"]


def test_fraction_runs_have_their_own_folder():
    base = dict(dataset="covid_radiography", arch="efficientnet_lite0", arm="imagenet", seed=0)
    assert RunId(**base).name == "efficientnet_lite0-imagenet-s0"
    assert RunId(**base, train_fraction=0.05).name == "efficientnet_lite0-imagenet-f0.05-s0"
    assert RunId(**base, split="block", train_fraction=0.5).name == "efficientnet_lite0-imagenet-block-f0.5-s0"


def test_the_answer_is_computed_from_the_records():
    exp = ex.load_experiment(records.REFERENCE, need_data=False)
    runsets = study.load(exp)
    arms = study.arm_table(runsets)
    assert len(arms), "the recorded stages give an answer"
    # every interval holds its estimate
    assert ((arms["ci_low"] <= arms["accuracy"]) & (arms["accuracy"] <= arms["ci_high"])).all()
    # each sweep's rate is the best on validation, and only that rate enters the answer
    answer = {r.path for rs in runsets.values() for r in rs.runs}
    for sweep in study.sweep_choices(exp):
        folders = {lr: records.ROOT / records.REFERENCE / "runs" / key for lr, key in sweep["keys"].items()}
        if sweep["chosen"] is None:   # not all of its rates are recorded yet: none is in the answer
            assert not set(folders.values()) & answer
            continue
        best = max(s["best_val_acc"] for s in sweep["scores"].values())
        assert sweep["scores"][sweep["chosen"]]["best_val_acc"] == best
        for lr, folder in folders.items():
            assert (folder in answer) == (lr == sweep["chosen"]), folder
    # each arm's accuracy is the mean of the recorded test accuracies of the runs it stands for
    for row in arms.itertuples():
        runs = [r for r in runsets[row.dataset].runs if (r.split, r.id.protocol, r.arm, r.arch, r.id.train_fraction)
                == (row.split, row.protocol, row.arm, row.arch, 1.0)]
        recorded = [json.loads((r.path / "metrics.json").read_text())["test_accuracy"] for r in runs]
        assert row.seeds == len(runs) and row.accuracy == pytest.approx(np.mean(recorded))
    diffs = study.differences(runsets)
    for d in diffs.itertuples():
        a, b = (arms[(arms["dataset"] == d.dataset) & (arms["split"] == d.split) & (arms["protocol"] == d.protocol)
                     & (arms["arm"] == arm)].iloc[0] for arm in (d.arm_a, d.arm_b))
        if a.seeds == b.seeds == d.seeds:
            assert d.difference == pytest.approx(a.accuracy - b.accuracy)


def test_kidney_intervals_resample_blocks_of_slices_not_slices():
    rng = np.random.default_rng(0)
    # 20 blocks of 25 slices, each block all right or all wrong: 20 independent units, not 500
    block_right = rng.random(20) < 0.7
    values = np.repeat(block_right, 25).astype(float)
    groups = np.repeat(np.arange(20), 25)
    by_block = intervals.cluster_bootstrap_ci(values, groups)
    by_slice = intervals.bootstrap_ci(values, method="percentile")
    assert by_block.low <= values.mean() <= by_block.high
    assert (by_block.high - by_block.low) > 3 * (by_slice.high - by_slice.low)
    assert designs.resampled_unit("ct_kidney").startswith("blocks") and designs.resampled_unit("covid_radiography") == "test images"


def test_bootstrap_interval_covers_the_mean_and_narrows_with_more_images():
    rng = np.random.default_rng(0)
    small, large = (rng.random(n) < 0.8 for n in (50, 2000))
    lo_s, hi_s = study.bootstrap_ci(small.astype(float))
    lo_l, hi_l = study.bootstrap_ci(large.astype(float))
    assert lo_s <= small.mean() <= hi_s and lo_l <= large.mean() <= hi_l
    assert hi_l - lo_l < (hi_s - lo_s) / 3
