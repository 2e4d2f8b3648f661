"""How good an explanation map is, scored without the model, and the book's verdicts.

* Localisation, where a region mask is known (``masks.npy`` rows with ``has_mask``): the
  *energy share* (sum of the map inside the mask / sum of the map) and the *pointing game* (is
  the map's maximum inside the mask, dilated by 15 px at 224 px, scaled to the image size:
  :func:`pointing_tolerance`). Beside them a seeded random-map baseline with its analytic
  expectations, and a *centre prior* (a Gaussian blob at the image centre) that localises
  centred anatomy without looking at the image: a map must beat both.
* :func:`map_rank_correlation`: the randomisation check's per-image Spearman rho.
* The book's tables: every score with its interval, its baselines and a verdict in words
  (:func:`tests_table`), and ImageNet against scratch on the same images (:func:`paired_table`).
* Which test images are shown and scored (:func:`select_images`, :func:`select_spread`).

The maps themselves, ROAD and the re-initialised models are :mod:`helpers.explain`'s.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import ndimage, stats

from .data import get_spec
from .intervals import Interval, bootstrap_ci, paired_difference
from .params import arm_order, arm_title

METHODS = ("saliency", "gradcam")
METHOD_TITLES = {"saliency": "saliency", "gradcam": "Grad-CAM"}

POINTING_TOLERANCE_AT_224 = 15  # px, Zhang et al. (2018) pointing game


CENTRE_SIGMA = 0.25  # the centre prior's sigma, as a fraction of the image side


SANITY_PASS_BELOW = 0.5  # mean Spearman rho whose interval must lie below it: maps changed with the weights


# ------------------------------------------------------------------ localisation


def pointing_tolerance(image_size: int) -> int:
    """Pointing-game tolerance in px: 15 px at 224 px, scaled to the image size."""
    return int(round(POINTING_TOLERANCE_AT_224 * image_size / 224))


def _disk(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    return xx ** 2 + yy ** 2 <= radius ** 2


def dilate(masks: np.ndarray, radius: int) -> np.ndarray:
    """Masks (N, H, W) grown by a disk of ``radius`` px."""
    masks = np.asarray(masks).astype(bool)
    if radius <= 0:
        return masks
    return np.stack([ndimage.binary_dilation(m, structure=_disk(radius)) for m in masks])


def energy_share(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Share of each map's total inside its mask; nan for an empty mask.

    An all-zero map (Grad-CAM finding no positive evidence) scores 0: it puts nothing in the region.
    """
    maps = np.asarray(maps, dtype=np.float64)
    masks = np.asarray(masks).astype(bool)
    total = maps.sum(axis=(1, 2))
    inside = (maps * masks).sum(axis=(1, 2))
    share = np.where(total > 0, inside / np.where(total > 0, total, 1.0), 0.0)
    return np.where(masks.any(axis=(1, 2)), share, np.nan)


def pointing_hits(maps: np.ndarray, masks: np.ndarray, tolerance_px: int = 0) -> np.ndarray:
    """1.0 where the map's maximum (first in row-major order) lies in the dilated mask; nan for an
    empty mask. An all-zero map has no maximum to point with and counts as a miss."""
    maps = np.asarray(maps)
    grown = dilate(masks, tolerance_px)
    flat = maps.reshape(len(maps), -1)
    peak = flat.argmax(axis=1)
    hit = grown.reshape(len(grown), -1)[np.arange(len(maps)), peak].astype(float)
    hit = np.where(flat.max(axis=1) > 0, hit, 0.0)
    return np.where(np.asarray(masks).astype(bool).reshape(len(maps), -1).any(axis=1), hit, np.nan)


def random_baseline(masks: np.ndarray, tolerance_px: int = 0, n_random: int = 20, seed: int = 0) -> pd.DataFrame:
    """Per image: energy share and pointing hit rate of seeded uniform random maps, and their
    analytic expectations (mask area fraction, dilated-mask area fraction)."""
    masks = np.asarray(masks).astype(bool)
    rng = np.random.default_rng(seed)
    energy, hits = np.zeros(len(masks)), np.zeros(len(masks))
    for _ in range(n_random):
        maps = rng.random(masks.shape)
        energy += energy_share(maps, masks)
        hits += pointing_hits(maps, masks, tolerance_px)
    return pd.DataFrame({
        "random_energy_share": energy / n_random,
        "mask_area_fraction": masks.mean(axis=(1, 2)),
        "random_pointing": hits / n_random,
        "dilated_area_fraction": dilate(masks, tolerance_px).mean(axis=(1, 2)),
    })


