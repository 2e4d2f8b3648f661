"""Parameter checks, the training engine, resume after kill -9, init_from, and train.ipynb."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import checkpoints, data, models, training, weights
from helpers import params as params_mod

REPO = Path(__file__).resolve().parents[1]
TINY = dict(dataset="covid_radiography", arch="mobilenet_v3_small", pretrained=False, image_size=32,
            epochs=2, batch_size=4, n_per_class=6, device="cpu")
CONTRACT_METRICS = {"class_names", "test_accuracy", "test_auc_macro", "test_auc_per_class",
                    "confusion_matrix", "first_epoch_train_loss", "first_epoch_val_acc",
                    "final_train_loss", "final_val_loss", "best_val_acc", "best_epoch", "epochs_run",
                    "train_seconds", "device", "torch_version", "git_commit"}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Synthetic data, an empty TORCH_HOME and quiet single-threaded torch for this module.

    One thread: on a shared 2-core machine OpenMP's second thread mostly waits for a busy core.
    """
    root = tmp_path_factory.mktemp("training")
    patch = pytest.MonkeyPatch()
    patch.setenv(data.ENV_DATA_ROOT, str(root / "data"))
    patch.setenv("TORCH_HOME", str(root / "torch_home"))
    patch.setenv("TQDM_DISABLE", "1")
    patch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield root
    torch.set_num_threads(threads)
    patch.undo()


def run_files(run_dir: Path) -> dict[str, str]:
    """history (without seconds), predictions and the numbers of metrics, for exact comparison."""
    history = pd.read_csv(run_dir / "history.csv").drop(columns=["seconds", "checkpoint_seconds", "bn_seconds"])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for volatile in ("train_seconds", "git_commit", "git_dirty"):
        metrics.pop(volatile)
    return {"history": history.to_csv(index=False),
            "predictions": (run_dir / "predictions.csv").read_text(),
            "metrics": json.dumps(metrics, sort_keys=True)}


def train(**overrides) -> Path:
    return training.train(**{**TINY, **overrides})


@pytest.fixture(scope="module")
def tiny_run(env):
    return train(epochs=3, run_dir=str(env / "runs" / "tiny"))


# ---------------------------------------------------------------- parameter validation

# (bad values, the parameter the error must name, fragments of what it must say is allowed)
BAD = [
    ({"bogus": 1}, "bogus", ["dataset", "arch", "pretrained"]),
    ({"arch": "resnet50"}, "arch", list(models.ARCHS)),
    ({"dataset": "mnist"}, "dataset", ["covid_radiography", "ct_kidney"]),
    ({"head": "dense"}, "head", ["replace", "dense1024"]),
    ({"pretrained": "false"}, "pretrained", ["True", "False", "-p pretrained False"]),
    ({"force": "yes"}, "force", ["True", "False"]),
    ({"balance": 1}, "balance", ["True", "False"]),
    ({"epochs": 0}, "epochs", [">= 1"]),
    ({"epochs": 2.5}, "epochs", ["integer", ">= 1"]),
    ({"batch_size": 0}, "batch_size", [">= 1"]),
    ({"seed": True}, "seed", ["integer", ">= 0"]),
    ({"lr": 0}, "lr", ["> 0"]),
    ({"lr": "1e-4"}, "lr", ["number", "> 0"]),
    ({"early_stopping_patience": -1}, "early_stopping_patience", [">= 0"]),
    ({"arch": "alexnet", "image_size": 62}, "image_size", ["63"]),
    ({"arch": "vgg16", "image_size": 31}, "image_size", ["32"]),
    ({"normalize": "minmax"}, "normalize", ["dataset", "imagenet", "paper_a", "weights"]),
    ({"optimizer": "sgd"}, "optimizer", ["adam", "adamw"]),
    ({"weight_decay": 0.05}, "weight_decay", ["adamw"]),
    ({"weight_decay": -1.0, "optimizer": "adamw"}, "weight_decay", [">= 0"]),
    ({"lr_schedule": "cosine", "warmup_epochs": 20}, "warmup_epochs", ["below 'epochs'"]),
    ({"augment": "yes"}, "augment", ["True", "False"]),
    ({"split": "kfold"}, "split", ["random", "grouped"]),
    ({"n_per_class": 2}, "n_per_class", [">= 5"]),
    ({"device": "tpu"}, "device", ["auto", "cpu", "cuda"]),
    ({"compile": "yes"}, "compile", ["auto", "True", "False"]),
    ({"init_from": "no/such/best.pt"}, "init_from", ["best.pt"]),
    ({"data_dir": 3}, "data_dir", ["string"]),
    ({"freeze_backbone": True}, "freeze_backbone", ["pretrained=True"]),
]


@pytest.mark.parametrize("bad,name,allowed", BAD, ids=[next(iter(b)) + "=" + repr(next(iter(b.values())))
                                                       for b, _, _ in BAD])
