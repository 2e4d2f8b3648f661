"""Experiment files, the run grid, and the papermill steps the Snakefile calls.

An experiment file (``experiments/<name>.yaml``) holds everything a run needs; only paths
(``data_dir``) come from the command line. It is checked by pydantic models built from the
fields of :mod:`helpers.params`, and expands into a grid: one :class:`~helpers.params.RunId`
per training run, mapped to that run's ``TrainParams`` values.

Each training run is one papermill execution of ``notebooks/train.ipynb``. Its outcome is
``<run folder>/status.json`` (the Snakefile's ``train`` output): ``complete`` when the run
wrote ``metrics.json``, ``missing`` with the reason (also in ``missing.json``) when it could
not happen, e.g. without ImageNet weights on an air-gapped machine; the rest of the grid goes
on. :func:`forget_missing` drops the status of missing runs after an invocation, so that the
next one tries them again; completed runs are never repeated.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import traceback
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union, get_args

import yaml
from pydantic import (BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, create_model,
                      model_validator)

from . import atomic, data, models
from .params import (ARMS, BOOK_STEPS, NOTEBOOK_PARAMS, NonNegInt, ParameterError,
                     PosInt, PrepParams, RunId, TrainParams, TrainSettings, check)

EXPERIMENTS_DIR = Path("experiments")
DATASET_NAMES = tuple(data.DATASETS)
ARCH_NAMES = tuple(models.ARCHS)
Head = TrainParams.model_fields["head"].annotation
Split = TrainParams.model_fields["split"].annotation

# A kernel that starts slowly (a loaded machine, parallel jobs) is not an error.
KERNEL_START_ENV = "HELPERS_KERNEL_START_TIMEOUT"
KERNEL_START_DEFAULT = 600


class ExperimentError(ValueError):
    """An experiment file or a DATA_DIR override that cannot be used."""


def kernel_start_timeout() -> int:
    """Seconds papermill waits for a kernel to start: ``$HELPERS_KERNEL_START_TIMEOUT`` or 600."""
    raw = os.environ.get(KERNEL_START_ENV, "").strip()
    if not raw:
        return KERNEL_START_DEFAULT
    if not raw.isdigit() or int(raw) < 1:
        raise ExperimentError(f"{KERNEL_START_ENV}={raw!r} must be a whole number of seconds, at least 1")
    return int(raw)


# ---------------------------------------------------------------- the experiment file

_YAML = ConfigDict(strict=True, extra="forbid")


def _field(model: type[BaseModel], name: str):
    """A field of a params model, reused (type, constraints and default) in the file's models."""
    field = model.model_fields[name]
    return field.annotation, field


# A dataset's settings are data prep's parameters (``split_seed`` is PrepParams' ``seed``).
DatasetSettings = create_model(
    "DatasetSettings", __config__=_YAML,
    **{name: _field(PrepParams, name) for name in ("image_size", "balance", "split", "n_per_class")},
    split_seed=_field(PrepParams, "seed"),
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


class GridEntry(BaseModel):
    model_config = _YAML

    dataset: str
    archs: list[Literal[ARCH_NAMES]] = Field(min_length=1)
    head: Head = "replace"
    arms: list[Arm] = Field(min_length=1)
    seeds: list[NonNegInt] = Field(min_length=1)
    split: Optional[Split] = None              # None = the dataset's split
    train: dict[str, Any] = {}                 # TrainSettings over the file's defaults


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
    grid: list[GridEntry] = Field(min_length=1)
    explain: dict[str, ExplainSettings] = {}
    audit: list[str] = []

    @model_validator(mode="after")
    def _datasets_known(self):
        unknown = [d for d in self.datasets if d not in DATASET_NAMES]
        if unknown:
            raise ValueError(f"datasets: unknown dataset(s) {unknown}; allowed: {list(DATASET_NAMES)}")
        used = {f"grid[{i}]": e.dataset for i, e in enumerate(self.grid)}
        used.update({f"explain.{d}": d for d in self.explain})
        used.update({f"audit[{i}]": d for i, d in enumerate(self.audit)})
        for where, d in used.items():
            if d not in self.datasets:
                raise ValueError(f"{where} uses dataset {d!r}, which is not listed under "
                                 f"datasets: {list(self.datasets)}")
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
    """``DATA_DIR`` is one path (one-dataset experiments) or ``name=path,name=path``."""
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


def _planned(model: type[BaseModel], values: dict) -> dict:
    """Check ``values`` against ``model`` as far as a plan can: whether a device is present or a
    source checkpoint is readable is checked when the step runs (the source is not trained yet)."""
    machine = {"device": "auto", "init_from": ""}
    check(model, {**values, **{k: v for k, v in machine.items() if k in values}})
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
            (f"grid[{i}].train", {**exp["defaults"], **e["train"]}) for i, e in enumerate(exp["grid"])]:
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
    exp["data_dirs"] = {d: dirs.get(d, "") for d in datasets}
    exp["path"] = str(path)
    runs(exp)  # every run's parameters are checked before any work
    return exp


