"""Every parameter of every stage, and the one identity of a run.

One pydantic model per entry point: :class:`PrepParams` (data prep), :class:`TrainParams`
(``training.train`` and ``train.ipynb``), and the step models at the end (evaluate, explain,
audit, summary). The experiment loader builds its grid entries from the same fields, and
the notebooks' parameter cells are tested against these models, so a default or a choice
lives here and nowhere else.

Models are strict: papermill's ``-p pretrained false`` injects the *string* ``"false"``, which
is refused rather than read as truthy. Errors name the parameter, the value and what is allowed.

:class:`RunId` is the run identity: (experiment, dataset, arch, head, arm, seed, split,
init_source). Its :meth:`RunId.run_dir` is the only place a run folder is named; it is
written into ``params.json`` (keys ``run`` and ``arm``) and read from there by everyone else.
"""

from __future__ import annotations

import functools
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from . import models

# ---------------------------------------------------------------- shared choices

# How a dataset may be split 6:2:2. "block": groups of BLOCK_SIZE consecutive file numbers stay in
# one split (CT slices of one scan). "given": the download's own train/val/test folders
# (DatasetSpec.split_dirs), never redrawn. Which datasets exist is the dataset table's to say
# (helpers.data checks the name): this module imports no dataset, so data can import it.
# "fold<k>": fold k of a FOLDS-fold cross-validation over the same blocks: the fold's blocks are
# tested, the next fold's blocks validate, the rest train (every image is tested once over the
# folds; the fold is part of the run's identity through its split).
FOLDS = 5
FOLD_SPLITS = tuple(f"fold{k}" for k in range(FOLDS))
SPLITS = ("random", "grouped", "block", "given", *FOLD_SPLITS)
MIN_PER_CLASS = 5  # a stratified 6:2:2 split needs at least 3/1/1 images per class


@dataclass(frozen=True)
class ArmSpec:
    """One arm of the ImageNet question: what a reader sees and what it sets in TrainParams."""

    title: str      # in tables and legends
    words: str      # in a run's one-line description
    color: str      # in every figure
    fields: dict    # the TrainParams values that make this arm


# The arms, in display order; every reader of an arm uses this table. "linear_probe" trains
# only the head on frozen ImageNet features (feature reuse, Matsoukas et al. 2022). An arm
# "from-<dataset>-<arm>" starts from another run's backbone (medical-to-medical transfer).
ARMS: dict[str, ArmSpec] = {
    "imagenet": ArmSpec("ImageNet", "ImageNet weights, fine-tuned", "#1f77b4",
                        {"pretrained": True, "freeze_backbone": False}),
    "linear_probe": ArmSpec("linear probe", "frozen ImageNet features, head trained", "#2ca02c",
                            {"pretrained": True, "freeze_backbone": True}),
    "scratch": ArmSpec("scratch", "random initialisation", "#d62728",
                       {"pretrained": False, "freeze_backbone": False}),
}
# The question's pair: ImageNet weights against random ones (what the papers compare, what the
# headline, the explanation page and the answer read first)
PAIR = ("imagenet", "scratch")
TRANSFER_ARM = re.compile(r"from-(?P<dataset>.+)-(?P<arm>[a-z_]+)")


def transfer_arm(source: dict) -> str:
    """The arm of a run that starts from ``source`` (another run's params)."""
    return f"from-{source.get('dataset', 'run')}-{source.get('arm', 'run')}"


def arm_title(arm: str) -> str:
    """'ImageNet', 'scratch', ...; 'from-ct_kidney-imagenet' -> 'from ct_kidney (ImageNet)'."""
    if arm in ARMS:
        return ARMS[arm].title
    m = TRANSFER_ARM.fullmatch(arm)
    return f"from {m['dataset']} ({ARMS[m['arm']].title if m['arm'] in ARMS else m['arm']})" if m else arm


