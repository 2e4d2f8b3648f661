"""Committed run records: a study's results without its checkpoints or images, with provenance.

``records/<experiment>/`` holds what the book's real-data pages read, so that a fresh clone with
no data and no network shows them (CONTRACTS.md lists the files):

* ``runs/<dataset>/<run name>/``: each run's ``params.json``, ``history.csv``, ``metrics.json``,
  ``predictions.csv`` (or ``missing.json`` with the reason it could not run);
* ``data/<prepared folder>.json``: each prepared folder's ``info.json`` (split counts, near-copy
  share of each split, fingerprint); ``data/<dataset>-views.csv``: each CT slice's view (axial or
  coronal), ``data/<dataset>-shortcut.csv``: the intensity-only model's prediction for each
  test image, and ``data/<dataset>-fold-baselines.csv``: the intensity-only and view-alone
  baselines fold by fold of a cross-validation, all from the audit step;
* ``notebooks/``: the executed evaluate, explain, audit and data-prep notebooks (not the summary:
  a study recorded stage by stage has runs of later stages still to train, and the reference
  notebook, rebuilt from these records on every build, is its summary);
* ``manifest.json``: the image set's fingerprint (every file's name and SHA-256), the commit,
  machine and device, library versions and the wall time of every step.

``python -m helpers.records export EXPERIMENT --data-dir ...`` writes it from the run folders
(again at any time: it only adds and replaces, so an interrupted study loses nothing);
``check`` says where the experiment file and the records disagree.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

from . import atomic
from . import experiment as ex
from . import workflow as wf
from .params import RECORD_EXTRAS, TrainParams, as_recorded, role_fields

ROOT = Path("records")
REFERENCE = "real_study"   # the study whose records the book's real-data pages show
RUN_RECORD_FILES = ("params.json", "history.csv", "metrics.json", "predictions.csv", "missing.json")
# Parameters of a run that describe the machine or the paths, not the experiment (tagged on
# the fields), and the facts training adds to params.json.
MACHINE_PARAMS = frozenset(role_fields(TrainParams, "machine", "location")) | set(RECORD_EXTRAS)


def folder(exp: dict, root: str | os.PathLike = ROOT) -> Path:
    """``records/<experiment>/`` of a loaded experiment."""
    return Path(root) / exp["name"]


def run_record(rid, root: str | os.PathLike = ROOT) -> Path:
    """The record folder of a run: ``records/<experiment>/runs/<dataset>/<name>``."""
    return Path(root) / rid.experiment / "runs" / rid.dataset / rid.name


# ---------------------------------------------------------------- fingerprints

def image_fingerprint(data_dir: str | os.PathLike, dataset: str) -> dict:
    """The image set a dataset folder holds: every file the data step lists (relative path and
    SHA-256), one hash over them, and the count per class."""
    from .data import get_spec
    from .data.discover import find_class_root, scan
    from .data.synthetic import find_synthetic_root

    spec = get_spec(dataset)
    class_root = find_class_root(data_dir, dataset)
    listing = scan(class_root, spec, find_synthetic_root(class_root))
    total = hashlib.sha256()
    per_class: dict[str, int] = {}
    for rel, cls, _mask in sorted(listing.candidates):
        digest = hashlib.sha256((class_root / rel).read_bytes()).hexdigest()
        total.update(f"{rel}\t{digest}\n".encode())
        per_class[cls] = per_class.get(cls, 0) + 1
    return {"n_files": sum(per_class.values()), "per_class": per_class, "sha256": total.hexdigest()}


def _notebook_seconds(path: Path) -> float | None:
    try:
        meta = json.loads(path.read_text()).get("metadata", {}).get("papermill", {})
        return round(float(meta["duration"]), 1)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _machine() -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        memory_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        memory_gib = None
    return {"system": platform.platform(), "cpu": cpu,
            "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "memory_gib": memory_gib,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


# ---------------------------------------------------------------- export

def _copy_run(src: Path, dst: Path, extra: dict | None = None) -> None:
    """Replace ``dst`` with a folder of ``src``'s record files (and ``extra`` JSON files), built
    beside it first, so that it never holds a mix."""
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in RUN_RECORD_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, tmp / name)
    for name, content in (extra or {}).items():
        atomic.write_json(tmp / name, content)
    atomic.replace_dir(tmp, dst)


def export(experiment: str, data_dir: str = "", root: str | os.PathLike = ROOT) -> Path:
    """Copy the experiment's finished runs, step notebooks and prepared-data facts into
    ``records/<experiment>/`` and write its manifest. Runs not finished yet are left out (and
    listed as such in the manifest); existing records of finished runs are replaced."""
    from .training import git_state

    exp = ex.load_experiment(experiment, data_dir)
    out = folder(exp, root)
    # what a restored run or a step not re-run this time cannot tell again (its notebook's time)
    before = json.loads((out / "manifest.json").read_text()) if (out / "manifest.json").is_file() else {}
    states: dict[str, dict] = {}
    for rid in ex.runs(exp):
        state, reason = wf.run_state(rid)
        states[rid.key] = {"state": state, **({"reason": reason} if reason else {})}
        if state == "not run":   # its record, if any, stays as it is
            if run_record(rid, root).is_dir() and rid.key in before.get("runs", {}):
                states[rid.key] = before["runs"][rid.key]
            continue
        _copy_run(rid.run_dir(), run_record(rid, root))
        metrics = rid.run_dir() / "metrics.json"
        if metrics.is_file():
            states[rid.key]["train_seconds"] = round(float(json.loads(metrics.read_text())
                                                           .get("train_seconds") or 0), 1)
        notebook = wf.train_notebook(exp, rid)
        if notebook.is_file():
            states[rid.key]["notebook_seconds"] = _notebook_seconds(notebook)
        elif "notebook_seconds" in before.get("runs", {}).get(rid.key, {}):
            states[rid.key]["notebook_seconds"] = before["runs"][rid.key]["notebook_seconds"]
    steps = dict(before.get("step_seconds", {}))
    for step in wf.BOOK_STEPS:
        for ds in exp["datasets"]:
            src = wf.step_notebook(exp, step, ds)
            if src.is_file() and not wf.gap_reason(exp, step, ds):
                atomic.copy_file(src, out / "notebooks" / f"{step}_{ds}.ipynb")
                steps[f"{step}_{ds}"] = _notebook_seconds(src)
    for prep in ex.preps(exp):
        info = ex.prepared_dir(prep) / "info.json"
        if info.is_file():
            nb = wf.data_prep_notebook(exp, prep)
            steps[f"data_prep_{prep['dataset']}_{prep['split']}"] = _notebook_seconds(nb) if nb.is_file() else None
            atomic.copy_file(info, out / "data" / f"{prep['dataset']}-{prep['split']}.json")
    for ds in exp["audit"]:  # each slice's view (CT), for the accuracy per view; the intensity
        audit_dir = Path(wf.notebook_params(exp, "audit", ds)["out_dir"])   # model's test predictions
        for name, record in (("views.csv", "views"), ("shortcut_predictions.csv", "shortcut"),
                             ("fold_baselines.csv", "fold-baselines")):
            if (audit_dir / name).is_file():
                atomic.copy_file(audit_dir / name, out / "data" / f"{ds}-{record}.csv")
    (out / "notebooks" / "summary.ipynb").unlink(missing_ok=True)   # an earlier edition's, see above
    commit, dirty = git_state()
    recorded = {r.key: json.loads((run_record(r, root) / "metrics.json").read_text())
                for r in ex.runs(exp) if (run_record(r, root) / "metrics.json").is_file()}
    commits = sorted({m.get("git_commit") or "" for m in recorded.values()} - {""})
    # a run trained from uncommitted code cannot be traced to the code that made it: said, and listed
    dirty_runs = sorted(k for k, m in recorded.items() if m.get("git_dirty"))
    if dirty_runs:
        print(f"warning: {len(dirty_runs)} recorded run(s) were trained from uncommitted code (git_dirty), so no "
              f"commit holds the code that made them: {', '.join(dirty_runs)}", file=sys.stderr)
    manifest = {
        "experiment": exp["name"],
        "experiment_file": exp["path"],
        "experiment_sha256": hashlib.sha256(Path(exp["path"]).read_bytes()).hexdigest(),
        "images": {ds: {"data_dir": d, **image_fingerprint(d, ds)} for ds, d in exp["data_dirs"].items() if d},
        "commit": commit, "dirty": dirty, "run_commits": commits, "dirty_runs": dirty_runs,
        "machine": _machine(),
        "versions": wf.library_versions(),
        "runs": states,
        "step_seconds": steps,
        "export_command": f"python -m helpers.records export {exp['name']} --data-dir '{data_dir}'",
        "report_command": wf.report_command(exp),
    }
    atomic.write_json(out / "manifest.json", manifest)
    return out


def restore(experiment: str, data_dir: str = "", root: str | os.PathLike = ROOT) -> list[str]:
    """Put the recorded complete runs back into their empty run folders (with a complete
    status file), so that a fresh clone's next stage retrains none of them; returns their keys.

    A run is restored only onto the prepared data it was trained on: its prepared folder must
    exist (data prep first) and hold the fingerprint the record names. Checkpoints are not
    recorded, so an explain step on a restored run needs that run trained again."""
    exp = ex.load_experiment(experiment, data_dir)
    done = []
    for rid in ex.runs(exp):
        record, run_dir = run_record(rid, root), rid.run_dir()
        if not (record / "metrics.json").is_file() or (run_dir / "params.json").exists():
            continue   # not recorded, or its folder holds a run already (never overwritten)
        params = json.loads((record / "params.json").read_text())
        info = ex.prepared_dir(ex.prep_of(exp, rid.dataset, rid.split)) / "info.json"
        if not info.is_file():
            raise FileNotFoundError(
                f"{info} not found: {rid.key} was trained on that prepared folder; "
                f"prepare the data first (SNAKE_ARGS=\"$(python -m helpers.workflow targets {exp['name']} "
                f"--prepared --data-dir ...)\")")
        found = json.loads(info.read_text()).get("fingerprint")
        if found != params.get("prepared_fingerprint"):
            raise ValueError(f"{rid.key}: recorded on prepared data with fingerprint "
                             f"{params.get('prepared_fingerprint')}, but {info} holds {found}: "
                             f"these images are not the ones the records were made from")
        _copy_run(record, run_dir, {wf.status_file(rid).name: {
            "state": "complete", "key": rid.key, "run_dir": str(run_dir),
            "notebook": str(wf.train_notebook(exp, rid)), "restored_from": str(record)}})
        done.append(rid)
    now = time.time()   # one time for all: a tuned run's status is not older than its sweep's
    for rid in done:
        os.utime(wf.status_file(rid), (now, now))
    return [rid.key for rid in done]


# ---------------------------------------------------------------- reading and checking

def load_manifest(exp: dict, root: str | os.PathLike = ROOT) -> dict:
    path = folder(exp, root) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: no committed records of experiment {exp['name']!r} "
                                f"(write them with `python -m helpers.records export {exp['name']} --data-dir ...`)")
    return json.loads(path.read_text())


def _settings(params: dict) -> dict:
    return {k: v for k, v in params.items() if k not in MACHINE_PARAMS}


def pending(exp: dict, root: str | os.PathLike = ROOT) -> list[str]:
    """Keys of the grid's runs with no record yet: a study's later stages, not a disagreement."""
    return [rid.key for rid in ex.runs(exp) if not run_record(rid, root).is_dir()]


def recorded_sweep(sweep, root: str | os.PathLike = ROOT) -> tuple[dict[float, dict], float | None]:
    """A sweep's recorded validation scores per rate, and the rate it chose (None while one of
    its runs is not recorded): ``workflow.tuned_lr``'s rule (``experiment.choose_lr``) on the
    records, where that one reads the run folders."""
    folders = {lr: run_record(r, root) for lr, r in sweep.candidates.items()}
    scores = {lr: ex.sweep_scores(f) for lr, f in folders.items() if (f / "metrics.json").is_file()}
    return scores, ex.choose_lr(scores, sweep.by) if len(scores) == len(folders) else None


def check(exp: dict, root: str | os.PathLike = ROOT) -> list[str]:
    """Where the experiment file and its committed records disagree ([] when they agree): a
    record whose settings differ from the file's (a tuned run's rate from the one its recorded
    sweep chooses), or a record of a run the grid no longer has. A run with no record yet is
    not a disagreement: :func:`pending` lists those (a study recorded in stages)."""
    manifest = load_manifest(exp, root)
    problems = []
    grid, sweeps = ex.runs(exp), ex.sweeps(exp)
    for rid, values in grid.items():
        record = run_record(rid, root)
        if (record / "missing.json").is_file() or not (record / "params.json").is_file():
            continue
        recorded = as_recorded(_settings(json.loads((record / "params.json").read_text())))
        if rid in sweeps:
            values = {**values, "lr": recorded_sweep(sweeps[rid], root)[1] or recorded["lr"]}
        wanted = _settings(TrainParams(**{**values, "device": "auto", "init_from": ""}).model_dump())
        diff = {k: (recorded.get(k, "<absent>"), v) for k, v in wanted.items() if recorded.get(k, "<absent>") != v}
        if diff:
            problems.append(f"{rid.key}: settings changed since the records were made: "
                            + "; ".join(f"{k} {a!r} recorded, {b!r} in the file" for k, (a, b) in diff.items()))
    keys = {rid.key for rid in grid}
    for key in manifest.get("runs", {}):
        if key not in keys:
            problems.append(f"{key}: recorded, but no longer in {exp['path']}")
    return problems


def record_dirs(exp: dict, dataset: str, root: str | os.PathLike = ROOT) -> list[str]:
    """The run record folders of one dataset (complete or missing), in the experiment's order."""
    return [str(run_record(rid, root)) for rid in ex.runs(exp)
            if rid.dataset == dataset and run_record(rid, root).is_dir()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m helpers.records", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    exp_cmd = sub.add_parser("export", help="write records/<experiment>/ from its run folders")
    exp_cmd.add_argument("experiment")
    exp_cmd.add_argument("--data-dir", default="")
    ch = sub.add_parser("check", help="compare the experiment file with its records")
    ch.add_argument("experiment")
    rs = sub.add_parser("restore", help="put the recorded runs back into empty run folders (a fresh clone)")
    rs.add_argument("experiment")
    rs.add_argument("--data-dir", default="")
    args = ap.parse_args(argv)
    try:
        if args.command == "export":
            print(f"records: {export(args.experiment, args.data_dir)}")
            return 0
        if args.command == "restore":
            keys = restore(args.experiment, args.data_dir)
            print(f"{len(keys)} recorded run(s) restored" + (": " + ", ".join(keys) if keys else ""))
            return 0
        exp = ex.load_experiment(args.experiment, need_data=False)
        problems = check(exp)
    except (ex.ExperimentError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for p in problems:
        print(p)
    print(f"{len(problems)} disagreement(s) between experiments/{args.experiment}.yaml and its records")
    later = pending(exp)
    if later:
        print(f"{len(later)} run(s) of the file not recorded yet (a later stage): " + ", ".join(later))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
