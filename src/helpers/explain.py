"""Saliency, Grad-CAM and explanation-quality scores.

* Saliency (Simonyan et al. 2014): gradient of the class score (the logit) with respect to the
  input, by plain autograd (``torch.autograd.grad``, so inplace ReLUs and module hooks play no
  part); absolute value, maximum over colour channels, divided by the image's maximum -> [0, 1].
* Grad-CAM (Selvaraju et al. 2017): ``pytorch_grad_cam.GradCAM`` on the arch's last convolutional
  block (:func:`helpers.models.gradcam_target_layer`) with ``ClassifierOutputTarget``; the library
  rescales each map to [0, 1] and resizes it to the input size.
* Maps are computed for the **true class** of each image unless ``target="pred"``.
* Quality, where a region mask is known (``masks.npy`` rows with ``has_mask``): the *energy
  share* (sum of the map inside the mask / sum of the map) and the *pointing game* (is the map's
  maximum inside the mask, dilated by a tolerance of 15 px at 224 px, scaled to the image size:
  :func:`pointing_tolerance`). Beside them, a random-map baseline: seeded uniform random maps
  scored the same way, with the analytic expectations (mask area fraction for the energy share,
  dilated-mask area fraction for the pointing game). An all-zero map (Grad-CAM finds no positive
  evidence) scores 0 and a miss, and is counted (``n_zero_maps``). A *centre prior* (a Gaussian
  blob at the image centre, sigma a quarter of the side) is scored the same way: it localises
  centred anatomy without looking at the image, so a map must beat it too.
* Faithfulness: ROAD (Rong et al. 2022), ``pytorch_grad_cam.metrics.road.ROADCombined`` over a
  few percentiles, on the softmax probability of the target class: half the drop when the least
  relevant pixels are imputed minus the drop when the most relevant are, in [-1, 1]; above zero
  means the map ranks the pixels the model relies on first.
* Sanity (Adebayo et al. 2018, model-parameter randomisation): the maps are recomputed after the
  trained weights are re-initialised, all at once (``"full"``) or cumulatively from the top
  layer down (``"cascade"``), and compared per image by Spearman rank correlation. A method
  passes when the upper end of the interval of its mean correlation is below
  :data:`SANITY_PASS_BELOW`: its maps depend on what the model learned.
* Intervals: every score gets a bootstrap 95% interval over images (``scipy.stats.bootstrap``,
  BCa; percentile where BCa is undefined), and ImageNet is compared with scratch on the same
  images (paired bootstrap of the difference, Wilcoxon signed-rank p).
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from scipy import ndimage, stats
from torch import nn

from . import metrics
from .data import get_spec
from .intervals import Interval, bootstrap_ci, paired_difference
from .params import RunId, arm_order, arm_title, read_run_id

METHODS = ("saliency", "gradcam")
METHOD_TITLES = {"saliency": "saliency", "gradcam": "Grad-CAM"}
POINTING_TOLERANCE_AT_224 = 15  # px, Zhang et al. (2018) pointing game
CENTRE_SIGMA = 0.25  # the centre prior's sigma, as a fraction of the image side
SANITY_PASS_BELOW = 0.5  # mean Spearman rho whose interval must lie below it: maps changed with the weights
SANITY_MODES = ("full", "cascade")
SANITY_STAGES = 4  # cascade: cumulative quarters of the layers, top first


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _check_maps(maps: np.ndarray, shape: tuple[int, ...], what: str) -> np.ndarray:
    if maps.shape != shape:
        raise RuntimeError(f"{what} maps have shape {maps.shape}, expected {shape}")
    if not np.isfinite(maps).all():
        raise RuntimeError(f"{what} produced non-finite values")
    return np.clip(maps, 0.0, 1.0).astype(np.float32)


def saliency_maps(model: nn.Module, images: torch.Tensor, targets: Sequence[int],
                  batch_size: int = 32) -> np.ndarray:
    """|d score_target / d input|, max over channels, scaled to [0, 1] per image: (N, H, W)."""
    model.eval()
    device = next(model.parameters()).device
    targets = torch.as_tensor(list(targets), dtype=torch.long)
    out = []
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(device=device, dtype=torch.float32).clone().requires_grad_(True)
        t = targets[start:start + batch_size].to(device)
        with torch.enable_grad():
            scores = model(x.clone())  # a non-leaf copy, so an inplace first op cannot touch the leaf
            # eval mode: images are independent, so the gradient of the sum is per image
            (grad,) = torch.autograd.grad(scores.gather(1, t[:, None]).sum(), x)
        m = grad.abs().amax(dim=1)
        peak = m.flatten(1).amax(dim=1).clamp_min(torch.finfo(m.dtype).tiny)
        out.append((m / peak[:, None, None]).detach().float().cpu().numpy())
    n, _, h, w = images.shape
    return _check_maps(np.concatenate(out) if out else np.zeros((0, h, w), np.float32), (n, h, w), "saliency")


def gradcam_maps(model: nn.Module, arch: str, images: torch.Tensor, targets: Sequence[int],
                 batch_size: int = 16) -> np.ndarray:
    """Grad-CAM (pytorch_grad_cam) on the arch's last convolutional block: (N, H, W) in [0, 1]."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from .models import gradcam_target_layer

    model.eval()
    device = next(model.parameters()).device
    layer = gradcam_target_layer(model, arch)
    targets = [int(t) for t in targets]
    out = []
    with GradCAM(model=model, target_layers=[layer]) as cam:
        for start in range(0, len(images), batch_size):
            x = images[start:start + batch_size].to(device=device, dtype=torch.float32)
            tb = [ClassifierOutputTarget(t) for t in targets[start:start + batch_size]]
            out.append(np.asarray(cam(input_tensor=x, targets=tb), dtype=np.float32))
    model.zero_grad(set_to_none=True)  # GradCAM back-propagates into the parameters too
    n, _, h, w = images.shape
    return _check_maps(np.concatenate(out) if out else np.zeros((0, h, w), np.float32), (n, h, w), "Grad-CAM")