def arm_order(arm: str) -> tuple[int, str]:
    """Sort key of an arm: the table's order, then from-* arms alphabetically."""
    order = list(ARMS)
    return (order.index(arm), "") if arm in ARMS else (len(order), arm)


MIN_PREP_SIZE = 16
MAX_PREP_SIZE = 1024

_STRICT = ConfigDict(strict=True, extra="forbid", frozen=True, validate_default=True)

NonNegInt = Annotated[int, Field(ge=0)]
PosInt = Annotated[int, Field(ge=1)]
# Every stage's image side: one range (an arch may need more: ArchSpec.min_image_size).
ImageSize = Annotated[int, Field(ge=MIN_PREP_SIZE, le=MAX_PREP_SIZE)]


class ParameterError(ValueError):
    """A parameter that cannot be used; the message names it, its value and what is allowed."""


def _describe(ann, metadata=()) -> str:
    """A type annotation and its bounds in words: "one of 'a', 'b'", "an integer >= 1"."""
    import typing

    origin = typing.get_origin(ann)
    if origin is Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(ann)))
    if origin in (Union, getattr(__import__("types"), "UnionType", Union)):
        return " or ".join(_describe(a) for a in typing.get_args(ann))
    if origin is Annotated:
        base, *meta = typing.get_args(ann)
        return _describe(base, [m2 for m in meta for m2 in (getattr(m, "metadata", None) or [m])])   # Field(ge=..)
    if origin is list:
        empty = any(getattr(m, "min_length", 0) for m in metadata)
        return f"a {'non-empty ' if empty else ''}list, each item {_describe(typing.get_args(ann)[0])}"
    bounds = []
    for meta in metadata:
        for key, word in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            if getattr(meta, key, None) is not None:
                bounds.append(f"{word} {getattr(meta, key)}")
    kind = {bool: "True or False (a bool)", int: "an integer", float: "a finite number",
            str: "a string"}.get(ann, getattr(ann, "__name__", str(ann)))
    return " ".join([kind, " and ".join(bounds)]).strip()


def _allowed(model: type[BaseModel], name: str) -> str:
    field = model.model_fields[name]
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    if extra.get("choices"):
        choices = extra["choices"]
        return "one of " + ", ".join(map(repr, choices))
    return _describe(field.annotation, field.metadata)


def _explain(model: type[BaseModel], error: ValidationError) -> ParameterError:
    lines: dict[str, str] = {}  # one line per parameter (a union reports each branch)
    for err in error.errors():
        name = str(err["loc"][0]) if err["loc"] else ""
        value = err.get("input")
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            lines.setdefault(name, f"unknown parameter {name!r} (value {value!r}); allowed: "
                                   f"{', '.join(model.model_fields)}")
        elif not name:  # a model-level check: its message says it all
            lines.setdefault(msg, msg)
        else:
            allowed = _allowed(model, name) if name in model.model_fields else "valid"
            item = len(err["loc"]) > 1 and isinstance(err["loc"][1], int)   # an item of a list
            got = f"item {err['loc'][1]} = {value!r}" if item else f"{value!r} ({type(value).__name__})"
            line = f"parameter {name!r} must be {allowed}; got {got}"
            if isinstance(value, str) and value.lower() in ("true", "false"):
                line += (f". papermill's `-p {name} {value}` passes a string; write "
                         f"`-p {name} {value.capitalize()}` or use `-y`")
            lines.setdefault(name, line)
    return ParameterError("; ".join(lines.values()))


def check(model: type[BaseModel], values: dict) -> BaseModel:
    """``model(**values)``, with a ValidationError turned into one readable ParameterError."""
    try:
        return model(**values)
    except ValidationError as e:
        raise _explain(model, e) from None


# ---------------------------------------------------------------- data prep

