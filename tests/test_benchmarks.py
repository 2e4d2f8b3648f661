"""The benchmarks: what they measure is wired right, and they run end to end on tiny data.

Speed targets are not checked here (these machines are noisy); the benchmarks print them.
"""

import json
import shutil
from pathlib import Path

import pytest
import yaml

from benchmarks import grid, throughput

ROOT = Path(__file__).resolve().parents[1]


def test_flop_counter_matches_resnet18s_published_cost():
    import torchvision

    model = torchvision.models.resnet18(weights=None)
    import torch

    forward = throughput._flops_per_image(model, 224, torch.device("cpu"), train=False)
    train = throughput._flops_per_image(model, 224, torch.device("cpu"), train=True)
    # torchvision lists ResNet-18 at 1.81 GFLOPS (multiply-adds); the counter counts 2 per MAC.
    assert forward == pytest.approx(2 * 1.81e9, rel=0.02)
    assert train == pytest.approx(3 * forward, rel=0.05)      # backward ~ twice the forward


def test_mfu_uses_the_dense_bf16_peak_of_the_named_gpu():
    assert throughput._peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert throughput._peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert throughput._peak_tflops("Some Unknown GPU") is None


def test_compose_takes_the_papers_sizes_and_settings():
    exp = grid.compose(["paper_a", "paper_b"], 1.0)
    assert exp["synthetic"] is True
    assert exp["datasets"]["covid_radiography"]["n_per_class"] == 1345
    assert exp["datasets"]["covid_radiography"]["image_size"] == 128
    assert exp["datasets"]["ct_kidney"]["n_per_class"] * 4 == pytest.approx(12446, abs=4)
    by_dataset = {e["dataset"]: e for e in exp["grid"]}
    assert by_dataset["covid_radiography"]["train"]["epochs"] == 20
    assert by_dataset["covid_radiography"]["train"]["batch_size"] == 16
    assert by_dataset["ct_kidney"]["train"]["epochs"] == 30
    assert by_dataset["ct_kidney"]["train"]["batch_size"] == 100
    small = grid.compose(["paper_a"], 0.0001, epochs=1)
    assert small["datasets"]["covid_radiography"]["n_per_class"] >= 5   # a 6:2:2 split's minimum
    assert small["grid"][0]["train"]["epochs"] == 1
    with pytest.raises(ValueError, match="--fraction"):
        grid.compose(["paper_a"], 1.5)


def test_distinct_keeps_one_run_per_configuration_of_the_full_grid():
    exp = grid.compose(["full"], 0.01, epochs=1, distinct=True)
    configs = [(e["dataset"], e["archs"][0], e.get("head", "replace")) for e in exp["grid"]]
    assert len(configs) == len(set(configs)) == 12
    assert all(e["arms"] == ["scratch"] and e["seeds"] == [0] for e in exp["grid"])


def _measurement(images, epoch_cost, overhead_cost, prep_cost):
    """A fake measurement following known linear laws, for one configuration per dataset."""
    runs = []
    for ds, arch, size in (("covid_radiography", "resnet18", 128), ("ct_kidney", "vgg16", 200)):
        n = round(0.8 * images[ds])
        head = "dense1024" if arch == "vgg16" else "replace"
        a, b = epoch_cost[ds]
        c, d = overhead_cost
        runs.append({"dataset": ds, "arch": arch, "head": head, "image_size": size, "state": "complete",
                     "images": n, "epochs_run": 1, "epoch_seconds": a + b * n - 0.25,
                     "checkpoint_seconds": 0.25,
                     "overhead_seconds": c + d * n})
    return {"runs": runs, "dataset_images": images,
            "data_prep_seconds": {ds: prep_cost[0] + prep_cost[1] * n for ds, n in images.items()}}


def test_projection_recovers_known_linear_costs():
    epoch_cost = {"covid_radiography": (0.5, 0.01), "ct_kidney": (1.0, 0.2)}
    overhead, prep = (10.0, 0.001), (5.0, 0.002)
    measurements = [_measurement({"covid_radiography": 3 * k, "ct_kidney": 4 * k},
                                 epoch_cost, overhead, prep) for k in (10, 20, 40)]
    fits = grid.fit_scale(measurements)
    fit = fits["configs"]["ct_kidney/vgg16/dense1024/200px"]["epoch"]
    assert fit["slope"] == pytest.approx(0.2) and fit["intercept"] == pytest.approx(1.0)
    proj = grid.project(["paper_a", "paper_b"], fits)
    # paper A: 4 archs x 2 arms, but only resnet18 was "measured": the rest are named.
    assert "covid_radiography/vgg11/replace/128px" in proj["unmeasured_configs"]
    n_a, n_b = round(0.8 * 4035), round(0.8 * 12446)
    expected = (2 * (10 + 0.001 * n_a + 20 * (0.5 + 0.01 * n_a))          # resnet18, two arms
                + 2 * (10 + 0.001 * n_b + 30 * (1.0 + 0.2 * n_b)))         # vgg16, two arms
    assert proj["runs"] == 4
    assert proj["train_seconds"] == pytest.approx(expected)
    assert proj["wall_seconds"] == pytest.approx(expected + 2 * 5.0 + 0.002 * (4035 + 12446))


