"""Datasets: specs, Kaggle-layout discovery, synthetic phantoms, the prepared cache, downloads.

Public API (see CONTRACTS.md): ``DATASETS``, ``synthesize``, ``prepare``, ``load_prepared``,
``validate_prep_params``, ``find_class_root``, ``download``; command line:
``python -m helpers.data {download,synthesize,prepare} DATASET ...``.

``HELPERS_DATA_ROOT`` (environment) replaces the ``data/`` base folder, which tests use to stay
out of the repository.
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import io
import json
import math
import os
import re
import shutil
import sys
import uuid
import warnings
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing import get_context
from numbers import Integral
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from PIL import Image

# --------------------------------------------------------------------------------------
# Dataset specs
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    classes: tuple[str, ...]
    native_size: int
    ext: str
    kaggle_slug: str
    layout: tuple[str, ...]          # folders from the download root to the class folders
    mask_dir: str | None = None      # companion mask folder name inside a class folder

    @property
    def kaggle_url(self) -> str:
        return f"https://www.kaggle.com/datasets/{self.kaggle_slug}"


DATASETS: dict[str, DatasetSpec] = {
    "covid_radiography": DatasetSpec(
        name="covid_radiography",
        classes=("COVID", "Normal", "Viral Pneumonia"),
        native_size=299,
        ext=".png",
        kaggle_slug="tawsifurrahman/covid19-radiography-database",
        layout=("COVID-19_Radiography_Dataset",),
        mask_dir="masks",
    ),
    "ct_kidney": DatasetSpec(
        name="ct_kidney",
        classes=("Cyst", "Normal", "Stone", "Tumor"),
        native_size=512,
        ext=".jpg",
        kaggle_slug="nazmul0087/ct-kidney-dataset-normal-cyst-tumor-and-stone",
        layout=("CT-KIDNEY-DATASET-Normal-Cyst-Tumor-Stone",) * 2,
    ),
}

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")
SYSTEM_FILES = {"thumbs.db", "desktop.ini", "ehthumbs.db"}
MARKER = "SYNTHETIC.json"
LESION_DIR = "lesion_masks"
SPLITS = ("random", "grouped")
SPLIT_NAMES = ("train", "val", "test")
MIN_PER_CLASS = 5                  # a stratified 6:2:2 split needs at least 3/1/1
MAX_IMAGE_PIXELS = 50_000_000     # ~7000x7000; both datasets are far below this
GENERATOR_VERSION = 1
PREP_VERSION = 1
ENV_DATA_ROOT = "HELPERS_DATA_ROOT"


def get_spec(dataset: str) -> DatasetSpec:
    if dataset not in DATASETS:
        raise ValueError(
            f"unknown dataset {dataset!r}; expected one of: {', '.join(DATASETS)}")
    return DATASETS[dataset]


def data_root() -> Path:
    """Base folder for synthetic and prepared data: $HELPERS_DATA_ROOT or ./data."""
    return Path(os.environ.get(ENV_DATA_ROOT) or "data")


# --------------------------------------------------------------------------------------
# Small shared utilities
# --------------------------------------------------------------------------------------


def _natural_key(text: str):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def _tmp_sibling(final: Path, tag: str) -> Path:
    return final.parent / f".{final.name}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_tmp(final: Path) -> None:
    """Delete leftovers of killed writers of ``final`` (their process is gone)."""
    if not final.parent.is_dir():
        return
    for p in final.parent.glob(f".{glob.escape(final.name)}.*-*-*"):
        m = re.search(r"-(\d+)-[0-9a-f]{8}$", p.name)
        if m and not _pid_alive(int(m.group(1))):
            shutil.rmtree(p, ignore_errors=True)


@contextmanager
def _locked(final: Path):
    """Serialise writers of ``final`` across processes (parallel workflow jobs); the kernel
    drops the lock if the holder dies."""
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not on POSIX: no cross-process lock
        yield
        return
    with open(final.parent / f".{final.name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _swap_into_place(tmp: Path, final: Path) -> None:
    """Replace ``final`` by the finished folder ``tmp``; a crash in between leaves no ``final``."""
    old = None
    if final.exists():
        old = _tmp_sibling(final, "old")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _pool_map(func, items: list, *, desc: str, progress: bool, chunksize: int | None = None):
    """Map ``func`` over ``items`` in a process pool (in-process when small), with tqdm."""
    from tqdm.auto import tqdm

    workers = max(1, min(os.cpu_count() or 1, len(items) // 8))
    bar = tqdm(total=len(items), desc=desc, disable=not progress, unit="img")
    try:
        if workers == 1:
            for item in items:
                yield func(item)
                bar.update()
            return
        chunksize = chunksize or max(1, min(64, len(items) // (workers * 8)))
        with get_context("fork" if sys.platform != "win32" else "spawn").Pool(workers) as pool:
            for result in pool.imap(func, items, chunksize=chunksize):
                yield result
                bar.update()
    finally:
        bar.close()


# --------------------------------------------------------------------------------------
# Synthetic phantoms
# --------------------------------------------------------------------------------------


class _Grid:
    """Image coordinates in [-1, 1] after a small random similarity transform (the pose)."""

    def __init__(self, size: int, rng: np.random.Generator, jitter: float):
        self.size = size
        self.ang = float(rng.normal(0, 0.04 * jitter))
        self.scale = float(1 + rng.normal(0, 0.04 * jitter))
        self.dx, self.dy = (float(v) for v in rng.normal(0, 0.03 * jitter, 2))
        t = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
        yy, xx = np.meshgrid(t, t, indexing="ij")
        c, s = math.cos(self.ang), math.sin(self.ang)
        self.x = ((c * xx + s * yy) * self.scale + self.dx).astype(np.float32)
        self.y = ((-s * xx + c * yy) * self.scale + self.dy).astype(np.float32)
        self.px = 2.0 * self.scale / size          # one pixel in coordinate units

    def box(self, cx: float, cy: float, r: float) -> tuple[slice, slice]:
        """Pixel slices covering the disc of radius ``r`` around (cx, cy)."""
        c, s = math.cos(self.ang), math.sin(self.ang)
        u, v = (cx - self.dx) / self.scale, (cy - self.dy) / self.scale
        col, row = c * u - s * v, s * u + c * v
        half = r / self.scale * self.size / 2 + 2
        to_px = lambda t: (t + 1) / 2 * self.size - 0.5  # noqa: E731
        r0, r1 = int(to_px(row) - half), int(to_px(row) + half) + 2
        c0, c1 = int(to_px(col) - half), int(to_px(col) + half) + 2
        clamp = lambda a: min(max(a, 0), self.size)  # noqa: E731
        return slice(clamp(r0), clamp(r1)), slice(clamp(c0), clamp(c1))

    def ellipse(self, cx, cy, ax, ay, angle=0.0, soft=0.01) -> np.ndarray:
        """Soft ellipse indicator in [0, 1]; ``soft`` is the edge width in coordinate units."""
        out = np.zeros((self.size, self.size), np.float32)
        reach = max(ax, ay) * (1 + soft / min(ax, ay)) + soft
        rows, cols = self.box(cx, cy, reach)
        x, y = self.x[rows, cols], self.y[rows, cols]
        c, s = math.cos(angle), math.sin(angle)
        u = (c * (x - cx) + s * (y - cy)) / ax
        v = (-s * (x - cx) + c * (y - cy)) / ay
        r = np.sqrt(u * u + v * v)
        out[rows, cols] = np.clip(0.5 + (1 - r) * (min(ax, ay) / (2 * soft)), 0, 1)
        return out


def _noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth random field with unit std (bicubic upsampling of a coarse grid)."""
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    field_ = np.asarray(Image.fromarray(coarse, "F").resize((size, size), Image.BICUBIC))
    return (field_ - field_.mean()) / (field_.std() + 1e-6)


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(img, sigma, mode="nearest") if sigma > 0 else img