# ---------------------------------------------------------------- the grid

def _prep(exp: dict, dataset: str, split: str) -> dict:
    """PrepParams values of ``dataset`` under ``split`` in this experiment."""
    s = exp["datasets"][dataset]
    return {"dataset": dataset, "data_dir": exp["data_dirs"].get(dataset, ""),
            "image_size": s["image_size"], "balance": s["balance"], "seed": s["split_seed"],
            "split": split, "n_per_class": s["n_per_class"]}


def runs(exp: dict) -> dict[RunId, dict]:
    """Every training run of the experiment, in file order: its identity -> its TrainParams values
    (``experiment`` names the run folder's parent: no explicit run_dir)."""
    grid: dict[RunId, dict] = {}
    for i, entry in enumerate(exp["grid"]):
        ds = entry["dataset"]
        split = entry["split"] or exp["datasets"][ds]["split"]
        prep = _prep(exp, ds, split)
        data_fields = {"dataset": ds, "data_dir": prep["data_dir"], "image_size": prep["image_size"],
                       "balance": prep["balance"], "split": split, "split_seed": prep["seed"],
                       "n_per_class": prep["n_per_class"]}
        train = TrainSettings(**{**exp["defaults"], **entry["train"]}).model_dump()
        head = entry["head"]
        for arch in entry["archs"]:
            for arm in entry["arms"]:
                for seed in entry["seeds"]:
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
                                train_fraction=train["train_fraction"])
                    params = {**data_fields, "arch": arch, "head": head, "seed": seed, **fields,
                              **train, "experiment": exp["name"]}
                    if rid not in grid:
                        try:
                            _planned(TrainParams, params)
                        except ParameterError as e:
                            raise ExperimentError(f"{exp['path']}: grid[{i}] ({rid.key}): {e}") from None
                        grid[rid] = params
    keys = {rid.key for rid in grid}
    for rid in grid:
        if rid.init_source and rid.init_source not in keys:
            raise ExperimentError(f"{exp['path']}: run {rid.key} starts from {rid.init_source}, "
                                  "which the grid does not train")
    return grid


def source_of(exp_runs: dict[RunId, dict], rid: RunId) -> RunId | None:
    """The run whose best.pt ``rid`` starts from (init_from), if any."""
    return next((r for r in exp_runs if r.key == rid.init_source), None) if rid.init_source else None


def find_run(exp: dict, run: str) -> RunId:
    """A run of the grid by its key (``<dataset>/<name>``) or its run folder."""
    for rid in runs(exp):
        if run in (rid.key, str(rid.run_dir())):
            return rid
    raise ExperimentError(f"run {run!r} is not in experiment {exp['name']!r}")


def preps(exp: dict) -> list[dict]:
    """PrepParams values of every prepared folder the experiment reads: the datasets' own
    splits, the splits of the grid's runs, and the random split the audit measures."""
    wanted = [(d, s["split"]) for d, s in exp["datasets"].items()]
    wanted += [(rid.dataset, rid.split) for rid in runs(exp)]
    wanted += [(d, "random") for d in exp["audit"]]
    return [_prep(exp, d, split) for d, split in dict.fromkeys(wanted)]


def prepared_dir(prep: dict) -> Path:
    """The folder ``data.prepare(**prep)`` writes, computed without any work."""
    return data.prepared_dir(**prep)


