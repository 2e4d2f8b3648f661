"""The training engine and the run folder (see CONTRACTS.md); parameters are helpers.params'.

``train(**params)`` prepares the data, trains, and leaves a complete run folder at
``RunId.run_dir()``, ``runs/[<experiment>/]<dataset>/<arch>[_<head>]-<arm>[-grouped]-s<seed>/``::

    params.json history.csv best.pt last.pt predictions.csv metrics.json

Design notes:
- The prepared uint8 images are moved to the device once; each batch is gathered and
  normalised there. Neither paper augmented; with ``augment`` every training image draws its own
  crop, rotation and intensity jitter on the device (helpers.augment, as the dataset's spec
  allows), from the epoch's generator. ``optimizer``, ``weight_decay``, ``lr_schedule`` and
  ``warmup_epochs`` give the standard recipe (AdamW, warm-up, cosine; the rate is a pure function
  of the step, so a resumed run needs no scheduler state). channels_last memory everywhere
  (on this project's 2-core CPU it made MobileNetV3 epochs 15-30 % faster and the others no
  slower); fused Adam (one kernel for every tensor, CPU included); on CUDA also bf16 autocast
  and ``torch.compile``; bf16 autocast on a CPU with native bf16 for the archs the table marks
  (``ArchSpec.cpu_bf16``). Losses are summed on the device and read once per epoch.
- Each epoch's shuffle comes from a generator seeded with (seed, epoch), and the global RNG
  state (dropout) is checkpointed, so a resumed run repeats an uninterrupted one exactly on CPU
  (deterministic algorithms on; the same number of torch threads, since it sets the order of
  float sums). On an H100 a resumed run also matched, but CUDA promises no bitwise equality.
- Before every evaluation, batch-norm running statistics are recomputed over the train split
  (``recompute_bn``; ``torch.optim.swa_utils.update_bn``): with BN momentum 0.01
  (MobileNetV3, EfficientNet) and a few hundred steps, the running statistics lag the weights
  and a scratch network can score chance in eval mode while it learns in train mode. Cost: one
  no-grad pass over the train split per epoch (``bn_seconds`` in history.csv), or over a fixed
  draw of ``bn_subset`` training images.
- The linear-probe arm (``freeze_backbone``) trains only the head; the backbone stays in eval
  mode with ImageNet's statistics. Without augmentation its features are computed once per run
  (``cache_features``): an epoch trains the head alone (14-17 s a probe epoch before, well under
  one second after, on 1,800 chest X-rays on 2 cores).
- The best epoch is chosen by validation accuracy (ties keep the earlier epoch) and scores
  the test split. Early stopping watches validation loss as Keras does (paper B), or that
  accuracy (``early_stopping_monitor``); ``metrics.json``'s ``stopped_by`` says how it ended.
- Checkpoints hold only tensors and plain Python values (``torch.load(weights_only=True)``)
  and are written atomically after every epoch, by a background thread while the next epoch
  trains; ``metrics.json`` is written last.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import re
import subprocess
import time
import types
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from . import atomic, data, models, weights
from .engine import (Engine as _Engine, _batches, _compile, _epoch_seed, lr_schedule,  # noqa: F401
                     make_optimizer, normalize, resolve_device, run_stats, train_subset)
from .checkpoints import (RESTART, RESTART_BOTH, CheckpointError, CheckpointWriter, first_sentence, rng_state,
                          read_checkpoint, set_rng_state, to_host)
from . import metrics as metrics_mod
from . import params as params_mod
from .params import TrainParams

# Executed notebooks are rendered statically in the book, where text bars read better than
# widgets; tqdm.auto falls back to text when ipywidgets is absent, so silence its warning.
warnings.filterwarnings("ignore", message="IProgress not found")
from tqdm.auto import tqdm  # noqa: E402

# Every default and choice lives in helpers.params.TrainParams.
PARAM_NAMES = tuple(TrainParams.model_fields)

# Not part of a run's identity: a folder may be reached by another spelling of run_dir, and
# the prepared data is compared by its fingerprint, not by where it lies.
_NOT_COMPARED = params_mod.role_fields(TrainParams, "location")
RUN_FILES = ("params.json", "history.csv", "best.pt", "last.pt", "predictions.csv", "metrics.json")
HISTORY_COLUMNS = ("epoch", "train_loss", "val_loss", "val_acc", "seconds", "checkpoint_seconds",
                   "bn_seconds", "lr")
_REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- parameters


def validate_params(values: dict) -> dict:
    """Fill defaults and check every parameter before any work is done.

    Raises :class:`helpers.params.ParameterError` (a ValueError) naming the parameter, its value
    and the allowed ones, and :class:`helpers.weights.MissingWeightsError` when ImageNet
    weights are needed but cannot be had.
    """
    return _validated(values).model_dump()


def _validated(values: dict) -> TrainParams:
    p = params_mod.train_params(values)
    try:   # the dataset table knows it, or an experiment registered it as one of one's own
        data.get_spec(p.dataset)
    except ValueError as e:
        raise params_mod.ParameterError(f"parameter 'dataset' {str(e).removeprefix('dataset ')}") from None
    if not p.prepared_dir:  # by hand: data prep's own checks (data_dir must hold the class folders)
        data.validate_prep_params(**p.prep().model_dump(exclude={"out_dir", "progress"}))
    if p.pretrained:
        weights.require(models.spec(p.arch).weights)  # names the missing file, before any work
    return p


# Names IPython itself defines as cells run (_, __, _i, _i3, _3, ...).
_IPYTHON_NAMES = re.compile(r"_{1,3}|_i{1,3}|_i?\d+|_ih|_oh|_dh|In|Out|get_ipython|exit|quit|open")


def collect(namespace: dict, before=()) -> TrainParams:
    """Validated parameters from a notebook's globals, as the object :func:`train` takes.

    ``before`` is the set of global names that existed before the parameters cell; every
    name defined since (the parameters cell and papermill's injected cell) must be a known
    parameter, so a mistyped ``-p bogus 1`` stops the notebook instead of being ignored.
    """
    snapshot, before = before, set(before)
    new = {k: v for k, v in namespace.items() if k not in before and v is not snapshot  # the snapshot's own name
           and not _IPYTHON_NAMES.fullmatch(k)
           and not (k.startswith("__") and k.endswith("__"))
           and not isinstance(v, types.ModuleType) and not callable(v)}  # papermill injects values only
    return _validated(new)


def _frozen(params: dict) -> bool:
    return bool(params.get("freeze_backbone"))


def train_mode(model: nn.Module, params: dict) -> None:
    """Train mode, except a frozen backbone (linear probe): it keeps ImageNet's BN statistics
    and no dropout, so only the head learns."""
    model.train()
    if _frozen(params):
        head = tuple(prefix.rstrip(".") for prefix in models.head_prefixes(params["arch"], params["head"]))
        for name, module in model.named_modules():
            if name and not name.startswith(head):
                module.eval()


# ---------------------------------------------------------------- small pieces

def _write_epoch(run_dir: Path, last: dict, best: dict | None, history: list[dict]) -> None:
    atomic.save_torch(run_dir / "last.pt", last)
    if best is not None:
        atomic.save_torch(run_dir / "best.pt", best)
    _write_history(run_dir, history)


def git_state() -> tuple[str | None, bool | None]:
    """(commit, dirty) of the repository holding this package; (None, None) outside git. Dirty
    means the code differs from the commit: ``records/`` holds outputs that a study commits stage
    by stage, and an export between two stages changes no code."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=_REPO, capture_output=True,
                                text=True, timeout=10)
        if commit.returncode != 0:
            return None, None
        status = subprocess.run(["git", "status", "--porcelain", "--", ".", ":(exclude)records"], cwd=_REPO,
                                capture_output=True, text=True, timeout=30)
        dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
        return commit.stdout.strip(), dirty
    except (OSError, subprocess.SubprocessError):
        return None, None


