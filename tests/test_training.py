"""Parameter checks, the training engine, resume after kill -9, init_from, and train.ipynb."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import data, models, training, weights

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
    history = pd.read_csv(run_dir / "history.csv").drop(columns=["seconds", "checkpoint_seconds"])
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

BAD = [
    ({"bogus": 1}, "unknown parameter(s) 'bogus'; allowed: dataset, data_dir, arch"),
    ({"arch": "resnet50"}, "'arch' must be one of 'resnet18', 'vgg11', 'vgg16', 'alexnet'"),
    ({"dataset": "mnist"}, "'dataset' must be one of 'covid_radiography', 'ct_kidney'"),
    ({"head": "dense"}, "'head' must be one of 'replace', 'dense1024'"),
    ({"pretrained": "false"}, "'pretrained' must be True or False.*`-p pretrained False`"),
    ({"force": "yes"}, "'force' must be True or False"),
    ({"balance": 1}, "'balance' must be True or False"),
    ({"epochs": 0}, "'epochs' must be an integer >= 1; got 0"),
    ({"epochs": 2.5}, "'epochs' must be an integer >= 1; got 2.5"),
    ({"batch_size": 0}, "'batch_size' must be an integer >= 1"),
    ({"seed": True}, "'seed' must be an integer >= 0"),
    ({"lr": 0}, "'lr' must be a finite number > 0"),
    ({"lr": "1e-4"}, "'lr' must be a finite number > 0; got '1e-4'"),
    ({"early_stopping_patience": -1}, "'early_stopping_patience' must be an integer >= 0"),
    ({"arch": "alexnet", "image_size": 62}, "'image_size' must be at least 63 px for alexnet"),
    ({"arch": "vgg16", "image_size": 31}, "'image_size' must be at least 32 px for vgg16"),
    ({"normalize": "minmax"}, "'normalize' must be one of 'dataset', 'imagenet', 'paper_a'"),
    ({"split": "kfold"}, "'split' must be one of 'random', 'grouped'"),
    ({"n_per_class": 2}, "'n_per_class' must be an integer >= 5"),
    ({"device": "tpu"}, "'device' must be one of 'auto', 'cpu', 'cuda', 'cuda:N', 'mps'"),
    ({"compile": "yes"}, "'compile' must be 'auto', True or False"),
    ({"init_from": "no/such/best.pt"}, "'init_from' must be '' or the path of another run's best.pt"),
    ({"data_dir": 3}, "'data_dir' must be a string"),
]


@pytest.mark.parametrize("bad,message", BAD, ids=[next(iter(b)) + "=" + repr(next(iter(b.values())))
                                                  for b, _ in BAD])
def test_bad_parameters_are_named(env, bad, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        training.validate_params({"pretrained": False, **bad})


def test_valid_parameters_are_filled_and_normalised(env):
    params = training.validate_params({"pretrained": False, "lr": 1, "device": "cpu"})
    assert list(params) == list(training.PARAM_NAMES)
    assert params["lr"] == 1.0 and isinstance(params["lr"], float)
    assert params["epochs"] == 20 and params["batch_size"] == 16 and params["image_size"] == 128
    with pytest.raises(ValueError, match="'data_dir' must be '' \\(synthetic data\\) or an existing folder"):
        training.validate_params({"pretrained": False, "data_dir": str(env / "no-such-folder")})


def test_collect_rejects_names_papermill_injected_that_are_not_parameters():
    before = {"training", "In", "Out"}
    namespace = {k: None for k in before} | {"_names_before_parameters": before,
        "arch": "resnet18", "pretrained": False, "_7": "an output", "_i8": "an input",
        "np": np, "helper": print}
    assert training.collect(namespace, before=before)["arch"] == "resnet18"
    with pytest.raises(ValueError, match="unknown parameter\\(s\\) 'bogus'"):
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
    model, params, prepared = training.load_run(tiny_run)
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
        training.load_run(copy)


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
    with pytest.raises(ValueError, match="other parameters \\(lr: 0.0001 there, 0.001 now\\)"):
        train(epochs=3, lr=1e-3, run_dir=str(tiny_run))
    forced = train(epochs=1, force=True, run_dir=str(env / "runs" / "tiny-again"))
    assert pd.read_csv(forced / "history.csv")["epoch"].tolist() == [1]


# A child process that trains ``params`` and kills itself at ``kill_epoch``.
_KILL_PREAMBLE = textwrap.dedent("""
    import json, os, signal, sys
    import torch
    torch.set_num_threads(1)
    from helpers import training
    params, kill_epoch = json.loads(sys.argv[1]), int(sys.argv[2])
""")

KILLER = _KILL_PREAMBLE + textwrap.dedent("""
    real_epoch = training._Engine.train_epoch

    def train_epoch(self, model, optimizer, seed, epoch, bar):
        loss = real_epoch(self, model, optimizer, seed, epoch, bar)
        if epoch == kill_epoch:  # a crash after training this epoch, before its checkpoint
            os.kill(os.getpid(), signal.SIGKILL)
        return loss

    training._Engine.train_epoch = train_epoch
    real_submit = training._CheckpointWriter.submit

    def submit(self, *args):  # the previous epoch's files are on disk when the crash comes
        real_submit(self, *args)
        self.wait()

    training._CheckpointWriter.submit = submit
    training.train(**params)
""")

MID_WRITE_KILLER = _KILL_PREAMBLE + textwrap.dedent("""
    real_save = training._atomic_save

    def atomic_save(obj, path):
        if path.name == "last.pt" and obj["epoch"] == kill_epoch:   # half a file, then a crash
            path.with_name(f".{path.name}.tmp{os.getpid()}").write_bytes(b"partial")
            os.kill(os.getpid(), signal.SIGKILL)
        real_save(obj, path)

    training._atomic_save = atomic_save
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
    def disk_full(obj, path):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(training, "_atomic_save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        training.train(**{**TINY, "epochs": 2, "run_dir": str(env / "runs" / "disk-full")})
    assert not (env / "runs" / "disk-full" / "metrics.json").exists()


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
    assert history["val_acc"].tolist() == [0.5, 0.75, 0.75, 0.5]
    assert metrics["best_epoch"] == 2 and metrics["best_val_acc"] == 0.75 and torch.load(run_dir / "best.pt", weights_only=True)["epoch"] == 2
    assert metrics["final_val_loss"] == pytest.approx(0.91)


# ---------------------------------------------------------------- init_from

def test_init_from_loads_the_backbone_and_rejects_other_archs(env):
    source_dir = train(arch="resnet18", dataset="ct_kidney", epochs=1,
                                run_dir=str(env / "runs" / "kidney-source"))
    best = source_dir / "best.pt"
    source = torch.load(best, weights_only=True)["model"]
    assert source["fc.weight"].shape[0] == 4  # kidney: 4 classes

    params = training.validate_params({**TINY, "arch": "resnet18", "init_from": str(best)})
    assert training.default_run_dir(params) == Path("runs/covid_radiography/resnet18-from-ct_kidney-s0")
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
    assert found == training.DEFAULTS
    assert list(found) == list(training.PARAM_NAMES)


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

    # planted "ImageNet" weights under torchvision's file name in this module's TORCH_HOME
    state = models.get_model("mobilenet_v3_small", weights=False, num_classes=1000).state_dict()
    planted = weights.expected_path("mobilenet_v3_small")
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
    assert "unknown parameter(s) 'bogus'" in done.stderr
    assert not (env / "runs" / "never").exists()