class PrepParams(BaseModel):
    """Parameters of ``data.prepare`` and ``data_prep.ipynb``."""

    model_config = _STRICT

    dataset: str = "covid_radiography"   # a name the dataset table (or an experiment) knows: data checks it
    data_dir: str = ""               # "" = the embedded synthetic phantoms; else checked by
                                     # data.find_class_root, which names the missing class folders
    image_size: ImageSize = 128
    balance: bool = True             # balance classes to the smallest (paper A)
    seed: int = Field(0, ge=0, le=2**32 - 1)  # the split seed
    split: Literal[SPLITS] = "random"
    n_per_class: int = Field(100, ge=MIN_PER_CLASS)  # synthetic images per class
    out_dir: str = ""                # "" = the default folder under data/prepared
    progress: bool = True

# ---------------------------------------------------------------- training

def _device_problem(value: str) -> str | None:
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
        return (f"parameter 'device' must be one of 'auto', 'cpu', 'cuda', 'cuda:N', 'mps'; "
                f"got {value!r}")
    if value in ("auto", "cpu"):
        return None  # nothing to ask torch (and the experiment layer stays torch-free)
    import torch

    if value.startswith("cuda"):
        if not torch.cuda.is_available():
            return f"parameter 'device' is {value!r} but CUDA is not available here; use 'auto' or 'cpu'"
        index = int(value.split(":")[1]) if ":" in value else 0
        if index >= torch.cuda.device_count():
            return (f"parameter 'device' is {value!r} but only {torch.cuda.device_count()} "
                    f"CUDA device(s) exist")
    if value == "mps" and not torch.backends.mps.is_available():
        return "parameter 'device' is 'mps' but MPS is not available here; use 'auto' or 'cpu'"
    return None


# What a parameter is, beyond its value: tagged once on the field, and every list of "machine
# details, not identity" is derived from the tags (role_fields).
#   machine:  how or where a run ran (its device, speed switches, the data folder's path);
#             a record's settings leave these out (helpers.records)
#   location: how its folder is reached; never compared when a run folder is reused
# A field with ``planned_as`` is checked when its step runs, not when the grid is planned (a
# device present, a source checkpoint readable), and the plan checks that value instead.
MACHINE = {"role": "machine"}
MACHINE_CHECKED_WHEN_RUN = {"role": "machine", "planned_as": "auto"}
LOCATION = {"role": "location"}
# What training writes into params.json beside the parameters (derived facts of the run).
RECORD_EXTRAS = ("arm", "run", "class_names", "prepared_fingerprint", "synthetic")


def role_fields(model: type[BaseModel], *roles: str) -> tuple[str, ...]:
    """The fields of ``model`` tagged with one of ``roles``, in field order."""
    return tuple(k for k, f in model.model_fields.items()
                 if isinstance(f.json_schema_extra, dict) and f.json_schema_extra.get("role") in roles)


def planned_values(model: type[BaseModel]) -> dict:
    """The value each field checked when its step runs takes when a plan is checked."""
    return {k: f.json_schema_extra["planned_as"] for k, f in model.model_fields.items()
            if isinstance(f.json_schema_extra, dict) and "planned_as" in f.json_schema_extra}


