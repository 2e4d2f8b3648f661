"""The experiment layer: experiment files, the run grid and the run identities.

An experiment file (``experiments/<name>.yaml``) holds everything a run needs; only paths
(``data_dir``) come from the command line. It is checked by pydantic models built from the
fields of :mod:`helpers.params`, and expands into a grid: one :class:`~helpers.params.RunId`
per training run, mapped to that run's ``TrainParams`` values.

This is what the Snakefile parses with, so it imports no torch (a test checks that
``snakemake -n`` runs with a torch that cannot be imported): every dry run and every cluster
job pays for what this module imports.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union, get_args

import yaml
from pydantic import (BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, create_model,
                      model_validator)

from . import data, models
from .params import (ARMS, FOLD_SPLITS, NOTEBOOK_PARAMS, NonNegInt, ParameterError, PosInt, PrepParams, RunId, TrainParams,
                     TrainSettings, check, planned_values)

EXPERIMENTS_DIR = Path("experiments")
DATASET_NAMES = tuple(data.DATASETS)
ARCH_NAMES = tuple(models.ARCHS)
Head = TrainParams.model_fields["head"].annotation
Split = TrainParams.model_fields["split"].annotation


# ---------------------------------------------------------------- the experiment file

class ExperimentError(ValueError):
    """An experiment file or a DATA_DIR override that cannot be used."""


_YAML = ConfigDict(strict=True, extra="forbid")


def _field(model: type[BaseModel], name: str):
    """A field of a params model, reused (type, constraints and default) in the file's models."""
    field = model.model_fields[name]
    return field.annotation, field


# A dataset's settings are data prep's parameters (``split_seed`` is PrepParams' ``seed``). A
# dataset of one's own (not in the dataset table) also names its image kind (``ext``) and may
# name its title in the pages; its classes are its DATA_DIR's subfolders.
DatasetSettings = create_model(
    "DatasetSettings", __config__=_YAML,
    **{name: _field(PrepParams, name) for name in ("image_size", "balance", "split", "n_per_class")},
    split_seed=_field(PrepParams, "seed"),
    ext=(Optional[str], Field(None, pattern=r"^\.[A-Za-z0-9]+$")),
    title=(Optional[str], None),
)


class InitFrom(BaseModel):
    model_config = _YAML

    dataset: str
    arm: Literal[tuple(ARMS)] = "imagenet"


class InitFromArm(BaseModel):
    """``{init_from: {dataset, arm}}``: start from that dataset's run of the same arch and seed."""

    model_config = _YAML

    init_from: InitFrom


# An arm is a name or an {init_from: ...} mapping; the tags only route validation (and its errors).
_ARM_TAGS = ("arm name", "arm init_from")


Arm = Annotated[Union[Annotated[Literal[tuple(ARMS)], Tag(_ARM_TAGS[0])], Annotated[InitFromArm, Tag(_ARM_TAGS[1])]],
                Discriminator(lambda v: _ARM_TAGS[0] if isinstance(v, str) else _ARM_TAGS[1])]


# How a sweep chooses: the highest best-epoch validation accuracy (ties: the lower validation
# loss, then the smaller rate), or the lowest validation loss. Test scores are never read.
TUNE_BY = ("best_val_acc", "min_val_loss")


class Tune(BaseModel):
    """``tune: {lr: [...]}``: each rate trains on one seed (``seed``, default the entry's first)
    and the whole training split; the entry's other runs (other seeds, smaller training shares)
    use the rate chosen. An entry whose seeds leave out ``seed`` holds tuned runs only: its sweep
    is another entry's (a sweep in one stage, the seeds it tunes in a later one). ``protocol``
    or ``dataset``: the rate is the one chosen by that protocol's (or dataset's) sweep, and every
    run of the entry is a tuned one (the budget-doubling check: the same recipe, twice the
    epochs, at the rate it chose; a shortcut-reduced version of a dataset at the original's).
    ``split`` likewise: every fold of a cross-validation at the rate its first fold's sweep chose."""

    model_config = _YAML

    lr: list[Annotated[float, Field(gt=0, allow_inf_nan=False)]] = Field(min_length=2)
    by: Literal[TUNE_BY] = "best_val_acc"
    seed: Optional[NonNegInt] = None
    protocol: Optional[str] = None
    dataset: Optional[str] = None
    split: Optional[Split] = None    # a fold of a cross-validation at the rate fold 0's sweep chose


