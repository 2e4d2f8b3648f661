"""The whole study end to end: a CI-sized Snakemake grid, the strict book build, a real browser.

The grid runs in a copy of the workflow files under a temporary folder, on synthetic data,
with ResNet-18 ImageNet weights planted in a temporary TORCH_HOME (random tensors under
torchvision's file name) and no VGG-11 weights, so that one ImageNet arm cannot run and must
show up as a gap.
"""

import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

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


def _snakemake(work: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "snakemake"), "--cores", "2", "--config", "experiment=tiny"],
        cwd=work, env=env, capture_output=True, text=True, timeout=1800)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    import torch
    import torchvision

    work = tmp_path_factory.mktemp("study")
    for name in ("Snakefile", "_config.yml", "_toc.yml"):
        shutil.copy2(ROOT / name, work / name)
    for name in ("notebooks", "benchmarks"):
        shutil.copytree(ROOT / name, work / name, ignore=shutil.ignore_patterns("results", "__pycache__"))
    shutil.copytree(ROOT / "book", work / "book", symlinks=True,
                    ignore=shutil.ignore_patterns("generated*", "_build", "__pycache__"))
    assert (work / "book" / "_toc.yml").resolve() == (work / "_toc.yml").resolve()
    (work / "experiments").mkdir()
    (work / "experiments" / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    checkpoints = work / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), checkpoints / "resnet18-f37072fd.pth")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "HELPERS_DATA_ROOT": str(work / "data"), "TORCH_HOME": str(work / "torch"),
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    first = _snakemake(work, env)
    return work, env, first


@pytest.mark.slow
def test_workflow_runs_end_to_end_and_the_strict_book_builds(study):
    work, _, first = study
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-8000:]
    assert (work / "_build" / "html" / "index.html").is_file()
    for page in ("chest_xray", "kidney_ct", "beyond", "audit", "methods", "reproducibility", "performance"):
        assert (work / "_build" / "html" / f"{page}.html").is_file(), page
    # Every executed notebook is kept, and the appendix holds them all.
    notebooks = work / "results" / "tiny" / "notebooks"
    assert len(list((notebooks / "train").glob("*.ipynb"))) == 6
    for step in ("data_prep", "evaluate", "explain", "audit"):
        for ds in ("covid_radiography", "ct_kidney"):
            assert (notebooks / f"{step}_{ds}.ipynb").is_file()
            assert (work / "_build" / "html" / "generated" / f"{step}_{ds}.html").is_file()


@pytest.mark.slow
def test_a_run_that_cannot_happen_is_a_visible_gap(study):
    work, _, _ = study
    status = json.loads((work / "results/tiny/status/ct_kidney/vgg11_dense1024-imagenet-s0.json").read_text())
    assert status["state"] == "missing"
    assert "vgg11-8a719046.pth" in status["reason"]
    missing = json.loads((work / "runs/tiny/ct_kidney/vgg11_dense1024-imagenet-s0/missing.json").read_text())
    assert missing["reason"] == status["reason"]
    # The rest of the grid went on ...
    for run in ("resnet18-imagenet-s0", "resnet18-imagenet-s1", "resnet18-scratch-s0", "resnet18-scratch-s1"):
        assert (work / "runs/tiny/covid_radiography" / run / "metrics.json").is_file(), run
    assert (work / "runs/tiny/ct_kidney/vgg11_dense1024-scratch-s0/metrics.json").is_file()
    # ... and the book shows the gap with its reason on the kidney page, not on the chest page.
    kidney = (work / "_build/html/kidney_ct.html").read_text()
    assert "vgg11_dense1024-imagenet-s0" in kidney and "MissingWeightsError" in kidney
    assert "Synthetic data" in kidney
    chest = (work / "_build/html/chest_xray.html").read_text()
    assert "Incomplete grid" not in chest


@pytest.mark.slow
def test_a_second_invocation_repeats_no_completed_training(study):
    work, env, _ = study
    done = sorted((work / "runs/tiny").glob("*/*/history.csv"))
    before = {p: p.stat().st_mtime_ns for p in done}
    again = _snakemake(work, env)
    assert again.returncode == 0, again.stderr[-4000:]
    assert before and {p: p.stat().st_mtime_ns for p in done} == before
    # Only the missing run was tried again (its weights are still absent).
    assert "train" in again.stdout + again.stderr
    assert "vgg11_dense1024-imagenet-s0" in again.stdout + again.stderr


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (Debian package 'chromium'; .ci/run installs it)")
def test_every_page_in_a_real_browser(study):
    from playwright.sync_api import sync_playwright

    work, _, first = study
    assert first.returncode == 0
    html = work / "_build" / "html"
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(html))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    pages = sorted(str(p.relative_to(html)) for p in html.rglob("*.html")
                   if not str(p.relative_to(html)).startswith(("_static", "_sources")))
    assert len(pages) > 20
    problems = []
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
                "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"])
            page = browser.new_page()
            errors = []
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            for rel in pages:
                errors.clear()
                response = page.goto(f"{base}/{rel}", wait_until="load")
                if response is None or response.status != 200:
                    problems.append(f"{rel}: HTTP {response.status if response else 'none'}")
                    continue
                broken = page.evaluate(
                    "Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)")
                if broken:
                    problems.append(f"{rel}: broken images {broken}")
                if errors:
                    problems.append(f"{rel}: console errors {errors}")
                if rel in ("chest_xray.html", "kidney_ct.html"):
                    tables = page.locator("article table").count()
                    images = page.evaluate("document.querySelectorAll('article img').length")
                    table1 = page.locator("article table", has_text="Testing accuracy").count()
                    if table1 < 1 or tables < 2 or images < 3:
                        problems.append(f"{rel}: Table 1 {table1}, tables {tables}, figures {images}")
            browser.close()
    finally:
        server.shutdown()
    assert not problems, "\n".join(problems)