def _finish(img, rng, noise, blur, background=None) -> np.ndarray:
    """Blur, exposure (gain/offset/gamma) and noise -> uint8. Drawn independently of the class,
    so global brightness carries no label information."""
    img = _blur(img, blur)
    gain, offset = rng.uniform(0.85, 1.12), rng.normal(0, 0.04)
    img = np.clip(img * gain + offset, 0, 1) ** rng.uniform(0.8, 1.25)
    img = img + (rng.standard_normal(img.shape, dtype=np.float32) * noise)
    if background is not None:                     # CT air stays black
        img = np.where(background, img * 0.15, img)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def _severity(rng: np.random.Generator) -> float:
    """Lesion strength in (0, 1]: mostly clear, about a quarter subtle (the hard cases)."""
    return rng.uniform(0.15, 0.45) if rng.random() < 0.2 else rng.uniform(0.6, 1.0)


def _chest_phantom(cls: str, rng: np.random.Generator, size: int = 299):
    """Frontal chest radiograph: body, lungs, mediastinum, spine, ribs, clavicles, lesions.

    Returns (uint8 image, lung mask, lesion mask). Bright = dense, as on film.
    """
    g = _Grid(size, rng, 1.0)
    x, y = g.x, g.y
    ax_ = np.abs(x)
    bw = rng.uniform(0.8, 0.95)                       # half-width of the chest
    width = np.where(y > -0.72, bw + 0.05 * y, np.maximum(bw - 1.6 * (-0.72 - y), 0.24))
    body = np.clip((width - ax_) / 0.03, 0, 1)
    tissue = 0.52 + 0.22 * np.clip(ax_ / bw, 0, 1) ** 3 + rng.uniform(-0.05, 0.05)
    img = 0.03 + body * tissue

    lung = np.zeros_like(x)
    lungs = []
    for side in (-1, 1):
        cx = side * rng.uniform(0.33, 0.4)
        cy = rng.uniform(-0.12, -0.02)
        lax, lay = rng.uniform(0.24, 0.3), rng.uniform(0.52, 0.62)
        dome = cy + lay * rng.uniform(0.55, 0.75) + 0.35 * lay * ((x - cx) / lax) ** 2
        dome = dome - (rng.uniform(0.0, 0.06) if side == 1 else 0.0)
        shape = g.ellipse(cx, cy, lax, lay, soft=0.025) * np.clip((dome - y) / 0.02, 0, 1)
        lung = np.maximum(lung, shape)
        lungs.append((cx, cy, lax, lay))
    heart = g.ellipse(rng.uniform(0.05, 0.12), rng.uniform(0.18, 0.28),
                      rng.uniform(0.2, 0.28), rng.uniform(0.17, 0.22), soft=0.04)
    mediastinum = np.clip((rng.uniform(0.1, 0.14) - np.abs(x - 0.02)) / 0.03, 0, 1)
    lung = lung * (1 - heart) * (1 - mediastinum)
    lung_mask = lung > 0.5

    # lungs: darker centrally and at the top, vessels fanning out from the hila
    lung_dark = rng.uniform(0.3, 0.42)
    hila = sum(np.exp(-((x - cx * 0.5) ** 2 + (y - cy) ** 2) / 0.06) for cx, cy, _, _ in lungs)
    base = np.clip((y + 0.1) / 0.6, 0, 1)
    vessels = _blur((np.abs(_noise(rng, size, 26)) < 0.3).astype(np.float32), 1.0)
    img = img - lung * lung_dark * (1 - 0.35 * hila - 0.2 * base)
    img = img + lung * vessels * 0.06 * (0.25 + hila)
    img = img + heart * 0.06 + mediastinum * 0.05

    spine = np.clip((0.065 - np.abs(x - 0.01)) / 0.015, 0, 1)
    img = img + spine * (0.07 + 0.03 * (np.cos(y * 40 + rng.uniform(0, 6)) > 0.6))

    # posterior ribs: arcs running down laterally, visible through the lungs
    spacing = rng.uniform(0.14, 0.18)
    phase = (y - 0.55 * ax_ ** 2 - 0.05 * ax_) / spacing + rng.uniform(0, 1)
    ribs = np.clip((np.cos(2 * np.pi * phase) - 0.55) * 3, 0, 1)
    ribs = ribs * np.clip((ax_ - 0.07) / 0.03, 0, 1) * (ax_ < width - 0.03) * (y < 0.45) * (y > -0.85)
    img = img + ribs * rng.uniform(0.05, 0.1)
    for side in (-1, 1):                              # clavicles
        y_c = -0.76 + 0.14 * np.clip(ax_ - 0.1, 0, None) ** 1.2 + rng.normal(0, 0.02)
        clav = np.clip((0.03 - np.abs(y - y_c)) / 0.012, 0, 1) * (side * x > 0.09) * (side * x < 0.68)
        img = img + clav * 0.1

    # soft-tissue confounder in every class: breast shadows over the lower zones
    if rng.random() < 0.35:
        for cx, cy, lax, lay in lungs:
            img = img + 0.07 * g.ellipse(cx * 1.25, cy + lay * 0.7, lax * 1.3, lay * 0.45,
                                         soft=0.12) * body

    lesion = np.zeros_like(x)
    sev = _severity(rng)
    if cls == "COVID":
        # ground-glass patches, peripheral and lower-zone, mostly bilateral
        n = rng.integers(3, 8)
        sides = (rng.permutation([0, 1] * 3)[:n] if rng.random() < 0.85
                 else [rng.integers(2)] * n)
        for k in sides:
            cx, cy, lax, lay = lungs[k]
            px_ = cx + np.sign(cx) * lax * rng.uniform(0.35, 0.8)
            py_ = cy + lay * rng.uniform(-0.2, 0.75)
            r = rng.uniform(0.1, 0.2)
            blob = np.exp(-(((x - px_) / r) ** 2 + ((y - py_) / (r * rng.uniform(0.8, 1.6))) ** 2))
            lesion = np.maximum(lesion, blob * (1 + 0.4 * _noise(rng, size, 16)))
        lesion = np.clip(lesion, 0, 1) * lung
        img = img + 0.35 * sev * lesion * (0.8 + 0.2 * _noise(rng, size, 40))
    elif cls == "Viral Pneumonia":
        if rng.random() < 0.65:
            # diffuse bilateral perihilar interstitial pattern: haze plus reticular lines
            spread = rng.uniform(0.25, 0.45)
            region = sum(np.exp(-((x - cx * 0.6) ** 2 + (y - cy - 0.1) ** 2) / spread)
                         for cx, cy, _, _ in lungs)
            region = np.clip(region, 0, 1) * lung
            reticular = (np.abs(_noise(rng, size, int(rng.integers(30, 50)))) < 0.3)
            lesion = region
            img = img + 0.3 * sev * region * (0.5 + 0.8 * _blur(reticular.astype(np.float32), 0.8))
        else:
            # lobar consolidation: dense, sharply bounded above by a fissure, one lung
            cx, cy, lax, lay = lungs[rng.integers(2)]
            fissure = cy + lay * rng.uniform(-0.05, 0.35) + rng.uniform(-0.2, 0.2) * (x - cx)
            region = lung * np.clip((y - fissure) / 0.02, 0, 1) * (np.abs(x - cx) < lax * 1.1)
            bronchi = (np.abs(_noise(rng, size, 20)) < 0.12).astype(np.float32)
            lesion = region
            img = img + 0.45 * sev * region * (1 - 0.35 * bronchi)
    lesion_mask = (lesion > 0.3) & lung_mask

    img = _finish(img, rng, noise=rng.uniform(0.01, 0.035), blur=rng.uniform(0.4, 1.2))
    return img, lung_mask, lesion_mask