def _tiny_workspace(tmp_path, *, epochs: int, arch: str, arms: list) -> Path:
    """A copy of the workflow with a one-configuration synthetic experiment, tiny.yaml."""
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy2(ROOT / "Snakefile", work / "Snakefile")
    shutil.copytree(ROOT / "notebooks", work / "notebooks")
    tiny = {"name": "tiny", "synthetic": True,
            "datasets": {"covid_radiography": {"image_size": 32, "balance": True, "split": "random",
                                               "split_seed": 0}},
            "defaults": {"epochs": epochs, "batch_size": 8, "lr": 1.0e-3, "normalize": "dataset",
                         "early_stopping_patience": 0},
            "grid": [{"dataset": "covid_radiography", "archs": [arch], "head": "replace",
                      "arms": arms, "seeds": [0]}]}
    (work / "tiny.yaml").write_text(yaml.safe_dump(tiny))
    return work


def test_scale_results_become_a_figure_and_a_projection_table(tmp_path):
    epoch_cost = {"covid_radiography": (0.5, 0.01), "ct_kidney": (1.0, 0.2)}
    measurements = [_measurement({"covid_radiography": 3 * k, "ct_kidney": 4 * k},
                                 epoch_cost, (10.0, 0.001), (5.0, 0.002)) for k in (10, 20, 40)]
    fits = grid.fit_scale(measurements)
    projections = [{**grid.project(label.split("+"), fits), "label": label} for label in grid.PROJECTED]
    report = {"device_name": "test-cpu", "measurements": measurements, "fits": fits,
              "projections": projections}
    assert grid.scale_figure(tmp_path) is None                 # nothing saved yet
    (tmp_path / "grid-cpu-sizes.json").write_text(json.dumps(report))
    fig = grid.scale_figure(tmp_path)
    left, right = fig.axes
    fits_drawn = [line for line in left.lines if len(line.get_xdata()) == 2]
    assert len(left.collections) == 1 and len(fits_drawn) == 2          # points, one fit per config
    assert [t.get_text() for t in right.get_xticklabels()] == list(grid.PROJECTED)
    table = grid.load_projections(tmp_path)
    assert list(table["grid"]) == list(grid.PROJECTED)
    assert table["projected hours"].iloc[0] == pytest.approx(projections[0]["wall_seconds"] / 3600, abs=0.01)


@pytest.mark.parametrize("argv, message", [
    (["--fraction", "2"], "--fraction must be in"),
    (["--experiment", "nope"], "experiment 'nope' not found"),
    (["--cores", "0"], "--cores and --epochs must be at least 1"),
])
def test_grid_refuses_bad_arguments_before_any_work(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as stop:
        grid.main([*argv, "--out", str(tmp_path / "grid-x.json")])
    assert stop.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "grid-x.json").exists()