def _relative(path: Path) -> str:
    path = Path(path).resolve()
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


@contextlib.contextmanager
def _deterministic(enabled: bool):
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(enabled or previous)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


# ---------------------------------------------------------------- model pieces

def _load_backbone(model: nn.Module, arch: str, head: str, init_from: str) -> list[str]:
    """Copy every non-head tensor from another run's checkpoint; the head stays freshly initialised."""
    ckpt = read_checkpoint(init_from)
    source = ckpt["params"]
    if source.get("arch") != arch:
        raise ValueError(f"init_from {init_from} holds a {source.get('arch')!r} model, not {arch!r}")
    skip = models.head_prefixes(arch, head) + models.head_prefixes(arch, source.get("head", "replace"))
    target = model.state_dict()
    wanted = [k for k in target if not k.startswith(skip)]
    missing = [k for k in wanted if k not in ckpt["model"]]
    wrong = [k for k in wanted if k in ckpt["model"] and ckpt["model"][k].shape != target[k].shape]
    if missing or wrong:
        raise ValueError(f"init_from {init_from}: backbone does not fit this {arch}/{head} model "
                         f"(missing: {missing[:5]}, shape mismatch: {wrong[:5]})")
    model.load_state_dict({k: ckpt["model"][k] for k in wanted}, strict=False)
    return wanted