def results_dir(exp: dict) -> Path:
    return Path("results") / exp["name"]


def status_file(rid: RunId) -> Path:
    """The train step's output: the run's outcome, next to the run it describes."""
    return rid.run_dir() / "status.json"


def run_state(rid: RunId) -> tuple[str, str]:
    """(state, reason) from the run folder: complete (metrics.json), missing (missing.json), not run."""
    folder = rid.run_dir()
    if (folder / "metrics.json").is_file():
        return "complete", ""
    if (folder / "missing.json").is_file():
        try:
            return "missing", str(json.loads((folder / "missing.json").read_text()).get("reason", ""))
        except (OSError, ValueError):
            return "missing", "unreadable missing.json"
    return "not run", ""


# A run that cannot happen here by design (no ImageNet weights on an air-gapped machine) is
# "absent": the book shows the gap and make report succeeds. Any other exception is "failed".
ABSENT_BY_DESIGN = ("MissingWeightsError",)


def run_kind(rid: RunId) -> str:
    """Why a missing run is missing: "absent" (by design) or "failed" (an exception in training)."""
    try:
        record = json.loads((rid.run_dir() / "missing.json").read_text())
    except (OSError, ValueError):
        return "failed"
    if record.get("kind"):
        return str(record["kind"])
    # written before runs had a kind: the reason starts with the exception's name
    return "absent" if str(record.get("reason", "")).startswith(ABSENT_BY_DESIGN) else "failed"


def _failure_reason(exc: BaseException) -> str:
    """The user-facing line of a failed notebook: the exception's type and message."""
    ename = getattr(exc, "ename", type(exc).__name__)
    evalue = getattr(exc, "evalue", str(exc))
    return f"{ename}: {evalue}".strip()


def execute(notebook: str | os.PathLike, out: str | os.PathLike, params: dict) -> None:
    """One papermill run from the repository root, with a generous kernel start timeout."""
    import papermill as pm

    Path(out).parent.mkdir(parents=True, exist_ok=True)
    pm.execute_notebook(str(notebook), str(out), parameters=params, kernel_name="python3",
                        progress_bar=False, cwd=os.getcwd(), start_timeout=kernel_start_timeout())


def train_notebook(exp: dict, rid: RunId) -> Path:
    return results_dir(exp) / "notebooks" / "train" / f"{rid.dataset}__{rid.name}.ipynb"


def replaced_because(rid: RunId, values: dict) -> str:
    """Why the run folder holds a run that this grid replaces ("" when it holds this run or
    nothing): Snakemake reruns a training job when its settings or its prepared data changed, and
    the old run is then obsolete. An interrupted run of the same settings and data resumes."""
    if not (rid.run_dir() / "params.json").exists():
        return ""
    from . import training  # torch: only when there is a run folder to compare with

    return training.stale(values)


def train_one(experiment: str, run: str, data_dir: str = "") -> dict:
    """Run one training notebook and write its status; on failure record the run as missing."""
    exp = load_experiment(experiment, data_dir)
    grid = runs(exp)
    rid = find_run(exp, run)
    notebook_out = train_notebook(exp, rid)
    missing = rid.run_dir() / "missing.json"
    source = source_of(grid, rid)
    reason, kind = "", "failed"
    if source is not None and run_state(source)[0] != "complete":
        reason = f"source run {source.key} is not complete: {run_state(source)[1] or 'not run'}"
        kind = run_kind(source)
    else:
        try:
            values = grid[rid]
            if changed := replaced_because(rid, values):
                print(f"run {rid.key}: its settings or data changed since it was trained ({changed}); "
                      f"training it again", file=sys.stderr)
                values = {**values, "force": True}
            execute("notebooks/train.ipynb", notebook_out, values)
        except Exception as exc:  # noqa: BLE001 - any failure becomes a visible gap, never a silent one
            reason = _failure_reason(exc)
            kind = "absent" if getattr(exc, "ename", type(exc).__name__) in ABSENT_BY_DESIGN else "failed"
    if reason:
        status = {"state": "missing", "kind": kind, "key": rid.key, "reason": reason,
                  "notebook": str(notebook_out)}
        atomic.write_json(missing, {"reason": reason, "kind": kind, "notebook": str(notebook_out),
                                    "run": rid.as_record()})
        print(f"run {rid.key} could not complete ({kind}): {reason}", file=sys.stderr)
    else:
        missing.unlink(missing_ok=True)
        status = {"state": "complete", "key": rid.key, "run_dir": str(rid.run_dir()),
                  "notebook": str(notebook_out)}
    atomic.write_json(status_file(rid), status)
    return status


