# The whole study: data prep -> training grid -> evaluation / explanation / audit -> summary -> book.
# Every step is a papermill run of a notebook in notebooks/, kept under results/<experiment>/notebooks.
#   snakemake --cores 1 --config experiment=demo
#   snakemake --cores 1 --config experiment=paper_a data_dir=/path/to/download
# Parsing this file only reads: nothing is written or deleted until a job runs (a dry run,
# `snakemake -n`, changes no file; tests/test_workflow.py checks it).
import json
import re
import shlex
from pathlib import Path

from helpers import workflow as wf
from helpers.data.synthetic import GENERATOR_VERSION

EXP = wf.load_experiment(config.get("experiment", "demo"), str(config.get("data_dir", "") or ""))
NAME = EXP["name"]
RES = str(wf.results_dir(EXP))
RUNS = wf.runs(EXP)                                    # RunId -> TrainParams values
RUN_DIRS = {str(rid.run_dir()): rid for rid in RUNS}
PREPS = {str(wf.prepared_dir(p)): p for p in wf.preps(EXP)}   # prepared folder -> PrepParams values
PREPARED = str(Path(next(iter(PREPS))).parent.parent)  # <data root>/prepared
EXP_ARG = shlex.quote(EXP["path"])
DATA_ARG = shlex.quote(str(config.get("data_dir", "") or ""))
PAPERMILL = f"papermill --cwd . --no-progress-bar --start-timeout {wf.kernel_start_timeout()}"

wildcard_constraints:
    dataset="|".join(wf.DATASET_NAMES),
    step="|".join(wf.BOOK_STEPS),
    prep=r"[^/]+",
    run="|".join(map(re.escape, RUN_DIRS)),   # exactly the grid's run folders


# A run that could not happen (no ImageNet weights, say) is retried by the next invocation:
# when this one ends, the status files of runs without metrics.json are dropped. Completed
# runs keep theirs and are never repeated. Dry runs call neither handler.
onsuccess:
    wf.forget_missing(EXP)

onerror:
    wf.forget_missing(EXP)


def statuses(runs):
    return [str(wf.status_file(rid)) for rid in runs]


def prepared(dataset, split=None):
    """The prepared folder of a dataset in this experiment (default: the dataset's own split)."""
    split = split or EXP["datasets"][dataset]["split"]
    return next(d for d, p in PREPS.items() if p["dataset"] == dataset and p["split"] == split)


def papermill_params(values):
    return shlex.quote(json.dumps(values))


rule all:
    input:
        statuses(RUNS),
        f"{RES}/book.done",


rule data_prep:
    input:
        "notebooks/data_prep.ipynb",
    output:
        folder=directory(f"{PREPARED}/{{dataset}}/{{prep}}"),
        notebook=f"{RES}/notebooks/data_prep/{{dataset}}/{{prep}}.ipynb",
    params:
        p=lambda wc: papermill_params(PREPS[f"{PREPARED}/{wc.dataset}/{wc.prep}"]),
        phantoms=GENERATOR_VERSION if EXP["synthetic"] else "",  # redrawn phantoms: rebuild
    shell:
        "{PAPERMILL} {input} {output.notebook} -y {params.p}"


# Output: the run's status.json (complete: metrics.json is there; missing: missing.json says why).
rule train:
    input:
        "notebooks/train.ipynb",
        lambda wc: prepared(RUN_DIRS[wc.run].dataset, RUN_DIRS[wc.run].split),
        lambda wc: statuses([r for r in RUNS if r.key == RUN_DIRS[wc.run].init_source]),
    output:
        "{run}/status.json",
    params:
        run=lambda wc: json.dumps(RUNS[RUN_DIRS[wc.run]], sort_keys=True),  # edited settings rerun it
    shell:
        "python -m helpers.workflow train {EXP_ARG} {wildcards.run} --data-dir {DATA_ARG}"


rule evaluate:
    input:
        "notebooks/evaluate.ipynb",
        lambda wc: statuses([r for r in RUNS if r.dataset == wc.dataset]),
    output:
        f"{RES}/notebooks/evaluate_{{dataset}}.ipynb",
    params:
        p=lambda wc: papermill_params(wf.notebook_params(EXP, "evaluate", wc.dataset)),
    shell:
        "{PAPERMILL} {input[0]} {output} -y {params.p}"


rule explain:
    input:
        "notebooks/explain.ipynb",
        lambda wc: prepared(wc.dataset),
        lambda wc: statuses([r for r in wf.explained_runs(EXP, wc.dataset) if r in RUNS]),
    output:
        f"{RES}/notebooks/explain_{{dataset}}.ipynb",
    params:
        p=lambda wc: papermill_params(wf.notebook_params(EXP, "explain", wc.dataset)),
    shell:
        "{PAPERMILL} {input[0]} {output} -y {params.p}"


rule audit:
    input:
        "notebooks/audit.ipynb",
        lambda wc: prepared(wc.dataset, "random"),
    output:
        f"{RES}/notebooks/audit_{{dataset}}.ipynb",
    params:
        p=lambda wc: papermill_params(wf.notebook_params(EXP, "audit", wc.dataset)),
    shell:
        "{PAPERMILL} {input[0]} {output} -y {params.p}"


# A visible note in place of a step this experiment does not run (a dataset it does not use).
rule gap:
    input:
        "notebooks/gap.ipynb",
    output:
        f"{RES}/notebooks/gap/{{step}}_{{dataset}}.ipynb",
    params:
        p=lambda wc: papermill_params(wf.gap_params(EXP, wc.step, wc.dataset)),
    shell:
        "{PAPERMILL} {input} {output} -y {params.p}"


rule summary:
    input:
        "notebooks/summary.ipynb",
        EXP["path"],
        statuses(RUNS),
        sorted(str(p) for p in Path("benchmarks/results").glob("*.json")),
    output:
        str(wf.summary_notebook(EXP)),
    params:
        p=papermill_params({"experiment": EXP["path"], "data_dir": str(config.get("data_dir", "") or "")}),
    shell:
        "{PAPERMILL} {input[0]} {output} -y {params.p}"


rule book:
    input:
        statuses(RUNS),
        [str(wf.step_notebook(EXP, step, ds)) for step in wf.BOOK_STEPS for ds in wf.DATASET_NAMES],
        str(wf.summary_notebook(EXP)),
        "_toc.yml",
        "_config.yml",
        sorted(str(p) for p in Path("book").glob("*.md")),
    output:
        touch(f"{RES}/book.done"),
    shell:
        "python -m helpers.workflow book {EXP_ARG} --data-dir {DATA_ARG}"