def _build(params: dict, num_classes: int, device: torch.device) -> nn.Module:
    model = models.get_model(params["arch"], weights=params["pretrained"], head=params["head"],
                             num_classes=num_classes, image_size=params["image_size"])
    if params["init_from"]:
        _load_backbone(model, params["arch"], params["head"], params["init_from"])
    if _frozen(params):
        for name, tensor in model.named_parameters():
            tensor.requires_grad_(models.is_head_key(name, params["arch"], params["head"]))
    return model.to(device, memory_format=torch.channels_last)


# ---------------------------------------------------------------- run folder

def _identity(params: dict) -> dict:
    return {k: params[k] for k in PARAM_NAMES if k not in _NOT_COMPARED}


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), as oneDNN reports it."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_bf16(wanted, device: torch.device, arch: str) -> bool:
    """bf16 autocast for this run: "auto" = CUDA, or a native-bf16 CPU for archs measured faster."""
    if wanted != "auto":
        return bool(wanted)
    return device.type == "cuda" or (device.type == "cpu" and models.spec(arch).cpu_bf16 and cpu_has_bf16())


def _conflict(run_dir: Path, run_params: dict) -> str:
    """How run_dir's run differs from run_params (other parameters or other prepared data);
    "" when it holds this run, or nothing."""
    params_file = run_dir / "params.json"
    if not params_file.exists():
        leftovers = [f for f in RUN_FILES if (run_dir / f).exists()]
        return f"it holds {leftovers} but no params.json, so it cannot be resumed safely" if leftovers else ""
    old = json.loads(params_file.read_text())
    new = {**_identity(run_params), "prepared_fingerprint": run_params["prepared_fingerprint"]}
    old = params_mod.as_recorded(old, cuda=run_params["device"] == "cuda")
    diff = {k: (old.get(k, "<absent>"), v) for k, v in new.items() if old.get(k, "<absent>") != v}
    return "; ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in diff.items())


def _resolve(spec: TrainParams) -> tuple[dict, Path, Path, torch.device]:
    """(run parameters as recorded in params.json, run folder, prepared folder, device)."""
    p = spec.model_dump()
    device = resolve_device(p["device"])
    run_id = spec.run_id()
    run_dir = spec.resolved_run_dir()
    if spec.prepared_dir:  # the workflow prepared it (and reruns this run when it changes)
        prepared_dir = Path(spec.prepared_dir)
        if not (prepared_dir / "info.json").is_file():
            raise FileNotFoundError(f"parameter 'prepared_dir': {prepared_dir} is not a complete prepared "
                                    f"folder (no info.json); run data prep first, or pass '' to prepare here")
    else:
        prepared_dir = data.prepare(**spec.prep().model_dump(exclude={"out_dir", "progress"}))
    info = json.loads((prepared_dir / "info.json").read_text())
    if info.get("dataset", p["dataset"]) != p["dataset"]:
        raise ValueError(f"parameter 'prepared_dir': {prepared_dir} holds {info['dataset']}, not {p['dataset']}")
    run_params = {**p, "device": device.type,
                  "compile": device.type == "cuda" if p["compile"] == "auto" else p["compile"],
                  "bf16": resolve_bf16(p["bf16"], device, p["arch"]),
                  "run_dir": str(run_dir), "arm": run_id.arm, "run": run_id.as_record(),
                  "prepared_dir": _relative(prepared_dir), "class_names": list(info["class_names"]),
                  "prepared_fingerprint": info.get("fingerprint"), "synthetic": bool(info.get("synthetic"))}
    return run_params, run_dir, prepared_dir, device


def stale(values: dict) -> str:
    """Why the run folder of these parameters holds another run (other parameters, or other
    prepared data); "" when it holds this run, complete or interrupted, or nothing. The workflow
    replaces such a run: its experiment file or its data changed since it was trained."""
    run_params, run_dir, _, _ = _resolve(params_mod.train_params(values))
    return _conflict(run_dir, run_params)


