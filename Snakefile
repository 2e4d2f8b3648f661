# The whole study: data prep -> training grid -> evaluation / explanation / audit -> summary -> book.
# Every step is a papermill run of a notebook in notebooks/, kept under results/<experiment>/notebooks.
#   snakemake --cores 1 --config experiment=demo
#   snakemake --cores 1 --config experiment=paper_a data_dir=/path/to/download
#   snakemake --profile profiles/slurm --config experiment=paper_a data_dir=... slurm_account=... slurm_partition=...
# Parsing this file only reads: nothing is written or deleted until a job runs (a dry run,
# `snakemake -n`, changes no file; tests/test_workflow.py checks it).
import json
import os
import re
import shlex
from pathlib import Path

from helpers import data, metrics, records, runner
from helpers import experiment as ex
from helpers import workflow as wf
from helpers.data.synthetic import GENERATOR_VERSION

EXP = ex.load_experiment(config.get("experiment", "demo"), str(config.get("data_dir", "") or ""))
NAME = EXP["name"]
RES = str(ex.results_dir(EXP))
RUNS = ex.runs(EXP)                                    # RunId -> TrainParams values
SWEEPS = ex.sweeps(EXP)                                # tuned run -> the sweep that picks its lr
RUN_DIRS = {str(rid.run_dir()): rid for rid in RUNS}
PREPS = {str(ex.prepared_dir(p)): p for p in ex.preps(EXP)}   # prepared folder -> PrepParams values
PREPARED = str(Path(next(iter(PREPS))).parent.parent)  # <data root>/prepared
EXP_ARG = shlex.quote(EXP["path"])
DATA_ARG = shlex.quote(str(config.get("data_dir", "") or ""))
PAPERMILL = wf.papermill_command()
# After a step's command fails: keep its executed notebook and one-line reason for make report's
# closing lines (Snakemake deletes a failed job's outputs), and fail the job.
FAILED = f"python -m helpers.runner failed --to {shlex.quote(str(runner.failed_dir(EXP)))}"

wildcard_constraints:
    dataset="|".join(map(re.escape, dict.fromkeys([*ex.DATASET_NAMES, *EXP["datasets"]]))),   # and one's own
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


# SLURM (`--profile profiles/slurm`): where the cluster jobs go, from --config or else the
# environment (HELPERS_SLURM_ACCOUNT, ...). The profile says how big each job is. The steps that
# only read run folders and notebooks run where snakemake runs, never as cluster jobs.
localrules: all, evaluate, gap, summary, reference, book


def cluster_setting(key):
    return str(config.get(key, "") or os.environ.get(f"HELPERS_{key.upper()}", "")).strip()


def gpus_per_training_run():
    value = cluster_setting("slurm_gpus") or "0"
    if not value.isdigit():
        raise WorkflowError(f"slurm_gpus (or HELPERS_SLURM_GPUS) must be a whole number of GPUs per "
                            f"training job, 0 for none; got {value!r}")
    return int(value)


GPUS = gpus_per_training_run()


def slurm_target(*keys):
    """A resource callable: the first of these settings that is set. Under the slurm executor,
    none set stops the run when it selects its first jobs, before any sbatch, naming the last."""
    def value(wildcards):
        found = next((cluster_setting(k) for k in keys if cluster_setting(k)), "")
        if not found and getattr(workflow.executor_plugin, "name", "") == "slurm":
            key = keys[-1]
            raise WorkflowError(
                f"the SLURM profile needs {key}: add `{key}=NAME` to --config or export "
                f"HELPERS_{key.upper()}=NAME (sacctmgr show associations user=$USER lists your "
                f"accounts, sinfo -s the partitions)")
        return found
    return value


CLUSTER_JOB = {"slurm_account": slurm_target("slurm_account"),
               "slurm_partition": slurm_target("slurm_partition")}
