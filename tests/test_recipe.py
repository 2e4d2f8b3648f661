"""The standard recipe's pieces: per-image augmentation, AdamW, the warm-up and cosine schedule,
each arm's own normalisation, and the linear probe's features computed once."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import types

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import augment, data, models, training
from helpers import params as params_mod

from test_training import KILLER, TINY, run_files, train  # noqa: F401  (env fixture below)
from test_training import env  # noqa: F401

RECIPE = dict(augment=True, optimizer="adamw", weight_decay=0.05, lr_schedule="cosine", warmup_epochs=1,
              lr=1e-3)


def _draw(n=8, seed=0, **fields):
    return augment.draw(augment.Augmentation(**fields), n, torch.Generator().manual_seed(seed))


def test_every_image_draws_its_own_parameters_and_the_same_seed_draws_the_same():
    a, b, c = _draw(seed=0), _draw(seed=0), _draw(seed=1)
    for key in a:
        assert torch.equal(a[key], b[key]), key
        assert len(torch.unique(a[key])) == 8, key           # one draw per image, not per batch
        assert not torch.equal(a[key], c[key]), key
    assert (a["width"] > 0).all()                           # no flip unless the spec allows it
    flips = _draw(n=200, hflip=True)["width"]
    assert (flips < 0).any() and (flips > 0).any()
    many = _draw(n=2000)
    area = many["width"] * many["height"]
    assert area.min() >= 0.7 - 1e-9 and area.max() <= 1 and area.max() > 0.98
    assert many["width"].max() <= 1 + 1e-9 and many["height"].max() <= 1 + 1e-9   # the crop fits
    ratio = many["width"] / many["height"]
    assert ratio.min() >= 3 / 4 - 1e-9 and ratio.max() <= 4 / 3 + 1e-9
    assert (many["cx"].abs() <= 1 - many["width"] + 1e-9).all()


def test_neutral_parameters_leave_the_image_as_it_is_and_a_crop_zooms_in():
    x = torch.rand(2, 3, 32, 32)
    one, zero = torch.ones(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    neutral = {"width": one, "height": one, "cx": zero, "cy": zero, "angle": zero,
               "brightness": one, "contrast": one}
    assert torch.allclose(augment.apply(x, neutral), x, atol=1e-5)
    # the centre half of the image (area 0.25) fills the output: its middle pixel comes from the input's middle
    ramp = torch.linspace(0, 1, 32).view(1, 1, 1, 32).expand(1, 3, 32, 32).contiguous()
    half = {**{k: v[:1] for k, v in neutral.items()}, "width": one[:1] * 0.5, "height": one[:1] * 0.5}
    out = augment.apply(ramp, half)
    assert out[0, 0, 16, 0] > 0.2 and out[0, 0, 16, -1] < 0.8       # edges of the crop, not of the image
    assert torch.allclose(out[0, 0, 16, 15:17].mean(), ramp[0, 0, 16, 15:17].mean(), atol=0.02)


def test_augmented_batches_stay_in_range_and_differ_per_image():
    x = torch.rand(1, 3, 32, 32).expand(6, 3, 32, 32).contiguous()   # one image six times
    out = augment.apply(x, _draw(n=6))
    assert out.min() >= 0 and out.max() <= 1
    flat = out.flatten(1)
    assert all(not torch.allclose(flat[i], flat[j]) for i in range(6) for j in range(i + 1, 6))


def test_the_dataset_spec_says_what_augments_and_chest_xrays_are_never_flipped():
    for name, spec in data.DATASETS.items():
        assert isinstance(spec.augment, augment.Augmentation), name
    assert data.get_spec("covid_radiography").augment.hflip is False


def test_the_schedule_warms_up_then_falls_to_zero_at_the_budget():
    params = {"lr": 1.0, "epochs": 4, "warmup_epochs": 1, "lr_schedule": "cosine"}
    lr_at = training.lr_schedule(params, steps_per_epoch=10)
    rates = [lr_at(e, s) for e in range(1, 5) for s in range(10)]
    assert rates[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert rates[10] == pytest.approx(1.0) and all(a >= b for a, b in zip(rates[10:], rates[11:]))
    assert rates[-1] < 0.01
    assert training.lr_schedule({"lr": 1.0, "epochs": 4}, 10) is None       # constant: untouched
    constant = training.lr_schedule({"lr": 1.0, "epochs": 4, "warmup_epochs": 1}, 10)
    assert constant(1, 4) == pytest.approx(0.5) and constant(3, 0) == 1.0


def test_adamw_decays_weights_but_not_biases_and_norms():
    model = models.get_model("resnet18", weights=False, num_classes=3, image_size=32)
    opt = training.make_optimizer(model, {"lr": 1e-3, "optimizer": "adamw", "weight_decay": 0.05},
                                  torch.device("cpu"))
    assert isinstance(opt, torch.optim.AdamW)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert all(t.ndim > 1 for t in decay["params"]) and all(t.ndim == 1 for t in no_decay["params"])
    assert any(t is model.bn1.weight for t in no_decay["params"])
    plain = training.make_optimizer(model, {"lr": 1e-3}, torch.device("cpu"))
    assert type(plain) is torch.optim.Adam


@pytest.mark.parametrize("arm,expected", [("imagenet", "imagenet"), ("linear_probe", "imagenet"),
                                          ("scratch", "dataset")])
def test_each_arm_gets_its_own_normalisation_and_the_record_says_which(arm, expected):
    p = params_mod.train_params({**TINY, "arch": "efficientnet_lite0", **params_mod.ARMS[arm].fields,
                                 "normalize": "weights"})
    assert p.normalize == expected
    assert params_mod.train_params({**TINY, "normalize": "weights"}).normalize == "dataset"  # TINY: scratch
    prepared = types.SimpleNamespace(mean=(0.52,) * 3, std=(0.25,) * 3)
    wanted = models.MINUS_ONE_ONE if expected == "imagenet" else ((0.52,) * 3, (0.25,) * 3)
    assert training.run_stats(p.model_dump(), prepared) == wanted


def test_a_recipe_run_resumed_after_kill_matches_an_uninterrupted_one(env):
    whole = train(epochs=3, **RECIPE, run_dir=str(env / "runs" / "recipe"))
    params = {**TINY, **RECIPE, "epochs": 3, "run_dir": str(env / "runs" / "recipe-killed")}
    killed = subprocess.run([sys.executable, "-c", KILLER, json.dumps(params), "3"],
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed = training.train(**params)
    assert run_files(resumed) == run_files(whole)
    history = pd.read_csv(whole / "history.csv")
    assert history["lr"].iloc[0] == pytest.approx(1e-3) and history["lr"].iloc[-1] < 1e-4   # warm-up, cosine
    plain = train(epochs=3, lr=1e-3, run_dir=str(env / "runs" / "recipe-plain"))
    assert not np.allclose(pd.read_csv(plain / "history.csv")["train_loss"], history["train_loss"])


def test_validation_and_test_images_are_never_augmented(env):
    prepared = data.load_prepared(data.prepare(dataset="covid_radiography", image_size=32, n_per_class=6))
    p = params_mod.train_params({**TINY, **RECIPE}).model_dump()
    on = training._Engine(prepared, p, torch.device("cpu"))
    off = training._Engine(prepared, {**p, "augment": False}, torch.device("cpu"))
    assert on.augment is not None and off.augment is None
    torch.manual_seed(0)
    model = models.get_model(TINY["arch"], weights=False, num_classes=3, image_size=32)
    for part in ("val", "test"):
        assert torch.equal(on.logits(model, part), off.logits(model, part))


def test_the_probe_computes_its_features_once_and_predicts_as_the_whole_network_does(env, monkeypatch):
    calls = []
    real = training._Engine.cache_features
    monkeypatch.setattr(training._Engine, "cache_features",
                        lambda self, *a: (calls.append(1), real(self, *a))[1])
    run_dir = train(arch="efficientnet_lite0", pretrained=True, freeze_backbone=True, epochs=3,
                    normalize="weights", run_dir=str(env / "runs" / "probe-cached"))
    assert calls == [1]
    model, params, prepared = training.load_model(run_dir)
    assert params["normalize"] == "imagenet"
    predictions = pd.read_csv(run_dir / "predictions.csv")
    idx = np.flatnonzero(np.asarray(prepared.split) == "test")
    x = training.normalize(torch.from_numpy(prepared.images[idx]), *models.MINUS_ONE_ONE)
    with torch.no_grad():
        probs = torch.softmax(model(x), 1).numpy()
    assert np.allclose(probs, predictions[[c for c in predictions if c.startswith("prob_")]].to_numpy(), atol=1e-4)
    # an augmented probe runs its backbone every step: nothing is cached
    calls.clear()
    train(arch="efficientnet_lite0", pretrained=True, freeze_backbone=True, epochs=1, augment=True,
          run_dir=str(env / "runs" / "probe-augmented"))
    assert calls == []
    assert math.isfinite(json.loads((run_dir / "metrics.json").read_text())["test_accuracy"])