def centre_prior(height: int, width: int, sigma: float = CENTRE_SIGMA) -> np.ndarray:
    """A Gaussian blob at the image centre, peak 1, sigma ``sigma`` times the shorter side."""
    yy, xx = np.mgrid[:height, :width]
    s = sigma * min(height, width)
    return np.exp(-(((yy - (height - 1) / 2) ** 2 + (xx - (width - 1) / 2) ** 2) / (2 * s ** 2)))


def centre_baseline(masks: np.ndarray, tolerance_px: int = 0) -> pd.DataFrame:
    """Per image: energy share and pointing hit of the centre prior, which never looks at the image."""
    masks = np.asarray(masks).astype(bool)
    maps = np.broadcast_to(centre_prior(*masks.shape[1:]), masks.shape)
    return pd.DataFrame({"centre_energy_share": energy_share(maps, masks),
                         "centre_pointing": pointing_hits(maps, masks, tolerance_px)})


def map_rank_correlation(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """Spearman rho per image between two stacks of maps (N, H, W). Identical maps (a constant
    method, say) score 1, the maximum: nothing changed. A map that turned constant, or came
    from a constant one, has no ranks to compare and scores 0."""
    before, after = np.asarray(before, np.float64), np.asarray(after, np.float64)
    rho = np.zeros(len(before))
    for i, (a, b) in enumerate(zip(before.reshape(len(before), -1), after.reshape(len(after), -1))):
        if np.array_equal(a, b):
            rho[i] = 1.0
        elif np.ptp(a) > 0 and np.ptp(b) > 0:
            rho[i] = stats.spearmanr(a, b).statistic
    return rho


def score_maps(maps: np.ndarray, masks: np.ndarray, tolerance_px: int) -> pd.DataFrame:
    return pd.DataFrame({"energy_share": energy_share(maps, masks),
                         "pointing_hit": pointing_hits(maps, masks, tolerance_px),
                         "zero_map": np.asarray(maps).reshape(len(maps), -1).max(axis=1) <= 0})


SUMMARY_COLUMNS = ["arm", "method", "n_images", "n_zero_maps", "energy_share", "energy_ci_low", "energy_ci_high",
                   "random_energy_share", "mask_area_fraction", "centre_energy_share", "energy_minus_area",
                   "diff_ci_low", "diff_ci_high", "pointing_hit_rate", "pointing_ci_low", "pointing_ci_high",
                   "random_pointing", "dilated_area_fraction", "centre_pointing", "tolerance_px", "region"]


def summarize_scores(scores: pd.DataFrame) -> pd.DataFrame:
    """Per (arm, method): mean energy share and pointing hit rate with bootstrap intervals over
    images, the random and centre baselines beside them, and the per-image difference to the
    mask area fraction (the random map's expectation)."""
    rows = []
    for (arm, method), part in scores.groupby(["arm", "method"], sort=False):
        e = bootstrap_ci(part["energy_share"])
        diff = bootstrap_ci(part["energy_share"] - part["mask_area_fraction"])
        hit = bootstrap_ci(part["pointing_hit"])
        rows.append({
            "arm": arm, "method": method, "n_images": len(part),
            "n_zero_maps": int(part["zero_map"].sum()),  # scored 0 and a miss
            "energy_share": e.mean, "energy_ci_low": e.low, "energy_ci_high": e.high,
            "random_energy_share": part["random_energy_share"].mean(),
            "mask_area_fraction": part["mask_area_fraction"].mean(),
            "centre_energy_share": part["centre_energy_share"].mean(),
            "energy_minus_area": diff.mean, "diff_ci_low": diff.low, "diff_ci_high": diff.high,
            "pointing_hit_rate": hit.mean, "pointing_ci_low": hit.low, "pointing_ci_high": hit.high,
            "random_pointing": part["random_pointing"].mean(),
            "dilated_area_fraction": part["dilated_area_fraction"].mean(),
            "centre_pointing": part["centre_pointing"].mean(),
            "tolerance_px": int(part["tolerance_px"].iloc[0]),
            "region": part["region"].iloc[0],
        })
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


# ------------------------------------------------------------- the book's tables

SCORE_TITLES = {"energy_share": "region share", "pointing_hit": "pointing game", "road": "ROAD",
                "sanity_rho": "sanity rho"}


TESTS_COLUMNS = ["dataset", "arm", "method", "score", "n", "value", "ci_low", "ci_high", "random", "centre",
                 "verdict", "meaning"]


PAIRED_COLUMNS = ["dataset", "method", "score", "n", "imagenet", "scratch", "difference", "ci_low", "ci_high",
                  "wilcoxon_p", "meaning"]


def _region_sentence(score: str, ci: Interval, random: float, centre: float, region: str, arm: str) -> tuple[str, str]:
    what = "weight" if score == "energy_share" else "peak"
    word = "share" if score == "energy_share" else "hit rate"
    where = f"the {region}"
    if not np.isfinite(ci.low):
        return "too few images", f"Too few images with a {region} mask for an interval."
    if ci.low > max(random, centre):
        verdict = "beats both"
        text = (f"The {arm_title(arm)} map puts its {what} on {where} more than a random map and a "
                f"centre blob do: it localises beyond a prior.")
    elif ci.low > random:
        verdict = "beats random only"
        text = (f"Above a random map but not above a centre blob: what looks like localisation on {where} "
                f"could be a prior for centred anatomy.")
    else:
        verdict = "no better than random"
        text = f"Its {word} is no better than a random map's: no evidence that the map finds {where}."
    if region == "lung" and score == "energy_share" and ci.mean < 0.5:
        text += (" Most of the map falls outside the lungs: a shortcut warning (DeGrave et al. 2021), the "
                 "model may read text, borders or devices rather than the lungs.")
    return verdict, text


def _road_sentence(ci: Interval) -> tuple[str, str]:
    if not np.isfinite(ci.low):
        return "too few images", "Too few images for an interval."
    if ci.low > 0:
        return "faithful", ("Imputing the pixels the map ranks highest lowers the class probability more than "
                            "imputing the lowest: the map points at what the model uses.")
    if ci.high < 0:
        return "anti-faithful", ("Imputing the pixels the map ranks lowest hurts more than the highest: the map "
                                 "ranks the pixels against what the model uses.")
    return "not shown", "Indistinguishable from zero: no evidence that the map tracks what the model uses."


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _sanity_sentence(ci: Interval, method: str, arm: str) -> tuple[str, str]:
    if not np.isfinite(ci.high):
        return "too few images", "Too few images for an interval."
    if ci.high < SANITY_PASS_BELOW:
        return "passes", (f"{_capital(METHOD_TITLES.get(method, method))} maps change once the {arm_title(arm)} "
                          f"weights are re-initialised: they depend on what the model learned.")
    if ci.low < SANITY_PASS_BELOW:
        return "undecided", (f"The interval straddles {SANITY_PASS_BELOW}: on these images it cannot say whether "
                             f"{METHOD_TITLES.get(method, method)} maps depend on the learned weights; more images would.")
    return "fails", (f"{_capital(METHOD_TITLES.get(method, method))} maps barely change with random weights: they show the "
                     f"image more than the {arm_title(arm)} model, so they cannot support paper B's claim.")


def tests_table(dataset: str, scores: pd.DataFrame, faith: pd.DataFrame, sanity: pd.DataFrame) -> pd.DataFrame:
    """Per arm and method: region share and pointing game against the random and centre maps,
    ROAD and the sanity correlation (every layer randomised), each with its bootstrap interval,
    a verdict and one sentence of meaning."""
    rows = []

    def add(arm, method, score, ci, random=math.nan, centre=math.nan, verdict="", text=""):
        rows.append({"dataset": dataset, "arm": arm, "method": method, "score": SCORE_TITLES[score], "n": ci.n,
                     "value": ci.mean, "ci_low": ci.low, "ci_high": ci.high, "random": random, "centre": centre,
                     "verdict": verdict, "meaning": text})

    keys = {k for frame in (scores, faith, sanity) for k in frame[["arm", "method"]].itertuples(index=False, name=None)}
    for arm, method in sorted(keys, key=lambda k: (arm_order(k[0]),
                                                   METHODS.index(k[1]))):
        part = scores[(scores.arm == arm) & (scores.method == method)]
        if len(part):
            region = part["region"].iloc[0]
            for score, random, centre in (("energy_share", "random_energy_share", "centre_energy_share"),
                                          ("pointing_hit", "random_pointing", "centre_pointing")):
                ci = bootstrap_ci(part[score])
                r, c = part[random].mean(), part[centre].mean()
                add(arm, method, score, ci, r, c, *_region_sentence(score, ci, r, c, region, arm))
        f = faith[(faith.arm == arm) & (faith.method == method)]
        if len(f):
            ci = bootstrap_ci(f["road"])
            add(arm, method, "road", ci, verdict=_road_sentence(ci)[0], text=_road_sentence(ci)[1])
        sn = sanity[(sanity.arm == arm) & (sanity.method == method)]
        if len(sn):
            ci = bootstrap_ci(sn[sn.stage_index == sn.stage_index.max()]["sanity_rho"])
            add(arm, method, "sanity_rho", ci, verdict=_sanity_sentence(ci, method, arm)[0],
                text=_sanity_sentence(ci, method, arm)[1])
    return pd.DataFrame(rows, columns=TESTS_COLUMNS)


def paired_table(dataset: str, scores: pd.DataFrame, faith: pd.DataFrame, sanity: pd.DataFrame,
                 region: str) -> pd.DataFrame:
    """ImageNet minus scratch on the same images, per method and score: paired bootstrap interval,
    Wilcoxon p and what it means for paper B's claim (ImageNet maps highlight the findings,
    scratch maps the whole picture)."""
    last = sanity[sanity.stage_index == sanity.stage_index.max()] if len(sanity) else sanity
    frames = [(scores, ["energy_share", "pointing_hit"], "path"), (faith, ["road"], "image"),
              (last, ["sanity_rho"], "image")]
    rows = []
    for method in METHODS:
        for frame, cols, key in frames:
            if frame.empty:
                continue
            a = frame[(frame.arm == "imagenet") & (frame.method == method)].set_index(key)
            b = frame[(frame.arm == "scratch") & (frame.method == method)].set_index(key)
            common = a.index.intersection(b.index)
            if not len(common):
                continue
            for col in cols:
                d = paired_difference(a.loc[common, col], b.loc[common, col])
                rows.append({"dataset": dataset, "method": method, "score": SCORE_TITLES[col], "n": d["n"],
                             "imagenet": d["a"], "scratch": d["b"], "difference": d["difference"],
                             "ci_low": d["ci_low"], "ci_high": d["ci_high"], "wilcoxon_p": d["wilcoxon_p"],
                             "meaning": _paired_sentence(col, d, region)})
    return pd.DataFrame(rows, columns=PAIRED_COLUMNS)


def for_reader(table: pd.DataFrame) -> pd.DataFrame:
    """A tests or paired table as the book shows it: the interval as one "[low, high]" column,
    methods by their titles."""
    df = table.copy()
    if "method" in df:
        df["method"] = df["method"].map(lambda m: METHOD_TITLES.get(m, m))
    df.insert(list(df.columns).index("ci_low"), "95% interval",
              [f"[{lo:.3f}, {hi:.3f}]" if np.isfinite(lo) and np.isfinite(hi) else "—"
               for lo, hi in zip(df.pop("ci_low").astype(float), df.pop("ci_high").astype(float))])
    return df


def _paired_sentence(score: str, d: dict, region: str) -> str:
    if not np.isfinite(d["ci_low"]):
        return "Too few paired images for an interval."
    higher, lower = d["ci_low"] > 0, d["ci_high"] < 0
    if not (higher or lower):
        return "No difference shown on these images: the data do not separate ImageNet from scratch here."
    if score in ("energy_share", "pointing_hit"):
        return (f"ImageNet maps fall on the {region} more than scratch maps: supports paper B's claim." if higher else
                f"Scratch maps fall on the {region} more than ImageNet maps: contradicts paper B's claim.")
    if score == "road":
        return ("ImageNet maps are more faithful to their model than scratch maps." if higher else
                "Scratch maps are more faithful to their model than ImageNet maps.")
    return ("ImageNet maps change less under randomisation than scratch maps: they depend less on the trained weights."
            if higher else "ImageNet maps depend more on the trained weights than scratch maps.")


def region_kind(prepared) -> str:
    """What masks.npy outlines: synthetic lesions, or the lung masks shipped with the real COVID-19 data."""
    if prepared.synthetic:
        return "lesion"
    return get_spec(prepared.info["dataset"]).mask_outline or "region"


# ---------------------------------------------------------------- image selection


def select_images(labels: np.ndarray, split: np.ndarray, paths: Sequence[str], n_per_class: int,
                  which: str = "test", eligible: np.ndarray | None = None) -> np.ndarray:
    """Indices of the first ``n_per_class`` images of each class in ``which`` split, by path order."""
    labels, split, paths = np.asarray(labels), np.asarray(split), np.asarray(paths, dtype=str)
    ok = split == which
    if eligible is not None:
        ok &= np.asarray(eligible, dtype=bool)
    chosen = []
    for c in np.unique(labels[ok]):
        idx = np.flatnonzero(ok & (labels == c))
        chosen.extend(idx[np.argsort(paths[idx], kind="stable")][:n_per_class].tolist())
    return np.asarray(chosen, dtype=int)


def select_spread(labels: np.ndarray, split: np.ndarray, paths: Sequence[str], n: int,
                  which: str = "test") -> np.ndarray:
    """``n`` images of ``which`` split taken round-robin over the classes, each class by path order."""
    labels = np.asarray(labels)
    if n <= 0:
        return np.zeros(0, dtype=int)
    idx = select_images(labels, split, paths, n, which)
    rank = np.zeros(len(idx), dtype=int)
    for c in np.unique(labels[idx]):
        rank[labels[idx] == c] = np.arange(int((labels[idx] == c).sum()))
    return idx[np.lexsort((labels[idx], rank))][:n]
