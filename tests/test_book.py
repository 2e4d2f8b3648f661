"""The whole study end to end: the tiny Snakemake grid (tests/tiny_study.py), the strict book
build, a real browser, and the step notebooks it executed. One ImageNet arm has no weights and
must show up as a gap."""

import functools
import http.server
import json
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest

import tiny_study

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

def _snakemake(work: Path, env: dict, *targets: str) -> subprocess.CompletedProcess:
    return tiny_study.snakemake(work, env, *targets)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """(work folder, environment, first invocation) of the tiny study (tests/tiny_study.py),
    run once for this file: the book tests and the step-notebook tests below read it."""
    return tiny_study.run(tmp_path_factory)


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
    for ds in ("covid_radiography", "ct_kidney"):
        assert list((notebooks / "data_prep" / ds).glob("*.ipynb"))  # one per prepared folder
        assert (work / "_build" / "html" / "generated" / f"data_prep_{ds}.html").is_file()
        for step in ("evaluate", "explain", "audit"):
            assert (notebooks / f"{step}_{ds}.ipynb").is_file()
            assert (work / "_build" / "html" / "generated" / f"{step}_{ds}.html").is_file()


@pytest.mark.slow
def test_a_run_that_cannot_happen_is_a_visible_gap(study):
    work, _, _ = study
    gap = work / "runs/tiny/ct_kidney/vgg11_dense1024-imagenet-s0"
    missing = json.loads((gap / "missing.json").read_text())
    assert "vgg11-8a719046.pth" in missing["reason"]
    # its status was dropped when the invocation ended, so the next one tries it again
    assert not (gap / "status.json").exists()
    # The rest of the grid went on ...
    for run in ("resnet18-imagenet-s0", "resnet18-imagenet-s1", "resnet18-scratch-s0", "resnet18-scratch-s1"):
        assert (work / "runs/tiny/covid_radiography" / run / "metrics.json").is_file(), run
    assert (work / "runs/tiny/ct_kidney/vgg11_dense1024-scratch-s0/metrics.json").is_file()
    # ... and the book shows the gap: a short box on the kidney page (not on the chest page) that
    # says what to do and links to the one table of every missing run with its full reason.
    kidney = (work / "_build/html/kidney_ct.html").read_text()
    assert "1 of 2 runs did not run" in kidney and "ImageNet weights on this machine for vgg11" in kidney
    assert "python -m helpers.weights fetch" in kidney and "reproducibility.html#missing-runs" in kidney
    assert "Synthetic data" in kidney and "vgg11-8a719046.pth" not in kidney
    chest = (work / "_build/html/chest_xray.html").read_text()
    assert "did not run" not in chest
    repro = (work / "_build/html/reproducibility.html").read_text()
    assert 'id="missing-runs"' in repro
    assert "vgg11_dense1024-imagenet-s0" in repro and "vgg11-8a719046.pth" in repro


@pytest.mark.slow
def test_a_second_invocation_repeats_no_completed_training(study):
    work, env, _ = study
    done = sorted((work / "runs/tiny").glob("*/*/history.csv"))
    before = {p: p.stat().st_mtime_ns for p in done}
    # Every training job of the grid as targets: what decides whether a run repeats, without
    # building the book again (the first invocation built it; the tests here read that one).
    statuses = [str(p.relative_to(work) / "status.json") for p in sorted((work / "runs/tiny").glob("*/*"))]
    assert len(statuses) == 6
    again = _snakemake(work, env, *statuses)
    assert again.returncode == 0, again.stderr[-4000:]
    assert before and {p: p.stat().st_mtime_ns for p in done} == before
    # Only the missing run was tried again (its weights are still absent).
    assert "train" in again.stdout + again.stderr
    assert "vgg11_dense1024-imagenet-s0" in again.stdout + again.stderr