class TrainSettings(BaseModel):
    """The training settings an experiment file may set (``defaults:`` and a grid entry's ``train:``)."""

    model_config = _STRICT

    epochs: PosInt = 20
    batch_size: PosInt = 16
    lr: float = Field(1e-4, gt=0, allow_inf_nan=False)
    # the prepared train split's statistics, those the arch's ImageNet weights were trained with
    # (torchvision's mean/std, or [-1, 1] for EfficientNet-Lite0), or paper A's constants.
    # "weights" = each arm its own: "imagenet" for an arm that starts from ImageNet weights,
    # "dataset" for one that does not (resolved by TrainParams; params.json records the result).
    normalize: Literal["dataset", "imagenet", "paper_a", "weights"] = "dataset"
    early_stopping_patience: NonNegInt = 0   # 0 = off
    # What early stopping watches: Keras' default (val_loss, paper B's), or the validation
    # accuracy that also picks the best epoch (a run stops once that has not improved for
    # `patience` epochs; a network whose loss grows overconfident while its accuracy still
    # climbs is not cut short).
    early_stopping_monitor: Literal["val_loss", "val_acc"] = "val_loss"
    device: str = Field("auto", json_schema_extra=MACHINE_CHECKED_WHEN_RUN)
    compile: Union[Literal["auto"], bool] = Field("auto", json_schema_extra=MACHINE)  # torch.compile: auto = on for CUDA
    # bf16 autocast: auto = on for CUDA, and on a CPU with native bf16 for the archs whose table
    # entry says it is faster there (models.ArchSpec.cpu_bf16). Recorded as resolved.
    bf16: Union[Literal["auto"], bool] = Field("auto", json_schema_extra=MACHINE)
    # Recompute batch-norm statistics over the train split before every evaluation, so that
    # validation, best-epoch choice and test scoring use statistics that match the weights
    # (with momentum 0.01, MobileNetV3/EfficientNet from scratch otherwise sit at chance).
    recompute_bn: bool = True
    # Recompute them over at most this many training images (a fixed draw of the run's seed);
    # 0 = the whole train split. A pass over 1,800 images took ~25 % of a scratch epoch.
    bn_subset: NonNegInt = 0
    # Train on this share of the training split (stratified, drawn with the run's seed; the
    # subsets of one seed are nested). Validation and test stay whole: the data-efficiency curve.
    train_fraction: float = Field(1.0, gt=0, le=1, allow_inf_nan=False)
    # The recipe a scratch arm is normally given (He, Girshick and Dollar 2019); all off by
    # default, which is the papers' plain Adam at a constant rate. ``augment``: each training
    # image draws its own crop, rotation and intensity jitter, as its dataset's spec allows
    # (DatasetSpec.augment; helpers.augment); validation and test images never are.
    augment: bool = False
    optimizer: Literal["adam", "adamw"] = "adam"
    weight_decay: float = Field(0.0, ge=0, allow_inf_nan=False)  # adamw: not on biases and norms
    # "cosine": linear warm-up over ``warmup_epochs``, then cosine to zero at ``epochs`` (the
    # budget sets the schedule; the best epoch is still chosen on validation)
    lr_schedule: Literal["constant", "cosine"] = "constant"
    warmup_epochs: NonNegInt = 0


def resolve_normalize(normalize, pretrained) -> str:
    """``normalize: weights`` for one arm: its weights' statistics where it starts from ImageNet
    weights, the dataset's where it does not; any other value as it is."""
    if normalize != "weights":
        return normalize
    return "imagenet" if pretrained is True else "dataset"


def same_training(defaults: dict, protocol: dict, arm: str) -> bool:
    """Whether ``arm`` trains exactly as under ``defaults`` with the settings ``protocol``
    lays over them (TrainSettings values; ``normalize`` resolved for the arm): such a protocol
    reuses the defaults' runs of that arm rather than training them again."""
    pretrained = ARMS[arm].fields["pretrained"]

    def resolved(settings: dict) -> dict:
        full = TrainSettings(**settings).model_dump()
        return {**full, "normalize": resolve_normalize(full["normalize"], pretrained)}
    return resolved(defaults) == resolved({**defaults, **protocol})


# How a run's training ended (metrics.json's ``stopped_by``), in a reader's words.
STOPPED_BY = {"early_stopping": "stopped by itself", "epoch_cap": "hit its epoch cap: not converged",
              "fixed_budget": "fixed budget"}


def stopped_by(params: dict, stopped_early: bool) -> str:
    """How training ended (a key of STOPPED_BY): early stopping ended it (converged), the epoch
    cap came first (not converged), or there was no early stopping (a fixed budget)."""
    if stopped_early:
        return "early_stopping"
    return "epoch_cap" if params.get("early_stopping_patience") else "fixed_budget"