def forget_missing(exp: dict) -> list[str]:
    """Drop the status files of runs that did not complete, so that the next invocation tries
    them again. Called when an invocation ends (the Snakefile's onsuccess/onerror), never
    while the Snakefile is parsed."""
    dropped = []
    for rid in runs(exp):
        path = status_file(rid)
        if path.exists() and run_state(rid)[0] != "complete":
            path.unlink(missing_ok=True)
            dropped.append(str(path))
    return dropped


def grid_status(exp: dict):
    """One row per run of the grid: complete, missing (with the reason) or not run."""
    import pandas as pd

    rows = []
    for rid in runs(exp):
        state, reason = run_state(rid)
        rows.append({
            "dataset": rid.dataset, "run": rid.name, "arch": rid.arch, "head": rid.head,
            "arm": rid.arm, "split": rid.split, "seed": rid.seed,
            "state": state, "reason": reason, "run_dir": str(rid.run_dir()),
        })
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- the other notebook steps

def gap_reason(exp: dict, step: str, dataset: str) -> str | None:
    """Why the book has no ``step`` notebook of ``dataset`` in this experiment (None: it has one)."""
    if dataset not in exp["datasets"]:
        return f"experiment {exp['name']} does not use {dataset}"
    if (step == "explain" and dataset not in exp["explain"]) or (step == "audit" and dataset not in exp["audit"]):
        return f"experiment {exp['name']} has no {step} step for {dataset}"
    return None


def notebook_params(exp: dict, step: str, dataset: str, split: str | None = None) -> dict:
    """Papermill parameters of a per-dataset step (data_prep, evaluate, explain, audit), checked
    against the step's model in helpers.params. ``split`` picks a data_prep folder (default: the
    dataset's own split)."""
    if step not in BOOK_STEPS:
        raise ExperimentError(f"unknown step {step!r}; steps: {', '.join(BOOK_STEPS)}")
    reason = gap_reason(exp, step, dataset)
    if reason:
        raise ExperimentError(f"{exp['path']}: {reason}")
    settings = exp["datasets"][dataset]
    out_dir = str(results_dir(exp) / dataset / step)
    if step == "data_prep":
        values = _prep(exp, dataset, split or settings["split"])
    elif step == "evaluate":
        values = {"dataset": dataset, "out_dir": out_dir,
                  "runs": [str(rid.run_dir()) for rid in runs(exp) if rid.dataset == dataset]}
    elif step == "explain":
        values = {"dataset": dataset, "arch": exp["explain"][dataset]["arch"], "out_dir": out_dir,
                  "runs": [str(rid.run_dir()) for rid in explained_runs(exp, dataset)],
                  "n_per_class": exp["explain"][dataset]["n_per_class"],
                  "n_road_images": exp["explain"][dataset]["n_road_images"]}
    else:  # audit: measured on the random split (and the grouped one it tries itself)
        prep = _prep(exp, dataset, "random")
        values = {k: prep[k] for k in ("dataset", "data_dir", "image_size", "seed", "balance", "n_per_class")}
        values["out_dir"] = out_dir
    return _planned(NOTEBOOK_PARAMS[step], values)


def gap_params(exp: dict, step: str, dataset: str) -> dict:
    """Parameters of the gap note standing in for a step the experiment does not run."""
    return _planned(NOTEBOOK_PARAMS["gap"], {"step": step, "dataset": dataset,
                                             "reason": gap_reason(exp, step, dataset)})