# One training run per job; GPUs only when asked for, on the GPU partition (default: the same).
TRAIN_JOB = ({**CLUSTER_JOB, "slurm_partition": slurm_target("slurm_gpu_partition", "slurm_partition"),
              "gpu": GPUS} if GPUS else CLUSTER_JOB)


# Snakemake sets OMP_NUM_THREADS (and MKL's, OpenBLAS's) to a job's threads, 1 unless declared:
# the heavy steps (data prep, training, explanation, audit) declare every core snakemake was
# given (`--cores`, capped at the CPUs this process or SLURM job may use), so torch uses them and
# they run one at a time; the light notebook steps keep one thread each and may run side by side.
def heavy_threads():
    try:
        given = int(workflow.cores)
    except Exception:  # a cluster executor has no total: the profile's cpus_per_task sizes each job
        return 1
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    usable = int(os.environ.get("SLURM_CPUS_PER_TASK") or usable)  # inside a cluster job: its share
    return max(1, min(given, usable))


HEAVY_THREADS = heavy_threads()


PUBLISHED = os.path.relpath(metrics.PUBLISHED_FILE)   # the papers' values, which the pages read
# The package's code, for the pages computed from records alone (reference) or from finished runs
# (summary): a change to a table or a sentence redraws them, and never retrains anything.
PAGE_CODE = sorted(os.path.relpath(p) for p in Path(metrics.__file__).parent.rglob("*.py"))


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
        # What the images are: redrawn phantoms, or a real folder whose files changed (added,
        # removed, replaced: their bytes hashed, not decoded; not their modification times, so
        # a folder copied or unzipped again rebuilds nothing), rebuild the folder and downstream.
        source=lambda wc: (GENERATOR_VERSION if EXP["synthetic"]
                           else runner.data_fingerprint(PREPS[f"{PREPARED}/{wc.dataset}/{wc.prep}"])),
    threads: HEAVY_THREADS
    resources:
        **CLUSTER_JOB,
    shell:
        "{PAPERMILL} {input} {output.notebook} -y {params.p} || {FAILED} data_prep {output.folder} {output.notebook}"


# Output: the run's status.json (complete: metrics.json is there; missing: missing.json says why).
rule train:
    input:
        "notebooks/train.ipynb",
        lambda wc: prepared(RUN_DIRS[wc.run].dataset, RUN_DIRS[wc.run].split),
        lambda wc: statuses([r for r in RUNS if r.key == RUN_DIRS[wc.run].init_source]),
        lambda wc: statuses(SWEEPS[RUN_DIRS[wc.run]].candidates.values() if RUN_DIRS[wc.run] in SWEEPS else []),
    output:
        "{run}/status.json",
    params:
        run=lambda wc: json.dumps(RUNS[RUN_DIRS[wc.run]], sort_keys=True),  # edited settings rerun it
        sweep=lambda wc: repr(SWEEPS.get(RUN_DIRS[wc.run])),
        notebook=lambda wc: str(wf.train_notebook(EXP, RUN_DIRS[wc.run])),
    threads: HEAVY_THREADS
    resources:
        **TRAIN_JOB,
    shell:
        "python -m helpers.workflow train {EXP_ARG} {wildcards.run} --data-dir {DATA_ARG}"
        " || {FAILED} train {wildcards.run} {params.notebook}"


rule evaluate:
    input:
        "notebooks/evaluate.ipynb",
        PUBLISHED,
        lambda wc: statuses([r for r in RUNS if r.dataset == wc.dataset]),
    output:
        f"{RES}/notebooks/evaluate_{{dataset}}.ipynb",
    # The parameters are read when the job runs: a sweep's passed-over rates are known once it ran.
    shell:
        "p=$(python -m helpers.workflow params {EXP_ARG} evaluate {wildcards.dataset} --data-dir {DATA_ARG})"
        " && {PAPERMILL} {input[0]} {output} -y \"$p\" || {FAILED} evaluate {wildcards.dataset} {output}"