def _write_history(run_dir: Path, history: list[dict]) -> None:
    frame = pd.DataFrame(history, columns=list(HISTORY_COLUMNS))
    atomic.write_text(run_dir / "history.csv", frame.to_csv(index=False))


def _finish(run_dir: Path, engine: _Engine, model: nn.Module, prepared, run_params: dict,
            state: dict, device: torch.device) -> None:
    best = read_checkpoint(run_dir / "best.pt", map_location=device, fix=RESTART_BOTH)
    model.load_state_dict(best["model"])
    probs = torch.softmax(engine.logits(model, "test"), dim=1).cpu().numpy().astype(np.float64)
    labels = engine.y["test"].cpu().numpy()
    pred = probs.argmax(1)
    class_names = list(prepared.class_names)
    paths = np.asarray(prepared.paths)[engine.index["test"]]
    frame = pd.DataFrame({"path": paths, "label": labels, "pred": pred})
    for k in range(len(class_names)):
        frame[f"prob_{k}"] = probs[:, k]
    atomic.write_text(run_dir / "predictions.csv", frame.to_csv(index=False))

    history = state["history"]
    scores = metrics_mod.test_scores(labels, probs, class_names)  # the one place metrics are computed
    commit, dirty = git_state()
    metrics = {
        "class_names": class_names,
        **{k: scores[k] for k in ("test_accuracy", "test_auc_macro", "test_auc_per_class", "confusion_matrix")},
        "first_epoch_train_loss": history[0]["train_loss"],
        "first_epoch_val_acc": history[0]["val_acc"],
        "final_train_loss": history[-1]["train_loss"],
        "final_val_loss": history[-1]["val_loss"],
        "best_val_acc": state["best_val_acc"],
        "best_epoch": state["best_epoch"],
        "epochs_run": len(history),
        "train_seconds": float(sum(row["seconds"] for row in history)),
        "device": device.type,
        "torch_version": torch.__version__,
        "git_commit": commit,
        # beyond the contract
        "git_dirty": dirty,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "stopped_early": state["stopped_early"],
        "stopped_by": params_mod.stopped_by(run_params, state["stopped_early"]),
        "early_stopping_monitor": run_params.get("early_stopping_monitor", "val_loss"),
        "bf16": bool(run_params.get("bf16")),
        "synthetic": bool(prepared.synthetic),
        "n_test": int(len(labels)),
        "notes": scores["notes"],
    }
    atomic.write_json(run_dir / "metrics.json", metrics)