class GridEntry(BaseModel):
    model_config = _YAML

    dataset: str
    archs: list[Literal[ARCH_NAMES]] = Field(min_length=1)
    head: Head = "replace"
    arms: list[Arm] = Field(min_length=1)
    seeds: list[NonNegInt] = Field(min_length=1)
    split: Optional[Split] = None              # None = the dataset's split
    protocol: Optional[str] = None             # a name under the file's protocols (None = defaults)
    tune: Optional[Tune] = None                # a learning-rate sweep (None: train.lr or defaults)
    train: dict[str, Any] = {}                 # TrainSettings over the protocol and the defaults
    stage: PosInt = 1                          # a study longer than a session runs stage by stage


class ExplainSettings(BaseModel):
    model_config = _YAML

    arch: Literal[ARCH_NAMES]
    head: Head = "replace"
    n_per_class: PosInt = NOTEBOOK_PARAMS["explain"].model_fields["n_per_class"].default
    n_road_images: NonNegInt = NOTEBOOK_PARAMS["explain"].model_fields["n_road_images"].default


class ExperimentFile(BaseModel):
    model_config = _YAML

    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
    description: str = ""
    synthetic: bool = False
    datasets: dict[str, DatasetSettings] = Field(min_length=1)
    defaults: dict[str, Any] = {}              # TrainSettings
    # Named protocols: TrainSettings over the defaults, e.g. the papers' budget beside the fair
    # one. A run of a protocol carries its name (RunId.protocol), so both coexist.
    protocols: dict[Annotated[str, Field(pattern=r"^[a-z0-9_]+$")], dict[str, Any]] = {}
    grid: list[GridEntry] = Field(min_length=1)
    explain: dict[str, ExplainSettings] = {}
    audit: list[str] = []

    @model_validator(mode="after")
    def _datasets_known(self):
        for d, st in self.datasets.items():
            if d in DATASET_NAMES and (st.ext or st.title):
                raise ValueError(f"datasets.{d}: ext and title are the dataset table's for {d}; they are for "
                                 "a dataset of your own (another name)")
            if d not in DATASET_NAMES and not st.ext:
                raise ValueError(f"datasets.{d}: not in the dataset table ({', '.join(DATASET_NAMES)}); a dataset "
                                 "of your own names its image kind, e.g. ext: .png (its classes are its "
                                 "DATA_DIR's subfolders)")
            if d not in DATASET_NAMES and self.synthetic:
                raise ValueError(f"datasets.{d}: a dataset of your own runs on its real folder only; "
                                 "set synthetic: false and pass DATA_DIR")
        used = {f"grid[{i}]": e.dataset for i, e in enumerate(self.grid)}
        used.update({f"explain.{d}": d for d in self.explain})
        used.update({f"audit[{i}]": d for i, d in enumerate(self.audit)})
        for where, d in used.items():
            if d not in self.datasets:
                raise ValueError(f"{where} uses dataset {d!r}, which is not listed under "
                                 f"datasets: {list(self.datasets)}")
        for i, e in enumerate(self.grid):
            if e.protocol is not None and e.protocol not in self.protocols:
                raise ValueError(f"grid[{i}] uses protocol {e.protocol!r}, which is not listed under "
                                 f"protocols: {list(self.protocols)}")
            if e.tune is not None and "lr" in e.train:
                raise ValueError(f"grid[{i}] sets train.lr and tune.lr: keep one")
            if e.tune is not None and e.tune.dataset is not None and e.tune.dataset not in self.datasets:
                raise ValueError(f"grid[{i}] takes its rate from dataset {e.tune.dataset!r}'s sweep, which is "
                                 f"not listed under datasets: {list(self.datasets)}")
            if e.tune is not None and e.tune.protocol is not None and e.tune.protocol not in self.protocols:
                raise ValueError(f"grid[{i}] takes its rate from protocol {e.tune.protocol!r}'s sweep, which is "
                                 f"not listed under protocols: {list(self.protocols)}")
        return self


