"""helpers.data: specs, Kaggle layouts, phantoms, prepare/cache, bad input, notebook, real sample."""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from helpers import data
from helpers.data import DATASETS, find_class_root, load_prepared, prepare, prepared_dir, synthesize
from helpers.data import prepared as prepared_module
from helpers.data.discover import scan
from helpers.params import FOLD_SPLITS

REPO = Path(__file__).resolve().parents[1]
COVID_ROOT = "COVID-19_Radiography_Dataset"
KIDNEY_NEST = ("CT-KIDNEY-DATASET-Normal-Cyst-Tumor-Stone",) * 2
CONTRACT_INFO_KEYS = {"dataset", "class_names", "image_size", "split", "balance", "seed", "synthetic",
                      "source_dir", "mean", "std", "counts", "n_skipped", "fingerprint"}


# ----------------------------------------------------------------------------- helpers


def synthetic_images(root: Path, dataset: str, cls: str) -> list[Path]:
    spec = DATASETS[dataset]
    folder = root.joinpath(*spec.layout, cls)
    return sorted((folder / spec.image_dir).glob("*" + spec.ext))


def real_like(tiny_synthetic, dest: Path, dataset="covid_radiography", layout="flat", n=None) -> Path:
    """Copy tiny phantoms into a Kaggle layout *without* the synthetic marker (so: 'real').

    covid layouts: 'flat' (dest/<Class>/*.png) or 'kaggle' (dest/COVID-19_Radiography_Dataset/
    <Class>/images + masks, plus Lung_Opacity and metadata files). ct_kidney: the download with
    the doubly nested folder and kidneyData.csv. ``n`` maps class -> number of images.
    """
    src = tiny_synthetic(dataset)
    spec = DATASETS[dataset]
    for cls in spec.classes:
        files = synthetic_images(src, dataset, cls)[: (n or {}).get(cls, 99)]
        if dataset == "ct_kidney":
            out = dest.joinpath(*KIDNEY_NEST, cls)
        elif layout == "flat":
            out = dest / cls
        else:
            out = dest / COVID_ROOT / cls / "images"
        out.mkdir(parents=True, exist_ok=True)
        for f in files:
            shutil.copy(f, out / f.name)
            if dataset == "covid_radiography" and layout == "kaggle":
                (out.parent / "masks").mkdir(exist_ok=True)
                shutil.copy(f.parent.parent / "masks" / f.name, out.parent / "masks" / f.name)
    if dataset == "ct_kidney":
        shutil.copy(src / "kidneyData.csv", dest / "kidneyData.csv")
    elif layout == "kaggle":
        lung_opacity = dest / COVID_ROOT / "Lung_Opacity" / "images"
        lung_opacity.mkdir(parents=True)
        shutil.copy(synthetic_images(src, dataset, "Normal")[0], lung_opacity / "Lung_Opacity-1.png")
        for name in ("COVID.metadata.xlsx", "Normal.metadata.xlsx", "README.md.txt"):
            (dest / COVID_ROOT / name).write_text("metadata")
    return dest


def png_bytes(im: Image.Image, fmt="PNG") -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (a decompression bomb), with a tiny body."""
    def chunk(tag, payload):
        return struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", zlib.crc32(tag + payload))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def leftovers(parent: Path, name: str) -> list[Path]:
    """Temporary build folders of ``parent/name`` (the .lock file may stay)."""
    return [p for p in parent.glob(f".{name}.*") if p.name != f".{name}.lock"]


def rows(folder: Path, name="manifest.csv") -> pd.DataFrame:
    return pd.read_csv(folder / name, keep_default_na=False)


# ----------------------------------------------------------------------------- specs, phantoms


def test_dataset_specs_follow_the_contract():
    assert list(DATASETS) == ["covid_radiography", "ct_kidney", "chest_xray_pneumonia", "ct_kidney_originals",
                              "covid_radiography_reduced"]
    originals = DATASETS["ct_kidney_originals"]   # another copy of the same download: its own name, same facts
    assert originals.classes == DATASETS["ct_kidney"].classes and originals.ct_slices and not originals.derived_from
    reduced = DATASETS["covid_radiography_reduced"]
    assert reduced.derived_from == "covid_radiography" and reduced.reduce is not None
    assert reduced.classes == DATASETS["covid_radiography"].classes and reduced.layout == DATASETS["covid_radiography"].layout
    kermany = DATASETS["chest_xray_pneumonia"]
    assert kermany.classes == ("NORMAL", "PNEUMONIA") and kermany.ext == ".jpeg"
    assert kermany.kaggle_slug == "paultimothymooney/chest-xray-pneumonia"
    assert kermany.splits == ("given",) and DATASETS["ct_kidney"].splits == ("random", "grouped", "block", *FOLD_SPLITS)
    covid, kidney = DATASETS["covid_radiography"], DATASETS["ct_kidney"]
    assert covid.classes == ("COVID", "Normal", "Viral Pneumonia")
    assert kidney.classes == ("Cyst", "Normal", "Stone", "Tumor")
    assert (covid.native_size, covid.ext, kidney.native_size, kidney.ext) == (299, ".png", 512, ".jpg")
    assert covid.kaggle_slug == "tawsifurrahman/covid19-radiography-database"
    assert kidney.kaggle_slug == "nazmul0087/ct-kidney-dataset-normal-cyst-tumor-and-stone"
    assert (covid.mask_dir, covid.mask_outline, kidney.mask_dir, kidney.mask_outline) == ("masks", "lung", None, None)


@pytest.mark.parametrize("call", [
    lambda tmp: data.get_spec("mri_brain"),
    lambda tmp: data.prepared_dir("mri_brain"),
    lambda tmp: synthesize("mri_brain", root=tmp / "s", progress=False),
    lambda tmp: prepare("mri_brain", out_dir=str(tmp / "p"), progress=False),
    lambda tmp: find_class_root(tmp, "mri_brain"),
    lambda tmp: data.download("mri_brain"),
    lambda tmp: data.validate_prep_params("mri_brain"),
])
def test_an_unknown_dataset_is_refused_naming_the_known_ones(call, tmp_path, data_root):
    with pytest.raises(ValueError) as err:
        call(tmp_path)
    msg = str(err.value)
    assert "'mri_brain'" in msg and all(name in msg for name in DATASETS), msg
    assert not any(tmp_path.iterdir()), "nothing written for an unknown dataset"


def test_a_new_dataset_is_one_table_entry(monkeypatch, tmp_path, data_root):
    """A spec entry alone (here a two-class kidney variant in a layout of its own) is enough to
    synthesize, discover, prepare and load a dataset: no module decides by the dataset's name."""
    from dataclasses import replace

    spec = replace(DATASETS["ct_kidney"], name="toy_ct", classes=("Stone", "Cyst"), layout=("toy", "slices"),
                   file_name="{cls}_{index}", index_csv=None)
    monkeypatch.setitem(DATASETS, "toy_ct", spec)
    root = synthesize("toy_ct", root=tmp_path / "toy", n_per_class=5, progress=False)
    assert sorted(p.name for p in (root / "toy" / "slices" / "Stone").iterdir())[:2] == ["Stone_1.jpg", "Stone_2.jpg"]
    assert find_class_root(tmp_path, "toy_ct") == root / "toy" / "slices"
    folder = prepare("toy_ct", data_dir=str(tmp_path), image_size=16, progress=False)
    p = load_prepared(folder)
    assert p.class_names == ["Stone", "Cyst"] and np.bincount(p.labels).tolist() == [5, 5]
    assert p.synthetic and p.has_mask.all(), "both classes carry lesion masks"
    assert folder == prepared_dir("toy_ct", str(tmp_path), 16)


