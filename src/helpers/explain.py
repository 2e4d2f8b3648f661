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
  evidence) scores 0 and a miss, and is counted (``n_zero_maps``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from scipy import ndimage
from torch import nn

from . import metrics
from .data import get_spec
from .params import RunId, read_run_id

METHODS = ("saliency", "gradcam")
METHOD_TITLES = {"saliency": "saliency", "gradcam": "Grad-CAM"}
ARM_TITLES = {"imagenet": "ImageNet", "linear_probe": "linear probe", "scratch": "scratch"}
POINTING_TOLERANCE_AT_224 = 15  # px, Zhang et al. (2018) pointing game


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


def score_maps(maps: np.ndarray, masks: np.ndarray, tolerance_px: int) -> pd.DataFrame:
    return pd.DataFrame({"energy_share": energy_share(maps, masks),
                         "pointing_hit": pointing_hits(maps, masks, tolerance_px),
                         "zero_map": np.asarray(maps).reshape(len(maps), -1).max(axis=1) <= 0})


SUMMARY_COLUMNS = ["arm", "method", "n_images", "n_zero_maps", "energy_share", "energy_ci_low", "energy_ci_high",
                   "random_energy_share", "mask_area_fraction", "energy_minus_area", "diff_ci_low",
                   "diff_ci_high", "pointing_hit_rate", "pointing_ci_low", "pointing_ci_high",
                   "random_pointing", "dilated_area_fraction", "tolerance_px", "region"]


def summarize_scores(scores: pd.DataFrame) -> pd.DataFrame:
    """Per (arm, method): mean energy share with t-interval, pointing hit rate with Wilson interval,
    the random baseline beside them, and the per-image difference to the mask area fraction."""
    rows = []
    for (arm, method), part in scores.groupby(["arm", "method"], sort=False):
        e = metrics.mean_ci(part["energy_share"])
        diff = metrics.mean_ci(part["energy_share"] - part["mask_area_fraction"])
        hits = part["pointing_hit"].dropna()
        hit_ci = metrics.accuracy_ci(int(hits.sum()), len(hits)) if len(hits) else {}
        rows.append({
            "arm": arm, "method": method, "n_images": len(part),
            "n_zero_maps": int(part["zero_map"].sum()),  # scored 0 and a miss
            "energy_share": e.mean, "energy_ci_low": e.low, "energy_ci_high": e.high,
            "random_energy_share": part["random_energy_share"].mean(),
            "mask_area_fraction": part["mask_area_fraction"].mean(),
            "energy_minus_area": diff.mean, "diff_ci_low": diff.low, "diff_ci_high": diff.high,
            "pointing_hit_rate": hits.mean() if len(hits) else math.nan,
            "pointing_ci_low": hit_ci.get("wilson_low", math.nan),
            "pointing_ci_high": hit_ci.get("wilson_high", math.nan),
            "random_pointing": part["random_pointing"].mean(),
            "dilated_area_fraction": part["dilated_area_fraction"].mean(),
            "tolerance_px": int(part["tolerance_px"].iloc[0]),
            "region": part["region"].iloc[0],
        })
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


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
    figure: plt.Figure | None = None
    files: list[Path] = field(default_factory=list)

    def banner(self) -> str:
        """Synthetic-data / missing-arm admonition (HTML), "" when neither applies."""
        from .report import banner
        return banner(synthetic=self.synthetic, missing=[(a, w) for a, w in self.missing.items()])

    @property
    def note(self) -> str:
        parts = [f"The {ARM_TITLES.get(a, a)} run is not available ({why}); only the other arm is shown."
                 for a, why in self.missing.items()]
        if self.scores.empty:
            parts.append("No test image has a region mask, so explanation quality is not scored.")
        return " ".join(parts)


def default_runs(dataset: str, arch: str, root: str | Path = "runs", seed: int = 0,
                 head: str = "replace", experiment: str = "") -> list[Path]:
    """The ImageNet and scratch runs of one configuration, as RunId names them."""
    return [RunId(experiment=experiment, dataset=dataset, arch=arch, head=head, arm=arm, seed=seed).run_dir(root)
            for arm in ("imagenet", "scratch")]


def _arm_of(run_dir: Path) -> str:
    """The arm a run folder's params.json records; for a run that never started (missing), the
    arm its folder name was given by RunId."""
    params_file = run_dir / "params.json"
    if params_file.is_file():
        return read_run_id(run_dir).arm
    for arm in ARM_TITLES:
        if f"-{arm}-" in run_dir.name:
            return arm
    raise ValueError(f"cannot tell the arm of {run_dir}: no params.json and no -<arm>- in its name")


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
                 n_random: int = 20, max_score_images: int = 300, seed: int = 0) -> ExplainResult:
    """Saliency/Grad-CAM figure and explanation-quality scores for the ImageNet and scratch runs of one arch.

    ``runs``: "" = ``runs/<dataset>/<arch>-imagenet-s0`` and ``-scratch-s0``; or a list (or glob) of
    run folders, one per arm. An arm that is missing or incomplete is reported, not fatal, as long as
    one arm is available. Files go to ``out_dir`` ("" = ``results/<dataset>/explain/<arch>``).
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
    if isinstance(runs, (str, Path)) and str(runs) == "":
        run_dirs = default_runs(dataset, arch, root)
    elif isinstance(runs, (str, Path)):
        run_dirs = metrics.find_run_dirs(dataset, runs)
    else:
        run_dirs = [Path(r) for r in runs]
    dev = resolve_device(device)

    loaded, missing = {}, {}
    for run_dir in run_dirs:
        arm = _arm_of(run_dir) if run_dir.exists() else next(
            (a for a in metrics.ARMS if f"-{a}-" in run_dir.name), run_dir.name)
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

    order = [a for a in metrics.ARMS if a in loaded]
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
        arms[arm] = res

    scores = pd.concat(score_rows, ignore_index=True) if score_rows else pd.DataFrame(
        columns=["arm", "method", "class", "path", "energy_share", "pointing_hit", "zero_map",
                 "random_energy_share", "mask_area_fraction", "random_pointing", "dilated_area_fraction",
                 "tolerance_px", "region"])
    result = ExplainResult(
        dataset=dataset, arch=arch, methods=methods, class_names=list(prepared.class_names), shown=shown,
        images=np.asarray(prepared.images[shown]), labels=labels[shown], masks=masks[shown],
        has_mask=has_mask[shown], paths=[prepared.paths[i] for i in shown], arms=arms, missing=missing,
        synthetic=bool(prepared.synthetic), target=target, scores=scores, region=region_kind(prepared),
        summary=summarize_scores(scores),
    )
    result.figure = explanation_figure(result)
    out = Path(out_dir) if str(out_dir) else Path("results") / dataset / "explain" / arch
    from . import report
    result.files = report.save_figure(result.figure, out, "explanations")
    plt.close(result.figure)
    result.files += report.write_table(result.scores, out, "explain_scores", markdown=False)
    result.files += report.write_table(result.summary, out, "explain_summary")
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
                    ax.set_xlabel(f"{ARM_TITLES[arm]}: {result.class_names[pred]} ({p[pred]:.2f})",
                                  fontsize=8, color="black" if pred == result.labels[i] else "crimson")
                elif panel == "saliency":
                    ax.imshow(ar.maps["saliency"][i], cmap="inferno", vmin=0, vmax=1)
                else:
                    ax.imshow(show_cam_on_image(rgb, ar.maps[panel][i], use_rgb=True))
                if i == 0:
                    ax.set_title(f"{ARM_TITLES[arm]}\n{METHOD_TITLES.get(panel, panel)}", fontsize=9)
        axes[i, 0].set_ylabel(f"true: {result.class_names[result.labels[i]]}", fontsize=9)
    target = "true class" if result.target == "true" else "predicted class"
    title = (f"{result.dataset} · {result.arch}{synthetic_suffix(result.synthetic)}\n"
             f"maps for the {target} (green: {result.region} mask)")
    if result.missing:
        # The reasons are in the note: a long one here would widen the figure to a thumbnail.
        title += "\nnot available: " + ", ".join(f"{ARM_TITLES.get(a, a)} run" for a in result.missing)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