def train(spec: TrainParams | None = None, /, **values) -> Path:
    """Train one run into its run folder and return the folder: ``train(params)`` with the
    object :func:`collect` checked, or ``train(arch=..., ...)`` by hand.

    A complete run with the same parameters is skipped unless ``force=True``; an interrupted
    one resumes from its last finished epoch; a folder holding other parameters is refused.
    """
    if spec is None:
        spec = _validated(values)
    elif values:
        raise TypeError(f"train(params) takes no other parameters; got {sorted(values)}")
    run_params, run_dir, prepared_dir, device = _resolve(spec)
    if spec.force:
        for name in RUN_FILES:
            (run_dir / name).unlink(missing_ok=True)
    elif conflict := _conflict(run_dir, run_params):
        raise ValueError(f"{run_dir} holds a run with other parameters or data ({conflict}). Not mixing "
                         f"runs: choose another run_dir, or pass force=True to replace it")
    elif (run_dir / "metrics.json").exists():
        print(f"{run_dir}: complete run with these parameters and data, skipped (force=True retrains)")
        return run_dir

    prepared = data.load_prepared(prepared_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not (run_dir / "params.json").exists():
        atomic.write_json(run_dir / "params.json", run_params)

    with _deterministic(device.type == "cpu"):
        _fit(run_dir, run_params, prepared, device)
    return run_dir


def _fit(run_dir: Path, run_params: dict, prepared, device: torch.device) -> None:
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")
    torch.manual_seed(run_params["seed"])
    num_classes = len(prepared.class_names)
    model = _build(run_params, num_classes, device)
    optimizer = make_optimizer(model, run_params, device)
    engine = _Engine(prepared, run_params, device)
    schedule = lr_schedule(run_params, engine.n_batches())

    state = {"epoch": 0, "history": [], "best_epoch": 0, "best_val_acc": -1.0,
             "es_best_val_loss": math.inf, "es_best_val_acc": -1.0, "es_wait": 0, "stopped_early": False}
    last_file, best_file = run_dir / "last.pt", run_dir / "best.pt"
    atomic.remove_stale_tmp(run_dir)
    if last_file.exists():
        last = read_checkpoint(last_file, map_location=device, fix=RESTART)
        model.load_state_dict(last["model"])
        optimizer.load_state_dict(last["optimizer"])
        state = {k: last.get(k, v) for k, v in state.items()}  # a key newer than the file: its start value
        set_rng_state(last["rng"], device)
        # A kill between writing last.pt and best.pt leaves best.pt one improvement behind (or
        # damaged); the model of that epoch is the one in last.pt. An older best model is only
        # in best.pt, which is read now rather than after the remaining epochs.
        best_on_disk = None
        if best_file.exists():
            try:
                best_on_disk = read_checkpoint(best_file, fix=(
                    f"Its model (epoch {state['best_epoch']}) is not in last.pt (epoch {state['epoch']}). "
                    f"{RESTART_BOTH}"))["epoch"]
            except CheckpointError as e:
                if state["best_epoch"] != state["epoch"]:
                    raise
                print(f"{best_file} is damaged ({first_sentence(e.__cause__)}); rewriting it from "
                      f"last.pt, which holds the same epoch's model")
        if state["best_epoch"] == state["epoch"] and best_on_disk != state["epoch"]:
            atomic.save_torch(best_file, {"model": last["model"], "params": run_params,
                                          "epoch": state["epoch"], "val_acc": state["best_val_acc"]})
        print(f"{run_dir}: resuming after epoch {state['epoch']}")

    step_model = _compile(model, run_params["compile"], device)
    # A frozen backbone keeps ImageNet's statistics; archs without BN have none to recompute.
    recompute_bn = run_params["recompute_bn"] and models.has_batchnorm(model) and not _frozen(run_params)
    if _frozen(run_params) and not run_params.get("augment"):
        engine.cache_features(model, models.head_module(model, run_params["arch"], run_params["head"]))
    epochs, patience = run_params["epochs"], run_params["early_stopping_patience"]
    overall = tqdm(total=epochs, initial=state["epoch"], desc=str(run_dir), unit="epoch")
    writer = CheckpointWriter()
    try:
        while state["epoch"] < epochs and not state["stopped_early"]:
            epoch = state["epoch"] + 1
            started = time.perf_counter()
            with tqdm(total=engine.n_batches(), desc=f"epoch {epoch}", unit="batch", leave=False,
                      mininterval=1.0) as bar:
                train_mode(model, run_params)
                train_loss = engine.train_epoch(step_model, optimizer, run_params["seed"], epoch, bar,
                                                lr_at=schedule and (lambda step, e=epoch: schedule(e, step)))
            bn_started = time.perf_counter()
            if recompute_bn:
                engine.recompute_bn(model)
            bn_seconds = time.perf_counter() - bn_started
            val_loss, val_correct = engine.evaluate(model, "val")
            train_loss, val_loss, val_correct = torch.stack([train_loss, val_loss, val_correct.float()]).tolist()
            val_acc = val_correct / len(engine.y["val"])
            row = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_acc": val_acc,
                   "seconds": time.perf_counter() - started, "bn_seconds": bn_seconds,
                   "lr": optimizer.param_groups[0]["lr"]}
            state["history"].append(row)
            state["epoch"] = epoch
            improved = val_acc > state["best_val_acc"]  # ties keep the earlier epoch
            if improved:
                state["best_epoch"], state["best_val_acc"] = epoch, val_acc
            loss_better, acc_better = val_loss < state["es_best_val_loss"], val_acc > state["es_best_val_acc"]
            state["es_best_val_loss"] = min(state["es_best_val_loss"], val_loss)
            state["es_best_val_acc"] = max(state["es_best_val_acc"], val_acc)
            watched = acc_better if run_params.get("early_stopping_monitor") == "val_acc" else loss_better
            state["es_wait"] = 0 if watched else state["es_wait"] + 1
            state["stopped_early"] = bool(patience) and state["es_wait"] >= patience

            # Training waits only for the previous epoch's files and for copying this one's
            # tensors; the disk writes overlap the next epoch.
            saving = time.perf_counter()
            writer.wait()
            last = to_host({**state, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                             "rng": rng_state(device), "params": run_params})
            row["checkpoint_seconds"] = time.perf_counter() - saving
            last["history"][-1]["checkpoint_seconds"] = row["checkpoint_seconds"]
            best = ({"model": last["model"], "params": run_params, "epoch": epoch, "val_acc": val_acc}
                    if improved else None)
            writer.submit(_write_epoch, run_dir, last, best, last["history"])
            overall.update(1)
            overall.write(f"epoch {epoch}/{epochs}: train loss {train_loss:.3f}, val loss {val_loss:.3f}, "
                          f"val acc {val_acc:.3f} ({row['seconds']:.0f} s)")   # one line: papermill --log-output
    finally:
        closing = time.perf_counter()
        writer.close()  # the last epoch's files are on disk before anything reads them
    if state["history"] and "checkpoint_seconds" in state["history"][-1]:
        state["history"][-1]["checkpoint_seconds"] += time.perf_counter() - closing
    overall.close()
    if state["stopped_early"]:
        print(f"early stopping after epoch {state['epoch']}: {run_params.get('early_stopping_monitor', 'val_loss')} did not "
              f"improve for {patience} epochs")
    _write_history(run_dir, state["history"])
    _finish(run_dir, engine, model, prepared, run_params, state, device)