class TrainParams(TrainSettings):
    """Every parameter of ``training.train`` / ``train.ipynb`` (paper A's settings by default)."""

    dataset: str = "covid_radiography"   # a name the dataset table (or an experiment) knows: data checks it
    data_dir: str = Field("", json_schema_extra=MACHINE)
    arch: str = Field("resnet18", json_schema_extra={"choices": list(models.ARCHS)})
    pretrained: bool = True
    freeze_backbone: bool = False    # the linear-probe arm: only the head trains
    head: Literal["replace", "dense1024"] = "replace"
    image_size: ImageSize = 128
    seed: NonNegInt = 0
    balance: bool = True
    split: Literal[SPLITS] = "random"
    split_seed: NonNegInt = 0        # fixed across training seeds, so runs pair image by image
    n_per_class: int = Field(100, ge=MIN_PER_CLASS)
    # another run's best.pt of the same arch (backbone only); RunId.init_source names the run
    init_from: str = Field("", json_schema_extra={**MACHINE_CHECKED_WHEN_RUN, "planned_as": ""})
    # the workflow's prepared folder for this run; "" = prepare it here
    prepared_dir: str = Field("", json_schema_extra=LOCATION)
    experiment: str = ""             # names the run folder's parent; "" for a run by hand
    protocol: str = Field("", pattern=r"^[a-z0-9_]*$")  # RunId.protocol (set by the experiment grid)
    tuning: str = Field("", pattern=r"^(|tuned|lr[0-9.e+-]+)$")  # RunId.tuning (likewise)
    run_dir: str = Field("", json_schema_extra=LOCATION)   # "" = RunId.run_dir()
    force: bool = Field(False, json_schema_extra=LOCATION)

    @model_validator(mode="before")
    @classmethod
    def _own_normalization(cls, values):
        # "weights" is resolved here, so a record says what its inputs were and a scratch run
        # keeps the identity it had under "dataset"
        if isinstance(values, dict) and "normalize" in values:
            pretrained = values.get("pretrained", cls.model_fields["pretrained"].default)
            values = {**values, "normalize": resolve_normalize(values["normalize"], pretrained)}
        return values

    @model_validator(mode="after")
    def _consistent(self):
        if self.arch not in models.ARCHS:
            raise ValueError(f"parameter 'arch' must be one of {', '.join(map(repr, models.ARCHS))}; "
                             f"got {self.arch!r}")
        minimum = models.ARCHS[self.arch].min_image_size
        if self.image_size < minimum:
            raise ValueError(f"parameter 'image_size' must be at least {minimum} px for {self.arch}; "
                             f"got {self.image_size}")
        problem = _device_problem(self.device)
        if problem:
            raise ValueError(problem)
        if self.warmup_epochs >= self.epochs and self.lr_schedule == "cosine":
            raise ValueError(f"parameter 'warmup_epochs' ({self.warmup_epochs}) must be below 'epochs' "
                             f"({self.epochs}): the cosine schedule decays after the warm-up")
        if self.weight_decay and self.optimizer == "adam":
            raise ValueError(f"parameter 'weight_decay' is {self.weight_decay} but optimizer is 'adam': "
                             "weight decay needs optimizer='adamw' (decoupled weight decay)")
        if self.freeze_backbone and not self.pretrained:
            raise ValueError("parameter 'freeze_backbone' needs pretrained=True: a linear probe "
                             "of random features is not the ImageNet question")
        if self.init_from:
            if self.pretrained:
                raise ValueError("parameters 'init_from' and 'pretrained' exclude each other: "
                                 "init_from replaces the backbone, so set pretrained=False")
            source = source_params(self.init_from)
            if source.get("arch") != self.arch:
                raise ValueError(f"parameter 'init_from': {self.init_from} holds a "
                                 f"{source.get('arch')!r} model, but this run's arch is "
                                 f"{self.arch!r}; init_from needs a checkpoint of the same arch")
        return self

    @property
    def arm(self) -> str:
        if self.init_from:
            return transfer_arm(source_params(self.init_from))
        mine = {k: getattr(self, k) for k in ("pretrained", "freeze_backbone")}
        return next(name for name, a in ARMS.items() if a.fields == mine)

    def run_id(self) -> "RunId":
        init_source = ""
        if self.init_from:
            init_source = source_params(self.init_from).get("run", {}).get("key", self.init_from)
        return RunId(experiment=self.experiment, dataset=self.dataset, arch=self.arch,
                     head=self.head, arm=self.arm, seed=self.seed, split=self.split,
                     init_source=init_source, train_fraction=self.train_fraction,
                     protocol=self.protocol, tuning=self.tuning)

    def resolved_run_dir(self) -> Path:
        return Path(self.run_dir) if self.run_dir else self.run_id().run_dir()

    def prep(self) -> PrepParams:
        return PrepParams(dataset=self.dataset, data_dir=self.data_dir, image_size=self.image_size,
                          balance=self.balance, seed=self.split_seed, split=self.split,
                          n_per_class=self.n_per_class)