def _kidney_phantom(cls: str, rng: np.random.Generator, size: int = 512):
    """Axial abdominal CT at kidney level: body, fat, muscle, spine, vessels, bowel, liver,
    kidneys, lesions. Returns (uint8 image, lesion mask)."""
    g = _Grid(size, rng, 0.8)
    x, y, px = g.x, g.y, g.px
    bax, bay = rng.uniform(0.82, 0.95), rng.uniform(0.6, 0.72)
    bcy = rng.uniform(-0.04, 0.06)
    body = g.ellipse(0, bcy, bax, bay, soft=px)
    fat_t = rng.uniform(0.04, 0.11)
    inner = g.ellipse(0, bcy, bax - fat_t, bay - fat_t * 0.8, soft=0.01)
    fat = rng.uniform(0.17, 0.25)
    soft_tissue = rng.uniform(0.43, 0.5)
    img = body * fat + inner * (soft_tissue - fat + 0.03 * _noise(rng, size, 12))
    img = img + 0.12 * (body - g.ellipse(0, bcy, bax - 2 * px, bay - 2 * px, soft=px))  # skin
    foreground = body > 0.01
    if rng.random() < 0.6:                            # scanner table under the patient
        ty = bcy + bay + rng.uniform(0.06, 0.16) + 0.25 - 0.3 * x ** 2
        table = np.clip((0.006 - np.abs(y - ty)) / px, 0, 1) * (np.abs(x) < 0.95)
        img = img + 0.5 * table
        foreground |= table > 0

    spine_y = bcy + bay * rng.uniform(0.45, 0.58)
    for side in (-1, 1):                              # paraspinal and psoas muscles
        img = img + 0.06 * g.ellipse(side * 0.15, spine_y + 0.15, 0.12, 0.09, soft=0.02)
        img = img + 0.05 * g.ellipse(side * 0.13, spine_y - 0.04, 0.06, 0.07, soft=0.02)
    vb = g.ellipse(0, spine_y, 0.085, 0.075, soft=px)
    img = np.maximum(img, vb * (0.72 + 0.06 * _noise(rng, size, 40)))
    img = np.maximum(img, 0.95 * (vb - g.ellipse(0, spine_y, 0.07, 0.06, soft=px)))
    img = np.maximum(img, 0.9 * g.ellipse(0, spine_y + 0.16, 0.014, 0.07, soft=px))
    img = img - 0.2 * g.ellipse(0, spine_y + 0.11, 0.035, 0.03, soft=px)   # spinal canal
    for side in (-1, 1):                              # transverse processes
        img = np.maximum(img, 0.85 * g.ellipse(side * 0.11, spine_y + 0.06, 0.06, 0.015,
                                               angle=side * 0.4, soft=px))

    enh = rng.uniform(0.0, 1.0)                       # contrast phase: plain to enhanced
    ao_x, ao_y = 0.05, spine_y - 0.14
    img = np.maximum(img, (0.55 + 0.3 * enh) * g.ellipse(ao_x, ao_y, 0.035, 0.035, soft=px))
    img = np.maximum(img, (0.5 + 0.15 * enh) * g.ellipse(-0.09, ao_y, 0.05, 0.03, soft=px))
    if rng.random() < 0.3:                            # aortic calcification: a stone look-alike
        a = rng.uniform(0, 2 * np.pi)
        img = np.maximum(img, 0.97 * g.ellipse(ao_x + 0.035 * math.cos(a), ao_y + 0.035 * math.sin(a),
                                               0.01, 0.01, soft=px))
    organ_tex = 0.025 * _noise(rng, size, 30)
    liver = g.ellipse(-bax * 0.55, bcy - bay * 0.25, bax * 0.5, bay * 0.6, soft=0.01) * inner
    img = img * (1 - liver) + liver * (rng.uniform(0.52, 0.6) + organ_tex)
    spleen = g.ellipse(bax * 0.6, spine_y - 0.08, 0.13, 0.09, angle=-0.6, soft=0.01) * inner
    img = img * (1 - spleen) + spleen * (rng.uniform(0.5, 0.56) + organ_tex)

    # bowel loops: walls, fluid, sometimes gas or bright content
    for _ in range(rng.integers(2, 7)):
        cx_, cy_ = rng.uniform(-0.4, 0.55), bcy + rng.uniform(-bay * 0.8, 0.0)
        r = rng.uniform(0.04, 0.09)
        loop = g.ellipse(cx_, cy_, r, r * rng.uniform(0.7, 1.3), angle=rng.uniform(0, 3),
                         soft=0.006) * inner
        img = img * (1 - loop) + loop * (rng.uniform(0.4, 0.6) + organ_tex)
        u = rng.random()
        if u < 0.1:
            gas = g.ellipse(cx_, cy_ - r * 0.2, r * 0.55, r * 0.45, soft=px) * inner
            img = img * (1 - gas) + gas * 0.02
        elif u < 0.14:
            img = np.maximum(img, 0.8 * g.ellipse(cx_, cy_, r * 0.4, r * 0.4, soft=px))

    # kidneys: perirenal fat, bright cortex, darker medulla (enhanced) and sinus fat at the hilum
    lesion = np.zeros(x.shape, bool)
    kidneys = []
    for side in (-1, 1):
        kcx = side * rng.uniform(0.3, 0.38)
        kcy = spine_y - rng.uniform(0.02, 0.1)
        scale = rng.uniform(0.75, 1.0)
        kax, kay = rng.uniform(0.14, 0.17) * scale, rng.uniform(0.18, 0.22) * scale
        ang = side * rng.uniform(0.2, 0.6)
        perirenal = g.ellipse(kcx, kcy, kax * 1.35, kay * 1.25, angle=ang, soft=0.02)
        img = img * (1 - perirenal) + perirenal * fat
        kidney = g.ellipse(kcx, kcy, kax, kay, angle=ang, soft=px * 1.5)
        cortex = rng.uniform(0.6, 0.7) + 0.12 * enh
        medulla = g.ellipse(kcx, kcy, kax * 0.7, kay * 0.75, angle=ang, soft=0.03)
        img = img * (1 - kidney) + kidney * (cortex - 0.07 * enh * medulla)
        sinus = g.ellipse(kcx - side * kax * 0.5, kcy, kax * 0.5, kay * 0.4, angle=ang, soft=0.012)
        img = img - sinus * kidney * rng.uniform(0.22, 0.32)
        kidneys.append((kcx, kcy, kax, kay, cortex))

    sev = _severity(rng)
    if cls == "Cyst":
        # round water-density lesions with sharp walls, cortical or exophytic
        for _ in range(rng.integers(1, 5)):
            kcx, kcy, kax, kay, _c = kidneys[rng.integers(2)]
            t, rr = rng.uniform(0, 2 * np.pi), rng.uniform(0.4, 1.0)
            cx_, cy_ = kcx + rr * kax * math.cos(t), kcy + rr * kay * math.sin(t)
            r = rng.uniform(0.08, 0.16) * (0.5 + 0.5 * sev)
            cyst = g.ellipse(cx_, cy_, r, r * rng.uniform(0.85, 1.15), soft=px)
            level = rng.uniform(0.08, 0.18) + (1 - sev) * 0.3
            img = img * (1 - cyst) + cyst * level
            lesion |= cyst > 0.5
    elif cls == "Stone":
        # very dense foci in the collecting system: a few small stones or a branching
        # (staghorn) cluster filling the renal pelvis
        kcx, kcy, kax, kay, _c = kidneys[rng.integers(2)]
        staghorn = rng.random() < 0.4
        n = rng.integers(3, 7) if staghorn else rng.integers(1, 5)
        for _ in range(n):
            if not staghorn:
                kcx, kcy, kax, kay, _c = kidneys[rng.integers(2)]
            spread = 0.35 if staghorn else 0.6
            cx_ = kcx - np.sign(kcx) * kax * rng.uniform(0.1, 0.1 + spread)
            cy_ = kcy + kay * rng.uniform(-spread, spread)
            r = rng.uniform(0.035, 0.065) * (0.5 + 0.5 * sev)
            stone = g.ellipse(cx_, cy_, r, r * rng.uniform(0.7, 1.3), angle=rng.uniform(0, 3),
                              soft=px * 0.7)
            img = np.maximum(img, stone * (0.85 + 0.15 * sev))
            lesion |= g.ellipse(cx_, cy_, r * 1.3 + 2 * px, r * 1.3 + 2 * px, soft=px) > 0.5
    elif cls == "Tumor":
        # lobulated heterogeneous mass bulging from the kidney, sometimes necrotic
        kcx, kcy, kax, kay, cortex = kidneys[rng.integers(2)]
        t, rr = rng.uniform(0, 2 * np.pi), rng.uniform(0.3, 0.9)
        cx_, cy_ = kcx + rr * kax * math.cos(t), kcy + rr * kay * math.sin(t)
        r = rng.uniform(0.16, 0.26) * (0.55 + 0.45 * sev)
        rows, cols = g.box(cx_, cy_, r * 1.3)
        xs, ys = x[rows, cols], y[rows, cols]
        theta = np.arctan2(ys - cy_, xs - cx_)
        lobes = 1 + 0.15 * np.sin(theta * rng.integers(3, 6) + rng.uniform(0, 6))
        dist = np.sqrt((xs - cx_) ** 2 + (ys - cy_) ** 2) / (r * lobes)
        mass = np.clip((1 - dist) * r / (2 * px), 0, 1)
        tex = 0.1 * _noise(rng, size, 60)[rows, cols] + 0.08 * _noise(rng, size, 20)[rows, cols]
        # heterogeneous enhancement around the cortex level, sometimes a necrotic core
        level = np.minimum(cortex * rng.uniform(0.78, 0.95) + 1.3 * tex, cortex + 0.1)
        level = level - 0.2 * (dist < rng.uniform(0, 0.5))
        level = cortex + (level - cortex) * (0.35 + 0.65 * sev)
        patch = img[rows, cols]
        img[rows, cols] = patch * (1 - mass) + mass * level
        lesion[rows, cols] |= mass > 0.5

    img = _finish(img, rng, noise=rng.uniform(0.008, 0.03), blur=rng.uniform(0.5, 1.1),
                  background=~foreground)
    return img, lesion


