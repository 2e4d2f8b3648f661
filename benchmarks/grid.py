"""Wall time of whole training grids through the real workflow (Snakemake + papermill).

    python -m benchmarks.grid                       # paper A + paper B grids, the papers' sizes
    python -m benchmarks.grid --cores 4             # four steps at once (e.g. on one big GPU)
    python -m benchmarks.grid --scale               # this machine: three data sizes, projected

The grid is composed from experiment files (default ``paper_a`` and ``paper_b``) and run on
synthetic phantoms of the papers' sizes scaled by ``--fraction``: 1345 chest radiographs per
class (paper A, balanced: 4,035 images) and 3,112 kidney slices per class (12,448, paper B's
12,446 rounded to equal classes). The clock covers everything Snakemake does to finish the
training runs: generating the phantoms, preparing the arrays, and every training notebook.
Data and run folders are fresh, so nothing is reused from an earlier run.

ImageNet arms need weights. When a file is not in ``TORCH_HOME`` the benchmark writes a
randomly initialised stand-in under torchvision's file name in a temporary ``TORCH_HOME``: the
time of a step does not depend on the values of the weights. The JSON names these archs.

``--scale`` measures the largest case the project defines (the ``full`` experiment) the only
way a CPU can: one run of every distinct configuration (dataset, arch, head: arms and seeds
cost the same) for one epoch at three data sizes. Per configuration it fits, with
``scipy.stats.linregress``, epoch time and per-run overhead against the number of images,
and data preparation against the number of images per dataset; it then projects the wall time
of the ``demo``, ``paper_a`` + ``paper_b`` and ``full`` grids at their own sizes on this machine.
An epoch's cost includes the time training waits for its checkpoints. Projections assume every epoch runs and
writes ``best.pt`` (early stopping and fewer improvements only shorten them), one step at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks.throughput import RESULTS_DIR, report_header, save_report, saved_reports

# Synthetic images per class at the papers' sizes (fraction 1).
PAPER_SIZES = {"covid_radiography": 1345, "ct_kidney": 3112}
SCALE_FRACTIONS = (0.005, 0.01, 0.02)
PROJECTED = ("paper_a+paper_b", "full")


def _experiment_file(name: str) -> dict:
    from helpers import experiment as ex

    return yaml.safe_load(ex.experiment_path(name).read_text())


def compose(experiments: list[str], fraction: float, epochs: int | None = None,
            distinct: bool = False, name: str = "bench-grid") -> dict:
    """One synthetic experiment holding the datasets and grids of ``experiments``.

    Images per class are the papers' sizes times ``fraction`` (at least the minimum a 6:2:2
    split needs). ``distinct`` keeps one scratch run (seed 0) per dataset, arch and head.
    """
    from helpers.data import MIN_PER_CLASS

    if not 0 < fraction <= 1:
        raise ValueError(f"--fraction must be in (0, 1]; got {fraction}")
    merged = {"name": name, "synthetic": True, "datasets": {}, "defaults": {}, "grid": [],
              "explain": {}, "audit": [],
              "description": f"benchmark grid from {', '.join(experiments)} at fraction {fraction}"}
    seen = set()
    for exp_name in experiments:
        exp = _experiment_file(exp_name)
        for ds, settings in exp["datasets"].items():
            n = max(MIN_PER_CLASS, round(PAPER_SIZES[ds] * fraction))
            merged["datasets"].setdefault(ds, {**(settings or {}), "n_per_class": n})
        for entry in exp["grid"]:
            train = {**exp.get("defaults", {}), **entry.get("train", {})}
            if epochs:
                train["epochs"] = epochs
            entry = {**entry, "train": train}
            if distinct:
                entry.pop("split", None)
                for arch in entry["archs"]:
                    key = (entry["dataset"], arch, entry.get("head", "replace"))
                    if key not in seen:
                        seen.add(key)
                        merged["grid"].append({**entry, "archs": [arch], "arms": ["scratch"],
                                               "seeds": [0]})
            else:
                merged["grid"].append(entry)
    return merged


def _stand_in_weights(archs: set[str], home: Path) -> tuple[dict, list[str]]:
    """A TORCH_HOME with every needed ImageNet file: real ones linked, missing ones random."""
    import torch
    import torchvision

    from helpers import models, weights

    checkpoints = home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    stand_ins = []
    for arch in sorted(archs):
        target = checkpoints / weights.file_name(models.spec(arch).weights)
        if weights.is_cached(models.spec(arch).weights):
            target.symlink_to(weights.expected_path(models.spec(arch).weights))
        else:
            torch.save(torchvision.models.get_model(arch, weights=None).state_dict(), target)
            stand_ins.append(arch)
    return {"TORCH_HOME": str(home)}, stand_ins


def _duration(notebook: Path) -> float | None:
    try:
        return json.loads(notebook.read_text())["metadata"]["papermill"]["duration"]
    except (OSError, ValueError, KeyError):
        return None


def run_grid(exp: dict, cores: int = 1, keep: bool = False) -> dict:
    """Run the training part of ``exp`` from nothing with Snakemake; time it and its steps."""
    import pandas as pd

    from helpers import experiment as ex
    from helpers import workflow

    name = exp["name"]
    results, runs_dir = ex.results_dir({"name": name}), Path("runs") / name
    for folder in (results, runs_dir):
        shutil.rmtree(folder, ignore_errors=True)
    results.mkdir(parents=True)
    exp_file = results / "experiment.yaml"
    exp_file.write_text(yaml.safe_dump(exp, sort_keys=False))
    loaded = ex.load_experiment(exp_file)
    specs = ex.runs(loaded)
    targets = [str(workflow.status_file(rid)) for rid in specs]
    bin_dir = str(Path(sys.executable).parent)
    with tempfile.TemporaryDirectory(prefix="bench-grid-") as tmp:
        env = {**os.environ, "HELPERS_DATA_ROOT": str(Path(tmp) / "data"),
               "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
        pretrained = {rid.arch for rid, p in specs.items() if p["pretrained"]}
        home, stand_ins = _stand_in_weights(pretrained, Path(tmp) / "torch")
        env.update(home)
        started = time.perf_counter()
        # Targets first: --config takes every word after it.
        proc = subprocess.run([sys.executable, "-m", "snakemake", *targets, "--cores", str(cores),
                               "--config", f"experiment={exp_file}"],
                              env=env, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            raise RuntimeError(f"snakemake failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")

        prep = {ds: _duration(workflow.step_notebook(loaded, "data_prep", ds)) for ds in loaded["datasets"]}
        rows = []
        for rid, p in specs.items():
            status = json.loads(workflow.status_file(rid).read_text())
            row = {"dataset": rid.dataset, "run": rid.name, "arch": rid.arch, "head": rid.head,
                   "image_size": p["image_size"], "batch_size": p["batch_size"],
                   "state": status["state"], "notebook_seconds": _duration(workflow.train_notebook(loaded, rid))}
            if status["state"] == "missing":
                row["reason"] = status.get("reason")
            else:
                history = pd.read_csv(rid.run_dir() / "history.csv")
                row.update(epochs_run=len(history), epoch_seconds=float(history["seconds"].sum()),
                           checkpoint_seconds=float(history["checkpoint_seconds"].fillna(0).sum()),
                           images=_epoch_images(rid.run_dir()))
                row["overhead_seconds"] = (row["notebook_seconds"] - row["epoch_seconds"]
                                           - row["checkpoint_seconds"])
            rows.append(row)
    if not keep:  # checkpoints of a full grid take gigabytes
        shutil.rmtree(runs_dir, ignore_errors=True)
    return {"experiment": name, "cores": cores, "wall_seconds": wall,
            "data_prep_seconds": prep, "images_per_class": {d: s["n_per_class"] for d, s in exp["datasets"].items()},
            "stand_in_weights": stand_ins, "runs": rows}


def _epoch_images(run_dir: Path) -> int:
    """Train + validation images of a run (what one epoch touches), from its prepared folder."""
    params = json.loads((run_dir / "params.json").read_text())
    info = json.loads((Path(params["prepared_dir"]) / "info.json").read_text())
    return sum(n for counts in info["counts"].values() for part, n in counts.items()
               if part in ("train", "val"))


def _dataset_images(exp: dict) -> dict[str, int]:
    """Images per dataset of an experiment: its synthetic size, or the papers' real sizes."""
    from helpers.data import DATASETS

    real = {"covid_radiography": 3 * 1345, "ct_kidney": 12446}
    out = {}
    for ds, settings in exp["datasets"].items():
        settings = settings or {}
        n = len(DATASETS[ds].classes) * settings["n_per_class"] if exp.get("synthetic") else real[ds]
        out[ds] = n
    return out