@pytest.mark.slow
def test_gpu_check_runs_every_stage_at_tiny_sizes_and_writes_every_json(data_root, tmp_path, monkeypatch):
    from benchmarks import gpu_check

    # One workflow-from-nothing for both: gpu_check's grid stage is benchmarks.grid's own run
    # (an ImageNet arm without weights gets stand-in weights), so its JSON is checked here in full.
    work = _tiny_workspace(tmp_path, epochs=3, arch="resnet18", arms=["imagenet", "scratch"])
    monkeypatch.chdir(work)
    # The stages are child processes started from the work folder: they find the code by path.
    monkeypatch.setenv("PYTHONPATH", f"{ROOT}:{ROOT / 'src'}")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))   # no real weights
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "out"
    assert gpu_check.main(["--out", str(out), "--device", "cpu", "--tiny", "--cores", "2",
                           "--grid-experiment", "tiny.yaml"]) == 0
    assert sorted(p.name for p in out.glob("*.json")) == [
        "cpu-check.json", "cpu-paper_a.json", "cpu-paper_b.json", "grid-cpu.json"]
    check = json.loads((out / "cpu-check.json").read_text())
    assert check["environment"]["torch"] and check["peak_bf16"]["tflops"] > 0
    assert {name: s["state"] for name, s in check["stages"].items()} == dict.fromkeys(
        ("paper_a", "paper_b", "grid"), "done")
    # benchmarks.throughput, both loops on the same data: the same 6:2:2 split of 5 images per class
    for setting, arch, split in (("paper_a", "mobilenet_v3_small", (9, 3)), ("paper_b", "vgg16", (12, 4))):
        report = json.loads((out / f"cpu-{setting}.json").read_text())
        assert report["device"] == "cpu" and report["versions"]["torch"]
        (row,) = report["rows"]
        ours, naive = row["ours"], row["naive"]
        assert row["arch"] == arch and "error" not in ours and "error" not in naive, row
        assert (ours["n_train"], ours["n_val"]) == (naive["n_train"], naive["n_val"]) == split, row
        assert row["ratio"] > 0 and row["ratio"] == pytest.approx(ours["images_per_s"] / naive["images_per_s"])
    assert list(throughput.load_results(out)["arch"]) == ["mobilenet_v3_small", "vgg16"]
    result = json.loads((out / "grid-cpu.json").read_text())["grid"]
    assert result["images_per_class"] == {"covid_radiography": 5}
    assert result["stand_in_weights"] == ["resnet18"]
    assert result["data_prep_seconds"]["covid_radiography"] > 0
    assert [r["state"] for r in result["runs"]] == ["complete", "complete"]
    for row in result["runs"]:
        assert row["epochs_run"] == 1 and row["images"] == 12      # --epochs 1; 9 train + 3 val
        assert 0 < row["epoch_seconds"] < row["notebook_seconds"] < result["wall_seconds"]
        assert 0 < row["checkpoint_seconds"] < row["notebook_seconds"]
    assert not (work / "runs" / "bench-grid").exists()       # checkpoints are not left behind
    table = grid.load_grid(out)
    assert list(table["runs done"]) == ["2/2"] and list(table["stand-in weights"]) == ["resnet18"]


def test_gpu_check_skips_a_stage_whose_packages_are_missing(tmp_path, monkeypatch):
    from benchmarks import gpu_check

    monkeypatch.setitem(gpu_check.NEEDS, "grid", ("no_such_module_xyz",))
    assert gpu_check.main(["--out", str(tmp_path), "--device", "cpu", "--tiny",
                           "--stages", "grid"]) == 1
    check = json.loads((tmp_path / "cpu-check.json").read_text())
    assert check["stages"]["grid"]["state"] == "skipped"
    assert "no_such_module_xyz" in check["stages"]["grid"]["reason"]
    assert not (tmp_path / "grid-cpu.json").exists()


def test_the_bf16_comparison_times_each_arch_both_ways(data_root, monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(throughput.SETTINGS, "paper_a", ("covid_radiography", 32, 4, "replace"))
    monkeypatch.setattr(throughput, "_child", lambda args: throughput.run_ours(
        args[1], args[2], int(args[3]), args[4], *args[5:]))
    rows = throughput.compare_bf16(["mobilenet_v3_small"], n_per_class=6, device="cpu")
    assert [(r["fp32"]["bf16"], r["bf16"]["bf16"]) for r in rows] == [(False, True)]
    assert rows[0]["ratio"] == pytest.approx(rows[0]["bf16"]["images_per_s"] / rows[0]["fp32"]["images_per_s"])
    assert "mobilenet_v3_small" in capsys.readouterr().out
    # the Performance page's table reads the saved file, and says whether that CPU was native
    throughput.save_report({"device_name": "x86_64", "native_bf16": False, "bf16_rows": rows},
                           tmp_path / "cpu-bf16.json")
    shown = throughput.load_bf16(tmp_path)
    assert list(shown["native bf16"]) == ["no (emulated)"]
    assert list(shown["bf16/fp32"]) == [round(rows[0]["ratio"], 2)]


def test_the_augmentation_benchmark_times_each_arch_with_and_without(data_root, monkeypatch, capsys):
    monkeypatch.setitem(throughput.SETTINGS, "paper_a", ("covid_radiography", 32, 4, "replace"))
    monkeypatch.setattr(throughput, "_child", lambda args: throughput.run_ours(
        args[1], args[2], int(args[3]), args[4], *args[5:]))
    rows = throughput.compare_augment(["mobilenet_v3_small"], n_per_class=6, device="cpu")
    assert [(r["plain"]["augment"], r["augmented"]["augment"]) for r in rows] == [(False, True)]
    assert rows[0]["train_ratio"] == pytest.approx(rows[0]["augmented"]["train_seconds"] / rows[0]["plain"]["train_seconds"])
    assert "target at most +10%" in capsys.readouterr().out
