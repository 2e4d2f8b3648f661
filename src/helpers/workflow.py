"""The papermill steps the Snakefile calls, the runs' status files, and the command line.

The experiment file and its grid are :mod:`helpers.experiment`'s; the book's build is
:mod:`helpers.book`'s. Each training run is one papermill execution of ``notebooks/train.ipynb``. Its outcome is
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
import sys
import traceback
from pathlib import Path

from . import atomic, data, kernel
from .experiment import (ExperimentError, all_sweeps, audit_folds, choose_lr, find_run, load_experiment, parse_data_dirs, planned,
                         prep_of, prepared_dir, preps, results_dir, runs, source_of, stages, sweep_scores, sweeps)
from .params import BOOK_STEPS, NOTEBOOK_PARAMS, PAIR, RunId


# A kernel that starts slowly (a loaded machine, parallel jobs) is not an error.
KERNEL_START_ENV = "HELPERS_KERNEL_START_TIMEOUT"
KERNEL_START_DEFAULT = 600


def kernel_start_timeout() -> int:
    """Seconds papermill waits for a kernel to start: ``$HELPERS_KERNEL_START_TIMEOUT`` or 600."""
    raw = os.environ.get(KERNEL_START_ENV, "").strip()
    if not raw:
        return KERNEL_START_DEFAULT
    if not raw.isdigit() or int(raw) < 1:
        raise ExperimentError(f"{KERNEL_START_ENV}={raw!r} must be a whole number of seconds, at least 1")
    return int(raw)


def papermill_command() -> str:
    """The shell command every notebook step of the Snakefile starts with (input, output and
    parameters follow): the kernel on sockets of its own, one more start if it dies starting."""
    return (f"papermill --engine {kernel.ENGINE} --cwd . --no-progress-bar "
            f"--start-timeout {kernel_start_timeout()}")


# ---------------------------------------------------------------- the runs' status


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
    pm.execute_notebook(str(notebook), str(out), parameters=params, kernel_name=kernel.KERNEL_NAME,
                        engine_name=kernel.ENGINE, progress_bar=False, cwd=os.getcwd(), start_timeout=kernel_start_timeout())


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


def tuned_lr(sweep) -> tuple[float | None, str, str]:
    """(the rate a sweep chooses, "", "") from its run folders' validation scores, or (None, why
    not, kind): a sweep run absent by design makes the tuned run absent too."""
    unfinished = [r for r in sweep.candidates.values() if run_state(r)[0] != "complete"]
    if unfinished:
        kind = "absent" if all(run_kind(r) == "absent" for r in unfinished) else "failed"
        return None, (f"its learning-rate sweep is not complete: {', '.join(r.key for r in unfinished)} "
                      f"{'is' if len(unfinished) == 1 else 'are'} not"), kind
    return choose_lr({lr: sweep_scores(r.run_dir()) for lr, r in sweep.candidates.items()}, sweep.by), "", ""


def train_one(experiment: str, run: str, data_dir: str = "") -> dict:
    """Run one training notebook and write its status; on failure record the run as missing.
    A tuned run trains at the rate its sweep chose on validation."""
    exp = load_experiment(experiment, data_dir)
    grid = runs(exp)
    rid = find_run(exp, run)
    notebook_out = train_notebook(exp, rid)
    missing = rid.run_dir() / "missing.json"
    source = source_of(grid, rid)
    sweep = sweeps(exp).get(rid)
    lr, reason, kind = grid[rid]["lr"], "", "failed"
    if sweep is not None:
        lr, reason, kind = tuned_lr(sweep)
    if not reason and source is not None and run_state(source)[0] != "complete":
        reason = f"source run {source.key} is not complete: {run_state(source)[1] or 'not run'}"
        kind = run_kind(source)
    if not reason:
        if sweep is not None:
            print(f"run {rid.key}: learning rate {lr:g}, chosen by {sweep.by} from "
                  f"{', '.join(f'{c:g}' for c in sorted(sweep.candidates))}", file=sys.stderr)
        try:
            values = {**grid[rid], "lr": lr}
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

def book_datasets(exp: dict) -> list[str]:
    """The datasets whose step pages the book holds: the papers' (the narrative pages cite both)
    and the experiment's own, in the dataset table's order. A dataset neither paper used and
    the experiment does not use gets no page; a dataset of one's own comes last."""
    from .metrics import load_published   # pandas and scikit-learn: only when asked

    wanted = set(load_published()) | set(exp["datasets"])
    return [d for d in data.DATASETS if d in wanted] + [d for d in exp["datasets"] if d not in data.DATASETS]


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
        values = prep_of(exp, dataset, split or settings["split"])
    elif step == "evaluate":
        values = {"dataset": dataset, "out_dir": out_dir,
                  "runs": [str(rid.run_dir()) for rid in answer_runs(exp, dataset)]}
    elif step == "explain":
        values = {"dataset": dataset, "arch": exp["explain"][dataset]["arch"], "out_dir": out_dir,
                  "runs": [str(rid.run_dir()) for rid in explained_runs(exp, dataset)],
                  "n_per_class": exp["explain"][dataset]["n_per_class"],
                  "n_road_images": exp["explain"][dataset]["n_road_images"]}
    else:  # audit: measured on the random split (and the grouped one it tries itself), or the given one
        prep = prep_of(exp, dataset, data.get_spec(dataset).audit_split)
        values = {k: prep[k] for k in ("dataset", "data_dir", "image_size", "seed", "balance", "n_per_class")}
        values.update(out_dir=out_dir, folds=audit_folds(exp, dataset))
    return planned(NOTEBOOK_PARAMS[step], values)