def _fit(xs, ys) -> dict:
    from scipy import stats

    if len(set(xs)) < 2:
        return {"intercept": float(sum(ys) / len(ys)), "slope": 0.0, "r2": None}
    fit = stats.linregress(xs, ys)
    return {"intercept": float(fit.intercept), "slope": float(fit.slope), "r2": float(fit.rvalue ** 2)}


def _epoch_cost(row: dict) -> float:
    """Seconds per epoch: training, validation and waiting for the checkpoints."""
    return (row["epoch_seconds"] + row.get("checkpoint_seconds", 0)) / row["epochs_run"]


def fit_scale(measurements: list[dict]) -> dict:
    """Linear fits (seconds against images) per configuration and per dataset's data prep."""
    configs: dict[str, dict[str, list]] = {}
    prep: dict[str, dict[str, list]] = {}
    for m in measurements:
        for row in m["runs"]:
            if "epoch_seconds" not in row:
                continue
            c = configs.setdefault(_config_key(row), {"n": [], "epoch": [], "overhead": []})
            c["n"].append(row["images"])
            c["epoch"].append(_epoch_cost(row))
            c["overhead"].append(row["overhead_seconds"])
        for ds, seconds in m["data_prep_seconds"].items():
            if seconds is not None:
                p = prep.setdefault(ds, {"n": [], "s": []})
                p["n"].append(m["dataset_images"][ds])
                p["s"].append(seconds)
    return {"configs": {k: {"epoch": _fit(v["n"], v["epoch"]), "overhead": _fit(v["n"], v["overhead"])}
                        for k, v in configs.items()},
            "data_prep": {ds: _fit(v["n"], v["s"]) for ds, v in prep.items()}}