def test_bad_parameters_are_named(env, bad, name, allowed):
    with pytest.raises(ValueError) as err:
        training.validate_params({"pretrained": False, **bad})
    message = str(err.value)
    assert f"'{name}'" in message
    assert repr(bad[name]) in message or str(bad[name]) in message  # the value given
    for fragment in allowed:
        assert fragment in message, (fragment, message)


def test_valid_parameters_are_filled_and_normalised(env):
    params = training.validate_params({"pretrained": False, "lr": 1, "device": "cpu"})
    assert list(params) == list(training.PARAM_NAMES)
    assert params["lr"] == 1.0 and isinstance(params["lr"], float)
    assert params["epochs"] == 20 and params["batch_size"] == 16 and params["image_size"] == 128
    with pytest.raises(FileNotFoundError, match="no-such-folder.*does not exist"):
        training.validate_params({"pretrained": False, "data_dir": str(env / "no-such-folder")})


def test_collect_rejects_names_papermill_injected_that_are_not_parameters():
    before = {"training", "In", "Out"}
    namespace = {k: None for k in before} | {"_names_before_parameters": before,
        "arch": "resnet18", "pretrained": False, "_7": "an output", "_i8": "an input",
        "np": np, "helper": print}
    assert training.collect(namespace, before=before).arch == "resnet18"
    with pytest.raises(ValueError, match="'bogus'"):
        training.collect({**namespace, "bogus": 1}, before=before)


# ---------------------------------------------------------------- the engine

def test_run_folder_follows_the_contract(tiny_run):
    files = sorted(p.name for p in tiny_run.iterdir())
    assert files == sorted(training.RUN_FILES)
    params = json.loads((tiny_run / "params.json").read_text())
    assert set(training.PARAM_NAMES) <= set(params)
    assert params["class_names"] == list(data.DATASETS["covid_radiography"].classes)
    assert params["device"] == "cpu" and params["compile"] is False

    history = pd.read_csv(tiny_run / "history.csv")
    assert list(history.columns) == list(training.HISTORY_COLUMNS)
    assert history["epoch"].tolist() == [1, 2, 3]
    assert (history["lr"] == 1e-4).all() and (history["seconds"] > 0).all()
    assert (history["checkpoint_seconds"] > 0).all()

    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert CONTRACT_METRICS <= set(metrics)
    best = int(np.argmax(history["val_acc"].to_numpy())) + 1  # first maximum: ties keep the earlier epoch
    assert metrics["best_epoch"] == best and metrics["best_val_acc"] == history["val_acc"].max()
    assert metrics["epochs_run"] == 3
    assert metrics["first_epoch_train_loss"] == history["train_loss"][0]
    assert metrics["final_val_loss"] == history["val_loss"].iloc[-1]

    prepared = data.load_prepared(params["prepared_dir"])
    test = prepared.indices("test")
    predictions = pd.read_csv(tiny_run / "predictions.csv")
    assert list(predictions.columns) == ["path", "label", "pred", "prob_0", "prob_1", "prob_2"]
    assert predictions["path"].tolist() == [prepared.paths[i] for i in test]
    assert predictions["label"].tolist() == prepared.labels[test].tolist()
    probs = predictions[["prob_0", "prob_1", "prob_2"]].to_numpy()
    assert np.allclose(probs.sum(1), 1, atol=1e-6)
    assert (predictions["pred"] == probs.argmax(1)).all()
    assert metrics["test_accuracy"] == (predictions["pred"] == predictions["label"]).mean()
    assert np.asarray(metrics["confusion_matrix"]).sum() == len(test)

    last = torch.load(tiny_run / "last.pt", weights_only=True)
    best_ckpt = torch.load(tiny_run / "best.pt", weights_only=True)
    assert last["epoch"] == 3 and best_ckpt["epoch"] == best
    assert best_ckpt["params"]["arch"] == "mobilenet_v3_small"


def test_load_run_reproduces_the_predictions(tiny_run):
    model, params, prepared = training.load_model(tiny_run)
    assert not model.training
    mean, std = training.run_stats(params, prepared)
    assert (mean, std) == (tuple(prepared.mean), tuple(prepared.std))
    test = prepared.indices("test")
    x = training.normalize(torch.from_numpy(np.array(prepared.images[test])), mean, std)
    with torch.no_grad():
        probs = torch.softmax(model(x), 1).numpy()
    saved = pd.read_csv(tiny_run / "predictions.csv")[["prob_0", "prob_1", "prob_2"]].to_numpy()
    np.testing.assert_allclose(probs, saved, atol=1e-5)
    assert training.run_stats({"normalize": "paper_a"}, prepared) == ((0.5144,) * 3, (0.2258,) * 3)


def test_load_run_refuses_data_prepared_again_differently(tmp_path, tiny_run):
    import shutil

    copy = shutil.copytree(tiny_run, tmp_path / "copy")
    params = json.loads((copy / "params.json").read_text())
    (copy / "params.json").write_text(json.dumps({**params, "prepared_fingerprint": "0" * 64}))
    with pytest.raises(ValueError, match="trained on prepared data with fingerprint 0000"):
        training.load_model(copy)