def kermany_download(tiny_synthetic, dest: Path) -> Path:
    """The Kaggle download's shape: ``chest_xray/{train,test,val}/{NORMAL,PNEUMONIA}/*.jpeg``,
    unbalanced, a tiny val folder, the zip's second copy one level down and macOS debris."""
    src = tiny_synthetic("chest_xray_pneumonia", 10) / "chest_xray"
    counts = {("train", "NORMAL"): 6, ("train", "PNEUMONIA"): 12, ("val", "NORMAL"): 2,
              ("val", "PNEUMONIA"): 2, ("test", "NORMAL"): 3, ("test", "PNEUMONIA"): 5}
    files = sorted(src.rglob("*.jpeg"))
    i = 0
    for (split, cls), n in counts.items():
        for k in range(n):
            out = dest / "chest_xray" / split / cls / f"{'person' if cls == 'PNEUMONIA' else 'IM-'}{k}_{split}.jpeg"
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(files[i], out)
            i = (i + 1) % len(files)
    shutil.copytree(dest / "chest_xray", dest / "chest_xray" / "chest_xray")
    junk = dest / "__MACOSX" / "chest_xray" / "train" / "NORMAL"
    junk.mkdir(parents=True)
    (junk / "._IM-0_train.jpeg").write_bytes(b"\x00\x05\x16\x07")
    (dest / "chest_xray" / "train" / ".DS_Store").write_bytes(b"\x00")
    return dest


def test_a_download_that_comes_split_keeps_its_own_split(tiny_synthetic, tmp_path, data_root):
    download = kermany_download(tiny_synthetic, tmp_path / "download")
    assert find_class_root(download, "chest_xray_pneumonia") == download / "chest_xray"
    folder = prepare("chest_xray_pneumonia", data_dir=str(download), image_size=32, balance=False,
                     split="given", progress=False)
    manifest = rows(folder)
    assert (manifest["split"] == manifest["path"].str.split("/").str[0]).all(), "each image keeps its folder's split"
    info = json.loads((folder / "info.json").read_text())
    assert info["counts"] == {"NORMAL": {"train": 6, "val": 2, "test": 3},
                              "PNEUMONIA": {"train": 12, "val": 2, "test": 5}}
    assert not manifest["path"].str.contains("chest_xray/|MACOSX").any(), "the zip's second copy is not read"
    balanced = rows(prepare("chest_xray_pneumonia", data_dir=str(download), image_size=32, balance=True,
                            split="given", progress=False))
    assert balanced.groupby(["split", "class"]).size().to_dict() == {
        ("test", "NORMAL"): 3, ("test", "PNEUMONIA"): 3, ("train", "NORMAL"): 6, ("train", "PNEUMONIA"): 6,
        ("val", "NORMAL"): 2, ("val", "PNEUMONIA"): 2}, "balanced within each of the download's splits"
    with pytest.raises(ValueError, match="must be one of 'given'.*train, val, test folders"):
        prepare("chest_xray_pneumonia", data_dir=str(download), split="random", progress=False)
    shutil.rmtree(download / "chest_xray" / "val" / "PNEUMONIA")
    shutil.rmtree(download / "chest_xray" / "chest_xray")
    with pytest.raises(FileNotFoundError, match="missing the class folder.*'val/PNEUMONIA'"):
        prepare("chest_xray_pneumonia", data_dir=str(download), split="given", progress=False)


def test_kermany_phantoms_in_the_download_layout_run_the_whole_data_step(tiny_synthetic, data_root):
    root = tiny_synthetic("chest_xray_pneumonia", 10)
    for split, n in (("train", 6), ("val", 2), ("test", 2)):
        for cls in ("NORMAL", "PNEUMONIA"):
            files = sorted((root / "chest_xray" / split / cls).glob("*.jpeg"))
            assert len(files) == n and Image.open(files[0]).format == "JPEG"
            lesions = [(np.asarray(Image.open(root / "lesion_masks" / cls / f"{f.stem}.png")) > 0).any() for f in files]
            assert all(lesions) if cls == "PNEUMONIA" else not any(lesions)
    p = load_prepared(prepare("chest_xray_pneumonia", image_size=32, split="given", n_per_class=10, progress=False))
    assert p.synthetic and np.bincount(p.labels).tolist() == [10, 10]
    assert (p.split == np.array([path.split("/")[0] for path in p.paths])).all()