def compute_maps(method: str, model: nn.Module, arch: str, images: torch.Tensor,
                 targets: Sequence[int]) -> np.ndarray:
    if method == "saliency":
        return saliency_maps(model, images, targets)
    if method == "gradcam":
        return gradcam_maps(model, arch, images, targets)
    raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")


# ------------------------------------------------------------------------- scores


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


def road_scores(model: nn.Module, images: torch.Tensor, targets: Sequence[int], maps: np.ndarray,
                percentiles: Sequence[int] = (20, 40, 60, 80), batch_size: int = 64, seed: int = 0) -> np.ndarray:
    """ROAD combined per image on the target's softmax probability, in [-1, 1] (higher: more faithful).

    The value of ``pytorch_grad_cam.metrics.road.ROADCombined``: the mean over percentiles of
    (p after removing the least relevant pixels - p after removing the most relevant) / 2, both
    removals by the library's perturbations and noisy linear imputer. ROADCombined would run the
    model on the unperturbed images at every percentile, where the difference cancels them, and
    one batch per percentile; here every perturbed image of an image goes through one batched
    forward pass, which halves the cost on a CPU."""
    from pytorch_grad_cam.metrics.perturbation_confidence import RemoveLeastRelevantFirst, RemoveMostRelevantFirst
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer

    model.eval()
    device = next(model.parameters()).device
    percentiles = [int(p) for p in percentiles]
    targets = np.asarray([int(t) for t in targets])
    torch.manual_seed(seed)  # the imputer adds noise
    # Ties broken at random: Grad-CAM's zero areas would otherwise put every pixel on one side of
    # a percentile, and imputing an image with no known pixel is a singular system.
    rng = np.random.default_rng(seed)
    maps = np.asarray(maps, np.float32) + rng.uniform(0, 1e-4, np.shape(maps)).astype(np.float32)
    imputer = NoisyLinearImputer()
    removals = [(order, cls(p, imputer)) for p in percentiles
                for order, cls in ((+1, RemoveLeastRelevantFirst), (-1, RemoveMostRelevantFirst))]
    perturbed, sign, owner = [], [], []
    with warnings.catch_warnings():
        # the imputer hands torch tensors to numpy, which numpy 2 warns about on every call
        warnings.filterwarnings("ignore", message=".*__array_wrap__.*", category=DeprecationWarning)
        for i in range(len(images)):
            x, cam = images[i].detach().float().cpu(), torch.from_numpy(maps[i])
            for order, removal in removals:
                perturbed.append(removal(x, cam))
                sign.append(order)
                owner.append(i)
    probs = []
    with torch.no_grad():
        for start in range(0, len(perturbed), batch_size):
            batch = torch.stack(perturbed[start:start + batch_size]).to(device)
            probs.append(torch.softmax(model(batch).float(), dim=1).cpu().numpy())
    owner, sign = np.asarray(owner, dtype=int), np.asarray(sign, dtype=float)
    p_target = np.concatenate(probs)[np.arange(len(owner)), targets[owner]] if len(owner) else np.zeros(0)
    scores = np.bincount(owner, weights=sign * p_target, minlength=len(images)) / (2 * len(percentiles))
    if not np.isfinite(scores).all():
        raise RuntimeError("ROAD produced non-finite scores")
    return scores


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