def _synth_one(job: tuple) -> None:
    """Generate and write one phantom (run in worker processes)."""
    dataset, cls, index, seed, image_path, lesion_path, lung_path = job
    spec = DATASETS[dataset]
    class_idx = spec.classes.index(cls)
    rng = np.random.default_rng([seed, class_idx, index, GENERATOR_VERSION])
    if dataset == "covid_radiography":
        img, lung, lesion = _chest_phantom(cls, rng, spec.native_size)
        Image.fromarray(img, "L").save(image_path, optimize=False, compress_level=1)
        Image.fromarray(lung.astype(np.uint8) * 255, "L").resize(
            (256, 256), Image.NEAREST).save(lung_path, compress_level=1)
    else:
        img, lesion = _kidney_phantom(cls, rng, spec.native_size)
        Image.fromarray(img, "L").save(image_path, quality=92)
    Image.fromarray(lesion.astype(np.uint8) * 255, "L").save(lesion_path, compress_level=1)


def _synthetic_name(dataset: str, cls: str, index: int) -> str:
    # Kaggle file naming: "COVID-12.png", "Viral Pneumonia-3.png", "Cyst- (7).jpg"
    return f"{cls}-{index}.png" if dataset == "covid_radiography" else f"{cls}- ({index}).jpg"


def synthesize(dataset: str, root: str | os.PathLike | None = None, n_per_class: int | Mapping[str, int] = 100,
               seed: int = 0, progress: bool = True) -> Path:
    """Write phantoms for ``dataset`` in its Kaggle layout under ``root``; return ``root``.

    Idempotent: a root whose ``SYNTHETIC.json`` records the same counts, seed and generator
    version is reused. Otherwise everything is generated in a hidden sibling folder that replaces
    ``root`` only when complete (the marker is written last).
    ``n_per_class`` is an int or a mapping class -> count.
    """
    spec = get_spec(dataset)
    root = Path(root) if root else data_root() / "synthetic" / dataset
    counts = (dict(n_per_class) if isinstance(n_per_class, Mapping)
              else {c: n_per_class for c in spec.classes})
    if set(counts) != set(spec.classes) or not all(_is_int(v) and v >= 1 for v in counts.values()):
        raise ValueError(f"n_per_class must be a positive int or a mapping of every class of {dataset} "
                         f"({', '.join(spec.classes)}) to a positive int; got {n_per_class!r}")
    counts = {c: int(counts[c]) for c in spec.classes}
    wanted = {"dataset": dataset, "counts": counts, "seed": int(seed),
              "generator_version": GENERATOR_VERSION}
    if _marker_matches(root, wanted):
        return root
    with _locked(root):
        if _marker_matches(root, wanted):            # another process just wrote it
            return root
        _generate(root, dataset, spec, counts, int(seed), wanted, n_per_class, progress)
    return root


def _marker_matches(root: Path, wanted: dict) -> bool:
    try:
        found = json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return all(found.get(k) == v for k, v in wanted.items())


