# The whole study: data prep -> training grid -> evaluation / explanation / audit -> book.
# Every step is a papermill run of a notebook in notebooks/, kept under results/<experiment>/notebooks.
#   snakemake --cores 1 --config experiment=demo
#   snakemake --cores 1 --config experiment=paper_a data_dir=/path/to/download
import json
import shlex
from pathlib import Path

from helpers import workflow as wf

EXP = wf.load_experiment(config.get("experiment", "demo"), str(config.get("data_dir", "") or ""))
NAME = EXP["name"]
RES = f"results/{NAME}"
RUNS = {spec.key: spec for spec in wf.runs(EXP)}
DATASETS = list(EXP["datasets"])
EXPLAIN = [d for d in DATASETS if d in EXP["explain"]]
AUDIT = [d for d in DATASETS if d in EXP["audit"]]
EXP_ARG = shlex.quote(EXP["path"])
DATA_ARG = shlex.quote(str(config.get("data_dir", "") or ""))

# Runs recorded as missing are tried again on every invocation (weights may have arrived);
# completed runs are never repeated.
wf.forget_missing(EXP)

wildcard_constraints:
    dataset="|".join(wf.DATASET_NAMES),
    run=r"[A-Za-z0-9_.\-]+",


def papermill_params(step):
    return lambda wc: shlex.quote(json.dumps(wf.notebook_params(EXP, step, wc.dataset)))


def dataset_statuses(wc):
    return [str(wf.status_file(EXP, k)) for k, s in RUNS.items() if s.dataset == wc.dataset]


rule all:
    input:
        # Status files are direct targets so that a run recorded as missing (and forgotten
        # above) is tried again, and everything downstream of it is rebuilt.
        [str(wf.status_file(EXP, k)) for k in RUNS],
        f"{RES}/book.done",


rule data_prep:
    input:
        "notebooks/data_prep.ipynb",
    output:
        f"{RES}/notebooks/data_prep_{{dataset}}.ipynb",
    params:
        p=papermill_params("data_prep"),
    shell:
        "papermill {input} {output} -y {params.p} --cwd . --no-progress-bar"


rule train:
    input:
        lambda wc: [f"{RES}/notebooks/data_prep_{wc.dataset}.ipynb", "notebooks/train.ipynb"]
        + [str(wf.status_file(EXP, dep)) for dep in RUNS[f"{wc.dataset}/{wc.run}"].depends_on],
    output:
        f"{RES}/status/{{dataset}}/{{run}}.json",
    shell:
        "python -m helpers.workflow train {EXP_ARG} {wildcards.dataset}/{wildcards.run} --data-dir {DATA_ARG}"


rule evaluate:
    input:
        "notebooks/evaluate.ipynb",
        dataset_statuses,
    output:
        f"{RES}/notebooks/evaluate_{{dataset}}.ipynb",
    params:
        p=papermill_params("evaluate"),
    shell:
        "papermill notebooks/evaluate.ipynb {output} -y {params.p} --cwd . --no-progress-bar"


rule explain:
    input:
        "notebooks/explain.ipynb",
        dataset_statuses,
    output:
        f"{RES}/notebooks/explain_{{dataset}}.ipynb",
    params:
        p=papermill_params("explain"),
    shell:
        "papermill notebooks/explain.ipynb {output} -y {params.p} --cwd . --no-progress-bar"


rule audit:
    input:
        "notebooks/audit.ipynb",
        f"{RES}/notebooks/data_prep_{{dataset}}.ipynb",
    output:
        f"{RES}/notebooks/audit_{{dataset}}.ipynb",
    params:
        p=papermill_params("audit"),
    shell:
        "papermill notebooks/audit.ipynb {output} -y {params.p} --cwd . --no-progress-bar"


rule book:
    input:
        [str(wf.status_file(EXP, k)) for k in RUNS],
        expand(f"{RES}/notebooks/data_prep_{{dataset}}.ipynb", dataset=DATASETS),
        expand(f"{RES}/notebooks/evaluate_{{dataset}}.ipynb", dataset=DATASETS),
        expand(f"{RES}/notebooks/explain_{{dataset}}.ipynb", dataset=EXPLAIN),
        expand(f"{RES}/notebooks/audit_{{dataset}}.ipynb", dataset=AUDIT),
        "notebooks/summary.ipynb",
        "notebooks/gap.ipynb",
        "_toc.yml",
        "_config.yml",
        sorted(str(p) for p in Path("book").glob("*.md")),
    output:
        touch(f"{RES}/book.done"),
    shell:
        "python -m helpers.workflow book {EXP_ARG} --data-dir {DATA_ARG}"