def test_only_the_spec_names_datasets():
    """No module under src/helpers other than the dataset table compares a value to a dataset's
    name or tests membership in a literal list of names: per-dataset facts are fields of the spec."""
    src = REPO / "src" / "helpers"
    names = "|".join(map(re.escape, DATASETS))
    patterns = [
        re.compile(rf"(==|!=)\s*[\"']({names})[\"']"),
        re.compile(rf"[\"']({names})[\"']\s*(==|!=)"),
        re.compile(rf"\bin\s*[\(\[\{{]\s*[\"']({names})[\"']"),
    ]
    found = []
    for path in sorted(src.rglob("*.py")):
        if path == src / "data" / "specs.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if any(p.search(line) for p in patterns):
                found.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert not found, "branches on a dataset name outside data/specs.py:\n" + "\n".join(found)
    assert any(p.search('if dataset == "ct_kidney":') for p in patterns), "the patterns catch a branch"


def test_the_data_package_does_not_import_the_audit():
    """One direction only: the audit reports on data.splits; data never imports the audit."""
    code = "import sys, helpers.data; print(sorted(m for m in sys.modules if m.startswith('helpers.')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "helpers.data.splits" in out and "helpers.audit" not in out, out


def test_synthetic_sets_have_kaggle_layout_native_formats_and_lesion_masks(tiny_synthetic):
    covid = tiny_synthetic("covid_radiography")
    marker = json.loads((covid / "SYNTHETIC.json").read_text())
    assert marker["dataset"] == "covid_radiography" and marker["seed"] == 0
    for cls in DATASETS["covid_radiography"].classes:
        files = synthetic_images(covid, "covid_radiography", cls)
        assert len(files) == 8 and files[0].name == f"{cls}-1.png"
        im = Image.open(files[0])
        assert (im.format, im.mode, im.size) == ("PNG", "L", (299, 299))
        lung = np.asarray(Image.open(files[0].parent.parent / "masks" / files[0].name))
        assert lung.any()
        lesions = [np.asarray(Image.open(covid / "lesion_masks" / cls / f"{f.stem}.png")) > 0 for f in files]
        if cls == "Normal":
            assert not any(m.any() for m in lesions)
        else:
            assert all(m.any() for m in lesions), f"{cls}: every phantom carries a lesion mask"

    kidney = tiny_synthetic("ct_kidney")
    csv = pd.read_csv(kidney / "kidneyData.csv", index_col=0)
    assert list(csv.columns) == ["image_id", "path", "diag", "target", "Class"] and len(csv) == 32
    for cls in DATASETS["ct_kidney"].classes:
        files = synthetic_images(kidney, "ct_kidney", cls)
        assert files[0].name == f"{cls}- (1).jpg" and files[0].parent.parent.name == KIDNEY_NEST[1]
        im = Image.open(files[0])
        assert (im.format, im.mode, im.size) == ("JPEG", "L", (512, 512))
        has = [(np.asarray(Image.open(kidney / "lesion_masks" / cls / f"{f.stem}.png")) > 0).any() for f in files]
        assert all(has) if cls != "Normal" else not any(has)


def test_synthesize_is_deterministic_idempotent_and_seeded(tiny_synthetic, tmp_path):
    ref = tiny_synthetic("covid_radiography")
    again = synthesize("covid_radiography", root=tmp_path / "a", n_per_class=2, seed=0, progress=False)
    for cls in DATASETS["covid_radiography"].classes:
        for f in synthetic_images(again, "covid_radiography", cls):
            same = synthetic_images(ref, "covid_radiography", cls)[int(f.stem.split("-")[-1]) - 1]
            assert np.array_equal(np.asarray(Image.open(f)), np.asarray(Image.open(same)))
    marker = again / "SYNTHETIC.json"
    stamp = marker.stat().st_mtime_ns
    assert synthesize("covid_radiography", root=again, n_per_class=2, seed=0, progress=False) == again
    assert marker.stat().st_mtime_ns == stamp, "same counts and seed: reused, not rewritten"
    other = synthesize("covid_radiography", root=tmp_path / "b", n_per_class=2, seed=1, progress=False)
    a = np.asarray(Image.open(synthetic_images(again, "covid_radiography", "COVID")[0]))
    b = np.asarray(Image.open(synthetic_images(other, "covid_radiography", "COVID")[0]))
    assert not np.array_equal(a, b)
    assert not leftovers(tmp_path, "a") and not leftovers(tmp_path, "b"), "no temporary folder left behind"


# ----------------------------------------------------------------------------- prepare, load


@pytest.mark.parametrize("dataset", ["covid_radiography", "ct_kidney"])
def test_prepare_synthetic_writes_the_contract(tiny_prepared, tiny_synthetic, dataset):
    folder = tiny_prepared(dataset)
    spec = DATASETS[dataset]
    k = len(spec.classes)
    for name in ("manifest.csv", "images.npy", "masks.npy", "info.json", "skipped.csv", "samples.png"):
        assert (folder / name).is_file(), name
    info = json.loads((folder / "info.json").read_text())
    assert CONTRACT_INFO_KEYS <= set(info)
    assert info["synthetic"] is True and info["class_names"] == list(spec.classes) and info["image_size"] == 32
    manifest = rows(folder)
    assert list(manifest.columns) == ["path", "class", "label", "split", "sha256", "has_mask"]
    p = load_prepared(folder)
    assert p.images.dtype == np.uint8 and p.images.shape == (8 * k, 3, 32, 32)
    assert p.masks.dtype == np.uint8 and p.masks.shape == (8 * k, 32, 32) and set(np.unique(p.masks)) <= {0, 1}
    assert p.synthetic and p.class_names == list(spec.classes) and len(p.paths) == 8 * k
    assert sorted(np.unique(p.labels)) == list(range(k))
    assert {c: sum(v.values()) for c, v in info["counts"].items()} == {c: 8 for c in spec.classes}
    normal = p.labels == spec.classes.index("Normal")
    assert p.has_mask[~normal].all() and not p.has_mask[normal].any()
    assert not p.masks[~p.has_mask].any()
    # mean/std are the train split's, on the [0, 1] scale
    train = p.images[p.split == "train"] / 255.0
    assert np.allclose(p.mean, train.mean(axis=(0, 2, 3)), atol=1e-6)
    assert np.allclose(p.std, train.std(axis=(0, 2, 3)), atol=1e-6)
    # manifest paths are relative to source_dir, sha256 of the file bytes
    import hashlib

    first = Path(info["source_dir"]) / p.paths[0]
    assert hashlib.sha256(first.read_bytes()).hexdigest() == manifest["sha256"][0]
    assert rows(folder, "skipped.csv").empty


