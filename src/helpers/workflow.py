"""Experiment files, the run grid, and the papermill steps the Snakefile calls.

An experiment file (``experiments/<name>.yaml``) holds everything a run needs; only paths
(``data_dir``) come from the command line. Each training run is one papermill execution of
``notebooks/train.ipynb``. A run that cannot happen (no ImageNet weights on an air-gapped
machine, say) is recorded as missing with its reason, and the rest of the grid goes on.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .data import DATASETS

EXPERIMENTS_DIR = Path("experiments")
DATASET_NAMES = tuple(DATASETS)
TOP_KEYS = {"name", "description", "synthetic", "datasets", "defaults", "grid", "explain", "audit"}
DATASET_KEYS = {"image_size", "balance", "split", "split_seed", "n_per_class"}
GRID_KEYS = {"dataset", "archs", "head", "arms", "seeds", "split", "train"}
TRAIN_KEYS = {"epochs", "batch_size", "lr", "normalize", "early_stopping_patience", "device"}


class ExperimentError(ValueError):
    """An experiment file or a DATA_DIR override that cannot be used."""


@dataclass
class RunSpec:
    experiment: str
    dataset: str
    arch: str
    head: str
    arm: str  # "imagenet", "scratch" or "from-<dataset>-<source arm>"
    seed: int
    split: str
    params: dict = field(default_factory=dict)
    depends_on: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return run_name(self.arch, self.head, self.arm, self.seed, self.split)

    @property
    def key(self) -> str:
        return f"{self.dataset}/{self.name}"

    @property
    def run_dir(self) -> Path:
        return Path("runs") / self.experiment / self.dataset / self.name


def run_name(arch: str, head: str, arm: str, seed: int, split: str = "random") -> str:
    """Folder name of a run: ``<arch>[_<head>]-<arm>[-grouped]-s<seed>``."""
    base = arch if head == "replace" else f"{arch}_{head}"
    split_tag = "" if split == "random" else f"-{split}"
    return f"{base}-{arm}{split_tag}-s{seed}"


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


def _check_keys(where: str, given: dict, allowed: set[str]) -> None:
    unknown = set(given) - allowed
    if unknown:
        raise ExperimentError(
            f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}"
        )


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


def load_experiment(name_or_path: str | os.PathLike, data_dir: str = "") -> dict:
    """Read and check an experiment file; attach the resolved data directories."""
    path = experiment_path(name_or_path)
    with open(path) as f:
        exp = yaml.safe_load(f) or {}
    where = str(path)
    _check_keys(where, exp, TOP_KEYS)
    for key in ("name", "datasets", "grid"):
        if key not in exp:
            raise ExperimentError(f"{where}: missing required key {key!r}")
    exp.setdefault("synthetic", False)
    exp.setdefault("defaults", {})
    exp.setdefault("explain", {})
    exp.setdefault("audit", [])
    _check_keys(f"{where}: defaults", exp["defaults"], TRAIN_KEYS)
    for ds, settings in exp["datasets"].items():
        if ds not in DATASET_NAMES:
            raise ExperimentError(f"{where}: unknown dataset {ds!r}; allowed: {list(DATASET_NAMES)}")
        _check_keys(f"{where}: datasets.{ds}", settings or {}, DATASET_KEYS)
    for i, entry in enumerate(exp["grid"]):
        _check_keys(f"{where}: grid[{i}]", entry, GRID_KEYS)
        for key in ("dataset", "archs", "arms", "seeds"):
            if key not in entry:
                raise ExperimentError(f"{where}: grid[{i}] is missing {key!r}")
        if entry["dataset"] not in exp["datasets"]:
            raise ExperimentError(
                f"{where}: grid[{i}] uses dataset {entry['dataset']!r}, "
                f"which is not listed under datasets: {list(exp['datasets'])}"
            )
        _check_keys(f"{where}: grid[{i}].train", entry.get("train", {}), TRAIN_KEYS)
    datasets = list(exp["datasets"])
    if exp["synthetic"] and (data_dir or "").strip():
        raise ExperimentError(
            f"experiment {exp['name']!r} runs on the embedded synthetic data; "
            "DATA_DIR is for real-data experiments (e.g. EXPERIMENT=paper_a)"
        )
    dirs = parse_data_dirs(data_dir, datasets)
    if not exp["synthetic"]:
        lacking = [d for d in datasets if not dirs.get(d)]
        if lacking:
            raise ExperimentError(
                f"experiment {exp['name']!r} needs the real data of {lacking}: "
                "pass DATA_DIR=/path/to/download (see README, 'Real data'); "
                "EXPERIMENT=demo runs on synthetic phantoms"
            )
    exp["data_dirs"] = {d: dirs.get(d, "") for d in datasets}
    exp["path"] = str(path)
    return exp


def _arm_fields(arm, where: str) -> tuple[str, dict]:
    if arm in ("imagenet", "scratch"):
        return arm, {"pretrained": arm == "imagenet", "init_from": ""}
    if isinstance(arm, dict) and set(arm) == {"init_from"}:
        src = arm["init_from"]
        if not isinstance(src, dict) or "dataset" not in src:
            raise ExperimentError(f"{where}: init_from needs {{dataset: ..., arm: imagenet|scratch}}")
        return f"from-{src['dataset']}-{src.get('arm', 'imagenet')}", {"pretrained": False, "init_from": src}
    raise ExperimentError(
        f"{where}: arm {arm!r} must be imagenet, scratch or {{init_from: {{dataset, arm}}}}"
    )


def runs(exp: dict) -> list[RunSpec]:
    """Every training run of the experiment, in file order, without duplicates."""
    specs: dict[str, RunSpec] = {}
    for i, entry in enumerate(exp["grid"]):
        ds = entry["dataset"]
        ds_settings = dict(exp["datasets"][ds] or {})
        split = entry.get("split", ds_settings.get("split", "random"))
        train = {**exp["defaults"], **entry.get("train", {})}
        head = entry.get("head", "replace")
        for arch in entry["archs"]:
            for arm in entry["arms"]:
                label, arm_params = _arm_fields(arm, f"{exp['path']}: grid[{i}]")
                for seed in entry["seeds"]:
                    spec = RunSpec(exp["name"], ds, arch, head, label, int(seed), split)
                    params = {
                        "dataset": ds,
                        "data_dir": exp["data_dirs"].get(ds, ""),
                        "arch": arch,
                        "head": head,
                        "pretrained": arm_params["pretrained"],
                        "image_size": ds_settings.get("image_size", 128),
                        "balance": ds_settings.get("balance", True),
                        "split": split,
                        "split_seed": ds_settings.get("split_seed", 0),
                        "seed": int(seed),
                        "run_dir": str(spec.run_dir),
                        **train,
                    }
                    if "n_per_class" in ds_settings:
                        params["n_per_class"] = ds_settings["n_per_class"]
                    src = arm_params["init_from"]
                    if src:
                        src_name = run_name(arch, head, src.get("arm", "imagenet"), int(seed), split)
                        src_key = f"{src['dataset']}/{src_name}"
                        spec.depends_on.append(src_key)
                        params["init_from"] = str(
                            Path("runs") / exp["name"] / src["dataset"] / src_name / "best.pt"
                        )
                    spec.params = params
                    specs.setdefault(spec.key, spec)
    known = set(specs)
    for spec in specs.values():
        for dep in spec.depends_on:
            if dep not in known:
                raise ExperimentError(
                    f"{exp['path']}: run {spec.key} starts from {dep}, which the grid does not train"
                )
    return list(specs.values())


def results_dir(exp: dict) -> Path:
    return Path("results") / exp["name"]


def status_file(exp: dict, key: str) -> Path:
    return results_dir(exp) / "status" / f"{key}.json"


def _atomic_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


def _failure_reason(exc: BaseException) -> str:
    """The user-facing line of a failed notebook: the exception's type and message."""
    ename = getattr(exc, "ename", type(exc).__name__)
    evalue = getattr(exc, "evalue", str(exc))
    return f"{ename}: {evalue}".strip()


