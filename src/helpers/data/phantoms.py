"""Synthetic phantoms: a frontal chest radiograph and an axial kidney CT slice, drawn with numpy.

Each drawing function takes a class name, a random generator and the image side and returns a
:class:`Phantom`. They know nothing about files or folders; ``synthetic.py`` writes them in
the Kaggle layout named by the dataset's spec.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from PIL import Image


class Phantom(NamedTuple):
    image: np.ndarray                # uint8 (S, S) grayscale
    lesion: np.ndarray               # bool (S, S): what the class is about (empty for Normal)
    outline: np.ndarray | None       # bool (S, S): the organ the real dataset's masks outline, if any


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
    """Lesion strength in (0, 1]: mostly clear, one in ten subtle (the hard cases). Clear enough
    that the demo's 64 px images and few epochs learn from scratch."""
    return rng.uniform(0.3, 0.55) if rng.random() < 0.1 else rng.uniform(0.7, 1.0)


def chest_xray(finding: str, rng: np.random.Generator, size: int = 299) -> Phantom:
    """Frontal chest radiograph: body, lungs, mediastinum, spine, ribs, clavicles, lesions.

    ``finding``: "ground_glass" (COVID-19's peripheral patches), "pneumonia" (interstitial or
    lobar), "" (none); a dataset's spec says which class shows which. The outline is the lung
    mask. Bright = dense, as on film.
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
    if finding == "ground_glass":
        # ground-glass patches, peripheral and lower-zone, mostly bilateral
        n = rng.integers(4, 9)
        sides = (rng.permutation([0, 1] * 3)[:n] if rng.random() < 0.85
                 else [rng.integers(2)] * n)
        for k in sides:
            cx, cy, lax, lay = lungs[k]
            px_ = cx + np.sign(cx) * lax * rng.uniform(0.35, 0.8)
            py_ = cy + lay * rng.uniform(-0.2, 0.75)
            r = rng.uniform(0.13, 0.24)
            blob = np.exp(-(((x - px_) / r) ** 2 + ((y - py_) / (r * rng.uniform(0.8, 1.6))) ** 2))
            lesion = np.maximum(lesion, blob * (1 + 0.4 * _noise(rng, size, 16)))
        lesion = np.clip(lesion, 0, 1) * lung
        img = img + 0.5 * sev * lesion * (0.8 + 0.2 * _noise(rng, size, 40))
    elif finding == "pneumonia":
        if rng.random() < 0.65:
            # diffuse bilateral perihilar interstitial pattern: haze plus reticular lines
            spread = rng.uniform(0.25, 0.45)
            region = sum(np.exp(-((x - cx * 0.6) ** 2 + (y - cy - 0.1) ** 2) / spread)
                         for cx, cy, _, _ in lungs)
            region = np.clip(region, 0, 1) * lung
            reticular = (np.abs(_noise(rng, size, int(rng.integers(30, 50)))) < 0.3)
            lesion = region
            img = img + 0.42 * sev * region * (0.5 + 0.8 * _blur(reticular.astype(np.float32), 0.8))
        else:
            # lobar consolidation: dense, sharply bounded above by a fissure, one lung
            cx, cy, lax, lay = lungs[rng.integers(2)]
            fissure = cy + lay * rng.uniform(-0.05, 0.35) + rng.uniform(-0.2, 0.2) * (x - cx)
            region = lung * np.clip((y - fissure) / 0.02, 0, 1) * (np.abs(x - cx) < lax * 1.1)
            bronchi = (np.abs(_noise(rng, size, 20)) < 0.12).astype(np.float32)
            lesion = region
            img = img + 0.55 * sev * region * (1 - 0.35 * bronchi)
    lesion_mask = (lesion > 0.3) & lung_mask

    img = _finish(img, rng, noise=rng.uniform(0.01, 0.035), blur=rng.uniform(0.4, 1.2))
    return Phantom(img, lesion_mask, lung_mask)


def kidney_ct(cls: str, rng: np.random.Generator, size: int = 512) -> Phantom:
    """Axial abdominal CT at kidney level: body, fat, muscle, spine, vessels, bowel, liver,
    kidneys, lesions. No outline: the real dataset ships no masks."""
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
            r = rng.uniform(0.055, 0.09) * (0.5 + 0.5 * sev)   # >= 2 px at 64 px
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
    return Phantom(img, lesion, None)