# ---------------------------------------------------------------- reading runs

def load_model(run_dir: str | os.PathLike, which: str = "best", device="cpu"):
    """(eval-mode model, params.json, prepared data) of a finished or running run: its
    checkpoint, where ``metrics.load_run`` reads its records."""
    if which not in ("best", "last"):
        raise ValueError(f"which must be 'best' or 'last'; got {which!r}")
    run_dir = Path(run_dir)
    params_file = run_dir / "params.json"
    if not params_file.exists():
        raise FileNotFoundError(f"{params_file} not found: {run_dir} is not a run folder")
    params = json.loads(params_file.read_text())
    ckpt = read_checkpoint(run_dir / f"{which}.pt", map_location=device)
    model = models.get_model(params["arch"], weights=False, head=params["head"],
                             num_classes=len(params["class_names"]), image_size=params["image_size"])
    model.load_state_dict(ckpt["model"])
    model.to(device).eval()
    prepared = data.load_prepared(params["prepared_dir"])
    trained_on = params.get("prepared_fingerprint")
    if trained_on and prepared.info.get("fingerprint") != trained_on:
        raise ValueError(f"{run_dir} was trained on prepared data with fingerprint {trained_on}, but "
                         f"{params['prepared_dir']} now holds {prepared.info.get('fingerprint')} "
                         f"(prepared again with other settings?); its predictions would not match")
    return model, params, prepared


def read_metrics(run_dir: str | os.PathLike) -> dict:
    return json.loads((Path(run_dir) / "metrics.json").read_text())


def describe_run(run_dir: str | os.PathLike) -> str:
    """One line saying what was trained, flagging synthetic data."""
    params = json.loads((Path(run_dir) / "params.json").read_text())
    arms = params_mod.ARMS
    arm = (arms[params["arm"]].words if params["arm"] in arms
           else f"backbone of {params['run'].get('init_source') or params['init_from']}")
    line = (f"{params['arch']} ({params['head']} head) on {params['dataset']}, {arm}, "
            f"{params['image_size']} px, seed {params['seed']}, device {params['device']}")
    if params.get("synthetic"):
        line = "SYNTHETIC DATA (phantoms, not the Kaggle images) - " + line
    return line


def plot_history(run_dir: str | os.PathLike):
    """Loss curves and validation accuracy of one run, as a matplotlib Figure."""
    import matplotlib.pyplot as plt

    history = metrics_mod.read_history(Path(run_dir) / "history.csv")
    params = json.loads((Path(run_dir) / "params.json").read_text())
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.5))
    ax_loss.plot(history["epoch"], history["train_loss"], marker="o", label="train")
    ax_loss.plot(history["epoch"], history["val_loss"], marker="o", label="validation")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy (per image)", title="Loss")
    ax_loss.legend()
    ax_acc.plot(history["epoch"], history["val_acc"], marker="o", color="tab:green")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="Validation accuracy", ylim=(0, 1.02))
    title = f"{params['arch']} {params['arm']} on {params['dataset']}"
    if params.get("synthetic"):
        title += " (SYNTHETIC data)"
    fig.suptitle(title)
    fig.tight_layout()
    return fig