def train_one(experiment: str, key: str, data_dir: str = "") -> dict:
    """Run one training notebook; on failure record the run as missing with its reason."""
    import papermill as pm

    exp = load_experiment(experiment, data_dir)
    spec = next((s for s in runs(exp) if s.key == key), None)
    if spec is None:
        raise ExperimentError(f"run {key!r} is not in experiment {exp['name']!r}")
    notebook_out = results_dir(exp) / "notebooks" / "train" / f"{spec.dataset}__{spec.name}.ipynb"
    notebook_out.parent.mkdir(parents=True, exist_ok=True)
    missing = spec.run_dir / "missing.json"
    for dep in spec.depends_on:
        dep_status = json.loads(status_file(exp, dep).read_text()) if status_file(exp, dep).exists() else {}
        if dep_status.get("state") != "complete":
            status = {"state": "missing", "key": key,
                      "reason": f"source run {dep} is not complete: {dep_status.get('reason', 'not run')}"}
            _atomic_json(missing, {"reason": status["reason"]})
            _atomic_json(status_file(exp, key), status)
            return status
    try:
        pm.execute_notebook(
            "notebooks/train.ipynb", str(notebook_out), parameters=spec.params,
            kernel_name="python3", progress_bar=False, cwd=os.getcwd(),
        )
    except Exception as exc:  # noqa: BLE001 - any failure becomes a visible gap, never a silent one
        status = {"state": "missing", "key": key, "reason": _failure_reason(exc),
                  "notebook": str(notebook_out)}
        _atomic_json(missing, {"reason": status["reason"], "notebook": str(notebook_out)})
        print(f"run {key} could not complete: {status['reason']}", file=sys.stderr)
    else:
        missing.unlink(missing_ok=True)
        status = {"state": "complete", "key": key, "run_dir": str(spec.run_dir),
                  "notebook": str(notebook_out)}
    _atomic_json(status_file(exp, key), status)
    return status