def explained_runs(exp: dict, dataset: str) -> list[RunId]:
    """The ImageNet/scratch pair (seed 0, the dataset's split) the explain step compares."""
    settings = exp["explain"][dataset]
    return [RunId(experiment=exp["name"], dataset=dataset, arch=settings["arch"], head=settings["head"],
                  arm=arm, seed=0, split=exp["datasets"][dataset]["split"]) for arm in ("imagenet", "scratch")]


def step_notebook(exp: dict, step: str, dataset: str) -> Path:
    """The executed notebook a book page pastes from: the step's, or a gap note's."""
    nb = results_dir(exp) / "notebooks"
    if gap_reason(exp, step, dataset):
        return nb / "gap" / f"{step}_{dataset}.ipynb"
    if step == "data_prep":
        prep = _prep(exp, dataset, exp["datasets"][dataset]["split"])
        return data_prep_notebook(exp, prep)
    return nb / f"{step}_{dataset}.ipynb"


def data_prep_notebook(exp: dict, prep: dict) -> Path:
    """The data_prep notebook of a prepared folder: results/<exp>/notebooks/data_prep/<dataset>/<folder>.ipynb."""
    folder = prepared_dir(prep)
    return results_dir(exp) / "notebooks" / "data_prep" / prep["dataset"] / f"{folder.name}.ipynb"


def summary_notebook(exp: dict) -> Path:
    return results_dir(exp) / "notebooks" / "summary.ipynb"


def reference_notebook(exp: dict) -> Path:
    """The real-data pages' notebook, run on the committed records of the reference study."""
    return results_dir(exp) / "notebooks" / "reference.ipynb"


REAL_NOTEBOOKS = ("explain", "audit", "evaluate")   # the reference study's own, shown as recorded


BOOK_DIR = Path("book")
GENERATED = BOOK_DIR / "generated"


def reproducibility_table(exp: dict):
    """Per run: parameters, seconds, device, library versions and git commit."""
    import pandas as pd

    rows = []
    for spec in runs(exp):
        row = {"dataset": spec.dataset, "run": spec.name}
        params_path, metrics_path = spec.run_dir() / "params.json", spec.run_dir() / "metrics.json"
        if metrics_path.exists():
            params = json.loads(params_path.read_text()) if params_path.exists() else {}
            metrics = json.loads(metrics_path.read_text())
            row.update({
                "arch": params.get("arch"), "head": params.get("head"),
                "arm": params.get("arm"), "init_from": params.get("init_from") or "",
                "image_size": params.get("image_size"), "epochs": params.get("epochs"),
                "epochs_run": metrics.get("epochs_run"), "batch_size": params.get("batch_size"),
                "lr": params.get("lr"), "normalize": params.get("normalize"),
                "split": params.get("split"), "seed": params.get("seed"),
                "train_seconds": round(float(metrics.get("train_seconds") or 0), 1),
                "device": metrics.get("device"), "torch": metrics.get("torch_version"),
                "git_commit": (metrics.get("git_commit") or "")[:10],
                # the prepared data it came from: info.json's fingerprint (data prep's params)
                "data_fingerprint": (params.get("prepared_fingerprint") or "")[:12],
            })
        else:
            missing = spec.run_dir() / "missing.json"
            reason = json.loads(missing.read_text()).get("reason") if missing.exists() else "not run"
            row.update({"arch": spec.arch, "head": spec.head, "seed": spec.seed,
                        "device": f"missing: {reason}"})
        rows.append(row)
    return pd.DataFrame(rows)


def library_versions() -> dict:
    import importlib.metadata as md
    import platform

    names = ["torch", "torchvision", "timm", "numpy", "scikit-learn", "scipy", "pandas", "grad-cam",
             "papermill", "snakemake", "jupyter-book", "myst-nb"]
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "not installed"
    return out


def report_command(exp: dict) -> str:
    data = ""
    real = {d: p for d, p in exp["data_dirs"].items() if p}
    if real:
        joined = ",".join(f"{d}={p}" for d, p in real.items()) if len(real) > 1 else next(iter(real.values()))
        data = f" DATA_DIR={joined}"
    return f"make report EXPERIMENT={exp['name']}{data}"