def _where(loc: tuple) -> tuple[str, tuple]:
    """('grid', 1, 'archs', 0) -> 'grid[1].archs[0]', and the location without union tags."""
    text, kept = "", []
    for part in loc:
        if part in _ARM_TAGS:
            continue
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
        kept.append(part)
    return text, tuple(kept)


def _inner_model(tp: Any) -> Any:
    """The pydantic model inside list[X], dict[str, X], Optional/Union/Annotated[..., X]."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp
    for arg in reversed(get_args(tp)):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def _keys_at(loc: tuple) -> list[str]:
    """The keys the file may hold where ``loc`` (without union tags) points."""
    model = ExperimentFile
    for part in loc[:-1]:
        if isinstance(part, str) and model is not None and part in model.model_fields:
            model = _inner_model(model.model_fields[part].annotation)
    return list(model.model_fields) if model is not None else []


def _file_error(path: Path, error: ValidationError) -> ExperimentError:
    lines = []
    for err in error.errors():
        where, loc = _where(err["loc"])
        value = err.get("input")
        if err["type"] == "extra_forbidden":
            lines.append(f"{where}: unknown key (value {value!r}); allowed: {_keys_at(loc)}")
        elif err["type"] == "missing":
            lines.append(f"{where}: missing required key")
        elif not where:
            lines.append(err["msg"].removeprefix("Value error, "))
        elif loc[:1] == ("grid",) and loc[2:3] == ("arms",) and len(loc) == 4:   # grid[i].arms[j]
            lines.append(f"{where}: arm {value!r} must be one of {', '.join(ARMS)} or "
                         "{init_from: {dataset: <name>, arm: <arm>}}")
        else:
            lines.append(f"{where}: {value!r} ({type(value).__name__}) is not allowed: "
                         f"{err['msg'].removeprefix('Value error, ')}")
    return ExperimentError(f"{path}: " + "; ".join(dict.fromkeys(lines)))


def experiment_path(name_or_path: str | os.PathLike) -> Path:
    path = Path(name_or_path)
    if path.suffix in {".yaml", ".yml"} or path.exists():
        candidate = path
    else:
        candidate = EXPERIMENTS_DIR / f"{name_or_path}.yaml"
    if not candidate.is_file():
        known = sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.yaml"))
        raise ExperimentError(
            f"experiment {str(name_or_path)!r} not found (looked for {candidate}); "
            f"known experiments: {', '.join(known) or 'none'}"
        )
    return candidate


def parse_data_dirs(data_dir: str, datasets: list[str]) -> dict[str, str]:
    """``DATA_DIR`` is one path (one-dataset experiments) or ``name=path,name=path``; a dataset
    derived from another (``DatasetSpec.derived_from``) reads that one's folder unless named."""
    derived = {d: data.DATASETS[d].derived_from if d in data.DATASETS else None for d in datasets}
    out = _parse_data_dirs(data_dir, [d for d in datasets if not derived[d]]
                           if "=" not in (data_dir or "") else datasets)
    for d in datasets:
        source = derived[d]
        if source and not out.get(d) and out.get(source):
            out[d] = out[source]
    return out