def _config_key(row: dict) -> str:
    return f"{row['dataset']}/{row['arch']}/{row['head']}/{row['image_size']}px"


def project(experiments: list[str], fits: dict) -> dict:
    """Projected one-at-a-time wall time of a grid from the fitted per-configuration costs."""
    from helpers import experiment as ex

    exps = [_experiment_file(e) for e in experiments]
    total, train, unknown = 0.0, 0.0, []
    images = {}
    for raw in exps:
        images.update(_dataset_images(raw))
    for ds, n in images.items():
        p = fits["data_prep"].get(ds)
        total += (p["intercept"] + p["slope"] * n) if p else 0.0
    n_runs = 0
    for name in experiments:
        # Only to list the runs: no data is read, so no data directories are needed.
        listed = ex.load_experiment(name, need_data=False)
        for rid, p in ex.runs(listed).items():
            key = _config_key({"dataset": rid.dataset, "arch": rid.arch, "head": rid.head,
                               "image_size": p["image_size"]})
            fit = fits["configs"].get(key)
            if fit is None:
                unknown.append(key)
                continue
            per_epoch_images = round(0.8 * images[rid.dataset])   # train + val of 6:2:2
            seconds = (fit["overhead"]["intercept"] + fit["overhead"]["slope"] * per_epoch_images
                       + p["epochs"] * (fit["epoch"]["intercept"] + fit["epoch"]["slope"] * per_epoch_images))
            train += seconds
            n_runs += 1
    return {"experiments": experiments, "runs": n_runs, "images": images,
            "train_seconds": train, "wall_seconds": total + train,
            "unmeasured_configs": sorted(set(unknown))}


def scale(cores: int = 1, fractions=SCALE_FRACTIONS, epochs: int = 1) -> dict:
    measurements = []
    for i, fraction in enumerate(fractions):
        exp = compose(["full"], fraction, epochs=epochs, distinct=True, name=f"bench-scale-{i}")
        result = run_grid(exp, cores=cores)
        result["fraction"] = fraction
        result["dataset_images"] = _dataset_images(exp)
        measurements.append(result)
        print(f"scale fraction {fraction}: {result['dataset_images']} images, "
              f"{len(result['runs'])} runs, {result['wall_seconds']:.0f} s", flush=True)
    fits = fit_scale(measurements)
    projections = []
    for label in PROJECTED:
        proj = project(label.split("+"), fits)
        proj["label"] = label
        projections.append(proj)
        print(f"projected {label}: {proj['runs']} runs, {proj['wall_seconds'] / 3600:.1f} h "
              f"on this machine (one step at a time, every epoch run)", flush=True)
    return {"measurements": measurements, "fits": fits, "projections": projections}


def load_grid(folder: str | os.PathLike = RESULTS_DIR):
    """Measured grid wall times (one row per saved ``grid-*.json``) for the book."""
    import pandas as pd

    rows = []
    for _, report in saved_reports(folder, "grid-*.json"):
        for m in report.get("measurements", [report.get("grid")]):
            if not m:
                continue
            done = [r for r in m["runs"] if "epoch_seconds" in r]
            rows.append({
                "device": report["device_name"], "grid": m["experiment"], "cores": m["cores"],
                "images": ", ".join(f"{d}: {n}" for d, n in m.get("dataset_images", {}).items()),
                "runs done": f"{len(done)}/{len(m['runs'])}",
                "data prep s": round(sum(v or 0 for v in m["data_prep_seconds"].values()), 1),
                "training s": round(sum(r["notebook_seconds"] or 0 for r in m["runs"]), 1),
                "wall s": round(m["wall_seconds"], 1),
                "stand-in weights": ", ".join(m["stand_in_weights"]) or "none",
                "commit": (report.get("git_commit") or "")[:10]})
    return pd.DataFrame(rows)