def _resettable_layers(model: nn.Module) -> list[nn.Module]:
    """Layers with their own weights and a ``reset_parameters``, top (last registered) first."""
    return [m for m in reversed(list(model.modules()))
            if hasattr(m, "reset_parameters") and any(True for _ in m.parameters(recurse=False))]


def randomized_models(model: nn.Module, mode: str = "full", seed: int = 0):
    """Yield (stage name, copy of the model with re-initialised weights): ``"full"`` once, every
    layer; ``"cascade"`` after each cumulative quarter of the layers, top first (Adebayo et al. 2018)."""
    if mode not in SANITY_MODES:
        raise ValueError(f"sanity must be one of {list(SANITY_MODES)}; got {mode!r}")
    layers = _resettable_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no layer with reset_parameters to randomise")
    if mode == "full":
        cuts = [len(layers)]
    else:
        cuts = sorted({max(1, round(len(layers) * k / SANITY_STAGES)) for k in range(1, SANITY_STAGES + 1)})
    torch.manual_seed(seed)
    rand = copy.deepcopy(model)
    rand_layers = _resettable_layers(rand)
    done = 0
    for cut in cuts:
        for layer in rand_layers[done:cut]:
            layer.reset_parameters()
        done = cut
        yield ("all layers" if cut == len(layers) else f"top {cut} of {len(layers)} layers"), rand.eval()


def sanity_correlations(method: str, model: nn.Module, arch: str, images: torch.Tensor, targets: Sequence[int],
                        maps: np.ndarray, mode: str = "full", seed: int = 0) -> pd.DataFrame:
    """Per image and randomisation stage: Spearman rho between the trained model's map and the
    map of the re-initialised model (``stage_index`` counts up; the last is every layer)."""
    rows = []
    for k, (stage, rand) in enumerate(randomized_models(model, mode, seed)):
        rho = map_rank_correlation(maps, compute_maps(method, rand, arch, images, targets))
        rows.append(pd.DataFrame({"stage_index": k, "stage": stage, "image": np.arange(len(rho)), "sanity_rho": rho}))
    return pd.concat(rows, ignore_index=True)


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


# ------------------------------------------------------------------ orchestration


@dataclass
class ArmResult:
    arm: str
    run_dir: Path
    params: dict
    probs: np.ndarray  # (n_shown, K) softmax on the shown images
    maps: dict[str, np.ndarray] = field(default_factory=dict)  # method -> (n_shown, H, W)