def test_a_fresh_clone_restores_the_recorded_runs_and_trains_only_the_rest(study, tmp_path):
    """A study recorded in stages, continued from a fresh clone: the records go back into the
    run folders and the next invocation trains only the runs that have no record."""
    work, env, _ = study
    clone = tmp_path / "clone"
    shutil.copytree(work, clone, symlinks=True, ignore=shutil.ignore_patterns("_build"))
    env = {**env, "HELPERS_DATA_ROOT": str(clone / "data")}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "helpers.records", *args], cwd=clone, env=env,
                              capture_output=True, text=True, timeout=600)

    # one run trained from uncommitted code: export records it and says so, naming it
    trained = sorted((clone / "runs/tiny").glob("*/*/metrics.json"))
    for path in trained:   # whatever this checkout's state was when they trained
        path.write_text(json.dumps({**json.loads(path.read_text()), "git_dirty": path == trained[0]}))
    dirty = trained[0]
    exported = cli("export", "tiny")
    assert exported.returncode == 0, exported.stderr
    key = f"{dirty.parent.parent.name}/{dirty.parent.name}"
    assert "uncommitted code" in exported.stderr and key in exported.stderr
    assert json.loads((clone / "records/tiny/manifest.json").read_text())["dirty_runs"] == [key]
    recorded = {p.parent.name: p.read_bytes() for p in (clone / "records/tiny/runs").glob("*/*/metrics.json")}
    assert len(recorded) == 5   # six runs, one of them absent by design
    shutil.rmtree(clone / "runs")       # what a fresh clone lacks: run folders and Snakemake's
    shutil.rmtree(clone / ".snakemake")  # metadata (the prepared folders are rebuilt first)
    restored = cli("restore", "tiny")
    assert restored.returncode == 0, restored.stderr
    assert "5 recorded run(s) restored" in restored.stdout
    assert {p.parent.name: p.read_bytes() for p in (clone / "runs/tiny").glob("*/*/metrics.json")} == recorded

    statuses = [str(p.relative_to(work) / "status.json") for p in sorted((work / "runs/tiny").glob("*/*"))]
    plan = _snakemake(clone, env, "-n", *statuses)
    assert plan.returncode == 0, plan.stderr[-4000:]
    jobs = re.findall(r"^(\w+)\s+(\d+)$", plan.stdout + plan.stderr, re.M)
    assert ("train", "1") in jobs, plan.stdout[-3000:]   # the absent ImageNet run only
    assert "vgg11_dense1024-imagenet-s0" in plan.stdout + plan.stderr
    assert cli("restore", "tiny").stdout.startswith("0 recorded run(s) restored")   # never twice

    shutil.rmtree(clone / "data" / "prepared")
    shutil.rmtree(clone / "runs")
    refused = cli("restore", "tiny")
    assert refused.returncode == 2 and "prepare the data first" in refused.stderr