def test_split_is_deterministic_stratified_and_seeded(tiny_synthetic, tmp_path):
    src = str(tiny_synthetic("ct_kidney"))
    runs = [load_prepared(prepare("ct_kidney", data_dir=src, image_size=16, seed=s, out_dir=str(tmp_path / name),
                                  progress=False))
            for s, name in [(0, "a"), (0, "b"), (1, "c")]]
    assert np.array_equal(runs[0].split, runs[1].split)
    assert not np.array_equal(runs[0].split, runs[2].split)
    for run in runs:
        for k in range(4):                       # 8 per class -> 6:2:2 within one image
            n = {s: int(((run.labels == k) & (run.split == s)).sum()) for s in ("train", "val", "test")}
            assert abs(n["train"] - 4.8) <= 1 and abs(n["val"] - 1.6) <= 1 and abs(n["test"] - 1.6) <= 1, n


def test_balance_discards_at_random_down_to_the_smallest_class(tiny_synthetic, tmp_path):
    src = real_like(tiny_synthetic, tmp_path / "src", n={"COVID": 8, "Normal": 6, "Viral Pneumonia": 7})
    picks = []
    for seed in (0, 1):
        folder = prepare("covid_radiography", data_dir=str(src), image_size=16, seed=seed,
                         out_dir=str(tmp_path / f"s{seed}"), progress=False)
        p = load_prepared(folder)
        assert np.bincount(p.labels).tolist() == [6, 6, 6] and not p.synthetic
        skipped = rows(folder, "skipped.csv")
        assert len(skipped) == 3 and skipped["reason"].str.startswith("discarded to balance").all()
        assert p.info["n_skipped"] == 0 and p.info["n_discarded_by_balance"] == 3
        picks.append(set(skipped["path"]))
    assert picks[0] != picks[1], "the seed chooses which images are discarded"
    unbalanced = load_prepared(prepare("covid_radiography", data_dir=str(src), image_size=16, balance=False,
                                       out_dir=str(tmp_path / "all"), progress=False))
    assert np.bincount(unbalanced.labels).tolist() == [8, 6, 7]


def test_prepare_makes_a_grouped_split(tiny_synthetic, tmp_path):
    p = load_prepared(prepare("covid_radiography", data_dir=str(tiny_synthetic("covid_radiography")),
                              image_size=32, split="grouped", out_dir=str(tmp_path / "g"), progress=False))
    assert set(p.split) == {"train", "val", "test"} and p.info["split"] == "grouped"


# ----------------------------------------------------------------------------- layouts


def test_kaggle_layouts_are_found_from_any_parent(tiny_synthetic, tmp_path):
    # current COVID download: images/ beside masks/, Lung_Opacity and metadata files ignored
    dl = real_like(tiny_synthetic, tmp_path / "download", layout="kaggle")
    assert find_class_root(tmp_path, "covid_radiography") == dl / COVID_ROOT
    folder = prepare("covid_radiography", data_dir=str(tmp_path), image_size=32, balance=False,
                     out_dir=str(tmp_path / "p1"), progress=False)
    p = load_prepared(folder)
    assert len(p.paths) == 24 and all("/images/" in x for x in p.paths), "masks never loaded as images"
    assert p.has_mask.all() and p.masks.any(axis=(1, 2)).all(), "real COVID lung masks from masks/"
    assert not p.synthetic and p.info["source_dir"] == str((dl / COVID_ROOT).resolve())
    skipped = rows(folder, "skipped.csv").set_index("path")["reason"]
    assert set(skipped.index) == {"Lung_Opacity/", "COVID.metadata.xlsx", "Normal.metadata.xlsx", "README.md.txt"}
    assert skipped.str.startswith("ignored").all()

    # old flat layout
    flat = real_like(tiny_synthetic, tmp_path / "flat")
    p = load_prepared(prepare("covid_radiography", data_dir=str(flat), image_size=32, out_dir=str(tmp_path / "p2"),
                              progress=False))
    assert len(p.paths) == 24 and p.paths[0] == "COVID/COVID-1.png" and not p.has_mask.any()

    # kidney download: doubly nested folder with kidneyData.csv beside it; names with spaces
    kd = real_like(tiny_synthetic, tmp_path / "kidney", dataset="ct_kidney")
    assert find_class_root(kd, "ct_kidney") == kd.joinpath(*KIDNEY_NEST)
    p = load_prepared(prepare("ct_kidney", data_dir=str(kd), image_size=32, out_dir=str(tmp_path / "p3"),
                              progress=False))
    assert len(p.paths) == 32 and p.paths[0] == "Cyst/Cyst- (1).jpg"


def test_synthetic_marker_is_found_when_data_dir_points_at_the_class_folders(tiny_synthetic, tmp_path):
    root = tiny_synthetic("covid_radiography")
    p = load_prepared(prepare("covid_radiography", data_dir=str(root / COVID_ROOT), image_size=16,
                              out_dir=str(tmp_path / "p"), progress=False))
    assert p.synthetic and p.has_mask.sum() == 16, "lesion masks found, lesion_masks/ never read as a class"


# ----------------------------------------------------------------------------- bad input


