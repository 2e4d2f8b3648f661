"""The book: gathering the executed notebooks into ``book/generated`` and building it.

Also what the book's pages need from outside a notebook: the glue keys a page takes from a
notebook (read from the pages themselves, so a step that did not run can glue a visible gap
under each), the reproducibility table and the command that regenerates the report.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from . import atomic, data
from .experiment import ExperimentError, load_experiment, runs
from .params import BOOK_STEPS, STOPPED_BY, stopped_by
from .workflow import book_datasets, gap_reason, reference_notebook, step_notebook, summary_notebook, train_notebook

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
                "epochs_run": metrics.get("epochs_run"),
                "stopped": STOPPED_BY[metrics.get("stopped_by") or stopped_by(params, bool(metrics.get("stopped_early")))],
                "batch_size": params.get("batch_size"),
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
    pages = {(step, ds): step_notebook(exp, step, ds) for step in BOOK_STEPS for ds in book_datasets(exp)}
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
            _copy_titled(src, tmp / f"{step}_{ds}.ipynb", data.get_spec(ds).title)
    shutil.copy2(summary_notebook(exp), tmp / "summary.ipynb")
    if not reference_notebook(exp).is_file():
        raise ExperimentError(f"the book needs {reference_notebook(exp)}; run the workflow first")
    shutil.copy2(reference_notebook(exp), tmp / "reference.ipynb")
    from . import records  # it imports this module

    reference = load_experiment(records.REFERENCE, need_data=False)
    recorded = records.folder(reference) / "notebooks"
    (tmp / "real").mkdir()
    for step in REAL_NOTEBOOKS:
        for ds in reference["datasets"]:
            src = recorded / f"{step}_{ds}.ipynb"
            # a step the study does not run for a dataset, or one that waits for runs of a later
            # stage, has no page yet; any other missing notebook means the records are incomplete
            waiting = step != "audit" and any(not records.run_record(rid).is_dir()
                                              for rid in runs(reference) if rid.dataset == ds)
            if not src.is_file() and (gap_reason(reference, step, ds) or waiting):
                continue
            if not src.is_file():
                raise ExperimentError(f"{src} is missing from the committed records; re-export them "
                                      f"(python -m helpers.records export {records.REFERENCE} --data-dir ...)")
            _copy_titled(src, tmp / "real" / f"{step}_{ds}.ipynb", f"{data.get_spec(ds).title}, real images")
    for rid in runs(exp):
        path = train_notebook(exp, rid)
        if path.is_file():
            _copy_titled(path, tmp / "train" / path.name, f"{rid.dataset} / {rid.name}")
    atomic.replace_dir(tmp, GENERATED)
    # A clean build: pages of an earlier experiment must not linger in the site.
    shutil.rmtree("_build", ignore_errors=True)
    cmd = ["jupyter-book", "build", str(BOOK_DIR)] + (["-W", "--keep-going"] if strict else [])
    subprocess.run(cmd, check=True)
    index = Path("_build") / "html" / "index.html"
    print(f"Book of experiment {exp['name']}: {index.resolve()}")
    return index


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m helpers.book",
                                     description="gather an experiment's notebooks and build the book")
    parser.add_argument("experiment")
    parser.add_argument("--data-dir", default="")
    parser.add_argument("--no-strict", action="store_true", help="do not turn Sphinx warnings into errors")
    args = parser.parse_args(argv)
    try:
        build_book(args.experiment, args.data_dir, strict=not args.no_strict)
    except ExperimentError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