def forget_missing(exp: dict) -> list[str]:
    """Drop 'missing' status files so that the next invocation tries those runs again."""
    dropped = []
    for path in (results_dir(exp) / "status").glob("*/*.json"):
        try:
            state = json.loads(path.read_text()).get("state")
        except (OSError, json.JSONDecodeError):
            state = None
        if state != "complete":
            path.unlink(missing_ok=True)
            dropped.append(str(path))
    return dropped


def grid_status(exp: dict):
    """One row per run of the grid: complete, missing (with the reason) or not run."""
    import pandas as pd

    rows = []
    for spec in runs(exp):
        path = status_file(exp, spec.key)
        status = json.loads(path.read_text()) if path.exists() else {"state": "not run"}
        rows.append({
            "dataset": spec.dataset, "run": spec.name, "arch": spec.arch, "head": spec.head,
            "arm": spec.arm, "split": spec.split, "seed": spec.seed,
            "state": status.get("state"), "reason": status.get("reason", ""),
            "run_dir": str(spec.run_dir),
        })
    return pd.DataFrame(rows)


def notebook_params(exp: dict, step: str, dataset: str) -> dict:
    """Papermill parameters of the per-dataset steps (data_prep, evaluate, explain, audit)."""
    ds = dict(exp["datasets"].get(dataset) or {})
    data_dir = exp["data_dirs"].get(dataset, "")
    out_dir = str(results_dir(exp) / dataset / step)
    if step == "data_prep":
        return {"dataset": dataset, "data_dir": data_dir, "image_size": ds.get("image_size", 128),
                "balance": ds.get("balance", True), "seed": ds.get("split_seed", 0),
                "split": ds.get("split", "random"), "n_per_class": ds.get("n_per_class", 100),
                "out_dir": ""}
    if step == "evaluate":
        return {"dataset": dataset, "runs": str(Path("runs") / exp["name"] / dataset / "*"),
                "out_dir": out_dir}
    if step == "explain":
        settings = exp["explain"].get(dataset)
        if not settings:
            raise ExperimentError(f"{exp['path']}: no explain settings for {dataset}")
        arch, head = settings["arch"], settings.get("head", "replace")
        split = ds.get("split", "random")
        pair = [str(Path("runs") / exp["name"] / dataset / run_name(arch, head, arm, 0, split))
                for arm in ("imagenet", "scratch")]
        return {"dataset": dataset, "arch": arch, "runs": pair,
                "n_per_class": settings.get("n_per_class", 2), "out_dir": out_dir}
    if step == "audit":
        return {"dataset": dataset, "data_dir": data_dir, "image_size": ds.get("image_size", 128),
                "seed": ds.get("split_seed", 0), "balance": ds.get("balance", False),
                "n_per_class": ds.get("n_per_class", 100), "out_dir": out_dir}
    raise ExperimentError(f"unknown step {step!r}")