_DIRECTIVE = re.compile(r"```\{glue\}\s+(?P<key>\S+)\s*\n:doc:\s*(?P<doc>\S+)")
_ROLE = re.compile(r"\{glue:text\}`(?P<doc>[^`:]+)::(?P<key>[^`:]+)(?::(?P<fmt>[^`]*))?`")


def page_keys(doc: str, pages: Path = BOOK_DIR) -> dict[str, str]:
    """Glue keys the book's pages take from ``doc`` (e.g. ``generated/evaluate_ct_kidney.ipynb``),
    mapped to how they are pasted: ``"block"`` (directive), ``"text"`` (inline role) or
    ``"number"`` (inline role with a numeric format such as ``.3f``)."""
    keys: dict[str, str] = {}
    for page in sorted(pages.glob("*.md")):
        text = page.read_text()
        for m in _DIRECTIVE.finditer(text):
            if m["doc"] == doc:
                keys.setdefault(m["key"], "block")
        for m in _ROLE.finditer(text):
            if m["doc"] == doc:
                numeric = (m["fmt"] or "")[-1:] in tuple("eEfFgGn%d")
                keys[m["key"]] = "number" if numeric else "text"
    return keys


def glue_gap(step: str, dataset: str, reason: str) -> dict[str, str]:
    """Glue a visible gap note under every key the pages expect from a step that did not run."""
    from html import escape

    from IPython.display import HTML
    from myst_nb import glue

    keys = page_keys(f"generated/{step}_{dataset}.ipynb")
    note = HTML(f'<div class="admonition warning"><p class="admonition-title">Not available</p>'
                f"<p>{escape(step)} of {escape(dataset)}: {escape(reason)}</p></div>")
    for key, kind in keys.items():
        # A number pasted with a format spec must stay a number: NaN reads "nan".
        value = {"text": f"n/a ({reason})", "number": float("nan")}.get(kind, note)
        glue(key, value, display=False)
    return keys