rule explain:
    input:
        "notebooks/explain.ipynb",
        lambda wc: prepared(wc.dataset),
        lambda wc: statuses([r for r in wf.explained_inputs(EXP, wc.dataset) if r in RUNS]),
    output:
        f"{RES}/notebooks/explain_{{dataset}}.ipynb",
    params:
        settings=lambda wc: json.dumps(EXP["explain"][wc.dataset], sort_keys=True),  # edited settings rerun it
    threads: HEAVY_THREADS
    resources:
        **CLUSTER_JOB,
    # The parameters are read when the job runs: a swept arm's run is known once its sweep ran.
    shell:
        "p=$(python -m helpers.workflow params {EXP_ARG} explain {wildcards.dataset} --data-dir {DATA_ARG})"
        " && {PAPERMILL} {input[0]} {output} -y \"$p\" || {FAILED} explain {wildcards.dataset} {output}"


rule audit:
    input:
        "notebooks/audit.ipynb",
        lambda wc: prepared(wc.dataset, data.get_spec(wc.dataset).audit_split),
        lambda wc: [prepared(wc.dataset, fold) for fold in ex.audit_folds(EXP, wc.dataset)],
    output:
        f"{RES}/notebooks/audit_{{dataset}}.ipynb",
    params:
        p=lambda wc: papermill_params(wf.notebook_params(EXP, "audit", wc.dataset)),
    threads: HEAVY_THREADS
    resources:
        **CLUSTER_JOB,
    shell:
        "{PAPERMILL} {input[0]} {output} -y {params.p} || {FAILED} audit {wildcards.dataset} {output}"


# A visible note in place of a step this experiment does not run (a dataset it does not use).
rule gap:
    input:
        "notebooks/gap.ipynb",
    output:
        f"{RES}/notebooks/gap/{{step}}_{{dataset}}.ipynb",
    params:
        p=lambda wc: papermill_params(wf.gap_params(EXP, wc.step, wc.dataset)),
    shell:
        "{PAPERMILL} {input} {output} -y {params.p} || {FAILED} gap {wildcards.step}_{wildcards.dataset} {output}"


rule summary:
    input:
        "notebooks/summary.ipynb",
        EXP["path"],
        PUBLISHED,
        PAGE_CODE,
        statuses(RUNS),
        sorted(str(p) for p in Path("benchmarks/results").glob("*.json")),
    output:
        str(wf.summary_notebook(EXP)),
    params:
        p=papermill_params({"experiment": EXP["path"], "data_dir": str(config.get("data_dir", "") or "")}),
    shell:
        "{PAPERMILL} {input[0]} {output} -y {params.p} || {FAILED} summary {NAME} {output}"


# The real-data pages: the reference study's committed records (helpers.records), read on every
# build; no data, network or training needed. A re-export of the records reruns it.
rule reference:
    input:
        "notebooks/reference.ipynb",
        PUBLISHED,
        PAGE_CODE,
        # every record file: an edited or newly exported one reruns the page
        sorted(str(p) for p in (records.ROOT / records.REFERENCE).rglob("*") if p.is_file()),
        f"experiments/{records.REFERENCE}.yaml",
    output:
        str(wf.reference_notebook(EXP)),
    params:
        p=papermill_params({"experiment": records.REFERENCE, "root": str(records.ROOT)}),
    shell:
        "{PAPERMILL} {input[0]} {output} -y {params.p} || {FAILED} reference {records.REFERENCE} {output}"


rule book:
    input:
        statuses(RUNS),
        str(wf.reference_notebook(EXP)),
        [str(wf.step_notebook(EXP, step, ds)) for step in wf.BOOK_STEPS for ds in wf.book_datasets(EXP)],
        str(wf.summary_notebook(EXP)),
        "_toc.yml",
        "_config.yml",
        sorted(str(p) for p in Path("book").glob("*.md")),
    output:
        touch(f"{RES}/book.done"),
    shell:
        "python -m helpers.book {EXP_ARG} --data-dir {DATA_ARG} || {FAILED} book {NAME}"
