"""Saliency, Grad-CAM and explanation-quality scores.

* Saliency (Simonyan et al. 2014): gradient of the class score (the logit) with respect to the
  input, by plain autograd (``torch.autograd.grad``, so inplace ReLUs and module hooks play no
  part); absolute value, maximum over colour channels, divided by the image's maximum -> [0, 1].
* Grad-CAM (Selvaraju et al. 2017): ``pytorch_grad_cam.GradCAM`` on the arch's last convolutional
  block (:func:`helpers.models.gradcam_target_layer`) with ``ClassifierOutputTarget``; the library
  rescales each map to [0, 1] and resizes it to the input size.
* Maps are computed for the **true class** of each image unless ``target="pred"``.
* Localisation scores, their baselines and the book's verdicts are :mod:`helpers.map_scores`'s.
* Faithfulness: ROAD (Rong et al. 2022), ``pytorch_grad_cam.metrics.road.ROADCombined`` over a
  few percentiles, on the softmax probability of the target class: half the drop when the least
  relevant pixels are imputed minus the drop when the most relevant are, in [-1, 1]; above zero
  means the map ranks the pixels the model relies on first.
* Sanity (Adebayo et al. 2018, model-parameter randomisation): the maps are recomputed after the
  trained weights are re-initialised, all at once (``"full"``) or cumulatively from the top
  layer down (``"cascade"``), and compared per image by Spearman rank correlation. A method
  passes when the upper end of the interval of its mean correlation is below
  :data:`helpers.map_scores.SANITY_PASS_BELOW`: its maps depend on what the model learned.
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
from torch import nn

from . import metrics
from .map_scores import (METHOD_TITLES, METHODS, centre_baseline, map_rank_correlation, paired_table, pointing_tolerance,
                         random_baseline, region_kind, score_maps, select_images, select_spread, summarize_scores,
                         tests_table)
from . import params as params_mod
from .params import PAIR, ExplainParams, RunId, arm_order, arm_title, read_run_id

SANITY_MODES = ("full", "cascade")
SANITY_STAGES = 4  # cascade: cumulative quarters of the layers, top first


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
                 head: str = "replace", experiment: str = "") -> dict[Path, str]:
    """The ImageNet and scratch runs of one configuration: run folder (as RunId names it) -> arm."""
    ids = [RunId(experiment=experiment, dataset=dataset, arch=arch, head=head, arm=arm, seed=seed)
           for arm in PAIR]
    return {rid.run_dir(root): rid.arm for rid in ids}


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


def explain_runs(dataset: str, arch: str, runs: str | Path | Sequence[str | Path] = "", *, root: str | Path = "runs",
                 target: str = "true", tolerance_px: int | None = None, n_random: int = 20,
                 max_score_images: int = 300, seed: int = 0, **step) -> ExplainResult:
    """Saliency/Grad-CAM figure and explanation-quality scores for the ImageNet and scratch runs of one arch.

    ``runs``: "" = ``runs/<dataset>/<arch>-imagenet-s0`` and ``-scratch-s0``; or a list (or glob) of
    run folders, one per arm. An arm that is missing or incomplete is reported, not fatal, as long as
    one arm is available. ``step``: the explain step's own parameters (``n_per_class``, ``methods``,
    ``out_dir``, ``device``, ``n_road_images``, ``road_percentiles``, ``sanity``), checked by
    :class:`helpers.params.ExplainParams`, where their defaults live. Files go to ``out_dir``
    ("" = ``results/<dataset>/explain/<arch>``). ROAD and the sanity check ("full" or "cascade")
    run on ``n_road_images`` test images spread over the classes (0 skips both).
    """
    from .training import load_model, normalize, resolve_device, run_stats

    if isinstance(step.get("methods"), str):  # papermill -p methods saliency,gradcam
        step["methods"] = [m.strip() for m in step["methods"].split(",") if m.strip()]
    if isinstance(step.get("road_percentiles"), (int, np.integer)) and not isinstance(step["road_percentiles"], bool):
        step["road_percentiles"] = [step["road_percentiles"]]
    step = {k: str(v) if isinstance(v, Path) else v for k, v in step.items()}
    folders = str(runs) if isinstance(runs, (str, Path)) else [str(r) for r in runs]
    p = params_mod.check(ExplainParams, {"dataset": dataset, "arch": arch, "runs": folders, **step})
    n_per_class, methods, out_dir, device = p.n_per_class, list(p.methods), p.out_dir, p.device
    n_road_images, road_percentiles, sanity = p.n_road_images, list(p.road_percentiles), p.sanity
    if not methods:
        raise ValueError(f"methods must name at least one of {list(METHODS)}")
    if target not in ("true", "pred"):
        raise ValueError(f"target must be 'true' or 'pred'; got {target!r}")
    started = time.perf_counter()
    seconds = {"road": 0.0, "sanity": 0.0, "baselines": 0.0}
    planned: dict[Path, str] = {}
    if isinstance(runs, (str, Path)) and str(runs) == "":
        planned = default_runs(dataset, arch, root)
        run_dirs = list(planned)
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
        model, params, prepared = load_model(run_dir, which="best", device=str(dev))
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