BOOK_DIR = Path("book")
GENERATED = BOOK_DIR / "generated"
# The per-dataset notebooks the book's pages paste from (`{glue}` with `:doc:`).
BOOK_STEPS = ("data_prep", "evaluate", "explain", "audit")


def _html_list(items: list[str]) -> str:
    from html import escape

    return "<ul>" + "".join(f"<li>{escape(i)}</li>" for i in items) + "</ul>"


def banner_html(exp: dict, dataset: str | None = None) -> str:
    """The admonition that opens every results page: synthetic data, and what is missing."""
    from html import escape

    status = grid_status(exp)
    if dataset is not None:
        status = status[status["dataset"] == dataset]
    parts = []
    if exp.get("synthetic"):
        parts.append(
            "<p><b>Synthetic data.</b> Every number and figure on this page comes from the embedded "
            f"phantom images of experiment <code>{escape(exp['name'])}</code>, not from patients. "
            "They show that the pipeline works; they are not medical results.</p>"
        )
    if dataset is not None and dataset not in exp["datasets"]:
        parts.append(
            f"<p><b>Not part of this experiment.</b> Experiment <code>{escape(exp['name'])}</code> "
            f"does not use <code>{escape(dataset)}</code>; this page is empty by design.</p>"
        )
    gaps = status[status["state"] != "complete"]
    if len(gaps):
        items = [f"{r.dataset}/{r.run}: {r.state}" + (f" ({r.reason})" if r.reason else "")
                 for r in gaps.itertuples()]
        parts.append(
            f"<p><b>Incomplete grid:</b> {len(gaps)} of {len(status)} runs are missing.</p>"
            + _html_list(items)
        )
    if not parts:
        return ('<div class="admonition note"><p class="admonition-title">Complete</p>'
                f"<p>All {len(status)} runs of experiment <code>{escape(exp['name'])}</code> "
                "completed on real data.</p></div>")
    kind = "warning" if exp.get("synthetic") or len(gaps) else "note"
    return (f'<div class="admonition {kind}"><p class="admonition-title">Read this first</p>'
            + "".join(parts) + "</div>")


def reproducibility_table(exp: dict):
    """Per run: parameters, seconds, device, library versions and git commit."""
    import pandas as pd

    rows = []
    for spec in runs(exp):
        row = {"dataset": spec.dataset, "run": spec.name}
        params_path, metrics_path = spec.run_dir / "params.json", spec.run_dir / "metrics.json"
        if metrics_path.exists():
            params = json.loads(params_path.read_text()) if params_path.exists() else {}
            metrics = json.loads(metrics_path.read_text())
            row.update({
                "arch": params.get("arch"), "head": params.get("head"),
                "pretrained": params.get("pretrained"), "init_from": params.get("init_from") or "",
                "image_size": params.get("image_size"), "epochs": params.get("epochs"),
                "epochs_run": metrics.get("epochs_run"), "batch_size": params.get("batch_size"),
                "lr": params.get("lr"), "normalize": params.get("normalize"),
                "split": params.get("split"), "seed": params.get("seed"),
                "train_seconds": round(float(metrics.get("train_seconds") or 0), 1),
                "device": metrics.get("device"), "torch": metrics.get("torch_version"),
                "git_commit": (metrics.get("git_commit") or "")[:10],
            })
        else:
            missing = spec.run_dir / "missing.json"
            reason = json.loads(missing.read_text()).get("reason") if missing.exists() else "not run"
            row.update({"arch": spec.arch, "head": spec.head, "seed": spec.seed,
                        "device": f"missing: {reason}"})
        rows.append(row)
    return pd.DataFrame(rows)