def _copy_titled(src: Path, dst: Path, suffix: str) -> None:
    """Copy an executed notebook, naming its dataset or run in its title (the appendix lists
    one entry per notebook, and several share a template)."""
    import nbformat

    nb = nbformat.read(src, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "markdown" and cell.source.lstrip().startswith("# "):
            first, _, rest = cell.source.lstrip().partition("\n")
            cell.source = f"{first}: {suffix}\n{rest}"
            break
    nbformat.write(nb, dst)


def build_book(experiment: str, data_dir: str = "", strict: bool = True) -> Path:
    """Gather the executed notebooks of one experiment into book/generated and build the book.

    Every notebook it reads is an output of the Snakefile (the steps, their gap notes, the
    summary); it executes none itself."""
    import shutil
    import subprocess

    exp = load_experiment(experiment, data_dir)
    pages = {(step, ds): step_notebook(exp, step, ds) for step in BOOK_STEPS for ds in DATASET_NAMES}
    absent = [str(p) for p in [*pages.values(), summary_notebook(exp)] if not p.is_file()]
    if absent:
        raise ExperimentError(f"the book needs {absent}; run the workflow first "
                              f"(`snakemake --cores 1 --config experiment={exp['name']}`)")
    tmp = GENERATED.with_name(GENERATED.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "train").mkdir(parents=True)
    for (step, ds), src in pages.items():
        if gap_reason(exp, step, ds):
            shutil.copy2(src, tmp / f"{step}_{ds}.ipynb")
        else:
            _copy_titled(src, tmp / f"{step}_{ds}.ipynb", ds)
    shutil.copy2(summary_notebook(exp), tmp / "summary.ipynb")
    if not reference_notebook(exp).is_file():
        raise ExperimentError(f"the book needs {reference_notebook(exp)}; run the workflow first")
    shutil.copy2(reference_notebook(exp), tmp / "reference.ipynb")
    from . import records  # it imports this module

    recorded = records.folder(records.REFERENCE) / "notebooks"
    (tmp / "real").mkdir()
    for step in REAL_NOTEBOOKS:
        for ds in DATASET_NAMES:
            src = recorded / f"{step}_{ds}.ipynb"
            if not src.is_file():
                raise ExperimentError(f"{src} is missing from the committed records; re-export them "
                                      f"(python -m helpers.records export {records.REFERENCE} --data-dir ...)")
            _copy_titled(src, tmp / "real" / f"{step}_{ds}.ipynb", f"{ds}, real images")
    for rid in runs(exp):
        path = train_notebook(exp, rid)
        if path.is_file():
            _copy_titled(path, tmp / "train" / path.name, f"{rid.dataset} / {rid.name}")
    shutil.rmtree(GENERATED, ignore_errors=True)
    os.replace(tmp, GENERATED)
    # A clean build: pages of an earlier experiment must not linger in the site.
    shutil.rmtree("_build", ignore_errors=True)
    cmd = ["jupyter-book", "build", str(BOOK_DIR)] + (["-W", "--keep-going"] if strict else [])
    subprocess.run(cmd, check=True)
    index = Path("_build") / "html" / "index.html"
    print(f"Book of experiment {exp['name']}: {index.resolve()}")
    return index


def fetch_data_dirs(experiment: str, data_dir: str = "") -> str:
    """``DATA_DIR`` for ``make report``: the given folders, plus a kagglehub download (its cache,
    with progress bars) for every real dataset of the experiment that has none.

    Synthetic experiments need nothing. Without network or Kaggle credentials a download fails
    at once with the manual-download steps (:class:`helpers.data.DownloadError`).
    """
    from . import data

    exp = load_experiment(experiment, "", need_data=False)
    datasets = list(exp["datasets"])
    if exp.get("synthetic"):
        return data_dir
    dirs = parse_data_dirs(data_dir, datasets)
    for dataset in datasets:
        if not dirs.get(dataset):
            print(f"{dataset}: no DATA_DIR given; fetching it with kagglehub "
                  f"({data.get_spec(dataset).kaggle_slug})", file=sys.stderr)
            dirs[dataset] = str(data.download(dataset))
    return ",".join(f"{d}={dirs[d]}" for d in datasets)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.workflow", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("train", help="run one training notebook of an experiment")
    p.add_argument("experiment")
    p.add_argument("run", help="<dataset>/<run name> or the run folder")
    p.add_argument("--data-dir", default="")
    p = sub.add_parser("params", help="print the papermill parameters of a step as JSON")
    p.add_argument("experiment")
    p.add_argument("step", choices=list(BOOK_STEPS))
    p.add_argument("dataset")
    p.add_argument("--split", default=None, help="data_prep: the split of the prepared folder")
    p.add_argument("--data-dir", default="")
    p = sub.add_parser("book", help="gather an experiment's notebooks and build the book")
    p.add_argument("experiment")
    p.add_argument("--data-dir", default="")
    p.add_argument("--no-strict", action="store_true", help="do not turn Sphinx warnings into errors")
    p = sub.add_parser("status", help="print the state of every run of an experiment")
    p.add_argument("experiment")
    p.add_argument("--data-dir", default="")
    p = sub.add_parser("data-dirs", help="print DATA_DIR with kagglehub downloads for the datasets "
                                         "that have none (real-data experiments)")
    p.add_argument("experiment")
    p.add_argument("--data-dir", default="")
    p = sub.add_parser("forget-missing", help="drop the status of runs that did not complete")
    p.add_argument("experiment")
    p.add_argument("--data-dir", default="")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "train":
            status = train_one(args.experiment, args.run, args.data_dir)
            print(json.dumps(status))
        elif args.cmd == "params":
            exp = load_experiment(args.experiment, args.data_dir)
            print(json.dumps(notebook_params(exp, args.step, args.dataset, args.split)))
        elif args.cmd == "book":
            build_book(args.experiment, args.data_dir, strict=not args.no_strict)
        elif args.cmd == "status":
            exp = load_experiment(args.experiment, args.data_dir)
            print(grid_status(exp).to_string(index=False))
        elif args.cmd == "data-dirs":
            print(fetch_data_dirs(args.experiment, args.data_dir))
        elif args.cmd == "forget-missing":
            exp = load_experiment(args.experiment, args.data_dir)
            print("\n".join(forget_missing(exp)) or "no missing runs")
    except ExperimentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except data.DownloadError as exc:  # no network or credentials: the manual steps
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception:  # noqa: BLE001
        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