@dataclass
class ExplainResult:
    dataset: str
    arch: str
    methods: list[str]
    class_names: list[str]
    shown: np.ndarray  # indices into the prepared arrays
    images: np.ndarray  # (n_shown, 3, H, W) uint8
    labels: np.ndarray
    masks: np.ndarray
    has_mask: np.ndarray
    paths: list[str]
    arms: dict[str, ArmResult]
    missing: dict[str, str]
    synthetic: bool | None
    target: str
    region: str  # what the masks outline: "lesion" (synthetic) or "lung" (real COVID-19 masks/)
    scores: pd.DataFrame  # per image, arm, method
    summary: pd.DataFrame
    faith: pd.DataFrame = field(default_factory=pd.DataFrame)   # ROAD per image, arm, method
    sanity: pd.DataFrame = field(default_factory=pd.DataFrame)  # Spearman rho per image, arm, method, stage
    tests: pd.DataFrame = field(default_factory=pd.DataFrame)   # the book's table: tests_table
    paired: pd.DataFrame = field(default_factory=pd.DataFrame)  # ImageNet minus scratch: paired_table
    seconds: dict[str, float] = field(default_factory=dict)     # time spent per part of the step
    figure: plt.Figure | None = None
    files: list[Path] = field(default_factory=list)

    def banner(self) -> str:
        """Synthetic-data / missing-arm admonition (HTML), "" when neither applies."""
        from .report import banner
        return banner(synthetic=self.synthetic, missing=[(a, w) for a, w in self.missing.items()])

    @property
    def note(self) -> str:
        parts = [f"The {arm_title(a)} run is not available ({why}); only the other arm is shown."
                 for a, why in self.missing.items()]
        if self.scores.empty:
            parts.append("No test image has a region mask, so region share and pointing game are not scored.")
        if self.faith.empty:
            parts.append("ROAD and the sanity check were not run (n_road_images is 0).")
        if self.region == "lung" and not self.synthetic:
            parts.append("The region is the lung mask shipped with the COVID-19 Radiography Database: maps "
                         "outside the lungs are a shortcut warning (DeGrave et al. 2021).")
        return " ".join(parts)

    @property
    def timing_note(self) -> str:
        s = self.seconds
        added = s.get("road", 0.0) + s.get("sanity", 0.0) + s.get("baselines", 0.0)
        return (f"This step took {s.get('total', math.nan):.0f} s, of which ROAD {s.get('road', 0.0):.0f} s "
                f"({self.faith_images} images), the sanity check {s.get('sanity', 0.0):.0f} s and the "
                f"baselines and intervals {s.get('baselines', 0.0):.0f} s ({added:.0f} s added by these tests).")

    @property
    def faith_images(self) -> int:
        return int(self.faith["image"].nunique()) if not self.faith.empty else 0


def default_runs(dataset: str, arch: str, root: str | Path = "runs", seed: int = 0,
                 head: str = "replace", experiment: str = "") -> list[Path]:
    """The ImageNet and scratch runs of one configuration, as RunId names them."""
    return [RunId(experiment=experiment, dataset=dataset, arch=arch, head=head, arm=arm, seed=seed).run_dir(root)
            for arm in ("imagenet", "scratch")]


def _arm_of(run_dir: Path, planned: dict[Path, str]) -> str:
    """The arm the run folder records; a folder that was never written is known by the RunId
    that named it (``planned``), else shown by its name."""
    try:
        return read_run_id(run_dir).arm
    except (OSError, ValueError):
        return planned.get(run_dir, run_dir.name)


def _unavailable(run_dir: Path) -> str | None:
    if (run_dir / "missing.json").is_file():
        return "missing: " + str(metrics._read_json(run_dir / "missing.json").get("reason", "no reason given"))
    if not run_dir.is_dir():
        return f"{run_dir} does not exist"
    if not (run_dir / "metrics.json").is_file():
        return f"{run_dir} is incomplete (no metrics.json)"
    return None