def test_a_complete_run_on_other_prepared_data_is_not_reused(tmp_path, tiny_run):
    # Phantoms redrawn or real files replaced: same parameters, other prepared data. The old run
    # must not pass for this one; the workflow replaces it (training.stale says why).
    import shutil

    copy = shutil.copytree(tiny_run, tmp_path / "copy")
    params = json.loads((copy / "params.json").read_text())
    (copy / "params.json").write_text(json.dumps({**params, "prepared_fingerprint": "0" * 64}))
    values = {**TINY, "epochs": 3, "run_dir": str(copy)}
    assert training.stale(values).startswith("prepared_fingerprint: '0000")
    with pytest.raises(ValueError, match="other parameters or data \\(prepared_fingerprint: '0000"):
        train(epochs=3, run_dir=str(copy))
    assert train(epochs=3, run_dir=str(copy), force=True) == copy
    assert training.stale(values) == ""
    assert run_files(copy) == run_files(tiny_run)


def test_same_seed_same_results_other_seed_differs(env, tiny_run):
    again = train(epochs=3, run_dir=str(env / "runs" / "tiny-again"))
    assert run_files(again) == run_files(tiny_run)
    other = train(epochs=3, seed=1, run_dir=str(env / "runs" / "tiny-seed1"))
    assert run_files(other)["history"] != run_files(tiny_run)["history"]


def test_complete_run_is_skipped_other_params_refused_force_retrains(env, tiny_run, capsys):
    stamp = (tiny_run / "metrics.json").stat().st_mtime_ns
    assert train(epochs=3, run_dir=str(tiny_run)) == tiny_run
    assert "skipped" in capsys.readouterr().out
    assert (tiny_run / "metrics.json").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="other parameters or data \\(lr: 0.0001 there, 0.001 now\\)"):
        train(epochs=3, lr=1e-3, run_dir=str(tiny_run))
    assert training.stale({**TINY, "epochs": 3, "run_dir": str(tiny_run)}) == ""
    assert training.stale({**TINY, "epochs": 3, "lr": 1e-3, "run_dir": str(tiny_run)}).startswith("lr: 0.0001 there")
    forced = train(epochs=1, force=True, run_dir=str(env / "runs" / "tiny-again"))
    assert pd.read_csv(forced / "history.csv")["epoch"].tolist() == [1]


# A child process that trains ``params`` and kills itself at ``kill_epoch``.
_KILL_PREAMBLE = textwrap.dedent("""
    import json, os, signal, sys
    import torch
    torch.set_num_threads(1)
    from helpers import checkpoints, training
    params, kill_epoch = json.loads(sys.argv[1]), int(sys.argv[2])
""")

KILLER = _KILL_PREAMBLE + textwrap.dedent("""
    real_epoch = training._Engine.train_epoch

    def train_epoch(self, model, optimizer, seed, epoch, bar, **schedule):
        loss = real_epoch(self, model, optimizer, seed, epoch, bar, **schedule)
        if epoch == kill_epoch:  # a crash after training this epoch, before its checkpoint
            os.kill(os.getpid(), signal.SIGKILL)
        return loss

    training._Engine.train_epoch = train_epoch
    real_submit = checkpoints.CheckpointWriter.submit

    def submit(self, *args):  # the previous epoch's files are on disk when the crash comes
        real_submit(self, *args)
        self.wait()

    checkpoints.CheckpointWriter.submit = submit
    training.train(**params)
""")

MID_WRITE_KILLER = _KILL_PREAMBLE + textwrap.dedent("""
    from helpers import atomic
    real_save = atomic.save_torch

    def save_torch(path, obj):
        if path.name == "last.pt" and obj["epoch"] == kill_epoch:   # half a file, then a crash
            path.with_name(f".{path.name}.tmp{os.getpid()}").write_bytes(b"partial")
            os.kill(os.getpid(), signal.SIGKILL)
        real_save(path, obj)

    atomic.save_torch = save_torch
    training.train(**params)
""")