def write_bad_inputs(cls_dir: Path) -> tuple[dict[str, tuple], dict[str, str]]:
    """Convertible oddities (name -> expected RGB of the decoded image) and junk (name -> reason start)."""
    good = {}

    def save(name, im, fmt="PNG", expect=None):
        (cls_dir / name).write_bytes(png_bytes(im, fmt))
        good[name] = expect

    save("sixteen bit.png", Image.fromarray(np.full((40, 40), 65535, np.uint16)), expect=(255, 255, 255))
    save("sixteen half.png", Image.fromarray(np.full((40, 40), 128 * 257, np.uint16)), expect=(128, 128, 128))
    save("rgba clear.png", Image.new("RGBA", (40, 40), (200, 100, 50, 0)), expect=(0, 0, 0))
    save("rgba opaque.png", Image.new("RGBA", (40, 40), (200, 100, 50, 255)), expect=(200, 100, 50))
    pal = Image.new("P", (40, 40), 3)
    pal.putpalette([0, 0, 0] * 3 + [10, 200, 30] + [0, 0, 0] * 252)
    save("palette.png", pal, expect=(10, 200, 30))
    save("gray alpha.png", Image.new("LA", (40, 40), (90, 255)), expect=(90, 90, 90))
    save("bilevel.png", Image.new("1", (40, 40), 1), expect=(255, 255, 255))
    save("cmyk.jpg", Image.new("CMYK", (40, 40), (0, 0, 0, 0)), "JPEG", expect=(255, 255, 255))
    save("float.tiff", Image.fromarray(np.linspace(-3, 7, 1600, dtype=np.float32).reshape(40, 40)), "TIFF")
    save("UPPER.PNG", Image.new("L", (40, 40), 77), expect=(77, 77, 77))
    save("UPPER.JPG", Image.new("RGB", (40, 40), (0, 0, 0)), "JPEG")
    save("Übersicht ü é (2).png", Image.new("RGB", (40, 40), (5, 6, 7)), expect=(5, 6, 7))
    save("snímek 名前.png", Image.new("L", (40, 40), 9), expect=(9, 9, 9))

    valid = png_bytes(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8)))
    valid_jpg = png_bytes(Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), np.uint8)), "JPEG")
    junk = {
        "zero.png": (b"", "empty file"),
        "truncated.png": (valid[: len(valid) // 2], "truncated image"),
        "truncated.jpg": (valid_jpg[: len(valid_jpg) // 2], "truncated image"),
        "text.png": (b"this is not an image\n", "not an image"),
        "bomb.png": (png_header_only(100_000, 100_000), "decompression bomb"),
        "big.png": (png_header_only(8000, 8000), "decompression bomb"),
        ".hidden.png": (valid, "hidden/system file"),
        ".DS_Store": (b"\0\0\0\1Bud1", "hidden/system file"),
        "Thumbs.db": (b"\xd0\xcf\x11\xe0", "system file"),
        "notes.txt": (b"notes", "not an image file extension"),
    }
    for name, (content, _reason) in junk.items():
        (cls_dir / name).write_bytes(content)
    (cls_dir / ".ipynb_checkpoints").mkdir()
    (cls_dir / ".ipynb_checkpoints" / "x.png").write_bytes(valid)
    reasons = {name: reason for name, (_c, reason) in junk.items()}
    reasons[".ipynb_checkpoints/"] = "hidden folder"
    return good, reasons


def test_bad_inputs_are_converted_or_skipped_with_a_reason(tiny_synthetic, tmp_path, capsys):
    src = real_like(tiny_synthetic, tmp_path / "src", n={"COVID": 0, "Normal": 5, "Viral Pneumonia": 5})
    good, junk = write_bad_inputs(src / "COVID")
    folder = prepare("covid_radiography", data_dir=str(src), image_size=16, balance=False,
                     out_dir=str(tmp_path / "p"), progress=False)
    out = capsys.readouterr().out
    p = load_prepared(folder)
    used = {Path(x).name: i for i, x in enumerate(p.paths) if x.startswith("COVID/")}
    assert set(used) == set(good), "every convertible oddity is used, nothing else"
    for name, rgb in good.items():
        img = p.images[used[name]]
        assert img.shape == (3, 16, 16) and img.dtype == np.uint8
        if rgb is not None:
            assert np.abs(img.reshape(3, -1).astype(int) - np.array(rgb)[:, None]).max() <= 2, (name, img[:, 0, 0])
    floaty = p.images[used["float.tiff"]]
    assert floaty.min() <= 10 and floaty.max() >= 245, "float image stretched to the 8-bit range"
    skipped = rows(folder, "skipped.csv")
    got = {Path(path.rstrip("/")).name + ("/" if path.endswith("/") else ""): reason
           for path, reason in zip(skipped["path"], skipped["reason"])}
    assert set(got) == set(junk)
    for name, reason in junk.items():
        assert got[name].startswith(reason), (name, got[name])
    assert p.info["n_skipped"] == len(junk) == 11
    assert f"{len(junk)} files skipped" in out and "truncated image" in out and "skipped.csv" in out


def test_bad_parameters_and_folders_fail_before_any_work(tiny_synthetic, tmp_path, data_root):
    out = tmp_path / "never"
    missing = tmp_path / "no such folder"
    with pytest.raises(FileNotFoundError, match="no such folder.*does not exist.*'COVID', 'Normal', 'Viral Pneumonia'"):
        prepare("covid_radiography", data_dir=str(missing), out_dir=str(out))
    with pytest.raises(ValueError, match="covid_radiography, ct_kidney.*'chest'"):
        prepare("chest", out_dir=str(out))
    src = real_like(tiny_synthetic, tmp_path / "src")
    shutil.rmtree(src / "Viral Pneumonia")
    with pytest.raises(FileNotFoundError, match="missing the class folder.*'Viral Pneumonia'"):
        prepare("covid_radiography", data_dir=str(src), out_dir=str(out))
    (src / "Viral Pneumonia").mkdir()
    (src / "Viral Pneumonia" / "notes.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="Viral Pneumonia.*holds no image files"):
        prepare("covid_radiography", data_dir=str(src), out_dir=str(out))
    with pytest.raises(NotADirectoryError, match="not a folder"):
        prepare("covid_radiography", data_dir=str(src / "Viral Pneumonia" / "notes.txt"), out_dir=str(out))
    bad = [dict(balance="false"), dict(image_size="128"), dict(image_size=True), dict(seed=-1),
           dict(split="stratified"), dict(n_per_class=2), dict(out_dir=3)]
    for kwargs in bad:
        name = next(iter(kwargs))
        with pytest.raises(ValueError, match=f"'{name}' must be"):
            prepare("covid_radiography", **{"out_dir": str(out), **kwargs})
    with pytest.raises(ValueError, match="papermill"):
        data.validate_prep_params("covid_radiography", balance="False")
    assert not out.exists() and not data_root.exists(), "nothing written before the checks"


def test_too_few_usable_images_in_a_class_is_named(tiny_synthetic, tmp_path):
    src = real_like(tiny_synthetic, tmp_path / "src", n={"COVID": 4})
    (src / "COVID" / "broken.png").write_bytes(b"")
    with pytest.raises(ValueError, match="class 'COVID'.*4 usable images.*at least 5"):
        prepare("covid_radiography", data_dir=str(src), image_size=16, out_dir=str(tmp_path / "p"), progress=False)
    assert not (tmp_path / "p").exists() and not leftovers(tmp_path, "p")


# ----------------------------------------------------------------------------- cache


def test_cache_is_reused_and_rebuilt_on_any_change(tiny_synthetic, tmp_path, monkeypatch, capsys):
    src = real_like(tiny_synthetic, tmp_path / "src")
    kw = dict(data_dir=str(src), image_size=16, balance=False, out_dir=str(tmp_path / "p"), progress=False)
    folder = prepare("covid_radiography", **kw)
    first = rows(folder)
    stamp = (folder / "info.json").stat().st_mtime_ns

    def no_decoding(job):
        raise AssertionError("cache hit must not decode")

    with monkeypatch.context() as mp:
        mp.setattr(prepared_module, "decode_one", no_decoding)
        assert prepare("covid_radiography", **kw) == folder
    assert "reusing" in capsys.readouterr().out
    assert (folder / "info.json").stat().st_mtime_ns == stamp

    changed = src / "Normal" / "Normal-3.png"           # same name, new content
    Image.new("L", (299, 299), 200).save(changed)
    prepare("covid_radiography", **kw)
    now = rows(folder).set_index("path")
    assert now.loc["Normal/Normal-3.png", "sha256"] != first.set_index("path").loc["Normal/Normal-3.png", "sha256"]
    assert load_prepared(folder).images[list(now.index).index("Normal/Normal-3.png")].min() == 200

    shutil.copy(src / "COVID" / "COVID-1.png", src / "COVID" / "COVID-100.png")   # added
    assert len(rows(prepare("covid_radiography", **kw))) == 25
    (src / "Viral Pneumonia" / "Viral Pneumonia-2.png").unlink()                    # removed
    manifest = rows(prepare("covid_radiography", **kw))
    assert len(manifest) == 24 and "Viral Pneumonia/Viral Pneumonia-2.png" not in set(manifest["path"])
    assert load_prepared(prepare("covid_radiography", **{**kw, "image_size": 24})).images.shape[-1] == 24
    assert not leftovers(tmp_path, "p"), "no temporary folders left"


def test_a_copied_or_touched_folder_keeps_its_fingerprint_a_same_size_edit_does_not(tiny_synthetic, tmp_path):
    # a session or a user unzipping the download again gets new modification times: same data
    src = real_like(tiny_synthetic, tmp_path / "src")
    prep = dict(dataset="covid_radiography", image_size=16, balance=False, seed=0, split="random")

    def digest(folder):
        root = find_class_root(folder, "covid_radiography")
        return prepared_module.fingerprint(prep, root, scan(root, DATASETS["covid_radiography"], None))

    before = digest(src)
    copy = shutil.copytree(src, tmp_path / "elsewhere" / "src", copy_function=shutil.copy)  # new mtimes
    image = copy / "Normal" / "Normal-3.png"
    os.utime(image, (1, 1))
    assert digest(copy) == before
    data = bytearray(image.read_bytes())
    data[-13] ^= 0xFF                                    # one byte of the last chunk: same size
    image.write_bytes(bytes(data))
    assert digest(copy) != before


def test_prepared_dir_names_the_default_folder_without_doing_any_work(data_root):
    want = prepared_dir("covid_radiography", "", image_size=16, balance=True, seed=0, split="random", n_per_class=6)
    assert want == data_root / "prepared" / "covid_radiography" / "synthetic-n6-16px-random-bal-s0"
    real = prepared_dir("ct_kidney", "/no/such/download", image_size=32, balance=False, seed=3, split="grouped")
    assert real == data_root / "prepared" / "ct_kidney" / "real-32px-grouped-all-s3"
    assert not data_root.exists(), "naming the folder reads and writes nothing"
    assert prepare("covid_radiography", image_size=16, n_per_class=6, progress=False) == want


def test_a_failed_prep_leaves_nothing_a_later_run_trusts(tiny_synthetic, tmp_path, monkeypatch):
    src = real_like(tiny_synthetic, tmp_path / "src")
    kw = dict(data_dir=str(src), image_size=16, balance=False, out_dir=str(tmp_path / "p"), progress=False)

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    with monkeypatch.context() as mp:
        mp.setattr(prepared_module, "save_samples", crash)
        with pytest.raises(RuntimeError, match="disk full"):
            prepare("covid_radiography", **kw)
    assert not (tmp_path / "p").exists() and not leftovers(tmp_path, "p")
    with pytest.raises(FileNotFoundError, match="not a complete prepared folder"):
        load_prepared(tmp_path / "p")
    assert len(load_prepared(prepare("covid_radiography", **kw)).paths) == 24


def test_a_prep_killed_mid_way_is_not_trusted_and_the_next_run_rebuilds(tiny_synthetic, tmp_path):
    src = real_like(tiny_synthetic, tmp_path / "src")
    out = tmp_path / "p"
    kw = dict(data_dir=str(src), image_size=16, balance=False, out_dir=str(out), progress=False)
    prepare("covid_radiography", **kw)
    Image.new("L", (299, 299), 123).save(src / "COVID" / "COVID-2.png")       # inputs change ...
    code = (
        "import os, signal\n"
        "import helpers.data.prepared as d\n"
        "d.save_samples = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)\n"
        f"d.prepare('covid_radiography', **{kw!r})\n"
    )
    killed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr               # ... and the rebuild is killed
    assert leftovers(tmp_path, "p"), "the killed run left its temporary folder"
    old = load_prepared(out)                                                  # the old cache is intact
    assert old.images[old.paths.index("COVID/COVID-2.png")].min() != 123
    rebuilt = load_prepared(prepare("covid_radiography", **kw))              # but not trusted
    assert rebuilt.images[rebuilt.paths.index("COVID/COVID-2.png")].min() == 123
    assert not leftovers(tmp_path, "p"), "stale temporary folder of the dead run removed"


def test_two_processes_preparing_the_same_folder_build_it_once(tiny_synthetic, tmp_path):
    src = real_like(tiny_synthetic, tmp_path / "src")
    kw = dict(data_dir=str(src), image_size=16, balance=False, out_dir=str(tmp_path / "p"), progress=False)
    code = f"import helpers.data as d; d.prepare('covid_radiography', **{kw!r})"
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outs]
    said = sorted("reusing" in out for out, _ in outs)
    assert said == [False, True], "one process built, the other waited and reused it"
    assert len(load_prepared(tmp_path / "p").paths) == 24 and not leftovers(tmp_path, "p")


# ----------------------------------------------------------------------------- download, CLI


def test_download_without_network_fails_fast_with_manual_instructions(monkeypatch, capsys):
    kagglehub = pytest.importorskip("kagglehub")

    def offline(slug, *args, **kwargs):
        raise ConnectionError(f"Failed to resolve 'api.kaggle.com' for {slug}")

    monkeypatch.setattr(kagglehub, "dataset_download", offline)
    with pytest.raises(data.DownloadError) as err:
        data.download("ct_kidney")
    msg = str(err.value)
    assert "https://www.kaggle.com/datasets/nazmul0087/ct-kidney-dataset-normal-cyst-tumor-and-stone" in msg
    assert "data_dir" in msg and "DATA_DIR" in msg and "credentials" in msg
    assert data.main(["download", "covid_radiography"]) == 1
    assert "tawsifurrahman/covid19-radiography-database" in capsys.readouterr().err


def test_download_to_a_folder(monkeypatch, tmp_path):
    kagglehub = pytest.importorskip("kagglehub")
    cache = tmp_path / "kagglehub" / "versions" / "1"
    (cache / "Normal").mkdir(parents=True)
    (cache / "Normal" / "Normal- (1).jpg").write_bytes(b"jpeg")
    (cache / "kidneyData.csv").write_text("x")
    calls = []
    monkeypatch.setattr(kagglehub, "dataset_download", lambda slug: calls.append(slug) or str(cache))
    dest = data.download("ct_kidney", to=tmp_path / "raw")
    assert calls == ["nazmul0087/ct-kidney-dataset-normal-cyst-tumor-and-stone"]
    assert (dest / "Normal" / "Normal- (1).jpg").read_bytes() == b"jpeg" and (dest / "kidneyData.csv").exists()


def test_cli_prepare_reports_errors_without_a_traceback(tmp_path, capsys):
    assert data.main(["prepare", "covid_radiography", "--data-dir", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: data_dir") and "Traceback" not in err


# ----------------------------------------------------------------------------- notebook


# ----------------------------------------------------------------------------- real sample


@pytest.mark.real
@pytest.mark.parametrize("dataset, n_images", [("covid_radiography", 120), ("ct_kidney", 160)])
def test_real_sample_loads_from_the_sample_root(real_sample, tmp_path, dataset, n_images):
    folder = prepare(dataset, data_dir=str(real_sample), image_size=32, out_dir=str(tmp_path / "p"), progress=False)
    p = load_prepared(folder)
    spec = DATASETS[dataset]
    assert p.info["source_dir"] == str((real_sample / dataset).resolve())
    assert len(p.paths) == n_images and p.images.shape == (n_images, 3, 32, 32)
    assert not p.synthetic and p.class_names == list(spec.classes)
    assert np.bincount(p.labels).tolist() == [40] * len(spec.classes)
    assert p.info["n_skipped"] == 0 and rows(folder, "skipped.csv").empty
    assert {c: v for c, v in p.info["counts"].items()} == {c: {"train": 24, "val": 8, "test": 8} for c in spec.classes}
    for i, path in enumerate(p.paths):
        assert path.split("/")[0] == spec.classes[p.labels[i]]
    assert not p.has_mask.any()


# ----------------------------------------------------------------------------- block split


def _numbered(n_per_class: dict[str, int], start: int = 1) -> tuple[list[str], np.ndarray]:
    paths, labels = [], []
    for k, (cls, n) in enumerate(n_per_class.items()):
        paths += [f"{cls}/{cls}- ({i}).jpg" for i in range(start, start + n)]
        labels += [k] * n
    return paths, np.asarray(labels)


def test_block_split_keeps_every_block_in_one_split_and_every_class_in_every_split():
    from helpers.data.splits import BLOCK_SIZE, block_groups, file_number, grouped_split

    classes = ["Cyst", "Normal", "Stone", "Tumor"]
    paths, labels = _numbered({"Cyst": 120, "Normal": 200, "Stone": 194, "Tumor": 200}, start=301)
    assert file_number("Tumor/Tumor- (1203).jpg") == 1203 and file_number("COVID-17.png") == 17
    groups = block_groups(paths, labels)
    assert len(np.unique(groups)) == sum(len({i // BLOCK_SIZE for i in range(301, 301 + n)})
                                         for n in (120, 200, 194, 200))
    for seed in range(5):
        split = grouped_split(labels, groups, classes, seed)
        for g in np.unique(groups):
            assert len(set(split[groups == g])) == 1, f"block {g} crosses splits (seed {seed})"
        for k in range(len(classes)):
            assert set(split[labels == k]) == {"train", "val", "test"}
        assert abs((split == "train").mean() - 0.6) < 0.1


def test_block_split_refuses_a_class_with_too_few_blocks_and_files_without_numbers():
    from helpers.data.splits import BLOCK_KIND, block_groups, grouped_split

    paths, labels = _numbered({"Cyst": 40, "Normal": 40})          # Cyst 1-40, Normal 1-40: 2 blocks each
    with pytest.raises(ValueError, match="block split: class 'Cyst' has only 2 independent blocks of 25 consecutive"):
        grouped_split(labels, block_groups(paths, labels), ["Cyst", "Normal"], 0, group_kind=BLOCK_KIND)
    with pytest.raises(ValueError, match="'Cyst/scan.jpg' has no number in its name"):
        block_groups(["Cyst/scan.jpg"], np.asarray([0]))


def test_block_split_on_real_slices_refuses_clearly_and_the_random_split_reports_its_near_copies(tmp_path):
    sample = Path(__file__).resolve().parents[2] / "shared" / "real-sample" / "ct_kidney"
    if not sample.is_dir():
        pytest.skip(f"{sample} not here")
    # slices (1)-(40) of each class are two blocks, (1)-(24) and (25)-(40): too few for three
    # splits, so the block split refuses rather than leak a block across splits
    with pytest.raises(ValueError, match="block split: class 'Cyst' has only 2 independent blocks"):
        prepare("ct_kidney", data_dir=str(sample), image_size=32, balance=False, split="block",
                out_dir=str(tmp_path / "b"), progress=False)
    assert not (tmp_path / "b").exists()
    rand = load_prepared(prepare("ct_kidney", data_dir=str(sample), image_size=32, balance=False,
                                 split="random", out_dir=str(tmp_path / "r"), progress=False))
    share = rand.info["near_copy_share"]
    assert set(share) == {"val", "test"} and share["test"] > 0.8, share   # neighbouring slices


# ----------------------------------------------------------------------------- shortcut-reduced version


def test_reduction_crops_the_border_and_equalises_the_grey_levels():
    from PIL import Image

    from helpers.data.decode import reduce_shortcuts

    a = np.full((100, 100), 60, np.uint8)
    a[:10] = 255                                   # a bright marker band along the top border
    a[40:60, 40:60] = 120
    out = np.asarray(reduce_shortcuts(Image.fromarray(a).convert("RGB"), 0.1, True))
    assert out.shape == (80, 80, 3) and (out[..., 0] == out[..., 1]).all()
    assert out[:5].max() < 255 or out[:5].min() == out[:5].max()   # the band is gone
    assert len(np.unique(out[..., 0])) == 2 and out[..., 0].max() == 255   # two levels, spread over the range


@pytest.mark.real
def test_the_shortcut_reduced_version_prepares_the_same_images_and_split(real_sample, tmp_path):
    from helpers import experiment as ex

    source = load_prepared(prepare("covid_radiography", data_dir=str(real_sample), image_size=64,
                                   out_dir=str(tmp_path / "a"), progress=False))
    reduced = load_prepared(prepare("covid_radiography_reduced", data_dir=str(real_sample), image_size=64,
                                    out_dir=str(tmp_path / "b"), progress=False))
    assert list(reduced.paths) == list(source.paths) and list(reduced.split) == list(source.split)
    assert not np.array_equal(reduced.images, source.images)
    # equalised: every image spreads over the grey range, so the images' means barely differ
    means = lambda p: p.images[:, 0].reshape(len(p.paths), -1).mean(axis=1)
    assert means(reduced).std() < 0.5 * means(source).std()
    # its DATA_DIR is its source's unless named
    dirs = ex.parse_data_dirs("covid_radiography=/x", ["covid_radiography", "covid_radiography_reduced"])
    assert dirs == {"covid_radiography": "/x", "covid_radiography_reduced": "/x"}
    assert ex.parse_data_dirs("/x", ["covid_radiography", "covid_radiography_reduced"])["covid_radiography_reduced"] == "/x"


def test_the_fold_splits_partition_whole_blocks_and_test_each_slice_once():
    """Cross-validation over blocks: per fold, whole blocks in one part, every class in every
    part; over the folds, each slice tested exactly once; too few blocks refused by name."""
    from helpers.data.splits import SplitRefusedError, fold_split
    from helpers.params import FOLDS

    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], [60, 90, 35])
    groups = np.concatenate([np.repeat(np.arange(b) + 100 * k, rng.integers(3, 8, b))[:n]
                             for k, (b, n) in enumerate([(20, 60), (30, 90), (12, 35)])])
    assert len(groups) == len(labels)
    tested = np.zeros(len(labels), int)
    for fold in range(FOLDS):
        split = fold_split(labels, groups, ["a", "b", "c"], fold, FOLDS, seed=0)
        for g in np.unique(groups):
            assert len(set(split[groups == g])) == 1, "a block is split"
        for k in range(3):
            assert set(split[labels == k]) == {"train", "val", "test"}, (fold, k)
        tested += split == "test"
        if fold:   # the next fold validates: this fold's validation set is the next one's test set
            assert (previous_val == (split == "test")).all()
        previous_val = split == "val"
    assert (tested == 1).all()
    with pytest.raises(SplitRefusedError, match=r"class 'c' has only 4 independent near-duplicate group.*fewer than the 5 folds"):
        fold_split(labels, np.where(labels == 2, groups % 4 + 200, groups), ["a", "b", "c"], 0, FOLDS, seed=0)


def test_a_full_disk_during_data_prep_is_named_and_keeps_the_previous_folder(tmp_path, monkeypatch):
    """numpy reports a short write as a bare OSError ('... requested and ... written'): data prep
    names it as a full disk, with the free space, and the folder it replaces stays whole."""
    import shutil as shutil_mod
    from collections import namedtuple

    from helpers.atomic import DiskFullError
    from helpers.data.build import publish_dir

    final = tmp_path / "prepared" / "x"
    final.mkdir(parents=True)
    (final / "kept.txt").write_text("the previous build")

    def build(tmp):
        raise OSError("1978368 requested and 302976 written")

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil_mod, "disk_usage", lambda p: usage(300 * 1024, 300 * 1024, 0))
    with pytest.raises(DiskFullError, match=r"disk full: could not write .*prepared/x \(0 B free of 300.0 KiB"):
        publish_dir(final, build, lambda: False)
    assert (final / "kept.txt").read_text() == "the previous build"
    assert sorted(p.name for p in final.parent.iterdir() if p.is_dir()) == ["x"], "nothing half-built is left"
