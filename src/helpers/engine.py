"""The training engine: device-resident data, the epoch loops, the optimizer and the schedule.

``Engine`` holds a run's prepared images on the device (uint8, channels_last) and runs its
epochs; :mod:`helpers.training` builds the model, resumes, checkpoints and writes the run folder
around it. See helpers.training's docstring for the design notes (augmentation, the probe's
cached features, batch-norm recomputation, bf16, determinism).
"""
from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import augment as augment_mod
from . import data, models


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(name)


def run_stats(params: dict, prepared) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The (mean, std) 3-tuples the run normalised with ("imagenet": what the arch's weights expect)."""
    how = params.get("normalize", "dataset")
    if how == "imagenet":
        mean, std = models.spec(params["arch"]).stats
    elif how == "paper_a":
        mean, std = models.PAPER_A_STATS
    else:
        mean, std = prepared.mean, prepared.std
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def normalize(images_uint8: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 ``(N, 3, S, S)`` or ``(3, S, S)`` -> float32 ``(x / 255 - mean) / std`` on the same device."""
    x = images_uint8.float().div_(255)
    mean = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(3, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(3, 1, 1)
    return (x - mean) / std


def _batches(n: int, batch_size: int) -> list[tuple[int, int]]:
    """Batch bounds; a trailing batch of one joins the previous one, because BatchNorm
    cannot train on a single image whose last feature map is 1x1."""
    bounds = [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def train_subset(labels: np.ndarray, train_idx: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """``fraction`` of each class's training images (at least one), drawn with ``seed``: one
    permutation per class, cut at the fraction, so one seed's subsets are nested."""
    rng = np.random.default_rng([seed, 20])     # 20: its own stream, not the epochs' shuffles
    keep = []
    for k in np.unique(labels[train_idx]):
        own = train_idx[labels[train_idx] == k]
        own = own[rng.permutation(len(own))]
        keep.append(own[:max(1, int(np.ceil(fraction * len(own) - 1e-9)))])
    return np.sort(np.concatenate(keep))


class Engine:
    """Device-resident data and the per-epoch loops."""

    def __init__(self, prepared, params: dict, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"
        mean, std = run_stats(params, prepared)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(3, 1, 1)
        images, labels = prepared.images, np.asarray(prepared.labels, dtype=np.int64)
        split = np.asarray(prepared.split)
        self.x, self.y, self.index = {}, {}, {}
        for part in ("train", "val", "test"):
            idx = np.flatnonzero(split == part)
            if part == "train" and params.get("train_fraction", 1.0) < 1:
                idx = train_subset(labels, idx, params["train_fraction"], params["seed"])
            if len(idx) == 0:
                raise ValueError(f"the prepared data {params.get('prepared_dir', '')} has no "
                                 f"{part!r} images")
            self.index[part] = idx
            x = torch.from_numpy(images[idx]).to(device)  # fancy indexing copies: writable
            self.x[part] = x.contiguous(memory_format=torch.channels_last)
            self.y[part] = torch.from_numpy(labels[idx]).to(device)
        self.batch_size = params["batch_size"]
        self.augment = data.get_spec(params["dataset"]).augment if params.get("augment") else None
        self.features: dict[str, torch.Tensor] | None = None   # a frozen backbone's, see cache_features
        self.eval_batch = 512 if self.cuda else 2 * params["batch_size"]
        self.bf16 = params.get("bf16") is True and device.type in ("cuda", "cpu")  # as resolved
        n_bn = params.get("bn_subset", 0)
        self.bn_x = self.x["train"]
        if 0 < n_bn < len(self.bn_x):  # its own stream: the same images every epoch
            keep = np.sort(np.random.default_rng([params["seed"], 21]).permutation(len(self.bn_x))[:n_bn])
            self.bn_x = self.bn_x[torch.from_numpy(keep).to(device)].contiguous(memory_format=torch.channels_last)

    def _input(self, x_uint8: torch.Tensor, augment: dict | None = None) -> torch.Tensor:
        """``normalize`` in place on one float copy, in channels_last (the same numbers); with
        ``augment`` (per-image parameters of helpers.augment.draw), augmented before that."""
        x = x_uint8.to(torch.float32, memory_format=torch.channels_last).div_(255)
        if augment is not None:
            x = augment_mod.apply(x, augment).contiguous(memory_format=torch.channels_last)
        return x.sub_(self.mean).div_(self.std)

    def _autocast(self):
        if self.bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def n_batches(self) -> int:
        return len(_batches(len(self.y["train"]), self.batch_size))

    def train_epoch(self, step_model: nn.Module, optimizer, seed: int, epoch: int, bar,
                    lr_at=None) -> torch.Tensor:
        """One pass over the train split (model already in train mode); returns the mean
        per-image loss as a device tensor. ``lr_at(step)`` sets the rate of each step of this
        epoch (a schedule); None keeps the optimizer's."""
        y = self.y["train"]
        generator = torch.Generator().manual_seed(_epoch_seed(seed, epoch))
        order = torch.randperm(len(y), generator=generator)
        # every image's augmentation for the epoch, drawn after the shuffle from the same stream
        drawn = augment_mod.draw(self.augment, len(y), generator) if self.augment else None
        if drawn:   # in the epoch's order, once, so that a batch slices them without a device sync
            drawn = {k: v[order] for k, v in drawn.items()}
        order = order.to(self.device)
        total = torch.zeros((), device=self.device)
        for step, (start, stop) in enumerate(_batches(len(y), self.batch_size)):
            idx = order[start:stop]
            if lr_at is not None:
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(step)
            with self._autocast():
                if self.features is not None:   # a frozen backbone's features, computed once
                    logits = self.head_step(self.features["train"][idx])
                else:
                    aug = {k: v[start:stop] for k, v in drawn.items()} if drawn else None
                    logits = step_model(self._input(self.x["train"][idx], aug))
            loss = F.cross_entropy(logits.float(), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach() * (stop - start)
            bar.update(1)
        return total / len(y)

    # A linear probe without augmentation sees the same frozen features every epoch: they are
    # computed once per run (a forward hook on the head collects its input) and the epochs train
    # the head alone. timm applies its classifier dropout as a function call before the head,
    # not as a module, so it is applied here to the cached features in the same place.
    def cache_features(self, model: nn.Module, head: nn.Module) -> None:
        captured: list[torch.Tensor] = []
        hook = head.register_forward_hook(lambda _m, args, _out: captured.append(args[0].detach().float()))
        features = {}
        try:
            for part in ("train", "val", "test"):
                captured.clear()
                self.logits(model, part)
                features[part] = torch.cat(captured)
        finally:
            hook.remove()
        self.head, self.features = head, features
        self.head_dropout = float(getattr(model, "drop_rate", 0.0) or 0.0)

    def head_step(self, features: torch.Tensor) -> torch.Tensor:
        if self.head_dropout and self.head.training:
            features = F.dropout(features, self.head_dropout, training=True)
        return self.head(features)

    def recompute_bn(self, model: nn.Module) -> None:
        """Batch-norm running statistics recomputed over the train split or its ``bn_subset``
        (cumulative average, weights unchanged), so evaluation sees statistics that match the
        current weights."""
        from torch.optim.swa_utils import update_bn

        x = self.bn_x
        batches = (self._input(x[start:stop]) for start, stop in _batches(len(x), self.eval_batch))
        with torch.no_grad(), self._autocast():
            update_bn(batches, model)

    @torch.no_grad()
    def logits(self, model: nn.Module, part: str) -> torch.Tensor:
        model.eval()
        if self.features is not None:
            return self.head(self.features[part]).float()
        x = self.x[part]
        out = []
        for start in range(0, len(x), self.eval_batch):
            with self._autocast():
                out.append(model(self._input(x[start:start + self.eval_batch])).float())
        return torch.cat(out)

    def evaluate(self, model: nn.Module, part: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean loss, number correct) as device tensors; read once per epoch."""
        logits = self.logits(model, part)
        y = self.y[part]
        return F.cross_entropy(logits, y, reduction="sum") / len(y), (logits.argmax(1) == y).sum()


def make_optimizer(model: nn.Module, params: dict, device: torch.device) -> torch.optim.Optimizer:
    """Adam, or AdamW with weight decay on the weights of convolutions and linear layers (not
    on biases and norm layers' scales, as timm and torchvision's references do), over the
    trainable tensors; fused (one kernel for all tensors) on CUDA and CPU. On the 2-core CPU the
    per-tensor loop took ~10 % of a MobileNetV3-Small step at batch 16."""
    fused = True if device.type in ("cuda", "cpu") else None
    trainable = [t for t in model.parameters() if t.requires_grad]
    if params.get("optimizer", "adam") == "adam":
        return torch.optim.Adam(trainable, lr=params["lr"], fused=fused)
    groups = [{"params": [t for t in trainable if t.ndim > 1], "weight_decay": params["weight_decay"]},
              {"params": [t for t in trainable if t.ndim <= 1], "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=params["lr"], fused=fused)


def lr_schedule(params: dict, steps_per_epoch: int):
    """``lr_at(epoch, step)`` of the run's schedule, or None for a constant rate without warm-up.
    A pure function of the position, so a resumed run needs no scheduler state: a linear
    warm-up over ``warmup_epochs``, then constant or a cosine to zero at the last step."""
    base, warm = params["lr"], params.get("warmup_epochs", 0) * steps_per_epoch
    total = params["epochs"] * steps_per_epoch
    cosine = params.get("lr_schedule", "constant") == "cosine"
    if not warm and not cosine:
        return None

    def lr_at(epoch: int, step: int) -> float:
        t = (epoch - 1) * steps_per_epoch + step        # steps before this one
        if t < warm:
            return base * (t + 1) / warm
        if not cosine:
            return base
        return base * 0.5 * (1 + math.cos(math.pi * (t - warm) / max(1, total - warm)))
    return lr_at


def _compile(model: nn.Module, wanted, device: torch.device) -> nn.Module:
    """The model used for training steps (evaluation stays eager, in large batches).

    "reduce-overhead" (CUDA graphs): paper A's batch-16 steps are launch-bound. Measured on an
    H100 at 128 px, batch 16: resnet18 1.25 s/epoch eager -> 0.5 s (default mode: 1.4 s),
    mobilenet_v3_large 4.5 -> 1.3 s; compiling costs 20-130 s once per process.
    """
    enabled = device.type == "cuda" if wanted == "auto" else bool(wanted)
    if not enabled:
        return model
    import torch._dynamo
    torch._dynamo.config.suppress_errors = True  # fall back to eager rather than fail a run
    return torch.compile(model, mode="reduce-overhead" if device.type == "cuda" else "default")