def _generate(root, dataset, spec, counts, seed, wanted, n_per_class, progress) -> None:
    _remove_stale_tmp(root)
    tmp = _tmp_sibling(root, "tmp")
    class_root = tmp.joinpath(*spec.layout)
    jobs = []
    for cls in spec.classes:
        img_dir = class_root / cls / ("images" if spec.mask_dir else "")
        img_dir.mkdir(parents=True, exist_ok=True)
        (tmp / LESION_DIR / cls).mkdir(parents=True, exist_ok=True)
        if spec.mask_dir:
            (class_root / cls / spec.mask_dir).mkdir(parents=True, exist_ok=True)
        for i in range(1, counts[cls] + 1):
            name = _synthetic_name(dataset, cls, i)
            stem = Path(name).stem
            lung = class_root / cls / spec.mask_dir / f"{stem}.png" if spec.mask_dir else None
            jobs.append((dataset, cls, i, seed, img_dir / name,
                         tmp / LESION_DIR / cls / f"{stem}.png", lung))
    try:
        for _ in _pool_map(_synth_one, jobs, desc=f"synthesize {dataset}", progress=progress):
            pass
        if dataset == "ct_kidney":
            _write_kidney_csv(tmp, spec, counts)
        _write_json_atomic(tmp / MARKER, {
            **wanted, "n_per_class": n_per_class if isinstance(n_per_class, int) else counts,
            "classes": list(spec.classes), "class_root": "/".join(spec.layout),
            "note": "SYNTHETIC DATA: phantoms drawn by helpers.data, not patient images",
        })
        _swap_into_place(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_kidney_csv(root: Path, spec: DatasetSpec, counts: dict[str, int]) -> None:
    import csv

    with open(root / "kidneyData.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["", "image_id", "path", "diag", "target", "Class"])
        row = 0
        for target, cls in enumerate(spec.classes):
            for i in range(1, counts[cls] + 1):
                name = _synthetic_name(spec.name, cls, i)
                w.writerow([row, Path(name).stem, "/".join([*spec.layout, cls, name]), cls, target, cls])
                row += 1


# --------------------------------------------------------------------------------------
# Discovery of the Kaggle layouts
# --------------------------------------------------------------------------------------


def _skip_descend(name: str) -> bool:
    return name.startswith(".") or name in (LESION_DIR, "masks")


def find_class_root(data_dir: str | os.PathLike, dataset: str, max_depth: int = 6) -> Path:
    """The shallowest folder at or below ``data_dir`` that holds every class folder of ``dataset``.

    Accepts the class-folder parent itself or any parent of it (e.g. the unzipped Kaggle download,
    which nests ``CT-KIDNEY-DATASET-Normal-Cyst-Tumor-Stone/`` twice for ct_kidney).
    """
    spec = get_spec(dataset)
    root = Path(data_dir).expanduser()
    expected = ", ".join(repr(c) for c in spec.classes)
    if not root.exists():
        raise FileNotFoundError(
            f"data_dir {str(root)!r} does not exist; expected a folder holding the {dataset} class "
            f"folders {expected} (or any parent of it, e.g. the unzipped Kaggle download)")
    if not root.is_dir():
        raise NotADirectoryError(f"data_dir {str(root)!r} is not a folder; expected a folder holding "
                                 f"the {dataset} class folders {expected}")
    level, partial = [root], None
    for _depth in range(max_depth + 1):
        hits, below = [], []
        for folder in level:
            try:
                subdirs = sorted(e.name for e in os.scandir(folder) if e.is_dir())
            except OSError:
                continue
            present = [c for c in spec.classes if c in subdirs]
            if len(present) == len(spec.classes):
                hits.append(folder)
            elif present and (partial is None or len(present) > len(partial[1])):
                partial = (folder, present)
            below += [folder / n for n in subdirs if not _skip_descend(n) and n not in spec.classes]
        if len(hits) > 1:
            raise ValueError(f"data_dir {str(root)!r} holds several {dataset} datasets at the same depth: "
                             + ", ".join(str(h) for h in hits) + "; pass one of them as data_dir")
        if hits:
            return hits[0]
        level = below
    if partial is not None:
        folder, present = partial
        missing = [c for c in spec.classes if c not in present]
        raise FileNotFoundError(
            f"{str(folder)!r} is missing the class folder(s) {', '.join(map(repr, missing))} of {dataset}; "
            f"expected all of {expected}")
    raise FileNotFoundError(
        f"no folder at or below data_dir {str(root)!r} holds the {dataset} class folders {expected} "
        f"(searched {max_depth} levels deep)")


def _find_marker(class_root: Path) -> Path | None:
    """The synthetic root (folder with SYNTHETIC.json) at or up to 3 levels above the class root."""
    for folder in [class_root, *list(class_root.parents)[:3]]:
        if (folder / MARKER).is_file():
            return folder
    return None


@dataclass
class _Listing:
    candidates: list[tuple[str, str, str | None]]   # (relative path, class, mask path)
    skipped: list[tuple[str, str]]                  # (relative path, reason)
    files: list[tuple[str, int, int]]               # (relative path, size, mtime_ns) for the fingerprint


def _skip_reason_by_name(name: str) -> str | None:
    if name.startswith("."):
        return f"hidden/system file ({name})"
    if name.lower() in SYSTEM_FILES:
        return f"system file ({name})"
    ext = os.path.splitext(name)[1].lower()
    if ext not in IMAGE_EXTENSIONS:
        return f"not an image file extension ({ext or 'none'})"
    return None


def _scan(class_root: Path, spec: DatasetSpec, synthetic_root: Path | None) -> _Listing:
    """List images per class; record every other file with a reason; stat everything."""
    listing = _Listing([], [], [])

    def stat(path: Path, rel: str) -> None:
        st = path.stat()
        listing.files.append((rel, st.st_size, st.st_mtime_ns))

    for entry in sorted(os.scandir(class_root), key=lambda e: e.name):
        if entry.name in spec.classes:
            continue
        kind = "folder" if entry.is_dir() else "file"
        listing.skipped.append((entry.name + ("/" if kind == "folder" else ""),
                                f"ignored: {kind} is not one of the {spec.name} class folders"))
        listing.files.append((entry.name, 0, 0))
    for cls in spec.classes:
        cls_dir = class_root / cls
        found = 0
        masks: set[str] = set()
        per_class = []
        for dirpath, dirnames, filenames in os.walk(cls_dir):
            here = Path(dirpath)
            rel_here = here.relative_to(class_root).as_posix()
            for d in sorted(dirnames):
                if d.startswith("."):
                    listing.skipped.append((f"{rel_here}/{d}/", f"hidden folder ({d})"))
                    listing.files.append((f"{rel_here}/{d}/", 0, 0))
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            is_mask_dir = spec.mask_dir is not None and here.name == spec.mask_dir
            for name in sorted(filenames):
                rel = f"{rel_here}/{name}"
                stat(here / name, rel)
                if is_mask_dir:
                    masks.add(rel)
                    continue
                reason = _skip_reason_by_name(name)
                if reason:
                    listing.skipped.append((rel, reason))
                else:
                    per_class.append(rel)
                    found += 1
        if found == 0:
            raise FileNotFoundError(
                f"class folder {str(cls_dir)!r} holds no image files; expected {spec.ext} images of "
                f"class {cls!r} (directly or in an images/ subfolder)")
        for rel in per_class:
            mask = None
            if synthetic_root is not None:
                lesion = synthetic_root / LESION_DIR / cls / (Path(rel).stem + ".png")
                if lesion.is_file():
                    mask = str(lesion)
                    stat(lesion, lesion.relative_to(synthetic_root).as_posix())
            elif spec.mask_dir is not None:
                parent = Path(rel).parent
                base = parent.parent if parent.name == "images" else parent
                guess = (base / spec.mask_dir / Path(rel).name).as_posix()
                if guess in masks:
                    mask = str(class_root / guess)
            listing.candidates.append((rel, cls, mask))
    listing.candidates.sort(key=lambda c: (spec.classes.index(c[1]), _natural_key(c[0])))
    return listing


# --------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------


class _Skip(Exception):
    """An input file that cannot be used; the message is the reason recorded in skipped.csv."""


def _to_rgb8(im: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB; alpha composited on black.

    16-bit data are mapped by the container's full range (65535 -> 255), not clipped as PIL's
    convert("L") would; 32-bit integers holding 8- or 16-bit values likewise; other integer and
    float images are stretched from their min to their max.
    """
    mode = im.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        a = np.asarray(im).astype(np.float64)
        finite = a[np.isfinite(a)]
        lo, hi = (finite.min(), finite.max()) if finite.size else (0.0, 0.0)
        if mode == "I" and lo >= 0 and hi <= 255:
            pass                                             # 8-bit values in a 32-bit container
        elif mode != "F" and lo >= 0 and hi <= 65535:
            a = a / 257.0                                    # 16-bit container -> 8 bit
        else:
            a = (a - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(a)
        a = np.nan_to_num(a, nan=0.0)
        return Image.fromarray(np.clip(a + 0.5, 0, 255).astype(np.uint8), "L").convert("RGB")
    if "A" in mode or "a" in mode or "transparency" in im.info:
        rgba = im.convert("RGBA")
        black = Image.new("RGBA", im.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("RGB")
    return im.convert("RGB")


def _open_checked(data: bytes) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise _Skip(f"decompression bomb: {e}") from None
        except Image.UnidentifiedImageError:
            raise _Skip("not an image: content is not a recognised image format") from None
        w, h = im.size
        if w * h > MAX_IMAGE_PIXELS:
            raise _Skip(f"decompression bomb: header claims {w}x{h} = {w * h} pixels "
                        f"(limit {MAX_IMAGE_PIXELS})")
        if w == 0 or h == 0:
            raise _Skip(f"empty image ({w}x{h})")
        try:
            im.load()
        except OSError as e:
            kind = "truncated image" if "truncated" in str(e).lower() else "corrupt image"
            raise _Skip(f"{kind}: {e}") from None
        except (ValueError, SyntaxError, EOFError) as e:
            raise _Skip(f"corrupt image: {e}") from None
    return im


def _decode_one(job: tuple) -> tuple:
    """Decode one image (and its mask) -> (reason | None, sha256, image (3,S,S), mask (S,S) | None)."""
    path, size, mask_path, mask_kind = job
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        return f"unreadable file: {e.strerror or e}", "", None, None
    sha = hashlib.sha256(data).hexdigest()
    if not data:
        return "empty file (0 bytes)", sha, None, None
    try:
        im = _to_rgb8(_open_checked(data))
    except _Skip as e:
        return str(e), sha, None, None
    image = np.asarray(im.resize((size, size), Image.BILINEAR)).transpose(2, 0, 1).copy()
    mask = None
    if mask_path:
        try:
            m = _open_checked(Path(mask_path).read_bytes()).convert("L")
            if mask_kind == "lesion":   # any coverage counts, so tiny stones survive downscaling
                mask = np.asarray(m.resize((size, size), Image.BOX)) > 0
            else:
                mask = np.asarray(m.resize((size, size), Image.NEAREST)) > 127
            mask = mask.astype(np.uint8)
        except (OSError, _Skip):
            mask = None
    return None, sha, image, mask


# --------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------


def _is_int(v) -> bool:
    return isinstance(v, Integral) and not isinstance(v, bool)


def validate_prep_params(dataset, data_dir="", image_size=128, balance=True, seed=0, out_dir="",
                         split="random", n_per_class=100, progress=True) -> dict:
    """Check the data-prep parameters; raise ValueError (or FileNotFoundError for a missing
    ``data_dir``) naming the parameter and what was expected. Returns them normalised."""
    if not isinstance(dataset, str) or dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {', '.join(DATASETS)}; got {dataset!r}")

    def need_bool(name, v):
        if not isinstance(v, (bool, np.bool_)):
            hint = (" (papermill -p passes 'true'/'false' as text: write True or False)"
                    if isinstance(v, str) else "")
            raise ValueError(f"{name} must be True or False; got {type(v).__name__} {v!r}{hint}")
        return bool(v)

    def need_int(name, v, lo, hi):
        if not _is_int(v):
            raise ValueError(f"{name} must be an int in [{lo}, {hi}]; got {type(v).__name__} {v!r}")
        if not lo <= int(v) <= hi:
            raise ValueError(f"{name} must be an int in [{lo}, {hi}]; got {v!r}")
        return int(v)

    def need_path(name, v):
        if v is None:
            return ""
        if not isinstance(v, (str, os.PathLike)):
            raise ValueError(f"{name} must be a path string ('' for the default); got "
                             f"{type(v).__name__} {v!r}")
        return os.fspath(v)

    params = {
        "dataset": dataset,
        "data_dir": need_path("data_dir", data_dir),
        "image_size": need_int("image_size", image_size, 16, 1024),
        "balance": need_bool("balance", balance),
        "seed": need_int("seed", seed, 0, 2**32 - 1),
        "out_dir": need_path("out_dir", out_dir),
        "split": split,
        "n_per_class": need_int("n_per_class", n_per_class, MIN_PER_CLASS, 1_000_000),
        "progress": need_bool("progress", progress),
    }
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
    if params["data_dir"]:
        find_class_root(params["data_dir"], dataset)      # missing folders fail here, before work
    return params


# --------------------------------------------------------------------------------------
# prepare / load_prepared
# --------------------------------------------------------------------------------------


def default_prepared_dir(dataset: str, synthetic: bool, image_size: int, split: str, balance: bool,
                         seed: int, n_per_class: int | None = None) -> Path:
    # Synthetic sets of different sizes must not share a cache folder.
    source = ("synthetic" + (f"-n{n_per_class}" if n_per_class else "")) if synthetic else "real"
    name = f"{source}-{image_size}px-{split}-{'bal' if balance else 'all'}-s{seed}"
    return data_root() / "prepared" / dataset / name


def _fingerprint(params: dict, class_root: Path, listing: _Listing) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"prep_version": PREP_VERSION, "source_dir": str(class_root.resolve()),
                         **{k: params[k] for k in ("dataset", "image_size", "balance", "seed", "split")}},
                        sort_keys=True).encode())
    for rel, size, mtime in sorted(listing.files):
        h.update(f"{rel}\0{size}\0{mtime}\n".encode())
    return h.hexdigest()


PREPARED_FILES = ("manifest.csv", "images.npy", "masks.npy", "skipped.csv", "samples.png", "info.json")


def _cache_valid(out: Path, fingerprint: str) -> bool:
    try:
        info = json.loads((out / "info.json").read_text())
    except (OSError, ValueError):
        return False
    return info.get("fingerprint") == fingerprint and all((out / f).is_file() for f in PREPARED_FILES)


def _random_split(labels: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    trainval, test = train_test_split(idx, test_size=0.2, stratify=labels, random_state=seed)
    train, val = train_test_split(trainval, test_size=0.25, stratify=labels[trainval], random_state=seed)
    split = np.empty(len(labels), dtype=object)
    split[train], split[val], split[test] = "train", "val", "test"
    return split.astype(str)


def _channel_stats(images: np.ndarray, chunk: int = 512) -> tuple[list[float], list[float]]:
    """Per-channel mean/std on the [0, 1] scale, in chunks to bound memory."""
    n_px = 0
    s = np.zeros(images.shape[1])
    ss = np.zeros(images.shape[1])
    for i in range(0, len(images), chunk):
        block = images[i:i + chunk].astype(np.float64) / 255.0
        s += block.sum(axis=(0, 2, 3))
        ss += (block ** 2).sum(axis=(0, 2, 3))
        n_px += block.shape[0] * block.shape[2] * block.shape[3]
    mean = s / max(n_px, 1)
    std = np.sqrt(np.maximum(ss / max(n_px, 1) - mean ** 2, 0))
    return [float(v) for v in mean], [float(v) for v in std]


def _save_samples(path: Path, images, labels, split, class_names, mean, std, synthetic: bool,
                  title: str, seed: int, per_class: int = 4) -> None:
    """Figure: per class, ``per_class`` raw train images then the same ones normalised."""
    from matplotlib.figure import Figure

    rng = np.random.default_rng(seed)
    k = len(class_names)
    fig = Figure(figsize=(2.0 * per_class * 2, 2.1 * k + 1.0), dpi=90)
    axes = fig.subplots(k, 2 * per_class, squeeze=False)
    m = np.asarray(mean)[:, None, None]
    s = np.asarray(std)[:, None, None] + 1e-8
    for row, cls in enumerate(class_names):
        pool = np.flatnonzero((labels == row) & (split == "train"))
        pick = rng.choice(pool, size=min(per_class, len(pool)), replace=False) if len(pool) else []
        for j in range(per_class):
            for half in (0, 1):
                ax = axes[row, j + half * per_class]
                ax.set_xticks([])
                ax.set_yticks([])
                if j >= len(pick):
                    ax.axis("off")
                    continue
                img = images[pick[j]]
                if half == 0:
                    ax.imshow(img.transpose(1, 2, 0))
                else:
                    z = (img / 255.0 - m) / s
                    ax.imshow(np.clip((z + 2.5) / 5.0, 0, 1).transpose(1, 2, 0))
                if row == 0 and j == 0:
                    ax.set_title("raw (uint8)" if half == 0 else "normalised (z, ±2.5)", fontsize=9)
            axes[row, 0].set_ylabel(cls, fontsize=11)
    if synthetic:
        fig.suptitle(f"SYNTHETIC DATA (phantoms, not patient images)\n{title}",
                     color="crimson", fontweight="bold", fontsize=12)
    else:
        fig.suptitle(title, fontsize=12)
    fig.subplots_adjust(left=0.04, right=0.995, bottom=0.01, top=1 - 0.9 / fig.get_figheight(),
                        wspace=0.04, hspace=0.06)   # fixed layout: tight_layout is slow
    fig.savefig(path)


def _reason_kind(reason: str) -> str:
    """'truncated image: ...' -> 'truncated image'; 'hidden file (.x)' -> 'hidden file'."""
    return reason.split(":")[0].split(" (")[0]


def _reason_counts(skipped: list[tuple[str, str]]) -> dict[str, int]:
    return dict(Counter(_reason_kind(reason) for _, reason in skipped))


def prepare(dataset: str, data_dir: str | os.PathLike = "", image_size: int = 128, balance: bool = True,
            seed: int = 0, out_dir: str | os.PathLike = "", split: str = "random", n_per_class: int = 100,
            progress: bool = True) -> Path:
    """Decode, balance, split and cache a dataset; return the prepared folder (see CONTRACTS.md).

    ``data_dir`` "" uses the synthetic phantoms (``n_per_class`` per class, generator seed 0, so
    that ``seed`` only changes the balance and the split). A folder whose info.json fingerprint
    matches the inputs and parameters is reused without decoding anything.
    """
    p = validate_prep_params(dataset, data_dir, image_size, balance, seed, out_dir, split,
                             n_per_class, progress)
    spec = DATASETS[dataset]
    source = Path(p["data_dir"]) if p["data_dir"] else synthesize(
        dataset, root=data_root() / "synthetic" / f"{dataset}-n{p['n_per_class']}",
        n_per_class=p["n_per_class"], seed=0, progress=p["progress"])
    class_root = find_class_root(source, dataset)
    synthetic_root = _find_marker(class_root)
    synthetic = synthetic_root is not None
    listing = _scan(class_root, spec, synthetic_root)
    out = Path(p["out_dir"]) if p["out_dir"] else default_prepared_dir(
        dataset, synthetic, p["image_size"], p["split"], p["balance"], p["seed"],
        p["n_per_class"] if not p["data_dir"] else None)
    fingerprint = _fingerprint(p, class_root, listing)
    tag = "SYNTHETIC DATA" if synthetic else "real data"
    if _cache_valid(out, fingerprint):
        print(f"[data] {dataset} ({tag}): inputs unchanged, reusing {out}")
        return out

    with _locked(out):
        if _cache_valid(out, fingerprint):               # built meanwhile by another process
            print(f"[data] {dataset} ({tag}): inputs unchanged, reusing {out}")
            return out
        _remove_stale_tmp(out)
        tmp = _tmp_sibling(out, "tmp")
        tmp.mkdir()
        try:
            _build(tmp, p, spec, class_root, synthetic, listing, fingerprint)
            _swap_into_place(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    info = json.loads((out / "info.json").read_text())
    _print_summary(info, out)
    return out


def _build(tmp: Path, p: dict, spec: DatasetSpec, class_root: Path, synthetic: bool,
           listing: _Listing, fingerprint: str) -> None:
    import pandas as pd

    size, seed = p["image_size"], p["seed"]
    cands = listing.candidates
    jobs = [(str(class_root / rel), size, mask, "lesion" if synthetic else "lung")
            for rel, _cls, mask in cands]
    images = np.zeros((len(cands), 3, size, size), np.uint8)
    masks = np.zeros((len(cands), size, size), np.uint8)
    has_mask = np.zeros(len(cands), bool)
    shas = [""] * len(cands)
    ok = np.zeros(len(cands), bool)
    skipped = list(listing.skipped)
    results = _pool_map(_decode_one, jobs, desc=f"decode {spec.name}", progress=p["progress"])
    for i, (reason, sha, image, mask) in enumerate(results):
        if reason is not None:
            skipped.append((cands[i][0], reason))
            continue
        ok[i], shas[i], images[i] = True, sha, image
        if mask is not None and mask.any():
            masks[i], has_mask[i] = mask, True
    labels_all = np.array([spec.classes.index(c) for _, c, _ in cands], dtype=np.int64)
    for k, cls in enumerate(spec.classes):
        n_ok = int((ok & (labels_all == k)).sum())
        if n_ok < MIN_PER_CLASS:
            raise ValueError(f"class {cls!r} in {str(class_root)!r} has {n_ok} usable images after "
                             f"skipping unreadable files; at least {MIN_PER_CLASS} are needed for a "
                             "stratified 6:2:2 split")
    n_skipped = len(skipped)

    keep = ok.copy()
    if p["balance"]:
        rng = np.random.default_rng(seed)
        smallest = min(int((ok & (labels_all == k)).sum()) for k in range(len(spec.classes)))
        for k in range(len(spec.classes)):
            idx = np.flatnonzero(ok & (labels_all == k))
            drop = rng.choice(idx, size=len(idx) - smallest, replace=False)
            keep[drop] = False
            skipped += [(cands[i][0], f"discarded to balance classes ({smallest} per class, seed {seed})")
                        for i in sorted(drop)]
    sel = np.flatnonzero(keep)
    images, masks, has_mask, labels = images[sel], masks[sel], has_mask[sel], labels_all[sel]

    if p["split"] == "grouped":
        try:
            from helpers.audit import grouped_split, near_duplicate_groups
        except ImportError as e:
            raise RuntimeError(f"split='grouped' needs helpers.audit ({e})") from e
        groups = near_duplicate_groups(images)
        split = np.asarray(grouped_split(labels, groups, list(spec.classes), seed)).astype(str)
    else:
        split = _random_split(labels, seed)

    mean, std = _channel_stats(images[split == "train"])
    manifest = pd.DataFrame({
        "path": [cands[i][0] for i in sel],
        "class": [cands[i][1] for i in sel],
        "label": labels,
        "split": split,
        "sha256": [shas[i] for i in sel],
        "has_mask": has_mask.astype(int),
    })
    counts = {cls: {s: int(((labels == k) & (split == s)).sum()) for s in SPLIT_NAMES}
              for k, cls in enumerate(spec.classes)}
    np.save(tmp / "images.npy", images)
    np.save(tmp / "masks.npy", masks)
    manifest.to_csv(tmp / "manifest.csv", index=False)
    pd.DataFrame(skipped, columns=["path", "reason"]).to_csv(tmp / "skipped.csv", index=False)
    title = (f"{spec.name}: {len(labels)} images, {size} px, {p['split']} split, seed {seed}"
             + (", balanced" if p["balance"] else ""))
    _save_samples(tmp / "samples.png", images, labels, split, spec.classes, mean, std, synthetic,
                  title, seed)
    info = {
        "dataset": spec.name,
        "class_names": list(spec.classes),
        "image_size": size,
        "split": p["split"],
        "balance": p["balance"],
        "seed": seed,
        "synthetic": synthetic,
        "source_dir": str(class_root.resolve()),
        "mean": mean,
        "std": std,
        "counts": counts,
        "n_skipped": n_skipped,
        "fingerprint": fingerprint,
        # extensions
        "n_images": int(len(labels)),
        "n_discarded_by_balance": len(skipped) - n_skipped,
        "skipped_reasons": _reason_counts(skipped),
        "n_per_class_synthetic": p["n_per_class"] if synthetic else None,
        "prep_version": PREP_VERSION,
    }
    _write_json_atomic(tmp / "info.json", info)        # last: marks the folder complete


def _print_summary(info: dict, out: Path) -> None:
    tag = "SYNTHETIC DATA" if info["synthetic"] else "real data"
    print(f"[data] {info['dataset']} ({tag}) from {info['source_dir']}")
    print(f"[data] {info['n_images']} images at {info['image_size']} px, {info['split']} split, "
          f"seed {info['seed']}; {info['n_skipped']} files skipped, "
          f"{info['n_discarded_by_balance']} discarded to balance")
    reasons = {k: v for k, v in info["skipped_reasons"].items()}
    if reasons:
        print("[data] not used: " + "; ".join(f"{v} {k}" for k, v in sorted(reasons.items())))
        print(f"[data] every file not used is listed with its reason in {out / 'skipped.csv'}")
    print(counts_table(info).to_string())
    print(f"[data] prepared -> {out}")


def source_note(info: dict) -> str:
    """One Markdown line saying where the images came from; loud when they are synthetic."""
    if info["synthetic"]:
        return ("**SYNTHETIC DATA**: phantom images drawn by `helpers.data`, not patient images. "
                "Nothing here says anything about real radiographs or CT scans. "
                "Pass `data_dir` to use the real Kaggle download.")
    return f"Real data from `{info['source_dir']}`."


def counts_table(info: dict):
    """Images per class and split, with totals (a pandas DataFrame)."""
    import pandas as pd

    table = pd.DataFrame(info["counts"]).T.reindex(columns=list(SPLIT_NAMES))
    table["total"] = table.sum(axis=1)
    table.loc["total"] = table.sum(axis=0)
    return table


def stats_table(info: dict):
    """Per-channel normalisation statistics of the train split ([0, 1] scale)."""
    import pandas as pd

    return pd.DataFrame({"mean": info["mean"], "std": info["std"]}, index=["R", "G", "B"])


def skipped_summary(folder: str | os.PathLike):
    """Files not used, counted by reason, from skipped.csv (empty table when none)."""
    import pandas as pd

    skipped = pd.read_csv(Path(folder) / "skipped.csv", keep_default_na=False)
    if skipped.empty:
        return pd.DataFrame({"files": [0], "example": [""]}, index=pd.Index(["(no file skipped)"], name="reason"))
    kind = skipped["reason"].map(_reason_kind)
    table = skipped.assign(reason=kind).groupby("reason").agg(files=("path", "size"),
                                                               example=("path", "first"))
    return table.sort_values("files", ascending=False)


@dataclass
class Prepared:
    images: np.ndarray          # uint8 (N, 3, S, S)
    labels: np.ndarray          # int64 (N,)
    split: np.ndarray           # str (N,): train/val/test
    paths: list[str]
    class_names: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    masks: np.ndarray           # uint8 (N, S, S), 0/1
    has_mask: np.ndarray        # bool (N,)
    synthetic: bool
    info: dict
    manifest: Any               # pandas.DataFrame
    folder: Path = field(default=Path("."))

    def indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == split)


def load_prepared(folder: str | os.PathLike, mmap: bool = False) -> Prepared:
    """Load a folder written by ``prepare``; refuses incomplete folders (no info.json)."""
    import pandas as pd

    folder = Path(folder)
    if not (folder / "info.json").is_file():
        raise FileNotFoundError(f"{str(folder)!r} is not a complete prepared folder (no info.json); "
                                "run helpers.data.prepare first")
    info = json.loads((folder / "info.json").read_text())
    manifest = pd.read_csv(folder / "manifest.csv", dtype={"path": str, "class": str, "split": str,
                                                             "sha256": str}, keep_default_na=False)
    images = np.load(folder / "images.npy", mmap_mode="r" if mmap else None)
    masks = np.load(folder / "masks.npy", mmap_mode="r" if mmap else None)
    if not (len(images) == len(masks) == len(manifest)):
        raise ValueError(f"{str(folder)!r} is inconsistent: {len(images)} images, {len(masks)} masks, "
                         f"{len(manifest)} manifest rows")
    return Prepared(
        images=images,
        labels=manifest["label"].to_numpy(np.int64, copy=True),
        split=manifest["split"].to_numpy(str, copy=True),
        paths=manifest["path"].tolist(),
        class_names=list(info["class_names"]),
        mean=tuple(info["mean"]),
        std=tuple(info["std"]),
        masks=masks,
        has_mask=manifest["has_mask"].to_numpy(bool, copy=True),
        synthetic=bool(info["synthetic"]),
        info=info,
        manifest=manifest,
        folder=folder,
    )


# --------------------------------------------------------------------------------------
# Download and command line
# --------------------------------------------------------------------------------------


class DownloadError(RuntimeError):
    pass


def manual_download_help(dataset: str) -> str:
    spec = get_spec(dataset)
    return (f"Manual download: open {spec.kaggle_url} in a browser, download and unzip it anywhere "
            f"(for example data/raw/{dataset}/), then pass that folder as data_dir: "
            f"prepare('{dataset}', data_dir=...), papermill ... -p data_dir <folder>, "
            f"or make report DATA_DIR=<folder>. Any parent of the class folders works.")


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def download(dataset: str, to: str | os.PathLike | None = None) -> Path:
    """Fetch the Kaggle dataset with kagglehub (needs network and Kaggle credentials).

    Returns the download folder, or ``to`` after linking/copying the files there.
    """
    spec = get_spec(dataset)
    try:
        import kagglehub
    except ImportError as e:
        raise DownloadError(f"kagglehub is not installed ({e}). {manual_download_help(dataset)}") from e
    try:
        path = Path(kagglehub.dataset_download(spec.kaggle_slug))
    except Exception as e:  # kagglehub raises requests/HTTP/credential errors of many types
        raise DownloadError(
            f"could not download {dataset} ({spec.kaggle_slug}) from Kaggle: {type(e).__name__}: {e}. "
            "This needs network access and Kaggle credentials (~/.kaggle/kaggle.json or "
            f"KAGGLE_USERNAME/KAGGLE_KEY). {manual_download_help(dataset)}") from e
    if to:
        dest = Path(to)
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copytree(path, dest, dirs_exist_ok=True, copy_function=_link_or_copy)
        return dest
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.data", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("download", help="fetch a Kaggle dataset with kagglehub")
    d.add_argument("dataset", choices=list(DATASETS))
    d.add_argument("--to", default=None, help="folder to link/copy the download into")
    s = sub.add_parser("synthesize", help="write the synthetic phantoms in the Kaggle layout")
    s.add_argument("dataset", choices=list(DATASETS))
    s.add_argument("--n-per-class", type=int, default=100)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--root", default=None, help="default: data/synthetic/<dataset>")
    pr = sub.add_parser("prepare", help="decode, balance, split and cache a dataset")
    pr.add_argument("dataset", choices=list(DATASETS))
    pr.add_argument("--data-dir", default="", help="real data folder; empty = synthetic")
    pr.add_argument("--image-size", type=int, default=128)
    pr.add_argument("--no-balance", dest="balance", action="store_false")
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("--out-dir", default="")
    pr.add_argument("--split", choices=SPLITS, default="random")
    pr.add_argument("--n-per-class", type=int, default=100)
    args = parser.parse_args(argv)
    try:
        if args.command == "download":
            print(download(args.dataset, args.to))
        elif args.command == "synthesize":
            print(synthesize(args.dataset, args.root, args.n_per_class, args.seed))
        else:
            prepare(args.dataset, args.data_dir, args.image_size, args.balance, args.seed,
                    args.out_dir, args.split, args.n_per_class)
    except (DownloadError, ValueError, FileNotFoundError, NotADirectoryError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