def load_projections(folder: str | os.PathLike = RESULTS_DIR):
    """Projected wall times of the experiments' grids on the machine that measured the scale."""
    import pandas as pd

    rows = []
    for _, report in saved_reports(folder, "grid-*.json"):
        for p in report.get("projections", []):
            rows.append({"device": report["device_name"], "grid": p["label"], "runs": p["runs"],
                         "images": ", ".join(f"{d}: {n}" for d, n in p["images"].items()),
                         "projected hours": round(p["wall_seconds"] / 3600, 2),
                         "unmeasured configs": ", ".join(p["unmeasured_configs"]) or "none"})
    return pd.DataFrame(rows)


def scale_figure(folder: str | os.PathLike = RESULTS_DIR):
    """Measured epoch time against images per configuration, with the fits; projected hours."""
    import matplotlib.pyplot as plt
    import numpy as np
    import pandas as pd
    import seaborn as sns

    reports = [report for _, report in saved_reports(folder, "grid-*-sizes.json")]
    if not reports:
        return None
    report = reports[-1]
    points = pd.DataFrame([{"config": _config_key(r), "images": r["images"],
                            "seconds per epoch": _epoch_cost(r)}
                           for m in report["measurements"] for r in m["runs"] if "epoch_seconds" in r])
    configs = list(dict.fromkeys(points["config"]))
    palette = dict(zip(configs, sns.color_palette(n_colors=len(configs))))
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [2, 1]})
    sns.scatterplot(data=points, x="images", y="seconds per epoch", hue="config", palette=palette,
                    ax=ax, s=40)
    xs = np.array([points["images"].min(), points["images"].max()])
    for config, fit in report["fits"]["configs"].items():
        ax.plot(xs, fit["epoch"]["intercept"] + fit["epoch"]["slope"] * xs, color=palette.get(config), lw=1)
    ax.set(title=f"One epoch (train + validation) on {report['device_name']}, measured",
           xlabel="images per epoch (train + validation)")
    ax.legend(fontsize=7, title=None, loc="upper left")
    projections = report["projections"]
    bx.bar([p["label"] for p in projections], [p["wall_seconds"] / 3600 for p in projections],
           color="0.5")
    for i, p in enumerate(projections):
        bx.annotate(f"{p['wall_seconds'] / 3600:.1f} h\n{p['runs']} runs", (i, p["wall_seconds"] / 3600),
                    ha="center", va="bottom", fontsize=8)
    bx.set(title="Projected at the papers' sizes", ylabel="hours, one step at a time")
    bx.margins(y=0.2)
    fig.tight_layout()
    return fig


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.grid", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", nargs="+", default=["paper_a", "paper_b"],
                        help="experiment names or files to combine (default: paper_a paper_b)")
    parser.add_argument("--fraction", type=float, default=1.0,
                        help="share of the papers' image counts (default 1: the papers' sizes)")
    parser.add_argument("--epochs", type=int, default=None, help="override every run's epochs")
    parser.add_argument("--cores", type=int, default=1, help="Snakemake --cores (steps at once)")
    parser.add_argument("--scale", action="store_true",
                        help="three data sizes of the full grid's configurations, and projections")
    parser.add_argument("--keep", action="store_true", help="keep the run folders")
    parser.add_argument("--out", default="", help="JSON file (default benchmarks/results/grid-<device>.json)")
    args = parser.parse_args(argv)

    from helpers import training

    if not args.scale:
        try:  # bad arguments stop here, before any work
            exp = compose(args.experiment, args.fraction, args.epochs)
        except ValueError as exc:   # includes ExperimentError
            parser.error(str(exc))
    if args.cores < 1 or (args.epochs is not None and args.epochs < 1):
        parser.error("--cores and --epochs must be at least 1")
    report = report_header(training.resolve_device("auto"), "benchmarks.grid", argv)
    if args.scale:
        report.update(scale(args.cores))
    else:
        result = run_grid(exp, cores=args.cores, keep=args.keep)
        result.update(fraction=args.fraction, dataset_images=_dataset_images(exp),
                      experiments=args.experiment)
        report["grid"] = result
        done = sum("epoch_seconds" in r for r in result["runs"])
        print(f"{'+'.join(args.experiment)} at fraction {args.fraction}: {done}/{len(result['runs'])} "
              f"runs in {result['wall_seconds']:.1f} s wall (data prep "
              f"{sum(v or 0 for v in result['data_prep_seconds'].values()):.1f} s), "
              f"--cores {args.cores}, stand-in weights: {result['stand_in_weights'] or 'none'}")
        for row in result["runs"]:
            if "reason" in row:
                print(f"  missing {row['dataset']}/{row['run']}: {row['reason']}")
    save_report(report, args.out or RESULTS_DIR / f"grid-{report['device']}{'-sizes' if args.scale else ''}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