def source_params(checkpoint: str | os.PathLike) -> dict:
    """``params`` of another run's checkpoint (for init_from), with a clear error."""
    path = Path(checkpoint)
    if not path.is_file():
        raise ValueError(f"parameter 'init_from' must be '' or the path of another run's best.pt; "
                         f"no file {path}")
    try:
        return dict(_checkpoint_params(str(path.resolve()), path.stat().st_mtime_ns))
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise ValueError(f"parameter 'init_from': cannot read {path} as a run checkpoint: {e}") from None


@functools.lru_cache(maxsize=16)
def _checkpoint_params(path: str, mtime_ns: int) -> dict:
    # Validation, the arm and the run identity all ask; a VGG checkpoint is read once, not
    # each time (keyed by modification time, so a retrained source is read again).
    import torch

    return dict(torch.load(path, map_location="cpu", weights_only=True)["params"])


def train_params(values: dict) -> TrainParams:
    """Validated training parameters (a :class:`ParameterError` names what is wrong)."""
    return check(TrainParams, values)


# ---------------------------------------------------------------- run identity

class RunId(BaseModel):
    """Who a run is. Two runs with equal RunIds are the same run."""

    model_config = _STRICT

    experiment: str = ""
    dataset: str
    arch: str
    head: str = "replace"
    arm: str
    seed: NonNegInt
    split: str = "random"
    init_source: str = ""            # the source run's key for "from-*" arms
    train_fraction: float = 1.0
    protocol: str = ""               # a named protocol of the experiment file ("" = its defaults)
    tuning: str = ""                 # "" = the file's lr; "lr0.001" = one lr of a sweep; "tuned" =
                                     # the lr the sweep chose on validation

    @property
    def name(self) -> str:
        """``<arch>[_<head>]-<arm>[-<split>][-f<fraction>][-<protocol>][-<tuning>]-s<seed>``."""
        base = self.arch if self.head == "replace" else f"{self.arch}_{self.head}"
        split = "" if self.split == "random" else f"-{self.split}"
        fraction = "" if self.train_fraction == 1 else f"-f{self.train_fraction:g}"
        extra = "".join(f"-{v}" for v in (self.protocol, self.tuning) if v)
        return f"{base}-{self.arm}{split}{fraction}{extra}-s{self.seed}"

    @property
    def key(self) -> str:
        return f"{self.dataset}/{self.name}"

    def run_dir(self, root: str | os.PathLike = "runs") -> Path:
        """``runs/[<experiment>/]<dataset>/<name>``: the one place a run folder is named."""
        parts = [self.experiment] if self.experiment else []
        return Path(root, *parts, self.dataset, self.name)

    def as_record(self) -> dict:
        return {**self.model_dump(), "name": self.name, "key": self.key}


def as_recorded(record: dict, cuda: bool = False) -> dict:
    """A run's parameters as a record made by older code holds them: a parameter newer than the
    record reads as its default, which is what the code did before the parameter existed (bf16:
    on CUDA only). The one rule for resuming a run folder and for checking committed records."""
    return {**{k: f.default for k, f in TrainParams.model_fields.items()}, "bf16": cuda, **record}


