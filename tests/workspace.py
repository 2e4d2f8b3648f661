"""A copy of the workflow (Snakefile, notebooks, benchmarks, profiles, book pages) with one
experiment file, for end-to-end tests that run snakemake away from the repository's own outputs."""
from __future__ import annotations

import shutil
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def workflow_copy(root: Path, experiment: dict) -> Path:
    """``root`` holding the workflow and ``experiments/<experiment["name"]>.yaml``; returns it."""
    root.mkdir(parents=True, exist_ok=True)
    for name in ("Snakefile", "_config.yml", "_toc.yml"):
        shutil.copy2(ROOT / name, root / name)
    for name in ("notebooks", "benchmarks", "profiles"):
        shutil.copytree(ROOT / name, root / name, ignore=shutil.ignore_patterns("results", "__pycache__"))
    shutil.copytree(ROOT / "book", root / "book", symlinks=True,
                    ignore=shutil.ignore_patterns("generated*", "_build", "__pycache__"))
    (root / "experiments").mkdir()
    # The real-data pages read the reference study's committed records on every build.
    shutil.copytree(ROOT / "records", root / "records")
    shutil.copy2(ROOT / "experiments" / "real_study.yaml", root / "experiments" / "real_study.yaml")
    (root / "experiments" / f"{experiment['name']}.yaml").write_text(yaml.safe_dump(experiment))
    return root