def answer_runs(exp: dict, dataset: str) -> list[RunId]:
    """The dataset's runs that the answer reads: every run but a finished sweep's runs at the
    rates it did not choose (their test scores are never read). A sweep not finished yet keeps
    all its runs, so that a study recorded in stages shows what it has."""
    passed_over = set()
    for sweep in all_sweeps(exp):
        if next(iter(sweep.candidates.values())).dataset != dataset:
            continue   # another dataset's sweep: its run folders are not read
        lr, reason, _ = tuned_lr(sweep)
        if lr is not None:
            passed_over |= {r for rate, r in sweep.candidates.items() if rate != lr}
    return [rid for rid in runs(exp) if rid.dataset == dataset and rid not in passed_over]


def gap_params(exp: dict, step: str, dataset: str) -> dict:
    """Parameters of the gap note standing in for a step the experiment does not run."""
    return planned(NOTEBOOK_PARAMS["gap"], {"step": step, "dataset": dataset,
                                             "reason": gap_reason(exp, step, dataset)})


def _explained(exp: dict, dataset: str) -> list[RunId | object]:
    """Per arm of the pair: its seed-0 run, or the sweep whose chosen rate gives it."""
    settings = exp["explain"][dataset]
    grid, every_sweep = runs(exp), all_sweeps(exp)
    out = []
    for arm in PAIR:
        rid = RunId(experiment=exp["name"], dataset=dataset, arch=settings["arch"], head=settings["head"],
                    arm=arm, seed=0, split=exp["datasets"][dataset]["split"])
        sweep = next((sw for sw in every_sweep if any(
            c.model_copy(update={"tuning": ""}) == rid for c in sw.candidates.values())), None)
        out.append(sweep if sweep is not None and rid not in grid else rid)
    return out


def explained_inputs(exp: dict, dataset: str) -> list[RunId]:
    """The runs the explain step waits for: the pair, or every rate of a swept arm's sweep."""
    return [r for item in _explained(exp, dataset)
            for r in (item.candidates.values() if hasattr(item, "candidates") else [item])]


def explained_runs(exp: dict, dataset: str) -> list[RunId]:
    """The ImageNet/scratch pair (seed 0, the dataset's split, the file's defaults) the explain
    step compares; for an arm whose rate is swept, its run at the rate the sweep chose (read from
    the run folders, so it is known once the sweep has run)."""
    out = []
    for item in _explained(exp, dataset):
        if hasattr(item, "candidates"):
            lr, reason, _ = tuned_lr(item)
            if lr is None:
                raise ExperimentError(f"explain {dataset}: {reason}")
            item = item.candidates[lr]
        out.append(item)
    return out


def step_notebook(exp: dict, step: str, dataset: str) -> Path:
    """The executed notebook a book page pastes from: the step's, or a gap note's."""
    nb = results_dir(exp) / "notebooks"
    if gap_reason(exp, step, dataset):
        return nb / "gap" / f"{step}_{dataset}.ipynb"
    if step == "data_prep":
        prep = prep_of(exp, dataset, exp["datasets"][dataset]["split"])
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


def fetch_data_dirs(experiment: str, data_dir: str = "") -> str:
    """``DATA_DIR`` for ``make report``: the given folders, plus a kagglehub download (its cache,
    with progress bars) for every real dataset of the experiment that has none.

    Synthetic experiments need nothing. Without network or Kaggle credentials a download fails
    at once with the manual-download steps (:class:`helpers.data.DownloadError`).
    """
    from . import data

    exp = load_experiment(experiment, data_dir, need_data=False)   # registers a dataset of one's own
    datasets = list(exp["datasets"])
    if exp.get("synthetic"):
        return data_dir
    dirs = parse_data_dirs(data_dir, datasets)
    for dataset in datasets:
        source = data.get_spec(dataset).derived_from
        if not dirs.get(dataset) and source and dirs.get(source):
            dirs[dataset] = dirs[source]   # a version of a dataset already here: its files
        if not dirs.get(dataset):
            print(f"{dataset}: no DATA_DIR given; fetching it with kagglehub "
                  f"({data.get_spec(dataset).kaggle_slug})", file=sys.stderr)
            dirs[dataset] = str(data.download(dataset))
    return ",".join(f"{d}={dirs[d]}" for d in datasets)


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
    p = sub.add_parser("status", help="print the state of every run of an experiment")
    p.add_argument("experiment")
    p.add_argument("--data-dir", default="")
    p = sub.add_parser("data-dirs", help="print DATA_DIR with kagglehub downloads for the datasets "
                                         "that have none (real-data experiments)")
    p.add_argument("experiment")
    p.add_argument("--data-dir", default="")
    p = sub.add_parser("targets", help="print the status files of one stage's runs on one line "
                                       "(snakemake targets, for SNAKE_ARGS)")
    p.add_argument("experiment")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--stage", type=int)
    which.add_argument("--prepared", action="store_true", help="the prepared-data folders instead "
                       "(data prep alone: before `records restore` on a fresh clone)")
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
        elif args.cmd == "status":
            exp = load_experiment(args.experiment, args.data_dir)
            print(grid_status(exp).to_string(index=False))
        elif args.cmd == "targets" and args.prepared:
            exp = load_experiment(args.experiment, args.data_dir)
            print(" ".join(str(prepared_dir(p)) for p in preps(exp)))
        elif args.cmd == "targets":
            exp = load_experiment(args.experiment, need_data=False)   # run names need no images
            wanted = [rid for rid, n in stages(exp).items() if n == args.stage]
            if not wanted:
                raise ExperimentError(f"experiment {exp['name']!r} has no runs in stage {args.stage}; "
                                      f"its stages: {sorted(set(stages(exp).values()))}")
            print(" ".join(str(status_file(rid)) for rid in wanted))   # one line: make splits lines
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