def explain_runs(dataset: str, arch: str, runs: str | Sequence[str | Path] = "", n_per_class: int = 2,
                 methods: Sequence[str] = METHODS, out_dir: str | Path = "", root: str | Path = "runs",
                 device: str = "auto", target: str = "true", tolerance_px: int | None = None,
                 n_random: int = 20, max_score_images: int = 300, seed: int = 0, n_road_images: int = 8,
                 road_percentiles: Sequence[int] = (20, 40, 60, 80), sanity: str = "full") -> ExplainResult:
    """Saliency/Grad-CAM figure and explanation-quality scores for the ImageNet and scratch runs of one arch.

    ``runs``: "" = ``runs/<dataset>/<arch>-imagenet-s0`` and ``-scratch-s0``; or a list (or glob) of
    run folders, one per arm. An arm that is missing or incomplete is reported, not fatal, as long as
    one arm is available. Files go to ``out_dir`` ("" = ``results/<dataset>/explain/<arch>``).
    ROAD and the sanity check (``sanity``: "full" or "cascade") run on ``n_road_images`` test
    images spread over the classes (0 skips both).
    """
    from .training import load_run, normalize, run_stats

    if isinstance(methods, str):  # papermill -p methods saliency,gradcam
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    methods = list(methods)
    if not methods:
        raise ValueError(f"methods must name at least one of {list(METHODS)}")
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"methods must be a list drawn from {list(METHODS)}; got {m!r}")
    if target not in ("true", "pred"):
        raise ValueError(f"target must be 'true' or 'pred'; got {target!r}")
    if isinstance(n_per_class, bool) or not isinstance(n_per_class, (int, np.integer)) or n_per_class < 1:
        raise ValueError(f"n_per_class must be an integer of at least 1; got {n_per_class!r}")
    if isinstance(n_road_images, bool) or not isinstance(n_road_images, (int, np.integer)) or n_road_images < 0:
        raise ValueError(f"n_road_images must be an integer of at least 0; got {n_road_images!r}")
    road_percentiles = [road_percentiles] if isinstance(road_percentiles, (int, np.integer)) else list(road_percentiles)
    if not road_percentiles or not all(isinstance(q, (int, np.integer)) and not isinstance(q, bool) and 0 < q < 100
                                       for q in road_percentiles):
        raise ValueError(f"road_percentiles must be a non-empty list of integers between 1 and 99; got {road_percentiles!r}")
    if sanity not in SANITY_MODES:
        raise ValueError(f"sanity must be one of {list(SANITY_MODES)}; got {sanity!r}")
    started = time.perf_counter()
    seconds = {"road": 0.0, "sanity": 0.0, "baselines": 0.0}
    planned: dict[Path, str] = {}
    if isinstance(runs, (str, Path)) and str(runs) == "":
        run_dirs = default_runs(dataset, arch, root)
        planned = dict(zip(run_dirs, ("imagenet", "scratch")))
    elif isinstance(runs, (str, Path)):
        run_dirs = metrics.find_run_dirs(dataset, runs)
    else:
        run_dirs = [Path(r) for r in runs]
    dev = resolve_device(device)

    loaded, missing = {}, {}
    for run_dir in run_dirs:
        arm = _arm_of(run_dir, planned)
        why = _unavailable(run_dir)
        if why:
            missing[arm] = why
            continue
        if arm in loaded:
            raise ValueError(f"two {arm} runs given: {loaded[arm][0]} and {run_dir}; pass one per arm")
        model, params, prepared = load_run(run_dir, which="best", device=str(dev))
        if params.get("arch") != arch or params.get("dataset", dataset) != dataset:
            raise ValueError(f"{run_dir} is a {params.get('dataset')}/{params.get('arch')} run, "
                             f"not {dataset}/{arch}")
        loaded[arm] = (run_dir, model, params, prepared)
    if not loaded:
        raise FileNotFoundError(f"no usable run for {dataset}/{arch}: " + "; ".join(f"{a}: {w}" for a, w in missing.items()))

    order = sorted(loaded, key=arm_order)
    prepared = loaded[order[0]][3]
    test = np.flatnonzero(np.asarray(prepared.split) == "test")
    test_paths = [prepared.paths[i] for i in test]
    for arm in order[1:]:
        other = loaded[arm][3]
        other_paths = [other.paths[i] for i in np.flatnonzero(np.asarray(other.split) == "test")]
        if other_paths != test_paths:
            raise ValueError(f"{loaded[order[0]][0]} and {loaded[arm][0]} have different test images "
                             f"(prepared_dir {loaded[order[0]][2].get('prepared_dir')!r} vs "
                             f"{loaded[arm][2].get('prepared_dir')!r}); both arms must use the same prepared data")

    labels = np.asarray(prepared.labels)
    has_mask = np.asarray(prepared.has_mask, dtype=bool)
    masks = np.asarray(prepared.masks)
    image_size = int(prepared.images.shape[-1])
    tol = pointing_tolerance(image_size) if tolerance_px is None else int(tolerance_px)
    shown = select_images(labels, prepared.split, prepared.paths, int(n_per_class))
    scored = select_images(labels, prepared.split, prepared.paths, len(labels), eligible=has_mask)
    if len(scored) > max_score_images:  # an evenly spaced subset keeps the class proportions
        scored = scored[np.linspace(0, len(scored) - 1, max_score_images).round().astype(int)]
    baseline = random_baseline(masks[scored], tol, n_random, seed) if len(scored) else None
    t0 = time.perf_counter()
    if baseline is not None:
        baseline = pd.concat([baseline, centre_baseline(masks[scored], tol)], axis=1)
    seconds["baselines"] += time.perf_counter() - t0
    probe = select_spread(labels, prepared.split, prepared.paths, int(n_road_images))
    faith_rows, sanity_rows = [], []

    arms, score_rows = {}, []
    for arm in order:
        run_dir, model, params, prep = loaded[arm]
        mean, std = run_stats(params, prep)

        def inputs(idx):
            return normalize(torch.as_tensor(prep.images[idx]).to(dev), mean, std)

        x_shown = inputs(shown)
        with torch.no_grad():
            probs = torch.softmax(model(x_shown).float(), dim=1).cpu().numpy()
        tgt = labels[shown] if target == "true" else probs.argmax(axis=1)
        res = ArmResult(arm=arm, run_dir=run_dir, params=params, probs=probs)
        x_probe = inputs(probe) if len(probe) else None
        if len(scored):
            xs = inputs(scored)
            if target == "true":
                ts = labels[scored]
            else:
                with torch.no_grad():
                    ts = model(xs).argmax(dim=1).cpu().numpy()
        for method in methods:
            res.maps[method] = compute_maps(method, model, arch, x_shown, tgt)
            if len(scored):
                maps = compute_maps(method, model, arch, xs, ts)
                part = score_maps(maps, masks[scored], tol)
                part = pd.concat([part, baseline], axis=1)
                part.insert(0, "path", [prep.paths[i] for i in scored])
                part.insert(0, "class", [prep.class_names[labels[i]] for i in scored])
                part.insert(0, "method", method)
                part.insert(0, "arm", arm)
                part["tolerance_px"] = tol
                part["region"] = region_kind(prep)
                score_rows.append(part)
            if len(probe):
                ids = {"arm": arm, "method": method, "image": np.arange(len(probe)),
                       "path": [prep.paths[i] for i in probe]}
                t0 = time.perf_counter()
                maps = compute_maps(method, model, arch, x_probe, labels[probe])
                road = road_scores(model, x_probe, labels[probe], maps, road_percentiles, seed=seed)
                faith_rows.append(pd.DataFrame({**ids, "road": road}))
                t1 = time.perf_counter()
                rho = sanity_correlations(method, model, arch, x_probe, labels[probe], maps, sanity, seed)
                rho.insert(0, "path", np.asarray(ids["path"])[rho["image"].to_numpy()])
                rho.insert(0, "method", method)
                rho.insert(0, "arm", arm)
                sanity_rows.append(rho)
                seconds["road"] += t1 - t0
                seconds["sanity"] += time.perf_counter() - t1
        arms[arm] = res

    scores = pd.concat(score_rows, ignore_index=True) if score_rows else pd.DataFrame(
        columns=["arm", "method", "class", "path", "energy_share", "pointing_hit", "zero_map",
                 "random_energy_share", "mask_area_fraction", "random_pointing", "dilated_area_fraction",
                 "centre_energy_share", "centre_pointing", "tolerance_px", "region"])
    faith = pd.concat(faith_rows, ignore_index=True) if faith_rows else pd.DataFrame(
        columns=["arm", "method", "image", "path", "road"])
    sanity_df = pd.concat(sanity_rows, ignore_index=True) if sanity_rows else pd.DataFrame(
        columns=["arm", "method", "path", "stage_index", "stage", "image", "sanity_rho"])
    t0 = time.perf_counter()
    summary = summarize_scores(scores)
    tests = tests_table(dataset, scores, faith, sanity_df)
    paired = paired_table(dataset, scores, faith, sanity_df, region_kind(prepared))
    seconds["baselines"] += time.perf_counter() - t0
    result = ExplainResult(
        dataset=dataset, arch=arch, methods=methods, class_names=list(prepared.class_names), shown=shown,
        images=np.asarray(prepared.images[shown]), labels=labels[shown], masks=masks[shown],
        has_mask=has_mask[shown], paths=[prepared.paths[i] for i in shown], arms=arms, missing=missing,
        synthetic=bool(prepared.synthetic), target=target, scores=scores, region=region_kind(prepared),
        summary=summary, faith=faith, sanity=sanity_df, tests=tests, paired=paired, seconds=seconds,
    )
    result.figure = explanation_figure(result)
    out = Path(out_dir) if str(out_dir) else Path("results") / dataset / "explain" / arch
    from . import report
    result.files = report.save_figure(result.figure, out, "explanations")
    plt.close(result.figure)
    result.files += report.write_table(result.scores, out, "explain_scores", markdown=False)
    result.files += report.write_table(result.summary, out, "explain_summary")
    result.files += report.write_table(faith, out, "explain_road", markdown=False)
    result.files += report.write_table(sanity_df, out, "explain_sanity", markdown=False)
    result.files += report.write_table(tests, out, "explain_tests")
    result.files += report.write_table(paired, out, "explain_paired")
    seconds["total"] = time.perf_counter() - started
    return result


