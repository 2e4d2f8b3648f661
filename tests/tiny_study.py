"""The tiny study: a CI-sized Snakemake grid run once, end to end, with the book.

tests/test_book.py checks the workflow, the book, the pages and the step notebooks (audit,
explain, evaluate, data prep) this run executed; the steps' own test files do not run them again. The grid runs in a copy of the workflow files under a temporary folder, on synthetic data,
with ResNet-18 ImageNet weights planted in a temporary TORCH_HOME (random tensors under
torchvision's file name) and no VGG-11 weights, so that one ImageNet arm cannot run and must
show up as a gap.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from workspace import workflow_copy

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RESULTS = Path("results/tiny")
NOTEBOOKS = RESULTS / "notebooks"


def glued(notebook: Path) -> set[str]:
    """The glue names an executed notebook holds."""
    nb = json.loads(Path(notebook).read_text())
    return {o.get("metadata", {}).get("scrapbook", {}).get("name") for c in nb["cells"] for o in c.get("outputs", [])}


TINY = {
    "name": "tiny",
    "description": "CI-sized synthetic grid: both papers' designs at 32 px, two epochs.",
    "synthetic": True,
    "datasets": {
        "covid_radiography": {"image_size": 32, "balance": True, "split": "random", "split_seed": 0,
                              "n_per_class": 12},
        "ct_kidney": {"image_size": 32, "balance": False, "split": "random", "split_seed": 0,
                      "n_per_class": 10},
    },
    "defaults": {"epochs": 2, "batch_size": 8, "lr": 1.0e-3, "normalize": "dataset",
                 "early_stopping_patience": 0},
    "grid": [
        {"dataset": "covid_radiography", "archs": ["resnet18"], "head": "replace",
         "arms": ["imagenet", "scratch"], "seeds": [0, 1]},
        {"dataset": "ct_kidney", "archs": ["vgg11"], "head": "dense1024",
         "arms": ["imagenet", "scratch"], "seeds": [0]},
    ],
    "explain": {"covid_radiography": {"arch": "resnet18", "head": "replace", "n_per_class": 1},
                "ct_kidney": {"arch": "vgg11", "head": "dense1024", "n_per_class": 1}},
    "audit": ["covid_radiography", "ct_kidney"],
}


def snakemake(work: Path, env: dict, *targets: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "snakemake"), "--cores", "2", *targets, "--config", "experiment=tiny"],
        cwd=work, env=env, capture_output=True, text=True, timeout=1800)


def run(tmp_path_factory):
    """(work folder, environment, the first invocation's CompletedProcess)."""
    import torch
    import torchvision

    work = workflow_copy(tmp_path_factory.mktemp("study"), TINY)
    assert (work / "book" / "_toc.yml").resolve() == (work / "_toc.yml").resolve()
    checkpoints = work / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), checkpoints / "resnet18-f37072fd.pth")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "HELPERS_DATA_ROOT": str(work / "data"), "TORCH_HOME": str(work / "torch"),
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    first = snakemake(work, env)
    return work, env, first