def read_run_id(run_dir: str | os.PathLike) -> RunId:
    """The identity a run folder's ``params.json`` records (``missing.json`` for a run that
    could not start): the one source of a run's dataset, arch, arm and seed for every reader."""
    for name in ("params.json", "missing.json"):
        path = Path(run_dir) / name
        if path.is_file():
            record = json.loads(path.read_text()).get("run")
            if isinstance(record, dict):
                return RunId(**{k: record[k] for k in RunId.model_fields if k in record})
    raise ValueError(f"{run_dir}: neither params.json nor missing.json records the run's identity "
                     f"(written by an older version?); retrain it")


# ---------------------------------------------------------------- notebook steps (workflow)
# The papermill steps around training. Each model declares exactly the parameter cell of its
# notebook (tests/test_workflow.py checks names and defaults against the notebooks).

BOOK_STEPS = ("data_prep", "evaluate", "explain", "audit")  # the per-dataset notebooks of the book

RunFolders = Union[str, list[str]]   # "" = the notebook's default, a glob, or run folders


class EvaluateParams(BaseModel):
    """``evaluate.ipynb``: Table 1, curves and tests of a dataset's runs."""

    model_config = _STRICT

    dataset: str = "covid_radiography"
    runs: RunFolders = ""            # "" = every run folder under runs/<dataset>/
    out_dir: str = ""                # "" = results/<dataset>/evaluate


class ExplainParams(BaseModel):
    """``explain.ipynb``: saliency and Grad-CAM of an ImageNet/scratch pair."""

    model_config = _STRICT

    dataset: str = "covid_radiography"
    arch: str = Field("resnet18", json_schema_extra={"choices": list(models.ARCHS)})
    runs: RunFolders = ""            # "" = runs/<dataset>/<arch>-imagenet-s0 and -scratch-s0
    n_per_class: PosInt = 2
    methods: list[Literal["saliency", "gradcam"]] = Field(["saliency", "gradcam"], min_length=1)
    out_dir: str = ""                # "" = results/<dataset>/explain/<arch>
    device: str = "auto"
    n_road_images: NonNegInt = 8     # test images for ROAD and the sanity check; 0 = skip both
    road_percentiles: list[Annotated[int, Field(ge=1, le=99)]] = Field([20, 40, 60, 80], min_length=1)
    sanity: Literal["full", "cascade"] = "full"  # re-initialise all weights at once, or top block first


class AuditParams(BaseModel):
    """``audit.ipynb``: near-duplicates, the grouped split and the shortcut baseline."""

    model_config = _STRICT

    dataset: str = "ct_kidney"
    data_dir: str = ""
    image_size: ImageSize = 128
    seed: NonNegInt = 0              # the split seed
    balance: bool = False
    n_per_class: int = Field(100, ge=MIN_PER_CLASS)
    out_dir: str = ""                # "" = results/<dataset>/audit
    folds: list[Literal[FOLD_SPLITS]] = []   # a cross-validation's folds: the baselines fold by fold


class SummaryParams(BaseModel):
    """``summary.ipynb``: grid status, reproducibility and performance tables of an experiment."""

    model_config = _STRICT

    experiment: str = "demo"         # a name under experiments/ or the path of a YAML file
    data_dir: str = ""


class GapParams(BaseModel):
    """``gap.ipynb``: visible placeholders for a book step an experiment does not run."""

    model_config = _STRICT

    step: Literal[BOOK_STEPS] = "evaluate"
    dataset: str = "ct_kidney"
    reason: str = "not run"


# The model of each notebook's parameter cell.
NOTEBOOK_PARAMS: dict[str, type[BaseModel]] = {
    "data_prep": PrepParams, "train": TrainParams, "evaluate": EvaluateParams,
    "explain": ExplainParams, "audit": AuditParams, "summary": SummaryParams, "gap": GapParams,
}