def explanation_figure(result: ExplainResult) -> plt.Figure:
    """One row per image: original | saliency | Grad-CAM overlay, for each available arm (paper B Figs 5-6)."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    from .report import synthetic_suffix

    panels = ["original", *result.methods]
    arms = list(result.arms)
    n_rows, n_cols = len(result.shown), len(panels) * len(arms)
    fig, axes = plt.subplots(max(n_rows, 1), max(n_cols, 1), figsize=(1.9 * max(n_cols, 1), 2.0 * max(n_rows, 1) + 0.8),
                             squeeze=False)
    for i in range(n_rows):
        rgb = result.images[i].transpose(1, 2, 0).astype(np.float32) / 255.0
        for a, arm in enumerate(arms):
            ar = result.arms[arm]
            p = ar.probs[i]
            for j, panel in enumerate(panels):
                ax = axes[i, a * len(panels) + j]
                ax.set_xticks([])
                ax.set_yticks([])
                if panel == "original":
                    ax.imshow(rgb)
                    if result.has_mask[i]:
                        ax.contour(result.masks[i], levels=[0.5], colors="lime", linewidths=0.8)
                    pred = int(p.argmax())
                    ax.set_xlabel(f"{arm_title(arm)}: {result.class_names[pred]} ({p[pred]:.2f})",
                                  fontsize=8, color="black" if pred == result.labels[i] else "crimson")
                elif panel == "saliency":
                    ax.imshow(ar.maps["saliency"][i], cmap="inferno", vmin=0, vmax=1)
                else:
                    ax.imshow(show_cam_on_image(rgb, ar.maps[panel][i], use_rgb=True))
                if i == 0:
                    ax.set_title(f"{arm_title(arm)}\n{METHOD_TITLES.get(panel, panel)}", fontsize=9)
        axes[i, 0].set_ylabel(f"true: {result.class_names[result.labels[i]]}", fontsize=9)
    target = "true class" if result.target == "true" else "predicted class"
    title = (f"{result.dataset} · {result.arch}{synthetic_suffix(result.synthetic)}\n"
             f"maps for the {target} (green: {result.region} mask)")
    if result.missing:
        # The reasons are in the note: a long one here would widen the figure to a thumbnail.
        title += "\nnot available: " + ", ".join(f"{arm_title(a)} run" for a in result.missing)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