# Run in the page: what a reader would see as wrong. The content column is the article; an
# element may be wider only inside a frame that scrolls (tables, code blocks).
PAGE_CHECKS = r"""
() => {
  const article = document.querySelector("article") || document.querySelector("main");
  const out = {text: [], wide: [], images: [], banner: null};
  const clone = article.cloneNode(true);
  clone.querySelectorAll("pre, code, script, style, .highlight").forEach(e => e.remove());
  const text = clone.textContent;
  // An object's repr instead of the object: "<Figure size 640x480 with 1 Axes>",
  // "<IPython.core.display.Markdown object>", "<pandas.io.formats.style.Styler at 0x7f...>".
  const repr = text.match(/<(Figure size [^>]*|[A-Za-z_]\w*(\.\w+)+( object)?( at 0x[0-9a-fA-F]+)?|[A-Za-z_]\w* object( at 0x[0-9a-fA-F]+)?)>/);
  if (repr) out.text.push(repr[0]);
  const answer = [...article.querySelectorAll("table")].find(t => t.textContent.includes("ImageNet − scratch"));
  out.answer_top = answer ? answer.getBoundingClientRect().top + window.scrollY : null;
  const nan = text.match(/.{0,40}\b(nan|NaN)\b.{0,40}/);
  if (nan) out.text.push(nan[0]);
  const right = article.getBoundingClientRect().right + 1;
  const scrolls = e => { for (let p = e.parentElement; p && p !== article; p = p.parentElement) {
      const o = getComputedStyle(p).overflowX; if (o === "auto" || o === "scroll") return true; }
    return false; };
  for (const e of article.querySelectorAll("*")) {
    const r = e.getBoundingClientRect();
    if (r.width > 0 && r.right > right && !scrolls(e))
      out.wide.push(`${e.tagName.toLowerCase()}.${e.className} ${Math.round(r.width)}px`);
  }
  for (const img of article.querySelectorAll("img")) {
    const icon = img.naturalWidth > 0 && img.naturalWidth <= 64;
    if (!(img.complete && img.naturalWidth > 0)) out.images.push(`not loaded: ${img.src.slice(-60)}`);
    else if (!icon && img.getBoundingClientRect().width < 300)
      out.images.push(`${Math.round(img.getBoundingClientRect().width)}px wide: ${img.src.slice(-60)}`);
  }
  const banner = article.querySelector(".report-banner");
  if (banner) out.banner = banner.getBoundingClientRect().height;
  return out;
}
"""
BANNER_MAX_PX = 200


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (Debian package 'chromium'; .ci/run installs it)")
def test_every_page_in_a_real_browser(study, tmp_path, capsys):
    """Each page as a reader sees it; a full-page screenshot of each is saved (path printed)."""
    from playwright.sync_api import sync_playwright

    work, _, first = study
    assert first.returncode == 0
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with capsys.disabled():
        print(f"\nscreenshots of every page: {shots}")
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
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors = []
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            for rel in pages:
                errors.clear()
                response = page.goto(f"{base}/{rel}", wait_until="load")
                if response is None or response.status != 200:
                    problems.append(f"{rel}: HTTP {response.status if response else 'none'}")
                    continue
                found = page.evaluate(PAGE_CHECKS)
                shot = shots / (rel.replace("/", "__").removesuffix(".html") + ".png")
                page.screenshot(path=str(shot), full_page=True)
                for kind in ("text", "wide", "images"):
                    if found[kind]:
                        problems.append(f"{rel}: {kind}: {found[kind][:5]}")
                if found["banner"] is not None and found["banner"] > BANNER_MAX_PX:
                    problems.append(f"{rel}: the missing-runs box is {found['banner']:.0f} px tall (> {BANNER_MAX_PX})")
                if errors:
                    problems.append(f"{rel}: console errors {errors}")
                if rel in ("chest_xray.html", "kidney_ct.html"):
                    tables = page.locator("article table").count()
                    images = page.evaluate("document.querySelectorAll('article img').length")
                    table1 = page.locator("article table", has_text="Testing accuracy").count()
                    if table1 < 1 or tables < 2 or images < 3:
                        problems.append(f"{rel}: Table 1 {table1}, tables {tables}, figures {images}")
                # The front page answers the question on real images in its first screen.
                if rel == "index.html" and (found["answer_top"] is None or found["answer_top"] > 900):
                    problems.append(f"index.html: the real-image answer table is not in the first "
                                    f"screen (top at {found['answer_top']})")
                if rel in ("chest_xray.html", "kidney_ct.html", "real_study.html"):
                    real = page.locator("article table", has_text="published").count()
                    if rel != "real_study.html" and real < 1:
                        problems.append(f"{rel}: no real-image table beside the published values")
                if rel in ("kidney_ct.html", "index.html") and found["banner"] is None:
                    problems.append(f"{rel}: no missing-runs box, though a run is missing")
            browser.close()
    finally:
        server.shutdown()
    assert not problems, "\n".join(problems)