def library_versions() -> dict:
    import importlib.metadata as md
    import platform

    names = ["torch", "torchvision", "numpy", "scikit-learn", "scipy", "pandas", "grad-cam",
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


def _execute(notebook: str, out: Path, params: dict) -> None:
    import papermill as pm

    out.parent.mkdir(parents=True, exist_ok=True)
    pm.execute_notebook(notebook, str(out), parameters=params, kernel_name="python3",
                        progress_bar=False, cwd=os.getcwd())


def build_book(experiment: str, data_dir: str = "", strict: bool = True) -> Path:
    """Gather the executed notebooks of one experiment into book/generated and build the book."""
    import shutil
    import subprocess

    exp = load_experiment(experiment, data_dir)
    nb_dir = results_dir(exp) / "notebooks"
    tmp = GENERATED.with_name(GENERATED.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "train").mkdir(parents=True)
    for step in BOOK_STEPS:
        for dataset in DATASET_NAMES:
            name = f"{step}_{dataset}.ipynb"
            if (nb_dir / name).exists():
                _copy_titled(nb_dir / name, tmp / name, dataset)
            else:
                reason = (f"experiment {exp['name']} does not use {dataset}"
                          if dataset not in exp["datasets"] else
                          f"experiment {exp['name']} has no {step} step for {dataset}")
                _execute("notebooks/gap.ipynb", tmp / name,
                         {"step": step, "dataset": dataset, "reason": reason})
    for path in sorted((nb_dir / "train").glob("*.ipynb")):
        _copy_titled(path, tmp / "train" / path.name, path.stem.replace("__", " / "))
    _execute("notebooks/summary.ipynb", nb_dir / "summary.ipynb",
             {"experiment": exp["path"], "data_dir": data_dir})
    shutil.copy2(nb_dir / "summary.ipynb", tmp / "summary.ipynb")
    shutil.rmtree(GENERATED, ignore_errors=True)
    os.replace(tmp, GENERATED)
    # A clean build: pages of an earlier experiment must not linger in the site.
    shutil.rmtree("_build", ignore_errors=True)
    cmd = ["jupyter-book", "build", str(BOOK_DIR)] + (["-W", "--keep-going"] if strict else [])
    subprocess.run(cmd, check=True)
    index = Path("_build") / "html" / "index.html"
    print(f"Book of experiment {exp['name']}: {index.resolve()}")
    return index


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.workflow", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("train", help="run one training notebook of an experiment")
    p.add_argument("experiment")
    p.add_argument("key", help="<dataset>/<run name>")
    p.add_argument("--data-dir", default="")
    p = sub.add_parser("params", help="print the papermill parameters of a step as JSON")
    p.add_argument("experiment")
    p.add_argument("step", choices=["data_prep", "evaluate", "explain", "audit"])
    p.add_argument("dataset")
    p.add_argument("--data-dir", default="")
    p = sub.add_parser("book", help="gather an experiment's notebooks and build the book")
    p.add_argument("experiment")
    p.add_argument("--data-dir", default="")
    p.add_argument("--no-strict", action="store_true", help="do not turn Sphinx warnings into errors")
    p = sub.add_parser("status", help="print the state of every run of an experiment")
    p.add_argument("experiment")
    p.add_argument("--data-dir", default="")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "train":
            status = train_one(args.experiment, args.key, args.data_dir)
            print(json.dumps(status))
        elif args.cmd == "params":
            exp = load_experiment(args.experiment, args.data_dir)
            print(json.dumps(notebook_params(exp, args.step, args.dataset)))
        elif args.cmd == "book":
            build_book(args.experiment, args.data_dir, strict=not args.no_strict)
        elif args.cmd == "status":
            exp = load_experiment(args.experiment, args.data_dir)
            print(grid_status(exp).to_string(index=False))
    except ExperimentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception:  # noqa: BLE001
        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
