"""Datasets: specs, Kaggle-layout discovery, synthetic phantoms, the prepared cache, downloads.

Public API (see CONTRACTS.md): ``DATASETS``, ``synthesize``, ``prepare``, ``load_prepared``,
``validate_prep_params``, ``find_class_root``, ``download``; command line:
``python -m helpers.data {download,synthesize,prepare} DATASET ...``.

``HELPERS_DATA_ROOT`` (environment) replaces the ``data/`` base folder, which tests use to stay
out of the repository.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import re
import shutil
import sys
import time
import uuid
import warnings
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing import get_context
from numbers import Integral
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from PIL import Image, ImageFile

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
    for p in final.parent.glob(f".{final.name}.*-*-*"):
        m = re.search(r"-(\d+)-[0-9a-f]{8}$", p.name)
        if m and not _pid_alive(int(m.group(1))):
            shutil.rmtree(p, ignore_errors=True)


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
    return rng.uniform(0.1, 0.4) if rng.random() < 0.25 else rng.uniform(0.5, 1.0)


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
        n = rng.integers(2, 6)
        sides = (rng.permutation([0, 1] * 3)[:n] if rng.random() < 0.85
                 else [rng.integers(2)] * n)
        for k in sides:
            cx, cy, lax, lay = lungs[k]
            px_ = cx + np.sign(cx) * lax * rng.uniform(0.35, 0.8)
            py_ = cy + lay * rng.uniform(-0.2, 0.75)
            r = rng.uniform(0.07, 0.17)
            blob = np.exp(-(((x - px_) / r) ** 2 + ((y - py_) / (r * rng.uniform(0.8, 1.6))) ** 2))
            lesion = np.maximum(lesion, blob * (1 + 0.4 * _noise(rng, size, 16)))
        lesion = np.clip(lesion, 0, 1) * lung
        img = img + 0.22 * sev * lesion * (0.8 + 0.2 * _noise(rng, size, 40))
    elif cls == "Viral Pneumonia":
        if rng.random() < 0.65:
            # diffuse bilateral perihilar interstitial pattern: haze plus reticular lines
            spread = rng.uniform(0.25, 0.45)
            region = sum(np.exp(-((x - cx * 0.6) ** 2 + (y - cy - 0.1) ** 2) / spread)
                         for cx, cy, _, _ in lungs)
            region = np.clip(region, 0, 1) * lung
            reticular = (np.abs(_noise(rng, size, int(rng.integers(30, 50)))) < 0.3)
            lesion = region
            img = img + 0.16 * sev * region * (0.5 + 0.8 * _blur(reticular.astype(np.float32), 0.8))
        else:
            # lobar consolidation: dense, sharply bounded above by a fissure, one lung
            cx, cy, lax, lay = lungs[rng.integers(2)]
            fissure = cy + lay * rng.uniform(-0.05, 0.35) + rng.uniform(-0.2, 0.2) * (x - cx)
            region = lung * np.clip((y - fissure) / 0.02, 0, 1) * (np.abs(x - cx) < lax * 1.1)
            bronchi = (np.abs(_noise(rng, size, 20)) < 0.12).astype(np.float32)
            lesion = region
            img = img + 0.3 * sev * region * (1 - 0.35 * bronchi)
    lesion_mask = (lesion > 0.3) & lung_mask

    img = _finish(img, rng, noise=rng.uniform(0.01, 0.035), blur=rng.uniform(0.4, 1.2))
    return img, lung_mask, lesion_mask


def _kidney_phantom(cls: str, rng: np.random.Generator, size: int = 512):
    """Axial abdominal CT at kidney level: body, fat, muscle, spine, vessels, bowel, liver,
    kidneys, lesions. Returns (uint8 image, lesion mask)."""
    g = _Grid(size, rng, 0.8)
    x, y, px = g.x, g.y, g.px
    bax, bay = rng.uniform(0.7, 0.86), rng.uniform(0.5, 0.64)
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
    for _ in range(rng.integers(5, 12)):
        cx_, cy_ = rng.uniform(-0.4, 0.55), bcy + rng.uniform(-bay * 0.8, 0.0)
        r = rng.uniform(0.04, 0.09)
        loop = g.ellipse(cx_, cy_, r, r * rng.uniform(0.7, 1.3), angle=rng.uniform(0, 3),
                         soft=0.006) * inner
        img = img * (1 - loop) + loop * (rng.uniform(0.4, 0.6) + organ_tex)
        u = rng.random()
        if u < 0.25:
            gas = g.ellipse(cx_, cy_ - r * 0.2, r * 0.55, r * 0.45, soft=px) * inner
            img = img * (1 - gas) + gas * 0.02
        elif u < 0.32:
            img = np.maximum(img, 0.8 * g.ellipse(cx_, cy_, r * 0.4, r * 0.4, soft=px))

    # kidneys: perirenal fat, bright cortex, darker medulla (enhanced) and sinus fat at the hilum
    lesion = np.zeros(x.shape, bool)
    kidneys = []
    for side in (-1, 1):
        kcx = side * rng.uniform(0.28, 0.36)
        kcy = spine_y - rng.uniform(0.02, 0.1)
        scale = rng.uniform(0.75, 1.0)
        kax, kay = rng.uniform(0.1, 0.13) * scale, rng.uniform(0.14, 0.18) * scale
        ang = side * rng.uniform(0.2, 0.6)
        perirenal = g.ellipse(kcx, kcy, kax * 1.35, kay * 1.25, angle=ang, soft=0.02)
        img = img * (1 - perirenal) + perirenal * fat
        kidney = g.ellipse(kcx, kcy, kax, kay, angle=ang, soft=px * 1.5)
        cortex = rng.uniform(0.6, 0.7) + 0.12 * enh
        medulla = g.ellipse(kcx, kcy, kax * 0.7, kay * 0.75, angle=ang, soft=0.03)
        img = img * (1 - kidney) + kidney * (cortex - 0.12 * enh * medulla)
        sinus = g.ellipse(kcx - side * kax * 0.5, kcy, kax * 0.5, kay * 0.4, angle=ang, soft=0.012)
        img = img - sinus * kidney * rng.uniform(0.22, 0.32)
        kidneys.append((kcx, kcy, kax, kay, cortex))

    sev = _severity(rng)
    if cls == "Cyst":
        # round water-density lesions with sharp walls, cortical or exophytic
        for _ in range(rng.integers(1, 4)):
            kcx, kcy, kax, kay, _c = kidneys[rng.integers(2)]
            t, rr = rng.uniform(0, 2 * np.pi), rng.uniform(0.4, 1.0)
            cx_, cy_ = kcx + rr * kax * math.cos(t), kcy + rr * kay * math.sin(t)
            r = rng.uniform(0.025, 0.075) * (0.5 + 0.5 * sev)
            cyst = g.ellipse(cx_, cy_, r, r * rng.uniform(0.85, 1.15), soft=px)
            level = rng.uniform(0.26, 0.34) + (1 - sev) * 0.15
            img = img * (1 - cyst) + cyst * level
            lesion |= cyst > 0.5
    elif cls == "Stone":
        # small very dense foci in the collecting system
        for _ in range(rng.integers(1, 4)):
            kcx, kcy, kax, kay, _c = kidneys[rng.integers(2)]
            cx_ = kcx - np.sign(kcx) * kax * rng.uniform(0.1, 0.6)
            cy_ = kcy + kay * rng.uniform(-0.5, 0.5)
            r = rng.uniform(0.008, 0.022) * (0.5 + 0.5 * sev)
            stone = g.ellipse(cx_, cy_, r, r * rng.uniform(0.7, 1.3), angle=rng.uniform(0, 3),
                              soft=px * 0.7)
            img = np.maximum(img, stone * (0.8 + 0.2 * sev))
            lesion |= g.ellipse(cx_, cy_, r * 1.3 + 2 * px, r * 1.3 + 2 * px, soft=px) > 0.5
    elif cls == "Tumor":
        # lobulated heterogeneous mass bulging from the kidney, sometimes necrotic
        kcx, kcy, kax, kay, cortex = kidneys[rng.integers(2)]
        t, rr = rng.uniform(0, 2 * np.pi), rng.uniform(0.3, 0.9)
        cx_, cy_ = kcx + rr * kax * math.cos(t), kcy + rr * kay * math.sin(t)
        r = rng.uniform(0.06, 0.13) * (0.55 + 0.45 * sev)
        rows, cols = g.box(cx_, cy_, r * 1.3)
        xs, ys = x[rows, cols], y[rows, cols]
        theta = np.arctan2(ys - cy_, xs - cx_)
        lobes = 1 + 0.15 * np.sin(theta * rng.integers(3, 6) + rng.uniform(0, 6))
        dist = np.sqrt((xs - cx_) ** 2 + (ys - cy_) ** 2) / (r * lobes)
        mass = np.clip((1 - dist) * r / (2 * px), 0, 1)
        tex = 0.1 * _noise(rng, size, 60)[rows, cols] + 0.08 * _noise(rng, size, 20)[rows, cols]
        level = rng.uniform(0.42, 0.58) + tex - 0.18 * (dist < rng.uniform(0, 0.5))
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
    counts = ({c: int(n_per_class[c]) for c in spec.classes} if isinstance(n_per_class, Mapping)
              else {c: int(n_per_class) for c in spec.classes})
    if any(isinstance(v, bool) or v < 1 for v in counts.values()) or isinstance(n_per_class, bool):
        raise ValueError(f"n_per_class must be a positive int (or class -> int), got {n_per_class!r}")
    wanted = {"dataset": dataset, "counts": counts, "seed": int(seed),
              "generator_version": GENERATOR_VERSION}
    marker = root / MARKER
    if marker.is_file():
        try:
            found = json.loads(marker.read_text())
        except (OSError, ValueError):
            found = {}
        if all(found.get(k) == v for k, v in wanted.items()):
            return root

    root.parent.mkdir(parents=True, exist_ok=True)
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
            jobs.append((dataset, cls, i, int(seed), img_dir / name,
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
    return root


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
