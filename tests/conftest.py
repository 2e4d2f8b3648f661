"""Shared fixtures: the real-image sample, tiny synthetic datasets and prepared folders.

Nothing here writes into the repository: synthetic and prepared data live in pytest's tmp
folders. Tests that call ``prepare``/``synthesize`` with default paths should use the
``data_root`` fixture (it points ``HELPERS_DATA_ROOT`` at a fresh tmp folder).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# One share of the cores per xdist worker, for torch here and in every notebook or snakemake
# child: two workers each running torch on both cores of this machine took 2.2 times as long
# as with one thread each (OpenMP threads spin while they wait for a core). A user's own
# OMP_NUM_THREADS wins.
if os.environ.get("PYTEST_XDIST_WORKER"):
    _workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _workers)))

REPO = Path(__file__).resolve().parents[1]
REAL_SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "real-sample"


@pytest.fixture(scope="session")
def real_sample() -> Path:
    """../shared/real-sample (40 real images per class of each dataset); skips when absent."""
    if not REAL_SAMPLE.is_dir():
        pytest.skip(f"real-image sample not found at {REAL_SAMPLE}")
    return REAL_SAMPLE


@pytest.fixture
def data_root(tmp_path, monkeypatch) -> Path:
    """A fresh HELPERS_DATA_ROOT (replaces ./data) for one test; papermill kernels inherit it."""
    root = tmp_path / "data"
    monkeypatch.setenv("HELPERS_DATA_ROOT", str(root))
    return root


@pytest.fixture(scope="session")
def tiny_synthetic(tmp_path_factory):
    """Factory: ``tiny_synthetic(dataset, n_per_class=8) -> Path`` of a synthetic root (Kaggle
    layout + lesion_masks + SYNTHETIC.json), made once per session. Treat it as read-only;
    copy it before changing files."""
    from helpers.data import synthesize

    cache: dict[tuple, Path] = {}

    def make(dataset: str = "covid_radiography", n_per_class: int = 8, seed: int = 0) -> Path:
        key = (dataset, n_per_class, seed)
        if key not in cache:
            root = tmp_path_factory.mktemp(f"synthetic-{dataset}") / dataset
            cache[key] = synthesize(dataset, root=root, n_per_class=n_per_class, seed=seed, progress=False)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def tiny_prepared(tmp_path_factory, tiny_synthetic):
    """Factory: ``tiny_prepared(dataset, image_size=32, n_per_class=8, seed=0, split="random",
    balance=True) -> Path`` of a prepared folder from ``tiny_synthetic``, made once per session."""
    from helpers.data import prepare

    cache: dict[tuple, Path] = {}

    def make(dataset: str = "covid_radiography", image_size: int = 32, n_per_class: int = 8, seed: int = 0,
             split: str = "random", balance: bool = True) -> Path:
        key = (dataset, image_size, n_per_class, seed, split, balance)
        if key not in cache:
            out = tmp_path_factory.mktemp(f"prepared-{dataset}") / "prepared"
            cache[key] = prepare(dataset, data_dir=str(tiny_synthetic(dataset, n_per_class)), image_size=image_size,
                                 balance=balance, seed=seed, out_dir=str(out), split=split, progress=False)
        return cache[key]

    return make


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """No test reaches the internet: missing torchvision weights fail at once, as on an
    air-gapped machine. The download tests lift this and serve files from 127.0.0.1."""
    monkeypatch.setenv("HELPERS_OFFLINE", "1")


# Longest files first (xdist hands each free worker the next file, with --no-loadscope-reorder
# in pyproject.toml): seconds on this 2-core machine, book 430, SLURM 230, explain 220,
# benchmarks 150, training 80, the rest under 70 each. xdist's own order (most tests first)
# started the book's study last, and it then ran alone for five minutes at the end.
FIRST = ("test_book.py", "test_slurm.py", "test_explain.py", "test_benchmarks.py", "test_training.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(FIRST)))  # stable: files stay whole