def _parse_data_dirs(data_dir: str, datasets: list[str]) -> dict[str, str]:
    data_dir = (data_dir or "").strip()
    if not data_dir:
        return {}
    if "=" not in data_dir:
        if len(datasets) != 1:
            raise ExperimentError(
                f"DATA_DIR={data_dir!r} is one path but the experiment uses {datasets}; "
                "give DATA_DIR='covid_radiography=/path/a,ct_kidney=/path/b'"
            )
        return {datasets[0]: data_dir}
    out = {}
    for part in data_dir.split(","):
        name, _, path = part.partition("=")
        name = name.strip()
        if name not in datasets:
            raise ExperimentError(
                f"DATA_DIR names dataset {name!r}, which this experiment does not use; "
                f"it uses {datasets}"
            )
        out[name] = path.strip()
    return out


def planned(model: type[BaseModel], values: dict) -> dict:
    """Check ``values`` against ``model`` as far as a plan can: whether a device is present or a
    source checkpoint is readable is checked when the step runs (the source is not trained yet)."""
    at_run = planned_values(model)
    check(model, {**values, **{k: v for k, v in at_run.items() if k in values}})
    return values


def load_experiment(name_or_path: str | os.PathLike, data_dir: str = "", need_data: bool = True) -> dict:
    """Read and check an experiment file; attach the resolved data directories.

    Returns the file's content with every default filled in, plus ``data_dirs`` and ``path``.
    ``need_data=False`` only lists the grid (no DATA_DIR needed for real-data experiments).
    """
    path = experiment_path(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ExperimentError(f"{path}: not valid YAML: {e}") from None
    try:
        exp = ExperimentFile.model_validate(raw).model_dump()
    except ValidationError as e:
        raise _file_error(path, e) from None
    for where, settings in [("defaults", exp["defaults"])] + [
            (f"protocols.{n}", {**exp["defaults"], **p}) for n, p in exp["protocols"].items()] + [
            (f"grid[{i}].train", _settings(exp, e)) for i, e in enumerate(exp["grid"])]:
        try:
            check(TrainSettings, settings)
        except ParameterError as e:
            raise ExperimentError(f"{path}: {where}: {e}") from None
    datasets = list(exp["datasets"])
    if exp["synthetic"] and (data_dir or "").strip():
        raise ExperimentError(
            f"experiment {exp['name']!r} runs on the embedded synthetic data; "
            "DATA_DIR is for real-data experiments (e.g. EXPERIMENT=paper_a)"
        )
    dirs = parse_data_dirs(data_dir, datasets)
    if need_data and not exp["synthetic"]:
        lacking = [d for d in datasets if not dirs.get(d)]
        if lacking:
            raise ExperimentError(
                f"experiment {exp['name']!r} needs the real data of {lacking}: "
                "pass DATA_DIR=/path/to/download (see README, 'Real data'); "
                "EXPERIMENT=demo runs on synthetic phantoms"
            )
    for d in datasets:
        if exp["datasets"][d]["ext"]:
            _register_own(path, d, exp["datasets"][d], dirs.get(d, ""))
    for where, ds, split in ([(f"datasets.{d}.split", d, st["split"]) for d, st in exp["datasets"].items()]
                             + [(f"grid[{i}].split", e["dataset"], e["split"]) for i, e in enumerate(exp["grid"])
                                if e["split"]]
                             + [(f"grid[{i}].tune.split", e["dataset"], e["tune"]["split"])
                                for i, e in enumerate(exp["grid"]) if e["tune"] and e["tune"]["split"]]):
        try:
            data.check_split(ds, split)
        except ValueError as e:
            raise ExperimentError(f"{path}: {where}: {e}") from None
    exp = Experiment(exp, data_dirs={d: dirs.get(d, "") for d in datasets}, path=str(path))
    runs(exp)  # the plan: every run's parameters are expanded and checked once, before any work
    return exp


def _register_own(path: Path, dataset: str, settings: dict, folder: str) -> None:
    """A dataset of one's own, from its folder (or as a step before registered it, without one)."""
    if folder:
        try:
            spec = data.discover.folder_spec(dataset, folder, settings["ext"], settings["title"] or "",
                                             given=settings["split"] == "given")
        except (OSError, ValueError) as e:
            raise ExperimentError(f"DATA_DIR for {dataset}: {e}") from None
        data.register(spec)
        return
    try:
        data.get_spec(dataset)
    except ValueError:
        raise ExperimentError(f"{path}: datasets.{dataset} is a dataset of your own: its classes are read from "
                              f"its folder, so it needs DATA_DIR ({dataset}=/path/to/folder)") from None


class Experiment(dict):
    """A checked experiment file (a plain dict of its content) that expands its grid into the
    run plan once: Snakemake, each training job and the pages read that plan."""

    def plan(self) -> tuple:
        if "_plan" not in self.__dict__:
            self.__dict__["_plan"] = _build_plan(self)
        return self.__dict__["_plan"]


# ---------------------------------------------------------------- the grid

def prep_of(exp: dict, dataset: str, split: str) -> dict:
    """PrepParams values of ``dataset`` under ``split`` in this experiment."""
    s = exp["datasets"][dataset]
    return {"dataset": dataset, "data_dir": exp["data_dirs"].get(dataset, ""),
            "image_size": s["image_size"], "balance": s["balance"], "seed": s["split_seed"],
            "split": split, "n_per_class": s["n_per_class"]}


def _settings(exp: dict, entry: dict) -> dict:
    """An entry's TrainSettings values: the defaults, its protocol's, then its own ``train``."""
    return {**exp["defaults"], **exp["protocols"].get(entry["protocol"] or "", {}), **entry["train"]}


def lr_tag(lr: float) -> str:
    """RunId.tuning of one rate of a sweep: 0.001 -> "lr0.001"."""
    return f"lr{lr:g}"


@dataclass(frozen=True)
class Sweep:
    """The learning-rate sweep a tuned run takes its rate from."""

    by: str                              # TUNE_BY
    candidates: dict[float, RunId]       # rate -> the sweep's run of that rate
    seed: int = 0                        # the seed the sweep trains


def runs(exp: dict) -> dict[RunId, dict]:
    """Every training run of the experiment, in file order: its identity -> its TrainParams values
    (``experiment`` names the run folder's parent: no explicit run_dir). A tuned run's ``lr`` is
    None: :func:`sweeps` says where it comes from, and the train step resolves it."""
    return _plan(exp)[0]


def sweeps(exp: dict) -> dict[RunId, Sweep]:
    """Tuned run -> the sweep that chooses its learning rate."""
    return _plan(exp)[1]


def all_sweeps(exp: dict) -> list[Sweep]:
    """Every learning-rate sweep of the grid, with or without runs it tunes."""
    return _plan(exp)[3]


def stages(exp: dict) -> dict[RunId, int]:
    """Run -> the stage of the grid entry that first names it."""
    return _plan(exp)[2]


def _plan(exp: dict) -> tuple[dict[RunId, dict], dict[RunId, Sweep], dict[RunId, int], list[Sweep]]:
    """(runs, sweeps, stages, every sweep): built once per loaded experiment."""
    return exp.plan() if isinstance(exp, Experiment) else _build_plan(exp)


def _build_plan(exp: dict) -> tuple[dict[RunId, dict], dict[RunId, Sweep], dict[RunId, int], list[Sweep]]:
    grid: dict[RunId, dict] = {}
    stage: dict[RunId, int] = {}
    tuned: dict[RunId, tuple[int, RunId, dict]] = {}   # tuned run -> (entry, its sweep's group, tune)
    groups: dict[RunId, Sweep] = {}                      # sweep group -> its sweep
    for i, entry in enumerate(exp["grid"]):
        ds = entry["dataset"]
        split = entry["split"] or exp["datasets"][ds]["split"]
        prep = prep_of(exp, ds, split)
        data_fields = {"dataset": ds, "data_dir": prep["data_dir"], "image_size": prep["image_size"],
                       "balance": prep["balance"], "split": split, "split_seed": prep["seed"],
                       "n_per_class": prep["n_per_class"]}
        train = TrainSettings(**_settings(exp, entry)).model_dump()
        protocol, tune = entry["protocol"] or "", entry["tune"]
        head = entry["head"]
        for arch in entry["archs"]:
            for arm in entry["arms"]:
                for seed, tuning, lr in _tunings(entry, train):
                    if isinstance(arm, str):
                        label, source, fields = arm, None, {"init_from": "", **ARMS[arm].fields}
                    else:
                        src = arm["init_from"]
                        label = f"from-{src['dataset']}-{src['arm']}"
                        source = RunId(experiment=exp["name"], dataset=src["dataset"], arch=arch,
                                       head=head, arm=src["arm"], seed=seed, split=split)
                        fields = {"pretrained": False, "freeze_backbone": False,
                                  "init_from": str(source.run_dir() / "best.pt")}
                    rid = RunId(experiment=exp["name"], dataset=ds, arch=arch, head=head, arm=label,
                                seed=seed, split=split, init_source=source.key if source else "",
                                train_fraction=train["train_fraction"], protocol=protocol, tuning=tuning)
                    params = {**data_fields, "arch": arch, "head": head, "seed": seed, **fields,
                              **train, "lr": lr, "experiment": exp["name"], "protocol": protocol,
                              "tuning": tuning, "prepared_dir": str(prepared_dir(prep))}
                    if rid not in grid:
                        try:  # a tuned rate is checked as the sweep's first
                            planned(TrainParams, {**params, "lr": tune["lr"][0] if lr is None else lr})
                        except ParameterError as e:
                            raise ExperimentError(f"{exp['path']}: grid[{i}] ({rid.key}): {e}") from None
                        grid[rid] = params
                        stage[rid] = entry["stage"]
                    group = _sweep_group(rid, **({k: tune[k] for k in BORROWED if tune[k] is not None}
                                                 if tune else {}))
                    if tuning == "tuned":
                        tuned[rid] = (i, group, tune)
                    elif tuning:
                        groups.setdefault(group, Sweep(tune["by"], {}, seed)).candidates[lr] = rid
    keys = {rid.key for rid in grid}
    for rid in grid:
        if rid.init_source and rid.init_source not in keys:
            raise ExperimentError(f"{exp['path']}: run {rid.key} starts from {rid.init_source}, "
                                  "which the grid does not train")
    chosen: dict[RunId, Sweep] = {}
    for rid, (i, group, tune) in tuned.items():
        sweep = groups.get(group)
        if (sweep is None or sorted(sweep.candidates) != sorted(tune["lr"]) or sweep.by != tune["by"]
                or tune["seed"] not in (None, sweep.seed)):
            seed = "" if tune["seed"] is None else f" on seed {tune['seed']}"
            raise ExperimentError(
                f"{exp['path']}: grid[{i}] ({rid.key}) takes its learning rate from a sweep of "
                f"{tune['lr']} by {tune['by']}{seed} on the whole training split, which no grid entry "
                f"of {group.dataset}/{group.name.removesuffix('-s0')} runs (a sweep runs on its tune.seed, "
                "by default the entry's first seed, with train_fraction 1)")
        chosen[rid] = sweep
    return grid, chosen, stage, list(groups.values())


def _tunings(entry: dict, train: dict) -> list[tuple[int, str, float | None]]:
    """(seed, RunId.tuning, lr) of each run of an entry, per arch and arm: without a sweep every
    seed at the file's rate; with one, the first seed at every rate on the whole training split
    and the entry's other runs at the rate chosen (None until the sweep has run)."""
    seeds, tune = entry["seeds"], entry["tune"]
    if tune is None:
        return [(seed, "", train["lr"]) for seed in seeds]
    sweep_seed = seeds[0] if tune["seed"] is None else tune["seed"]
    out = []
    for seed in seeds:
        if seed == sweep_seed and train["train_fraction"] == 1 and all(tune[k] is None for k in BORROWED):
            out += [(seed, lr_tag(lr), lr) for lr in tune["lr"]]
        else:
            out.append((seed, "tuned", None))
    return out


# What a grid entry may take from another entry's sweep: its protocol's, dataset's or split's choice
BORROWED = ("protocol", "dataset", "split")


def _sweep_group(rid: RunId, **other) -> RunId:
    """What a sweep and the runs it tunes share: the identity less seed, share and rate (and the
    protocol, dataset or split, for runs that take another protocol's, dataset's or split's choice)."""
    return rid.model_copy(update={"seed": 0, "train_fraction": 1.0, "tuning": "", **other})


def sweep_scores(run_dir: str | os.PathLike) -> dict:
    """A sweep run's validation scores (metrics.json, history.csv): never its test scores."""
    import csv
    import json

    folder = Path(run_dir)
    metrics = json.loads((folder / "metrics.json").read_text())
    with open(folder / "history.csv", newline="") as f:
        losses = [float(row["val_loss"]) for row in csv.DictReader(f)]
    return {"best_val_acc": float(metrics["best_val_acc"]), "min_val_loss": min(losses),
            "best_epoch": int(metrics["best_epoch"]), "stopped_by": metrics.get("stopped_by")}


def choose_lr(scores: dict[float, dict], by: str = "best_val_acc") -> float:
    """The rate a sweep chooses from each rate's :func:`sweep_scores`."""
    if not scores:
        raise ValueError("a sweep with no finished runs chooses no learning rate")
    if by == "min_val_loss":
        return min(scores, key=lambda lr: (scores[lr]["min_val_loss"], lr))
    return min(scores, key=lambda lr: (-scores[lr]["best_val_acc"], scores[lr]["min_val_loss"], lr))


def source_of(exp_runs: dict[RunId, dict], rid: RunId) -> RunId | None:
    """The run whose best.pt ``rid`` starts from (init_from), if any."""
    return next((r for r in exp_runs if r.key == rid.init_source), None) if rid.init_source else None


def find_run(exp: dict, run: str) -> RunId:
    """A run of the grid by its key (``<dataset>/<name>``) or its run folder."""
    for rid in runs(exp):
        if run in (rid.key, str(rid.run_dir())):
            return rid
    raise ExperimentError(f"run {run!r} is not in experiment {exp['name']!r}")


def audit_folds(exp: dict, dataset: str) -> list[str]:
    """The folds whose baselines the audit measures: every fold of the cross-validation where the
    dataset's split in this experiment is one of its folds, else none."""
    return list(FOLD_SPLITS) if exp["datasets"][dataset]["split"] in FOLD_SPLITS else []


def preps(exp: dict) -> list[dict]:
    """PrepParams values of every prepared folder the experiment reads: the datasets' own
    splits, the splits of the grid's runs, and the splits the audit measures (its spec's, and a
    cross-validation's folds: :func:`audit_folds`)."""
    wanted = [(d, s["split"]) for d, s in exp["datasets"].items()]
    wanted += [(rid.dataset, rid.split) for rid in runs(exp)]
    wanted += [(d, split) for d in exp["audit"] for split in [data.get_spec(d).audit_split, *audit_folds(exp, d)]]
    return [prep_of(exp, d, split) for d, split in dict.fromkeys(wanted)]


def prepared_dir(prep: dict) -> Path:
    """The folder ``data.prepare(**prep)`` writes, computed without any work."""
    return data.prepared_dir(**prep)


def results_dir(exp: dict) -> Path:
    return Path("results") / exp["name"]