def test_resume_after_kill_matches_an_uninterrupted_run(env, tiny_run):
    run_dir = env / "runs" / "killed"
    params = {**TINY, "epochs": 3, "run_dir": str(run_dir)}
    killed = subprocess.run([sys.executable, "-c", KILLER, json.dumps(params), "3"],
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (run_dir / "metrics.json").exists()
    assert torch.load(run_dir / "last.pt", weights_only=True)["epoch"] == 2
    assert len(pd.read_csv(run_dir / "history.csv")) == 2

    assert training.train(**params) == run_dir
    assert run_files(run_dir) == run_files(tiny_run)


def test_a_kill_during_a_background_checkpoint_write_costs_only_that_epoch(env, tiny_run):
    run_dir = env / "runs" / "killed-writing"
    params = {**TINY, "epochs": 3, "run_dir": str(run_dir)}
    killed = subprocess.run([sys.executable, "-c", MID_WRITE_KILLER, json.dumps(params), "2"],
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert torch.load(run_dir / "last.pt", weights_only=True)["epoch"] == 1
    assert list(run_dir.glob(".last.pt.tmp*"))               # the half-written file is there ...

    assert training.train(**params) == run_dir
    assert not list(run_dir.glob(".*.tmp*"))                 # ... and gone after the resume
    assert run_files(run_dir) == run_files(tiny_run)


def test_a_failed_checkpoint_write_stops_training_with_its_error(env, monkeypatch):
    from helpers import atomic

    def disk_full(path, obj):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(atomic, "save_torch", disk_full)
    with pytest.raises(OSError, match="No space left"):
        training.train(**{**TINY, "epochs": 2, "run_dir": str(env / "runs" / "disk-full")})
    assert not (env / "runs" / "disk-full" / "metrics.json").exists()


def truncate(path: Path) -> None:
    """A partial copy or a full disk: the first half of the file's bytes."""
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def test_a_truncated_last_pt_names_the_file_and_the_way_out(env):
    run_dir = env / "runs" / "truncated-last"
    train(run_dir=str(run_dir))
    before = run_files(run_dir)
    (run_dir / "metrics.json").unlink()  # interrupted before it finished
    truncate(run_dir / "last.pt")
    with pytest.raises(checkpoints.CheckpointError) as err:
        train(run_dir=str(run_dir))
    message = str(err.value)
    assert message.startswith(f"{run_dir / 'last.pt'} is damaged (truncated or partly copied): RuntimeError: "
                              f"PytorchStreamReader failed reading zip archive")
    assert message.endswith("Delete it to start this run again from epoch 1, or pass force=True to retrain it")
    assert "\n" not in message and len(message) < 400
    # the way out works: without last.pt the run starts again and repeats itself exactly
    (run_dir / "last.pt").unlink()
    assert train(run_dir=str(run_dir)) == run_dir
    assert run_files(run_dir) == before


def _scripted_val_acc(monkeypatch, val_correct):
    calls = []

    def scripted(self, model, part):
        calls.append(part)
        return torch.tensor(1.0), torch.tensor(val_correct[len(calls) - 1])

    monkeypatch.setattr(training._Engine, "evaluate", scripted)


def test_a_damaged_best_pt_is_rebuilt_from_last_pt_or_refused_naming_it(env, monkeypatch, capsys):
    # best epoch 2 of 2: last.pt holds the same model, so best.pt is written again from it
    _scripted_val_acc(monkeypatch, [1, 3])
    same = train(run_dir=str(env / "runs" / "damaged-best-same"))
    (same / "metrics.json").unlink()
    truncate(same / "best.pt")
    assert train(run_dir=str(same)) == same
    assert f"{same / 'best.pt'} is damaged (RuntimeError: PytorchStreamReader" in capsys.readouterr().out
    assert checkpoints.read_checkpoint(same / "best.pt")["epoch"] == 2
    assert json.loads((same / "metrics.json").read_text())["best_epoch"] == 2

    # best epoch 1 of 2: its model is only in best.pt; refused at once, naming both files
    _scripted_val_acc(monkeypatch, [3, 1])
    older = train(run_dir=str(env / "runs" / "damaged-best-older"))
    (older / "metrics.json").unlink()
    truncate(older / "best.pt")
    with pytest.raises(checkpoints.CheckpointError) as err:
        train(run_dir=str(older))
    message = str(err.value)
    assert message.startswith(f"{older / 'best.pt'} is damaged (truncated or partly copied): ")
    assert message.endswith("Its model (epoch 1) is not in last.pt (epoch 2). Delete best.pt and last.pt to "
                            "start this run again from epoch 1, or pass force=True to retrain it")
    assert "\n" not in message


def test_the_workflow_records_a_damaged_checkpoint_as_a_failed_run(env, tmp_path, monkeypatch):
    import yaml

    from helpers import workflow as wf

    exp = yaml.safe_load((REPO / "experiments" / "demo.yaml").read_text())
    exp.update(name="damaged", explain={}, audit=[],
               datasets={"covid_radiography": {"image_size": 32, "balance": True, "split": "random",
                                               "split_seed": 0, "n_per_class": 6}},
               defaults={"epochs": 1, "batch_size": 4, "lr": 1e-4},
               grid=[{"dataset": "covid_radiography", "archs": ["mobilenet_v3_small"], "arms": ["scratch"],
                      "seeds": [0]}])
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(exp))
    monkeypatch.chdir(tmp_path)
    data.prepare("covid_radiography", image_size=32, n_per_class=6, progress=False)  # the workflow's data prep
    # the notebook's work, in this process (papermill reports the same exception name and message)
    monkeypatch.setattr(wf, "execute", lambda notebook, out, values: training.train(**{**values, "device": "cpu"}))
    run = "covid_radiography/mobilenet_v3_small-scratch-s0"
    assert wf.train_one(str(path), run)["state"] == "complete"
    run_dir = Path("runs/damaged") / run
    (run_dir / "metrics.json").unlink()
    truncate(run_dir / "last.pt")
    status = wf.train_one(str(path), run)
    assert status["state"] == "missing" and status["kind"] == "failed"
    assert status["reason"].startswith(f"CheckpointError: {run_dir / 'last.pt'} is damaged (truncated or partly "
                                       f"copied): RuntimeError: PytorchStreamReader failed reading zip archive")
    assert status["reason"].endswith("Delete it to start this run again from epoch 1, or pass force=True to "
                                     "retrain it")
    assert json.loads((run_dir / "missing.json").read_text())["reason"] == status["reason"]


@pytest.mark.parametrize("head", models.HEADS)
def test_densenet121_trains_with_either_head(env, head):
    run_dir = train(arch="densenet121", head=head, epochs=1, run_dir=str(env / "runs" / f"densenet121-{head}"))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs_run"] == 1 and np.isfinite(metrics["final_train_loss"])
    model, params, _ = training.load_model(run_dir)
    assert params["arch"] == "densenet121" and params["head"] == head
    assert isinstance(models.gradcam_target_layer(model, "densenet121"), torch.nn.Module)


def test_early_stopping_on_val_loss_and_best_epoch_by_val_acc(env, monkeypatch):
    """Scripted validation results drive the real loop: Keras' rule on val_loss, patience 2;
    the best epoch is the first with the highest val_acc."""
    val_loss = [1.0, 0.9, 0.95, 0.91, 0.8, 0.7]
    val_correct = [2, 3, 3, 2, 4, 4]  # of 4 validation images
    calls = []

    def scripted(self, model, part):
        calls.append(part)
        assert len(self.y["val"]) == 4
        return torch.tensor(val_loss[len(calls) - 1]), torch.tensor(val_correct[len(calls) - 1])

    monkeypatch.setattr(training._Engine, "evaluate", scripted)
    run_dir = train(epochs=6, early_stopping_patience=2, run_dir=str(env / "runs" / "early"))
    history = pd.read_csv(run_dir / "history.csv")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert calls == ["val"] * 4  # epochs 3 and 4 did not beat 0.9: stop after epoch 4
    assert history["val_loss"].tolist() == pytest.approx(val_loss[:4])
    assert metrics["stopped_early"] is True and metrics["epochs_run"] == 4
    assert metrics["stopped_by"] == "early_stopping"
    assert history["val_acc"].tolist() == [0.5, 0.75, 0.75, 0.5]
    assert metrics["best_epoch"] == 2 and metrics["best_val_acc"] == 0.75 and torch.load(run_dir / "best.pt", weights_only=True)["epoch"] == 2
    assert metrics["final_val_loss"] == pytest.approx(0.91)


def test_how_training_ended_is_recorded_cap_and_fixed_budget(env, monkeypatch):
    """A run whose cap comes before early stopping is marked as such, not as converged."""
    losses = iter([1.0, 0.9, 0.8])  # still improving when the cap of 2 epochs comes
    monkeypatch.setattr(training._Engine, "evaluate",
                        lambda self, model, part: (torch.tensor(next(losses)), torch.tensor(2)))
    capped = train(epochs=2, early_stopping_patience=3, run_dir=str(env / "runs" / "capped"))
    assert json.loads((capped / "metrics.json").read_text())["stopped_by"] == "epoch_cap"
    fixed = train(epochs=1, run_dir=str(env / "runs" / "fixed"))
    assert json.loads((fixed / "metrics.json").read_text())["stopped_by"] == "fixed_budget"
    assert params_mod.stopped_by({"early_stopping_patience": 5}, True) == "early_stopping"


def test_bf16_follows_the_arch_table_and_the_cpu(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(training, "cpu_has_bf16", lambda: True)
    assert training.resolve_bf16("auto", cpu, "resnet18") is True      # measured faster
    assert training.resolve_bf16("auto", cpu, "efficientnet_lite0") is False  # measured slower
    assert training.resolve_bf16("auto", cuda, "efficientnet_lite0") is True
    assert training.resolve_bf16(False, cuda, "resnet18") is False
    monkeypatch.setattr(training, "cpu_has_bf16", lambda: False)
    assert training.resolve_bf16("auto", cpu, "resnet18") is False     # no native bf16: emulated, slow
    assert training.resolve_bf16(True, cpu, "resnet18") is True


def test_bf16_autocast_trains_on_the_cpu_and_is_recorded(env):
    run_dir = train(epochs=1, bf16=True, run_dir=str(env / "runs" / "bf16"))
    params = json.loads((run_dir / "params.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert params["bf16"] is True and metrics["bf16"] is True and np.isfinite(metrics["final_train_loss"])


def test_bn_subset_recomputes_over_a_fixed_draw_of_training_images(env):
    from helpers import data as data_mod

    p = training._validated({**TINY, "bn_subset": 7})
    run_params, _, prepared_dir, device = training._resolve(p)
    prepared = data_mod.load_prepared(prepared_dir)
    engine = training._Engine(prepared, run_params, device)
    again = training._Engine(prepared, run_params, device)
    assert len(engine.bn_x) == 7 < len(engine.x["train"]) and torch.equal(engine.bn_x, again.bn_x)
    rows = {tuple(r.flatten()[:64].tolist()) for r in engine.x["train"]}
    assert all(tuple(r.flatten()[:64].tolist()) in rows for r in engine.bn_x)   # training images only
    whole = training._Engine(prepared, {**run_params, "bn_subset": 0}, device)
    assert whole.bn_x is whole.x["train"]


# ---------------------------------------------------------------- init_from

def test_init_from_loads_the_backbone_and_rejects_other_archs(env):
    source_dir = train(arch="resnet18", dataset="ct_kidney", epochs=1,
                                run_dir=str(env / "runs" / "kidney-source"))
    best = source_dir / "best.pt"
    source = torch.load(best, weights_only=True)["model"]
    assert source["fc.weight"].shape[0] == 4  # kidney: 4 classes

    params = training.validate_params({**TINY, "arch": "resnet18", "init_from": str(best)})
    run_id = params_mod.train_params(params).run_id()
    assert run_id.arm == "from-ct_kidney-scratch"  # the source run's dataset and arm
    assert run_id.run_dir() == Path("runs/covid_radiography/resnet18-from-ct_kidney-scratch-s0")
    assert run_id.init_source == "ct_kidney/resnet18-scratch-s0"
    for head in models.HEADS:
        torch.manual_seed(5)
        model = training._build({**params, "head": head}, num_classes=3, device=torch.device("cpu"))
        state = model.state_dict()
        backbone = [k for k in state if not models.is_head_key(k, "resnet18", head)]
        assert len(backbone) == len(state) - (2 if head == "replace" else 4)
        for key in backbone:
            assert torch.equal(state[key], source[key]), key
        assert state[[k for k in state if k.startswith("fc.")][-1]].shape[0] == 3  # fresh 3-class head

    with pytest.raises(ValueError, match="holds a 'resnet18' model, but this run's arch is "
                                         "'mobilenet_v3_small'; init_from needs a checkpoint of the same arch"):
        training.validate_params({**TINY, "init_from": str(best)})
    with pytest.raises(ValueError, match="'init_from' and 'pretrained' exclude each other"):
        training.validate_params({**TINY, "arch": "resnet18", "pretrained": True, "init_from": str(best)})

    run_dir = train(arch="resnet18", epochs=1, init_from=str(best),
                             run_dir=str(env / "runs" / "from-kidney"))
    assert json.loads((run_dir / "params.json").read_text())["init_from"] == str(best)


# ---------------------------------------------------------------- the notebook

def test_notebook_parameters_are_the_engine_defaults():
    import ast

    notebook = json.loads((REPO / "notebooks" / "train.ipynb").read_text())
    cells = [c for c in notebook["cells"] if "parameters" in c["metadata"].get("tags", [])]
    assert len(cells) == 1
    found = {}
    for node in ast.parse("".join(cells[0]["source"])).body:
        target = node.target if isinstance(node, ast.AnnAssign) else node.targets[0]
        found[target.id] = ast.literal_eval(node.value)
    assert found == {name: f.default for name, f in params_mod.TrainParams.model_fields.items()}


def papermill(env, out: Path, **params) -> subprocess.CompletedProcess:
    """The command a user types, from the repo root, with the venv's papermill."""
    args = [str(Path(sys.executable).parent / "papermill"), "notebooks/train.ipynb", str(out),
            "--log-output", "-k", "python3"]
    for name, value in params.items():
        args += ["-p", name, str(value)]
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)


def notebook_tail(out: Path) -> str:
    return json.dumps(json.loads(out.read_text())["cells"][-1]["outputs"])


@pytest.mark.slow
def test_notebook_trains_from_scratch_and_from_planted_imagenet_weights(env):
    scratch = env / "runs" / "nb-scratch"
    done = papermill(env, env / "scratch.ipynb", arch="mobilenet_v3_small", pretrained=False,
                     image_size=32, epochs=1, batch_size=4, n_per_class=6, run_dir=scratch)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (scratch / "metrics.json").exists()
    assert "test_accuracy" in notebook_tail(env / "scratch.ipynb")
    # --log-output (the README's command): one line per epoch in the terminal
    assert re.search(r"^epoch 1/1: train loss [0-9.]+, val loss [0-9.]+, val acc [0-9.]+", done.stderr, re.M), done.stderr[-2000:]

    # planted "ImageNet" weights under torchvision's file name in this module's TORCH_HOME
    state = models.get_model("mobilenet_v3_small", weights=False, num_classes=1000, image_size=224).state_dict()
    planted = weights.expected_path(models.spec("mobilenet_v3_small").weights)
    planted.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, planted)
    imagenet = env / "runs" / "nb-imagenet"
    done = papermill(env, env / "imagenet.ipynb", arch="mobilenet_v3_small", pretrained=True,
                     image_size=32, epochs=1, batch_size=4, n_per_class=6, run_dir=imagenet)
    planted.unlink()
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((imagenet / "params.json").read_text())["pretrained"] is True
    assert (imagenet / "metrics.json").exists()


@pytest.mark.slow
def test_notebook_stops_on_bad_parameters_before_any_work(env):
    out = env / "bad.ipynb"
    # (a string "false", as `-p pretrained false` injects, is covered by test_bad_parameters_are_named)
    done = papermill(env, out, pretrained=False, bogus=1, run_dir=env / "runs" / "never")
    assert done.returncode != 0
    assert "unknown parameter 'bogus'" in done.stderr
    assert not (env / "runs" / "never").exists()


# ---------------------------------------------------------------- batch-norm statistics, linear probe

def _brightness_data(n_per_class=24, size=32, classes=3, seed=0):
    """Images whose class is their brightness: a scratch network learns it in a few steps."""
    import types

    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), n_per_class)
    level = 40 + 80 * labels
    images = np.clip(level[:, None, None, None] + rng.normal(0, 20, (len(labels), 3, size, size)), 0, 255)
    split = np.array(["train", "train", "val", "test"] * (len(labels) // 4))
    return types.SimpleNamespace(images=images.astype(np.uint8), labels=labels, split=split,
                                 mean=(0.5,) * 3, std=(0.25,) * 3, paths=[str(i) for i in labels],
                                 class_names=[f"c{k}" for k in range(classes)])


def test_recomputed_bn_statistics_rescue_a_network_whose_running_statistics_are_stale():
    torch.manual_seed(0)
    prepared = _brightness_data()
    params = {**{n: f.default for n, f in params_mod.TrainParams.model_fields.items()}, "arch": "mobilenet_v3_small", "pretrained": False,
              "batch_size": 16, "image_size": 32}
    engine = training._Engine(prepared, params, torch.device("cpu"))
    model = training._build(params, num_classes=3, device=torch.device("cpu"))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)

    class Bar:
        def update(self, n):
            pass

    for epoch in range(1, 9):
        training.train_mode(model, params)
        engine.train_epoch(model, optimizer, 0, epoch, Bar())
    # stale statistics, as momentum 0.01 leaves them after few steps (here: made extreme)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.fill_(50.0)
            m.running_var.fill_(1e-4)
    _, stale_correct = engine.evaluate(model, "val")
    engine.recompute_bn(model)
    _, fixed_correct = engine.evaluate(model, "val")
    n_val = len(engine.y["val"])
    assert fixed_correct.item() / n_val > 0.6  # chance is 1/3
    assert fixed_correct > stale_correct
    # the weights did not change, only the statistics; a second pass gives the same statistics
    stats = [m.running_mean.clone() for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    engine.recompute_bn(model)
    again = [m.running_mean for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(stats, again))


def test_recompute_bn_is_recorded_and_timed(tiny_run):
    params = json.loads((tiny_run / "params.json").read_text())
    assert params["recompute_bn"] is True and params["arm"] == "scratch"
    assert params["run"]["arch"] == TINY["arch"] and params["run"]["seed"] == 0
    history = pd.read_csv(tiny_run / "history.csv")
    assert (history["bn_seconds"] > 0).all()  # mobilenet_v3_small has batch norm


def test_linear_probe_trains_only_the_head_on_frozen_real_imagenet_features(env):
    run_dir = train(arch="efficientnet_lite0", pretrained=True, freeze_backbone=True, epochs=2,
                    run_dir=str(env / "runs" / "probe"))
    params = json.loads((run_dir / "params.json").read_text())
    assert params["arm"] == "linear_probe" and params["run"]["name"] == "efficientnet_lite0-linear_probe-s0"
    trained = torch.load(run_dir / "last.pt", weights_only=True)["model"]
    imagenet = models.get_model("efficientnet_lite0", weights=True, num_classes=3, image_size=32).state_dict()
    head = [k for k in trained if models.is_head_key(k, "efficientnet_lite0", "replace")]
    backbone = [k for k in trained if k not in head]
    assert len(backbone) == 294 and head == ["classifier.weight", "classifier.bias"]
    for key in backbone:  # weights and BN statistics untouched
        assert torch.equal(trained[key], imagenet[key]), key
    assert (pd.read_csv(run_dir / "history.csv")["bn_seconds"] < 0.01).all()  # no recompute
    fresh = models.get_model("efficientnet_lite0", weights=True, num_classes=3, image_size=32)
    assert not torch.equal(trained["classifier.weight"], fresh.state_dict()["classifier.weight"])


def test_train_subset_is_stratified_nested_and_seeded():
    from helpers.training import train_subset

    labels = np.repeat([0, 1, 2], [50, 30, 20])
    train_idx = np.arange(0, 100)
    small, large = (train_subset(labels, train_idx, f, seed=3) for f in (0.1, 0.5))
    assert np.bincount(labels[small]).tolist() == [5, 3, 2]
    assert np.bincount(labels[large]).tolist() == [25, 15, 10]
    assert set(small) <= set(large), "one seed's subsets are nested"
    assert not np.array_equal(small, train_subset(labels, train_idx, 0.1, seed=4)), "each seed draws its own"
    assert np.bincount(labels[train_subset(labels, train_idx, 0.01, seed=0)]).tolist() == [1, 1, 1]


def test_training_uses_the_prepared_folder_the_workflow_passes_and_prepares_nothing(env, monkeypatch):
    folder = data.prepare("covid_radiography", image_size=32, n_per_class=6, progress=False)

    def refuse(*args, **kwargs):
        raise AssertionError("training prepared data although the workflow passed its folder")

    monkeypatch.setattr(data, "prepare", refuse)
    monkeypatch.setattr(data, "validate_prep_params", refuse)
    spec = training.collect({**TINY, "epochs": 1, "prepared_dir": str(folder),
                             "run_dir": str(env / "runs" / "given-prepared")})
    run_dir = training.train(spec)
    recorded = json.loads((run_dir / "params.json").read_text())
    assert recorded["prepared_fingerprint"] == json.loads((folder / "info.json").read_text())["fingerprint"]
    with pytest.raises(FileNotFoundError, match=r"prepared_dir.*no-such.*no info\.json"):
        training.train(**TINY, prepared_dir=str(env / "no-such"), run_dir=str(env / "runs" / "nowhere"))
    with pytest.raises(TypeError, match="no other parameters"):
        training.train(spec, epochs=3)


def test_early_stopping_can_watch_the_validation_accuracy(env, monkeypatch):
    """The loss grows overconfident while the accuracy still climbs: watching val_acc goes on."""
    val_loss = [1.0, 0.9, 1.1, 1.2, 1.3, 1.4]
    val_correct = [1, 2, 2, 3, 3, 3]  # of 4 validation images
    calls = []

    def scripted(self, model, part):
        calls.append(part)
        return torch.tensor(val_loss[len(calls) - 1]), torch.tensor(val_correct[len(calls) - 1])

    monkeypatch.setattr(training._Engine, "evaluate", scripted)
    by_loss = train(epochs=6, early_stopping_patience=2, run_dir=str(env / "runs" / "watch-loss"))
    assert json.loads((by_loss / "metrics.json").read_text())["epochs_run"] == 4   # stopped at epoch 4
    calls.clear()
    by_acc = train(epochs=6, early_stopping_patience=2, early_stopping_monitor="val_acc",
                   run_dir=str(env / "runs" / "watch-acc"))
    metrics = json.loads((by_acc / "metrics.json").read_text())
    assert metrics["epochs_run"] == 6 and metrics["best_epoch"] == 4 and metrics["early_stopping_monitor"] == "val_acc"
    assert metrics["stopped_by"] == "early_stopping"    # epochs 5 and 6 did not beat epoch 4


def test_a_run_older_than_a_parameter_reads_as_its_default(env):
    """A folder trained before early_stopping_monitor, bf16 and bn_subset existed is the same run
    at their defaults, and another run when a new value is asked for."""
    run_dir = train(epochs=1, run_dir=str(env / "runs" / "older"))
    params = json.loads((run_dir / "params.json").read_text())
    for newer in ("early_stopping_monitor", "bf16", "bn_subset", "protocol", "tuning"):
        params.pop(newer)
    (run_dir / "params.json").write_text(json.dumps(params))
    assert training.stale({**TINY, "epochs": 1, "run_dir": str(run_dir)}) == ""
    changed = training.stale({**TINY, "epochs": 1, "run_dir": str(run_dir), "early_stopping_monitor": "val_acc"})
    assert "early_stopping_monitor: 'val_loss' there, 'val_acc' now" in changed


def test_the_code_is_dirty_when_it_differs_from_the_commit_not_when_records_do(tmp_path, monkeypatch):
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "records").mkdir()
    (tmp_path / "records" / "manifest.json").write_text("{}")
    git("add", "-A")
    git("-c", "user.email=a@b", "-c", "user.name=a", "commit", "-qm", "first")
    monkeypatch.setattr(training, "_REPO", tmp_path)
    (tmp_path / "records" / "manifest.json").write_text('{"runs": 1}')   # a stage exported
    (tmp_path / "records" / "new.csv").write_text("a\n")
    commit, dirty = training.git_state()
    assert len(commit) == 40 and dirty is False
    (tmp_path / "code.py").write_text("x = 2\n")
    assert training.git_state()[1] is True