def test_make_publish_pushes_the_site_to_gh_pages(tmp_path):
    """`make publish` against a local bare repository, with a stand-in built site."""
    remote = tmp_path / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", str(remote)], check=True)
    work = tmp_path / "work"
    subprocess.run(["git", "init", "-q", str(work)], check=True)
    make = ["make", "-f", str(ROOT / "Makefile"), "publish", f"BIN={BIN}", f"PUBLISH_REMOTE={remote}"]
    refused = subprocess.run(make, cwd=work, capture_output=True, text=True)
    assert refused.returncode != 0 and "make report" in refused.stderr
    (work / "_build" / "html" / "_static").mkdir(parents=True)
    (work / "_build" / "html" / "index.html").write_text("<html>book</html>")
    (work / "_build" / "html" / "_static" / "report.css").write_text("p {}")
    done = subprocess.run(make, cwd=work, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    files = subprocess.run(["git", "-C", str(remote), "ls-tree", "-r", "--name-only", "gh-pages"],
                           capture_output=True, text=True, check=True).stdout.split()
    assert sorted(files) == [".nojekyll", "_static/report.css", "index.html"]


def test_every_glue_key_a_page_cites_is_written_out_where_it_is_glued():
    """grep finds each number's origin: a key cited by a page appears literally, in quotes, in
    the package or a notebook, or is built by one named function from a table (a paper's
    setting or headline in published.yaml, a dataset's banner)."""
    import re

    cited = set()
    for page in (ROOT / "book").glob("*.md"):
        text = page.read_text()
        cited |= set(re.findall(r"```\{glue\}\s+(\S+)", text))
        cited |= set(re.findall(r"\{glue:text\}`[^`:]+::([^`:]+)", text))
    sources = "".join(p.read_text() for p in [*(ROOT / "src" / "helpers").glob("*.py"),
                                              *(ROOT / "notebooks").glob("*.ipynb")])
    assert len(cited) > 30
    from helpers import metrics, papers, report

    # the papers' designs: <paper>_<setting>, each setting written once in published.yaml
    settings = {report.glue_name(p["name"], k) for p in metrics.PAPER_VALUES.values() for k in p["settings"]}
    assert {"paper_a_per_class", "paper_b_images"} <= settings
    # built from the tables, each name from one function: headlines, and one banner per dataset
    from helpers.data import DATASETS

    built = {*settings, *papers.paper_headlines(), *(report.glue_name("banner", d) for d in DATASETS)}
    assert {"paper_a_test_acc_vgg11_imagenet", "paper_b_gain_range", "banner_ct_kidney"} <= built
    sources += "".join(f'"{k}"' for k in built)
    unfound = sorted(k for k in cited if f'"{k}"' not in sources and f'\\"{k}\\"' not in sources)
    assert not unfound, f"glue keys cited by book pages but glued under a built name: {unfound}"


def test_no_page_types_a_papers_setting_and_the_readme_agrees_with_published_yaml():
    """The papers' sizes and budgets come from published.yaml: the pages glue them, and the
    README (which cannot glue) states the same values, and the same block size as the code."""
    import re

    from helpers import metrics

    a, b = (metrics.PAPER_VALUES[d]["settings"] for d in ("covid_radiography", "ct_kidney"))
    for page in (ROOT / "book").glob("*.md"):
        prose = re.sub(r"\{glue:text\}`[^`]*`", "", page.read_text())
        for value in (a["per_class"], b["images"]):
            assert not re.search(rf"\b{value:,}\b|\b{value}\b", prose), (page.name, value)
        # nor the class counts, the split shares or paper A's normalisation, in words or digits
        from helpers.data.splits import ratio_text
        from helpers.models import PAPER_A_STATS

        words = {3: "three", 4: "four"}
        for typed in (f"{words[a['classes']]} classes", f"{words[b['classes']]} classes", ratio_text(),
                      str(PAPER_A_STATS[0][0])):
            assert typed not in prose, (page.name, typed)
    readme = (ROOT / "README.md").read_text()
    lr = f"{a['lr']:.0e}".replace("e-0", "e-")    # 1e-4, as the prose writes it
    assert re.search(rf"{a['classes']} classes, {a['per_class']} per class,\s+{a['image_size']} px, "
                     rf"{a['split']} split, {a['optimizer']} {lr}, batch {a['batch_size']}, {a['epochs']} epochs", readme)
    assert re.search(rf"{b['classes']} classes, {b['images']:,} images, {b['image_size']} px, batch "
                     rf"{b['batch_size']},\s+{b['epochs']} epochs, early stopping", readme)
    from helpers.data.splits import BLOCK_SIZE   # the block split's size: one constant, the README says it too
    assert re.findall(r"blocks of (\d+) consecutive slice", readme) == [str(BLOCK_SIZE)]


# ------------------------------------------------------------ the step notebooks it executed
# Each step's notebook as Snakemake ran it, checked here rather than run again by the step's tests.

@pytest.mark.slow
def test_the_workflows_audit_notebook_writes_every_file(study):
    # The audit step of the tiny study (Snakemake ran audit.ipynb through papermill).
    work = study[0]
    out_dir = work / tiny_study.RESULTS / "ct_kidney" / "audit"
    for name in ["duplicate_pairs.csv", "duplicate_summary.csv", "groups_per_class.csv", "shortcut_baseline.csv",
                 "closest_pairs.png", "views.csv", "view_counts.csv", "view_blocks.csv"]:
        assert (out_dir / name).stat().st_size > 0, name
    shortcut = pd.read_csv(out_dir / "shortcut_baseline.csv")
    notebook = work / tiny_study.NOTEBOOKS / "audit_ct_kidney.ipynb"
    assert {"audit_test_with_train_copy", "audit_shortcut_table"} <= tiny_study.glued(notebook)
    assert "SYNTHETIC DATA" in notebook.read_text()  # the banner and the prep summary say so
    # Distinct synthetic phantoms: no pairs, every image its own group, so the grouped split is made.
    assert pd.read_csv(out_dir / "duplicate_pairs.csv").empty
    assert set(shortcut["split"]) == {"random", "grouped"}
    assert "view alone (axial or coronal)" in set(shortcut["model"])   # CT slices: the view shortcut
    assert {"audit_view_table", "audit_view_blocks", "audit_view_verdict"} <= tiny_study.glued(notebook)


@pytest.mark.slow
def test_the_workflows_data_prep_notebook_shows_its_data(study):
    # The data_prep step of the tiny study (HELPERS_DATA_ROOT points into its folder).
    work = study[0]
    (notebook,) = (work / tiny_study.NOTEBOOKS / "data_prep" / "covid_radiography").glob("*.ipynb")
    text = notebook.read_text()
    assert "SYNTHETIC DATA" in text and "image/png" in text
    info = json.loads((work / "data" / "prepared" / "covid_radiography" / notebook.stem / "info.json").read_text())
    assert info["synthetic"] and info["image_size"] == 32
    assert (work / "data" / "synthetic" / "covid_radiography-n12" / "SYNTHETIC.json").exists(), "HELPERS_DATA_ROOT honoured"


@pytest.mark.slow
def test_the_workflows_explain_notebook_writes_every_file(study):
    # The explain step of the tiny study (Snakemake ran explain.ipynb on its
    # ResNet-18 ImageNet/scratch pair).
    work = study[0]
    out = work / tiny_study.RESULTS / "covid_radiography" / "explain"
    for name in ("explanations.png", "explanations.svg", "explain_scores.csv", "explain_summary.csv"):
        assert (out / name).is_file(), name
    summary = pd.read_csv(out / "explain_summary.csv")
    assert set(summary.arm) == {"imagenet", "scratch"} and set(summary.method) == {"saliency", "gradcam"}
    assert {"energy_share", "random_energy_share", "mask_area_fraction", "pointing_hit_rate",
            "random_pointing"} <= set(summary.columns)
    glued = tiny_study.glued(work / tiny_study.NOTEBOOKS / "explain_covid_radiography.ipynb")
    assert {"explain", "explain_summary", "explain_note", "explain_banner", "explain_tests", "explain_paired",
            "explain_timing"} <= glued


@pytest.mark.slow
def test_the_workflows_evaluate_notebooks_write_every_file(study):
    # The evaluate steps of the tiny study: chest X-ray with two seeds per arm, and
    # kidney CT whose ImageNet run could not happen (no VGG-11 weights).
    work = study[0]
    out = work / tiny_study.RESULTS / "covid_radiography" / "evaluate"
    for name in ("table1.csv", "table1.md", "per_class.csv", "seed_summary.csv", "paired_tests.csv",
                 "mcnemar.csv", "test_accuracy.csv", "loss_curves.png", "loss_curves.svg", "confusion.png",
                 "confusion.svg", "roc.png", "roc.svg"):
        assert (out / name).is_file(), name
    chest = work / tiny_study.NOTEBOOKS / "evaluate_covid_radiography.ipynb"
    assert {"table1", "loss_curves", "confusion", "roc", "headline_imagenet",
            "headline_difference"} <= tiny_study.glued(chest)
    assert "Figure size" not in chest.read_text()
    summary = pd.read_csv(out / "seed_summary.csv")
    acc = summary[(summary.metric == "test_accuracy") & (summary.arm == "scratch")].iloc[0]
    assert acc["n"] == 2  # two seeds pooled into mean and CI
    paired = pd.read_csv(out / "paired_tests.csv")
    assert (paired["n_pairs"] == 2).all()
    kidney = (work / tiny_study.NOTEBOOKS / "evaluate_ct_kidney.ipynb").read_text()
    assert "1 run did not run" in kidney  # the banner counts the missing run
